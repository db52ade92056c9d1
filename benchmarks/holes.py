"""What PCI holes cost with each strategy: memory, memslots, exits, set-up and scan time.

A 256-bus ECAM window (default topology), 1 to 64 VMs in one process, each guest
scanning every function page by brute force at ring 3, twice (first touch, then warm),
for ``shared``, ``fill`` and ``trap`` in one run; then the first touch of each backing
of ``shared`` (hugetlb when a huge page can be had, THP, 4 KiB memfd).

    python benchmarks/holes.py --json holes.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from pcihole.holes import source as source_mod
from pcihole.holes.memory import close_shared_hole_memory
from pcihole.holes.source import Backing, HoleSourceError
from pcihole.host import info as hostinfo
from pcihole.kvm import Kvm
from pcihole.measure.bench import measure_point, options_for, ratios, sweep

BUSES = 256
VM_COUNTS = [1, 2, 4, 8, 16, 32, 64]


@contextlib.contextmanager
def huge_page_if_possible() -> Iterator[str]:
    """One reserved 2 MiB page for the hugetlb point (root), or why not."""
    if source_mod.free_huge_pages() > 0:
        yield "a free huge page was already reserved"
        return
    if os.geteuid() != 0:
        yield "skipped: reserving a huge page needs root"
        return
    try:
        with source_mod.extra_huge_pages(1):
            yield "reserved one 2 MiB page for the run, released after"
    except HoleSourceError as error:
        yield f"skipped: {error}"


def first_touch_by_backing(kvm: Kvm, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for backing in (Backing.HUGETLB, Backing.THP, Backing.MEMFD):
        close_shared_hole_memory()
        needs_page = backing is Backing.HUGETLB
        guard = huge_page_if_possible() if needs_page else contextlib.nullcontext("not needed")
        with guard as note:
            if str(note).startswith("skipped"):
                rows.append({"backing": backing.value, "note": note})
                continue
            point = measure_point(kvm, options_for("shared", BUSES, backing=backing), 1, repeats)
            close_shared_hole_memory()  # let go of the huge page before the pool shrinks
        rows.append({"backing": backing.value, "note": note, **point})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--trap-repeats", type=int, default=1, help="trap costs ~3.5 s of CPU per VM and pass"
    )
    parser.add_argument("--max-vms", type=int, default=64)
    args = parser.parse_args()
    counts = [n for n in VM_COUNTS if n <= args.max_vms]
    started = time.perf_counter()

    def show(point: dict[str, Any]) -> None:
        print(
            f"{point['strategy']:<6} {point['vms']:>3} VMs  setup {point['setup_seconds']:8.4f} s"
            f" (holes {point['hole_setup_seconds']:.4f} s/VM)"
            f"  first {point['first_pass_seconds']:8.4f} s  warm {point['warm_pass_seconds']:8.4f}"
            f" s  memory {point['hole_memory_bytes_total'] >> 10:>9} KiB  slots/VM "
            f"{point['memslots_per_vm']:>4}  hole exits/VM {point['exits_per_vm']['hole']}",
            flush=True,
        )

    def repeats(strategy: str, _buses: int) -> int:
        return args.trap_repeats if strategy == "trap" else args.repeats

    with Kvm() as kvm:
        points, skipped = sweep(
            kvm, ("shared", "fill", "trap"), counts, [BUSES], repeats, progress=show
        )
        backings = first_touch_by_backing(kvm, args.repeats)
    close_shared_hole_memory()
    ratio_table = {
        "setup": ratios(points, "setup_seconds"),
        "hole_setup": ratios(points, "hole_setup_seconds"),
        "first_pass": ratios(points, "first_pass_seconds"),
        "warm_pass": ratios(points, "warm_pass_seconds"),
    }
    for row in backings:
        if "first_pass_seconds" in row:
            print(
                f"backing {row['backing']:<8} first touch {row['first_pass_seconds']:.4f} s, "
                f"warm {row['warm_pass_seconds']:.4f} s"
            )
        else:
            print(f"backing {row['backing']:<8} {row['note']}")
    print(json.dumps(ratio_table, indent=1))
    result = {
        "benchmark": "holes",
        "buses": BUSES,
        "ring": 3,
        "mode": "brute",
        "points": points,
        "ratios": ratio_table,
        "first_touch_by_backing": backings,
        "skipped": skipped,
        "duration_seconds": round(time.perf_counter() - started, 1),
        "host": hostinfo.collect(),
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

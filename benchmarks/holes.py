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
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from pcihole import hostinfo, layout
from pcihole.holes import source as source_mod
from pcihole.holes.memory import close_shared_hole_memory
from pcihole.holes.source import Backing, HoleSourceError
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.scan import run_scan

BUSES = 256
VM_COUNTS = [1, 2, 4, 8, 16, 32, 64]
MEMORY_HEADROOM = 0.75
"""A fill point runs only if its private copies fit in this share of MemAvailable."""


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_point(kvm: Kvm, options: MachineOptions, vms: int, repeats: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeats):
        report = run_scan(kvm, options, vms=vms, mode="brute", passes=2).as_json()
        first = [p[0] for p in report["pass_seconds_per_vm"]]
        warm = [p[1] for p in report["pass_seconds_per_vm"]]
        samples.append(
            {
                "setup_seconds": report["setup_seconds"],
                "wall_seconds": report["scan_seconds"],
                "first_touch_seconds_median_vm": _median(first),
                "warm_scan_seconds_median_vm": _median(warm),
                "hole_memory_bytes_total": report["hole_memory_bytes_total"],
                "hole_memory_bytes_per_vm": report["hole_memory_bytes_per_vm"],
                "kernel_memory_bytes_during_setup": report["kernel_memory_bytes_during_setup"],
                "exits_per_vm": report["exits_per_vm"],
                "memslots_per_vm": report["memslots_per_vm"],
                "backing": report["backing"],
                "functions_found": len(report["functions_found"]),
            }
        )
    keys = ("setup_seconds", "wall_seconds", "first_touch_seconds_median_vm",
            "warm_scan_seconds_median_vm")  # fmt: skip
    point: dict[str, Any] = {"vms": vms, "repeats": repeats, "samples": samples}
    for key in keys:
        values = [s[key] for s in samples]
        point[key] = _median(values)
        point[key + "_spread"] = [min(values), max(values)]
    last = samples[-1]
    for key in ("hole_memory_bytes_total", "hole_memory_bytes_per_vm", "exits_per_vm",
                "memslots_per_vm", "backing", "kernel_memory_bytes_during_setup"):  # fmt: skip
        point[key] = last[key]
    slots = last["memslots_per_vm"] * vms
    point["kernel_bytes_per_memslot_estimate"] = (
        int(last["kernel_memory_bytes_during_setup"] / slots) if slots else None
    )
    return point


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
        with (
            huge_page_if_possible()
            if backing is Backing.HUGETLB
            else contextlib.nullcontext("not needed") as note
        ):
            if str(note).startswith("skipped"):
                rows.append({"backing": backing.value, "note": note})
                continue
            options = MachineOptions(buses=BUSES, strategy="shared", backing=backing)
            point = measure_point(kvm, options, 1, repeats)
            close_shared_hole_memory()  # let go of the huge page before the pool shrinks
        rows.append({"backing": backing.value, "note": note, **point})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trap-repeats", type=int, default=1,
                        help="trap costs ~3.5 s of CPU per VM and pass")  # fmt: skip
    parser.add_argument("--max-vms", type=int, default=64)
    args = parser.parse_args()
    counts = [n for n in VM_COUNTS if n <= args.max_vms]
    started = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: list[str] = []
    with Kvm() as kvm:
        for strategy in ("shared", "fill", "trap"):
            rows[strategy] = []
            repeats = args.trap_repeats if strategy == "trap" else args.repeats
            for vms in counts:
                if strategy == "fill":
                    need = vms * layout.ecam_size(BUSES)
                    available = hostinfo.meminfo().get("MemAvailable", 0) * 1024
                    if need > MEMORY_HEADROOM * available:
                        skipped.append(f"fill with {vms} VMs: needs {need >> 20} MiB, "
                                       f"{available >> 20} MiB available")  # fmt: skip
                        continue
                options = MachineOptions(buses=BUSES, strategy=strategy)
                point = measure_point(kvm, options, vms, repeats)
                rows[strategy].append(point)
                print(
                    f"{strategy:<6} {vms:>3} VMs  setup {point['setup_seconds']:8.4f} s  "
                    f"first {point['first_touch_seconds_median_vm']:8.4f} s  "
                    f"warm {point['warm_scan_seconds_median_vm']:8.4f} s  "
                    f"memory {point['hole_memory_bytes_total'] >> 10:>9} KiB  "
                    f"slots/VM {point['memslots_per_vm']:>4}  "
                    f"hole exits/VM {point['exits_per_vm']['hole']}",
                    flush=True,
                )
        backings = first_touch_by_backing(kvm, args.repeats)
    close_shared_hole_memory()
    ratios = {}
    for vms in counts:
        by = {s: next((p for p in rows[s] if p["vms"] == vms), None) for s in rows}
        shared, fill, trap = by["shared"], by["fill"], by["trap"]
        if shared is None:
            continue
        entry: dict[str, float] = {}
        if fill is not None:
            entry["setup_fill_over_shared"] = fill["setup_seconds"] / shared["setup_seconds"]
            entry["warm_scan_shared_over_fill"] = (
                shared["warm_scan_seconds_median_vm"] / fill["warm_scan_seconds_median_vm"]
            )
            entry["first_touch_shared_over_fill"] = (
                shared["first_touch_seconds_median_vm"] / fill["first_touch_seconds_median_vm"]
            )
        if trap is not None:
            entry["warm_scan_trap_over_shared"] = (
                trap["warm_scan_seconds_median_vm"] / shared["warm_scan_seconds_median_vm"]
            )
            entry["first_touch_trap_over_shared"] = (
                trap["first_touch_seconds_median_vm"] / shared["first_touch_seconds_median_vm"]
            )
        ratios[str(vms)] = {k: round(v, 3) for k, v in entry.items()}
    for row in backings:
        if "first_touch_seconds_median_vm" in row:
            print(f"backing {row['backing']:<8} first touch "
                  f"{row['first_touch_seconds_median_vm']:.4f} s, warm "
                  f"{row['warm_scan_seconds_median_vm']:.4f} s")  # fmt: skip
        else:
            print(f"backing {row['backing']:<8} {row['note']}")
    print(json.dumps(ratios, indent=1))
    result = {
        "benchmark": "holes",
        "buses": BUSES,
        "ring": 3,
        "mode": "brute",
        "strategies": rows,
        "ratios_by_vm_count": ratios,
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

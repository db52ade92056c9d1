"""The kernel's share of hole memory: what each strategy and backing costs per VM.

Many VMs (16 by default) scan a 256-bus window by brute force at ring 3 in one process,
while a thread samples /proc/meminfo every 5 ms (pcihole/host/meminfo.py): per VM =
(peak - baseline) / VMs of VmallocUsed (KVM's per-memslot arrays), SecPageTables (KVM's
page tables for the guests) and PageTables (the host's page tables of this process's
mappings), median of the repeats. The host is shared: other processes move these fields
too, which is why the VMs are many and the figure is a median.

Also counts, on a fresh VM, the vmalloc pages each memslot of a given size costs, by
allocating function (/proc/vmallocinfo, root only): the per-slot arithmetic behind it.

The hugetlb point gets its one huge page from ``pcihole serve-holes --reserve-hugepage``
(root), as a host would run it.

    python benchmarks/kernel_memory.py --json docs/kernel_memory.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pcihole import layout
from pcihole.guest.machine import PciMachine
from pcihole.holes.memory import close_shared_hole_memory
from pcihole.holes.source import Backing
from pcihole.host import info as hostinfo
from pcihole.host import mem as hostmem
from pcihole.host import vmallocinfo
from pcihole.kvm import Kvm, abi
from pcihole.machine import MachineOptions
from pcihole.measure.bench import fits_in_memory, measure_point, options_for
from pcihole.pci.topology import Topology

BUSES = 256
REPO_ROOT = str(Path(hostmem.__file__).resolve().parent.parent)
SLOT_SIZES = (4 << 10, 2 << 20, 64 << 20, 256 << 20)
CONFIGS: tuple[tuple[str, str, Backing | None], ...] = (
    # The baseline: the same VM without hole slots (functions still mirrored, as in the
    # others), so "above trap" is what the holes alone cost.
    ("trap", "trap (no hole slots; functions mirrored)", None),
    ("fill", "fill (private 0xff per VM)", None),
    ("shared", "shared, THP chunk (one slot per 2 MiB)", Backing.THP),
    ("shared", "shared, memfd window (4 KiB pages)", Backing.MEMFD),
    ("shared", "shared, hugetlb window (serve-holes --reserve-hugepage)", Backing.HUGETLB),
)


@contextlib.contextmanager
def hugetlb_service() -> Iterator[tuple[str | None, str]]:
    """A ``serve-holes --reserve-hugepage`` service for the run: (socket, what it said)."""
    if os.geteuid() != 0:
        yield None, "skipped: reserving a huge page needs root"
        return
    with tempfile.TemporaryDirectory(prefix="ph-kmem-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "holes.sock")
        env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pcihole",
                "serve-holes",
                "--socket",
                path,
                "--reserve-hugepage",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        said = proc.stdout.readline().strip()
        serving = proc.stdout.readline().strip()
        try:
            if not serving.startswith("serving"):
                yield None, f"skipped: {said} {serving} {proc.stderr.read()}".strip()
            else:
                yield path, said
        finally:
            close_shared_hole_memory()  # our mappings of the page go before it is given back
            proc.terminate()
            proc.wait(30)


KVM_CALLERS = vmallocinfo.KVM_MEMSLOT_CALLERS


def slot_cost_by_caller(kvm: Kvm, count: int = 64, trials: int = 3) -> list[dict[str, Any]]:
    """vmalloc bytes per read-only memslot of each size, by KVM's allocating function.

    /proc/vmallocinfo is host-wide (other VMs come and go), so: KVM's callers only, many
    slots, and the median of a few trials."""
    if not os.access("/proc/vmallocinfo", os.R_OK):
        return []
    rows = []
    for size in SLOT_SIZES:
        chunk = hostmem.map_anonymous(size, align=2 << 20)
        runs: list[dict[str, int]] = []
        with chunk:
            for _ in range(trials):
                with kvm.create_vm() as vm:
                    before = _vmalloc_by_caller()
                    for slot in range(count):
                        vm.set_memory_region(
                            slot,
                            (1 << 36) + slot * (1 << 30),
                            size,
                            chunk.address,
                            abi.KVM_MEM_READONLY,
                        )
                    after = _vmalloc_by_caller()
                runs.append({k: (after[k] - before[k]) // count for k in KVM_CALLERS})
        by_caller = {k: int(statistics.median(run[k] for run in runs)) for k in KVM_CALLERS}
        rows.append(
            {
                "slot_bytes": size,
                "vmalloc_bytes_per_slot": by_caller,
                "total_bytes_per_slot": sum(by_caller.values()),
            }
        )
    return rows


def memslot_arrays_per_vm(
    kvm: Kvm, options: MachineOptions, vms: int = 8, trials: int = 3
) -> dict[str, int]:
    """KVM's memslot arrays per VM for ``options``, from /proc/vmallocinfo: ``vms`` VMs
    built (not run) at once, KVM's callers only, median of ``trials``. Far less exposed
    than the meminfo sampler (the arrays are all made with the slots, in under a second),
    though other processes' VMs still come and go meanwhile."""
    if not os.access("/proc/vmallocinfo", os.R_OK):
        return {}
    runs = [_arrays_once(kvm, options, vms) for _ in range(trials)]
    per_vm = {k: int(statistics.median(run[k] for run in runs)) for k in KVM_CALLERS}
    per_vm["total"] = sum(per_vm.values())
    return per_vm


def _arrays_once(kvm: Kvm, options: MachineOptions, vms: int) -> dict[str, int]:
    params = [layout.ECAM_BASE, BUSES, 0, 1]
    warm = PciMachine(kvm, Topology.default(BUSES), options, "scan", params, name="warm")
    machines: list[PciMachine] = []
    try:
        before = _vmalloc_by_caller()
        for index in range(vms):
            machines.append(
                PciMachine(kvm, Topology.default(BUSES), options, "scan", params, name=f"vm{index}")
            )
        after = _vmalloc_by_caller()
    finally:
        for machine in [*machines, warm]:
            machine.close()
    return {k: (after[k] - before[k]) // vms for k in KVM_CALLERS}


def _vmalloc_by_caller() -> collections.Counter[str]:
    return vmallocinfo.bytes_by_caller(vmallocinfo.read_vmallocinfo())


def measure_configs(
    kvm: Kvm, vms: int, repeats: int, trap_repeats: int, only: str | None = None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for strategy, label, backing in CONFIGS:
        if only and only not in label:
            continue
        close_shared_hole_memory()
        service = hugetlb_service() if backing is Backing.HUGETLB else contextlib.nullcontext()
        with service as served:
            socket_path, note = served if served else (None, "")
            if note.startswith("skipped") or (why := fits_in_memory(strategy, vms, BUSES)):
                rows.append({"label": label, "note": note or why})
                print(f"{label}: {rows[-1]['note']}", flush=True)
                continue
            options = options_for(strategy, BUSES, backing=backing, socket_path=socket_path)
            options = dataclasses.replace(options, present="mirror")
            count = trap_repeats if strategy == "trap" else repeats
            arrays = memslot_arrays_per_vm(kvm, options)
            point = measure_point(kvm, options, vms, count, passes=1)
            point["memslot_arrays_bytes_per_vm"] = arrays
        # Others on the host only ever add to a peak: the least repeat is the cleanest.
        totals = [sample["kernel_memory_bytes_per_vm"] for sample in point.pop("samples")]
        point["kernel_memory_bytes_per_vm_least"] = min(totals, key=lambda t: t["total"])
        rows.append({"label": label, "note": note, **point})
        show(rows[-1])
    close_shared_hole_memory()
    trap = next((r for r in rows if r.get("strategy") == "trap"), None)
    for row in rows:
        if trap and "kernel_memory_bytes_per_vm" in row:
            row["kernel_bytes_per_vm_above_trap"] = (
                row["kernel_memory_bytes_per_vm"]["total"]
                - trap["kernel_memory_bytes_per_vm"]["total"]
            )
    return rows


def show(row: dict[str, Any]) -> None:
    kib = {k: v >> 10 for k, v in row["kernel_memory_bytes_per_vm"].items()}
    least = row["kernel_memory_bytes_per_vm_least"]["total"] >> 10
    arrays = row["memslot_arrays_bytes_per_vm"].get("total", 0) >> 10
    print(
        f"{row['label']:<58} slots/VM {row['memslots_per_vm']:>4}  kernel KiB/VM {kib} "
        f"(least {least}; memslot arrays {arrays})  "
        f"first pass {row['first_pass_seconds']:.4f} s",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--vms", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", metavar="TEXT", help="only the configurations whose label has TEXT"
    )
    parser.add_argument(
        "--trap-repeats", type=int, default=3, help="trap costs ~3.5 s of CPU per VM"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    with Kvm() as kvm:
        slots = slot_cost_by_caller(kvm)
        for row in slots:
            print(
                f"one {row['slot_bytes'] >> 10} KiB slot: {row['total_bytes_per_slot'] >> 10} "
                f"KiB of vmalloc {row['vmalloc_bytes_per_slot']}"
            )
        rows = measure_configs(kvm, args.vms, args.repeats, args.trap_repeats, args.only)
    result = {
        "benchmark": "kernel_memory",
        "buses": BUSES,
        "vms": args.vms,
        "repeats": args.repeats,
        "trap_repeats": args.trap_repeats,
        "fields": ["VmallocUsed", "SecPageTables", "PageTables"],
        "configs": rows,
        "memslot_vmalloc_by_size": slots,
        "duration_seconds": round(time.perf_counter() - started, 1),
        "host": hostinfo.collect(),
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

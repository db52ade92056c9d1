"""Measurement sweeps shared by ``pcihole bench`` and ``benchmarks/``: repeated scans,
medians and spreads, ratios between strategies measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from pcihole import layout
from pcihole.holes.memory import close_shared_hole_memory
from pcihole.holes.strategy import REFERENCE, REGISTRY
from pcihole.host import info as hostinfo
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.measure.scan import run_scan

TIMED_KEYS = (
    "setup_seconds",
    "hole_setup_seconds",
    "wall_seconds",
    "first_pass_seconds",
    "warm_pass_seconds",
)
MEMORY_HEADROOM = 0.75
"""A point runs only if its private hole memory fits in this share of MemAvailable."""


def options_for(strategy: str, buses: int, **extra: Any) -> MachineOptions:
    """The machine a comparison runs ``strategy`` on: present functions answered the way
    that goes with it (``trap`` is QEMU's way, every config access exits; the others
    mirror present pages so that only the holes differ)."""
    present = REGISTRY[strategy].present
    return MachineOptions(buses=buses, strategy=strategy, present=present, **extra)


def fits_in_memory(strategy: str, vms: int, buses: int) -> str | None:
    """None when the point fits in host memory, else why it is skipped."""
    per_byte = REGISTRY[strategy].private_bytes_per_window_byte
    if not per_byte:
        return None
    need = vms * layout.ecam_size(buses) * per_byte
    available = hostinfo.meminfo().get("MemAvailable", 0) * 1024
    if need > MEMORY_HEADROOM * available:
        return f"needs {need >> 20} MiB of private {strategy}, {available >> 20} MiB available"
    return None


def measure_point(
    kvm: Kvm,
    options: MachineOptions,
    vms: int,
    repeats: int,
    *,
    mode: str = "brute",
    passes: int = 2,
) -> dict[str, Any]:
    """Scan ``repeats`` times with ``vms`` VMs; medians, spreads and every raw sample."""
    samples = []
    for _ in range(repeats):
        report = run_scan(kvm, options, vms=vms, mode=mode, passes=passes).as_json()
        per_vm = report["pass_seconds_per_vm"]
        samples.append(
            {
                "setup_seconds": report["setup_seconds"],
                "hole_setup_seconds": report["hole_setup_seconds_per_vm"],
                "wall_seconds": report["scan_seconds"],
                "first_pass_seconds": statistics.median(p[0] for p in per_vm),
                "warm_pass_seconds": statistics.median(p[-1] for p in per_vm),
                "pass_seconds_per_vm": per_vm,
                "hole_memory_bytes_total": report["hole_memory_bytes_total"],
                "hole_memory_bytes_per_vm": report["hole_memory_bytes_per_vm"],
                "kernel_memory_bytes_per_vm": report["kernel_memory"]["per_vm_bytes"],
                "exits_per_vm": report["exits_per_vm"],
                "memslots_per_vm": report["memslots_per_vm"],
                "backing": report["backing"],
                "functions_found": report["functions_found"],
            }
        )
    point: dict[str, Any] = {
        "strategy": options.strategy,
        "present": options.present,
        "buses": options.buses,
        "vms": vms,
        "repeats": repeats,
        "samples": samples,
    }
    for key in TIMED_KEYS:
        values = [sample[key] for sample in samples]
        point[key] = statistics.median(values)
        point[key + "_spread"] = [min(values), max(values)]
    last = samples[-1]
    for key in (
        "hole_memory_bytes_total",
        "hole_memory_bytes_per_vm",
        "exits_per_vm",
        "memslots_per_vm",
        "backing",
    ):
        point[key] = last[key]
    point.update(kernel_medians(samples))
    return point


def kernel_medians(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per-VM kernel memory by /proc/meminfo field over the repeats (each field on
    its own: host-wide noise lands in different repeats), and the spread of the total."""
    by_field = [sample["kernel_memory_bytes_per_vm"] for sample in samples]
    medians = {name: int(statistics.median(vm[name] for vm in by_field)) for name in by_field[0]}
    totals = [vm["total"] for vm in by_field]
    return {
        "kernel_memory_bytes_per_vm": medians,
        "kernel_memory_bytes_per_vm_spread": [min(totals), max(totals)],
    }


def sweep(
    kvm: Kvm,
    strategies: Iterable[str],
    vm_counts: Iterable[int],
    bus_counts: Iterable[int],
    repeats: Callable[[str, int], int],
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    passes: int = 2,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every (strategy, buses, VMs) point that fits; and the ones skipped, with why."""
    points: list[dict[str, Any]] = []
    skipped: list[str] = []
    for buses in bus_counts:
        for strategy in strategies:
            for vms in vm_counts:
                why = fits_in_memory(strategy, vms, buses)
                if why is not None:
                    skipped.append(f"{strategy}, {buses} buses, {vms} VMs: {why}")
                    continue
                point = measure_point(
                    kvm, options_for(strategy, buses), vms, repeats(strategy, buses), passes=passes
                )
                points.append(point)
                if progress is not None:
                    progress(point)
    return points, skipped


def ratios(points: list[dict[str, Any]], key: str, base: str = REFERENCE) -> dict[str, float]:
    """``key`` of each point over the ``base`` strategy's at the same buses and VM count."""
    by_place = {(p["buses"], p["vms"], p["strategy"]): p for p in points}
    out: dict[str, float] = {}
    for (buses, vms, strategy), point in sorted(by_place.items()):
        reference = by_place.get((buses, vms, base))
        if strategy == base or reference is None or not reference[key]:
            continue
        out[f"{strategy}/{base} {buses} buses {vms} VMs"] = round(point[key] / reference[key], 2)
    return out


VM_COUNTS = (1, 2, 4, 8, 16, 32, 64)
BUS_COUNTS = (1, 16, 256)


def run_bench(
    *,
    max_vms: int = 64,
    repeats: int = 3,
    quick: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The full sweep of ``pcihole bench``: every raw figure plus the machine's facts.

    Trap over a 256-bus window costs ~3.5 s of CPU per VM, so that row is measured once
    per point (the JSON says so); everything else ``repeats`` times.
    """
    counts = [n for n in VM_COUNTS if n <= (8 if quick else max_vms)]
    repeat_count = 1 if quick else repeats

    def repeats_for(strategy: str, buses: int) -> int:
        trapping = not REGISTRY[strategy].maps_memory  # every probe exits: seconds a VM
        return 1 if trapping and buses == layout.ECAM_MAX_BUSES else repeat_count

    started = time.perf_counter()
    with Kvm() as kvm:
        points, skipped = sweep(
            kvm, tuple(REGISTRY), counts, BUS_COUNTS, repeats_for, progress=progress, passes=1
        )
    close_shared_hole_memory()
    return {
        "benchmark": "pcihole bench",
        "ring": 3,
        "mode": "brute",
        "vm_counts": counts,
        "bus_counts": list(BUS_COUNTS),
        "repeats": repeat_count,
        "trap_256_repeats": 1,
        "points": points,
        "skipped": skipped,
        "ratios": {
            "hole_memory_bytes_total": ratios(points, "hole_memory_bytes_total"),
            "first_pass_seconds": ratios(points, "first_pass_seconds"),
            "setup_seconds": ratios(points, "setup_seconds"),
            "hole_setup_seconds": ratios(points, "hole_setup_seconds"),
        },
        "duration_seconds": round(time.perf_counter() - started, 1),
        "host": hostinfo.collect(),
    }

"""``pcihole demo``: what PCI holes cost, and what pcihole saves, on this machine.

For each strategy, N VMs with the default topology and a 256-bus window enumerate PCI by
brute force and recursively. One guest's findings are listed like ``lspci -nn``; then a
table compares host memory for holes, memslots, config exits and scan time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pcihole import layout
from pcihole.holes.memory import close_shared_hole_memory
from pcihole.holes.strategy import REFERENCE, REGISTRY
from pcihole.kvm import Kvm
from pcihole.measure.bench import options_for
from pcihole.measure.progress import Progress
from pcihole.measure.scan import ScanReport, run_scan
from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.routing import route
from pcihole.pci.topology import Topology


def order() -> tuple[str, ...]:
    """Table rows: every registered strategy, the reference (pcihole's own) last, under
    what it is compared with."""
    return (*(name for name in reversed(REGISTRY) if name != REFERENCE), REFERENCE)


@dataclass
class DemoResult:
    vms: int
    buses: int
    reports: dict[str, ScanReport]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "vms": self.vms,
            "buses": self.buses,
            "seconds": round(self.seconds, 3),
            "strategies": {name: report.as_json() for name, report in self.reports.items()},
        }


def run_demo(vms: int = 8, buses: int = layout.ECAM_MAX_BUSES) -> DemoResult:
    started = time.perf_counter()
    progress = Progress("demo", len(order()) * (vms + 1))
    reports: dict[str, ScanReport] = {}
    try:
        with Kvm() as kvm:
            for strategy in order():

                def built(label: str, strategy: str = strategy) -> None:
                    progress.step(f"{strategy}: {label}")

                reports[strategy] = run_scan(
                    kvm, options_for(strategy, buses), vms=vms, mode="both", progress=built
                )
                progress.step(f"{strategy}: {vms} VMs scanned")
    finally:
        progress.done()
        close_shared_hole_memory()
    return DemoResult(vms, buses, reports, time.perf_counter() - started)


def _size(value: int) -> str:
    if value == 0:
        return "0"
    if value >= 1 << 20:
        return (
            f"{value / (1 << 20):.0f} MiB"
            if value % (1 << 20) == 0
            else f"{value / (1 << 20):.1f} MiB"
        )
    return f"{value / 1024:.0f} KiB"


def _ratio(value: float, reference: float) -> str:
    if reference == 0:
        return "-" if value == 0 else "inf"
    ratio = value / reference
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def listing(report: ScanReport, buses: int) -> list[str]:
    """What one guest found, like ``lspci -nn``."""
    models = route(Topology.default(buses))
    lines = []
    for found in report.functions:
        function = models.function_at(GuestBdf(Bdf.parse(found.bdf)))
        text = function.description if function else f"class {found.class_code:06x}"
        lines.append(f"{found.bdf} {text} [{found.vendor:04x}:{found.device:04x}]")
    return lines


def render(result: DemoResult) -> str:
    shared = result.reports[REFERENCE].as_json()
    out = [
        f"One guest's view (brute force and recursive agree, {result.vms} VMs agree):",
        *("  " + line for line in listing(result.reports[REFERENCE], result.buses)),
        "",
        f"{result.vms} VMs, {result.buses}-bus ECAM window "
        f"({_size(layout.ecam_size(result.buses))}), each guest enumerating at ring 3:",
        "",
    ]
    header = (
        f"{'strategy':<18} {'hole memory':>11} {'user/VM':>9} {'kernel/VM':>9} {'slots/VM':>8} "
        f"{'exits/VM':>9} {'scan (all VMs)':>14} {'memory':>8} {'time':>8}"
    )
    out += [header, "-" * len(header)]
    for name in order():
        data = result.reports[name].as_json()
        exits = data["exits_per_vm"]
        config_exits = exits["hole"] + exits["device"] + exits["device_reads"]
        out.append(
            f"{REGISTRY[name].label:<18} {_size(data['hole_memory_bytes_total']):>11} "
            f"{_size(data['hole_memory_bytes_per_vm']):>9} "
            f"{_size(data['kernel_memory_bytes_per_vm']):>9} {data['memslots_per_vm']:>8} "
            f"{config_exits:>9} {data['scan_seconds']:>12.3f} s "
            f"{_ratio(data['hole_memory_bytes_total'], shared['hole_memory_bytes_total']):>8} "
            f"{_ratio(data['scan_seconds'], shared['scan_seconds']):>8}"
        )
    out += [
        "",
        "memory and time columns: each strategy against shared. exits/VM: configuration",
        "accesses that left the guest (brute force + recursive). hole memory: measured from",
        "/proc/self/smaps (Pss), for all VMs together; user/VM: what each VM alone owns.",
        "kernel/VM: what KVM and the host kernel held per VM at the peak of set-up and scan",
        "(memslot arrays in VmallocUsed, SecPageTables, PageTables of /proc/meminfo, minus a",
        "baseline taken before; host-wide, so other processes add noise). Every VM costs",
        "some (trap too: its RAM slot and vCPU); compare the strategies with each other.",
        f"shared hole memory: {shared['backing']} - {shared['backing_detail']}",
    ]
    out += [f"note: {note}" for note in shared["notes"]]
    out.append(f"demo took {result.seconds:.1f} s")
    return "\n".join(out)

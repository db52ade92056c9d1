"""Run N VMs that enumerate PCI through ECAM, and measure what it cost.

The guest program is ``guest/asm/scan.S``. This module builds the machines, runs their
vCPUs on threads, reads back what each guest found, checks that every VM agrees, and
collects the figures: exits, memslots, host memory for holes (from smaps), times.
"""

from __future__ import annotations

import itertools
import statistics
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pcihole import layout
from pcihole.errors import Bug, GuestFault
from pcihole.guest.machine import PciMachine, shared_hole_memory_bytes
from pcihole.host.meminfo import KernelMemory, MeminfoSampler, read_meminfo
from pcihole.host.smaps import resident_bytes
from pcihole.kvm import Kvm
from pcihole.layout import RECURSIVE_RESULTS_OFFSET
from pcihole.machine import MachineOptions
from pcihole.machine.runloop import RunResult
from pcihole.pci.bdf import Bdf
from pcihole.pci.topology import Topology

MODES = {"brute": 0, "recursive": 1, "both": 2}
RECORD = struct.Struct("<IIII")


class ScanError(GuestFault):
    """A scan guest did not finish: the message names the VM and why."""


@dataclass(frozen=True)
class FoundFunction:
    """A function as the guest read it through ECAM."""

    bdf: str
    vendor: int
    device: int
    class_code: int
    header_type: int

    def as_json(self) -> dict[str, str]:
        return {
            "bdf": self.bdf,
            "vendor": f"{self.vendor:04x}",
            "device": f"{self.device:04x}",
            "class": f"{self.class_code:06x}",
        }


@dataclass
class Enumeration:
    """What one enumeration method found in one VM, and how many probes it made."""

    functions: list[FoundFunction]
    probes: int


@dataclass
class VmScan:
    """One VM's scan: its result, its enumerations, its exits and times."""

    name: str
    result: RunResult
    enumerations: dict[str, Enumeration]
    hole_exits: int
    device_exits: int
    device_writes: int
    memslots: int
    pass_seconds: list[float]
    hole_setup_seconds: float


@dataclass
class ScanReport:
    """Everything ``pcihole scan`` reports."""

    options: MachineOptions
    mode: str
    vms: list[VmScan]
    backing: str
    backing_detail: str
    notes: list[str]
    setup_seconds: float
    scan_seconds: float
    hole_memory_bytes_total: int
    hole_memory_bytes_per_vm: int
    functions: list[FoundFunction] = field(default_factory=list)
    kernel_memory: KernelMemory | None = None
    """Kernel memory the run held at its peak (memslot arrays, page tables), host-wide."""

    @property
    def kernel_memory_bytes_per_vm(self) -> dict[str, int]:
        """Peak rise of each kernel field (and ``total``) over set-up and scan, per VM."""
        if self.kernel_memory is None:
            return {}
        return self.kernel_memory.per_vm(len(self.vms))

    def as_json(self) -> dict[str, Any]:
        first = self.vms[0]
        return {
            "strategy": self.options.strategy,
            "present": self.options.present,
            "writes": self.options.writes,
            "backing": self.backing,
            "backing_detail": self.backing_detail,
            "notes": self.notes,
            "vms": len(self.vms),
            "buses": self.options.buses,
            "ring": self.options.ring,
            "mode": self.mode,
            "probes_per_vm": {name: e.probes for name, e in first.enumerations.items()},
            "functions_found": [f.bdf for f in self.functions],
            "functions": [f.as_json() for f in self.functions],
            "exits_per_vm": {
                "hole": max(vm.hole_exits for vm in self.vms),
                "device": max(vm.device_writes for vm in self.vms),
                "device_reads": max(vm.device_exits - vm.device_writes for vm in self.vms),
            },
            "memslots_per_vm": max(vm.memslots for vm in self.vms),
            "hole_memory_bytes_total": self.hole_memory_bytes_total,
            "hole_memory_bytes_per_vm": self.hole_memory_bytes_per_vm,
            # The kernel's share beside the user memory above: KVM's memslot arrays and
            # page tables, peak rise over set-up and the scan (see pcihole/host/meminfo.py).
            "kernel_memory_bytes_total": (
                self.kernel_memory.peak_rise["total"] if self.kernel_memory else None
            ),
            "kernel_memory_bytes_per_vm": self.kernel_memory_bytes_per_vm.get("total"),
            "kernel_memory": (
                self.kernel_memory.as_json(len(self.vms)) if self.kernel_memory else None
            ),
            "setup_seconds": round(self.setup_seconds, 6),
            "hole_setup_seconds_per_vm": round(
                statistics.median(vm.hole_setup_seconds for vm in self.vms), 6
            ),
            "scan_seconds": round(self.scan_seconds, 6),
            "pass_seconds_per_vm": [[round(s, 6) for s in vm.pass_seconds] for vm in self.vms],
        }


def _read_functions(machine: PciMachine, offset: int, count: int) -> list[FoundFunction]:
    raw = machine.guest.results(RECORD.size * count, offset)
    found = []
    for index in range(count):
        bdf_bits, ids, class_rev, header = RECORD.unpack_from(raw, index * RECORD.size)
        bdf = Bdf(bdf_bits >> 8, (bdf_bits >> 3) & 0x1F, bdf_bits & 7)
        found.append(
            FoundFunction(str(bdf), ids & 0xFFFF, ids >> 16, class_rev >> 8, (header >> 16) & 0xFF)
        )
    return sorted(found, key=lambda f: f.bdf)


def run_scan(
    kvm: Kvm,
    options: MachineOptions,
    *,
    vms: int = 1,
    mode: str = "brute",
    passes: int = 1,
    topology: Callable[[], Topology] | None = None,
    progress: Callable[[str], None] | None = None,
    read_kernel: Callable[[], Mapping[str, int]] = read_meminfo,
) -> ScanReport:
    """Build ``vms`` machines, let each guest enumerate, and report.

    ``read_kernel`` gives the kernel figures the sampler watches (/proc/meminfo; tests
    give figures only their own VMs move)."""
    if mode not in MODES:
        raise Bug(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if vms < 1:
        raise Bug(f"need at least one VM, got {vms}")
    make_topology = topology or (lambda: Topology.default(options.buses))
    params = [layout.ECAM_BASE, options.buses, MODES[mode], passes]
    machines: list[PciMachine] = []
    # Sampled from before the first VM until the scan ends (the VMs still exist then).
    sampler = MeminfoSampler(read=read_kernel)
    try:
        sampler.start()
        started = time.perf_counter()
        for index in range(vms):
            machines.append(
                PciMachine(kvm, make_topology(), options, "scan", params, name=f"vm{index}")
            )
            if progress:
                progress(f"built VM {index + 1}/{vms}")
        setup_seconds = time.perf_counter() - started
        results, pass_times, scan_seconds = _run_all(machines, passes, mode)
        kernel = sampler.stop()
        report = _collect(machines, results, pass_times, options, mode, passes)
        report.setup_seconds = setup_seconds
        report.kernel_memory = kernel
        report.scan_seconds = scan_seconds
        return report
    finally:
        sampler.stop()
        for machine in machines:
            machine.close()


def _run_all(
    machines: Sequence[PciMachine], passes: int, mode: str
) -> tuple[list[RunResult], list[list[float]], float]:
    syncs_per_pass = 4 if mode == "both" else 2
    times: list[list[float]] = [[] for _ in machines]
    results: list[RunResult | None] = [None] * len(machines)
    gate = threading.Barrier(len(machines) + 1)

    def worker(index: int) -> None:
        machine = machines[index]
        stamps = times[index]
        count = [0]

        def on_sync(_value: int) -> None:
            count[0] += 1
            if count[0] % syncs_per_pass == 0:
                stamps.append(time.perf_counter())

        machine.guest.on_sync(on_sync)
        gate.wait()
        stamps.append(time.perf_counter())
        results[index] = machine.run()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(machines))]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    pass_times = [[b - a for a, b in itertools.pairwise(t)] for t in times]
    final = [r for r in results if r is not None]
    return final, pass_times, elapsed


def _collect(
    machines: Sequence[PciMachine],
    results: Sequence[RunResult],
    pass_times: list[list[float]],
    options: MachineOptions,
    mode: str,
    passes: int,
) -> ScanReport:
    scans: list[VmScan] = []
    for machine, result, seconds in zip(machines, results, pass_times, strict=True):
        if not result.ok:  # every VM has finished: a failed one stopped only itself
            if result.error is not None and not isinstance(result.error, GuestFault):
                raise result.error  # a device's own error: not the guest's doing
            raise ScanError(f"{machine.guest.name}: {result.reason.value}: {result.detail}")
        methods = ["brute", "recursive"] if mode == "both" else [mode]
        syncs = result.syncs[: 2 * len(methods)]
        enumerations = {}
        for index, method in enumerate(methods):
            found, probes = syncs[2 * index], syncs[2 * index + 1]
            offset = RECURSIVE_RESULTS_OFFSET if method == "recursive" else 0
            enumerations[method] = Enumeration(_read_functions(machine, offset, found), probes)
        exits = machine.ecam.exits
        scans.append(
            VmScan(
                machine.guest.name,
                result,
                enumerations,
                exits.hole,
                exits.device,
                exits.device_writes,
                machine.memslots,
                seconds,
                machine.window.hole_setup_seconds,
            )
        )
    reference = next(iter(scans[0].enumerations.values())).functions
    for scan in scans:
        for method, enumeration in scan.enumerations.items():
            if enumeration.functions != reference:
                raise Bug(
                    f"{scan.name} {method} found {[f.bdf for f in enumeration.functions]}, "
                    f"{scans[0].name} found {[f.bdf for f in reference]}"
                )
    per_vm_ranges = [r for m in machines if m.strategy for r in m.strategy.per_vm_ranges()]
    per_vm_total = resident_bytes(per_vm_ranges)
    shared = shared_hole_memory_bytes(machines)
    report = machines[0].report()
    return ScanReport(
        options=options,
        mode=mode,
        vms=scans,
        backing=report.backing,
        backing_detail=report.detail,
        notes=report.notes,
        setup_seconds=0.0,
        scan_seconds=0.0,
        hole_memory_bytes_total=per_vm_total + shared,
        hole_memory_bytes_per_vm=per_vm_total // len(machines),
        functions=reference,
    )

"""The kernel's share of hole memory in `scan --json`: present, per VM, consistent.

/proc/meminfo is host-wide and other processes move it both ways, so nothing here
thresholds it: the figure this process's VMs must raise is read from /proc/vmallocinfo
(only areas new since the test began, so others' frees cannot cancel it), fed to the
scan's own sampler. The exact per-slot arithmetic is measured by
benchmarks/kernel_memory.py.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from pcihole.host.vmallocinfo import KVM_MEMSLOT_CALLERS, PAGE, VMALLOCINFO, read_vmallocinfo
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.measure.scan import run_scan

VMS = 3
FIELDS = ["VmallocUsed", "SecPageTables", "PageTables"]


def own_vms() -> int:
    """KVM VMs this process has open (their fds): only this process changes it."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:kvm-vm"
    return count


PER_VM = {"VmallocUsed": 98_304, "SecPageTables": 12_288, "PageTables": 4_096}
"""What the scripted kernel below holds per open VM: the figures the report must give."""


class ScriptedKernel:
    """A kernel reader whose fields grow by ``PER_VM`` for every VM this process has open
    (counted from /proc/self/fd by the test, not by the code under test), over a baseline,
    so the per-VM answers are known before the run. After its first reading with every VM
    open, the kernel gives half of each VM's share back: the report must keep the peak,
    not the last reading."""

    def __init__(self, vms: int) -> None:
        self.open_before = own_vms()
        self.vms = vms
        self.peaked = False

    def __call__(self) -> dict[str, int]:
        vms = own_vms() - self.open_before
        share = 2 if self.peaked else 1
        self.peaked = self.peaked or vms == self.vms
        return {name: (1 << 30) + size * vms // share for name, size in PER_VM.items()}


@pytest.mark.parametrize("strategy", ["shared", "fill", "trap"])
def test_scan_reports_kernel_memory_per_vm_by_field(kvm: Kvm, strategy: str) -> None:
    options = MachineOptions(buses=16, strategy=strategy)
    report = run_scan(kvm, options, vms=VMS, read_kernel=ScriptedKernel(VMS)).as_json()
    kernel = report["kernel_memory"]
    assert "kernel_memory_bytes_during_setup" not in report
    assert kernel["fields"] == FIELDS
    assert kernel["per_vm_bytes"] == {**PER_VM, "total": 114_688}
    assert kernel["peak_rise_bytes"] == {
        "VmallocUsed": 294_912,
        "SecPageTables": 36_864,
        "PageTables": 12_288,
        "total": 344_064,
    }
    assert report["kernel_memory_bytes_per_vm"] == 114_688
    assert report["kernel_memory_bytes_total"] == 344_064
    assert kernel["samples"] >= 1


class NewMemslotArrays:
    """A kernel reader for the sampler: as ``VmallocUsed``, the bytes of KVM's memslot
    arrays allocated since it was made (/proc/vmallocinfo areas by KVM's memslot
    functions, keyed by address). Other processes can add areas but cannot take ours
    away: their areas freed meanwhile were in the snapshot and never counted. Each
    reading is kept with how many VMs this process had open when it was taken."""

    def __init__(self) -> None:
        self.before = set(read_vmallocinfo())
        self.readings: list[tuple[int, int]] = []

    def __call__(self) -> dict[str, int]:
        vms = own_vms()
        new = sum(
            size
            for key, (caller, size) in read_vmallocinfo().items()
            if key not in self.before and caller in KVM_MEMSLOT_CALLERS
        )
        self.readings.append((vms, new))
        return {"VmallocUsed": new}


def test_fill_costs_the_kernel_something_per_vm(kvm: Kvm) -> None:
    """Each fill VM's memslots get arrays KVM vmallocs (at least a page each), and the
    scan's sampler sees them: baseline before the first VM, a sample while all exist,
    peak rise and per-VM share computed from exactly the readings it was given."""
    if not os.access(VMALLOCINFO, os.R_OK):
        pytest.skip("/proc/vmallocinfo needs root")
    reader = NewMemslotArrays()
    open_before = own_vms()
    report = run_scan(
        kvm, MachineOptions(buses=16, strategy="fill"), vms=VMS, read_kernel=reader
    ).as_json()
    (first_vms, baseline), *later = reader.readings
    assert first_vms == open_before, "baseline taken after a VM of the run existed"
    assert any(vms == open_before + VMS for vms, _ in later), "no sample while all VMs existed"
    peak = max(0, *(value - baseline for _, value in later))
    kernel = report["kernel_memory"]
    assert kernel["peak_rise_bytes"] == {
        **dict.fromkeys(FIELDS, 0),
        "VmallocUsed": peak,
        "total": peak,
    }
    assert report["kernel_memory_bytes_per_vm"] == peak // VMS
    assert kernel["samples"] == len(later)
    slots = report["memslots_per_vm"]
    assert slots > 0
    assert report["kernel_memory_bytes_per_vm"] >= slots * PAGE, (slots, reader.readings)


def test_bench_point_and_demo_table_carry_kernel_memory_per_vm(kvm: Kvm) -> None:
    from pcihole.measure.bench import measure_point, options_for
    from pcihole.measure.demo import render, run_demo

    point = measure_point(kvm, options_for("fill", 1), 2, 2, passes=1)
    per_vm = point["kernel_memory_bytes_per_vm"]
    assert set(per_vm) == {*FIELDS, "total"}
    low, high = point["kernel_memory_bytes_per_vm_spread"]
    assert low <= high
    assert [s["kernel_memory_bytes_per_vm"]["total"] for s in point["samples"]] in (
        [low, high],
        [high, low],
    )
    result = run_demo(vms=2, buses=1)
    table = render(result)
    assert "kernel/VM" in table and "user/VM" in table
    for name, report in result.reports.items():
        assert report.as_json()["kernel_memory_bytes_per_vm"] is not None, name

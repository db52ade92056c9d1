"""The kernel's share of hole memory in `scan --json`: present, per VM, consistent.

Only robust properties: /proc/meminfo is host-wide and other tests run beside this one,
so no threshold that load could break; the exact per-slot arithmetic is measured by
benchmarks/kernel_memory.py.
"""

from __future__ import annotations

import pytest

from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.measure.scan import run_scan

VMS = 3
FIELDS = ["VmallocUsed", "SecPageTables", "PageTables"]


@pytest.mark.parametrize("strategy", ["shared", "fill", "trap"])
def test_scan_reports_kernel_memory_per_vm_by_field(kvm: Kvm, strategy: str) -> None:
    report = run_scan(kvm, MachineOptions(buses=16, strategy=strategy), vms=VMS).as_json()
    kernel = report["kernel_memory"]
    assert "kernel_memory_bytes_during_setup" not in report
    assert kernel["fields"] == FIELDS
    per_vm, peak = kernel["per_vm_bytes"], kernel["peak_rise_bytes"]
    assert set(per_vm) == set(peak) == {*FIELDS, "total"}
    for name in per_vm:
        assert per_vm[name] == peak[name] // VMS
        assert peak[name] >= 0
    # The total is the peak of the sum, never more than the sum of the fields' peaks.
    assert peak["total"] <= sum(peak[name] for name in FIELDS)
    assert report["kernel_memory_bytes_per_vm"] == per_vm["total"]
    assert report["kernel_memory_bytes_total"] == peak["total"]
    assert kernel["samples"] >= 1


def test_fill_costs_the_kernel_something_per_vm(kvm: Kvm) -> None:
    """Each fill VM adds memslots whose arrays KVM allocates (at least a page each)."""
    report = run_scan(kvm, MachineOptions(buses=16, strategy="fill"), vms=VMS).as_json()
    assert report["memslots_per_vm"] > 0
    assert report["kernel_memory_bytes_per_vm"] > 0


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

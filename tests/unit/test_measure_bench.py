"""The bench's medians and spreads on scans whose figures the test writes itself: literal
answers, so the arithmetic is judged by numbers from outside the code under test."""

from __future__ import annotations

from typing import Any

import pytest

from pcihole.machine import MachineOptions
from pcihole.measure import bench

KERNEL = ["VmallocUsed", "SecPageTables", "PageTables"]


class ScriptedScan:
    """Stands for ``run_scan``: each call returns the next scripted report."""

    def __init__(self, passes: list[list[list[float]]], kernel: list[int]) -> None:
        self.passes = passes
        self.kernel = kernel
        self.calls = 0

    def __call__(self, *_args: Any, **_kwargs: Any) -> ScriptedScan:
        self.calls += 1
        return self

    def as_json(self) -> dict[str, Any]:
        index = self.calls - 1
        total = self.kernel[index]
        kernel = {"VmallocUsed": total, "SecPageTables": 0, "PageTables": 0, "total": total}
        return {
            "setup_seconds": 10.0 + index,
            "hole_setup_seconds_per_vm": 0.5 * index,
            "scan_seconds": [7.0, 1.0, 4.0][index],
            "pass_seconds_per_vm": self.passes[index],
            "hole_memory_bytes_total": 4096,
            "hole_memory_bytes_per_vm": 0,
            "kernel_memory": {"per_vm_bytes": kernel},
            "exits_per_vm": {"hole": 0},
            "memslots_per_vm": 14,
            "backing": "memfd",
            "functions_found": [],
        }


def test_medians_and_spreads_over_vms_then_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three repeats of three VMs, two passes each (first, warm), in seconds.
    passes = [
        [[1.0, 0.1], [9.0, 0.3], [2.0, 0.2]],  # first passes' median 2.0, warm 0.2
        [[5.0, 0.5], [5.0, 0.4], [6.0, 0.9]],  # 5.0, 0.5
        [[3.0, 0.05], [0.5, 0.07], [4.0, 0.06]],  # 3.0, 0.06
    ]
    scan = ScriptedScan(passes, kernel=[3000, 1000, 2000])
    monkeypatch.setattr(bench, "run_scan", scan)
    point = bench.measure_point(None, MachineOptions(buses=1), 3, 3)  # type: ignore[arg-type]
    assert scan.calls == 3
    assert [s["first_pass_seconds"] for s in point["samples"]] == [2.0, 5.0, 3.0]
    assert point["first_pass_seconds"] == 3.0
    assert point["first_pass_seconds_spread"] == [2.0, 5.0]
    assert point["warm_pass_seconds"] == 0.2
    assert point["warm_pass_seconds_spread"] == [0.06, 0.5]
    assert point["wall_seconds"] == 4.0 and point["wall_seconds_spread"] == [1.0, 7.0]
    assert point["setup_seconds"] == 11.0
    assert point["kernel_memory_bytes_per_vm"]["total"] == 2000
    assert point["kernel_memory_bytes_per_vm_spread"] == [1000, 3000]


def test_an_even_count_takes_the_mean_of_the_middle_two(monkeypatch: pytest.MonkeyPatch) -> None:
    passes = [[[1.0, 0.1], [3.0, 0.1]], [[8.0, 0.2], [4.0, 0.2]]]  # VM medians 2.0 and 6.0
    monkeypatch.setattr(bench, "run_scan", ScriptedScan(passes, kernel=[100, 301]))
    point = bench.measure_point(None, MachineOptions(buses=1), 2, 2)  # type: ignore[arg-type]
    assert point["first_pass_seconds"] == 4.0
    assert point["kernel_memory_bytes_per_vm"]["total"] == 200  # int(200.5)

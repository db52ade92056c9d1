"""The main job, smaller: `pcihole demo --vms 2`, and the bench sweep with its plot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.kvm import Kvm
from pcihole.measure.bench import ratios, sweep
from tests.support import run_pcihole

BUSES = 16


def test_demo_runs_and_its_figures_hang_together(tmp_path: Path) -> None:
    figures = tmp_path / "demo.json"
    done = run_pcihole("demo", "--vms", "2", "--buses", str(BUSES), "--json", str(figures))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "00:00.0 Host bridge" in out and "[8086:29c0]" in out
    assert "shared (pcihole)" in out and "trap (as QEMU)" in out and "fill (0xff copy)" in out
    # not a terminal: progress comes as plain lines on stderr
    assert "demo: 1/" in done.stderr and "\r" not in done.stderr
    data = json.loads(figures.read_text())["strategies"]
    window = layout.ecam_size(BUSES)
    shared, fill, trap = data["shared"], data["fill"], data["trap"]
    assert shared["exits_per_vm"]["hole"] == 0
    assert shared["hole_memory_bytes_per_vm"] == 0
    assert 0 < shared["hole_memory_bytes_total"] <= layout.HUGE_PAGE_SIZE
    assert fill["hole_memory_bytes_per_vm"] == window
    assert fill["hole_memory_bytes_total"] == 2 * window
    assert fill["exits_per_vm"]["hole"] == 0
    assert trap["hole_memory_bytes_total"] == 0
    assert trap["exits_per_vm"]["hole"] >= BUSES * 256 - len(trap["functions_found"])
    assert shared["functions_found"] == fill["functions_found"] == trap["functions_found"]


def test_bench_sweep_and_plot(kvm: Kvm, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot is an optional extra: pcihole[plot]")
    from pcihole.measure.plot import plot_bench

    started = time.perf_counter()
    points, skipped = sweep(kvm, ("shared", "fill", "trap"), [1, 2], [1], lambda s, b: 2)
    elapsed = time.perf_counter() - started  # the test's own clock bounds every figure
    assert skipped == []
    assert {(p["strategy"], p["vms"]) for p in points} == {
        (s, n) for s in ("shared", "fill", "trap") for n in (1, 2)
    }
    for point in points:
        assert len(point["samples"]) == 2
        firsts = [sample["first_pass_seconds"] for sample in point["samples"]]
        assert all(0 < value < elapsed for value in firsts)
        # The arithmetic itself is judged on literal figures in tests/unit/test_measure_bench.py.
        assert min(firsts) <= point["first_pass_seconds"] <= max(firsts)
        assert point["first_pass_seconds_spread"] == [min(firsts), max(firsts)]
    table = ratios(points, "hole_memory_bytes_total")
    assert table["fill/shared 1 buses 2 VMs"] > 0
    report = {"points": points, "bus_counts": [1], "vm_counts": [1, 2]}
    picture = tmp_path / "bench.png"
    plot_bench(report, str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

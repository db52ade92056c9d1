"""The bench plot: host memory for holes against VM count, kernel memory per VM, and scan
time per strategy.

matplotlib is an optional extra (``pip install 'pcihole[plot]'``): only this module
imports it, and only when a plot is asked for.
"""

from __future__ import annotations

from typing import Any

from pcihole.errors import EnvironmentProblem
from pcihole.holes.strategy import REGISTRY


class PlotError(EnvironmentProblem):
    """No plotting library, or nothing to plot."""


def plot_bench(report: dict[str, Any], path: str) -> None:
    plt = _pyplot()
    points = report["points"]
    buses = max(report["bus_counts"])
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for strategy, kind in REGISTRY.items():
        rows = sorted(
            (p for p in points if p["strategy"] == strategy and p["buses"] == buses),
            key=lambda p: p["vms"],
        )
        if rows:
            _plot_strategy(axes, strategy, kind.colour, rows)
    _label(axes, report, buses)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'pcihole[plot]'") from None
    return plt


def _plot_strategy(axes: Any, strategy: str, color: str, rows: list[dict[str, Any]]) -> None:
    memory_axis, kernel_axis, time_axis = axes
    vms = [p["vms"] for p in rows]
    with_memory = [p for p in rows if p["hole_memory_bytes_total"] > 0]
    if with_memory:  # a log axis has no zero: trap (0 bytes) is said in a note instead
        memory_axis.plot(
            [p["vms"] for p in with_memory],
            [p["hole_memory_bytes_total"] / (1 << 20) for p in with_memory],
            "o-",
            color=color,
            label=strategy,
        )
    # Kernel memory per VM: no zeros to hide, so a linear axis shows every strategy.
    kernel_axis.plot(
        vms,
        [p["kernel_memory_bytes_per_vm"]["total"] / (1 << 20) for p in rows],
        "s-",
        color=color,
        label=strategy,
    )
    seconds = [p["first_pass_seconds"] for p in rows]
    low = [p["first_pass_seconds"] - p["first_pass_seconds_spread"][0] for p in rows]
    high = [p["first_pass_seconds_spread"][1] - p["first_pass_seconds"] for p in rows]
    time_axis.errorbar(
        vms, seconds, yerr=[low, high], fmt="o-", color=color, label=strategy, capsize=3
    )


def _label(axes: Any, report: dict[str, Any], buses: int) -> None:
    memory_axis, kernel_axis, time_axis = axes
    memory_axis.set(
        xscale="log",
        yscale="log",
        xlabel="VMs in one process",
        ylabel="host memory for holes (MiB, all VMs)",
        title=f"Memory for holes, {buses}-bus window",
    )
    time_axis.set(
        xscale="log",
        yscale="log",
        xlabel="VMs in one process, all scanning at once",
        ylabel="brute-force scan, wall time per VM (s, median)",
        title=f"Scan of {buses} buses at ring 3 (first touch)",
    )
    kernel_axis.set(
        xscale="log",
        xlabel="VMs in one process",
        ylim=(0, None),
        ylabel="kernel memory per VM (MiB, median)",
        title="Kernel's share: memslot arrays + page tables",
    )
    for axis in (memory_axis, kernel_axis, time_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
        axis.set_xticks(report["vm_counts"], [str(n) for n in report["vm_counts"]])
    for y, kind in enumerate(k for k in REGISTRY.values() if not k.maps_memory):
        memory_axis.annotate(
            f"{kind.name}: 0 bytes of user memory, but every probe exits",
            xy=(0.02, 0.5 - 0.06 * y),
            xycoords="axes fraction",
            fontsize=9,
            color=kind.colour,
        )
    kernel_axis.annotate(
        "VmallocUsed + SecPageTables + PageTables, peak rise over\n"
        "set-up and scan / VMs (host-wide /proc/meminfo: noisy at few VMs)",
        xy=(0.02, 0.9),
        xycoords="axes fraction",
        fontsize=8,
    )

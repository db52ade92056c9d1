"""``pcihole bench``: sweep VM count and window size per strategy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pcihole.commands.options import check_output_file, int_in_range
from pcihole.errors import EnvironmentProblem
from pcihole.measure.bench import run_bench
from pcihole.measure.plot import plot_bench

NAME = "bench"


def add_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help="sweep VM count and window size per strategy")
    bench.add_argument("--json", metavar="FILE")
    bench.add_argument("--plot", metavar="FILE.png")
    bench.add_argument("--repeats", type=int_in_range("--repeats", 1, 20), default=3)
    bench.add_argument("--max-vms", type=int_in_range("--max-vms", 1, 64), default=64)
    bench.add_argument("--quick", action="store_true", help="up to 8 VMs, one repeat")
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output_file("--json", args.json)
    check_output_file("--plot", args.plot)
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - fail before an hour of measuring, not after
        except ImportError:
            raise EnvironmentProblem(
                "--plot needs matplotlib: pip install 'pcihole[plot]'"
            ) from None

    def show(point: dict[str, Any]) -> None:
        print(
            f"{point['strategy']:<6} {point['buses']:>3} buses {point['vms']:>3} VMs: "
            f"scan {point['first_pass_seconds']:.4f} s/VM, hole memory "
            f"{point['hole_memory_bytes_total'] >> 10} KiB, {point['memslots_per_vm']} slots/VM, "
            f"kernel {point['kernel_memory_bytes_per_vm']['total'] >> 10} KiB/VM",
            flush=True,
        )

    report = run_bench(max_vms=args.max_vms, repeats=args.repeats, quick=args.quick, progress=show)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot_bench(report, args.plot)
        print(f"wrote {args.plot}")
    return 0

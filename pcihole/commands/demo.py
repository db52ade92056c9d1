"""``pcihole demo``: what holes cost, trap, fill and shared side by side."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pcihole.commands.options import MAX_VMS, add_buses, check_output_file, int_in_range
from pcihole.measure.demo import render, run_demo

NAME = "demo"


def add_parser(commands: Any) -> None:
    demo = commands.add_parser(NAME, help="what holes cost: trap, fill and shared side by side")
    demo.add_argument("--vms", type=int_in_range("--vms", 1, MAX_VMS), default=8)
    add_buses(demo)
    demo.add_argument("--json", metavar="FILE", help="also write the figures here")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output_file("--json", args.json)
    result = run_demo(vms=args.vms, buses=args.buses)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result.as_json(), out, indent=2)
    print(render(result))
    return 0

"""``pcihole scan``: VMs enumerate PCI; exits, memslots, hole memory, times."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pcihole.commands.options import (
    MAX_VMS,
    add_machine_options,
    int_in_range,
    machine_options,
    topology_factory,
)
from pcihole.errors import EnvironmentProblem
from pcihole.holes.source import HoleSourceError
from pcihole.kvm import Kvm
from pcihole.measure.scan import MODES, ScanReport, run_scan

NAME = "scan"


def add_parser(commands: Any) -> None:
    scan = commands.add_parser(NAME, help="VMs enumerate PCI; measure exits, memory, time")
    add_machine_options(scan)
    scan.add_argument(
        "--ring",
        type=int,
        choices=[0, 3],
        default=3,
        help="guest privilege level for the scan (3 runs natively)",
    )
    scan.add_argument("--vms", type=int_in_range("--vms", 1, MAX_VMS), default=1)
    scan.add_argument(
        "--mode",
        choices=list(MODES),
        default="brute",
        help="brute force, recursive (as Linux), or both (must agree)",
    )
    scan.add_argument("--passes", type=int_in_range("--passes", 1, 100), default=1)
    scan.add_argument("--json", action="store_true", help="print JSON")
    scan.set_defaults(handler=run)


def _print_scan(report: ScanReport) -> None:
    data = report.as_json()
    print(
        f"strategy {data['strategy']} (holes), present functions {data['present']}, "
        f"hole writes {data['writes']}"
    )
    print(
        f"hole memory: {data['backing']}"
        + (f" ({data['backing_detail']})" if data["backing_detail"] else "")
    )
    for note in data["notes"]:
        print(f"note: {note}")
    print(f"{data['vms']} VM(s), {data['buses']} buses, ring {data['ring']}, mode {data['mode']}")
    print(f"found {len(report.functions)} functions:")
    for function in report.functions:
        print(
            f"  {function.bdf}  {function.vendor:04x}:{function.device:04x}"
            f"  class {function.class_code:06x}"
        )
    exits = data["exits_per_vm"]
    print(
        f"config exits per VM: {exits['hole']} for holes, {exits['device']} device writes, "
        f"{exits['device_reads']} device reads"
    )
    print(f"memslots per VM: {data['memslots_per_vm']}")
    print(
        f"host memory for holes: {data['hole_memory_bytes_total']} bytes in all, "
        f"{data['hole_memory_bytes_per_vm']} per VM"
    )
    kernel = data["kernel_memory"]["per_vm_bytes"]
    fields = ", ".join(
        f"{name} {kernel[name] >> 10} KiB" for name in data["kernel_memory"]["fields"]
    )
    print(
        f"kernel memory per VM (peak over set-up and scan, host-wide /proc/meminfo): "
        f"{kernel['total'] >> 10} KiB ({fields})"
    )
    print(f"setup {data['setup_seconds']:.4f} s, scan {data['scan_seconds']:.4f} s")


def run(args: argparse.Namespace) -> int:
    make_topology = topology_factory(args)
    options = machine_options(args)
    with Kvm() as kvm:
        try:
            report = run_scan(
                kvm,
                options,
                vms=args.vms,
                mode=args.mode,
                passes=args.passes,
                topology=make_topology,
            )
        except HoleSourceError as error:
            if options.backing is None:
                raise
            raise EnvironmentProblem(f"--backing {options.backing.value}: {error}") from None
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_scan(report)
    return 0

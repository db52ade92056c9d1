"""The ``pcihole`` command: thin subcommands over the library.

Bad input exits with status 2 and one line naming what was wrong; no tracebacks.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pcihole import hostinfo, layout
from pcihole.bench import run_bench
from pcihole.boot import main_boot
from pcihole.demo import render, run_demo
from pcihole.holes.service import main_serve
from pcihole.holes.slots import WRITE_MODES, HoleSlotError
from pcihole.holes.source import Backing, HoleSourceError, unavailable_reason
from pcihole.holes.strategy import STRATEGIES, StrategyError
from pcihole.kvm import Kvm
from pcihole.lspci_cmd import main_lspci
from pcihole.machine import PRESENT_MODES, MachineError, MachineOptions
from pcihole.pci.errors import PciError
from pcihole.pci.topology import Topology
from pcihole.plot import PlotError, plot_bench
from pcihole.scan import MODES, ScanReport, run_scan

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def check_output_file(option: str, path: str | None) -> None:
    """Refuse an output file that cannot be created, before any work is done."""
    if path is None:
        return
    if not path:
        raise UsageError(f"{option}: empty file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option}: {path} is a directory")


UNIX_PATH_MAX = 107
"""Longest AF_UNIX socket path in bytes (sun_path is 108 bytes with its NUL)."""


def check_socket_path(option: str, path: str) -> None:
    """Refuse a socket path that cannot be listened on, before a source is made."""
    if not path:
        raise UsageError(f"{option}: empty path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option}: directory {directory} does not exist")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise UsageError(f"{option}: {len(os.fsencode(path))} bytes is too long for a Unix "
                         f"socket path (at most {UNIX_PATH_MAX})")  # fmt: skip
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{option}: {path} exists and is not a socket; not replacing it")


def int_in_range(name: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer (decimal or 0x hex) within [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {low} to {high}, got {value}")
        return value

    return parse


# --- info ------------------------------------------------------------------------------
def _hole_backings() -> dict[str, Any]:
    """Which all-ones backing `shared` would pick here, and why not the others."""
    why_not = {b.value: unavailable_reason(b) for b in Backing}
    choice = next(name for name, reason in why_not.items() if reason is None)
    return {"choice": choice, "unavailable": {k: v for k, v in why_not.items() if v}}


def _cmd_info(args: argparse.Namespace) -> int:
    facts = hostinfo.collect()
    facts["hole_backing"] = _hole_backings()
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
        return 0
    print(f"KVM API version      {facts['api_version']}")
    print("capabilities")
    for name, value in facts["capabilities"].items():
        print(f"  {name:<18} {value}")
    print(f"vm.max_map_count     {facts['max_map_count']}")
    huge = facts["huge_pages"]
    print("huge pages")
    print(f"  THP, anonymous     {huge['thp_anonymous']}")
    print(f"  THP, shmem         {huge['thp_shmem']}")
    print(
        f"  hugetlb            {huge['hugetlb_free']} free of {huge['hugetlb_total']}"
        f" ({huge['hugetlb_page_kib']} KiB each)"
    )
    backing = facts["hole_backing"]
    print(f"hole backing         {backing['choice']} (best available now)")
    for name, reason in backing["unavailable"].items():
        print(f"  not {name}: {reason}")
    if not huge["hugetlb_free"]:
        print(
            "  hint: one reserved 2 MiB huge page lets one all-ones page serve every VM on"
            " the host with 2 MiB mappings; as root: sysctl vm.nr_hugepages=1"
        )
    return 0


# --- scan ------------------------------------------------------------------------------
MAX_VMS = 256
"""More VMs than this in one process is a typo, not a test (each holds fds and memslots)."""


def _topology_factory(args: argparse.Namespace) -> Callable[[], Topology]:
    """A function making a fresh topology per VM; bad --device text is a UsageError now."""
    devices: list[str] = args.device or []
    try:
        if devices:
            Topology.build(devices, args.buses)
        else:
            Topology.default(args.buses)
    except PciError as error:
        text = str(error)  # topology errors already start with the --device text
        raise UsageError(text if text.startswith("--") else f"--device: {text}") from None
    if devices:
        return lambda: Topology.build(devices, args.buses)
    return lambda: Topology.default(args.buses)


def _machine_options(args: argparse.Namespace) -> MachineOptions:
    backing = None if args.backing == "auto" else Backing.parse(args.backing)
    return MachineOptions(
        buses=args.buses,
        strategy=args.strategy,
        present=args.present,
        writes=args.writes,
        backing=backing,
        socket_path=args.socket,
        ring=args.ring,
    )


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


def _cmd_scan(args: argparse.Namespace) -> int:
    make_topology = _topology_factory(args)
    options = _machine_options(args)
    with Kvm() as kvm:
        try:
            report = run_scan(kvm, options, vms=args.vms, mode=args.mode, passes=args.passes,
                              topology=make_topology)  # fmt: skip
        except HoleSourceError as error:
            if options.backing is None:
                raise
            raise UsageError(f"--backing {options.backing.value}: {error}") from None
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_scan(report)
    return 0


def _add_machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="shared",
        help="how holes are answered (default: shared)",
    )
    parser.add_argument(
        "--present",
        choices=PRESENT_MODES,
        default="mirror",
        help="present functions: read-only mirror pages, or trap",
    )
    parser.add_argument(
        "--writes",
        choices=WRITE_MODES,
        default="coalesce",
        help="hole writes: coalesced (no exit) or exit",
    )
    parser.add_argument(
        "--backing",
        choices=["auto", *(b.value for b in Backing)],
        default="auto",
        help="all-ones memory (default: best available)",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help="get the all-ones memory from `pcihole serve-holes` here"
    )
    parser.add_argument(
        "--buses",
        type=int_in_range("--buses", 1, layout.ECAM_MAX_BUSES),
        default=layout.ECAM_MAX_BUSES,
        help="ECAM window size in buses",
    )
    parser.add_argument(
        "--device",
        action="append",
        metavar="BB:DD.F=MODEL[,k=v]",
        help="a function to place (repeatable); default: a q35-like set",
    )


# --- demo and bench ------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    check_output_file("--json", args.json)
    result = run_demo(vms=args.vms, buses=args.buses)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result.as_json(), out, indent=2)
    print(render(result))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    check_output_file("--json", args.json)
    check_output_file("--plot", args.plot)
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - fail before an hour of measuring, not after
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'pcihole[plot]'") from None

    def show(point: dict[str, Any]) -> None:
        print(
            f"{point['strategy']:<6} {point['buses']:>3} buses {point['vms']:>3} VMs: "
            f"scan {point['first_pass_seconds']:.4f} s/VM, hole memory "
            f"{point['hole_memory_bytes_total'] >> 10} KiB, {point['memslots_per_vm']} slots/VM, "
            f"kernel {point['kernel_memory_bytes_per_vm']['total'] >> 10} KiB/VM",
            flush=True,
        )

    report = run_bench(max_vms=args.max_vms, repeats=args.repeats, quick=args.quick,
                       progress=show)  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot_bench(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


# --- lspci ---------------------------------------------------------------------------------
def _cmd_lspci(args: argparse.Namespace) -> int:
    return main_lspci(args.device, args.buses, args.vm_view)


# --- boot ----------------------------------------------------------------------------------
def _cmd_boot(args: argparse.Namespace) -> int:
    return main_boot(
        args.bios,
        args.device,
        args.strategy,
        args.debugcon,
        args.buses,
        present=args.present,
        writes=args.writes,
        backing=args.backing,
        socket_path=args.socket,
        ram_mib=args.ram_mib,
        stats=args.stats,
    )


# --- serve-holes ---------------------------------------------------------------------------
def _cmd_serve_holes(args: argparse.Namespace) -> int:
    check_socket_path("--socket", args.socket)
    if args.group is not None and not args.group.isdigit():
        try:
            grp.getgrnam(args.group)
        except KeyError:
            raise UsageError(f"--group: no such group {args.group!r}") from None
    backing = None if args.backing == "auto" else args.backing
    if args.reserve_hugepage and backing not in (None, "hugetlb"):
        raise UsageError(f"--reserve-hugepage serves hugetlb, not --backing {backing}")
    return main_serve(args.socket, backing, args.group, reserve_hugepage=args.reserve_hugepage)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pcihole", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = commands.add_parser("info", help="what this host's KVM offers pcihole")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_cmd_info)

    scan = commands.add_parser("scan", help="VMs enumerate PCI; measure exits, memory, time")
    _add_machine_options(scan)
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
    scan.set_defaults(handler=_cmd_scan)

    lspci = commands.add_parser("lspci", help="config space as the guest reads it (lspci -F form)")
    lspci.add_argument("--device", action="append", metavar="BB:DD.F=MODEL[,k=v]")
    lspci.add_argument("--buses", type=int_in_range("--buses", 1, layout.ECAM_MAX_BUSES),
                       default=layout.ECAM_MAX_BUSES)  # fmt: skip
    lspci.add_argument("--vm-view", action="store_true",
                       help="read it through ECAM from a ring-3 guest in a real VM")  # fmt: skip
    lspci.set_defaults(handler=_cmd_lspci)

    boot = commands.add_parser("boot", help="run a flat firmware image as QEMU q35 -bios does")
    boot.add_argument("--bios", required=True, metavar="FILE", help="flat firmware image")
    _add_machine_options(boot)
    boot.add_argument("--debugcon", metavar="FILE", help="debug console (port 0x402) to FILE")
    boot.add_argument("--ram-mib", type=int_in_range("--ram-mib", 2, 3072), default=128)
    boot.add_argument("--stats", metavar="FILE", help="write a JSON account of the run")
    boot.set_defaults(handler=_cmd_boot)

    demo = commands.add_parser("demo", help="what holes cost: trap, fill and shared side by side")
    demo.add_argument("--vms", type=int_in_range("--vms", 1, MAX_VMS), default=8)
    demo.add_argument("--buses", type=int_in_range("--buses", 1, layout.ECAM_MAX_BUSES),
                      default=layout.ECAM_MAX_BUSES)  # fmt: skip
    demo.add_argument("--json", metavar="FILE", help="also write the figures here")
    demo.set_defaults(handler=_cmd_demo)

    bench = commands.add_parser("bench", help="sweep VM count and window size per strategy")
    bench.add_argument("--json", metavar="FILE")
    bench.add_argument("--plot", metavar="FILE.png")
    bench.add_argument("--repeats", type=int_in_range("--repeats", 1, 20), default=3)
    bench.add_argument("--max-vms", type=int_in_range("--max-vms", 1, 64), default=64)
    bench.add_argument("--quick", action="store_true", help="up to 8 VMs, one repeat")
    bench.set_defaults(handler=_cmd_bench)

    serve = commands.add_parser("serve-holes", help="hand the sealed all-ones memfd to monitors")
    serve.add_argument("--socket", required=True, metavar="PATH")
    serve.add_argument("--backing", choices=["auto", "hugetlb", "memfd"], default="auto")
    serve.add_argument("--group", help="group allowed to connect (socket mode 0660)")
    serve.add_argument(
        "--reserve-hugepage",
        action="store_true",
        help="as root: add one 2 MiB page to the hugetlb pool for the chunk while serving "
        "(clients get a hugetlb window: few memslots, 2 MiB first touch); given back at exit",
    )
    serve.set_defaults(handler=_cmd_serve_holes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (UsageError, MachineError, StrategyError, HoleSlotError, PlotError) as error:
        print(f"pcihole {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

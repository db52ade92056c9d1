"""Option helpers shared by subcommands: checked before any work starts."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable

from pcihole import layout
from pcihole.errors import BadInput
from pcihole.holes.slots import WRITE_MODES
from pcihole.holes.source import Backing
from pcihole.holes.strategy import STRATEGIES
from pcihole.machine import PRESENT_MODES, MachineOptions
from pcihole.pci.errors import PciError
from pcihole.pci.topology import Topology

MAX_VMS = 256
"""More VMs than this in one process is a typo, not a test (each holds fds and memslots)."""


def check_output_file(option: str, path: str | None) -> None:
    """Refuse an output file that cannot be created, before any work is done."""
    if path is None:
        return
    if not path:
        raise BadInput(f"{option}: empty file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise BadInput(f"{option}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise BadInput(f"{option}: {path} is a directory")


UNIX_PATH_MAX = 107
"""Longest AF_UNIX socket path in bytes (sun_path is 108 bytes with its NUL)."""


def check_socket_path(option: str, path: str) -> None:
    """Refuse a socket path that cannot be listened on, before a source is made."""
    if not path:
        raise BadInput(f"{option}: empty path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise BadInput(f"{option}: directory {directory} does not exist")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise BadInput(
            f"{option}: {len(os.fsencode(path))} bytes is too long for a Unix "
            f"socket path (at most {UNIX_PATH_MAX})"
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BadInput(f"{option}: {path} exists and is not a socket; not replacing it")


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


def topology_factory(args: argparse.Namespace) -> Callable[[], Topology]:
    """A function making a fresh topology per VM; bad --device text is a BadInput now."""
    devices: list[str] = args.device or []
    bare: bool = args.bare

    def make() -> Topology:
        if devices or bare:
            return Topology.build(devices, args.buses, bare=bare)
        return Topology.default(args.buses)

    try:
        make()
    except PciError as error:
        raise device_error(error) from None
    return make


def machine_options(args: argparse.Namespace) -> MachineOptions:
    backing = None if args.backing == "auto" else Backing.parse(args.backing)
    return MachineOptions(
        buses=args.buses,
        strategy=args.strategy,
        present=args.present,
        writes=args.writes,
        backing=backing,
        socket_path=args.socket,
        ring=getattr(args, "ring", MachineOptions.ring),  # boot has no --ring
    )


def add_machine_options(
    parser: argparse.ArgumentParser, devices: str = "default: a q35-like set"
) -> None:
    """The options of a command that runs a machine; ``devices`` says what runs without
    ``--device``."""
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
    add_device_options(parser, devices)


def add_device_options(parser: argparse.ArgumentParser, default: str) -> None:
    """``--device`` (``default`` says what runs without one) and ``--bare``."""
    parser.add_argument(
        "--device",
        action="append",
        metavar="BB:DD.F=MODEL[,k=v]",
        help=f"a function to place, beside the q35 built-ins (repeatable); {default}",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="no q35 built-ins: only the host bridge at 00:00.0 and the --device functions",
    )


def add_buses(parser: argparse.ArgumentParser) -> None:
    buses = int_in_range("--buses", 1, layout.ECAM_MAX_BUSES)
    parser.add_argument(
        "--buses", type=buses, default=layout.ECAM_MAX_BUSES, help="ECAM window size in buses"
    )


def device_error(error: PciError) -> BadInput:
    """A topology error as bad ``--device`` input (its text may already name the option)."""
    text = str(error)
    return BadInput(text if text.startswith("--") else f"--device: {text}")

"""``pcihole lspci``: config space as the guest reads it, in the form ``lspci -F`` reads."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pcihole.commands.options import add_buses, add_device_options, device_error
from pcihole.guest.lspci import lspci_text
from pcihole.pci.errors import PciError

NAME = "lspci"


def add_parser(commands: Any) -> None:
    lspci = commands.add_parser(NAME, help="config space as the guest reads it (lspci -F form)")
    add_device_options(lspci, "default: a q35-like set")
    add_buses(lspci)
    lspci.add_argument(
        "--vm-view",
        action="store_true",
        help="read it through ECAM from a ring-3 guest in a real VM",
    )
    lspci.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the dump; bad ``--device`` text is bad input, a VM that fails an environment
    problem (the one handler in ``pcihole.cli`` reports both)."""
    try:
        text = lspci_text(args.device, args.buses, args.vm_view, bare=args.bare)
    except PciError as error:
        raise device_error(error) from None
    sys.stdout.write(text)
    return 0

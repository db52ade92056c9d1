"""``pcihole boot``: run a flat firmware image as ``qemu-system-x86_64 -machine q35 -bios``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

from pcihole import layout
from pcihole.chipset.mch import HOST_BRIDGE
from pcihole.commands.options import add_machine_options, int_in_range, machine_options
from pcihole.errors import BadInput
from pcihole.kvm import Kvm
from pcihole.machine.firmware import BootError, BootMachine, check_image
from pcihole.pci.devices import MODELS
from pcihole.pci.errors import PciError
from pcihole.pci.topology import Topology

NAME = "boot"


def add_parser(commands: Any) -> None:
    boot = commands.add_parser(NAME, help="run a flat firmware image as QEMU q35 -bios does")
    boot.add_argument("--bios", required=True, metavar="FILE", help="flat firmware image")
    add_machine_options(boot)
    boot.add_argument("--debugcon", metavar="FILE", help="debug console (port 0x402) to FILE")
    boot.add_argument("--ram-mib", type=int_in_range("--ram-mib", 2, 3072),
                      default=layout.BOOT_RAM_SIZE // layout.MiB)  # fmt: skip
    boot.add_argument("--stats", metavar="FILE", help="write a JSON account of the run")
    boot.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``--bios`` and return the process exit status: QEMU's for debug-exit, else
    ``GUEST_STOPPED_STATUS`` with the reason on stderr.

    Debug console bytes go to ``--debugcon`` (a file) or stdout; ``--stats`` names a file
    for a JSON account of the run. Bad input is checked before the VM is made.
    """
    image, topology = _checked_input(args)
    options = machine_options(args)
    sink: BinaryIO | None = None
    try:
        try:
            sink = open(args.debugcon, "wb") if args.debugcon else sys.stdout.buffer  # noqa: SIM115
        except OSError as error:
            raise BadInput(f"--debugcon: {args.debugcon}: {error.strerror}") from None
        with (
            Kvm() as kvm,
            BootMachine(kvm, image, topology, options, ram_size=args.ram_mib * layout.MiB,
                        console=sink) as machine,
        ):  # fmt: skip
            result = machine.run()
            if args.stats:
                Path(args.stats).write_text(json.dumps(machine.stats(result), indent=2) + "\n")
    finally:
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    if result.exit_value is None:
        print(f"pcihole boot: guest stopped without debug-exit: {result.run.reason.value}: "
              f"{result.run.detail}", file=sys.stderr)  # fmt: skip
    return result.status


def _checked_input(args: argparse.Namespace) -> tuple[bytes, Topology]:
    """The image and topology the options name; ``BadInput`` naming the option."""
    bios, devices, buses = args.bios, args.device, args.buses
    option = "--bios"  # which option the input being checked came from, for the message
    try:
        try:
            image = Path(bios).read_bytes()
        except OSError as error:
            raise BootError(f"{bios}: {error.strerror}") from None
        check_image(image)
        option = "--device"
        topology = Topology.build(devices, buses) if devices else Topology.qemu_nodefaults(buses)
        if HOST_BRIDGE not in topology:
            topology = Topology(buses, [*topology, MODELS["host-bridge"].build(HOST_BRIDGE)])
    except (BootError, PciError, ValueError) as error:
        text = str(error)  # topology errors already start with the --device text
        raise BadInput(text if text.startswith("--") else f"{option}: {text}") from None
    return image, topology

"""``pcihole boot``: run a flat firmware image as ``qemu-system-x86_64 -machine q35 -bios``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pcihole import layout
from pcihole.arch.x86.acpi import read_acpi_tables
from pcihole.arch.x86.cpuid_probe import host_cpuid_leaks
from pcihole.arch.x86.e820 import AddressBitsError, RamLayoutError, q35_below_4g
from pcihole.arch.x86.linux import KernelError, load_linux
from pcihole.arch.x86.linux_cmdline import linux_command_line
from pcihole.commands.linux_option import add_linux_option, apply_linux_option
from pcihole.commands.options import add_machine_options, int_in_range, machine_options
from pcihole.devices.fw_cfg import BootRom
from pcihole.errors import ENVIRONMENT_STATUS, BadInput, EnvironmentProblem, GuestFault
from pcihole.guest.firmware import build_option_rom
from pcihole.guest.linux.klog import init_fault_note, read_guest_view
from pcihole.guest.linux.view import compare
from pcihole.kvm import Kvm
from pcihole.machine.runloop import StopReason
from pcihole.memory.ram import RamAllocationError
from pcihole.pci.devices import MODELS
from pcihole.pci.errors import PciError
from pcihole.pci.topology import Topology
from pcihole.q35 import (
    SIGNAL_STATUS_OFFSET,
    TIMEOUT_STATUS,
    BootError,
    BootResult,
    LinuxBoot,
    Q35Machine,
    check_image,
)
from pcihole.q35.mch import HOST_BRIDGE
from pcihole.q35.platform import CONFIG_PORT_MODES

NAME = "boot"


DEFAULT_BIOS = Path("/usr/share/seabios/bios.bin")
"""Debian's SeaBIOS (package ``seabios``), what ``qemu-system-x86_64 -machine q35`` runs."""
UNTIL_DEFAULT_HELP = "No bootable device."
LINUXBOOT_DMA = Path("/usr/share/qemu/linuxboot_dma.bin")
"""QEMU's option ROM that boots a -kernel bzImage from fw_cfg (package qemu-system-data)."""
PVH_ROM_NAME = "pcihole-pvh.bin"
"""pcihole's own PVH boot ROM (pcihole/guest/firmware/pvh.S), in place of QEMU's pvh.bin."""


def add_parser(commands: Any) -> None:
    boot = commands.add_parser(NAME, help="run firmware (SeaBIOS by default) as QEMU q35 does")
    boot.add_argument(
        "--bios",
        metavar="FILE",
        help=f"flat firmware image (default: {DEFAULT_BIOS}, package seabios)",
    )
    add_machine_options(boot, "default: the q35 built-ins alone, as QEMU -nodefaults")
    boot.add_argument(
        "--config-ports",
        choices=CONFIG_PORT_MODES,
        default="always",
        help="CF8/CFC: always (as QEMU), or firmware: withdrawn once the firmware fetches "
        "the kernel from fw_cfg, so the kernel configures PCI through ECAM alone",
    )
    _add_linux_options(boot)
    boot.add_argument(
        "--acpi",
        choices=("on", "off"),
        default="on",
        help="serve QEMU 7.2's ACPI tables through fw_cfg (on, as QEMU's default), or none "
        "(off, as -machine acpi=off: SeaBIOS builds its own)",
    )
    boot.add_argument("--debugcon", metavar="FILE", help="debug console (port 0x402) to FILE")
    boot.add_argument("--serial", metavar="FILE|stdio", help="the UART (COM1) to FILE or stdout")
    boot.add_argument(
        "--ram-mib",
        type=int_in_range("--ram-mib", 2, layout.BOOT_RAM_MAX // layout.MiB),
        default=layout.BOOT_RAM_SIZE // layout.MiB,
        metavar="MIB",
        help="guest RAM, laid out as QEMU's q35 -m lays it out (default: %(default)s)",
    )
    boot.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="end the run after SECONDS (exit status 124)",
    )
    boot.add_argument(
        "--until",
        metavar="TEXT",
        help=f"end the run when the debug console or the serial port prints TEXT "
        f"(e.g. {UNTIL_DEFAULT_HELP!r}; exit status 0)",
    )
    boot.add_argument(
        "--stats", metavar="FILE", help="write a JSON account of the run, however it ends"
    )
    boot.add_argument(
        "--acpi-dump",
        metavar="DIR",
        help="after the run, write every ACPI table found from the RSDP to DIR",
    )
    boot.set_defaults(handler=run)


def _add_linux_options(boot: Any) -> None:
    """--kernel, --initrd, --append (QEMU's), --linux and --mark."""
    boot.add_argument(
        "--kernel",
        metavar="FILE",
        help="boot Linux as QEMU's -kernel: a bzImage (through QEMU's linuxboot_dma.bin) "
        "or an ELF vmlinux with a Xen PVH note (through pcihole's PVH ROM)",
    )
    boot.add_argument("--initrd", metavar="FILE", help="the kernel's initrd (QEMU's -initrd)")
    boot.add_argument(
        "--append",
        metavar="TEXT",
        help="the kernel command line (QEMU's -append); words this host needs are added",
    )
    add_linux_option(boot)
    boot.add_argument(
        "--mark",
        metavar="TEXT",
        action="append",
        default=[],
        help="record the run's time, exits by kind and config exits in --stats 'marks' at "
        "the first serial line holding TEXT (repeatable)",
    )


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(
            f"--timeout: want a positive number of seconds, not {text!r}"
        )
    return value


def run(args: argparse.Namespace) -> int:
    """Run the firmware and return the process exit status; one line on stderr says how
    the run ended (power off, reset, time limit, signal, ``--until``, debug-exit, or the
    vCPU stopping by itself: the guest's fault), and ``--stats`` is written in every case.
    A device that failed by no fault of the guest (a bug, the host refusing) ends the
    command with that error's own line and status instead.

    Debug console bytes go to ``--debugcon`` (a file) or stdout, the UART's to
    ``--serial``. Bad input is checked before the VM is made.
    """
    apply_linux_option(args)
    image, topology = _checked_input(args)
    linux, notes = _linux(args)
    for note in notes:
        print(f"pcihole boot: note: {note}", file=sys.stderr)
    options = machine_options(args)
    with contextlib.ExitStack() as files:
        console = _open_sink(files, "--debugcon", args.debugcon)
        serial = _open_sink(files, "--serial", args.serial) if args.serial else None
        until = args.until.encode() if args.until else None
        with (
            Kvm() as kvm,
            _ram_named(args.ram_mib),
            Q35Machine(
                kvm,
                image,
                topology,
                options,
                ram_size=args.ram_mib * layout.MiB,
                console=console,
                serial=None if serial is None else _writer(serial),
                until=until,
                config_ports=args.config_ports,
                linux=linux,
                marks=tuple(args.mark),
                acpi=args.acpi == "on",
            ) as machine,
        ):
            machine.notes.extend(notes)
            result = _run_until_stopped(machine, args.timeout)
            _note_guest_faults(machine)
            seen = _guest_view(machine) if linux is not None else None
            if args.stats:
                stats = {**machine.stats(result), "guest_pci_view": seen}
                _write(args.stats, json.dumps(stats, indent=2) + "\n")
            if args.acpi_dump:
                _dump_acpi(machine, args.acpi_dump)
    failure = result.run.error
    if failure is not None and not isinstance(failure, GuestFault):
        raise failure
    print(f"pcihole boot: {result.reason} after {result.seconds:.1f} s", file=sys.stderr)
    if result.run.reason is StopReason.REFUSED_INSTRUCTION:
        return ENVIRONMENT_STATUS  # KVM refused what the monitor cannot finish
    return result.status


def _note_guest_faults(machine: Q35Machine) -> None:
    """Say on stderr and in the notes what the kernel's log shows went wrong in a way
    this host explains (init killed by its first system call)."""
    note = init_fault_note(line.text for line in machine.platform.serial_log.lines)
    if note is not None:
        machine.notes.append(note)
        print(f"pcihole boot: note: {note}", file=sys.stderr)


def _guest_view(machine: Q35Machine) -> dict[str, Any] | None:
    """The PCI view a kernel's console shows (its init's report, else its log) against
    the machine: one line on stderr, the functions and differences for ``--stats``."""
    found = read_guest_view([line.text for line in machine.platform.serial_log.lines])
    if found is None:
        return None
    source, view = found
    differences = compare(view, machine.topology.functions)
    verdict = "as pcihole built them" if not differences else "; ".join(differences)
    seen = f"the guest sees {len(view.functions)} PCI functions ({source})"
    print(f"pcihole boot: {seen}: {verdict}", file=sys.stderr)
    functions = {
        str(bdf): {"ids": "{:04x}:{:04x} class {:06x}".format(*f.ids), "buses": f.bridge_buses}
        for bdf, f in sorted(view.functions.items())
    }
    return {"source": source, "functions": functions, "differences": differences}


@contextlib.contextmanager
def _ram_named(mib: int) -> Iterator[None]:
    """Refusals of the RAM asked for name ``--ram-mib``: the size (bad input), or what this
    host's vCPU addresses or its memory holds (the environment)."""
    try:
        yield
    except RamLayoutError as error:
        raise BadInput(f"--ram-mib {mib}: {error}") from None
    except (AddressBitsError, RamAllocationError) as error:
        raise EnvironmentProblem(f"--ram-mib {mib}: {error}") from None


def _run_until_stopped(machine: Q35Machine, timeout: float | None) -> BootResult:
    """Run with SIGINT/SIGTERM and the time limit ending the run (not the process)."""

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        machine.stop(f"stopped by {name}", SIGNAL_STATUS_OFFSET + signum)

    timer = None
    if timeout is not None:
        reason = f"time limit of {timeout:g} s reached"
        timer = threading.Timer(timeout, machine.stop, (reason, TIMEOUT_STATUS))
        timer.daemon = True
    previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    try:
        if timer is not None:
            timer.start()
        return machine.run()
    finally:
        if timer is not None:
            timer.cancel()
        for number, handler in previous.items():
            signal.signal(number, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _open_sink(files: contextlib.ExitStack, option: str, target: str | None) -> BinaryIO:
    """stdout for None or ``stdio``, else the file, opened for writing."""
    if target is None or target == "stdio":
        return sys.stdout.buffer
    try:
        return files.enter_context(open(target, "wb"))
    except OSError as error:
        raise BadInput(f"{option}: {target}: {error.strerror}") from None


def _writer(sink: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        sink.write(data)
        sink.flush()

    return write


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as error:
        raise BadInput(f"--stats: {path}: {error.strerror}") from None


def _dump_acpi(machine: Q35Machine, directory: str) -> None:
    tables = read_acpi_tables(machine.read_memory)
    try:
        written = tables.write_tables(directory)
    except OSError as error:
        raise BadInput(f"--acpi-dump: {directory}: {error.strerror}") from None
    names = ", ".join(path.name for path in written) or "none (no RSDP found)"
    print(f"pcihole boot: ACPI tables written to {directory}: {names}", file=sys.stderr)
    for problem in tables.problems:
        print(f"pcihole boot: ACPI: {problem}", file=sys.stderr)


def _checked_input(args: argparse.Namespace) -> tuple[bytes, Topology]:
    """The image and topology the options name; ``BootError`` (bad input) naming the
    option."""
    bios, devices, buses = args.bios, args.device, args.buses
    if bios is None and not DEFAULT_BIOS.exists():
        raise EnvironmentProblem(
            f"no --bios given and no SeaBIOS at {DEFAULT_BIOS}: install it "
            "(apt-get install seabios, or bash scripts/setup) or give --bios FILE"
        )
    bios = bios or str(DEFAULT_BIOS)
    option = "--bios"  # which option the input being checked came from, for the message
    try:
        try:
            image = Path(bios).read_bytes()
        except OSError as error:
            raise BootError(f"{bios}: {error.strerror}") from None
        check_image(image)
        option = "--device"
        topology = Topology.build(devices or [], buses, bare=args.bare)
        if HOST_BRIDGE not in topology:
            topology = Topology(buses, [*topology, MODELS["host-bridge"].build(HOST_BRIDGE)])
    except (BootError, PciError, ValueError) as error:
        text = str(error)  # topology errors already start with the --device text
        raise BootError(text if text.startswith("--") else f"{option}: {text}") from None
    return image, topology


def _linux(args: argparse.Namespace) -> tuple[LinuxBoot | None, list[str]]:
    """The kernel ``--kernel`` names, loaded as QEMU 7.2 loads it, and the ROM that boots
    it (None without ``--kernel``); and notes on what was added to its command line for
    this host (``arch.x86.linux_cmdline``: nothing where CPUID obeys the monitor)."""
    if args.kernel is None:
        for option in ("initrd", "append"):
            if getattr(args, option) is not None:
                raise BadInput(f"--{option} needs --kernel")
        return None, []
    kernel = _read("--kernel", args.kernel)
    initrd = None if args.initrd is None else _read("--initrd", args.initrd)
    below_4g = q35_below_4g(args.ram_mib * layout.MiB)
    with Kvm() as kvm:
        line, notes = linux_command_line(args.append or "", host_cpuid_leaks(kvm))
    cmdline = os.fsencode(line)
    try:
        load = load_linux(kernel, cmdline=cmdline, initrd=initrd, below_4g=below_4g)
    except KernelError as error:
        text = str(error)
        where = "" if text.startswith("--") else f"--kernel: {args.kernel}: "
        raise KernelError(where + text) from None
    if load.kind == "pvh":
        return LinuxBoot(load, BootRom(PVH_ROM_NAME, build_option_rom("pvh"))), notes
    try:
        rom = LINUXBOOT_DMA.read_bytes()
    except OSError as error:
        raise EnvironmentProblem(
            f"{LINUXBOOT_DMA}: {error.strerror}: QEMU's linuxboot_dma.bin boots a bzImage "
            "(apt-get install qemu-system-data, or bash scripts/setup)"
        ) from None
    return LinuxBoot(load, BootRom(LINUXBOOT_DMA.name, rom)), notes


def _read(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise BadInput(f"{option}: {path}: {error.strerror}") from None

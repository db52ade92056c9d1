"""``pcihole boot``: run a flat firmware image the way ``qemu-system-x86_64 -machine q35
-bios IMAGE`` does, with pcihole's ECAM window underneath.

The machine, as far as firmware can tell:
- the image mapped read-only so that it ends at 4 GiB, its last 128 KiB (all of it when
  smaller) aliased to end at 1 MiB, as QEMU's isa-bios; the vCPU at the reset vector
  (real mode, CS base 0xffff0000, RIP 0xfff0: KVM's state for a new vCPU); RAM below
  640 KiB and from 1 MiB up, and past q35's split from 4 GiB (``Q35Ram``);
- a q35 host bridge at 00:00.0 (8086:29c0) whose PCIEXBAR register (config 0x60: base,
  length in bits 2:1, enable in bit 0) places the ECAM window; until firmware enables it
  there is no window at all. Writes reaching PCIEXBAR through CF8/CFC or through ECAM
  itself move the window, and its holes are planned again at the new place;
- configuration mechanism #1 on CF8-CFF; QEMU's debug console on port 0x402 (bytes out,
  reads 0xe9) and its debug-exit device on 0xf4: a write of ``value`` ends the run with
  exit status ``(value << 1) | 1``, as QEMU's process does.
Nothing else: no interrupt controller, timer or firmware tables. A guest that halts or
shuts down without debug-exit ends with ``GUEST_STOPPED_STATUS`` (QEMU would wait or
reset instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from pcihole import layout
from pcihole.acpi.q35 import Q35Acpi, q35_acpi_files
from pcihole.arch.x86.cpuid import VcpuIdentity, boot_cpuid
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.arch.x86.linux import LinuxLoad
from pcihole.arch.x86.reset import prepare_real_mode
from pcihole.chipset import pam
from pcihole.chipset.mch import HOST_BRIDGE, Mch
from pcihole.closing import Closeable
from pcihole.devices.debug_exit import DEBUG_EXIT_SIZE, DebugExit, exit_status
from pcihole.devices.debugcon import ConsoleLine, DebugConsole, Stamp
from pcihole.devices.fw_cfg import BootRom
from pcihole.devices.rom import RomDevice
from pcihole.errors import GUEST_FAULT_STATUS, BadInput
from pcihole.holes.slots import HoleSlotError
from pcihole.kvm import Cap, CoalescedWrite, Kvm, KvmError, Vm, abi
from pcihole.machine.bars import BarDecoder, backends_for
from pcihole.machine.builder import Machine, PlacedDevice
from pcihole.machine.bus import Bus, BusDevice, BusError
from pcihole.machine.q35 import LPC, Q35Platform
from pcihole.machine.runloop import RunLoop, RunResult
from pcihole.machine.window import CONFIG_PORTS, MachineError, MachineOptions
from pcihole.memory import (
    GuestRam,
    MemoryMap,
    MemoryMapError,
    MemslotShortage,
    Region,
    RegionKind,
    SlotAllocator,
)
from pcihole.pci.bdf import Bdf
from pcihole.pci.topology import Topology

GUEST_STOPPED_STATUS = GUEST_FAULT_STATUS
"""Exit status when the guest stopped without debug-exit (even: never a debug-exit one)."""
TIMEOUT_STATUS = 124
"""As timeout(1)."""
SIGNAL_STATUS_OFFSET = 128
"""A run ended by signal N exits with 128 + N, as a shell reports it."""


class BootError(BadInput):
    """The image or the machine is unusable; the message says why."""


# --- the VM ------------------------------------------------------------------------------
class BootVm(Closeable):
    """A VM at the x86 reset state: RAM, the image below 4 GiB and its alias below 1 MiB.

    Gives an ``EcamWindow`` what it uses (``vm``, ``slots``, ``mmio``, ``memory_map``,
    ``loop``, ``on_coalesced``), like ``GuestVm`` does for long-mode test guests.
    """

    def __init__(
        self, kvm: Kvm, image: bytes, *, ram_size: int = layout.BOOT_RAM_SIZE, name: str = "boot"
    ) -> None:
        check_image(image)
        if ram_size < 2 * layout.MiB:
            raise BootError(f"RAM size {ram_size:#x} is under 2 MiB")
        self.name = name
        self.image = image
        self.ram_size = ram_size
        cpuid = boot_cpuid(kvm)
        self.vcpu_identity = VcpuIdentity.from_cpuid(cpuid)
        self.ram_layout = Q35Ram.for_vcpu(ram_size, self.vcpu_identity)
        """Where RAM goes for this vCPU: what the memslots, CMOS, e820 and fw_cfg follow."""
        self.vm: Vm = kvm.create_vm()
        self.ram: GuestRam | None = None
        self.rom: GuestRam | None = None
        try:
            prepare_real_mode(self.vm)
            self.slots = SlotAllocator(self.vm.max_memslots)
            self.ram = GuestRam.in_banks(self.ram_layout.banks)
            self.rom = GuestRam(layout.FIRMWARE_TOP - len(image), len(image))
            self.rom.write(self.rom.base, image)
            regions = self._regions()
            shadow = Region(RegionKind.ROM, pam.SHADOW_BASE, pam.SHADOW_SIZE, "pam-shadow")
            self.memory_map = MemoryMap([*(region for region, _, _ in regions), shadow])
            self.ports = Bus("port")
            self.mmio = Bus("mmio")
            self.rom_devices = [RomDevice(image)]
            for (region, host_address, flags), slot in zip(
                regions, self.slots.allocate(len(regions), purpose="RAM and firmware"), strict=True
            ):
                self.vm.set_memory_region(slot, region.start, region.size, host_address, flags)
            self.mmio.add(self.rom.base, len(image), self.rom_devices[0], "bios")
            self.has_irqchip = _create_interrupt_controllers(self.vm)
            self.vcpu = self.vm.create_vcpu()
            self.vcpu.set_cpuid2(cpuid)
            self.loop = RunLoop(self.vcpu, self.ports, self.mmio)
        except BaseException:
            self.close()
            raise

    def _regions(self) -> list[tuple[Region, int, int]]:
        """(region, host address, memslot flags) of low RAM, high RAM, RAM above 4 GiB
        (if any) and the image below 4 GiB. 0xc0000-0xfffff (the isa-bios alias among it)
        is the PAM shadow's."""
        assert self.ram is not None and self.rom is not None
        image_size, high = len(self.image), layout.HIGH_RAM_START
        below, above = self.ram_layout.below_4g, self.ram_layout.above_4g
        start = self.ram_layout.above_4g_start
        readonly = abi.KVM_MEM_READONLY
        return [
            (Region(RegionKind.RAM, 0, layout.LOW_RAM_END, "ram"), self.ram.host_address, 0),
            (Region(RegionKind.RAM, high, below - high, "ram-high"),
             self.ram.host_address + high, 0),
            *([(Region(RegionKind.RAM, start, above, "ram-above-4g"),
                self.ram.host_address_of(start), 0)] if above else []),
            (Region(RegionKind.ROM, self.rom.base, image_size, "bios"),
             self.rom.host_address, readonly),
        ]  # fmt: skip

    def on_coalesced(self, callback: Callable[[list[CoalescedWrite]], None] | None) -> None:
        self.loop.on_coalesced = callback

    def run(self, max_exits: int | None = None) -> RunResult:
        return self.loop.run(max_exits)

    def request_stop(self) -> None:
        self.loop.request_stop()

    def read_ram(self, address: int, length: int) -> bytes:
        assert self.ram is not None
        return self.ram.read(address, length)

    def close(self) -> None:
        self.vm.close()
        for memory in (self.ram, self.rom):
            if memory is not None:
                memory.close()
        self.ram = self.rom = None


def _create_interrupt_controllers(vm: Vm) -> bool:
    """KVM's PIC, IOAPIC, local APIC and PIT in the kernel, as QEMU's default
    ``kernel-irqchip`` (before any vCPU). False where this KVM has none."""
    if not vm.kvm.check_extension(Cap.IRQCHIP):
        return False
    vm.create_irqchip()
    if vm.kvm.check_extension(Cap.PIT2):
        vm.create_pit2()
    return True


def check_image(image: bytes) -> None:
    """Refuse what QEMU's -bios refuses (whole 64 KiB units), and images over 16 MiB."""
    if not image or len(image) % layout.IMAGE_ALIGN or len(image) > layout.MAX_IMAGE_SIZE:
        raise BootError(
            f"a firmware image must be a multiple of 64 KiB up to 16 MiB, not {len(image)} bytes"
        )


# --- the machine ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """What happened between two console lines."""

    seconds: float
    exits: int
    config_exits: int


@dataclass(frozen=True)
class Ending:
    """Why the machine ended a run, and the process exit status that says so."""

    reason: str
    status: int


@dataclass
class BootResult:
    """How a boot ended."""

    run: RunResult
    exit_value: int | None
    """What the guest wrote to debug-exit; None if it never did."""
    console: bytes
    lines: list[ConsoleLine]
    seconds: float
    placements: list[tuple[int | None, int]] = field(default_factory=list)
    """Every place the ECAM window went to: ``(base or None, buses)``."""
    ending: Ending | None = None
    """Why the machine stopped it (power off, reset, time limit, signal, ``until``)."""

    @property
    def status(self) -> int:
        """The process exit status: QEMU's for debug-exit, the ending's, else
        GUEST_STOPPED_STATUS (the vCPU stopped by itself: a shutdown, a KVM error)."""
        if self.exit_value is not None:
            return exit_status(self.exit_value)
        return GUEST_STOPPED_STATUS if self.ending is None else self.ending.status

    @property
    def reason(self) -> str:
        """One line saying how the run ended."""
        if self.exit_value is not None:
            return f"the guest wrote {self.exit_value:#x} to debug-exit"
        if self.ending is not None:
            return self.ending.reason
        return f"the guest stopped: {self.run.reason.value}: {self.run.detail}"

    @property
    def text(self) -> str:
        return self.console.decode("utf-8", "replace")

    def between(self, start: int, end: int) -> Interval:
        """From the newline of line ``start`` to the first byte of line ``end``: a guest
        prints a line, does something, prints the next; this is what that something cost.
        The first byte's own OUT exit is not counted."""
        before, after = self.lines[start], self.lines[end]
        return Interval(
            after.first_seconds - before.seconds,
            after.first_exits - before.exits - 1,
            after.first_config_exits - before.config_exits,
        )


class BootMachine(Closeable):
    """A q35-like machine that boots ``image`` with ``topology``'s functions behind ECAM:
    the builder's ``Machine`` over the firmware shell, with the MCH placing the window,
    the debug console and debug exit. ``config_ports`` is ``q35.CONFIG_PORT_MODES``'s;
    ``acpi`` serves QEMU 7.2's ACPI tables through fw_cfg (``pcihole.acpi.q35``), as QEMU's
    default ``acpi=on``; without them SeaBIOS builds its own."""

    def __init__(
        self,
        kvm: Kvm,
        image: bytes,
        topology: Topology | None = None,
        options: MachineOptions | None = None,
        *,
        ram_size: int = layout.BOOT_RAM_SIZE,
        console: BinaryIO | None = None,
        serial: Callable[[bytes], None] | None = None,
        until: bytes | None = None,
        name: str = "boot",
        config_ports: str = "always",
        linux: LinuxBoot | None = None,
        acpi: bool = True,
    ) -> None:
        topology = topology or Topology.qemu_nodefaults()
        topology.reset_bridges()  # as QEMU's come out of reset: firmware numbers them
        try:
            self.mch = Mch(topology, self.place_window)
        except ValueError as error:
            raise BootError(str(error)) from None
        options = replace(options or MachineOptions(), buses=topology.buses)
        self.notes: list[str] = []
        self.placements: list[tuple[int | None, int]] = []
        self._started = time.perf_counter()
        shell = BootVm(kvm, image, ram_size=ram_size, name=name)
        self.guest = shell
        self.ending: Ending | None = None
        self.until = until
        self.console = DebugConsole(console, self._stamp)
        self.debug_exit = DebugExit(shell.request_stop)
        devices = [
            PlacedDevice("port", layout.DEBUGCON_PORT, 1,
                         _Watched(self.console, self._console_written), "debugcon"),
            PlacedDevice("port", layout.DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, self.debug_exit,
                         "debug-exit"),
        ]  # fmt: skip
        self._serial = _SerialWatch(serial, until, self.stop)
        try:
            assert shell.ram is not None
            self.platform = self._platform(shell, image, linux, config_ports, acpi, topology.buses)
            backends = {
                (function.bdf, index): device
                for function in topology
                for index, device in backends_for(function, shell.ram).items()
            }
            self.bars = BarDecoder(shell, lambda: list(topology), backends)
        except BaseException:
            self._close_platform()
            shell.close()
            raise
        self.machine = Machine(shell, topology, options, devices, window_base=None,
                               on_config_write=self._config_written)  # fmt: skip
        self.topology, self.options = topology, options
        self.window = self.machine.window
        self.legacy = self.machine.legacy
        shell.ports.remove(layout.PCI_CONFIG_ADDRESS_PORT)  # 0xcf9 is in CF8-CFF: see q35.py
        cf8 = self.platform.config_ports(self.legacy)
        shell.ports.add(layout.PCI_CONFIG_ADDRESS_PORT, CONFIG_PORTS, cf8, "pci-config")

    def _platform(
        self, shell: BootVm, image: bytes, linux: LinuxBoot | None, config_ports: str,
        acpi: bool, buses: int,
    ) -> Q35Platform:  # fmt: skip
        """The q35 platform devices, with a kernel's items and boot ROM in fw_cfg and its
        segments already in RAM (QEMU's ELF loader writes them at reset), and with ``acpi``
        the ACPI tables of a machine with ``buses`` buses."""
        assert shell.ram is not None
        tables = q35_acpi_files(Q35Acpi.for_machine(buses, shell.ram_layout)) if acpi else None
        for segment in linux.load.segments if linux is not None else ():
            shell.ram.write(segment.address, segment.data)
        return Q35Platform(shell.vm, shell.ports, shell.mmio, shell.ram, shell.slots, image,
                           ram_layout=shell.ram_layout, vcpu=shell.vcpu_identity,
                           on_stop=self.stop, serial=self._serial.sink,
                           config_ports=config_ports, clock=self._stamp,
                           kernel=None if linux is None else linux.load.items,
                           boot_rom=None if linux is None else linux.rom,
                           acpi=tables)  # fmt: skip

    def request_stop(self) -> None:
        self.guest.request_stop()

    def read_memory(self, address: int, length: int) -> bytes:
        """Guest-physical RAM as the guest reads it (the PAM range through its shadow)."""
        assert self.guest.ram is not None
        shadow = self.platform.shadow
        start, end = max(address, pam.SHADOW_BASE), min(address + length, pam.SHADOW_END)
        if start >= end:
            return self.guest.ram.read(address, length)
        return (
            self.guest.ram.read(address, start - address)
            + shadow.view(start, end - start)
            + self.guest.ram.read(end, address + length - end)
        )

    def _close_platform(self) -> None:
        platform: Q35Platform | None = getattr(self, "platform", None)
        if platform is not None:
            platform.close()

    def close(self) -> None:
        self._close_platform()
        self.machine.close()

    # --- chipset --------------------------------------------------------------------------
    def _config_written(self, bdf: Bdf) -> None:
        self.mch.config_written(bdf)
        self.bars.config_written(bdf)
        function = self.topology.get(bdf)
        if bdf == HOST_BRIDGE and function is not None:
            self.platform.host_bridge_written(function.config)
        elif bdf == LPC and function is not None:
            self.platform.lpc_written(function.config)

    def stop(self, reason: str, status: int = 0) -> None:
        """End the run (the guest powered off or reset, a time limit, a signal, ``until``);
        safe from any thread and from a signal handler. The first reason given wins."""
        if self.ending is None:
            self.ending = Ending(reason, status)
        self.guest.request_stop()

    def _console_written(self) -> None:
        if self.until is not None and self.console.output.endswith(self.until):
            self.stop(f"the debug console printed {self.until.decode(errors='replace')!r}")

    # --- PCIEXBAR ------------------------------------------------------------------------
    def place_window(self, base: int | None, buses: int) -> None:
        """Move the window where the MCH says (after every write to its PCIEXBAR).

        A window that cannot go where firmware asks (over RAM or the image) is not decoded.
        """
        if (base, layout.ecam_size(buses)) == (self.window.base, self.window.size):
            return
        try:
            self.window.place(base, buses)
        except (MachineError, MemoryMapError, MemslotShortage, BusError, HoleSlotError,
                KvmError) as error:  # fmt: skip
            self.notes.append(f"ECAM window not decoded at {base:#x}: {error}")
            base = None
            self.window.place(None)
        self.placements.append((base, buses))

    # --- running --------------------------------------------------------------------------
    def _stamp(self) -> Stamp:
        exits = self.window.ecam.exits
        return (
            time.perf_counter() - self._started,
            sum(self.guest.loop.counts.values()),
            exits.hole + exits.device,
        )

    def run(self, max_exits: int | None = None) -> BootResult:
        """Run from the reset vector until debug-exit (or until the guest stops)."""
        self._started = time.perf_counter()
        result = self.guest.run(max_exits)
        seconds = time.perf_counter() - self._started
        self.console.flush()
        self.platform.serial_log.flush()
        return BootResult(
            result,
            self.debug_exit.value,
            bytes(self.console.output),
            list(self.console.lines),
            seconds,
            list(self.placements),
            self.ending,
        )

    def stats(self, result: BootResult) -> dict[str, Any]:
        """What the run cost, for ``--stats`` and the benchmarks."""
        exits = self.window.ecam.exits
        report = self.window.report()
        return {
            "status": result.status,
            "exit_value": result.exit_value,
            "stop": result.run.reason.value,
            "detail": result.run.detail,
            "seconds": round(result.seconds, 6),
            "exit_counts": result.run.exit_counts,
            "emulated_instructions": self.guest.loop.emulated_instructions(),
            "config_exits": {
                "hole_reads": exits.hole_reads,
                "hole_writes": exits.hole_writes,
                "device_reads": exits.device_reads,
                "device_writes": exits.device_writes,
                "legacy_ports": self.legacy.exits,
            },
            "hole_writes": self.window.hole_writes.count,
            "rom_writes": sum(device.writes for device in self.guest.rom_devices)
            + self.platform.shadow.dropped_writes,
            "pam": {
                "registers": list(self.platform.shadow.registers),
                "changes": self.platform.shadow.changes,
                "exits": self.platform.shadow.exits,
            },
            "irq_line_changes": dict(sorted(self.platform.irq_lines.items())),
            **self.platform.account(),
            "reason": result.reason,
            "unclaimed": {"mmio": self.guest.mmio.unclaimed, "ports": self.guest.ports.unclaimed},
            "exits_by_device": {
                "ports": dict(sorted(self.guest.ports.hits.items())),
                "mmio": dict(sorted(self.guest.mmio.hits.items())),
            },
            "window": {
                "base": self.window.base,
                "buses": self.window.size // layout.ECAM_BUS_SIZE,
                "placements": [[base, buses] for base, buses in result.placements],
            },
            "memslots": {"window": self.window.memslots, "holes": self.window.hole_memslots},
            "strategy": report.strategy,
            "backing": report.backing,
            "notes": [*report.notes, *self.notes],
            "tsc_khz": self.guest.vcpu.tsc_khz(),
            "lines": [line.as_json() for line in result.lines],
        }


@dataclass(frozen=True)
class LinuxBoot:
    """A kernel loaded as QEMU's -kernel loads it, and the option ROM that boots it."""

    load: LinuxLoad
    rom: BootRom


class _SerialWatch:
    """The UART's output on to ``sink``; ``until`` seen there ends the run."""

    def __init__(
        self,
        sink: Callable[[bytes], None] | None,
        until: bytes | None,
        stop: Callable[[str], None],
    ) -> None:
        self._sink, self._until, self._stop = sink, until, stop
        self._tail = b""

    @property
    def sink(self) -> Callable[[bytes], None] | None:
        """What the UART writes to (None: nowhere, nothing to watch)."""
        return self.write if self._sink is not None or self._until else None

    def write(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
        if self._until:
            self._tail = (self._tail + data)[-(len(self._until) + len(data)) :]
            if self._until in self._tail:
                self._stop(f"the serial port printed {self._until.decode(errors='replace')!r}")


class _Watched:
    """A port device that tells ``after_write`` of every write it passed on."""

    def __init__(self, device: BusDevice, after_write: Callable[[], None]) -> None:
        self.device = device
        self.after_write = after_write

    def read(self, offset: int, size: int) -> int:
        return self.device.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.device.write(offset, size, value)
        self.after_write()


__all__ = [
    "BootError",
    "BootMachine",
    "BootResult",
    "BootVm",
    "ConsoleLine",
    "Interval",
]

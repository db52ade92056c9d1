"""The q35 machine, in one recipe: what ``pcihole boot`` runs.

``Q35Machine`` builds, in this order: the shell (``q35.shell``: RAM, the firmware image,
the vCPU at the reset vector), the platform devices (``q35.platform``: PAM shadow, CMOS,
UART, i8042, fw_cfg, ACPI PM, reset control), the chipset's registers (``q35.mch``:
PCIEXBAR places the ECAM window, PAM the shadow; ``q35.lpc``: PMBASE, SCI, PIRQs), the
BAR decoder (``machine.bars``), then the builder's ``Machine`` (ECAM window, CF8/CFC)
with QEMU's debug console (0x402) and debug-exit (0xf4). Until firmware enables
PCIEXBAR there is no window at all. A guest that halts or shuts down without debug-exit
ends with ``GUEST_STOPPED_STATUS`` (QEMU would wait or reset instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from pcihole import layout
from pcihole.acpi.q35 import Q35Acpi, q35_acpi_files
from pcihole.arch.x86.linux import LinuxLoad
from pcihole.closing import Closeable
from pcihole.devices.debug_exit import DEBUG_EXIT_SIZE, DebugExit
from pcihole.devices.debugcon import DebugConsole, Stamp
from pcihole.devices.fw_cfg import BootRom
from pcihole.holes.slots import HoleSlotError
from pcihole.holes.strategy import KERNEL_BYTES_PER_SLOT
from pcihole.host.smaps import resident_bytes
from pcihole.kvm import Kvm, KvmError
from pcihole.machine.bars import BarDecoder, backends
from pcihole.machine.builder import Machine, PlacedDevice
from pcihole.machine.bus import BusError
from pcihole.machine.window import MachineError, MachineOptions
from pcihole.memory import MemoryMapError, MemslotShortage
from pcihole.pci.ecam import ConfigListener
from pcihole.pci.topology import Topology
from pcihole.q35 import mch
from pcihole.q35.lpc import LPC
from pcihole.q35.mch import Mch
from pcihole.q35.platform import Q35Platform
from pcihole.q35.result import BootResult, Ending
from pcihole.q35.shell import BootError, Q35Shell


@dataclass(frozen=True)
class LinuxBoot:
    """A kernel loaded as QEMU's -kernel loads it, and the option ROM that boots it."""

    load: LinuxLoad
    rom: BootRom


class Q35Machine(Closeable):
    """A q35 machine that boots ``image`` with ``topology``'s functions behind ECAM.
    ``config_ports`` is ``q35.platform.CONFIG_PORT_MODES``'s; ``linux`` a kernel to boot;
    ``marks`` texts whose first serial line records the run's counters (``self.marks``);
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
        marks: tuple[str, ...] = (),
        acpi: bool = True,
    ) -> None:
        topology = topology or Topology.qemu_nodefaults()
        try:
            mch.host_bridge(topology)  # refused before any VM is made
        except ValueError as error:
            raise BootError(str(error)) from None
        topology.reset_bridges()  # as QEMU's come out of reset: firmware numbers them
        self.topology, self.until = topology, until
        self.options = replace(options or MachineOptions(), buses=topology.buses)
        self._marks, self.marks, self._lines_marked = marks, list[dict[str, Any]](), 0
        self._serial = _SerialWatch(serial, until, self.stop, self._mark if marks else None)
        self.ending: Ending | None = None
        self.notes: list[str] = []
        self.placements: list[tuple[int | None, int]] = []
        self._started = time.perf_counter()
        # 1. The shell: RAM, the image at the top of 4 GiB, the vCPU at the reset vector.
        self.guest = shell = Q35Shell(kvm, image, ram_size=ram_size, name=name)
        try:
            # 2. Platform devices: PAM shadow, CMOS, UART, i8042, fw_cfg (with a kernel's
            #    items), ACPI PM, APM, resets.
            self.platform = self._platform(shell, linux, config_ports, acpi)
            self._chipset(shell, topology, console)
        except BaseException:
            self._close_platform()
            shell.close()
            raise
        self.window = self.machine.window
        self.legacy = self.machine.legacy

    def _chipset(self, shell: Q35Shell, topology: Topology, console: BinaryIO | None) -> None:
        """Steps 3 to 6 of the recipe: what sits on the platform devices."""
        # 3. The chipset's registers: PCIEXBAR places the window, PAM the shadow.
        self.mch = Mch(topology, self.place_window, self.platform.shadow.apply)
        # 4. The BAR decoder: register blocks follow the BARs the guest programs.
        assert shell.ram is not None
        self.bars = BarDecoder(shell, lambda: list(topology), backends(topology, shell.ram))
        # 5. QEMU's debug ports.
        self.console = DebugConsole(console, self._stamp, self._console_written)
        self.debug_exit = DebugExit(shell.request_stop)
        # 6. The window (placed when firmware enables PCIEXBAR) and CF8/CFC, whose
        #    0xcf9 byte is reset control; every config write reaches the listeners.
        listeners: list[ConfigListener] = [self.mch.config_written, self.bars.config_written]
        if self.platform.lpc is not None:
            listeners.append(self.platform.lpc.config_written)
        self.machine = Machine(
            shell,
            topology,
            self.options,
            self._debug_ports(),
            window_base=None,
            listeners=listeners,
            config_ports=self.platform.config_ports,
        )

    def _platform(
        self, shell: Q35Shell, linux: LinuxBoot | None, config_ports: str, acpi: bool
    ) -> Q35Platform:
        """The q35 platform devices, with a kernel's items and boot ROM in fw_cfg and its
        segments already in RAM (QEMU's ELF loader writes them at reset), and with ``acpi``
        QEMU 7.2's ACPI tables for this machine in fw_cfg."""
        assert shell.ram is not None
        inputs = Q35Acpi.for_machine(self.topology.buses, shell.ram_layout)
        tables = q35_acpi_files(inputs) if acpi else None
        for segment in linux.load.segments if linux is not None else ():
            shell.ram.write(segment.address, segment.data)
        lpc = self.topology.get(LPC)
        return Q35Platform(
            shell,
            lpc=lpc.config if lpc is not None and lpc.model == "ich9-lpc" else None,
            on_stop=self.stop,
            serial=self._serial.sink,
            config_ports=config_ports,
            clock=self._stamp,
            kernel=None if linux is None else linux.load.items,
            boot_rom=None if linux is None else linux.rom,
            acpi=tables,
        )

    def _debug_ports(self) -> list[PlacedDevice]:
        return [
            PlacedDevice("port", layout.DEBUGCON_PORT, 1, self.console, "debugcon"),
            PlacedDevice(
                "port", layout.DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, self.debug_exit, "debug-exit"
            ),
        ]

    def request_stop(self) -> None:
        self.guest.request_stop()

    def read_memory(self, address: int, length: int) -> bytes:
        """Guest-physical RAM as the guest reads it (the PAM range through its shadow)."""
        assert self.guest.ram is not None
        shadow = self.platform.shadow
        start, end = max(address, mch.SHADOW_BASE), min(address + length, mch.SHADOW_END)
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

    # --- ending a run ----------------------------------------------------------------
    def stop(self, reason: str, status: int = 0) -> None:
        """End the run (the guest powered off or reset, a time limit, a signal, ``until``);
        safe from any thread and from a signal handler. The first reason given wins."""
        if self.ending is None:
            self.ending = Ending(reason, status)
        self.guest.request_stop()

    def _console_written(self) -> None:
        if self.until is not None and self.console.output.endswith(self.until):
            self.stop(f"the debug console printed {self.until.decode(errors='replace')!r}")

    # --- counters ------------------------------------------------------------------------
    def _mark(self) -> None:
        """Record the counters at the first serial line holding each of ``marks``."""
        lines = self.platform.serial_log.lines
        for line in lines[self._lines_marked :]:
            for text in self._marks:
                if text in line.text and all(mark["mark"] != text for mark in self.marks):
                    self.marks.append(
                        {"mark": text, "line": line.text.rstrip("\r"), **self.counters()}
                    )
        self._lines_marked = len(lines)

    def counters(self) -> dict[str, Any]:
        """The run's counters now: time, exits by kind, ECAM and CF8 config exits."""
        exits = self.window.ecam.exits
        return {
            "seconds": round(time.perf_counter() - self._started, 6),
            "exit_counts": self.guest.loop.exit_counts(),
            "config_exits": {
                "hole_reads": exits.hole_reads,
                "hole_writes": exits.hole_writes,
                "device_reads": exits.device_reads,
                "device_writes": exits.device_writes,
                "legacy_ports": self.legacy.exits,
            },
        }

    def hole_memory(self) -> dict[str, int]:
        """Host memory behind the holes: this VM's own (virtual and resident), what it
        shares with other VMs, and the kernel's memslot arrays for the hole slots."""
        strategy = self.window.strategy
        own = strategy.per_vm_ranges() if strategy is not None else []
        shared = strategy.shared_ranges() if strategy is not None else []
        return {
            "per_vm_bytes": sum(size for _, size in own),
            "per_vm_resident_bytes": resident_bytes(own),
            "shared_bytes": sum(size for _, size in shared),
            "kernel_bytes": self.window.hole_memslots * KERNEL_BYTES_PER_SLOT,
        }

    # --- PCIEXBAR ------------------------------------------------------------------------
    def place_window(self, base: int | None, buses: int) -> None:
        """Move the window where the MCH says (after every write to its PCIEXBAR).

        A window that cannot go where firmware asks (over RAM or the image) is not decoded.
        """
        if (base, layout.ecam_size(buses)) == (self.window.base, self.window.size):
            return
        try:
            self.window.place(base, buses)
        except (
            MachineError,
            MemoryMapError,
            MemslotShortage,
            BusError,
            HoleSlotError,
            KvmError,
        ) as error:
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
        self.console.flush()
        self.platform.serial_log.flush()
        if self._marks:  # a last line without its newline (``until`` stopped the run in it)
            self._mark()
        seconds = time.perf_counter() - self._started
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
        report = self.window.report()
        return {
            "status": result.status,
            "exit_value": result.exit_value,
            "stop": result.run.reason.value,
            "detail": result.run.detail,
            "seconds": round(result.seconds, 6),
            "exit_counts": result.run.exit_counts,
            "emulated_instructions": self.guest.loop.emulated_instructions(),
            "config_exits": self.counters()["config_exits"],
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
            "hole_memory": self.hole_memory(),
            "strategy": report.strategy,
            "backing": report.backing,
            "notes": [*report.notes, *self.notes],
            "tsc_khz": self.guest.vcpu.tsc_khz(),
            "lines": [line.as_json() for line in result.lines],
            "marks": self.marks,
        }


class _SerialWatch:
    """The UART's output on to ``sink``; ``until`` seen there ends the run; ``line_ended``
    is called after each newline (the platform's serial log has the line by then)."""

    def __init__(
        self,
        sink: Callable[[bytes], None] | None,
        until: bytes | None,
        stop: Callable[[str], None],
        line_ended: Callable[[], None] | None = None,
    ) -> None:
        self._sink, self._until, self._stop = sink, until, stop
        self._line_ended = line_ended
        self._tail = b""

    @property
    def sink(self) -> Callable[[bytes], None] | None:
        """What the UART writes to (None: nowhere, nothing to watch)."""
        watched = self._sink is not None or self._until or self._line_ended is not None
        return self.write if watched else None

    def write(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
        if self._line_ended is not None and b"\n" in data:
            self._line_ended()
        if self._until:
            self._tail = (self._tail + data)[-(len(self._until) + len(data)) :]
            if self._until in self._tail:
                self._stop(f"the serial port printed {self._until.decode(errors='replace')!r}")


__all__ = ["BootError", "BootResult", "LinuxBoot", "Q35Machine"]

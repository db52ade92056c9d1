"""PAM shadowing of 0xc0000-0xfffff in a VM: memslots that follow the MCH's PAM registers.

The decode is ``pcihole.q35.mch`` (the MCH owns its PAM registers); this applies it.
Each run of segments in one mode becomes one memslot: RAM read-write (mode 3), RAM
read-only (mode 1), or the PCI side read-only (modes 0 and 2: QEMU's empty ``pc.rom`` at
0xc0000-0xdffff, the BIOS image's alias at 0xe0000-0xfffff). Whatever exits lands on this
object as an MMIO device: writes to RAM in modes 2 and 3, dropped (and counted) in modes
0 and 1. Without read-only memslots (no KVM_CAP_READONLY_MEM) only read-write runs get a
slot and the rest exits.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcihole.kvm import Vm, abi
from pcihole.memory import GuestRam, SlotAllocator
from pcihole.q35 import mch


class ShadowMemory:
    """The PAM range of one VM, a bus device at ``mch.SHADOW_BASE`` (offsets from there)."""

    def __init__(self, vm: Vm, slots: SlotAllocator, ram: GuestRam, pci_side: bytes) -> None:
        if len(pci_side) != mch.SHADOW_SIZE:
            raise ValueError(f"the PCI side of the PAM range is {mch.SHADOW_SIZE:#x} bytes")
        self.vm = vm
        self.allocator = slots
        self.ram = ram
        self.pci = GuestRam(mch.SHADOW_BASE, mch.SHADOW_SIZE)
        self.pci.write(mch.SHADOW_BASE, pci_side)
        self.registers: tuple[int, ...] = (0,) * mch.PAM_REGISTERS
        self.runs: list[mch.Segment] = []
        self._slots: list[int] = []
        self.dropped_writes = 0
        """Writes that reached the PCI side (ROM or nothing) and went nowhere."""
        self.exits = 0
        self.changes = 0
        """How many times the memslots were rebuilt for new PAM values."""
        self._map(mch.runs(self.registers))

    def apply(self, registers: Sequence[int]) -> bool:
        """Make the range match PAM0..PAM6; True when anything changed."""
        wanted = tuple(value & 0xFF for value in registers)
        if wanted == self.registers:
            return False
        runs = mch.runs(wanted)
        self.registers = wanted
        if runs != self.runs:
            self._unmap()
            self._map(runs)
            self.changes += 1
        return True

    def _map(self, runs: list[mch.Segment]) -> None:
        self.runs = runs
        mapped = [run for run in runs if self._slotted(run.mode)]
        self._slots = self.allocator.allocate(len(mapped), purpose="PAM shadow")
        for slot, run in zip(self._slots, mapped, strict=True):
            ram = run.mode.reads_ram
            backing = self.ram.host_address - self.ram.base if ram else self.pci.host_address
            host = backing + run.start - (0 if ram else mch.SHADOW_BASE)
            flags = 0 if run.mode is mch.PamMode.READ_WRITE else abi.KVM_MEM_READONLY
            self.vm.set_memory_region(slot, run.start, run.size, host, flags)

    def _slotted(self, mode: mch.PamMode) -> bool:
        return mode is mch.PamMode.READ_WRITE or self.vm.has_readonly_memory

    def _unmap(self) -> None:
        for slot in self._slots:
            self.vm.delete_memory_region(slot)
        self.allocator.release(self._slots)
        self._slots = []

    # --- what exits ------------------------------------------------------------------------
    def _mode(self, address: int) -> mch.PamMode:
        for run in self.runs:
            if run.start <= address < run.end:
                return run.mode
        raise ValueError(f"{address:#x} is outside the PAM range")

    def read(self, offset: int, size: int) -> int:
        self.exits += 1
        return int.from_bytes(self.view(mch.SHADOW_BASE + offset, size), "little")

    def view(self, address: int, length: int) -> bytes:
        """What the guest reads at ``[address, address+length)`` inside the PAM range."""
        data = bytearray()
        for byte in range(address, address + length):
            memory = self.ram if self._mode(byte).reads_ram else self.pci
            data += memory.read(byte, 1)
        return bytes(data)

    def write(self, offset: int, size: int, value: int) -> None:
        self.exits += 1
        dropped = False
        for index, byte in enumerate(value.to_bytes(size, "little")):
            address = mch.SHADOW_BASE + offset + index
            if self._mode(address).writes_ram:
                self.ram.write(address, bytes((byte,)))
            else:
                dropped = True
        self.dropped_writes += dropped

    def close(self) -> None:
        if not self.vm.closed:
            self._unmap()
        self.pci.close()


def pci_side(image: bytes) -> bytes:
    """What the PCI side of 0xc0000-0xfffff holds at reset, as on QEMU q35: zeros (the empty
    ``pc.rom``) up to where the image's last 128 KiB (or all of a smaller image) end at 1 MiB."""
    tail = image[-mch.ISA_BIOS_MAX :]
    return bytes(mch.SHADOW_SIZE - len(tail)) + tail

"""The q35 machine's shell: a VM at the x86 reset state with RAM and a firmware image.

- the image mapped read-only so that it ends at 4 GiB, its last 128 KiB (all of it when
  smaller) aliased to end at 1 MiB, as QEMU's isa-bios (through the PAM shadow,
  ``q35.shadow``); RAM below 640 KiB and from 1 MiB up, and past q35's split from 4 GiB
  (``arch.x86.e820.Q35Ram``, for the vCPU's vendor and address bits);
- KVM's in-kernel PIC, IOAPIC, local APIC and PIT where this KVM has them;
- one vCPU at the reset vector (real mode, CS base 0xffff0000, RIP 0xfff0) with the
  CPUID ``arch.x86.cpuid.boot_cpuid`` gives, its run loop and empty buses.
"""

from __future__ import annotations

from collections.abc import Callable

from pcihole import layout
from pcihole.arch.x86.cpuid import VcpuIdentity, boot_cpuid
from pcihole.arch.x86.e820 import Q35Ram
from pcihole.arch.x86.reset import prepare_real_mode
from pcihole.closing import Closeable
from pcihole.devices.rom import RomDevice
from pcihole.errors import BadInput
from pcihole.kvm import Cap, CoalescedWrite, Kvm, Vm, abi
from pcihole.machine.bus import Bus
from pcihole.machine.runloop import RunLoop, RunResult
from pcihole.memory import GuestRam, MemoryMap, Region, RegionKind, SlotAllocator
from pcihole.q35 import mch


class BootError(BadInput):
    """The image or the machine is unusable; the message says why."""


class Q35Shell(Closeable):
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
            shadow = Region(RegionKind.ROM, mch.SHADOW_BASE, mch.SHADOW_SIZE, "pam-shadow")
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
            (
                Region(RegionKind.RAM, high, below - high, "ram-high"),
                self.ram.host_address + high,
                0,
            ),
            *(
                [
                    (
                        Region(RegionKind.RAM, start, above, "ram-above-4g"),
                        self.ram.host_address_of(start),
                        0,
                    )
                ]
                if above
                else []
            ),
            (
                Region(RegionKind.ROM, self.rom.base, image_size, "bios"),
                self.rom.host_address,
                readonly,
            ),
        ]

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


__all__ = ["BootError", "Q35Shell", "check_image"]

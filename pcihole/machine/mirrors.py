"""Mirror pages: each present function's config space as a read-only memslot at the page
the guest reaches it at, so that config reads never exit; refreshed after every write its
model handles. ``EcamWindow`` decides where and when; this owns the pages and slots.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pcihole import layout
from pcihole.kvm import Vm, abi
from pcihole.memory import GuestRam, SlotAllocator
from pcihole.pci.bdf import BuiltBdf


@dataclass
class Mirror:
    slot: int
    page: GuestRam


class MirrorPages(Mapping[BuiltBdf, Mirror]):
    """The mirror pages of one VM's window, by the function's built address."""

    def __init__(self, vm: Vm, slots: SlotAllocator) -> None:
        self.vm = vm
        self.slots = slots
        self._mirrors: dict[BuiltBdf, Mirror] = {}

    def __getitem__(self, bdf: BuiltBdf) -> Mirror:
        return self._mirrors[bdf]

    def __iter__(self) -> Iterator[BuiltBdf]:
        return iter(self._mirrors)

    def __len__(self) -> int:
        return len(self._mirrors)

    def map(self, bdf: BuiltBdf, address: int, registers: bytes, what: str) -> None:
        """Map ``registers`` read-only at guest-physical ``address``; all or nothing."""
        (slot,) = self.slots.allocate(1, purpose=what)
        page = GuestRam(address, layout.PAGE_SIZE)
        try:
            page.write(page.base, registers)
            self.vm.set_memory_region(
                slot, page.base, page.size, page.host_address, abi.KVM_MEM_READONLY
            )
        except BaseException:
            page.close()
            self.slots.release([slot])
            raise
        self._mirrors[bdf] = Mirror(slot, page)

    def unmap(self, bdf: BuiltBdf) -> None:
        mirror = self._mirrors.pop(bdf)
        if not self.vm.closed:
            self.vm.delete_memory_region(mirror.slot)
        self.slots.release([mirror.slot])
        mirror.page.close()

    def refresh(self, bdf: BuiltBdf, registers: bytes) -> None:
        """Copy the function's registers into its page, if it has one."""
        mirror = self._mirrors.get(bdf)
        if mirror is not None:
            mirror.page.write(mirror.page.base, registers)

    def close(self) -> None:
        for bdf in list(self._mirrors):
            self.unmap(bdf)

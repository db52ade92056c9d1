"""A VM with RAM, one vCPU in long mode and a guest program, in one call.

Like KVM selftests' ``vm_create_with_one_vcpu``: everything later layers (holes, PCI)
add goes through ``memory_map``, ``slots``, ``ports`` and ``mmio``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Sequence

from pcihole import layout
from pcihole.arch.x86 import longmode
from pcihole.closing import Closeable
from pcihole.guest.build import GuestProgram, build
from pcihole.guest.report import REPORT_SIZE, ReportPort
from pcihole.kvm import CoalescedWrite, Kvm, Vm
from pcihole.machine.bus import Bus
from pcihole.machine.runloop import RunLoop, RunResult
from pcihole.memory import GuestRam, MemoryMap, Region, RegionKind, SlotAllocator


class GuestVm(Closeable):
    """One VM running ``program`` at ``ring`` with ``params`` in PARAM(1), PARAM(2), ..."""

    def __init__(
        self,
        kvm: Kvm,
        program: str | GuestProgram,
        *,
        ring: int = 3,
        params: Sequence[int] = (),
        ram_size: int = layout.RAM_SIZE,
        name: str = "vm",
    ) -> None:
        if ring not in (0, 3):
            raise ValueError(f"ring must be 0 or 3, got {ring}")
        if len(params) + 1 > layout.PARAMS_SLOTS:
            raise ValueError(f"{len(params)} parameters, room for {layout.PARAMS_SLOTS - 1}")
        self.name = name
        self.ring = ring
        self.program = build(program) if isinstance(program, str) else program
        self.vm: Vm = kvm.create_vm()
        self.ram: GuestRam | None = None
        try:
            self.slots = SlotAllocator(self.vm.max_memslots)
            self.memory_map = MemoryMap([Region(RegionKind.RAM, layout.RAM_BASE, ram_size, "ram")])
            self.ram = GuestRam(layout.RAM_BASE, ram_size)
            (ram_slot,) = self.slots.allocate(1, purpose="guest RAM")
            self.vm.set_memory_region(ram_slot, layout.RAM_BASE, ram_size, self.ram.host_address)
            stubs = [self.program.exception_stub(v) for v in range(longmode.EXCEPTION_VECTORS)]
            longmode.write_system_tables(self.ram, stubs)
            self.ram.write(self.program.load_address, self.program.code)
            self.set_params(params)
            self.vcpu = self.vm.create_vcpu()
            longmode.enter_long_mode(self.vcpu, self.program.load_address)
            self.ports = Bus("port")
            self.mmio = Bus("mmio")
            self.report = ReportPort(self.vcpu)
            self.ports.add(layout.REPORT_PORT, REPORT_SIZE, self.report, "report")
            self.loop = RunLoop(self.vcpu, self.ports, self.mmio)
        except BaseException:
            self.close()
            raise

    def set_params(self, params: Sequence[int]) -> None:
        assert self.ram is not None
        values = [self.ring, *params]
        self.ram.write(layout.PARAMS_ADDR, struct.pack(f"<{len(values)}Q", *values))

    def on_sync(self, callback: Callable[[int], None] | None) -> None:
        self.report.on_sync = callback

    def on_coalesced(self, callback: Callable[[list[CoalescedWrite]], None] | None) -> None:
        self.loop.on_coalesced = callback

    def run(self, max_exits: int | None = None) -> RunResult:
        """Run until the guest reports done (or stops otherwise); ``syncs`` are this run's."""
        self.report.syncs = []
        result = self.loop.run(max_exits)
        result.syncs = self.report.syncs
        return result

    def request_stop(self) -> None:
        self.loop.request_stop()

    def results(self, length: int, offset: int = 0) -> bytes:
        """Bytes the guest left in its result buffer."""
        assert self.ram is not None
        return self.ram.read(layout.RESULTS_ADDR + offset, length)

    def close(self) -> None:
        self.vm.close()
        if self.ram is not None:
            self.ram.close()
            self.ram = None


def run_all(vms: Sequence[GuestVm], max_exits: int | None = None) -> list[RunResult]:
    """Run every VM's vCPU on its own thread; return their results in order."""
    results: list[RunResult | None] = [None] * len(vms)

    def worker(index: int) -> None:
        results[index] = vms[index].run(max_exits)

    threads = [threading.Thread(target=worker, args=(i,), name=vm.name) for i, vm in enumerate(vms)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [result for result in results if result is not None]

"""The foundation on real guests: reports, exits, MMIO, exceptions, stopping, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.errors import Bug
from pcihole.guest.build import ASM_DIR
from pcihole.guest.vm import GuestVm, run_all
from pcihole.kvm import Kvm, KvmError, abi
from pcihole.machine.runloop import GuestError, RunResult, StopReason
from pcihole.memory import MemoryMapError, Region, RegionKind
from tests.support import Worker, run_pcihole, wait_until


class Register:
    """A test MMIO device: reads return ``value``, writes are recorded."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return self.value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


@pytest.mark.parametrize("ring", [0, 3])
def test_guest_syncs_and_finishes_with_exact_exit_counts(kvm: Kvm, ring: int) -> None:
    with GuestVm(kvm, "selftest", ring=ring, params=[0xC0FFEE]) as guest:
        result = guest.run().check()
    assert result.syncs == [0xC0FFEE, 0x1234]
    # two syncs and one done, each one OUT: nothing else left the guest
    assert result.exit_counts == {"IoOut": 3}


def test_mmio_read_answer_reaches_guest_and_write_arrives(kvm: Kvm) -> None:
    device = Register(0xDEADBEEF)
    with GuestVm(kvm, "mmio", ring=3) as guest:
        guest.mmio.add(layout.TEST_MMIO_BASE, 0x1000, device, "test-register")
        result = guest.run().check()
    assert result.syncs == [0xDEADBEEF]
    assert device.writes == [(8, 8, 0x1122334455667788)]
    assert result.exit_counts["MmioRead"] == 1
    assert result.exit_counts["MmioWrite"] == 1


@pytest.mark.parametrize(
    ("mode", "ring", "vector"),
    [(0, 3, 6), (1, 3, 13), (2, 3, 14), (0, 0, 6), (2, 0, 14)],
)
def test_guest_exception_reports_vector_and_rip(
    kvm: Kvm, mode: int, ring: int, vector: int
) -> None:
    with GuestVm(kvm, "fault", ring=ring, params=[mode]) as guest:
        result = guest.run()
    assert result.reason is StopReason.GUEST_EXCEPTION
    assert result.exception is not None
    assert result.exception.vector == vector
    assert result.exception.ring == ring
    assert layout.CODE_ADDR < result.exception.rip < layout.CODE_ADDR + layout.CODE_MAX
    if vector == 14:
        assert result.exception.cr2 == 0x200000000
    with pytest.raises(GuestError, match=f"vector {vector}"):
        result.check()


def test_assertion_failure_names_the_source_line(kvm: Kvm) -> None:
    source = (ASM_DIR / "fault.S").read_text().splitlines()
    expected_line = next(
        number for number, text in enumerate(source, 1) if "GUEST_ASSERT_EQ(rax, 42)" in text
    )
    with GuestVm(kvm, "fault", ring=3, params=[5]) as guest:
        result = guest.run()
    assert result.reason is StopReason.ASSERT_FAILED
    assert result.assert_line == expected_line


def test_triple_fault_is_a_shutdown(kvm: Kvm) -> None:
    with GuestVm(kvm, "fault", ring=0, params=[4]) as guest:
        result = guest.run()
    assert result.reason is StopReason.SHUTDOWN


def test_looping_guest_is_stopped_from_another_thread(kvm: Kvm) -> None:
    """Stopped once it is seen looping (its round counter moves), the guest ends with
    INTERRUPTED; it had run on and would never have ended by itself."""
    with GuestVm(kvm, "fault", ring=3, params=[3]) as guest:
        results: list[RunResult] = []
        runner = Worker(lambda: results.append(guest.run()), "looping guest")
        runner.start()

        def rounds() -> int:
            return int.from_bytes(guest.results(8), "little")

        wait_until(lambda: rounds() > 0, "the guest to loop", runner.is_alive)
        seen = rounds()
        wait_until(lambda: rounds() > seen, "the guest to loop on", runner.is_alive)
        guest.request_stop()
        runner.finish()
    assert results[0].reason is StopReason.INTERRUPTED
    assert results[0].detail == "stopped by the monitor"


def test_several_vms_on_threads(kvm: Kvm) -> None:
    guests = [GuestVm(kvm, "selftest", ring=3, params=[i], name=f"vm{i}") for i in range(4)]
    try:
        results = run_all(guests)
    finally:
        for guest in guests:
            guest.close()
    assert [r.check().syncs[0] for r in results] == [0, 1, 2, 3]


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_closing_a_vm_closes_every_fd(kvm: Kvm) -> None:
    before = _open_fds()
    guest = GuestVm(kvm, "selftest", ring=3)
    assert len(_open_fds() - before) >= 2  # the VM and its vCPU
    guest.run().check()
    guest.close()
    assert _open_fds() - before == set()


def test_use_after_close_is_a_clear_error(kvm: Kvm) -> None:
    guest = GuestVm(kvm, "selftest", ring=3)
    guest.close()
    with pytest.raises(Bug, match="use of closed vCPU"):
        guest.vcpu.run()
    with pytest.raises(Bug, match="use of closed VM"):
        guest.vm.set_memory_region(1, 0x1000000, 0x1000, 0)


def test_slot_beyond_the_kernel_limit_is_refused(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        limit = kvm.check_extension(abi.Cap.NR_MEMSLOTS)
        with pytest.raises(Bug, match=f"slot {limit} is outside"):
            vm.set_memory_region(limit, 0x100000, 0x1000, 0)


def test_kernel_refusal_names_the_operation_and_errno(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        # unaligned host address: the kernel says EINVAL
        with pytest.raises(KvmError, match=r"set memslot 0 .*Invalid argument"):
            vm.set_memory_region(0, 0x100000, 0x1000, 0x123)


@pytest.mark.parametrize(
    ("start", "size", "message"),
    [
        (0x1000, 0, "size must be positive"),
        (0x1001, 0x1000, "not aligned"),
        (0x1000, 0x1800, "not aligned"),
    ],
)
def test_bad_regions_are_refused(start: int, size: int, message: str) -> None:
    with pytest.raises(MemoryMapError, match=message):
        Region(RegionKind.RAM, start, size, "bad")


def test_overlapping_region_names_both(kvm: Kvm) -> None:
    with GuestVm(kvm, "selftest") as guest:
        with pytest.raises(MemoryMapError, match=r"mmio 'dev'.*overlaps ram 'ram'"):
            guest.memory_map.with_region(Region(RegionKind.MMIO, 0x10000, 0x1000, "dev"))


def test_info_json_reports_what_kvm_offers(kvm: Kvm) -> None:
    import json

    out = run_pcihole("info", "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["api_version"] == 12
    assert facts["max_memslots"] == kvm.check_extension(abi.Cap.NR_MEMSLOTS)
    for name in (
        "NR_MEMSLOTS",
        "READONLY_MEM",
        "COALESCED_MMIO",
        "USER_MEMORY2",
        "GUEST_MEMFD",
        "PRE_FAULT_MEMORY",
    ):
        assert facts["capabilities"][name] == kvm.check_extension(abi.Cap[name])
    assert facts["max_map_count"] == int(Path("/proc/sys/vm/max_map_count").read_text())
    assert {"thp_anonymous", "thp_shmem", "hugetlb_free"} <= facts["huge_pages"].keys()
    assert facts["hole_backing"]["choice"] in ("hugetlb", "thp", "memfd")

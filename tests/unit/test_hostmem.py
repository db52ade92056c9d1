"""Host memory wrappers: alignment, reservation, fixed fd mappings, errors, clean-up."""

from __future__ import annotations

import errno
import gc
import os

import pytest

from pcihole.host import mem as hostmem
from pcihole.host.mem import HostMemError
from pcihole.layout import HUGE_PAGE_SIZE, PAGE_SIZE


def _perms(address: int, size: int) -> list[str]:
    return [p for _, _, p in hostmem.mappings_in(address, size)]


@pytest.mark.parametrize("phase", [0, PAGE_SIZE, HUGE_PAGE_SIZE - PAGE_SIZE])
def test_map_anonymous_is_aligned_and_trimmed(phase: int) -> None:
    with hostmem.map_anonymous(3 * PAGE_SIZE, align=HUGE_PAGE_SIZE, phase=phase) as m:
        assert m.address % HUGE_PAGE_SIZE == phase
        # Exactly the requested range is mapped: head and tail of the over-reservation are gone.
        vmas = hostmem.mappings_in(m.address - PAGE_SIZE, m.size + 2 * PAGE_SIZE)
        covered = [(max(s, m.address), min(e, m.end)) for s, e, _ in vmas]
        assert sum(e - s for s, e in covered) == m.size
        hostmem.fill(m.address, m.size, 0xA5)
        assert hostmem.read(m.address, 4) == b"\xa5" * 4
        assert hostmem.is_filled(m.address, m.size, 0xA5)


def test_huge_anonymous_gets_a_huge_page_when_thp_allows() -> None:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        if "[never]" in f.read():
            pytest.skip("transparent huge pages disabled on this host")
    with hostmem.map_anonymous(HUGE_PAGE_SIZE, align=HUGE_PAGE_SIZE, huge=True) as m:
        hostmem.fill(m.address, m.size, 0xFF)
        stats = hostmem.vma_stats(m.address)
        assert stats["Rss"] == HUGE_PAGE_SIZE >> 10
        # THP may fall back to small pages under fragmentation; record, do not insist.
        assert stats["AnonHugePages"] in (0, HUGE_PAGE_SIZE >> 10)


def test_close_is_idempotent_and_unmaps() -> None:
    m = hostmem.map_anonymous(PAGE_SIZE)
    address = m.address
    assert _perms(address, PAGE_SIZE) == ["rw-p"]
    m.close()
    m.close()
    assert m.closed
    assert _perms(address, PAGE_SIZE) == []


def test_finalizer_unmaps_a_forgotten_mapping() -> None:
    m = hostmem.map_anonymous(PAGE_SIZE, align=HUGE_PAGE_SIZE)
    address = m.address
    del m
    gc.collect()
    assert _perms(address, PAGE_SIZE) == []


def test_reserve_is_inaccessible_and_takes_fixed_fd_mappings() -> None:
    fd = os.memfd_create("test", os.MFD_CLOEXEC)
    try:
        os.pwrite(fd, b"\x42" * PAGE_SIZE, 0)
        with hostmem.reserve(4 * PAGE_SIZE, HUGE_PAGE_SIZE) as r:
            assert r.address % HUGE_PAGE_SIZE == 0
            assert _perms(r.address, r.size) == ["---p"]
            assert hostmem.map_fd_fixed(fd, r.address + PAGE_SIZE, PAGE_SIZE) == (
                r.address + PAGE_SIZE
            )
            assert hostmem.map_fd_fixed(fd, r.address + 3 * PAGE_SIZE, PAGE_SIZE) == (
                r.address + 3 * PAGE_SIZE
            )
            assert _perms(r.address, r.size) == ["---p", "r--s", "---p", "r--s"]
            assert hostmem.read(r.address + 3 * PAGE_SIZE, 2) == b"\x42\x42"
            address = r.address
        assert _perms(address, 4 * PAGE_SIZE) == []
    finally:
        os.close(fd)


def test_map_fd_aligns() -> None:
    fd = os.memfd_create("test", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 2 * PAGE_SIZE)
        with hostmem.map_fd(fd, 2 * PAGE_SIZE, align=HUGE_PAGE_SIZE) as m:
            assert m.address % HUGE_PAGE_SIZE == 0
            assert hostmem.is_filled(m.address, m.size, 0)
            assert not hostmem.is_filled(m.address, m.size, 0xFF)
    finally:
        os.close(fd)


def test_errors_name_the_operation_and_errno() -> None:
    with pytest.raises(HostMemError) as info:
        hostmem.protect(1, PAGE_SIZE, hostmem.PROT_READ)
    assert info.value.errno == errno.EINVAL
    assert info.value.operation.startswith("mprotect(0x1")
    assert "Invalid argument" in str(info.value)
    assert isinstance(info.value, OSError)
    with pytest.raises(HostMemError, match="mmap"):
        hostmem.map_fd_fixed(-1, 0x10000, PAGE_SIZE)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        hostmem.map_anonymous(100)
    with pytest.raises(ValueError):
        hostmem.reserve(PAGE_SIZE, 3 * PAGE_SIZE)
    with pytest.raises(ValueError):
        hostmem.reserve(PAGE_SIZE, HUGE_PAGE_SIZE, phase=HUGE_PAGE_SIZE)


def test_is_filled_finds_one_odd_byte_anywhere() -> None:
    size = 3 * (64 << 10) + PAGE_SIZE
    with hostmem.map_anonymous(size) as m:
        hostmem.fill(m.address, m.size, 0xFF)
        for offset in (0, (64 << 10) - 1, 64 << 10, size - 1):
            hostmem.fill(m.address + offset, 1, 0xFE)
            assert not hostmem.is_filled(m.address, size)
            hostmem.fill(m.address + offset, 1, 0xFF)
        assert hostmem.is_filled(m.address, size)


def test_map_counts() -> None:
    before = hostmem.map_count()
    assert 0 < before < hostmem.max_map_count()
    with hostmem.map_anonymous(PAGE_SIZE, align=HUGE_PAGE_SIZE):
        assert hostmem.map_count() >= before

"""The all-ones source and the windows built from it.

Source: backings, seals, refusal of host writes, verification of bad memfds.
Window: repeated read-only mappings, alignment, the mapping budget.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import mmap
import os
from collections.abc import Iterator

import pytest

from pcihole.errors import Bug
from pcihole.holes import source as source_mod
from pcihole.holes.source import (
    REQUIRED_SEALS,
    AllOnesSource,
    Backing,
    HoleSourceError,
    Seal,
    add_seals,
    seal_text,
)
from pcihole.holes.window import HoleWindow, HoleWindowError
from pcihole.host import mem as hostmem
from pcihole.host.mem import HostMemError
from pcihole.layout import HUGE_PAGE_SIZE, PAGE_SIZE
from tests.support import frame_of

MiB = 1 << 20


@pytest.fixture(params=[Backing.MEMFD, Backing.HUGETLB])
def sealed(request: pytest.FixtureRequest) -> Iterator[AllOnesSource]:
    """A sealed, fd-backed source of each shareable backing."""
    backing: Backing = request.param
    if backing is Backing.HUGETLB:
        request.getfixturevalue("huge_page")
    with AllOnesSource.create(backing) as src:
        yield src


def _memfd(content: bytes, seals: Seal | None = REQUIRED_SEALS) -> int:
    fd = os.memfd_create("test-bad", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.pwrite(fd, content, 0)
    if seals:
        add_seals(fd, seals)
    return fd


def _fd_is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


# -- sealed sources -----------------------------------------------------------------------


def test_sealed_source_carries_every_required_seal(sealed: AllOnesSource) -> None:
    assert sealed.fd is not None
    assert sealed.seals & REQUIRED_SEALS == REQUIRED_SEALS
    assert sealed.size == HUGE_PAGE_SIZE
    assert sealed.address % HUGE_PAGE_SIZE == 0
    assert hostmem.is_filled(sealed.address, sealed.size)
    assert [p for _, _, p in hostmem.mappings_in(sealed.address, sealed.size)] == ["r--s"]
    sealed.verify()


def test_hugetlb_source_is_one_huge_page(huge_page: int) -> None:
    with AllOnesSource.create() as src:  # a free huge page makes HUGETLB the first choice
        assert src.backing is Backing.HUGETLB, src.reason
        assert "huge page" in src.reason
        assert src.page_size == HUGE_PAGE_SIZE
        # Every seal is accepted by hugetlb memfds on this kernel, F_SEAL_WRITE included.
        assert src.seals == REQUIRED_SEALS
        stats = hostmem.vma_stats(src.address)
        assert stats["KernelPageSize"] == HUGE_PAGE_SIZE >> 10


def test_host_cannot_write_a_sealed_source(sealed: AllOnesSource) -> None:
    fd = sealed.fd
    assert fd is not None
    size = sealed.size
    # write(): EPERM under F_SEAL_WRITE; hugetlbfs has no write() at all (EINVAL).
    with pytest.raises(OSError) as info:
        os.pwrite(fd, b"\x00", 0)
    expected = errno.EINVAL if sealed.backing is Backing.HUGETLB else errno.EPERM
    assert info.value.errno == expected
    # A writable shared mapping, through Python's mmap and through hostmem.
    with pytest.raises(PermissionError) as perm:
        mmap.mmap(fd, size)
    assert perm.value.errno == errno.EPERM
    with pytest.raises(HostMemError) as host:
        hostmem.map_fd(fd, size, align=HUGE_PAGE_SIZE, prot=hostmem.PROT_READ | hostmem.PROT_WRITE)
    assert host.value.errno == errno.EPERM
    # Upgrading the existing read-only mapping to writable: the kernel dropped VM_MAYWRITE.
    with pytest.raises(HostMemError) as prot:
        hostmem.protect(sealed.address, size, hostmem.PROT_READ | hostmem.PROT_WRITE)
    assert prot.value.errno == errno.EACCES
    # Size changes.
    for new_size in (size + HUGE_PAGE_SIZE, size - sealed.page_size, 0):
        with pytest.raises(OSError) as trunc:
            os.ftruncate(fd, new_size)
        assert trunc.value.errno == errno.EPERM
    # Seals can be neither added nor removed any more.
    with pytest.raises(OSError) as punch:
        fcntl.fcntl(fd, source_mod.F_ADD_SEALS, int(Seal.FUTURE_WRITE))
    assert punch.value.errno == errno.EPERM
    sealed.verify()


def test_private_writable_mapping_never_reaches_the_source() -> None:
    with AllOnesSource.create(Backing.MEMFD) as src:
        assert src.fd is not None
        cow = mmap.mmap(src.fd, src.size, flags=mmap.MAP_PRIVATE)
        cow[0:4] = b"\x00\x00\x00\x00"
        assert cow[0:4] == b"\x00" * 4
        cow.close()
        src.verify()
        assert hostmem.read(src.address, 4) == b"\xff" * 4


def test_memfd_chunk_size_is_chosen() -> None:
    with AllOnesSource.create(Backing.MEMFD, memfd_chunk=64 << 10) as src:
        assert src.size == 64 << 10
        assert src.page_size == PAGE_SIZE
        assert os.fstat(src.fd or -1).st_size == 64 << 10
    with pytest.raises(HoleSourceError):
        AllOnesSource.create(Backing.MEMFD, memfd_chunk=100)


# -- verification refuses bad memfds -------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "seals", "expected_size", "match"),
    [
        (b"\xff" * PAGE_SIZE, None, None, "lacks seals"),
        (b"\xff" * PAGE_SIZE, Seal.WRITE, None, "lacks seals SHRINK\\|GROW\\|SEAL \\(has WRITE\\)"),
        (b"\xff" * PAGE_SIZE, REQUIRED_SEALS & ~Seal.SEAL, None, "lacks seals SEAL"),
        (b"\xff" * (PAGE_SIZE - 1) + b"\xfe", REQUIRED_SEALS, None, "not all 0xff"),
        (b"\x00" + b"\xff" * (2 * PAGE_SIZE - 1), REQUIRED_SEALS, None, "not all 0xff"),
        (b"\xff" * PAGE_SIZE, REQUIRED_SEALS, 2 * PAGE_SIZE, "expected 0x2000"),
        (b"\xff" * 100, REQUIRED_SEALS, None, "not a positive multiple"),
        (b"", REQUIRED_SEALS, None, "not a positive multiple"),
    ],
    ids=[
        "unsealed",
        "write-only",
        "not-seal-sealed",
        "last-byte-tampered",
        "first-byte-zero",
        "wrong-size",
        "not-page-multiple",
        "empty",
    ],
)
def test_adopt_refuses_bad_memfds(
    content: bytes, seals: Seal | None, expected_size: int | None, match: str
) -> None:
    fd = _memfd(content, seals)
    with pytest.raises(HoleSourceError, match=match):
        AllOnesSource.adopt_fd(
            fd, backing=Backing.MEMFD, reason="test", expected_size=expected_size
        )
    assert _fd_is_closed(fd)


def test_adopt_accepts_a_good_memfd() -> None:
    fd = _memfd(b"\xff" * 4 * PAGE_SIZE)
    with AllOnesSource.adopt_fd(
        fd, backing=Backing.MEMFD, reason="test", expected_size=4 * PAGE_SIZE
    ) as s:
        assert s.fd == fd
        assert s.size == 4 * PAGE_SIZE
        s.verify()
    assert _fd_is_closed(fd)


def test_adopt_refuses_a_backing_that_does_not_match() -> None:
    fd = _memfd(b"\xff" * HUGE_PAGE_SIZE)
    with pytest.raises(HoleSourceError, match="does not match hugetlb"):
        AllOnesSource.adopt_fd(fd, backing=Backing.HUGETLB, reason="test")
    assert _fd_is_closed(fd)


def test_adopt_refuses_files_that_cannot_be_sealed(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "ones")
    with open(path, "wb") as f:
        f.write(b"\xff" * PAGE_SIZE)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with pytest.raises(HoleSourceError, match="F_GET_SEALS"):
        AllOnesSource.adopt_fd(fd, backing=Backing.MEMFD, reason="test")
    assert _fd_is_closed(fd)
    unsealable = os.memfd_create("no-sealing", os.MFD_CLOEXEC)  # seals F_SEAL_SEAL from birth
    os.pwrite(unsealable, b"\xff" * PAGE_SIZE, 0)
    with pytest.raises(HoleSourceError, match=r"lacks seals WRITE\|SHRINK\|GROW \(has SEAL\)"):
        AllOnesSource.adopt_fd(unsealable, backing=Backing.MEMFD, reason="test")


# -- THP --------------------------------------------------------------------------------


def test_thp_source_is_private_and_read_only() -> None:
    if source_mod.unavailable_reason(Backing.THP):
        pytest.skip(str(source_mod.unavailable_reason(Backing.THP)))
    with AllOnesSource.create(Backing.THP) as src:
        assert src.fd is None
        assert src.seals == Seal(0)
        assert src.size == HUGE_PAGE_SIZE
        assert src.address % HUGE_PAGE_SIZE == 0
        assert "backed by" in src.reason
        assert [p for _, _, p in hostmem.mappings_in(src.address, src.size)] == ["r--p"]
        src.verify()
        # Tampering inside this process is caught by verify(): protection, then content.
        hostmem.protect(src.address, src.size, hostmem.PROT_READ | hostmem.PROT_WRITE)
        with pytest.raises(HoleSourceError, match="not read-only"):
            src.verify()
        hostmem.fill(src.address + 12345, 1, 0)
        hostmem.protect(src.address, src.size, hostmem.PROT_READ)
        with pytest.raises(HoleSourceError, match="not all 0xff"):
            src.verify()


# -- choosing a backing -------------------------------------------------------------------


def test_auto_choice_follows_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_mod, "free_huge_pages", lambda: 0)
    monkeypatch.setattr(source_mod, "thp_mode", lambda: "madvise")
    with AllOnesSource.create() as src:
        assert src.backing is Backing.THP
        assert "no free 2 MiB huge pages" in src.reason
    with AllOnesSource.create(shareable=True) as src:
        assert src.backing is Backing.MEMFD
        assert "thp: not shareable" in src.reason
    monkeypatch.setattr(source_mod, "thp_mode", lambda: "never")
    with AllOnesSource.create() as src:
        assert src.backing is Backing.MEMFD
        assert "disabled" in src.reason


def test_forcing_an_unavailable_backing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_mod, "free_huge_pages", lambda: 0)
    with pytest.raises(HoleSourceError, match="hugetlb backing unavailable: no free 2 MiB"):
        AllOnesSource.create(Backing.HUGETLB)
    monkeypatch.setattr(source_mod, "thp_mode", lambda: None)
    with pytest.raises(HoleSourceError, match="thp backing unavailable"):
        AllOnesSource.create(Backing.THP)
    with pytest.raises(HoleSourceError, match="cannot be shared"):
        AllOnesSource.create(Backing.THP, shareable=True)


def test_backing_parse() -> None:
    assert Backing.parse("HugeTLB") is Backing.HUGETLB
    assert Backing.parse(" memfd") is Backing.MEMFD
    assert not Backing.THP.shareable
    with pytest.raises(ValueError, match="choose from hugetlb, thp, memfd"):
        Backing.parse("shm")


def test_seal_text() -> None:
    assert seal_text(0) == "none"
    assert set(seal_text(REQUIRED_SEALS).split("|")) == {"WRITE", "SHRINK", "GROW", "SEAL"}


# -- life cycle ---------------------------------------------------------------------------


def test_close_is_idempotent_and_releases_everything() -> None:
    src = AllOnesSource.create(Backing.MEMFD)
    fd, address = src.fd, src.address
    assert fd is not None
    src.close()
    src.close()
    assert src.closed
    assert _fd_is_closed(fd)
    assert hostmem.mappings_in(address, HUGE_PAGE_SIZE) == []
    with pytest.raises(Bug, match="closed"):
        _ = src.address
    with pytest.raises(Bug, match="closed"):
        src.verify()


def test_finalizer_releases_a_forgotten_source() -> None:
    src = AllOnesSource.create(Backing.MEMFD)
    fd, address = src.fd, src.address
    assert fd is not None
    del src
    gc.collect()
    assert _fd_is_closed(fd)
    assert hostmem.mappings_in(address, HUGE_PAGE_SIZE) == []


# -- windows ------------------------------------------------------------------------------


def _window_vmas(window: HoleWindow) -> list[tuple[int, int, str]]:
    return hostmem.mappings_in(window.address, window.size)


def test_window_repeats_the_chunk_read_only(sealed: AllOnesSource) -> None:
    with HoleWindow.build(sealed, 16 * MiB) as window:
        assert window.address % HUGE_PAGE_SIZE == 0
        assert window.size == 16 * MiB
        assert window.mapping_count == 8
        assert window.chunk_size == sealed.size
        assert window.build_seconds > 0
        vmas = _window_vmas(window)
        assert len(vmas) == 8
        assert {p for _, _, p in vmas} == {"r--s"}
        assert [e - s for s, e, _ in vmas] == [sealed.size] * 8
        assert hostmem.is_filled(window.address, window.size)
        # The window's pages cannot be made writable: the memfd is sealed.
        with pytest.raises(HostMemError) as info:
            hostmem.protect(window.address, PAGE_SIZE, hostmem.PROT_READ | hostmem.PROT_WRITE)
        assert info.value.errno == errno.EACCES
        address = window.address
    assert _window_vmas(window) == []
    assert hostmem.mappings_in(address, 16 * MiB) == []


def test_hugetlb_window_of_256_mib_is_128_huge_mappings_of_one_page(huge_page: int) -> None:
    with AllOnesSource.create(Backing.HUGETLB) as src:
        with HoleWindow.build(src, 256 * MiB) as window:
            assert window.mapping_count == 128
            assert len(_window_vmas(window)) == 128
            assert hostmem.is_filled(window.address, window.size)
            assert hostmem.vma_stats(window.address + 255 * MiB)["KernelPageSize"] == 2048
            # 128 mappings, every byte touched, still the one huge page (its frame at
            # every mapping; the host's free count moves with other users of the pool).
            frames = {frame_of(window.address + i * HUGE_PAGE_SIZE) for i in range(128)}
            assert frames == {frame_of(src.address)}
        with pytest.raises(HoleWindowError, match="phase 0x1000 must be a multiple of 0x200000"):
            HoleWindow.build(src, 4 * MiB, phase=PAGE_SIZE)
        with pytest.raises(HoleWindowError, match="size 0x101000 must be a positive multiple"):
            HoleWindow.build(src, MiB + PAGE_SIZE)


def test_window_with_a_partial_last_chunk_and_a_phase() -> None:
    with AllOnesSource.create(Backing.MEMFD, memfd_chunk=64 << 10) as src:
        size = MiB + 3 * PAGE_SIZE
        with HoleWindow.build(src, size, phase=5 * PAGE_SIZE) as window:
            assert window.address % HUGE_PAGE_SIZE == 5 * PAGE_SIZE
            assert window.mapping_count == HoleWindow.mappings_needed(src, size) == 17
            vmas = _window_vmas(window)
            assert len(vmas) == 17
            assert vmas[-1][1] - vmas[-1][0] == 3 * PAGE_SIZE
            assert hostmem.is_filled(window.address, size)
            assert window.host_address(size - 1) == window.end - 1
            with pytest.raises(Bug, match="outside"):
                window.host_address(size)


def test_window_survives_closing_its_source() -> None:
    src = AllOnesSource.create(Backing.MEMFD)
    with HoleWindow.build(src, 8 * MiB) as window:
        src.close()
        assert hostmem.is_filled(window.address, window.size)


def test_window_refused_when_the_mapping_budget_is_short() -> None:
    with AllOnesSource.create(Backing.MEMFD, memfd_chunk=64 << 10) as src:
        tiny_limit = hostmem.map_count() + 100 + 5
        before = hostmem.map_count()
        with pytest.raises(
            HoleWindowError,
            match=rf"needs 17 mappings but only 5 are available \(vm.max_map_count {tiny_limit},",
        ):
            HoleWindow.build(src, MiB, map_limit=tiny_limit, headroom=100)
        assert hostmem.map_count() == before  # nothing was reserved
        with HoleWindow.build(src, MiB, map_limit=tiny_limit + 20, headroom=100) as window:
            assert window.mapping_count == 16
        # The real limit: 256 MiB of 4 KiB chunks would need 65,537 mappings.
        with (
            AllOnesSource.create(Backing.MEMFD, memfd_chunk=PAGE_SIZE) as page,
            pytest.raises(HoleWindowError, match="needs 65537 mappings"),
        ):
            HoleWindow.build(page, 256 * MiB)


def test_no_window_from_thp() -> None:
    if source_mod.unavailable_reason(Backing.THP):
        pytest.skip(str(source_mod.unavailable_reason(Backing.THP)))
    with AllOnesSource.create(Backing.THP) as src:
        assert not HoleWindow.supported(src)
        with pytest.raises(HoleWindowError, match="no fd"):
            HoleWindow.build(src, 4 * MiB)
    with AllOnesSource.create(Backing.MEMFD) as src:
        assert HoleWindow.supported(src)

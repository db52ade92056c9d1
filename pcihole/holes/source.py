"""The all-ones source: one immutable chunk of 0xff bytes that backs every PCI hole.

Three backings, best first:

- :attr:`Backing.HUGETLB`: a memfd of one reserved 2 MiB huge page (needs a root user to
  have set ``vm.nr_hugepages``), filled then sealed. Shareable between processes.
- :attr:`Backing.THP`: anonymous 2 MiB-aligned memory advised MADV_HUGEPAGE, filled, then
  made read-only. One process only (there is no fd), so no window can be built from it.
- :attr:`Backing.MEMFD`: an ordinary (4 KiB page) memfd, filled with write() then sealed.
  Shareable; works everywhere.

A sealed memfd carries F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: nobody, not
even its creator, can change its size or content or remove the seals, so any process that
receives it and checks the seals can trust it. On the kernels measured (6.18) hugetlb memfds
accept every seal, F_SEAL_WRITE included. hugetlbfs has no write(): pwrite on a hugetlb memfd
fails with EINVAL whether or not it is sealed, so that backing is filled through a mapping.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import stat
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from pcihole.closing import Closeable
from pcihole.errors import Bug, EnvironmentProblem
from pcihole.host import info as hostinfo
from pcihole.host import mem as hostmem
from pcihole.host.mem import HostMemError, Mapping
from pcihole.layout import HUGE_PAGE_SIZE, PAGE_SIZE

ALL_ONES = 0xFF

F_ADD_SEALS: int = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS: int = getattr(fcntl, "F_GET_SEALS", 1034)


class Seal(enum.IntFlag):
    """memfd seals (``F_SEAL_*``)."""

    SEAL = getattr(fcntl, "F_SEAL_SEAL", 0x1)
    """No further seals may be added (nor removed: seals never can be)."""
    SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x2)
    """The file may not shrink."""
    GROW = getattr(fcntl, "F_SEAL_GROW", 0x4)
    """The file may not grow."""
    WRITE = getattr(fcntl, "F_SEAL_WRITE", 0x8)
    """No write(), no writable shared mapping; refused while one exists."""
    FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10)
    """No new writes, existing writable mappings stay (not used here: WRITE is stronger)."""


REQUIRED_SEALS = Seal.WRITE | Seal.SHRINK | Seal.GROW | Seal.SEAL
"""What makes a memfd immutable for good; a shared source must carry all of these."""

HUGETLB_CHUNK = HUGE_PAGE_SIZE
THP_CHUNK = HUGE_PAGE_SIZE
DEFAULT_MEMFD_CHUNK = HUGE_PAGE_SIZE
"""2 MiB of 4 KiB pages: costs 2 MiB once per host, but a 256 MiB window then needs only
128 mappings instead of 4,096 with a 64 KiB chunk (vm.max_map_count is per process)."""
MAX_CHUNK = 1 << 30
"""Largest chunk a source accepts (anything bigger is not a sane all-ones chunk)."""

THP_ENABLED_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGEPAGES_FREE_PATH = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
HUGEPAGES_NR_PATH = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
NR_HUGEPAGES_SYSCTL = "/proc/sys/vm/nr_hugepages"

_MFD_HUGE_2MB = getattr(os, "MFD_HUGE_2MB", 21 << 26)


class HoleSourceError(EnvironmentProblem):
    """An all-ones source could not be created, or is not what it must be."""


class Backing(enum.Enum):
    """Where the all-ones chunk lives."""

    HUGETLB = "hugetlb"
    """memfd of one 2 MiB hugetlb page: sealed, shareable, maps with 2 MiB host pages."""
    THP = "thp"
    """Anonymous 2 MiB THP chunk, read-only: this process only, no fd, no window."""
    MEMFD = "memfd"
    """memfd of 4 KiB pages: sealed, shareable, available everywhere."""

    @property
    def shareable(self) -> bool:
        """Whether the backing has an fd that can be mapped repeatedly and passed on."""
        return self is not Backing.THP

    @classmethod
    def parse(cls, text: str) -> Backing:
        """A backing from its name (``hugetlb``, ``thp``, ``memfd``; any case)."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(b.value for b in cls)
            raise ValueError(f"unknown backing {text!r} (choose from {names})") from None


def free_huge_pages() -> int:
    """Free 2 MiB hugetlb pages on the host (0 when hugetlb is absent)."""
    try:
        with open(HUGEPAGES_FREE_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        pass
    # No per-size sysfs: /proc/meminfo counts the default size, if that is 2 MiB.
    info = hostinfo.meminfo()
    if info.get("Hugepagesize") != HUGE_PAGE_SIZE >> 10:
        return 0
    return info.get("HugePages_Free", 0)


def huge_page_pool_path() -> str:
    """The file that sizes the 2 MiB hugetlb pool: the per-size sysfs file, or the sysctl
    when sysfs lacks it and the default huge page size is 2 MiB."""
    if os.path.exists(HUGEPAGES_NR_PATH):
        return HUGEPAGES_NR_PATH
    if hostinfo.meminfo().get("Hugepagesize") == HUGE_PAGE_SIZE >> 10:
        return NR_HUGEPAGES_SYSCTL
    raise HoleSourceError("this host has no 2 MiB hugetlb pool")


def _read_pool(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _write_pool(path: str, pages: int) -> None:
    with open(path, "w") as f:
        f.write(f"{pages}\n")


@dataclass
class HugePageReservation:
    """Pages this process added to the 2 MiB hugetlb pool, to give back exactly once."""

    path: str
    before: int
    """Pool size before we grew it."""
    added: int
    """Pages we added (and will remove): never more than the kernel really gave."""

    def release(self) -> tuple[int, int]:
        """Shrink the pool by what we added; returns (pool before, pool after).

        Relative to the pool as it is now, so pages others added meanwhile stay. A page
        still mapped somewhere becomes a surplus page the kernel frees when it is unmapped.
        """
        added, self.added = self.added, 0
        try:
            now = _read_pool(self.path)
            if added:
                _write_pool(self.path, max(now - added, 0))
            return now, _read_pool(self.path)
        except (OSError, ValueError) as exc:
            raise HoleSourceError(f"cannot shrink the 2 MiB hugetlb pool: {exc}") from None


def reserve_huge_pages(count: int = 1) -> HugePageReservation:
    """Grow the host's 2 MiB hugetlb pool by ``count`` pages (root). The kernel may find
    fewer free 2 MiB frames: then what it did add is given back and
    :class:`HoleSourceError` raised."""
    path = huge_page_pool_path()
    try:
        before = _read_pool(path)
        _write_pool(path, before + count)
        after = _read_pool(path)
    except (OSError, ValueError) as exc:
        raise HoleSourceError(f"cannot grow the 2 MiB hugetlb pool ({path}): {exc}") from None
    reservation = HugePageReservation(path, before, max(min(after - before, count), 0))
    if reservation.added < count:
        reservation.release()
        raise HoleSourceError(
            f"kernel could not find {count} free 2 MiB frame(s) for the hugetlb pool"
        )
    return reservation


@contextlib.contextmanager
def extra_huge_pages(count: int = 1) -> Iterator[int]:
    """Grow the 2 MiB hugetlb pool by ``count`` pages while the block runs (root).

    Yields the number of free 2 MiB pages; afterwards gives back what was added.
    """
    reservation = reserve_huge_pages(count)
    try:
        yield free_huge_pages()
    finally:
        with contextlib.suppress(HoleSourceError):
            reservation.release()


def thp_mode() -> str | None:
    """The selected transparent-hugepage mode (``always``, ``madvise``, ``never``), if any."""
    return hostinfo.thp_mode("enabled")


def unavailable_reason(backing: Backing) -> str | None:
    """Why ``backing`` cannot be created on this host now, or None when it can."""
    if backing is Backing.HUGETLB:
        if free_huge_pages() <= 0:
            return "no free 2 MiB huge pages (a root user can set vm.nr_hugepages)"
    elif backing is Backing.THP:
        mode = thp_mode()
        if mode is None:
            return f"transparent huge pages absent ({THP_ENABLED_PATH} unreadable)"
        if mode == "never":
            return "transparent huge pages disabled (enabled = never)"
    return None


def available_note(backing: Backing) -> str:
    """One phrase saying why ``backing`` is usable (for a source's ``reason``)."""
    if backing is Backing.HUGETLB:
        return f"{free_huge_pages()} free 2 MiB huge page(s)"
    if backing is Backing.THP:
        return f"transparent_hugepage = {thp_mode()}"
    return "4 KiB-page memfd, always available"


def get_seals(fd: int) -> Seal:
    """The seals on ``fd``; raises :class:`HoleSourceError` when it cannot carry any."""
    try:
        return Seal(fcntl.fcntl(fd, F_GET_SEALS))
    except OSError as exc:
        raise HoleSourceError(f"F_GET_SEALS on fd {fd}: {exc.strerror} (not a memfd?)") from None


def add_seals(fd: int, seals: Seal) -> None:
    """Add ``seals`` to a memfd created with MFD_ALLOW_SEALING."""
    try:
        fcntl.fcntl(fd, F_ADD_SEALS, int(seals))
    except OSError as exc:
        raise HoleSourceError(f"F_ADD_SEALS {seals!s} on fd {fd}: {exc.strerror}") from None


def seal_text(seals: int) -> str:
    """``WRITE|SHRINK|GROW|SEAL`` style text (``none`` when empty)."""
    order = (Seal.WRITE, Seal.FUTURE_WRITE, Seal.SHRINK, Seal.GROW, Seal.SEAL)
    names = [str(s.name) for s in order if s & seals]
    return "|".join(names) if names else "none"


def _release(fd: int | None, mapping: Mapping) -> None:
    try:
        mapping.close()
    finally:
        if fd is not None:
            os.close(fd)


class AllOnesSource(Closeable):
    """One immutable chunk of 0xff bytes, mapped read-only in this process.

    Make one with :meth:`create` (or :meth:`adopt_fd` for an fd received from elsewhere).
    ``fd`` is the sealed memfd (None for THP); ``address`` is the chunk's read-only mapping
    here, 2 MiB aligned. Closing the source leaves windows built from it intact: a mapping
    keeps its file alive.
    """

    def __init__(self, backing: Backing, fd: int | None, mapping: Mapping, reason: str) -> None:
        self._backing = backing
        self._fd = fd
        self._mapping = mapping
        self.reason = reason
        """Why this backing was chosen (or where the source came from)."""
        self._finalizer = weakref.finalize(self, _release, fd, mapping)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        backing: Backing | None = None,
        *,
        shareable: bool = False,
        memfd_chunk: int = DEFAULT_MEMFD_CHUNK,
    ) -> AllOnesSource:
        """A new sealed all-ones chunk.

        With ``backing`` None, the best available is taken (HUGETLB, else THP, else MEMFD;
        THP is skipped when ``shareable``) and ``reason`` says why. A forced backing that
        is unavailable raises :class:`HoleSourceError`. ``memfd_chunk`` is the MEMFD size.
        """
        if backing is not None:
            if shareable and not backing.shareable:
                raise HoleSourceError(f"{backing.value} backing has no fd and cannot be shared")
            why_not = unavailable_reason(backing)
            if why_not is not None:
                raise HoleSourceError(f"{backing.value} backing unavailable: {why_not}")
            note = f"{backing.value} requested ({available_note(backing)})"
            return cls._build(backing, note, memfd_chunk)
        skipped: list[str] = []
        for candidate in (Backing.HUGETLB, Backing.THP, Backing.MEMFD):
            if shareable and not candidate.shareable:
                skipped.append(f"{candidate.value}: not shareable")
                continue
            why_not = unavailable_reason(candidate)
            if why_not is not None:
                skipped.append(f"{candidate.value}: {why_not}")
                continue
            note = f"{candidate.value}: {available_note(candidate)}"
            if skipped:
                note += f" (skipped {'; '.join(skipped)})"
            try:
                return cls._build(candidate, note, memfd_chunk)
            except (HoleSourceError, OSError) as exc:
                if candidate is Backing.MEMFD:
                    raise
                skipped.append(f"{candidate.value}: failed: {exc}")
        raise HoleSourceError("no backing available: " + "; ".join(skipped))

    @classmethod
    def _build(cls, backing: Backing, reason: str, memfd_chunk: int) -> AllOnesSource:
        if backing is Backing.THP:
            return cls._build_thp(reason)
        huge = backing is Backing.HUGETLB
        fd = _filled_hugetlb_memfd() if huge else _filled_memfd(memfd_chunk)
        try:
            add_seals(fd, REQUIRED_SEALS)
        except HoleSourceError:
            os.close(fd)
            raise
        return cls.adopt_fd(fd, backing=backing, reason=reason)

    @classmethod
    def _build_thp(cls, reason: str) -> AllOnesSource:
        mapping = hostmem.map_anonymous(THP_CHUNK, align=HUGE_PAGE_SIZE, huge=True)
        try:
            hostmem.fill(mapping.address, mapping.size, ALL_ONES)
            hostmem.protect(mapping.address, mapping.size, hostmem.PROT_READ)
        except HostMemError:
            mapping.close()
            raise
        huge_kib = hostmem.vma_stats(mapping.address).get("AnonHugePages", 0)
        backed = "one huge page" if huge_kib * 1024 >= THP_CHUNK else "4 KiB pages (no THP)"
        source = cls(Backing.THP, None, mapping, f"{reason}; backed by {backed}")
        source.verify()
        return source

    @classmethod
    def adopt_fd(
        cls,
        fd: int,
        *,
        backing: Backing,
        reason: str,
        expected_size: int | None = None,
    ) -> AllOnesSource:
        """Take ownership of a sealed all-ones memfd ``fd`` (received, or just made).

        Seals, size and kind are checked before anything is mapped; the content after it
        is mapped read-only. On any failure ``fd`` is closed and :class:`HoleSourceError`
        raised.
        """
        try:
            if not backing.shareable:
                raise HoleSourceError(f"{backing.value} backing has no fd")
            size = _check_sealed_fd(fd, backing, expected_size)
            mapping = hostmem.map_fd(fd, size, align=HUGE_PAGE_SIZE, prot=hostmem.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        source = cls(backing, fd, mapping, reason)
        try:
            source.verify()
        except BaseException:
            source.close()
            raise
        return source

    # -- properties -----------------------------------------------------------------------
    @property
    def backing(self) -> Backing:
        return self._backing

    @property
    def fd(self) -> int | None:
        """The sealed memfd, or None for THP."""
        self._check_open()
        return self._fd

    @property
    def size(self) -> int:
        """Chunk size in bytes (one hugetlb page, one THP, or the memfd's size)."""
        return self._mapping.size

    @property
    def address(self) -> int:
        """Host address of the chunk's read-only mapping in this process (2 MiB aligned)."""
        self._check_open()
        return self._mapping.address

    @property
    def page_size(self) -> int:
        """Smallest granule the chunk can be mapped by: 2 MiB for hugetlb, else 4 KiB."""
        return HUGE_PAGE_SIZE if self._backing is Backing.HUGETLB else PAGE_SIZE

    @property
    def seals(self) -> Seal:
        """The fd's seals (none for THP)."""
        self._check_open()
        return Seal(0) if self._fd is None else get_seals(self._fd)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # -- checks and life cycle ------------------------------------------------------------
    def verify(self) -> None:
        """Check seals, size, read-only mapping and that every byte is 0xff."""
        self._check_open()
        if self._fd is not None:
            _check_sealed_fd(self._fd, self._backing, self.size)
        perms = {p for _, _, p in hostmem.mappings_in(self.address, self.size)}
        if not perms or any(not p.startswith("r-") for p in perms):
            raise HoleSourceError(f"chunk mapping is not read-only here: {sorted(perms)}")
        if not hostmem.is_filled(self.address, self.size, ALL_ONES):
            raise HoleSourceError(f"{self.size:#x}-byte chunk is not all 0xff")

    def close(self) -> None:
        """Unmap the chunk here and close the fd. Safe to repeat."""
        self._finalizer()

    def _check_open(self) -> None:
        if self.closed:
            raise Bug("all-ones source is closed")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self._mapping.address:#x}"
        return f"AllOnesSource({self._backing.value}, {self.size:#x} bytes, {state})"


def _check_sealed_fd(fd: int, backing: Backing, expected_size: int | None) -> int:
    """Checks that need no mapping; returns the fd's size."""
    seals = get_seals(fd)
    missing = REQUIRED_SEALS & ~seals
    if missing:
        raise HoleSourceError(
            f"memfd lacks seals {seal_text(missing)} (has {seal_text(seals)}): "
            "its content could still change"
        )
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise HoleSourceError("fd is not a regular file (memfd)")
    size = st.st_size
    granule = HUGE_PAGE_SIZE if backing is Backing.HUGETLB else PAGE_SIZE
    if size <= 0 or size % granule or size > MAX_CHUNK:
        raise HoleSourceError(
            f"memfd size {size:#x} is not a positive multiple of {granule:#x} up to {MAX_CHUNK:#x}"
        )
    if expected_size is not None and size != expected_size:
        raise HoleSourceError(f"memfd size {size:#x}, expected {expected_size:#x}")
    is_huge = st.st_blksize == HUGE_PAGE_SIZE
    if is_huge != (backing is Backing.HUGETLB):
        raise HoleSourceError(
            f"memfd block size {st.st_blksize:#x} does not match {backing.value} backing"
        )
    return size


def _filled_hugetlb_memfd() -> int:
    flags = os.MFD_HUGETLB | _MFD_HUGE_2MB | os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC
    fd = hostmem.memfd_create("pcihole-allones-hugetlb", flags)
    try:
        os.ftruncate(fd, HUGETLB_CHUNK)
        # Take the huge page now: a clean ENOSPC here instead of SIGBUS on first touch.
        try:
            os.posix_fallocate(fd, 0, HUGETLB_CHUNK)
        except OSError as exc:
            raise HoleSourceError(
                f"cannot allocate a 2 MiB huge page: {exc.strerror} ({free_huge_pages()} free)"
            ) from None
        # hugetlbfs has no write(): fill through a writable mapping, unmapped before sealing.
        with hostmem.map_fd(
            fd, HUGETLB_CHUNK, align=HUGE_PAGE_SIZE, prot=hostmem.PROT_READ | hostmem.PROT_WRITE
        ) as writable:
            hostmem.fill(writable.address, writable.size, ALL_ONES)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _filled_memfd(size: int) -> int:
    if size <= 0 or size % PAGE_SIZE or size > MAX_CHUNK:
        raise HoleSourceError(f"memfd chunk {size:#x} must be a page multiple up to {MAX_CHUNK:#x}")
    fd = hostmem.memfd_create("pcihole-allones", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        block = bytes([ALL_ONES]) * min(size, 1 << 20)
        done = 0
        while done < size:
            done += os.pwrite(fd, block[: size - done], done)
    except BaseException:
        os.close(fd)
        raise
    return fd

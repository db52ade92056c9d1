"""Host virtual memory, straight from libc: mmap, munmap, mprotect, madvise, memfd.

Python's :mod:`mmap` module cannot place a mapping at a chosen address, cannot align one,
and does not give a mapping's address without tricks; KVM needs all three. This module
wraps the few libc calls that do, and nothing else.

One :class:`Mapping` owns one address range and unmaps it on :meth:`Mapping.close` (or, as
a backstop, when it is garbage-collected). Raw helpers (:func:`map_fd_fixed`,
:func:`protect`, :func:`advise`) work on ranges a :class:`Mapping` owns. Every failure
raises :class:`HostMemError`, which names the operation and carries ``errno``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap as _mmap
import os
import weakref

from pcihole.closing import Closeable
from pcihole.errors import EnvironmentProblem
from pcihole.host import info as hostinfo
from pcihole.host.smaps import vma_stats as vma_stats  # re-exported: callers ask hostmem
from pcihole.layout import HUGE_PAGE_SIZE, PAGE_SIZE

assert _mmap.PAGESIZE == PAGE_SIZE, "guest pages and host pages must be the same size"

PROT_NONE = 0
PROT_READ = _mmap.PROT_READ
PROT_WRITE = _mmap.PROT_WRITE

MAP_SHARED = _mmap.MAP_SHARED
MAP_PRIVATE = _mmap.MAP_PRIVATE
MAP_ANONYMOUS = _mmap.MAP_ANONYMOUS
MAP_FIXED = 0x10
"""Replace whatever is mapped at the address (Linux value, same on every architecture)."""
MAP_NORESERVE = 0x4000
"""Do not reserve swap/commit for the range (x86-64 value)."""

MADV_HUGEPAGE = _mmap.MADV_HUGEPAGE


_libc = ctypes.CDLL(None, use_errno=True)

_mmap_fn = _libc.mmap
_mmap_fn.restype = ctypes.c_void_p
_mmap_fn.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,
]
_munmap_fn = _libc.munmap
_munmap_fn.restype = ctypes.c_int
_munmap_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mprotect_fn = _libc.mprotect
_mprotect_fn.restype = ctypes.c_int
_mprotect_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise_fn = _libc.madvise
_madvise_fn.restype = ctypes.c_int
_madvise_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_memcmp_fn = _libc.memcmp
_memcmp_fn.restype = ctypes.c_int
_memcmp_fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

_MAP_FAILED = ctypes.c_void_p(-1).value


class HostMemError(EnvironmentProblem, OSError):
    """A host memory operation failed; ``operation`` says which, ``errno`` why."""

    def __init__(self, operation: str, err: int) -> None:
        super().__init__(err, f"{operation}: {os.strerror(err)}")
        self.operation = operation


def _check(result: int, operation: str) -> None:
    if result != 0:
        raise HostMemError(operation, ctypes.get_errno())


def _raw_mmap(address: int, size: int, prot: int, flags: int, fd: int, offset: int) -> int:
    result = _mmap_fn(address or None, size, prot, flags, fd, offset)
    if result is None or result == _MAP_FAILED:
        raise HostMemError(
            f"mmap(addr={address:#x}, size={size:#x}, prot={prot:#x}, flags={flags:#x}, "
            f"fd={fd}, offset={offset:#x})",
            ctypes.get_errno(),
        )
    return int(result)


def _raw_munmap(address: int, size: int) -> None:
    if size:
        _check(_munmap_fn(address, size), f"munmap({address:#x}, {size:#x})")


def _page_multiple(size: int, what: str) -> None:
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"{what} must be a positive multiple of {PAGE_SIZE}, got {size:#x}")


def _unmap_quietly(address: int, size: int) -> None:
    """Finalizer body: never raises (it may run at interpreter exit)."""
    _munmap_fn(address, size)


class Mapping(Closeable):
    """One host virtual address range, unmapped by :meth:`close` (idempotent)."""

    def __init__(self, address: int, size: int) -> None:
        self.address = address
        self.size = size
        self._finalizer = weakref.finalize(self, _unmap_quietly, address, size)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def end(self) -> int:
        return self.address + self.size

    def close(self) -> None:
        """Unmap the whole range (whatever is mapped inside it now). Safe to repeat."""
        if self._finalizer.detach() is not None:
            _raw_munmap(self.address, self.size)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Mapping({self.address:#x}, {self.size:#x}, {state})"


def _aligned_region(size: int, align: int, phase: int, prot: int, flags: int) -> Mapping:
    """Over-reserve, then trim head and tail so that ``start % align == phase``."""
    _page_multiple(size, "size")
    if align < PAGE_SIZE or align & (align - 1):
        raise ValueError(f"align must be a power of two >= {PAGE_SIZE}, got {align:#x}")
    if phase % PAGE_SIZE or not 0 <= phase < align:
        raise ValueError(f"phase must be a page multiple below align, got {phase:#x}")
    span = size + align
    base = _raw_mmap(0, span, prot, flags, -1, 0)
    start = base + ((phase - base) % align)
    try:
        _raw_munmap(base, start - base)
        _raw_munmap(start + size, base + span - (start + size))
    except HostMemError:
        _munmap_fn(base, span)
        raise
    return Mapping(start, size)


def map_anonymous(
    size: int,
    *,
    align: int = PAGE_SIZE,
    phase: int = 0,
    huge: bool = False,
    prot: int = PROT_READ | PROT_WRITE,
) -> Mapping:
    """Private anonymous memory whose start is ``phase`` modulo ``align``.

    With ``huge`` the range is advised MADV_HUGEPAGE, so that THP backs it with 2 MiB pages
    where it can (pass ``align=HUGE_PAGE_SIZE`` too, or no huge page fits).
    """
    mapping = _aligned_region(size, align, phase, prot, MAP_PRIVATE | MAP_ANONYMOUS)
    if huge:
        try:
            advise(mapping.address, size, MADV_HUGEPAGE)
        except HostMemError:
            mapping.close()
            raise
    return mapping


def reserve(size: int, align: int = HUGE_PAGE_SIZE, *, phase: int = 0) -> Mapping:
    """An inaccessible placeholder (PROT_NONE, no commit) to map files into with MAP_FIXED."""
    return _aligned_region(
        size, align, phase, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
    )


def map_fd_fixed(fd: int, address: int, size: int, offset: int = 0, prot: int = PROT_READ) -> int:
    """Map ``size`` bytes of ``fd`` from ``offset`` exactly at ``address`` (MAP_SHARED).

    The caller must own the range (normally a :func:`reserve` placeholder): MAP_FIXED
    silently replaces whatever was there. The new mapping is released by closing the
    :class:`Mapping` that owns the range.
    """
    return _raw_mmap(address, size, prot, MAP_SHARED | MAP_FIXED, fd, offset)


def map_fd(fd: int, size: int, *, align: int = PAGE_SIZE, prot: int = PROT_READ) -> Mapping:
    """Map ``size`` bytes of ``fd`` (MAP_SHARED) at an address aligned to ``align``."""
    mapping = reserve(size, align)
    try:
        map_fd_fixed(fd, mapping.address, size, 0, prot)
    except HostMemError:
        mapping.close()
        raise
    return mapping


def protect(address: int, size: int, prot: int) -> None:
    """mprotect a range."""
    _check(_mprotect_fn(address, size, prot), f"mprotect({address:#x}, {size:#x}, {prot:#x})")


def advise(address: int, size: int, advice: int) -> None:
    """madvise a range."""
    _check(_madvise_fn(address, size, advice), f"madvise({address:#x}, {size:#x}, {advice})")


def read(address: int, n: int) -> bytes:
    """Copy ``n`` bytes from host address ``address`` (which must be readable)."""
    return ctypes.string_at(address, n)


def fill(address: int, size: int, byte: int) -> None:
    """memset a writable range."""
    ctypes.memset(address, byte, size)


_FILLED_BLOCK = 64 << 10
_filled_blocks: dict[int, ctypes.Array[ctypes.c_char]] = {}


def is_filled(address: int, size: int, byte: int = 0xFF) -> bool:
    """True when every byte of the range equals ``byte`` (memcmp in 64 KiB blocks)."""
    block = _filled_blocks.get(byte)
    if block is None:
        block = ctypes.create_string_buffer(bytes([byte]) * _FILLED_BLOCK, _FILLED_BLOCK)
        _filled_blocks[byte] = block
    block_address = ctypes.addressof(block)
    done = 0
    while done < size:
        n = min(_FILLED_BLOCK, size - done)
        if _memcmp_fn(address + done, block_address, n) != 0:
            return False
        done += n
    return True


def memfd_create(name: str, flags: int) -> int:
    """os.memfd_create, raising :class:`HostMemError` that names the flags."""
    try:
        return os.memfd_create(name, flags)
    except OSError as exc:
        raise HostMemError(f"memfd_create({name!r}, {flags:#x})", exc.errno or 0) from None


def max_map_count() -> int:
    """vm.max_map_count: how many mappings one process may hold."""
    limit = hostinfo.max_map_count()
    if limit is None:
        raise HostMemError(f"reading {hostinfo.MAX_MAP_COUNT}", errno.ENOENT)
    return limit


def _maps_lines(pid: int | str = "self") -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return f.read().splitlines()


def map_count(pid: int | str = "self") -> int:
    """How many mappings (VMAs) the process holds now."""
    return len(_maps_lines(pid))


def mappings_in(address: int, size: int, pid: int | str = "self") -> list[tuple[int, int, str]]:
    """The VMAs overlapping ``[address, address+size)`` as ``(start, end, perms)``."""
    found = []
    for line in _maps_lines(pid):
        fields = line.split(maxsplit=2)
        start_text, _, end_text = fields[0].partition("-")
        start, end = int(start_text, 16), int(end_text, 16)
        if start < address + size and end > address:
            found.append((start, end, fields[1]))
    return found

"""/proc/vmallocinfo, parsed: each vmalloc area with the function that allocated it.

KVM allocates a memslot's arrays (reverse maps, ``lpage_info``, write tracking; see
:mod:`pcihole.host.meminfo`) with one vmalloc each, so the areas whose caller is one of
:data:`KVM_MEMSLOT_CALLERS` are the kernel memory that memslots cost. The file is
host-wide and root-only; addresses are hashed but stable, so an area keeps its key for
its lifetime and areas new since a snapshot can be told apart from older ones.
"""

from __future__ import annotations

import collections
from pathlib import Path

VMALLOCINFO = Path("/proc/vmallocinfo")
PAGE = 4096
KVM_MEMSLOT_CALLERS = (
    "memslot_rmap_alloc",
    "kvm_arch_prepare_memory_region",
    "kvm_page_track_create_memslot",
)
"""Where x86 KVM vmallocs a memslot's arrays: rmap per level; lpage_info per huge level;
write tracking (2 bytes per 4 KiB page, shadow paging only)."""


def parse_vmallocinfo(text: str) -> dict[str, tuple[str, int]]:
    """Area key (its address range) -> (allocating function, bytes of its pages)."""
    areas: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        pages = next((int(f[6:]) for f in fields if f.startswith("pages=")), 0)
        areas[fields[0]] = (fields[2].split("+")[0], pages * PAGE)
    return areas


def read_vmallocinfo(path: Path = VMALLOCINFO) -> dict[str, tuple[str, int]]:
    """This host's vmalloc areas (see :func:`parse_vmallocinfo`); needs root."""
    return parse_vmallocinfo(path.read_text())


def bytes_by_caller(areas: dict[str, tuple[str, int]]) -> collections.Counter[str]:
    """Bytes of vmalloc pages per allocating function."""
    found: collections.Counter[str] = collections.Counter()
    for caller, size in areas.values():
        found[caller] += size
    return found

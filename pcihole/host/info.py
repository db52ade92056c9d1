"""Host facts read at run time from /proc and /sys: never assumed, always detected."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pcihole.host.meminfo import MEMINFO, parse_meminfo
from pcihole.kvm import Kvm

THP_DIR = Path("/sys/kernel/mm/transparent_hugepage")
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def selected_mode(text: str | None) -> str | None:
    """The bracketed choice of a sysfs mode file: 'always [madvise] never' -> 'madvise'."""
    if text is None:
        return None
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else text


def thp_mode(kind: str = "enabled") -> str | None:
    """Transparent huge pages for anonymous memory (``enabled``) or shmem (``shmem_enabled``)."""
    return selected_mode(_read(THP_DIR / kind))


def meminfo() -> dict[str, int]:
    """/proc/meminfo as name -> number (kB for sizes, a count for HugePages_*)."""
    return parse_meminfo(_read(MEMINFO) or "", kib=1)


def max_map_count() -> int | None:
    text = _read(MAX_MAP_COUNT)
    return int(text) if text and text.isdigit() else None


def huge_pages() -> dict[str, Any]:
    info = meminfo()
    return {
        "thp_anonymous": thp_mode("enabled"),
        "thp_shmem": thp_mode("shmem_enabled"),
        "hugetlb_page_kib": info.get("Hugepagesize"),
        "hugetlb_total": info.get("HugePages_Total", 0),
        "hugetlb_free": info.get("HugePages_Free", 0),
        "nr_hugepages_setting": _read(NR_HUGEPAGES),
    }


# The capabilities `pcihole info` reports, in the order it prints them.
INFO_CAPABILITIES = (
    "NR_MEMSLOTS",
    "READONLY_MEM",
    "COALESCED_MMIO",
    "USER_MEMORY2",
    "GUEST_MEMFD",
    "PRE_FAULT_MEMORY",
    "IMMEDIATE_EXIT",
    "IOEVENTFD",
    "NR_VCPUS",
)


def collect(kvm_path: str = "/dev/kvm") -> dict[str, Any]:
    """Everything ``pcihole info`` reports, as JSON-ready data."""
    with Kvm(kvm_path) as kvm:
        capabilities = kvm.capabilities()
        facts: dict[str, Any] = {
            "api_version": kvm.api_version,
            "capabilities": {name: capabilities[name] for name in INFO_CAPABILITIES},
            "max_memslots": capabilities["NR_MEMSLOTS"],
        }
    facts["max_map_count"] = max_map_count()
    facts["huge_pages"] = huge_pages()
    return facts

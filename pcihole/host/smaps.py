"""/proc/PID/smaps, parsed once here: each mapping (VMA) with its counters.

``resident_bytes`` answers how much host memory backs given address ranges, from the
kernel's own accounting. Ordinary pages count by Pss (a page mapped N times, in this
process or others, counts 1/N at each mapping), so a window of 128 mappings of one 2 MiB
memfd adds up to 2 MiB, not 256 MiB. hugetlb pages are not in Pss: they count once per
file (inode), however many mappings show them.

psutil's ``memory_maps()`` reads the same file but drops the hugetlb counters and the
inode, which is what makes the hugetlb answer right, so pcihole keeps this small parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

KIB = 1024


@dataclass
class Vma:
    """One mapping: ``[start, end)``, its inode, and its counters in kB (``Pss``, ...)."""

    start: int
    end: int
    inode: str
    counters: dict[str, int] = field(default_factory=dict)


def vmas(pid: int | str = "self") -> Iterator[Vma]:
    """Every mapping of process ``pid``, in address order."""
    current: Vma | None = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's header line
                if current is not None:
                    yield current
                start_text, _, end_text = head.partition("-")
                fields = line.split()
                inode = fields[4] if len(fields) > 4 else ""
                current = Vma(int(start_text, 16), int(end_text, 16), inode)
            elif current is not None and head.endswith(":"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    current.counters[head[:-1]] = int(parts[1])
    if current is not None:
        yield current


def vma_stats(address: int, pid: int | str = "self") -> dict[str, int]:
    """The counters (in kB) of the VMA containing ``address``; empty when none does.

    Shows whether a range is really backed by a huge page (``AnonHugePages``,
    ``Shared_Hugetlb``) and how it is shared (``Rss``, ``Pss``).
    """
    for vma in vmas(pid):
        if vma.start <= address < vma.end:
            return vma.counters
    return {}


def resident_bytes(ranges: Iterable[tuple[int, int]], pid: int | str = "self") -> int:
    """Bytes of host memory behind the VMAs overlapping ``ranges`` (address, size)."""
    wanted = sorted((start, start + size) for start, size in ranges if size > 0)
    if not wanted:
        return 0
    pss_kib = 0
    hugetlb_kib_by_inode: dict[str, int] = {}
    for vma in vmas(pid):
        if not any(vma.start < hi and vma.end > lo for lo, hi in wanted):
            continue
        pss_kib += vma.counters.get("Pss", 0)
        hugetlb = vma.counters.get("Shared_Hugetlb", 0) + vma.counters.get("Private_Hugetlb", 0)
        if hugetlb:
            old = hugetlb_kib_by_inode.get(vma.inode, 0)
            hugetlb_kib_by_inode[vma.inode] = max(old, hugetlb)
    return (pss_kib + sum(hugetlb_kib_by_inode.values())) * KIB

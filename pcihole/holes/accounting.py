"""How much host memory backs given address ranges, from the kernel's own accounting.

Reads /proc/PID/smaps once. Ordinary pages count by Pss (a page mapped N times, in this
process or others, counts 1/N at each mapping), so a window of 128 mappings of one 2 MiB
memfd adds up to 2 MiB, not 256 MiB. hugetlb pages are not in Pss: they count once per
file (inode), however many mappings show them.
"""

from __future__ import annotations

from collections.abc import Iterable

KIB = 1024


def resident_bytes(ranges: Iterable[tuple[int, int]], pid: int | str = "self") -> int:
    """Bytes of host memory behind the VMAs overlapping ``ranges`` (address, size)."""
    wanted = sorted((start, start + size) for start, size in ranges if size > 0)
    if not wanted:
        return 0
    pss_kib = 0
    hugetlb_kib_by_inode: dict[str, int] = {}
    inside = False
    inode = ""
    hugetlb_here = 0
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                if inside and hugetlb_here:
                    hugetlb_kib_by_inode[inode] = max(hugetlb_kib_by_inode.get(inode, 0),
                                                      hugetlb_here)  # fmt: skip
                start_text, _, end_text = head.partition("-")
                start, end = int(start_text, 16), int(end_text, 16)
                inside = any(start < hi and end > lo for lo, hi in wanted)
                fields = line.split()
                inode = fields[4] if len(fields) > 4 else ""
                hugetlb_here = 0
            elif inside:
                name, _, rest = line.partition(":")
                if name == "Pss":
                    pss_kib += int(rest.split()[0])
                elif name in ("Shared_Hugetlb", "Private_Hugetlb"):
                    hugetlb_here += int(rest.split()[0])
    if inside and hugetlb_here:
        hugetlb_kib_by_inode[inode] = max(hugetlb_kib_by_inode.get(inode, 0), hugetlb_here)
    return (pss_kib + sum(hugetlb_kib_by_inode.values())) * KIB

"""The kernel's share of what VMs cost, watched from /proc/meminfo while they run.

Per memslot KVM allocates arrays sized by the slot (x86: ``kvm_alloc_memslot_metadata``
in arch/x86/kvm/x86.c): a reverse map of 8 bytes per page at each page-size level
(4 KiB, 2 MiB, 1 GiB), ``lpage_info`` per huge level and, where KVM write-tracks guest
page tables (shadow paging), 2 bytes per 4 KiB page. Each array is a separate vmalloc
(``vcalloc``), so each costs at least one 4 KiB page: ~24 KiB per slot here however small
the slot, plus ~10 bytes per 4 KiB page it covers. These arrays are counted in
``VmallocUsed``. The page tables KVM builds for the guest (shadow or EPT/NPT) are counted
in ``SecPageTables``; the host page tables of the monitor's own mappings (windows, fill
buffers) in ``PageTables``. Those three fields are what :data:`KERNEL_FIELDS` sums.
(``Slab`` is left out: the per-VM structs there are the same for every strategy, and it
moves a lot with the rest of the machine.)

The figures are host-wide: other processes move them too. So a measurement takes a
baseline right before, samples every few milliseconds during the run (a thread), keeps
the peak rise, and is divided over many VMs so the per-VM signal dominates the noise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

MEMINFO = Path("/proc/meminfo")
KERNEL_FIELDS = ("VmallocUsed", "SecPageTables", "PageTables")
"""Memslot metadata, KVM's page tables for guests, the host's page tables (see above)."""
TOTAL = "total"
"""Key of the sum of the fields in per-field dictionaries."""
DEFAULT_INTERVAL = 0.005
"""Seconds between samples: a few ms catches set-up peaks and costs ~1% of a core."""
KIB = 1024


def parse_meminfo(text: str, *, kib: int = KIB) -> dict[str, int]:
    """/proc/meminfo text as name -> bytes (``kB`` fields) or count (``HugePages_*``);
    ``kib=1`` keeps the kernel's kB."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields or not fields[0].isdigit():
            continue
        unit = fields[1] if len(fields) > 1 else ""
        values[name.strip()] = int(fields[0]) * (kib if unit == "kB" else 1)
    return values


def read_meminfo(path: Path = MEMINFO) -> dict[str, int]:
    """This host's /proc/meminfo, in bytes (empty when unreadable)."""
    try:
        return parse_meminfo(path.read_text())
    except OSError:
        return {}


def kernel_bytes(info: Mapping[str, int], fields: Iterable[str] = KERNEL_FIELDS) -> dict[str, int]:
    """The chosen fields of one sample, and their sum under :data:`TOTAL`."""
    picked = {name: info.get(name, 0) for name in fields}
    picked[TOTAL] = sum(picked.values())
    return picked


def raise_peaks(
    peak: dict[str, int], baseline: Mapping[str, int], sample: Mapping[str, int]
) -> None:
    """Fold one sample into ``peak`` (largest rise over ``baseline`` per field, >= 0)."""
    for name, value in sample.items():
        peak[name] = max(peak.get(name, 0), value - baseline.get(name, 0))


@dataclass(frozen=True)
class KernelMemory:
    """Peak rise of the kernel fields over a run, against a baseline taken before it.

    ``peak_rise`` holds, per field, the largest ``sample - baseline`` seen (never below
    0), and under :data:`TOTAL` the largest rise of the sum: the most held at one moment,
    which can be less than the sum of the fields' peaks when they peak at different times.
    """

    baseline: dict[str, int]
    peak_rise: dict[str, int]
    samples: int
    interval: float

    @classmethod
    def from_samples(
        cls, baseline: Mapping[str, int], samples: Iterable[Mapping[str, int]], interval: float
    ) -> KernelMemory:
        base = dict(baseline)
        peak = dict.fromkeys(base, 0)
        count = 0
        for sample in samples:
            count += 1
            raise_peaks(peak, base, sample)
        return cls(base, peak, count, interval)

    def per_vm(self, vms: int) -> dict[str, int]:
        """Peak rise divided over ``vms`` VMs, by field (bytes, rounded down)."""
        if vms < 1:
            raise ValueError(f"need at least one VM, got {vms}")
        return {name: rise // vms for name, rise in self.peak_rise.items()}

    def as_json(self, vms: int) -> dict[str, Any]:
        return {
            "fields": [name for name in self.peak_rise if name != TOTAL],
            "per_vm_bytes": self.per_vm(vms),
            "peak_rise_bytes": dict(self.peak_rise),
            "baseline_bytes": dict(self.baseline),
            "samples": self.samples,
            "interval_seconds": self.interval,
            "method": (
                "/proc/meminfo sampled during set-up and the scan; per VM = "
                "(peak - baseline before) / VMs; host-wide, so other processes add noise"
            ),
        }


class MeminfoSampler:
    """Samples the kernel fields on a thread from ``start`` to ``stop``.

    Use as a context manager around set-up and the run; read :attr:`result` after.
    ``read`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        fields: Iterable[str] = KERNEL_FIELDS,
        interval: float = DEFAULT_INTERVAL,
        read: Callable[[], Mapping[str, int]] = read_meminfo,
    ) -> None:
        self.fields = tuple(fields)
        self.interval = interval
        self._read = read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._samples = 0
        self._lock = threading.Lock()
        self.result: KernelMemory | None = None

    def _sample(self) -> None:
        now = kernel_bytes(self._read(), self.fields)
        with self._lock:
            self._samples += 1
            raise_peaks(self._peak, self._baseline, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> MeminfoSampler:
        """Take the baseline now and start sampling."""
        self._baseline = kernel_bytes(self._read(), self.fields)
        self._peak = dict.fromkeys(self._baseline, 0)
        self._thread = threading.Thread(target=self._loop, name="pcihole-meminfo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> KernelMemory:
        """Take a last sample (the VMs still exist), stop the thread, keep the result.

        Stopping again returns the first result."""
        if self.result is not None:
            return self.result
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        with self._lock:
            self.result = KernelMemory(
                dict(self._baseline), dict(self._peak), self._samples, self.interval
            )
        return self.result

    def __enter__(self) -> MeminfoSampler:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

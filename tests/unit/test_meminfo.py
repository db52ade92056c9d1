"""The /proc/meminfo parser and the peak-rise arithmetic, on fixed text and samples."""

from __future__ import annotations

import threading

import pytest

from pcihole.host.meminfo import (
    KERNEL_FIELDS,
    TOTAL,
    KernelMemory,
    MeminfoSampler,
    kernel_bytes,
    parse_meminfo,
    read_meminfo,
)

SAMPLE = """\
MemTotal:       24598452 kB
VmallocUsed:       41236 kB
PageTables:         9876 kB
SecPageTables:         0 kB
HugePages_Total:       1
HugePages_Free:        0
Hugepagesize:       2048 kB
Broken line without colon
Empty:
"""


def test_parse_gives_bytes_for_kb_and_counts_for_the_rest() -> None:
    info = parse_meminfo(SAMPLE)
    assert info["MemTotal"] == 24598452 * 1024
    assert info["VmallocUsed"] == 41236 * 1024
    assert info["SecPageTables"] == 0
    assert info["HugePages_Total"] == 1  # a count, not kB
    assert info["Hugepagesize"] == 2 << 20
    assert "Empty" not in info
    assert len(info) == 7


def test_read_meminfo_has_the_kernel_fields_on_this_host() -> None:
    info = read_meminfo()
    assert info["MemTotal"] > 0
    assert "VmallocUsed" in info and "PageTables" in info


def test_kernel_bytes_sums_the_fields_and_counts_missing_as_zero() -> None:
    picked = kernel_bytes({"VmallocUsed": 3000, "PageTables": 500, "Other": 7})
    assert picked == {"VmallocUsed": 3000, "SecPageTables": 0, "PageTables": 500, TOTAL: 3500}


def test_peak_rise_per_field_and_of_the_sum() -> None:
    base = {"A": 100, "B": 50, TOTAL: 150}
    samples = [
        {"A": 180, "B": 50, TOTAL: 230},  # A peaks here
        {"A": 90, "B": 120, TOTAL: 210},  # B peaks here, A below baseline
        {"A": 150, "B": 110, TOTAL: 260},  # the sum peaks here
    ]
    result = KernelMemory.from_samples(base, samples, 0.005)
    assert result.peak_rise == {"A": 80, "B": 70, TOTAL: 110}
    assert result.samples == 3
    # The sum's peak (110) is below the sum of the peaks (150): they came at other times.
    assert result.per_vm(8) == {"A": 10, "B": 8, TOTAL: 13}


def test_a_field_that_only_falls_rises_by_zero() -> None:
    result = KernelMemory.from_samples({"A": 100, TOTAL: 100}, [{"A": 40, TOTAL: 40}], 0.01)
    assert result.peak_rise == {"A": 0, TOTAL: 0}


def test_per_vm_refuses_zero_vms() -> None:
    with pytest.raises(ValueError):
        KernelMemory.from_samples({"A": 1}, [], 0.01).per_vm(0)


def test_json_names_the_fields_and_is_consistent() -> None:
    result = KernelMemory.from_samples(
        {"VmallocUsed": 0, "PageTables": 0, TOTAL: 0},
        [{"VmallocUsed": 16 << 20, "PageTables": 4 << 20, TOTAL: 20 << 20}],
        0.005,
    )
    data = result.as_json(16)
    assert data["fields"] == ["VmallocUsed", "PageTables"]
    assert data["per_vm_bytes"] == {
        "VmallocUsed": 1 << 20,
        "PageTables": 256 << 10,
        TOTAL: 5 << 18,
    }
    assert data["peak_rise_bytes"][TOTAL] == 20 << 20


def test_sampler_takes_baseline_first_and_a_last_sample_at_stop() -> None:
    """A fake /proc/meminfo: the baseline, then values only the final sample can see."""
    values = iter([{"VmallocUsed": 1000}])  # the baseline
    release = threading.Event()

    def read() -> dict[str, int]:
        nxt = next(values, None)
        if nxt is not None:
            return nxt
        # Every later read sees the VMs' memory once the run has "built" them.
        return {"VmallocUsed": 9000 if release.is_set() else 1000}

    sampler = MeminfoSampler(fields=["VmallocUsed"], interval=3600, read=read)
    with sampler:
        release.set()  # the thread sleeps an hour: only stop()'s own sample sees this
    result = sampler.result
    assert result is not None
    assert result.baseline == {"VmallocUsed": 1000, TOTAL: 1000}
    assert result.peak_rise == {"VmallocUsed": 8000, TOTAL: 8000}
    assert result.samples == 1


def test_default_fields_are_the_documented_three() -> None:
    assert KERNEL_FIELDS == ("VmallocUsed", "SecPageTables", "PageTables")


def test_stopping_twice_keeps_the_first_result() -> None:
    readings = iter([{"VmallocUsed": 0}, {"VmallocUsed": 4096}, {"VmallocUsed": 1 << 30}])
    sampler = MeminfoSampler(interval=3600, read=lambda: next(readings))
    sampler.start()
    first = sampler.stop()
    assert sampler.stop() is first
    assert first.peak_rise["total"] == 4096


VMALLOCINFO_TEXT = """\
0x00000000e5a54b46-0x0000000013926eed   20480 irq_init_percpu_irqstack+0xca/0x100 vmap
0x00000000d10981d3-0x0000000055fe57c5    8192 kvm_page_track_create_memslot+0x4c/0x80 pages=1
0x0000000055fe57c5-0x00000000ffc639ea   12288 memslot_rmap_alloc+0x68/0xb0 pages=2 vmalloc N0=2
0x00000000c176aae6-0x00000000c3243a68    8192 memslot_rmap_alloc+0x68/0xb0 pages=1 vmalloc N0=1
"""


def test_vmallocinfo_areas_by_key_and_caller() -> None:
    from pcihole.host.vmallocinfo import bytes_by_caller, parse_vmallocinfo

    areas = parse_vmallocinfo(VMALLOCINFO_TEXT)
    assert areas["0x0000000055fe57c5-0x00000000ffc639ea"] == ("memslot_rmap_alloc", 8192)
    assert areas["0x00000000e5a54b46-0x0000000013926eed"] == ("irq_init_percpu_irqstack", 0)
    assert len(areas) == 4
    assert bytes_by_caller(areas) == {
        "memslot_rmap_alloc": 12288,
        "kvm_page_track_create_memslot": 4096,
        "irq_init_percpu_irqstack": 0,
    }

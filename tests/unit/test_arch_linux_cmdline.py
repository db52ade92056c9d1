"""The command line a leaking host needs: decided from synthetic CPUID answers."""

from __future__ import annotations

from pcihole.arch.x86.linux_cmdline import (
    FEATURES,
    PROBED_REGISTERS,
    CpuidLeaks,
    linux_command_line,
)

ECX1 = (1, 0, "ecx")
EBX7 = (7, 0, "ebx")
PVM_ECX1_ALL_CLEARED = 0x76D81203
"""Leaf 1 ECX a real-mode guest read on a kvm_pvm host with every ECX bit cleared
(shared/design/linux-guest.md)."""
SMAP_FSGSBASE_AVX2 = 1 << 20 | 1 << 0 | 1 << 5


def test_the_probe_reads_leaf_1_ecx_and_leaf_7_ebx() -> None:
    assert PROBED_REGISTERS == (ECX1, EBX7)


def test_leaks_on_a_kvm_pvm_host() -> None:
    leaks = CpuidLeaks.from_answers({ECX1: PVM_ECX1_ALL_CLEARED, EBX7: SMAP_FSGSBASE_AVX2}, 0xD)
    assert leaks.leaked == (
        "xsave",
        "smap",
        "fsgsbase",
        "ssse3",
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "pclmulqdq",
        "aes",
    )
    line, notes = linux_command_line("console=ttyS0 nokaslr", leaks)
    assert line == (
        "console=ttyS0 nokaslr noxsave "
        "clearcpuid=smap,fsgsbase,ssse3,sse4_1,sse4_2,avx,avx2,pclmulqdq,aes"
    )
    assert len(notes) == 1 and "noxsave clearcpuid=smap," in notes[0]
    assert "xsave, smap, fsgsbase" in notes[0]  # says which features leaked


def test_nothing_added_where_cpuid_obeys_the_monitor() -> None:
    # popcnt (leaf 1 ECX bit 23) and the hypervisor bit are no business of this policy.
    leaks = CpuidLeaks.from_answers({ECX1: 1 << 23 | 1 << 31, EBX7: 0}, 0xD)
    assert not leaks.any
    assert linux_command_line("console=ttyS0", leaks) == ("console=ttyS0", [])
    assert linux_command_line("", leaks) == ("", [])


def test_leaf_7_beyond_the_max_leaf_is_not_read() -> None:
    leaks = CpuidLeaks.from_answers({ECX1: 0, EBX7: SMAP_FSGSBASE_AVX2}, 6)
    assert leaks.leaked == ()


def test_each_feature_alone() -> None:
    for feature in FEATURES:
        leaks = CpuidLeaks.from_answers({feature.register: 1 << feature.bit}, 7)
        assert leaks.leaked == (feature.name,)
        line, notes = linux_command_line("", leaks)
        assert line == (feature.option or f"clearcpuid={feature.name}") and len(notes) == 1


def test_the_users_words_are_kept_and_not_repeated() -> None:
    leaks = CpuidLeaks(("xsave", "smap", "avx"))
    line, notes = linux_command_line('noxsave clearcpuid=sha_ni quiet x="a  b"', leaks)
    assert line == 'noxsave clearcpuid=sha_ni,smap,avx quiet x="a  b"'
    assert notes and "'clearcpuid=smap,avx'" in notes[0]
    assert linux_command_line(line, leaks) == (line, [])  # all there already: no note

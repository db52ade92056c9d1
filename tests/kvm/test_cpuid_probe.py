"""The CPUID probe on this host's KVM: a real guest reads CPUID after the monitor cleared
the features Linux must avoid; what still shows leaks. Judged from outside the code: the
host's own flags (/proc/cpuinfo), what KVM says it governs (KVM_GET_SUPPORTED_CPUID), and
which KVM module is loaded (kvm_pvm leaks; kvm_intel and kvm_amd virtualize CPUID)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcihole.arch.x86 import cpuid_probe
from pcihole.arch.x86.cpuid import boot_cpuid
from pcihole.arch.x86.cpuid_probe import cleared_cpuid, host_cpuid_leaks, probe_answers, probe_code
from pcihole.arch.x86.linux_cmdline import FEATURES, PROBED_REGISTERS, CpuidLeaks
from pcihole.kvm import Kvm

MODULES = Path("/sys/module")


def host_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo has no flags line")


def supported(kvm: Kvm) -> set[str]:
    entries = {(entry.function, entry.index): entry for entry in kvm.supported_cpuid()}
    found = set()
    for feature in FEATURES:
        leaf, subleaf, register = feature.register
        entry = entries.get((leaf, subleaf))
        if entry is not None and getattr(entry, register) >> feature.bit & 1:
            found.add(feature.name)
    return found


def test_what_kvm_governs_is_hidden_and_only_host_features_leak(kvm: Kvm) -> None:
    answers = probe_answers(kvm, probe_code(), cleared_cpuid(boot_cpuid(kvm)))
    seen = dict(zip(PROBED_REGISTERS, answers[1:], strict=True))
    governed = supported(kvm)
    for feature in FEATURES:
        if feature.name in governed and feature.register[0] <= answers[0]:
            assert not feature.seen(seen), f"{feature.name} is KVM's to hide, yet shows"
    leaks = cpuid_probe.run_probe(kvm)
    assert set(leaks.leaked) <= host_flags() - governed


def test_the_module_decides_whether_it_leaks(kvm: Kvm) -> None:
    leaks = cpuid_probe.run_probe(kvm)
    if (MODULES / "kvm_pvm").exists():
        assert leaks.any  # measured: sse4.x, ssse3, xsave, ... reach the guest
    elif (MODULES / "kvm_intel").exists() or (MODULES / "kvm_amd").exists():
        assert leaks == CpuidLeaks()
    else:
        pytest.skip("neither kvm_pvm nor kvm_intel/kvm_amd is loaded: no expectation")


def test_asked_once_per_process(kvm: Kvm, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Kvm] = []

    def counted(handle: Kvm) -> CpuidLeaks:
        calls.append(handle)
        return CpuidLeaks(("avx",))

    monkeypatch.setattr(cpuid_probe, "_cached", None)
    monkeypatch.setattr(cpuid_probe, "run_probe", counted)
    assert host_cpuid_leaks(kvm) is host_cpuid_leaks(kvm)
    assert calls == [kvm]

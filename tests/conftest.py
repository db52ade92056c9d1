"""Shared fixtures: KVM tests skip only when /dev/kvm is absent, and say so."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from pcihole.holes import source as source_mod
from pcihole.holes.source import HoleSourceError
from pcihole.kvm import Kvm

KVM_PATH = "/dev/kvm"

# Hypothesis' default 200 ms deadline and its too_slow health check measure the machine,
# not the code: on a loaded host they fail tests that are right. Every run uses this.
settings.register_profile("pcihole", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pcihole")


def kvm_missing_reason() -> str | None:
    if not os.path.exists(KVM_PATH):
        return f"{KVM_PATH} is absent: no KVM on this machine"
    return None


@pytest.fixture(scope="session")
def kvm() -> Iterator[Kvm]:
    reason = kvm_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with Kvm(KVM_PATH) as handle:
        yield handle


@pytest.fixture
def huge_page() -> Iterator[int]:
    """One extra 2 MiB hugetlb page for the test (root only), pool restored afterwards."""
    if os.geteuid() != 0:
        pytest.skip("growing vm.nr_hugepages needs root")
    if not os.access(source_mod.HUGEPAGES_NR_PATH, os.W_OK):
        pytest.skip(f"{source_mod.HUGEPAGES_NR_PATH} is not writable")
    try:
        with source_mod.extra_huge_pages(1) as free:
            yield free
    except HoleSourceError as exc:
        pytest.skip(str(exc))

"""Shared fixtures: KVM tests skip only when /dev/kvm is absent, and say so."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pcihole.kvm import Kvm

KVM_PATH = "/dev/kvm"


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

"""The kernel, and nothing else: KVM fds as objects, typed exits, one error type."""

from pcihole.kvm import abi, exits
from pcihole.kvm.abi import Cap
from pcihole.kvm.errors import KvmError
from pcihole.kvm.system import CoalescedWrite, Kvm, Memslot, Translation, Vcpu, Vm

__all__ = [
    "Cap",
    "CoalescedWrite",
    "Kvm",
    "KvmError",
    "Memslot",
    "Translation",
    "Vcpu",
    "Vm",
    "abi",
    "exits",
]

"""The x86 reset path: what KVM needs before a vCPU can start at the reset vector."""

from __future__ import annotations

from pcihole import layout
from pcihole.kvm import Vm
from pcihole.kvm.abi import Cap


def prepare_real_mode(vm: Vm) -> None:
    """Give KVM the pages it may need to run real mode (before any vCPU exists).

    On VMX without unrestricted guest, KVM runs real mode in vm86 with a TSS and an
    identity-mapped page table of its own; QEMU puts both just below the BIOS.
    """
    if vm.kvm.check_extension(Cap.SET_IDENTITY_MAP_ADDR):
        vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
    if vm.kvm.check_extension(Cap.SET_TSS_ADDR):
        vm.set_tss_addr(layout.KVM_TSS_ADDR)

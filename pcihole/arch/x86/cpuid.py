"""What CPUID tells a vCPU: the policy, on top of what KVM supports."""

from __future__ import annotations

from pcihole.kvm import Kvm, abi

XSAVE_LEAF = 0xD
XFEATURES_NEEDING_PERMISSION = (1 << 17) | (1 << 18)
"""AMX tile state: KVM_SET_CPUID2 refuses it unless the process first asked for it with
arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM). Firmware has no use for it."""
KVM_SIGNATURE_LEAF = 0x40000000
"""'KVMKVMKVM': the hypervisor leaf; 0x40000001 lists the paravirtual features (kvmclock)."""
KVM_FEATURES_LEAF = 0x40000001


def boot_cpuid(kvm: Kvm) -> list[abi.kvm_cpuid_entry2]:
    """What a booting vCPU is told: every leaf KVM supports, less what needs permissions.

    KVM's own leaves (0x40000000 signature, 0x40000001 features with kvmclock) are kept
    as KVM reports them, as QEMU's ``-cpu host`` does, so a kernel finds kvmclock.
    """
    entries = kvm.supported_cpuid()
    for entry in entries:
        if entry.function == XSAVE_LEAF and entry.index == 0:
            entry.eax &= ~XFEATURES_NEEDING_PERMISSION
    return entries

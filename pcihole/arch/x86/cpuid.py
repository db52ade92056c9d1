"""What CPUID tells a vCPU: the policy, on top of what KVM supports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


VENDOR_LEAF = 0x0
"""EAX: the highest basic leaf; EBX, EDX, ECX: the vendor string."""
FEATURES_LEAF = 0x1
STRUCTURED_FEATURES_LEAF = 0x7
EXTENDED_LEAF = 0x80000000
"""EAX: the highest extended leaf."""
ADDRESS_SIZES_LEAF = 0x80000008
"""EAX bits 7:0: physical address bits."""
AMD_VENDOR = "AuthenticAMD"
INTEL_VENDOR = "GenuineIntel"
DEFAULT_PHYS_BITS = 36
"""A CPU without leaf 0x80000008 addresses 36 bits (Linux and QEMU assume so)."""
VMX = 1 << 5
"""Leaf 1 ECX: Intel VT-x."""
SGX = 1 << 2
"""Leaf 7 EBX: SGX."""
SGX_LC = 1 << 30
"""Leaf 7 ECX: SGX launch control."""


@dataclass(frozen=True, slots=True)
class VcpuIdentity:
    """What QEMU 7.2's q35 board reads of the first vCPU to lay out the machine: the vendor
    and physical address bits (RAM above 4 GiB, the AMD HyperTransport hole in e820), and
    the features firmware is asked to enable in IA32_FEATURE_CONTROL (fw_cfg)."""

    vendor: str
    phys_bits: int
    vmx: bool = False
    sgx: bool = False
    sgx_lc: bool = False

    @property
    def amd(self) -> bool:
        """QEMU's IS_AMD_CPU: the vendor string alone (a Hygon CPU is not AMD)."""
        return self.vendor == AMD_VENDOR

    @classmethod
    def from_cpuid(cls, entries: Sequence[abi.kvm_cpuid_entry2]) -> VcpuIdentity:
        """The identity of a vCPU given ``entries`` (what ``boot_cpuid`` hands it)."""
        leaves = {(entry.function, entry.index): entry for entry in entries}
        zero = leaves.get((VENDOR_LEAF, 0))
        if zero is None:
            return cls("", DEFAULT_PHYS_BITS)
        vendor = b"".join(v.to_bytes(4, "little") for v in (zero.ebx, zero.edx, zero.ecx))
        phys_bits = DEFAULT_PHYS_BITS
        extended, sizes = leaves.get((EXTENDED_LEAF, 0)), leaves.get((ADDRESS_SIZES_LEAF, 0))
        if extended is not None and sizes is not None and extended.eax >= ADDRESS_SIZES_LEAF:
            phys_bits = sizes.eax & 0xFF
        features = leaves.get((FEATURES_LEAF, 0))
        structured = leaves.get((STRUCTURED_FEATURES_LEAF, 0))
        if zero.eax < STRUCTURED_FEATURES_LEAF:
            structured = None
        return cls(
            vendor.decode("latin-1"),
            phys_bits,
            vmx=features is not None and bool(features.ecx & VMX),
            sgx=structured is not None and bool(structured.ebx & SGX),
            sgx_lc=structured is not None and bool(structured.ecx & SGX_LC),
        )

"""What QEMU's q35 board reads of a vCPU, from the CPUID leaves it is handed."""

from __future__ import annotations

from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.kvm import abi


def leaf(
    function: int, eax: int = 0, ebx: int = 0, ecx: int = 0, edx: int = 0
) -> abi.kvm_cpuid_entry2:
    return abi.kvm_cpuid_entry2(function=function, index=0, eax=eax, ebx=ebx, ecx=ecx, edx=edx)


# Leaf 0 as CPUs answer it: max leaf in EAX, the vendor in EBX, EDX, ECX.
AMD_LEAF0 = leaf(0, 0x10, 0x68747541, 0x444D4163, 0x69746E65)  # this host's EPYC
INTEL_LEAF0 = leaf(0, 0x1B, 0x756E6547, 0x6C65746E, 0x49656E69)
EXTENDED = leaf(0x80000000, 0x80000008)


def test_vendor_and_address_bits() -> None:
    amd = VcpuIdentity.from_cpuid([AMD_LEAF0, EXTENDED, leaf(0x80000008, 0x3030)])
    assert amd == VcpuIdentity("AuthenticAMD", 48) and amd.amd
    intel = VcpuIdentity.from_cpuid([INTEL_LEAF0, EXTENDED, leaf(0x80000008, 0x3027)])
    assert intel == VcpuIdentity("GenuineIntel", 39) and not intel.amd


def test_without_leaf_0x80000008_a_cpu_has_36_bits() -> None:
    assert VcpuIdentity.from_cpuid([INTEL_LEAF0]).phys_bits == 36
    old = leaf(0x80000000, 0x80000004)  # the leaf is there but beyond the stated maximum
    assert VcpuIdentity.from_cpuid([INTEL_LEAF0, old, leaf(0x80000008, 0x3027)]).phys_bits == 36


def test_features_behind_feature_control() -> None:
    features = leaf(1, ecx=1 << 5)  # VMX
    structured = leaf(7, ebx=1 << 2, ecx=1 << 30)  # SGX, SGX launch control
    vcpu = VcpuIdentity.from_cpuid([INTEL_LEAF0, features, structured])
    assert (vcpu.vmx, vcpu.sgx, vcpu.sgx_lc) == (True, True, True)
    low_max = leaf(0, 6, *(INTEL_LEAF0.ebx, INTEL_LEAF0.ecx, INTEL_LEAF0.edx))
    vcpu = VcpuIdentity.from_cpuid([low_max, structured])  # leaf 7 beyond the maximum
    assert (vcpu.vmx, vcpu.sgx, vcpu.sgx_lc) == (False, False, False)

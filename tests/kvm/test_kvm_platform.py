"""The x86 platform ioctls on a real VM: irqchip, PIT, IRQ lines, CPUID, events, MP state."""

from __future__ import annotations

import errno

import pytest

from pcihole import layout
from pcihole.arch.x86.cpuid import KVM_FEATURES_LEAF, XFEATURES_NEEDING_PERMISSION, boot_cpuid
from pcihole.arch.x86.reset import prepare_real_mode
from pcihole.kvm import Kvm, KvmError, abi

KVMCLOCK_BITS = (1 << 0) | (1 << 3)
"""KVM_FEATURE_CLOCKSOURCE and KVM_FEATURE_CLOCKSOURCE2 in leaf 0x40000001 eax."""


def test_irqchip_and_pit_are_created_once_and_lines_need_the_irqchip(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        with pytest.raises(KvmError) as no_chip:
            vm.irq_line(4, 1)
        assert no_chip.value.errno == errno.ENXIO
        vm.create_irqchip()
        vm.create_pit2()
        vm.irq_line(4, 1)  # COM1's line up and down: an edge on the PIC and IOAPIC
        vm.irq_line(4, 0)
        for create in (vm.create_irqchip, vm.create_pit2):
            with pytest.raises(KvmError) as again:
                create()
            assert again.value.errno == errno.EEXIST


def test_mp_state_and_vcpu_events_round_trip(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        vm.create_irqchip()
        vcpu = vm.create_vcpu()
        assert vcpu.get_mp_state() == abi.MpState.RUNNABLE  # the bootstrap processor
        vcpu.set_mp_state(abi.MpState.HALTED)
        assert vcpu.get_mp_state() == abi.MpState.HALTED
        events = vcpu.get_vcpu_events()
        assert (events.nmi.masked, events.nmi.pending) == (0, 0)
        events.nmi.masked = 1
        events.nmi.pending = 1
        events.flags = 1  # KVM_VCPUEVENT_VALID_NMI_PENDING
        vcpu.set_vcpu_events(events)
        after = vcpu.get_vcpu_events()
        assert (after.nmi.masked, after.nmi.pending) == (1, 1)


def test_boot_cpuid_is_accepted_and_keeps_kvmclock(kvm: Kvm) -> None:
    supported = {(e.function, e.index): e for e in kvm.supported_cpuid()}
    assert (0, 0) in supported and supported[(0, 0)].eax >= 1  # leaf 0 gives the max leaf
    entries = boot_cpuid(kvm)
    by_leaf = {(e.function, e.index): e for e in entries}
    if (KVM_FEATURES_LEAF, 0) in supported:
        assert by_leaf[(KVM_FEATURES_LEAF, 0)].eax == supported[(KVM_FEATURES_LEAF, 0)].eax
        assert by_leaf[(KVM_FEATURES_LEAF, 0)].eax & KVMCLOCK_BITS
    assert not by_leaf[(0xD, 0)].eax & XFEATURES_NEEDING_PERMISSION
    with kvm.create_vm() as vm:
        prepare_real_mode(vm)
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid2(entries)
        khz = vcpu.tsc_khz()
        assert khz is None or khz > 100_000  # any x86 TSC of this century runs over 100 MHz


def test_tss_address_is_set_once_before_vcpus(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        vm.set_tss_addr(layout.KVM_TSS_ADDR)
        vm.create_vcpu()
        with pytest.raises(KvmError) as late:
            vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)  # refused once vCPUs exist
        assert late.value.errno == errno.EINVAL

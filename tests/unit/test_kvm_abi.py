"""The KVM ABI against the kernel's own headers: ioctl numbers and struct sizes."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from pcihole.kvm import abi

IOCTLS = [
    "KVM_GET_SUPPORTED_CPUID",
    "KVM_SET_CPUID2",
    "KVM_SET_TSS_ADDR",
    "KVM_SET_IDENTITY_MAP_ADDR",
    "KVM_GET_TSC_KHZ",
    "KVM_CREATE_IRQCHIP",
    "KVM_CREATE_PIT2",
    "KVM_IRQ_LINE",
    "KVM_GET_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS",
    "KVM_GET_MP_STATE",
    "KVM_SET_MP_STATE",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_RUN",
    "KVM_GET_SREGS",
    "KVM_ENABLE_CAP",
    "KVM_TRANSLATE",
    "KVM_GET_REGS",
    "KVM_SET_REGS",
    "KVM_SET_SREGS",
    "KVM_GET_XSAVE",
    "KVM_SET_XSAVE",
    "KVM_GET_XSAVE2",
]
STRUCTS = [
    "kvm_cpuid_entry2",
    "kvm_cpuid2",
    "kvm_pit_config",
    "kvm_irq_level",
    "kvm_vcpu_events",
    "kvm_mp_state",
    "kvm_sregs",
    "kvm_regs",
    "kvm_enable_cap",
    "kvm_translation",
    "kvm_xsave",
]
CAPS = {
    "IRQCHIP": "KVM_CAP_IRQCHIP",
    "PIT2": "KVM_CAP_PIT2",
    "MP_STATE": "KVM_CAP_MP_STATE",
    "VCPU_EVENTS": "KVM_CAP_VCPU_EVENTS",
    "GET_TSC_KHZ": "KVM_CAP_GET_TSC_KHZ",
    "SET_IDENTITY_MAP_ADDR": "KVM_CAP_SET_IDENTITY_MAP_ADDR",
    "EXIT_ON_EMULATION_FAILURE": "KVM_CAP_EXIT_ON_EMULATION_FAILURE",
    "XSAVE": "KVM_CAP_XSAVE",
    "XSAVE2": "KVM_CAP_XSAVE2",
}


def _from_headers(tmp_path: Path, expressions: list[str]) -> list[int]:
    """Values the C compiler computes from <linux/kvm.h>, one per expression."""
    if shutil.which("gcc") is None or not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("needs gcc and the kernel's uapi headers (linux-libc-dev)")
    prints = "".join(f'printf("%llu\\n", (unsigned long long)({e}));' for e in expressions)
    source = tmp_path / "abi.c"
    source.write_text(f"#include <stdio.h>\n#include <linux/kvm.h>\nint main(void){{{prints}}}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "abi"), str(source)], check=True)
    out = subprocess.run([str(tmp_path / "abi")], check=True, capture_output=True, text=True)
    return [int(line) for line in out.stdout.split()]


def test_ioctl_numbers_struct_sizes_and_caps_match_the_kernel_headers(tmp_path: Path) -> None:
    expressions = [*IOCTLS, *(f"sizeof(struct {name})" for name in STRUCTS), *CAPS.values()]
    ours = [
        *(getattr(abi, name) for name in IOCTLS),
        *(ctypes.sizeof(getattr(abi, name)) for name in STRUCTS),
        *(abi.Cap[name] for name in CAPS),
    ]
    assert dict(zip(expressions, ours, strict=True)) == dict(
        zip(expressions, _from_headers(tmp_path, expressions), strict=True)
    )


def test_vcpu_events_fields_sit_where_the_kernel_puts_them(tmp_path: Path) -> None:
    fields = ["sipi_vector", "flags", "exception_payload"]
    offsets = _from_headers(
        tmp_path, [f"__builtin_offsetof(struct kvm_vcpu_events, {f})" for f in fields]
    )
    assert [getattr(abi.kvm_vcpu_events, f).offset for f in fields] == offsets


def test_emulation_failure_exit_and_translation_fields_sit_where_the_kernel_puts_them(
    tmp_path: Path,
) -> None:
    run_fields = [
        "emulation_failure.flags",
        "emulation_failure.insn_size",
        "emulation_failure.insn_bytes",
    ]
    internal = "__builtin_offsetof(struct kvm_run, internal)"
    expressions = [
        *(f"__builtin_offsetof(struct kvm_run, {f}) - {internal}" for f in run_fields),
        "__builtin_offsetof(struct kvm_run, internal)",
        "__builtin_offsetof(struct kvm_translation, valid)",
        "KVM_INTERNAL_ERROR_EMULATION",
        "KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES",
    ]
    failure = abi.kvm_run_emulation_failure
    ours = [
        failure.flags.offset,
        failure.insn_size.offset,
        failure.insn_bytes.offset,
        abi.RUN_EXIT_OFFSET,
        abi.kvm_translation.valid.offset,
        abi.KVM_INTERNAL_ERROR_EMULATION,
        abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    ]
    assert ours == _from_headers(tmp_path, expressions)

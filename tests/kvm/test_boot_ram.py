"""``pcihole boot --ram-mib`` at its bounds: SeaBIOS tells of the RAM QEMU 7.2 tells of.

SeaBIOS boots at the largest size the option admits and at the q35 split (0xb0000000,
where only 2 GiB stay below 4 GiB), and the e820 map it prints on its debug console is
QEMU's, line for line, for the same ``-m`` and a vCPU of the same vendor and address
bits as pcihole's. Each run has a guard sized to SeaBIOS (~3 s here), not a hang guard.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.arch.x86.cpuid import VcpuIdentity, boot_cpuid
from pcihole.cli import main
from pcihole.errors import ENVIRONMENT_STATUS, USAGE_STATUS
from pcihole.kvm import Kvm, KvmError
from pcihole.measure.qemu import Qemu
from pcihole.memory import RegionKind
from pcihole.memory.ram import GuestRam, RamAllocationError
from pcihole.q35 import Q35Shell
from tests.seabios_ref import MARKER, SEABIOS, qemu_missing_reason, seabios_missing_reason

SEABIOS_GUARD_SECONDS = 60.0
"""SeaBIOS reaches its marker in ~3 s here (QEMU and pcihole alike), ~13 s with both
cores busy (load 8): this turns a hang into a failure in a minute, not five."""
E820_LINE = re.compile(
    r"^(e820 map has \d+ items:|\s*\d+: [0-9a-f]{16} - [0-9a-f]{16} = .*)$", re.M
)
"""SeaBIOS's e820 dump: a count line, then one line per entry."""
MAX_MIB = layout.BOOT_RAM_MAX // layout.MiB
SPLIT_MIB = layout.Q35_LOW_RAM_MAX // layout.MiB
ABOVE_4G_LINES = {
    # Literals: RAM above 4 GiB is the size less the 2 GiB kept below, from 4 GiB on.
    MAX_MIB: "0000000100000000 - 0000000480000000 = 1 RAM",
    SPLIT_MIB: "0000000100000000 - 0000000130000000 = 1 RAM",
}


def e820_lines(log: str) -> list[str]:
    return [match.group(1).strip() for match in E820_LINE.finditer(log)]


def qemu_e820_lines(mib: int, vcpu: VcpuIdentity, acpi: str) -> list[str]:
    """SeaBIOS's e820 dump under QEMU with ``-m MIB`` and the vCPU's address bits (QEMU's
    vendor is the host's, as pcihole's), ``acpi`` on or off as pcihole's ``--acpi``: the
    part of RAM below 4 GiB SeaBIOS keeps for tables (the entry ending at the split) is
    larger when it installs QEMU's (a 128 KiB blob) than when it builds its own."""
    args = ["-no-reboot", "-cpu", f"qemu64,phys-bits={vcpu.phys_bits}"]
    machine = f"q35,acpi={acpi}"
    with Qemu(args, machine=machine, memory=f"{mib}M", bios=SEABIOS, debugcon=True) as qemu:
        log = qemu.read_until(MARKER.encode(), SEABIOS_GUARD_SECONDS)
    return e820_lines(log.decode("utf-8", "replace"))


@pytest.fixture(scope="module")
def needs() -> None:
    for reason in (seabios_missing_reason(), qemu_missing_reason()):
        if reason is not None:
            pytest.skip(reason)
    try:  # lazily backed: only the host's willingness to map it is needed
        GuestRam(0, layout.BOOT_RAM_MAX).close()
    except RamAllocationError as error:
        pytest.skip(f"--ram-mib {MAX_MIB} needs the mapping: {error}")


@pytest.mark.parametrize(("mib", "acpi"), [(MAX_MIB, "on"), (SPLIT_MIB, "on"), (SPLIT_MIB, "off")])
def test_seabios_e820_at_the_ram_bounds_is_qemus(
    kvm: Kvm, needs: None, tmp_path: Path, mib: int, acpi: str
) -> None:
    console = tmp_path / "debugcon.txt"
    status = main(
        [
            "boot",
            "--ram-mib",
            str(mib),
            "--until",
            MARKER,
            "--debugcon",
            str(console),
            "--timeout",
            str(SEABIOS_GUARD_SECONDS),
            "--acpi",
            acpi,
        ]
    )
    ours = e820_lines(console.read_text(errors="replace"))
    assert status == 0, ours
    assert ABOVE_4G_LINES[mib] in " ".join(ours)
    assert ours == qemu_e820_lines(mib, VcpuIdentity.from_cpuid(boot_cpuid(kvm)), acpi)


def test_ram_above_4_gib_has_its_memslot(kvm: Kvm) -> None:
    image = b"\xf4" * layout.IMAGE_ALIGN
    above = layout.BOOT_RAM_MAX - 2 * layout.GiB
    with Q35Shell(kvm, image, ram_size=layout.BOOT_RAM_MAX) as shell:
        assert shell.ram is not None
        ram = [(r.start, r.size) for r in shell.memory_map if r.kind is RegionKind.RAM]
        assert ram[-1] == (4 * layout.GiB, above)
        # The kernel as judge: it refuses a new memslot over one it has (EEXIST), at the
        # first and the last page above 4 GiB, and takes one just past them.
        slot = shell.slots.allocate(1, purpose="probe")[0]
        spare = shell.ram.host_address
        for address in (4 * layout.GiB, 4 * layout.GiB + above - layout.PAGE_SIZE):
            with pytest.raises(KvmError) as refused:
                shell.vm.set_memory_region(slot, address, layout.PAGE_SIZE, spare)
            assert refused.value.errno == errno.EEXIST
        shell.vm.set_memory_region(slot, 4 * layout.GiB + above, layout.PAGE_SIZE, spare)
        # Its host memory follows RAM below 4 GiB in one block, as QEMU's alias.
        assert shell.ram.host_address_of(4 * layout.GiB) == shell.ram.host_address + 2 * layout.GiB


def test_the_vcpu_identity_is_the_hosts_vendor(kvm: Kvm) -> None:
    """Under KVM the vCPU's vendor is the host's (/proc/cpuinfo, the judge); its address
    bits are at most the host's."""
    info = Path("/proc/cpuinfo").read_text()
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", info, re.M)
    bits = re.search(r"^address sizes\s*:\s*(\d+) bits physical", info, re.M)
    if vendor is None or bits is None:
        pytest.skip("/proc/cpuinfo names no vendor_id or address sizes here")
    identity = VcpuIdentity.from_cpuid(boot_cpuid(kvm))
    assert identity.vendor == vendor.group(1)
    assert 36 <= identity.phys_bits <= int(bits.group(1))


def test_ram_mib_refusals_name_the_option(
    kvm: Kvm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as parser_exit:
        main(["boot", "--ram-mib", str(MAX_MIB + 1)])
    assert parser_exit.value.code == USAGE_STATUS
    assert f"--ram-mib must be 2 to {MAX_MIB}" in capsys.readouterr().err
    # A vCPU of 35 address bits cannot reach q35's 64-bit PCI window (QEMU refuses too).
    narrow = VcpuIdentity("GenuineIntel", 35)
    monkeypatch.setattr(VcpuIdentity, "from_cpuid", classmethod(lambda cls, entries: narrow))
    assert main(["boot", "--ram-mib", "128"]) == ENVIRONMENT_STATUS  # the host's CPU
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--ram-mib 128: " in error and "35 physical" in error

"""The guest's PCI view read from its kernel log: real lines of Debian's 6.1 cloud kernel
booted by pcihole (the default q35 machine, with and without ``initcall_debug``), and
lines in the kernel's format for a topology with root ports."""

from __future__ import annotations

import pytest

from pcihole.guest.linux import ROOT_PORT_DEVICES
from pcihole.guest.linux.klog import init_fault_note, parse_kernel_log, read_guest_view
from pcihole.guest.linux.view import GuestViewError, compare
from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.config import (
    DEVICE_ID,
    HEADER_TYPE,
    REVISION_ID,
    SECONDARY_BUS,
    SUBORDINATE_BUS,
    VENDOR_ID,
)
from pcihole.pci.devices import Function
from pcihole.pci.topology import Topology

# pcihole boot --kernel vmlinux, default machine: the PCI phase, as the serial port had it
RUN_A = """\
[   98.886266] PCI host bridge to bus 0000:00\r
[   98.894206] pci_bus 0000:00: root bus resource [io  0x0000-0x0cf7 window]\r
[   98.926293] pci_bus 0000:00: root bus resource [bus 00-ff]\r
[   98.951234] pci 0000:00:00.0: [8086:29c0] type 00 class 0x060000\r
[   99.050932] pci 0000:00:1f.0: [8086:2918] type 00 class 0x060100\r
[   99.063669] pci 0000:00:1f.0: quirk: [io  0xb000-0xb07f] claimed by ICH6 ACPI/GPIO/TCO\r
[   99.238962] pci 0000:00:1f.2: [8086:2922] type 00 class 0x010601\r
[   99.245147] pci 0000:00:1f.2: BAR 4 [io  0xc040-0xc05f]\r
[   99.253247] pci 0000:00:1f.2: BAR 5 [mem 0xfebff000-0xfebfffff]\r
[   99.351594] pci 0000:00:1f.3: [8086:2930] type 00 class 0x0c0500\r
[   99.357146] pci 0000:00:1f.3: BAR 4 [io  0xb100-0xb13f]\r
[  100.334330] ACPI: PCI: Interrupt link LNKA configured for IRQ 0\r
[  144.623014] pci_bus 0000:00: resource 7 [mem 0xc0000000-0xfebfffff window]\r
[  145.569797] PCI: CLS 0 bytes, default 64\r
"""
# the same with initcall_debug: quirk calls interleaved
RUN_C = """\
[  115.994788] pci_bus 0000:00: root bus resource [bus 00-ff]
[  116.039378] pci 0000:00:00.0: calling  quirk_mmio_always_on+0x0/0x20 @ 1
[  116.047378] pci 0000:00:00.0: quirk_mmio_always_on+0x0/0x20 took 0 usecs
[  116.055378] pci 0000:00:00.0: [8086:29c0] type 00 class 0x060000
[  116.077243] pci 0000:00:00.0: calling  quirk_igfx_skip_te_disable+0x0/0x90 @ 1
[  116.306946] pci 0000:00:1f.0: [8086:2918] type 00 class 0x060100
[  116.358124] pci 0000:00:1f.0: calling  quirk_ich7_lpc+0x0/0x60 @ 1
[  116.375378] pci 0000:00:1f.0: quirk_ich7_lpc+0x0/0x60 took 7812 usecs
[  116.719230] pci 0000:00:1f.2: [8086:2922] type 00 class 0x010601
[  116.769436] pci 0000:00:1f.2: calling  quirk_igfx_skip_te_disable+0x0/0x90 @ 1
[  116.945651] pci 0000:00:1f.3: [8086:2930] type 00 class 0x0c0500
[  116.990985] pci 0000:00:1f.3: calling  quirk_igfx_skip_te_disable+0x0/0x90 @ 1
[  176.480743] PCI: CLS 0 bytes, default 64
"""
INIT_DIED = """\
[  811.845332] Run /init as init process
[  814.465893] init[1]: segfault at ffffffff81c00080 ip ffffffff81c00080 error 15
[  814.586798] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
"""
DEVICES = ROOT_PORT_DEVICES


@pytest.mark.parametrize("log", [RUN_A, RUN_C], ids=["plain", "initcall_debug"])
def test_the_default_machine_s_log_shows_the_q35_built_ins(log: str) -> None:
    view = parse_kernel_log(log.splitlines())
    assert compare(view, Topology.qemu_nodefaults().functions) == []
    sata = view.functions[GuestBdf(Bdf(0, 0x1F, 2))]
    assert sata.ids == (0x8086, 0x2922, 0x010601)
    assert sata.bridge_buses is None


def kernel_lines(functions: tuple[Function, ...]) -> list[str]:
    """The scan's lines as Linux 6.1 prints them: one per function, one per bridge."""
    lines = []
    for function in functions:
        config, bdf = function.config, function.bdf
        lines.append(
            f"[  1.0] pci 0000:{bdf}: [{config.read(VENDOR_ID, 2):04x}:"
            f"{config.read(DEVICE_ID, 2):04x}] type "
            f"{config.read(HEADER_TYPE, 1) & 0x7F:02x} class "
            f"0x{config.read(REVISION_ID, 4) >> 8:06x}"
        )
    for function in functions:
        if function.bridge_buses is not None:
            config = function.config
            buses = config.read(SECONDARY_BUS, 1), config.read(SUBORDINATE_BUS, 1)
            text = f"{buses[0]:02x}" + (f"-{buses[1]:02x}" if buses[1] != buses[0] else "")
            lines.append(f"[  2.0] pci 0000:{function.bdf}: PCI bridge to [bus {text}]")
    return lines


def test_root_ports_and_the_devices_behind_them() -> None:
    functions = Topology.build(DEVICES, 256).functions
    view = parse_kernel_log(kernel_lines(functions))
    assert compare(view, functions) == []
    bridges = {bdf: f.bridge_buses for bdf, f in view.functions.items() if f.bridge_buses}
    assert bridges == {Bdf(0, 0x1C, 0): (1, 1), Bdf(0, 0x1C, 1): (2, 2)}


def test_a_bus_range_and_the_later_bridge_line_win() -> None:
    lines = [
        "pci 0000:00:1c.0: [1b36:000c] type 01 class 0x060400",
        "pci 0000:00:1c.0: PCI bridge to [bus 01]",
        "pci 0000:00:1c.0:   bridge window [mem 0xfe800000-0xfe9fffff]",
        "pci 0000:00:1c.0: PCI bridge to [bus 01-03]",
    ]
    bridge = parse_kernel_log(lines).functions[GuestBdf(Bdf(0, 0x1C, 0))]
    assert bridge.bridge_buses == (1, 3)


def test_differences_are_reported() -> None:
    functions = Topology.build(DEVICES, 256).functions
    lines = kernel_lines(functions)
    missing = [line for line in lines if "02:00.0" not in line]
    wrong_bus = [line.replace("[bus 02]", "[bus 03]") for line in lines]
    assert compare(parse_kernel_log(missing), functions) == ["02:00.0: the guest does not see nvme"]
    assert any(
        "bridge buses (3, 3)" in text for text in compare(parse_kernel_log(wrong_bus), functions)
    )


def test_a_log_without_functions_is_an_error() -> None:
    with pytest.raises(GuestViewError, match="no PCI function"):
        parse_kernel_log(["[ 0.0] Linux version 6.1", "[ 1.0] PCI: CLS 0 bytes, default 64"])


def test_init_killed_after_it_ran_gets_a_note_naming_system_calls() -> None:
    note = init_fault_note(INIT_DIED.splitlines())
    assert note is not None and "system calls" in note
    assert init_fault_note(RUN_A.splitlines()) is None
    assert init_fault_note(INIT_DIED.splitlines()[1:]) is None  # init never ran


def test_the_guest_view_comes_from_the_kernel_log_when_init_printed_none() -> None:
    found = read_guest_view([*RUN_A.splitlines(), *INIT_DIED.splitlines()])
    assert found is not None
    source, view = found
    assert source == "its kernel log"
    assert compare(view, Topology.qemu_nodefaults().functions) == []


def test_init_s_report_wins_over_the_kernel_log() -> None:
    """Init's view carries every config byte; the log's is the kernel's summary. A report
    naming one function only is taken as it is, not mixed with the log's four."""
    report = ["pcihole-pci-view: begin", "devices", "0000\t808629c0\t0", "config 0000:00:00.0"]
    report += ["000000 86 80 c0 29", "000004", "pcihole-pci-view: end"]
    found = read_guest_view([*RUN_A.splitlines(), *report])
    assert found is not None
    source, view = found
    assert source == "its init"
    assert list(view.functions) == [Bdf(0, 0, 0)]


def test_a_console_without_a_view_has_none() -> None:
    assert read_guest_view(INIT_DIED.splitlines()) is None
    assert read_guest_view([]) is None

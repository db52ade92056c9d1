"""CF8-CFF on q35: reset control at 0xcf9, and the config ports withdrawn (--config-ports
firmware) once the firmware fetches the kernel from fw_cfg."""

from __future__ import annotations

from pcihole.devices.reset import ResetControl
from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import MODELS
from pcihole.pci.ecam import ConfigMechanism1
from pcihole.q35.platform import KERNEL_SELECTORS, ConfigAndResetPorts, kernel_fetch

HOST_BRIDGE = Bdf(0, 0, 0)
PROBE = 0x8000_0000


class Mechanism:
    """Mechanism #1 over one host bridge, as a CF8-CFF bus device."""

    def __init__(self) -> None:
        self.function = MODELS["host-bridge"].build(HOST_BRIDGE)
        lookup = {HOST_BRIDGE: self.function.config}.get
        self.mechanism = ConfigMechanism1(lookup)

    def read(self, offset: int, size: int) -> int:
        return self.mechanism.io_read(0xCF8 + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.mechanism.io_write(0xCF8 + offset, size, value)


def ports() -> tuple[ConfigAndResetPorts, Mechanism, list[str]]:
    resets: list[str] = []
    config = Mechanism()
    return ConfigAndResetPorts(config, ResetControl(lambda: resets.append("reset"))), config, resets


def type1_probe(device: ConfigAndResetPorts) -> bool:
    """Linux's pci_check_type1: the address register reads back what was written."""
    device.write(0, 4, PROBE)
    return device.read(0, 4) == PROBE


def test_before_withdrawal_the_mechanism_answers() -> None:
    device, _, _ = ports()
    assert type1_probe(device)
    assert device.read(4, 4) == 0x29C08086
    assert device.withdrawn_accesses == 0


def test_after_withdrawal_address_and_data_read_all_ones_and_drop_writes() -> None:
    device, config, _ = ports()
    device.withdraw()
    assert not type1_probe(device)
    for offset, size in ((0, 4), (0, 2), (0, 1), (3, 1), (4, 4), (6, 2), (7, 1)):
        assert device.read(offset, size) == (1 << 8 * size) - 1
    before = config.function.config.snapshot()
    device.write(0, 4, PROBE | 0x04)  # command register of 00:00.0
    device.write(4, 2, 0x0006)
    assert config.function.config.snapshot() == before
    assert config.read(0, 4) != PROBE | 0x04  # the address write never reached it
    assert device.withdrawn_accesses == 2 + 7 + 2  # the probe, the reads, the writes


def test_reset_control_stays_after_withdrawal() -> None:
    device, _, resets = ports()
    device.withdraw()
    device.write(1, 1, 0x02)  # 0xcf9: SYS_RST, kept
    assert device.read(1, 1) == 0x02 and resets == []
    device.write(1, 1, 0x06)  # RST_CPU
    assert resets == ["reset"]


def test_kernel_fetch_is_the_kernel_command_line_and_setup_items_only() -> None:
    assert set(KERNEL_SELECTORS) == {0x11, 0x15, 0x17}  # 0x15: what the PVH ROM reads
    assert all(kernel_fetch(selector) for selector in KERNEL_SELECTORS)
    for selector in (0x00, 0x19, 0x10, 0x20):
        assert not kernel_fetch(selector)

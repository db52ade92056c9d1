"""ICH9 LPC side effects: PM block placement, SCI IRQ, PIRQ routing, RCBA."""

from __future__ import annotations

from pcihole.pci.bdf import Bdf
from pcihole.pci.ecam import ConfigWrite
from pcihole.q35.lpc import LPC, Ich9LpcDecoder


class Config:
    """A 256-byte config space with QEMU's ICH9 LPC reset values where they matter."""

    def __init__(self) -> None:
        self.bytes = bytearray(256)
        self.bytes[0x40] = 0x01
        for offset in (*range(0x60, 0x64), *range(0x68, 0x6C)):
            self.bytes[offset] = 0x80

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.bytes[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.bytes[offset : offset + size] = value.to_bytes(size, "little")


class Recorder:
    def __init__(self, config: Config) -> None:
        self.events: list[tuple[str, object]] = []
        self.decoder = Ich9LpcDecoder(
            config,
            on_pm_base=lambda base: self.events.append(("pm", base)),
            on_pirq=lambda index, irq: self.events.append((f"pirq{'ABCDEFGH'[index]}", irq)),
            on_sci_irq=lambda irq: self.events.append(("sci", irq)),
            on_rcba=lambda base: self.events.append(("rcba", base)),
        )

    def take(self) -> list[tuple[str, object]]:
        events, self.events = self.events, []
        return events


def written(rec: Recorder, config: Config, offset: int, size: int, value: int) -> None:
    config.write(offset, size, value)
    rec.decoder.config_written(ConfigWrite(LPC, offset, size))


def test_first_sync_reports_the_reset_state() -> None:
    config = Config()
    rec = Recorder(config)
    rec.decoder.sync()
    assert rec.take() == [
        ("pm", None),
        ("sci", 9),
        *[(f"pirq{p}", None) for p in "ABCDEFGH"],
        ("rcba", None),
    ]
    rec.decoder.sync()
    assert rec.take() == []


def test_seabios_q35_lpc_setup() -> None:
    # src/fw/pciinit.c mch_isa_lpc_setup and mch_isa_bridge_setup, in its order.
    config = Config()
    rec = Recorder(config)
    rec.decoder.sync()
    rec.take()
    for i, irq in enumerate((10, 10, 11, 11)):
        written(rec, config, 0x60 + i, 1, irq)
        written(rec, config, 0x68 + i, 1, irq)
    written(rec, config, 0x40, 4, 0x600 | 0x1)
    assert rec.take() == [
        ("pirqA", 10),
        ("pirqE", 10),
        ("pirqB", 10),
        ("pirqF", 10),
        ("pirqC", 11),
        ("pirqG", 11),
        ("pirqD", 11),
        ("pirqH", 11),
    ]
    assert rec.decoder.pm_base is None  # PMBASE alone decodes nothing: ACPI_EN is off
    written(rec, config, 0x44, 1, 0x80)
    assert rec.take() == [("pm", 0x600)]
    written(rec, config, 0xF0, 4, 0xFED1C000 | 0x1)
    assert rec.take() == [("rcba", 0xFED1C000)]
    assert rec.decoder.pirqs == (10, 10, 11, 11, 10, 10, 11, 11)


def test_pm_block_moves_and_disappears() -> None:
    config = Config()
    rec = Recorder(config)
    rec.decoder.sync()
    written(rec, config, 0x44, 1, 0x80)
    written(rec, config, 0x40, 4, 0xB000 | 0x7F | 0x1)  # low bits ignored
    rec.take()
    assert rec.decoder.pm_base == 0xB000
    written(rec, config, 0x41, 1, 0x07)  # byte write to the high half: 0x0700
    assert rec.take() == [("pm", 0x0700)]
    written(rec, config, 0x40, 4, 0x1)  # base 0: nowhere, as QEMU
    assert rec.take() == [("pm", None)]
    written(rec, config, 0x40, 4, 0x601)
    written(rec, config, 0x44, 1, 0x02)  # ACPI_EN off, SCI on IRQ 11
    assert rec.take() == [("pm", 0x600), ("pm", None), ("sci", 11)]


def test_unchanged_or_unrelated_writes_report_nothing() -> None:
    config = Config()
    rec = Recorder(config)
    rec.decoder.sync()
    rec.take()
    written(rec, config, 0x60, 1, 0x80)
    written(rec, config, 0x64, 4, 0x0B0B0B0B)  # between the two PIRQ banks
    written(rec, config, 0x04, 2, 0x0007)
    assert rec.take() == []
    written(rec, config, 0x68, 4, 0x0B80800A)  # one dword: E-H
    assert rec.take() == [("pirqE", 10), ("pirqH", 11)]
    written(rec, config, 0xF0, 4, 0xFED1C000)  # address without the enable bit
    assert rec.take() == []


def test_reserved_sci_select_means_no_sci() -> None:
    config = Config()
    rec = Recorder(config)
    rec.decoder.sync()
    rec.take()
    written(rec, config, 0x44, 1, 0x83)
    assert rec.take() == [("sci", None)]


def test_writes_to_other_functions_are_not_its_own() -> None:
    config = Config()
    rec = Recorder(config)
    rec.decoder.sync()
    rec.take()
    config.write(0x44, 1, 0x80)
    config.write(0x40, 4, 0x601)
    rec.decoder.config_written(ConfigWrite(Bdf(0, 0x1F, 2), 0x40, 4))  # AHCI's BAR area
    assert rec.take() == []
    rec.decoder.config_written(ConfigWrite(LPC, 0x40, 4))
    assert rec.take() == [("pm", 0x600)]

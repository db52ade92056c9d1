"""ICH9 APM ports (0xb2/0xb3) and the PM block's answer to APM commands."""

from __future__ import annotations

from pcihole.devices.acpi_pm import (
    APM_ACPI_DISABLE,
    APM_ACPI_ENABLE,
    PM1_CNT,
    SCI_EN,
    SMI_EN,
    SMI_EN_APMC,
    AcpiPm,
)
from pcihole.devices.apm import APM_CNT, APM_STS, Apm


def pm_and_apm() -> tuple[AcpiPm, Apm]:
    pm = AcpiPm(power_off=lambda: None)
    return pm, Apm(pm.apm_command)


def test_both_registers_read_back_what_was_written_and_start_at_zero() -> None:
    apm = Apm()
    assert apm.read(APM_CNT, 1) == apm.read(APM_STS, 1) == 0
    apm.write(APM_STS, 1, 0x5A)
    apm.write(APM_CNT, 1, 0xC3)
    assert (apm.read(APM_CNT, 1), apm.read(APM_STS, 1)) == (0xC3, 0x5A)
    assert apm.read(APM_CNT, 2) == 0x5AC3


def test_a_word_write_is_two_bytes_low_port_first() -> None:
    commands: list[int] = []
    apm = Apm(commands.append)
    apm.write(APM_CNT, 2, 0x1234)
    assert commands == [0x34]  # only the APM_CNT byte is a command
    assert (apm.read(APM_CNT, 1), apm.read(APM_STS, 1)) == (0x34, 0x12)
    apm.write(APM_STS, 1, 0x99)
    assert commands == [0x34] and apm.commands == 1


def test_acpi_enable_sets_sci_en_and_disable_clears_it() -> None:
    pm, apm = pm_and_apm()
    pm.write(PM1_CNT, 2, 0x0400)  # a sleep type, kept beside SCI_EN
    apm.write(APM_CNT, 1, APM_ACPI_ENABLE)
    assert pm.read(PM1_CNT, 2) == 0x0400 | SCI_EN
    apm.write(APM_CNT, 1, APM_ACPI_ENABLE)
    assert pm.read(PM1_CNT, 2) == 0x0400 | SCI_EN
    apm.write(APM_CNT, 1, APM_ACPI_DISABLE)
    assert pm.read(PM1_CNT, 2) == 0x0400
    assert pm.smi_requests == 0


def test_other_commands_change_nothing_and_count_as_smi_only_with_apmc_en() -> None:
    pm, apm = pm_and_apm()
    assert pm.read(SMI_EN, 4) & SMI_EN_APMC  # as QEMU without SMM
    apm.write(APM_CNT, 1, 0x55)
    assert pm.read(PM1_CNT, 2) == 0 and pm.smi_requests == 1
    pm.write(SMI_EN, 4, 0)
    apm.write(APM_CNT, 1, 0x56)
    assert pm.smi_requests == 1 and apm.read(APM_CNT, 1) == 0x56


def test_apm_status_writes_are_not_commands() -> None:
    pm, apm = pm_and_apm()
    apm.write(APM_STS, 1, APM_ACPI_ENABLE)
    assert pm.read(PM1_CNT, 2) == 0

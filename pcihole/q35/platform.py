"""The q35 platform devices firmware uses, wired onto a VM's buses as QEMU 7.2 places them.

- PAM shadowing of 0xc0000-0xfffff (``q35.shadow``), which the MCH's PAM registers steer;
- the RTC/CMOS at 0x70 (IRQ 8), a 16550A at 0x3f8 (IRQ 4), the i8042 at 0x60/0x64
  (IRQs 1 and 12), fw_cfg at 0x510 with DMA at
  0x514 into guest RAM, port 0x92 and reset control at 0xcf9 (which shares the CF8
  ports' range: byte accesses at 0xcf9 are reset control, as on QEMU);
- the ACPI PM block wherever the ICH9 LPC's PMBASE/ACPI_CNTL put it, its SCI on the IRQ
  ACPI_CNTL selects (``lpc``, a config-write listener, when the machine has the LPC);
  the APM ports at 0xb2 (ACPI enable/disable through SMI_CMD).
Interrupt lines go to KVM's in-kernel PIC/IOAPIC (``KVM_IRQ_LINE``) when the VM has one.
What the guest asks of the machine (power off, reset) reaches ``on_stop`` with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pcihole import layout
from pcihole.arch.x86.linux import Item
from pcihole.bits import all_ones
from pcihole.devices.acpi_pm import AcpiPm
from pcihole.devices.apm import Apm
from pcihole.devices.cmos import Cmos
from pcihole.devices.debugcon import DebugConsole, Stamp
from pcihole.devices.fw_cfg import BootRom, FwCfg, FwCfgDevice
from pcihole.devices.i8042 import I8042
from pcihole.devices.irq import IrqLine, no_irq
from pcihole.devices.reset import Port92, ResetControl
from pcihole.devices.uart import Uart16550
from pcihole.machine.bus import BusDevice
from pcihole.q35 import mch
from pcihole.q35.lpc import ConfigReader, Ich9LpcDecoder
from pcihole.q35.shadow import ShadowMemory, pci_side
from pcihole.q35.shell import Q35Shell

RESET_CONTROL_OFFSET = layout.RESET_CONTROL_PORT - layout.PCI_CONFIG_ADDRESS_PORT

StopRequest = Callable[[str], None]
"""The guest asked the machine to stop; the argument says why (``POWER_OFF``, a reset)."""
POWER_OFF = "power-off"
"""The reason a run ends with when the guest powers off through ACPI (status 0)."""


CONFIG_PORT_MODES = ("always", "firmware")
"""``always``: CF8/CFC serve every guest, as on QEMU. ``firmware``: they are withdrawn once
the firmware fetches the kernel from fw_cfg, so the kernel configures PCI through ECAM."""
KERNEL_SELECTORS = frozenset({Item.KERNEL_DATA, Item.CMDLINE_DATA, Item.SETUP_SIZE})
"""fw_cfg items whose selection means the firmware is loading the kernel: SeaBIOS reads
none during POST. linuxboot_dma.bin reads the setup's size before its data; pcihole's PVH
ROM reads only the command line (its kernel is already in RAM)."""


def kernel_fetch(selector: int) -> bool:
    """Whether choosing this fw_cfg item means the firmware is fetching the kernel."""
    return selector in KERNEL_SELECTORS


class ConfigAndResetPorts:
    """CF8-CFF: the config mechanism, except byte accesses at 0xcf9 (reset control).

    Once ``withdraw``n, as crosvm's ``--break-linux-pci-config-io``: the address register
    and the data port read all ones and drop writes, so a kernel's type-1 probe (write
    0x80000000 to CF8, read it back) fails and it uses ECAM; reset control stays.
    """

    def __init__(self, config: BusDevice, reset: BusDevice) -> None:
        self.config = config
        self.reset = reset
        self.withdrawn = False
        self.withdrawn_accesses = 0
        """Accesses to the config ports after the withdrawal (each an exit)."""

    def withdraw(self) -> None:
        self.withdrawn = True

    def read(self, offset: int, size: int) -> int:
        if offset == RESET_CONTROL_OFFSET and size == 1:
            return self.reset.read(0, 1)
        if self.withdrawn:
            self.withdrawn_accesses += 1
            return all_ones(size)
        return self.config.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == RESET_CONTROL_OFFSET and size == 1:
            self.reset.write(0, 1, value)
        elif self.withdrawn:
            self.withdrawn_accesses += 1
        else:
            self.config.write(offset, size, value)


class Q35Platform:
    """Every platform device of a q35 machine but the PCI functions and the debug ports."""

    def __init__(
        self,
        shell: Q35Shell,
        *,
        lpc: ConfigReader | None,
        on_stop: StopRequest,
        serial: Callable[[bytes], None] | None = None,
        cpus: int = 1,
        config_ports: str = "always",
        clock: Callable[[], Stamp] | None = None,
        kernel: Mapping[int, bytes] | None = None,
        boot_rom: BootRom | None = None,
        acpi: Mapping[str, bytes] | None = None,
    ) -> None:
        """``config_ports`` is one of ``CONFIG_PORT_MODES``; ``clock`` stamps the serial lines
        and the withdrawal of CF8/CFC (``account``); ``acpi``: fw_cfg's ACPI files, or None."""
        self._watch(config_ports, clock, serial)
        assert shell.ram is not None
        vm, ports, mmio, ram = shell.vm, shell.ports, shell.mmio, shell.ram
        self.vm = vm
        self.ports = ports
        self.on_stop = on_stop
        self.irq_lines: dict[int, int] = {}
        """Every KVM_IRQ_LINE change sent, by IRQ."""
        self.shadow = ShadowMemory(vm, shell.slots, ram, pci_side(shell.image))
        mmio.add(mch.SHADOW_BASE, mch.SHADOW_SIZE, self.shadow, "pam-shadow")
        ram_layout, vcpu = shell.ram_layout, shell.vcpu_identity
        self.cmos = Cmos(ram=ram_layout, cpus=cpus, irq=self.irq(layout.CMOS_IRQ))
        ports.add(layout.CMOS_PORT, layout.CMOS_PORTS, self.cmos, "cmos")
        self.uart = Uart16550(self._serial_out, irq=self.irq(layout.SERIAL_COM1_IRQ))
        ports.add(layout.SERIAL_COM1_PORT, layout.SERIAL_PORTS, self.uart, "uart")
        config = FwCfg.q35(
            ram=ram_layout, vcpu=vcpu, cpus=cpus, kernel=kernel, boot_rom=boot_rom, acpi=acpi
        )
        self.fw_cfg = FwCfgDevice(config, ram, on_select=self._fw_cfg_selected)
        ports.add(layout.FW_CFG_PORT, layout.FW_CFG_PORTS, self.fw_cfg.io, "fw_cfg")
        ports.add(layout.FW_CFG_DMA_PORT, layout.FW_CFG_DMA_PORTS, self.fw_cfg.dma, "fw_cfg-dma")
        self.i8042 = I8042(
            lambda: on_stop("the guest reset the machine (i8042); a reset ends the run"),
            self.irq(layout.KEYBOARD_IRQ),
            self.irq(layout.MOUSE_IRQ),
        )
        ports.add(layout.I8042_PORT, layout.I8042_PORTS, self.i8042, "i8042")
        self.port92 = Port92(
            lambda: on_stop("the guest reset the machine (port 0x92); a reset ends the run")
        )
        ports.add(layout.PORT_92, 1, self.port92, "port92")
        self.reset_control = ResetControl(
            lambda: on_stop("the guest reset the machine (0xcf9); a reset ends the run")
        )
        self._sci_irq: int | None = None
        self._sci_level = False
        self.acpi_pm = AcpiPm(power_off=lambda: on_stop(POWER_OFF), sci=self._sci)
        self.apm = Apm(self.acpi_pm.apm_command)
        ports.add(layout.APM_PORT, layout.APM_PORTS, self.apm, "apm")
        self.pm_base: int | None = None
        self.lpc = None if lpc is None else self._lpc_decoder(lpc)

    def _watch(
        self, mode: str, clock: Callable[[], Stamp] | None, serial: Callable[[bytes], None] | None
    ) -> None:
        if mode not in CONFIG_PORT_MODES:
            raise ValueError(f"config ports mode must be one of {CONFIG_PORT_MODES}")
        self.config_ports_mode = mode
        self._config_ports: ConfigAndResetPorts | None = None
        self._clock = clock or (lambda: (0.0, 0, 0))
        self.withdrawal: Stamp | None = None
        """When CF8/CFC were withdrawn (mode ``firmware``)."""
        self.withdrawn_by: int | None = None
        """The fw_cfg selector that withdrew them."""
        self.serial_log = DebugConsole(clock=self._clock)
        """Serial lines, cut and stamped as the debug console's (fed byte by byte)."""
        self._serial = serial

    def config_ports(self, config: BusDevice) -> ConfigAndResetPorts:
        """The device to put on CF8-CFF: ``config`` there, reset control at 0xcf9."""
        self._config_ports = ConfigAndResetPorts(config, self.reset_control)
        return self._config_ports

    def _fw_cfg_selected(self, selector: int, name: str | None) -> None:
        ports = self._config_ports
        if self.config_ports_mode != "firmware" or ports is None or ports.withdrawn:
            return
        if kernel_fetch(selector):
            ports.withdraw()
            self.withdrawal, self.withdrawn_by = self._clock(), selector

    def _serial_out(self, data: bytes) -> None:
        for byte in data:
            self.serial_log.write(0, 1, byte)
        if self._serial is not None:
            self._serial(data)

    def account(self) -> dict[str, Any]:
        """What the platform saw, for ``--stats``: the config ports' mode and withdrawal,
        APM commands, every serial line."""
        ports, withdrawal = self._config_ports, self.withdrawal
        return {
            "config_ports": {
                "mode": self.config_ports_mode,
                "withdrawn": None
                if withdrawal is None
                else {
                    "seconds": round(withdrawal[0], 6),
                    "exits": withdrawal[1],
                    "selector": self.withdrawn_by,
                },
                "accesses_after_withdrawal": 0 if ports is None else ports.withdrawn_accesses,
            },
            "apm": {"commands": self.apm.commands, "smi_requests": self.acpi_pm.smi_requests},
            "serial_lines": [line.as_json() for line in self.serial_log.lines],
        }

    # --- interrupts ----------------------------------------------------------------------
    def irq(self, number: int) -> IrqLine:
        """A line into KVM's in-kernel interrupt controllers (nowhere without them)."""
        if not getattr(self.vm, "has_irqchip", False):
            return no_irq

        def line(level: bool) -> None:
            self.irq_lines[number] = self.irq_lines.get(number, 0) + 1
            self.vm.irq_line(number, int(level))

        return line

    def _route_sci(self, irq: int | None) -> None:
        if self._sci_irq is not None and self._sci_level:
            self.irq(self._sci_irq)(False)
        self._sci_irq = irq
        if irq is not None and self._sci_level:
            self.irq(irq)(True)

    def _sci(self, level: bool) -> None:
        self._sci_level = level
        if self._sci_irq is not None:
            self.irq(self._sci_irq)(level)

    # --- what the LPC's registers decide --------------------------------------------------
    def _lpc_decoder(self, lpc: ConfigReader) -> Ich9LpcDecoder:
        """A config-write listener for the LPC's registers: the PM block's place, the SCI."""
        return Ich9LpcDecoder(
            lpc,
            on_pm_base=self._place_pm,
            on_pirq=lambda _pirq, _irq: None,
            on_sci_irq=self._route_sci,
        )

    def _place_pm(self, base: int | None) -> None:
        if self.pm_base is not None:
            self.ports.remove(self.pm_base)
        self.pm_base = base
        if base is not None:
            self.ports.add(base, layout.ACPI_PM_SIZE, self.acpi_pm, "acpi-pm")

    def close(self) -> None:
        self.shadow.close()

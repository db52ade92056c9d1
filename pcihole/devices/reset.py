"""Reset control: system control port A (0x92) and the ICH9 reset control register (0xcf9).

Both are one idea, a guest asking the platform to reset, with QEMU's q35 behaviour
(``hw/i386/pc.c`` port92, ``hw/isa/lpc_ich9.c`` rst_cnt):

- port 0x92: bit 0 is a fast reset, requested on its rising edge only; bit 1 is the A20
  gate, kept and handed to an optional ``a20`` callback when it changes. Reads return
  the last write; a machine reset clears bit 0 and keeps A20.
- 0xcf9: a write with bit 2 (RST_CPU) set requests a reset and leaves the register alone;
  any other write keeps bits 1 (SYS_RST) and 3 (FULL_RST), which read back. A machine
  reset clears it.
"""

from __future__ import annotations

from collections.abc import Callable

PORT92_FAST_RESET = 0x01
"""Port 0x92 bit 0: a 0 -> 1 transition resets the machine."""
PORT92_A20 = 0x02
"""Port 0x92 bit 1: the A20 gate (1 = address line 20 enabled)."""

RST_CNT_SYS_RST = 0x02
"""0xcf9 bit 1: the next RST_CPU is a system reset (kept, no effect of its own)."""
RST_CNT_RST_CPU = 0x04
"""0xcf9 bit 2: writing 1 resets the machine."""
RST_CNT_FULL_RST = 0x08
"""0xcf9 bit 3: the next reset is a full power cycle (kept, no effect of its own)."""
RST_CNT_KEPT = RST_CNT_SYS_RST | RST_CNT_FULL_RST


class Port92:
    """System control port A, one byte at ``layout.PORT_92``."""

    def __init__(
        self, reset: Callable[[], None], a20: Callable[[bool], None] | None = None
    ) -> None:
        self._reset = reset
        self._a20 = a20
        self.value = 0
        """The byte last written (what a read returns)."""

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        old, self.value = self.value, value & 0xFF
        if self._a20 is not None and (old ^ self.value) & PORT92_A20:
            self._a20(bool(self.value & PORT92_A20))
        if self.value & PORT92_FAST_RESET and not old & PORT92_FAST_RESET:
            self._reset()

    def machine_reset(self) -> None:
        """State after a machine reset: the fast-reset bit clears, A20 stays."""
        self.value &= ~PORT92_FAST_RESET


class ResetControl:
    """The ICH9 RST_CNT register, one byte at ``layout.RESET_CONTROL_PORT``."""

    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self.value = 0
        """The kept bits (SYS_RST, FULL_RST), what a read returns."""

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        if value & RST_CNT_RST_CPU:
            self._reset()
            return
        self.value = value & RST_CNT_KEPT

    def machine_reset(self) -> None:
        self.value = 0

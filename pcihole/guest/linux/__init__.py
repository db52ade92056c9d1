"""Linux as a pcihole guest: the cache ``scripts/setup`` fills and the user space it boots.

The cache directory, ``${PCIHOLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pcihole}/linux/``,
holds Debian's cloud kernel as ``vmlinuz`` (bzImage) and ``vmlinux`` (the ELF with a PVH
note inside it), and ``initramfs.cpio``: Debian's busybox-static with this package's
``init``, which prints the guest's PCI view between marker lines (``view.py`` reads it)
and powers off through ACPI. The archive is not compressed: where guest ring 0 is
emulated, gunzipping its ~1 MiB took the kernel ~160 s.
"""

from __future__ import annotations

import os
from pathlib import Path

INIT_SCRIPT = Path(__file__).parent / "init"
INITRAMFS_NAME = "initramfs.cpio"
BZIMAGE_NAME = "vmlinuz"
VMLINUX_NAME = "vmlinux"
SETUP_HINT = "bash scripts/setup"


def cache_dir() -> Path:
    """Where ``scripts/setup`` puts the kernel and the initramfs (empty variables count
    as unset, as in the shell's ``${VAR:-default}``)."""
    base = os.environ.get("PCIHOLE_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "pcihole")
    return Path(base) / "linux"


TRACING_INITCALLS = (
    "trace_eval_init",
    "tracer_init_tracefs",
    "init_kprobe_trace",
    "ftrace_check_for_weak_functions",
)
"""Initcalls left out of ``--linux`` boots: they set up tracefs, which the initramfs never
uses, and cost ~100 s where guest ring 0 is emulated (shared/design/linux-guest.md)."""
COMMAND_LINE = "console=ttyS0 panic=-1 " + "initcall_blacklist=" + ",".join(TRACING_INITCALLS)
"""``--linux``'s own command line: the console on COM1, and a panic (init failing) reboots
at once, which ends the run, instead of waiting forever."""

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
KERNEL_PACKAGE_NAME = "kernel-package"
"""The file in the cache naming the Debian package the kernel came from."""
ROOT_PORT_DEVICES = (
    "00:1c.0=root-port,bus=1",
    "01:00.0=virtio-net",
    "00:1c.1=root-port,bus=2,slot=1",
    "02:00.0=nvme",
    "00:03.0=virtio-blk",
)
"""The machine the Linux boot test and benchmark boot (``--device`` values): root ports
with devices behind them and one beside them, on top of the q35 built-ins."""


def cache_dir() -> Path:
    """Where ``scripts/setup`` puts the kernel and the initramfs (empty variables count
    as unset, as in the shell's ``${VAR:-default}``)."""
    base = os.environ.get("PCIHOLE_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "pcihole")
    return Path(base) / "linux"


BLACKLISTED_INITCALLS = {
    # tracefs set-up: the initramfs never uses it; ~100 s where guest ring 0 is emulated
    "trace_eval_init": "tracefs",
    "tracer_init_tracefs": "tracefs",
    "init_kprobe_trace": "tracefs",
    "ftrace_check_for_weak_functions": "tracefs",
    # a BLAKE2s self-test over its test vectors: 22 s measured (initcall_debug)
    "blake2s_mod_init": "self-test",
    # nobody types: the serio probes behind it took 0.5-52 s each, ~200 s in all
    # (initcall_debug, 2026-12-05); without it there is no keyboard or mouse driver, and
    # a panic's reboot still reaches the controller's reset line directly
    "i8042_init": "PS/2 ports",
}
"""Initcalls ``--linux`` leaves out, each with what it would have set up."""
COMMAND_LINE = " ".join(
    (
        "console=ttyS0",
        # the first lines (before the console registers, ~90 s) reach the UART at once,
        # so every milestone's wall time means something
        "earlyprintk=serial,ttyS0,115200",
        # init failing panics and reboots at once, which ends the run, instead of a hang
        "panic=-1",
        "initcall_blacklist=" + ",".join(BLACKLISTED_INITCALLS),
        # the crypto API's self-tests of every algorithm registered: minutes, emulated
        "cryptomgr.notests",
        # the lockup detectors: emulated ring 0 looks like a lockup, and they add timers
        "nowatchdog",
    )
)
"""``--linux``'s own command line (before the user's ``--append`` and what the host needs,
``arch.x86.linux_cmdline``). No ``nokaslr``: a PVH entry skips the decompressor, which is
what randomizes the kernel's place."""

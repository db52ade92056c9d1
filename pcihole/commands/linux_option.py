"""``pcihole boot --linux``: the kernel and initramfs ``scripts/setup`` prepared.

It stands for ``--kernel CACHE/vmlinux --initrd CACHE/initramfs.cpio --append
'COMMAND_LINE [--append]' --serial stdio`` (unless ``--serial`` is given): the PVH vmlinux,
which skips the bzImage's decompressor (~70 s where guest ring 0 is emulated). What the
host needs on top (``noxsave``, ``clearcpuid=``) is added as for any ``--kernel``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pcihole.errors import BadInput, EnvironmentProblem
from pcihole.guest.linux import (
    COMMAND_LINE,
    INITRAMFS_NAME,
    SETUP_HINT,
    VMLINUX_NAME,
    cache_dir,
)

EXCLUSIVE = ("kernel", "initrd", "bios")


def add_linux_option(parser: Any) -> None:
    parser.add_argument(
        "--linux",
        action="store_true",
        help=f"boot Debian's kernel and the initramfs `{SETUP_HINT}` put in {cache_dir()} "
        "with the command line this host needs (--append adds to it)",
    )


def apply_linux_option(args: argparse.Namespace) -> None:
    """Fill ``--kernel``, ``--initrd``, ``--append`` and ``--serial`` for ``--linux``."""
    if not args.linux:
        return
    given = [f"--{name}" for name in EXCLUSIVE if getattr(args, name, None) is not None]
    if given:
        raise BadInput(f"--linux chooses the kernel and firmware itself: drop {', '.join(given)}")
    cache = cache_dir()
    kernel, initrd = cache / VMLINUX_NAME, cache / INITRAMFS_NAME
    missing = [path.name for path in (kernel, initrd) if not path.is_file()]
    if missing:
        raise EnvironmentProblem(f"no {' or '.join(missing)} in {cache}: run `{SETUP_HINT}`")
    args.kernel, args.initrd = str(kernel), str(initrd)
    args.append = COMMAND_LINE if not args.append else f"{COMMAND_LINE} {args.append}"
    if args.serial is None:
        args.serial = "stdio"

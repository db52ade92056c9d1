"""Pack the initramfs ``pcihole boot --linux`` runs: ``/init`` (this package's ``init``)
and Debian's statically linked busybox (package ``busybox-static``), as an uncompressed cpio
"newc" archive, the format the kernel unpacks (uncompressed: inflating it in emulated
guest ring 0 cost ~160 s of boot).

The archive is written here rather than by cpio(1) so that ``/dev/console`` (which the
kernel opens for init before init runs) can be a device node without root, and so that
the same inputs give the same bytes: every time stamp is 0. A run whose archive is
already up to date writes nothing.

    python3 -m pcihole.guest.linux.initramfs [--busybox FILE] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from pcihole.errors import EnvironmentProblem
from pcihole.guest.linux import INIT_SCRIPT, INITRAMFS_NAME, cache_dir

BUSYBOX = Path("/bin/busybox")
"""Where Debian's busybox-static installs its binary."""
APPLETS = ("sh", "mount", "cat", "od", "poweroff")
"""The busybox applets ``init`` runs, each a symlink in /bin."""
DIRECTORIES = ("bin", "dev", "proc", "sys")
CONSOLE_DEVICE = (5, 1)
"""/dev/console's major and minor numbers."""
NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def newc_entry(
    inode: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
) -> bytes:
    """One cpio newc member: header, NUL-ended name and data, each padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (
        inode,
        mode,
        0,
        0,
        2 if stat.S_ISDIR(mode) else 1,
        0,
        len(data),
        0,
        0,
        rdev[0],
        rdev[1],
        len(encoded),
        0,
    )
    header = NEWC_MAGIC + b"".join(b"%08x" % value for value in fields)
    return _pad(header + encoded) + _pad(data)


def archive(init: bytes, busybox: bytes) -> bytes:
    """The uncompressed newc archive of ``/init``, ``/bin/busybox`` and what they need."""
    members: list[tuple[str, int, bytes, tuple[int, int]]] = [
        *((directory, stat.S_IFDIR | 0o755, b"", (0, 0)) for directory in DIRECTORIES),
        ("dev/console", stat.S_IFCHR | 0o600, b"", CONSOLE_DEVICE),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox, (0, 0)),
        *((f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox", (0, 0)) for applet in APPLETS),
        ("init", stat.S_IFREG | 0o755, init, (0, 0)),
    ]
    body = b"".join(
        newc_entry(inode, name, mode, data, rdev)
        for inode, (name, mode, data, rdev) in enumerate(members, start=1)
    )
    return body + newc_entry(0, TRAILER, 0)


def build(output: Path, busybox: Path = BUSYBOX, init: Path = INIT_SCRIPT) -> bool:
    """Write the archive to ``output`` unless it already holds the same bytes;
    returns whether it wrote."""
    try:
        packed = archive(init.read_bytes(), busybox.read_bytes())
    except OSError as error:
        raise EnvironmentProblem(
            f"initramfs: cannot read {error.filename}: {error.strerror} "
            f"(busybox-static installs {BUSYBOX}: bash scripts/setup)"
        ) from error
    if output.is_file() and output.read_bytes() == packed:
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_bytes(packed)
    os.replace(partial, output)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pcihole.guest.linux.initramfs")
    parser.add_argument("--busybox", type=Path, default=BUSYBOX, help=f"default: {BUSYBOX}")
    parser.add_argument("--output", type=Path, default=cache_dir() / INITRAMFS_NAME)
    args = parser.parse_args(argv)
    try:
        wrote = build(args.output, args.busybox)
    except EnvironmentProblem as error:
        print(error, file=sys.stderr)
        return error.exit_status
    print(f"initramfs: {'wrote' if wrote else 'up to date:'} {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

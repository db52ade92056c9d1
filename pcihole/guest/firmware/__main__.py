"""``python -m pcihole.guest.firmware -o IMAGE``: build a firmware image for ``-bios``.

    python -m pcihole.guest.firmware -o enumerate.bin
    qemu-system-x86_64 -accel kvm -machine q35 -nodefaults -display none \\
        -bios enumerate.bin -chardev stdio,id=dbg \\
        -device isa-debugcon,iobase=0x402,chardev=dbg \\
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from pcihole.errors import USAGE_STATUS, PciholeError
from pcihole.guest.firmware import FirmwareOptions, write_firmware


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pcihole.guest.firmware", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-o", "--output", required=True, metavar="IMAGE")
    parser.add_argument("--name", default="enumerate", help="firmware source (NAME.S)")
    for option in fields(FirmwareOptions):
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=lambda text: int(text, 0),
            default=option.default,
            metavar="N",
        )
    args = parser.parse_args()
    values = {option.name: getattr(args, option.name) for option in fields(FirmwareOptions)}
    try:
        path = write_firmware(args.output, args.name, FirmwareOptions(**values))
    except OSError as error:
        print(f"firmware: error: {error}", file=sys.stderr)
        return USAGE_STATUS
    except PciholeError as error:
        print(f"firmware: {error.label}: {error}", file=sys.stderr)
        return error.exit_status
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

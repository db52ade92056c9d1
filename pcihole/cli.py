"""The ``pcihole`` command: a parser built from ``pcihole.commands``' table, one handler.

Every error a user can cause or meet is a ``PciholeError``: it becomes one line,
``pcihole CMD: error: ...``, and the exit status its class names (2 bad input, 1 a
problem of the environment), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pcihole.commands import COMMANDS
from pcihole.errors import USAGE_STATUS, PciholeError

INTERRUPTED_STATUS = 130
"""128 + SIGINT, as shells report a process stopped by ^C."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(USAGE_STATUS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pcihole", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except PciholeError as error:
        print(f"pcihole {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return INTERRUPTED_STATUS


if __name__ == "__main__":
    sys.exit(main())

"""The ``pcihole`` command: a parser built from ``pcihole.commands``' table, one handler.

Whatever ends a command becomes one line on stderr and the exit status of whoever is at
fault (``pcihole.errors``), never a traceback: a ``PciholeError`` as its class says
(``pcihole CMD: error: ...`` for bad input and the host, ``guest fault: ...``,
``internal error: ...``); an ``OSError`` nobody turned into one is the host's; any other
exception is a bug in pcihole, named with the file and line it came from.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from pcihole.commands import COMMANDS
from pcihole.errors import USAGE_STATUS, Bug, EnvironmentProblem, PciholeError

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
    except KeyboardInterrupt:
        return INTERRUPTED_STATUS
    except Exception as error:  # every kind, each to one line and its own status
        fault = classify(error)
        text = "; ".join(line.strip() for line in str(fault).splitlines() if line.strip())
        print(f"pcihole {args.command}: {fault.label}: {text}", file=sys.stderr)
        return fault.exit_status


def classify(error: Exception) -> PciholeError:
    """``error`` as the ``PciholeError`` of whoever is at fault: itself if it is one, the
    host's for an ``OSError``, else a ``Bug`` saying what was raised where."""
    if isinstance(error, PciholeError):
        return error
    if isinstance(error, OSError):
        return EnvironmentProblem(str(error))
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    if frames:
        path = Path(frames[-1].filename)
        home = Path(__file__).parent.parent
        shown = path.relative_to(home) if path.is_relative_to(home) else path
        where = f" at {shown}:{frames[-1].lineno}"
    return Bug(f"{type(error).__name__}: {error}{where}")


if __name__ == "__main__":
    sys.exit(main())

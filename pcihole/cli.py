"""The ``pcihole`` command: thin subcommands over the library.

Bad input exits with status 2 and one line naming what was wrong; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pcihole import hostinfo

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def int_in_range(name: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer (decimal or 0x hex) within [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {low} to {high}, got {value}")
        return value

    return parse


# --- info ------------------------------------------------------------------------------
def _cmd_info(args: argparse.Namespace) -> int:
    facts = hostinfo.collect()
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
        return 0
    print(f"KVM API version      {facts['api_version']}")
    print("capabilities")
    for name, value in facts["capabilities"].items():
        print(f"  {name:<18} {value}")
    print(f"vm.max_map_count     {facts['max_map_count']}")
    huge = facts["huge_pages"]
    print("huge pages")
    print(f"  THP, anonymous     {huge['thp_anonymous']}")
    print(f"  THP, shmem         {huge['thp_shmem']}")
    print(
        f"  hugetlb            {huge['hugetlb_free']} free of {huge['hugetlb_total']}"
        f" ({huge['hugetlb_page_kib']} KiB each)"
    )
    if not huge["hugetlb_free"]:
        print(
            "  hint: one reserved 2 MiB huge page lets one all-ones page serve every VM on"
            " the host with 2 MiB mappings; as root: sysctl vm.nr_hugepages=1"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pcihole", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = commands.add_parser("info", help="what this host's KVM offers pcihole")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as error:
        print(f"pcihole {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``pcihole serve-holes``: hand the sealed all-ones memfd to every monitor on the host."""

from __future__ import annotations

import argparse
import grp
from typing import Any

from pcihole.commands.options import check_socket_path
from pcihole.errors import BadInput
from pcihole.holes.service import main_serve

NAME = "serve-holes"


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve-holes", help="hand the sealed all-ones memfd to monitors")
    serve.add_argument("--socket", required=True, metavar="PATH")
    serve.add_argument("--backing", choices=["auto", "hugetlb", "memfd"], default="auto")
    serve.add_argument("--group", help="group allowed to connect (socket mode 0660)")
    serve.add_argument(
        "--reserve-hugepage",
        action="store_true",
        help="as root: add one 2 MiB page to the hugetlb pool for the chunk while serving "
        "(clients get a hugetlb window: few memslots, 2 MiB first touch); given back at exit",
    )
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_socket_path("--socket", args.socket)
    if args.group is not None and not args.group.isdigit():
        try:
            grp.getgrnam(args.group)
        except KeyError:
            raise BadInput(f"--group: no such group {args.group!r}") from None
    backing = None if args.backing == "auto" else args.backing
    if args.reserve_hugepage and backing not in (None, "hugetlb"):
        raise BadInput(f"--reserve-hugepage serves hugetlb, not --backing {backing}")
    return main_serve(args.socket, backing, args.group, reserve_hugepage=args.reserve_hugepage)

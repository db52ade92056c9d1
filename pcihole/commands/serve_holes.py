"""``pcihole serve-holes``: hand the sealed all-ones memfd to every monitor on the host.

The options are checked once (``checked_backing``, the socket path, the group), then
``main_serve`` makes a shareable source (growing the hugetlb pool by one page with
``--reserve-hugepage``) and runs the server (``pcihole.holes.service.serve``) until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import sys
from types import FrameType
from typing import Any

from pcihole.commands.options import check_socket_path
from pcihole.errors import BadInput
from pcihole.holes.service import HoleServiceError, describe, on_stop_signals, serve
from pcihole.holes.source import (
    AllOnesSource,
    Backing,
    HoleSourceError,
    HugePageReservation,
    reserve_huge_pages,
    seal_text,
)

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
    return main_serve(args.socket, backing, args.group, reserve_hugepage=args.reserve_hugepage)


def checked_backing(backing: str | None, *, reserve_hugepage: bool) -> Backing | None:
    """The backing to serve (None: the best available); ``BadInput`` naming the option."""
    try:
        wanted = Backing.parse(backing) if backing else None
    except ValueError as exc:
        raise BadInput(f"--backing: {exc}") from None
    if wanted is Backing.THP:
        raise BadInput("--backing: thp has no fd and cannot be shared; use hugetlb or memfd")
    if reserve_hugepage and wanted not in (None, Backing.HUGETLB):
        raise BadInput(f"--reserve-hugepage serves hugetlb, not --backing {wanted.value}")
    return wanted


class _Stopped(Exception):
    """SIGTERM/SIGINT arrived before the service was listening."""


def _raise_on_signals() -> contextlib.AbstractContextManager[None]:
    """Turn SIGTERM/SIGINT into :class:`_Stopped` (main thread only), so that what the
    command holds (a reserved huge page) is given back by its ``finally`` blocks."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(f"signal {signum}")

    return on_stop_signals(handler)


def main_serve(
    socket_path: str, backing: str | None, group: str | None, *, reserve_hugepage: bool = False
) -> int:
    """``pcihole serve-holes``: create a shareable source and serve it until SIGTERM/SIGINT.

    Errors are raised (``BadInput`` for the options, ``HoleSourceError`` or
    ``HoleServiceError`` for the host); ``pcihole.cli`` reports them in one line.

    With ``reserve_hugepage`` (root), first grow the 2 MiB hugetlb pool by one page, serve
    a hugetlb source from it, and shrink the pool by that page again when stopping, so that
    clients get a hugetlb window (one memslot per run of holes, 2 MiB first touch) without
    anyone setting ``vm.nr_hugepages`` by hand.
    """
    wanted = checked_backing(backing, reserve_hugepage=reserve_hugepage)
    reservation: HugePageReservation | None = None
    try:
        with _raise_on_signals():
            try:
                if reserve_hugepage:
                    reservation = reserve_huge_pages(1)
                    before = reservation.before
                    print(
                        f"serve-holes: reserved one 2 MiB huge page ({reservation.path}: "
                        f"{before} -> {before + 1}); it is given back when the service stops",
                        flush=True,
                    )
                    wanted = Backing.HUGETLB
                return _serve_new_source(socket_path, wanted, group)
            finally:
                if reservation is not None:
                    _give_back(reservation)
    except _Stopped as stopped:
        raise HoleServiceError(f"stopped by {stopped} before serving") from None


def _give_back(reservation: HugePageReservation) -> None:
    try:
        now, after = reservation.release()
    except HoleSourceError as exc:
        print(f"serve-holes: {exc}", file=sys.stderr)
        return
    print(
        f"serve-holes: gave back the huge page it reserved ({reservation.path}: {now} -> {after})",
        file=sys.stderr,
        flush=True,
    )


def _serve_new_source(socket_path: str, wanted: Backing | None, group: str | None) -> int:
    try:
        source = AllOnesSource.create(wanted, shareable=True)
    except OSError as exc:
        raise HoleServiceError(f"cannot make the all-ones memory: {exc}") from None
    with source:

        def announce() -> None:
            print(
                f"serving {describe(source)} sealed {seal_text(source.seals)} on {socket_path}",
                flush=True,
            )

        # A group is given so that its members can connect: rw for the group too.
        mode = 0o600 if group is None else 0o660
        stats = serve(socket_path, source, mode=mode, group=group, on_ready=announce)
    print(
        f"serve-holes: stopped after serving {stats.served} client(s), refusing {stats.refused}",
        file=sys.stderr,
    )
    return 0

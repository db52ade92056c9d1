"""The monitor's side: fetch the sealed memfd from the service, trusting nothing it is
told (seals, size, kind and every byte are checked), or fall back to a private source."""

from __future__ import annotations

import array
import json
import os
import socket

from pcihole.holes.service.protocol import (
    DEFAULT_TIMEOUT,
    MAX_HEADER,
    PROTOCOL_VERSION,
    REQUEST,
    HoleServiceError,
    describe,
)
from pcihole.holes.source import REQUIRED_SEALS, AllOnesSource, Backing, HoleSourceError


def connect(
    socket_path: str, timeout: float = DEFAULT_TIMEOUT, *, backing: Backing | None = None
) -> AllOnesSource:
    """Fetch the all-ones source from the service at ``socket_path``.

    Seals (WRITE|SHRINK|GROW|SEAL), size (fstat against the header) and kind are checked
    before the fd is mapped, the content after it is mapped read-only. ``backing``, when
    given, must match what the service has. Any failure raises :class:`HoleServiceError`.
    """
    where = f"hole service at {socket_path}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    fds: list[int] = []
    try:
        try:
            sock.connect(socket_path)
            sock.sendall(REQUEST)
            data, fds, flags = _recv_with_fds(sock, MAX_HEADER, 4)
            while b"\n" not in data and len(data) < MAX_HEADER:
                more = sock.recv(MAX_HEADER - len(data))
                if not more:
                    break
                data += more
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise HoleServiceError(f"cannot reach the {where}: {reason}") from exc
        if flags & socket.MSG_CTRUNC:
            raise HoleServiceError(f"{where}: control data truncated (too many fds)")
        line = data.partition(b"\n")[0]
        if line.startswith(b"ERROR"):
            text = line.decode("utf-8", "replace")
            raise HoleServiceError(f"{where} refused the request: {text}")
        size, served_backing = _parse_header(line, where)
        if backing is not None and served_backing is not backing:
            raise HoleServiceError(
                f"{where} serves {served_backing.value}, not the requested {backing.value}"
            )
        if len(fds) != 1:
            raise HoleServiceError(f"{where} sent {len(fds)} fds instead of one")
        fd = fds.pop()
        try:
            return AllOnesSource.adopt_fd(
                fd, backing=served_backing, reason=f"shared by the {where}", expected_size=size
            )
        except (HoleSourceError, OSError) as exc:
            raise HoleServiceError(f"{where} sent an unacceptable source: {exc}") from exc
    finally:
        for extra in fds:
            os.close(extra)
        sock.close()


def _recv_with_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int], int]:
    """recvmsg taking SCM_RIGHTS fds close-on-exec (socket.recv_fds drops its flags)."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(
        bufsize, socket.CMSG_SPACE(maxfds * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), flags


def _parse_header(line: bytes, where: str) -> tuple[int, Backing]:
    try:
        header = json.loads(line)
    except ValueError:
        raise HoleServiceError(f"{where} sent a malformed header {line[:80]!r}") from None
    if not isinstance(header, dict) or header.get("protocol") != PROTOCOL_VERSION:
        raise HoleServiceError(f"{where} speaks an unknown protocol: {line[:80]!r}")
    size, backing_name, seals = header.get("size"), header.get("backing"), header.get("seals")
    if not isinstance(size, int) or not isinstance(backing_name, str):
        raise HoleServiceError(f"{where} sent a header without size/backing: {line[:80]!r}")
    if not isinstance(seals, int) or seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise HoleServiceError(f"{where} announces seals {seals!r}, not {REQUIRED_SEALS!s}")
    try:
        backing = Backing(backing_name)
    except ValueError:
        raise HoleServiceError(f"{where} announces unknown backing {backing_name!r}") from None
    if not backing.shareable:
        raise HoleServiceError(f"{where} announces {backing.value}, which cannot be shared")
    return size, backing


def obtain_source(
    socket_path: str | None,
    backing: Backing | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[AllOnesSource, str]:
    """The shared source from the service if possible, else a private one; and why.

    ``socket_path`` None means no service. A THP request never goes to the service (THP
    cannot be shared). When the service is unreachable, refuses, sends something that fails
    verification, or has another backing than a forced ``backing``, a private source is
    created instead; :class:`HoleSourceError` is raised only if that fails too.
    """
    if backing is Backing.THP:
        private = AllOnesSource.create(backing)
        return private, f"private thp source (THP cannot be shared): {private.reason}"
    if socket_path is None:
        private = AllOnesSource.create(backing)
        return private, f"no hole service given; private {describe(private)}"
    where = f"hole service at {socket_path}"
    try:
        shared = connect(socket_path, timeout, backing=backing)
    except HoleServiceError as exc:
        private = AllOnesSource.create(backing)
        return private, f"{exc}; using a private {describe(private)}"
    return shared, f"shared {describe(shared, reason=False)} from the {where}"

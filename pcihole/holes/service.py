"""The host-wide hole service: one sealed all-ones memfd handed to every VM process.

Protocol (Unix stream socket, one exchange per connection):

- client sends exactly ``PCIHOLE-GET-ALLONES 1\\n``;
- service answers one JSON line ``{"protocol": 1, "size": N, "backing": "memfd",
  "seals": S}`` with the memfd attached (SCM_RIGHTS), then closes;
- anything else gets ``ERROR <reason>\\n`` and the connection is closed.

The client trusts nothing it is told: it checks the fd's real seals, size and kind before
mapping it, and every byte after mapping it read-only (:meth:`AllOnesSource.adopt_fd`).
Because the memfd is sealed, one host copy of the chunk then backs the holes of every VM
on the host. THP sources have no fd and are never served.
"""

from __future__ import annotations

import array
import contextlib
import grp
import json
import logging
import os
import selectors
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from pcihole.errors import BadInput, EnvironmentProblem
from pcihole.holes.source import (
    REQUIRED_SEALS,
    AllOnesSource,
    Backing,
    HoleSourceError,
    HugePageReservation,
    reserve_huge_pages,
    seal_text,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
REQUEST = b"PCIHOLE-GET-ALLONES 1\n"
"""The one request the service answers."""
MAX_HEADER = 4096
"""Longest reply line a client accepts."""
DEFAULT_TIMEOUT = 2.0
"""Seconds a client waits for the service (and the service for a client's request)."""
STOP_POLL_SECONDS = 0.1
"""How often the accept loop looks at its stop event."""


class HoleServiceError(EnvironmentProblem):
    """The hole service could not be started, reached, or sent something unacceptable."""


@dataclass
class ServiceStats:
    """What a :func:`serve` run did, counted where it happened."""

    served: int = 0
    """Clients that received the fd."""
    refused: int = 0
    """Connections refused (bad or missing request)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, *, served: bool) -> None:
        with self._lock:
            if served:
                self.served += 1
            else:
                self.refused += 1


# -- service ------------------------------------------------------------------------------


def serve(
    socket_path: str,
    source: AllOnesSource,
    *,
    mode: int = 0o600,
    group: str | int | None = None,
    stop_event: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> ServiceStats:
    """Hand ``source``'s sealed memfd to every client until stopped.

    The socket file gets ``mode`` (and ``group``, a name or gid, when given) before it
    listens; a stale socket file is replaced, a live one or a non-socket refused. Stops
    when ``stop_event`` is set, or on SIGTERM/SIGINT when called from the main thread;
    the socket file is removed then. ``on_ready`` is called once clients can connect.
    """
    if source.fd is None:
        raise HoleServiceError(f"a {source.backing.value} source has no fd and cannot be served")
    try:
        source.verify()
    except HoleSourceError as exc:
        raise HoleServiceError(f"refusing to serve a bad source: {exc}") from exc
    stop = stop_event if stop_event is not None else threading.Event()
    stats = ServiceStats()
    listener, inode = _listen(socket_path, mode, group)
    workers: list[threading.Thread] = []
    try:
        with _stop_on_signals(stop), selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            if on_ready is not None:
                on_ready()
            log.info("serving %s all-ones source on %s", source.backing.value, socket_path)
            while not stop.is_set():
                if not selector.select(timeout=STOP_POLL_SECONDS):
                    continue
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # e.g. EMFILE: keep serving those already connected
                    log.warning("accept on %s failed: %s", socket_path, exc)
                    stop.wait(STOP_POLL_SECONDS)
                    continue
                worker = threading.Thread(
                    target=_answer, args=(conn, source, stats), name="pcihole-hole-client"
                )
                worker.daemon = True
                worker.start()
                workers = [w for w in workers if w.is_alive()]
                workers.append(worker)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.lstat(socket_path).st_ino == inode:
                os.unlink(socket_path)
        for worker in workers:
            worker.join(DEFAULT_TIMEOUT)
    return stats


def _listen(path: str, mode: int, group: str | int | None) -> tuple[socket.socket, int]:
    gid = _group_id(group)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    bound = False
    try:
        old_umask = os.umask(0o177)  # the file is born rw------- at most
        try:
            sock.bind(path)
            bound = True
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        inode = os.lstat(path).st_ino
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise HoleServiceError(f"cannot listen on {path}: {exc}") from exc
    return sock, inode


def _group_id(group: str | int | None) -> int | None:
    if group is None or isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HoleServiceError(f"no such group {group!r}") from None


def _remove_stale_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HoleServiceError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(DEFAULT_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HoleServiceError(f"cannot tell whether {path} is in use: {exc}") from exc
    finally:
        probe.close()
    raise HoleServiceError(f"a service is already listening on {path}")


@contextlib.contextmanager
def _on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` takes SIGTERM/SIGINT while inside (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_on_signals(stop: threading.Event) -> contextlib.AbstractContextManager[None]:
    """Set ``stop`` on SIGTERM/SIGINT while inside."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    return _on_stop_signals(handler)


def _read_request(conn: socket.socket) -> bytes:
    """Bytes up to and including the first newline, or what came before EOF/too much."""
    data = b""
    while b"\n" not in data and len(data) <= len(REQUEST):
        chunk = conn.recv(len(REQUEST) + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _linger(conn: socket.socket) -> None:
    """Close politely: unread input would turn our close into a reset that eats the reply."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(STOP_POLL_SECONDS)
    with contextlib.suppress(OSError):
        for _ in range(16):
            if not conn.recv(4096):
                break


def _answer(conn: socket.socket, source: AllOnesSource, stats: ServiceStats) -> None:
    with conn:
        try:
            conn.setblocking(True)
            conn.settimeout(DEFAULT_TIMEOUT)
            request = _read_request(conn)
            if request != REQUEST:
                shown = ascii(request[:64]) if request else "nothing"
                log.warning("refused a client: bad request %s", shown)
                stats.count(served=False)
                reply = f"ERROR bad request: expected {REQUEST!a}, got {shown}\n"
                conn.sendall(reply.encode())
                _linger(conn)
                return
            fd = source.fd
            assert fd is not None
            header = {
                "protocol": PROTOCOL_VERSION,
                "size": source.size,
                "backing": source.backing.value,
                "seals": int(source.seals),
            }
            socket.send_fds(conn, [json.dumps(header).encode() + b"\n"], [fd])
            stats.count(served=True)
        except (OSError, HoleSourceError) as exc:
            log.warning("hole client dropped: %s", exc)


# -- client -------------------------------------------------------------------------------


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
        return private, f"no hole service given; private {_describe(private)}"
    where = f"hole service at {socket_path}"
    try:
        shared = connect(socket_path, timeout, backing=backing)
    except HoleServiceError as exc:
        private = AllOnesSource.create(backing)
        return private, f"{exc}; using a private {_describe(private)}"
    return shared, f"shared {_describe(shared, reason=False)} from the {where}"


def _describe(source: AllOnesSource, *, reason: bool = True) -> str:
    size = source.size
    text = f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size >> 10} KiB"
    why = f"; {source.reason}" if reason else ""
    return f"{source.backing.value} source ({text}{why})"


# -- command ------------------------------------------------------------------------------


class _Stopped(Exception):
    """SIGTERM/SIGINT arrived before the service was listening."""


def _raise_on_signals() -> contextlib.AbstractContextManager[None]:
    """Turn SIGTERM/SIGINT into :class:`_Stopped` (main thread only), so that what the
    command holds (a reserved huge page) is given back by its ``finally`` blocks."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(f"signal {signum}")

    return _on_stop_signals(handler)


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
    try:
        wanted = Backing.parse(backing) if backing else None
    except ValueError as exc:
        raise BadInput(f"--backing: {exc}") from None
    if wanted is Backing.THP:
        raise BadInput("--backing: thp has no fd and cannot be shared; use hugetlb or memfd")
    if reserve_hugepage and wanted not in (None, Backing.HUGETLB):
        raise BadInput(f"--reserve-hugepage serves hugetlb, not {wanted.value}")
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
                f"serving {_describe(source)} sealed {seal_text(source.seals)} on {socket_path}",
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

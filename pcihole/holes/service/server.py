"""The service's side: listen on a Unix socket and hand the sealed memfd to each client
that asks (``protocol.py`` says how), until stopped."""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import selectors
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from pcihole.holes.service.protocol import (
    DEFAULT_TIMEOUT,
    PROTOCOL_VERSION,
    REQUEST,
    HoleServiceError,
)
from pcihole.holes.source import AllOnesSource, HoleSourceError

log = logging.getLogger(__name__)

STOP_POLL_SECONDS = 0.1
"""How often the accept loop looks at its stop event."""


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
def on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
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

    return on_stop_signals(handler)


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

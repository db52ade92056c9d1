"""The hole service and its client: one sealed memfd shared by every process that asks."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcihole.commands.serve_holes import main_serve
from pcihole.errors import BadInput
from pcihole.holes import source as source_mod
from pcihole.holes.service import (
    REQUEST,
    HoleServiceError,
    ServiceStats,
    connect,
    obtain_source,
    serve,
)
from pcihole.holes.source import (
    REQUIRED_SEALS,
    AllOnesSource,
    Backing,
    HoleSourceError,
    Seal,
    add_seals,
)
from pcihole.host import mem as hostmem
from pcihole.layout import HUGE_PAGE_SIZE, PAGE_SIZE
from tests.support import CHILD_ENV, frame_of, join


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A socket path short enough for AF_UNIX (108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ph-", dir="/tmp") as d:
        yield os.path.join(d, "holes.sock")


@dataclass
class Running:
    path: str
    source: AllOnesSource
    stats: list[ServiceStats]


def _start(
    path: str, src: AllOnesSource, *, mode: int = 0o600, group: str | None = None
) -> tuple[threading.Thread, threading.Event, list[ServiceStats]]:
    stop, ready = threading.Event(), threading.Event()
    results: list[ServiceStats] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stats = serve(path, src, mode=mode, group=group, stop_event=stop, on_ready=ready.set)
            results.append(stats)
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "service did not start"
    if errors:
        raise errors[0]
    return thread, stop, results


@pytest.fixture
def service(sock_path: str) -> Iterator[Running]:
    """A memfd source served from a thread of this process."""
    with AllOnesSource.create(Backing.MEMFD) as src:
        thread, stop, results = _start(sock_path, src)
        try:
            yield Running(sock_path, src, results)
        finally:
            stop.set()
            join(thread, "the service")
    assert not os.path.exists(sock_path), "socket file left behind"


def _open_fds() -> set[str]:
    """This process's open memfds (sockets come and go with the service's threads)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            found.add(f"{name}:{target}")
    return found


def _raw_exchange(path: str, request: bytes) -> tuple[bytes, list[int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect(path)
        if request:
            c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        data, fds, _, _ = socket.recv_fds(c, 4096, 4)
        while more := c.recv(4096):
            data += more
    for fd in fds:
        os.close(fd)
    return data, fds


# -- the happy path -----------------------------------------------------------------------


def test_client_gets_the_very_same_sealed_file(service: Running) -> None:
    before = _open_fds()
    with connect(service.path) as got:
        assert got.backing is Backing.MEMFD
        assert got.size == service.source.size
        assert got.fd is not None and got.fd != service.source.fd
        assert got.seals & REQUIRED_SEALS == REQUIRED_SEALS
        assert "hole service" in got.reason
        # Same inode: one file, one copy of the chunk, two mappings.
        assert os.fstat(got.fd).st_ino == os.fstat(service.source.fd or -1).st_ino
        assert os.get_inheritable(got.fd) is False
        got.verify()
    assert _open_fds() == before


def test_many_clients_at_once(service: Running) -> None:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            connect(service.path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        join(t)
    assert errors == []


def test_socket_is_private_by_default(service: Running) -> None:
    st = os.lstat(service.path)
    assert st.st_mode & 0o777 == 0o600
    assert st.st_uid == os.geteuid()


def test_mode_and_group(sock_path: str) -> None:
    others = [g for g in grp.getgrall() if g.gr_gid != os.getegid()]
    if os.geteuid() != 0 or not others:
        pytest.skip("changing a socket's group needs root and another group")
    group = others[0]
    with AllOnesSource.create(Backing.MEMFD) as src:
        thread, stop, _ = _start(sock_path, src, mode=0o660, group=group.gr_name)
        try:
            st = os.lstat(sock_path)
            assert st.st_mode & 0o777 == 0o660
            assert st.st_gid == group.gr_gid
        finally:
            stop.set()
            join(thread)
    with AllOnesSource.create(Backing.MEMFD) as src, pytest.raises(HoleServiceError, match="group"):
        serve(sock_path, src, group="no-such-group-pcihole", stop_event=threading.Event())


# -- refusals by the service --------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"PCIHOLE-GET-ALLONES 2\n",
        b"pcihole-get-allones 1\n",
        REQUEST.strip(),
        REQUEST + b"more",
        b"GET / HTTP/1.0\r\n\r\n",
        b"",
    ],
    ids=["version-2", "lowercase", "no-newline", "trailing", "http", "empty"],
)
def test_bad_requests_get_an_error_line_and_no_fd(service: Running, request_bytes: bytes) -> None:
    data, fds = _raw_exchange(service.path, request_bytes)
    assert fds == []
    assert data.startswith(b"ERROR bad request")
    assert data.endswith(b"\n") and data.count(b"\n") == 1


def test_refusals_and_servings_are_counted(sock_path: str) -> None:
    with AllOnesSource.create(Backing.MEMFD) as src:
        thread, stop, results = _start(sock_path, src)
        _raw_exchange(sock_path, b"nope\n")
        connect(sock_path).close()
        connect(sock_path).close()
        stop.set()
        join(thread)
    assert (results[0].served, results[0].refused) == (2, 1)


def test_thp_is_never_served(sock_path: str) -> None:
    if source_mod.unavailable_reason(Backing.THP):
        pytest.skip(str(source_mod.unavailable_reason(Backing.THP)))
    with AllOnesSource.create(Backing.THP) as src, pytest.raises(HoleServiceError, match="no fd"):
        serve(sock_path, src, stop_event=threading.Event())
    assert not os.path.exists(sock_path)


# -- the socket file ----------------------------------------------------------------------


def test_stale_socket_is_replaced(sock_path: str) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens
    with AllOnesSource.create(Backing.MEMFD) as src:
        thread, stop, _ = _start(sock_path, src)
        connect(sock_path).close()
        stop.set()
        join(thread)
    assert not os.path.exists(sock_path)


def test_live_socket_and_other_files_are_left_alone(service: Running, sock_path: str) -> None:
    with AllOnesSource.create(Backing.MEMFD) as src:
        with pytest.raises(HoleServiceError, match="already listening"):
            serve(service.path, src, stop_event=threading.Event())
        connect(service.path).close()  # the first service is untouched
        plain = sock_path + ".txt"
        Path(plain).write_text("keep me")
        with pytest.raises(HoleServiceError, match="not a socket"):
            serve(plain, src, stop_event=threading.Event())
        assert Path(plain).read_text() == "keep me"
        os.unlink(plain)


# -- the client refuses bad services ------------------------------------------------------


def _memfd(content: bytes, seals: Seal | None = REQUIRED_SEALS) -> int:
    fd = os.memfd_create("fake", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.pwrite(fd, content, 0)
    if seals:
        add_seals(fd, seals)
    return fd


def _header(size: int, backing: str = "memfd", seals: int = int(REQUIRED_SEALS)) -> bytes:
    return json.dumps({"protocol": 1, "size": size, "backing": backing, "seals": seals}).encode()


Reply = Callable[[], tuple[bytes, list[int]]]
GOOD = b"\xff" * 4 * PAGE_SIZE

FAKE_REPLIES: dict[str, tuple[Reply, str]] = {
    "unsealed": (lambda: (_header(len(GOOD)) + b"\n", [_memfd(GOOD, None)]), "lacks seals"),
    "no-seal-seal": (
        lambda: (_header(len(GOOD)) + b"\n", [_memfd(GOOD, REQUIRED_SEALS & ~Seal.SEAL)]),
        "lacks seals SEAL",
    ),
    "tampered": (
        lambda: (_header(len(GOOD)) + b"\n", [_memfd(GOOD[:-1] + b"\x7f")]),
        "not all 0xff",
    ),
    "size-lie": (lambda: (_header(2 * len(GOOD)) + b"\n", [_memfd(GOOD)]), "expected 0x8000"),
    "hugetlb-lie": (
        lambda: (_header(len(GOOD), "hugetlb") + b"\n", [_memfd(GOOD)]),
        "not a positive multiple of 0x200000",
    ),
    "thp": (lambda: (_header(len(GOOD), "thp") + b"\n", [_memfd(GOOD)]), "cannot be shared"),
    "seals-announced-missing": (
        lambda: (_header(len(GOOD), seals=8) + b"\n", [_memfd(GOOD)]),
        "announces seals",
    ),
    "two-fds": (lambda: (_header(len(GOOD)) + b"\n", [_memfd(GOOD), _memfd(GOOD)]), "2 fds"),
    "no-fd": (lambda: (_header(len(GOOD)) + b"\n", []), "0 fds"),
    "garbage": (lambda: (b"hello there\n", [_memfd(GOOD)]), "malformed header"),
    "old-protocol": (lambda: (b'{"protocol": 0}\n', []), "unknown protocol"),
    "error": (lambda: (b"ERROR busy\n", []), "refused the request: ERROR busy"),
    "silent": (lambda: (b"", []), "header"),
}


@pytest.mark.parametrize("case", sorted(FAKE_REPLIES))
def test_client_refuses_a_bad_service(sock_path: str, case: str) -> None:
    make_reply, expected = FAKE_REPLIES[case]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)

    def fake() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(100)
            data, fds = make_reply()
            if fds:
                socket.send_fds(conn, [data], fds)
                for fd in fds:
                    os.close(fd)
            elif data:
                conn.sendall(data)

    before = _open_fds()
    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    try:
        with pytest.raises(HoleServiceError, match=expected):
            connect(sock_path, timeout=5)
    finally:
        join(thread)
    assert _open_fds() == before, "received fds leaked"
    listener.close()


# -- fall-back ----------------------------------------------------------------------------


def test_fallback_when_there_is_no_service(sock_path: str) -> None:
    src, why = obtain_source(sock_path, Backing.MEMFD)
    with src:
        assert src.backing is Backing.MEMFD
        assert "cannot reach the hole service" in why
        assert "No such file or directory" in why
        assert "private memfd source" in why
    src, why = obtain_source(None, Backing.MEMFD)
    with src:
        assert why.startswith("no hole service given; private memfd source")


def test_obtain_prefers_the_service(service: Running) -> None:
    src, why = obtain_source(service.path)
    with src:
        assert os.fstat(src.fd or -1).st_ino == os.fstat(service.source.fd or -1).st_ino
        assert why == f"shared memfd source (2 MiB) from the hole service at {service.path}"


def test_obtain_falls_back_on_backing_mismatch_and_for_thp(
    service: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source_mod.unavailable_reason(Backing.THP) is None:
        src, why = obtain_source(service.path, Backing.THP)
        with src:
            assert src.backing is Backing.THP
            assert "THP cannot be shared" in why
    with pytest.raises(HoleServiceError, match="serves memfd, not the requested hugetlb"):
        connect(service.path, backing=Backing.HUGETLB)
    monkeypatch.setattr(source_mod, "free_huge_pages", lambda: 0)
    with pytest.raises(HoleSourceError, match="hugetlb backing unavailable"):
        obtain_source(service.path, Backing.HUGETLB)


# -- one copy for many processes ----------------------------------------------------------

CHILD = """
import sys
from pcihole.host import mem as hostmem
from pcihole.holes.service import connect
src = connect(sys.argv[1])
assert hostmem.is_filled(src.address, src.size)  # touches every page of the chunk
print(src.address, flush=True)
sys.stdin.readline()
src.close()
"""


def _children(path: str, n: int) -> list[tuple[subprocess.Popen[str], int]]:
    kids = []
    for _ in range(n):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CHILD_ENV,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"child failed: {err}")
        kids.append((proc, int(line)))
    return kids


def _release(kids: list[tuple[subprocess.Popen[str], int]]) -> None:
    for proc, _ in kids:
        _, err = proc.communicate("\n", timeout=20)
        assert proc.returncode == 0, err


def test_three_processes_share_one_copy(service: Running) -> None:
    kids = _children(service.path, 3)
    try:
        size_kib = service.source.size >> 10
        stats = [hostmem.vma_stats(address, proc.pid) for proc, address in kids]
        mine = hostmem.vma_stats(service.source.address)
        for s in stats:
            assert s["Rss"] == size_kib  # each maps and has touched the whole chunk...
            assert s["Pss"] <= size_kib / 3 + 4  # ...but is charged at most a third of it
            assert s["Private_Clean"] + s["Private_Dirty"] == 0
        # The proportional shares of every mapper add up to a single copy.
        total_pss = sum(s["Pss"] for s in stats) + mine.get("Pss", 0)
        assert abs(total_pss - size_kib) <= 4
    finally:
        _release(kids)


def test_three_processes_share_one_huge_page(sock_path: str) -> None:
    if os.geteuid() != 0 or not os.access(source_mod.HUGEPAGES_NR_PATH, os.W_OK):
        pytest.skip("growing the hugetlb pool needs root and a writable nr_hugepages")
    try:
        pool = source_mod.extra_huge_pages(1)
        pool.__enter__()
    except HoleSourceError as exc:
        pytest.skip(str(exc))
    try:
        with AllOnesSource.create(Backing.HUGETLB) as src:
            thread, stop, _ = _start(sock_path, src)
            try:
                kids = _children(sock_path, 3)
                try:
                    for proc, address in kids:
                        s = hostmem.vma_stats(address, proc.pid)
                        assert s["KernelPageSize"] == HUGE_PAGE_SIZE >> 10
                        assert s["Shared_Hugetlb"] == HUGE_PAGE_SIZE >> 10
                        # still the one page: the service's frame (not the host's free
                        # count, which every other user of the pool moves)
                        assert frame_of(address, proc.pid) == frame_of(src.address)
                finally:
                    _release(kids)
            finally:
                stop.set()
                join(thread)
    finally:
        pool.__exit__(None, None, None)


# -- the command --------------------------------------------------------------------------

SERVE = (
    "import sys; from pcihole.commands.serve_holes import main_serve; "
    "sys.exit(main_serve(sys.argv[1], sys.argv[2], None))"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_main_serve_until_signalled(sock_path: str, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, sock_path, "memfd"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving memfd source (2 MiB"), line
        assert sock_path in line and "WRITE|SHRINK|GROW|SEAL" in line
        connect(sock_path).close()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == ""
    assert "stopped after serving 1 client(s), refusing 0" in err
    assert not os.path.exists(sock_path)


def test_main_serve_refuses_thp_and_nonsense(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BadInput, match="cannot be shared"):
        main_serve(sock_path, "thp", None)
    with pytest.raises(BadInput, match="unknown backing"):
        main_serve(sock_path, "ramdisk", None)
    assert not os.path.exists(sock_path)


def test_unusable_socket_path_is_a_clear_error(sock_path: str) -> None:
    missing_dir = os.path.join(os.path.dirname(sock_path), "no", "such", "dir", "s.sock")
    with (
        AllOnesSource.create(Backing.MEMFD) as src,
        pytest.raises(HoleServiceError, match=r"cannot listen on .*No such file"),
    ):
        serve(missing_dir, src, stop_event=threading.Event())

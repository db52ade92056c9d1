"""serve-holes --reserve-hugepage: one 2 MiB page added to the pool, exactly it given back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcihole.holes import source as source_mod
from pcihole.holes.service import connect
from pcihole.holes.source import Backing, HoleSourceError, reserve_huge_pages
from tests.support import CHILD_ENV


class FakePool:
    """A pool file whose 'kernel' grants at most ``frames`` pages beyond the start."""

    def __init__(self, path: Path, start: int, frames: int) -> None:
        self.path, self.limit = path, start + frames
        path.write_text(f"{start}\n")

    def write(self, path: str, pages: int) -> None:
        Path(path).write_text(f"{min(pages, self.limit)}\n")

    def value(self) -> int:
        return int(self.path.read_text())


@pytest.fixture
def fake_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePool]:
    pool = FakePool(tmp_path / "nr_hugepages", start=3, frames=1)
    monkeypatch.setattr(source_mod, "huge_page_pool_path", lambda: str(pool.path))
    monkeypatch.setattr(source_mod, "_write_pool", pool.write)
    yield pool


def test_reserve_adds_one_and_release_removes_exactly_it(fake_pool: FakePool) -> None:
    reservation = reserve_huge_pages(1)
    assert (reservation.before, reservation.added, fake_pool.value()) == (3, 1, 4)
    fake_pool.limit = 10
    fake_pool.write(str(fake_pool.path), 6)  # someone else adds two pages meanwhile
    assert reservation.release() == (6, 5)  # theirs stay
    assert reservation.release() == (5, 5)  # a second release gives back nothing
    assert fake_pool.value() == 5


def test_a_kernel_that_finds_fewer_frames_gets_back_only_what_it_gave(
    fake_pool: FakePool,
) -> None:
    with pytest.raises(HoleSourceError, match="could not find 2 free"):
        reserve_huge_pages(2)
    assert fake_pool.value() == 3  # the one page it did add is gone again, no more


def test_a_kernel_that_finds_no_frame_leaves_the_pool_alone(fake_pool: FakePool) -> None:
    fake_pool.limit = 3
    with pytest.raises(HoleSourceError):
        reserve_huge_pages(1)
    assert fake_pool.value() == 3


def test_reserve_hugepage_with_another_backing_is_bad_input() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pcihole",
            "serve-holes",
            "--socket",
            "/tmp/ph-none.sock",
            "--backing",
            "memfd",
            "--reserve-hugepage",
        ],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--reserve-hugepage" in proc.stderr and "Traceback" not in proc.stderr


def _pool_figures(text: str, verb: str) -> tuple[int, int]:
    match = re.search(verb + r" .*?nr_hugepages: (\d+) -> (\d+)\)", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_service_reserves_serves_hugetlb_and_gives_the_page_back(stop_signal: int) -> None:
    """As root: the served chunk is hugetlb; the service says it added one page and,
    stopped by a signal, removed one. (Only the service's own figures are compared: other
    tests on the machine may grow the pool at the same time.)"""
    if os.geteuid() != 0:
        pytest.skip("growing the 2 MiB hugetlb pool needs root")
    try:
        source_mod.huge_page_pool_path()
    except HoleSourceError as exc:
        pytest.skip(str(exc))
    with tempfile.TemporaryDirectory(prefix="ph-", dir="/tmp") as d:
        path = os.path.join(d, "holes.sock")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pcihole",
                "serve-holes",
                "--socket",
                path,
                "--reserve-hugepage",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CHILD_ENV,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if "could not find" in first or proc.poll() is not None:
                pytest.skip(f"no free 2 MiB frame for the pool: {first}{proc.stderr.read()}")
            before, during = _pool_figures(first, "reserved one 2 MiB huge page")
            assert during == before + 1
            assert "serving hugetlb source" in proc.stdout.readline()
            with connect(path) as served:
                assert served.backing is Backing.HUGETLB
                assert served.page_size == 2 << 20
            proc.send_signal(stop_signal)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    now, after = _pool_figures(err, "gave back the huge page")
    assert after == now - 1, err

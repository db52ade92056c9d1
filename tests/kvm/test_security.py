"""Nobody changes what a hole reads; a write reaches only the function it was meant for.

- guests writing into every hole of the window change neither the all-ones chunk nor any
  device model;
- a second process holding the service's memfd cannot write it by any route (write(),
  a reopened /proc fd, writable or upgraded mappings, fallocate, /proc/PID/mem, ...);
- the service socket admits its owner, and a group only when one is given;
- writes to one function never reach another, in the same VM or in a neighbour.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import pytest

from pcihole import layout
from pcihole.guest.machine import PciMachine
from pcihole.guest.vm import run_all
from pcihole.holes.memory import HoleMemory
from pcihole.holes.service import REQUEST, connect, serve
from pcihole.holes.source import AllOnesSource, Backing
from pcihole.holes.strategy import SharedStrategy
from pcihole.host import mem as hostmem
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.machine.runloop import StopReason
from pcihole.pci.bdf import Bdf
from pcihole.pci.topology import Topology
from tests.model_masks import plain_config
from tests.support import CHILD_ENV, HANG_SECONDS, join

BUSES = 16
WRITE_HOLES, HAMMER = 1, 2
WAIT = HANG_SECONDS


def snapshots(topology: Topology) -> dict[Bdf, bytes]:
    return {f.bdf: f.config.snapshot() for f in topology}


def hole_memory_of(machine: PciMachine) -> HoleMemory:
    strategy = machine.strategy
    assert isinstance(strategy, SharedStrategy)
    return strategy.memory


# -- guests writing into holes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "present", "buses"),
    [("shared", "mirror", 16), ("fill", "mirror", 4), ("trap", "trap", 4)],
)
def test_guest_writes_into_every_hole_change_nothing(
    kvm: Kvm, strategy: str, present: str, buses: int
) -> None:
    """Two guests write u64s at the start, +8 and the last bytes of every hole page of
    their window, then read each back: all ones. The monitor saw every write as a hole
    write and none as a device write; no model changed; the chunk is all ones."""
    backing = Backing.MEMFD if strategy == "shared" else None  # a window, to look at
    options = MachineOptions(buses=buses, strategy=strategy, present=present, backing=backing)
    params = [WRITE_HOLES, layout.ECAM_BASE, layout.ecam_size(buses)]
    holes = buses * 256 - len(Topology.default(buses))
    machines = [
        PciMachine(kvm, Topology.default(buses), options, "hostile", params, name=f"vm{i}")
        for i in range(2)
    ]
    try:
        results = run_all([m.guest for m in machines])
        for machine, result in zip(machines, results, strict=True):
            assert result.reason is StopReason.DONE, result.detail
            assert result.syncs == [holes]
            assert machine.hole_writes.count == 3 * holes
            assert machine.ecam.exits.device_writes == 0
            assert snapshots(machine.topology) == snapshots(Topology.default(buses))
            for bdf, mirror in machine.window.mirrors.items():
                function = machine.topology.get(bdf)
                assert function is not None
                assert mirror.page.read(mirror.page.base, layout.PAGE_SIZE) == (
                    function.config.snapshot()
                )
        if strategy == "shared":
            memory = hole_memory_of(machines[0])
            memory.source.verify()
            assert memory.window is not None
            assert hostmem.is_filled(memory.window.address, layout.ecam_size(buses))
        if strategy == "fill":
            for machine in machines:
                fill = machine.strategy
                assert fill is not None
                ((address, size),) = fill.per_vm_ranges()
                assert hostmem.is_filled(address, size)
    finally:
        for machine in machines:
            machine.close()


# -- a second process holding the memfd -----------------------------------------------------

ATTACKER = r"""
import ctypes, errno, json, mmap, os, sys
from pcihole.host import mem as hostmem
from pcihole.holes.service import connect
source = connect(sys.argv[1])
fd, size, address = source.fd, source.size, source.address
libc = ctypes.CDLL(None, use_errno=True)
outcome = {}

def attempt(name, action):
    try:
        action()
        outcome[name] = "succeeded"
    except OSError as error:  # anything else is a broken attack: let the child fail
        outcome[name] = errno.errorcode.get(error.errno, str(error.errno))

def libc_call(name, *args):
    def call():
        if getattr(libc, name)(*args) != 0:
            raise OSError(ctypes.get_errno(), name)
    return call

def write_reopened():
    other = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        os.pwrite(other, b"\x00", 0)
    finally:
        os.close(other)

def write_proc_mem():
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(address)
        mem.write(b"\x00")

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def process_vm_writev():
    zero = ctypes.create_string_buffer(1)
    local = iovec(ctypes.addressof(zero), 1)
    remote = iovec(address, 1)
    libc.process_vm_writev.restype = ctypes.c_ssize_t
    if libc.process_vm_writev(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1,
                              0) < 0:
        raise OSError(ctypes.get_errno(), "process_vm_writev")

def private_copy_write():
    cow = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)
    cow[0] = 0  # allowed: a private copy, which must never reach the file
    cow.close()
    raise OSError(errno.EPERM if hostmem.is_filled(address, size) else 0, "checked")

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
MADV_REMOVE, MADV_DONTNEED = 9, 4
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
attempt("pwrite", lambda: os.pwrite(fd, b"\x00", 0))
attempt("reopen O_RDWR and write", write_reopened)
attempt("mmap shared writable", lambda: mmap.mmap(fd, size))
attempt("mprotect to writable", libc_call("mprotect", address, size, 3))
attempt("ftruncate shrink", lambda: os.ftruncate(fd, 0))
attempt("ftruncate grow", lambda: os.ftruncate(fd, size * 2))
attempt("fallocate punch hole", libc_call("fallocate", fd, FALLOC_FL_KEEP_SIZE |
        FALLOC_FL_PUNCH_HOLE, 0, 4096))
attempt("madvise remove", libc_call("madvise", address, size, MADV_REMOVE))
attempt("write /proc/self/mem", write_proc_mem)
attempt("process_vm_writev", process_vm_writev)
attempt("private copy written", private_copy_write)
attempt("remove seals", lambda: __import__("fcntl").fcntl(fd, 1033, 0))
libc_call("madvise", address, size, MADV_DONTNEED)()  # drop our pages: reread the file
source.verify()
print(json.dumps(outcome), flush=True)
"""


@pytest.fixture
def sock_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ph-", dir="/tmp") as path:
        yield path


@contextlib.contextmanager
def served(path: str, source: AllOnesSource, **kwargs: object) -> Iterator[None]:
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(path, source),
        daemon=True,
        kwargs={"stop_event": stop, "on_ready": ready.set, **kwargs},
    )
    thread.start()
    assert ready.wait(WAIT)
    try:
        yield
    finally:
        stop.set()
        join(thread, "the service")


@pytest.mark.parametrize("backing", [Backing.MEMFD, Backing.HUGETLB])
def test_a_process_holding_the_served_memfd_cannot_change_it(
    request: pytest.FixtureRequest, sock_dir: str, backing: Backing
) -> None:
    """Another process gets the memfd from the service and tries every way to write it
    that an unprivileged or a root process has. Each fails; the chunk stays all ones."""
    if backing is Backing.HUGETLB:
        request.getfixturevalue("huge_page")
    path = os.path.join(sock_dir, "holes.sock")
    with AllOnesSource.create(backing) as source, served(path, source):
        attacker = subprocess.run(
            [sys.executable, "-c", ATTACKER, path],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            timeout=WAIT,
        )
        assert attacker.returncode == 0, attacker.stderr
        outcome = json.loads(attacker.stdout)
        assert len(outcome) == 12
        succeeded = [name for name, result in outcome.items() if result == "succeeded"]
        assert succeeded == [], outcome
        # hugetlbfs has no write() at all; everything else is refused by the seals
        write_errors = {"EINVAL"} if backing is Backing.HUGETLB else {"EPERM"}
        assert outcome["pwrite"] in write_errors
        assert outcome["reopen O_RDWR and write"] in write_errors
        assert outcome["mmap shared writable"] == "EPERM"
        assert outcome["mprotect to writable"] == "EACCES"
        assert outcome["ftruncate shrink"] == "EPERM"
        # hugetlbfs looks for a huge page to grow into before it looks at the seals
        assert outcome["ftruncate grow"] in (
            {"EPERM", "ENOMEM"} if backing is Backing.HUGETLB else {"EPERM"}
        )
        # a private copy may be written, but never reaches the file ("EPERM" stands for
        # that here); a private hugetlb mapping needs a page of its own, and none is free
        assert outcome["private copy written"] in (
            {"EPERM", "ENOMEM"} if backing is Backing.HUGETLB else {"EPERM"}
        )
        assert outcome["remove seals"] == "EPERM"
        # F_SEAL_WRITE forbids punching holes; a read-only shared mapping cannot be
        # MADV_REMOVEd (it needs write access), nor written by the kernel on our behalf
        # through /proc/self/mem (a forced write to a shared mapping without write access
        # fails as EIO) or process_vm_writev (the page is not writable: EFAULT)
        assert outcome["fallocate punch hole"] == "EPERM"
        assert outcome["madvise remove"] == "EACCES"
        assert outcome["write /proc/self/mem"] == "EIO"
        assert outcome["process_vm_writev"] == "EFAULT"
        source.verify()


# -- the service socket ---------------------------------------------------------------------


def try_as_nobody(path: str, groups: list[int]) -> str:
    """Connect to the service as user nobody with ``groups``: what came of it."""
    nobody = 65534
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only makes system calls
        code = 4
        try:
            os.setgroups(groups)
            os.setgid(nobody)
            os.setuid(nobody)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                client.connect(path)
                client.sendall(REQUEST)
                data, fds, _, _ = socket.recv_fds(client, 4096, 1)
                code = 0 if fds and data.startswith(b'{"protocol": 1') else 3
        except PermissionError:
            code = 13
        except BaseException:
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "served", 13: "EACCES", 3: "bad reply"}.get(
        os.waitstatus_to_exitcode(status), "failed"
    )


def serve_holes(path: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pcihole",
            "serve-holes",
            "--socket",
            path,
            "--backing",
            "memfd",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving"), proc.communicate()[1]
    return proc


def test_service_socket_admits_the_owner_and_only_the_group_given(sock_dir: str) -> None:
    """``pcihole serve-holes``: without --group, another user cannot connect even with
    the socket's group; with --group G a member of G can (the socket is 0660) and a
    non-member cannot."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    group = next((g for g in grp.getgrall() if g.gr_gid not in (0, 65534)), None)
    if group is None:
        pytest.skip("no spare group on this host")
    os.chmod(sock_dir, 0o711)  # let nobody reach the socket file itself
    path = os.path.join(sock_dir, "holes.sock")
    proc = serve_holes(path)
    try:
        assert os.lstat(path).st_mode & 0o777 == 0o600
        assert try_as_nobody(path, [os.lstat(path).st_gid]) == "EACCES"
        connect(path).close()  # the owner is served
    finally:
        proc.terminate()
        proc.communicate(timeout=WAIT)
    proc = serve_holes(path, "--group", group.gr_name)
    try:
        st = os.lstat(path)
        assert st.st_gid == group.gr_gid
        assert st.st_mode & 0o777 == 0o660
        assert try_as_nobody(path, [group.gr_gid]) == "served"
        assert try_as_nobody(path, []) == "EACCES"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT)
    assert "stopped after serving 1 client(s), refusing 0" in err


# -- writes reach only their own function -----------------------------------------------------

HAMMERED = {"02:00.0": 0xFFFF_FFFF_FFFF_FFFF, "00:1c.0": 0x5A5A_A5A5_0F0F_F0F0}
"""An endpoint written with ones, a bridge with a mixed pattern, by two VMs at once (zeros
would change nothing on the NVMe: as on QEMU, every writable bit of it resets to 0)."""


def test_writes_to_one_function_reach_no_other(kvm: Kvm) -> None:
    """Each of two guests writes a pattern with every width at every offset of one
    function's page. That function changes as its own model says; every other function
    of the VM, the other VM's functions but its target, and the holes stay as they were."""
    options = MachineOptions(buses=BUSES, backing=Backing.MEMFD)
    targets = [(Bdf.parse(address), pattern) for address, pattern in HAMMERED.items()]
    machines = [
        PciMachine(
            kvm,
            Topology.default(BUSES),
            options,
            "hostile",
            [HAMMER, layout.ECAM_BASE, layout.ecam_size(BUSES), bdf.ecam_offset, pattern],
            name=str(bdf),
        )
        for bdf, pattern in targets
    ]
    try:
        before = [snapshots(m.topology) for m in machines]
        results = run_all([m.guest for m in machines])
        for machine, result, (hammered, pattern), old in zip(
            machines, results, targets, before, strict=True
        ):
            assert result.reason is StopReason.DONE, result.detail
            after = snapshots(machine.topology)
            assert {b: s for b, s in after.items() if b != hammered} == {
                b: s for b, s in old.items() if b != hammered
            }
            fresh = Topology.default(BUSES).get(hammered)
            assert fresh is not None
            plain = plain_config(fresh)  # the model's literal masks, not its own write
            for width in (1, 2, 4, 8):
                for offset in range(0, 4096, width):
                    plain.write(offset, width, pattern & ((1 << (8 * width)) - 1))
            assert after[hammered] == plain.snapshot()
            assert after[hammered] != old[hammered]  # the writes did land somewhere
            for b, mirror in machine.window.mirrors.items():
                assert mirror.page.read(mirror.page.base, layout.PAGE_SIZE) == after[b]
            assert machine.hole_writes.count == 0
        memory = hole_memory_of(machines[0])
        memory.source.verify()
        assert memory.window is not None
        assert hostmem.is_filled(memory.window.address, layout.ecam_size(BUSES))
    finally:
        for machine in machines:
            machine.close()

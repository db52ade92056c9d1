"""``pcihole lspci``: each function's configuration space, in the text ``lspci -F`` reads.

Two views of the same machine:
- the *model* view prints the device models' registers directly (``pcihole.pci.lspci``);
- the *VM* view boots a real VM whose ring-3 guest (``guest/asm/ecam_dump.S``) finds every
  present function through ECAM and copies its 4 KiB page, as it reads it, into its result
  buffer; those bytes are printed.

Both go through ``lspci -F FILE`` unchanged, and for a machine nobody has written to they
are identical. The bytes of the VM view are the guest's; only the title line after each
address (which lspci ignores: it names devices from its own pci.ids) comes from the
host's model of that address.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pcihole import layout
from pcihole.errors import BadInput, GuestFault
from pcihole.guest.machine import PciMachine
from pcihole.kvm import Kvm
from pcihole.layout import DUMP_LIST_ADDR, DUMP_ROOM
from pcihole.machine import MachineOptions
from pcihole.pci.bdf import Bdf, GuestBdf
from pcihole.pci.lspci import format_lspci_dump, format_pages
from pcihole.pci.routing import route
from pcihole.pci.topology import Topology

DUMP_PROGRAM = "ecam_dump"


class LspciError(GuestFault):
    """The dump guest's report is unusable; the message says how."""


def make_topology(
    topology_specs: Sequence[str] | None, buses: int, *, bare: bool = False
) -> Topology:
    """The topology ``--device`` texts describe (``bare``: on the host bridge alone, not
    the q35 built-ins), or the default q35-like one."""
    if topology_specs or bare:
        return Topology.build(topology_specs or [], buses, bare=bare)
    return Topology.default(buses)


def guest_config_pages(
    kvm: Kvm, topology: Topology, options: MachineOptions | None = None
) -> dict[GuestBdf, bytes]:
    """Boot a VM over ``topology``; return each present function's 4 KiB page as its
    ring-3 guest read it through ECAM, by address."""
    options = options or MachineOptions(buses=topology.buses)
    params = [layout.ECAM_BASE, options.buses, DUMP_ROOM, DUMP_LIST_ADDR]
    with PciMachine(kvm, topology, options, DUMP_PROGRAM, params, name="lspci") as machine:
        result = machine.run().check()
        if len(result.syncs) != 1:
            raise LspciError(f"the dump guest reported {result.syncs}, expected one count")
        (found,) = result.syncs
        if found > DUMP_ROOM:
            raise LspciError(
                f"the guest found {found} functions; its result buffer holds {DUMP_ROOM} pages"
            )
        ram = machine.guest.ram
        assert ram is not None
        addresses = struct.unpack(f"<{found}I", ram.read(DUMP_LIST_ADDR, 4 * found))
        data = machine.guest.results(found * layout.PAGE_SIZE)
    pages: dict[GuestBdf, bytes] = {}
    for index, address in enumerate(addresses):
        bdf = GuestBdf(Bdf(address >> 8, address >> 3 & 0x1F, address & 7))
        pages[bdf] = data[index * layout.PAGE_SIZE : (index + 1) * layout.PAGE_SIZE]
    return pages


def lspci_text(
    topology_specs: list[str] | None,
    buses: int,
    vm_view: bool,
    *,
    kvm: Kvm | None = None,
    options: MachineOptions | None = None,
    bare: bool = False,
) -> str:
    """Every present function's configuration space in the text ``lspci -F FILE`` reads.

    ``vm_view``: as a ring-3 guest reads it through ECAM in a real VM (``options`` picks
    how that VM answers its window; default shared holes, mirrored functions), else
    straight from the models. ``kvm`` reuses an open /dev/kvm. ``bare``: no q35 built-ins.
    """
    topology = make_topology(topology_specs, buses, bare=bare)
    functions = len(list(topology))
    if vm_view and functions > DUMP_ROOM:
        raise BadInput(
            f"--device: {functions} functions; the VM view's guest holds {DUMP_ROOM} pages"
        )
    if not vm_view:
        return format_lspci_dump(topology)
    reached = route(topology).functions
    if kvm is not None:
        return format_pages(guest_config_pages(kvm, topology, options), reached)
    with Kvm() as own:
        return format_pages(guest_config_pages(own, topology, options), reached)

"""Built and guest addresses are two types: looking a function up by the wrong one is a
mypy error, not a bug that waits for firmware to renumber a bridge."""

from __future__ import annotations

import mypy.api

from pcihole.pci.bdf import Bdf, BuiltBdf, GuestBdf
from pcihole.pci.routing import route
from pcihole.pci.topology import Topology

PROGRAM = """
from pcihole.pci.bdf import Bdf, BuiltBdf, GuestBdf
from pcihole.pci.routing import route
from pcihole.pci.topology import Topology

topology = Topology.default(3)
routing = route(topology)
built = BuiltBdf(Bdf(1, 0, 0))
guest = GuestBdf(Bdf(1, 0, 0))
topology.config_at(built)
routing.config_at(guest)
topology.config_at(guest)  # line 12: wrong space
routing.config_at(built)  # line 13: wrong space
routing.function_at(topology.functions[0].bdf)  # line 14: wrong space
"""


def test_mixing_the_two_is_a_type_error() -> None:
    out, _, status = mypy.api.run(["--strict", "--no-incremental", "-c", PROGRAM])
    lines = sorted(int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line)
    assert status == 1 and lines == [12, 13, 14], out


def test_the_two_agree_until_a_bridge_is_renumbered() -> None:
    topology = Topology.default(3)
    nvme = BuiltBdf(Bdf(2, 0, 0))
    assert route(topology).config_at(GuestBdf(nvme)) is topology.config_at(nvme)
    port = topology.get(BuiltBdf(Bdf(0, 0x1C, 1)))
    assert port is not None
    port.config.write(0x18, 4, 0x00050500)  # secondary = subordinate = 5
    routing = route(topology)
    assert routing.config_at(GuestBdf(nvme)) is None
    assert routing.config_at(GuestBdf(Bdf(5, 0, 0))) is topology.config_at(nvme)

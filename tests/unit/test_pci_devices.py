"""The device catalogue: identities, headers, BARs and capabilities of each model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcihole.pci import capabilities as caps
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import (
    CAPABILITIES_POINTER,
    STATUS,
    STATUS_CAPABILITIES_LIST,
    BarKind,
    ConfigSpace,
    HeaderType,
)
from pcihole.pci.devices import MODELS, Function
from pcihole.pci.errors import DeviceError
from tests.model_masks import MASKS, build_config, masks_over, probe_masks

ON_BUS_1 = Bdf(1, 0, 0)


def build(model: str, bdf: Bdf = ON_BUS_1, params: dict[str, int] | None = None) -> Function:
    return MODELS[model].build(bdf, params)


@pytest.mark.parametrize(
    ("model", "ids", "class_code", "header"),
    [
        ("host-bridge", (0x8086, 0x29C0), 0x060000, HeaderType.ENDPOINT),
        ("root-port", (0x1B36, 0x000C), 0x060400, HeaderType.BRIDGE),
        ("virtio-net", (0x1AF4, 0x1041), 0x020000, HeaderType.ENDPOINT),
        ("virtio-blk", (0x1AF4, 0x1042), 0x010000, HeaderType.ENDPOINT),
        ("nvme", (0x1B36, 0x0010), 0x010802, HeaderType.ENDPOINT),
        ("ich9-lpc", (0x8086, 0x2918), 0x060100, HeaderType.ENDPOINT),
        ("ich9-ahci", (0x8086, 0x2922), 0x010601, HeaderType.ENDPOINT),
        ("ich9-smbus", (0x8086, 0x2930), 0x0C0500, HeaderType.ENDPOINT),
    ],
)
def test_identities(model: str, ids: tuple[int, int], class_code: int, header: HeaderType) -> None:
    params = {"bus": 2} if model == "root-port" else {}
    function = build(model, params=params)
    config = function.config
    assert (config.vendor_id, config.device_id) == ids
    assert config.class_code == class_code
    assert config.header_type is header
    assert MODELS[model].is_bridge == config.is_bridge
    assert function.model == model and function.bdf == ON_BUS_1


def test_every_model_has_a_valid_capability_layout() -> None:
    for name, model in MODELS.items():
        config = model.build(ON_BUS_1, {"bus": 2} if model.required_keys else {}).config
        offsets = [offset for offset, _ in config.capabilities()]
        assert all(0x40 <= offset < 0x100 and offset % 4 == 0 for offset in offsets), name
        assert len(set(offsets)) == len(offsets), name
        extended = config.extended_capabilities()
        assert all(0x100 <= offset < 0x1000 for offset, _ in extended), name
        if extended:  # the last header's next pointer is 0
            assert config.read(extended[-1][0], 4) >> 20 == 0


def test_root_port() -> None:
    function = build("root-port", Bdf(0, 0x1C, 0), {"bus": 3})
    config = function.config
    assert config.read(0x18, 4) & 0xFFFFFF == 0x030300  # primary 0, secondary 3, sub 3
    assert function.bridge_buses == range(3, 4)
    assert caps.pcie_port_type(config) is caps.PortType.ROOT_PORT
    assert caps.has_slot(config)
    assert config.find_capability(caps.CapabilityId.MSIX) is not None
    assert config.find_extended_capability(caps.ExtendedCapabilityId.ADVANCED_ERROR_REPORTING)
    wide = build("root-port", Bdf(0, 0x1C, 0), {"bus": 3, "subordinate": 5})
    assert wide.bridge_buses == range(3, 6)


def test_root_port_primary_is_its_own_bus() -> None:
    assert build("root-port", Bdf(4, 0, 0), {"bus": 5}).config.read(0x18, 1) == 4


def test_virtio_net() -> None:
    config = build("virtio-net").config
    assert config.read(0x2C, 4) == 0x1100_1AF4  # subsystem
    assert config.revision == 1
    bars = {bar.index: bar for bar in config.bars}
    assert bars[4].kind is BarKind.MEMORY64 and bars[4].prefetchable
    assert bars[1].kind is BarKind.MEMORY32
    msix = config.find_capability(caps.CapabilityId.MSIX)
    assert msix is not None and config.read(msix + 2, 2) & 0x7FF == 3  # 4 vectors, as QEMU
    vendor = [at for at, cap in config.capabilities() if cap == caps.CapabilityId.VENDOR_SPECIFIC]
    # Newest first, as QEMU links them: PCI window, notify, device, ISR, common.
    assert [config.read(at + 3, 1) for at in vendor] == [5, 2, 4, 3, 1]


def test_virtio_on_the_root_bus_is_transitional() -> None:
    config = build("virtio-net", Bdf(0, 2, 0)).config
    assert (config.device_id, config.revision, config.read(0x2E, 2)) == (0x1000, 0, 1)
    assert config.bars[0].index == 0 and config.bars[0].kind is BarKind.IO
    assert config.find_capability(caps.CapabilityId.PCI_EXPRESS) is None
    assert config.snapshot()[0x100:] == b"\xff" * 0xF00


def test_endpoints_on_bus_0_are_integrated() -> None:
    assert caps.pcie_port_type(build("nvme").config) is caps.PortType.ENDPOINT
    on_root = build("nvme", Bdf(0, 3, 0)).config
    assert caps.pcie_port_type(on_root) is caps.PortType.ROOT_COMPLEX_INTEGRATED_ENDPOINT


def test_nvme() -> None:
    config = build("nvme").config
    assert [(bar.index, bar.kind, bar.size) for bar in config.bars] == [
        (0, BarKind.MEMORY64, 0x4000)
    ]
    assert config.find_capability(caps.CapabilityId.MSIX) is not None
    assert config.find_capability(caps.CapabilityId.POWER_MANAGEMENT) is not None


def test_ich9_set() -> None:
    assert build("ich9-lpc").config.is_multifunction
    ahci = build("ich9-ahci").config
    assert [(bar.index, bar.kind) for bar in ahci.bars] == [(4, BarKind.IO), (5, BarKind.MEMORY32)]
    assert ahci.find_capability(caps.CapabilityId.MSI) is not None
    assert [(bar.index, bar.size) for bar in build("ich9-smbus").config.bars] == [(4, 0x40)]


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("virtio-net", {"bus": 1}, r"virtio-net does not take bus \(it takes: none\)"),
        (
            "root-port",
            {"bus": 1, "speed": 2},
            r"does not take speed \(it takes: bus, chassis, slot, subordinate\)",
        ),
        ("root-port", {}, "root-port needs bus="),
        ("root-port", {"bus": 256}, "not a bus number"),
        ("root-port", {"bus": 3, "subordinate": 2}, "below bus=3"),
    ],
)
def test_bad_parameters(model: str, params: dict[str, int], message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        MODELS[model].build(ON_BUS_1, params)


def test_spec_defaults_to_an_equivalent_text() -> None:
    assert build("root-port", Bdf(0, 0x1C, 0), {"bus": 1}).spec == "00:1c.0=root-port,bus=1"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_model_has_the_write_masks_of_its_table(model: str) -> None:
    """What a guest can change in each model, probed from outside, is its table's."""
    assert probe_masks(lambda: build_config(model)) == MASKS[model]


@given(
    st.sampled_from(sorted(MODELS)),
    st.lists(
        st.tuples(st.integers(0, 4095), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1)),
        max_size=30,
    ),
)
def test_models_keep_read_only_bits(model: str, writes: list[tuple[int, int, int]]) -> None:
    """Random guest writes change only the bits the model's table lets them: writable bits
    take the value, W1C bits only clear."""
    config = build_config(model)
    identity = config.read(0, 4), config.class_code, config.capabilities()
    for offset, size, value in writes:
        size = max(s for s in (1, 2, 4, 8) if s <= min(size, 4096 - offset))
        value &= (1 << 8 * size) - 1
        before = config.read(offset, size)
        config.write(offset, size, value)
        writable, w1c = masks_over(MASKS[model], offset, size)
        after = config.read(offset, size)
        read_only = ~(writable | w1c)
        assert after & read_only == before & read_only
        assert after & writable == value & writable
        assert after & w1c == before & w1c & ~value
    assert (config.read(0, 4), config.class_code, config.capabilities()) == identity


def guest_walk(config: ConfigSpace) -> list[tuple[int, int]]:
    """``(offset, id)`` of each capability as a guest walks the list from 0x34, failing
    on a pointer that loops or leaves the capability area (not ConfigSpace's own walk)."""
    found: list[tuple[int, int]] = []
    if not config.read(STATUS, 2) & STATUS_CAPABILITIES_LIST:
        return found
    at = config.read(CAPABILITIES_POINTER, 1) & ~3
    while at:
        assert 0x40 <= at < 0x100 and at not in dict(found), f"pointer to {at:#x} after {found}"
        found.append((at, config.read(at, 1)))
        at = config.read(at + 1, 1) & ~3
    return found


def guest_walk_extended(config: ConfigSpace) -> list[tuple[int, int]]:
    """The same for the extended capabilities from 0x100."""
    found: list[tuple[int, int]] = []
    at = 0x100
    while at:
        assert 0x100 <= at < 0x1000 and at not in dict(found), f"pointer to {at:#x}"
        header = config.read(at, 4)
        if header in (0, 0xFFFF_FFFF):  # none; all ones: a conventional function (as Linux)
            break
        found.append((at, header & 0xFFFF))
        at = header >> 20 & ~3
    return found


@pytest.mark.parametrize("model", sorted(MODELS))
def test_guest_writes_to_the_capability_chain_change_nothing(model: str) -> None:
    """A guest writes every pointer of the chain (0x34, each next byte, each extended
    header) with all ones, zero, and a pointer back to the first capability, in every
    width: the walk ends, finds the same list, and the chain bytes are as they were."""
    config = build(model, params={"bus": 2} if MODELS[model].required_keys else {}).config
    chain, extended = guest_walk(config), guest_walk_extended(config)
    before = config.snapshot()
    first = chain[0][0] if chain else 0x40
    pointers = [CAPABILITIES_POINTER] + [at + 1 for at, _ in chain]
    for value in (0xFF, 0x00, first, 0x40):
        for at in pointers:
            config.write(at, 1, value)
        for at, _ in chain:  # the ID and next byte together, and the whole dword
            config.write(at, 2, value << 8 | value)
            config.write(at, 4, value * 0x01010101)
        for at, _ in extended:
            config.write(at, 4, 0x100 << 20 | value)  # next: back to the first
            config.write(at, 4, 0xFFFFFFFF)
            config.write(at + 2, 2, 0xFFFF)
    assert guest_walk(config) == chain
    assert guest_walk_extended(config) == extended
    after = config.snapshot()
    for at in [*pointers, *(at for at, _ in chain)]:
        assert after[at] == before[at], f"{model}: byte {at:#x} changed"
    for at, _ in extended:
        assert after[at : at + 4] == before[at : at + 4], f"{model}: header {at:#x} changed"

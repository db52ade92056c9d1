"""PCI configuration space, device catalogue, topology, ECAM and CF8/CFC decoding.

Pure logic: nothing here touches KVM. The machine mirrors each present function's
``ConfigSpace.snapshot()`` into the guest's ECAM window and sends guest writes to
``ConfigSpace.write``.
"""

"""pcihole: KVM virtual machines whose PCI holes cost nothing."""

__version__ = "0.1.0"

"""Platform devices, one file each: what a PC around the PCI hierarchy answers."""

"""The q35 chipset: MCH (PCIEXBAR, PAM shadowing), ICH9 LPC registers, reset control."""

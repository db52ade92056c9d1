"""ACPI tables pcihole serves to firmware through fw_cfg, as QEMU 7.2 does: an AML encoder
(``aml``), QEMU's linker/loader (``loader``), the tables (``tables``) and the q35 set
(``q35``). Reading tables back from guest memory is ``pcihole.arch.x86.acpi``'s."""

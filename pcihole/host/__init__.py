"""The host OS as pcihole sees it: /proc and /sys readers, mmap/memfd wrappers."""

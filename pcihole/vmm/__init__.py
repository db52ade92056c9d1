"""The monitor's moving parts: device buses, the run loop, a VM with one vCPU in one call."""

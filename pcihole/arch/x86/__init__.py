"""x86: CPUID policy, reset state, long-mode entry, e820."""

"""Measurements: the scan runner, sweeps and medians, tables, the plot, progress lines.

Figures are collected where they happen (the machine's counters, smaps, meminfo) and
reported here, never printed from inside the core.
"""

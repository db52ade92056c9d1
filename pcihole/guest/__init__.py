"""Guest programs: assembly sources, their build and cache, long-mode entry, reports."""

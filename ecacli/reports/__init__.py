"""Reports computed from a spec: layer summaries (and, in later modules, profiles and comparisons)."""

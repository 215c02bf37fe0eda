"""Measuring models: interleaved step timing, FLOPs, peak memory and a profiler breakdown.

`profile([(label, spec), ...], ProfileConfig(...))` is the entry point; `ecacli profile` and
the commands that compare several specs are thin layers over it.
"""

from ecacli.profiling.report import OutOfMemory, ProfileReport, profile, profile_paired
from ecacli.profiling.runner import ModelProfile, ProfileConfig, count_flops, without_attention
from ecacli.profiling.stats import Stats

__all__ = [
    "ModelProfile",
    "OutOfMemory",
    "ProfileConfig",
    "ProfileReport",
    "Stats",
    "count_flops",
    "profile",
    "profile_paired",
    "without_attention",
]

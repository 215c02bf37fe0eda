"""Name -> module registry of attention types, so a new type is one class and one entry."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ecacli.layers.cbam import CbamModule
from ecacli.layers.eca import EcaModule
from ecacli.layers.se import SeModule
from ecacli.spec import ResNetSpec

AttentionFactory = Callable[[ResNetSpec, int, int], nn.Module]


def _eca(spec: ResNetSpec, stage: int, channels: int) -> nn.Module:
    return EcaModule(spec.stage_kernel_sizes[stage], circular=spec.attention.type == "ceca", impl=spec.attention.impl)  # type: ignore[index]


def _se(spec: ResNetSpec, stage: int, channels: int) -> nn.Module:
    return SeModule(channels, spec.attention.hidden(channels))  # type: ignore[union-attr]


def _cbam(spec: ResNetSpec, stage: int, channels: int) -> nn.Module:
    attention = spec.attention
    return CbamModule(channels, attention.hidden(channels), attention.spatial_kernel, attention.mlp_bias)  # type: ignore[union-attr]


ATTENTION_LAYERS: dict[str, AttentionFactory | None] = {
    "eca": _eca,
    "ceca": _eca,
    "se": _se,
    "cbam": _cbam,
    "none": None,
}


def create_attention(spec: ResNetSpec, stage: int, channels: int) -> nn.Module | None:
    """The attention module for a block of `stage` (0-based) with `channels` output channels, or None."""
    factory = ATTENTION_LAYERS[spec.attention.type]
    return factory(spec, stage, channels) if factory else None

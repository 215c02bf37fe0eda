"""Name -> module registry of attention types, so a new type is one class and one entry."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ecacli.layers.eca import EcaModule
from ecacli.spec import ResNetSpec

AttentionFactory = Callable[[ResNetSpec, int, int], nn.Module]


def _eca(spec: ResNetSpec, stage: int, channels: int) -> nn.Module:
    return EcaModule(spec.stage_kernel_sizes[stage])  # type: ignore[index]


ATTENTION_LAYERS: dict[str, AttentionFactory | None] = {
    "eca": _eca,
    "none": None,
}


def create_attention(spec: ResNetSpec, stage: int, channels: int) -> nn.Module | None:
    """The attention module for a block of `stage` (0-based) with `channels` output channels, or None."""
    factory = ATTENTION_LAYERS[spec.attention.type]
    return factory(spec, stage, channels) if factory else None

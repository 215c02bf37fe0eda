"""Torch building blocks: attention modules, the fused residual tail, and the builder that makes modules from `ecacli.arch` nodes."""

from ecacli.layers.eca import EcaModule

__all__ = ["EcaModule"]

"""Building blocks: attention modules and their registry."""

from ecacli.layers.eca import EcaModule
from ecacli.layers.registry import ATTENTION_LAYERS, create_attention

__all__ = ["ATTENTION_LAYERS", "EcaModule", "create_attention"]

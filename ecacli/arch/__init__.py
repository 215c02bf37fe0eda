"""The torch-free description of every model family: nodes, their kinds and registries, the plan of a spec and its accounting.

`plan(spec)` is the model a spec describes, as a `Node`; `ecacli.layers.build` turns it into
torch modules and `account` into the `Layer` tree `ecacli summary` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecacli.arch import attention, resnet
from ecacli.arch.nodes import FLOAT32_BYTES, KINDS, Layer, Node, account

if TYPE_CHECKING:
    from ecacli.spec import ResNetSpec

__all__ = ["FLOAT32_BYTES", "KINDS", "Layer", "Node", "account", "attention", "model_layers", "plan", "resnet"]


def plan(spec: ResNetSpec) -> Node:
    """The model a spec describes."""
    return resnet.plan(spec)


def model_layers(spec: ResNetSpec, batch: int = 1, input_size: int | None = None) -> Layer:
    """The whole model as a tree of layers for a batch of `batch` square inputs."""
    return account(plan(spec), spec.input_shape(batch, input_size))

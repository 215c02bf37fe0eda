"""The torch-free description of every model family: nodes, their kinds and registries, the plan of a spec and its accounting.

`plan(spec)` is the model a spec describes, as a `Node`; `ecacli.layers.build` turns it into
torch modules and `account` into the `Layer` tree `ecacli summary` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecacli.arch import attention, mobilenetv2, resnet
from ecacli.arch.nodes import FLOAT32_BYTES, KINDS, Layer, Node, account

if TYPE_CHECKING:
    from ecacli.spec import NetworkSpec

__all__ = ["FAMILIES", "FLOAT32_BYTES", "KINDS", "Layer", "Node", "account", "attention", "mobilenetv2", "model_layers", "plan", "resnet"]

FAMILIES = {"resnet": resnet, "mobilenetv2": mobilenetv2}
"""Each family's description by its spec `arch`: `plan(spec)` and `infer(shapes, name)`."""


def plan(spec: NetworkSpec) -> Node:
    """The model a spec describes."""
    return FAMILIES[spec.arch].plan(spec)  # type: ignore[attr-defined]


def model_layers(spec: NetworkSpec, batch: int = 1, input_size: int | None = None) -> Layer:
    """The whole model as a tree of layers for a batch of `batch` square inputs."""
    return account(plan(spec), spec.input_shape(batch, input_size))

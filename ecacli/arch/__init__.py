"""The torch-free description of every model family: nodes, their kinds and registries, the plan of a spec and its accounting.

Each family is one module here (`plan`, `feature_levels`, `stage_modules`, `infer`, `claims`),
named by its spec class (`ResNetSpec.family`), which `ecacli.spec.FAMILIES` registers: adding a
family is one module plus one entry there. `plan(spec)` is the model a spec describes, as a `Node`; `ecacli.layers.build` turns it into
torch modules and `account` into the `Layer` tree `ecacli summary` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecacli.arch import attention, mobilenetv2, resnet
from ecacli.arch.nodes import FLOAT32_BYTES, KINDS, FeatureLevel, Layer, Node, account

if TYPE_CHECKING:
    from ecacli.spec import NetworkSpec

__all__ = ["FeatureLevel", "feature_levels", "stage_modules", "FLOAT32_BYTES", "KINDS", "Layer", "Node", "account", "attention", "mobilenetv2", "model_layers", "plan", "resnet"]


def plan(spec: NetworkSpec, out_indices: tuple[int, ...] | None = None) -> Node:
    """The model a spec describes, or with `out_indices` its feature extractor (levels as `feature_levels` numbers them)."""
    return spec.family.plan(spec, out_indices)


def feature_levels(spec: NetworkSpec) -> list[FeatureLevel]:
    """Every level a feature extractor of the spec's model can return, index 0 first (the stem's)."""
    return spec.family.feature_levels(spec)


def stage_modules(spec: NetworkSpec) -> list[list[str]]:
    """The module names of the stem (index 0) and of each stage after it, as `frozen_stages` counts them."""
    return spec.family.stage_modules(spec)


def model_layers(spec: NetworkSpec, batch: int = 1, input_size: int | None = None) -> Layer:
    """The whole model as a tree of layers for a batch of `batch` square inputs."""
    return account(plan(spec), spec.input_shape(batch, input_size))

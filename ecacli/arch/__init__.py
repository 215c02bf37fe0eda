"""The torch-free description of every model family: nodes, their kinds and registries, the plan of a spec and its accounting.

`plan(spec)` is the model a spec describes, as a `Node`; `ecacli.layers.build` turns it into
torch modules and `account` into the `Layer` tree `ecacli summary` shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ecacli.arch import attention, mobilenetv2, resnet
from ecacli.arch.nodes import FLOAT32_BYTES, KINDS, FeatureLevel, Layer, Node, account

if TYPE_CHECKING:
    from ecacli.spec import NetworkSpec

__all__ = ["FeatureLevel", "family_of", "feature_levels", "infer", "stage_modules", "FAMILIES", "FLOAT32_BYTES", "KINDS", "Layer", "Node", "account", "attention", "mobilenetv2", "model_layers", "plan", "resnet"]

FAMILIES = {"resnet": resnet, "mobilenetv2": mobilenetv2}
"""Each family's description by its spec `arch`: `plan(spec)` and `infer(shapes, name)`."""


def plan(spec: NetworkSpec, out_indices: tuple[int, ...] | None = None) -> Node:
    """The model a spec describes, or with `out_indices` its feature extractor (levels as `feature_levels` numbers them)."""
    return FAMILIES[spec.arch].plan(spec, out_indices)  # type: ignore[attr-defined]


def feature_levels(spec: NetworkSpec) -> list[FeatureLevel]:
    """Every level a feature extractor of the spec's model can return, index 0 first (the stem's)."""
    return FAMILIES[spec.arch].feature_levels(spec)  # type: ignore[attr-defined]


def stage_modules(spec: NetworkSpec) -> list[list[str]]:
    """The module names of the stem (index 0) and of each stage after it, as `frozen_stages` counts them."""
    return FAMILIES[spec.arch].stage_modules(spec)  # type: ignore[attr-defined]


def family_of(keys: Iterable[str]) -> str:
    """The family whose names a state_dict's keys carry: MobileNetV2's `features.N` / `classifier`, else ResNet's."""
    return "mobilenetv2" if any(key.startswith("features.") for key in keys) else "resnet"


def infer(shapes: Mapping[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """Spec data describing a state_dict with ecacli's names, by its family's own reading (`LayoutError` where none can)."""
    return FAMILIES[family_of(shapes)].infer(shapes, name)  # type: ignore[attr-defined]


def model_layers(spec: NetworkSpec, batch: int = 1, input_size: int | None = None) -> Layer:
    """The whole model as a tree of layers for a batch of `batch` square inputs."""
    return account(plan(spec), spec.input_shape(batch, input_size))

"""Base models of base specs: a torchvision or timm model by its registered name, freshly initialised, with the spec's attention attached (`ecacli.attachment`).

Only the two registries are consulted: `torchvision.models.get_model(NAME, weights=None)` and
`timm.create_model(NAME, pretrained=False)`, with the spec's plain `base_args`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torch import nn

from ecacli.attachment import InsertionPoint, attach, insertion_points
from ecacli.errors import OptionError, SpecError, first_line
from ecacli.extras import MissingExtraError, extra_providing, install_command
from ecacli.spec import BaseSpec, suggest


def _library(name: str) -> Any:
    try:
        return import_module("torchvision.models" if name == "torchvision" else "timm")
    except ImportError:
        raise MissingExtraError(f"base: {name}:... needs {name}, which is not installed; install it with: {install_command(extra_providing(name))}") from None


def registered_names(library: str) -> list[str]:
    """Every model name the library registers."""
    module = _library(library)
    return list(module.list_models())


def base_model(spec: BaseSpec) -> nn.Module:
    """The spec's base model alone (no attention attached), freshly initialised, on the current default device."""
    module = _library(spec.library)
    names = registered_names(spec.library)
    if spec.model_name not in names:
        raise SpecError(f"spec '{spec.name}': base: {spec.base} is not a model {spec.library} registers.{suggest(spec.model_name, names)}")
    kwargs = spec.builder_kwargs()
    try:
        if spec.library == "torchvision":
            return module.get_model(spec.model_name, weights=None, **kwargs)
        return module.create_model(spec.model_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
        raise SpecError(f"spec '{spec.name}': {spec.base} cannot be built with base_args {kwargs}: {first_line(exc)}") from None


def base_insertion_points(spec: BaseSpec) -> list[InsertionPoint]:
    """Where the spec's attention goes in its base (module, attention name, channels, k), found on the base built on the meta device."""
    import torch

    with torch.device("meta"):
        model = base_model(spec)
    try:
        return insertion_points(model, spec.attention, after=spec.attention.after, replace=spec.attention.replace, input_shape=spec.input_shape(1) if spec.attention.after else None)
    except OptionError as exc:
        raise SpecError(f"spec '{spec.name}': attention on {spec.base}: {exc}") from None


def build_base(spec: BaseSpec) -> nn.Module:
    """The base model with the spec's attention attached, carrying its spec as `model.spec` (as every model ecacli builds)."""
    model = base_model(spec)
    model.spec = spec
    if spec.attention.type == "none" and spec.attention.replace is None:
        return model
    try:
        return attach(model, spec.attention, after=spec.attention.after, replace=spec.attention.replace, input_shape=spec.input_shape(1) if spec.attention.after else None)
    except OptionError as exc:
        raise SpecError(f"spec '{spec.name}': attention on {spec.base}: {exc}") from None

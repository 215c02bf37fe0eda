"""Base models of base specs: a torchvision or timm model by its registered name, freshly initialised, with the spec's attention attached (`ecacli.attachment`).

Only the two registries are consulted: `torchvision.models.get_model(NAME, weights=None)` and
`timm.create_model(NAME, pretrained=False)`, with the spec's plain `base_args`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ecacli.attachment import InsertionPoint, attach, insertion_points
from ecacli.errors import OptionError, SpecError, first_line
from ecacli.extras import MissingExtraError, extra_providing, install_command
from ecacli.spec import MAX_BASE_MODULES, MAX_WEIGHTS, BaseSpec, suggest


def _library(name: str) -> Any:
    try:
        return import_module("torchvision.models" if name == "torchvision" else "timm")
    except ImportError:
        raise MissingExtraError(f"base: {name}:... needs {name}, which is not installed; install it with: {install_command(extra_providing(name))}") from None


def registered_names(library: str) -> list[str]:
    """Every model name the library registers."""
    module = _library(library)
    return list(module.list_models())


class _NotOnMeta(SpecError):
    """The base's builder does not run on the meta device (torchvision's RegNets compute their widths with tensors)."""


def _too_large(spec: BaseSpec, what: str) -> SpecError:
    return SpecError(f"spec '{spec.name}': base: {spec.base} with base_args {spec.builder_kwargs()} would hold {what} a spec may build; lower the sizes in base_args.")


def _check_weights(spec: BaseSpec, model: nn.Module) -> None:
    """Refuse a model holding more than MAX_WEIGHTS parameters and buffers (shared ones counted once)."""
    weights = sum(t.numel() for t in {id(t): t for t in [*model.parameters(), *model.buffers()]}.values())
    if weights > MAX_WEIGHTS:
        raise _too_large(spec, f"{weights:.2e} weights (parameters and buffers), more than the {MAX_WEIGHTS:.0e}")


TENSOR_FACTORIES = frozenset({
    torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
    torch.randperm, torch.arange, torch.linspace, torch.logspace, torch.eye, torch.tensor,
})
"""The public functions that create a tensor of a size they are given: what a model's constructor allocates with."""


class _AllocationBudget(TorchFunctionMode):
    """Creates each tensor on the meta device first and refuses, before allocating it, the one that takes the total past MAX_WEIGHTS values."""

    def __init__(self, spec: BaseSpec) -> None:
        super().__init__()
        self.spec, self.values = spec, 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in TENSOR_FACTORIES:
            return func(*args, **kwargs)
        try:
            values = func(*args, **{**kwargs, "device": "meta"}).numel()
        except Exception:  # a call the meta device does not take (out=, pinned memory): counted once made
            values = 0
        if self.values + values > MAX_WEIGHTS:
            raise _too_large(self.spec, f"more than the {MAX_WEIGHTS:.0e} weights")
        result = func(*args, **kwargs)
        self.values += values or (result.numel() if isinstance(result, torch.Tensor) else 0)
        return result


@contextmanager
def _bounded(spec: BaseSpec) -> Iterator[None]:
    """While a base is constructed: refuse it past MAX_BASE_MODULES modules, and on a real device past MAX_WEIGHTS allocated values."""
    modules = 0

    def count(_parent: nn.Module, _name: str, _child: nn.Module | None) -> None:
        nonlocal modules
        modules += 1
        if modules > MAX_BASE_MODULES:
            raise _too_large(spec, f"more than the {MAX_BASE_MODULES:,} modules")

    handle = nn.modules.module.register_module_module_registration_hook(count)
    try:
        if torch.get_default_device().type == "meta":
            yield
        else:
            with _AllocationBudget(spec):
                yield
    finally:
        handle.remove()


def _builder_kwargs(spec: BaseSpec, builder: Any) -> dict[str, Any]:
    """The spec's keywords, with `weights_backbone=None` for torchvision builders that would otherwise fetch a backbone's weights."""
    kwargs = spec.builder_kwargs()
    if spec.library == "torchvision" and "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    return kwargs


def base_model(spec: BaseSpec) -> nn.Module:
    """The spec's base model alone (no attention attached), freshly initialised, on the current default device; refused past MAX_BASE_MODULES modules or MAX_WEIGHTS weights."""
    module = _library(spec.library)
    names = registered_names(spec.library)
    if spec.model_name not in names:
        raise SpecError(f"spec '{spec.name}': base: {spec.base} is not a model {spec.library} registers.{suggest(spec.model_name, names)}")
    kwargs = spec.builder_kwargs()
    try:
        with _bounded(spec):
            if spec.library == "torchvision":
                model = module.get_model(spec.model_name, weights=None, **_builder_kwargs(spec, module.get_model_builder(spec.model_name)))
            else:
                model = module.create_model(spec.model_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
        error = _NotOnMeta if isinstance(exc, NotImplementedError) and torch.get_default_device().type == "meta" else SpecError
        raise error(f"spec '{spec.name}': {spec.base} cannot be built with base_args {kwargs}: {first_line(exc)}") from None
    _check_weights(spec, model)
    return model


def base_insertion_points(spec: BaseSpec) -> list[InsertionPoint]:
    """Where the spec's attention goes in its base (module, attention name, channels, k), found on the base built on the meta device."""
    with torch.device("meta"):
        model = base_model(spec)
    return _with_spec_attention(insertion_points, model, spec)


def _with_spec_attention(place: Callable[..., Any], model: nn.Module, spec: BaseSpec) -> Any:
    """`place` (`attach` or `insertion_points`) called on `model` with the spec's attention and placement; a mistake is the spec's `SpecError`."""
    try:
        return place(model, spec.attention, after=spec.attention.after, replace=spec.attention.replace, input_shape=spec.input_shape(1) if spec.attention.after else None)
    except OptionError as exc:
        raise SpecError(f"spec '{spec.name}': attention on {spec.base}: {exc}") from None


def build_base(spec: BaseSpec) -> nn.Module:
    """The base model with the spec's attention attached, carrying its spec as `model.spec` (as every model ecacli builds).

    Off the meta device it is first built on the meta device (where its builder runs there) and refused past
    MAX_BASE_MODULES modules or MAX_WEIGHTS parameters and buffers before any weight is allocated.
    """
    if torch.get_default_device().type != "meta":
        try:
            with torch.device("meta"):
                build_base(spec)
        except _NotOnMeta:
            pass  # bounded as it allocates (`_AllocationBudget`)
    model = base_model(spec)
    model.spec = spec
    if spec.attention.type == "none" and spec.attention.replace is None:
        return model
    model = _with_spec_attention(attach, model, spec)
    _check_weights(spec, model)
    return model

"""Attention in networks ecacli did not build: `attach(model, attention, after=GLOB)` gates the output of every module a glob over qualified names matches, and `attach(model, attention, replace="se")` puts it in place of every squeeze-and-excitation module.

Where a match is a child of a plain `nn.Sequential`, the attention is inserted after it; elsewhere
the match's class is swapped for a small subclass whose forward gates its output (its own
state-dict names stay) and the attention is registered in the match's parent, under the type's
module name (`layer1.0.eca`), or `<name>_<child>` (`eca_bn3`) where one parent holds several
matches; a parent that runs every child (a container) passes it up to the nearest one that does
not. Every check runs before anything changes: a mistake raises `OptionError` and leaves the
model as it was.
"""

from __future__ import annotations

import itertools
import types
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from ecacli.arch.attention import ATTENTION_TYPES, MAX_KERNEL, AttentionSettings, EcaKernelSettings
from ecacli.errors import OptionError, shown
from ecacli.layers.build import build

__all__ = ["InsertionPoint", "SE_CLASS_NAMES", "attach", "attention_settings", "insertion_points", "is_squeeze_excitation"]

SE_CLASS_NAMES = frozenset({"SqueezeExcitation", "SEModule", "EffectiveSEModule", "SqueezeExcite", "SqueezeExcitationBlock", "SEBlock"})
"""Class names of the squeeze-and-excitation modules of torchvision and timm (and the usual names of hand-written ones)."""

REPLACEABLE = ("se",)
MAX_POINTS = 10_000


@dataclass(frozen=True)
class InsertionPoint:
    """Where attention goes: the matched (or replaced) module, the attention's own qualified name, the channels it gates and its ECA k (None for types without one)."""

    name: str
    attention: str
    channels: int
    k: int | None


def attention_settings(attention: str | Mapping[str, Any] | AttentionSettings) -> AttentionSettings:
    """The validated settings of an attention given as a type name, a mapping of the spec's `attention:` keys (type defaults to eca) or settings."""
    if isinstance(attention, AttentionSettings):
        return attention
    if isinstance(attention, str):
        data: dict[str, Any] = {"type": attention}
    elif isinstance(attention, Mapping):
        data = {"type": "eca", **attention}
    else:
        raise OptionError(f"attention must be a type name ({', '.join(ATTENTION_TYPES)}) or a mapping of its keys, got {shown(attention)}.")
    model = ATTENTION_TYPES.get(data["type"]) if isinstance(data["type"], str) else None
    if model is None:
        raise OptionError(f"unknown attention type {shown(data['type'])}; allowed: {', '.join(ATTENTION_TYPES)}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'attention'}: {e['msg']}" for e in exc.errors())
        raise OptionError(f"attention {shown(dict(attention) if isinstance(attention, Mapping) else attention)}: {problems}.") from None


def is_squeeze_excitation(module: nn.Module) -> bool:
    """Whether a module is a squeeze-and-excitation block: a known class name, holding a 1x1 conv (or linear) that squeezes its channels."""
    return type(module).__name__ in SE_CLASS_NAMES and se_channels(module) is not None


def se_channels(module: nn.Module) -> int | None:
    """The channels an SE block gates: the input width of its first conv or linear layer."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            return child.in_channels
        if isinstance(child, nn.Linear):
            return child.in_features
    return None


# --- finding the points ----------------------------------------------------------------------------


PLANAR_TYPES = ("se", "cbam")
"""Attention types that take [N, C, H, W] features only (ECA, CECA and ECA-NS pool over any number of axes)."""


def feature_layout(rank: int | None) -> str:
    """[N, C, L], [N, C, H, W] or [N, C, D, H, W] for 1 to 3 axes after the channels."""
    return "[N, C, " + {1: "L", 2: "H, W", 3: "D, H, W"}.get(rank or 0, f"{rank} axes") + "]"


def _declared_rank(module: nn.Module) -> int | None:
    """How many axes after the channels a module's output has, where its class says (convs, batch norms), else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return len(module.kernel_size)
    for rank, norm in enumerate((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), start=1):
        if isinstance(module, norm):
            return None if rank == 1 else rank  # BatchNorm1d also takes [N, C]
    return None


def _declared_channels(module: nn.Module) -> int | None:
    """Output channels a module declares (convs, norms), or None where only running it tells."""
    if isinstance(module, (nn.modules.conv._ConvNd,)):
        return module.out_channels
    if isinstance(module, (nn.modules.batchnorm._NormBase,)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return None


def _dry_run_shapes(model: nn.Module, names: list[str], input_shape: Sequence[int]) -> dict[str, Any]:
    """The output of each named module for one input of `input_shape`, run on the meta device (no weight is copied, nothing computed)."""
    modules = dict(model.named_modules())
    outputs: dict[str, Any] = {}
    handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, out)) for name in names]
    meta = {key: torch.empty_like(t, device="meta") for key, t in [*model.named_parameters(), *model.named_buffers()]}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            torch.func.functional_call(model, meta, (torch.empty(list(input_shape), device="meta"),))
    except Exception as exc:
        raise OptionError(f"input_shape {list(input_shape)}: the model does not run on it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).") from None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return outputs


def _match_channels(model: nn.Module, names: list[str], input_shape: Sequence[int] | None) -> tuple[dict[str, int], dict[str, int | None]]:
    """The channels of each match's output and its number of axes after the channels (None where unknown); a match whose output is not a channel-first feature map [N, C, ...] is refused."""
    modules = dict(model.named_modules())
    if input_shape is not None:
        if not (isinstance(input_shape, Sequence) and 2 <= len(input_shape) <= 6 and all(isinstance(d, int) and d >= 1 for d in input_shape)):
            raise OptionError(f"input_shape must be a list of 2 to 6 positive integers [N, C, ...], got {shown(input_shape)}.")
        outputs = _dry_run_shapes(model, names, input_shape)
        channels = {}
        for name in names:
            out = outputs.get(name)
            if out is None:
                raise OptionError(f"'{name}' does not run in the model's forward on input_shape {list(input_shape)}: nothing to gate.")
            if not isinstance(out, torch.Tensor) or out.dim() < 3:
                got = f"a tensor of shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise OptionError(f"'{name}' returns {got}, not a channel-first feature map [N, C, L], [N, C, H, W] or [N, C, D, H, W].")
            channels[name] = out.shape[1]
        return channels, {name: outputs[name].dim() - 2 for name in names}
    channels = {}
    for name in names:
        module = modules[name]
        declared = _declared_channels(module)
        if declared is None:
            kind = "a linear layer's output is [N, features], not a channel-first feature map" if isinstance(module, nn.Linear) else "its output width is not declared"
            raise OptionError(
                f"'{name}' ({type(module).__name__}): {kind}; match convs or norm layers, or give input_shape "
                "(e.g. [1, 3, 224, 224]) so a dry run on the meta device reads each match's output."
            )
        channels[name] = declared
    return channels, {name: _declared_rank(modules[name]) for name in names}


def _parent_and_child(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def _qualified(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
"""Modules whose forward (or whose owner's) runs or iterates every child: attention registered in one would run twice."""


def _holder(model: nn.Module, modules: Mapping[str, nn.Module], name: str) -> tuple[str, str]:
    """Where the attention after `name` is registered, and the stem of its name: the match's parent (a plain
    nn.Sequential parent takes it as the next child), else the nearest ancestor that is no container, the
    path below it joined by '_' (`eca_denseblock1_denselayer1`)."""
    parent, child = _parent_and_child(name)
    if _is_plain_sequential(modules[parent]):
        return parent, child
    path = [child]
    while isinstance(modules[parent], CONTAINERS):
        if not parent:
            raise OptionError(f"'{name}' sits in containers up to the model ({type(model).__name__}) itself, which runs every child: match a module that holds it instead.")
        parent, up = _parent_and_child(parent)
        path.insert(0, up)
    return parent, "_".join(path)


def _is_free(modules: Mapping[str, nn.Module], holder: str, child: str, taken: set[str]) -> bool:
    """Whether `child` is a free name in the holder: no module, planned attention or plain attribute (timm's blocks keep `se = None`) has it."""
    return _qualified(holder, child) not in taken and not hasattr(modules[holder], child)


@dataclass(frozen=True)
class _Plan:
    """One change: the point, the module that takes the attention (`holder`), the match's own child name, and the attention's child name."""

    point: InsertionPoint
    holder: str
    child: str
    attention_child: str


def _placement_of(settings: AttentionSettings, after: str | None, replace: str | None) -> tuple[str | None, str | None]:
    """`after` and `replace` as given, else as the attention's own keys give them (a spec's `attention:` mapping)."""
    for key, given, own in (("after", after, settings.after), ("replace", replace, settings.replace)):
        if given is not None and own is not None and given != own:
            raise OptionError(f"{key}={given!r} contradicts the attention's own {key}: {own!r}; give it once.")
    return (after if after is not None else settings.after), (replace if replace is not None else settings.replace)


def _plan(model: nn.Module, settings: AttentionSettings, after: str | None, replace: str | None, input_shape: Sequence[int] | None) -> list[_Plan]:
    after, replace = _placement_of(settings, after, replace)
    if (after is None) == (replace is None):
        raise OptionError("give one of after= (a glob over module names, e.g. 'layer*.*.bn3') or replace='se'.")
    modules = dict(model.named_modules())
    if replace is not None:
        if replace not in REPLACEABLE:
            raise OptionError(f"replace must be one of {', '.join(REPLACEABLE)} (every squeeze-and-excitation module), got {shown(replace)}.")
        names = [name for name, module in modules.items() if name and is_squeeze_excitation(module)]
        names = [name for name in names if not any(name.startswith(other + ".") for other in names)]
        if not names:
            raise OptionError(
                f"replace='se': {type(model).__name__} holds no squeeze-and-excitation module "
                f"(classes {', '.join(sorted(SE_CLASS_NAMES))}); use after= to insert attention instead."
            )
        channels = {name: se_channels(modules[name]) for name in names}
    else:
        if not isinstance(after, str) or not after or len(after) > 500:
            raise OptionError(f"after must be a glob over qualified module names such as 'layer*.*.bn3', got {shown(after)}.")
        names = [name for name in modules if name and fnmatchcase(name, after)]
        if not names:
            sample = ", ".join(name for name in list(modules)[1:9])
            raise OptionError(f"after={shown(after)} matches no module of {type(model).__name__}; its modules are named like {sample}, ...")
        gated = [name for name in names if type(modules[name]) in _GATED_CLASSES.values()]
        if gated:
            raise OptionError(f"'{gated[0]}' already has attention attached after it; attach once per module.")
        channels, ranks = _match_channels(model, names, input_shape)
        flat = [name for name in names if ranks[name] not in (None, 2)]
        if settings.type in PLANAR_TYPES and flat:
            raise OptionError(
                f"'{flat[0]}' gives {feature_layout(ranks[flat[0]])} features; {settings.type} takes [N, C, H, W] only "
                "(eca, ceca and eca_ns take [N, C, L], [N, C, H, W] and [N, C, D, H, W])."
            )
    if len(names) > MAX_POINTS:
        raise OptionError(f"{len(names):,} matches; at most {MAX_POINTS:,} insertion points.")
    kernels = _kernels(settings, names, channels)
    holders = {name: (_parent_and_child(name)[0], _parent_and_child(name)[1]) if replace is not None else _holder(model, modules, name) for name in names}
    per_holder = Counter(holder for holder, _ in holders.values())
    plans, taken = [], set(modules)
    base_name = settings.module_name or settings.type
    for name, k in zip(names, kernels):
        holder, stem = holders[name]
        if replace is None:
            stem = base_name if per_holder[holder] == 1 and _is_free(modules, holder, base_name, taken) else f"{base_name}_{stem}"
            if not _is_free(modules, holder, stem, taken):
                raise OptionError(f"'{holder or type(model).__name__}' already has a module named '{stem}': the attention after '{name}' has no free name.")
            taken.add(_qualified(holder, stem))
        plans.append(_Plan(InsertionPoint(name, _qualified(holder, stem), channels[name], k), holder, _parent_and_child(name)[1], stem))
    return plans


def _kernels(settings: AttentionSettings, names: list[str], channels: Mapping[str, int]) -> list[int | None]:
    if not isinstance(settings, EcaKernelSettings):
        return [None] * len(names)
    widths = [channels[name] for name in names]
    if isinstance(settings.k_size, list) and len(settings.k_size) != len(names):
        raise OptionError(f"attention k_size gives {len(settings.k_size)} kernel sizes for {len(names)} insertion points; give one k, 'adaptive', or one k per point.")
    try:
        kernels = settings.kernel_sizes(widths, widths)
    except ValueError as exc:
        raise OptionError(f"attention: the adaptive rule cannot give a kernel size: {exc}.") from None
    for name, k, width in zip(names, kernels, widths):
        if k > MAX_KERNEL:
            raise OptionError(f"attention: k = {k} at '{name}' is above the largest allowed k of {MAX_KERNEL}; raise gamma or lower b.")
        if k > width:
            raise OptionError(f"attention: k = {k} at '{name}' is wider than the {width} channels it slides over; use an odd k of at most {width if width % 2 else width - 1}.")
    return kernels


def insertion_points(
    model: nn.Module,
    attention: str | Mapping[str, Any] | AttentionSettings = "eca",
    *,
    after: str | None = None,
    replace: str | None = None,
    input_shape: Sequence[int] | None = None,
) -> list[InsertionPoint]:
    """Where `attach` with the same arguments would put attention, with the channels and k of each point; the model is not changed."""
    return [plan.point for plan in _plan(model, attention_settings(attention), after, replace, input_shape)]


# --- changing the model ----------------------------------------------------------------------------


def matched_output(module: nn.Module, x: Any) -> Any:
    """What a gated module computed before it was gated (its original class's forward)."""
    return type(module).matched_forward(module, x)


torch.fx.wrap("matched_output")


def _gated_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.attached_attention(matched_output(self, x))


def _refuse_scripting(self: nn.Module) -> nn.Module:
    raise OptionError(
        f"TorchScript cannot script a {type(self).__name__}: attention attached after a module outside an nn.Sequential lives in the module's parent, "
        "which a scripted module cannot reach. Export as ONNX or torch.export (pt2), or trace (torch.jit.trace); attention after children of an nn.Sequential scripts."
    )


def scriptable(model: nn.Module) -> bool:
    """Whether torch.jit.script takes the model: not where attention gates a module outside an nn.Sequential (its class was swapped)."""
    return not any(type(module) in _GATED_CLASSES.values() for module in model.modules())


def _renamed(function: types.FunctionType, name: str) -> types.FunctionType:
    """A copy of a function under another name (tools that compile methods key them by the function's name)."""
    copy = types.FunctionType(function.__code__.replace(co_name=name), function.__globals__, name, function.__defaults__, function.__closure__)
    copy.__qualname__ = f"{function.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
    copy.__module__ = function.__module__
    return copy


def gated_instance(base: type[nn.Module]) -> nn.Module:
    """An empty instance of `base`'s gated class, for unpickling (its state follows)."""
    return object.__new__(gated_class(base))


def _reduce_gated(self: nn.Module, protocol: int) -> tuple:
    """Pickle (and deepcopy) by the base class, which can be imported, rather than the gated class made at run time."""
    return gated_instance, (type(self).__bases__[0],), self.__dict__


_GATED_CLASSES: dict[type, type] = {}


def gated_class(base: type[nn.Module]) -> type[nn.Module]:
    """The subclass of `base` whose forward returns `self.attached_attention(base.forward(self, x))` (one per base class)."""
    if base not in _GATED_CLASSES:
        namespace = {
            "__module__": __name__,
            "__doc__": f"{base.__name__} whose output goes through the attention attached after it (`attached_attention`, registered in its parent).",
            "matched_forward": _renamed(base.forward, "matched_forward") if isinstance(base.forward, types.FunctionType) else base.forward,
            "forward": _gated_forward,
            "__prepare_scriptable__": _refuse_scripting,
            "__reduce_ex__": _reduce_gated,
        }
        _GATED_CLASSES[base] = type(f"Gated{base.__name__}", (base,), namespace)
    return _GATED_CLASSES[base]


def _attention_module(settings: AttentionSettings, point: InsertionPoint) -> nn.Module:
    node = settings.node(point.channels, point.k)
    if node is None:
        return nn.Identity()
    if node.kind == "EcaModule":
        node.args["impl"] = "reference"  # attached attention runs the module path (no fused residual tail)
    return build(node)


def _placement(*modules: nn.Module) -> dict[str, Any]:
    """The device and floating dtype of the first floating tensor the modules hold (new attention joins them there), or {} where they hold none."""
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


def _insert_into_sequential(parent: nn.Sequential, after_child: str, name: str, module: nn.Module) -> None:
    entries = list(parent._modules.items())
    parent._modules = OrderedDict()
    for key, child in entries:
        parent._modules[key] = child
        if key == after_child:
            parent._modules[name] = module


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def attach(
    model: nn.Module,
    attention: str | Mapping[str, Any] | AttentionSettings = "eca",
    *,
    after: str | None = None,
    replace: str | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Put attention into `model` (in place; returns it): gating the output of every module whose qualified name matches the glob `after`, or in place of every squeeze-and-excitation module (`replace="se"`).

    `attention`: a type name (eca, ceca, eca_ns, se, cbam, none) or a mapping of the spec's
    attention keys (k_size, gamma, b, ..., after and replace too); adaptive k comes from each point's channels (the
    match's out_channels / num_features, or with `input_shape` a dry run on the meta device).
    New attention is freshly initialised. `OptionError` on any mistake, the model unchanged.
    """
    if not isinstance(model, nn.Module):
        raise OptionError(f"attach needs an nn.Module, got {type(model).__name__}.")
    settings = attention_settings(attention)
    plans = _plan(model, settings, after, replace, input_shape)
    after, replace = _placement_of(settings, after, replace)
    modules = dict(model.named_modules())
    built = [_attention_module(settings, plan.point).to(**_placement(modules[plan.point.name], modules[plan.holder], model)) for plan in plans]
    if settings.type == "none" and replace is None:
        return model
    for plan, new in zip(plans, built):
        holder = modules[plan.holder]
        if replace is not None:
            setattr(holder, plan.child, new)
        elif _is_plain_sequential(holder) and _parent_and_child(plan.point.name)[0] == plan.holder:
            _insert_into_sequential(holder, plan.child, plan.attention_child, new)
        else:
            match = modules[plan.point.name]
            holder.add_module(plan.attention_child, new)
            match.__class__ = gated_class(type(match))
            object.__setattr__(match, "attached_attention", new)  # a reference, not a submodule: its weights are the holder's
    return model

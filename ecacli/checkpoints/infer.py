"""Inferring a spec from a state_dict's tensor names and shapes, and checking a state_dict against a spec.

The names and shapes are read by the model family's own description (`ecacli.arch.resnet.infer`:
block counts from the `layerN.M` indices, block type, widths and classes from shapes, the stem
from the stem registry, each block's attention from the attention registry); here they are
checked, key by key, against the model the inferred or given spec builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ecacli.arch import KINDS
from ecacli.arch.attention import is_attention
from ecacli.arch.resnet import LayoutError
from ecacli.checkpoints.io import CheckpointError
from ecacli.spec import NetworkSpec, infer
from ecacli.spec_loader import spec_from_data

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
OPTIONAL_BUFFER = "num_batches_tracked"


def is_parameter(key: str) -> bool:
    """True for learnable weights; False for BatchNorm's running statistics and step counter."""
    return not key.endswith(BN_BUFFERS)


def parameter_count(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for key, t in tensors.items() if is_parameter(key))


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in tensors.items()}


def fitting_k_size(tensors: Mapping[str, torch.Tensor]) -> int | list[int] | None:
    """The spec `attention.k_size` the file's ECA kernels fit, or None if it has none or its layout cannot be described."""
    try:
        attention = infer(shapes_of(tensors), "file")["attention"]
    except LayoutError:
        return None
    return attention.get("k_size")


def infer_spec_data(tensors: Mapping[str, torch.Tensor], name: str) -> dict:
    """Spec data (for `spec_from_data`) describing a state_dict with ecacli's names."""
    try:
        return infer(shapes_of(tensors), name)
    except LayoutError as exc:
        raise CheckpointError(str(exc)) from None


def infer_spec(tensors: Mapping[str, torch.Tensor], name: str) -> NetworkSpec:
    """The spec of a state_dict with ecacli's names; refuses (with what was found) what a spec cannot describe."""
    data = infer_spec_data(tensors, name)
    spec = spec_from_data(data, label="inferred spec")
    report = check_against(spec, tensors)
    if not report.loads:
        raise CheckpointError(
            "the tensors do not fit any spec ecacli can express: the closest, "
            f"{_describe(data)}, differs in:\n{report.describe()}"
        )
    return spec


def _describe(data: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in data.items() if key != "name")


def is_attention_module(module: torch.nn.Module) -> bool:
    """Whether a built module is an attention module (its class is a registered attention Kind's)."""
    return any(is_attention(kind.name) and type(module).__name__ == kind.type_name for kind in KINDS.values())


def model_shapes(spec: NetworkSpec, **build: Any) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], set[str]]:
    """Every state_dict key of the spec's model (`build`: `build_model`'s options) with its shape and dtype, and the keys of its attention modules, computed without allocating weights."""
    from ecacli.models import build_model

    with torch.device("meta"):
        model = build_model(spec, **build)
    attention = {f"{prefix}.{key}" for prefix, module in model.named_modules() if is_attention_module(module) for key in module.state_dict()}
    return {key: (tuple(t.shape), t.dtype) for key, t in model.state_dict().items()}, attention


LOADABLE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACCEPTED_KINDS = {"float": ("float",), "integer": ("integer", "float")}


def dtype_kind(dtype: torch.dtype) -> str:
    """'float' for the floating types a model computes in, else 'integer', 'bool', 'complex' or the dtype's own name (float8 ...)."""
    if dtype in LOADABLE_FLOATS:
        return "float"
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return str(dtype).removeprefix("torch.")
    return "integer"


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Names of the floating-point (or complex) tensors holding NaN or Inf, with how many such values each holds."""
    counts = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int(tensor.numel() - torch.isfinite(tensor).sum())
            if bad:
                counts[key] = bad
    return counts


def describe_nonfinite(counts: Mapping[str, int], limit: int = 3) -> str:
    """'3 tensors hold NaN or Inf values: fc.weight (2 values), ...' for messages."""
    shown_items = [f"{key} ({count:,} value{'s' if count > 1 else ''})" for key, count in list(counts.items())[:limit]]
    more = f", ... ({len(counts) - limit} more)" if len(counts) > limit else ""
    return f"{len(counts)} tensor{'s hold' if len(counts) > 1 else ' holds'} NaN or Inf values: {', '.join(shown_items)}{more}"


@dataclass
class LoadReport:
    """How a state_dict fits a spec's model: keys it lacks, keys it has extra, and shapes that differ."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    wrong_kind: list[tuple[str, str, str]] = field(default_factory=list)
    fitting_k_size: int | list[int] | None = None
    attention_keys: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)
    """Keys of the file a feature extractor has no use for (its classifier, deeper stages)."""
    replaced: list[str] = field(default_factory=list)
    """Keys of the file's modules a base spec's attention replaces (`attention.replace: se`): the attention takes their place, freshly initialised."""

    @property
    def loads(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.wrong_kind)

    @property
    def only_attention_missing(self) -> bool:
        """True when everything loads but the attention modules' weights (a plain network into an ECA one)."""
        return bool(self.missing) and not (self.unexpected or self.mismatched or self.wrong_kind) and all(key in self.attention_keys for key in self.missing)

    def describe(self, limit: int = 12) -> str:
        lines = []
        for label, items in (
            ("missing from the file", self.missing),
            ("not in the model", self.unexpected),
            ("shape differs (file vs model)", [f"{key}: {list(a)} vs {list(b)}" for key, a, b in self.mismatched]),
            ("wrong kind of number (file vs model)", [f"{key}: {a} vs {b}" for key, a, b in self.wrong_kind]),
        ):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                lines.append(f"  {label} ({len(items)}): {shown}")
        if any(key in self.attention_keys for key, _, _ in self.mismatched) and self.fitting_k_size is not None:
            value = self.fitting_k_size if isinstance(self.fitting_k_size, int) else ",".join(map(str, self.fitting_k_size))
            lines.append(f"  the file's ECA kernels fit attention.k_size: {self.fitting_k_size} (--set 'attention.k_size=[{value}]')")
        if self.only_attention_missing:
            lines.append("  the file has no attention weights: `ecacli export SPEC --from FILE` initialises them (a warm start for fine-tuning)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "loads_strictly": self.loads,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [{"key": key, "file": list(a), "model": list(b)} for key, a, b in self.mismatched],
            "wrong_kind": [{"key": key, "file": a, "model": b} for key, a, b in self.wrong_kind],
            "fitting_k_size": self.fitting_k_size,
        }


def replaced_modules(spec: NetworkSpec) -> list:
    """The modules of a base spec's base that its attention replaces (none for other specs)."""
    if not spec.attaches or spec.attention.replace is None:
        return []
    from ecacli.models.base import base_insertion_points

    return base_insertion_points(spec)  # type: ignore[arg-type]


def check_against(spec: NetworkSpec, tensors: Mapping[str, torch.Tensor], **build: Any) -> LoadReport:
    """Compare a state_dict with the spec's model key by key: names, shapes, and the kind of number
    (float weights must be float16, bfloat16, float32 or float64; integer counters real numbers).
    A BN step counter, missing or extra (a frozen BN has none), is not a mismatch. For a feature
    extractor (`build`: `build_model`'s options) the file's other keys (classifier, deeper stages)
    are `dropped`, not unexpected.
    """
    expected, attention = model_shapes(spec, **build)
    report = LoadReport(fitting_k_size=fitting_k_size(tensors), attention_keys=attention)
    for key, (shape, dtype) in expected.items():
        if key not in tensors:
            if not key.endswith(OPTIONAL_BUFFER):
                report.missing.append(key)
        elif tuple(tensors[key].shape) != shape:
            report.mismatched.append((key, tuple(tensors[key].shape), shape))
        elif dtype_kind(tensors[key].dtype) not in ACCEPTED_KINDS.get(dtype_kind(dtype), (dtype_kind(dtype),)):
            report.wrong_kind.append((key, str(tensors[key].dtype).removeprefix("torch."), dtype_kind(dtype)))
    extra = [key for key in tensors if key not in expected and not key.endswith(OPTIONAL_BUFFER)]
    replaced = tuple(f"{point.name}." for point in replaced_modules(spec))
    report.replaced = [key for key in extra if key.startswith(replaced)] if replaced else []
    extra = [key for key in extra if key not in report.replaced]
    if build.get("features_only"):
        report.dropped = extra
    else:
        report.unexpected = extra
    return report

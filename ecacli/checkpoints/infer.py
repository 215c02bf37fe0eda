"""Inferring a spec from a state_dict's tensor names and shapes, and checking a state_dict against a spec.

Works on ecacli's names (torchvision's plus `eca.conv`): block counts from the `layerN.M`
indices, block type from `conv3`, widths and classes from shapes, the stem from `conv1`'s
shape(s), shortcut pooling from `downsample.2`, and each stage's ECA k from `eca.conv.weight`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Mapping

import torch

from ecacli.checkpoints.io import CheckpointError
from ecacli.spec import DEPTHS, NUM_STAGES, ResNetSpec
from ecacli.spec_loader import spec_from_data

BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
ECA_KEY = re.compile(r"^layer(\d+)\.(\d+)\.eca\.conv\.weight$")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
OPTIONAL_BUFFER = "num_batches_tracked"


def is_parameter(key: str) -> bool:
    """True for learnable weights; False for BatchNorm's running statistics and step counter."""
    return not key.endswith(BN_BUFFERS)


def parameter_count(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for key, t in tensors.items() if is_parameter(key))


def _shape(tensors: Mapping[str, torch.Tensor], key: str, what: str, ndim: int) -> tuple[int, ...]:
    """The shape of `tensors[key]`, which must exist and have `ndim` dimensions (a conv weight 4, a linear one 2)."""
    if key not in tensors:
        raise CheckpointError(f"cannot infer the {what}: the state_dict has no '{key}'.")
    shape = tuple(tensors[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"cannot infer the {what}: '{key}' has shape {list(shape)}; expected {ndim} dimensions.")
    return shape


def stage_blocks(tensors: Mapping[str, torch.Tensor]) -> list[int]:
    """Blocks per stage from the `layerN.M.` indices; all four stages with indices 0..M-1."""
    indices: dict[int, set[int]] = {}
    for key in tensors:
        found = BLOCK_KEY.match(key)
        if found:
            indices.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
    stages = sorted(indices)
    if stages != list(range(1, NUM_STAGES + 1)):
        named = ", ".join(f"layer{s}" for s in stages) or "none"
        raise CheckpointError(f"cannot infer the layout: expected the stages layer1..layer{NUM_STAGES}, found {named}.")
    counts = []
    for stage in stages:
        blocks = sorted(indices[stage])
        if blocks != list(range(len(blocks))):
            raise CheckpointError(f"cannot infer the layout: layer{stage} has blocks {blocks}, not 0..{len(blocks) - 1}.")
        counts.append(len(blocks))
    return counts


def stage_kernel_sizes(tensors: Mapping[str, torch.Tensor]) -> list[list[int]]:
    """The ECA k of every block, grouped by stage (empty lists when there are no ECA kernels)."""
    per_stage: dict[int, dict[int, int]] = {}
    for key, tensor in tensors.items():
        found = ECA_KEY.match(key)
        if found:
            _, _, k = _shape(tensors, key, "ECA kernel size", 3)
            per_stage.setdefault(int(found.group(1)), {})[int(found.group(2))] = k
    return [[k for _, k in sorted(per_stage.get(stage, {}).items())] for stage in range(1, NUM_STAGES + 1)]


def fitting_k_size(tensors: Mapping[str, torch.Tensor]) -> int | list[int] | None:
    """The spec `attention.k_size` the file's ECA kernels fit, or None if it has none, k varies within a stage, or a kernel is malformed."""
    try:
        stages = stage_kernel_sizes(tensors)
    except CheckpointError:
        return None
    if not any(stages) or any(len(set(ks)) != 1 for ks in stages):
        return None
    kernels = [ks[0] for ks in stages]
    return kernels[0] if len(set(kernels)) == 1 else kernels


def _attention(tensors: Mapping[str, torch.Tensor], blocks: list[int]) -> dict:
    stages = stage_kernel_sizes(tensors)
    if not any(stages):
        return {"type": "none"}
    for stage, (ks, count) in enumerate(zip(stages, blocks), start=1):
        if len(ks) != count:
            raise CheckpointError(
                f"cannot infer the attention: layer{stage} has {count} blocks but {len(ks)} ECA kernels; "
                "a spec puts ECA in every block or in none."
            )
        if len(set(ks)) != 1:
            raise CheckpointError(
                f"cannot infer the attention: the ECA kernel sizes of layer{stage} differ between blocks ({ks}); "
                "a spec has one k per stage, so this checkpoint cannot be described."
            )
    return {"type": "eca", "k_size": fitting_k_size(tensors)}


def _stem(tensors: Mapping[str, torch.Tensor], width: int) -> dict:
    if "conv1.weight" in tensors:
        out_ch, in_ch, kernel, _ = _shape(tensors, "conv1.weight", "stem", 4)
        stems = {7: "imagenet", 3: "cifar"}
        if kernel not in stems:
            raise CheckpointError(f"cannot infer the stem: conv1.weight is a {kernel}x{kernel} conv; expected 7x7 (imagenet) or 3x3 (cifar).")
        return {"stem": stems[kernel], "in_chans": in_ch, **({"stem_width": out_ch} if out_ch != width else {})}
    if "conv1.0.weight" in tensors:
        first, in_ch, _, _ = _shape(tensors, "conv1.0.weight", "deep stem", 4)
        inner = _shape(tensors, "conv1.3.weight", "deep stem", 4)[0]
        if first == inner:
            stem = "deep"
        elif first == 3 * (inner // 4):
            stem = "deep_tiered"
        else:
            raise CheckpointError(
                f"cannot infer the stem: its first two convs have {first} and {inner} channels; "
                f"a deep stem has equal widths, a deep_tiered one {3 * (inner // 4)} and {inner}."
            )
        return {"stem": stem, "in_chans": in_ch, **({"stem_width": inner} if inner != width // 2 else {})}
    raise CheckpointError("cannot infer the stem: the state_dict has neither 'conv1.weight' nor a deep stem 'conv1.0.weight'.")


def infer_spec_data(tensors: Mapping[str, torch.Tensor], name: str) -> dict:
    """Spec data (for `spec_from_data`) describing a state_dict with ecacli's names."""
    blocks = stage_blocks(tensors)
    block = "bottleneck" if "layer1.0.conv3.weight" in tensors else "basic"
    width = _shape(tensors, "layer1.0.conv1.weight", "width", 4)[0]
    num_classes = _shape(tensors, "fc.weight", "number of classes (the classifier fc)", 2)[0]
    depth = next((depth for depth, known in DEPTHS.items() if known == (block, tuple(blocks))), None)
    data: dict = {"name": name, **({"depth": depth} if depth else {"layers": blocks, "block": block})}
    data.update(_stem(tensors, width))
    if any(key.endswith(".downsample.2.weight") for key in tensors):
        data["downsample"] = "avg"
    data.update({"width": width, "num_classes": num_classes, "attention": _attention(tensors, blocks)})
    return data


def infer_spec(tensors: Mapping[str, torch.Tensor], name: str) -> ResNetSpec:
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


def model_shapes(spec: ResNetSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every state_dict key of the spec's model with its shape and dtype, computed without allocating weights."""
    from ecacli.models import build_model

    with torch.device("meta"):
        model = build_model(spec)
    return {key: (tuple(t.shape), t.dtype) for key, t in model.state_dict().items()}


LOADABLE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_kind(dtype: torch.dtype) -> str:
    """'float' for the floating types a model computes in, else 'integer', 'bool', 'complex' or the dtype's own name."""
    if dtype in LOADABLE_FLOATS:
        return "float"
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return str(dtype).removeprefix("torch.")
    return "integer"


ACCEPTED_KINDS = {"float": ("float",), "integer": ("integer", "float")}


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

    @property
    def loads(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.wrong_kind)

    @property
    def only_eca_missing(self) -> bool:
        """True when everything loads but the ECA kernels (a plain ResNet into an ECA-ResNet)."""
        return bool(self.missing) and not (self.unexpected or self.mismatched or self.wrong_kind) and all(".eca." in key for key in self.missing)

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
        if any(".eca." in key for key, _, _ in self.mismatched) and self.fitting_k_size is not None:
            value = self.fitting_k_size if isinstance(self.fitting_k_size, int) else ",".join(map(str, self.fitting_k_size))
            lines.append(f"  the file's ECA kernels fit attention.k_size: {self.fitting_k_size} (--set 'attention.k_size=[{value}]')")
        if self.only_eca_missing:
            lines.append("  the file has no ECA kernels: `ecacli export SPEC --from FILE` initialises them (a warm start for fine-tuning)")
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


def check_against(spec: ResNetSpec, tensors: Mapping[str, torch.Tensor]) -> LoadReport:
    """Compare a state_dict with the spec's model key by key: names, shapes, and the kind of number
    (float weights must be float16, bfloat16, float32 or float64; integer counters real numbers).
    A missing BN step counter is not a mismatch.
    """
    expected = model_shapes(spec)
    report = LoadReport(fitting_k_size=fitting_k_size(tensors))
    for key, (shape, dtype) in expected.items():
        if key not in tensors:
            if not key.endswith(OPTIONAL_BUFFER):
                report.missing.append(key)
        elif tuple(tensors[key].shape) != shape:
            report.mismatched.append((key, tuple(tensors[key].shape), shape))
        elif dtype_kind(tensors[key].dtype) not in ACCEPTED_KINDS[dtype_kind(dtype)]:
            report.wrong_kind.append((key, str(tensors[key].dtype).removeprefix("torch."), dtype_kind(dtype)))
    report.unexpected = [key for key in tensors if key not in expected]
    return report

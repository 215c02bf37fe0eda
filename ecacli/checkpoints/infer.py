"""Inferring a spec from a state_dict's tensor names and shapes, and checking a state_dict against a spec.

The names and shapes are read by the model family's own description (`ecacli.arch.resnet.infer`:
block counts from the `layerN.M` indices, block type, widths and classes from shapes, the stem
from the stem registry, each block's attention from the attention registry); here they are
checked, key by key, against the model the inferred or given spec builds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ecacli.arch import resnet
from ecacli.checkpoints.io import CheckpointError
from ecacli.spec import NUM_STAGES, NetworkSpec
from ecacli.spec_loader import spec_from_data

ECA_KEY = re.compile(r"^layer(\d+)\.(\d+)\.eca\.conv\.weight$")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
OPTIONAL_BUFFER = "num_batches_tracked"


def is_parameter(key: str) -> bool:
    """True for learnable weights; False for BatchNorm's running statistics and step counter."""
    return not key.endswith(BN_BUFFERS)


def parameter_count(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for key, t in tensors.items() if is_parameter(key))


def stage_kernel_sizes(tensors: Mapping[str, torch.Tensor]) -> list[list[int]]:
    """The ECA k of every block, grouped by stage (empty lists when there are no ECA kernels)."""
    per_stage: dict[int, dict[int, int]] = {}
    for key, tensor in tensors.items():
        found = ECA_KEY.match(key)
        if found:
            per_stage.setdefault(int(found.group(1)), {})[int(found.group(2))] = int(tensor.shape[-1])
    return [[k for _, k in sorted(per_stage.get(stage, {}).items())] for stage in range(1, NUM_STAGES + 1)]


def fitting_k_size(tensors: Mapping[str, torch.Tensor]) -> int | list[int] | None:
    """The spec `attention.k_size` the file's ECA kernels fit, or None if it has none or k varies within a stage."""
    stages = stage_kernel_sizes(tensors)
    if not any(stages) or any(len(set(ks)) != 1 for ks in stages):
        return None
    kernels = [ks[0] for ks in stages]
    return kernels[0] if len(set(kernels)) == 1 else kernels


def infer_spec_data(tensors: Mapping[str, torch.Tensor], name: str) -> dict:
    """Spec data (for `spec_from_data`) describing a state_dict with ecacli's names."""
    try:
        return resnet.infer({key: tuple(t.shape) for key, t in tensors.items()}, name)
    except resnet.LayoutError as exc:
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


def model_shapes(spec: NetworkSpec) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the spec's model with its shape, computed without allocating weights."""
    from ecacli.models import build_model

    with torch.device("meta"):
        model = build_model(spec)
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}


@dataclass
class LoadReport:
    """How a state_dict fits a spec's model: keys it lacks, keys it has extra, and shapes that differ."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    fitting_k_size: int | list[int] | None = None

    @property
    def loads(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def only_eca_missing(self) -> bool:
        """True when everything loads but the ECA kernels (a plain ResNet into an ECA-ResNet)."""
        return bool(self.missing) and not (self.unexpected or self.mismatched) and all(".eca." in key for key in self.missing)

    def describe(self, limit: int = 12) -> str:
        lines = []
        for label, items in (
            ("missing from the file", self.missing),
            ("not in the model", self.unexpected),
            ("shape differs (file vs model)", [f"{key}: {list(a)} vs {list(b)}" for key, a, b in self.mismatched]),
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
            "fitting_k_size": self.fitting_k_size,
        }


def check_against(spec: NetworkSpec, tensors: Mapping[str, torch.Tensor]) -> LoadReport:
    """Compare a state_dict with the spec's model key by key; a missing BN step counter is not a mismatch."""
    expected = model_shapes(spec)
    report = LoadReport(fitting_k_size=fitting_k_size(tensors))
    for key, shape in expected.items():
        if key not in tensors:
            if not key.endswith(OPTIONAL_BUFFER):
                report.missing.append(key)
        elif tuple(tensors[key].shape) != shape:
            report.mismatched.append((key, tuple(tensors[key].shape), shape))
    report.unexpected = [key for key in tensors if key not in expected]
    return report

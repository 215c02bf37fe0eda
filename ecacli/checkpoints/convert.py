"""Recognising where a checkpoint comes from and renaming its tensors to ecacli's names.

Sources: ecacli's own files; the paper's released training checkpoints (a dict with
`state_dict` whose keys carry DataParallel's `module.` prefix), ECA-ResNets and ECA-MobileNetV2;
torchvision ResNet and MobileNetV2 state_dicts (no attention); timm resnet-family checkpoints,
whose attention module is named `se`.
Anything else is reported with what was found and what is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from ecacli.checkpoints.io import CheckpointError, RawCheckpoint
from ecacli.errors import cut, describe_path, shown
from ecacli.spec import family_of

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
TRAINING_FIELDS = ("epoch", "arch", "best_prec1", "best_acc1", "metric")
DATA_PARALLEL_PREFIX = "module."
TIMM_ECA = re.compile(r"^(layer\d+\.\d+)\.se\.conv\.weight$")
TIMM_ATTENTION = re.compile(r"^layer\d+\.\d+\.se\.")
RESNET_KEYS = re.compile(r"^(conv1|bn1|layer[1-4]\.\d+|fc)\.")
MOBILENET_KEYS = re.compile(r"^(features\.\d+|classifier\.\d+)\.")

TIMM_ECA_NOTE = (
    "renamed timm's 'se.conv' (ECA) to 'eca.conv'; timm's CECA (circular padding) has the same weights: "
    "ECA's zero padding is assumed (--set attention.type=ceca for a CecaModule source)"
)

PAPER = "paper"
ECACLI = "ecacli"
TIMM = "timm"
TORCHVISION = "torchvision"
UNKNOWN = "unknown"


@dataclass
class SourceState:
    """A checkpoint's tensors under ecacli's names, with where they came from and what was done to them."""

    source: str
    label: str
    tensors: dict[str, torch.Tensor]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def has_eca(self) -> bool:
        """Whether any block carries an ECA-family gate conv (a 3-d `conv.weight`; the networks' own convs are 4-d)."""
        return has_eca_kernels(self.tensors)

    def require_supported(self, path: Path) -> None:
        if self.problem:
            raise CheckpointError(f"{path}: unsupported checkpoint: {self.problem}")


def has_eca_kernels(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(key.endswith("conv.weight") and t.dim() == 3 for key, t in tensors.items())


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _plain(value: Any) -> Any:
    """A training checkpoint's scalar field as plain data, for display."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_meta or value.layout != torch.strided:
            return None
        try:
            return value.item()
        except (RuntimeError, NotImplementedError):  # a kind of number .item() does not convert (float8, ...)
            return None
    return value if isinstance(value, (str, Number)) else None


def unwrap(raw: RawCheckpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The state_dict inside a file (itself, or a training checkpoint's `state_dict`), its wrapper's fields, notes."""
    content = raw.content
    label = describe_path(raw.path)
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{label}: holds a {type(content).__name__}, not a state_dict (a mapping of names to tensors).")
    if _is_state_dict(content):
        return check_state_dict(raw.path, content), {}, []
    for key in WRAPPER_KEYS:
        if _is_state_dict(content.get(key)):
            details = {name: _plain(content[name]) for name in TRAINING_FIELDS if name in content and _plain(content[name]) is not None}
            ignored = sorted(cut(str(k), 30) for k in content if k != key)
            notes = [f"took the weights from the training checkpoint's '{key}'" + (f"; not used: {', '.join(ignored[:12])}" if ignored else "")]
            return check_state_dict(raw.path, content[key]), {"wrapper": key, **details}, notes
    found = ", ".join(sorted(cut(str(k), 30) for k in content)[:12])
    raise CheckpointError(
        f"{label}: found a mapping with keys {found}, but no state_dict: expected names mapped to tensors, "
        f"or a training checkpoint with one of {', '.join(WRAPPER_KEYS)} holding them."
    )


WEIGHT_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
"""The floating-point kinds of number a checkpoint's weights may hold (float8, float4 and other narrow formats are refused)."""


def check_state_dict(path: Path, tensors: Mapping[Any, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict as a dict, after refusing what no model can hold: keys that are not text, and
    sparse, quantized, nested or meta (data-less) tensors. One line names the first offender.
    """
    label = describe_path(path)
    for key, tensor in tensors.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{label}: the state_dict has a key that is not text ({shown(key)}); expected tensor names such as 'conv1.weight'.")
        name = shown(key)
        if tensor.is_sparse or tensor.layout != torch.strided:
            raise CheckpointError(f"{label}: tensor {name} is sparse ({tensor.layout}); ecacli loads dense weights only (save tensor.to_dense()).")
        if tensor.is_quantized:
            raise CheckpointError(f"{label}: tensor {name} is quantized ({tensor.dtype}); ecacli loads float weights only (save tensor.dequantize()).")
        if tensor.is_nested:
            raise CheckpointError(f"{label}: tensor {name} is a nested tensor; ecacli loads dense weights only.")
        if tensor.is_meta:
            raise CheckpointError(f"{label}: tensor {name} holds no data (a meta tensor: a shape without values); save the weights themselves.")
        if tensor.is_floating_point() and tensor.dtype not in WEIGHT_FLOAT_DTYPES:
            raise CheckpointError(
                f"{label}: tensor {name} holds {str(tensor.dtype).removeprefix('torch.')} numbers, a wrong kind of number for ecacli's models, "
                "which take float32, float16, bfloat16 or float64 weights; save them converted (tensor.float())."
            )
    return dict(tensors)


def strip_prefix(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop DataParallel's `module.` prefix when every key carries it."""
    if tensors and all(key.startswith(DATA_PARALLEL_PREFIX) for key in tensors):
        stripped = {key[len(DATA_PARALLEL_PREFIX) :]: t for key, t in tensors.items()}
        return stripped, [f"stripped the '{DATA_PARALLEL_PREFIX}' prefix (DataParallel) from every key"]
    return tensors, []


def _unknown(tensors: dict[str, torch.Tensor], problem: str) -> SourceState:
    return SourceState(UNKNOWN, "unrecognised state_dict", tensors, problem=problem)


def classify_mobilenet(tensors: dict[str, torch.Tensor], wrapped: bool, prefixed: bool) -> SourceState:
    """A MobileNetV2 state_dict with torchvision's names: the paper's ECA-MobileNetV2, or torchvision's."""
    if has_eca_kernels(tensors):
        label = "the paper's training checkpoint (ECA-MobileNetV2)" if wrapped or prefixed else "ECA-MobileNetV2 state_dict (the paper's names)"
        return SourceState(PAPER, label, tensors)
    return SourceState(TORCHVISION, "torchvision MobileNetV2 state_dict", tensors)


def classify(tensors: dict[str, torch.Tensor], wrapped: bool, prefixed: bool, ecacli_file: bool) -> SourceState:
    """Name the source from the keys and rename timm's attention; unknown layouts carry the reason.

    A file with ecacli's spec beside or inside it keeps its names as they are: the spec says what they are.
    """
    if ecacli_file:
        return SourceState(ECACLI, "ecacli checkpoint", tensors)
    if tensors and all(MOBILENET_KEYS.match(key) for key in tensors) and family_of(tensors) == "mobilenetv2":  # torchvision's EfficientNet has features.* too
        return classify_mobilenet(tensors, wrapped, prefixed)
    foreign = [key for key in tensors if not RESNET_KEYS.match(key)]
    if foreign or "layer1.0.conv1.weight" not in tensors:
        sample = ", ".join((foreign or sorted(tensors))[:5])
        return _unknown(
            tensors,
            f"found keys such as {sample}; expected a ResNet's conv1, bn1, layer1..layer4 and fc, or a MobileNetV2's features and classifier. "
            "ecacli converts ResNet / ECA-ResNet and MobileNetV2 / ECA-MobileNetV2 checkpoints.",
        )
    timm_attention = [key for key in tensors if TIMM_ATTENTION.match(key)]
    if timm_attention:
        other = [key for key in timm_attention if not TIMM_ECA.match(key)]
        if other:
            return _unknown(
                tensors,
                f"found attention weights that are not ECA ({', '.join(other[:3])}; ECA has one se.conv.weight [1, 1, k] per block). "
                "Specs are inferred for ECA-ResNets only: to load other attention whose names match a spec, give the spec "
                "(`ecacli export SPEC --from FILE`, `ecacli inspect FILE --spec SPEC`, `load_model(FILE, SPEC)`).",
            )
        renamed = {TIMM_ECA.sub(r"\1.eca.conv.weight", key): t for key, t in tensors.items()}
        return SourceState(TIMM, "timm ResNet with ECA attention", renamed, notes=[TIMM_ECA_NOTE])
    has_eca = has_eca_kernels(tensors)
    if has_eca:
        label = "the paper's training checkpoint" if wrapped or prefixed else "ECA-ResNet state_dict (the paper's names)"
        return SourceState(PAPER, label, tensors)
    label = "torchvision ResNet state_dict" if "conv1.weight" in tensors else "timm ResNet state_dict without attention"
    return SourceState(TORCHVISION if "conv1.weight" in tensors else TIMM, label, tensors)


DETECTION_LAYOUTS = {
    "torchvision": ("backbone.body.", ("backbone.fpn", "rpn", "roi_heads", "head")),
    "mmdetection": ("backbone.", ("neck", "rpn_head", "roi_head", "bbox_head", "mask_head")),
}
"""Where a detection checkpoint keeps its backbone, and the detector's other parts: torchvision's
under `backbone.body.` beside `backbone.fpn.` and `rpn.` and `roi_heads.` (or RetinaNet's and
FCOS's `head.`), mmdetection's under `backbone.` beside `neck.`, `rpn_head.`, `roi_head.` (or
older `bbox_head.` and `mask_head.`). A backbone beside anything else (an mmpretrain classifier's
`head.`) makes no detection checkpoint."""


def detection_parts(key: str, prefix: str) -> str:
    """The part of a detector a key belongs to: 'backbone.fpn' for torchvision's FPN, else its first name."""
    return "backbone.fpn" if prefix == DETECTION_LAYOUTS["torchvision"][0] and key.startswith("backbone.fpn.") else key.split(".")[0]


def split_detection(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str], str | None]:
    """A detector's backbone tensors (prefix stripped), what kind of detector checkpoint it was and what was dropped, and notes.

    Otherwise the tensors as they are, with the reason when a backbone sits beside parts no known
    detector has (nothing is dropped then).
    """
    for layout, (prefix, parts) in DETECTION_LAYOUTS.items():
        taken = {key for key in tensors if key.startswith(prefix) and not key.startswith("backbone.fpn.")}
        if not taken or len(taken) == len(tensors):
            continue
        dropped = Counter(detection_parts(key, prefix) for key in tensors if key not in taken)
        unknown = [part for part in dropped if part not in parts]
        if unknown:
            found = ", ".join(f"{cut(part, 30)}.* ({dropped[part]} tensor{'' if dropped[part] == 1 else 's'})" for part in unknown[:5])
            return tensors, {}, [], (
                f"found a backbone under '{prefix}' beside {found}, which no {layout} detector holds (its parts are {', '.join(parts)}): "
                "not read as a detection checkpoint, so no weights are dropped. ecacli converts ResNet / ECA-ResNet and MobileNetV2 / ECA-MobileNetV2 "
                "classifiers with torchvision's, timm's or the paper's names, and the backbones of torchvision's and mmdetection's detectors."
            )
        backbone = {key[len(prefix):]: t for key, t in tensors.items() if key in taken}
        described = ", ".join(f"{part} ({count})" for part, count in dropped.items())
        notes = [f"took the backbone's {len(backbone)} tensors from a {layout} detection checkpoint ({prefix}*); dropped {described}"]
        return backbone, {"detection": layout, "dropped": dict(dropped)}, notes, None
    return tensors, {}, [], None


def detect(raw: RawCheckpoint, has_spec: bool) -> SourceState:
    """Unwrap, strip prefixes, take a detector's backbone and rename a loaded file's tensors; `problem` says why a layout is unsupported."""
    tensors, details, notes = unwrap(raw)
    tensors, prefix_notes = strip_prefix(tensors)
    tensors, detection, detection_notes, not_detection = split_detection(tensors)
    if not_detection and not has_spec:
        state = _unknown(tensors, not_detection)
    else:
        state = classify(tensors, wrapped=bool(details) and not detection, prefixed=bool(prefix_notes), ecacli_file=has_spec)
    if detection and not state.problem:
        state.label = f"{detection['detection']} detection checkpoint, backbone: {state.label}"
    state.details = {**details, **detection}
    state.notes = notes + prefix_notes + detection_notes + state.notes
    return state

"""Checkpoints: export a spec's model, reload and inspect files, convert weights from other sources.

Files ecacli writes: `.safetensors` with the spec (YAML), versions and parameter count in the
metadata, or a plain `.pt` state_dict with the spec in `FILE.yaml` beside it. Files it reads:
those, the paper's training checkpoints, torchvision and timm ResNet state_dicts, always
without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
import yaml

from ecacli.checkpoints.convert import SourceState, detect
from ecacli.checkpoints.infer import LoadReport, check_against, describe_nonfinite, infer_spec, nonfinite_tensors, parameter_count
from ecacli.checkpoints.io import (
    MAX_CHECKPOINT_BYTES,
    SAFETENSORS,
    TORCH,
    TORCH_SUFFIXES,
    CheckpointError,
    RawCheckpoint,
    read_checkpoint,
    sha256_of,
)
from ecacli.atomic import atomic_write, check_writable
from ecacli.errors import OptionError, UserError, check_seed, describe_path
from ecacli.spec import BaseSpec, NetworkSpec
from ecacli.spec_loader import apply_overrides, load_spec, parse_yaml_text, spec_from_data, with_overrides

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "SavedCheckpoint",
    "as_read_by",
    "check_against",
    "check_writable_outputs",
    "converted_spec",
    "load_model",
    "model_with_weights",
    "new_model",
    "nonfinite_tensors",
    "open_checkpoint",
    "parameter_count",
    "save_checkpoint",
    "spec_for",
    "spec_yaml",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPEC_KEY = "spec"
NAME_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)


def spec_path_for(path: Path) -> Path:
    """Where the spec of a `.pt` file lives: `FILE.yaml` beside it."""
    return path.with_name(path.name + ".yaml")


def format_for(path: Path, requested: str | None = None) -> str:
    """The format to write: the one asked for, else `.pt` / `.pth` by suffix, else safetensors."""
    if requested is not None:
        return requested
    return TORCH if path.suffix in TORCH_SUFFIXES else SAFETENSORS


def output_paths(path: Path, fmt: str | None = None) -> list[Path]:
    """The files a save writes: the weights, and for `.pt` the spec beside them."""
    return [path, spec_path_for(path)] if format_for(path, fmt) == TORCH else [path]


def check_writable_outputs(path: str | Path, fmt: str | None = None, force: bool = False) -> None:
    """Refuse early (before building or converting anything) when a save could not write its files."""
    check_writable(output_paths(Path(path), fmt), force)


def spec_yaml(spec: NetworkSpec) -> str:
    return yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False, default_flow_style=None)


def name_from_path(path: Path) -> str:
    """A valid spec name from a file name: known suffixes dropped, other characters replaced by '_'."""
    name = path.name
    while name.endswith(NAME_SUFFIXES):
        name = name[: name.rindex(".")]
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name).lstrip("_.-")[:64]
    return cleaned or "converted"


@dataclass
class Checkpoint:
    """A checkpoint file read safely: raw content, its tensors under ecacli's names, and its own spec if it has one."""

    raw: RawCheckpoint
    state: SourceState
    spec: NetworkSpec | None
    spec_origin: str | None

    @property
    def path(self) -> Path:
        return self.raw.path

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self.state.tensors


def _embedded_spec(raw: RawCheckpoint) -> tuple[NetworkSpec | None, str | None]:
    """The spec stored with the weights: safetensors metadata, or `FILE.yaml` beside a torch file."""
    if SPEC_KEY in raw.metadata:
        label = f"{describe_path(raw.path)} (metadata '{SPEC_KEY}')"
        data, positions = parse_yaml_text(raw.metadata[SPEC_KEY], label)
        if not isinstance(data, dict):
            raise CheckpointError(f"{label}: the stored spec is not a YAML mapping.")
        return spec_from_data(data, label, positions), "file metadata"
    beside = spec_path_for(raw.path)
    if raw.container != SAFETENSORS and os.path.isfile(beside):
        return load_spec(beside), str(beside)
    return None, None


def open_checkpoint(path: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Checkpoint:
    """Read a checkpoint file of any supported source without running code from it."""
    raw = read_checkpoint(path, max_bytes)
    spec, origin = _embedded_spec(raw)
    return Checkpoint(raw, detect(raw, has_spec=spec is not None), spec, origin)


def spec_for(checkpoint: Checkpoint, spec: NetworkSpec | None = None) -> tuple[NetworkSpec, str]:
    """The spec to load a checkpoint with, and where it came from: given, stored, or inferred from the tensors."""
    if spec is not None:
        return spec, "given"
    if checkpoint.spec is not None:
        return checkpoint.spec, checkpoint.spec_origin or "file"
    checkpoint.state.require_supported(checkpoint.path)
    try:
        return infer_spec(checkpoint.tensors, name_from_path(checkpoint.path)), "inferred from tensor names and shapes"
    except UserError as exc:
        raise CheckpointError(f"{describe_path(checkpoint.path)}: {exc}") from None


def as_read_by(checkpoint: Checkpoint, spec: NetworkSpec) -> Checkpoint:
    """The checkpoint as a spec reads it: a base spec's names are the base's own, so its tensors keep the file's names (none renamed to ecacli's)."""
    if not spec.attaches:
        return checkpoint
    as_named = detect(checkpoint.raw, has_spec=True)
    state = replace(checkpoint.state, tensors=as_named.tensors, notes=as_named.notes)
    return Checkpoint(checkpoint.raw, state, checkpoint.spec, checkpoint.spec_origin)


WARM_START_SUFFIX = "_eca_warm"


def converted_spec(checkpoint: Checkpoint, name: str | None = None, overrides: Iterable[str] = ()) -> NetworkSpec:
    """The spec `convert` writes: inferred from the tensors, then `--set` overrides.

    A plain network gets ECA (a warm start): unless `name` is given, its spec is then named after
    the source with `_eca_warm` appended, so it is not mistaken for the plain network.
    """
    base, _ = spec_for(checkpoint)
    data = base.to_yaml_dict()
    if base.attention.type == "none":
        data["attention"] = {"type": "eca"}
    overrides = list(overrides)
    data = apply_overrides(data, overrides)
    attention = data.get("attention")
    warm_start = base.attention.type == "none" and not (isinstance(attention, dict) and attention.get("type") == "none")
    if name:
        data["name"] = name
    elif warm_start and data.get("name") == base.name:
        data["name"] = base.name[: 64 - len(WARM_START_SUFFIX)] + WARM_START_SUFFIX
    return spec_from_data(data, with_overrides("converted spec", overrides))


def new_model(spec: NetworkSpec, seed: int | None = None, **build: Any) -> nn.Module:
    """A freshly initialised model (`build`: `build_model`'s options); with a seed (0 to 2**64 - 1), the same weights every time (the global RNG is left as it was)."""
    from ecacli.models import build_model

    check_seed(seed)
    if seed is None:
        return build_model(spec, **build)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, **build)


def floating_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The one floating-point dtype of a state_dict, or None when it mixes several."""
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def model_with_weights(
    spec: NetworkSpec, checkpoint: Checkpoint, seed: int | None = None, init_missing_eca: bool = False, allow_nonfinite: bool = False, **build: Any
) -> tuple[nn.Module, list[str]]:
    """The spec's model holding the checkpoint's weights (in their dtype), and notes on what was done.

    Any source whose tensors (after renaming) match the spec's names, shapes and kinds of number
    loads, so a given spec also covers layouts `convert` cannot infer. Refuses unless the weights
    load strictly, except that with `init_missing_eca` a checkpoint without any ECA kernels (a
    plain ResNet) loads into an ECA spec with initialised kernels. Weights holding NaN or Inf are
    refused unless `allow_nonfinite`. `build` gives `build_model`'s options (a feature extractor
    takes what it has and leaves the rest, noted).
    """
    checkpoint = as_read_by(checkpoint, spec)
    report = check_against(spec, checkpoint.tensors, **build)
    notes = list(checkpoint.state.notes)
    label = describe_path(checkpoint.path)
    if not report.loads:
        if not (init_missing_eca and report.only_attention_missing and not checkpoint.state.has_eca):
            found = f" ({checkpoint.state.problem})" if checkpoint.state.problem else ""
            raise CheckpointError(f"{label}: the weights do not load into spec '{spec.name}'{found}:\n{report.describe()}")
        kernels = f" (k per {spec.group_noun} {spec.group_kernel_sizes})" if spec.group_kernel_sizes else ""
        notes.append(
            f"the source has no {'ECA kernels' if spec.attention.has_kernel else 'attention weights'}: initialised all {len(report.missing)} of them{kernels}; "
            "everything else was copied - a warm start for fine-tuning"
        )
    if report.replaced:
        notes.append(f"the attention replaces the source's SE modules: left their {len(report.replaced)} tensors unused ({summarise_keys(report.replaced)})")
    nonfinite = nonfinite_tensors(checkpoint.tensors)
    if nonfinite and not allow_nonfinite:
        raise CheckpointError(
            f"{label}: {describe_nonfinite(nonfinite)}; a model with them computes NaN. "
            "To load them anyway: --allow-nonfinite (library: allow_nonfinite=True)."
        )
    if nonfinite:
        notes.append(f"loaded as asked although {describe_nonfinite(nonfinite)}")
    if report.dropped:
        notes.append(f"the feature extractor left {len(report.dropped)} of the file's tensors unused ({summarise_keys(report.dropped)})")
    model = new_model(spec, seed, **build)
    dtype = floating_dtype(checkpoint.tensors)
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(checkpoint.tensors, strict=False)
    return model, notes


def summarise_keys(keys: list[str]) -> str:
    """'fc (2), layer4 (30)': how many keys fall under each top-level name."""
    counts = Counter(key.split(".")[0] for key in keys)
    return ", ".join(f"{name} ({count})" for name, count in counts.items())


def load_model(
    path: str | Path,
    spec: NetworkSpec | str | Path | None = None,
    allow_nonfinite: bool = False,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
) -> nn.Module:
    """The model a checkpoint file describes, holding its weights, in eval mode.

    The spec is the one given (a spec object, preset name or YAML path), else the file's own,
    else inferred from tensor names and shapes; the weights must load strictly (names, shapes,
    float weights as float). A file whose weights hold NaN or Inf is refused unless
    `allow_nonfinite`. With `features_only` it is the spec's feature extractor (`out_indices` as
    in `build_model`), which takes the trunk's weights and leaves the classifier's. Every refusal
    is a `CheckpointError` (a `UserError`) naming the file.
    """
    if out_indices is not None and not features_only:
        raise OptionError("out_indices chooses the levels of a feature extractor; give it with features_only=True.")
    if spec is not None and not isinstance(spec, (NetworkSpec, BaseSpec, str, Path)):
        raise OptionError(f"spec: expected a spec, a preset name or a YAML path, got {type(spec).__name__}.")
    if not isinstance(path, (str, Path)):
        raise OptionError(f"path: expected the path of a checkpoint file (str or Path), got {type(path).__name__}.")
    checkpoint = open_checkpoint(path)
    given = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    model_spec, _ = spec_for(checkpoint, given)
    build = {"features_only": True, "out_indices": out_indices} if features_only else {}
    model, _ = model_with_weights(model_spec, checkpoint, allow_nonfinite=allow_nonfinite, **build)
    return model.eval()


@dataclass
class SavedCheckpoint:
    """What `save_checkpoint` wrote."""

    path: Path
    format: str
    size: int
    sha256: str
    parameters: int
    dtype: str
    spec_path: Path | None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "parameters": self.parameters,
            "dtype": self.dtype,
            "spec_path": str(self.spec_path) if self.spec_path else None,
        }


def file_metadata(spec: NetworkSpec, parameters: int, dtype: str, source: str | None = None) -> dict[str, str]:
    """What ecacli stores with a model it writes (safetensors metadata, ONNX metadata props, graph archives): spec YAML, versions, parameter count, dtype, source."""
    from ecacli import __version__

    return {
        SPEC_KEY: spec_yaml(spec),
        "ecacli_version": __version__,
        "torch_version": torch.__version__,
        "parameters": str(parameters),
        "dtype": dtype,
        **({"source": source} if source else {}),
    }


def cast_floating(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating-point tensors in `dtype` (integer buffers unchanged), detached and contiguous on the CPU."""
    return {
        key: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for key, t in state_dict.items()
    }


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    spec: NetworkSpec,
    path: str | Path,
    fmt: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    source: str | None = None,
) -> SavedCheckpoint:
    """Write weights with their spec atomically; an existing file is replaced only with `force`."""
    from ecacli import __version__

    path = Path(path)
    fmt = format_for(path, fmt)
    tensors = cast_floating(state_dict, DTYPES[dtype] if dtype else None)
    parameters = parameter_count(tensors)
    single = floating_dtype(tensors)
    dtype_name = str(single).removeprefix("torch.") if single else "mixed"
    if fmt == SAFETENSORS:
        from safetensors.torch import save

        metadata = {"format": "pt", **file_metadata(spec, parameters, dtype_name, source)}
        writers = {path: lambda handle: handle.write(save(tensors, metadata))}
        spec_path = None
    else:
        spec_path = spec_path_for(path)
        described = f"written by ecacli {__version__} (torch {torch.__version__}); {parameters:,} parameters, {dtype_name}"
        header = f"# Spec of {path.name}, {described}.\n" + (f"# Converted from {source}.\n" if source else "")
        writers = {path: lambda handle: torch.save(tensors, handle), spec_path: _text_writer(header + spec_yaml(spec))}
    atomic_write(writers, force)
    return SavedCheckpoint(path, fmt, path.stat().st_size, sha256_of(path), parameters, dtype_name, spec_path)


def _text_writer(text: str):
    def write(handle: IO[bytes]) -> None:
        handle.write(text.encode("utf-8"))

    return write

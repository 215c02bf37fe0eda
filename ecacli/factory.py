"""timm's model API over ecacli's presets: `create_model(name_or_spec, pretrained=None, **overrides)` and `list_models(pattern)`.

A model is named by a preset, a spec file or a `NetworkSpec`; keyword overrides are spec keys,
merged and validated as `--set` would, or `build_model`'s options. `pretrained` loads weights
strictly through `ecacli.checkpoints`: a checkpoint file in any layout `convert` reads, or "timm"
for timm's published weights of a preset, fetched through `huggingface_hub` (the `hub` extra)
into its cache. Importing this module does not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecacli.errors import OptionError, SpecError, first_line, shown
from ecacli.spec import NetworkSpec, suggest
from ecacli.spec_loader import apply_overrides, load_spec, preset_names, spec_from_data

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BUILD_OPTIONS", "TIMM", "TIMM_FILE", "TIMM_WEIGHTS", "create_model", "list_models", "timm_weights_file"]

TIMM = "timm"
TIMM_FILE = "model.safetensors"
TIMM_WEIGHTS = {
    "ecaresnet26t": "timm/ecaresnet26t.ra2_in1k",
    "ecaresnet50d": "timm/ecaresnet50d.miil_in1k",
    "ecaresnet50t": "timm/ecaresnet50t.ra2_in1k",
    "ecaresnet101d": "timm/ecaresnet101d.miil_in1k",
    "ecaresnet269d": "timm/ecaresnet269d.ra2_in1k",
    "ecaresnetlight": "timm/ecaresnetlight.miil_in1k",
}
"""The Hugging Face Hub repository of timm's ImageNet-1k weights for each preset that has them (the file: `TIMM_FILE`)."""

BUILD_OPTIONS = ("features_only", "out_indices")
"""`build_model`'s options that are not spec keys (its `frozen_stages` and `norm_eval` are)."""


def list_models(pattern: str | Sequence[str] = "*", pretrained: bool = False) -> list[str]:
    """The preset names matching a shell-style pattern (or any of a list of them), sorted; with `pretrained`, only presets with published weights (`pretrained="timm"`)."""
    patterns = [pattern] if isinstance(pattern, str) else pattern
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise OptionError(f"list_models: pattern must be a shell-style pattern such as 'ecaresnet*' or a list of them, got {shown(pattern)}.")
    names = [name for name in preset_names() if any(fnmatchcase(name, p) for p in patterns)]
    return [name for name in names if name in TIMM_WEIGHTS] if pretrained else names


def create_model(name_or_spec: str | Path | NetworkSpec, pretrained: str | Path | bool | None = None, **overrides: Any) -> nn.Module:
    """The model a preset, spec file or spec describes, with spec keys overridden, as `build_model` builds it (train mode).

    `overrides`: spec keys (`num_classes=10`, `attention={"k_size": 3}`: a mapping sets only the
    keys it gives, as `--set attention.k_size=3`), or `features_only` / `out_indices`. `pretrained`:
    a checkpoint file (release, torchvision, timm or ecacli layout; a `str` other than "timm" or a
    `Path`) or "timm" (True: the same) for the preset's timm weights; the weights load strictly,
    except that with another `num_classes` the classifier is new (as timm does). Mistakes raise a
    `UserError` (`OptionError`, `SpecError`, `CheckpointError`) with one clear message.
    """
    base = _base_spec(name_or_spec)
    label = _call_label(base, overrides)
    build = {key: overrides.pop(key) for key in BUILD_OPTIONS if key in overrides}
    spec = _overridden(base, overrides, label)
    if pretrained is None or pretrained is False:
        from ecacli.models import build_model

        return build_model(spec, **build)
    from ecacli.checkpoints import check_against, model_with_weights, open_checkpoint

    checkpoint = open_checkpoint(_weights_path(base, pretrained))
    if "num_classes" in overrides and not build.get("features_only") and not check_against(spec, checkpoint.tensors).loads:
        return _with_new_classifier(spec, checkpoint)
    model, _ = model_with_weights(spec, checkpoint, **build)
    return model


def _base_spec(name_or_spec: Any) -> NetworkSpec:
    if isinstance(name_or_spec, NetworkSpec):
        return name_or_spec
    if isinstance(name_or_spec, (str, Path)):
        return load_spec(name_or_spec)
    raise OptionError(f"create_model: name_or_spec must be a preset name ({', '.join(preset_names())}), a spec file path or a NetworkSpec, got {shown(name_or_spec)}.")


def _call_label(base: NetworkSpec, overrides: Mapping[str, Any]) -> str:
    given = ", ".join(f"{key}={shown(value, 30)}" for key, value in overrides.items())
    return f"create_model('{base.name}'{', ' if given else ''}{given})"


def _overridden(base: NetworkSpec, overrides: Mapping[str, Any], label: str) -> NetworkSpec:
    """The base spec with spec-key overrides, merged and validated as `--set` overrides are; any mistake is one OptionError."""
    if not overrides:
        return base
    known = list(type(base).model_fields)
    for key in overrides:
        if key not in known:
            raise OptionError(
                f"{label}: unknown option '{key}'.{suggest(key, known + list(BUILD_OPTIONS))} "
                f"Options are the spec's keys ({', '.join(known)}) and {', '.join(BUILD_OPTIONS)}."
            )
    try:
        return spec_from_data(apply_overrides(base.to_yaml_dict(), _as_set_items(overrides, label)), label)
    except SpecError as exc:
        raise OptionError(str(exc)) from None


def _as_set_items(overrides: Mapping[str, Any], label: str, prefix: str = "") -> Iterator[str]:
    """`key.path=value` items, as `--set` takes them, for keyword overrides: a non-empty mapping sets each of its keys; values as JSON (valid YAML)."""
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or any(c in key for c in ".= "):
            raise OptionError(f"{label}: {shown(prefix + str(key))} is not a spec key (keys are plain words such as k_size).")
        if isinstance(value, Mapping) and value:
            yield from _as_set_items(value, label, f"{prefix}{key}.")
            continue
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise OptionError(f"{label}: {prefix}{key} must be plain data (a number, text, true/false, None, a list or a mapping), got {shown(value)}.") from None
        yield f"{prefix}{key}={text}"


def _weights_path(base: NetworkSpec, pretrained: Any) -> Path:
    """The checkpoint file `pretrained` names: a path, or timm's weights of the base spec's preset."""
    if pretrained is True or pretrained == TIMM:
        return timm_weights_file(base.name)
    if isinstance(pretrained, (str, Path)) and str(pretrained).strip():
        return Path(pretrained)
    raise OptionError(f"create_model: pretrained must be a checkpoint file path, \"{TIMM}\" (timm's weights of a preset) or None, got {shown(pretrained)}.")


def timm_weights_file(preset: str) -> Path:
    """The local file of timm's weights for a preset, from the Hugging Face Hub cache, downloading them unless offline (HF_HUB_OFFLINE)."""
    repo = TIMM_WEIGHTS.get(preset)
    if repo is None:
        raise OptionError(
            f"pretrained=\"{TIMM}\": timm publishes no weights for '{preset}'; presets with timm weights: {', '.join(TIMM_WEIGHTS)}. "
            "For other weights give pretrained=PATH to a checkpoint file."
        )
    from ecacli.extras import EXTRA_MODULES, require

    require(EXTRA_MODULES["hub"], f"pretrained=\"{TIMM}\"", "hub")
    from huggingface_hub import constants, hf_hub_download

    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(hf_hub_download(repo, TIMM_FILE, local_files_only=offline))
    except OSError as exc:  # huggingface_hub's errors (not in the cache, HTTP, connection) are OSErrors
        if offline:
            why = "offline mode (HF_HUB_OFFLINE) allows no download"
        elif isinstance(exc, FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError: no answer from the Hub, nothing cached
            why = "the Hub could not be reached to download them"
        else:
            why = f"downloading them failed: {first_line(exc)}"
        raise OptionError(
            f"pretrained=\"{TIMM}\": timm's weights for '{preset}' ({repo}, {TIMM_FILE}) are not in the Hugging Face cache {constants.HF_HUB_CACHE}, and {why}. "
            f"Fetch them once online (`hf download {repo} {TIMM_FILE}`), or point HF_HUB_CACHE (or HF_HOME) at a cache that holds them."
        ) from None


def _with_new_classifier(spec: NetworkSpec, checkpoint: Any) -> nn.Module:
    """The spec's model with the checkpoint's trunk loaded strictly and a freshly initialised classifier (timm's behaviour for another `num_classes`)."""
    from dataclasses import replace

    from ecacli.checkpoints import floating_dtype, model_with_weights
    from ecacli.checkpoints.infer import model_shapes

    headless = spec_from_data({**spec.to_yaml_dict(), "num_classes": 0}, f"spec '{spec.name}' without its classifier")
    trunk_keys = model_shapes(headless)[0]
    trunk = replace(checkpoint.state, tensors={key: t for key, t in checkpoint.tensors.items() if key in trunk_keys})
    model, _ = model_with_weights(headless, replace(checkpoint, state=trunk))
    if spec.num_classes:
        model.reset_classifier(spec.num_classes)
        dtype = floating_dtype(checkpoint.tensors)
        if dtype is not None:
            model.to(dtype)
    return model

"""The formats `ecacli export` writes, how a file name or a file's content names one.

Weights: `safetensors` and `pt` (a state_dict, see `ecacli.checkpoints`). Graphs, which run
without ecacli's code: `onnx` (ONNX Runtime, TensorRT, ...), `torchscript` (`torch.jit.load`,
libtorch) and `pt2` (`torch.export.load`, AOTInductor).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ecacli.checkpoints import format_for as weight_format_for
from ecacli.checkpoints.io import SAFETENSORS, TORCH, TORCH_SUFFIXES
from ecacli.errors import UserError
from ecacli.extras import MissingExtraError, require  # noqa: F401  (deploy's modules import them from here)

if TYPE_CHECKING:
    from ecacli.spec import NetworkSpec

ONNX = "onnx"
TORCHSCRIPT = "torchscript"
PT2 = "pt2"
WEIGHT_FORMATS = (SAFETENSORS, TORCH)
GRAPH_FORMATS = (ONNX, TORCHSCRIPT, PT2)
FORMATS = WEIGHT_FORMATS + GRAPH_FORMATS

INPUT_NAME = "input"
"""The input tensor's name in every graph format."""


def output_name(spec: NetworkSpec) -> str:
    """The output tensor's name in every graph format: `logits`, or `features` for a headless model (`num_classes: 0`)."""
    return "logits" if spec.num_classes else "features"


NAMED_BY_SUFFIX = {".safetensors": SAFETENSORS, ".onnx": ONNX, ".ts": TORCHSCRIPT, ".torchscript": TORCHSCRIPT, ".pt2": PT2}
"""Suffixes that name one format; `.pt`, `.pth`, `.bin`, ... name a torch file, whose kind only its content tells."""


def format_for(path: Path, requested: str | None = None) -> str:
    """The format to write: the one asked for, else the one the suffix names, else a state_dict format (`ecacli.checkpoints.format_for`).

    A suffix that names another format (`r50.onnx --format torchscript`) is refused when either side is a graph.
    """
    named = NAMED_BY_SUFFIX.get(path.suffix.lower())
    if requested is None:
        return named or weight_format_for(path)
    if requested not in FORMATS:
        raise UserError(f"--format {requested!r} is not supported; use one of {', '.join(FORMATS)}.")
    if named is not None and named != requested and (named in GRAPH_FORMATS or requested in GRAPH_FORMATS):
        raise UserError(f"{path}: the name says {named} but --format is {requested}; use a name ending in a suffix of {requested} ({suffixes_of(requested)}) or drop --format.")
    return requested


def suffixes_of(fmt: str) -> str:
    named = [suffix for suffix, name in NAMED_BY_SUFFIX.items() if name == fmt]
    return ", ".join(named or TORCH_SUFFIXES)


def graph_format_of(path: Path) -> str | None:
    """The graph format of an existing file from its content, whatever its name; None for anything else (a checkpoint).

    A zip archive is TorchScript when it holds `code/` and `constants.pkl`, torch.export's when it
    holds `archive_format`, else a checkpoint (torch.save's `data.pkl`); a zip whose directory cannot
    be read is no graph here (reading it as a checkpoint says what is wrong). Any other file is ONNX
    when named `.onnx` or when it starts as an ONNX model's protocol buffer does (field 1, the IR
    version) and not as a checkpoint.
    """
    from ecacli.checkpoints.io import CheckpointError, archive_kind, sniff_container

    named_onnx = NAMED_BY_SUFFIX.get(path.suffix.lower()) == ONNX
    if not path.is_file():
        return ONNX if named_onnx else None
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                return archive_kind(dict.fromkeys(name.split("/", 1)[-1] for name in archive.namelist()))
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):  # NotImplementedError: a zip version Python cannot read
            return None
    if named_onnx:
        return ONNX
    try:
        sniff_container(path, head)
        return None
    except CheckpointError:
        return ONNX if head[:1] == ONNX_FIRST_BYTE else None


ONNX_FIRST_BYTE = b"\x08"
"""How an ONNX model's protocol buffer starts: field 1 (ir_version), a varint."""

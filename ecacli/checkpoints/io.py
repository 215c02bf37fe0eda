"""Reading checkpoints safely and writing them atomically.

Reading never unpickles arbitrary objects: PyTorch files go through `torch.load(weights_only=True)`
and anything that needs more is refused before any of its code can run. Writing goes to a
temporary file in the target's folder, is flushed to disk, then renamed over the target, so an
interrupted or failed write leaves no partial file and the previous file intact.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecacli.errors import UserError, describe_path, file_kind, first_line, user_path

MAX_CHECKPOINT_BYTES = 4 * 1024**3
SAFETENSORS = "safetensors"
TORCH = "pt"
FORMATS = (SAFETENSORS, TORCH)
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt")

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80
PICKLE_PROTOCOLS = range(2, 6)
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
SNIFF_BYTES = 16


class CheckpointError(UserError):
    """A checkpoint file that cannot be read, is refused, or does not fit the spec."""


@dataclass
class RawCheckpoint:
    """What a file holds, before any interpretation: the loaded object and the container's metadata."""

    path: Path
    container: str
    content: Any
    metadata: dict[str, str] = field(default_factory=dict)
    size: int = 0


def sniff_container(path: Path, head: bytes) -> str:
    """'safetensors', 'torch-zip' or 'torch-legacy' from a file's first bytes; refuses anything else.

    safetensors is recognised first, by its structure (an 8-byte little-endian header length of at
    most 100 MB, then a JSON object): the length's low byte can be anything, 0x80 included, so
    testing first for the pickle protocol byte took such files for legacy torch pickles.
    """
    label = describe_path(path)
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{":
            return SAFETENSORS
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if len(head) >= 2 and head[0] == PICKLE_PROTO and head[1] in PICKLE_PROTOCOLS:
        return "torch-legacy"
    if not head:
        raise CheckpointError(f"{label}: the file is empty; expected a .safetensors file or a PyTorch checkpoint.")
    text = head.isascii() and all(chr(c).isprintable() or chr(c).isspace() for c in head)
    described = "text" if text else "binary data of an unknown format"
    raise CheckpointError(
        f"{label}: not a checkpoint (the file starts with {described}, {head[:16]!r}); "
        "expected a .safetensors file or a PyTorch file written by torch.save (zip or legacy format)."
    )


def check_readable(path: Path, max_bytes: int) -> int:
    """The file's size, after refusing a missing path, anything but a regular file, or a file over the size limit."""
    label = describe_path(path)
    with user_path(path, "read it", CheckpointError):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise CheckpointError(f"{label}: no such file.") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{label}: is {file_kind(info.st_mode)}, not a regular file; give the path of a checkpoint file.")
    if info.st_size > max_bytes:
        raise CheckpointError(f"{label}: {info.st_size:,} bytes is over the {max_bytes:,}-byte limit for checkpoints.")
    return info.st_size


def _refused_global(message: str) -> str:
    """The object a refused pickle asked for, as the weights-only unpickler names it."""
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"(Unsupported operand \d+)", message)
    return found.group(1) if found else "an object that is not a tensor or plain data"


def _torch_load(path: Path, container: str) -> Any:
    label = describe_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=container == "torch-zip")
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{label}: refused: loading it would unpickle {_refused_global(str(exc))}, which could run code. "
                "ecacli only loads tensors and plain data (torch.load with weights_only=True); nothing from the file ran. "
                "Re-save the weights from trusted code as a state_dict or .safetensors file."
            ) from None
        raise CheckpointError(f"{label}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): {first_line(exc)}") from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:
        raise CheckpointError(f"{describe_path(path)}: cannot read it as a safetensors file (truncated or corrupt?): {first_line(exc)}") from None
    return tensors, metadata


def read_checkpoint(path: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> RawCheckpoint:
    """Load a checkpoint file without running code from it: safetensors, or torch.save output as plain data."""
    path = Path(path)
    size = check_readable(path, max_bytes)
    with user_path(path, "read it", CheckpointError), path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    container = sniff_container(path, head)
    if container == SAFETENSORS:
        tensors, metadata = _safetensors_load(path)
        return RawCheckpoint(path, container, tensors, metadata, size)
    return RawCheckpoint(path, container, _torch_load(path, container), {}, size)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with user_path(path, "read it", CheckpointError), path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



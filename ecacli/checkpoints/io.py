"""Reading checkpoints safely and writing them atomically.

Reading never unpickles arbitrary objects: PyTorch files go through `torch.load(weights_only=True)`
and anything that needs more is refused before any of its code can run. Writing goes to a
temporary file in the target's folder, is flushed to disk, then renamed over the target, so an
interrupted or failed write leaves no partial file and the previous file intact.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

import torch

from ecacli.atomic import atomic_write, check_writable
from ecacli.errors import UserError

MAX_CHECKPOINT_BYTES = 4 * 1024**3
SAFETENSORS = "safetensors"
TORCH = "pt"
FORMATS = (SAFETENSORS, TORCH)
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt")

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


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
    """'safetensors', 'torch-zip' or 'torch-legacy' from a file's first bytes; refuses anything else."""
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head.startswith(PICKLE_PROTO):
        return "torch-legacy"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{":
            return SAFETENSORS
    if not head:
        raise CheckpointError(f"{path}: the file is empty; expected a .safetensors file or a PyTorch checkpoint.")
    text = head.isascii() and all(chr(c).isprintable() or chr(c).isspace() for c in head)
    described = "text" if text else "binary data of an unknown format"
    raise CheckpointError(
        f"{path}: not a checkpoint (the file starts with {described}, {head[:16]!r}); "
        "expected a .safetensors file or a PyTorch file written by torch.save (zip or legacy format)."
    )


def check_readable(path: Path, max_bytes: int) -> int:
    """The file's size, after refusing a missing path, a folder or a file over the size limit."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file.")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file; give the path of a checkpoint file.")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit for checkpoints.")
    return size


def _refused_global(message: str) -> str:
    """The object a refused pickle asked for, as the weights-only unpickler names it."""
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"(Unsupported operand \d+)", message)
    return found.group(1) if found else "an object that is not a tensor or plain data"


def _torch_load(path: Path, container: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=container == "torch-zip")
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: refused: loading it would unpickle {_refused_global(str(exc))}, which could run code. "
                "ecacli only loads tensors and plain data (torch.load with weights_only=True); nothing from the file ran. "
                "Re-save the weights from trusted code as a state_dict or .safetensors file."
            ) from None
        raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): {_first_line(exc)}") from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read it as a safetensors file (truncated or corrupt?): {_first_line(exc)}") from None
    return tensors, metadata


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_checkpoint(path: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> RawCheckpoint:
    """Load a checkpoint file without running code from it: safetensors, or torch.save output as plain data."""
    path = Path(path)
    size = check_readable(path, max_bytes)
    with path.open("rb") as handle:
        container = sniff_container(path, handle.read(16))
    if container == SAFETENSORS:
        tensors, metadata = _safetensors_load(path)
        return RawCheckpoint(path, container, tensors, metadata, size)
    return RawCheckpoint(path, container, _torch_load(path, container), {}, size)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



"""Reading checkpoints safely and writing them atomically.

Reading never unpickles arbitrary objects and never reads without a bound: a zip archive's
declared sizes are checked against the file and `MAX_MEMBER_BYTES` before anything is read, its
pickle is read first by ecacli's bounded reader (`ecacli.checkpoints.pickles`: depth, work,
storages' declared sizes against what the file holds), a TorchScript or torch.export archive is
recognised by its content whatever its name and refused (loading one runs its code), and only
then does `torch.load(weights_only=True)` build the tensors. Writing goes to a
temporary file in the target's folder, is flushed to disk, then renamed over the target, so an
interrupted or failed write leaves no partial file and the previous file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickletools
import re
import stat
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecacli.checkpoints.pickles import BoundedUnpickler, PickleMalformed, PickleRefused, read_pickle
from ecacli.errors import UserError, describe_path, file_kind, first_line, printable, user_path

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
MAX_MEMBER_BYTES = 256 * 1024**2
"""The most an archive member that is read whole (a pickle, code, JSON, metadata) may declare; tensors' storages are bounded by the file's size."""
MAX_MEMBERS = 100_000
LEGACY_PICKLES = 4
"""The legacy torch.save format: a magic number, a protocol version, system information, then the object (its storages follow)."""


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
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else "an object that is not a tensor or plain data"


def archive_members(archive: zipfile.ZipFile, label: str, size: int, error: type[UserError]) -> dict[str, zipfile.ZipInfo]:
    """An archive's members by their name under the top folder, after checking what the central directory declares.

    Each member's stored bytes must lie inside the file, all of them together must fit in it, and no
    member read whole may declare more than `MAX_MEMBER_BYTES` (see `read_member`), so a zip bomb is
    refused before a byte of it is inflated; a name that appears twice (under the top folder) is refused.
    """
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise error(f"{label}: the archive lists {len(infos):,} members (at most {MAX_MEMBERS:,}).")
    stored = sum(info.compress_size for info in infos)
    if stored > size:
        raise error(f"{label}: the archive's directory declares {stored:,} bytes of members in a file of {size:,} bytes (truncated or corrupt?).")
    for info in infos:
        if info.header_offset + info.compress_size > size or (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size):
            raise error(f"{label}: the archive member {printable(info.filename)!r} declares sizes that do not fit in the file (truncated or corrupt?).")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.split("/", 1)[-1]
        if name in members:
            raise error(f"{label}: the archive names the member {printable(name[:80])!r} twice (under its top folder); a member name may appear once.")
        members[name] = info
    return members


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, error: type[UserError], limit: int = MAX_MEMBER_BYTES) -> bytes:
    """One member's bytes, refused when it declares more than `limit` bytes and read no further than it declares (a lying header is corrupt)."""
    if info.file_size > limit:
        raise error(f"{label}: the archive member {printable(info.filename)!r} declares {info.file_size:,} bytes, over the {limit:,}-byte limit for a member ecacli reads whole.")
    with archive.open(info) as handle:
        data = handle.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise error(f"{label}: the archive member {printable(info.filename)!r} holds other than the {info.file_size:,} bytes it declares (corrupt?).")
    return data


def archive_kind(members: dict[str, Any]) -> str | None:
    """'torchscript' or 'pt2' for a zip archive laid out as one (by its content, not its name), else None."""
    if "archive_format" in members:
        return "pt2"
    if "constants.pkl" in members and any(name.startswith("code/") for name in members):
        return "torchscript"
    return None


def _refused_pickle(label: str, exc: PickleRefused) -> CheckpointError:
    return CheckpointError(f"{label}: refused: {exc}. ecacli reads a checkpoint's pickle under fixed limits, without running anything from it; nothing from the file ran.")


def _prescan_zip(path: Path, size: int) -> None:
    """Check a torch.save zip before torch reads it: the directory's sizes, its kind, its pickle (bounded), each storage's declared size against its member."""
    label = describe_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive_members(archive, label, size, CheckpointError)
            kind = archive_kind(members)
            if kind is not None:
                what = "TorchScript" if kind == "torchscript" else "torch.export (pt2)"
                raise CheckpointError(
                    f"{label}: is a {what} archive, not a checkpoint: loading it would run its code, so ecacli reads no weights from it. "
                    f"`ecacli inspect {label}` describes it without loading it."
                )
            if "data.pkl" not in members:
                raise CheckpointError(f"{label}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): the archive has no data.pkl.")
            reader = read_pickle(read_member(archive, members["data.pkl"], label, CheckpointError))
            for storage in reader.storages.values():
                member = members.get(f"data/{storage.key}")
                if member is None or member.file_size != storage.nbytes:
                    held = "no such member" if member is None else f"{member.file_size:,} bytes"
                    raise CheckpointError(f"{label}: the storage {storage.key!r} declares {storage.nbytes:,} bytes, but the archive holds {held} (truncated or corrupt?).")
    except PickleRefused as exc:
        raise _refused_pickle(label, exc) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError, OSError, RuntimeError) as exc:  # a directory or member zipfile cannot read
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{label}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): {first_line(exc)}") from None


def _prescan_legacy(path: Path, size: int) -> None:
    """Check a legacy torch.save file before torch reads it: its pickles (bounded), and their storages' declared bytes against the file's size."""
    label = describe_path(path)
    with user_path(path, "read it", CheckpointError), path.open("rb") as handle:
        reader = BoundedUnpickler(io.BufferedReader(handle))
        try:
            magic = reader.load()
            if isinstance(magic, int) and not isinstance(magic, bool):
                for _ in range(LEGACY_PICKLES - 1):
                    reader.load()
        except PickleMalformed:
            pass  # torch.load says what is wrong, having read no further than this reader did
        except PickleRefused as exc:
            raise _refused_pickle(label, exc) from None
    declared = sum(storage.nbytes for storage in reader.storages.values())
    if declared > size:
        raise CheckpointError(f"{label}: its storages declare {declared:,} bytes in a file of {size:,} bytes (truncated or corrupt?).")


@contextmanager
def native_name(path: Path) -> Iterator[str]:
    """A name of `path` that native readers (torch's, safetensors') take: itself, or for a name that is not UTF-8 the open file's /proc/self/fd entry."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        with user_path(path, "read it", CheckpointError), path.open("rb") as handle:
            alias = f"/proc/self/fd/{handle.fileno()}"
            if not os.path.exists(alias):
                raise CheckpointError(f"{describe_path(path)}: its name is not UTF-8, which this system's readers cannot open; rename the file.") from None
            yield alias
        return
    yield name


def _torch_load(path: Path, container: str, size: int) -> Any:
    label = describe_path(path)
    if container == "torch-zip":
        _prescan_zip(path, size)
    else:
        _prescan_legacy(path, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with native_name(path) as name:
                return torch.load(name, map_location="cpu", weights_only=True, mmap=container == "torch-zip")
    except Exception as exc:
        unsupported = re.search(r"Unsupported operand (\d+)", str(exc))
        if unsupported:
            code = int(unsupported.group(1))
            opcode = pickletools.code2op.get(chr(code)) if code < 256 else None
            raise CheckpointError(
                f"{label}: refused: its pickle uses the opcode {opcode.name + ' ' if opcode else ''}({code}), which torch's weights-only loader does not read; nothing from the file ran. "
                "Re-save the weights from trusted code as a state_dict or .safetensors file."
            ) from None
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{label}: refused: loading it would unpickle {_refused_global(str(exc))}, which could run code. "
                "ecacli only loads tensors and plain data (torch.load with weights_only=True); nothing from the file ran. "
                "Re-save the weights from trusted code as a state_dict or .safetensors file."
            ) from None
        raise CheckpointError(f"{label}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): {first_line(exc)}") from None


def _check_safetensors_header(path: Path) -> None:
    """Refuse a header that names a tensor twice (the JSON reader would keep the last silently)."""
    label = describe_path(path)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise CheckpointError(f"{label}: the safetensors header names {printable(key[:80])!r} twice; a tensor name may appear once.")
            seen.add(key)
        return dict(pairs)

    with user_path(path, "read it", CheckpointError), path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = handle.read(length)
    try:
        json.loads(header, object_pairs_hook=unique)
    except (ValueError, RecursionError):
        pass  # not JSON: safetensors' own reader says what is wrong


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    _check_safetensors_header(path)
    try:
        with native_name(path) as name, safe_open(name, framework="pt", device="cpu") as handle:
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
    return RawCheckpoint(path, container, _torch_load(path, container, size), {}, size)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with user_path(path, "read it", CheckpointError), path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



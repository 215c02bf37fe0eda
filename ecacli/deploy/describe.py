"""What a graph file is: its inputs and outputs (with their open axes), operator histogram, weights, and the spec ecacli stored in it.

ONNX files are read as protocol buffers (`onnx.load`, weights kept external if they are);
torch.export's `.pt2` archives from their JSON graph description; TorchScript archives from
their content, never loaded (loading one runs its code, such as a module's `__setstate__`):
the code as text, the pickles through ecacli's bounded reader. Nothing from a file is executed
or unpickled as an object, and every member is read under a declared-size bound.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ecacli.checkpoints import SPEC_KEY
from ecacli.checkpoints.io import MAX_CHECKPOINT_BYTES, MAX_MEMBER_BYTES, CheckpointError, archive_members, check_readable, read_member
from ecacli.checkpoints.pickles import MAX_DIMS, MAX_ELEMENTS, Built, PickleRefused, read_pickle
from ecacli.deploy.export import BATCH_AXIS, METADATA_FILE, onnx_opset
from ecacli.deploy.formats import ONNX, PT2, TORCHSCRIPT, output_name, require
from ecacli.errors import UserError, describe_path, first_line, shown
from ecacli.spec import NetworkSpec
from ecacli.spec_loader import parse_yaml_text, spec_from_data

Dim = int | str
"""A tensor axis: its size, or the name of an axis left open."""


class GraphFileError(CheckpointError):
    """A graph file that cannot be read."""


@dataclass
class TensorSignature:
    name: str
    dtype: str
    shape: list[Dim] | None
    """None where the format records no shape (TorchScript)."""

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass
class GraphDescription:
    """A graph file as `ecacli inspect` shows it."""

    path: Path
    format: str
    size: int
    producer: str
    opset: int | None
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    ops: dict[str, int]
    """Operator -> count, most frequent first."""
    weight_tensors: int
    weight_values: int
    """Constant tensors the graph holds (ONNX initializers; parameters and buffers) and their elements: after an exporter's folding, not the model's parameter count."""
    metadata: dict[str, str] = field(default_factory=dict)
    """ecacli's metadata (versions, parameter count, dtype, source), spec aside."""
    spec: NetworkSpec | None = None
    spec_error: str | None = None
    code_files: list[str] = field(default_factory=list)
    """A TorchScript archive's code files (read as text, never run)."""

    @property
    def parameters(self) -> int | None:
        """The model's parameter count as ecacli recorded it, if it wrote the file."""
        recorded = re.fullmatch(r"[0-9]{1,19}", self.metadata.get("parameters", ""))  # not str.isdigit: int() refuses '²'
        return int(recorded.group()) if recorded else None

    def to_dict(self) -> dict:
        return {
            "file": str(self.path),
            "format": self.format,
            "size": self.size,
            "producer": self.producer,
            "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "nodes": sum(self.ops.values()),
            "ops": self.ops,
            "weight_tensors": self.weight_tensors,
            "weight_values": self.weight_values,
            "parameters": self.parameters,
            "metadata": self.metadata,
            "spec": self.spec.to_yaml_dict() if self.spec else None,
            "spec_error": self.spec_error,
            "code_files": self.code_files,
        }


def describe_graph(path: str | Path, fmt: str) -> GraphDescription:
    """Describe the graph file at `path`, of format onnx, torchscript or pt2 (see `graph_format_of`)."""
    path = Path(path)
    size = check_readable(path, MAX_CHECKPOINT_BYTES)
    return DESCRIBERS[fmt](path, size)


def by_count(ops: Counter) -> dict[str, int]:
    return dict(sorted(ops.items(), key=lambda item: (-item[1], item[0])))


def stored_metadata(path: Path, stored: str | bytes) -> dict[str, str]:
    """ecacli's metadata from a TorchScript or pt2 archive's `extra/ecacli/metadata.json` ({} for an empty entry); anything but a JSON object of text values is refused naming the file."""

    def refusal(problem: str) -> GraphFileError:
        return GraphFileError(f"{path}: the archive entry 'extra/{METADATA_FILE}' {problem}; ecacli writes a JSON object of text values there (spec, versions, parameter count, dtype).")

    if not stored:
        return {}
    try:
        metadata = json.loads(stored)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested past the parser's depth
        raise refusal(f"is not JSON ({first_line(exc)})") from None
    if not isinstance(metadata, dict):
        raise refusal(f"holds {shown(metadata)}, not a JSON object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise refusal(f"holds {shown(value)} at {shown(key)}, not text")
    return metadata


def with_spec(description: GraphDescription, metadata: dict[str, str]) -> GraphDescription:
    """Split ecacli's metadata into the spec (parsed) and the rest."""
    description.metadata = {key: value for key, value in metadata.items() if key != SPEC_KEY}
    if SPEC_KEY in metadata:
        label = f"{description.path} (metadata '{SPEC_KEY}')"
        try:
            data, positions = parse_yaml_text(metadata[SPEC_KEY], label)
            if not isinstance(data, dict):
                raise UserError(f"{label}: the stored spec is not a YAML mapping.")
            description.spec = spec_from_data(data, label, positions)
        except UserError as exc:
            description.spec_error = str(exc)
    return description


def describe_onnx(path: Path, size: int) -> GraphDescription:
    require(("onnx",), f"reading {path}", "onnx")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise GraphFileError(f"{path}: cannot read it as an ONNX model (truncated or corrupt?): {first_line(exc)}") from None
    if not model.ir_version or not model.HasField("graph"):
        raise GraphFileError(f"{path}: not an ONNX model (no IR version or graph).")
    graph = model.graph
    constants = {tensor.name for tensor in graph.initializer}

    def signature(value) -> TensorSignature:
        tensor = value.type.tensor_type
        shape = [dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else "?") for dim in tensor.shape.dim]
        types = onnx.TensorProto.DataType
        dtype = types.Name(tensor.elem_type).lower() if tensor.elem_type in types.values() else f"element type {tensor.elem_type}"
        return TensorSignature(value.name, ONNX_DTYPE_NAMES.get(dtype, dtype), shape)

    ops = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in graph.node)
    description = GraphDescription(
        path,
        ONNX,
        size,
        f"{model.producer_name} {model.producer_version}".strip() or "(not named)",
        onnx_opset(model),
        [signature(value) for value in graph.input if value.name not in constants],
        [signature(value) for value in graph.output],
        by_count(ops),
        len(graph.initializer),
        sum(math.prod(tensor.dims) for tensor in graph.initializer),
    )
    return with_spec(description, {entry.key: entry.value for entry in model.metadata_props})


def describe_torchscript(path: Path, size: int) -> GraphDescription:
    """A TorchScript archive from its content, never loaded: its code read as text (the root class's `forward` signature, the operators its code calls), its `data.pkl` and `constants.pkl` through ecacli's bounded pickle reader (tensors counted, not built)."""
    label = describe_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive_members(archive, label, size, GraphFileError)
            code_names = sorted(name for name in members if name.startswith("code/") and name.endswith(".py"))
            code_bytes = sum(members[name].file_size for name in code_names)
            if code_bytes > MAX_MEMBER_BYTES:
                raise GraphFileError(f"{label}: the archive's code declares {code_bytes:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit for what ecacli reads whole.")
            data = read_pickle(read_member(archive, members["data.pkl"], label, GraphFileError))
            constants = read_pickle(read_member(archive, members["constants.pkl"], label, GraphFileError))
            code = {name: read_member(archive, members[name], label, GraphFileError).decode("utf-8", "replace") for name in code_names}
            extra = members.get(f"extra/{METADATA_FILE}")
            stored = read_member(archive, extra, label, GraphFileError) if extra else b""
            version = read_member(archive, members["version"], label, GraphFileError, limit=64).decode("ascii", "replace").strip() if "version" in members else "?"
    except PickleRefused as exc:
        raise GraphFileError(f"{label}: refused: {exc}. ecacli reads a TorchScript archive's pickles under fixed limits, without running anything from it; nothing from the file ran.") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, KeyError, ValueError, OSError, RuntimeError) as exc:
        if isinstance(exc, GraphFileError):
            raise
        raise GraphFileError(f"{label}: cannot read it as a TorchScript archive (truncated or corrupt?): {type(exc).__name__}: {first_line(exc)}") from None
    root = data.value
    if not (isinstance(root, Built) and root.kind.module.startswith("__torch__")):
        raise GraphFileError(f"{label}: cannot read it as a TorchScript archive (truncated or corrupt?): its data.pkl holds no TorchScript module.")
    module_file = "code/" + root.kind.module.replace(".", "/") + ".py"
    argument_text, return_type = forward_signature(class_body(code.get(module_file, ""), root.kind.name), label)
    arguments = [argument.split(":", 1) for argument in split_top_level(argument_text)[1:]]
    ops = Counter(f"{namespace}::{name}" for text in code.values() for namespace, name in CODE_CALL.findall(text.replace("torch.", "aten.")))
    tensors = data.tensors + constants.tensors
    description = GraphDescription(
        path,
        TORCHSCRIPT,
        size,
        f"torch.jit archive (format version {version}), read without loading it",
        None,
        [TensorSignature(name.strip(), kind.strip(), None) for name, kind in arguments if kind],
        [TensorSignature("output", return_type, None)],
        by_count(ops),
        len(tensors),
        sum(t.numel for t in tensors),
        code_files=code_names,
    )
    description = with_spec(description, stored_metadata(path, stored))
    if description.spec is not None:  # TorchScript names no output: ecacli's name for it
        description.outputs[0].name = output_name(description.spec)
    return description


CODE_CALL = re.compile(r"\b(aten|ops\.\w+)\.(\w+)\(")
"""A call in TorchScript's code: `torch.conv2d(` (read as `aten.conv2d(`) or `ops.prim.NumToTensor(`."""


def class_body(code: str, name: str) -> list[str]:
    """The lines of `class NAME(...)` in a TorchScript code file, up to the next top-level line (read line by line, in one pass)."""
    lines = iter(code.split("\n"))
    header = f"class {name}("
    if not any(line.startswith(header) for line in lines):
        return []
    return list(itertools.takewhile(lambda line: not line[:1].strip(), lines))


MAX_SIGNATURE_LINES = 256
MAX_SIGNATURE_CHARS = 65_536
"""The most lines and characters a TorchScript `def forward(` signature may span; ecacli reads no further."""


def forward_signature(body: list[str], label: str) -> tuple[str, str]:
    """The argument text and return type of the first `  def forward(...) -> TYPE:` in a class body, read in one pass over at most MAX_SIGNATURE_LINES lines and MAX_SIGNATURE_CHARS characters from the `def` line; none, or one that does not close and end in `-> TYPE:` within them, is refused naming `label`."""
    prefix = "  def forward("
    start = next((at for at, line in enumerate(body) if line.startswith(prefix)), None)
    if start is None:
        raise GraphFileError(f"{label}: the TorchScript module has no forward method, so it has no inputs or outputs to describe.")
    text = "\n".join(body[start : start + MAX_SIGNATURE_LINES])[len(prefix) : MAX_SIGNATURE_CHARS]
    depth = 0
    for at, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if depth < 0:  # the bracket closing the argument list
            rest = text[at + 1 :].split("\n", 1)[0].strip()
            if rest.startswith("->") and rest.endswith(":") and rest[2:-1].strip():
                return text[:at], rest[2:-1].strip()
            break
    raise GraphFileError(f"{label}: the TorchScript module's forward method has no signature ecacli can read: `def forward(...) -> TYPE:` within {MAX_SIGNATURE_LINES} lines and {MAX_SIGNATURE_CHARS:,} characters.")


def split_top_level(text: str) -> list[str]:
    """`text` split at commas outside brackets: `self: M, x: Tuple[Tensor, Tensor]` -> two arguments."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


ONNX_DTYPE_NAMES = {"float": "float32", "double": "float64"}
"""ONNX's element type names where torch's differ."""

SYMBOL = re.compile(r"Symbol\('(\w+)'")


def describe_pt2(path: Path, size: int) -> GraphDescription:
    """A torch.export archive from its JSON: `models/model.json` (graph, signature, ranges) and the weights' configuration.

    An open axis shows torch.export's symbol (`s77`), except the batch axis of an archive ecacli wrote, which shows the name `ecacli export` gave it.
    """
    label = describe_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive_members(archive, label, size, GraphFileError)
            program = json.loads(read_member(archive, members["models/model.json"], label, GraphFileError))
            weights = json.loads(read_member(archive, members["data/weights/model_weights_config.json"], label, GraphFileError))["config"]
            extra = members.get(f"extra/{METADATA_FILE}")
            stored = read_member(archive, extra, label, GraphFileError) if extra else b""
        graph, signature = program["graph_module"]["graph"], program["graph_module"]["signature"]
        values = graph["tensor_values"]

        def dim(size: dict) -> Dim:
            if "as_int" in size:
                return checked_size(size["as_int"])
            found = SYMBOL.search(size["as_expr"]["expr_str"])
            return found.group(1) if found else size["as_expr"]["expr_str"]

        def tensor(name: str) -> TensorSignature:
            meta = values[name]
            return TensorSignature(name, PT2_DTYPES.get(meta["dtype"], str(meta["dtype"])), [dim(s) for s in meta["sizes"]])

        def elements(sizes: list) -> int:
            if len(sizes) > MAX_DIMS or not all(isinstance(size, dict) and "as_int" in size for size in sizes):
                raise GraphFileError(f"{label}: a weight's size is symbolic or has more than {MAX_DIMS} axes; a weight's sizes are whole numbers.")
            return math.prod(checked_size(size["as_int"]) for size in sizes)

        def checked_size(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ELEMENTS:
                raise GraphFileError(f"{label}: a tensor size in the archive is {shown(value) if not isinstance(value, int) else f'an integer of {value.bit_length():,} bits'}, not a whole number from 0 to {MAX_ELEMENTS:,}.")
            return value

        inputs = [tensor(spec["user_input"]["arg"]["as_tensor"]["name"]) for spec in signature["input_specs"] if "user_input" in spec]
        outputs = [tensor(spec["user_output"]["arg"]["as_tensor"]["name"]) for spec in signature["output_specs"] if "user_output" in spec]
        ops = Counter(str(node["target"]).removeprefix("torch.ops.") for node in graph["nodes"])
        counts = [elements(entry["tensor_meta"]["sizes"]) for entry in weights.values()]
        producer = f"torch.export (torch {str(program.get('torch_version', '?'))[:40]})"
    except GraphFileError:
        raise
    except Exception as exc:  # anything the zip reader or walking the JSON meets in a corrupt archive
        raise GraphFileError(f"{path}: cannot read it as a torch.export archive (corrupt, or written by another torch version?): {type(exc).__name__}: {first_line(exc)}") from None
    metadata = stored_metadata(path, stored)
    batch = inputs[0].shape[0] if "ecacli_version" in metadata and inputs and inputs[0].shape else None
    if isinstance(batch, str):  # the symbol torch.export chose for the axis ecacli's export named
        for io_tensor in inputs + outputs:
            io_tensor.shape = [BATCH_AXIS if axis == batch else axis for axis in io_tensor.shape]
    description = GraphDescription(path, PT2, size, producer, None, inputs, outputs, by_count(ops), len(counts), sum(counts))
    return with_spec(description, metadata)


PT2_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64", 12: "bool", 13: "bfloat16"}
"""torch.export's serialised ScalarType numbers (torch/_export/serde/schema.py) for the dtypes a model's input or output can have."""

DESCRIBERS = {ONNX: describe_onnx, TORCHSCRIPT: describe_torchscript, PT2: describe_pt2}

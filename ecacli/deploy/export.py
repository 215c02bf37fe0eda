"""`export_model`: a model written as weights or as a graph file, a graph checked in its own runtime before it is written.

A graph export (onnx, torchscript, pt2) works on a copy of the model, on the CPU, in eval mode
and in the requested dtype, and touches the destination only at the end:

1. the copy runs eagerly on an example batch, which also checks that it takes the input size;
2. the exporter turns it into the file's bytes, in memory;
3. unless `verify=False`, the bytes are loaded back in their runtime (ONNX Runtime,
   `torch.jit.load`, `torch.export.load`), run on another random batch and compared with eager
   PyTorch on the same batch;
4. the file is written atomically (`ecacli.atomic`).

So an export that fails or is refused at any step leaves nothing at the destination.

- onnx: torch.export's exporter (`torch.onnx.export(dynamo=True)`) for opset 18 and up (by
  default its own opset); older opsets come from the TorchScript-based exporter
  (`dynamo=False`), which writes them natively.
- torchscript: `torch.jit.script`, which keeps every axis open; a model that cannot be scripted
  (attention gating a module outside an nn.Sequential, `ecacli.attachment.scriptable`) is traced
  with `torch.jit.trace` on the example batch (its control flow is static) and the trace must
  equal eager PyTorch on a second batch of another batch size, or nothing is written.
- pt2: `torch.export.export`.

Every format names the input `input` and the output `logits` (`features` for a headless model):
ONNX by its names, pt2 by forward's argument and its output node, TorchScript by forward's
argument (its outputs have no names; `describe_graph` reads the stored spec's).

With a dynamic batch axis the example batch has at least 2 samples (torch.export fixes an axis
it sees at size 1), so a check at batch 1 runs the graph at a batch it was not traced with. The
spec (YAML), versions, parameter count and dtype, as the safetensors export stores them, go in
the ONNX metadata props or in the archive's `extra/ecacli/metadata.json` (TorchScript, pt2).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecacli.atomic import atomic_write
from ecacli.attachment import scriptable
from ecacli.checkpoints import DTYPES, SavedCheckpoint, check_writable_outputs, file_metadata, floating_dtype, new_model, parameter_count, save_checkpoint
from ecacli.deploy.formats import INPUT_NAME, ONNX, PT2, TORCHSCRIPT, WEIGHT_FORMATS, format_for, output_name
from ecacli.extras import EXTRA_MODULES, require
from ecacli.errors import OptionError, OutOfMemory, UserError, first_line, is_out_of_memory, shown
from ecacli.quiet import native_output_silenced
from ecacli.spec import MAX_BATCH, NetworkSpec, check_input_size

METADATA_FILE = "ecacli/metadata.json"
"""The archive entry (under `extra/`) of a TorchScript or pt2 file that holds ecacli's metadata, as JSON."""

TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
"""How far a graph's outputs may lie from eager PyTorch's, as a fraction of eager's largest |output|."""

DYNAMO_MIN_OPSET = 18
"""The oldest opset torch.export's ONNX exporter writes natively; older ones come from the TorchScript-based exporter."""
OLDEST_OPSET = 7
MAX_ONNX_BYTES = 2**31 - 1
"""Protocol buffers' limit for one message: an ONNX file with its weights inside must stay under it."""
BATCH_AXIS = "batch"
EXPORTER_LOGGERS = ("torch", "onnxscript")


class ExportError(RuntimeError):
    """The exporter or the runtime failed on a request that should work, or the graph disagrees with eager PyTorch (an internal failure)."""


@dataclass
class Verification:
    """How the written graph compares with eager PyTorch on one random batch."""

    runtime: str
    input_shape: list[int]
    max_abs_diff: float
    max_abs_output: float
    tolerance: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportedModel(SavedCheckpoint):
    """What `export_model` wrote; for graph formats also the input the graph takes, its ONNX opset, the check, and for TorchScript how it was made ("scripted" or "traced")."""

    input_shape: list[int | str] | None = None
    opset: int | None = None
    verification: Verification | None = None
    torchscript: str | None = None

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "input_shape": self.input_shape,
            "opset": self.opset,
            "verification": self.verification.to_dict() if self.verification else None,
            "torchscript": self.torchscript,
        }


@dataclass(frozen=True)
class ExportRequest:
    """What to write and how; `resolve` checks it before any model is built, so every refusal comes first."""

    path: Path
    format: str
    input_size: int | None = None
    batch: int = 1
    dynamic_batch: bool = True
    opset: int | None = None
    dtype: str | None = None
    verify: bool = True
    force: bool = False

    @classmethod
    def resolve(
        cls,
        path: str | Path,
        format: str | None = None,
        *,
        input_size: int | None = None,
        batch: int | None = None,
        dynamic_batch: bool | None = None,
        opset: int | None = None,
        dtype: str | None = None,
        verify: bool | None = None,
        force: bool = False,
    ) -> ExportRequest:
        """The request for `path`, the format named or inferred from its suffix; a UserError for anything that cannot work.

        Graph options (`input_size`, `batch`, `dynamic_batch`, `opset`, `verify`) left as None take
        their defaults (the spec's input size, batch 1, a dynamic batch axis, the exporter's opset, a
        check in the runtime); given with a weights format they are refused, as are an opset for a
        non-ONNX graph and a missing extra.
        """
        for name, value, kind in (("input_size", input_size, int), ("batch", batch, int), ("opset", opset, int), ("dynamic_batch", dynamic_batch, bool), ("verify", verify, bool), ("force", force, bool), ("format", format, str), ("dtype", dtype, str)):
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise OptionError(f"{name}: expected {'an integer' if kind is int else 'True or False' if kind is bool else 'text'}, got {type(value).__name__} {shown(value)}.")
        if not isinstance(path, (str, Path)):
            raise OptionError(f"path: expected the file to write (str or Path), got {type(path).__name__}.")
        path = Path(path)
        fmt = format_for(path, format)
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
        if fmt in WEIGHT_FORMATS:
            given = [flag for flag, value in (("--input-size", input_size), ("--batch", batch), ("--dynamic-batch/--static-batch", dynamic_batch), ("--opset", opset), ("--verify/--no-verify", verify)) if value is not None]
            if given:
                raise UserError(
                    f"{', '.join(given)}: shape a graph export (onnx, torchscript, pt2); {path} is a {fmt} file, which holds weights only. "
                    "Drop the option or write a graph format (--format or the suffix .onnx, .ts, .pt2)."
                )
            check_writable_outputs(path, fmt, force)
            return cls(path, fmt, dtype=dtype, verify=False, force=force)
        if opset is not None and fmt != ONNX:
            raise UserError(f"--opset {opset}: an ONNX opset; {path} is a {fmt} file. Drop --opset or write .onnx.")
        if fmt == TORCHSCRIPT and dynamic_batch is False:
            raise UserError(f"--static-batch: {path} is a TorchScript file, which torch.jit.script leaves open on every axis; there is no batch to fix. Drop --static-batch.")
        if batch is not None and not (isinstance(batch, int) and 1 <= batch <= MAX_BATCH):
            raise UserError(f"--batch must be an integer from 1 to {MAX_BATCH:,}, got {batch!r}.")
        if input_size is not None:
            check_input_size(input_size)
        if fmt == ONNX:
            needed = EXTRA_MODULES["onnx"] if verify is not False else tuple(name for name in EXTRA_MODULES["onnx"] if name != "onnxruntime")
            require(needed, "--format onnx" + ("" if verify is not False else " --no-verify"), "onnx")
            if opset is not None:
                check_opset(opset)
        check_writable_outputs(path, fmt, force)
        return cls(path, fmt, input_size, batch or 1, dynamic_batch is not False, opset, dtype, verify is not False, force)

    def write(self, model: nn.Module, source: str | None = None) -> ExportedModel:
        """Write `model` (an ecacli model: it carries its spec) as this request says; `source` names where its weights came from."""
        spec = getattr(model, "spec", None)
        if not isinstance(spec, NetworkSpec):
            raise ValueError(f"model: expected a model built by ecacli (with its spec as `model.spec`), got {type(model).__name__}.")
        if self.format in WEIGHT_FORMATS:
            saved = save_checkpoint(model.state_dict(), spec, self.path, self.format, self.dtype, self.force, source)
            return ExportedModel(**vars(saved))
        try:
            return self._write_graph(model, spec, source)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            shape = spec.input_shape(self.batch, self.input_size)
            raise OutOfMemory(f"{self.path}: out of memory exporting '{spec.name}' at input {list(shape)}; lower --batch or --input-size. Nothing was written.") from None

    def _write_graph(self, model: nn.Module, spec: NetworkSpec, source: str | None) -> ExportedModel:
        model = copy.deepcopy(model).cpu().eval()
        if self.dtype is not None:
            model.to(DTYPES[self.dtype])
        state = model.state_dict()
        dtype = floating_dtype(state) or torch.float32
        dtype_name = str(dtype).removeprefix("torch.")
        weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
        if self.format == ONNX and weight_bytes >= MAX_ONNX_BYTES:
            raise UserError(f"{self.path}: the model's {weight_bytes:,} bytes of weights do not fit in one ONNX file (protocol buffers' limit is 2 GiB); export pt2 or torchscript, or a smaller --dtype.")
        dynamic = self.dynamic_batch and self.format != TORCHSCRIPT
        example = random_batch(spec, max(self.batch, 2) if dynamic else self.batch, self.input_size, dtype, seed=0)
        check_runs(model, example, spec, self)
        parameters = parameter_count(state)
        exported_at = spec if self.input_size in (None, spec.input_size) else spec.model_copy(update={"input_size": self.input_size})
        metadata = file_metadata(exported_at, parameters, dtype_name, source)  # the spec says the size the graph was traced at
        data, opset = EXPORTERS[self.format](model, example, self, metadata)
        verification = self._verify(model, data, spec, dtype, opset) if self.verify else None
        atomic_write({self.path: lambda handle: handle.write(data)}, self.force)
        made = torchscript_method(model) if self.format == TORCHSCRIPT else None
        input_shape: list[int | str] | None = None
        if made != "scripted":  # a trace is checked at its example's sample shape, a script on none
            input_shape = [BATCH_AXIS if dynamic or made == "traced" else self.batch, *example.shape[1:]]
        return ExportedModel(self.path, self.format, self.path.stat().st_size, hashlib.sha256(data).hexdigest(), parameters, dtype_name, None, input_shape, opset, verification, made)

    def _verify(self, model: nn.Module, data: bytes, spec: NetworkSpec, dtype: torch.dtype, opset: int | None) -> Verification:
        with exporting(f"loading the {self.format} file back"):
            run, runtime = RUNTIMES[self.format](data, self, opset)
        inputs = random_batch(spec, self.batch, self.input_size, dtype, seed=1)
        with torch.no_grad():
            expected = model(inputs)
            with exporting(f"running the {self.format} file in {runtime}"):
                got = run(inputs)
        diff = float((got.float() - expected.float()).abs().max())
        scale = float(expected.float().abs().max())
        tolerance = TOLERANCE[str(dtype).removeprefix("torch.")]
        if not diff <= tolerance * scale:
            raise ExportError(
                f"the {self.format} graph disagrees with eager PyTorch: max abs difference {diff:.3g} where the largest output is {scale:.3g} "
                f"(allowed: {tolerance:g} of it); nothing was written to {self.path}."
            )
        return Verification(runtime, list(inputs.shape), diff, scale, tolerance)


def export_model(
    model_or_spec: nn.Module | NetworkSpec | str | Path,
    path: str | Path,
    format: str | None = None,
    *,
    input_size: int | None = None,
    batch: int | None = None,
    dynamic_batch: bool | None = None,
    opset: int | None = None,
    dtype: str | None = None,
    verify: bool | None = None,
    force: bool = False,
    seed: int | None = None,
    source: str | None = None,
) -> ExportedModel:
    """Write an ecacli model, or the model a spec (a NetworkSpec, preset name or YAML path) builds, to `path`.

    `format` is safetensors, pt, onnx, torchscript or pt2 (default: from the suffix); see
    `ExportRequest.resolve` for the graph options and this module's docstring for what a graph
    export does. A fresh model is initialised with `seed`. Refusals raise a UserError before
    anything is built or written; an existing file is replaced only with `force`.
    """
    request = ExportRequest.resolve(path, format, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch, opset=opset, dtype=dtype, verify=verify, force=force)
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
    else:
        from ecacli.spec_loader import load_spec

        spec = model_or_spec if isinstance(model_or_spec, NetworkSpec) else load_spec(model_or_spec)
        model = new_model(spec, seed)
    return request.write(model, source)


def check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not OLDEST_OPSET <= opset <= newest:
        raise UserError(f"--opset must be between {OLDEST_OPSET} and {newest} (the newest this onnx {onnx.__version__} knows), got {opset}.")


def random_batch(spec: NetworkSpec, batch: int, input_size: int | None, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A standard-normal batch of the spec's input shape, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(spec.input_shape(batch, input_size), generator=generator).to(dtype)


def check_runs(model: nn.Module, example: torch.Tensor, spec: NetworkSpec, request: ExportRequest) -> None:
    """Run the model once on the example batch; an input it cannot take is the user's to change, a model with several outputs is refused."""
    try:
        with torch.no_grad():
            out = model(example)
    except (RuntimeError, ValueError) as exc:
        if is_out_of_memory(exc):
            raise
        side = request.input_size or spec.input_size
        raise UserError(f"--input-size {side}: the network '{spec.name}' cannot take input {list(example.shape)} ({first_line(exc)}). Use a larger input size.") from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model: returns a {type(out).__name__}, not one tensor (a features_only trunk?); graph exports take models with one output.")


@contextlib.contextmanager
def exporting(what: str) -> Iterator[None]:
    """Run an exporter quietly (its progress lines, warnings and logged tracebacks are not this command's output); its failure becomes one ExportError line."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), native_output_silenced(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except UserError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise ExportError(f"{what} failed: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_bytes(model: nn.Module, example: torch.Tensor, request: ExportRequest, metadata: dict[str, str]) -> tuple[bytes, int]:
    import onnx

    output = output_name(model.spec)
    names = {"input_names": [INPUT_NAME], "output_names": [output]}
    dynamo = request.opset is None or request.opset >= DYNAMO_MIN_OPSET
    with exporting("torch.onnx.export" + ("" if dynamo else " (dynamo=False)")):
        if dynamo:
            shapes = ({0: BATCH_AXIS},) if request.dynamic_batch else None
            proto = torch.onnx.export(model, (example,), dynamo=True, opset_version=request.opset, dynamic_shapes=shapes, verbose=False, **names).model_proto
        else:
            axes = {INPUT_NAME: {0: BATCH_AXIS}, output: {0: BATCH_AXIS}} if request.dynamic_batch else None
            buffer = io.BytesIO()
            try:
                torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=request.opset, dynamic_axes=axes, **names)
            except torch.onnx.OnnxExporterError as exc:
                raise UserError(
                    f"--opset {request.opset}: the TorchScript-based exporter cannot write '{model.spec.name}' at this opset ({first_line(exc, 120)}). "
                    f"Choose a newer opset ({DYNAMO_MIN_OPSET} and up use torch.export's exporter), or leave --opset out."
                ) from None
            proto = onnx.load_from_string(buffer.getvalue())
    opset = onnx_opset(proto)
    if request.opset is not None and opset != request.opset:
        raise UserError(f"--opset {request.opset}: the exporter wrote opset {opset} instead; choose opset {opset}, or another version the exporter converts to.")
    _drop_source_locations(proto)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString(), opset


SOURCE_LOCATION_KEYS = ("pkg.torch.onnx.stack_trace",)
"""Node metadata the exporter writes that names files of the exporting machine (the Python stack of each node)."""


def _drop_source_locations(proto: Any) -> None:
    """Remove the exporter's per-node stack traces: they name where ecacli and torch are installed, so the same model exported elsewhere gave other bytes."""
    for node in [*proto.graph.node, *(node for function in proto.functions for node in function.node)]:
        kept = [prop for prop in node.metadata_props if prop.key not in SOURCE_LOCATION_KEYS]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def onnx_opset(proto) -> int | None:
    """The default-domain opset an ONNX model imports (None if it imports none)."""
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)


def torchscript_method(model: nn.Module) -> str:
    """How the model becomes TorchScript: "scripted" (torch.jit.script), or "traced" (torch.jit.trace) where it cannot be scripted."""
    return "scripted" if scriptable(model) else "traced"


def torchscript_bytes(model: nn.Module, example: torch.Tensor, request: ExportRequest, metadata: dict[str, str]) -> tuple[bytes, None]:
    buffer = io.BytesIO()
    if torchscript_method(model) == "scripted":
        with exporting("torch.jit.script"):
            module = torch.jit.script(model)
    else:
        with exporting("torch.jit.trace"):
            module = torch.jit.trace(model, example, check_trace=False)
        check_trace(model, module, example, request)
    with exporting("torch.jit.save"):
        torch.jit.save(module, buffer, _extra_files={METADATA_FILE: json.dumps(metadata)})
    return buffer.getvalue(), None


def check_trace(model: nn.Module, traced: torch.jit.ScriptModule, example: torch.Tensor, request: ExportRequest) -> None:
    """The trace must compute what the eager model computes on a second random batch, one sample larger (so its batch axis is open too)."""
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn([example.shape[0] + 1, *example.shape[1:]], generator=generator).to(example.dtype)
    with torch.no_grad():
        expected = model(inputs)
        with exporting("running the torch.jit.trace graph"):
            got = traced(inputs)
    try:
        torch.testing.assert_close(got, expected)
    except AssertionError as exc:
        raise UserError(
            f"{request.path}: '{model.spec.name}' cannot be scripted, and its torch.jit.trace does not compute what the model computes on a second batch "
            f"({first_line(exc)}); export as onnx or pt2. Nothing was written."
        ) from None


def pt2_bytes(model: nn.Module, example: torch.Tensor, request: ExportRequest, metadata: dict[str, str]) -> tuple[bytes, None]:
    buffer = io.BytesIO()
    with exporting("torch.export.export"):
        shapes = ({0: torch.export.Dim(BATCH_AXIS)},) if request.dynamic_batch else None
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        name_output(program, output_name(model.spec))
        torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(metadata)})
    return buffer.getvalue(), None


def name_output(program: torch.export.ExportedProgram, name: str) -> None:
    """Name the program's one output `name`, as ONNX's is named (torch.export names it after the op computing it, e.g. `linear`); its input is named by forward's argument."""
    from torch.export.graph_signature import OutputKind

    (spec,) = [s for s in program.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    (node,) = [n for n in program.graph.nodes if n.name == spec.arg.name]
    node.name = spec.arg.name = name
    program.graph_module.recompile()


Exporter = Callable[[nn.Module, torch.Tensor, ExportRequest, dict[str, str]], tuple[bytes, int | None]]
EXPORTERS: dict[str, Exporter] = {ONNX: onnx_bytes, TORCHSCRIPT: torchscript_bytes, PT2: pt2_bytes}

Runner = Callable[[torch.Tensor], torch.Tensor]


def onnx_runtime(data: bytes, request: ExportRequest, opset: int | None) -> tuple[Runner, str]:
    """An ONNX Runtime CPU session on the graph; a graph it cannot run (a dtype or opset it lacks) is refused."""
    import onnxruntime

    runtime = f"onnxruntime {onnxruntime.__version__}"

    def refused(exc: Exception) -> UserError:
        return UserError(
            f"{request.path}: {runtime} (CPU) cannot run the exported graph (opset {opset}, {request.dtype or 'float32'}): {first_line(exc)} "
            "Export with another --dtype or --opset, or skip this check with --no-verify to run the file elsewhere; nothing was written."
        )

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise refused(exc) from None
    name = session.get_inputs()[0].name

    def run(inputs: torch.Tensor) -> torch.Tensor:
        try:
            return torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])
        except Exception as exc:
            raise refused(exc) from None

    return run, runtime


def torchscript_runtime(data: bytes, request: ExportRequest, opset: int | None) -> tuple[Runner, str]:
    return torch.jit.load(io.BytesIO(data), map_location="cpu"), f"torch.jit.load (torch {torch.__version__})"


def pt2_runtime(data: bytes, request: ExportRequest, opset: int | None) -> tuple[Runner, str]:
    return torch.export.load(io.BytesIO(data)).module(), f"torch.export.load (torch {torch.__version__})"


RUNTIMES: dict[str, Callable[[bytes, ExportRequest, int | None], tuple[Runner, str]]] = {ONNX: onnx_runtime, TORCHSCRIPT: torchscript_runtime, PT2: pt2_runtime}

"""`ecacli export`: write a spec's or a checkpoint's model as weights (.safetensors, .pt) or as a graph (.onnx, .ts, .pt2), checked in its runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ecacli.cli.common import JsonOption, SetOption, checkpoint_path, fmt_bytes, fmt_int, load_spec_arg, output_path, print_json, refuse_graph_file
from ecacli.errors import UserError, check_seed, describe_path
from ecacli.spec import MAX_BATCH

if TYPE_CHECKING:
    from ecacli.checkpoints import SavedCheckpoint
    from ecacli.deploy import ExportedModel

OutputOption = Annotated[str, typer.Option("-o", "--output", metavar="PATH", help="File to write: .safetensors, or .pt / .pth (+ PATH.yaml).", show_default=False)]
FormatOption = Annotated[
    Literal["safetensors", "pt"] | None,
    typer.Option("--format", metavar="FORMAT", help="safetensors or pt (default: pt for .pt, .pth, .tar, .bin, .ckpt).", show_default=False),
]
DtypeOption = Annotated[
    Literal["float32", "bfloat16", "float16"] | None,
    typer.Option("--dtype", metavar="DTYPE", help="Cast floats to float32, bfloat16 or float16 (default: keep).", show_default=False),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")]
SeedOption = Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed of the initial weights (0 to 2**64 - 1).", show_default=False)]
AllowNonfiniteOption = Annotated[bool, typer.Option("--allow-nonfinite", help="Load weights that hold NaN or Inf.")]


ExportFormatOption = Annotated[
    Literal["safetensors", "pt", "onnx", "torchscript", "pt2"] | None,
    typer.Option("--format", metavar="FORMAT", help="safetensors, pt, onnx, torchscript or pt2 (default: by the suffix).", show_default=False),
]


def export(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Spec file or preset, or a checkpoint (its spec and weights).", show_default=False)],
    output: Annotated[str, typer.Option("-o", "--output", metavar="PATH", help=".safetensors, .pt / .pth (+ PATH.yaml), .onnx, .ts or .pt2.", show_default=False)],
    source: Annotated[str | None, typer.Option("--from", metavar="CHECKPOINT", help="Weights to export (paper, torchvision, timm, ecacli).", show_default=False)] = None,
    seed: SeedOption = None,
    dtype: DtypeOption = None,
    fmt: ExportFormatOption = None,
    input_size: Annotated[int | None, typer.Option("--input-size", metavar="PX", help="Graphs: input side (default: the spec's).", show_default=False)] = None,
    batch: Annotated[int | None, typer.Option("--batch", metavar="N", min=1, max=MAX_BATCH, help="Graphs: batch of the example and the check (default 1).", show_default=False)] = None,
    dynamic_batch: Annotated[bool | None, typer.Option("--dynamic-batch/--static-batch", help="Graphs: batch axis open (default) or fixed at --batch.", show_default=False)] = None,
    opset: Annotated[int | None, typer.Option("--opset", metavar="N", help="ONNX opset (default: the exporter's).", show_default=False)] = None,
    verify: Annotated[bool | None, typer.Option("--verify/--no-verify", help="Graphs: check the file in its runtime (default).", show_default=False)] = None,
    force: ForceOption = False,
    allow_nonfinite: AllowNonfiniteOption = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a model as weights or as a graph checked in its runtime.

    The weights are initialised (--seed) or a checkpoint's (--from, or a checkpoint as SPEC),
    converted to the spec. TorchScript is traced (checked on a second batch) where
    attention gates a module outside an nn.Sequential.
    """
    check_seed(seed, "--seed")
    target = output_path(output, "-o", "model.safetensors")
    origin = checkpoint_path(source) if source is not None else None
    refuse_graph_file(spec, "a spec (YAML file or preset) or a checkpoint")
    from ecacli.checkpoints import NAME_SUFFIXES, model_with_weights, new_model, open_checkpoint, spec_for
    from ecacli.deploy import ExportRequest
    from ecacli.spec_loader import apply_overrides, spec_from_data

    if spec.endswith(NAME_SUFFIXES) and not Path(spec).exists():
        raise UserError(f"{describe_path(spec)}: no such file; give a checkpoint that exists, or a spec (YAML file or preset).")
    from_checkpoint = spec.endswith(NAME_SUFFIXES) and Path(spec).is_file()
    if from_checkpoint and origin is not None:
        raise UserError(f"--from {origin}: {spec} is a checkpoint already, which gives the weights; give a spec as the first argument to load --from into it.")
    model_spec = None if from_checkpoint else load_spec_arg(spec, overrides)
    request = ExportRequest.resolve(target, fmt, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch, opset=opset, dtype=dtype, verify=verify, force=force)
    notes: list[str] = []
    weights = Path(spec) if from_checkpoint else origin
    if weights is None:
        model = new_model(model_spec, seed)
    else:
        checkpoint = open_checkpoint(weights)
        if model_spec is None:
            own, _ = spec_for(checkpoint)
            model_spec = spec_from_data(apply_overrides(own.to_yaml_dict(), overrides or ()), f"{weights}'s spec" + (" (with --set)" if overrides else ""))
        model, notes = model_with_weights(model_spec, checkpoint, seed, init_missing_eca=True, allow_nonfinite=allow_nonfinite)
    exported = request.write(model, source=weights.name if weights else None)
    report_saved(exported, model_spec.name, notes, as_json, details=graph_lines(exported))


def graph_lines(exported: ExportedModel) -> list[str]:
    """The input a graph takes and how it compared with eager PyTorch; nothing for weights."""
    from ecacli.deploy import WEIGHT_FORMATS

    if exported.format in WEIGHT_FORMATS:
        return []
    lines = []
    if exported.opset is not None:
        lines.append(f"  opset:       {exported.opset}")
    if exported.torchscript is not None:
        lines.append(f"  torchscript: {exported.torchscript}" + (" (torch.jit.trace: attention outside an nn.Sequential)" if exported.torchscript == "traced" else ""))
    if exported.input_shape is not None:
        dynamic = " (dynamic batch)" if "batch" in exported.input_shape else ""
        lines.append(f"  input:       [{', '.join(map(str, exported.input_shape))}]{dynamic}")
    check = exported.verification
    if check is None:
        lines.append("  verified:    no (--no-verify)")
    else:
        lines += [
            f"  verified:    {check.runtime}, input {check.input_shape}",
            f"  max |diff|:  {check.max_abs_diff:.2e} against eager PyTorch (largest output {check.max_abs_output:.3g})",
        ]
    return lines


def report_saved(saved: SavedCheckpoint, spec_name: str, notes: list[str], as_json: bool, extra: dict | None = None, details: list[str] = ()) -> None:
    """Print what was written: path, size, sha256, parameter count, and any notes on the conversion."""
    if as_json:
        print_json({**saved.to_dict(), "spec": spec_name, **(extra or {}), "notes": notes})
        return
    for note in notes:
        typer.echo(f"note: {note}")
    lines = [
        f"wrote {saved.path} ({saved.format}, spec {spec_name})",
        f"  size:        {fmt_bytes(saved.size)} ({fmt_int(saved.size)} bytes)",
        f"  sha256:      {saved.sha256}",
        f"  parameters:  {fmt_int(saved.parameters)} ({saved.dtype})",
    ]
    if saved.spec_path:
        lines.append(f"  spec:        {saved.spec_path}")
    typer.echo("\n".join([*lines, *details]))

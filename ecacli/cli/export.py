"""`ecacli export`: write a spec's model (fresh, seeded, or with converted weights) as .safetensors or .pt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ecacli.cli.common import JsonOption, SetOption, SpecArgument, fmt_bytes, fmt_int, input_path, load_spec_arg, output_path, print_json

if TYPE_CHECKING:
    from ecacli.checkpoints import SavedCheckpoint

OutputOption = Annotated[str, typer.Option("-o", "--output", help="File to write: .safetensors, or .pt / .pth for a plain state_dict (+ FILE.yaml).", show_default=False)]
FormatOption = Annotated[
    Literal["safetensors", "pt"] | None,
    typer.Option("--format", help="safetensors or pt (default: pt for a .pt, .pth, .tar, .bin or .ckpt file name, else safetensors).", show_default=False),
]
DtypeOption = Annotated[Literal["float32", "bfloat16", "float16"] | None, typer.Option("--dtype", help="Cast floating-point tensors (default: keep their dtype).", show_default=False)]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")]
SeedOption = Annotated[int | None, typer.Option("--seed", min=0, max=2**64 - 1, help="Seed for reproducible initial weights (0 to 2**64 - 1).", show_default=False)]
AllowNonfiniteOption = Annotated[bool, typer.Option("--allow-nonfinite", help="Load weights that hold NaN or Inf instead of refusing them.")]


def export(
    spec: SpecArgument,
    output: OutputOption,
    source: Annotated[str | None, typer.Option("--from", help="Checkpoint whose weights to export (paper, torchvision, timm or ecacli).", show_default=False)] = None,
    seed: SeedOption = None,
    dtype: DtypeOption = None,
    fmt: FormatOption = None,
    force: ForceOption = False,
    allow_nonfinite: AllowNonfiniteOption = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export the model a spec builds: initialised weights, or a checkpoint's weights converted to this spec."""
    target = output_path(output, "-o", "model.safetensors")
    origin = input_path(source, "a checkpoint") if source is not None else None
    model_spec = load_spec_arg(spec, overrides)
    from ecacli.checkpoints import check_writable_outputs, model_with_weights, new_model, open_checkpoint, save_checkpoint

    check_writable_outputs(target, fmt, force)
    notes: list[str] = []
    if origin is None:
        model = new_model(model_spec, seed)
    else:
        checkpoint = open_checkpoint(origin)
        model, notes = model_with_weights(model_spec, checkpoint, seed, init_missing_eca=True, allow_nonfinite=allow_nonfinite)
    saved = save_checkpoint(model.state_dict(), model_spec, target, fmt, dtype, force, source=origin.name if origin else None)
    report_saved(saved, model_spec.name, notes, as_json)


def report_saved(saved: SavedCheckpoint, spec_name: str, notes: list[str], as_json: bool, extra: dict | None = None) -> None:
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
    typer.echo("\n".join(lines))

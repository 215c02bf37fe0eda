"""`ecacli convert`: turn a paper, torchvision or timm checkpoint into an ecacli spec plus weights."""

from __future__ import annotations

from typing import Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, checkpoint_path, output_path
from ecacli.cli.export import AllowNonfiniteOption, DtypeOption, ForceOption, FormatOption, OutputOption, SeedOption, report_saved
from ecacli.errors import check_seed


def convert(
    source: Annotated[str, typer.Argument(metavar="CHECKPOINT", help="The paper's .pth.tar, a torchvision or timm state_dict.", show_default=False)],
    output: OutputOption,
    name: Annotated[str | None, typer.Option("--name", metavar="NAME", help="Spec name (default: the source's file name).", show_default=False)] = None,
    seed: SeedOption = None,
    dtype: DtypeOption = None,
    fmt: FormatOption = None,
    force: ForceOption = False,
    allow_nonfinite: AllowNonfiniteOption = False,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Convert a checkpoint into an ecacli spec and weights.

    The source is detected and the spec inferred from tensor names and shapes. Plain ResNets
    (no ECA kernels) get initialised ECA kernels, a warm start for fine-tuning, and a name
    ending in _eca_warm; --set attention.type=none keeps them plain.
    """
    check_seed(seed, "--seed")
    origin = checkpoint_path(source)
    target = output_path(output, "-o", "model.safetensors")
    from ecacli.checkpoints import check_writable_outputs, converted_spec, model_with_weights, open_checkpoint, save_checkpoint

    check_writable_outputs(target, fmt, force)
    checkpoint = open_checkpoint(origin)
    spec = converted_spec(checkpoint, name, overrides or ())
    model, notes = model_with_weights(spec, checkpoint, seed, init_missing_eca=True, allow_nonfinite=allow_nonfinite)
    saved = save_checkpoint(model.state_dict(), spec, target, fmt, dtype, force, source=f"{origin.name} ({checkpoint.state.label})")
    if not as_json:
        typer.echo(f"source: {checkpoint.state.label}")
        typer.echo(f"spec:   {spec.layout_text()}, {spec.num_classes} classes, attention {spec.attention.type}, k per {spec.group_noun} {spec.group_kernel_sizes}")
    report_saved(saved, spec.name, notes, as_json, extra={"source": checkpoint.state.source, "kernel_sizes": spec.group_kernel_sizes, "kernel_groups": spec.group_noun})

"""`ecacli validate`: check a spec against the schema and show what it resolves to (no torch)."""

from __future__ import annotations

from ecacli.cli.common import JsonOption, SetOption, SpecArgument, load_spec_arg, print_json


def validate(spec: SpecArgument, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Validate a spec; prints its resolved layout, or the problems with the file, key and what is allowed (exit 2)."""
    model_spec = load_spec_arg(spec, overrides)
    resolved = {
        "name": model_spec.name,
        "valid": True,
        "block": model_spec.block_type,
        "stage_blocks": model_spec.stage_blocks,
        "stage_outputs": model_spec.stage_outputs,
        "stem_channels": list(model_spec.stem_channels),
        "attention": model_spec.attention.type,
        "stage_kernel_sizes": model_spec.stage_kernel_sizes,
    }
    if as_json:
        print_json(resolved)
        return
    kernels = resolved["stage_kernel_sizes"]
    print(
        f"ok: {model_spec.name}: {model_spec.block_type} blocks {model_spec.stage_blocks}, "
        f"{model_spec.stem} stem, widths {model_spec.stage_outputs}, attention {model_spec.attention.type}"
        + (f", k per stage {kernels}" if kernels else "")
    )

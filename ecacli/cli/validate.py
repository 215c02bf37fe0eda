"""`ecacli validate`: check a spec against the schema and show what it resolves to (no torch)."""

from __future__ import annotations

from ecacli.cli.common import JsonOption, SetOption, SpecArgument, load_spec_arg, print_json


def validate(spec: SpecArgument, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Validate a spec; prints its resolved layout, or the problems with the file, key and what is allowed (exit 2)."""
    model_spec = load_spec_arg(spec, overrides)
    resolved = {**model_spec.resolved(), "valid": True}
    if as_json:
        print_json(resolved)
        return
    kernels = model_spec.group_kernel_sizes
    print(f"ok: {model_spec.name}: {model_spec.layout_text()}, attention {model_spec.attention.type}" + (f", k per {model_spec.group_noun} {kernels}" if kernels else ""))

"""`ecacli validate`: check a spec against the schema and show what it resolves to (no torch)."""

from __future__ import annotations

from ecacli.cli.common import JsonOption, SetOption, SpecArgument, load_spec_arg, print_json


def validate(spec: SpecArgument, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Check a spec and print its resolved layout.

    A spec that cannot be built prints its problems (the file, the key and what is allowed)
    and exits 2.
    """
    model_spec = load_spec_arg(spec, overrides)
    resolved = {**model_spec.resolved(), "valid": True}
    if as_json:
        print_json(resolved)
        return
    kernels = model_spec.group_kernel_sizes
    print(f"ok: {model_spec.name}: {model_spec.layout_text()}, attention {model_spec.attention.type}" + (f", k per {model_spec.group_noun} {kernels}" if kernels else ""))

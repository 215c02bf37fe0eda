"""`ecacli validate`: check a spec against the schema and show what it resolves to (no torch)."""

from __future__ import annotations

import textwrap

from ecacli.cli.common import JsonOption, SetOption, SpecArgument, load_spec_arg, print_json
from ecacli.spec import BaseSpec

BUILD_TIME_KEYS = ["base", "base_args", "attention.after"]
"""What only building a base spec checks: the name against its library's registry, the keywords against its builder, the glob against its modules."""


def validate(spec: SpecArgument, overrides: SetOption = None, as_json: JsonOption = False) -> None:
    """Check a spec and print its resolved layout.

    A spec that cannot be built prints its problems (the file, the key and what is allowed)
    and exits 2. A base spec's model name, builder keywords and glob are checked only when it is
    built (validate imports no torch): `summary` builds it on the meta device.
    """
    model_spec = load_spec_arg(spec, overrides)
    deferred = BUILD_TIME_KEYS if isinstance(model_spec, BaseSpec) else []
    resolved = {**model_spec.resolved(), "valid": True, **({"checked_when_built": deferred} if deferred else {})}
    if as_json:
        print_json(resolved)
        return
    kernels = model_spec.group_kernel_sizes
    print(f"ok: {model_spec.name}: {model_spec.layout_text()}, attention {model_spec.attention.type}" + (f", k per {model_spec.group_noun} {kernels}" if kernels else ""))
    if deferred:
        print(textwrap.fill(f"note: {', '.join(deferred)} are checked when the model is built (ecacli summary builds it without weights).", 80))

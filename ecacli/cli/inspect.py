"""`ecacli inspect`: what a checkpoint holds, its spec, and whether it loads strictly into the built model.

Exit status: 0 when the weights load strictly into the spec (given, stored or inferred), 3 when
they do not (or no spec describes them), 2 when the file cannot be read at all.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, fmt_bytes, fmt_int, input_path, load_optional_spec_arg, print_json
from ecacli.errors import UserError, cut

DOES_NOT_LOAD = 3


def inspect(
    file: Annotated[str, typer.Argument(help="Checkpoint: .safetensors, .pt / .pth / .pth.tar (read without unpickling objects).", show_default=False)],
    spec: Annotated[str | None, typer.Option("--spec", help="Check against this spec or preset instead of the file's own or inferred spec.", show_default=False)] = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a checkpoint's source, spec, parameter count and dtypes, and whether it loads strictly (with the exact mismatches).

    Exit status 0: loads strictly; 3: does not (or no spec describes it); 2: unreadable.
    """
    path = input_path(file, "a checkpoint")
    given = load_optional_spec_arg(spec, overrides)
    from ecacli.checkpoints import check_against, nonfinite_tensors, open_checkpoint, parameter_count, spec_for, spec_yaml

    checkpoint = open_checkpoint(path)
    state = checkpoint.state
    try:
        model_spec, origin = spec_for(checkpoint, given)
        spec_error = None
    except UserError as exc:
        model_spec, origin, spec_error = None, None, str(exc)
    report = check_against(model_spec, state.tensors) if model_spec else None
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in state.tensors.values())
    result = {
        "file": file,
        "container": checkpoint.raw.container,
        "size": checkpoint.raw.size,
        "source": state.source,
        "source_label": state.label,
        "details": state.details,
        "metadata": {k: v for k, v in checkpoint.raw.metadata.items() if k != "spec"},
        "notes": state.notes,
        "problem": state.problem,
        "spec": model_spec.to_yaml_dict() if model_spec else None,
        "spec_origin": origin,
        "spec_error": spec_error,
        "parameters": parameter_count(state.tensors),
        "tensors": len(state.tensors),
        "dtypes": dict(dtypes),
        "nonfinite": nonfinite_tensors(state.tensors),
        **(report.to_dict() if report else {"loads_strictly": False}),
    }
    if as_json:
        print_json(result)
    else:
        _render(result, spec_yaml(model_spec) if model_spec else None, report)
    if not result["loads_strictly"]:
        raise typer.Exit(DOES_NOT_LOAD)


def _render(result: dict, spec_text: str | None, report) -> None:
    from ecacli.checkpoints.infer import describe_nonfinite

    details = ", ".join(f"{k} {cut(str(v), 30)}" for k, v in result["details"].items() if k != "wrapper")
    lines = [
        f"file:        {result['file']} ({result['container']}, {fmt_bytes(result['size'])})",
        f"source:      {result['source_label']}" + (f" ({details})" if details else ""),
    ]
    lines += [f"note:        {note}" for note in result["notes"]]
    lines += [f"metadata:    {cut(key, 30)} = {cut(value)}" for key, value in result["metadata"].items()]
    dtypes = ", ".join(f"{name} x {count}" for name, count in sorted(result["dtypes"].items()))
    lines += [
        f"parameters:  {fmt_int(result['parameters'])}",
        f"tensors:     {result['tensors']} ({dtypes})",
    ]
    if result["nonfinite"]:
        lines.append(f"warning:     {describe_nonfinite(result['nonfinite'])}; load_model and convert refuse them without --allow-nonfinite")
    if spec_text is None:
        lines.append(f"spec:        none: {result['problem'] or result['spec_error']}")
    else:
        lines.append(f"spec:        {result['spec']['name']} ({result['spec_origin']})")
        lines += [f"  {line}" for line in spec_text.rstrip().splitlines()]
    if report is not None:
        converted = result["source"] != "ecacli" and result["notes"]
        verdict = "yes" if report.loads else "no"
        if report.loads and converted:
            verdict += ", after the conversion noted above (ecacli.load_model applies it; `ecacli convert` writes a file that needs none)"
        lines.append(f"loads strictly: {verdict}")
        if not report.loads:
            lines.append(report.describe())
    else:
        lines.append("loads strictly: no (no spec describes the file; give one with --spec)")
    typer.echo("\n".join(lines))

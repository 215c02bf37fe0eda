"""`ecacli inspect`: what a checkpoint holds, its spec, and whether it loads strictly into the built model; what a graph file (.onnx, .ts, .pt2) is.

Exit status: 0 when the weights load strictly into the spec (given, stored or inferred), 3 when
they do not (or no spec describes them), 2 when the file cannot be read at all; 0 for a graph
file that can be read.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Annotated

import typer

from ecacli.cli.common import JsonOption, SetOption, fmt_bytes, fmt_int, input_path, load_optional_spec_arg, print_json
from ecacli.errors import UserError, cut, printable

if TYPE_CHECKING:
    from ecacli.deploy import GraphDescription
    from ecacli.deploy.describe import TensorSignature

DOES_NOT_LOAD = 3
LABEL_WIDTH = 13
SCREEN_WIDTH = 80
NOTED_DETAILS = ("wrapper", "dropped")
"""Source details left off the source line: the notes say them (the training checkpoint's entry, a detector's dropped parts)."""


def inspect(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Checkpoint (.safetensors, .pt, .pth, .pth.tar) or graph (.onnx, .ts, .pt2).", show_default=False)],
    spec: Annotated[str | None, typer.Option("--spec", metavar="SPEC", help="Check against this spec, not the file's own or inferred one.", show_default=False)] = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what a checkpoint or graph file holds and whether it loads.

    A checkpoint (read without unpickling objects): its source, spec, parameter count, dtypes and
    whether the weights load strictly. Exit status 0: they do; 3: they do not (or no spec
    describes them); 2: unreadable. A graph file (.onnx, .ts, .pt2): its inputs and outputs, open
    axes, opset, operators, weights and stored spec.
    """
    path = input_path(file, "a checkpoint")
    given = load_optional_spec_arg(spec, overrides)
    from ecacli.checkpoints import as_read_by, check_against, nonfinite_tensors, open_checkpoint, parameter_count, spec_for, spec_yaml
    from ecacli.deploy import describe_graph, graph_format_of

    graph_format = graph_format_of(path)
    if graph_format is not None:
        if given is not None:
            raise UserError(f"--spec: {file} is a graph ({graph_format}), which carries its own spec; --spec checks a checkpoint's tensors against a spec.")
        description = describe_graph(path, graph_format)
        if as_json:
            print_json(description.to_dict())
        else:
            _render_graph(description, spec_yaml(description.spec) if description.spec else None)
        return

    checkpoint = open_checkpoint(path)
    state = checkpoint.state
    try:
        model_spec, origin = spec_for(checkpoint, given)
        spec_error = None
    except UserError as exc:
        model_spec, origin, spec_error = None, None, str(exc)
    if model_spec is not None:
        checkpoint = as_read_by(checkpoint, model_spec)
        state = checkpoint.state
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

    details = ", ".join(f"{k} {cut(str(v), 30)}" for k, v in result["details"].items() if k not in NOTED_DETAILS)
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
    typer.echo("\n".join(printable(line) for line in lines))


def _signature(tensor: TensorSignature) -> str:
    if tensor.shape is None:
        return f"{tensor.name}: {tensor.dtype}"
    open_axes = [str(dim) for dim in tensor.shape if isinstance(dim, str)]
    return f"{tensor.name}: {tensor.dtype} [{', '.join(map(str, tensor.shape))}]" + (f" (open: {', '.join(open_axes)})" if open_axes else "")


def _render_graph(graph: GraphDescription, spec_text: str | None) -> None:
    """One labelled line per fact; the operator histogram wrapped under its label at 80 columns, names never cut."""
    indent = " " * LABEL_WIDTH
    opset = f", opset {graph.opset}" if graph.opset is not None else ""
    lines = [
        f"{'file:':<{LABEL_WIDTH}}{graph.path} ({graph.format}, {fmt_bytes(graph.size)})",
        f"{'producer:':<{LABEL_WIDTH}}{graph.producer}{opset}",
    ]
    lines += [f"{'input:':<{LABEL_WIDTH}}{_signature(t)}" for t in graph.inputs]
    lines += [f"{'output:':<{LABEL_WIDTH}}{_signature(t)}" for t in graph.outputs]
    if graph.parameters is not None:
        lines.append(f"{'parameters:':<{LABEL_WIDTH}}{fmt_int(graph.parameters)} (the model's, as exported)")
    lines.append(f"{'weights:':<{LABEL_WIDTH}}{fmt_int(graph.weight_tensors)} tensors, {fmt_int(graph.weight_values)} values in the graph")
    lines += [f"{'metadata:':<{LABEL_WIDTH}}{cut(key, 30)} = {cut(value)}" for key, value in graph.metadata.items() if key != "parameters"]
    if graph.code_files:
        lines.append(f"{'code:':<{LABEL_WIDTH}}{fmt_int(len(graph.code_files))} files, read as text, not run (--json lists them)")
    items = [f"{fmt_int(sum(graph.ops.values()))} nodes:", *(f"{op} {count}," for op, count in graph.ops.items())]
    items[-1] = items[-1].rstrip(",")
    lines.append(f"{'ops:':<{LABEL_WIDTH}}{items[0]}")
    for item in items[1:]:
        if len(lines[-1]) + 1 + len(item) <= SCREEN_WIDTH:
            lines[-1] += f" {item}"
        else:
            lines.append(indent + item)
    if spec_text is None:
        lines.append(f"{'spec:':<{LABEL_WIDTH}}none" + (f": {graph.spec_error}" if graph.spec_error else " (not written by ecacli)"))
    else:
        lines.append(f"{'spec:':<{LABEL_WIDTH}}{graph.spec.name} (file metadata)")
        lines += [f"  {line}" for line in spec_text.rstrip().splitlines()]
    typer.echo("\n".join(printable(line) for line in lines))

"""`ecacli export --format onnx|torchscript|pt2`, `ecacli.export_model` and `ecacli inspect` of graph files.

The graphs are checked where they run (ONNX Runtime, torch.jit.load, torch.export.load) against
the eager model holding the same weights; every refusal exits 2 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import ecacli
from conftest import REPO, run_main
from ecacli.checkpoints import load_model, new_model
from ecacli.models import build_model
from ecacli.deploy import ExportError, ExportRequest, MissingExtraError, export_model
from ecacli.deploy import export as deploy_export
from ecacli.deploy.describe import describe_graph
from ecacli.deploy.formats import graph_format_of
from ecacli import extras
from ecacli.errors import OutOfMemory, UserError
from ecacli.spec import MobileNetV2Spec, ResNetSpec
from ecacli.spec_loader import spec_from_data

TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "bottleneck", "width": 8, "num_classes": 5, "input_size": 64}
PLAIN = {**TINY, "name": "tiny_plain", "attention": {"type": "none"}}
ONNX_INSTALL = extras.install_command("onnx")  # its exact text: tests/test_extras.py

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning"),
]


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def eager(spec: dict, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return new_model(ResNetSpec.model_validate(spec), seed).eval()(x)


def assert_matches(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_onnx_export_holds_the_spec_and_runs_any_batch_in_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    spec = ResNetSpec.model_validate(TINY)
    result = export_model(spec, path, seed=0)
    data = path.read_bytes()
    assert (result.format, result.size, result.sha256) == ("onnx", len(data), hashlib.sha256(data).hexdigest())
    assert result.parameters == sum(p.numel() for p in new_model(spec).parameters())
    assert result.input_shape == ["batch", 3, 64, 64]
    check = result.verification
    assert check.runtime.startswith("onnxruntime ") and check.input_shape == [1, 3, 64, 64]
    assert 0 <= check.max_abs_diff <= 1e-4 * check.max_abs_output
    proto = onnx.load(str(path))
    assert result.opset == next(entry.version for entry in proto.opset_import if entry.domain == "")
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert ResNetSpec.model_validate(yaml.safe_load(metadata["spec"])) == spec
    assert metadata["parameters"] == str(result.parameters) and metadata["dtype"] == "float32"
    nodes = [*proto.graph.node, *(node for function in proto.functions for node in function.node)]
    assert not [prop.value for node in nodes for prop in node.metadata_props if str(REPO) in prop.value or "stack_trace" in prop.key]  # the same bytes wherever ecacli is installed
    x = torch.randn(3, 3, 64, 64)
    assert_matches(run_onnx(path, x), eager(TINY, x))


def test_a_mobilenetv2_goes_to_onnx_with_its_family_in_the_spec(tmp_path):
    pytest.importorskip("onnxruntime")
    data = {"arch": "mobilenetv2", "name": "tiny_mbv2", "width_mult": 0.5, "num_classes": 5, "input_size": 64, "inverted_residual_setting": [[1, 16, 1, 1], [6, 24, 2, 2]], "last_channel": 64}
    spec = spec_from_data(data)
    path = tmp_path / "mbv2.onnx"
    result = export_model(spec, path, seed=0)
    assert result.verification.max_abs_diff <= 1e-4 * result.verification.max_abs_output
    graph = describe_graph(path, "onnx")
    assert isinstance(graph.spec, MobileNetV2Spec) and graph.spec == spec
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_matches(run_onnx(path, x), new_model(spec, seed=0).eval()(x))


def test_pt2_export_runs_in_torch_export_load_with_its_metadata(tmp_path):
    path = tmp_path / "tiny.pt2"
    result = export_model(ResNetSpec.model_validate(TINY), path, seed=0, batch=2, dynamic_batch=False)
    assert result.input_shape == [2, 3, 64, 64] and result.verification.runtime.startswith("torch.export.load")
    extra = {deploy_export.METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    assert json.loads(extra[deploy_export.METADATA_FILE])["parameters"] == str(result.parameters)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_matches(program.module()(x), eager(TINY, x))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".ts"])
@pytest.mark.parametrize(("num_classes", "output"), [(5, "logits"), (0, "features")], ids=["classifier", "headless"])
def test_every_graph_format_names_input_and_output_alike_and_stores_the_size_it_was_exported_at(tmp_path, suffix, num_classes, output):
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    path = tmp_path / f"tiny{suffix}"
    export_model(ResNetSpec.model_validate({**TINY, "num_classes": num_classes}), path, seed=0, input_size=48)
    described = describe_graph(path, graph_format_of(path))
    assert [t.name for t in described.inputs] == ["input"] and [t.name for t in described.outputs] == [output]
    assert described.spec.input_size == 48 and described.spec.num_classes == num_classes  # not the spec's 64


def test_torchscript_export_runs_in_torch_jit_load_at_any_shape(tmp_path):
    path = tmp_path / "tiny.ts"
    result = export_model(ResNetSpec.model_validate(TINY), path, seed=0)
    assert result.input_shape is None and result.verification.runtime.startswith("torch.jit.load") and result.torchscript == "scripted"
    extra = {deploy_export.METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), _extra_files=extra)
    assert yaml.safe_load(json.loads(extra[deploy_export.METADATA_FILE])["spec"])["name"] == "tiny"
    x = torch.randn(3, 3, 80, 80)
    with torch.no_grad():
        assert_matches(module(x), eager(TINY, x))


def test_an_opset_under_18_comes_from_the_torchscript_based_exporter(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "old.onnx"
    result = export_model(ResNetSpec.model_validate(TINY), path, opset=13, seed=0)
    assert result.opset == 13 == next(entry.version for entry in onnx.load(str(path)).opset_import if entry.domain == "")
    x = torch.randn(2, 3, 64, 64)
    assert_matches(run_onnx(path, x), eager(TINY, x))


def test_a_headless_model_exports_its_features_and_a_trunk_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    spec = ResNetSpec.model_validate({**PLAIN, "num_classes": 0})
    path = tmp_path / "headless.onnx"
    export_model(spec, path, seed=0)
    x = torch.randn(2, 3, 64, 64)
    expected = eager(spec.model_dump(), x)
    assert [(t.name, t.shape) for t in describe_graph(path, "onnx").outputs] == [("features", ["batch", expected.shape[1]])]
    with pytest.raises(ValueError, match=r"model: returns a list, not one tensor \(a features_only trunk\?\)"):
        export_model(build_model(spec, features_only=True), tmp_path / "trunk.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headless.onnx"]


def test_export_model_leaves_the_given_model_as_it_was(tmp_path):
    model = new_model(ResNetSpec.model_validate(PLAIN), seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, tmp_path / "m.pt2", dtype="bfloat16")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_graph_that_disagrees_with_eager_is_not_written(tmp_path, monkeypatch):
    def off_by_one(data, request, opset):
        return (lambda x: torch.export.load(io.BytesIO(data)).module()(x) + 1), "a broken runtime"

    monkeypatch.setitem(deploy_export.RUNTIMES, "pt2", off_by_one)
    path = tmp_path / "bad.pt2"
    with pytest.raises(ExportError, match=r"the pt2 graph disagrees with eager PyTorch: max abs difference 1 .* nothing was written"):
        export_model(ResNetSpec.model_validate(PLAIN), path)
    assert list(tmp_path.iterdir()) == []


def test_an_exporter_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("\x1b[96mno luck\x1b[0m\nsecond line")

    monkeypatch.setattr(torch.export, "export", broken)
    path = tmp_path / "m.pt2"
    with pytest.raises(ExportError) as failure:
        export_model(ResNetSpec.model_validate(PLAIN), path)
    assert str(failure.value) == "torch.export.export failed: RuntimeError: no luck"
    assert not path.exists()


def test_running_out_of_memory_says_what_to_lower_and_leaves_nothing(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes.")

    monkeypatch.setattr(deploy_export, "check_runs", no_memory)
    path = tmp_path / "m.pt2"
    with pytest.raises(OutOfMemory) as failure:
        export_model(ResNetSpec.model_validate(PLAIN), path, batch=4)
    assert str(failure.value) == f"{path}: out of memory exporting 'tiny_plain' at input [4, 3, 64, 64]; lower --batch or --input-size. Nothing was written."
    assert failure.value.exit_code == 1 and list(tmp_path.iterdir()) == []


def test_an_opset_too_old_for_the_model_is_refused_quietly(tmp_path, capfd):
    pytest.importorskip("onnx")
    spec = ResNetSpec.model_validate({**TINY, "name": "tiny_cbam", "attention": {"type": "cbam"}})
    with pytest.raises(UserError, match=r"^--opset 7: the TorchScript-based exporter cannot write 'tiny_cbam' at this opset \(.*\)\. Choose a newer opset"):
        export_model(spec, tmp_path / "old.onnx", opset=7, verify=False)
    assert capfd.readouterr().out == ""  # the exporter's native graph dump does not reach stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("m.safetensors", {"opset": 18}, "--opset: shape a graph export (onnx, torchscript, pt2); {path} is a safetensors file, which holds weights only."),
        ("m.pt", {"batch": 2, "dynamic_batch": False}, "--batch, --dynamic-batch/--static-batch: shape a graph export"),
        ("m.pt2", {"opset": 18}, "--opset 18: an ONNX opset; {path} is a pt2 file. Drop --opset or write .onnx."),
        ("m.ts", {"dynamic_batch": False}, "--static-batch: {path} is a TorchScript file"),
        ("m.onnx", {"format": "torchscript"}, "{path}: the name says onnx but --format is torchscript; use a name ending in a suffix of torchscript (.ts, .torchscript)"),
        ("m.onnx", {"opset": 6}, "--opset must be between 7 and "),
        ("m.onnx", {"batch": 0}, "--batch must be an integer from 1 to 65,536, got 0."),
        ("m.onnx", {"batch": 2**64}, "--batch must be an integer from 1 to 65,536, got 18446744073709551616."),
        ("m.safetensors", {"verify": False}, "--verify/--no-verify: shape a graph export"),
        ("m.onnx", {"input_size": 4}, "--input-size must be between 8 and 2048 pixels, got 4."),
        ("m.onnx", {"dtype": "float64"}, "--dtype 'float64' is not supported; use one of float32, bfloat16, float16."),
        ("m.bin", {"format": "tflite"}, "--format 'tflite' is not supported; use one of safetensors, pt, onnx, torchscript, pt2."),
        ("missing/m.onnx", {}, "{path}: the folder {folder} does not exist."),
    ],
)
def test_requests_that_cannot_work_are_refused_before_any_work(tmp_path, name, options, message):
    path = tmp_path / name
    with pytest.raises(UserError) as refusal:
        ExportRequest.resolve(path, **options)
    assert message.format(path=path, folder=path.parent) in str(refusal.value)


def test_an_existing_file_is_kept_without_force(tmp_path):
    path = tmp_path / "m.pt2"
    path.write_bytes(b"keep")
    with pytest.raises(UserError, match="already exists; use --force"):
        export_model(ResNetSpec.model_validate(PLAIN), path)
    assert path.read_bytes() == b"keep"
    export_model(ResNetSpec.model_validate(PLAIN), path, force=True, verify=False)
    assert graph_format_of(path) == "pt2"


def test_onnx_without_the_extra_names_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setattr(extras, "installed", lambda name, real=extras.installed: name != "onnxruntime" and real(name))
    with pytest.raises(MissingExtraError) as refusal:
        ExportRequest.resolve(tmp_path / "m.onnx")
    assert str(refusal.value) == f"--format onnx needs onnxruntime, not installed here. Install them with: {ONNX_INSTALL}"
    assert ExportRequest.resolve(tmp_path / "m.onnx", verify=False).format == "onnx"  # writing unchecked needs no runtime


def test_export_model_is_exported_lazily():
    assert ecacli.export_model is export_model


def test_describe_onnx_counts_nodes_inputs_weights_and_reads_the_spec(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    result = export_model(ResNetSpec.model_validate(TINY), path, seed=0)
    graph = describe_graph(path, graph_format_of(path))
    proto = onnx.load(str(path))
    assert sum(graph.ops.values()) == len(proto.graph.node) and graph.ops["Conv"] >= 1
    assert list(graph.ops.values()) == sorted(graph.ops.values(), reverse=True)
    assert [(t.name, t.dtype, t.shape) for t in graph.inputs] == [("input", "float32", ["batch", 3, 64, 64])]
    assert [(t.name, t.shape) for t in graph.outputs] == [("logits", ["batch", 5])]
    assert graph.weight_tensors == len(proto.graph.initializer)
    assert (graph.parameters, graph.opset, graph.spec) == (result.parameters, result.opset, ResNetSpec.model_validate(TINY))


def test_graph_formats_are_told_by_suffix_or_archive_layout(tmp_path):
    export_model(ResNetSpec.model_validate(PLAIN), tmp_path / "program.pt", format="pt2", verify=False)
    export_model(ResNetSpec.model_validate(PLAIN), tmp_path / "weights.pt")
    assert graph_format_of(tmp_path / "program.pt") == "pt2"
    assert graph_format_of(tmp_path / "weights.pt") is None
    assert graph_format_of(tmp_path / "any.onnx") == "onnx"


class AddOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Loud(torch.nn.Module):
    """Prints when loaded: TorchScript's loader runs its `__setstate__`."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return self.scale, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("loaded")
        self.scale = state[0]
        self.training = state[1]


def torchscript_file(path: Path, metadata: str, module: torch.nn.Module | None = None) -> Path:
    """`module` (AddOne) scripted to `path` with `metadata` as ecacli's archive entry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module or AddOne()), str(path), _extra_files={deploy_export.METADATA_FILE: metadata})
    return path


def pt2_file(path: Path, metadata: str | None, dynamic: bool = False) -> Path:
    """AddOne exported for inputs [2, 3] (axis 0 open when `dynamic`) to `path`, with `metadata` as ecacli's archive entry if given."""
    shapes = ({0: torch.export.Dim("n")},) if dynamic else None
    program = torch.export.export(AddOne(), (torch.ones(2, 3),), dynamic_shapes=shapes)
    torch.export.save(program, path, extra_files={deploy_export.METADATA_FILE: metadata} if metadata is not None else None)
    return path


@pytest.mark.parametrize(("save", "suffix"), [(torchscript_file, ".ts"), (pt2_file, ".pt2")])
@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ("[1, 2]", "holds [1, 2], not a JSON object"),
        ("{not json", "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ('{"spec": "name: x", "parameters": 5}', "holds 5 at 'parameters', not text"),
    ],
)
def test_graph_metadata_that_is_no_json_object_of_text_is_refused_naming_the_file(tmp_path, save, suffix, metadata, problem):
    path = save(tmp_path / f"m{suffix}", metadata)
    code, out, err = run_main("inspect", str(path), "--json")
    assert (code, out) == (2, "")
    assert err == f"error: {path}: the archive entry 'extra/ecacli/metadata.json' {problem}; ecacli writes a JSON object of text values there (spec, versions, parameter count, dtype).\n"


def test_a_zip_whose_directory_is_corrupt_is_no_graph_and_is_refused_as_a_checkpoint(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 100)
    data = bytearray(buffer.getvalue())
    directory = data.rindex(b"PK\x01\x02")
    data[directory : directory + 4] = b"XXXX"  # the end record, intact, still points here
    path = tmp_path / "broken.pt"
    path.write_bytes(data)
    assert zipfile.is_zipfile(path) and graph_format_of(path) is None
    code, out, err = run_main("inspect", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {path}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): ") and err.count("\n") == 1


def test_a_torchscript_module_without_forward_is_refused_in_one_line(tmp_path):
    class NoForward(torch.nn.Module):
        @torch.jit.export
        def go(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = torchscript_file(tmp_path / "go.ts", "", NoForward())
    assert run_main("inspect", str(path)) == (2, "", f"error: {path}: the TorchScript module has no forward method, so it has no inputs or outputs to describe.\n")


def test_an_onnx_element_type_without_a_name_and_a_parameter_count_that_is_no_number_are_shown_as_they_are(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    value = helper.make_tensor_value_info("x", 99, ["n", 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [helper.make_tensor_value_info("y", 99, ["n", 3])]))
    model.metadata_props.add(key="parameters", value="\u00b2")  # a digit to str.isdigit, not to int()
    onnx.save(model, tmp_path / "odd.onnx")
    graph = describe_graph(tmp_path / "odd.onnx", "onnx")
    assert [(t.dtype, t.shape) for t in graph.inputs] == [("element type 99", ["n", 3])] and graph.parameters is None
    code, out, _ = run_main("inspect", str(tmp_path / "odd.onnx"))
    assert code == 0 and "input:       x: element type 99 [n, 3] (open: n)\n" in out and "parameters:" not in out


def test_a_pt2_batch_axis_is_named_as_ecacli_exported_it_and_other_open_axes_keep_torchs_symbol(tmp_path):
    ours = describe_graph(pt2_file(tmp_path / "ours.pt2", json.dumps({"ecacli_version": ecacli.__version__}), dynamic=True), "pt2")
    assert [t.shape for t in ours.inputs + ours.outputs] == [["batch", 3], ["batch", 3]]
    foreign = describe_graph(pt2_file(tmp_path / "foreign.pt2", None, dynamic=True), "pt2")
    symbol = foreign.inputs[0].shape[0]
    assert re.fullmatch(r"s\d+", symbol) and [t.shape for t in foreign.inputs + foreign.outputs] == [[symbol, 3], [symbol, 3]]


# The installed command.


def test_cli_exports_a_checkpoint_to_onnx_verifies_and_inspects_it(cli, tmp_path, tiny_yaml):
    pytest.importorskip("onnxruntime")
    weights, graph = tmp_path / "tiny.safetensors", tmp_path / "tiny.onnx"
    assert cli("export", str(tiny_yaml), "-o", str(weights), "--seed", "3").returncode == 0
    result = cli("export", str(weights), "-o", str(graph), "--batch", "2")
    assert result.returncode == 0, result.stderr
    data = graph.read_bytes()
    assert f"wrote {graph} (onnx, spec tiny)" in result.stdout
    assert f"({len(data):,} bytes)" in result.stdout and hashlib.sha256(data).hexdigest() in result.stdout
    assert "  input:       [batch, 3, 64, 64] (dynamic batch)" in result.stdout
    assert "  verified:    onnxruntime " in result.stdout and ", input [2, 3, 64, 64]" in result.stdout
    assert "  max |diff|:  " in result.stdout
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert_matches(run_onnx(graph, x), load_model(weights)(x))

    shown = cli("inspect", str(graph))
    assert shown.returncode == 0, shown.stderr
    assert "input:       input: float32 [batch, 3, 64, 64] (open: batch)" in shown.stdout
    assert "output:      logits: float32 [batch, 5] (open: batch)" in shown.stdout
    assert "spec:        tiny (file metadata)" in shown.stdout and "metadata:    source = tiny.safetensors" in shown.stdout
    assert all(len(line) <= 80 for line in shown.stdout.splitlines() if not line.startswith("file:"))
    described = json.loads(cli("inspect", str(graph), "--json").stdout)
    assert described["parameters"] == sum(p.numel() for p in load_model(weights).parameters())
    assert described["spec"]["name"] == "tiny" and described["nodes"] == sum(described["ops"].values())

    again = cli("export", str(weights), "-o", str(graph))
    assert again.returncode == 2 and again.stderr == f"error: {graph}: already exists; use --force to overwrite it.\n"
    assert graph.read_bytes() == data


@pytest.mark.parametrize("suffix", [".pt2", ".ts"])
def test_cli_exports_torch_graphs_and_reports_the_check_as_json(cli, tmp_path, tiny_yaml, suffix):
    path = tmp_path / f"tiny{suffix}"
    result = cli("export", str(tiny_yaml), "-o", str(path), "--seed", "0", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == {".pt2": "pt2", ".ts": "torchscript"}[suffix] and report["size"] == path.stat().st_size
    assert report["verification"]["max_abs_diff"] <= 1e-4 * report["verification"]["max_abs_output"]
    shown = cli("inspect", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    described = json.loads(shown.stdout)
    assert described["parameters"] == report["parameters"]
    assert described["inputs"][0]["shape"] == {".pt2": ["batch", 3, 64, 64], ".ts": None}[suffix]  # as export printed it


def test_cli_no_verify_says_so(cli, tmp_path, tiny_yaml):
    path = tmp_path / "tiny.pt2"
    result = cli("export", str(tiny_yaml), "-o", str(path), "--no-verify", "--static-batch", "--batch", "3")
    assert result.returncode == 0, result.stderr
    assert "  input:       [3, 3, 64, 64]\n  verified:    no (--no-verify)\n" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "{tmp}/m.safetensors", "--input-size", "96"], "error: --input-size: shape a graph export (onnx, torchscript, pt2); {tmp}/m.safetensors is a safetensors file"),
        (["-o", "{tmp}/missing/m.onnx"], "error: {tmp}/missing/m.onnx: the folder {tmp}/missing does not exist.\n"),
        (["-o", "{tmp}/m.pt2", "--opset", "17"], "error: --opset 17: an ONNX opset; {tmp}/m.pt2 is a pt2 file. Drop --opset or write .onnx.\n"),
        (["-o", "{tmp}/m.onnx", "--input-size", "4"], "error: --input-size must be between 8 and 2048 pixels, got 4.\n"),
    ],
)
def test_cli_refusals_exit_2_and_write_nothing(cli, tmp_path, tiny_yaml, args, message):
    result = cli("export", str(tiny_yaml), *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith(message.format(tmp=tmp_path)) and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{tmp}/m.onnx", "-o", "{tmp}/x.ts"], "error: {tmp}/m.onnx: names a graph file (onnx), which runs in its runtime; this command reads a spec (YAML file or preset) or a checkpoint."),
        (["export", "r18", "--from", "{tmp}/m.pt2", "-o", "{tmp}/x.ts"], "error: {tmp}/m.pt2: names a graph file (pt2), which runs in its runtime; this command reads a checkpoint (.safetensors"),
        (["convert", "{tmp}/m.ts", "-o", "{tmp}/x.safetensors"], "error: {tmp}/m.ts: names a graph file (torchscript), which runs in its runtime; this command reads a checkpoint"),
        (["export", "{tmp}/missing.safetensors", "-o", "{tmp}/x.onnx"], "error: {tmp}/missing.safetensors: no such file; give a checkpoint that exists, or a spec (YAML file or preset).\n"),
    ],
)
def test_a_graph_or_a_missing_checkpoint_where_a_spec_or_checkpoint_is_read_is_refused(tmp_path, argv, message):
    for name in ("m.onnx", "m.pt2", "m.ts"):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not read")
    code, out, err = run_main(*[a.format(tmp=tmp_path) for a in argv])
    assert (code, out) == (2, "") and err.startswith(message.format(tmp=tmp_path)) and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2", "m.ts"]


def test_cli_onnx_without_the_extra_gives_the_install_line(cli, tmp_path, tiny_yaml, monkeypatch):
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path / "hide"), os.environ.get("PYTHONPATH")])))
    result = cli("export", str(tiny_yaml), "-o", str(tmp_path / "m.onnx"))
    assert (result.returncode, result.stderr) == (2, f"error: --format onnx needs onnxruntime, not installed here. Install them with: {ONNX_INSTALL}\n")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_a_dtype_onnxruntime_cannot_run_is_refused_and_nothing_written(cli, tmp_path, tiny_yaml):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    result = cli("export", str(tiny_yaml), "-o", str(path), "--dtype", "bfloat16", "--set", "attention.type=none")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: onnxruntime ") and "(CPU) cannot run the exported graph (opset " in result.stderr
    assert result.stderr.endswith("or skip this check with --no-verify to run the file elsewhere; nothing was written.\n")
    assert not path.exists()


def test_cli_what_a_torchscript_archive_prints_when_loaded_stays_off_stdout(cli, tmp_path, capfd):
    path = torchscript_file(tmp_path / "loud.ts", json.dumps({"dtype": "float32"}), Loud())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))
    assert capfd.readouterr().out == "loaded\n"  # the archive's code runs when it is loaded
    shown = cli("inspect", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metadata"] == {"dtype": "float32"}

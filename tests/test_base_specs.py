"""Base specs (`base: torchvision:NAME` / `timm:NAME`): the schema, the builder, the commands on them, loading the base's own weights, and the one family registry."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import run_main
from ecacli import build_model, load_spec
from ecacli.errors import SpecError, UserError
from ecacli.spec import BaseSpec, family_of, infer
from ecacli.spec_loader import spec_from_data

torchvision = pytest.importorskip("torchvision")

R18_ECA = {"name": "tv_r18_eca", "base": "torchvision:resnet18", "input_size": 32, "attention": {"type": "eca", "after": "layer*.*.bn2"}}


def write_spec(tmp_path, data: dict, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# --- the schema ------------------------------------------------------------------------------------


def test_a_base_spec_round_trips_and_describes_itself():
    spec = spec_from_data({**R18_ECA, "base_args": {"num_classes": 10}})
    assert isinstance(spec, BaseSpec) and spec.family is None and spec.attaches
    assert (spec.library, spec.model_name, spec.builder_kwargs()) == ("torchvision", "resnet18", {"num_classes": 10})
    assert spec.layout_text() == "torchvision:resnet18(num_classes=10), eca after 'layer*.*.bn2'"
    assert spec_from_data(spec.to_yaml_dict()) == spec
    assert spec_from_data({"name": "plain", "base": "timm:resnet18"}).attention.type == "none"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"attention": {"type": "eca"}}, "a base spec places its attention: give attention.after"),
        ({"attention": {"after": "x", "replace": "se"}}, "give attention.after or attention.replace, not both"),
        ({"attention": {"replace": "all"}}, "attention.replace"),
        ({"base": "torchvision"}, "must be torchvision:NAME or timm:NAME"),
        ({"base": "os:system"}, "must be torchvision:NAME or timm:NAME"),
        ({"base": "timm:torch.nn:Module"}, "must be torchvision:NAME or timm:NAME"),
        ({"base_args": {"weights": "IMAGENET1K_V1"}}, "weights is not a base_args key: a base is built freshly initialised"),
        ({"base_args": {"pretrained": True}}, "pretrained is not a base_args key"),
        ({"base_args": {"num_classes": 10}, "num_classes": 10}, "num_classes is given twice"),
        ({"in_chans": 1}, "in_chans applies to timm bases only"),
        ({"norm": "group"}, "norm applies to ecacli's own families"),
        ({"frozen_stages": 1}, "frozen_stages applies to ecacli's own families"),
        ({"base_args": {"bad key": 1}}, "base_args"),
    ],
)
def test_base_spec_mistakes_are_one_clear_message(data, message):
    with pytest.raises(SpecError) as caught:
        spec_from_data({**R18_ECA, **data}, label="spec.yaml")
    assert message in str(caught.value) and "spec.yaml" in str(caught.value)


def test_after_and_replace_belong_to_base_specs_only():
    with pytest.raises(SpecError, match=r"an ecacli family \(resnet\) puts it in every block itself"):
        spec_from_data({"name": "x", "depth": 18, "attention": {"type": "eca", "after": "layer*.*.bn2"}})


def test_a_name_the_registry_does_not_hold_is_refused_and_nothing_is_imported():
    for base, message in (("timm:os.path", "is not a model timm registers"), ("torchvision:resnet5", "Did you mean 'resnet50'?")):
        with pytest.raises(SpecError, match=message):
            build_model(spec_from_data({**R18_ECA, "base": base}))


def test_a_missing_library_names_its_extra(monkeypatch):
    import ecacli.models.base as base

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(base, "import_module", missing)
    with pytest.raises(UserError, match=r'needs timm, which is not installed; install it with: pip install "timm>=1.0"$'):
        build_model(spec_from_data({**R18_ECA, "base": "timm:resnet18"}))


def test_unknown_builder_keywords_and_bad_globs_name_the_spec():
    with pytest.raises(SpecError, match=r"tv_r18_eca': torchvision:resnet18 cannot be built with base_args \{'depth': 3\}"):
        build_model(spec_from_data({**R18_ECA, "base_args": {"depth": 3}}))
    with pytest.raises(SpecError, match=r"attention on torchvision:resnet18: after='layer\*.bn9' matches no module"):
        build_model(spec_from_data({**R18_ECA, "attention": {"after": "layer*.bn9"}}))


# --- the built model -------------------------------------------------------------------------------


def test_the_built_model_is_the_base_with_attention_attached_and_carries_its_spec():
    spec = spec_from_data({**R18_ECA, "base_args": {"num_classes": 10}})
    model = build_model(spec)
    assert model.spec is spec and model.fc.out_features == 10
    plain = sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert sum(p.numel() for p in model.parameters()) == plain + 2 * 3 + 6 * 5  # k = 3 at 64 channels, 5 at 128 to 512


def test_parameters_are_the_base_plus_each_insertion_points_kernel():
    from ecacli.models.base import base_insertion_points

    spec = spec_from_data(R18_ECA)
    points = base_insertion_points(spec)
    assert [(p.name, p.attention, p.channels, p.k) for p in points[:3]] == [
        ("layer1.0.bn2", "layer1.0.eca", 64, 3), ("layer1.1.bn2", "layer1.1.eca", 64, 3), ("layer2.0.bn2", "layer2.0.eca", 128, 5)
    ]
    plain = sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert sum(p.numel() for p in build_model(spec).parameters()) == plain + sum(p.k for p in points)


# --- the commands ----------------------------------------------------------------------------------


def test_summary_numbers_are_torchinfos_on_the_built_model(tmp_path):
    import torchinfo

    path = write_spec(tmp_path, R18_ECA)
    code, out, err = run_main("summary", str(path), "--json", "--depth", "2")
    assert code == 0, err
    report = json.loads(out)
    model = build_model(load_spec(path)).eval()
    stats = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0, device="cpu")
    assert (report["total_params"], report["mult_adds"]) == (stats.total_params, stats.total_mult_adds)
    assert report["attention_params"] == 36 and report["eca_kernel_sizes"] == [3, 3, 5, 5, 5, 5, 5, 5]
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["layer1.0"]["eca_k"] == [3] and rows["layer1"]["params"] == sum(p.numel() for p in model.layer1.parameters())
    assert sum(row["mult_adds"] for row in report["layers"] if row["depth"] == 1) == report["mult_adds"]


@pytest.mark.slow
def test_torchvision_resnet50_base_summarises_as_ecacli_r50():
    from ecacli.reports.summary import summarize

    base = summarize(spec_from_data({"name": "tv", "base": "torchvision:resnet50", "attention": {"type": "eca", "after": "layer*.*.bn3"}}), depth=2)
    own = summarize(load_spec("r50"), depth=2)
    assert (base.total_params, base.mult_adds, base.activation_bytes, base.attention_params) == (own.total_params, own.mult_adds, own.activation_bytes, own.attention_params)
    assert [(r.name, r.params, r.mult_adds, r.output_shape) for r in base.layers] == [(r.name, r.params, r.mult_adds, r.output_shape) for r in own.layers]


def test_ksize_spec_lists_every_insertion_point(tmp_path):
    code, out, err = run_main("ksize", "--spec", str(write_spec(tmp_path, R18_ECA)), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 8 and rows[-1] == {"module": "layer4.1.bn2", "attention": "layer4.1.eca", "channels": 512, "k": 5}


def test_compare_the_same_base_with_eca_se_and_none(tmp_path):
    paths = [write_spec(tmp_path, {**R18_ECA, "name": f"r18_{kind}", "attention": {"type": kind, "after": "layer*.*.bn2"}}, f"{kind}.yaml") for kind in ("none", "eca", "se")]
    code, out, err = run_main("compare", *map(str, paths), "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["r18_none"]["total_params"] == sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert rows["r18_eca"]["delta_params"] == rows["r18_eca"]["attention_params"] == 36
    assert rows["r18_se"]["delta_params"] == rows["r18_se"]["attention_params"] > 36


def test_profile_baseline_of_a_base_spec_is_the_base_itself():
    from ecacli.profiling.runner import without_attention

    spec = spec_from_data({**R18_ECA, "base_args": {"num_classes": 10}})
    baseline = without_attention(spec)
    assert baseline.attention.type == "none" and baseline.builder_kwargs() == {"num_classes": 10}
    assert sum(p.numel() for p in build_model(baseline).parameters()) == sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())


@pytest.mark.slow
def test_export_from_the_bases_own_weights_initialises_and_reports_the_attention(tmp_path):
    from safetensors.torch import load_file

    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    path = write_spec(tmp_path, R18_ECA)
    code, out, err = run_main("export", str(path), "--from", str(tmp_path / "resnet18.pth"), "-o", str(tmp_path / "out.safetensors"))
    assert code == 0, err
    assert "the source has no ECA kernels: initialised all 8 of them; everything else was copied" in out + err
    written = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(written[key], value) for key, value in source.state_dict().items())
    assert sorted(key for key in written if key not in source.state_dict()) == sorted(f"layer{s}.{b}.eca.conv.weight" for s in range(1, 5) for b in range(2))


def test_the_replaced_se_modules_weights_are_left_unused_and_reported(tmp_path):
    from ecacli.checkpoints.infer import check_against

    spec = load_spec("tv_efficientnet_b0_eca")
    tensors = torchvision.models.efficientnet_b0().state_dict()
    report = check_against(spec, tensors)
    assert report.only_attention_missing and len(report.missing) == 16 and not report.unexpected
    assert len(report.replaced) == 64 and all(".fc1." in key or ".fc2." in key for key in report.replaced)


@pytest.mark.slow
def test_a_timm_eca_file_keeps_its_own_names_for_a_timm_base(tmp_path):
    timm = pytest.importorskip("timm")
    source = timm.create_model("resnet18", block_args=dict(attn_layer="eca"), num_classes=10).state_dict()
    torch.save(source, tmp_path / "eca18.pth")
    path = write_spec(tmp_path, {"name": "se18_eca", "base": "timm:seresnet18", "num_classes": 10, "attention": {"type": "eca", "replace": "se"}})
    code, out, err = run_main("inspect", str(tmp_path / "eca18.pth"), "--spec", str(path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["source_label"] == "timm ResNet with ECA attention" and report["loads_strictly"] is True
    from ecacli.checkpoints import load_model

    model = load_model(tmp_path / "eca18.pth", path)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in source.items())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_a_base_spec_as_onnx_pt2_and_torchscript_traced_where_it_cannot_be_scripted(tmp_path):
    from ecacli.deploy import export_model

    path = write_spec(tmp_path, R18_ECA)
    for suffix in ("onnx", "pt2"):
        code, out, err = run_main("export", str(path), "-o", str(tmp_path / f"m.{suffix}"))
        assert code == 0, err
    model = build_model(load_spec(path)).eval()
    with pytest.raises(UserError, match="TorchScript cannot script a GatedBatchNorm2d"):
        torch.jit.script(model)
    exported = export_model(model, tmp_path / "m.ts")
    assert (exported.torchscript, exported.input_shape) == ("traced", ["batch", 3, 32, 32])
    traced = torch.jit.load(str(tmp_path / "m.ts"))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
    code, out, err = run_main("inspect", str(tmp_path / "m.ts"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["spec"]["name"] == "tv_r18_eca" and report["parameters"] == exported.parameters
    code, out, err = run_main("export", str(path), "-o", str(tmp_path / "cli.ts"), "--json")
    assert code == 0 and json.loads(out)["torchscript"] == "traced"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_trace_that_does_not_compute_what_the_model_computes_is_refused(tmp_path):
    from ecacli.deploy.export import ExportRequest, check_trace

    class BatchDependent(torch.nn.Module):
        spec = spec_from_data(R18_ECA)

        def forward(self, x):
            return x * 2 if x.shape[0] == 1 else x

    model, example = BatchDependent(), torch.randn(1, 3, 8, 8)
    with pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(model, example, check_trace=False)
    request = ExportRequest.resolve(tmp_path / "m.ts")
    with pytest.raises(UserError, match=r"m.ts: 'tv_r18_eca' cannot be scripted, and its torch.jit.trace does not compute what the model computes on a second batch \(.*\); export as onnx or pt2"):
        check_trace(model, traced, example, request)


@pytest.mark.slow
def test_the_installed_cli_summarises_the_base_preset(cli):
    result = cli("summary", "tv_efficientnet_b0_eca", "--json", "--depth", "0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total_params"] == 4_652_084 and report["attention_params"] == 76


def test_a_video_base_takes_its_sample_shape_and_gets_eca_in_3d(tmp_path):
    import torchinfo

    data = {"name": "r3d", "base": "torchvision:r3d_18", "sample_shape": [3, 4, 16, 16], "attention": {"type": "eca", "after": "layer*.*.conv2.1"}}
    path = write_spec(tmp_path, data)
    code, out, err = run_main("ksize", "--spec", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)[0] == {"module": "layer1.0.conv2.1", "attention": "layer1.0.conv2.eca", "channels": 64, "k": 3}
    code, out, err = run_main("summary", str(path), "--json", "--depth", "0")
    report = json.loads(out)
    assert report["input_size"] == [1, 3, 4, 16, 16] and report["attention_params"] == 36
    with torch.device("meta"):
        model = build_model(load_spec(path))
        stats = torchinfo.summary(model, input_data=[torch.empty(1, 3, 4, 16, 16)], device="meta", verbose=0)
    assert (report["total_params"], report["mult_adds"]) == (stats.total_params, stats.total_mult_adds)
    assert spec_from_data(data).input_shape(2, 8) == [2, 3, 4, 8, 8]
    with pytest.raises(SpecError, match="sample_shape gives the whole input shape; drop input_size"):
        spec_from_data({**data, "input_size": 64})


# --- bounds: a stored spec is refused before anything is allocated -----------------------------------

HUGE_HEAD = {"name": "huge_head", "base": "torchvision:resnet18", "base_args": {"num_classes": 1_000_000_000}}


def test_a_base_past_the_weight_bound_is_refused_naming_the_spec_its_base_args_and_the_limit(tmp_path):
    message = "spec 'huge_head': base: torchvision:resnet18 with base_args {'num_classes': 1000000000} would hold 5.13e+11 weights (parameters and buffers), more than the 4e+09 a spec may build"
    with pytest.raises(SpecError) as caught:
        build_model(spec_from_data(HUGE_HEAD))
    assert message in str(caught.value)
    path = write_spec(tmp_path, HUGE_HEAD)
    for argv in (("summary", str(path)), ("export", str(path), "-o", str(tmp_path / "m.onnx"))):
        code, out, err = run_main(*argv)
        assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [path]


def test_a_checkpoints_stored_base_spec_past_the_bound_is_refused_before_it_is_built(tmp_path):
    from ecacli.checkpoints import save_checkpoint

    path = tmp_path / "downloaded.safetensors"
    save_checkpoint(torchvision.models.resnet18().state_dict(), spec_from_data(HUGE_HEAD), path, "safetensors", None, False, None)
    for argv in (("inspect", str(path)), ("export", str(path), "-o", str(tmp_path / "m.pt2"))):
        code, out, err = run_main(*argv)
        assert code == 2 and "spec 'huge_head': base: torchvision:resnet18 with base_args {'num_classes': 1000000000} would hold 5.13e+11 weights" in err
    assert list(tmp_path.iterdir()) == [path]


def test_a_base_past_the_module_bound_is_refused_while_it_is_built(monkeypatch):
    import ecacli.models.base as base

    monkeypatch.setattr(base, "MAX_BASE_MODULES", 40)
    with pytest.raises(SpecError, match=r"spec 'deep': base: timm:resnet18 with base_args \{'layers': \[2, 2, 2, 2\]\} would hold more than the 40 modules a spec may build"):
        build_model(spec_from_data({"name": "deep", "base": "timm:resnet18", "base_args": {"layers": [2, 2, 2, 2]}}))


def test_a_builder_that_cannot_run_on_meta_is_bounded_as_it_allocates():
    with torch.device("meta"), pytest.raises(SpecError, match="Cannot copy out of meta tensor"):
        build_model(spec_from_data({"name": "regnet", "base": "torchvision:regnet_x_400mf"}))
    model = build_model(spec_from_data({"name": "regnet", "base": "torchvision:regnet_x_400mf", "base_args": {"num_classes": 10}}))
    assert sum(p.numel() for p in model.parameters()) == 5_495_976 - 401 * 1000 + 401 * 10  # torchvision: 5,495,976 with a 400 -> 1000 head
    with pytest.raises(SpecError, match=r"spec 'regnet': base: torchvision:regnet_x_400mf with base_args \{'num_classes': 10000000000\} would hold more than the 4e\+09 weights a spec may build"):
        build_model(spec_from_data({"name": "regnet", "base": "torchvision:regnet_x_400mf", "base_args": {"num_classes": 10_000_000_000}}))


@pytest.mark.parametrize("base", ["torchvision:resnet152", "torchvision:efficientnet_b7", "torchvision:vit_h_14", "timm:resnet50", "timm:vit_giant_patch14_224"])
def test_the_largest_real_bases_are_within_the_bounds(base):
    with torch.device("meta"):
        assert build_model(spec_from_data({"name": "big", "base": base})) is not None


def test_a_torchvision_detector_is_built_without_fetching_its_backbones_weights(monkeypatch):
    def fetch(*args, **kwargs):
        raise AssertionError("a backbone's weights were fetched")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    with torch.device("meta"):
        model = build_model(spec_from_data({"name": "det", "base": "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "base_args": {"num_classes": 3}}))
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


def test_a_sample_shape_past_its_bound_is_refused_when_the_spec_is_read():
    with pytest.raises(SpecError, match=r"\[65, 2048, 2048\] holds more than 268,435,456 values per sample"):
        spec_from_data({"name": "big_input", "base": "torchvision:resnet18", "sample_shape": [65, 2048, 2048], "attention": {"type": "eca", "after": "layer*.*.bn2"}})


@pytest.mark.slow
def test_the_installed_cli_refuses_a_base_past_the_bounds_before_building_it(cli, tmp_path):
    path = write_spec(tmp_path, HUGE_HEAD)
    result = cli("export", str(path), "-o", str(tmp_path / "m.pt2"))
    assert result.returncode == 2, result.stderr
    assert "would hold 5.13e+11 weights (parameters and buffers), more than the 4e+09 a spec may build" in result.stderr
    assert list(tmp_path.iterdir()) == [path]


# --- one family registry ---------------------------------------------------------------------------


def test_each_family_claims_its_own_checkpoints_and_no_other():
    assert family_of(torchvision.models.resnet18().state_dict()) == "resnet"
    assert family_of(torchvision.models.mobilenet_v2().state_dict()) == "mobilenetv2"
    efficientnet = {key: tuple(t.shape) for key, t in torchvision.models.efficientnet_b0().state_dict().items()}
    assert family_of(efficientnet) is None
    with pytest.raises(ValueError, match=r"carry the names of none of ecacli's families \(resnet, mobilenetv2\); for another network write a base spec"):
        infer(efficientnet, "effnet")


def test_validate_says_what_only_a_build_checks():
    code, out, _ = run_main("validate", "tv_efficientnet_b0_eca", "--set", "base=torchvision:no_such_model")
    assert code == 0 and "note: base, base_args, attention.after are checked when the model is built" in " ".join(out.split())
    assert all(len(line) <= 80 for line in out.splitlines()[1:])
    code, out, _ = run_main("validate", "tv_efficientnet_b0_eca", "--json")
    assert code == 0 and json.loads(out)["checked_when_built"] == ["base", "base_args", "attention.after"]
    code, out, _ = run_main("validate", "r50", "--json")
    assert code == 0 and "checked_when_built" not in json.loads(out)

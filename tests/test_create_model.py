"""timm's model API: `create_model` and `list_models` over the presets, `pretrained=` from checkpoint files and from a local Hugging Face Hub cache, and the presets of timm's pretrained ECA-ResNets."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import ecacli
from conftest import REPO, fuzz_examples, randomise_batch_norms
from ecacli import create_model, list_models
from ecacli.checkpoints import CheckpointError, check_against, new_model, open_checkpoint
from ecacli.checkpoints.convert import classify
from ecacli.deploy import MissingExtraError
from ecacli.errors import OptionError, SpecError, UserError
from ecacli.factory import BUILD_OPTIONS, TIMM_FILE, TIMM_WEIGHTS
from ecacli.models import build_model
from ecacli.spec import ResNetSpec
from ecacli.spec_loader import load_spec, preset_names

DATA = Path(__file__).parent / "data"

TIMM_PRESETS = {
    # name: (layers, stem, parameters, default input side), as timm 1.0.31 builds them (REFERENCE.md)
    "ecaresnet26t": ([2, 2, 2, 2], "deep_tiered", 16_011_916, 256),
    "ecaresnet50d": ([3, 4, 6, 3], "deep", 25_576_350, 224),
    "ecaresnet50t": ([3, 4, 6, 3], "deep_tiered", 25_573_814, 256),
    "ecaresnet101d": ([3, 4, 23, 3], "deep", 44_568_563, 224),
    "ecaresnet269d": ([3, 30, 48, 8], "deep", 102_093_077, 320),
    "ecaresnetlight": ([1, 1, 11, 3], "imagenet", 30_162_046, 224),
}

TINY_50D = {"depth": None, "layers": [1, 1, 1, 1], "block": "bottleneck", "width": 8, "stem_width": 8, "num_classes": 5}
"""Overrides that make the ecaresnet50d preset the tiny timm model of tests/data/timm_tiny_ecaresnet.safetensors ('d.')."""


def tiny_timm_fixture() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The tiny timm ECA-ResNet-D's state_dict exactly as timm names it, an input and timm's eval-mode logits for it."""
    fixture = load_file(DATA / "timm_tiny_ecaresnet.safetensors")
    weights = {key[2:]: value for key, value in fixture.items() if key.startswith("d.") and key[2:] not in ("x", "logits")}
    return weights, fixture["d.x"], fixture["d.logits"]


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --- a Hugging Face Hub cache laid out locally ----------------------------------------------------


def write_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """One repository in huggingface_hub's cache layout: content-addressed blobs, a snapshot of links to them, refs/main naming the snapshot."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache, offline: HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE set for this test (and in huggingface_hub's constants, read at its import)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_timm_weights(cache: Path, preset: str, weights: dict[str, torch.Tensor]) -> None:
    path = cache.parent / "model.safetensors"
    save_file({key: t.contiguous() for key, t in weights.items()}, path)
    write_hub_cache(cache, TIMM_WEIGHTS[preset], {TIMM_FILE: path.read_bytes()})
    path.unlink()


def test_the_local_cache_is_one_huggingface_hub_reads(hub_cache):
    from huggingface_hub import scan_cache_dir

    weights, _, _ = tiny_timm_fixture()
    cache_timm_weights(hub_cache, "ecaresnet50d", weights)
    (repo,) = scan_cache_dir(hub_cache).repos
    assert repo.repo_id == "timm/ecaresnet50d.miil_in1k"
    assert [file.file_name for revision in repo.revisions for file in revision.files] == [TIMM_FILE]


def test_timm_weights_found_in_the_cache_are_converted_and_give_timms_logits(hub_cache):
    weights, x, logits = tiny_timm_fixture()
    cache_timm_weights(hub_cache, "ecaresnet50d", weights)
    model = create_model("ecaresnet50d", pretrained="timm", **TINY_50D)
    assert model.training  # as timm and torchvision return it
    assert model.layer1[0].eca.conv.weight.shape == (1, 1, 3)
    assert torch.allclose(outputs(model, x), logits, rtol=0, atol=1e-5)
    assert torch.equal(outputs(create_model("ecaresnet50d", pretrained=True, **TINY_50D), x), outputs(model, x))


def test_not_cached_while_offline_is_one_error_naming_the_cache_and_the_repository(hub_cache):
    with pytest.raises(OptionError) as refusal:
        create_model("ecaresnet26t", pretrained="timm")
    message = str(refusal.value)
    assert str(hub_cache) in message
    assert "timm/ecaresnet26t.ra2_in1k" in message and TIMM_FILE in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_online_with_the_hub_unreachable_is_one_error_naming_the_cache(hub_cache, monkeypatch):
    """Online, hf_hub_download is asked to download (no local_files_only); its 'not cached and no answer' error becomes the clear one."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked = []

    def unreachable(repo_id, filename, **options):
        asked.append((repo_id, filename, options))
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local cache.")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(OptionError, match=rf"not in the Hugging Face cache {re.escape(str(hub_cache))}, and the Hub could not be reached"):
        create_model("ecaresnet269d", pretrained="timm")
    assert asked == [("timm/ecaresnet269d.ra2_in1k", TIMM_FILE, {"local_files_only": False})]


def test_another_presets_weights_in_the_cache_are_not_taken(hub_cache):
    weights, _, _ = tiny_timm_fixture()
    cache_timm_weights(hub_cache, "ecaresnet50d", weights)
    with pytest.raises(OptionError, match="timm/ecaresnet50t.ra2_in1k"):
        create_model("ecaresnet50t", pretrained="timm", **TINY_50D)


def test_presets_without_timm_weights_say_which_have_them():
    with pytest.raises(OptionError, match="no weights for 'r50'.*ecaresnet26t, ecaresnet50d"):
        create_model("r50", pretrained="timm")


def test_without_huggingface_hub_the_hub_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingExtraError, match=r'huggingface_hub.*Install them with: pip install "huggingface_hub>=0.34"$'):
        create_model("ecaresnet50d", pretrained="timm")


@pytest.mark.slow
@pytest.mark.subprocess
def test_offline_user_environment_is_honoured(tmp_path):
    """HF_HOME and HF_HUB_OFFLINE as a user sets them, before huggingface_hub is imported."""
    pytest.importorskip("huggingface_hub")
    script = (
        "import ecacli\n"
        "from ecacli.errors import OptionError\n"
        "try:\n"
        "    ecacli.create_model('ecaresnet101d', pretrained='timm')\n"
        "except OptionError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "hf" / "hub") in result.stdout and "timm/ecaresnet101d.miil_in1k" in result.stdout


# --- pretrained files in every layout `convert` reads ---------------------------------------------


TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "bottleneck", "width": 8, "num_classes": 5}


def write_spec(path: Path, **changes) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def test_a_timm_layout_file_loads_into_the_preset(tmp_path):
    weights, x, logits = tiny_timm_fixture()
    torch.save(weights, tmp_path / "timm.pth")
    model = create_model("ecaresnet50d", pretrained=tmp_path / "timm.pth", **TINY_50D)
    assert torch.allclose(outputs(model, x), logits, rtol=0, atol=1e-5)


def test_a_release_training_checkpoint_loads_strictly(tmp_path):
    spec_path = write_spec(tmp_path / "tiny.yaml", attention={"k_size": [3, 5, 5, 7]})
    weights = new_model(load_spec(spec_path), seed=0).state_dict()
    torch.save({"epoch": 100, "arch": "eca_resnet50", "state_dict": {f"module.{k}": v for k, v in weights.items()}, "best_prec1": 77.48}, tmp_path / "release.pth.tar")
    model = create_model(str(spec_path), pretrained=str(tmp_path / "release.pth.tar"))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in weights.items())
    with pytest.raises(CheckpointError, match="shape differs"):
        create_model(spec_path, pretrained=tmp_path / "release.pth.tar", attention={"k_size": 3})


def test_a_torchvision_layout_file_loads_into_a_plain_spec_and_not_silently_into_eca(tmp_path):
    spec_path = write_spec(tmp_path / "plain.yaml", attention={"type": "none"})
    weights = new_model(load_spec(spec_path), seed=1).state_dict()
    torch.save(weights, tmp_path / "resnet.pth")
    assert open_checkpoint(tmp_path / "resnet.pth").state.source == "torchvision"
    model = create_model(spec_path, pretrained=tmp_path / "resnet.pth")
    assert all(torch.equal(model.state_dict()[key], value) for key, value in weights.items())
    with pytest.raises(CheckpointError, match="missing from the file"):
        create_model(spec_path, pretrained=tmp_path / "resnet.pth", attention={"type": "eca"})


def test_another_num_classes_keeps_the_trunk_and_gives_a_new_classifier(tmp_path):
    weights, x, _ = tiny_timm_fixture()
    torch.save({key: t.half() if t.is_floating_point() else t for key, t in weights.items()}, tmp_path / "half.pth")
    assert {p.dtype for p in create_model("ecaresnet50d", pretrained=tmp_path / "half.pth", **{**TINY_50D, "num_classes": 3}).parameters()} == {torch.float16}
    torch.save(weights, tmp_path / "timm.pth")
    model = create_model("ecaresnet50d", pretrained=tmp_path / "timm.pth", **{**TINY_50D, "num_classes": 3})
    state = model.state_dict()
    renamed = classify(weights, wrapped=False, prefixed=False, ecacli_file=False).tensors
    assert all(torch.equal(state[key], value) for key, value in renamed.items() if not key.startswith("fc."))
    assert state["fc.weight"].shape == (3, 256) and outputs(model, x).shape == (2, 3)
    assert model.spec == create_model("ecaresnet50d", **{**TINY_50D, "num_classes": 3}).spec
    headless = create_model("ecaresnet50d", pretrained=tmp_path / "timm.pth", **{**TINY_50D, "num_classes": 0})
    features = torch.nn.Sequential(*list(model.children())[:-1])
    assert torch.equal(outputs(headless, x), outputs(features, x).flatten(1))


def test_a_pretrained_feature_extractor_takes_the_trunk(tmp_path):
    weights, x, _ = tiny_timm_fixture()
    torch.save(weights, tmp_path / "timm.pth")
    full = create_model("ecaresnet50d", pretrained=tmp_path / "timm.pth", **TINY_50D)
    features = create_model("ecaresnet50d", pretrained=tmp_path / "timm.pth", features_only=True, out_indices=[2, 4], **TINY_50D)
    assert [f.shape[1] for f in outputs(features, x)] == [64, 256]
    assert torch.equal(features.state_dict()["layer2.0.conv1.weight"], full.state_dict()["layer2.0.conv1.weight"])


@pytest.mark.parametrize("pretrained", [3, "", [Path("a.pt")]])
def test_pretrained_that_names_no_weights_is_refused(pretrained):
    with pytest.raises(OptionError, match="pretrained must be a checkpoint file path"):
        create_model("r18", pretrained=pretrained)


def test_a_missing_pretrained_file_is_named(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="absent.pth: no such file"):
        create_model("r18", pretrained=tmp_path / "absent.pth")
    monkeypatch.chdir(tmp_path)
    for named_timm in (Path("timm"), "./timm"):  # a file, not timm's weights
        with pytest.raises(CheckpointError, match="timm: no such file"):
            create_model("r18", pretrained=named_timm)


# --- timm's numbers, in float64 -------------------------------------------------------------------


def random_timm_model(name: str, generator: torch.Generator) -> torch.nn.Module:
    """timm's model with random weights, random BN statistics and random ECA kernels, in float64, eval mode."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False)
    randomise_batch_norms(model, generator)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("se.conv.weight"):
                param.normal_(0, 1, generator=generator)
    return model.double().eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ecaresnet26t", "ecaresnet50d", "ecaresnetlight"])
def test_timm_model_converts_to_the_same_outputs_in_float64(tmp_path, hub_cache, name):
    """timm's state_dict, cached as its hub weights (26t) or given as a file (the others), loads strictly and computes timm's outputs."""
    generator = torch.Generator().manual_seed(0)
    reference = random_timm_model(name, generator)
    if name == "ecaresnet26t":
        cache_timm_weights(hub_cache, name, reference.state_dict())
        model = create_model(name, pretrained="timm")
    else:
        save_file({key: t.contiguous() for key, t in reference.state_dict().items()}, tmp_path / "timm.safetensors")
        model = create_model(name, pretrained=tmp_path / "timm.safetensors")
    assert next(model.parameters()).dtype == torch.float64
    x = torch.randn(2, 3, 128, 128, generator=generator, dtype=torch.float64)
    expected = outputs(reference, x)
    assert torch.allclose(outputs(model, x), expected, rtol=0, atol=1e-9 * expected.abs().max().item())


@pytest.mark.parametrize("name", list(TIMM_PRESETS))
def test_timm_presets_have_timms_layout_parameters_and_input_size(name):
    layers, stem, parameters, side = TIMM_PRESETS[name]
    spec = load_spec(name)
    assert (spec.stage_blocks, spec.stem, spec.downsample, spec.block_type, spec.input_size) == (layers, stem, "avg", "bottleneck", side)
    assert spec.stage_kernel_sizes == [5, 5, 5, 7]
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model(name).parameters()) == parameters
    assert name in TIMM_WEIGHTS


@pytest.mark.parametrize("name", list(TIMM_PRESETS))
def test_timms_state_dict_names_and_shapes_fit_the_preset_exactly(name):
    """timm's model (on the meta device): its names, once converted, and shapes are the preset's; its hub repository and default input size are the preset's."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    renamed = classify(reference.state_dict(), wrapped=False, prefixed=False, ecacli_file=False)
    assert renamed.source == "timm"
    assert check_against(load_spec(name), renamed.tensors).loads
    assert reference.pretrained_cfg["hf_hub_id"] == TIMM_WEIGHTS[name]
    assert reference.pretrained_cfg["input_size"] == (3, load_spec(name).input_size, load_spec(name).input_size)


# --- create_model and list_models --------------------------------------------------------------------


def test_list_models_matches_shell_patterns_over_the_presets():
    assert list_models() == preset_names()
    assert list_models("ecaresnet*") == sorted(TIMM_PRESETS)
    assert list_models(["r1??", "*50t"]) == ["ecaresnet50t", "r101", "r152"]
    assert list_models("ECARESNET*") == []
    assert list_models("*", pretrained=True) == sorted(TIMM_WEIGHTS)
    assert list_models("r*", pretrained=True) == []
    with pytest.raises(OptionError, match="pattern must be"):
        list_models(3)


def test_create_model_builds_what_build_model_builds():
    torch.manual_seed(0)
    ours = create_model("r18")
    torch.manual_seed(0)
    reference = build_model(load_spec("r18"))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values(), strict=True))


def test_overrides_are_spec_keys_merged_as_set_does():
    spec = load_spec("r50")
    model = create_model(spec, num_classes=10, in_chans=1, layers=(1, 1, 1, 1), depth=None, block="basic", attention={"k_size": 3, "impl": "reference"})
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1 and len(model.layer3) == 1
    assert model.layer1[0].eca.conv.weight.shape == (1, 1, 3)
    se = create_model("r18", attention={"type": "se", "reduction": 8})
    assert type(se.layer1[0].se).__name__ == "SeModule"
    assert create_model("r18", frozen_stages=1).layer1[0].conv1.weight.requires_grad is False


def test_build_options_pass_through():
    model = create_model("ecaresnetlight", features_only=True, out_indices=(1, 3))
    assert [level.channels for level in model.feature_info] == [256, 1024]


def test_build_options_are_build_models_own():
    parameters = set(inspect.signature(build_model).parameters) - {"spec", "pretrained"}
    assert parameters - set(ResNetSpec.model_fields) == set(BUILD_OPTIONS)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_clases": 10}, r"create_model\('r18', num_clases=10\): unknown option 'num_clases'. Did you mean 'num_classes'\?"),
        ({"featurs_only": True}, r"Did you mean 'features_only'\?"),
        ({"attention": {"k_size": 4}}, r"create_model\('r18', attention=\{'k_size': 4\}\): invalid spec:\n  attention.k_size: ECA kernel sizes must be odd"),
        ({"num_classes": -1}, r"num_classes: Input should be greater than or equal to 0"),
        ({"input_size": object()}, r"input_size must be plain data"),
        ({"input_size": float("nan")}, r"input_size must be plain data"),
        ({"out_indices": [1]}, r"give it with features_only=True"),
        ({"attention": {"k_size=3": 5}}, r"'attention.k_size=3' is not a spec key"),
        ({"attention": {"gama": 3}}, r"attention.gama: unknown key 'gama'. Did you mean 'gamma'\?"),
    ],
)
def test_bad_overrides_are_one_clear_option_error(overrides, match):
    with pytest.raises(OptionError, match=match):
        create_model("r18", **overrides)


odd_k = st.integers(0, 31).map(lambda i: 2 * i + 1)
keyword_overrides = st.fixed_dictionaries(
    {},
    optional={
        "num_classes": st.integers(0, 100_000),
        "input_size": st.integers(8, 2048),
        "width": st.sampled_from([8, 16, 64]),
        "stem": st.sampled_from(["imagenet", "cifar", "deep", "deep_tiered"]),
        "attention": st.fixed_dictionaries({}, optional={"k_size": st.one_of(odd_k, st.lists(odd_k, min_size=4, max_size=4)), "impl": st.sampled_from(["fast", "reference"]), "gamma": st.floats(0.5, 4)}),
    },
)


def as_set_items(overrides: dict, prefix: str = "") -> list[str]:
    import yaml

    return [item for key, value in overrides.items() for item in (as_set_items(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).removesuffix(chr(10)).removesuffix('...').strip()}"])]


@settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keyword_overrides)
def test_keyword_overrides_are_what_set_overrides_give(overrides):
    """create_model's keywords and `--set` items of the same keys and values give the same spec, or the same refusal."""
    try:
        expected = load_spec("r18", as_set_items(overrides))
    except SpecError as exc:
        with pytest.raises(OptionError) as refusal, torch.device("meta"):
            create_model("r18", **overrides)
        assert re.sub(r" \(line \d+\)", "", str(exc).split(": invalid spec:")[1]) == str(refusal.value).split(": invalid spec:")[1]
        return
    with torch.device("meta"):
        assert create_model("r18", **overrides).spec == expected


junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from([*ResNetSpec.model_fields, "num_clases"]), junk | st.builds(object), max_size=3),
    st.fixed_dictionaries({}, optional={"features_only": st.booleans(), "out_indices": st.none() | st.lists(st.integers(-2, 6), max_size=6)}),
)
def test_any_keyword_overrides_build_or_raise_one_user_error(overrides, build):
    """Spec keys with any values (build options with values of their types) give a model or one UserError."""
    with torch.device("meta"):
        try:
            create_model("r18", **overrides, **build)
        except UserError as exc:
            assert str(exc) and "Traceback" not in str(exc)


def test_bad_names_are_refused():
    with pytest.raises(SpecError, match="neither a spec file nor a preset.*Did you mean 'ecaresnet269d'"):
        create_model("ecaresnet269")
    with pytest.raises(OptionError, match="name_or_spec must be a preset name"):
        create_model(50)


def test_build_model_refuses_pretrained_pointing_to_create_model():
    spec = load_spec("r18")
    with pytest.raises(OptionError, match=r"build_model builds freshly initialised weights.*ecacli.create_model\(spec, pretrained="):
        build_model(spec, pretrained=True)
    assert build_model(spec, pretrained=False).fc.out_features == 1000


def test_create_model_and_list_models_are_exported_lazily():
    import ecacli.factory

    assert ecacli.create_model is ecacli.factory.create_model and ecacli.list_models is ecacli.factory.list_models
    assert {"create_model", "list_models"} <= set(dir(ecacli))


@pytest.mark.slow
@pytest.mark.subprocess
def test_list_models_does_not_import_torch():
    script = "import sys, ecacli\nassert ecacli.list_models('ecaresnet*')\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr

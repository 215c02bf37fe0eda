"""Checkpoints: bit-exact round trips, conversion from each source's exact layout, safe reading, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import ecacli
from ecacli.checkpoints import (
    CheckpointError,
    converted_spec,
    load_model,
    model_with_weights,
    new_model,
    open_checkpoint,
    save_checkpoint,
    spec_for,
)
from ecacli.checkpoints.infer import infer_spec, parameter_count
from ecacli.atomic import atomic_write
from ecacli.checkpoints.io import read_checkpoint
from ecacli.errors import UserError
from ecacli.models import build_model
from ecacli.spec import ResNetSpec
from ecacli.spec_loader import load_spec

DATA = Path(__file__).parent / "data"
TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "bottleneck", "width": 8, "num_classes": 5, "attention": {"k_size": [3, 5, 5, 7]}}


def tiny_spec(**changes) -> ResNetSpec:
    return ResNetSpec.model_validate({**TINY, **changes})


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


def paper_checkpoint(spec: ResNetSpec, path: Path, zip_format: bool = True) -> dict:
    """A training checkpoint as the paper's code saves it: DataParallel keys inside `state_dict`, plus training state.

    `zip_format=False` writes torch's pre-1.6 format, which checkpoints from 2019 use.
    """
    weights = new_model(spec, seed=0).state_dict()
    torch.save(
        {
            "epoch": 100,
            "arch": "eca_resnet50",
            "state_dict": {f"module.{key}": value for key, value in weights.items()},
            "best_prec1": torch.tensor(77.48),
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "momentum": 0.9, "params": [0]}]},
        },
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    return weights


def timm_names(weights: dict) -> dict:
    """ecacli's names as timm's resnet family has them: the attention module is `se`."""
    return {key.replace(".eca.conv.", ".se.conv."): value for key, value in weights.items()}


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_round_trip_is_bit_exact(tmp_path, suffix, dtype):
    spec = tiny_spec()
    weights = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v) for k, v in new_model(spec, seed=7).state_dict().items()}
    saved = save_checkpoint(weights, spec, tmp_path / f"m{suffix}", dtype=dtype)
    model = load_model(saved.path)
    assert_same_tensors(model.state_dict(), weights)
    assert model.spec.model_dump() == spec.model_dump()
    assert not model.training
    assert saved.parameters == sum(p.numel() for p in build_model(spec).parameters())
    assert saved.dtype == dtype


def test_pt_file_is_a_plain_state_dict_with_the_spec_beside_it(tmp_path):
    spec = tiny_spec()
    weights = new_model(spec, seed=1).state_dict()
    saved = save_checkpoint(weights, spec, tmp_path / "m.pt")
    assert saved.spec_path == tmp_path / "m.pt.yaml"
    model = build_model(load_spec(saved.spec_path))
    model.load_state_dict(torch.load(saved.path, weights_only=True), strict=True)
    assert_same_tensors(model.state_dict(), weights)


def test_safetensors_metadata_holds_spec_versions_and_count(tmp_path):
    spec = tiny_spec()
    saved = save_checkpoint(new_model(spec, seed=1).state_dict(), spec, tmp_path / "m.safetensors")
    with safe_open(str(saved.path), "pt") as handle:
        metadata = handle.metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    assert ResNetSpec.model_validate(yaml.safe_load(metadata["spec"])).model_dump() == spec.model_dump()
    assert metadata["ecacli_version"] == ecacli.__version__
    assert metadata["torch_version"] == torch.__version__
    assert metadata["parameters"] == str(sum(p.numel() for p in build_model(spec).parameters()))


def test_sha256_and_size_describe_the_written_file(tmp_path):
    import hashlib

    spec = tiny_spec()
    saved = save_checkpoint(new_model(spec, seed=1).state_dict(), spec, tmp_path / "m.safetensors")
    assert saved.size == saved.path.stat().st_size
    assert saved.sha256 == hashlib.sha256(saved.path.read_bytes()).hexdigest()


def test_seed_gives_the_same_weights_and_leaves_the_global_rng_alone():
    spec = tiny_spec()
    state = torch.random.get_rng_state()
    assert_same_tensors(new_model(spec, seed=3).state_dict(), new_model(spec, seed=3).state_dict())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(new_model(spec, seed=3).fc.weight, new_model(spec, seed=4).fc.weight)


def test_load_model_is_exported_lazily():
    assert ecacli.load_model is load_model


# --- the paper's training checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_paper_checkpoint_spec_is_inferred_per_stage(tmp_path, zip_format):
    spec = tiny_spec(num_classes=11)
    weights = paper_checkpoint(spec, tmp_path / "eca_tiny_k3557.pth.tar", zip_format)
    checkpoint = open_checkpoint(tmp_path / "eca_tiny_k3557.pth.tar")
    inferred, origin = spec_for(checkpoint)
    assert checkpoint.state.source == "paper"
    assert checkpoint.state.details == {"wrapper": "state_dict", "epoch": 100, "arch": "eca_resnet50", "best_prec1": pytest.approx(77.48)}
    assert origin == "inferred from tensor names and shapes"
    data = inferred.to_yaml_dict()
    assert data["name"] == "eca_tiny_k3557"
    assert (data["layers"], data["block"], data["width"], data["num_classes"]) == ([1, 1, 1, 1], "bottleneck", 8, 11)
    assert data["attention"] == {"type": "eca", "k_size": [3, 5, 5, 7]}
    assert_same_tensors(load_model(tmp_path / "eca_tiny_k3557.pth.tar").state_dict(), weights)


def test_real_size_released_r50_k3557_checkpoint(tmp_path):
    path = tmp_path / "eca_resnet50_k3557.pth.tar"
    weights = paper_checkpoint(load_spec("r50_k3557"), path)
    checkpoint = open_checkpoint(path)
    inferred, _ = spec_for(checkpoint)
    assert inferred.depth == 50 and inferred.stem == "imagenet" and inferred.num_classes == 1000
    assert inferred.attention.k_size == [3, 5, 5, 7]
    assert parameter_count(checkpoint.tensors) == 25_557_112
    with pytest.raises(CheckpointError) as refused:
        model_with_weights(load_spec("r50"), checkpoint)
    message = str(refused.value)
    assert "layer1.0.eca.conv.weight: [1, 1, 3] vs [1, 1, 5]" in message
    assert "attention.k_size: [3, 5, 5, 7]" in message
    model, notes = model_with_weights(load_spec("r50", ["attention.k_size=[3, 5, 5, 7]"]), checkpoint)
    assert_same_tensors(model.state_dict(), weights)
    assert any("module." in note for note in notes)


def test_missing_bn_step_counters_still_load(tmp_path):
    spec = tiny_spec()
    weights = {k: v for k, v in new_model(spec, seed=2).state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(weights, tmp_path / "old.pth")
    model = load_model(tmp_path / "old.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_k_differing_within_a_stage_is_refused(tmp_path):
    weights = new_model(tiny_spec(layers=[1, 2, 1, 1]), seed=0).state_dict()
    weights["layer2.1.eca.conv.weight"] = torch.zeros(1, 1, 7)
    torch.save(weights, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match=r"layer2 differ between blocks \(\[5, 7\]\)"):
        load_model(tmp_path / "mixed.pth")


# --- torchvision ---------------------------------------------------------------------------------


def torchvision_state_dict(name: str) -> dict:
    """Random tensors under torchvision's exact names and shapes (recorded in tests/data)."""
    generator = torch.Generator().manual_seed(0)
    shapes = json.loads((DATA / "torchvision_state_dict_shapes.json").read_text())[name]
    return {key: (torch.zeros(shape, dtype=torch.long) if key.endswith("num_batches_tracked") else torch.randn(shape, generator=generator)) for key, shape in shapes}


def test_torchvision_resnet18_converts_with_initialised_eca(tmp_path):
    weights = torchvision_state_dict("resnet18")
    torch.save(weights, tmp_path / "resnet18.pth")
    checkpoint = open_checkpoint(tmp_path / "resnet18.pth")
    plain, _ = spec_for(checkpoint)
    assert checkpoint.state.source == "torchvision"
    assert (plain.depth, plain.attention.type) == (18, "none")
    assert sum(p.numel() for p in model_with_weights(plain, checkpoint)[0].parameters()) == 11_689_512
    spec = converted_spec(checkpoint)
    assert spec.attention.type == "eca" and spec.stage_kernel_sizes == [3, 5, 5, 5]
    model, notes = model_with_weights(spec, checkpoint, seed=0, init_missing_eca=True)
    converted = model.state_dict()
    assert all(torch.equal(converted[key], value) for key, value in weights.items())
    assert sorted(set(converted) - set(weights)) == sorted(f"layer{s}.{b}.eca.conv.weight" for s in range(1, 5) for b in range(2))
    assert any("initialised all 8" in note for note in notes)
    with pytest.raises(CheckpointError, match="missing from the file"):
        model_with_weights(spec, checkpoint)


# --- timm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "stem", "block"), [("d", "deep", "bottleneck"), ("t", "deep_tiered", "basic")])
def test_timm_checkpoint_gives_timms_logits(tmp_path, prefix, stem, block):
    fixture = load_file(DATA / "timm_tiny_ecaresnet.safetensors")
    weights = {key[2:]: value for key, value in fixture.items() if key.startswith(f"{prefix}.") and key[2:] not in ("x", "logits")}
    torch.save(weights, tmp_path / "timm.pth")
    checkpoint = open_checkpoint(tmp_path / "timm.pth")
    spec, _ = spec_for(checkpoint)
    assert checkpoint.state.source == "timm"
    assert (spec.stem, spec.downsample, spec.block_type) == (stem, "avg", block)
    model = load_model(tmp_path / "timm.pth")
    with torch.no_grad():
        logits = model(fixture[f"{prefix}.x"])
    assert torch.allclose(logits, fixture[f"{prefix}.logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "stem", "blocks", "params"),
    [("ecaresnet50d", "deep", [3, 4, 6, 3], 25_576_350), ("ecaresnet26t", "deep_tiered", [2, 2, 2, 2], 16_011_916), ("ecaresnet50t", "deep_tiered", [3, 4, 6, 3], 25_573_814)],
)
def test_timm_ecaresnet_layouts_are_described_exactly(name, stem, blocks, params):
    shapes = json.loads((DATA / "timm_ecaresnet_state_dict_shapes.json").read_text())[name]
    assert any(".se.conv.weight" in key for key, _ in shapes)
    from ecacli.checkpoints.convert import classify

    state = classify({key: torch.empty(shape, device="meta") for key, shape in shapes}, wrapped=False, prefixed=False, ecacli_file=False)
    spec = infer_spec(state.tensors, name)
    assert (spec.stem, spec.stem_width, spec.downsample, spec.stage_blocks) == (stem, None, "avg", blocks)
    assert spec.stage_kernel_sizes == [5, 5, 5, 7]
    assert parameter_count(state.tensors) == params


# --- refusals ---------------------------------------------------------------------------------------


def save_and_expect(tmp_path, content, match: str) -> None:
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "x.pth")


def test_unsupported_layouts_say_what_was_found(tmp_path):
    weights = new_model(tiny_spec(), seed=0).state_dict()
    save_and_expect(tmp_path, {"features.0.0.weight": torch.zeros(32, 3, 3, 3), **weights}, r"found keys such as features\.0\.0\.weight; expected a ResNet.*or a MobileNetV2")
    se = {key.replace(".eca.conv.weight", ".se.fc1.weight"): value for key, value in weights.items()}
    save_and_expect(tmp_path, se, r"not ECA \(layer1\.0\.se\.fc1\.weight")
    save_and_expect(tmp_path, {"epoch": 3, "optimizer": {}}, r"keys epoch, optimizer, but no state_dict")
    save_and_expect(tmp_path, [torch.zeros(1)], "holds a list, not a state_dict")
    partial = {k: v for k, v in weights.items() if not k.startswith("layer4.0.eca")}
    save_and_expect(tmp_path, partial, "layer4 has 1 blocks but 0 ECA kernels")
    grouped = dict(weights, **{"layer1.0.conv2.weight": torch.zeros(8, 1, 3, 3)})
    save_and_expect(tmp_path, grouped, r"layer1\.0\.conv2\.weight: \[8, 1, 3, 3\] vs \[8, 8, 3, 3\]")


class RunsCode:
    """Unpickling this would create a directory: proof of whether unpickling ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize(
    ("writer", "refusal"),
    [
        ("torch", "refused: loading it would unpickle posix.mkdir, which could run code. .*nothing from the file ran"),
        (2, r"refused: loading it would unpickle torch.storage._load_from_bytes, which could run code. .*nothing from the file ran"),
        (4, r"refused: its pickle uses the opcode FRAME \(149\), which torch's weights-only loader does not read; nothing from the file ran"),
    ],
    ids=["torch", "pickle-2", "pickle-4"],
)
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, writer, refusal):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"fc.weight": torch.zeros(1)}, "hook": RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=writer))
    with pytest.raises(CheckpointError, match=refusal):
        open_checkpoint(path)
    assert not marker.exists()


def test_truncated_corrupt_wrong_and_oversized_files(tmp_path):
    spec = tiny_spec()
    weights = new_model(spec, seed=0).state_dict()
    for suffix in (".safetensors", ".pt"):
        saved = save_checkpoint(weights, spec, tmp_path / f"m{suffix}")
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(saved.path.read_bytes()[: saved.size // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            read_checkpoint(cut)
    (tmp_path / "spec.yaml").write_text("name: x\n")
    with pytest.raises(CheckpointError, match="not a checkpoint .*starts with text"):
        read_checkpoint(tmp_path / "spec.yaml")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="over the 1,000-byte limit"):
        read_checkpoint(tmp_path / "m.pt", max_bytes=1000)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pt")


# --- atomic writes ---------------------------------------------------------------------------------


def test_existing_files_are_kept_without_force(tmp_path):
    spec = tiny_spec()
    target = tmp_path / "m.pt"
    (tmp_path / "m.pt.yaml").write_text("mine\n")
    with pytest.raises(UserError, match="m.pt.yaml: already exists; use --force"):
        save_checkpoint(new_model(spec, seed=0).state_dict(), spec, target)
    assert not target.exists()
    assert (tmp_path / "m.pt.yaml").read_text() == "mine\n"
    save_checkpoint(new_model(spec, seed=0).state_dict(), spec, target, force=True)
    assert load_spec(tmp_path / "m.pt.yaml").name == "tiny"


@pytest.mark.parametrize(
    ("interruption", "raised"),
    [(KeyboardInterrupt("stopped"), KeyboardInterrupt), (OSError(errno.ENOSPC, "No space left on device"), UserError)],
    ids=["ctrl-c", "disk-full"],
)
def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path, interruption, raised):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old contents")

    def dies_midway(handle):
        handle.write(b"partial")
        raise interruption

    with pytest.raises(raised) as caught:
        atomic_write({target: dies_midway}, force=True)
    if raised is UserError:
        assert str(caught.value) == f"{target}: cannot write it: no space left on the device."
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_a_failed_save_of_a_pair_touches_neither_file(tmp_path, monkeypatch):
    spec = tiny_spec()
    old = save_checkpoint(new_model(spec, seed=0).state_dict(), spec, tmp_path / "m.pt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fails(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(new_model(spec, seed=1).state_dict(), spec, old.path, force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- MobileNetV2 ------------------------------------------------------------------------------------


def test_torchvision_mobilenet_v2_converts_as_a_warm_start(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    weights = torchvision.models.mobilenet_v2().state_dict()
    torch.save(weights, tmp_path / "mobilenet_v2.pth")
    checkpoint = open_checkpoint(tmp_path / "mobilenet_v2.pth")
    plain, origin = spec_for(checkpoint)
    assert checkpoint.state.label == "torchvision MobileNetV2 state_dict" and origin.startswith("inferred")
    assert (plain.arch, plain.attention.type, plain.num_classes) == ("mobilenetv2", "none", 1000)
    spec = converted_spec(checkpoint, overrides=["attention.k_size=[1, 1, 1, 1, 1, 3, 3]"])
    model, notes = model_with_weights(spec, checkpoint, seed=0, init_missing_eca=True)
    converted = model.state_dict()
    assert all(torch.equal(converted[key], value) for key, value in weights.items())
    added = sorted(set(converted) - set(weights))
    assert added == sorted([f"features.1.conv.3.conv.weight"] + [f"features.{i}.conv.4.conv.weight" for i in range(2, 18)])
    assert any("initialised all 17" in note and "table row" in note for note in notes)


def test_paper_eca_mobilenetv2_checkpoint_infers_k_per_row(tmp_path):
    """The release's training checkpoint (module. prefix, state_dict wrapper): k 1 for rows with c <= 96, 3 above, read from the shapes."""
    release = load_spec("eca_mobilenetv2_k13")
    weights = new_model(release, seed=0).state_dict()
    torch.save({"epoch": 400, "arch": "eca_mobilenet_v2", "state_dict": {f"module.{k}": v for k, v in weights.items()}, "best_prec1": 72.56}, tmp_path / "eca_mobilenetv2_k13.pth.tar")
    checkpoint = open_checkpoint(tmp_path / "eca_mobilenetv2_k13.pth.tar")
    spec, _ = spec_for(checkpoint)
    assert checkpoint.state.source == "paper" and "ECA-MobileNetV2" in checkpoint.state.label
    assert (spec.arch, spec.attention.type, spec.group_kernel_sizes) == ("mobilenetv2", "eca", [1, 1, 1, 1, 1, 3, 3])
    model = load_model(tmp_path / "eca_mobilenetv2_k13.pth.tar")
    assert_same_tensors(model.state_dict(), weights)
    x = torch.randn(1, 3, 64, 64)
    reference = new_model(release, seed=0).eval()
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_mobilenet_blocks_off_torchvisions_table_are_refused_with_the_reason(tmp_path):
    spec = ecacli.load_spec("mobilenetv2", ["inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 3, 2]]"])
    torch.save(new_model(spec, seed=0).state_dict(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="strides cannot be read from weights"):
        spec_for(open_checkpoint(tmp_path / "odd.pth"))
    checkpoint = open_checkpoint(tmp_path / "odd.pth")
    assert spec_for(checkpoint, spec)[0] is spec  # given the spec, it loads
    model_with_weights(spec, checkpoint)

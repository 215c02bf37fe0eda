"""`ecacli export`, `inspect` and `convert` through the installed entry point: outputs, files and exit codes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from ecacli.checkpoints import load_model, new_model
from ecacli.spec import ResNetSpec

TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "bottleneck", "width": 8, "num_classes": 5, "attention": {"k_size": [3, 5, 5, 7]}}


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture
def paper_file(tmp_path) -> Path:
    """A training checkpoint in the paper's layout (module.-prefixed keys inside `state_dict`)."""
    weights = new_model(ResNetSpec.model_validate(TINY), seed=0).state_dict()
    path = tmp_path / "eca_tiny_k3557.pth.tar"
    torch.save({"epoch": 90, "arch": "eca_resnet50", "state_dict": {f"module.{k}": v for k, v in weights.items()}, "best_prec1": 77.0}, path)
    return path


def test_export_prints_path_size_hash_and_count_and_keeps_existing_files(cli, tmp_path, tiny_yaml):
    out = tmp_path / "tiny.safetensors"
    result = cli("export", str(tiny_yaml), "-o", str(out), "--seed", "1")
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert str(out) in result.stdout
    assert hashlib.sha256(data).hexdigest() in result.stdout
    assert f"({len(data):,} bytes)" in result.stdout
    parameters = sum(p.numel() for p in load_model(out).parameters())
    assert f"parameters:  {parameters:,} (float32)" in result.stdout
    again = cli("export", str(tiny_yaml), "-o", str(out), "--seed", "2")
    assert again.returncode == 2
    assert again.stderr == f"error: {out}: already exists; use --force to overwrite it.\n"
    assert out.read_bytes() == data


def test_export_from_a_checkpoint_that_does_not_fit_names_keys_and_kernels(cli, tmp_path, tiny_yaml, paper_file):
    out = tmp_path / "r.safetensors"
    result = cli("export", str(tiny_yaml), "--set", "attention.k_size=3", "--from", str(paper_file), "-o", str(out))
    assert result.returncode == 2
    assert "layer2.0.eca.conv.weight: [1, 1, 5] vs [1, 1, 3]" in result.stderr
    assert "fit attention.k_size: [3, 5, 5, 7]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_convert_paper_checkpoint_then_inspect(cli, tmp_path, paper_file):
    out = tmp_path / "converted.pt"
    result = cli("convert", str(paper_file), "-o", str(out), "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "source: the paper's training checkpoint" in result.stdout
    assert "k per stage [3, 5, 5, 7]" in result.stdout
    assert "stripped the 'module.' prefix" in result.stdout
    assert yaml.safe_load((tmp_path / "converted.pt.yaml").read_text())["attention"] == {"type": "eca", "k_size": [3, 5, 5, 7]}
    report = cli("inspect", str(out), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["loads_strictly"] is True
    assert data["spec_origin"] == str(out) + ".yaml"
    assert data["source"] == "ecacli"
    counters = sum(key.endswith("num_batches_tracked") for key in new_model(ResNetSpec.model_validate(TINY)).state_dict())
    assert data["dtypes"] == {"bfloat16": data["tensors"] - counters, "int64": counters}


def test_inspect_source_checkpoint_against_a_spec(cli, paper_file, tiny_yaml):
    result = cli("inspect", str(paper_file), "--spec", str(tiny_yaml), "--set", "attention.k_size=5")
    assert result.returncode == 3, result.stderr  # read fine, does not load strictly
    assert "source:      the paper's training checkpoint (epoch 90, arch eca_resnet50, best_prec1 77.0)" in result.stdout
    assert "loads strictly: no" in result.stdout
    assert "layer1.0.eca.conv.weight: [1, 1, 3] vs [1, 1, 5]" in result.stdout
    assert "--set 'attention.k_size=[3,5,5,7]'" in result.stdout


def test_convert_plain_resnet_says_eca_kernels_were_initialised(cli, tmp_path):
    plain = {**TINY, "attention": {"type": "none"}}
    torch.save(new_model(ResNetSpec.model_validate(plain), seed=0).state_dict(), tmp_path / "resnet.pth")
    result = cli("convert", str(tmp_path / "resnet.pth"), "-o", str(tmp_path / "eca.safetensors"), "--name", "warm")
    assert result.returncode == 0, result.stderr
    assert "source: torchvision ResNet state_dict" in result.stdout
    assert "note: the source has no ECA kernels: initialised all 4 of them" in result.stdout
    assert load_model(tmp_path / "eca.safetensors").spec.name == "warm"


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_convert_refuses_a_pickle_that_would_run_code(cli, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, tmp_path / "evil.pth")
    result = cli("convert", str(tmp_path / "evil.pth"), "-o", str(tmp_path / "out.safetensors"))
    assert result.returncode == 2
    assert "refused: loading it would unpickle posix.mkdir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]


def test_inspect_a_corrupt_file_exits_2(cli, tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2")
    result = cli("inspect", str(tmp_path / "bad.safetensors"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.safetensors'}: cannot read it as a safetensors file (truncated or corrupt?)")

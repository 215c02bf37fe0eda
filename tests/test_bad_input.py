"""Bad input is part of the contract: whatever a user types or feeds ends in exit 0 or 2, never a traceback.

Property tests feed arbitrary YAML trees at every key of a spec (file, `--set`, and a spec stored
in a checkpoint), and random bytes and zips of junk as checkpoints and graph files, through
`ecacli`'s own `main()` in this process; a handful of cases run the installed entry point. Each
class of bad input (file system, numbers at the edges, YAML shapes, checkpoint contents, signals,
destinations) has an example with its exact message.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import ecacli
from ecacli.atomic import check_writable
from ecacli.checkpoints import CheckpointError, load_model, new_model, open_checkpoint, save_checkpoint
from ecacli.checkpoints.io import sniff_container
from ecacli.extras import installed
from ecacli.errors import OptionError, SpecError, UserError
from ecacli.kernel import kernel_size
from ecacli.spec import ATTENTION_TYPES, Reported, ResNetSpec
from ecacli.spec_loader import MAX_DEPTH, MAX_SPEC_BYTES, load_spec, parse_yaml_text, read_yaml

from conftest import ECACLI, fuzz_examples
from conftest import run_main as run

TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "bottleneck", "width": 8, "num_classes": 5, "attention": {"k_size": [3, 5, 5, 7]}}
USER_EXITS = (0, 2)


def assert_clean(code: int, err: str, allowed: tuple[int, ...] = USER_EXITS) -> None:
    """Exit 0 or 2 (or what `allowed` says), and a refusal is one 'error:' paragraph, never a traceback or an internal error."""
    assert code in allowed, err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert err.startswith(("error: ", "Usage:", "╭")) or "Error" in err, err


def tiny_spec(**changes) -> ResNetSpec:
    return ResNetSpec.model_validate({**TINY, **changes})


# --- arbitrary YAML at every key -------------------------------------------------------------------


def _key_paths() -> list[tuple[str, ...]]:
    """Every key a spec has, from the schema itself: top level, every attention type's and `reported`'s."""
    paths = [()] + [(name,) for name in ResNetSpec.model_fields]
    paths += sorted({("attention", name) for model in ATTENTION_TYPES.values() for name in model.model_fields})
    paths += [("reported", name) for name in Reported.model_fields]
    return paths + [("unknown_key",), ("attention", "unknown_key"), ("attention", "k_size", "deeper")]


KEY_PATHS = _key_paths()
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**60), 10**60), st.floats(), st.text(max_size=20),
    st.sampled_from(["adaptive", "eca", "ceca", "se", "cbam", "none", "basic", "bottleneck", "imagenet", "deep", "r50", ""]),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), children, max_size=4)),
    max_leaves=12,
)
ATTENTION_TYPE = st.sampled_from([None, *ATTENTION_TYPES])


def spec_with(tree, path: tuple[str, ...], attention_type: str | None) -> object:
    """TINY with `tree` placed at `path` (the whole document for ()), with the given attention type."""
    if not path:
        return tree
    data = json.loads(json.dumps(TINY))
    if attention_type:
        data["attention"] = {"type": attention_type}
    target = data
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[path[-1]] = tree
    return data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@given(tree=TREES, path=st.sampled_from(KEY_PATHS), attention_type=ATTENTION_TYPE)
@settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_yaml_tree_at_any_key_of_a_spec_file_exits_0_or_2(scratch, tree, path, attention_type):
    spec = scratch / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_with(tree, path, attention_type), allow_unicode=False))
    code, _, err = run("validate", str(spec))
    assert_clean(code, err)


@given(tree=TREES, path=st.sampled_from(KEY_PATHS[1:]), flow=st.booleans())
@settings(max_examples=fuzz_examples(), deadline=None)
def test_any_yaml_tree_given_with_set_exits_0_or_2(tree, path, flow):
    value = yaml.safe_dump(tree, default_flow_style=flow).removesuffix("...\n").strip()
    code, _, err = run("validate", "r18", "--set", f"{'.'.join(path)}={value}")
    assert_clean(code, err)


@given(text=st.text(max_size=200), path=st.sampled_from(KEY_PATHS[1:]))
@settings(max_examples=fuzz_examples(), deadline=None)
def test_any_text_given_with_set_exits_0_or_2(text, path):
    code, _, err = run("validate", "r50", "--set", f"{'.'.join(path)}={text}")
    assert_clean(code, err)


def _safetensors_with_spec(path: Path, spec_text: str) -> None:
    save_file({"fc.weight": torch.zeros(5, 8)}, str(path), metadata={"spec": spec_text})


@given(tree=TREES, path=st.sampled_from(KEY_PATHS), attention_type=ATTENTION_TYPE, raw=st.one_of(st.none(), st.text(max_size=100)))
@settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_spec_stored_in_a_checkpoint_is_read_or_refused(scratch, tree, path, attention_type, raw):
    file = scratch / "stored.safetensors"
    _safetensors_with_spec(file, raw if raw is not None else yaml.safe_dump(spec_with(tree, path, attention_type)))
    try:
        checkpoint = open_checkpoint(file)
    except UserError as exc:
        assert str(exc).startswith(str(file)), str(exc)
    else:
        assert checkpoint.spec is not None


ZIP = b"PK\x03\x04"
CHECKPOINT_BYTES = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: ZIP + b),
    st.binary(max_size=300).map(lambda b: b"\x80\x02" + b),
    st.tuples(st.text(max_size=60), st.binary(max_size=100)).map(lambda t: len(t[0].encode()).to_bytes(8, "little") + t[0].encode() + t[1]),
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=100)).map(lambda t: t[0].to_bytes(8, "little") + b"{" + t[1]),
)
ARCHIVE_MEMBERS = [
    "archive/archive_format", "archive/models/model.json", "archive/data/weights/model_weights_config.json",
    "archive/extra/ecacli/metadata.json", "archive/constants.pkl", "archive/code/__torch__.py", "archive/data.pkl", "archive/version",
]
"""What torch.export's, TorchScript's and torch.save's zip archives hold: enough for a junk zip to be taken for each."""


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_byte(data: bytes, back: int, byte: int) -> bytes:
    """`data` with the byte `back` places before its last (modulo its length) replaced: a zip damaged in one place, mostly in its directory (at the end)."""
    at = len(data) - 1 - back % len(data)
    return data[:at] + bytes([byte]) + data[at + 1 :]


ZIPS = st.dictionaries(
    st.sampled_from(ARCHIVE_MEMBERS), st.one_of(st.binary(max_size=100), TREES.map(lambda tree: json.dumps(tree).encode())), max_size=6
).map(zip_of)
JUNK_ZIPS = st.one_of(ZIPS, st.tuples(ZIPS, st.integers(0, 300), st.integers(0, 255)).map(lambda t: with_byte(*t)))


SUFFIXES = [".pt", ".ts", ".pt2"] + ([".onnx"] if installed("onnx") else [])
"""A checkpoint's and the graph formats' (ONNX where the extra is installed: without it, reading one is refused naming the extra)."""


@given(data=st.one_of(CHECKPOINT_BYTES, JUNK_ZIPS), suffix=st.sampled_from(SUFFIXES))
@settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_files_as_checkpoints_or_graphs_are_refused_in_one_line(scratch, data, suffix):
    file = scratch / f"random{suffix}"
    file.write_bytes(data)
    code, out, err = run("inspect", str(file))
    assert_clean(code, err, allowed=(0, 2, 3))
    if code == 2:
        assert err.startswith(f"error: {file}: ") and err.count("\n") == 1, err


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "args"),
    [
        ("name: x\ndepth: 50\nattention:\n  type: [eca]\n", ()),
        ("name: x\n" + "a: " + "[" * 1000 + "]" * 1000 + "\n", ()),
        ("name: x\x01\n", ()),
        ("name: x\ndepth: 50\n", ("--set", "attention.k_size=" + "[" * 400 + "]" * 400)),
    ],
    ids=["list-as-type", "deep-nesting", "control-character", "deep-set"],
)
def test_the_installed_entry_point_refuses_bad_specs_in_one_paragraph(tmp_path, content, args):
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    result = subprocess.run([str(ECACLI), "validate", str(spec), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# --- spec values of the wrong kind, shapes of YAML, numbers at the edges ---------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ndepth: 50\nattention:\n  type: [eca]\n", "attention (line 3): unknown attention type ['eca']. Allowed: eca, ceca, eca_ns, se, cbam, none."),
        ("name: x\ndepth: 50\nattention:\n  type: {a: 1}\n", "attention (line 3): unknown attention type {'a': 1}."),
        ("name: x\ndepth: 50\n[a, b]: 3\n", "YAML error at line 3, column 1: a key must be a plain word or number, not a list."),
        ("name: x\ndepth: 50\n? {a: 1}\n: 3\n", "YAML error at line 3, column 3: a key must be a plain word or number, not a mapping."),
        ("name: x\ndepth: 50\nattention:\n  gamma: 1e-308\n", "gamma=1e-308 and b=1.0 give t = (log2 C + b) / gamma beyond any number"),
        ("name: x\ndepth: 50\nattention:\n  gamma: .nan\n", "attention.gamma (line 4): Input should be a finite number (got nan)."),
        ("name: x\ndepth: 50\nattention:\n  b: .inf\n", "attention.b (line 4): Input should be a finite number (got inf)."),
        (f"name: x\ndepth: 50\nwidth: {'9' * 5000}\n", "YAML error at line 3, column 8: an integer of 5,000 digits is too long (at most 100)."),
        ("name: x\na: " + "[" * 1000 + "]" * 1000 + "\n", f"nested deeper than a spec can be (at most {MAX_DEPTH} levels of mappings and lists)."),
        ("name: x\ndepth: 50\ndescription: a\x07b\n", "control character '\\x07' at line 3, column 15; a spec is plain text."),
        ("name: x\ndepth: 50\nreported: {top1: 77}\n", "reported.source (line 3): required, but missing."),
        ("name: x\ndepth: 50\nattention: {type: cbam, spatial_kernel: 4}\n", "attention.spatial_kernel (line 3): must be odd so the spatial map keeps its size; got 4.\n"),
        ("name: x\nlayers: [1, 1, 1, 1]\nblock: basic\nwidth: 8\nattention: {type: ceca, k_size: 63}\n",
         "attention.k_size (line 5): k = 63 in stage 1 is wider than the 8 channels it slides over; use an odd k of at most 7 there (or a larger width)."),
    ],
    ids=["list-type", "mapping-type", "list-key", "mapping-key", "tiny-gamma", "nan-gamma", "inf-b", "long-integer", "deep", "control",
         "reported-source", "cbam-even", "kernel-wider-than-channels"],
)
def test_each_class_of_bad_spec_has_one_clear_message(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert message in str(caught.value) + "\n"
    assert str(caught.value).count("(got") <= 1
    code, out, err = run("validate", str(path))
    assert (code, out) == (2, "") and err.startswith(f"error: {path}")


@pytest.mark.slow
def test_offending_values_are_cut_in_messages(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "depth": 50, "description": "x" * 200_000}))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert len(str(caught.value)) < 400 and "(200,000 characters)" in str(caught.value)
    path.write_text(yaml.safe_dump({"name": "x", "depth": 50, "layers": [1] * 50_000}))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert len(str(caught.value)) < 400 and "a list of 50,000 items" in str(caught.value)
    path.write_text(yaml.safe_dump({"name": "x", "depth": 50, "attention": {"k_size": "k" * 100_000}}))
    with pytest.raises(SpecError) as caught:
        load_spec(path)  # a validator that echoes the value itself is cut too
    assert len(str(caught.value)) < 500 and "(100,000 characters)" in str(caught.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("name=" + "x" * 2000, "--set 'name=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (2,005 characters)': too long for one override (at most 1,000 characters)."),
        ("attention.k_size=" + "[" * 400 + "]" * 400, "--set attention.k_size: YAML error at line 1, column 15: nested deeper than a spec can be"),
        ("attention.type=[eca]", "unknown attention type ['eca']"),
        ("attention.type={a: 1}", "unknown attention type {'a': 1}"),
        (".".join("a" * 20) + "=1", "--set a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: 20 levels of keys is deeper than a spec can be (at most 15)."),
    ],
    ids=["too-long", "too-deep", "list-type", "mapping-type", "deep-key"],
)
def test_bad_overrides_have_one_clear_message(override, message):
    code, out, err = run("validate", "r50", "--set", override)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") <= 2, err


def test_the_kernel_rule_raises_value_error_naming_gamma_and_b():
    with pytest.raises(ValueError, match="gamma=1e-308 and b=1.0 give t"):
        kernel_size(64, 1e-308)
    with pytest.raises(ValueError, match="gamma must be positive and finite, got nan"):
        kernel_size(64, math.nan)
    with pytest.raises(ValueError, match="b must be a finite number, got inf"):
        kernel_size(64, 2, math.inf)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ksize", "64", "--b", "1e308", "--gamma", "0.1"], "error: --b must be a finite number from -64 to 64 (as in a spec), got 1e+308."),
        (["ksize", "64", "--gamma", "1e308"], "error: --gamma must be a finite number of at least 0.05 and at most 64, got 1e+308."),
        (["export", "r18", "-o", "x.pt", "--seed", str(2**64)], "error: --seed must be an integer from 0 to 2**64 - 1, got 18446744073709551616."),
        (["convert", "x.pt", "-o", "y.pt", "--seed", "-1"], "error: --seed must be an integer from 0 to 2**64 - 1, got -1."),
        (["profile", "r18", "--device", "cpu", "--batch", str(2**64)], "error: --batch must be a positive integer, got 18446744073709551616 (at most 65,536)."),
        (["profile", "r18", "--device", "cpu", "--seed", str(2**64)], "error: --seed must be an integer from 0 to 2**64 - 1, got 18446744073709551616."),
        (["profile", "r18", "--device", "cpu", "--threads", str(2**40)], f"error: --threads must be from 1 to {4 * len(os.sched_getaffinity(0)):,} (4 per CPU core this process may use, of which there are {len(os.sched_getaffinity(0))}), got 1099511627776."),
        (["profile", "r18", "--device", "cpu", "--seconds", "inf"], "error: --seconds must be a positive number of seconds up to 604,800 (a week), got inf."),
        (["profile", "r18", "--device", "cpu", "--timeout", "nan"], "error: --timeout applies only to data-parallel runs"),
        (["compare", "r18", "--device", "cpu"], "error: --device applies only to measured timings; add --time."),
    ],
    ids=["ksize-b", "ksize-gamma", "seed", "convert-seed", "batch", "profile-seed", "threads", "seconds", "timeout-alone", "device-alone"],
)
def test_numbers_at_the_edges_are_refused(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(*argv)
    assert code == 2 and out == "", err
    assert message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.5, "3"])
def test_a_library_seed_torch_does_not_take_is_refused_naming_it(seed):
    with pytest.raises(OptionError) as caught:
        new_model(tiny_spec(), seed=seed)
    assert str(caught.value) == f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}."


# --- the file system -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "long-name", "empty-path", "missing"])
def test_spec_paths_that_are_not_regular_files_are_refused_without_waiting(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "spec.yaml"
        os.mkfifo(path)
        message = f"error: {path}: is a named pipe (FIFO), not a regular file; give the path of a spec."
    elif kind == "device":
        path, message = Path("/dev/zero"), "error: /dev/zero: is a character device, not a regular file; give the path of a spec."
    elif kind == "folder":
        path, message = tmp_path, f"error: {tmp_path}: is a directory, not a spec. Give the path of a file inside it."
    elif kind == "long-name":
        path = tmp_path / ("a" * 300 + ".yaml")
        message = f"({len(str(path)):,} characters): cannot read it: the name is too long for the file system."
    elif kind == "empty-path":
        path, message = Path(""), "error: '' is not a spec: give a path to a YAML spec or a preset name"
    else:
        path, message = tmp_path / "nope.yaml", f"error: {tmp_path / 'nope.yaml'}: no such file. Give a path to a YAML spec or a preset name"
    code, out, err = run("validate", "" if kind == "empty-path" else str(path))
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(PermissionError(errno.EACCES, "Permission denied"), "permission denied"), (OSError(errno.EIO, "Input/output error"), "input/output error")],
)
def test_file_system_errors_on_a_spec_become_one_line(tmp_path, monkeypatch, failure, reason):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\ndepth: 50\n")
    real_open = os.open

    def refusing(name, *args, **kwargs):
        if str(name) == str(path):
            raise failure
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(SpecError, match=f"^{path}: cannot read it: {reason}.$"):
        read_yaml(path)


def test_an_oversized_spec_is_read_no_further_than_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "spec.yaml"
    path.write_text("#" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(SpecError, match="262,145 bytes is too large for a spec"):
        read_yaml(path)
    assert parse_yaml_text("a: 1", "x")[0] == {"a": 1}
    with pytest.raises(SpecError, match="too large for a spec"):
        parse_yaml_text("#" * (MAX_SPEC_BYTES + 1), "stored spec")


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_force_replaces_only_regular_files(tmp_path, kind):
    target = tmp_path / "out.safetensors"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real").write_text("mine")
        target.symlink_to(tmp_path / "real")
    else:
        target = Path("/dev/null")
    described = {"fifo": "a named pipe (FIFO)", "symlink": "a symbolic link", "device": "a character device"}[kind]
    with pytest.raises(UserError, match=re.escape(f"is {described}, not a regular file; --force replaces only regular files")):
        check_writable([target], force=True)
    if kind == "symlink":
        assert (tmp_path / "real").read_text() == "mine" and target.is_symlink()


def test_output_paths_name_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    for output, message in [
        ("newdir/", "error: -o newdir/: ends with '/', so it names a folder; give a file name, e.g. newdir/model.safetensors.\n"),
        ("afile/x.pt", "error: afile/x.pt: afile is a file, not a folder.\n"),
        ("afile/deeper/x.pt", "error: afile/deeper/x.pt: afile is a file, not a folder.\n"),
        ("missing/x.pt", "error: missing/x.pt: the folder missing does not exist.\n"),
        ("", "error: -o '': an empty path; give a file name to write, e.g. model.safetensors.\n"),
        ("b" * 300 + ".safetensors", "(312 characters): cannot write it: the name is too long for the file system.\n"),
    ]:
        code, out, err = run("export", "r18", "-o", output)
        assert (code, out) == (2, ""), err
        assert err.endswith(message) and err.startswith("error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_inspect_of_an_empty_path_is_refused():
    code, _, err = run("inspect", "")
    assert (code, err) == (2, "error: an empty path was given; give the path of a checkpoint.\n")


# --- checkpoints -----------------------------------------------------------------------------------


def _safetensors_header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def test_a_safetensors_file_whose_header_length_ends_in_0x80_is_read_as_safetensors(tmp_path):
    spec = tiny_spec()
    weights = new_model(spec, seed=0).state_dict()
    for extra in range(256):
        path = tmp_path / f"m{extra}.safetensors"
        save_checkpoint(weights, tiny_spec(description="x" * extra), path)
        if _safetensors_header_length(path) & 0xFF == 0x80:
            break
        path.unlink()
    else:
        pytest.fail("no description length gave a header length ending in 0x80")
    assert path.read_bytes()[0] == 0x80  # what the old sniffer took for a pickle protocol byte
    copy = tmp_path / "copy.bin"
    copy.write_bytes(path.read_bytes())
    for file in (path, copy):
        checkpoint = open_checkpoint(file)
        assert checkpoint.raw.container == "safetensors" and checkpoint.state.source == "ecacli"
        assert checkpoint.spec.description == "x" * extra
        assert torch.equal(load_model(file).fc.weight, weights["fc.weight"])
    assert sniff_container(Path("legacy.pt"), b"\x80\x02\x8a\x0alp\xfc\x9cF\xf9 j\xa8P\x19") == "torch-legacy"


def _saved(tmp_path: Path, content, name: str = "x.pth") -> Path:
    path = tmp_path / name
    torch.save(content, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: {**sd, "conv1.weight": torch.tensor(3.0)}, "cannot infer the stem from {'conv1.weight': []}"),
        (lambda sd: {**sd, "fc.weight": torch.zeros(5)}, "cannot infer the number of classes (the classifier fc): 'fc.weight' has shape [5]; expected 2 dimensions."),
        (lambda sd: {**sd, "layer1.0.eca.conv.weight": torch.zeros(3)}, "cannot infer the attention from layer1.0.eca.conv.weight"),
        (lambda sd: {**sd, 3: torch.zeros(1)}, "the state_dict has a key that is not text (3); expected tensor names such as 'conv1.weight'."),
        (lambda sd: {**sd, "fc.weight": sd["fc.weight"].to_sparse()}, "tensor 'fc.weight' is sparse (torch.sparse_coo); ecacli loads dense weights only"),
        (lambda sd: {k: torch.empty_like(v, device="meta") for k, v in sd.items()}, "tensor 'conv1.weight' holds no data (a meta tensor: a shape without values)"),
        (lambda sd: {**sd, "fc.weight": sd["fc.weight"].to(torch.int64)}, "wrong kind of number (file vs model) (1): fc.weight: int64 vs float"),
        (lambda sd: {**sd, "fc.weight": sd["fc.weight"] > 0}, "fc.weight: bool vs float"),
        (lambda sd: {**sd, "fc.weight": sd["fc.weight"].to(torch.complex64)}, "fc.weight: complex64 vs float"),
    ],
    ids=["0-d-conv", "1-d-linear", "1-d-eca", "int-key", "sparse", "meta", "int-weight", "bool-weight", "complex-weight"],
)
def test_each_class_of_bad_checkpoint_is_refused_naming_the_file(tmp_path, change, message):
    path = _saved(tmp_path, change(new_model(tiny_spec(), seed=0).state_dict()))
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert len(str(caught.value)) < 2000
    code, out, err = run("convert", str(path), "-o", str(tmp_path / "out.safetensors"))
    assert (code, out) == (2, "") and message in err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_quantized_tensor_is_refused(tmp_path):
    weights = new_model(tiny_spec(), seed=0).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # recent torch warns that quantized dtypes are deprecated
        quantized = torch.quantize_per_tensor(weights["fc.bias"], 0.1, 0, torch.qint8)
    path = _saved(tmp_path, {**weights, "fc.bias": quantized})
    with pytest.raises(CheckpointError, match=r"tensor 'fc.bias' is quantized \(torch.qint8\)"):
        open_checkpoint(path)


def test_nonfinite_weights_are_refused_unless_allowed_and_inspect_warns(tmp_path):
    weights = new_model(tiny_spec(), seed=0).state_dict()
    weights["fc.weight"] = weights["fc.weight"].clone()
    weights["fc.weight"][0, :2] = torch.tensor([math.nan, math.inf])
    path = _saved(tmp_path, weights)
    with pytest.raises(CheckpointError, match=r"1 tensor holds NaN or Inf values: fc.weight \(2 values\); .* allow_nonfinite=True"):
        load_model(path)
    assert torch.equal(load_model(path, allow_nonfinite=True).fc.weight.isnan(), weights["fc.weight"].isnan())
    code, out, err = run("inspect", str(path))
    assert code == 0, err
    assert "warning:     1 tensor holds NaN or Inf values: fc.weight (2 values)" in out and "loads strictly: yes" in out
    code, out, _ = run("inspect", str(path), "--json")
    assert json.loads(out)["nonfinite"] == {"fc.weight": 2}
    code, _, err = run("convert", str(path), "-o", str(tmp_path / "c.safetensors"))
    assert code == 2 and "--allow-nonfinite" in err
    code, out, err = run("convert", str(path), "-o", str(tmp_path / "c.safetensors"), "--allow-nonfinite")
    assert code == 0, err
    assert "note: loaded as asked although 1 tensor holds NaN or Inf values" in out


def test_inspect_exit_status_says_whether_the_weights_load(tmp_path):
    path = _saved(tmp_path, new_model(tiny_spec(), seed=0).state_dict())
    assert run("inspect", str(path))[0] == 0
    code, out, _ = run("inspect", str(path), "--spec", "r18")
    assert code == 3 and "loads strictly: no" in out
    code, out, _ = run("inspect", str(path), "--spec", "r18", "--json")
    assert code == 3 and json.loads(out)["loads_strictly"] is False


def test_a_warm_start_is_named_apart_from_the_plain_network(tmp_path):
    plain = _saved(tmp_path, new_model(tiny_spec(attention={"type": "none"}), seed=0).state_dict(), "resnet50.pth")
    code, out, err = run("convert", str(plain), "-o", str(tmp_path / "warm.safetensors"))
    assert code == 0, err
    assert load_model(tmp_path / "warm.safetensors").spec.name == "resnet50_eca_warm"
    code, _, err = run("convert", str(plain), "-o", str(tmp_path / "plain.safetensors"), "--set", "attention.type=none")
    assert code == 0, err
    assert load_model(tmp_path / "plain.safetensors").spec.name == "resnet50"


# --- summary --torchinfo, consistency, names ------------------------------------------------------


def test_torchinfo_runs_on_the_meta_device_at_the_largest_accepted_sizes():
    from ecacli.reports.summary import run_torchinfo

    spec = ResNetSpec.model_validate({**TINY, "input_size": 2048})
    stats = run_torchinfo(spec, batch=65536, depth=1)  # a real input would be 3.3 TB
    assert stats.total_params == sum(p.numel() for p in new_model(spec).parameters())


def test_a_kernel_wider_than_its_channels_is_refused_by_every_command(tmp_path):
    path = tmp_path / "ceca.yaml"
    path.write_text("name: x\nlayers: [1, 1, 1, 1]\nblock: basic\nwidth: 8\nattention: {type: ceca, k_size: 63}\n")
    for argv in (["validate"], ["summary"], ["summary", "--torchinfo"], ["ksize", "--spec"]):
        code, out, err = run(*argv, str(path))
        assert (code, out) == (2, "") and "wider than the 8 channels" in err, argv


def test_dir_lists_the_public_names():
    assert {"load_spec", "build_model", "load_model", "kernel_size", "ResNetSpec", "__version__"} <= set(dir(ecacli))


def test_summary_title_says_the_spec_was_changed(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run("summary", "r50", "--depth", "1", "--set", "attention.k_size=3")
    assert code == 0
    assert out.startswith("r50 (with --set attention.k_size=3)  input [1, 3, 224, 224]")


def test_ksize_describes_the_spec_attention_in_words(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run("ksize", "--spec", "r50")
    assert "this spec's attention: eca, k_size adaptive (gamma 2, b 1, on the output width)" in out
    assert "{" not in out


def test_summary_help_does_not_claim_the_meta_device():
    code, out, _ = run("summary", "--help")
    assert code == 0 and "without torch" in out


# --- signals -------------------------------------------------------------------------------------

BLOCKING_EXPORT = textwrap.dedent(
    """
    import sys
    import ecacli.checkpoints as checkpoints
    from ecacli.cli import main

    real = checkpoints.atomic_write

    def blocking(writers, force=False):
        def wrap(write):
            def slow(handle):
                write(handle)
                handle.flush()
                print("writing", flush=True)
                sys.stdin.readline()
            return slow
        real({target: wrap(write) for target, write in writers.items()}, force)

    checkpoints.atomic_write = blocking
    sys.argv = ["ecacli", "export", "r18", "-o", sys.argv[1]]
    main()
    """
)


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "line"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_export_leaves_no_file_and_says_so(tmp_path, signum, code, line):
    target = tmp_path / "m.safetensors"
    process = subprocess.Popen([sys.executable, "-c", BLOCKING_EXPORT, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"  # readiness: the temporary file holds the weights
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code and err == f"{line}\n", err
    assert list(tmp_path.iterdir()) == []


# --- profile: time budget, progress --------------------------------------------------------------


@pytest.mark.slow
def test_a_time_budget_stops_warm_up_and_timing(monkeypatch):
    from ecacli.profiling import ProfileConfig, profile, runner

    clock = iter(range(0, 10**6))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(clock)))  # every reading: one more second
    tiny = ResNetSpec.model_validate({**TINY, "block": "basic", "input_size": 32})
    report = profile([("model", tiny)], ProfileConfig(device="cpu", batch=2, warmup=50, iters=50, seconds=2))
    model = report.models[0]
    assert model.warmup_steps == 1 and model.step_ms.n == runner.MIN_TIMED_ROUNDS
    assert report.header["seconds"] == 2


def test_progress_goes_to_stderr_as_lines_when_not_a_terminal(capsys):
    from ecacli.cli.common import ProgressLines, progress_callback

    with progress_callback() as progress:
        assert isinstance(progress, ProgressLines)
        for done in range(1, 4):
            progress("timing", done, 3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "timing 1/3" and lines[-1] == "timing 3/3" and all(line.startswith("timing ") for line in lines)

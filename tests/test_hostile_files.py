"""A hidden corpus of hostile files, generated here: pickle bombs, zip bombs, TorchScript archives whose loading
would write a file, odd kinds of number, control characters, oversized specs. Each must end in one paragraph
with exit 2 (3 where inspect says "does not load"), no traceback, nothing written and nothing run; plus
property tests of the bounded pickle reader.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from ecacli.checkpoints import CheckpointError, load_model, save_checkpoint
from ecacli.checkpoints.pickles import MAX_DEPTH, PickleRefused, read_pickle
from ecacli.errors import OptionError, printable
from ecacli.spec_loader import spec_from_data

from conftest import ECACLI, fuzz_examples
from conftest import run_main as run

TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "basic", "width": 8, "num_classes": 5, "input_size": 32}


def assert_one_paragraph(code: int, out: str, err: str, expected: int = 2) -> None:
    assert code == expected, err
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def torch_zip(data_pkl: bytes, members: dict[str, bytes] | None = None) -> bytes:
    """A torch.save-like archive holding `data_pkl` (and `members`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for name, data in (members or {}).items():
            archive.writestr(f"archive/{name}", data)
    return buffer.getvalue()


def doubling_tuple_key(levels: int) -> bytes:
    """A dict whose key is t_n = (t_n-1, t_n-1): a few bytes per level, 2**levels leaves to hash or print."""
    out = bytearray(b"\x80\x02}q\x00)q\x01")
    for _ in range(levels):
        out += b"h\x01h\x01\x86q\x01"
    return bytes(out + b"K\x01s.")


def nested_lists(levels: int) -> bytes:
    """[[[...]]]: `levels` lists, each appended to the one before."""
    return b"\x80\x02" + b"]" * levels + b"a" * (levels - 1) + b"."


# --- pickles: depth, work, keys ------------------------------------------------------------------


@pytest.mark.parametrize("levels", [40, 400])
def test_a_deep_shared_tuple_key_is_refused_at_once(tmp_path, levels):
    path = tmp_path / "bomb.pt"
    path.write_bytes(torch_zip(doubling_tuple_key(levels)))
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert "refused: a dict key or set member" in err and "nothing from the file ran" in err


def test_lists_nested_past_the_depth_limit_are_refused(tmp_path):
    path = tmp_path / "deep.pt"
    path.write_bytes(torch_zip(nested_lists(MAX_DEPTH + 50)))
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert f"nested more than {MAX_DEPTH} levels deep" in err


def test_a_pickle_over_the_opcode_budget_is_refused():
    data = pickle.dumps([0] * 1000, protocol=2)
    with pytest.raises(PickleRefused, match="more than 100 opcodes"):
        read_pickle(data, max_opcodes=100)


def test_a_storage_declaring_more_bytes_than_its_member_is_refused(tmp_path):
    source = tmp_path / "real.pt"
    torch.save({"w": torch.zeros(4)}, source)
    with zipfile.ZipFile(source) as archive:
        data_pkl = archive.read("real/data.pkl").replace(b"K\x04t", b"J\x00\x00\x00\x40t")  # numel 4 -> 2**30
        storage = archive.read("real/data/0")
    path = tmp_path / "liar.pt"
    path.write_bytes(torch_zip(data_pkl, {"data/0": storage}))
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert "declares 4,294,967,296 bytes, but the archive holds 16 bytes" in err


def test_an_epoch_too_large_for_any_field_is_refused_as_such(tmp_path, tiny_state):
    path = tmp_path / "epoch.pth.tar"
    torch.save({"state_dict": tiny_state, "epoch": 2**3000}, path)  # pickled with LONG4
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert "refused: the pickle holds an integer of 3,008 bits, too large for a checkpoint field (a count, an epoch, a seed)." in err
    assert "could run code" not in err


def test_a_pickle_opcode_torchs_loader_does_not_read_is_refused_naming_it(tmp_path):
    path = tmp_path / "text-long.pt"
    path.write_bytes(torch_zip(b"\x80\x02L5L\n.", {"version": b"3\n"}))  # LONG: a protocol 0 integer
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert "refused: its pickle uses the opcode LONG (76), which torch's weights-only loader does not read; nothing from the file ran." in err


# --- zip bombs: declared sizes are checked before anything is read ----------------------------------


def with_declared_size(data: bytes, member: str, size: int) -> bytes:
    """`data` (a zip) with `member`'s uncompressed size in the central directory set to `size`."""
    at = data.index(b"PK\x01\x02")
    while True:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        name = data[at + 46 : at + 46 + name_length].decode()
        if name == member:
            return data[: at + 24] + struct.pack("<I", size) + data[at + 28 :]
        extra, comment = struct.unpack_from("<HH", data, at + 30)
        at += 46 + name_length + extra + comment


@pytest.mark.parametrize("suffix", [".pt", ".ts"])
def test_a_member_declaring_gigabytes_is_refused_before_it_is_inflated(tmp_path, suffix):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        if suffix == ".ts":
            archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
            archive.writestr("archive/code/__torch__.py", "class M(Module):\n  pass\n")
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(with_declared_size(buffer.getvalue(), "archive/data.pkl", 3 * 2**29))
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert "declares 1,610,612,736 bytes, over the" in err


# --- TorchScript: described, never loaded; refused wherever weights are read --------------------------


class WritesOnLoad(torch.nn.Module):
    """Creates `marker` when loaded: its `__setstate__` maps the file shared (torch.from_file creates it)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return self.marker, self.scale, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.marker = state[0]
        self.scale = state[1] + 0 * torch.from_file(state[0], True, 3)  # used, so the loader keeps the call
        self.training = state[2]


@pytest.fixture
def payload(tmp_path) -> tuple[Path, Path]:
    """A TorchScript archive that creates `marker` when loaded (checked once), with the marker removed."""
    marker = tmp_path / "created-by-the-archive"
    path = tmp_path / "payload.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(WritesOnLoad(str(marker))), str(path))
        torch.jit.load(str(path))
    assert marker.exists()  # the archive does what it says when loaded
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("name", ["payload.ts", "payload.pt", "payload.pth.tar", "payload.bin", "payload.ckpt"])
def test_inspect_describes_a_torchscript_archive_without_running_it_whatever_its_name(payload, tmp_path, name):
    path, marker = payload
    renamed = path.rename(tmp_path / name)
    code, out, err = run("inspect", str(renamed), "--json")
    assert code == 0, err
    described = json.loads(out)
    assert described["format"] == "torchscript" and described["inputs"] == [{"name": "x", "dtype": "Tensor", "shape": None}]
    assert described["weight_tensors"] == 1 and described["weight_values"] == 3
    assert described["code_files"] == ["code/__torch__/test_hostile_files.py"] and "aten::from_file" in described["ops"]
    assert not marker.exists()


@pytest.mark.parametrize("name", ["payload.pt", "payload.pth.tar", "payload.bin"])
def test_convert_export_and_load_model_refuse_a_torchscript_archive_named_like_a_checkpoint(payload, tmp_path, name):
    path, marker = payload
    renamed = path.rename(tmp_path / name)
    for argv in (["convert", str(renamed), "-o", str(tmp_path / "out.safetensors")], ["export", "r18", "--from", str(renamed), "-o", str(tmp_path / "out.safetensors")]):
        code, out, err = run(*argv)
        assert_one_paragraph(code, out, err)
        assert "is a TorchScript archive, not a checkpoint: loading it would run its code" in err
    with pytest.raises(CheckpointError, match="is a TorchScript archive"):
        load_model(renamed)
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def torchscript_zip(code: str) -> bytes:
    """A TorchScript-like archive whose root module `__torch__.M` has `code` as its code file, compressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02c__torch__\nM\nq\x00)\x81}(X\x08\x00\x00\x00trainingq\x01\x88ubq\x02.")
        archive.writestr("archive/constants.pkl", b"\x80\x02).")
        archive.writestr("archive/code/__torch__.py", code)
        archive.writestr("archive/version", "3")
    return buffer.getvalue()


UNREADABLE = "has no signature ecacli can read: `def forward(...) -> TYPE:` within 256 lines and 65,536 characters."


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("  def forward(self: __torch__.M, x: Tensor)\n" * 30_000, UNREADABLE),
        ("  def forward(self: __torch__.M, x: Tuple[Tensor,\n" * 30_000, UNREADABLE),
        ("  forward(self: __torch__.M, x: Tensor)\n" * 30_000, None),
        ("  def forward(self: __torch__.M" + ", x: Tensor" * 300_000, UNREADABLE),
    ],
    ids=["no-arrow", "never-closed", "no-def", "one-long-line"],
)
def test_a_torchscript_forward_signature_without_end_is_read_in_one_bounded_pass(tmp_path, body, problem):
    # 30,000 lines repeating 'def forward(' without '->' took a regular expression with lazy quantifiers over the whole body hours.
    data = torchscript_zip("class M(Module):\n" + body)
    assert len(data) < 30_000
    path = tmp_path / "many.ts"
    path.write_bytes(data)
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert err == f"error: {path}: the TorchScript module" + (f"'s forward method {problem}" if problem else " has no forward method, so it has no inputs or outputs to describe.") + "\n"


def test_a_torchscript_signature_over_several_lines_is_read(tmp_path):
    code = "class M(Module):\n  training : bool\n  def forward(self: __torch__.M,\n    x: Tensor,\n    y: Tuple[Tensor, int]) -> Tuple[Tensor, Tensor]:\n    return (x, x)\nclass N(Module):\n  def forward(self: N) -> int:\n"
    path = tmp_path / "wrapped.ts"
    path.write_bytes(torchscript_zip(code))
    code, out, err = run("inspect", str(path), "--json")
    assert code == 0, err
    described = json.loads(out)
    assert described["inputs"] == [{"name": "x", "dtype": "Tensor", "shape": None}, {"name": "y", "dtype": "Tuple[Tensor, int]", "shape": None}]
    assert described["outputs"] == [{"name": "output", "dtype": "Tuple[Tensor, Tensor]", "shape": None}]


# --- odd kinds of number, odd fields, odd text -------------------------------------------------------


@pytest.fixture
def tiny_state() -> dict[str, torch.Tensor]:
    from ecacli import build_model

    return build_model(spec_from_data(TINY, "tiny")).state_dict()


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_weights_are_a_wrong_kind_of_number(tmp_path, tiny_state, dtype):
    path = tmp_path / "narrow.safetensors"
    path.write_bytes(safetensors_bytes({k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in tiny_state.items()}))
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert f"holds {dtype} numbers, a wrong kind of number" in err


def test_meta_tensors_in_a_training_checkpoints_fields_are_left_out(tmp_path, tiny_state):
    path = tmp_path / "meta.pth.tar"
    torch.save({"state_dict": tiny_state, "epoch": torch.empty((), device="meta"), "best_prec1": torch.empty(1, device="meta")}, path)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(TINY))
    code, out, err = run("inspect", str(path), "--spec", str(spec))
    assert code == 0, err
    assert "took the weights from the training checkpoint's 'state_dict'" in out and "epoch" not in out.split("note:")[0]


def test_non_finite_training_fields_are_strict_json_text(tmp_path, tiny_state):
    path = tmp_path / "diverged.pth.tar"
    torch.save({"state_dict": tiny_state, "best_prec1": float("nan"), "best_acc1": torch.tensor(float("-inf")), "metric": float("inf")}, path)
    code, out, err = run("inspect", str(path), "--json")
    assert code == 0, err
    details = json.loads(out, parse_constant=lambda constant: pytest.fail(f"{constant} is not JSON"))["details"]
    assert details == {"wrapper": "state_dict", "best_prec1": "nan", "best_acc1": "-inf", "metric": "inf"}


def test_json_output_maps_non_finite_numbers_in_values_and_keys_to_text():
    from ecacli.cli.common import json_value

    data = {"a": [1.5, float("nan"), (float("inf"), {"b": float("-inf")})], float("inf"): 0, "c": None, "d": 2**70}
    assert json_value(data) == {"a": [1.5, "nan", ["inf", {"b": "-inf"}]], "inf": 0, "c": None, "d": 2**70}


def test_control_characters_in_metadata_never_reach_the_terminal(tmp_path, tiny_state):
    path = tmp_path / "loud.safetensors"
    path.write_bytes(safetensors_bytes(tiny_state, {"note\x1b]0;owned\x07": "a\x1b[2Jb\rforged line\u202e"}))
    code, out, err = run("inspect", str(path))
    assert code == 0, err
    assert not any(c in out + err for c in "\x1b\x07\r\u202e")
    assert "\\x1b[2J" in out


def test_printable_escapes_what_a_terminal_acts_on():
    assert printable("plain é text") == "plain é text"
    assert printable("a\x1b[2J\x07\x00\u202e\udcff") == "a\\x1b[2J\\x07\\x00\\u202e\\udcff"


def test_a_safetensors_header_naming_a_tensor_twice_is_refused(tmp_path):
    data = safetensors_bytes({"a": torch.zeros(2), "b": torch.ones(2)})
    length = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + length].replace(b'"b"', b'"a"')
    path = tmp_path / "twice.safetensors"
    path.write_bytes(data[:8] + header + data[8 + length :])
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    assert "names 'a' twice" in err


@pytest.mark.parametrize(("first", "second"), [("archive/data.pkl", "archive/data.pkl"), ("archive/data/0", "other/data/0")], ids=["same", "other-folder"])
def test_a_zip_naming_a_member_twice_is_refused(tmp_path, first, second):
    source = tmp_path / "real.pt"
    torch.save({"w": torch.zeros(4)}, source)
    with zipfile.ZipFile(source) as archive:
        data_pkl, storage = archive.read("real/data.pkl"), archive.read("real/data/0")
    path = tmp_path / "twice.pt"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/data/0", storage)
        archive.writestr(second, data_pkl if second.endswith("data.pkl") else storage)
    code, out, err = run("inspect", str(path))
    assert_one_paragraph(code, out, err)
    name = first.split("/", 1)[1]
    assert err == f"error: {path}: the archive names the member '{name}' twice (under its top folder); a member name may appear once.\n"


def test_a_huge_stored_spec_is_refused_before_anything_is_built(tmp_path, tiny_state):
    huge = {"name": "huge", "arch": "mobilenetv2", "inverted_residual_setting": [[1, 16, 4096, 1]] * 64}
    path = tmp_path / "huge.safetensors"
    path.write_bytes(safetensors_bytes(tiny_state, {"spec": json.dumps(huge)}))
    code, out, err = run("inspect", str(path))
    assert (code, out) == (2, "") and "262,144 blocks, more than the 1,000 a spec may have" in err


# --- output names, library misuse ------------------------------------------------------------------


def test_an_output_name_of_255_bytes_is_written(tmp_path, tiny_state):
    path = tmp_path / ("w" * 243 + ".safetensors")
    save_checkpoint(tiny_state, spec_from_data(TINY, "tiny"), path)
    assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_file_with_a_name_that_is_not_utf8_is_written_and_inspected(tmp_path, tiny_state):
    path = tmp_path / os.fsdecode(b"w\xff.safetensors")
    save_checkpoint(tiny_state, spec_from_data(TINY, "tiny"), path)
    code, out, err = run("inspect", str(path))
    assert code == 0, err
    assert "\\udcff" in out


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: load_model(f, spec=5), "spec: expected a spec, a preset name or a YAML path, got int."),
        (lambda f: load_model(f, out_indices=[1]), "out_indices chooses the levels of a feature extractor; give it with features_only=True."),
        (lambda f: __import__("ecacli").export_model("r18", f.with_suffix(".onnx"), opset="18"), "opset: expected an integer, got str '18'."),
        (lambda f: __import__("ecacli").build_model(5), "spec: expected a spec, a preset name or a YAML path, got int."),
    ],
    ids=["spec-int", "out-indices", "opset-text", "build-int"],
)
def test_library_calls_with_arguments_of_the_wrong_kind_say_which(tmp_path, tiny_state, call, message):
    path = tmp_path / "w.safetensors"
    save_checkpoint(tiny_state, spec_from_data(TINY, "tiny"), path)
    with pytest.raises(OptionError) as caught:
        call(path)
    assert str(caught.value) == message


# --- the installed command: output that cannot be written ---------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_full_disk_on_stdout_is_exit_2_naming_standard_output():
    with open("/dev/full", "w") as full:
        result = subprocess.run([str(ECACLI), "specs"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (2, "error: cannot write to standard output: no space left on the device.\n")


@pytest.mark.slow
@pytest.mark.subprocess
def test_closed_stdout_is_exit_2():
    result = subprocess.run([str(ECACLI), "specs"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert result.returncode == 2 and result.stderr.startswith("error: standard output is closed")


# --- properties of the bounded reader ---------------------------------------------------------------

PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=5), st.tuples(children, children), st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=30,
)


@given(value=PLAIN, protocol=st.integers(2, 4))
@settings(max_examples=fuzz_examples(), deadline=None)
def test_plain_data_reads_back_as_it_was_pickled(value, protocol):
    assert read_pickle(pickle.dumps(value, protocol=protocol)).value == value


@given(data=st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: b"\x80\x02" + b)))
@settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_are_read_or_refused_never_anything_else(data):
    try:
        read_pickle(data)
    except PickleRefused:
        pass


@given(levels=st.integers(1, 2000))
@settings(max_examples=fuzz_examples(), deadline=None)
def test_shared_structure_never_costs_more_than_the_bounds(levels):
    try:
        value = read_pickle(doubling_tuple_key(levels)).value
    except PickleRefused:
        return
    assert isinstance(value, dict) and len(value) == 1

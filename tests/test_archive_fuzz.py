"""Property tests of the zip-archive readers: a torch.save checkpoint and a torch.export (pt2) archive,
with bytes flipped, cut short, or a member's declared sizes changed in its headers, are read or
refused with one UserError (exit 2), never another exception.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fuzz_examples
from ecacli.checkpoints import open_checkpoint
from ecacli.deploy.describe import describe_graph
from ecacli.errors import UserError
from ecacli.spec import ResNetSpec

TINY = ResNetSpec(name="tiny", layers=[1, 1, 1, 1], block="basic", width=8, num_classes=10, input_size=32)
CENTRAL, LOCAL = b"PK\x01\x02", b"PK\x03\x04"
SIZE_FIELDS = {CENTRAL: (20, 24), LOCAL: (18, 22)}  # compressed and uncompressed size, from each header's start


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.arange(6.0).reshape(2, 3), "step": 3}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    from ecacli.deploy.export import export_model

    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    export_model(TINY, path, "pt2", verify=False)
    return path.read_bytes()


def _headers(data: bytes) -> list[tuple[bytes, int]]:
    found = []
    for signature in SIZE_FIELDS:
        start = data.find(signature)
        while start >= 0:
            found.append((signature, start))
            start = data.find(signature, start + 1)
    return sorted(found, key=lambda item: item[1])


MUTATIONS = st.fixed_dictionaries(
    {
        "flips": st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
        "sizes": st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))), max_size=3),
        "keep": st.one_of(st.none(), st.floats(0, 1)),
    }
)


def _mutated(data: bytes, mutation: dict) -> bytes:
    """`data` with a member's declared (compressed or full) size changed in its header, bytes flipped, and maybe cut short."""
    out = bytearray(data)
    headers = _headers(data)
    for index, full, value in mutation["sizes"]:
        if headers:
            signature, start = headers[index % len(headers)]
            offset = start + SIZE_FIELDS[signature][1 if full else 0]
            out[offset : offset + 4] = struct.pack("<I", value)
    for where, byte in mutation["flips"]:
        out[int(where * len(out))] = byte
    if mutation["keep"] is not None:
        del out[int(mutation["keep"] * len(out)) :]
    return bytes(out)


def _read_or_refused(read, path: Path) -> None:
    try:
        read(path)
    except UserError as exc:
        assert exc.exit_code == 2 and str(exc), exc


FUZZ = settings(max_examples=fuzz_examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


@given(mutation=MUTATIONS)
@FUZZ
def test_a_damaged_torch_save_archive_is_read_or_refused(tmp_path, checkpoint_bytes, mutation):
    path = tmp_path / "damaged.pt"
    path.write_bytes(_mutated(checkpoint_bytes, mutation))
    _read_or_refused(open_checkpoint, path)


@pytest.mark.slow
@given(mutation=MUTATIONS)
@FUZZ
def test_a_damaged_pt2_archive_is_described_or_refused(tmp_path, pt2_bytes, mutation):
    path = tmp_path / "damaged.pt2"
    path.write_bytes(_mutated(pt2_bytes, mutation))
    _read_or_refused(lambda p: describe_graph(p, "pt2"), path)


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(["graph_module", "graph", "signature", "tensor_values", "nodes", "input_specs", "output_specs", "user_input", "arg", "as_tensor", "name", "sizes", "as_int", "as_expr", "expr_str", "dtype", "config", "tensor_meta", "target", "x"]), children, max_size=5)),
    max_leaves=30,
)


@pytest.mark.slow
@given(member=st.sampled_from(["models/model.json", "data/weights/model_weights_config.json"]), value=JSON)
@FUZZ
def test_a_pt2_archive_with_any_json_in_its_members_is_described_or_refused(tmp_path, pt2_bytes, member, value):
    path = tmp_path / "odd.pt2"
    with zipfile.ZipFile(io.BytesIO(pt2_bytes)) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = json.dumps(value).encode() if info.filename.endswith(member) else source.read(info)
            target.writestr(info, data)
    _read_or_refused(lambda p: describe_graph(p, "pt2"), path)

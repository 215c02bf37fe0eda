"""The spec schema and loader: presets, overrides, and every user mistake ending in a clear exit 2."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ecacli.errors import SpecError
from ecacli.spec import BaseSpec, MobileNetV2Spec, ResNetSpec
from ecacli.spec_loader import MAX_SPEC_BYTES, apply_overrides, load_spec, preset_names

PRESETS = [
    "r18", "r34", "r50", "r101", "r152", "r50_k3557", "r101_k3357", "r152_k3357", "seed_r50", "resnet50",
    "ecaresnet26t", "ecaresnet50d", "ecaresnet50t", "ecaresnet101d", "ecaresnet269d", "ecaresnetlight",
]


def test_every_required_preset_ships():
    assert set(PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate_and_name_themselves(name):
    spec = load_spec(name)
    assert spec.name == name


@pytest.mark.parametrize(
    ("name", "kernels"),
    [
        ("r18", [3, 5, 5, 5]),
        ("r50", [5, 5, 5, 7]),
        ("r50_k3557", [3, 5, 5, 7]),
        ("r101_k3357", [3, 3, 5, 7]),
        ("r152_k3357", [3, 3, 5, 7]),
        ("seed_r50", [5, 5, 5, 7]),
    ],
)
def test_stage_kernel_sizes_of_presets(name, kernels):
    assert load_spec(name).stage_kernel_sizes == kernels


def test_planes_convention_gives_the_papers_readers_kernels():
    spec = load_spec("r50", ["attention.adaptive_on=planes"])
    assert spec.stage_kernel_sizes == [3, 5, 5, 5]
    assert [r["k_output"] for r in spec.kernel_conventions()] == [5, 5, 5, 7]
    assert [r["k_planes"] for r in spec.kernel_conventions()] == [3, 5, 5, 5]


def test_block_kernel_sizes_follow_block_counts():
    assert load_spec("r50").block_kernel_sizes == [5] * 13 + [7] * 3


def test_custom_layers_and_gamma_b():
    spec = load_spec("r50", ["depth=null", "layers=[1, 2, 1, 1]", "block=basic", "attention.gamma=1", "attention.b=0"])
    assert spec.stage_blocks == [1, 2, 1, 1]
    assert spec.stage_outputs == [64, 128, 256, 512]
    assert spec.stage_kernel_sizes == [7, 7, 9, 9]


def test_overrides_read_exponent_floats_as_numbers():
    assert load_spec("r50", ["attention.gamma=2e0", "attention.b=1.0e0"]).stage_kernel_sizes == [5, 5, 5, 7]


def test_override_of_type_drops_options_the_new_type_lacks():
    assert load_spec("r50", ["attention.type=none"]).attention.type == "none"


def test_override_does_not_touch_the_input_data():
    data = {"name": "x", "attention": {"k_size": 3}}
    apply_overrides(data, ["attention.k_size=5"])
    assert data == {"name": "x", "attention": {"k_size": 3}}


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4), st.one_of(st.integers(), st.booleans(), st.text("xyz", min_size=1, max_size=5)))
@settings(max_examples=50)
def test_overrides_set_nested_values(keys, value):
    result = apply_overrides({}, [f"{'.'.join(keys)}={json.dumps(value)}"])
    for key in keys:
        result = result[key]
    assert result == value


def test_preset_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_spec("r50").depth == 50


def test_spec_round_trips_through_yaml(tmp_path):
    spec = load_spec("r50_k3557")
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(spec.to_yaml_dict()))
    assert load_spec(path) == spec


def test_json_schema_describes_every_top_level_key():
    from ecacli.spec import json_schema

    schema = json_schema()
    families = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["oneOf"]}
    assert families == {"ResNetSpec", "MobileNetV2Spec", "BaseSpec"}
    assert set(schema["$defs"]["ResNetSpec"]["properties"]) == set(ResNetSpec.model_fields)
    assert set(schema["$defs"]["BaseSpec"]["properties"]) == set(BaseSpec.model_fields) and "base" in schema["$defs"]["BaseSpec"]["required"]
    assert set(schema["$defs"]["MobileNetV2Spec"]["properties"]) == set(MobileNetV2Spec.model_fields)
    assert "arch" in schema["$defs"]["MobileNetV2Spec"]["required"] and "arch" not in schema["$defs"]["ResNetSpec"].get("required", [])
    assert schema["$schema"].startswith("https://json-schema.org/")


BAD_SPECS = {
    "unknown_key": ("name: x\ndepth: 50\nattention:\n  k_sise: 3\n", ["attention.k_sise (line 4)", "Did you mean 'k_size'?"]),
    "unknown_top_key": ("name: x\ndepth: 50\nwidht: 32\n", ["widht (line 3)", "Did you mean 'width'?", "Allowed keys:"]),
    "wrong_type": ("name: x\ndepth: '50'\n", ["depth (line 2)", "18, 34, 50, 101 or 152", "without quotes"]),
    "bool_for_int": ("name: x\ndepth: 50\nnum_classes: true\n", ["num_classes (line 3)", "valid integer"]),
    "out_of_range": ("name: x\ndepth: 50\nnum_classes: -1\n", ["num_classes (line 3)", "greater than or equal to 0"]),
    "huge_width": ("name: x\ndepth: 50\nwidth: 100000\n", ["width (line 3)", "less than or equal to 256"]),
    "even_k": ("name: x\ndepth: 50\nattention:\n  k_size: 4\n", ["attention.k_size (line 4)", "must be odd"]),
    "per_stage_wrong_length": ("name: x\ndepth: 50\nattention:\n  k_size: [3, 5, 7]\n", ["attention.k_size (line 4)", "list of 4"]),
    "depth_block_contradiction": ("name: x\ndepth: 50\nblock: basic\n", ["block 'basic' contradicts depth 50"]),
    "layers_without_block": ("name: x\nlayers: [1, 1, 1, 1]\n", ["'layers' needs 'block'"]),
    "neither_depth_nor_layers": ("name: x\n", ["give either 'depth'"]),
    "bad_literal": ("name: x\ndepth: 50\nstem: imagent\n", ["stem (line 3)", "Did you mean 'imagenet'?"]),
    "unknown_attention_type": ("name: x\ndepth: 50\nattention:\n  type: eca2\n", ["attention (line 3)", "unknown attention type 'eca2'", "Allowed: eca, ceca, eca_ns, se, cbam, none"]),
    "empty": ("", ["the file is empty"]),
    "not_a_mapping": ("- 1\n- 2\n", ["must be a YAML mapping", "not a list"]),
    "yaml_syntax": ("name: x\n  depth: [\n", ["YAML error at line 2, column 8"]),
    "duplicate_key": ("name: a\nname: b\ndepth: 50\n", ["YAML error at line 2, column 1: key 'name' is given twice (first at line 1)"]),
    "adaptive_k_too_large": ("name: x\ndepth: 50\nattention:\n  gamma: 0.01\n", ["the adaptive rule gives k = [", "above the largest allowed k of 63"]),
    "alias_bomb": ("a: &a [lol, lol]\nb: &b [*a, *a]\nc: [*b, *b]\n", ["anchors (&name) are not allowed"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_a_clear_user_error(case, tmp_path, cli):
    text, fragments = BAD_SPECS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}")
    assert "Traceback" not in result.stderr
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"\x89PNG\x00\x01\x02garbage"), "binary data"),
        (lambda p: p.write_bytes(b"name: \xff\xfe\n"), "not UTF-8"),
        (lambda p: p.write_text("#" * (MAX_SPEC_BYTES + 1)), "too large for a spec"),
    ],
)
def test_unreadable_files_are_user_errors(make, fragment, tmp_path, cli):
    path = tmp_path / "spec.yaml"
    make(path)
    with pytest.raises(SpecError, match=fragment):
        load_spec(path)
    result = cli("summary", str(path))
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_unknown_preset_suggests_the_closest(cli):
    result = cli("summary", "r5O")
    assert result.returncode == 2
    assert "'r5O' is neither a spec file nor a preset. Did you mean 'r50'?" in result.stderr


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("attention.k_size", "expected KEY.PATH=VALUE"),
        ("=3", "expected KEY.PATH=VALUE"),
        ("name.first=3", "'name' is 'r50', not a mapping"),
        ("attention.k_size=4", "must be odd"),
        ("attention.k_size=[3, 5", "YAML error"),
    ],
)
def test_bad_overrides_are_user_errors(override, fragment, cli):
    result = cli("validate", "r50", "--set", override)
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_validate_reports_the_resolved_layout(cli):
    result = cli("validate", "r50_k3557", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["stage_kernel_sizes"] == [3, 5, 5, 7]
    assert data["stage_blocks"] == [3, 4, 6, 3]


def test_specs_lists_presets_with_descriptions(cli):
    result = cli("specs", "--json")
    assert result.returncode == 0
    rows = {row["name"]: row["description"] for row in json.loads(result.stdout)}
    assert set(PRESETS) <= set(rows)
    assert all(rows[name] for name in PRESETS)


def test_schema_command_prints_the_json_schema(cli):
    result = cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "attention" in schema["$defs"]["ResNetSpec"]["properties"] and "oneOf" in schema

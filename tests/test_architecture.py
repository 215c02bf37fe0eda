"""The pure-Python layer accounting (ecacli.arch) equals torchinfo run on the built model (the oracle), for both families."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecacli.reports.summary import run_torchinfo, summarize
from ecacli.spec import SPEC_ADAPTER, ResNetSpec
from ecacli.spec_loader import load_spec, preset_names


def torchinfo_view(spec: ResNetSpec, batch: int, side: int):
    """torchinfo's totals and, per module (first call), its type, output shape, params and leaf mult-adds."""
    stats = run_torchinfo(spec, batch, side)
    names = {id(m): n for n, m in stats.summary_list[0].module.named_modules()}
    layers: dict[str, tuple] = {}
    infos = stats.summary_list
    for i, info in enumerate(infos):
        name = names[id(info.module)]
        if info.depth == 0 or name in layers:
            continue
        macs = info.macs if info.is_leaf_layer else 0
        for child in infos[i + 1 :]:
            if child.depth <= info.depth:
                break
            macs += child.macs if child.is_leaf_layer else 0
        layers[name] = (info.class_name, list(info.output_size), info.num_params, macs)
    totals = (stats.total_params, stats.trainable_params, stats.total_mult_adds, stats.total_output_bytes, stats.total_param_bytes)
    return totals, layers


def our_view(spec: ResNetSpec, batch: int, side: int):
    report = summarize(spec, batch, side, depth=99)
    totals = (report.total_params, report.trainable_params, report.mult_adds, report.activation_bytes, report.param_bytes)
    layers = {row.name: (row.type, row.output_shape, row.params, row.mult_adds) for row in report.layers}
    return totals, layers


def assert_same_as_torchinfo(spec: ResNetSpec, batch: int, side: int) -> None:
    """Totals and every module's type, params, mult-adds and output shape agree.

    A module that the fast ECA path uses through a method rather than a call (the block's
    `eca` under `impl: fast`) has no output in torchinfo's record; only its shape is skipped.
    """
    ours, theirs = our_view(spec, batch, side), torchinfo_view(spec, batch, side)
    assert ours[0] == theirs[0]
    assert ours[1].keys() == theirs[1].keys()
    for name, (kind, shape, params, macs) in theirs[1].items():
        expected = (kind, shape or ours[1][name][1], params, macs)
        assert ours[1][name] == expected, name


@pytest.mark.parametrize("name", [name for name in preset_names() if load_spec(name).family is not None])
def test_every_preset_equals_torchinfo(name):
    assert_same_as_torchinfo(load_spec(name), 1, 224)


def test_write_up_numbers():
    report = summarize(load_spec("seed_r50"))
    assert (report.total_params, report.mult_adds) == (25_549_438, 63_594_850_920)
    assert report.input_size == [1, 3, 224, 224]


attentions = st.one_of(
    st.just({"type": "none"}),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["eca", "ceca"]),
            "k_size": st.one_of(st.just("adaptive"), st.sampled_from([1, 3, 5])),
            "impl": st.sampled_from(["fast", "reference"]),
        }
    ),
    st.fixed_dictionaries({"type": st.just("eca_ns"), "k_size": st.one_of(st.just("adaptive"), st.sampled_from([1, 3, 5]))}),
    st.fixed_dictionaries({"type": st.just("se"), "reduction": st.integers(1, 32), "divisor": st.sampled_from([1, 4, 8])}),
    st.fixed_dictionaries({"type": st.just("cbam"), "reduction": st.integers(1, 32), "spatial_kernel": st.sampled_from([1, 3, 7]), "mlp_bias": st.booleans()}),
)

specs = st.fixed_dictionaries(
    {
        "name": st.just("gen"),
        "layers": st.lists(st.integers(1, 2), min_size=4, max_size=4),
        "block": st.sampled_from(["basic", "bottleneck"]),
        "stem": st.sampled_from(["imagenet", "cifar", "deep", "deep_tiered"]),
        "downsample": st.sampled_from(["conv", "avg"]),
        "width": st.sampled_from([8, 16, 24]),
        "in_chans": st.integers(1, 4),
        "num_classes": st.integers(0, 20),
        "norm": st.sampled_from(["batch", "group", "frozen_batch"]),
        "attention": attentions,
    }
)


@given(data=specs, batch=st.integers(1, 3), side=st.integers(8, 80))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_specs_equal_torchinfo(data, batch, side):
    if data["norm"] == "group":
        side = max(side, 64)  # GroupNorm refuses one value per group, as a 1x1 map of a narrow layer at batch 1 would give it
    assert_same_as_torchinfo(ResNetSpec.model_validate(data), batch, side)


mobilenet_specs = st.fixed_dictionaries(
    {
        "name": st.just("gen"),
        "arch": st.just("mobilenetv2"),
        "width_mult": st.sampled_from([0.25, 0.5, 1.0, 1.4]),
        "inverted_residual_setting": st.lists(
            st.tuples(st.integers(1, 6), st.sampled_from([8, 16, 24, 40]), st.integers(1, 2), st.integers(1, 2)).map(list), min_size=1, max_size=4
        ),
        "last_channel": st.sampled_from([32, 64, 1280]),
        "in_chans": st.integers(1, 4),
        "num_classes": st.integers(0, 20),
        "norm": st.sampled_from(["batch", "group"]),
        "attention": attentions,
    }
)


@given(data=mobilenet_specs, batch=st.integers(1, 3), side=st.integers(8, 80))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_mobilenet_specs_equal_torchinfo(data, batch, side):
    if data["norm"] == "group":
        side = max(side, 64)  # GroupNorm refuses one value per group
    assert_same_as_torchinfo(SPEC_ADAPTER.validate_python(data), batch, side)


def test_eca_mobilenetv2_figures():
    """The release's layout: 25 ECA weights on torchvision's 3,504,872, and torchinfo's mult-adds at 224 px."""
    report = summarize(load_spec("eca_mobilenetv2_k13"))
    assert (report.total_params, report.mult_adds, report.attention_params) == (3_504_897, 300_812_488, 25)
    assert summarize(load_spec("mobilenetv2")).total_params == 3_504_872

"""`compare --time` measures each spec in a pair with the first: however many specs, at most two models are alive at once."""

from __future__ import annotations

import gc
import weakref

import pytest

from ecacli.profiling import ProfileConfig, profile_paired, report
from ecacli.spec import ResNetSpec

TINY = {"name": "tiny", "layers": [1, 1, 1, 1], "block": "basic", "num_classes": 10, "input_size": 32}
pytestmark = pytest.mark.slow  # builds and times a dozen small models

FAST = ProfileConfig(device="cpu", batch=2, warmup=1, iters=3)


def _specs(count: int) -> list[tuple[str, ResNetSpec]]:
    return [(f"{i}:w{8 + i}", ResNetSpec.model_validate({**TINY, "width": 8 + i})) for i in range(count)]


@pytest.fixture
def live_models(monkeypatch):
    """The most models alive at once while workloads are built (each build counts the earlier ones still alive)."""
    built: list[weakref.ref] = []
    most = [0]
    real = report.make_workload

    def counting(*args, **kwargs):
        workload = real(*args, **kwargs)
        gc.collect()
        built.append(weakref.ref(workload.model))
        most[0] = max(most[0], sum(ref() is not None for ref in built))
        return workload

    monkeypatch.setattr(report, "make_workload", counting)
    return most, built


def test_five_specs_never_hold_more_than_two_models(live_models):
    most, built = live_models
    entries = _specs(5)
    result = profile_paired(entries, FAST)
    assert len(built) == 5 and most[0] == 2
    assert [m.label for m in result.models] == [label for label, _ in entries]
    first = entries[0][0]
    for label, _ in entries[1:]:
        assert result.model(label).step_ms.n == FAST.iters
        assert result.ratio(label, first).n == FAST.iters  # per round of that pair
    assert result.model(first).step_ms.n == FAST.iters * 4  # the first model is timed in every pair
    assert result.ratio(first, first).median == 1.0


def test_the_ratio_pairs_each_round_with_the_first_models_step_of_that_round(live_models):
    entries = _specs(3)
    result = profile_paired(entries, FAST)
    first = entries[0][0]
    for label, _ in entries[1:]:
        expected = sorted(a["step"] / b["step"] for a, b in zip(result.model(label).samples, result.paired_samples[label]))
        assert result.ratio(label, first).median == expected[len(expected) // 2]
    first_samples = [s for label, _ in entries[1:] for s in result.paired_samples[label]]
    assert result.model(first).samples == first_samples


def test_one_spec_is_measured_alone(live_models):
    most, built = live_models
    result = profile_paired(_specs(1), FAST)
    assert len(built) == 1 and result.models[0].step_ms.n == FAST.iters


def test_ctrl_c_stops_after_the_pair_it_cut_short(monkeypatch, live_models):
    calls = []
    real = report.measure

    def interrupted_second(workloads, *args, **kwargs):
        calls.append([w.label for w in workloads])
        real(workloads, *args, **kwargs)
        return len(calls) == 2

    monkeypatch.setattr(report, "measure", interrupted_second)
    entries = _specs(4)
    result = profile_paired(entries, FAST)
    assert result.interrupted and len(calls) == 2
    assert [m.label for m in result.models] == [label for label, _ in entries[:3]]

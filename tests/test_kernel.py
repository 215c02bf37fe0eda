"""The adaptive kernel-size rule: the paper's table, exact log2, intervals and width tables."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecacli.kernel import _exact_log2, kernel_intervals, kernel_run, kernel_size, kernel_t, odd_up, table_widths

# REFERENCE.md: k per run of C with gamma = 2, b = 1.
PAPER_TABLE = [(1, 7, 1), (8, 127, 3), (128, 2047, 5), (2048, 32767, 7), (32768, 524287, 9)]


@pytest.mark.parametrize(("low", "high", "k"), PAPER_TABLE)
def test_default_rule_matches_reference_table_at_run_edges(low, high, k):
    assert kernel_size(low) == k
    assert kernel_size(high) == k


def test_default_runs_are_exactly_the_reference_table():
    runs = kernel_intervals(1, 524287)
    assert [(r.low, r.high, r.k) for r in runs] == PAPER_TABLE


@given(st.integers(min_value=1, max_value=2**32))
def test_default_rule_equals_integer_formula(channels):
    # (log2 C + 1) / 2 reaches an integer only at powers of two, so t = bit_length // 2 exactly.
    t = channels.bit_length() // 2
    assert kernel_t(channels) == t
    assert kernel_size(channels) == odd_up(t)


@pytest.mark.parametrize("exponent", range(0, 33))
def test_powers_of_two_use_exact_log2(exponent):
    channels = 2**exponent
    assert kernel_t(channels, 1.0, 0.0) == exponent  # math.log(C, 2) gives exponent - 1 for some


@pytest.mark.parametrize("exponent", range(1, 33))
def test_rule_is_exact_on_both_sides_of_every_power_of_two(exponent):
    for channels in (2**exponent - 1, 2**exponent):
        assert kernel_t(channels) == channels.bit_length() // 2


def test_rejects_widths_beyond_the_supported_range():
    with pytest.raises(ValueError, match="up to 2\\*\\*32"):
        kernel_size(2**32 + 1)


def test_log2_is_exact_at_every_power_of_two():
    # math.log(C, 2) is one ulp high at 2**29, 2**31, ... here; the rule must not inherit that.
    assert all(_exact_log2(2**e) == e for e in range(0, 200))


@given(
    low=st.integers(1, 3000),
    span=st.integers(0, 3000),
    gamma=st.floats(0.25, 8, allow_nan=False),
    b=st.floats(-8, 8, allow_nan=False),
)
@settings(max_examples=60, deadline=None)
def test_intervals_equal_brute_force(low, span, gamma, b):
    high = low + span
    runs = kernel_intervals(low, high, gamma, b)
    expected = []
    for c in range(low, high + 1):
        k = kernel_size(c, gamma, b)
        if expected and expected[-1][2] == k and expected[-1][1] == c - 1:
            expected[-1][1] = c
        else:
            expected.append([c, c, k])
    assert [[r.low, r.high, r.k] for r in runs] == expected


@given(st.integers(1, 10**6), st.floats(0.1, 10, allow_nan=False), st.floats(-10, 10, allow_nan=False))
def test_k_is_always_odd_and_positive(channels, gamma, b):
    k = kernel_size(channels, gamma, b)
    assert k >= 1 and k % 2 == 1


def test_table_widths_are_ends_and_powers_of_two():
    assert table_widths(64, 2048) == [64, 128, 256, 512, 1024, 2048]
    assert table_widths(96, 1000) == [96, 128, 256, 512, 1000]
    assert table_widths(5, 5) == [5]


@pytest.mark.parametrize(("bad", "message"), [(0, "positive integer"), (-3, "positive integer"), (True, "positive integer"), (2.0, "positive integer")])
def test_rejects_non_positive_or_non_integer_channels(bad, message):
    with pytest.raises(ValueError, match=message):
        kernel_size(bad)


def test_rejects_non_positive_gamma():
    with pytest.raises(ValueError, match="gamma must be positive"):
        kernel_size(64, gamma=0)


@pytest.mark.parametrize(("channels", "run"), [(64, (8, 127)), (2048, (2048, 32767)), (1, (1, 7)), (524287, (32768, 524287))])
def test_run_around_a_width_is_the_whole_reference_row(channels, run):
    found = kernel_run(channels)
    assert (found.low, found.high) == run


@given(st.integers(1, 4000), st.floats(0.5, 8, allow_nan=False), st.floats(-6, 6, allow_nan=False))
@settings(max_examples=80, deadline=None)
def test_run_is_maximal_and_constant(channels, gamma, b):
    run = kernel_run(channels, gamma, b)
    assert run.low <= channels <= run.high and run.k == kernel_size(channels, gamma, b)
    assert run.low == 1 or kernel_size(run.low - 1, gamma, b) != run.k
    assert kernel_size(run.high + 1, gamma, b) != run.k
    inside = range(run.low, min(run.high, run.low + 5000) + 1)
    assert all(kernel_size(c, gamma, b) == run.k for c in inside)

"""Shared fixtures: run the installed `ecacli` entry point as a user would; test markers.

Markers (registered in pyproject.toml): `subprocess` for tests that run the entry point (given
to every test that uses the `cli` fixture), `ddp` for data-parallel runs, `slow` for both and for
the few in-process tests named in SLOW_TESTS. `pytest -m "not slow"` is the fast loop; plain
`pytest` (the README's command and CI) runs everything.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ECACLI = Path(sys.executable).parent / "ecacli"
REPO = Path(__file__).resolve().parent.parent


def run_ecacli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed console script in a subprocess; returns the completed process (text mode)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("ECACLI_DEBUG", None)
    return subprocess.run([str(ECACLI), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def randomise_batch_norms(model, generator):
    """Non-trivial affine parameters and running statistics for every affine BatchNorm2d, so no term of what it computes vanishes; returns the model."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.affine:
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.5, 0.5, generator=generator)
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def run_main(*argv: str) -> tuple[int, str, str]:
    """`ecacli *argv` through its own main() in this process (fast: no interpreter start): (exit code, stdout, stderr)."""
    from ecacli.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous, old_argv = signal.getsignal(signal.SIGTERM), sys.argv
    sys.argv = ["ecacli", *argv]
    code: object = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old_argv
        signal.signal(signal.SIGTERM, previous)
    return (code or 0) if isinstance(code, int) or code is None else 1, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    """The `run_ecacli` function, for tests that call the entry point."""
    assert ECACLI.exists(), f"ecacli entry point not installed at {ECACLI}"
    return run_ecacli


SUBPROCESS_TESTS = {
    # tests that start `python -m ecacli` or a probe interpreter themselves instead of using `cli`
    "test_python_m_table",
    "test_commands_that_do_not_need_torch_do_not_import_it",
    "test_internal_failure_exits_1_without_traceback",
    "test_python_dash_m_runs_the_cli",
}

SLOW_TESTS = {
    # in-process tests that take seconds each on a loaded 2-core CPU
    "test_gradcheck_fused_function",
    "test_benchmark_prints_ratio_rows",
    "test_benchmark_compile_option_selects_rows",
    "test_compiled_block_trains_like_reference",
    "test_no_graph_breaks_under_compile",
    "test_timm_comparison_explains_its_missing_dependency",
    "test_every_preset_equals_torchinfo",
    "test_generated_specs_equal_torchinfo",
    "test_every_type_trains_a_step",
    "test_breakdown_separates_attention",
    "test_real_size_released_r50_k3557_checkpoint",
    "test_ctrl_c_keeps_the_whole_steps_measured_so_far",
    "test_cli_ctrl_c_prints_partial_and_exits_130",
    "test_interleaving_rotates_and_reports_progress",
    # wide parametrisations: the fast loop keeps their float32 and single-model siblings
    "test_block_matches_reference_float64",
    "test_model_matches_reference",
    "test_forward_shapes_for_every_stem",
    "test_torchvision_resnet18_converts_with_initialised_eca",
    "test_benchmark_help_shows_defaults",
    "test_eval_mode_has_forward_only",
    "test_half_precision_model_trains_like_reference",
    "test_every_rule_gives_its_path_and_the_reference_numbers",
    "test_eca_hooks_see_input_and_gated_output",
    # exports that trace a model and run the file in its runtime
    "test_onnx_export_holds_the_spec_and_runs_any_batch_in_onnxruntime",
    "test_a_mobilenetv2_goes_to_onnx_with_its_family_in_the_spec",
    "test_pt2_export_runs_in_torch_export_load_with_its_metadata",
    "test_torchscript_export_runs_in_torch_jit_load_at_any_shape",
    "test_an_opset_under_18_comes_from_the_torchscript_based_exporter",
    "test_a_headless_model_exports_its_features_and_a_trunk_is_refused",
    "test_export_model_leaves_the_given_model_as_it_was",
    "test_a_graph_that_disagrees_with_eager_is_not_written",
    "test_an_existing_file_is_kept_without_force",
    "test_describe_onnx_counts_nodes_inputs_weights_and_reads_the_spec",
    "test_graph_formats_are_told_by_suffix_or_archive_layout",
    # the users of test_profile's module fixture `train_report`, which times a model pair
    "test_phases_add_up_and_units_agree",
    "test_overhead_is_the_per_round_ratio",
    "test_memory_fields",
}


FUZZ_EXAMPLES = {"full": 200, "fast": 20}


def fuzz_examples() -> int:
    """How many examples the property-based fuzz tests draw: fewer in the fast loop (`-m "not slow"`)."""
    return FUZZ_EXAMPLES[os.environ.get("ECACLI_FUZZ", "full")]


def pytest_configure(config):
    if "not slow" in (config.getoption("markexpr", "") or ""):
        os.environ.setdefault("ECACLI_FUZZ", "fast")


def pytest_collection_modifyitems(config, items):
    """`subprocess` for tests using the `cli` fixture and SUBPROCESS_TESTS; `slow` for subprocess, ddp and SLOW_TESTS tests."""
    for item in items:
        name = getattr(item, "originalname", item.name)
        if "cli" in getattr(item, "fixturenames", ()) or name in SUBPROCESS_TESTS:
            item.add_marker(pytest.mark.subprocess)
        if name in SLOW_TESTS or item.get_closest_marker("subprocess") or item.get_closest_marker("ddp"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tests on tiny tensors: threads gain nothing there, and an idle OpenMP pool spins on a shared CPU (here 2-3x the time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

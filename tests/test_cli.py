"""The installed `ecacli` entry point: summary, ksize, torch-free commands, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_summary_json_has_the_exact_numbers(cli):
    result = cli("summary", "seed_r50", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total_params"] == data["trainable_params"] == 25_549_438
    assert data["mult_adds"] == 63_594_850_920
    assert data["input_size"] == [1, 3, 224, 224]
    assert data["eca_kernel_sizes"] == [5] * 13 + [7] * 3
    assert data["eca_params"] == 86


def test_summary_batch_and_input_size_scale_mult_adds(cli):
    one = json.loads(cli("summary", "r50", "--json").stdout)
    data = json.loads(cli("summary", "r50", "--json", "--batch", "4", "--input-size", "112").stdout)
    assert data["input_size"] == [4, 3, 112, 112]
    assert data["total_params"] == one["total_params"] == 25_557_118
    assert data["mult_adds"] < one["mult_adds"] * 4


def test_summary_table_shows_layers_and_totals(cli):
    result = cli("summary", "specs/r50_k3557.yaml", "--depth", "2")
    assert result.returncode == 0, result.stderr
    assert "layer4.2" in result.stdout and "Bottleneck" in result.stdout
    assert "25,557,112" in result.stdout
    assert "Attention:           eca, 80 params" in result.stdout


def test_summary_torchinfo_table_is_torchinfos(cli):
    result = cli("summary", "seed_r50", "--torchinfo", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert "Total params: 25,549,438" in result.stdout
    assert "Total mult-adds (Units.GIGABYTES): 63.59" in result.stdout


def test_summary_set_overrides(cli):
    data = json.loads(cli("summary", "r50", "--set", "attention.k_size=3", "--json").stdout)
    assert data["eca_kernel_sizes"] == [3] * 16
    assert data["eca_params"] == 48


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--input-size", "4"], "--input-size"), (["--batch", "0"], "--batch"), (["--torchinfo", "--json"], "drop --torchinfo")],
)
def test_summary_bad_options_exit_2(cli, args, fragment):
    result = cli("summary", "r50", *args)
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_ksize_channels_range(cli):
    result = cli("ksize", "--channels", "64", "2048", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["channels"], r["k"]) for r in rows] == [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)]
    assert rows[1]["k_constant_from"] == 128 and rows[1]["k_constant_to"] == 2047
    assert (rows[0]["k_constant_from"], rows[-1]["k_constant_to"]) == (8, 32767)  # whole runs, not clipped to the range
    assert rows[0]["se_params_r16"] == 64 * 8 + 8 + 8 * 64 + 64 and rows[0]["eca_params"] == 3  # r=16 gives 4, rounded up to 8; both biases
    assert rows[-1]["se_params_r16"] == 2 * 2048 * 128 + 128 + 2048


def test_ksize_counts_an_se_block_as_compare_does():
    """The SE column is what compare counts for `attention.type=se`: R-50's SE parameters are its blocks' SE counts at their output widths."""
    from ecacli.cli.ksize import width_row
    from ecacli.reports.compare import compare_specs
    from ecacli.spec_loader import load_spec

    (row,) = compare_specs([load_spec("r50", ["attention.type=se"])])
    per_width = {c: width_row(c, 2.0, 1.0)["se_params_r16"] for c in (256, 512, 1024, 2048)}
    assert row.attention_params == 3 * per_width[256] + 4 * per_width[512] + 6 * per_width[1024] + 3 * per_width[2048]


def test_ksize_table_lists_exact_runs(cli):
    result = cli("ksize", "--channels", "64", "2048")
    assert "Exact runs of C with constant k" in result.stdout
    assert "2,047" in result.stdout


def test_ksize_positional_widths_and_rule_parameters(cli):
    rows = json.loads(cli("ksize", "96", "640", "1000", "--json").stdout)
    assert [(r["channels"], r["t"], r["k"]) for r in rows] == [(96, 3, 3), (640, 5, 5), (1000, 5, 5)]
    rows = json.loads(cli("ksize", "64", "--gamma", "1", "--b", "0", "--json").stdout)
    assert rows[0]["k"] == 7


def test_ksize_for_a_spec_shows_every_convention(cli):
    rows = json.loads(cli("ksize", "--spec", "r50_k3557", "--json").stdout)
    assert [r["k_output"] for r in rows] == [5, 5, 5, 7]
    assert [r["k_planes"] for r in rows] == [3, 5, 5, 5]
    assert [r["k"] for r in rows] == [3, 5, 5, 7]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["0"], "between 1 and"),
        (["--channels", "100", "10"], "LOW <= HIGH"),
        (["64", "--gamma", "0"], "--gamma must be a finite number of at least 0.05"),
        (["64", "--b", "nan"], "--b must be a finite number"),
        (["64", "--gamma", "inf"], "--gamma must be a finite number"),
        (["abc"], "Invalid value"),
        (["64", "--channels", "8", "16"], "not both"),
        (["--spec", "r18", "--gamma", "3"], "--spec takes the widths, gamma and b from the spec"),
        (["64", "--set", "attention.b=2"], "--set changes a spec; it needs --spec"),
    ],
)
def test_ksize_bad_input_exits_2(cli, args, fragment):
    result = cli("ksize", *args)
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


TORCH_FREE = [["--help"], ["ksize", "--channels", "64", "2048"], ["ksize", "--spec", "r50"], ["specs"], ["validate", "r50"], ["schema"], ["summary", "r152"], ["--version"]]


@pytest.mark.parametrize("argv", TORCH_FREE, ids=" ".join)
def test_commands_that_do_not_need_torch_do_not_import_it(argv):
    probe = (
        "import sys\n"
        f"sys.argv = ['ecacli', *{argv!r}]\n"
        "from ecacli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_internal_failure_exits_1_without_traceback(tmp_path):
    probe = (
        "import sys\n"
        "import ecacli.cli.schema as schema\n"
        "def boom():\n    raise RuntimeError('boom')\n"
        "schema.json_schema = None\n"
        "import ecacli.spec\n"
        "ecacli.spec.json_schema = boom\n"
        "sys.argv = ['ecacli', 'schema']\n"
        "from ecacli.cli import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 1
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "ecacli", "ksize", "2048", "--json"], capture_output=True, text=True)
    assert json.loads(result.stdout)[0]["k"] == 7

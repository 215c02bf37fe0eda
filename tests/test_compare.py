"""`ecacli compare`: numbers equal summary's, the output formats, the plot."""

from __future__ import annotations

import csv
import io
import json
import struct
import sys

import pytest

from ecacli.errors import UserError
from ecacli.reports.compare import compare_specs
from ecacli.spec_loader import load_spec

SPECS = ["resnet50", "r50_k3557", "se_r50", "cbam_r50", "ceca_r50"]


def test_compare_json_agrees_with_summary(cli):
    result = cli("compare", *SPECS, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == SPECS
    for row in rows:
        summary = json.loads(cli("summary", row["name"], "--json").stdout)
        assert row["total_params"] == summary["total_params"]
        assert row["mult_adds_per_image"] == summary["mult_adds"]
        assert row["attention_params"] == summary["attention_params"]
    assert [r["delta_params"] for r in rows] == [0, 80, 2_530_992, 2_516_544, 86]
    assert rows[1]["reported"]["top1"] == 77.48 and rows[0]["reported"] is None


def test_compare_csv_and_markdown():
    rows = compare_specs([load_spec(s) for s in SPECS])
    from ecacli.reports.compare import to_csv, to_markdown

    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [int(r["total_params"]) for r in parsed] == [r.total_params for r in rows]
    assert parsed[1]["reported_top1"] == "77.48"
    markdown = to_markdown(rows).splitlines()
    assert len(markdown) == 2 + len(SPECS)
    assert "| r50_k3557 | eca | 25,557,112 | +80 |" in markdown[3]
    assert markdown[3].endswith("| 77.48 |") and "top-1 (reported)" in markdown[0]


def test_compare_table(cli):
    result = cli("compare", "resnet50", "se_r50")
    assert result.returncode == 0
    assert "+2,530,992" in result.stdout and "deltas against resnet50" in result.stdout


def test_compare_plot_is_a_png_of_the_expected_size(cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "params.png"
    result = cli("compare", "resnet50", "r50_k3557", "r101_k3357", "--plot", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (640, 480)
    assert "2 of 3 specs plotted" in result.stderr


def test_plot_without_any_reported_figure_is_refused(cli, tmp_path):
    path = tmp_path / "p.png"
    result = cli("compare", "resnet50", "se_r50", "--plot", str(path))
    assert result.returncode == 2
    assert "none of the specs has a reported ImageNet top-1" in result.stderr
    assert not path.exists()


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    from ecacli.reports.plot import plot_params_vs

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = compare_specs([load_spec("r50_k3557")])
    with pytest.raises(UserError, match=r'^--plot needs matplotlib, not installed here\. Install them with: pip install "matplotlib>=3\.7"$'):
        plot_params_vs(rows, "top1", tmp_path / "x.png")


def test_only_one_output_format(cli):
    result = cli("compare", "r50", "--json", "--csv")
    assert result.returncode == 2
    assert "choose one of --json, --csv and --markdown" in result.stderr


def test_compare_time_measures_every_spec_interleaved(cli):
    result = cli("compare", "r18", "r18", "--set", "depth=null", "--set", "layers=[1, 1, 1, 1]", "--set", "block=basic", "--set", "width=8",
                 "--time", "--device", "cpu", "--batch", "2", "--input-size", "32", "--iters", "2", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for row in rows:
        m = row["measured"]
        assert m["device"] == "cpu" and m["batch"] == 2
        assert m["step_ms"] >= m["forward_ms"] > 0
        assert m["images_per_s"] == pytest.approx(2 / (m["step_ms"] / 1000), rel=1e-6)
    assert rows[0]["measured"]["step_ratio_to_first"] == 1.0 and rows[0]["measured"]["precision"] is None  # a spec against itself
    precision = rows[1]["measured"]["precision"]
    assert (precision["samples"], precision["trusted"], precision["problems"][0]) == (2, False, "2 samples, under 10")
    assert "a larger --iters" in precision["advice"]


def test_an_imprecise_ratio_is_marked_and_explained(monkeypatch, capsys):
    from ecacli.cli.compare import _render
    from ecacli.profiling.precision import assess
    from ecacli.profiling.stats import Stats

    rows = compare_specs([load_spec("r18"), load_spec("r50")])
    verdict = assess("step ratio", Stats.of([1.9, 2.1, 2.0]), more_samples="--iters")
    for row, ratio in zip(rows, (None, verdict)):
        row.measured = {"device": "cpu", "batch": 1, "forward_ms": 10.0, "step_ms": 30.0, "step_ratio_to_first": 2.0, "step_ratio_p10": 1.9,
                        "step_ratio_p90": 2.1, "precision": ratio.to_dict() if ratio else None, "images_per_s": 33.3, "peak_memory_bytes": 10**8}
    monkeypatch.setenv("COLUMNS", "200")
    _render(rows, True, [])
    out = capsys.readouterr().out
    assert "2.000? (1.900-2.100)" in out and "? not precise (r50: 3 samples, under 10). Try more samples (a larger --iters)." in out


def test_timing_options_without_time_are_refused(cli):
    result = cli("compare", "r18", "--iters", "5")
    assert result.returncode == 2
    assert "--iters applies only to measured timings; add --time." in result.stderr

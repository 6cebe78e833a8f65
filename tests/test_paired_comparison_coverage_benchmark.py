"""benchmarks/paired_comparison_coverage.py: a run of a few draws end to end (the record's structure, every interval
holding its own point estimate, targets only at 200 images), and its coverage floor."""

import json
import math
import sys

import pytest

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import paired_comparison_coverage as benchmark  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))

SUMMARY_KEYS = {
    "population_difference", "coverage", "coverage_mc_standard_error", "draws_with_interval", "point_estimate_inside",
    "no_interval_rate", "mean_interval_width", "mean_difference", "p_value_below_0_05_rate", "draws_with_p_value",
}  # fmt: skip
BINARY_FIGURES = set(benchmark.FIGURES)
MULTI_CLASS_FIGURES = BINARY_FIGURES - {"sensitivity", "specificity"}
TESTED = {"accuracy", "sensitivity", "specificity", "auc"}  # McNemar's and DeLong's p-values


def test_a_run_of_a_few_draws_records_every_setting_and_figure(tmp_path, monkeypatch, capsys):
    output = tmp_path / "coverage.json"
    argv = ["paired_comparison_coverage.py", "--draws", "4", "--population_size", "4000", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads(output.read_text())
    assert record == printed and record["benchmark"] == "paired_comparison_coverage" and not record["quick"]
    assert "paired_comparison_coverage.py" in record["command"] and "--draws 4" in record["command"]
    assert {"date_utc", "platform", "versions", "code"} <= set(record["environment"])
    figures = record["figures"]
    assert figures["setting"]["draws"] == 4 and figures["setting"]["population_size"] == 4000
    assert set(figures["results"]) == set(benchmark.SETTINGS)
    assert set(figures["population_differences"]) == {"2_classes", "4_classes"}
    for setting, by_counts in figures["results"].items():
        assert set(by_counts) == set(benchmark.CLASS_COUNTS)
        for by_figure in by_counts.values():
            assert set(by_figure) == (BINARY_FIGURES if benchmark.SETTINGS[setting][0] == 2 else MULTI_CLASS_FIGURES)
            for name, figure in by_figure.items():
                assert set(figure) == SUMMARY_KEYS
                assert figure["draws_with_interval"] + round(4 * figure["no_interval_rate"]) == 4
                if figure["draws_with_interval"]:
                    assert figure["point_estimate_inside"] == 1.0  # every interval holds its own point estimate
                    assert 0.0 <= figure["coverage"] <= 1.0 and figure["mean_interval_width"] > 0
                assert (figure["draws_with_p_value"] > 0) == (name in TESTED)
    targets = figures["targets"]
    expected = {f"coverage_{setting}_{counts}_counts_{name}" for setting in ("binary_200", "four_class_200")
                for counts in benchmark.CLASS_COUNTS
                for name in (BINARY_FIGURES if setting == "binary_200" else MULTI_CLASS_FIGURES)}  # fmt: skip
    assert set(targets) == expected  # none for the 50-image setting
    for name, entry in targets.items():
        assert set(entry) == {"value", "target", "met", "higher_is_better"}
        assert entry["met"] == (entry["value"] >= entry["target"]) and entry["higher_is_better"]


def test_the_coverage_floor_is_two_monte_carlo_standard_errors_below_095():
    assert benchmark.coverage_floor(400, 0.95) == pytest.approx(0.95 - 2 * math.sqrt(0.95 * 0.05 / 400))
    assert benchmark.coverage_floor(1000) == pytest.approx(0.93622, abs=1e-5)

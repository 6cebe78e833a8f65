"""benchmarks/interval_coverage.py: a run of a few draws end to end (the record's structure, the intervals the library
withholds measured past its guard, targets only where it gives them), its test splits, and its coverage floor."""

import json
import math
import sys

import numpy as np
import pytest

from .conftest import REPO_ROOT, shared_data

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import interval_coverage as benchmark  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))

SUMMARY_KEYS = {
    "population_value", "coverage", "coverage_mc_standard_error", "draws_with_interval",
    "population_below_interval_rate", "population_above_interval_rate", "point_estimate_inside",
    "library_withheld_rate", "no_interval_rate", "mean_interval_width", "mean_estimate",
}  # fmt: skip
GUARDED = {"balanced_accuracy", "macro_f1", "auc"}  # of more than two classes: none under 10 images a class


def test_a_run_of_a_few_draws_records_every_setting_and_figure(tmp_path, monkeypatch, capsys):
    output = tmp_path / "coverage.json"
    argv = ["interval_coverage.py", "--draws", "3", "--population_size", "4000", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads(output.read_text())
    assert record == printed and record["benchmark"] == "interval_coverage" and not record["quick"]
    assert "interval_coverage.py" in record["command"] and "--draws 3" in record["command"]
    assert {"date_utc", "platform", "versions", "code"} <= set(record["environment"])
    figures = record["figures"]
    assert figures["setting"]["draws"] == 3 and figures["setting"]["population_size"] == 4000
    assert set(figures["results"]) == set(figures["population_figures"]) == set(benchmark.SETTINGS)
    expected_targets = set()
    for setting, by_figure in figures["results"].items():
        binary = benchmark.SETTINGS[setting][0] == 2
        few = figures["setting"]["settings"][setting]["least_images_a_class"] < benchmark.MIN_CLASS_IMAGES
        assert set(by_figure) == set(benchmark.BINARY_FIGURES if binary else benchmark.MULTI_CLASS_FIGURES)
        for name, figure in by_figure.items():
            assert set(figure) == SUMMARY_KEYS
            assert figure["population_value"] == figures["population_figures"][setting][name]
            assert figure["draws_with_interval"] + round(3 * figure["no_interval_rate"]) == 3
            withheld = few and not binary and name in GUARDED
            assert figure["library_withheld_rate"] == (1.0 if withheld else 0.0)
            if figure["draws_with_interval"]:
                assert 0.0 <= figure["coverage"] <= 1.0 and figure["mean_interval_width"] > 0
                missed = figure["population_below_interval_rate"] + figure["population_above_interval_rate"]
                assert figure["coverage"] == pytest.approx(1 - missed)
            if not withheld:
                expected_targets.add(f"coverage_{setting}_{name}")
    # a class of one image: no multi-class AUC interval even past the guard (DeLong's needs two of each class)
    assert figures["results"]["ndsb_624"]["auc"]["no_interval_rate"] == 1.0
    assert figures["results"]["ndsb_624"]["balanced_accuracy"]["draws_with_interval"] == 3  # the bootstrap's, unguarded
    targets = figures["targets"]
    assert set(targets) == expected_targets
    assert "coverage_ndsb_624_at_least_10_macro_f1" in targets and "coverage_ndsb_624_macro_f1" not in targets
    for name, entry in targets.items():
        assert set(entry) == {"value", "target", "met", "higher_is_better"}
        assert entry["met"] == (entry["value"] >= entry["target"]) and entry["higher_is_better"]


def test_the_test_splits_share_624_images_as_ndsbs_classes_with_every_class_at_least_one():
    counts = benchmark.class_counts("ndsb_624")
    assert len(counts) == 121 and counts.sum() == 624 and counts.min() == 1 and (counts == 1).sum() == 46
    assert np.all(np.diff(counts) <= 0)  # in the order of the class sizes, largest first
    assert benchmark.class_counts("ndsb_624_at_least_5").min() == 5
    assert benchmark.class_counts("ndsb_624_at_least_10").min() == 10
    assert benchmark.class_counts("ten_classes_5_each").tolist() == [5] * 10
    assert benchmark.class_counts("binary_200").tolist() == [120, 80]


def test_the_ndsb_class_sizes_are_the_files_of_its_class_folders():
    train = shared_data("ndsb2015_plankton", "train")
    sizes = sorted((sum(1 for f in folder.iterdir() if f.is_file()) for folder in train.iterdir()), reverse=True)
    assert tuple(sizes) == benchmark.NDSB_CLASS_SIZES


def test_the_unguarded_interval_is_the_librarys_where_the_library_gives_one():
    counts = benchmark.class_counts("ten_classes_10_each")
    labels, probabilities = benchmark.draw(counts, np.random.default_rng(0))
    metrics, intervals = benchmark.evaluated(labels, probabilities)
    for name in GUARDED:
        assert intervals[name] is not None and not benchmark.withheld(intervals, name)
        assert benchmark.unguarded_interval(name, metrics, labels, probabilities, {}) == intervals[name]
    few = labels != 0
    few[np.flatnonzero(labels == 0)[:9]] = True  # class 0 down to 9 images: withheld
    metrics, intervals = benchmark.evaluated(labels[few], probabilities[few])
    assert all(benchmark.withheld(intervals, name) for name in GUARDED)
    assert not benchmark.withheld(intervals, "accuracy")


def test_the_coverage_floor_is_two_monte_carlo_standard_errors_below_095():
    assert benchmark.coverage_floor(400, 0.95) == pytest.approx(0.95 - 2 * math.sqrt(0.95 * 0.05 / 400))
    assert benchmark.coverage_floor(400, 0.95) == pytest.approx(0.92821, abs=1e-5)

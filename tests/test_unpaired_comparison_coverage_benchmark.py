"""benchmarks/unpaired_comparison_coverage.py: a run of a few draws end to end (the record's structure, every interval
holding its own point estimate, targets only in the 200-image settings)."""

import json
import sys

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import unpaired_comparison_coverage as benchmark  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))

BINARY_FIGURES = set(benchmark.FIGURES)
MULTI_CLASS_FIGURES = BINARY_FIGURES - {"sensitivity", "specificity"}
TESTED = {"accuracy", "sensitivity", "specificity", "auc"}  # Fisher's and DeLong's p-values


def test_a_run_of_a_few_draws_records_every_setting_and_figure(tmp_path, monkeypatch, capsys):
    output = tmp_path / "coverage.json"
    argv = ["unpaired_comparison_coverage.py", "--draws", "4", "--population_size", "4000", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    record = json.loads(output.read_text())
    assert record == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["benchmark"] == "unpaired_comparison_coverage" and "--draws 4" in record["command"]
    figures = record["figures"]
    assert set(figures["results"]) == set(benchmark.SETTINGS)
    for setting, by_counts in figures["results"].items():
        assert set(by_counts) == set(benchmark.CLASS_COUNTS)
        for by_figure in by_counts.values():
            assert set(by_figure) == (BINARY_FIGURES if benchmark.SETTINGS[setting][0] == 2 else MULTI_CLASS_FIGURES)
            for name, figure in by_figure.items():
                assert figure["draws_with_interval"] + round(4 * figure["no_interval_rate"]) == 4
                if figure["draws_with_interval"]:
                    assert figure["point_estimate_inside"] == 1.0  # every interval holds its own point estimate
                assert (figure["draws_with_p_value"] > 0) == (name in TESTED)
    expected = {f"coverage_{setting}_{counts}_counts_{name}" for setting in benchmark.TARGETED
                for counts in benchmark.CLASS_COUNTS
                for name in (BINARY_FIGURES if setting == "binary_200" else MULTI_CLASS_FIGURES)}  # fmt: skip
    assert set(figures["targets"]) == expected  # none for the 50-image settings

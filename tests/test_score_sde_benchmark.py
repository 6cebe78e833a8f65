"""benchmarks/score_sde_bench_elbo_settings.py: its accounting of accuracy, AUC and decisions changed by the noise seed
(on a stand-in pipeline), and one quick run end to end on a tiny binary set."""

import argparse
import contextlib
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion_classifiers.data import LabeledImages

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import score_sde_bench_elbo_settings  # noqa: E402
import score_sde_bench_likelihood  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


class SeededRatios:
    """A binary pipeline whose log-likelihood ratio is fixed per noise seed."""

    class_names = ["normal", "pneumonia"]

    def __init__(self, ratios_by_seed):
        self.ratios_by_seed = ratios_by_seed

    def positive_index(self):
        return 1

    def reading_preprocessed_images(self):  # the benchmark scores images it has read already
        return contextlib.nullcontext()

    def __call__(self, images, seed, **kwargs):
        ratio = torch.tensor(self.ratios_by_seed[seed], dtype=torch.float64)
        return SimpleNamespace(
            label_ids=(ratio > 0).long(), log_likelihood_ratio=ratio, log_likelihoods=torch.stack([-ratio, ratio], 1),
            nfe_per_image=torch.full((len(ratio),), 2 * kwargs["num_timesteps"]),
            log_likelihood_ratio_stderr=torch.full((len(ratio),), 0.5, dtype=torch.float64),
        )  # fmt: skip


def test_decisions_changed_accuracy_and_auc_are_counted_per_seed():
    val = LabeledImages(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 1, 1]), ["normal", "pneumonia"])
    pipe = SeededRatios({0: [-2.0, -1.0, 1.0, 2.0], 1: [-2.0, 0.5, 1.0, -0.5], 2: [1.0, -1.0, 2.0, 3.0]})
    args = argparse.Namespace(num_timesteps=5, noise_seeds=[0, 1, 2], batch_size=8)
    row = score_sde_bench_elbo_settings.scored_over_seeds(pipe, val, "uniform", "even", args)
    assert row["accuracy_per_seed"] == [1.0, 0.5, 0.75]
    assert row["decisions_changed_vs_first_seed"] == [2, 1]
    assert row["auc_per_seed"] == [1.0, 0.75, 1.0]  # seed 1: 3 of 4 (pneumonia, normal) pairs ranked right
    assert row["nfe_per_image"] == 10.0
    ratios = np.array(list(pipe.ratios_by_seed.values()))
    assert row["median_score_sd_over_seeds"] == float(np.median(ratios.std(0, ddof=1)))
    assert row["stderr_over_seed_spread"] == pytest.approx(0.5 / np.sqrt(ratios.var(0, ddof=1).mean()))
    # seed pairs (0, 1), (0, 2), (1, 2) change the ratios by [0, 1.5, 0, 2.5], [3, 0, 1, 1], [3, 1.5, 1, 3.5]: 6 of 12
    # within 2 sqrt(0.5^2 + 0.5^2) = 1.41
    assert row["stderr_two_sigma_coverage"] == 0.5


def test_a_quick_run_scores_every_pair_on_every_seed(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20).astype(np.uint8)[:, None]
    arrays = {f"{split}_{kind}": value for split in ("train", "val", "test") for kind, value in
              (("images", rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)), ("labels", labels))}  # fmt: skip
    np.savez(tmp_path / "tiny.npz", **arrays)
    argv = ["score_sde_bench_elbo_settings.py", "--quick", "--data", str(tmp_path / "tiny.npz"), "--noise_seeds", "3", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    score_sde_bench_elbo_settings.main()
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["figures"]
    assert sorted(figures["pairs"]) == ["elbo/even", "elbo/log_snr", "uniform/even", "uniform/log_snr"]
    for row in figures["pairs"].values():  # the same seed twice: the same decisions and scores
        assert row["decisions_changed_vs_first_seed"] == [0] and row["median_score_sd_over_seeds"] == 0.0
        assert row["stderr_over_seed_spread"] is None  # no spread to compare with
        assert row["stderr_two_sigma_coverage"] == 1.0  # no change at all
        assert row["accuracy_per_seed"][0] == row["accuracy_per_seed"][1] and len(row["auc_per_seed"]) == 2
    assert figures["setting"]["val_images"] == 20 and figures["best_pair"] in figures["pairs"]


def test_targets_read_the_default_pair_against_the_best_and_the_worst_standard_error_factor_and_coverage():
    pairs = {
        "uniform/even": {"auc_mean": 0.990, "stderr_over_seed_spread": 0.5, "stderr_two_sigma_coverage": 0.97},
        "elbo/even": {"auc_mean": 0.975, "stderr_over_seed_spread": 1.2, "stderr_two_sigma_coverage": 0.85},
    }
    targets = score_sde_bench_elbo_settings.targets(pairs, "auc_mean")
    assert targets["default_pair_auc_mean_loss_vs_best_points"]["value"] == pytest.approx(1.5)
    assert targets["default_pair_auc_mean_loss_vs_best_points"]["met"] is False
    assert targets["stderr_worst_factor_from_seed_spread"] == {
        "value": 2.0, "target": 1.5, "met": False, "higher_is_better": False,
    }  # fmt: skip
    assert targets["stderr_worst_two_sigma_coverage"] == {"value": 0.85, "target": 0.9, "met": False, "higher_is_better": True}
    multiclass = score_sde_bench_elbo_settings.targets({"elbo/even": {"accuracy_mean": 0.8}}, "accuracy_mean")
    assert list(multiclass) == ["default_pair_accuracy_mean_loss_vs_best_points"]  # no standard error for K > 2


def test_fast_steps_are_the_fewest_from_which_on_every_count_is_within_the_bound():
    # the errors measured on the tiny U-Net (results/score_sde_bench_likelihood.json): 40 steps within 0.0075 by
    # luck, 48 not; the fewest count within the bound would pick 40
    errors = {16: 0.035, 24: 0.019, 32: 0.0092, 40: 0.0074, 48: 0.0144, 56: 0.006, 64: 0.005, 80: 0.004}
    table = {steps: {"max": error} for steps, error in errors.items()}
    assert score_sde_bench_likelihood.settled_steps(table, 0.0075) == 56
    table[80]["max"] = 0.008  # the most steps off: the most accurate count
    assert score_sde_bench_likelihood.settled_steps(table, 0.0075) == 64

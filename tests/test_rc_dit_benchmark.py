"""benchmarks/rc_dit_accuracy.py's bookkeeping: targets over the best of several contrastive baselines, records
of earlier runs (one baseline) still merge, and reused baseline features are found or refused. No training."""

import json
import sys

import pytest
import torch

from diffusion_classifiers.data import LabeledImages

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import rc_dit_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


def margins(simclr: float, dino: float) -> dict:
    floors = {floor: {"label_free_accuracy": 1.0} for floor in rc_dit_accuracy.FLOORS}
    return {
        "simclr": {"label_free_accuracy": simclr, "label_free_macro_f1": simclr},
        "dino": {"label_free_accuracy": dino, "label_free_macro_f1": dino},
        **floors,
    }


def test_targets_read_the_margin_over_the_best_baseline():
    results = {"pneumoniamnist": {"margin_points": margins(simclr=14.0, dino=7.0)}}
    targets = rc_dit_accuracy.targets(results, ["simclr", "dino"])
    assert targets["pneumoniamnist_label_free_accuracy_margin_over_best_contrastive_points"] == {
        "value": 7.0, "target": 6.0, "met": True, "higher_is_better": True,
    }  # fmt: skip
    assert targets["pneumoniamnist_label_free_macro_f1_margin_over_best_contrastive_points"]["met"] is False
    only_simclr = rc_dit_accuracy.targets(results, ["simclr"])
    assert only_simclr["pneumoniamnist_label_free_macro_f1_margin_over_best_contrastive_points"]["value"] == 14.0


def record(path, seed: int, budget: dict, simclr: float, dino=None) -> str:
    margin = margins(simclr, dino if dino is not None else simclr)
    if dino is None:
        del margin["dino"]
    headline = {source: {"label_free_accuracy": 0.5} for source in ["rc_dit", *margin]}
    dataset = {"headline": headline, "margin_points": margin}
    figures = {"budget": budget, "seed": seed, "datasets": {"pneumoniamnist": dataset}, "total_wall_seconds": 1.0}
    path.write_text(json.dumps({"command": "python x", "environment": {"date_utc": "now"}, "figures": figures}))
    return str(path)


def test_runs_recorded_with_one_baseline_still_merge(tmp_path):
    old = {"optimizer_steps": 1500, "baseline": "simclr"}
    paths = [record(tmp_path / f"{seed}.json", seed, old, simclr=2.0 + seed) for seed in (0, 1, 2)]
    merged = rc_dit_accuracy.merge_runs(paths)
    assert merged["targets"]["pneumoniamnist_label_free_accuracy_margin_over_best_contrastive_points"]["value"] == 3.0
    both = {"optimizer_steps": 1500, "baselines": ["simclr", "dino"]}
    paths = [record(tmp_path / f"b{seed}.json", seed, both, simclr=9.0, dino=1.0 * seed) for seed in (0, 1, 2)]
    merged = rc_dit_accuracy.merge_runs(paths)
    assert merged["targets"]["pneumoniamnist_label_free_accuracy_margin_over_best_contrastive_points"]["value"] == 1.0


def test_reused_baseline_features_are_found_or_refused_naming_the_files(tmp_path):
    def split(labels):
        return LabeledImages(torch.zeros(4, 1, 2, 2), torch.tensor(labels), ["a", "b"])

    splits = {name: split([0, 1, 0, 1]) for name in ("train", "val", "test")}
    features = {name: torch.arange(8.0).reshape(4, 2) for name in splits}
    simclr = rc_dit_accuracy.BASELINES["simclr"]
    rc_dit_accuracy.save_features(tmp_path / "data_simclr.safetensors", features, splits, simclr)
    reused = rc_dit_accuracy.reused_baseline_features(str(tmp_path), "data", ["simclr", "dino"], splits)
    assert list(reused) == ["simclr"] and torch.equal(reused["simclr"]["val"], features["val"])
    with pytest.raises(FileNotFoundError, match=r"expected one of .*other_simclr.safetensors, .*other_dino.safetensors"):
        rc_dit_accuracy.reused_baseline_features(str(tmp_path), "other", ["simclr", "dino"], splits)
    shuffled = {**splits, "test": split([1, 0, 0, 1])}
    with pytest.raises(ValueError, match="holds other test images than this run's test split"):
        rc_dit_accuracy.reused_baseline_features(str(tmp_path), "data", ["simclr"], shuffled)


def test_reused_baseline_features_must_record_the_baselines_objective(tmp_path):
    splits = {name: LabeledImages(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), ["a", "b"]) for name in "abc"}
    features = {name: torch.ones(2, 3) for name in splits}
    rc_dit_accuracy.save_features(tmp_path / "data_dino.safetensors", features, splits, ("dino", {"readout": "pooler"}))
    rc_dit_accuracy.save_features(tmp_path / "data_simclr.safetensors", features, splits)  # no objective recorded
    with pytest.raises(ValueError, match=r"data_dino.safetensors holds features of the objective .*pooler.*, expected "):
        rc_dit_accuracy.reused_baseline_features(str(tmp_path), "data", ["dino"], splits)
    with pytest.raises(ValueError, match="data_simclr.safetensors records no objective"):
        rc_dit_accuracy.reused_baseline_features(str(tmp_path), "data", ["simclr"], splits)


def test_quick_keeps_the_encoder_sizes_given(monkeypatch):
    """QA: --quick replaced the encoder sizes given without a word; only those not given take quick's."""
    monkeypatch.setattr(sys, "argv", ["rc_dit_accuracy.py", "--quick", "--encoder_hidden_size", "48"])
    args = rc_dit_accuracy.parse_args()
    assert (args.encoder_hidden_size, args.encoder_num_layers, args.encoder_num_heads) == (48, 2, 2)
    monkeypatch.setattr(sys, "argv", ["rc_dit_accuracy.py", "--encoder_num_layers", "6"])
    args = rc_dit_accuracy.parse_args()
    assert (args.encoder_hidden_size, args.encoder_num_layers, args.encoder_num_heads) == (128, 6, 4)

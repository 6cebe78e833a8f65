"""A Score-SDE operating point whose probability rounds to 0 or 1 decides per-scan groups by their gathered
log-likelihood ratio (QA, a mammography group: aggregate refused 2 of the 3 points they chose on val, probabilities
of 1.2e-7 and 2.0e-7, "too near 0 or 1 for groups gathering probabilities to be decided at it")."""

import csv
import json
import math

import numpy as np
import pytest
from diffusers import DDPMScheduler
from PIL import Image

from diffusion_classifiers import ScoreSDEClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.prediction.aggregate import aggregate_predictions

from .test_readme import small_unet

PRIOR = 1e-8  # of pneumonia: every image's log-odds about -18.4 plus its ratio, probabilities far below 1e-4


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _model_and_listing(tmp_path, scan_of) -> None:
    """A tiny binary Score-SDE pipeline (positive class pneumonia) in `tmp_path / "sde"` and 16 random 8x8 images
    listed with their labels and scans (`scan_of(index)`) in `tmp_path / "list.csv"`."""
    ScoreSDEClassifierPipeline(small_unet(8, num_class_embeds=2), DDPMScheduler(), class_names=["normal", "pneumonia"],
                               positive_class="pneumonia").save_pretrained(tmp_path / "sde")  # fmt: skip
    rng = np.random.default_rng(0)
    listing = [["path", "label", "scan"]]
    for index in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        listing.append([f"{index}.png", ["normal", "pneumonia"][index % 2], scan_of(index)])
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(listing)


def _predict_call(tmp_path, prior: float) -> list:
    return ["predict", "--model_dir", str(tmp_path / "sde"), "--input", str(tmp_path / "list.csv"), "--no_progress_bar",
            "--pipeline_kwargs", json.dumps({"priors": {"normal": 1 - prior, "pneumonia": prior}})]


def test_groups_are_decided_at_a_saturated_point_by_their_largest_ratio(tmp_path):
    _model_and_listing(tmp_path, lambda index: f"scan{index % 2}{index // 4}")  # two images of one class a scan
    call = _predict_call(tmp_path, PRIOR)
    main([*call, "--output", str(tmp_path / "first.csv")])
    prior_log_ratio = math.log(PRIOR / (1 - PRIOR))
    log_odds = sorted(float(row["log_likelihood_ratio"]) + prior_log_ratio for row in _rows(tmp_path / "first.csv"))
    point = (log_odds[7] + log_odds[8]) / 2  # half the images on each side
    threshold = 1 / (1 + math.exp(-point))
    assert threshold < 1e-4  # the premise: a point probabilities cannot decide at
    main([*call, "--output", str(tmp_path / "at_point.csv"), "--threshold", repr(threshold)])
    rows = _rows(tmp_path / "at_point.csv")
    assert 0 < sum(row["label"] == "pneumonia" for row in rows) < len(rows)
    columns, groups, metrics = aggregate_predictions(tmp_path / "at_point.csv", by="scan")  # predict's point
    labelled = {row[columns.index("scan")]: row[columns.index("label")] for row in groups}
    for scan, label in labelled.items():  # positive where any of its images is, as predict labelled them
        members = [row for row in rows if row["scan"] == scan]
        assert (label == "pneumonia") == any(row["label"] == "pneumonia" for row in members), scan
    assert 0 < list(labelled.values()).count("pneumonia") < len(labelled)
    with pytest.raises(ValueError, match="too near 0 or 1 .* --rule max"):
        aggregate_predictions(tmp_path / "at_point.csv", by="scan", rule="mean")


def test_a_point_at_an_images_own_log_odds_decides_its_group_as_predict_does(tmp_path):
    """evaluate --target_sensitivity puts a point exactly at a positive image's log-odds: the group of that image must
    be positive as predict labels the image (review: the priors' log-ratio taken as math.log(p / q) fell one ulp
    below the pipeline's torch.log(p) - torch.log(q) for this image, and its group read negative)."""
    import torch

    prior = 1.8e-7
    _model_and_listing(tmp_path, lambda index: f"scan{index}")  # one image a group
    call = _predict_call(tmp_path, prior)
    main([*call, "--output", str(tmp_path / "first.csv")])
    log_prior = torch.tensor([1 - prior, prior], dtype=torch.float64).log()
    ratios = [float(row["log_likelihood_ratio"]) for row in _rows(tmp_path / "first.csv")]
    exact = [ratio + float(log_prior[1] - log_prior[0]) for ratio in ratios]  # as the pipeline adds them
    naive = [ratio + math.log(prior / (1 - prior)) for ratio in ratios]
    at = next(index for index in range(16) if naive[index] < exact[index])  # the premise: an image rounding apart
    point = {"threshold": 1 / (1 + math.exp(-exact[at])), "log_odds": exact[at]}
    (tmp_path / "metrics.json").write_text(json.dumps({"positive_class": "pneumonia", "operating_point": point}))
    main([*call, "--output", str(tmp_path / "at_point.csv"), "--threshold", str(tmp_path / "metrics.json")])
    rows = _rows(tmp_path / "at_point.csv")
    assert rows[at]["label"] == "pneumonia"
    columns, groups, _ = aggregate_predictions(tmp_path / "at_point.csv", by="scan")
    labelled = {row[columns.index("scan")]: row[columns.index("label")] for row in groups}
    assert all(labelled[row["scan"]] == row["label"] for row in rows)

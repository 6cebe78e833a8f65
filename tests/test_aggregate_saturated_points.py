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


def test_groups_are_decided_at_a_saturated_point_by_their_largest_ratio(tmp_path):
    ScoreSDEClassifierPipeline(small_unet(8, num_class_embeds=2), DDPMScheduler(), class_names=["normal", "pneumonia"],
                               positive_class="pneumonia").save_pretrained(tmp_path / "sde")  # fmt: skip
    rng = np.random.default_rng(0)
    listing = [["path", "label", "scan"]]
    for index in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        listing.append([f"{index}.png", ["normal", "pneumonia"][index % 2], f"scan{index % 2}{index // 4}"])
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(listing)
    call = ["predict", "--model_dir", str(tmp_path / "sde"), "--input", str(tmp_path / "list.csv"), "--no_progress_bar",
            "--pipeline_kwargs", json.dumps({"priors": {"normal": 1 - PRIOR, "pneumonia": PRIOR}})]  # fmt: skip
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

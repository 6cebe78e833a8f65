"""Two models compared image by image (`diffusion-classifiers compare`, `paired_statistics`): asked for by the
biostatistician persona of session 60, who paired two evaluations' `image_predictions.csv` by hand to test whether
one model beats another on the same images (McNemar, DeLong's paired test, a bootstrap of the difference)."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from sklearn import metrics as skm
from sklearn.datasets import load_digits

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.confidence_intervals import delong_auc_interval
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.data.split_record import save_split_record
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.paired_statistics import mcnemar_test, paired_auc_difference, paired_figures
from diffusion_classifiers.prediction.comparison import compare_predictions, render_comparison
from diffusion_classifiers.probing import fit_probe_grid


def _brute_force_delong(is_positive, scores_a, scores_b):
    """DeLong et al.'s (1988) variance of AUC_b - AUC_a from the kernel psi(x, y) over every (positive, negative)
    pair: an O(mn) implementation of the paper's formulas, independent of the library's midranks."""

    def components(scores):
        positives, negatives = scores[is_positive], scores[~is_positive]
        psi = (positives[:, None] > negatives[None]) + 0.5 * (positives[:, None] == negatives[None])
        return psi.mean(1), psi.mean(0)

    (v10_a, v01_a), (v10_b, v01_b) = components(scores_a), components(scores_b)
    s10, s01 = np.cov(np.stack([v10_a, v10_b])), np.cov(np.stack([v01_a, v01_b]))
    contrast = np.array([-1.0, 1.0])
    variance = contrast @ s10 @ contrast / is_positive.sum() + contrast @ s01 @ contrast / (~is_positive).sum()
    return v10_b.mean() - v10_a.mean(), variance


def test_paired_auc_difference_is_delongs():
    rng = np.random.default_rng(0)
    is_positive = rng.random(300) < 0.4
    scores_a = is_positive + rng.normal(0, 1, 300)
    scores_b = is_positive + 0.5 * (scores_a - is_positive) + rng.normal(0, 0.8, 300)  # correlated with A's
    scores_b[:20] = np.round(scores_b[:20])  # some ties
    result = paired_auc_difference(is_positive, scores_a, scores_b)
    difference, variance = _brute_force_delong(is_positive, scores_a, scores_b)
    assert result["auc_a"] == pytest.approx(skm.roc_auc_score(is_positive, scores_a), abs=1e-12)
    assert result["difference"] == pytest.approx(difference, abs=1e-12)
    z = difference / math.sqrt(variance)
    assert result["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    half_width = 1.959963984540054 * math.sqrt(variance)
    assert result["interval"] == pytest.approx([difference - half_width, difference + half_width], rel=1e-9)
    # one model alone: the difference's variance is DeLong's of its own AUC, so the paired interval has its width
    alone = paired_auc_difference(is_positive, np.zeros(300), scores_a)
    low, high = delong_auc_interval(is_positive, scores_a)
    assert alone["interval"][1] - alone["interval"][0] == pytest.approx(high - low, rel=1e-9)
    same = paired_auc_difference(is_positive, scores_a, np.exp(scores_a))  # the same ranking
    assert same["difference"] == 0 and same["interval"] is None and same["p_value"] is None
    assert paired_auc_difference(np.r_[True, is_positive[:5] & False], scores_a[:6], scores_b[:6]) is None  # 1 positive


def test_multi_class_paired_auc_difference_is_the_average_of_delongs():
    """Three classes: the difference of the average one-against-the-rest AUCs, its variance that of the average of
    the classes' paired influences (with class sizes held fixed, the classes' AUCs are not independent)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 240)
    scores_a, scores_b = (rng.random((240, 3)) + np.eye(3)[labels] * strength for strength in (0.5, 0.3))
    result = paired_auc_difference(labels, scores_a, scores_b)
    expected = [skm.roc_auc_score(labels == k, scores_b[:, k]) - skm.roc_auc_score(labels == k, scores_a[:, k])
                for k in range(3)]  # fmt: skip
    assert result["difference"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert result["interval"][1] < 0 and result["p_value"] < 1e-3  # B's classes are weaker: a clear difference


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images():
    correct_a = np.array([True] * 30 + [False] * 10 + [True] * 7 + [False] * 3)
    correct_b = np.array([True] * 30 + [True] * 10 + [False] * 7 + [False] * 3)  # 10 only B right, 7 only A right
    tested = mcnemar_test(correct_a, correct_b)
    tail = sum(math.comb(17, k) for k in range(0, 8)) / 2**17  # P(X <= 7), X ~ Bin(17, 1/2); two-sided: doubled
    assert (tested["only_a_correct"], tested["only_b_correct"]) == (7, 10)
    assert tested["p_value"] == pytest.approx(2 * tail, rel=1e-12) and tested["difference"] == pytest.approx(3 / 50)
    assert mcnemar_test(correct_a, correct_a)["p_value"] == 1.0


def test_paired_figures_and_their_bootstrap():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 400)
    pred_a = np.where(rng.random(400) < 0.75, y_true, 1 - y_true)
    pred_b = np.where(rng.random(400) < 0.85, y_true, 1 - y_true)
    scores = rng.random(400), rng.random(400)
    result = paired_figures(y_true, pred_a, pred_b, *scores, num_classes=2, positive_label=1)
    figures = result["figures"]
    for name, score in (("accuracy", skm.accuracy_score), ("balanced_accuracy", skm.balanced_accuracy_score),
                        ("macro_f1", lambda t, p: skm.f1_score(t, p, average="macro"))):  # fmt: skip
        assert figures[name]["a"] == pytest.approx(score(y_true, pred_a), abs=1e-12)
        assert figures[name]["difference"] == pytest.approx(score(y_true, pred_b) - score(y_true, pred_a), abs=1e-12)
        low, high = figures[name]["interval"]
        assert low < figures[name]["difference"] < high and 0 < low  # B is right on about 40 more images of 400
    assert figures["sensitivity"]["b"] == pytest.approx(skm.recall_score(y_true, pred_b), abs=1e-12)
    assert figures["specificity"]["a"] == pytest.approx(skm.recall_score(1 - y_true, 1 - pred_a), abs=1e-12)
    assert figures["accuracy"]["p_value"] == mcnemar_test(pred_a == y_true, pred_b == y_true)["p_value"] < 0.05
    assert "McNemar" in result["methods"]["accuracy"]
    positives = y_true == 1
    tested = mcnemar_test(pred_a[positives] == 1, pred_b[positives] == 1)
    assert figures["sensitivity"]["p_value"] == tested["p_value"]
    assert paired_figures(y_true, pred_a, pred_b, *scores, num_classes=2, positive_label=1) == result  # seeded
    alike = paired_figures(y_true, pred_a, pred_a, *scores, num_classes=2, positive_label=1)["figures"]["accuracy"]
    assert alike["difference"] == 0 and alike["interval"] is None and alike["p_value"] == 1.0
    few = paired_figures(y_true[:12], pred_a[:12], pred_b[:12], scores[0][:12], scores[1][:12], 2, positive_label=1)
    assert few["figures"]["macro_f1"]["interval"] is None and "fewer than 10 images" in few["methods"]["macro_f1"]


def _pair_folder(root, digits=(3, 8), per_class=90):
    """Two digits as an image folder (three/, eight/) of 8x8 PNGs: harder to tell apart than 0 and 1."""
    data, names = load_digits(), {3: "three", 8: "eight"}
    for digit in digits:
        (root / names[digit]).mkdir(parents=True)
        for index in np.flatnonzero(data.target == digit)[:per_class]:
            Image.fromarray((data.images[index] * 15).astype(np.uint8)).save(root / names[digit] / f"{index:04d}.png")


@pytest.fixture(scope="module")
def two_evaluations(tmp_path_factory):
    """Two classifiers of one untrained tiny U-Net, probed at t = 20 (A) and t = 600 (B, noisier features), each
    evaluated on the test split of the folder they were carved from: their output folders."""
    root = tmp_path_factory.mktemp("compare")
    _pair_folder(root / "data")
    splits = load_image_classification_data(str(root / "data"), image_size=8, seed=0)
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8))
    for name, timestep in (("A", 20), ("B", 600)):
        preprocessing = splits["train"].preprocessing
        pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), preprocessing=preprocessing)
        features = {split: pipe.extract_features(splits[split].images, ["mid_block"], [timestep])
                    for split in ("train", "val")}  # fmt: skip
        probe = fit_probe_grid(features["train"], splits["train"].labels, features["val"], splits["val"].labels,
                               class_names=splits["train"].class_names)  # fmt: skip
        pipe.register_modules(head=probe.head)
        pipe.set_positive_class("eight")
        pipe.save_pretrained(root / f"model_{name}")
        save_split_record(root / f"model_{name}", 0.1, 0.2, 0, None, train_images=splits["train"].images)
        main(["evaluate", "--model_dir", str(root / f"model_{name}"), "--dataset", str(root / "data"),
              "--output_dir", str(root / name)])  # fmt: skip
    return root


def test_two_evaluations_compared_reproduce_each_ones_metrics(two_evaluations, tmp_path, capsys):
    root = two_evaluations
    main(["compare", str(root / "A"), str(root / "B" / "image_predictions.csv"), "--output", str(tmp_path / "c.json")])
    comparison = json.loads((tmp_path / "c.json").read_text())
    report = capsys.readouterr().out
    metrics = {name: json.loads((root / name / "metrics.json").read_text()) for name in "AB"}
    assert comparison["num_paired"] == metrics["A"]["num_samples"] and comparison["paired_by"] == "path"
    assert comparison["positive_class"] == "eight"
    for figure in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "auc"):
        for side in "ab":
            assert comparison["figures"][figure][side] == pytest.approx(metrics[side.upper()][figure], abs=1e-9)
    for figure in ("brier", "log_loss"):  # from the rows' float32 probabilities, as evaluate scored them
        for side in "ab":
            recorded = metrics[side.upper()]["calibration"][figure]
            assert comparison["figures"][figure][side] == pytest.approx(recorded, rel=1e-5, abs=1e-7)
    assert metrics["A"]["accuracy"] != metrics["B"]["accuracy"]  # the premise: two models that differ
    assert "| Accuracy |" in report and "McNemar" in report and "DeLong" in report
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["compare", str(root / "A"), str(root / "B"), "--output", str(tmp_path / "c.json")])
    main(["compare", str(root / "A"), str(root / "B"), "--output", str(tmp_path / "new" / "c.json")])  # made
    assert json.loads((tmp_path / "new" / "c.json").read_text())["figures"] == comparison["figures"]
    # QA (a mammography group): which side decided at an operating point is said, and recorded
    main(["evaluate", "--model_dir", str(root / "model_B"), "--dataset", str(root / "data"), "--output_dir",
          str(tmp_path / "B_point"), "--target_sensitivity", "1.0"])  # fmt: skip
    capsys.readouterr()
    at_point = compare_predictions(root / "A", tmp_path / "B_point")
    point = json.loads((tmp_path / "B_point" / "metrics.json").read_text())["operating_point"]
    assert at_point["b"]["operating_point"] == point and "operating_point" not in at_point["a"]
    assert f"Decisions: A at each image's most probable class; B at the threshold {point['threshold']!r} its" in \
        render_comparison(at_point)  # fmt: skip
    assert at_point["b"]["pipeline_call"] == metrics["B"].get("pipeline_call")


def _edited_copy(source, target, edit):
    """A copy of an evaluation's folder whose image_predictions.csv rows are `edit(rows)`."""
    shutil.copytree(source, target)
    with open(target / "image_predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    with open(target / "image_predictions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(edit(rows))
    return target


def test_images_that_differ_are_refused_unless_asked(two_evaluations, tmp_path):
    root = two_evaluations
    fewer = _edited_copy(root / "B", tmp_path / "fewer", lambda rows: rows[:-3])
    with pytest.raises(ValueError, match=r"different images: 3 only in A .* --common_images_only"):
        compare_predictions(root / "A", fewer)
    compared = compare_predictions(root / "A", fewer, common_images_only=True)
    assert compared["left_out"]["only_in_a"] == 3 and compared["num_paired"] == compared["a"]["num_rows"] - 3
    relabelled = _edited_copy(root / "B", tmp_path / "relabelled",
                              lambda rows: [rows[0], [*rows[1][:3], "three" if rows[1][3] == "eight" else "eight",
                                                      *rows[1][4:]], *rows[2:]])  # fmt: skip
    with pytest.raises(ValueError, match=r"give other true labels for 1 of the \d+ paired images"):
        compare_predictions(root / "A", relabelled)


def _without_paths(rows):
    return [rows[0]] + [[row[0], "", *row[2:]] for row in rows[1:]]


def test_positions_pair_only_splits_carved_alike(two_evaluations, tmp_path):
    root = two_evaluations
    by_position = compare_predictions(root / "A", root / "B", pair_by="image")
    assert by_position["figures"] == compare_predictions(root / "A", root / "B")["figures"]
    other = _edited_copy(root / "B", tmp_path / "other", lambda rows: rows)
    metrics = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps(metrics | {"carving": {**metrics["carving"], "seed": 1}}))
    with pytest.raises(ValueError, match="'seed': 1.* the same position names other images"):
        compare_predictions(root / "A", other, pair_by="image")
    (other / "metrics.json").write_text(json.dumps(metrics | {"split": "val"}))
    with pytest.raises(ValueError, match="'split': 'val'.* the same position names other images"):
        compare_predictions(root / "A", other, pair_by="image")
    (other / "metrics.json").unlink()
    with pytest.raises(ValueError, match="no evaluate metrics.json beside its rows"):
        compare_predictions(root / "A", other, pair_by="image")
    no_paths = _edited_copy(root / "B", tmp_path / "no_paths", _without_paths)
    with pytest.raises(ValueError, match=r"rows have no path .*--pair_by image"):
        compare_predictions(root / "A", no_paths)
    with pytest.raises(FileNotFoundError, match="expected an evaluate output folder"):
        compare_predictions(root / "A", tmp_path)


def test_outputs_a_killed_run_left_are_read_or_named_for_what_they_are(two_evaluations, tmp_path):
    """QA (operations): an evaluate --overwrite_output_dir killed mid-write left its earlier report set aside, and
    compare called the folder no evaluate output; a killed predict --overwrite's output (its earlier one in
    OUTPUT.replaced/) and a missing file were named alike."""
    import subprocess
    import sys

    root = two_evaluations
    killed = tmp_path / "killed"
    shutil.copytree(root / "B", killed)
    replacing_and_killed = (
        "import os, sys; from diffusion_classifiers.replaced_reports import replacing_earlier_report\n"
        "with replacing_earlier_report(sys.argv[1], files=['image_predictions.csv', 'report.md']):\n"
        "    open(os.path.join(sys.argv[1], 'report.md'), 'w').write('half')\n"
        "    os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", replacing_and_killed, str(killed)], check=False)
    assert not (killed / "image_predictions.csv").exists()
    compared, expected = compare_predictions(root / "A", killed), compare_predictions(root / "A", root / "B")
    assert {**compared, "b": {**compared["b"], "source": None}} == {**expected, "b": {**expected["b"], "source": None}}
    assert (killed / "image_predictions.csv").is_file() and (killed / "report.md").read_text() != "half"

    with pytest.raises(FileNotFoundError, match=r"\.csv / \.parquet file of evaluate's or predict's rows; not found"):
        compare_predictions(root / "A", tmp_path / "missing.csv")
    (tmp_path / "p.csv.parts").mkdir()
    (tmp_path / "p.csv.replaced").mkdir()
    with pytest.raises(ValueError, match=r"p.csv: its predict run has not finished .* finish it first; the prediction "
                                         r"it replaces is kept in .*p.csv.replaced/ until then"):  # fmt: skip
        compare_predictions(root / "A", tmp_path / "p.csv")


def test_a_predict_output_of_labelled_files_pairs_with_an_evaluation(two_evaluations, tmp_path):
    """B predicted over a labelled CSV of A's test images (paths relative to the CSV's folder, as evaluate names
    them relative to the data folder): the same comparison as of B's evaluation."""
    root = two_evaluations
    with open(root / "A" / "image_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    listing = root / "data" / "test_images.csv"
    with open(listing, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label"], *([row["path"], row["true_label"]] for row in rows)])
    main(["predict", "--model_dir", str(root / "model_B"), "--input", str(listing), "--output",
          str(tmp_path / "b.csv"), "--no_progress_bar"])  # fmt: skip
    listing.unlink()
    predicted = compare_predictions(root / "A", tmp_path / "b.csv")
    evaluated = compare_predictions(root / "A", root / "B")
    assert predicted["num_paired"] == evaluated["num_paired"] == len(rows)
    assert predicted["positive_class"] == "eight"  # the predict run's recorded one: no log-odds column there
    for name, figure in evaluated["figures"].items():  # the CSV's probabilities as predict rounds them: 1e-6
        for key, value in figure.items():
            assert predicted["figures"][name][key] == (value if value is None else pytest.approx(value, abs=1e-6))


def test_score_sde_predict_outputs_rank_by_their_log_likelihood_ratio(tmp_path):
    """A binary Score-SDE predict output's probabilities saturate at 0 and 1 (ranked by them, its images would tie):
    its `log_likelihood_ratio`, turned the way its sidecar says it points, ranks instead."""
    from diffusion_classifiers import ScoreSDEClassifierPipeline

    from .test_readme import small_unet

    ScoreSDEClassifierPipeline(small_unet(8, num_class_embeds=2), DDPMScheduler(), class_names=["normal", "pneumonia"],
                               positive_class="normal").save_pretrained(tmp_path / "sde")  # fmt: skip
    rng = np.random.default_rng(0)
    listing = [["path", "label", "scan"]]
    for index in range(16):  # scans of two images of one class
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        listing.append([f"{index}.png", ["normal", "pneumonia"][index % 2], f"scan{index % 2}{index // 4}"])
    with open(tmp_path / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(listing)
    for name, seed in (("a", "3"), ("b", "4")):
        main(["predict", "--model_dir", str(tmp_path / "sde"), "--input", str(tmp_path / "list.csv"), "--output",
              str(tmp_path / f"{name}.csv"), "--seed", seed, "--no_progress_bar"])  # fmt: skip
    with open(tmp_path / "a.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ratio = np.array([float(row["log_likelihood_ratio"]) for row in rows])  # log p(x | normal) - log p(x | pneumonia)
    for row, value in zip(rows, ratio):  # saturated, as a trained model's float32 probabilities are past log-odds 17
        row["prob_normal"], row["prob_pneumonia"] = ("1.0", "0.0") if value > 0 else ("0.0", "1.0")
    with open(tmp_path / "a.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    compared = compare_predictions(tmp_path / "a.csv", tmp_path / "b.csv")
    is_positive = np.array([row["true_label"] == "normal" for row in rows])
    assert compared["positive_class"] == "normal"
    assert compared["figures"]["auc"]["a"] == pytest.approx(skm.roc_auc_score(is_positive, ratio), abs=1e-12)
    with pytest.warns(UserWarning, match="positive_class 'pneumonia': [AB]'s rows record 'normal'"):
        turned = compare_predictions(tmp_path / "a.csv", tmp_path / "b.csv", positive_class="pneumonia")
    assert turned["figures"]["auc"]["a"] == pytest.approx(skm.roc_auc_score(~is_positive, -ratio), abs=1e-12)
    # per scan (QA, a mammography group: per breast): aggregate's outputs rank by their gathered ratio too, the way
    # their metrics.json names it (they have no predict sidecar)
    for name in "ab":
        main(["aggregate", "--predictions", str(tmp_path / f"{name}.csv"), "--by", "scan", "--output",
              str(tmp_path / f"{name}_scans.csv")])  # fmt: skip
    scans = compare_predictions(tmp_path / "a_scans.csv", tmp_path / "b_scans.csv", pair_by="scan")
    for name in "ab":
        gathered = json.loads((tmp_path / f"{name}_scans.metrics.json").read_text())
        assert gathered["ranked_by"] == "log_likelihood_ratio"
        assert scans["figures"]["auc"][name] == pytest.approx(gathered["auc"], abs=1e-12)
    assert scans["positive_class"] == "normal" and scans["positive_class_from"] == "recorded by A's rows"
    # review: a run labelled at another class's operating point records that class as its positive one, whatever way
    # its ratio column points: the default follows the record, and the report says where it decided
    (tmp_path / "metrics.json").write_text(json.dumps({"positive_class": "pneumonia",
                                                       "operating_point": {"threshold": 0.5, "log_odds": 0.0}}))
    main(["predict", "--model_dir", str(tmp_path / "sde"), "--input", str(tmp_path / "list.csv"), "--output",
          str(tmp_path / "at_point.csv"), "--seed", "3", "--threshold", str(tmp_path / "metrics.json"),
          "--no_progress_bar"])  # fmt: skip
    with pytest.warns(UserWarning, match="A's rows record the positive class 'pneumonia' and B's 'normal'"):
        at_point = compare_predictions(tmp_path / "at_point.csv", tmp_path / "b.csv")
    assert at_point["positive_class"] == "pneumonia" and at_point["positive_class_from"] == "recorded by A's rows"
    assert at_point["figures"]["auc"]["a"] == pytest.approx(skm.roc_auc_score(~is_positive, -ratio), abs=1e-12)
    assert "Decisions: A at the threshold 0.5 its run recorded; B at each image's most probable class" in \
        render_comparison(at_point)  # fmt: skip


def test_scans_compared_from_two_aggregations(two_evaluations, tmp_path):
    """Images of one scan are not independent draws: two models' predict outputs gathered per scan by aggregate are
    compared scan by scan (`--pair_by scan`), each side's figures those of its aggregation's metrics."""
    root = two_evaluations
    with open(root / "A" / "image_predictions.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["true_label"])
    listing = root / "data" / "scans.csv"
    with open(listing, "w", newline="") as handle:  # three images a scan, each scan of one class
        csv.writer(handle).writerows([["path", "label", "scan"],
                                      *([row["path"], row["true_label"], f"scan{index // 3}"]
                                        for index, row in enumerate(rows))])  # fmt: skip
    for name in "AB":
        main(["predict", "--model_dir", str(root / f"model_{name}"), "--input", str(listing), "--output",
              str(tmp_path / f"{name}.csv"), "--no_progress_bar"])  # fmt: skip
        main(["aggregate", "--predictions", str(tmp_path / f"{name}.csv"), "--by", "scan", "--rule", "mean",
              "--output", str(tmp_path / f"{name}_scans.csv")])  # fmt: skip
    listing.unlink()
    main(["compare", str(tmp_path / "A_scans.csv"), str(tmp_path / "B_scans.csv"), "--pair_by", "scan", "--output",
          str(tmp_path / "scans.json")])  # fmt: skip
    compared = json.loads((tmp_path / "scans.json").read_text())
    assert compared["num_paired"] == len(rows) // 3 + (len(rows) % 3 > 0) and compared["paired_by"] == "scan"
    for side in "ab":
        gathered = json.loads((tmp_path / f"{side.upper()}_scans.metrics.json").read_text())
        for figure in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "auc"):
            assert compared["figures"][figure][side] == pytest.approx(gathered[figure], abs=1e-12)
    with pytest.raises(ValueError, match=r"pair_by \['site'\]: no column \['site'\]"):
        compare_predictions(tmp_path / "A_scans.csv", tmp_path / "B_scans.csv", pair_by="site")


def _write_rows(path, true_labels, probs, classes=("no", "yes"), labels=None, log_odds=True):
    """An evaluate-style `image_predictions.csv` of images `img<i>.png`: each row's label its most probable class
    unless `labels` say otherwise, and for two classes the second class's log-odds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=float)
    columns = ["image", "path", "frame", "true_label", "label", "score", *(f"prob_{name}" for name in classes)]
    columns += [f"log_odds_{classes[1]}"] if log_odds and len(classes) == 2 else []
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, (truth, row) in enumerate(zip(true_labels, probs)):
            label = classes[int(np.argmax(row))] if labels is None else labels[index]
            cells = [index, f"img{index}.png", 0, truth, label, row.max(), *row]
            writer.writerow(cells + ([np.log(row[1] / row[0])] if len(columns) > len(cells) else []))
    return path


def _binary_pair(tmp_path, size=60, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.array(["no", "yes"] * (size // 2))
    sides = []
    for name, noise in (("a", 0.25), ("b", 0.2)):
        p_yes = np.clip((truth == "yes") * 0.5 + 0.25 + rng.normal(0, noise, size), 0.01, 0.99)
        sides.append(_write_rows(tmp_path / name / "image_predictions.csv", truth, np.stack([1 - p_yes, p_yes], 1)))
    return sides


def test_the_report_names_the_positive_class_and_warns_where_it_contradicts_the_rows(tmp_path):
    a, b = _binary_pair(tmp_path)
    report = render_comparison(compare_predictions(a, b))
    assert "Positive class (of sensitivity, specificity and the AUC): 'yes', recorded by A's rows." in report
    with pytest.warns(UserWarning) as caught:
        turned = compare_predictions(a, b, positive_class="no")
    assert {str(w.message) for w in caught} == {f"positive_class 'no': {side}'s rows record 'yes'" for side in "AB"}
    straight = compare_predictions(a, b)
    assert turned["figures"]["sensitivity"]["a"] == straight["figures"]["specificity"]["a"]
    with pytest.raises(ValueError, match="the same file"):
        compare_predictions(a, a.parent)


def test_undefined_figures_are_none_never_nan(tmp_path):
    """A split of one class: no sensitivity (no positives), no AUC; the JSON stays strict (no NaN)."""
    truth = ["no"] * 12
    probs = np.stack([np.linspace(0.3, 0.9, 12), 1 - np.linspace(0.3, 0.9, 12)], 1)
    a = _write_rows(tmp_path / "a" / "image_predictions.csv", truth, probs)
    b = _write_rows(tmp_path / "b" / "image_predictions.csv", truth, probs[::-1])
    compared = compare_predictions(a, b)
    json.dumps(compared, allow_nan=False)
    assert compared["figures"]["sensitivity"] == {"a": None, "b": None, "difference": None, "interval": None,
                                                  "p_value": None}  # fmt: skip
    assert compared["methods"]["sensitivity"] == "none: no positive images" and compared["figures"]["auc"]["a"] is None
    assert "| Sensitivity | n/a | n/a | n/a | n/a |" in render_comparison(compared)


def test_an_empty_or_nan_score_is_refused_naming_its_line(tmp_path):
    a, b = _binary_pair(tmp_path)
    rows = b.read_text().splitlines()
    cells = rows[5].split(",")
    cells[7] = ""
    b.write_text("\n".join(rows[:5] + [",".join(cells)] + rows[6:]) + "\n")
    with pytest.raises(ValueError, match=r"1 rows have an empty or NaN prob_<class> cell \(e\.g\. line 6"):
        compare_predictions(a, b)


def test_the_figures_do_not_depend_on_the_order_of_the_class_columns(tmp_path):
    a, b = _binary_pair(tmp_path)
    with open(b, newline="") as handle:
        rows = list(csv.reader(handle))
    swapped = [[*row[:6], row[7], row[6], *row[8:]] for row in rows]
    with open(tmp_path / "swapped.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(swapped)
    assert compare_predictions(a, tmp_path / "swapped.csv")["figures"] == compare_predictions(a, b)["figures"]


def test_a_multi_class_auc_needs_ten_images_of_each_class_as_evaluates(tmp_path):
    rng = np.random.default_rng(3)
    classes = ("ant", "bee", "cat")
    truth = np.array(["ant"] * 20 + ["bee"] * 20 + ["cat"] * 3)
    files = [_write_rows(tmp_path / name / "image_predictions.csv", truth, rng.dirichlet(np.ones(3), len(truth)),
                         classes=classes) for name in "ab"]  # fmt: skip
    compared = compare_predictions(*files)
    assert compared["figures"]["auc"]["difference"] is None
    assert "fewer than 10 images" in compared["methods"]["auc"]


def test_predict_outputs_of_other_files_under_the_same_names_are_refused(two_evaluations, tmp_path):
    """Two folders with files of the same names: paired by path, the sizes predict records tell them apart."""
    root = two_evaluations
    with open(root / "A" / "image_predictions.csv", newline="") as handle:  # test images: none a training image
        names = [row["path"] for row in csv.DictReader(handle) if row["true_label"] == "three"][:3]
    for copy in ("same", "other"):
        for name in names:
            (tmp_path / copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "data" / name, tmp_path / copy / name)
        with open(tmp_path / copy / "list.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["path", "label"], *([name, "three"] for name in names)])
    Image.open(tmp_path / "other" / names[0]).resize((9, 9)).save(tmp_path / "other" / names[0])  # another file
    for copy in ("same", "other"):
        main(["predict", "--model_dir", str(root / "model_A"), "--input", str(tmp_path / copy / "list.csv"),
              "--output", str(tmp_path / f"{copy}.csv"), "--no_progress_bar"])  # fmt: skip
    with pytest.raises(ValueError, match=r"record files of other sizes \(bytes\) under one path for 1 of the 3 paired"):
        compare_predictions(tmp_path / "same.csv", tmp_path / "other.csv")


def test_an_interval_and_an_exact_test_that_disagree_are_marked():
    """QA (a biostatistician): 4 positives only A got right and none only B gave an interval excluding 0 where McNemar's
    exact p was 0.125; the report said such a bound sits at exactly 0."""
    y_true = np.r_[np.ones(390, int), np.zeros(234, int)]
    pred_a = y_true.copy()
    pred_b = y_true.copy()
    pred_b[:5] = 0  # the five positives only A gets right
    scores = np.linspace(0, 1, 624), np.linspace(0, 1, 624)
    result = paired_figures(y_true, pred_a, pred_b, *scores, num_classes=2, positive_label=1)
    sensitivity = result["figures"]["sensitivity"]
    assert (sensitivity["only_a_correct"], sensitivity["only_b_correct"]) == (5, 0)
    assert sensitivity["p_value"] == pytest.approx(0.0625) and sensitivity["interval"][1] < 0
    assert sensitivity["interval_and_test_disagree"] is True
    assert result["figures"]["specificity"]["interval_and_test_disagree"] is False  # no interval: the same decisions
    left_out = {"only_in_a": 0, "only_in_b": 0, "training_images": 0}
    comparison = {"a": {"source": "a"}, "b": {"source": "b"}, "num_paired": 624, "paired_by": "image",
                  "left_out": left_out, **result}  # fmt: skip
    row = next(line for line in render_comparison(comparison).splitlines() if line.startswith("| Sensitivity"))
    assert row.endswith("(5 only A right, 0 only B right) (interval and test disagree) |")


def test_a_difference_of_0_in_every_resample_gets_no_interval():
    """Review: the rescaled bootstrap's float weights, summed in another order for each model, gave a difference of
    exactly 0 the interval "-2.2e-16 to 2.2e-16" (the same images right, the wrong ones wrong otherwise)."""
    rng = np.random.default_rng(36)
    y_true = np.repeat(np.arange(5), rng.integers(10, 60, 5))
    wrong = rng.random(len(y_true)) < 0.4
    pred_a, pred_b = y_true.copy(), y_true.copy()
    pred_a[wrong] = (y_true[wrong] + rng.integers(1, 5, wrong.sum())) % 5
    pred_b[wrong] = (y_true[wrong] + rng.integers(1, 5, wrong.sum())) % 5
    result = paired_figures(y_true, pred_a, pred_b, np.eye(5)[pred_a], np.eye(5)[pred_b], num_classes=5)
    for name in ("accuracy", "balanced_accuracy"):
        assert result["figures"][name]["interval"] is None
        assert result["methods"][name].startswith("none: every resample gives the same difference")


def test_brier_scores_and_log_losses_are_compared_image_by_image(tmp_path):
    """QA (sessions 61-62): compare gave no calibration figure, so a recalibrated model and its original differed in
    nothing compare showed. The mean of each image's difference of the proper scores, with a paired interval."""
    rng = np.random.default_rng(1)
    truth = np.array(["no", "yes"] * 40)
    p_yes = np.clip((truth == "yes") * 0.4 + 0.3 + rng.normal(0, 0.15, len(truth)), 0.02, 0.98)
    sharper = np.where(truth == "yes", np.maximum(p_yes, 0.9), np.minimum(p_yes, 0.1))  # the same ranks, nearer
    a = _write_rows(tmp_path / "a" / "image_predictions.csv", truth, np.stack([1 - p_yes, p_yes], 1))
    b = _write_rows(tmp_path / "b" / "image_predictions.csv", truth, np.stack([1 - sharper, sharper], 1))
    compared = compare_predictions(a, b)
    y = (truth == "yes").astype(int)
    for side, p in (("a", p_yes), ("b", sharper)):
        assert compared["figures"]["brier"][side] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
        assert compared["figures"]["log_loss"][side] == pytest.approx(skm.log_loss(y, np.stack([1 - p, p], 1)))
    for name in ("brier", "log_loss"):
        figure = compared["figures"][name]
        assert figure["difference"] == pytest.approx(figure["b"] - figure["a"], abs=1e-12)
        assert figure["interval"][0] < figure["difference"] < figure["interval"][1] < 0  # B nearer the labels
        assert compared["methods"][name].startswith("paired percentile bootstrap within each class")
    report = render_comparison(compared)
    brier = compared["figures"]["brier"]
    assert f"| Brier score (lower is better) | {brier['a']:.4f} | {brier['b']:.4f} | {brier['difference']:+.4f} (" \
        in report and "the Brier score's and the log loss's in their own units" in report  # fmt: skip
    same = compare_predictions(a, _write_rows(tmp_path / "c" / "image_predictions.csv", truth,
                                              np.stack([1 - p_yes, p_yes], 1)))  # fmt: skip
    assert same["figures"]["brier"]["interval"] is None and "the same probabilities" in same["methods"]["brier"]


def test_proper_scores_are_not_compared_where_the_rows_are_not_probabilities(tmp_path):
    a, b = _binary_pair(tmp_path)
    rows = [line.split(",") for line in b.read_text().splitlines()]
    scores = [row[:6] + [str(2 * float(row[6])), row[7]] + row[8:] if i else row for i, row in enumerate(rows)]
    b.write_text("\n".join(",".join(row) for row in scores) + "\n")  # prob_no doubled: rows summing to 1 + p(no)
    compared = compare_predictions(a, b)
    assert compared["figures"]["brier"] == {"a": None, "b": None, "difference": None, "interval": None}
    assert compared["methods"]["log_loss"].startswith(f"none: the prob_<class> columns of {b} are not probabilities")
    assert "| Brier score (lower is better) | n/a | n/a | n/a | no test |" in render_comparison(compared)


def test_newcombes_interval_of_two_independent_proportions_is_his_published_one():
    """Newcombe (1998), Table II, method 10: 56/70 against 48/80, a difference of 0.2 with 0.0524 to 0.3339."""
    from diffusion_classifiers.independent_statistics import newcombe_interval

    assert newcombe_interval(48, 80, 56, 70) == pytest.approx([0.0524, 0.3339], abs=5e-5)
    assert newcombe_interval(56, 70, 48, 80) == pytest.approx([-0.3339, -0.0524], abs=5e-5)
    assert newcombe_interval(0, 0, 3, 5) is None


def test_two_sites_are_compared_unpaired(tmp_path, capsys):
    """QA (another site): a model's figures on site A's images and on site B's could only be set side by side by eye;
    `compare --unpaired` gives the drop with an interval for independent samples."""
    from diffusion_classifiers.confidence_intervals import delong_auc_interval

    rng = np.random.default_rng(2)
    sides = {}
    for name, size, noise in (("site_a", 120, 0.35), ("site_b", 60, 0.5)):  # AUCs whose intervals stay in [0, 1]
        truth = np.array(["no", "yes"] * (size // 2))
        p_yes = np.clip((truth == "yes") * 0.5 + 0.25 + rng.normal(0, noise, size), 0.01, 0.99)
        sides[name] = (truth, p_yes, _write_rows(tmp_path / name / "image_predictions.csv", truth,
                                                 np.stack([1 - p_yes, p_yes], 1)))  # fmt: skip
    main(["compare", str(tmp_path / "site_a"), str(tmp_path / "site_b"), "--unpaired", "--output",
          str(tmp_path / "c.json")])  # fmt: skip
    compared, report = json.loads((tmp_path / "c.json").read_text()), capsys.readouterr().out
    assert compared["unpaired"] and (compared["num_a"], compared["num_b"]) == (120, 60)
    half_widths = []
    for key, name in (("a", "site_a"), ("b", "site_b")):
        truth, p_yes, _ = sides[name]
        y, pred = (truth == "yes").astype(int), (p_yes > 0.5).astype(int)
        assert compared["figures"]["accuracy"][key] == pytest.approx(np.mean(pred == y))
        assert compared["figures"]["macro_f1"][key] == pytest.approx(skm.f1_score(y, pred, average="macro"))
        assert compared["figures"]["auc"][key] == pytest.approx(skm.roc_auc_score(y, p_yes))
        low, high = delong_auc_interval(y == 1, np.log(p_yes / (1 - p_yes)))
        half_widths.append((high - low) / 2)
    auc = compared["figures"]["auc"]
    assert (auc["interval"][1] - auc["interval"][0]) / 2 == pytest.approx(math.hypot(*half_widths), rel=1e-6)
    accuracy = compared["figures"]["accuracy"]
    assert accuracy["interval"][0] < accuracy["difference"] < accuracy["interval"][1] and 0 < accuracy["p_value"] <= 1
    assert "# Unpaired comparison" in report and "Unpaired: A's 120 rows and B's 60" in report and "Newcombe" in report
    # the two sides' bootstraps are drawn independently: the same figures on both sides still vary apart
    same = compare_predictions(sides["site_a"][2], _write_rows(tmp_path / "copy" / "image_predictions.csv",
                               sides["site_a"][0], np.stack([1 - sides["site_a"][1], sides["site_a"][1]], 1)),
                               unpaired=True)  # fmt: skip
    low, high = same["figures"]["balanced_accuracy"]["interval"]
    assert low < 0 < high and same["figures"]["balanced_accuracy"]["difference"] == 0
    with pytest.raises(ValueError, match="unpaired: expected neither pair_by nor common_images_only"):
        compare_predictions(sides["site_a"][2], sides["site_b"][2], pair_by="image", unpaired=True)


def test_an_unpaired_comparison_refuses_one_split_and_says_what_its_figures_mix(tmp_path):
    """Review and QA (an external validation): the same test split compared unpaired as "other images"; averages over
    other classes given intervals; one model at other thresholds on the two sides, without a word."""
    from diffusion_classifiers.independent_statistics import independent_figures

    truth = np.array(["no", "yes"] * 30)
    p_yes = np.clip((truth == "yes") * 0.5 + 0.25 + np.random.default_rng(3).normal(0, 0.3, 60), 0.01, 0.99)
    a = _write_rows(tmp_path / "a" / "image_predictions.csv", truth, np.stack([1 - p_yes, p_yes], 1))
    b = _write_rows(tmp_path / "b" / "image_predictions.csv", truth, np.stack([1 - p_yes, p_yes], 1))
    record = {"split": "test", "dataset": "site.npz", "carving": {"seed": 0}, "model_sha256": "m"}
    for side, point in (("a", {"threshold": 0.4, "chosen_on": "val", "dataset": "site.npz"}),
                        ("b", {"threshold": 0.7, "chosen_on": "test", "dataset": "site.npz"})):
        (tmp_path / side / "metrics.json").write_text(json.dumps({**record, "operating_point": point}))
    with pytest.raises(ValueError, match=r"unpaired: A and B scored the same split .*compare them paired"):
        compare_predictions(a, b, unpaired=True)
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({**record, "split": "all", "dataset": "other",
        "operating_point": {"threshold": 0.7, "chosen_on": "all", "dataset": "other"}}))  # fmt: skip
    with pytest.warns(UserWarning, match=r"unpaired: A and B name 60 images alike"):
        compared = compare_predictions(a, b, unpaired=True)
    report = " ".join(render_comparison(compared).split())
    assert "**B's threshold was chosen on the images it scores (all of other)" in report
    assert "One model decides at other operating points on the two sides (A at the threshold 0.4; B at" in report
    # three classes against two: averages over other classes get no interval
    y_a, y_b = np.array([0, 1, 2] * 20), np.array([0, 1] * 30)
    scores_a, scores_b = np.eye(3)[y_a] * 0.5 + 0.25, np.eye(3)[y_b] * 0.5 + 0.25
    figures = independent_figures(y_a, y_a, scores_a, y_b, y_b, scores_b, 3)
    assert figures["figures"]["macro_f1"]["interval"] is None and figures["figures"]["auc"]["a"] is None
    assert figures["methods"]["macro_f1"].startswith("none: the sides hold other classes (A [0, 1, 2], B [0, 1])")
    # Newcombe's interval and Fisher's test disagree at 25 of 50 against 35 of 50 (review): marked
    y, right, wrong = np.ones(50, int), np.ones(50, int), np.zeros(50, int)
    pred_a, pred_b = np.r_[right[:25], wrong[:25]], np.r_[right[:35], wrong[:15]]
    both = np.r_[np.zeros(10, int), y]
    figures = independent_figures(both, np.r_[np.zeros(10, int), pred_a], np.r_[np.zeros(10), pred_a],
                                  both, np.r_[np.zeros(10, int), pred_b], np.r_[np.zeros(10), pred_b], 2, 1)
    assert figures["figures"]["sensitivity"]["interval_and_test_disagree"]

"""Each image's prediction beside an evaluation's metrics (`image_predictions.csv`), and the proper scores of its
probabilities (Brier score, log loss): asked for by the external-validation and cross-method personas (session 59),
who had the figures only as summaries and could not pair two models image by image or check a figure themselves."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from diffusion_classifiers import load_image_classification_data
from diffusion_classifiers.cli import main
from diffusion_classifiers.data.split_record import image_fingerprints
from diffusion_classifiers.evaluation import evaluate_classifier
from diffusion_classifiers.hub import load_eval_metrics
from diffusion_classifiers.metrics import calibration_metrics
from tests.test_split_record import saved_binary_classifier


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """A binary U-Net feature classifier (positive class "one") recording its training images, its folder, and the
    folder grown by a few images (its test split then holds training images, which `--drop_training_images` drops)."""
    return saved_binary_classifier(tmp_path_factory.mktemp("per_image"), positive_class="one")


def _rows(folder):
    with open(folder / "image_predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _evaluate(root, output, *flags):
    main(["evaluate", "--model_dir", str(root / "model"), "--dataset", str(root / "grown"), "--output_dir", str(output),
          "--drop_training_images", *flags])  # fmt: skip
    return json.loads((output / "metrics.json").read_text()), _rows(output)


def test_each_scored_image_is_a_row_that_reproduces_the_metrics(model_and_data, tmp_path, monkeypatch):
    root, splits = model_and_data
    metrics, rows = _evaluate(root, tmp_path)
    monkeypatch.chdir(root)  # QA (a biostatistician): the same images keyed otherwise from another folder
    _, elsewhere = _evaluate(Path("."), tmp_path / "elsewhere")
    assert [row["path"] for row in elsewhere] == [row["path"] for row in rows]
    grown = load_image_classification_data(str(root / "grown"), image_size=8, seed=0)["test"]
    train = set(image_fingerprints(splits["train"].images))
    kept = [i for i, print_ in enumerate(image_fingerprints(grown.images)) if print_ not in train]
    assert len(kept) < len(grown) and metrics["training_images_dropped"] == len(grown) - len(kept)  # the premise
    assert [int(row["image"]) for row in rows] == kept  # positions in the split, the dropped ones skipped
    for row in rows:  # each row's file, relative to the folder, is the image scored: its class folder, the same pixels
        assert row["path"].startswith(row["true_label"] + "/") and row["frame"] == "0"
    files = grown.preprocessing([Image.open(root / "grown" / row["path"]) for row in rows])
    assert image_fingerprints(files) == image_fingerprints(grown.images[kept])
    y_true = np.array([row["true_label"] == "one" for row in rows])
    y_pred = np.array([row["label"] == "one" for row in rows])
    probs = np.array([[float(row["prob_one"]), float(row["prob_zero"])] for row in rows])
    probs /= probs.sum(1, keepdims=True)  # float32 probabilities sum to 1 within their rounding (scikit-learn warns)
    assert metrics["accuracy"] == pytest.approx(np.mean(y_true == y_pred), abs=1e-12)
    assert metrics["auc"] == pytest.approx(skm.roc_auc_score(y_true, [float(row["log_odds_one"]) for row in rows]))
    assert metrics["calibration"]["brier"] == pytest.approx(skm.brier_score_loss(y_true, probs[:, 0]), rel=1e-6)
    assert metrics["calibration"]["log_loss"] == pytest.approx(skm.log_loss(~y_true, probs), rel=1e-6)
    assert all(float(row["score"]) == float(row[f"prob_{row['label']}"]) for row in rows)


def test_a_streamed_split_writes_the_same_rows(model_and_data, tmp_path):
    root, _ = model_and_data
    _, in_memory = _evaluate(root, tmp_path / "memory")
    _, streamed = _evaluate(root, tmp_path / "streamed", "--streaming")
    assert streamed == in_memory  # the same pixels in one batch of the same size: the same float32 arithmetic


def test_the_labels_follow_the_operating_point(model_and_data, tmp_path):
    root, _ = model_and_data
    metrics, rows = _evaluate(root, tmp_path, "--target_sensitivity", "1.0")
    point = metrics["operating_point"]
    assert all((row["label"] == "one") == (float(row["log_odds_one"]) >= point["log_odds"]) for row in rows)
    assert metrics["sensitivity"] == 1.0


def test_data_without_files_and_a_rerun(model_and_data, tmp_path):
    """Arrays have no files: the path cells are empty. A rerun replaces the file with the new run's rows."""
    root, _ = model_and_data
    digits = load_image_classification_data("digits", image_size=8, seed=0)["test"]
    ones = digits.subset(np.flatnonzero(digits.labels.numpy() <= 1))
    ones.class_names = ["zero", "one"]
    evaluate_classifier(str(root / "model"), ones, tmp_path, check_training_images=False)
    rows = _rows(tmp_path)
    assert len(rows) == len(ones) and {row["path"] for row in rows} == {""}
    evaluate_classifier(str(root / "model"), ones.subset(np.arange(5)), tmp_path, check_training_images=False)
    assert [int(row["image"]) for row in _rows(tmp_path)] == list(range(5))


def test_brier_score_and_log_loss_are_reported_and_carded(model_and_data, tmp_path):
    root, _ = model_and_data
    metrics, _ = _evaluate(root, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert f"| Brier score | {metrics['calibration']['brier']:.4f} |" in report
    assert f"| log loss (nats) | {metrics['calibration']['log_loss']:.4f} |" in report
    assert load_eval_metrics(tmp_path / "metrics.json")["brier"] == metrics["calibration"]["brier"]


def test_proper_scores_of_more_classes_and_of_absent_ones():
    """scikit-learn's definitions: three classes keep the [0, 2] Brier score; a class absent from the labels still
    counts its probabilities; a probability of exactly 0 for the true class costs float64's epsilon, not infinity."""
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.7, 0.0], [0.5, 0.5, 0.0]])
    scores = calibration_metrics([0, 1, 2], probs)
    assert scores["brier"] == pytest.approx((0.06 + 0.18 + 1.5) / 3)
    assert scores["log_loss"] == pytest.approx((-np.log(0.8) - np.log(0.7) - np.log(np.finfo(float).eps)) / 3)
    absent = calibration_metrics([0, 0], probs[:2])
    assert absent["brier"] == pytest.approx((0.06 + (0.7**2 + 0.7**2)) / 2)
    with pytest.raises(ValueError, match=r"probs row 1 is all zeros"):
        calibration_metrics([0, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_the_frames_of_a_multi_frame_file_are_rows_of_their_own():
    """A multi-frame DICOM file is one image per frame: its rows name the file and the frame, as predict's do."""
    from diffusion_classifiers.data import StreamingImages
    from diffusion_classifiers.evaluation import _scored_files, predictions_csv

    listed = StreamingImages.from_files(["a.dcm", "a.dcm", "b.png"], check_files=False, frames=[0, 1, None])
    assert listed.files_and_frames() == [("a.dcm", 0), ("a.dcm", 1), ("b.png", None)]
    assert listed.subset([2, 1]).files_and_frames() == [("b.png", None), ("a.dcm", 1)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    files = _scored_files(listed, None, np.arange(3), relative_to=".")
    text = predictions_csv(range(3), files, [0, 1, 1], [0, 1, 0], probs, ["no", "yes"])
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["image", "path", "frame", "true_label", "label", "score", "prob_no", "prob_yes"]
    assert [row[:5] for row in rows[1:]] == [["0", "a.dcm", "0", "no", "no"], ["1", "a.dcm", "1", "yes", "yes"],
                                             ["2", "b.png", "0", "yes", "no"]]  # fmt: skip


def test_aggregate_decides_at_an_operating_point_as_evaluate_and_predict_do(tmp_path):
    """QA (a head-CT group): aggregate compared probabilities with the point's threshold, evaluate and predict its
    log-odds: the val image a target sensitivity's threshold was chosen at, positive in both, was negative per study.
    A float32 softmax's two probabilities need not sum to 1: the point's probability p / (p + q) is then above p."""
    from diffusion_classifiers.operating_points import positive_log_odds, threshold_for_sensitivity

    positive = np.float32(0.6173280477523804)
    negative = np.nextafter(np.float32(1) - positive, np.float32(0))  # one float32 step below 1 - p
    probs = np.array([[negative, positive], [0.9, 0.1]], dtype=np.float32)
    point = threshold_for_sensitivity(np.array([True, False]), positive_log_odds(probs, probs, 1), 1.0)
    assert point["threshold"] > float(positive)  # the premise: compared as probabilities, the image is below it
    (tmp_path / "metrics.json").write_text(json.dumps({"positive_class": "yes", "operating_point": point}))
    rows = "".join(f"{name},{label},{row.max()},{row[0]},{row[1]}\n" for name, label, row in
                   (("a.png", "yes", probs[0]), ("b.png", "no", probs[1])))  # fmt: skip
    (tmp_path / "p.csv").write_text("path,label,score,prob_no,prob_yes\n" + rows)
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "path", "--positive_class", "yes",
          "--threshold", str(tmp_path / "metrics.json"), "--output", str(tmp_path / "g.csv")])  # fmt: skip
    with open(tmp_path / "g.csv", newline="") as handle:
        assert {row["path"]: row["label"] for row in csv.DictReader(handle)} == {"a.png": "yes", "b.png": "no"}


def test_a_csvs_rows_are_named_as_it_lists_them(model_and_data, tmp_path):
    """QA (a head-CT group): a CSV's rows `../grown/one/x.png` were written absolute, which predict writes as listed:
    the two outputs did not join."""
    root, _ = model_and_data
    listed = sorted((root / "grown").glob("*/*.png"))
    (tmp_path / "lists").mkdir()
    up = Path(os.path.relpath(root / "grown", tmp_path / "lists")).as_posix()  # ../../per_image0/grown
    rows = "".join(f"{up}/{file.parent.name}/{file.name},{file.parent.name}\n" for file in listed)
    (tmp_path / "lists" / "all.csv").write_text("path,label\n" + rows)
    main(["evaluate", "--model_dir", str(root / "model"), "--dataset", str(tmp_path / "lists" / "all.csv"),
          "--output_dir", str(tmp_path / "e"), "--split", "all", "--drop_training_images"])  # fmt: skip
    written = [row["path"] for row in _rows(tmp_path / "e")]
    assert written and all(path.startswith("../") for path in written)
    assert set(written) <= {line.split(",")[0] for line in rows.splitlines()}

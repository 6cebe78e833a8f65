"""Review of the frozen-U-Net-feature study and of the evaluation module: class ids matched by name across splits,
bad inputs refused before the features are extracted or the images scored, unlabelled rows refused, and reports that
are written whole or not at all."""

import json

import datasets
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from sklearn.datasets import load_digits

import diffusion_classifiers.unet_feature_study as study_module
from diffusion_classifiers.data import LabeledImages
from diffusion_classifiers.evaluation import evaluate_classifier, write_evaluation
from diffusion_classifiers.models import unet_config

NAMES = [str(digit) for digit in range(10)]
STUDY = dict(blocks=["mid_block"], timesteps=[10], show_progress=False)


def _digits_splits(num_train: int = 150) -> dict:
    """Train, val and test of scikit-learn's 8x8 digits in [-1, 1]: `num_train`, then half as many each."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8 - 1
    labels = torch.tensor(digits.target)
    half = num_train // 2
    rows = {"train": slice(0, num_train), "val": slice(num_train, num_train + half)}
    rows["test"] = slice(num_train + half, num_train + 2 * half)
    return {name: LabeledImages(images[r], labels[r], NAMES) for name, r in rows.items()}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UNet2DModel(**unet_config("tiny", 8)).eval(), DDPMScheduler()


@pytest.fixture(scope="module")
def study(tiny):
    return study_module.run_unet_feature_study(*tiny, _digits_splits(), **STUDY)


@pytest.fixture
def no_extraction(monkeypatch):
    """Fails the test if the study extracts any feature: what it refuses must be refused before."""

    def extract(*args, **kwargs):
        raise AssertionError("features were extracted before the bad input was refused")

    monkeypatch.setattr(study_module, "extract_study_features", extract)


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------


def test_the_study_matches_the_val_and_test_classes_to_train_by_name(tiny, study):
    """Review: a test split listing the classes in another order (its ids then differ from train's) was scored in its
    own ids: 1.3% test accuracy where the same images in train's ids scored 68%."""
    splits = _digits_splits()
    test = splits["test"]
    splits["test"] = LabeledImages(test.images, 9 - test.labels, NAMES[::-1])  # the same images, ids reversed
    reordered = study_module.run_unet_feature_study(*tiny, splits, **STUDY)
    assert torch.equal(reordered.test_labels, test.labels)  # in train's ids
    assert reordered.test_metrics["accuracy"] == study.test_metrics["accuracy"]
    assert reordered.kmeans_metrics["accuracy"] == study.kmeans_metrics["accuracy"]
    # a split with some of train's classes only, in its own order: its images keep their classes
    some = torch.isin(test.labels, torch.tensor([3, 7]))
    splits["test"] = LabeledImages(test.images[some], (test.labels[some] == 3).long(), ["7", "3"])
    assert torch.equal(study_module.labels_in_train_class_ids(splits)["test"], test.labels[some])


def test_a_test_split_without_a_class_is_flagged_as_evaluate_flags_it(tiny):
    """QA: a class named by a typo had train images only; `probe`'s test AUC read 0.93 without a word where `evaluate`
    on the same pipeline and split warned and recorded the AUC as undefined."""
    splits = _digits_splits()
    test = splits["test"]
    splits["test"] = test.subset(np.flatnonzero(test.labels.numpy() != 9))
    with pytest.warns(UserWarning, match=r"the evaluated test split has no image of the model's class\(es\) 9 "):
        study = study_module.run_unet_feature_study(*tiny, splits, **STUDY)
    assert study.test_metrics["absent_classes"] == ["9"] and study.summary()["test_auc"] is None
    report = study_module.render_report(study, "study", "probe")
    assert "**Warning: the test split has no image of class 9.**" in report
    assert "| AUC | undefined (no image of class 9 in the test split) |" in report


def test_the_study_refuses_a_class_train_lacks_before_extracting(tiny, no_extraction):
    splits = _digits_splits()
    val = splits["val"]
    splits["val"] = LabeledImages(val.images, val.labels, [*NAMES[:9], "ten"])
    with pytest.raises(ValueError, match=r"the val split's classes \['ten'\] are not among the train split's"):
        study_module.run_unet_feature_study(*tiny, splits, **STUDY)


@pytest.mark.parametrize(
    "num_test, candidates, message",
    [
        (6, None, r"k-means of the 6 test images: K=10 clusters .* expected K <= 6"),  # K = the 10 classes
        (75, [5, 100], r"k-means of the 75 test images: K=100 clusters \(candidate_num_clusters \[5, 100\]"),
        (75, [0], r"candidate_num_clusters: expected None \(K = 10\) or a non-empty sequence of integers K >= 1"),
    ],
)
def test_the_study_refuses_clusters_its_splits_cannot_hold_before_extracting(
    tiny, no_extraction, num_test, candidates, message
):
    """Review: these were refused after every feature was extracted and every probe fitted (k-means runs last)."""
    splits = _digits_splits()
    test = splits["test"]
    splits["test"] = LabeledImages(test.images[:num_test], test.labels[:num_test], NAMES)
    with pytest.raises(ValueError, match=message):
        study_module.run_unet_feature_study(*tiny, splits, candidate_num_clusters=candidates, **STUDY)


def test_the_study_refuses_one_class_and_streamed_splits_before_extracting(tiny, no_extraction):
    splits = _digits_splits()
    one = {name: LabeledImages(s.images, torch.zeros_like(s.labels), ["all"]) for name, s in splits.items()}
    with pytest.raises(ValueError, match=r"the train split has 1 class \(\['all'\]\); expected at least 2"):
        study_module.run_unet_feature_study(*tiny, one, **STUDY)

    class Streamed:  # what the study reads of a StreamingImages split: no `.images`
        def __init__(self, split):
            self.labels, self.class_names, self.num_classes = split.labels, split.class_names, split.num_classes

        def __len__(self):
            return len(self.labels)

    splits["test"] = Streamed(splits["test"])
    with pytest.raises(ValueError, match=r"the test split: expected LabeledImages \(images in memory\), got Streamed"):
        study_module.run_unet_feature_study(*tiny, splits, **STUDY)


def test_a_few_label_study_refuses_rows_that_would_wrap_or_repeat(tiny):
    """Review: `train_index=[-1, ...]` probed the last train images and a repeated row weighed its image twice, both
    silently."""
    splits = _digits_splits()
    features = study_module.extract_study_features(*tiny, splits, **STUDY)
    cases = {
        r"expected row numbers in \[0, 149\], got \[-1, -2\]": [-1, -2, *range(20)],
        r"expected row numbers in \[0, 149\], got \[150\]": [149, 150],
        r"expected distinct row numbers, got 3 repeats": [0, 0, 0, 0, *range(1, 20)],
        r"expected a non-empty 1-D sequence": [],
    }
    for message, rows in cases.items():
        with pytest.raises(ValueError, match="train_index: " + message):
            study_module.study_from_features(*tiny, splits, features, train_index=rows, show_progress=False)
    mask = torch.zeros(150, dtype=torch.bool)
    mask[:40] = True
    by_mask = study_module.study_from_features(*tiny, splits, features, train_index=mask, show_progress=False)
    by_rows = study_module.study_from_features(*tiny, splits, features, train_index=range(40), show_progress=False)
    assert torch.equal(by_mask.test_probs, by_rows.test_probs)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def test_evaluate_refuses_unlabelled_rows_of_a_datasets_split(study):
    """Review: a ClassLabel's -1 (an image without a label) indexed the name mapping from its end, so 5 unlabelled
    images were scored as class '9' (support 6 for one true 9)."""
    test = _digits_splits()["test"]
    images = [Image.fromarray(((x[0].numpy() + 1) * 127.5).astype("uint8")) for x in test.images[:20]]
    labels = [-1] * 5 + test.labels[5:20].tolist()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    with pytest.raises(ValueError, match=r"5 of 20 labels are not class ids in \[0, 9\].*row 0: -1"):
        evaluate_classifier(study.pipeline, dataset, label_column="label")


def test_a_failed_evaluation_leaves_the_earlier_report_whole(study, tmp_path):
    """Review: metrics.json was streamed into place, so a value JSON cannot hold (a numpy float in `head`) stopped the
    write half-way after every image was scored: the earlier metrics.json lost, the new one unreadable."""
    test = _digits_splits()["test"]
    evaluate_classifier(study.pipeline, test, output_dir=str(tmp_path))
    earlier = {name: (tmp_path / name).read_text() for name in ("metrics.json", "report.md")}
    head = {"summary": "C chosen on val", "C": np.float32(1.0)}
    with pytest.raises(ValueError, match=r"head: expected a dict of JSON values .*float32 is not JSON serializable"):
        evaluate_classifier(study.pipeline, test, output_dir=str(tmp_path), head=head)
    with pytest.raises(TypeError, match="not JSON serializable"):  # the writer itself: nothing is written either
        write_evaluation({"accuracy": np.float32(1.0)}, NAMES, str(tmp_path), test.labels, study.test_probs)
    assert {name: (tmp_path / name).read_text() for name in earlier} == earlier
    assert json.loads(earlier["metrics.json"])["num_samples"] == len(test)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary file left


def test_a_binary_studys_report_gives_the_average_precision_its_metrics_record(tiny):
    """Review: the study's metrics.json and card gave the average precision, its report (the demo's, probe's) did not;
    a class name holding "|" split its rows into extra cells."""
    splits = _digits_splits()
    for name, split in splits.items():
        keep = np.flatnonzero(split.labels.numpy() < 2)
        splits[name] = LabeledImages(split.images[keep], split.labels[keep], ["normal", "bleed|acute"])
    study = study_module.run_unet_feature_study(*tiny, splits, **STUDY)
    average_precision = study.summary()["test_average_precision"]
    assert average_precision == study.test_metrics["average_precision"]
    report = study_module.render_report(study, "study", "probe")
    interval = study.test_metrics["confidence_intervals"]["average_precision"]  # since 2026-12-07
    shown = "n/a" if interval is None else f"{interval[0]:.4f} to {interval[1]:.4f}"
    assert f"| average precision (PR AUC of bleed\\|acute) | {average_precision:.4f} | {shown} |" in report
    assert "| sensitivity (recall of bleed\\|acute) |" in report and "| specificity (recall of normal) |" in report
    positives = study.test_metrics["per_class"]["bleed|acute"]["support"]  # QA (session 59): as evaluate's says it
    assert f"Test split: positive class: **bleed|acute** ({positives} of " in report
    assert "predicted where its probability exceeds 0.5" in report


def test_an_evaluation_stopped_while_writing_keeps_the_earlier_report_whole(study, tmp_path, monkeypatch):
    """QA (session 58, Ctrl-C): an evaluation or probe over an earlier report, stopped while writing, left the earlier
    report.md and figures beside the new files (a report naming another timestep beside the new pipeline); then (QA,
    session 60) the new files alone, the earlier report lost: now the earlier report stays as it was."""
    from diffusion_classifiers import plots

    test = _digits_splits()["test"]
    evaluate_classifier(study.pipeline, test, output_dir=str(tmp_path))
    assert {"report.md", "reliability.png", "metrics.json"} <= {path.name for path in tmp_path.iterdir()}
    earlier = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_reliability", stopped)  # after the new confusion matrix
    with pytest.raises(KeyboardInterrupt):
        evaluate_classifier(study.pipeline, test, output_dir=str(tmp_path))
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == earlier


def test_a_binary_study_ranks_its_test_images_as_evaluate_does(tiny):
    """QA (a clinician): the demo's average precision differed in its 5th decimal from evaluate's of the same model
    and split: the study ranked by float32 probabilities, evaluate by the positive class's log-odds."""
    splits = {}
    for name, split in _digits_splits(300).items():
        keep = torch.nonzero(split.labels < 2).flatten()
        splits[name] = LabeledImages(split.images[keep], split.labels[keep], ["zero", "one"])
    binary = study_module.run_unet_feature_study(*tiny, splits, **STUDY, positive_class="one")
    evaluated = evaluate_classifier(binary.pipeline, splits["test"], positive_class="one")
    assert binary.test_ranking.dtype == torch.float64  # the log-odds, as evaluate's ranking
    for name in ("auc", "average_precision"):
        assert binary.test_metrics[name] == evaluated[name], name
    assert binary.test_metrics["confidence_intervals"]["auc"] == evaluated["confidence_intervals"]["auc"]

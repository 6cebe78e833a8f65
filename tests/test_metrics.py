import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from diffusion_classifiers.metrics import (
    classification_metrics,
    clustering_metrics,
    hungarian_match,
    resolve_positive_label,
    seed_sensitivity_metrics,
)

# Confusion matrix (rows true, columns predicted): [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 2, 2, 0, 2]


def _plain(value):
    """True when a result holds only plain Python values (json-serialisable without numpy)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (int, float, str)


def test_classification_metrics_on_a_known_confusion_matrix():
    result = classification_metrics(Y_TRUE, Y_PRED, class_names=["cat", "dog", "fox"])
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert result["accuracy"] == pytest.approx(7 / 9)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 6 / 7) / 3)
    assert result["per_class"]["dog"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2, "predicted": 3}
    )
    assert result["per_class"]["fox"]["f1"] == pytest.approx(6 / 7)
    assert "sensitivity" not in result and "auc" not in result
    assert _plain(result)


def test_macro_averages_are_over_the_classes_present_in_y_true():
    # 5 classes, images of 0 and 1 only; class 3 is predicted (wrongly): it counts in no average
    y_true, y_pred = [0, 0, 1, 1], [0, 3, 1, 1]
    result = classification_metrics(y_true, y_pred, num_classes=5)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert result["balanced_accuracy"] == pytest.approx((1 / 2 + 1.0) / 2)
    assert result["per_class"]["3"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    every_class = classification_metrics(Y_TRUE, Y_PRED)  # every class present: scikit-learn's macro-F1
    assert every_class["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))


def test_binary_sensitivity_specificity_and_auc():
    y_true, y_pred = np.array([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    positive = np.array([0.1, 0.6, 0.7, 0.8, 0.3])
    result = classification_metrics(y_true, y_pred, probs=np.stack([1 - positive, positive], axis=1))
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(1 / 2)
    assert result["auc"] == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs are ordered correctly
    assert _plain(result)


def test_binary_metrics_refer_to_the_named_positive_class_even_when_it_is_label_0():
    # label 0 = malignant (the finding), label 1 = benign: the report must be about malignant
    y_true, y_pred = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 0])
    malignant = np.array([0.9, 0.7, 0.4, 0.2, 0.6])  # P(malignant)
    probs = np.stack([malignant, 1 - malignant], axis=1)
    names = ["malignant", "benign"]
    result = classification_metrics(y_true, y_pred, probs=probs, class_names=names, positive_label=resolve_positive_label("malignant", names, 2))
    assert result["positive_class"] == "malignant"
    assert result["sensitivity"] == pytest.approx(2 / 3)  # malignant found: 2 of 3
    assert result["specificity"] == pytest.approx(1 / 2)  # benign cleared: 1 of 2
    assert result["positive_f1"] == pytest.approx(result["per_class"]["malignant"]["f1"]) and result["positive_f1"] == pytest.approx(2 / 3)
    assert result["positive_likelihood_ratio"] == pytest.approx((2 / 3) / (1 / 2))
    assert result["negative_likelihood_ratio"] == pytest.approx((1 / 3) / (1 / 2))
    assert result["auc"] == pytest.approx(roc_auc_score(y_true == 0, malignant)) and result["auc"] == pytest.approx(5 / 6)
    default = classification_metrics(y_true, y_pred, probs=probs, class_names=names)  # old calls: class 1, now named
    assert default["positive_class"] == "benign" and default["sensitivity"] == pytest.approx(1 / 2)
    assert _plain(result)


def test_positive_class_must_name_a_class_of_a_binary_task():
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['normal', 'pneumonia'\], got 'malignant'"):
        resolve_positive_label("malignant", ["normal", "pneumonia"], 2)
    with pytest.raises(ValueError, match="expected a binary task, got 3 classes"):
        resolve_positive_label("cat", ["cat", "dog", "fox"], 3)
    assert resolve_positive_label(None, ["normal", "pneumonia"], 2) == 1 and resolve_positive_label(0, None, 2) == 0


def test_multiclass_auc_is_one_vs_rest_macro():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=60)
    probs = rng.dirichlet(np.ones(4), size=60)
    probs[np.arange(60), y_true] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    result = classification_metrics(y_true, probs.argmax(axis=1), probs=probs, num_classes=4)
    assert result["auc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


def test_auc_with_one_class_present_is_none_with_a_reason():
    result = classification_metrics([1, 1, 1], [1, 0, 1], probs=[[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    assert result["auc"] is None and "only class 1" in result["auc_unavailable_reason"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(y_true=[0, 1, 3], y_pred=[0, 1, 1], num_classes=3), "y_true\\[2\\] = 3 is outside the expected range \\[0, 2\\]"),
        (dict(y_true=[0, 1], y_pred=[0, 1, 1]), "same length, got 2 and 3"),
        (dict(y_true=[0, 1], y_pred=[0, 1], probs=[[1.0, 0.0]]), "expected probs of shape \\(2, 2\\)"),
        (dict(y_true=[0, 1], y_pred=[0, 1], class_names=["a", "b", "c"], num_classes=2), "expected 2 class_names"),
        (dict(y_true=[0.5, 1], y_pred=[0, 1]), "expected integer labels in y_true"),
    ],
)
def test_classification_metrics_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(**kwargs)


def test_permuted_perfect_clustering_scores_one():
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    clusters = np.array([2, 2, 0, 0, 0, 3, 3, 1])  # class k is cluster perm[k]
    assert hungarian_match(y_true, clusters, 4).tolist() == [1, 3, 0, 2]
    result = clustering_metrics(y_true, clusters, 4)
    for name in ("nmi", "ari", "accuracy", "purity", "macro_f1", "balanced_accuracy"):
        assert result[name] == pytest.approx(1.0), name
    assert _plain(result)


def test_clustering_with_more_clusters_than_classes():
    # Three pure clusters for two classes: purity 1, but only two clusters can be matched one-to-one.
    y_true, clusters = [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    mapping = hungarian_match(y_true, clusters, 2)
    assert mapping[0] == 0 and sorted(mapping[1:].tolist()) == [-1, 1]
    result = clustering_metrics(y_true, clusters, 2)
    assert result["purity"] == pytest.approx(1.0)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx((1.0 + 2 * 2 / (2 + 4)) / 2)  # class 1: tp 2, fn 2
    assert result["balanced_accuracy"] == pytest.approx((1.0 + 2 / 4) / 2)  # the unmatched cluster's images: errors


def test_clustering_matches_a_hand_computed_case():
    # contingency (clusters x classes) [[1, 3], [2, 0]]: cluster 0 -> class 1, cluster 1 -> class 0
    y_true, clusters = [0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0]
    assert hungarian_match(y_true, clusters, 2).tolist() == [1, 0]
    result = clustering_metrics(y_true, clusters, 2)
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["purity"] == pytest.approx(5 / 6)
    assert result["cluster_to_class"] == [1, 0]


def test_recall_of_a_class_without_images_is_undefined_not_zero():
    """A test set without positives (a batch of normal scans) has no sensitivity: sklearn's 0 read as a classifier
    that misses every positive, and gave LR+ = 0."""
    from diffusion_classifiers.evaluation import render_evaluation_report

    metrics = classification_metrics([0, 0, 0], [0, 0, 1], num_classes=2, class_names=["normal", "bleed"])
    assert metrics["sensitivity"] is None and metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["positive_likelihood_ratio"] is None and metrics["negative_likelihood_ratio"] is None
    metrics["calibration"] = {"ece": 0.0}
    assert "| sensitivity (recall of bleed) | n/a |" in render_evaluation_report(metrics, "t", [])
    no_negatives = classification_metrics([1, 1], [1, 0], num_classes=2)
    assert no_negatives["specificity"] is None and no_negatives["sensitivity"] == 0.5
    both = classification_metrics([0, 1, 1, 0], [0, 1, 0, 1], num_classes=2)
    assert both["positive_likelihood_ratio"] == pytest.approx(1.0) and both["negative_likelihood_ratio"] == pytest.approx(1.0)


def test_a_clusterings_accuracy_by_chance_is_reported_beside_it():
    """With two test images per class (121 plankton classes) random clusters of the same sizes already match half
    the images to a class: the Hungarian accuracy must be read against that, not against 1 / K."""
    from diffusion_classifiers.metrics import clustering_metrics

    pairs = np.repeat(np.arange(121), 2)
    perfect = clustering_metrics(pairs, pairs, 121)
    assert perfect["accuracy"] == 1.0 and 0.4 < perfect["accuracy_by_chance"] < 0.6  # seeded: the same every run
    many = np.repeat(np.arange(10), 200)  # many images per cluster: chance near 1 / K
    assert 0.1 <= clustering_metrics(many, many, 10)["accuracy_by_chance"] < 0.15


def test_seed_sensitivity_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"margins and stderr of shape \[3\], got \(3,\), \(3,\) and \(2,\)"):
        seed_sensitivity_metrics([0, 1, 1], [0, 1, 0], [0.5, -1.0, 2.0], [0.1, 0.2])
    assert seed_sensitivity_metrics([0, 1], [0, 1], [3.0, -0.1], [1.0, 1.0])["decisions_within"] == 1


def test_a_reports_notes_are_paragraphs_of_their_own_between_the_count_and_the_table():
    """Seen in a report: 'Not checked against the model's training images' followed the line counting the images
    with no blank line, so Markdown ran the two into one paragraph (and left two blank lines before the table)."""
    from diffusion_classifiers.evaluation import render_evaluation_report

    metrics = classification_metrics([0, 1, 2], [0, 1, 1], class_names=["a", "b", "c"])
    metrics |= {"calibration": {"ece": 0.0}, "training_images_checked": False, "absent_classes": ["d"]}
    metrics |= {"pipeline_call": {"num_timesteps": 20}}
    report = render_evaluation_report(metrics, "t", [], "test").split("\n")
    first = report.index("3 images of the test split.")
    table = report.index("| metric | value |")
    paragraphs = report[first:table]
    assert all(line == "" for line in paragraphs[1::2]) and all(line for line in paragraphs[0::2])
    assert len(paragraphs) == 8 and paragraphs[2].startswith("Scored by the pipeline called with `num_timesteps=20`")


def test_a_binary_task_records_the_average_precision_its_pr_figure_shows():
    """The PR figure's legend gave AP; metrics.json, the report and the card did not (session 55's note)."""
    from sklearn.metrics import average_precision_score

    from diffusion_classifiers.evaluation import render_evaluation_report

    y, scores = [0, 0, 1, 1, 0, 1], np.array([0.1, 0.6, 0.35, 0.8, 0.2, 0.9])
    probs = np.stack([1 - scores, scores], axis=1)
    metrics = classification_metrics(y, probs.argmax(1), probs=probs, class_names=["normal", "bleed"], positive_label=0)
    assert metrics["average_precision"] == pytest.approx(average_precision_score(np.equal(y, 0), probs[:, 0]))
    metrics["calibration"] = {"ece": 0.0}
    ap = f"{metrics['average_precision']:.4f}"
    report = render_evaluation_report(metrics, "t", [])
    assert f"| AUC | {metrics['auc']:.4f} |\n| average precision (PR AUC of normal) | {ap} |" in report
    assert "average_precision" not in classification_metrics([0, 1, 2], [0, 1, 1], probs=np.eye(3))


def test_specificity_names_the_class_it_is_the_recall_of():
    """QA (head CT): "sensitivity (recall of bleed)" sat beside a bare "specificity"."""
    from diffusion_classifiers.evaluation import render_evaluation_report

    metrics = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], class_names=["normal", "bleed"])
    metrics["calibration"] = {"ece": 0.0}
    assert "| specificity (recall of normal) | 100.00% |" in render_evaluation_report(metrics, "t", [])


def test_repeated_class_names_are_refused():
    """Review: ["a", "a"] merged into one per-class row, and a binary report then found no negative class."""
    with pytest.raises(ValueError, match=r"class_names: expected distinct names, got \['a'\] more than once"):
        classification_metrics([0, 1], [0, 1], class_names=["a", "a"])
    with pytest.raises(ValueError, match=r"got \['1'\] more than once in \['1', '1'\]"):
        classification_metrics([0, 1], [0, 1], class_names=[1, "1"])


def test_a_long_tailed_reports_absent_classes_are_named_ten_at_most():
    """QA (a plankton lab): 111 absent class names filled the AUC cell, the warning line and the bold warning of the
    report; metrics.json keeps them all."""
    from diffusion_classifiers.evaluation import render_evaluation_report
    from diffusion_classifiers.metrics import mark_absent_classes

    names = [f"class_{k:03d}" for k in range(30)]
    metrics = classification_metrics([0, 1, 1], [0, 1, 0], class_names=names)
    with pytest.warns(UserWarning, match=r"class\(es\) class_002, .*, class_011 and 18 more \(none of its 3 images\)"):
        mark_absent_classes(metrics, [0, 1, 1], names, "test split", "test split")
    assert len(metrics["absent_classes"]) == 28
    report = render_evaluation_report({**metrics, "calibration": {"ece": 0.0}}, "t", [])
    assert "| AUC | undefined (no image of class class_002, class_003, " in report
    assert "class_011 and 18 more in the test split) |" in report and "class_012" not in report.split("| class |")[0]

"""A binary task scored for its positive class in every evaluation protocol (`probing.evaluate_protocols`,
`metrics.clustering_metrics`): the head-CT study's F1 is the haemorrhage class's, which the class-averaged figures
alone did not give (issue 12 item 8: `rc_dit_accuracy --positive_class`)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from diffusion_classifiers.metrics import BINARY_SCORES, binary_scores, classification_metrics, clustering_metrics
from diffusion_classifiers.probing import evaluate_protocols


@pytest.fixture(scope="module")
def ones_and_sevens():
    """scikit-learn's digits 1 (class 0) and 7 (class 1), shuffled once, cut into train / val / test."""
    x, y = load_digits(return_X_y=True)
    keep = np.isin(y, (1, 7))
    x, y = (x[keep] / 16).astype(np.float32), (y[keep] == 7).astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return {"train": (x[:200], y[:200]), "val": (x[200:280], y[200:280]), "test": (x[280:], y[280:])}


def protocols(splits, **kwargs) -> dict:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    return evaluate_protocols(
        x_train, y_train, x_test, y_test, val_features=x_val, val_labels=y_val, shots=(1, 5), num_episodes=2,
        progress_bar={"disable": True}, **kwargs,
    )  # fmt: skip


def test_every_protocol_of_a_binary_task_reports_the_positive_class(ones_and_sevens):
    default = protocols(ones_and_sevens, class_names=["one", "seven"])
    sevens = protocols(ones_and_sevens, class_names=["one", "seven"], positive_label="seven")
    ones = protocols(ones_and_sevens, class_names=["one", "seven"], positive_label=0)
    assert default == sevens and default["settings"]["positive_label"] == 1 and ones["settings"]["positive_label"] == 0
    for protocol in ("label_free", "label_chosen", "label_free_on_val", "linear_probe"):
        assert set(BINARY_SCORES) <= set(ones[protocol]), protocol
        # the positive class's recall is the other's specificity: the same predictions, read for the other class
        assert ones[protocol]["sensitivity"] == sevens[protocol]["specificity"], protocol
        assert ones[protocol]["specificity"] == sevens[protocol]["sensitivity"], protocol
    for protocol in ("prototype", "knn"):
        for shots in ("1", "5"):
            episodes = ones[protocol][shots]
            assert episodes["sensitivity_per_episode"] == sevens[protocol][shots]["specificity_per_episode"]
            assert episodes["positive_f1_mean"] == pytest.approx(np.mean(episodes["positive_f1_per_episode"]))
    # the class-averaged figures do not depend on which class is positive; the two classes' F1s average to macro-F1
    assert ones["linear_probe"]["macro_f1"] == sevens["linear_probe"]["macro_f1"]
    mean_f1 = (ones["linear_probe"]["positive_f1"] + sevens["linear_probe"]["positive_f1"]) / 2
    assert mean_f1 == pytest.approx(sevens["linear_probe"]["macro_f1"])
    assert ones["linear_probe"]["val_sensitivity"] == sevens["linear_probe"]["val_specificity"]


def test_a_positive_class_is_refused_on_more_than_two_classes():
    x, y = load_digits(return_X_y=True)
    with pytest.raises(ValueError, match="positive_class: expected a binary task, got 10 classes"):
        evaluate_protocols(x[:300], y[:300], x[300:400], y[300:400], shots=(1,), positive_label=1, linear_probe=False)
    result = evaluate_protocols(x[:300], y[:300], x[300:400], y[300:400], shots=(1,), linear_probe=False,
                                progress_bar={"disable": True})  # fmt: skip
    assert "sensitivity" not in result["label_free"] and "sensitivity_mean" not in result["prototype"]["1"]


def test_binary_scores_are_those_of_classification_metrics():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y_true, y_pred, positive = rng.integers(0, 2, 12), rng.integers(0, 2, 12), int(rng.integers(0, 2))
        metrics = classification_metrics(y_true, y_pred, num_classes=2, positive_label=positive)
        assert binary_scores(y_true, y_pred, positive) == {name: metrics[name] for name in BINARY_SCORES}
    assert binary_scores([1, 1], [1, 0])["specificity"] is None  # no negative image: undefined, not 0


def test_an_unmatched_clusters_images_are_errors_and_predictions_of_neither_class():
    # three pure clusters for two classes: cluster 2 (two images of class 1) is left unmatched
    y_true, clusters = [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    sevens, ones = clustering_metrics(y_true, clusters, 2), clustering_metrics(y_true, clusters, 2, positive_label=0)
    assert (sevens["sensitivity"], sevens["specificity"], sevens["positive_f1"]) == (0.5, 1.0, pytest.approx(2 / 3))
    assert (ones["sensitivity"], ones["specificity"], ones["positive_f1"]) == (1.0, 0.5, 1.0)
    assert (sevens["positive_f1"] + ones["positive_f1"]) / 2 == pytest.approx(sevens["macro_f1"])

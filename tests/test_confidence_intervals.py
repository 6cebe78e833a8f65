"""Confidence intervals of the metrics `evaluate` and `aggregate` record (`confidence_intervals.py`), checked against
independent computations: the Wilson formula by hand, DeLong's variance from every (positive, negative) pair, and
scikit-learn's class-averaged metrics of the images a confusion matrix stands for."""

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

from diffusion_classifiers.confidence_intervals import (
    cell_counts_resampled_within_classes,
    class_averages,
    classification_intervals,
    delong_auc_interval,
    intervals_of_metrics,
    multi_class_auc_interval,
    resampled_counts,
    weighted_average_precision,
    wilson_interval,
)
from diffusion_classifiers.metrics import classification_metrics, mark_absent_classes

Z95 = norm.ppf(0.975)


def _wilson_by_hand(successes: int, trials: int) -> list:
    """Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p, z2 = successes / trials, Z95**2
    centre, half = p + z2 / (2 * trials), Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials**2))
    return [(centre - half) / (1 + z2 / trials), (centre + half) / (1 + z2 / trials)]


@pytest.mark.parametrize("successes, trials", [(8, 10), (0, 7), (30, 30), (412, 1000)])
def test_wilson_interval_is_the_formulas(successes, trials):
    assert wilson_interval(successes, trials) == pytest.approx(_wilson_by_hand(successes, trials), abs=1e-12)


def test_no_trials_no_interval():
    assert wilson_interval(0, 0) is None


def _delong_by_pairs(is_positive, scores) -> list:
    """DeLong, DeLong & Clarke-Pearson (1988) from the m x n comparison matrix psi(x, y) = 1, 1/2, 0."""
    positives, negatives = scores[is_positive], scores[~is_positive]
    psi = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    auc = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    se = math.sqrt(v10.var(ddof=1) / len(positives) + v01.var(ddof=1) / len(negatives))
    return [max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)]


def test_delong_interval_is_that_of_every_pair_with_ties():
    rng = np.random.default_rng(0)
    is_positive = rng.random(300) < 0.3
    scores = np.round(is_positive + rng.normal(0, 1.2, 300), 1)  # rounded: many ties across the classes
    interval = delong_auc_interval(is_positive, scores)
    assert interval == pytest.approx(_delong_by_pairs(is_positive, scores), abs=1e-12)
    assert np.mean(interval) == pytest.approx(roc_auc_score(is_positive, scores), abs=1e-12)  # not clipped here


def test_delong_interval_is_clipped_to_0_1_and_not_a_point():
    is_positive, scores = np.array([1, 1, 1, 0, 0, 0, 0], bool), np.array([0.9, 0.95, 0.5, 0.1, 0.2, 0.3, 0.6])
    low, high = delong_auc_interval(is_positive, scores)
    assert high == 1.0 and low == pytest.approx(_delong_by_pairs(is_positive, scores)[0], abs=1e-12)
    # review: variance 0 gave [1.0, 1.0] at perfect separation and [0.5, 0.5] for tied scores, claiming no error
    assert delong_auc_interval(is_positive, np.array([0.9, 0.95, 0.8, 0.1, 0.2, 0.3, 0.6])) is None
    assert delong_auc_interval(is_positive, np.full(7, 0.5)) is None
    assert delong_auc_interval(np.array([0, 0, 0, 0, 1], bool), np.arange(5.0)) is None  # one positive


def test_an_interval_not_given_says_why():
    """Review: a perfect result's bootstrap intervals were points (balanced accuracy '100.00% to 100.00%' beside
    sensitivity's '56.55% to 100.00%'), and a binary task without an AUC interval was said to average over classes."""
    perfect = classification_intervals(np.array([[10, 0], [0, 10]]), 1, (np.arange(20) >= 10, np.arange(20.0)))
    assert perfect["balanced_accuracy"] is perfect["macro_f1"] is perfect["auc"] is None
    assert perfect["methods"]["balanced_accuracy"].startswith("none: every resample gives the same value")
    assert perfect["methods"]["auc"].startswith("none: DeLong's variance is 0")
    assert perfect["sensitivity"] == pytest.approx(_wilson_by_hand(10, 10))  # Wilson's bound a perfect proportion
    one_class = classification_intervals(np.array([[7, 0], [0, 0]]), 1, None)
    assert one_class["sensitivity"] is None and one_class["methods"]["sensitivity"] == "none: the class is absent"
    assert one_class["methods"]["auc"] == "none: the AUC is undefined"
    one_positive = classification_intervals(np.array([[5, 1], [0, 1]]), 1, (np.arange(7) == 6, np.arange(7.0)))
    assert one_positive["methods"]["auc"] == "none: DeLong's needs two of each class"


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_averages_are_scikit_learns_on_the_images_of_each_matrix():
    """Balanced accuracy and macro-F1 over the classes present, as `classification_metrics` averages them, on
    matrices with an absent class and a class never predicted."""
    rng = np.random.default_rng(1)
    matrices = rng.integers(0, 5, (20, 4, 4))
    matrices[::3, 2, :] = 0  # class 2 absent from the truth
    matrices[1::3, :, 3] = 0  # class 3 never predicted
    rows, columns = (cells.ravel() for cells in np.indices((4, 4)))
    averages = class_averages(matrices.reshape(20, 16), rows, columns, 4)
    for index, matrix in enumerate(matrices):
        true, predicted = np.nonzero(matrix)
        y_true, y_pred = np.repeat(true, matrix[true, predicted]), np.repeat(predicted, matrix[true, predicted])
        present = np.unique(y_true)
        assert averages["balanced_accuracy"][index] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
        macro_f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        assert averages["macro_f1"][index] == pytest.approx(macro_f1, abs=1e-12)


def _binary_case(num_images=200, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, num_images)
    positive = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, num_images))))
    probs = np.stack([1 - positive, positive], axis=1)
    return y, probs, classification_metrics(y, probs.argmax(1), probs=probs, class_names=["normal", "bleed"])


def test_intervals_of_a_binary_evaluation_hold_its_figures_and_name_their_methods():
    y, probs, metrics = _binary_case()
    intervals = intervals_of_metrics(metrics, y, probs)
    assert intervals == intervals_of_metrics(metrics, y, probs)  # seeded: the same on every run
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "auc"):
        low, high = intervals[key]
        assert low < metrics[key] < high, key
    positives = int(y.sum())
    assert intervals["sensitivity"] == wilson_interval(round(metrics["sensitivity"] * positives), positives)
    assert intervals["auc"] == delong_auc_interval(y == 1, probs[:, 1])
    assert intervals["methods"]["auc"] == "DeLong" and intervals["level"] == 0.95
    # the positive class is the named one: its sensitivity is the other's specificity
    flipped = classification_metrics(y, probs.argmax(1), probs=probs, class_names=["normal", "bleed"], positive_label=0)
    assert intervals_of_metrics(flipped, y, probs)["sensitivity"] == intervals["specificity"]


def test_a_multiclass_auc_interval_needs_the_scores_and_each_class_present():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 100)
    metrics = classification_metrics(y, np.where(rng.random(100) < 0.6, y, 0), probs=rng.dirichlet([1] * 4, 100))
    intervals = intervals_of_metrics(metrics, y, None)
    assert intervals["auc"] is None and intervals["methods"]["auc"] == "none: the AUC is undefined"
    assert "sensitivity" not in intervals and "sensitivity" not in intervals["methods"]
    assert "average_precision" not in intervals
    assert intervals["balanced_accuracy"][0] < metrics["balanced_accuracy"] < intervals["balanced_accuracy"][1]
    absent = classification_metrics(y % 3, y % 3, num_classes=4)  # class 3 absent: the AUC is undefined (QA)
    assert intervals_of_metrics(absent, y % 3, None)["methods"]["auc"] == "none: the AUC is undefined"


def test_a_multiclass_auc_interval_is_recorded_and_cleared_where_a_class_is_absent():
    """Since 2026-12-07 a multi-class AUC has an interval; where the split lacks a model's class the AUC is undefined
    (`mark_absent_classes`), and so is its interval, though it was computed over the classes present."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 200)
    scores = rng.normal(size=(200, 4)) + np.eye(4)[y]
    metrics = classification_metrics(y, scores.argmax(1), probs=scores)
    metrics["confidence_intervals"] = intervals = intervals_of_metrics(metrics, y, scores)
    assert intervals["auc"] == multi_class_auc_interval(y, scores) and intervals["auc"][0] < metrics["auc"]
    assert metrics["auc"] < intervals["auc"][1] and intervals["methods"]["auc"].startswith("DeLong's variance")
    y[y == 3], scores = 2, scores[:, :4]
    metrics = classification_metrics(y, scores.argmax(1), probs=scores, num_classes=4)
    metrics["confidence_intervals"] = intervals_of_metrics(metrics, y, scores)
    assert metrics["confidence_intervals"]["auc"] is not None  # over classes 0-2, as the AUC itself
    with pytest.warns(UserWarning, match="no image of the model's class"):
        mark_absent_classes(metrics, y, ["0", "1", "2", "3"], "test split", "test split")
    assert metrics["auc"] is None and metrics["confidence_intervals"]["auc"] is None
    assert metrics["confidence_intervals"]["methods"]["auc"] == "none: the AUC is undefined"


def test_the_multiclass_auc_interval_is_delongs_for_two_classes():
    y, probs, _ = _binary_case()  # each class's AUC of its own column: both the binary AUC
    assert multi_class_auc_interval(y, probs) == pytest.approx(delong_auc_interval(y == 1, probs[:, 1]), abs=1e-12)


def _weighted_aucs(is_positive, scores, weights):
    """The AUC of `scores` under each row of `weights` [B, N] (each image counted its weight's times): the weighted
    share of (positive, negative) pairs the positive outranks, ties counting half (scores without ties here)."""
    order = np.argsort(scores)
    positive, weights = is_positive[order], weights[:, order]
    negatives_below = np.cumsum(weights * ~positive, axis=1)  # each image's negatives at or below its score
    pairs_won = (weights * positive * negatives_below).sum(1)
    return pairs_won / ((weights * positive).sum(1) * (weights * ~positive).sum(1))


def test_the_multiclass_auc_interval_has_the_spread_of_a_bootstrap_within_each_class():
    """Its standard error against that of 1,000 resamples drawing each class's images within the class, each
    resample scored by the weighted Mann-Whitney statistic (scikit-learn's AUC with sample weights, checked on five of
    them; 5,000 calls of scikit-learn took 13 s): the bootstrap's own Monte-Carlo error on a standard deviation is
    about 1 / sqrt(2 x 1000) = 2.2%, the two estimators differ by terms of order 1 / (images per class) = 1/60: 10%
    holds both with room."""
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(5), 60)
    scores = rng.normal(size=(300, 5)) + 0.8 * np.eye(5)[y]
    counts = resampled_counts(y, np.random.default_rng(0), 1000)
    per_class = np.array([_weighted_aucs(y == k, scores[:, k], counts) for k in range(5)])
    for k in range(5):
        expected = [roc_auc_score(y == k, scores[:, k], sample_weight=w) for w in counts[:5]]
        assert per_class[k, :5] == pytest.approx(expected, abs=1e-12)
    resampled = per_class.mean(0)
    low, high = multi_class_auc_interval(y, scores)
    assert (high - low) / (2 * Z95) == pytest.approx(resampled.std(), rel=0.10)
    assert multi_class_auc_interval(np.r_[y, 5], np.r_[scores, np.zeros((1, 5))]) is None  # a class of one image
    few = classification_intervals(np.diag([60, 60, 60, 60, 9]), None, (np.r_[y[:240], y[240:249]], scores[:249]))
    assert few["auc"] is None and few["methods"]["auc"].startswith("none: 1 of the 5 classes scored hold fewer than")
    assert "too few for DeLong's variance of the average" in few["methods"]["auc"]  # review: not "a bootstrap"


def test_weighted_average_precision_is_scikit_learns_with_sample_weights():
    rng = np.random.default_rng(6)
    is_positive = rng.random(150) < 0.3
    scores = np.round(rng.normal(size=150) + is_positive, 1)  # ties: one threshold each
    counts = resampled_counts(is_positive, rng, 5)
    expected = [average_precision_score(is_positive, scores, sample_weight=weights) for weights in counts]
    assert weighted_average_precision(is_positive, scores, counts) == pytest.approx(expected, abs=1e-12)


def test_a_binary_average_precision_gets_a_bootstrap_interval_with_ten_images_of_each_class():
    y, probs, metrics = _binary_case()
    intervals = intervals_of_metrics(metrics, y, probs)
    low, high = intervals["average_precision"]
    assert low < metrics["average_precision"] < high and intervals["methods"]["average_precision"].startswith(
        "percentile bootstrap within each class (n - 1 of its n images drawn, rescaled), 2000 resamples"
    )
    few = np.r_[y[y == 0], y[y == 1][:9]], np.r_[probs[y == 0], probs[y == 1][:9]]
    few_metrics = classification_metrics(few[0], few[1].argmax(1), probs=few[1])
    few_intervals = intervals_of_metrics(few_metrics, *few)
    assert few_intervals["average_precision"] is None and few_intervals["auc"] is not None  # DeLong's: two
    assert few_intervals["methods"]["average_precision"].startswith("none: 1 of the 2 classes scored hold fewer")


def test_class_averages_get_no_interval_with_a_class_of_fewer_than_ten_images():
    """QA (a plankton lab): on NDSB's long tail (46 of 121 classes with one test image) the within-class bootstrap's
    95% interval of balanced accuracy held the population's in 67.0% of 400 drawn test splits (94.3% with 5 images per
    class, 94.0% with 10; benchmarks/interval_coverage.py): a class of one image has recall 0 or 1 in every
    resample. (Resampling the images together was worse: a constant classifier's 50% read "0.00% to 50.00%", from
    resamples that lost the lone positive.)"""
    few = classification_intervals(np.array([[9, 1], [0, 1]]), 1, None)
    assert few["balanced_accuracy"] is few["macro_f1"] is None
    assert few["methods"]["macro_f1"].startswith("none: 1 of the 2 classes scored hold fewer than 10 images")
    assert few["sensitivity"] == pytest.approx(_wilson_by_hand(1, 1))  # a proportion's interval is still given
    low, high = classification_intervals(np.array([[18, 2], [1, 9]]), 1, None)["balanced_accuracy"]
    assert low < (18 / 20 + 9 / 10) / 2 < high
    assert classification_intervals(np.array([[0, 30], [0, 10]]), 1, None)["balanced_accuracy"] is None  # always 0.5


def test_the_bootstrap_interval_narrows_as_the_images_grow():
    """The same confusion proportions on 100 and on 10,000 images: the interval about 10x narrower."""
    confusion = np.array([[40, 10], [15, 35]])
    narrow, wide = (classification_intervals(confusion * scale) for scale in (100, 1))
    widths = [interval["balanced_accuracy"][1] - interval["balanced_accuracy"][0] for interval in (wide, narrow)]
    assert 7 < widths[0] / widths[1] < 13


def test_evaluate_records_the_intervals_and_its_report_and_card_show_them(tmp_path):
    from diffusion_classifiers.evaluation import render_evaluation_report
    from diffusion_classifiers.hub import load_eval_intervals, load_eval_metrics, render_model_card
    from diffusion_classifiers.metrics import calibration_metrics

    y, probs, metrics = _binary_case(60)
    metrics["calibration"] = calibration_metrics(y, probs)
    metrics["confidence_intervals"] = intervals_of_metrics(metrics, y, probs)
    report = render_evaluation_report(metrics, "Evaluation", [], "test", "ct")
    low, high = metrics["confidence_intervals"]["sensitivity"]
    assert "| metric | value | 95% confidence interval |" in report
    sensitivity = f"{100 * metrics['sensitivity']:.2f}% | {100 * low:.2f}% to {100 * high:.2f}%"
    assert f"| sensitivity (recall of bleed) | {sensitivity} |" in report
    assert "| ECE | " in report and "AUC: DeLong" in report
    ap_low, ap_high = metrics["confidence_intervals"]["average_precision"]
    average_precision = f"{metrics['average_precision']:.4f} | {ap_low:.4f} to {ap_high:.4f}"
    assert f"| average precision (PR AUC of bleed) | {average_precision} |" in report
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = str(render_model_card(
        "unet_features", model_name="m", dataset_name="ct", dataset_license="CC-BY-4.0", training_command="t",
        evaluation_command="e", metrics=load_eval_metrics(tmp_path / "metrics.json"), positive_class="bleed",
        class_names=["normal", "bleed"], intervals=load_eval_intervals(tmp_path / "metrics.json"),
    ))  # fmt: skip
    assert "| metric | value | 95% confidence interval |" in card
    assert f"| Sensitivity (bleed positive) | {metrics['sensitivity']:.4f} | {low:.4f} to {high:.4f} |" in card
    assert f"| Average precision (PR AUC, bleed positive) | {average_precision} |" in card
    assert "describe only the sampling error of this evaluation set" in " ".join(card.split())
    assert "Sensitivity and specificity (and the average precision) take **bleed** as the positive class" in card
    del metrics["confidence_intervals"]  # a metrics.json of an earlier version: the table as it was
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert load_eval_intervals(tmp_path / "metrics.json") is None
    assert "| metric | value |\n" in render_evaluation_report(metrics, "Evaluation", [], "test", "ct")


def test_a_class_resampled_within_itself_varies_by_its_unbiased_variance():
    """Each class of n images is drawn n - 1 times and weighed n / (n - 1) (Rao and Wu's rescaled bootstrap): its
    recall varies by p (1 - p) / (n - 1), not the plain bootstrap's p (1 - p) / n, whose intervals ran about 2 points
    narrow at 10 images a class (benchmarks/interval_coverage.py). 2,000 resamples estimate a variance within about
    3% (1 / sqrt(1000)); n = 10 puts the two 10% apart."""
    classes, counts = np.array([0, 0]), np.array([7, 3])  # one class of 10 images: 7 right, 3 wrong
    drawn = np.concatenate(list(cell_counts_resampled_within_classes(classes, counts)))
    assert np.allclose(drawn.sum(1), 10)  # the class's images, reweighed to its count
    recall = drawn[:, 0] / drawn.sum(1)
    assert recall.var() == pytest.approx(0.7 * 0.3 / 9, rel=0.04)  # plain: 0.021, 10% below
    assert np.array_equal(np.concatenate(list(cell_counts_resampled_within_classes(np.array([0]), np.array([1])))),
                          np.ones((2000, 1)))  # a class of one image: drawn once


def test_ppv_and_npv_come_with_wilson_intervals_of_the_decisions_made():
    """QA (a biostatistician): no NPV in the report, no interval of the PPV or NPV. Both are proportions of the images
    decided positive (negative) at this set's prevalence: Wilson's of the column of the confusion matrix."""
    confusion = np.array([[50, 10], [5, 35]])  # rows: true benign, malignant; columns: decided
    metrics = classification_metrics(np.repeat([0, 0, 1, 1], [50, 10, 5, 35]), np.repeat([0, 1, 0, 1], [50, 10, 5, 35]),
                                      class_names=["benign", "malignant"], positive_label=1)  # fmt: skip
    assert metrics["positive_precision"] == pytest.approx(35 / 45) and metrics["negative_predictive_value"] == 50 / 55
    intervals = classification_intervals(confusion, 1)
    assert intervals["positive_precision"] == wilson_interval(35, 45) and intervals["methods"]["positive_precision"] \
        == "Wilson score interval"  # fmt: skip
    assert intervals["negative_predictive_value"] == wilson_interval(50, 55)
    never_positive = classification_intervals(np.array([[60, 0], [40, 0]]), 1)
    assert never_positive["positive_precision"] is None
    assert never_positive["methods"]["positive_precision"] == "none: no image decided so"
    undefined = classification_metrics(np.repeat([0, 1], [60, 40]), np.zeros(100, int), positive_label=1)
    assert undefined["positive_precision"] is None and undefined["negative_predictive_value"] == 0.6  # review: not 0

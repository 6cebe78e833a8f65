"""Two classifiers measured on the same images: how their figures differ, and whether the difference exceeds what the
sampling of images explains (a paired comparison: each image is scored by both, so their errors are correlated and
tests of each model alone would overstate the uncertainty of the difference).

- Accuracy (and, for a binary task, sensitivity and specificity, on the positive and the negative images): McNemar's
  exact test, the images one model gets right and the other wrong (binomial, scipy's `binomtest`).
- AUC: DeLong's test for correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988), the one pROC's `roc.test`
  runs, with its normal interval of the difference; a multi-class AUC (the average of one-against-the-rest AUCs) the
  same, from the influence of each image on the average (`confidence_intervals.auc_influence`).
- Accuracy, balanced accuracy and macro-F1 differences: percentile bootstrap intervals, each class's images
  resampled within the class, the two models' decisions on an image drawn together (as `confidence_intervals`
  bounds one model's).
- Brier score and log loss (of the probabilities, where both sides' rows are distributions): the mean of each
  image's difference, its interval by the same paired bootstrap.
"""

from typing import Dict, Optional

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import binomtest, norm

from .confidence_intervals import (
    BOOTSTRAP_SEED,
    CONFIDENCE_LEVEL,
    NUM_RESAMPLES,
    auc_influence,
    cell_counts_resampled_within_classes,
    class_averages,
    image_weights_resampled_within_classes,
    influence_variance,
    percentile_interval,
    too_few_images_for,
)
from .validation import as_labels

__all__ = [
    "PROPER_SCORES",
    "interval_and_test_disagree",
    "mcnemar_test",
    "paired_auc_difference",
    "paired_bootstrap_differences",
    "paired_figures",
    "paired_proper_score_differences",
]

BOOTSTRAP_METHOD = (
    f"paired percentile bootstrap within each class (n - 1 of its n images drawn, rescaled), {NUM_RESAMPLES} "
    f"resamples, seed {BOOTSTRAP_SEED}"
)
DELONG_METHOD = "DeLong's test for correlated ROC curves and its normal interval"
_MULTI_CLASS_DELONG = (
    "DeLong's variance carried over to the difference of the averages of one-against-the-rest AUCs (as evaluate's "
    "interval of one model's; an extension of DeLong's test, which pROC does not offer) and its normal interval"
)
_SAME_DECISIONS = "none: every resample gives the same difference (the two decide the images alike)"
_NO_AUC_VARIANCE = (
    "DeLong's test; no interval: the difference's variance is 0 (the two rank the images alike, or both separate the "
    "classes perfectly)"
)
_DECISION_NAMES = ("y_true", "pred_a", "pred_b")
PROPER_SCORES = ("brier", "log_loss")  # lower is better: a negative difference is B's improvement
_SAME_PROBABILITIES = (
    "none: every resample gives the same difference (every image's the same, e.g. the same probabilities)"
)


def mcnemar_test(correct_a, correct_b) -> dict:
    """McNemar's exact test of two models' right and wrong answers on the same images (`correct_a`, `correct_b` [N],
    booleans): how many images only A gets right, only B, the difference of their accuracies (B's less A's) and the
    two-sided p-value of the images only one gets right splitting as unevenly by chance (1.0 when none does)."""
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(correct_a & ~correct_b)), int(np.sum(correct_b & ~correct_a))
    discordant = only_a + only_b
    p_value = float(binomtest(only_b, discordant, 0.5).pvalue) if discordant else 1.0
    difference = (only_b - only_a) / len(correct_a) if len(correct_a) else None
    return {"only_a_correct": only_a, "only_b_correct": only_b, "difference": difference, "p_value": p_value}


def paired_auc_difference(labels, scores_a, scores_b, level: float = CONFIDENCE_LEVEL) -> Optional[dict]:
    """DeLong's test of two AUCs of the same images: `labels` [N] booleans (binary: the positive images) and
    `scores_a`, `scores_b` [N], or class ids and scores [N, K] (the average over the classes present of
    one-against-the-rest AUCs). The AUCs, their difference (B's less A's), its normal `interval` at `level` (clipped
    to [-1, 1]) and the two-sided `p_value`; the interval and the p-value are None where the difference's variance is
    0 (the two rank the images alike, or both separate the classes perfectly). None where a class present holds
    fewer than two images, or only one class is."""
    labels = np.asarray(labels)
    labels = labels if labels.dtype == bool else as_labels(labels, "labels")
    supports = np.unique(labels, return_counts=True)[1]
    if len(supports) < 2 or supports.min() < 2:
        return None
    (auc_a, influence_a), (auc_b, influence_b) = auc_influence(labels, scores_a), auc_influence(labels, scores_b)
    difference = auc_b - auc_a
    variance = influence_variance(labels, influence_b - influence_a)
    result = {"auc_a": auc_a, "auc_b": auc_b, "difference": difference, "interval": None, "p_value": None}
    if variance > 0:
        standard_error = float(np.sqrt(variance))
        half_width = float(norm.ppf(0.5 + level / 2)) * standard_error
        result["interval"] = [max(-1.0, difference - half_width), min(1.0, difference + half_width)]
        result["p_value"] = float(2 * norm.sf(abs(difference) / standard_error))
    return result


def paired_figures(
    y_true, pred_a, pred_b, scores_a, scores_b, num_classes: int, positive_label: Optional[int] = None,
    level: float = CONFIDENCE_LEVEL,
) -> dict:
    """Two models' figures on the same images (`y_true`, their decisions `pred_a`, `pred_b` [N] class ids, and what
    their AUCs rank by, `scores_a`, `scores_b`: [N] toward `positive_label` for a binary task, else [N, K]): `level`,
    `figures` (accuracy, balanced accuracy, macro-F1, a binary task's sensitivity and specificity, the AUC: each `a`,
    `b`, `difference` B's less A's, its `interval`, and where a test applies its `p_value`; McNemar's figures their
    `only_a_correct`, `only_b_correct` and `interval_and_test_disagree`) and the `methods` used, which say why an
    interval is missing."""
    y_true, pred_a, pred_b = (as_labels(v, name) for v, name in zip((y_true, pred_a, pred_b), _DECISION_NAMES))
    figures, methods = paired_bootstrap_differences(y_true, pred_a, pred_b, num_classes, positive_label, level)
    for name, images in _tested_images(y_true, positive_label).items():
        if figures[name]["a"] is None:  # no image of the class it counts
            continue
        tested = mcnemar_test(pred_a[images] == y_true[images], pred_b[images] == y_true[images])
        figures[name] |= {key: tested[key] for key in ("p_value", "only_a_correct", "only_b_correct")}
        figures[name]["interval_and_test_disagree"] = interval_and_test_disagree(figures[name], level)
        methods[name] += "; p-value: McNemar's exact test"
    figures["auc"], methods["auc"] = _auc_figure(y_true, scores_a, scores_b, positive_label, level)
    return {"level": level, "figures": figures, "methods": methods}


def paired_proper_score_differences(y_true, probs_a, probs_b, level: float = CONFIDENCE_LEVEL) -> tuple:
    """The Brier score and log loss (`PROPER_SCORES`, `metrics.per_image_proper_scores`) of two models' probabilities
    `probs_a`, `probs_b` [N, K] of the same images `y_true`: `(figures, methods)`, each figure's `a`, `b`,
    `difference` (B's less A's: negative where B's probabilities are nearer the labels) and the percentile bootstrap
    `interval` of the mean of the images' differences, each class's images resampled within the class (None where a
    class holds too few images: the method says)."""
    from .metrics import per_image_proper_scores

    y_true = as_labels(y_true, "y_true")
    scores = [per_image_proper_scores(y_true, np.asarray(probs, dtype=np.float64)) for probs in (probs_a, probs_b)]
    figures = {
        name: {"a": float(scores[0][name].mean()), "b": float(scores[1][name].mean()),
               "difference": float((scores[1][name] - scores[0][name]).mean()), "interval": None}
        for name in PROPER_SCORES
    }  # fmt: skip
    reason = too_few_images_for(np.bincount(y_true))
    if reason:
        return figures, dict.fromkeys(PROPER_SCORES, reason)
    differences = np.stack([scores[1][name] - scores[0][name] for name in PROPER_SCORES], 1)  # [N, S]
    resampled = [(weights @ differences) / weights.sum(1, keepdims=True)
                 for weights in image_weights_resampled_within_classes(y_true)]  # fmt: skip
    methods = {}
    for column, name in enumerate(PROPER_SCORES):
        figures[name]["interval"] = percentile_interval([batch[:, column] for batch in resampled], level)
        methods[name] = BOOTSTRAP_METHOD if figures[name]["interval"] is not None else _SAME_PROBABILITIES
    return figures, methods


def interval_and_test_disagree(figure: dict, level: float) -> bool:
    """Whether a figure's interval and its exact test disagree on a difference of 0 (QA: 4 images only A got right,
    none only B: the bootstrap interval -2.06 to -0.26 points, McNemar's p 0.125): with few images decided
    differently, the exact test is the one to read."""
    interval = figure.get("interval")
    if interval is None:
        return False
    return (interval[0] > 0 or interval[1] < 0) != (figure["p_value"] < 1 - level)


def _auc_figure(y_true: np.ndarray, scores_a, scores_b, positive_label: Optional[int], level: float) -> tuple:
    """The AUC's figure and its method: DeLong's paired test with two images of each class or more (binary, as
    evaluate's DeLong interval), `MIN_CLASS_IMAGES` of each for the multi-class average (as evaluate's)."""
    labels = y_true if positive_label is None else y_true == positive_label
    reason = None
    if positive_label is None:
        reason = too_few_images_for(np.unique(labels, return_counts=True)[1], "DeLong's variance of the average")
    auc = None if reason else paired_auc_difference(labels, scores_a, scores_b, level)
    if auc is None:
        empty = {"a": None, "b": None, "difference": None, "interval": None, "p_value": None}
        return empty, reason or "none: a class holds fewer than two images"
    figure = {"a": auc["auc_a"], "b": auc["auc_b"], **{key: auc[key] for key in ("difference", "interval", "p_value")}}
    if auc["interval"] is None:
        return figure, _NO_AUC_VARIANCE
    return figure, DELONG_METHOD if positive_label is not None else _MULTI_CLASS_DELONG


def _tested_images(y_true: np.ndarray, positive_label: Optional[int]) -> dict:
    """The images each McNemar test counts: all for accuracy; a binary task's positives for sensitivity, negatives
    for specificity."""
    tested = {"accuracy": np.ones(len(y_true), dtype=bool)}
    if positive_label is not None:
        tested |= {"sensitivity": y_true == positive_label, "specificity": y_true != positive_label}
    return tested


def paired_bootstrap_differences(
    y_true, pred_a, pred_b, num_classes: int, positive_label: Optional[int] = None, level: float = CONFIDENCE_LEVEL
) -> tuple:
    """Accuracy, balanced accuracy, macro-F1 (and, given a binary task's `positive_label`, sensitivity and
    specificity) of two models on the same images (`y_true`, `pred_a`, `pred_b` [N] class ids): `(figures,
    methods)`, each figure's `a`, `b`, `difference` (B's less A's) and the percentile bootstrap `interval` of the
    difference, each class's images resampled within the class with both models' decisions on them. An interval is
    None where every resample gives the same difference (the models decide every image alike), or where a class
    holds too few images (the method says)."""
    columns = [as_labels(values, name) for values, name in zip((y_true, pred_a, pred_b), _DECISION_NAMES)]
    triples, counts = np.unique(np.stack(columns, 1), axis=0, return_counts=True)  # sorted by the true class
    cells = [_model_cells(triples[:, 0], triples[:, column], num_classes) for column in (1, 2)]
    point = [_figures_of_counts(counts[None], model_cells, num_classes, positive_label) for model_cells in cells]
    figures = {name: {"a": float(point[0][name][0]), "b": float(point[1][name][0])} for name in point[0]}
    for figure in figures.values():
        figure["difference"] = figure["b"] - figure["a"]
    reason = too_few_images_for(np.bincount(triples[:, 0], weights=counts, minlength=num_classes))
    intervals = dict.fromkeys(figures) if reason else _bootstrap_intervals(triples[:, 0], counts, cells, num_classes,
                                                                            positive_label, level)  # fmt: skip
    methods = {}
    for name, interval in intervals.items():
        if np.isnan(figures[name]["a"]):  # sensitivity without positives, specificity without negatives
            figures[name] = {"a": None, "b": None, "difference": None, "interval": None, "p_value": None}
            methods[name] = f"none: no {'positive' if name == 'sensitivity' else 'negative'} images"
            continue
        figures[name]["interval"] = interval
        methods[name] = reason or (BOOTSTRAP_METHOD if interval is not None else _SAME_DECISIONS)
    return figures, methods


def _bootstrap_intervals(classes, counts, cells, num_classes: int, positive_label, level: float) -> dict:
    statistics: Dict[str, list] = {}
    for drawn in cell_counts_resampled_within_classes(classes, counts):
        figures_a, figures_b = (_figures_of_counts(drawn, one, num_classes, positive_label) for one in cells)
        for name in figures_a:
            statistics.setdefault(name, []).append(figures_b[name] - figures_a[name])
    return {name: None if np.isnan(values[0]).any() else percentile_interval(values, level)
            for name, values in statistics.items()}  # fmt: skip


def _model_cells(rows: np.ndarray, columns: np.ndarray, num_classes: int) -> tuple:
    """One model's confusion-matrix cells (true, predicted) of the triples, and the [T, M] matrix summing each
    triple's count into its cell (triples that differ in the other model's decision share a cell)."""
    cell_ids, cell_of_triple = np.unique(rows * num_classes + columns, return_inverse=True)
    shape = (len(rows), len(cell_ids))
    summing = csr_matrix((np.ones(len(rows)), (np.arange(len(rows)), cell_of_triple.ravel())), shape=shape)
    return cell_ids // num_classes, cell_ids % num_classes, summing


def _figures_of_counts(drawn: np.ndarray, cells: tuple, num_classes: int, positive_label: Optional[int]) -> dict:
    """One model's figures [B] from the triples' counts `drawn` [B, T]: accuracy, balanced accuracy, macro-F1, and
    given a binary task's `positive_label`, the recall of each class (sensitivity, specificity)."""
    rows, columns, summing = cells
    counts = np.asarray((summing.T @ drawn.T).T, dtype=np.float64)
    on_diagonal = rows == columns
    figures = {"accuracy": counts[:, on_diagonal].sum(1) / counts.sum(1), **class_averages(counts, rows, columns,
                                                                                             num_classes)}  # fmt: skip
    if positive_label is not None:
        for name, label in (("sensitivity", positive_label), ("specificity", 1 - positive_label)):
            hits, support = counts[:, on_diagonal & (rows == label)].sum(1), counts[:, rows == label].sum(1)
            figures[name] = np.divide(hits, support, out=np.full_like(hits, np.nan), where=support > 0)
    return figures

"""Two sets of images scored apart: how a figure differs between them, and whether the difference exceeds what the
sampling of images explains (an unpaired comparison: a model on one site's images and on another's, or two models
each on its own test set). Each side's images are independent draws, so the variances of the two figures add.

- Accuracy (and, for a binary task, sensitivity and specificity, on each side's positive and negative images):
  Newcombe's hybrid score interval of the difference of two independent proportions (his method 10, from the two
  Wilson intervals) and Fisher's exact test of the 2 x 2 table of right and wrong answers (scipy's `fisher_exact`).
- Balanced accuracy and macro-F1: the percentile interval of B's figure less A's, each side's images resampled within
  each class (as `confidence_intervals` bounds one model's), the two sides drawn independently.
- AUC: the normal interval of the difference with the two DeLong variances added, and its two-sided p-value.
"""

from typing import Dict, Optional

import numpy as np
from scipy.stats import fisher_exact, norm

from .confidence_intervals import (
    BOOTSTRAP_SEED,
    CONFIDENCE_LEVEL,
    auc_influence,
    cell_counts_resampled_within_classes,
    class_averages,
    influence_variance,
    percentile_interval,
    too_few_images_for,
    wilson_interval,
)
from .paired_statistics import interval_and_test_disagree
from .validation import as_labels

__all__ = ["independent_figures", "newcombe_interval"]

NEWCOMBE_METHOD = "Newcombe's hybrid score interval of two independent proportions; p-value: Fisher's exact test"
BOOTSTRAP_METHOD = "each side's percentile bootstrap within each class, the two drawn independently"
DELONG_METHOD = "the normal interval of the difference, the two sides' DeLong variances added"


def newcombe_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                      level: float = CONFIDENCE_LEVEL) -> Optional[list]:  # fmt: skip
    """Newcombe's (1998, method 10) interval of `successes_b / trials_b - successes_a / trials_a` for independent
    samples, from each proportion's Wilson interval; None where a side has no trials."""
    interval_a = wilson_interval(successes_a, trials_a, level)
    interval_b = wilson_interval(successes_b, trials_b, level)
    if interval_a is None or interval_b is None:
        return None
    (low_a, high_a), (low_b, high_b) = interval_a, interval_b
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    difference = p_b - p_a
    return [
        max(-1.0, difference - float(np.hypot(p_b - low_b, high_a - p_a))),
        min(1.0, difference + float(np.hypot(high_b - p_b, p_a - low_a))),
    ]


def independent_figures(
    y_a, pred_a, scores_a, y_b, pred_b, scores_b, num_classes: int, positive_label: Optional[int] = None,
    level: float = CONFIDENCE_LEVEL,
) -> dict:  # fmt: skip
    """The figures of two sets of images scored apart (`y_a`, `pred_a` [N_a] class ids and what A's AUC ranks by,
    `scores_a`: [N_a] toward `positive_label` for a binary task, else [N_a, K]; B's likewise): `level`, `figures`
    (accuracy, balanced accuracy, macro-F1, a binary task's sensitivity and specificity, the AUC: each `a`, `b`,
    `difference` B's less A's, its `interval`, and where a test applies its `p_value`) and the `methods` used, which
    say why an interval is missing."""
    y_a, pred_a, y_b, pred_b = (as_labels(v, name) for v, name in
                                zip((y_a, pred_a, y_b, pred_b), ("y_a", "pred_a", "y_b", "pred_b")))  # fmt: skip
    figures, methods = {}, {}
    for name, (kept_a, kept_b) in _proportions(y_a, y_b, positive_label).items():
        figures[name], methods[name] = _proportion_figure(pred_a[kept_a] == y_a[kept_a], pred_b[kept_b] == y_b[kept_b],
                                                          level)  # fmt: skip
    averaged, reason = _class_average_figures(y_a, pred_a, y_b, pred_b, num_classes, level)
    for name, figure in averaged.items():
        figures[name] = figure
        methods[name] = reason or (BOOTSTRAP_METHOD if figure["interval"] is not None else "none: every resample "
                                   "gives the same difference")  # fmt: skip
    figures["auc"], methods["auc"] = _auc_figure(y_a, scores_a, y_b, scores_b, positive_label, level)
    order = ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "auc")
    return {"level": level, "figures": {name: figures[name] for name in order if name in figures},
            "methods": {name: methods[name] for name in order if name in methods}}  # fmt: skip


def _proportions(y_a: np.ndarray, y_b: np.ndarray, positive_label: Optional[int]) -> Dict[str, tuple]:
    """The images each proportion counts on either side: all for accuracy; a binary task's positives for sensitivity,
    negatives for specificity."""
    counted = {"accuracy": (np.ones(len(y_a), bool), np.ones(len(y_b), bool))}
    if positive_label is not None:
        counted["sensitivity"] = (y_a == positive_label, y_b == positive_label)
        counted["specificity"] = (y_a != positive_label, y_b != positive_label)
    return counted


def _proportion_figure(correct_a: np.ndarray, correct_b: np.ndarray, level: float) -> tuple:
    if not len(correct_a) or not len(correct_b):
        empty = {"a": None, "b": None, "difference": None, "interval": None, "p_value": None}
        return empty, "none: a side has no image it counts"
    right_a, right_b = int(correct_a.sum()), int(correct_b.sum())
    a, b = right_a / len(correct_a), right_b / len(correct_b)
    table = [[right_a, len(correct_a) - right_a], [right_b, len(correct_b) - right_b]]
    figure = {
        "a": a, "b": b, "difference": b - a,
        "interval": newcombe_interval(right_a, len(correct_a), right_b, len(correct_b), level),
        "p_value": float(fisher_exact(table).pvalue),
    }  # fmt: skip
    figure["interval_and_test_disagree"] = interval_and_test_disagree(figure, level)
    return figure, NEWCOMBE_METHOD


def _class_average_figures(y_a, pred_a, y_b, pred_b, num_classes: int, level: float) -> tuple:
    """Balanced accuracy's and macro-F1's figures, and why they have no interval (or None): none where the two sides
    hold other classes, whose averages are over other classes (review: 3 classes against 2, an interval excluding 0)."""
    sides = [_confusion_cells(y, pred, num_classes) for y, pred in ((y_a, pred_a), (y_b, pred_b))]
    point = [class_averages(counts[None], rows, columns, num_classes) for rows, columns, counts in sides]
    figures = {}
    for name in point[0]:
        a, b = float(point[0][name][0]), float(point[1][name][0])
        figures[name] = {"a": a, "b": b, "difference": b - a, "interval": None}
    too_few = (too_few_images_for(np.bincount(y, minlength=num_classes)) for y in (y_a, y_b))
    reason = _other_classes(y_a, y_b) or next((why for why in too_few if why), None)
    if reason:
        return figures, reason
    draws = [
        [class_averages(drawn, rows, columns, num_classes)
         for drawn in cell_counts_resampled_within_classes(rows, counts, seed=BOOTSTRAP_SEED + side)]
        for side, (rows, columns, counts) in enumerate(sides)
    ]  # fmt: skip
    for name, figure in figures.items():
        differences = [b[name] - a[name] for a, b in zip(*draws)]
        figure["interval"] = percentile_interval(differences, level)
    return figures, None


def _other_classes(y_a: np.ndarray, y_b: np.ndarray) -> Optional[str]:
    """Why an average over classes has no interval where the two sides hold other classes; None where they hold the
    same."""
    present_a, present_b = (np.unique(y).tolist() for y in (y_a, y_b))
    if present_a == present_b:
        return None
    return f"none: the sides hold other classes (A {present_a}, B {present_b}), their averages are over other classes"


def _confusion_cells(y: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple:
    """The non-empty cells of a confusion matrix, sorted by true class: (rows, columns, counts)."""
    cells, counts = np.unique(y * num_classes + pred, return_counts=True)
    return cells // num_classes, cells % num_classes, counts.astype(np.float64)


def _auc_figure(y_a, scores_a, y_b, scores_b, positive_label: Optional[int], level: float) -> tuple:
    """The AUC's figure and method: each side's AUC with DeLong's variance (binary: two images of each class; more
    classes: the one-against-the-rest average, `MIN_CLASS_IMAGES` of each), the variances added."""
    reason = _other_classes(y_a, y_b) if positive_label is None else None
    if reason:
        return {"a": None, "b": None, "difference": None, "interval": None, "p_value": None}, reason
    sides = []
    for y, scores in ((y_a, scores_a), (y_b, scores_b)):
        labels = y if positive_label is None else y == positive_label
        supports = np.unique(labels, return_counts=True)[1]
        reason = too_few_images_for(supports, "DeLong's variance") if positive_label is None else None
        if len(supports) < 2 or supports.min() < 2 or reason:
            empty = {"a": None, "b": None, "difference": None, "interval": None, "p_value": None}
            return empty, reason or "none: a side has a class of fewer than two images"
        auc, influence = auc_influence(labels, np.asarray(scores, dtype=np.float64))
        sides.append((auc, influence_variance(labels, influence)))
    (auc_a, variance_a), (auc_b, variance_b) = sides
    difference, standard_error = auc_b - auc_a, float(np.sqrt(variance_a + variance_b))
    figure = {"a": auc_a, "b": auc_b, "difference": difference, "interval": None, "p_value": None}
    if standard_error == 0:
        return figure, "none: the difference's variance is 0 (both sides separate the classes perfectly)"
    half_width = float(norm.ppf(0.5 + level / 2)) * standard_error
    figure["interval"] = [max(-1.0, difference - half_width), min(1.0, difference + half_width)]
    figure["p_value"] = float(2 * norm.sf(abs(difference) / standard_error))
    return figure, DELONG_METHOD

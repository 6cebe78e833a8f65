"""Confidence intervals of a classifier's metrics: how far the figures measured on one set of images may be from those
of the population the images were drawn from (the sampling error a model card warns of, as numbers).

Proportions of images (accuracy, sensitivity, specificity) get Wilson score intervals (scipy's `binomtest`); a binary
AUC gets DeLong's interval (DeLong, DeLong & Clarke-Pearson 1988), the one pROC and most diagnostic-accuracy studies
report; balanced accuracy and macro-F1, averages over classes, get percentile bootstrap intervals, each class's images
(or the groups `aggregate` scores) resampled within the class (`NUM_RESAMPLES` resamples from a fixed seed: the same
interval on every run). A
multi-class AUC (a one-vs-rest average) gets none. Each interval is `[low, high]` on the scale of its metric, or None
where the metric is undefined, the images too few, or the interval would be a single point (`methods` says which).
"""

from typing import Dict, List, Optional

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import binomtest, norm, rankdata

from .metrics import finite_ranking, float_array
from .validation import as_labels

__all__ = [
    "CONFIDENCE_LEVEL",
    "MIN_CLASS_IMAGES",
    "NUM_RESAMPLES",
    "class_averages",
    "classification_intervals",
    "delong_auc_interval",
    "intervals_of_metrics",
    "wilson_interval",
]

CONFIDENCE_LEVEL = 0.95
NUM_RESAMPLES = 2000
_BOOTSTRAP_SEED = 0
# The within-class bootstrap cannot vary a class of few images (one image: its recall is 0 or 1 in every resample), so
# its interval runs narrow: measured on NDSB's long tail (a 624-image test split of 121 classes, 45 of them one image),
# drawing test splits from 28,178 scored images, the 95% interval of balanced accuracy held the population's in 75% of
# 400 draws; with every class raised to 5 images 88.5%, to 10 images 95.5% (200 draws). Below this, no interval.
MIN_CLASS_IMAGES = 10
_RESAMPLES_AT_ONCE = 200  # matrices drawn at a time: [200, cells holding images] counts (at most 200 x images)

_METHODS = {
    "accuracy": "Wilson score interval",
    "sensitivity": "Wilson score interval",
    "specificity": "Wilson score interval",
    "auc": "DeLong",
    "balanced_accuracy": f"percentile bootstrap within each class, {NUM_RESAMPLES} resamples, seed {_BOOTSTRAP_SEED}",
    "macro_f1": f"percentile bootstrap within each class, {NUM_RESAMPLES} resamples, seed {_BOOTSTRAP_SEED}",
}


def wilson_interval(successes: int, trials: int, level: float = CONFIDENCE_LEVEL) -> Optional[List[float]]:
    """The Wilson score interval of the proportion `successes / trials`; None without trials."""
    if trials == 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return [float(interval.low), float(interval.high)]


def delong_auc_interval(is_positive, scores, level: float = CONFIDENCE_LEVEL) -> Optional[List[float]]:
    """DeLong's interval of the ROC AUC of `scores` for the images where `is_positive`: the AUC plus or minus the
    normal quantile times its standard error, from each image's placement among the other class (the fraction of
    that class it outranks, ties counting half; Sun & Xu's midrank form), clipped to [0, 1]. None with fewer than two
    images of either class, or where the estimated variance is 0 (classes separated perfectly, or every score tied):
    a point, not an interval, which would claim no sampling error at all."""
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[is_positive], scores[~is_positive]
    num_positives, num_negatives = len(positives), len(negatives)
    if num_positives < 2 or num_negatives < 2:
        return None
    ranks = rankdata(np.concatenate([positives, negatives]))  # midranks: ties share theirs
    negatives_below = ranks[:num_positives] - rankdata(positives)  # per positive, ties counting half
    positives_below = ranks[num_positives:] - rankdata(negatives)
    positive_placements = negatives_below / num_negatives
    negative_placements = 1 - positives_below / num_positives  # the fraction of positives above each negative
    auc = positive_placements.mean()
    variance = positive_placements.var(ddof=1) / num_positives + negative_placements.var(ddof=1) / num_negatives
    if variance <= 0:
        return None
    half_width = norm.ppf(0.5 + level / 2) * np.sqrt(variance)
    return [float(max(0.0, auc - half_width)), float(min(1.0, auc + half_width))]


def class_averages(cell_counts: np.ndarray, rows: np.ndarray, columns: np.ndarray, num_classes: int) -> dict:
    """Balanced accuracy and macro-F1 [B] of confusion matrices given by the counts [B, M] of their M cells at
    (`rows` [M]: true class, `columns` [M]: predicted), each averaged over the classes present in its matrix, as
    `metrics.classification_metrics` averages them. Only the cells listed are counted: the others are 0."""
    cell_counts = np.asarray(cell_counts, dtype=np.float64)
    support, predicted = (_summed_by_class(cell_counts, classes, num_classes) for classes in (rows, columns))
    hits, on_diagonal = np.zeros_like(support), rows == columns
    hits[:, rows[on_diagonal]] = cell_counts[:, on_diagonal]  # a class has one diagonal cell at most
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
    f1 = np.divide(2 * hits, support + predicted, out=np.zeros_like(hits), where=present)
    num_present = present.sum(axis=1)
    return {"balanced_accuracy": recall.sum(axis=1) / num_present, "macro_f1": f1.sum(axis=1) / num_present}


def _summed_by_class(cell_counts: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """The counts [B, M] of cells summed by their class [M]: [B, K] (a sparse product: no [B, M, K] array)."""
    one_hot = csr_matrix((np.ones(len(classes)), (np.arange(len(classes)), classes)), shape=(len(classes), num_classes))
    return np.asarray((one_hot.T @ cell_counts.T).T)


def _class_average_intervals(confusion: np.ndarray, level: float) -> Dict[str, Optional[List[float]]]:
    """Percentile bootstrap intervals of `class_averages`, each class's images resampled within the class (a
    stratified bootstrap, as pROC's: a resample that lost a rare class would average over the others only, QA: a
    constant classifier's balanced accuracy 50% read "0.00% to 50.00%"); None where every resample gives the same
    value (a perfect or one-class result, whose error a bootstrap cannot bound). Resampling a class's images with
    replacement draws its row of the confusion matrix from a multinomial over the row's cells, so the rows are drawn
    directly, over the cells holding images: the same distribution, without the images, in memory that grows with
    the images, not with the square of the classes."""
    rows, columns = np.nonzero(confusion)  # row-major: each row's cells side by side
    counts = confusion[rows, columns]
    row_cells = [slice(*ends) for ends in _runs(rows)]
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    statistics = {"balanced_accuracy": [], "macro_f1": []}
    for start in range(0, NUM_RESAMPLES, _RESAMPLES_AT_ONCE):
        size = min(_RESAMPLES_AT_ONCE, NUM_RESAMPLES - start)
        drawn = np.zeros((size, len(counts)), dtype=np.int64)
        for cells in row_cells:
            drawn[:, cells] = rng.multinomial(counts[cells].sum(), counts[cells] / counts[cells].sum(), size=size)
        for name, values in class_averages(drawn, rows, columns, len(confusion)).items():
            statistics[name].append(values)
    tails = [(1 - level) / 2, (1 + level) / 2]
    intervals = {name: np.quantile(np.concatenate(values), tails).tolist() for name, values in statistics.items()}
    return {name: interval if interval[0] < interval[1] else None for name, interval in intervals.items()}


def _runs(values: np.ndarray) -> List[tuple]:
    """The (start, stop) of each run of equal values in sorted `values`."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], len(values)].tolist()))


def classification_intervals(
    confusion, positive_label: Optional[int] = None, roc=None, level: float = CONFIDENCE_LEVEL
) -> dict:
    """The intervals of `metrics.classification_metrics`' headline figures, from its `confusion_matrix` (rows: true
    class): accuracy, balanced accuracy, macro-F1 and, for a binary task (`positive_label` given), sensitivity,
    specificity and, given `roc` = (whether each image is positive, the scores the AUC ranked by), the AUC; with the
    `level` and the `methods` used, which for an interval not given (None) say why."""
    confusion = np.asarray(confusion, dtype=np.int64)
    num_images, correct = int(confusion.sum()), int(np.trace(confusion))
    intervals = {"level": level, "accuracy": wilson_interval(correct, num_images, level)}
    averages, methods = _class_average_intervals_and_methods(confusion, level)
    intervals |= averages
    methods = {"accuracy": _METHODS["accuracy"], **methods}
    if positive_label is not None:
        for name, row in (("sensitivity", positive_label), ("specificity", 1 - positive_label)):
            intervals[name] = wilson_interval(confusion[row, row], confusion[row].sum(), level)
            methods[name] = _METHODS[name] if intervals[name] is not None else "none: the class is absent"
    intervals["auc"], methods["auc"] = _auc_interval(confusion, positive_label, roc, level)
    intervals["methods"] = methods
    return intervals


def _class_average_intervals_and_methods(confusion: np.ndarray, level: float) -> tuple:
    """Balanced accuracy's and macro-F1's intervals and methods, or None and why there is none."""
    names = ("balanced_accuracy", "macro_f1")
    supports = confusion.sum(axis=1)
    few = int(((supports > 0) & (supports < MIN_CLASS_IMAGES)).sum())
    if not supports.sum():
        return dict.fromkeys(names), dict.fromkeys(names, "none: no images")
    if few:
        reason = f"none: {few} of the {int((supports > 0).sum())} classes scored hold fewer than {MIN_CLASS_IMAGES} " \
            "images, too few for a bootstrap within each class (its interval would read too narrow)"
        return dict.fromkeys(names), dict.fromkeys(names, reason)
    intervals = _class_average_intervals(confusion, level)
    unbounded = "none: every resample gives the same value, which a bootstrap cannot bound"
    return intervals, {name: _METHODS[name] if intervals[name] is not None else unbounded for name in names}


def _auc_interval(confusion: np.ndarray, positive_label: Optional[int], roc, level: float) -> tuple:
    """The AUC's interval and its method, or None and why there is none."""
    if positive_label is None:
        return None, "none given for an average over classes of one-against-the-rest AUCs"
    if roc is None:
        return None, "none: the AUC is undefined"
    if min(confusion.sum(axis=1)) < 2:
        return None, "none: DeLong's needs two of each class"
    interval = delong_auc_interval(*roc, level=level)
    if interval is None:
        return None, "none: DeLong's variance is 0 (the scores separate the classes perfectly, or all tie)"
    return interval, _METHODS["auc"]


def intervals_of_metrics(metrics: dict, y_true, scores=None, level: float = CONFIDENCE_LEVEL) -> dict:
    """`classification_intervals` of what `metrics.classification_metrics` returned for `y_true` and, for the AUC,
    the `scores` it was given (its `probs`)."""
    names = list(metrics["per_class"])
    positive_label = names.index(metrics["positive_class"]) if "positive_class" in metrics else None
    roc = None
    if positive_label is not None and scores is not None and metrics.get("auc") is not None:
        ranking = finite_ranking(float_array(scores))[:, positive_label]
        roc = (as_labels(y_true, "y_true") == positive_label, ranking)
    intervals = classification_intervals(metrics["confusion_matrix"], positive_label, roc, level)
    if metrics.get("auc") is None:  # QA: a split without some classes was given the multi-class reason
        intervals["methods"]["auc"] = "none: the AUC is undefined"
    return intervals

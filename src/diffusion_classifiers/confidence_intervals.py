"""Confidence intervals of a classifier's metrics: how far the figures measured on one set of images may be from those
of the population the images were drawn from (the sampling error a model card warns of, as numbers).

Proportions of images (accuracy, sensitivity, specificity) get Wilson score intervals (scipy's `binomtest`); a binary
AUC gets DeLong's interval (DeLong, DeLong & Clarke-Pearson 1988), the one pROC and most diagnostic-accuracy studies
report, and a multi-class AUC (the average of one-against-the-rest AUCs) DeLong's variance carried over to that
average; balanced accuracy, macro-F1 and a binary task's average precision get percentile bootstrap intervals, each
class's images (or the groups `aggregate` scores) resampled within the class (`NUM_RESAMPLES` resamples from a fixed
seed: the same interval on every run). Each interval is `[low, high]` on the scale of its metric, or None where the
metric is undefined, the images too few, or the interval would be a single point (`methods` says which).
"""

from typing import Dict, Iterator, List, Optional

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import binomtest, norm, rankdata

from .metrics import NO_AUC_INTERVAL, finite_ranking, float_array
from .validation import as_labels

__all__ = [
    "BOOTSTRAP_SEED",
    "CONFIDENCE_LEVEL",
    "MIN_CLASS_IMAGES",
    "NUM_RESAMPLES",
    "auc_influence",
    "cell_counts_resampled_within_classes",
    "class_averages",
    "classification_intervals",
    "delong_auc_interval",
    "image_weights_resampled_within_classes",
    "influence_variance",
    "intervals_of_metrics",
    "multi_class_auc_interval",
    "percentile_interval",
    "resampled_counts",
    "too_few_images_for",
    "weighted_average_precision",
    "wilson_interval",
]

CONFIDENCE_LEVEL = 0.95
NUM_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# The within-class bootstrap cannot vary a class of few images (one image: its recall is 0 or 1 in every resample), so
# its interval runs narrow: simulated on NDSB's long tail (benchmarks/interval_coverage.py: 400 test splits of 624
# images, 46 of the 121 classes one image), the 95% interval of balanced accuracy held the population's in 67.0% of
# them; with every class raised to 5 images 94.3%, to 10 images 94.0% (macro-F1's 76.3%, 91.8%, 92.8%). Below this,
# no interval.
MIN_CLASS_IMAGES = 10
_RESAMPLES_AT_ONCE = 200  # matrices drawn at a time: [200, cells holding images] counts (at most 200 x images)

_BOOTSTRAP = (
    f"percentile bootstrap within each class (n - 1 of its n images drawn, rescaled), {NUM_RESAMPLES} resamples, "
    f"seed {BOOTSTRAP_SEED}"
)
_UNBOUNDED = "none: every resample gives the same value, which a bootstrap cannot bound"
_METHODS = {
    "accuracy": "Wilson score interval",
    "sensitivity": "Wilson score interval",
    "specificity": "Wilson score interval",
    "positive_precision": "Wilson score interval",
    "negative_predictive_value": "Wilson score interval",
    "auc": "DeLong",
    "multi_class_auc": "DeLong's variance carried over to the average of one-against-the-rest AUCs",
    "average_precision": _BOOTSTRAP,
    "balanced_accuracy": _BOOTSTRAP,
    "macro_f1": _BOOTSTRAP,
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
    if min(int(is_positive.sum()), int((~is_positive).sum())) < 2:
        return None
    auc, influence = auc_influence(is_positive, scores)
    return _normal_interval(auc, influence_variance(is_positive, influence), level)


def auc_influence(labels, scores) -> tuple:
    """An AUC and each image's influence on it [N], whose spread gives DeLong's variance (`influence_variance`):
    binary, `labels` booleans (the positive images) and `scores` [N], a positive's influence its placement among the
    negatives less the AUC, over the positives' count, a negative's alike; otherwise `labels` class ids and `scores`
    [N, K], the average over the classes present of one-against-the-rest AUCs (each ranking by its column), an
    image's influence its influences on each class's AUC, averaged."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return _binary_auc_influence(labels, float_array(scores))
    scores, present = float_array(scores), np.unique(labels)
    aucs, influences = zip(*(_binary_auc_influence(labels == label, scores[:, label]) for label in present))
    return float(np.mean(aucs)), np.mean(influences, axis=0)


def _binary_auc_influence(is_positive: np.ndarray, scores: np.ndarray) -> tuple:
    positive_placements, negative_placements = _placements(is_positive, scores)
    auc, influence = float(positive_placements.mean()), np.zeros(len(scores))
    influence[is_positive] = (positive_placements - auc) / is_positive.sum()
    influence[~is_positive] = (negative_placements - auc) / (~is_positive).sum()
    return auc, influence


def influence_variance(labels, influence: np.ndarray) -> float:
    """DeLong's variance of an AUC (or of a difference of AUCs of the same images) from the images' `influence` [N]:
    its spread within each class of `labels` [N] (booleans or class ids), the classes' image counts held fixed."""
    labels = np.asarray(labels)
    return float(sum(np.sum(labels == label) * influence[labels == label].var(ddof=1) for label in np.unique(labels)))


def _placements(is_positive: np.ndarray, scores: np.ndarray) -> tuple:
    """Each positive image's placement among the negatives (the fraction it outranks, ties counting half) and each
    negative's among the positives (the fraction that outrank it): DeLong's structural components, whose means are
    the AUC."""
    positives, negatives = scores[is_positive], scores[~is_positive]
    ranks = rankdata(np.concatenate([positives, negatives]))  # midranks: ties share theirs
    negatives_below = ranks[: len(positives)] - rankdata(positives)  # per positive, ties counting half
    positives_below = ranks[len(positives):] - rankdata(negatives)
    return negatives_below / len(negatives), 1 - positives_below / len(positives)


def _normal_interval(estimate: float, variance: float, level: float) -> Optional[List[float]]:
    """`estimate` plus or minus the normal quantile times the standard error, clipped to [0, 1]; None where the
    variance is 0."""
    if variance <= 0:
        return None
    half_width = norm.ppf(0.5 + level / 2) * np.sqrt(variance)
    return [float(max(0.0, estimate - half_width)), float(min(1.0, estimate + half_width))]


def multi_class_auc_interval(labels, scores, level: float = CONFIDENCE_LEVEL) -> Optional[List[float]]:
    """DeLong's interval carried over to the average over the classes present of one-against-the-rest AUCs
    (`metrics.classification_metrics`' multi-class AUC; each class's AUC ranks by its column of `scores` [N, K]):
    the average plus or minus the normal quantile times its standard error, clipped to [0, 1]. The variance is that
    of the average's influence function: each image's placements in every class's AUC (as a positive of its own
    class, a negative of the others) summed into one value per image, whose spread within each class, the classes'
    image counts held fixed, gives the variance as DeLong's does for two classes (for two classes whose scores rank
    alike, such as probabilities, it is DeLong's). None where a class present holds fewer than two images, or the
    variance is 0."""
    labels = as_labels(labels, "labels")
    present, supports = np.unique(labels, return_counts=True)
    if len(present) < 2 or supports.min() < 2:
        return None
    auc, influence = auc_influence(labels, scores)
    return _normal_interval(auc, influence_variance(labels, influence), level)


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
    statistics = {"balanced_accuracy": [], "macro_f1": []}
    for drawn in cell_counts_resampled_within_classes(rows, confusion[rows, columns]):
        for name, values in class_averages(drawn, rows, columns, len(confusion)).items():
            statistics[name].append(values)
    return {name: percentile_interval(values, level) for name, values in statistics.items()}


def cell_counts_resampled_within_classes(
    classes: np.ndarray, counts: np.ndarray, seed: int = BOOTSTRAP_SEED
) -> Iterator[np.ndarray]:
    """`NUM_RESAMPLES` resamples of the images counted in cells (`counts` [M] images in each cell, `classes` [M] the
    true class of each cell's images, sorted), each class's images drawn with replacement, from `seed` (another for
    an independent set of images, `independent_statistics`):
    batches of counts [B, M] (floats). Drawing a class's images draws its cells' counts from a multinomial over them:
    the same distribution without the images. Each class of n images is drawn n - 1 times and weighed n / (n - 1)
    (`_rescaled_draws`)."""
    class_cells = [slice(*ends) for ends in _runs(classes)]
    rng = np.random.default_rng(seed)
    for size in _resample_sizes():
        drawn = np.zeros((size, len(counts)))
        for cells in class_cells:
            total = int(counts[cells].sum())
            drawn[:, cells] = _rescaled_draws(rng, total, counts[cells] / total, size)
        yield drawn


def _rescaled_draws(rng: np.random.Generator, n: int, shares: np.ndarray, size: int) -> np.ndarray:
    """`size` draws [size, len(shares)] of a class of `n` images over its cells (or images) of `shares`: n - 1 images
    with replacement, each weighed n / (n - 1) (Rao and Wu's rescaled bootstrap, 1988), so a class's recall varies
    by its unbiased variance p (1 - p) / (n - 1), where drawing n gives p (1 - p) / n: that plain bootstrap's 95%
    intervals held the population's balanced accuracy in 92-93% of test sets of 10 images a class
    (`benchmarks/interval_coverage.py`). A class of one image is drawn once."""
    if n < 2:
        return rng.multinomial(n, shares, size=size).astype(np.float64)
    return rng.multinomial(n - 1, shares, size=size) * (n / (n - 1))


# Statistics of resamples closer than this are the same value: the rescaled weights (`_rescaled_draws`) are floats,
# and two sums of them in another order differ in the last bits (review: a difference of exactly 0 in every resample
# read "-2.2e-16 to 2.2e-16")
_SAME_VALUE = 1e-12


def percentile_interval(resampled: List[np.ndarray], level: float) -> Optional[List[float]]:
    """The percentile interval of the statistics of every resample (batches of them), None where every resample
    gives the same value."""
    low, high = np.quantile(np.concatenate(resampled), [(1 - level) / 2, (1 + level) / 2]).tolist()
    return [low, high] if high - low > _SAME_VALUE else None


def _runs(values: np.ndarray) -> List[tuple]:
    """The (start, stop) of each run of equal values in sorted `values`."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], len(values)].tolist()))


def resampled_counts(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """How much each image weighs [size, N] in `size` resamples that each draw every class's images with
    replacement (`labels` [N]: each image's class): n - 1 draws of a class of n, each weighed n / (n - 1)
    (`_rescaled_draws`)."""
    counts = np.zeros((size, len(labels)))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        counts[:, members] = _rescaled_draws(rng, len(members), np.full(len(members), 1 / len(members)), size)
    return counts


def image_weights_resampled_within_classes(labels: np.ndarray) -> Iterator[np.ndarray]:
    """`NUM_RESAMPLES` resamples of the images of `labels` [N] (each image's class), each class's images drawn with
    replacement from `BOOTSTRAP_SEED` (`resampled_counts`): batches of how much each image weighs [B, N]."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    for size in _resample_sizes():
        yield resampled_counts(labels, rng, size)


def _weights_by_tied_score(is_positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple:
    """The positive and the negative images' `weights` [B, N] summed within each group of tied `scores` [N]: two
    [B, G] arrays, the groups in ascending order of score."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    weights, is_positive = weights[:, order], is_positive[order]
    summed = (np.add.reduceat(weights * kept, starts, axis=1) for kept in (is_positive, ~is_positive))
    return tuple(summed)


def weighted_average_precision(is_positive, scores, weights) -> np.ndarray:
    """The average precisions [B] of `scores` [N] for the images where `is_positive`, each image counted `weights`
    [b, n] times: scikit-learn's `average_precision_score(..., sample_weight=weights[b])` (the precision at each
    threshold, tied scores one threshold, weighted by the recall it adds) for the B weightings at once."""
    positives, negatives = _weights_by_tied_score(np.asarray(is_positive, bool), np.asarray(scores), weights)
    positives, negatives = positives[:, ::-1], negatives[:, ::-1]  # thresholds from the highest score down
    true_calls = np.cumsum(positives, axis=1)
    calls = true_calls + np.cumsum(negatives, axis=1)
    precision = np.divide(true_calls, calls, out=np.zeros_like(calls), where=calls > 0)
    return (positives * precision).sum(1) / positives.sum(1)


def _average_precision_interval(is_positive: np.ndarray, scores: np.ndarray, level: float) -> tuple:
    """The percentile bootstrap interval of the average precision of `scores` for the images where `is_positive`,
    each class's images resampled within the class, and its method; or None and why there is none."""
    reason = too_few_images_for(np.bincount(is_positive, minlength=2))
    if reason:
        return None, reason
    statistics = [
        weighted_average_precision(is_positive, scores, weights)
        for weights in image_weights_resampled_within_classes(is_positive)
    ]
    interval = percentile_interval(statistics, level)
    return interval, _METHODS["average_precision"] if interval is not None else _UNBOUNDED


def _resample_sizes() -> List[int]:
    """`NUM_RESAMPLES` in batches of at most `_RESAMPLES_AT_ONCE`."""
    return [min(_RESAMPLES_AT_ONCE, NUM_RESAMPLES - start) for start in range(0, NUM_RESAMPLES, _RESAMPLES_AT_ONCE)]


def classification_intervals(
    confusion, positive_label: Optional[int] = None, roc=None, level: float = CONFIDENCE_LEVEL
) -> dict:
    """The intervals of `metrics.classification_metrics`' headline figures, from its `confusion_matrix` (rows: true
    class): accuracy, balanced accuracy, macro-F1 and, for a binary task (`positive_label` given), sensitivity,
    specificity, PPV (`positive_precision`) and NPV (`negative_predictive_value`), at the set's own prevalence;
    given `roc`, what the AUC ranked by, the AUC and a binary task's average precision. `roc` is, for a binary task,
    (whether each image is positive, its score), for another (each image's class, the scores [N, K]). With the
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
        for name, column in (("positive_precision", positive_label), ("negative_predictive_value", 1 - positive_label)):
            intervals[name] = wilson_interval(confusion[column, column], confusion[:, column].sum(), level)
            methods[name] = _METHODS[name] if intervals[name] is not None else "none: no image decided so"
    intervals["auc"], methods["auc"] = _auc_interval(confusion, positive_label, roc, level)
    if positive_label is not None and roc is not None:
        is_positive, scores = np.asarray(roc[0], dtype=bool), float_array(roc[1])
        intervals["average_precision"], methods["average_precision"] = _average_precision_interval(
            is_positive, scores, level
        )
    intervals["methods"] = methods
    return intervals


def _class_average_intervals_and_methods(confusion: np.ndarray, level: float) -> tuple:
    """Balanced accuracy's and macro-F1's intervals and methods, or None and why there is none."""
    names = ("balanced_accuracy", "macro_f1")
    supports = confusion.sum(axis=1)
    if not supports.sum():
        return dict.fromkeys(names), dict.fromkeys(names, "none: no images")
    reason = too_few_images_for(supports)
    if reason:
        return dict.fromkeys(names), dict.fromkeys(names, reason)
    intervals = _class_average_intervals(confusion, level)
    return intervals, {name: _METHODS[name] if intervals[name] is not None else _UNBOUNDED for name in names}


def too_few_images_for(supports: np.ndarray, method: str = "a bootstrap within each class") -> Optional[str]:
    """Why `method` gives no interval, where a class scored (of `supports` [K] images) holds fewer than
    `MIN_CLASS_IMAGES`; None where none does."""
    scored = supports[supports > 0]
    few = int((scored < MIN_CLASS_IMAGES).sum())
    if not few:
        return None
    return f"none: {few} of the {len(scored)} classes scored hold fewer than {MIN_CLASS_IMAGES} images, too few for " \
        f"{method} (its interval would read too narrow)"


def _auc_interval(confusion: np.ndarray, positive_label: Optional[int], roc, level: float) -> tuple:
    """The AUC's interval and its method, or None and why there is none."""
    if roc is None:
        return None, NO_AUC_INTERVAL
    if positive_label is None:
        reason = too_few_images_for(np.bincount(as_labels(roc[0], "labels")), "DeLong's variance of the average")
        if reason:  # benchmarks/interval_coverage.py, 10 classes: 95% intervals held the population's in 87.3% of
            return None, reason  # 400 draws at 2 images per class, 94.8% at 5, 93.0% at 10
        interval = multi_class_auc_interval(*roc, level=level)
        if interval is None:
            return None, "none: its variance is 0 (the scores separate the classes perfectly, or all tie)"
        return interval, _METHODS["multi_class_auc"]
    if min(confusion.sum(axis=1)) < 2:
        return None, "none: DeLong's needs two of each class"
    interval = delong_auc_interval(*roc, level=level)
    if interval is None:
        return None, "none: DeLong's variance is 0 (the scores separate the classes perfectly, or all tie)"
    return interval, _METHODS["auc"]


def intervals_of_metrics(metrics: dict, y_true, scores=None, level: float = CONFIDENCE_LEVEL) -> dict:
    """`classification_intervals` of what `metrics.classification_metrics` returned for `y_true` and, for the AUC
    and the average precision, the `scores` it was given (its `probs`)."""
    names = list(metrics["per_class"])
    positive_label = names.index(metrics["positive_class"]) if "positive_class" in metrics else None
    roc = None
    if scores is not None and metrics.get("auc") is not None:
        y_true, scores = as_labels(y_true, "y_true"), finite_ranking(float_array(scores))
        roc = (y_true, scores) if positive_label is None else (y_true == positive_label, scores[:, positive_label])
    intervals = classification_intervals(metrics["confusion_matrix"], positive_label, roc, level)
    if metrics.get("auc") is None:  # QA: a split without some classes was given the multi-class reason
        intervals["auc"], intervals["methods"]["auc"] = None, NO_AUC_INTERVAL
    return intervals

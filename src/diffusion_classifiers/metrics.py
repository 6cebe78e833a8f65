"""Classification and clustering metrics in numpy / scikit-learn (no Hub access), returned as plain Python values."""

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from .validation import (
    as_labels,
    check_finite_rows,
    check_label_range,
    check_unique_class_names,
    resolve_num_classes,
)

# Random clusterings averaged for a clustering's accuracy by chance.
CHANCE_DRAWS = 10
# How far above 1 a probability may round (a float32 softmax: a few units of its 2 ** -23 last place).
PROBABILITY_SLACK = 1e-6

__all__ = [
    "BINARY_SCORES",
    "NO_AUC_INTERVAL",
    "TRAINING_IMAGE_COPIES_KEY",
    "absent_classes_note",
    "auc_text",
    "average_precision_rows",
    "binary_scores",
    "calibration_metrics",
    "calibration_rows",
    "classification_metrics",
    "clustering_metrics",
    "decision_sentence",
    "hungarian_match",
    "interval_level",
    "interval_text",
    "intervals_note",
    "mark_absent_classes",
    "met_by_construction",
    "metric_row",
    "metrics_table_header",
    "negative_class",
    "operating_point_text",
    "per_class_table",
    "per_image_proper_scores",
    "percent",
    "positive_class_rows",
    "predictive_values_at",
    "prevalence_note",
    "resolve_positive_label",
    "seed_sensitivity_metrics",
    "selective_accuracy",
    "selective_rows",
]

# Why an AUC has no interval where the AUC itself is undefined (a class without an image, or no scores)
NO_AUC_INTERVAL = "none: the AUC is undefined"


def float_array(values) -> np.ndarray:
    """A tensor (of any dtype, bfloat16 included, which numpy lacks) or an array-like as a float64 array."""
    return np.asarray(values.detach().cpu().double() if hasattr(values, "detach") else values, dtype=np.float64)


def finite_ranking(scores: np.ndarray) -> np.ndarray:
    """`scores` `[N, K]` with each column's `+inf` / `-inf` replaced by the next float above / below its finite
    values: the same order, which scikit-learn's curves and AUC accept (a Score-SDE class pruned, or of prior 0, has
    log-odds `-inf`; the class left alone `+inf`)."""
    finite = np.isfinite(scores)
    if finite.all():
        return scores
    high, low = np.where(finite, scores, -np.inf).max(0), np.where(finite, scores, np.inf).min(0)
    high, low = np.where(np.isfinite(high), high, 0.0), np.where(np.isfinite(low), low, 0.0)  # no finite score
    scores = np.where(scores == np.inf, np.nextafter(high, np.inf), scores)
    return np.where(scores == -np.inf, np.nextafter(low, -np.inf), scores)


def _auc(y_true: np.ndarray, probs: np.ndarray, positive_label: Optional[int]) -> Dict[str, object]:
    probs = finite_ranking(probs)
    present = np.unique(y_true)
    if len(present) < 2:
        return {"auc": None, "auc_unavailable_reason": f"only class {present[0]} is present in y_true"}
    if probs.shape[1] == 2:  # and the area under the precision-recall curve, which the ROC figure's legend gives
        is_positive, scores = y_true == positive_label, probs[:, positive_label]
        auc = skm.roc_auc_score(is_positive, scores)
        return {"auc": float(auc), "average_precision": float(skm.average_precision_score(is_positive, scores))}
    # One-vs-rest macro over the classes present in y_true (sklearn's "ovr" needs every class present).
    per_class = [skm.roc_auc_score(y_true == k, probs[:, k]) for k in present]
    return {"auc": float(np.mean(per_class))}


def resolve_positive_label(positive_class, class_names: Optional[Sequence[str]], num_classes: int) -> Optional[int]:
    """The class id of `positive_class` (a class name, or an id), validated: class 1 when it is None on a binary
    task; None on a task of another number of classes (which has no positive class)."""
    if num_classes != 2:
        if positive_class is not None:
            raise ValueError(f"positive_class: expected a binary task, got {num_classes} classes")
        return None
    names = [str(c) for c in class_names] if class_names is not None else ["0", "1"]
    if positive_class is None:
        return 1
    if isinstance(positive_class, (int, np.integer)) and not isinstance(positive_class, bool):
        if positive_class not in (0, 1):
            raise ValueError(f"positive_class: expected a class id 0 or 1, or a name in {names}, got {positive_class}")
        return int(positive_class)
    if str(positive_class) not in names:
        raise ValueError(f"positive_class: expected one of the class names {names}, got {positive_class!r}")
    return names.index(str(positive_class))


def _sensitivity_and_specificity(recall, support, positive_label: int) -> Tuple[Optional[float], Optional[float]]:
    """The positive class's recall and the other's, each None where its class has no image (sklearn's 0 would read as
    a classifier that misses every one)."""
    return tuple(float(recall[k]) if support[k] > 0 else None for k in (positive_label, 1 - positive_label))


def _binary_metrics(
    names: Sequence[str], positive_label: int, precision, recall, f1, support, predicted
) -> Dict[str, object]:
    """Sensitivity, specificity, the positive class's precision (PPV) and F1, the other's precision (NPV) and the
    likelihood ratios, all of `positive_label` (the other class is the negative one). A recall of a class with no
    image is undefined: None (sklearn's 0 would read as a classifier that misses every positive), and so are the
    ratios that use it; a precision of a class never decided, too (review: a PPV of 0.00% read "every call wrong")."""
    negative = 1 - positive_label
    sensitivity, specificity = _sensitivity_and_specificity(recall, support, positive_label)
    ppv, npv = (float(precision[k]) if predicted[k] > 0 else None for k in (positive_label, negative))
    defined = sensitivity is not None and specificity is not None
    return {
        "positive_class": names[positive_label],
        "sensitivity": sensitivity,
        "specificity": specificity,
        "positive_precision": ppv,
        "negative_predictive_value": npv,  # the other class's precision, at this prevalence
        "positive_f1": float(f1[positive_label]),
        # LR+ = sensitivity / (1 - specificity), LR- = (1 - sensitivity) / specificity; None where undefined.
        "positive_likelihood_ratio": sensitivity / (1 - specificity) if defined and specificity < 1 else None,
        "negative_likelihood_ratio": (1 - sensitivity) / specificity if defined and specificity > 0 else None,
    }


def predictive_values_at(prevalence: float, metrics: dict) -> dict:
    """The positive and negative predictive values a binary classifier of `metrics`' sensitivity and specificity has
    where the positive class is `prevalence` of the images (Bayes' rule: PPV = se p / (se p + (1 - sp)(1 - p))), with
    the prevalence of the images scored: `{"prevalence", "scored_prevalence", "positive_predictive_value",
    "negative_predictive_value"}`, a value None where undefined. A set's precision is the PPV at its own prevalence: a
    classifier with 91% precision on a test split 62.5% positive may have a PPV of 6% where 1% of the images are."""
    sensitivity, specificity = metrics.get("sensitivity"), metrics.get("specificity")
    ppv = npv = None
    if sensitivity is not None and specificity is not None:
        true_positive, false_positive = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
        true_negative, false_negative = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
        ppv = true_positive / (true_positive + false_positive) if true_positive + false_positive > 0 else None
        npv = true_negative / (true_negative + false_negative) if true_negative + false_negative > 0 else None
    scored = metrics["num_positives"] / metrics["num_samples"] if "num_positives" in metrics else None
    return {
        "prevalence": float(prevalence), "scored_prevalence": scored, "positive_predictive_value": ppv,
        "negative_predictive_value": npv,
    }  # fmt: skip


def prevalence_note(metrics: dict) -> List[str]:
    """A binary report's paragraph on prevalence: the PPV, NPV, precisions, F1s, calibration and precision-recall
    curve are those of the scored set's (QA, a clinician: a PPV of 89% read as a positive call's worth anywhere, at
    a test set's 62.5% of pneumonia); and the predictive values at the priors' prevalence, for metrics scored with
    priors (`metrics["at_priors"]`, `predictive_values_at`), or at one given (`metrics["at_prevalence"]`); none for
    other tasks."""
    at = metrics.get("at_priors")
    if not at:
        return _scored_prevalence_note(metrics)
    positive, ppv, npv = metrics["positive_class"], at["positive_predictive_value"], at["negative_predictive_value"]
    own = at["scored_prevalence"]
    scored = "" if own is None else f", whose prevalence of {positive} is {percent(own)}"
    values = f"a PPV of {percent(ppv)} and an NPV of {percent(npv)}"
    return [
        f"Scored with priors that give {positive} a prevalence of {percent(at['prevalence'])}: the precisions, F1s, "
        f"ECE and precision-recall curve below are those of this set{scored}; at the priors' prevalence, this "
        f"sensitivity and specificity give {values}.",
        "",
    ]


def _scored_prevalence_note(metrics: dict) -> List[str]:
    positive = metrics.get("positive_class")
    if positive is None or not metrics.get("num_samples"):
        return []
    support, total = metrics["per_class"][positive]["support"], metrics["num_samples"]
    text = (
        f"The PPV, NPV, precisions, F1s, ECE and precision-recall curve below are those of this set, whose prevalence "
        f"of {positive} is {percent(support / total)} ({support} of {total} images)"
    )
    at = metrics.get("at_prevalence")
    if at is None:
        return [f"{text}: a population of another prevalence has other ones (`--prevalence` gives them).", ""]
    ppv, npv = percent(at["positive_predictive_value"]), percent(at["negative_predictive_value"])
    values = f"a PPV of {ppv} and an NPV of {npv}"
    return [f"{text}; where {positive} is {percent(at['prevalence'])} of the images, this sensitivity and specificity "
            f"give {values}.", ""]  # fmt: skip


def percent(value: Optional[float]) -> str:
    """A fraction as a report shows it: `"97.50%"`, or `"n/a"` for an undefined metric (None)."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def negative_class(metrics: dict) -> str:
    """The class of binary `metrics` that is not its `positive_class`: the one specificity is the recall of."""
    return next(name for name in metrics["per_class"] if name != metrics["positive_class"])


def interval_level(intervals: dict) -> str:
    """The level of `confidence_intervals.classification_intervals`' intervals as a report names it: "95%"."""
    return f"{100 * intervals['level']:g}%"


def interval_text(intervals: dict, key: Optional[str], as_percent: bool = True) -> str:
    """The interval of metric `key` as a report shows it: "88.12% to 97.03%" (`as_percent=False`: "0.8812 to
    0.9703"; an AUC and an average precision always so); empty for a metric with none (`key` None), "n/a" where it
    is undefined."""
    if key is None:
        return ""
    interval = intervals.get(key)
    if interval is None:
        return "n/a"
    as_percent = as_percent and key not in ("auc", "average_precision")
    return " to ".join(percent(value) if as_percent else f"{value:.4f}" for value in interval)


def metrics_table_header(intervals: Optional[dict], first: str = "metric") -> List[str]:
    """The header of a report's metrics table: `| metric | value |`, with an interval column when it shows
    `intervals`."""
    if not intervals:
        return [f"| {first} | value |", "| --- | ---: |"]
    return [f"| {first} | value | {interval_level(intervals)} confidence interval |", "| --- | ---: | ---: |"]


def metric_row(name: str, value: str, intervals: Optional[dict] = None, key: Optional[str] = None) -> str:
    """A row of a report's metrics table: `| name | value |`, and where the table shows `intervals` the interval of
    metric `key` (empty without one). A "|" in the name or value (a class's name) is escaped, so the row keeps its
    cells."""
    name, value = (text.replace("|", chr(92) + "|") for text in (name, value))
    return f"| {name} | {value} |" + (f" {interval_text(intervals, key)} |" if intervals else "")


def average_precision_rows(metrics: dict) -> List[str]:
    """A report's row of a binary task's average precision, after its AUC (none for metrics of earlier versions)."""
    if metrics.get("average_precision") is None:
        return []
    name = f"average precision (PR AUC of {metrics['positive_class']})"
    intervals = metrics.get("confidence_intervals")
    key = "average_precision" if intervals and "average_precision" in intervals else None  # recorded since 2026-12-07
    return [metric_row(name, f"{metrics['average_precision']:.4f}", intervals, key)]


def decision_sentence(metrics: dict, measured_on: Optional[tuple] = None) -> str:
    """A binary report's words on its positive class and decisions: `positive class: **bleed** (12 of 40 images),
    predicted where its probability exceeds 0.5 (...)`, counted from the per-class support, or at the recorded
    `operating_point` (`operating_points`): its threshold and where it was chosen (`measured_on`: the `(split,
    dataset)` the metrics were measured on, see `operating_point_text`)."""
    positive = metrics["positive_class"]
    support = metrics["per_class"].get(positive, {}).get("support")
    positives = "" if support is None else f" ({support} of {metrics['num_samples']} images)"
    point = metrics.get("operating_point")
    decided = f"is {operating_point_text(point, measured_on)}" if point is not None else (
        "exceeds 0.5 (each image is given its most probable class; at a tie, the class listed first)"
    )  # fmt: skip
    return f"positive class: **{positive}**{positives}, predicted where its probability {decided}"


def operating_point_text(point: dict, measured_on: Optional[tuple] = None) -> str:
    """An operating point as a report states it: `0.90922755 or more (log-odds 2.3025851 or more, which decide), the
    threshold chosen for a sensitivity of at least 90.00% on the val split of pneumoniamnist.npz (...)`; 8 significant
    digits (the exact value is in metrics.json, which `--threshold` reads). The log-odds decide (image_predictions.csv's
    `log_odds_<class>` column): a float32 probability column rounds an image at the boundary either way (QA). A point
    read from another run and applied to the `(split, dataset)` it was chosen on (`measured_on`) says so."""
    text = f"{point['threshold']:.8g} or more"
    if point.get("log_odds") is not None:
        text += f" (log-odds {point['log_odds']:.8g} or more, which decide)"
    if point.get("target_sensitivity") is None:
        return text + (f", the threshold read from `{point['from']}`" if point.get("from") else ", the threshold given")
    text += f", the threshold chosen for a sensitivity of at least {percent(point['target_sensitivity'])} on "
    text += _chosen_on(point)
    same_images = (
        " (these very images: the sensitivity is met by construction; apply the threshold to held-out images with "
        "`evaluate --threshold <this metrics.json>`)"
    )
    if point.get("from"):
        text += f" (read from `{point['from']}`)"
    return text + same_images if met_by_construction(point, measured_on) else text


def met_by_construction(point: dict, measured_on: Optional[tuple] = None) -> bool:
    """Whether the operating `point`'s sensitivity is met by construction on the images measured (`measured_on`,
    their `(split, dataset)`): it was chosen for a target sensitivity on them, in this run or in the run it was read
    from (QA: applied again to the split it was chosen on, the report read as a held-out result; review: two unnamed
    splits are not known to be one)."""
    if point.get("target_sensitivity") is None:
        return False
    if not point.get("from"):
        return True
    return point.get("chosen_on") is not None and measured_on == (point.get("chosen_on"), point.get("dataset"))


def _chosen_on(point: dict) -> str:
    """Which images an operating point was chosen on: `the val split of pneumoniamnist.npz`."""
    data = f" of {point['dataset']}" if point.get("dataset") else ""
    if point.get("num_positives") is not None:  # QA: chosen from 3 positives, 100% on val read as a fact
        count = point["num_positives"]
        data += f", from its {count} positive image{'' if count == 1 else 's'}"
    if point.get("chosen_on") is None:
        return f"images of no named split{data}"
    if point["chosen_on"] == "all":
        return f"every image{data or ' of a data set'}"
    return f"the {point['chosen_on']} split{data}"


def positive_class_rows(metrics: dict) -> List[str]:
    """A report's rows of a binary task's positive class: its sensitivity, the specificity (the other class's
    recall) and its F1, with their intervals where `metrics` records them; none for another task."""
    if "positive_class" not in metrics:
        return []
    positive, intervals = metrics["positive_class"], metrics.get("confidence_intervals")
    sensitivity, specificity = percent(metrics["sensitivity"]), percent(metrics["specificity"])
    rows = [
        metric_row(f"sensitivity (recall of {positive})", sensitivity, intervals, "sensitivity"),
        metric_row(f"specificity (recall of {negative_class(metrics)})", specificity, intervals, "specificity"),
    ]
    if "negative_predictive_value" in metrics:  # since 2026-12-07 (QA: a biostatistician found no NPV, no PPV interval)
        known = intervals and "negative_predictive_value" in intervals
        rows += [
            metric_row(f"PPV (precision of {positive})", percent(metrics["positive_precision"]), intervals,
                       "positive_precision" if known else None),
            metric_row(f"NPV (precision of {negative_class(metrics)})", percent(metrics["negative_predictive_value"]),
                       intervals, "negative_predictive_value" if known else None),
        ]  # fmt: skip
    return rows + [metric_row(f"F1 of {positive}", percent(metrics["positive_f1"]), intervals)]


def intervals_note(intervals: dict) -> str:
    """A report's sentence on its confidence intervals: how each was computed, and what they leave out."""
    by_method = {}
    for key, method in intervals["methods"].items():
        by_method.setdefault(method, []).append(_INTERVAL_NAMES[key])
    described = "; ".join(f"{', '.join(names)}: {method}" for method, names in by_method.items())
    return (
        f"{interval_level(intervals)} confidence intervals ({described}) describe only the sampling error of this "
        "evaluation set, each image (or group) counted as an independent draw (slices of one scan are not: score each "
        "scan once with `diffusion-classifiers aggregate`). They do not cover another site's instruments or "
        "population, or another training run."
    )


_INTERVAL_NAMES = {
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "positive_precision": "PPV",
    "negative_predictive_value": "NPV",
    "auc": "AUC",
    "average_precision": "average precision",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
}


def per_class_table(per_class: Dict[str, dict]) -> List[str]:
    """The Markdown rows of a report's per-class table (`classification_metrics`' "per_class"): precision, recall,
    F1 and support of each class, as the reports of `evaluate` and `probe` show them (the tail of a long-tailed set
    included). A class without an image in the split (support 0) has no recall or F1 to measure, and a class never
    predicted no precision: "n/a", not the 0.00% scikit-learn's `zero_division=0` records (which would read as every
    call wrong). A "|" in a class name is escaped, so its row keeps its cells."""
    rows = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in per_class.items():
        measured = {"recall", "f1"} if row["support"] else set()
        if row.get("predicted", 1):  # metrics of earlier versions do not count the predictions
            measured.add("precision")
        scores = " | ".join(percent(row[key]) if key in measured else "n/a" for key in ("precision", "recall", "f1"))
        rows.append(f"| {name.replace('|', chr(92) + '|')} | {scores} | {row['support']} |")
    return rows


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    probs=None,
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    positive_label: Optional[int] = None,
) -> dict:
    r"""
    Accuracy, macro-F1, balanced accuracy, per-class precision/recall/F1, confusion matrix and (with `probs`) AUC.

    Args:
        y_true, y_pred: integer labels in `[0, num_classes)`, same length.
        probs (`[N, K]`, *optional*): class probabilities or scores. Binary AUC uses `probs[:, positive_label]`;
            multiclass AUC is one-vs-rest macro over the classes present in `y_true`. With one class present, `auc`
            is `None` and `auc_unavailable_reason` says why. A binary task also gets `average_precision` (the
            area under the positive class's precision-recall curve, scikit-learn's). Scores of `+inf` / `-inf` rank
            first / last; NaN is refused.
        num_classes (`int`, *optional*): defaults to `len(class_names)`, else the largest label + 1.
        class_names (`Sequence[str]`, *optional*): keys of `per_class`; defaults to `"0"`, `"1"`, ...
        positive_label (`int`, *optional*): binary tasks only: the id of the positive class (the finding, e.g.
            malignant); defaults to 1. `resolve_positive_label` turns a class name into it.

    Returns:
        `dict` of plain Python numbers and lists. `macro_f1` and `balanced_accuracy` average over the classes present
        in `y_true` (a class without an image, predicted or not, counts in neither: the metrics describe the classes
        the data holds; with every class present, `macro_f1` is scikit-learn's); `per_class` lists every class: its
        precision, recall, F1 (0 where undefined, as scikit-learn's `zero_division=0`), support and how many images
        were `predicted` as it.
        Binary problems also get `positive_class` (its name), `sensitivity` (recall of the positive class),
        `specificity` (recall of the other), `positive_precision` (PPV), `negative_predictive_value` (NPV: the
        other's precision; each None where no image was decided so), `positive_f1` and the likelihood ratios
        `positive_likelihood_ratio` (LR+) and `negative_likelihood_ratio` (LR-), all of the positive class.
    """
    y_true, y_pred = as_labels(y_true, "y_true"), as_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"expected y_true and y_pred of the same length, got {len(y_true)} and {len(y_pred)}")
    num_classes = resolve_num_classes(num_classes, class_names, y_true, y_pred)
    check_label_range(y_true, "y_true", num_classes)
    check_label_range(y_pred, "y_pred", num_classes)
    names = [str(c) for c in class_names] if class_names is not None else [str(k) for k in range(num_classes)]
    check_unique_class_names(names, "class_names")  # review: per-class rows merged, a binary report found no negative
    positive_label = resolve_positive_label(positive_label, names, num_classes)
    labels = list(range(num_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    predicted = np.bincount(y_pred, minlength=num_classes)
    result = {
        "num_samples": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1[support > 0].mean()),  # over the classes present in y_true
        "balanced_accuracy": float(recall[support > 0].mean()),  # = sklearn's, without its warnings
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s), "predicted": int(n)}
            for name, p, r, f, s, n in zip(names, precision, recall, f1, support, predicted)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if num_classes == 2:
        result.update(_binary_metrics(names, positive_label, precision, recall, f1, support, predicted))
    if probs is not None:
        probs = float_array(probs)
        if probs.shape != (len(y_true), num_classes):
            raise ValueError(f"expected probs of shape {(len(y_true), num_classes)}, got {probs.shape}")
        check_finite_rows(np.nan_to_num(probs, nan=np.nan, posinf=0.0, neginf=0.0), "probs")  # +-inf: extreme ranks
        result.update(_auc(y_true, probs, positive_label))
    return result


BINARY_SCORES = ("sensitivity", "specificity", "positive_f1")
# evaluate's metrics.json count of the images scored that are the model's training images yet pass its check as copies
# of images the data's own train split holds (`evaluation.check_training_overlap`'s `count_copies_in_train`)
TRAINING_IMAGE_COPIES_KEY = "training_images_also_in_the_data_train_split"


def binary_scores(y_true, y_pred, positive_label: Optional[int] = None) -> Dict[str, Optional[float]]:
    """`BINARY_SCORES` of two-class predictions for `positive_label` (default class 1), as [`classification_metrics`]
    has them: the positive class's recall (None without a positive image), the other's (None without a negative one)
    and the positive class's F1. A prediction of another id (-1: an image of a cluster no class was matched to) is
    an error of its image's class and a prediction of neither."""
    y_true, y_pred = as_labels(y_true, "y_true"), np.asarray(y_pred)
    check_label_range(y_true, "y_true", 2)
    positive_label = resolve_positive_label(positive_label, None, 2)
    _, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    sensitivity, specificity = _sensitivity_and_specificity(recall, support, positive_label)
    return {"sensitivity": sensitivity, "specificity": specificity, "positive_f1": float(f1[positive_label])}


def mark_absent_classes(
    metrics: dict, y_true, class_names: Sequence[str], scored: str, where: str, stacklevel: int = 3
) -> None:
    """The classes of `class_names` with no image in `y_true` (the `scored` set, "test split" or "data set"), recorded
    in `metrics` as `absent_classes`, with `auc` (and its interval) None and why (`auc_undefined`), and warned about:
    a set without a class reads as perfect on the rest (`where`: the set as the warning names it, "test" or "test
    split"; `stacklevel`: as `warnings.warn`'s would be in the function that calls this one, plus one)."""
    present = set(np.asarray(y_true).tolist())
    absent = [name for label, name in enumerate(class_names) if label not in present]
    if not absent:
        return
    metrics["absent_classes"] = absent
    metrics["auc"] = None
    metrics["auc_undefined"] = f"no image of class {_some_of(absent)} in the {scored}"
    if "confidence_intervals" in metrics:  # computed over the classes present, as the AUC was before
        metrics["confidence_intervals"]["auc"] = None
        metrics["confidence_intervals"]["methods"]["auc"] = NO_AUC_INTERVAL
    warnings.warn(
        f"the evaluated {where} has no image of the model's class(es) {_some_of(absent)} (none of its {len(y_true)} "
        "images): its accuracy and macro-F1 say nothing about them, and AUC is undefined",
        UserWarning,
        stacklevel=stacklevel,
    )


def _some_of(names: Sequence[str], shown: int = 10) -> str:
    """`names` as a sentence lists them, the first `shown` and how many more (QA: a long-tailed report's AUC cell and
    warnings named 111 absent classes each)."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def auc_text(metrics: dict) -> str:
    """`metrics`' AUC as a report shows it: 4 decimals, else why it is undefined or "n/a"."""
    if metrics.get("auc_undefined"):
        return f"undefined ({metrics['auc_undefined']})"
    return "n/a" if metrics.get("auc") is None else f"{metrics['auc']:.4f}"


def absent_classes_note(metrics: dict, scored: str) -> List[str]:
    """A report's warning lines (Markdown) for `metrics` of a `scored` set missing classes (`mark_absent_classes`)."""
    if not metrics.get("absent_classes"):
        return []
    return [
        f"**Warning: the {scored} has no image of class {_some_of(metrics['absent_classes'])}.** The metrics below "
        "describe the other classes only; AUC is undefined.",
        "",
    ]


def _contingency(y_true: np.ndarray, clusters: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [num_clusters, num_classes] of (cluster, class) pairs."""
    num_clusters = max(int(clusters.max()) + 1, num_classes)
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (clusters, y_true), 1)
    return counts


def hungarian_match(y_true, clusters, num_classes: int) -> np.ndarray:
    r"""
    The one-to-one cluster -> class assignment that maximises the number of matched samples.

    Returns:
        `np.ndarray` of length `max(num_clusters, num_classes)`: `mapping[c]` is the class of cluster `c`, or -1 for
        clusters left unmatched (only when there are more clusters than classes).
    """
    y_true, clusters = as_labels(y_true, "y_true"), as_labels(clusters, "clusters")
    check_label_range(y_true, "y_true", num_classes)
    if len(y_true) != len(clusters) or clusters.min() < 0:
        raise ValueError(
            f"expected clusters as non-negative ids, one per label: got {len(clusters)} ids "
            f"(min {clusters.min()}) for {len(y_true)} labels"
        )
    counts = _contingency(y_true, clusters, num_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(len(counts), -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def clustering_metrics(y_true, clusters, num_classes: int, positive_label: Optional[int] = None) -> dict:
    r"""
    Label-free grouping quality: `nmi`, `ari`, Hungarian-matched `accuracy`, `macro_f1` and `balanced_accuracy`, and
    `purity` (each cluster counted as its majority class). Also returns `cluster_to_class`, the Hungarian mapping as
    a list, and `accuracy_by_chance`: the Hungarian accuracy of clusters of the same sizes drawn at random (the mean
    over `CHANCE_DRAWS` seeded shuffles), which is far from 1 / K with few images per cluster (121 plankton classes of
    2 test images each: many clusters match a class by luck).

    Two classes also get the Hungarian-matched `sensitivity`, `specificity` and `positive_f1` of `positive_label`
    (default class 1, as [`classification_metrics`]), the images of a cluster left unmatched counted as errors there
    too (and as predictions of neither class, as in `macro_f1`).
    """
    resolve_positive_label(positive_label, None, num_classes)  # refused on more classes, as evaluate_protocols does
    mapping = hungarian_match(y_true, clusters, num_classes)
    y_true, clusters = as_labels(y_true, "y_true"), as_labels(clusters, "clusters")
    matched = mapping[clusters]
    present = np.unique(y_true).tolist()
    binary = binary_scores(y_true, matched, positive_label) if num_classes == 2 else {}
    return {
        **binary,
        "nmi": float(skm.normalized_mutual_info_score(y_true, clusters)),
        "ari": float(skm.adjusted_rand_score(y_true, clusters)),
        "accuracy": float(np.mean(matched == y_true)),
        "accuracy_by_chance": _hungarian_accuracy_by_chance(y_true, clusters, num_classes),
        "purity": float(_contingency(y_true, clusters, num_classes).max(axis=1).sum() / len(y_true)),
        "macro_f1": float(skm.f1_score(y_true, matched, labels=present, average="macro", zero_division=0)),
        "balanced_accuracy": float(
            skm.recall_score(y_true, matched, labels=present, average="macro", zero_division=0)
        ),
        "cluster_to_class": mapping.tolist(),
    }


def _hungarian_accuracy_by_chance(y_true: np.ndarray, clusters: np.ndarray, num_classes: int) -> float:
    rng = np.random.default_rng(0)
    accuracies = []
    for _ in range(CHANCE_DRAWS):
        shuffled = rng.permutation(clusters)
        accuracies.append(np.mean(hungarian_match(y_true, shuffled, num_classes)[shuffled] == y_true))
    return float(np.mean(accuracies))


def calibration_metrics(y_true, probs, num_bins: int = 10) -> dict:
    r"""
    Expected calibration error of the top-class confidence, with the per-bin table of a reliability diagram, and
    the two proper scores of the probabilities (scikit-learn's). `probs` must be probabilities (in [0, 1], finite),
    `y_true` class ids among their columns and `num_bins` at least 1.

    Returns:
        `dict` with `ece`; `brier`, the Brier score (the mean squared distance of each image's probabilities from its
        one-hot label: halved for two classes, as customary, so in [0, 1]; in [0, 2] for more); `log_loss`, the mean
        negative log-probability of the true class in nats (a probability of exactly 0 counted as float64's
        epsilon, about 36 nats); and `bins`: one entry per equal-width confidence bin (`lower`, `upper`, `count`,
        `confidence` = mean top probability, `accuracy` = fraction correct; `None` for empty bins); `selective`
        (`selective_accuracy`: the accuracy of the most confident images, the others left to a person).
    """
    y_true, probs = as_labels(y_true, "y_true"), float_array(probs)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"expected probs of shape [{len(y_true)}, K], got {probs.shape}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins: expected an integer >= 1, got {num_bins!r}")
    check_label_range(y_true, "y_true", probs.shape[1])
    check_finite_rows(probs, "probs")
    outside = np.flatnonzero(((probs < 0) | (probs > 1 + PROBABILITY_SLACK)).any(1))
    if len(outside):  # logits or log-probabilities would give an ECE above 1, or any number
        raise ValueError(f"probs row {outside[0]} = {probs[outside[0]].tolist()} is not probabilities in [0, 1]")
    confidence, correct = probs.max(1), probs.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, num_bins - 1)
    bins, ece = [], 0.0
    for b in range(num_bins):
        members = which == b
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(y_true) * abs(accuracy - mean_confidence)
        bins.append({
            "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count, "confidence": mean_confidence,
            "accuracy": accuracy,
        })  # fmt: skip
    return {"ece": float(ece), **proper_scores(y_true, probs), "bins": bins,
            "selective": selective_accuracy(confidence, correct)}  # fmt: skip


SELECTIVE_COVERAGES = (0.9, 0.8, 0.5)


def selective_accuracy(confidence: np.ndarray, correct: np.ndarray, coverages=SELECTIVE_COVERAGES) -> List[dict]:
    """For each coverage `c`, the images whose top-class `confidence` is at least that of the `ceil(c N)`-th most
    confident (ties at the cut all kept, so `coverage` may exceed `c`), and the fraction of them `correct`: what a lab
    that checks the least confident images by hand (a plankton sample's, a reading list's) gets for the rest. The cut
    (`min_confidence`) is read on these images: to apply one to new images, read it on val."""
    confidence, correct = float_array(confidence), np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or not np.isfinite(confidence).all():
        raise ValueError(
            f"expected finite confidences and as many correct flags, both [N], got {confidence.shape} and "
            f"{correct.shape}"
        )
    if not all(0 < target <= 1 for target in coverages):
        raise ValueError(f"coverages: expected fractions in (0, 1], got {list(coverages)}")
    order = np.sort(confidence)[::-1]
    rows = []
    for target in coverages:
        if not len(order):
            break
        cut = float(order[max(1, math.ceil(target * len(order))) - 1])
        kept = confidence >= cut
        rows.append({
            "target_coverage": target, "coverage": float(kept.mean()), "images": int(kept.sum()),
            "min_confidence": cut, "accuracy": float(correct[kept].mean()),
        })  # fmt: skip
    return rows


def selective_rows(calibration: dict, intervals: Optional[dict] = None) -> List[str]:
    """The report rows of `selective_accuracy` (none in an earlier version's metrics.json)."""
    return [
        metric_row(
            f"accuracy of the {row['images']} most confident ({percent(row['coverage'])} of the images; top-class "
            f"probability >= {row['min_confidence']:.3f})",
            percent(row["accuracy"]), intervals,
        )  # fmt: skip
        for row in calibration.get("selective", [])
    ]


def calibration_rows(calibration: dict, intervals: Optional[dict] = None) -> List[str]:
    """The report rows of `calibration_metrics`: the ECE, and the Brier score and log loss where recorded (an earlier
    version's metrics.json has neither)."""
    rows = [metric_row("ECE", f"{calibration['ece']:.4f}", intervals)]
    if "brier" in calibration:
        rows += [metric_row("Brier score", f"{calibration['brier']:.4f}", intervals)]
        rows += [metric_row("log loss (nats)", f"{calibration['log_loss']:.4f}", intervals)]
    return rows


def proper_scores(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """The Brier score and the log loss of checked probabilities `probs` `[N, K]` (`calibration_metrics`): the means
    of `per_image_proper_scores`."""
    return {name: float(values.mean()) for name, values in per_image_proper_scores(y_true, probs).items()}


def per_image_proper_scores(y_true: np.ndarray, probs: np.ndarray) -> Dict[str, np.ndarray]:
    """Each image's Brier score and log loss [N] from checked probabilities `probs` `[N, K]` (in [0, 1], finite; each
    row renormalised, as a float32 softmax sums to 1 within its rounding only), scikit-learn's definitions: every one
    of the K columns a class, present in `y_true` or not; the Brier score the squared distance from the one-hot label,
    halved for two classes; the log loss -log of the true class's probability clipped to [eps, 1 - eps] (float64's
    epsilon: a probability of 0 costs about 36 nats)."""
    sums = probs.sum(1, keepdims=True)
    if (sums == 0).any():
        empty = int(np.flatnonzero(sums == 0)[0])
        raise ValueError(f"probs row {empty} is all zeros: expected each row to be a distribution over the classes")
    rows, one_hot = probs / sums, np.eye(probs.shape[1])[y_true]
    brier = ((rows - one_hot) ** 2).sum(1) / (2 if probs.shape[1] == 2 else 1)
    eps = np.finfo(np.float64).eps
    log_loss = -np.log(np.clip(rows[np.arange(len(y_true)), y_true], eps, 1 - eps))
    return {"brier": brier, "log_loss": log_loss}


def seed_sensitivity_metrics(y_true, y_pred, margins, stderr, num_stderr: float = 2.0) -> dict:
    r"""
    The decisions `y_pred` of a Monte-Carlo classifier that another noise seed could flip: those whose decision
    margin (its distance from the threshold; a binary Score-SDE ELBO or several-probe likelihood: the log-odds, and
    `log_likelihood_ratio_stderr`)
    is within `num_stderr` standard errors of the threshold, and the accuracy of the others. A NaN standard error
    (fewer than two timesteps scored) counts as within.

    Returns:
        `dict`: `num_stderr`, `decisions_within` (a count), `fraction_within`, `accuracy_beyond` (of the decisions
        beyond the band; None when there are none) and `median_stderr`.
    """
    y_true, y_pred = as_labels(y_true, "y_true"), as_labels(y_pred, "y_pred")
    margins, stderr = (np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=np.float64) for v in (margins, stderr))
    if y_pred.shape != y_true.shape or margins.shape != y_true.shape or stderr.shape != y_true.shape:
        raise ValueError(
            f"expected y_pred, margins and stderr of shape [{len(y_true)}], got {y_pred.shape}, {margins.shape} and "
            f"{stderr.shape}"
        )
    beyond = np.abs(margins) >= num_stderr * stderr  # NaN compares False: within
    return {
        "num_stderr": float(num_stderr),
        "decisions_within": int((~beyond).sum()),
        "fraction_within": float((~beyond).mean()),
        "accuracy_beyond": float((y_pred == y_true)[beyond].mean()) if beyond.any() else None,
        "median_stderr": float(np.nanmedian(stderr)) if np.isfinite(stderr).any() else None,
    }

"""Predictions of slices or frames gathered per scan, series or patient (`diffusion-classifiers aggregate`).

`predict` gives one row per image (a CT slice, a DICOM frame) with its DICOM ids (`patient_id`, `study_uid`,
`series_uid`); a reader decides per scan. [`aggregate_predictions`] gathers the rows of each group: the positive class's
probability of a group is the largest of its images' under the "max" rule (a scan holds a haemorrhage if any slice
shows one), the mean under "mean" (every class, the label the most probable class). With the `true_label` column of
a labelled run, each group's images must share one label, and the group-level metrics are those of `evaluate`
(`metrics.classification_metrics`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .inputs import DICOM_ID_COLUMNS
from .outputs import (
    OUTPUT_SUFFIXES,
    OutputFiles,
    default_errors_path,
    errors_file_of_resumed_run,
    listed_errors,
    read_predictions,
    write_csv,
)

__all__ = ["AGGREGATION_RULES", "add_aggregate_args", "aggregate_predictions", "run_aggregate"]

AGGREGATION_RULES = ("max", "mean")
# numpy and the metrics are imported where rows are gathered: the command's flags stay standard-library only


def aggregate_predictions(
    predictions: str | os.PathLike,
    by: str = "study_uid",
    rule: str = "max",
    positive_class: Optional[str] = None,
    threshold: float = 0.5,
) -> tuple[list[str], list[list], Optional[dict]]:
    r"""
    The rows of a `predict` output gathered per group: `(columns, rows, metrics)`.

    Args:
        predictions (`str` or `os.PathLike`): a `.csv` or `.parquet` file `predict` wrote.
        by (`str`, *optional*, defaults to `"study_uid"`): the column whose value names a row's group (one of
            `patient_id`, `study_uid`, `series_uid`, which `predict` writes for DICOM inputs, or any other column
            of the file); a row without one is refused, naming it.
        rule (`str`, *optional*, defaults to `"max"`): `"max"`, the positive class's probability of a group is the
            largest of its rows' (binary predictions; the label is the positive class at `threshold` or above), or
            `"mean"`, each class's probability is the mean of its rows' (the label: the most probable class).
        positive_class (`str`, *optional*): binary predictions: the "max" rule's class and the one the metrics'
            sensitivity refers to; default: the second class of the file (class 1, as everywhere in this library).
        threshold (`float`, *optional*, defaults to 0.5): the "max" rule's decision threshold on that probability.

    Returns:
        `columns`: `<by>, num_images, [true_label,] label, prob_<class>...`; `rows`, one per group in the order the
        groups first appear; `metrics`: with a `true_label` column (each group's rows must share one),
        `metrics.classification_metrics` of the groups, else None.
    """
    import numpy as np

    from ..metrics import classification_metrics

    columns, rows = read_predictions(predictions)
    class_names = [column[len("prob_"):] for column in columns if column.startswith("prob_")]
    positive = _check_aggregation(predictions, columns, class_names, by, rule, positive_class, threshold)
    groups = _group_rows(predictions, columns, rows, by)
    probability_columns = [columns.index(f"prob_{name}") for name in class_names]
    true_column = columns.index("true_label") if "true_label" in columns else None
    out_rows, truths, probs = [], [], []
    for group, members in groups.items():
        probabilities = np.array([[row[i] for i in probability_columns] for row in members], dtype=np.float64)
        combined = _combine(probabilities, rule, positive)
        label = _label(combined, rule, positive, threshold)
        truth = None if true_column is None else _group_truth(predictions, by, group, members, true_column)
        out_rows.append([group, len(members), *([truth] if truth is not None else []), class_names[label], *combined])
        truths.append(truth)
        probs.append(combined)
    out_columns = [by, "num_images", *(["true_label"] if true_column is not None else []), "label"]
    out_columns += [f"prob_{name}" for name in class_names]
    metrics = None
    if true_column is not None:
        y_true = [_class_index(predictions, class_names, truth) for truth in truths]
        y_pred = [class_names.index(row[out_columns.index("label")]) for row in out_rows]
        metrics = classification_metrics(
            y_true, y_pred, np.array(probs), num_classes=len(class_names), class_names=class_names,
            positive_label=positive,
        )  # fmt: skip
        metrics = {"grouped_by": by, "rule": rule, "num_groups": len(out_rows), **metrics}
    return out_columns, out_rows, metrics


def _check_aggregation(
    predictions, columns: list, class_names: list, by: str, rule: str, positive_class: Optional[str], threshold: float
) -> Optional[int]:
    """Every argument checked before a row is gathered; the positive class's index for binary predictions (the "max"
    rule's class, and the one the metrics' sensitivity refers to), None for more classes."""
    if rule not in AGGREGATION_RULES:
        raise ValueError(f"rule: expected one of {list(AGGREGATION_RULES)}, got {rule!r}")
    if by not in columns:
        dicom = [name for name in DICOM_ID_COLUMNS if name in columns]
        hint = f" (its DICOM ids: {dicom})" if dicom else " (predict writes patient_id, study_uid, series_uid for DICOM)"
        raise ValueError(f"{predictions}: no column {by!r} to group by; it has {columns}{hint}")
    if len(class_names) < 2:
        raise ValueError(f"{predictions}: expected prob_<class> columns of a predict output, got {columns}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold: expected a probability strictly between 0 and 1, got {threshold!r}")
    if rule == "max" and len(class_names) != 2:
        raise ValueError(
            f"rule 'max' takes binary predictions (is the positive class in any image of the group?); {predictions} "
            f"has {len(class_names)} classes {class_names}: use rule 'mean'"
        )
    if positive_class is not None and positive_class not in class_names:
        raise ValueError(f"positive_class: expected one of {class_names}, got {positive_class!r}")
    if len(class_names) != 2:
        return None
    return class_names.index(positive_class) if positive_class is not None else 1


def _group_rows(predictions, columns: list, rows: list, by: str) -> dict:
    """The rows of each value of column `by`, in the order the values first appear; a row without one refused."""
    key = columns.index(by)
    missing = [row[0] for row in rows if row[key] in (None, "")]
    if missing:
        raise ValueError(
            f"{predictions}: {len(missing)} of {len(rows)} rows have no {by} (e.g. {missing[:3]}); expected every "
            f"row to name its group (an image that is not DICOM has no DICOM ids: group by another column)"
        )
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def _combine(probabilities: Any, rule: str, positive: Optional[int]) -> list[float]:
    """A group's class probabilities: the positive class's largest and its complement ("max"), or the means."""
    if rule == "mean":
        return [float(value) for value in probabilities.mean(axis=0)]
    largest = float(probabilities[:, positive].max())
    return [largest if index == positive else 1.0 - largest for index in range(probabilities.shape[1])]


def _label(combined: list[float], rule: str, positive: Optional[int], threshold: float) -> int:
    if rule == "max":
        return positive if combined[positive] >= threshold else 1 - positive
    return max(range(len(combined)), key=combined.__getitem__)


def _group_truth(predictions, by: str, group: Any, members: list, true_column: int) -> Any:
    """The one true label of a group's rows; a group whose rows disagree is refused, naming it."""
    labels = sorted({str(row[true_column]) for row in members})
    if len(labels) != 1:
        raise ValueError(
            f"{predictions}: the rows of {by} {group!r} have the true labels {labels}; expected one per group (a scan "
            "is labelled as a whole): group by a column whose groups share a label"
        )
    return labels[0]


def _class_index(predictions, class_names: Sequence[str], truth: str) -> int:
    if truth not in class_names:
        raise ValueError(f"{predictions}: true label {truth!r} is not one of the classes {list(class_names)}")
    return list(class_names).index(truth)


def add_aggregate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help="a .csv or .parquet file predict wrote")
    parser.add_argument(
        "--by", default="study_uid",
        help="the column naming each row's group: study_uid (a scan), series_uid, patient_id (DICOM inputs), or any "
        "other column of the file",
    )  # fmt: skip
    parser.add_argument(
        "--rule", default="max", choices=AGGREGATION_RULES,
        help="max: a group's positive-class probability is its images' largest (binary: positive if any image is); "
        "mean: every class's probability is its images' mean",
    )  # fmt: skip
    parser.add_argument(
        "--positive_class", default=None, help="the max rule's class (default: the file's second class, class 1)"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="the max rule's decision threshold")
    parser.add_argument(
        "--output", default=None,
        help="the grouped predictions, a .csv (default: <predictions>.<rule>_by_<by>.csv); with a true_label column "
        "also <output>.metrics.json",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier --output (default: refuse it)")


def run_aggregate(args: argparse.Namespace) -> Optional[dict]:
    predictions = Path(args.predictions)
    if not predictions.is_file() or predictions.suffix.lower() not in OUTPUT_SUFFIXES:
        raise FileNotFoundError(f"--predictions {predictions}: expected a .csv or .parquet file predict wrote")
    default = predictions.with_name(f"{predictions.stem}.{args.rule}_by_{args.by}.csv")
    output = Path(args.output) if args.output else default
    if output.suffix.lower() != ".csv" or output.resolve() == predictions.resolve():
        raise ValueError(f"--output {output}: expected a new .csv file, not the predictions")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} exists (an earlier aggregation): pass --overwrite to replace it")
    unreadable = _check_predict_run_finished(predictions)
    columns, rows, metrics = aggregate_predictions(
        predictions, by=args.by, rule=args.rule, positive_class=args.positive_class, threshold=args.threshold
    )
    write_csv(output, columns, rows)
    scores = output.with_suffix(".metrics.json")
    if metrics is None and scores.exists():  # an earlier labelled aggregation's: not these groups'
        scores.unlink()
    if unreadable:
        print(
            f"note: {unreadable} inputs of {predictions} are in its errors file (unreadable): their groups lack them "
            "(under the max rule, a scan whose positive slice could not be read reads negative)",
            file=sys.stderr,
        )
    if args.rule == "max" and args.positive_class is None:
        positive = [column for column in columns if column.startswith("prob_")][1][len("prob_"):]
        print(f"note: --positive_class not given: the max rule's class is class 1, {positive!r}", file=sys.stderr)
    print(f"{output}: {len(rows)} groups by {args.by} ({args.rule} rule) of {sum(row[1] for row in rows)} rows")
    if metrics is not None:
        with open(scores, "w") as handle:
            json.dump(metrics, handle, indent=2)
        headline = {key: metrics.get(key) for key in ("num_groups", "accuracy", "macro_f1", "auc", "sensitivity")}
        print(json.dumps({key: value for key, value in headline.items() if value is not None}))
    return metrics


def _check_predict_run_finished(predictions: Path) -> int:
    """Refuse the output of a predict run that has not merged its committed batches (killed, or still running); the
    number of inputs its errors file lists."""
    files = errors_file_of_resumed_run(OutputFiles(predictions, default_errors_path(predictions)), overwrite=False)
    if files.parts.is_dir():
        raise ValueError(
            f"--predictions {predictions}: its predict run has not finished ({files.parts} holds committed batches "
            "not yet merged into it): rerun the same predict command to finish it first"
        )
    return len(listed_errors(files))

"""Predictions of slices or frames gathered per scan, series or patient (`diffusion-classifiers aggregate`).

`predict` gives one row per image (a CT slice, a DICOM frame, a mammogram's view) with its DICOM ids (`patient_id`,
`study_uid`, `series_uid`, `laterality`, `view_position`, `sop_instance_uid`); a reader decides per scan, or per breast
(several columns together: `study_uid` and `laterality`). A DICOM image stored under two names (two exports of one
scan in the folder predicted) is one image: a group counts its `sop_instance_uid` and frame once.
[`aggregate_predictions`] gathers the rows of each group: the positive class's probability of a group is the largest
of its images' under the "max" rule (a scan holds a haemorrhage if any slice shows one), the mean under "mean" (every
class, the label the most probable class, or a binary one's at a threshold). The positive class is the one the predict
run recorded in the file's `.json` sidecar (the model's saved `positive_class`) unless one is given. A binary
Score-SDE file's `log_likelihood_ratio` is gathered the same way, toward the positive class (the largest ratio toward
it, or the mean), and written the way the file's column points: its probabilities saturate at 0 and 1, so the groups
are ranked by it. With the `true_label` column of a labelled run, each group's
images must share one label, and the group-level metrics are those of `evaluate` (`metrics.classification_metrics`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..atomic_files import write_json_atomically
from ..provenance import run_environment
from .inputs import DICOM_ID_COLUMNS
from .outputs import (
    MODEL_CONTENT_KEY,
    OUTPUT_SUFFIXES,
    POSITIVE_CLASS_KEY,
    RATIO_KEY,
    TRAINING_IMAGE_KEY,
    OutputFiles,
    default_errors_path,
    errors_file_of_resumed_run,
    is_training_image,
    listed_errors,
    ratio_direction,
    ratio_positive_class,
    read_predictions,
    recorded_run_info,
    write_csv,
)

__all__ = [
    "AGGREGATION_RULES", "add_aggregate_args", "aggregate_predictions", "aggregated_ratio_class",
    "aggregation_metrics_path", "check_predict_run_finished", "recorded_point", "recorded_run", "run_aggregate",
]

AGGREGATION_RULES = ("max", "mean")
# numpy and the metrics are imported where rows are gathered: the command's flags stay standard-library only


def aggregate_predictions(
    predictions: str | os.PathLike,
    by: str | Sequence[str] = "study_uid",
    rule: str = "max",
    positive_class: Optional[str] = None,
    threshold: Any = None,
) -> tuple[list[str], list[list], Optional[dict]]:
    r"""
    The rows of a `predict` output gathered per group: `(columns, rows, metrics)`.

    Args:
        predictions (`str` or `os.PathLike`): a `.csv` or `.parquet` file `predict` wrote.
        by (`str` or `Sequence[str]`, *optional*, defaults to `"study_uid"`): the column whose value names a row's
            group (one of `patient_id`, `study_uid`, `series_uid`, `laterality`, `view_position`, which `predict`
            writes for DICOM inputs, or any other column of the file), or several, whose values together do
            (`["study_uid", "laterality"]`: a mammography exam's breast, its views together); a row without one is
            refused, naming it.
        rule (`str`, *optional*, defaults to `"max"`): `"max"`, the positive class's probability of a group is the
            largest of its rows' (binary predictions; the label is the positive class at `threshold` or above), or
            `"mean"`, each class's probability is the mean of its rows' (the label: the most probable class).
        positive_class (`str`, *optional*): binary predictions: the "max" rule's class and the one the metrics'
            sensitivity and AUC refer to; default: the one the predict run recorded in `<predictions>.json` (the
            model's saved `positive_class`), else the second class of the file (class 1, as everywhere in this
            library). One that contradicts the recorded one is used, with a `UserWarning`.
        threshold (`float`, `str` or `os.PathLike`, *optional*): binary predictions: a group is positive where the
            positive class's gathered probability is `threshold` or more, or the threshold of the operating point an
            evaluate run's metrics.json records (`operating_points`, of the same model, positive class and call);
            default: the operating point predict labelled the images at (its sidecar's), else 0.5 under "max", and
            under "mean" the most probable class (at a tie of 0.5, the class listed first). Recorded in the metrics
            where it decided.

    Returns:
        `columns`: `<by>..., [the other DICOM ids,] num_images, [true_label,] label, prob_<class>...,
        [log_likelihood_ratio,] [count_<class>...]`: the DICOM ids of the file that take one value in every group (a
        study's patient), under "mean" how many of the group's images were predicted as each class, and, for a
        binary Score-SDE file whose sidecar records the ratio's direction, the group's ratio gathered toward the
        positive class (its largest under "max", the mean under "mean") and written the way the file's column points
        (toward the other class: under "max" the smallest of the recorded ratios; the metrics' `log_likelihood_ratio`
        says which). `rows`, one per group in the order the groups first
        appear. `metrics`: with a `true_label` column (each group's rows must share one),
        `metrics.classification_metrics` of the groups (its `num_samples` counts them), the AUC ranking them by that
        ratio when there is one, else by the probabilities (`"ranked_by"` names the column), with what the groups are
        (`grouped_by`, `rule`, the `threshold` that decided, `num_groups`, and the `num_images` they gather) and what
        the predict run recorded in the sidecar of what they were measured with (`model_sha256`, `pipeline_call`,
        the input's name as `dataset` and its `split`: a saved DatasetDict's, else "all", every file of a folder or
        CSV), and `training_images_checked` (the predictions' `training_image` column said which images the model was
        trained on; the groups holding any, `groups_left_out_holding_training_images`, left out), as `evaluate`
        records them; else None.
    """
    aggregation = _aggregate(predictions, by, rule, positive_class, threshold)
    return aggregation.columns, aggregation.rows, aggregation.metrics


@dataclass
class _Aggregation:
    """The grouped predictions, and the notes `run_aggregate` prints (where the positive class came from, ...)."""

    columns: list[str]
    rows: list[list]
    metrics: Optional[dict]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Layout:
    """What is gathered per group, found by name among the predictions file's `columns`."""

    columns: list[str]
    by: tuple[str, ...]
    ids: list[str]  # the DICOM id columns carried over: those with one value in every group
    class_names: list[str]
    ratio_sign: Optional[float]  # turns log_likelihood_ratio toward the positive class; None: not gathered
    counts: bool = False  # the mean rule: how many of a group's images each class was predicted for (count_<class>)

    @property
    def truth(self) -> Optional[int]:
        return self.columns.index("true_label") if "true_label" in self.columns else None

    def out_columns(self) -> list[str]:
        truth = ["true_label"] if self.truth is not None else []
        ratio = [RATIO_KEY] if self.ratio_sign is not None else []
        probabilities = [f"prob_{name}" for name in self.class_names]
        counts = [f"count_{name}" for name in self.class_names] if self.counts else []
        return [*self.by, *self.ids, "num_images", *truth, "label", *probabilities, *ratio, *counts]


@dataclass(frozen=True)
class _Group:
    """One group's row of the grouped file, and what the metrics read of it."""

    row: list
    truth: Optional[str]
    label: int
    probs: list[float]
    score: Optional[float]  # the gathered log_likelihood_ratio, toward the positive class


def _aggregate(
    predictions, by: str | Sequence[str], rule: str, positive_class: Optional[str], threshold: Any
) -> _Aggregation:
    by = (by,) if isinstance(by, str) else tuple(by)
    columns, rows = read_predictions(predictions)
    class_names = [column[len("prob_"):] for column in columns if column.startswith("prob_")]
    _check_aggregation(predictions, columns, class_names, by, rule, positive_class, threshold)
    sidecar, run = recorded_run(predictions)
    positive, notes = _positive_label(class_names, positive_class, sidecar, run, rule)
    sign, ratio_notes = _ratio_sign(predictions, columns, class_names, positive, sidecar, run, rule)
    if sign is not None:
        _check_ratios(predictions, columns, rows)
    threshold, cutoff, threshold_notes, by_ratio = _decision_threshold(
        threshold, rule, class_names, positive, sidecar, run, ratio_decides=sign is not None and rule == "max"
    )
    notes += threshold_notes
    notes += _rows_of_files_gone(predictions, rows, run)
    groups, repeated = _without_repeated_images(predictions, columns, _group_rows(predictions, columns, rows, by))
    notes += repeated
    layout = _Layout(columns, by, _constant_ids(columns, groups, by), class_names, sign, counts=rule == "mean")
    gathered = [_gather(predictions, layout, group, members, rule, positive, cutoff, by_ratio)
                for group, members in groups.items()]  # fmt: skip
    metrics = None
    if layout.truth is not None:
        scored = _without_training_images(columns, groups, gathered)
        left_out = len(gathered) - len(scored)
        notes += _training_images_note(columns, len(gathered), left_out)
        if scored:
            scores = _group_metrics(predictions, layout, list(scored.values()), positive, rule)
            kept = {key: groups[key] for key in scored}
            metrics = {**_grouping(by, rule, threshold, kept), **scores, **_measured_with(run)}
            metrics.update(_training_images_checked(columns, left_out, run))
    return _Aggregation(layout.out_columns(), [group.row for group in gathered], metrics, notes + ratio_notes)


def _rows_of_files_gone(predictions, rows: list, run: dict) -> list[str]:
    """The note on rows whose file is no longer in the folder predict read (`run["input"]`; said only where the
    folder is there, and not a saved datasets folder, whose rows are numbered): predict keeps such rows (an earlier
    run's), so a file renamed since is counted twice."""
    from ..data.hf_datasets import is_saved_dataset

    folder = Path(run["input"]) if isinstance(run.get("input"), str) else None
    if folder is None or not folder.is_dir() or is_saved_dataset(folder):
        return []
    gone = [row[0] for row in rows if not (folder / str(row[0])).exists()]
    if not gone:
        return []
    return [
        f"note: {len(gone)} rows of {predictions} are of files no longer in {folder} (e.g. {gone[0]!r}: renamed or "
        "removed since predict ran), counted in their groups; predict --overwrite predicts the folder afresh"
    ]


def _without_training_images(columns: list, groups: dict, gathered: list) -> dict:
    """`{group key: gathered group}` of the groups none of whose rows is a training image (predict's `training_image`
    column; every group without it): a scan the model was trained on would overstate it."""
    where = columns.index(TRAINING_IMAGE_KEY) if TRAINING_IMAGE_KEY in columns else None
    return {
        key: group for (key, members), group in zip(groups.items(), gathered)
        if where is None or not any(is_training_image(row[where]) for row in members)
    }


def _training_images_note(columns: list, num_groups: int, left_out: int) -> list[str]:
    """What the group metrics say of training images: left out (how many groups), or not known (no column)."""
    if TRAINING_IMAGE_KEY not in columns:
        return [
            "note: the predictions do not say which images the model was trained on (its folder records no "
            "fingerprints of them, or an earlier version predicted them): the group metrics are over every labelled "
            "row, and scans it was trained on would overstate it; evaluate on the same files checks them"
        ]
    if not left_out:
        return []
    rest = f"the metrics are over the other {num_groups - left_out}" if left_out < num_groups else "no metrics"
    return [
        f"note: {left_out} of {num_groups} groups hold images the model was trained on (the predictions' "
        f"{TRAINING_IMAGE_KEY} column): left out of the group metrics, which would overstate the model; {rest}"
    ]


def _training_images_checked(columns: list, left_out: int, run: dict) -> dict:
    """What metrics.json records of training images, under `evaluate`'s key: `training_images_checked`, whether the
    predictions said which images the model was trained on (predict's `training_image` column; not where the model
    knew a head's training images only, its run's `training_images_partial`), and how many groups holding any were
    left out."""
    if TRAINING_IMAGE_KEY not in columns:
        return {"training_images_checked": False}
    checked = not run.get("training_images_partial")
    return {"training_images_checked": checked, "groups_left_out_holding_training_images": left_out}


def _grouping(by: tuple, rule: str, threshold: Optional[float], groups: dict) -> dict:
    """What the counts of metrics.json are (its `num_samples` are the groups): the columns naming the groups, the rule
    that scored them (with the threshold that decided), and how many images they gather."""
    scored = {"rule": rule, **({"threshold": threshold} if threshold is not None else {})}
    grouped_by = by[0] if len(by) == 1 else list(by)
    num_images = sum(len(members) for members in groups.values())
    return {"grouped_by": grouped_by, **scored, "num_groups": len(groups), "num_images": num_images}


# What the predict run recorded (the sidecar's "run") of what the groups' metrics were measured with, carried into
# metrics.json under the keys `evaluate` writes: `push_to_hub.py` checks a card's metrics are its model's by
# `model_sha256`, names their split and data and passes the call's settings in the card's snippet.
_MEASURED_WITH = (MODEL_CONTENT_KEY, "split", "pipeline_call")


def _measured_with(run: dict) -> dict:
    """The `_MEASURED_WITH` keys the run records, and the data: `"dataset"`, the name of its input (not its local
    path, as `evaluate` records it); `"split"`, a saved DatasetDict's split, else `ONE_SET` ("all": predict read
    every file of a folder or CSV, none carved, as `evaluate --split all` does)."""
    from ..data.labeled_images import ONE_SET

    measured = {key: run[key] for key in _MEASURED_WITH if run.get(key) is not None}
    if run.get("input"):
        measured["dataset"] = os.path.basename(os.path.normpath(run["input"]))
        measured.setdefault("split", ONE_SET)
    return measured


# The columns gathered per group, which `by` cannot name.
_GATHERED = ("num_images", "true_label", "label", "score", RATIO_KEY, f"{RATIO_KEY}_stderr")


def _check_aggregation(
    predictions, columns: list, class_names: list, by: tuple, rule: str, positive_class: Optional[str],
    threshold: Any,
) -> None:
    """Every argument checked before a row is gathered."""
    from ..operating_points import check_decision_rule

    if rule not in AGGREGATION_RULES:
        raise ValueError(f"rule: expected one of {list(AGGREGATION_RULES)}, got {rule!r}")
    _check_group_columns(predictions, columns, by)
    if len(class_names) < 2:
        raise ValueError(f"{predictions}: expected prob_<class> columns of a predict output, got {columns}")
    check_decision_rule(threshold, None)
    if threshold is not None and len(class_names) != 2:  # QA: it was ignored under the mean rule, without a word
        raise ValueError(
            f"threshold: decides binary predictions (the positive class's probability); {predictions} has "
            f"{len(class_names)} classes {class_names}: leave it out (each group gets its most probable class)"
        )
    if rule == "max" and len(class_names) != 2:
        raise ValueError(
            f"rule 'max' takes binary predictions (is the positive class in any image of the group?); {predictions} "
            f"has {len(class_names)} classes {class_names}: use rule 'mean'"
        )
    if positive_class is not None and positive_class not in class_names:
        raise ValueError(f"positive_class: expected one of {class_names}, got {positive_class!r}")


def _check_group_columns(predictions, columns: list, by: tuple) -> None:
    """The columns `by` names: in the file, different, and none of those aggregate writes per group."""
    for name in by:
        if name not in columns:
            dicom = [column for column in DICOM_ID_COLUMNS if column in columns]
            hint = f" (predict writes {', '.join(DICOM_ID_COLUMNS)} for DICOM)"
            hint = f" (its DICOM ids: {dicom})" if dicom else hint
            if dicom and name in DICOM_ID_COLUMNS:  # an output of a version of predict that did not write it yet
                hint = f" (its DICOM ids: {dicom}; predict writes {name} since a later version: run it again with "
                hint += "--overwrite to add the column)"
            raise ValueError(f"{predictions}: no column {name!r} to group by; it has {columns}{hint}")
    if not by or len(set(by)) != len(by):
        raise ValueError(f"by: expected one or more different columns, got {list(by)}")
    written = [name for name in by if name in _GATHERED or name.startswith("prob_")]
    if written:  # QA: --by label wrote two columns named label
        raise ValueError(
            f"by: {written} are columns aggregate writes per group ({', '.join(_GATHERED)}, prob_<class>); expected "
            "columns that name the groups (DICOM ids, path, or another column of the file)"
        )


def recorded_run(predictions) -> tuple[Path, dict]:
    """The `.json` sidecar of a predictions file and the "run" it records (empty without one: a file copied alone)."""
    files = OutputFiles(Path(predictions), default_errors_path(Path(predictions)))
    try:
        run = recorded_run_info(files)
    except ValueError as error:  # not JSON
        raise ValueError(f"{files.sidecar}: expected the JSON predict wrote beside {predictions}; {error}") from error
    if run is not None and not isinstance(run, dict):
        raise ValueError(f"{files.sidecar}: expected its \"run\" to be a JSON object, got {run!r}")
    return files.sidecar, run or {}


def _decision_threshold(
    threshold: Any, rule: str, class_names: list, positive: Optional[int], sidecar: Path, run: dict,
    ratio_decides: bool = False,
) -> tuple[Optional[float], Optional[float], list[str], Optional[float]]:
    """The probability a binary group is decided at and its log-odds, which decide (QA: compared as probabilities, the
    val image a target sensitivity's threshold was chosen at was negative here, positive in evaluate and predict),
    with the note saying where it came from: `threshold` given as a number; the operating point of the metrics.json it
    names (checked as `evaluate --threshold` checks it); else the one predict labelled the images at (QA: per-study
    decisions at 0.5 of images deployed at val's threshold); else 0.5 under "max", None (the most probable class)
    under "mean". The fourth value is the priors' log-ratio where groups are decided by their gathered
    log_likelihood_ratio, else None: a point whose probability rounds to 0 or 1 (a Score-SDE model's, whose own
    log-odds decided it) decides a group by its largest ratio toward the positive class plus the priors' log-ratio
    (the log-odds predict labels each image by, to the bit) where `ratio_decides` (the file has the ratio, the "max"
    rule; QA, a mammography group: 2 of 3 points chosen on val were refused) and the run's priors are recorded, and is
    refused otherwise: probabilities cannot decide at it."""
    from ..operating_points import is_saturated, log_odds_of, read_operating_point

    recorded = recorded_point(sidecar)
    if isinstance(threshold, (str, os.PathLike)):
        point, source = read_operating_point(
            threshold, class_names[positive], run.get(MODEL_CONTENT_KEY), run.get("pipeline_call")
        ), str(threshold)  # fmt: skip
    elif threshold is None and recorded is not None and recorded.get("positive_class") == class_names[positive]:
        point, source = recorded, f"{sidecar} (the predict run's)"
    else:
        notes = []
        if threshold is None and recorded is not None:  # review: another class's point, left out without a word
            point_class, asked = recorded["positive_class"], class_names[positive]
            notes = [f"note: the predict run labelled its images at an operating point of {point_class}, not "
                     f"{asked}: groups of {asked} are not decided at it"]  # fmt: skip
        threshold = 0.5 if threshold is None and rule == "max" else threshold
        return threshold, None if threshold is None else log_odds_of(threshold), notes, None
    note = f"note: groups decided at the operating point of {source}: {point['threshold']!r}"
    if not is_saturated(point):
        return point["threshold"], point["log_odds"], [note], None
    prior_log_ratio = _prior_log_ratio(run, positive) if ratio_decides else None
    if prior_log_ratio is None:
        reason = f"its predict run ({sidecar}) records no call settings, or priors not two positive numbers" \
            if ratio_decides else f"a binary Score-SDE output's {RATIO_KEY} decides under --rule max"  # fmt: skip
        raise ValueError(
            f"threshold: the operating point of {source} has a probability of {point['threshold']!r} (log-odds "
            f"{point['log_odds']:.6g}): too near 0 or 1 for groups gathering probabilities to be decided at it "
            f"({reason}); pass --threshold P, a probability"
        )
    note += (
        f" (log-odds {point['log_odds']:.6g}), by each group's largest {RATIO_KEY} toward the positive class plus the "
        f"priors' log-ratio {prior_log_ratio:.6g}"
    )
    return point["threshold"], point["log_odds"], [note], prior_log_ratio


def _prior_log_ratio(run: dict, positive: int) -> Optional[float]:
    """The log prior of the positive class less the other's, as the predict run's pipeline added them (its
    `pipeline_call` records the priors as a list in class order: 0 with none, uniform); None where the run records no
    call, or priors that are not two positive numbers."""
    if "pipeline_call" not in run:
        return None
    priors = run["pipeline_call"].get("priors")
    if priors is None:
        return 0.0
    if not isinstance(priors, list) or len(priors) != 2 or not all(
        isinstance(value, (int, float)) and value > 0 for value in priors
    ):  # fmt: skip
        return None
    from ..pipelines.pipeline_score_sde import log_priors

    log_prior = log_priors(priors)
    return float(log_prior[positive] - log_prior[1 - positive])


def recorded_point(sidecar: Path) -> Optional[dict]:
    """The operating point predict labelled its images at, as its sidecar records it; None without one."""
    try:
        recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except ValueError:
        return None
    return recorded.get("operating_point") if isinstance(recorded, dict) else None


def _positive_label(
    class_names: list, given: Optional[str], sidecar: Path, run: dict, rule: str
) -> tuple[Optional[int], list[str]]:
    """The positive class's index for binary predictions (None for more classes): `given`, else the one the predict
    run recorded, else class 1; with the note saying which when it was not given (the max rule's)."""
    if len(class_names) != 2:
        return None, []
    recorded, how = _recorded_positive(class_names, sidecar, run)
    if given is not None:
        if recorded is not None and recorded != given:
            warnings.warn(
                f"positive_class {given!r} (--positive_class) contradicts {recorded!r}, {how}: the max rule and the "
                f"group metrics take {given!r}, as given",
                UserWarning,
                stacklevel=4,
            )
        return class_names.index(given), []
    positive = 1 if recorded is None else class_names.index(recorded)
    which = f"class 1, {class_names[1]!r}" if recorded is None else f"{recorded!r}, {how}"
    return positive, [f"note: --positive_class not given: the max rule's class is {which}"] * (rule == "max")


def _recorded_positive(class_names: list, sidecar: Path, run: dict) -> tuple[Optional[str], str]:
    """The positive class the predict run recorded, and where; None when it recorded none (a model that saved none,
    or an earlier version of predict, which recorded only the direction of a Score-SDE ratio, if that)."""
    if POSITIVE_CLASS_KEY in run:
        recorded = run[POSITIVE_CLASS_KEY]
        if recorded is not None and recorded not in class_names:
            raise ValueError(
                f"{sidecar}: records {POSITIVE_CLASS_KEY} {recorded!r}; expected one of the predictions' classes "
                f"{class_names} (is it the sidecar of another output?)"
            )
        return recorded, f"the model's positive class, recorded by its predict run in {sidecar}"
    pointed = ratio_positive_class(run, class_names, sidecar)
    return pointed, f"the class of its {RATIO_KEY} ({run.get(RATIO_KEY)}), recorded by its predict run in {sidecar}"


def _ratio_sign(
    predictions, columns: list, class_names: list, positive: Optional[int], sidecar: Path, run: dict, rule: str
) -> tuple[Optional[float], list[str]]:
    """1 or -1, what turns a binary Score-SDE file's log_likelihood_ratio toward the positive class (its sidecar says
    which way it points), with a note naming what the gathered ratio is; None without the column, or, with a note,
    when the sidecar does not say (an earlier version of predict's): the groups are then ranked by probability."""
    if RATIO_KEY not in columns or positive is None:
        return None, []
    pointed = ratio_positive_class(run, class_names, sidecar)
    if pointed is None:
        return None, [
            f"note: {sidecar} does not record which class the {RATIO_KEY} of {predictions} points to (an earlier "
            f"version of predict, or no sidecar): the column is left out, and groups are ranked by "
            f"prob_{class_names[positive]}, which ties where probabilities saturate at 0 or 1"
        ]
    sign = 1.0 if pointed == class_names[positive] else -1.0
    return sign, [f"note: the groups' {RATIO_KEY} = {_gathered_ratio(class_names, positive, rule, sign)}"]


def aggregated_ratio_class(output: Path, class_names: Sequence[str]) -> tuple[Optional[str], Optional[str]]:
    """The class an aggregate output's `log_likelihood_ratio` column points to (the first term of the ratio its
    metrics.json names, `_gathered_ratio`) and the positive class it records; `(None, None)` without that file (an
    output of unlabelled rows, or of another tool)."""
    scores = aggregation_metrics_path(output)
    recorded = json.loads(scores.read_text()) if scores.is_file() else {}
    gathered = str(recorded.get(RATIO_KEY, ""))
    first, second = list(class_names)[:2] if len(class_names) == 2 else (None, None)
    pointed = next((a for a, b in ((first, second), (second, first)) if a and ratio_direction(a, b) in gathered), None)
    return pointed, recorded.get("positive_class")


def aggregation_metrics_path(output: Path) -> Path:
    """Where aggregate writes the group metrics of `output` (with a true_label column)."""
    return output.with_suffix(".metrics.json")


def _gathered_ratio(class_names: list, positive: int, rule: str, sign: float) -> str:
    """What a group's `log_likelihood_ratio` is: gathered toward the `positive` class (under "max", the largest of its
    images' ratios toward it), written the way the predict column points (`sign` -1: toward the other class, QA: a
    column of one name read in both directions across runs of another --positive_class): there the smallest."""
    pointed, other = (positive, 1 - positive) if sign > 0 else (1 - positive, positive)
    gathered = "the mean" if rule == "mean" else "the largest" if sign > 0 else "the smallest"
    return f"{gathered} of their images' {ratio_direction(class_names[pointed], class_names[other])}"


def _check_ratios(predictions, columns: list, rows: list) -> None:
    index = columns.index(RATIO_KEY)
    bad = [row[0] for row in rows if not isinstance(row[index], (int, float)) or not math.isfinite(row[index])]
    if bad:
        raise ValueError(
            f"{predictions}: {len(bad)} of {len(rows)} rows have no finite {RATIO_KEY} (e.g. {bad[:3]}); expected a "
            "number in every row of a binary Score-SDE output"
        )


def _group_rows(predictions, columns: list, rows: list, by: tuple) -> dict:
    """The rows of each value of the columns `by` (a tuple of values), in the order the values first appear; a row
    without one refused."""
    keys = [columns.index(name) for name in by]
    for name, key in zip(by, keys):
        missing = [row[0] for row in rows if row[key] in (None, "")]
        if missing:
            tag = f"a DICOM file without {DICOM_ID_COLUMNS[name]} or " if name in DICOM_ID_COLUMNS else ""
            raise ValueError(
                f"{predictions}: {len(missing)} of {len(rows)} rows have no {name} (e.g. {missing[:3]}); expected "
                f"every row to name its group ({tag}an image that is not DICOM has none: group by another column)"
            )
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups


def _without_repeated_images(predictions, columns: list, groups: dict) -> tuple[dict, list[str]]:
    """`groups` with each DICOM image once (a row repeating an earlier row's `sop_instance_uid` and frame in its group
    is left out: one slice exported twice would weigh twice under the mean rule and count twice in `num_images`), and
    the note saying how many rows were left out. A repeat whose true label differs from the first is refused."""
    if "sop_instance_uid" not in columns:
        return groups, []
    uid, frame = columns.index("sop_instance_uid"), columns.index("frame")
    truth = columns.index("true_label") if "true_label" in columns else None
    kept_groups, repeats = {}, []
    for key, members in groups.items():
        first_rows, kept_groups[key] = {}, []
        for row in members:
            image = (row[uid], row[frame])
            first = first_rows.setdefault(image, row) if row[uid] not in (None, "") else row
            if first is row:
                kept_groups[key].append(row)
                continue
            if truth is not None and str(row[truth]) != str(first[truth]):
                raise ValueError(
                    f"{predictions}: {row[0]!r} and {first[0]!r} are one DICOM image (SOPInstanceUID {row[uid]}, "
                    f"frame {row[frame]}) with the true labels {first[truth]!r} and {row[truth]!r}; expected one "
                    "label per image"
                )
            repeats.append((row[0], first[0]))
    if not repeats:
        return groups, []
    return kept_groups, [
        f"note: {len(repeats)} rows repeat a DICOM image already in their group (the same sop_instance_uid and frame "
        f"under another path, e.g. {repeats[0][0]!r} repeats {repeats[0][1]!r}): each image is counted once"
    ]


def _constant_ids(columns: list, groups: dict, by: tuple) -> list[str]:
    """The DICOM id columns other than `by` that take one value in every group (a study's patient_id), carried over."""
    present = [name for name in DICOM_ID_COLUMNS if name not in by and name in columns]
    return [name for name in present if all(_one_value(members, columns.index(name)) for members in groups.values())]


def _one_value(members: list, index: int) -> bool:
    values = {row[index] for row in members}
    return len(values) == 1 and values.isdisjoint({None, ""})


def _gather(
    predictions, layout: _Layout, group: Any, members: list, rule: str, positive, cutoff, by_ratio=None
) -> _Group:
    """A group's row: its carried ids, size, true label, label (binary: positive where its log-odds are `cutoff` or
    more: of its probabilities, or its gathered ratio plus `by_ratio`, the priors' log-ratio, where given), class
    probabilities and (when gathered) ratio."""
    import numpy as np

    where = layout.columns.index
    probabilities = np.array(
        [[row[where(f"prob_{name}")] for name in layout.class_names] for row in members], dtype=np.float64
    )
    probs = _combine(probabilities, rule, positive)
    score = None
    if layout.ratio_sign is not None:
        ratios = [layout.ratio_sign * row[where(RATIO_KEY)] for row in members]
        score = max(ratios) if rule == "max" else float(np.mean(ratios))
    if cutoff is None:
        log_odds = None
    elif by_ratio is not None:
        log_odds = score + by_ratio
    else:
        log_odds = _group_log_odds(probabilities, rule, positive)
    label = _label(probs, positive, cutoff, log_odds)
    truth = None if layout.truth is None else _group_truth(predictions, layout.by, group, members, layout.truth)
    row = [*group, *(members[0][where(name)] for name in layout.ids), len(members)]
    row += [*([truth] if truth is not None else []), layout.class_names[label], *probs]
    row += [layout.ratio_sign * score] if score is not None else []  # written the way predict's column points
    if layout.counts:  # a plankton sample's census: the images predicted as each class
        predicted = [member[where("label")] for member in members]
        row += [predicted.count(name) for name in layout.class_names]
    return _Group(row, truth, label, probs, score)


def _group_metrics(predictions, layout: _Layout, groups: list[_Group], positive: Optional[int], rule: str) -> dict:
    """`metrics.classification_metrics` of the groups, their AUC ranking them by the gathered ratio when there is one
    (Score-SDE's probabilities saturate: many groups tie at 1), else by the probabilities; `ranked_by` says which."""
    import numpy as np

    from ..confidence_intervals import intervals_of_metrics
    from ..metrics import classification_metrics

    names = layout.class_names
    ranking = np.array([group.probs for group in groups])
    ranked_by = {"ranked_by": "prob_<class>" if positive is None else f"prob_{names[positive]}"}
    if layout.ratio_sign is not None:
        scores = np.array([group.score for group in groups])
        ranking = np.stack([-scores, scores] if positive == 1 else [scores, -scores], axis=1)
        ranked_by = {"ranked_by": RATIO_KEY, RATIO_KEY: _gathered_ratio(names, positive, rule, layout.ratio_sign)}
    truths = [_class_index(predictions, names, group.truth) for group in groups]
    metrics = classification_metrics(
        truths, [group.label for group in groups], ranking, num_classes=len(names), class_names=names,
        positive_label=positive,
    )  # fmt: skip
    metrics["confidence_intervals"] = intervals_of_metrics(metrics, truths, ranking)
    return {**ranked_by, **metrics}


def _combine(probabilities: Any, rule: str, positive: Optional[int]) -> list[float]:
    """A group's class probabilities: the positive class's largest and its complement ("max"), or the means."""
    if rule == "mean":
        return [float(value) for value in probabilities.mean(axis=0)]
    largest = float(probabilities[:, positive].max())
    return [largest if index == positive else 1.0 - largest for index in range(probabilities.shape[1])]


def _group_log_odds(probabilities: Any, rule: str, positive: int) -> float:
    """A binary group's log-odds of the positive class, as `operating_points.positive_log_odds` reads each image's:
    its rows' largest ("max"), or those of its mean probabilities ("mean")."""
    import numpy as np

    from ..operating_points import positive_log_odds

    rows = probabilities if rule == "max" else probabilities.mean(axis=0, keepdims=True)
    return float(np.max(positive_log_odds(rows, rows, positive)))


def _label(combined: list[float], positive: Optional[int], cutoff: Optional[float], log_odds: Optional[float]) -> int:
    if cutoff is not None:
        return positive if log_odds >= cutoff else 1 - positive
    return max(range(len(combined)), key=combined.__getitem__)


def _group_truth(predictions, by: tuple, group: tuple, members: list, true_column: int) -> Any:
    """The one true label of a group's rows; a group whose rows disagree is refused, naming it."""
    labels = sorted({str(row[true_column]) for row in members})
    if len(labels) != 1:
        named = " ".join(f"{name} {value!r}" for name, value in zip(by, group))
        raise ValueError(
            f"{predictions}: the rows of {named} have the true labels {labels}; expected one per group (a scan "
            "is labelled as a whole): group by columns whose groups share a label (a breast of a mammography exam: "
            "--by study_uid laterality), or give predict a CSV whose label column labels the group as a whole"
        )
    return labels[0]


def _class_index(predictions, class_names: Sequence[str], truth: str) -> int:
    if truth not in class_names:
        raise ValueError(f"{predictions}: true label {truth!r} is not one of the classes {list(class_names)}")
    return list(class_names).index(truth)


def add_aggregate_args(parser: argparse.ArgumentParser) -> None:
    from ..operating_points import threshold_argument

    parser.add_argument("--predictions", required=True, help="a .csv or .parquet file predict wrote")
    parser.add_argument(
        "--by", nargs="+", default=["study_uid"],
        help="the column(s) naming each row's group: study_uid (a scan), series_uid, patient_id (DICOM inputs), "
        "study_uid laterality (a mammography exam's breast: its views together), or any other column(s) of the file "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--rule", default="max", choices=AGGREGATION_RULES,
        help="max: a group's positive-class probability is its images' largest (binary: positive if any image is); "
        "mean: every class's probability is its images' mean",
    )  # fmt: skip
    parser.add_argument(
        "--positive_class", default=None,
        help="binary: the max rule's class, and the one the group metrics' sensitivity and AUC refer to (default: the "
        "positive class the predict run recorded in <predictions>.json, the model's saved one, else class 1, the "
        "file's second class)",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=threshold_argument, default=None,
        help="binary: a group is positive where the positive class's gathered probability is this or more, or the "
        "threshold an evaluate run's metrics.json records (default: the operating point predict labelled the images "
        "at, else 0.5 under max; under mean the most probable class)",
    )  # fmt: skip
    parser.add_argument(
        "--output", default=None,
        help="the grouped predictions, a .csv (default: beside the predictions, named by their stem, a .parquet "
        "file by its whole name: <stem>.<rule>_by_<by>.csv, e.g. predictions.csv -> predictions.max_by_study_uid.csv, "
        "predictions.parquet -> predictions.parquet.max_by_study_uid.csv); with a true_label "
        "column also <output stem>.metrics.json (predictions.max_by_study_uid.metrics.json)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier --output (default: refuse it)")


def _default_output(predictions: Path, rule: str, by: list) -> Path:
    """`<predictions>.<rule>_by_<columns>.csv` beside the predictions, a column name's path separators made `_`
    (QA: `--by site/depth` failed, even with `--output` given, on pathlib's "Invalid name")."""
    columns = "_".join(re.sub(r"[\\/\0]", "_", column) for column in by)
    return predictions.with_name(f"{_output_stem(predictions)}.{rule}_by_{columns}.csv")


def run_aggregate(args: argparse.Namespace) -> Optional[dict]:
    predictions = Path(args.predictions)
    if predictions.suffix.lower() not in OUTPUT_SUFFIXES:
        raise FileNotFoundError(f"--predictions {predictions}: expected a .csv or .parquet file predict wrote")
    unreadable = check_predict_run_finished(predictions)  # first: a first run killed has parts, no output yet (QA)
    if not predictions.is_file():  # QA: said as a wrong suffix
        raise FileNotFoundError(
            f"--predictions {predictions}: not found; expected the .csv or .parquet file predict wrote"
        )
    output = Path(args.output) if args.output else _default_output(predictions, args.rule, args.by)
    if output.suffix.lower() != ".csv" or output.resolve() == predictions.resolve():
        raise ValueError(f"--output {output}: expected a new .csv file, not the predictions")
    from ..replaced_reports import replacing_earlier_report, settle_replaced_report

    scores = aggregation_metrics_path(output)
    if output.parent.is_dir():  # an aggregation killed while replacing this one: the earlier one back first
        settle_replaced_report(output.parent, marker=scores.name)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} exists (an earlier aggregation): pass --overwrite to replace it")
    _check_output_writable(output, given=bool(args.output))
    aggregation = _aggregate(predictions, args.by, args.rule, args.positive_class, args.threshold)
    columns, rows, metrics = aggregation.columns, aggregation.rows, aggregation.metrics

    output.parent.mkdir(parents=True, exist_ok=True)
    # an earlier aggregation is set aside before the CSV is written, these metrics last: no metrics beside other
    # groups, and an aggregation that fails keeps the earlier one
    with replacing_earlier_report(output.parent, marker=scores.name, files=[output.name]):
        write_csv(output, columns, rows)
        if metrics is not None:
            write_json_atomically(scores, {**metrics, "environment": run_environment()}, indent=2)
    if unreadable:
        print(
            f"note: {unreadable} inputs of {predictions} are in its errors file (unreadable): their groups lack them "
            "(under the max rule, a scan whose positive slice could not be read reads negative)",
            file=sys.stderr,
        )
    for note in aggregation.notes:
        print(note, file=sys.stderr)
    num_images = sum(row[columns.index("num_images")] for row in rows)
    print(f"{output}: {len(rows)} groups by {' + '.join(args.by)} ({args.rule} rule) of {num_images} rows")
    if metrics is not None:
        names = ("num_groups", "accuracy", "macro_f1", "auc", "ranked_by", "sensitivity")
        headline = {key: metrics.get(key) for key in names}
        print(json.dumps({key: value for key, value in headline.items() if value is not None}))
    return metrics


def _output_stem(predictions: Path) -> str:
    """The name an aggregation of `predictions` starts with: its stem (`p.csv` -> `p`), with the suffix for a
    parquet file (`p.parquet` -> `p.parquet`), so the aggregations of `p.csv` and `p.parquet` do not share a name."""
    return predictions.stem if predictions.suffix.lower() == ".csv" else predictions.name


def _check_output_writable(output: Path, given: bool) -> None:
    """Refuse, before any work, an output (and its metrics.json) this user could not write; the default one, beside
    the predictions (a read-only share, QA), with the hint to choose another."""
    from ..validation import check_writable_file  # imports torch: here, so the command's flags stay fast

    try:
        check_writable_file(output, "--output" if given else "output (default: beside --predictions)")
    except ValueError as error:
        if given:
            raise
        raise ValueError(f"{error}; pass --output to write the grouped predictions elsewhere") from None


def check_predict_run_finished(predictions: Path, name: str = "--predictions") -> int:
    """Refuse the output of a predict run that has not merged its committed batches (killed, or still running); the
    number of inputs its errors file lists. `name`: what the refusal calls the file."""
    files = errors_file_of_resumed_run(OutputFiles(predictions, default_errors_path(predictions)), overwrite=False)
    if files.parts.is_dir():
        replaced = f"; the prediction it replaces is kept in {files.replaced}/ until then" * files.replaced.is_dir()
        raise ValueError(
            f"{name} {predictions}: its predict run has not finished ({files.parts} holds committed batches "
            f"not yet merged into it): rerun the same predict command to finish it first{replaced}"
        )
    return len(listed_errors(files))

"""Two classifiers compared image by image on the same labelled images (`diffusion-classifiers compare`), or two
sets of other images compared as independent samples (`--unpaired`: `independent_statistics`).

Each side is what `evaluate` wrote (its output folder, or the `image_predictions.csv` in it), a `predict` output
with a `true_label` column (a labelled CSV of paths or a saved dataset), or an `aggregate` output of one (a row per
scan). Their rows are paired by the image's file and frame (`path`, `frame`); for images held in arrays by the
image's position in its split (`pair_by="image"`), which names the same image only in the same split carved alike
(checked against both evaluations' metrics.json); or by other columns (`pair_by="study_uid"`). Images only one
side scored are refused unless `common_images_only`; images either side's `training_image` column flags are left
out. Each paired image must carry the same true label on both sides, and the two must score the same classes.

The figures are those of `paired_statistics`: each side's accuracy, balanced accuracy and macro-F1 with paired
bootstrap intervals of their difference and McNemar's exact test of accuracy (of sensitivity and specificity too,
for a binary task), and the AUC with DeLong's test for correlated ROC curves. A binary task ranks by the positive
class's log-odds (evaluate's `log_odds_<class>` column, a Score-SDE predict output's `log_likelihood_ratio`, else
log(p / q) of the row's two probabilities), another by the rows' probabilities. Where both sides' rows are
probabilities, their Brier scores and log losses are compared too: the mean of each image's difference, with the same
paired bootstrap's interval.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..atomic_files import write_json_atomically
from ..provenance import run_environment
from ..replaced_reports import settle_replaced_report
from .aggregate import aggregated_ratio_class, check_predict_run_finished, recorded_point, recorded_run
from .outputs import (
    OUTPUT_SUFFIXES,
    POSITIVE_CLASS_KEY,
    RATIO_KEY,
    TRAINING_IMAGE_KEY,
    is_training_image,
    ratio_positive_class,
    read_predictions,
)

__all__ = ["add_compare_args", "compare_predictions", "render_comparison", "run_compare"]

EVALUATION_ROWS = "image_predictions.csv"  # evaluation.PREDICTIONS_FILE: evaluation sits in the layer above
_SHOWN = 3  # examples named in a refusal
_SPLIT_RECORD = ("split", "dataset", "carving")  # what names the images of an evaluation's split
_CAVEATS = (
    "The p-values are not adjusted for the several figures compared. Intervals (bootstrap) and p-values (exact and "
    "DeLong's tests) are separate methods: near the 5% level, and where few images are decided differently (their "
    "counts beside the p-value), they can disagree; the exact test is then the one to read."
)
_UNPAIRED_CAVEATS = (
    "The p-values are not adjusted for the several figures compared. Intervals (Newcombe's, bootstrap) and p-values "
    "(Fisher's exact test, DeLong's) are separate methods: near the 5% level they can disagree (marked), and the "
    "exact test is then the one to read. An unpaired comparison takes each side's images for draws independent of "
    "the other's: the same images (or the slices of one scan) on both sides are not, and are compared paired. Other "
    "images differ in more than the model: a site's figure less another's is the shift in the images and in their "
    "classes' mix together (balanced accuracy and macro-F1 weigh each class alike)."
)
_DISAGREE_MARK = " (interval and test disagree)"
# The figures that are not fractions: shown to 4 digits, their differences in their own units (lower is better)
_PROPER_SCORE_NAMES = {"brier": "Brier score (lower is better)", "log_loss": "log loss, nats (lower is better)"}
_UNITS = "Differences in percentage points; the Brier score's and the log loss's in their own units."
# How far from 1 a row of probabilities in a file may sum (a float32 softmax, or digits a spreadsheet rounded) and be
# taken for probabilities
_SUM_SLACK = 1e-3


@dataclass
class _ScoredRows:
    """One side's rows: their pairing keys, true and decided classes, probabilities and binary log-odds."""

    source: str
    path: Path  # the rows file
    keys: list
    true_labels: np.ndarray  # class names
    labels: np.ndarray
    probs: np.ndarray  # [N, K], columns as `class_names`
    class_names: list
    log_odds: Optional[np.ndarray]  # its ranking column (binary), toward `ranking_class`
    ranking_class: Optional[str]
    recorded_positive: Optional[str]  # the positive class its run recorded
    training_images: np.ndarray  # booleans
    file_bytes: Optional[list]  # a predict output's record of each file's size
    named: list  # the (path, frame) of each row that names its file (none for images held in arrays)
    evaluation: Optional[dict]  # what its run records: split, data, carving, model, call, operating point


def compare_predictions(
    a: str | os.PathLike,
    b: str | os.PathLike,
    pair_by: str | Sequence[str] = "path",
    positive_class: Optional[str] = None,
    common_images_only: bool = False,
    unpaired: bool = False,
) -> dict:
    r"""
    Two classifiers' predictions of the same labelled images, compared image by image; or, `unpaired`, two sets of
    other images (a model on one site's images and on another's), compared as independent samples.

    Args:
        a, b (`str` or `os.PathLike`): an evaluate output folder, its `image_predictions.csv`, a `.csv` / `.parquet`
            output of predict with a `true_label` column, or an aggregate output of one. Differences are B's less
            A's.
        pair_by (`str` or `Sequence[str]`, *optional*, defaults to `"path"`): `"path"`, an image is its file and
            frame (the rows of images held in arrays have none); `"image"`, its position in the split evaluated, which
            names the same image in both only in the same split of the same data carved alike (checked against both
            evaluations' metrics.json); or columns of both files whose values together name a row, such as
            `"study_uid"` for two `aggregate` outputs (a scan's slices are not independent draws: compare scans).
        positive_class (`str`, *optional*): binary tasks: the class sensitivity and the AUC refer to; default: the
            one A's run recorded (evaluate's `log_odds_<class>` column's, predict's sidecar's, aggregate's
            metrics.json's), else B's, else A's second class; a `UserWarning` where it contradicts a recorded one.
        common_images_only (`bool`, *optional*, defaults to `False`): compare the images both scored, leaving out the
            others (counted in `left_out`), instead of refusing two sets of images that differ.
        unpaired (`bool`, *optional*, defaults to `False`): A's and B's are other images, each side's independent
            draws (`independent_statistics.independent_figures`: Newcombe's interval and Fisher's exact test of
            accuracy, sensitivity and specificity, independent bootstraps of balanced accuracy and macro-F1, DeLong's
            variances added for the AUC; no Brier score or log loss): nothing is paired, `pair_by` and
            `common_images_only` are refused, and the result has `unpaired`, `num_a` and `num_b` in place of
            `paired_by` and `num_paired`. The same images on both sides are not independent draws: compare them
            paired.

    Returns:
        `dict`: `a`, `b` (their sources, rows and what their runs record), `paired_by`, `num_paired` (images, or
        groups), `left_out` (`only_in_a`, `only_in_b`, `training_images`), `class_names`, `positive_class` and
        `positive_class_from` (binary), `level`, and `figures`: for each of `accuracy`, `balanced_accuracy`,
        `macro_f1` (and binary `sensitivity`, `specificity`), `auc`: `a`, `b`, `difference` (B's less A's), its
        `interval` (None where there is none: `methods` says why), and where a test applies its `p_value`
        (accuracy, sensitivity and specificity: McNemar's exact test, with the images `only_a_correct` and
        `only_b_correct`; the AUC: DeLong's), `brier` and `log_loss` (of the probabilities; empty where a side's
        `prob_<class>` rows are not probabilities), and `methods`.
    """
    pair_by = [pair_by] if isinstance(pair_by, str) else list(pair_by)
    if not pair_by or ("image" in pair_by and len(pair_by) > 1):
        raise ValueError(f"pair_by: expected 'path', 'image' or columns of both files, got {pair_by!r}")
    if unpaired and (pair_by != ["path"] or common_images_only):
        raise ValueError("unpaired: expected neither pair_by nor common_images_only (nothing is paired)")
    side_a, side_b = (_read_side(source, side, [] if unpaired else pair_by) for source, side in ((a, "A"), (b, "B")))
    if side_a.path.resolve() == side_b.path.resolve():
        raise ValueError(f"A and B are the same file ({side_a.path}): expected two models' rows")
    positive, positive_note = _positive_class(side_a, side_b, positive_class)  # before the classes are reordered
    _check_same_classes(side_a, side_b)
    if unpaired:
        return _unpaired_comparison(side_a, side_b, positive, positive_note)
    if pair_by == ["image"]:
        _check_same_split(side_a, side_b)
    rows_a, rows_b, left_out = _paired_rows(side_a, side_b, common_images_only)
    y_true = _checked_true_labels(side_a, side_b, rows_a, rows_b)
    _check_same_files(side_a, side_b, rows_a, rows_b)
    names = side_a.class_names
    comparison = {
        "a": {"source": side_a.source, "num_rows": len(side_a.keys), **(side_a.evaluation or {})},
        "b": {"source": side_b.source, "num_rows": len(side_b.keys), **(side_b.evaluation or {})},
        "paired_by": pair_by[0] if len(pair_by) == 1 else pair_by, "num_paired": int(len(y_true)),
        "left_out": left_out, "class_names": names,
    }  # fmt: skip
    if positive is not None:
        comparison |= {"positive_class": positive, "positive_class_from": positive_note}
    from ..paired_statistics import paired_figures

    sides = ((side_a, rows_a), (side_b, rows_b))
    scores = [_ranking_scores(side, rows, positive) for side, rows in sides]
    predicted = [_label_ids(side.labels[rows], names, side.source) for side, rows in sides]
    positive_label = None if positive is None else names.index(positive)
    comparison.update(paired_figures(y_true, *predicted, *scores, len(names), positive_label))
    figures, methods = _proper_score_figures(y_true, sides)
    comparison["figures"] |= figures
    comparison["methods"] |= methods
    return _with_operating_point_caveats(comparison)


def _unpaired_comparison(side_a: _ScoredRows, side_b: _ScoredRows, positive: Optional[str], positive_note) -> dict:
    """The figures of two sets of other images (`independent_statistics.independent_figures`), each side's rows less
    those its predict run flags as training images."""
    from ..independent_statistics import independent_figures

    _check_other_images(side_a, side_b)
    names, scored, left_out = side_a.class_names, [], {}
    for side, key in ((side_a, "a"), (side_b, "b")):
        rows = np.flatnonzero(~side.training_images)
        if not len(rows):
            raise ValueError(f"{side.source}: every row is a training image of its model: nothing to compare")
        left_out[f"training_images_{key}"] = int(side.training_images.sum())
        truth, decided = (_label_ids(values[rows], names, side.source) for values in (side.true_labels, side.labels))
        scored.append((truth, decided, _ranking_scores(side, rows, positive)))
    comparison = {
        "a": {"source": side_a.source, "num_rows": len(side_a.keys), **(side_a.evaluation or {})},
        "b": {"source": side_b.source, "num_rows": len(side_b.keys), **(side_b.evaluation or {})},
        "unpaired": True, "num_a": len(scored[0][0]), "num_b": len(scored[1][0]), "left_out": left_out,
        "class_names": names,
    }  # fmt: skip
    if positive is not None:
        comparison |= {"positive_class": positive, "positive_class_from": positive_note}
    positive_label = None if positive is None else names.index(positive)
    (y_a, pred_a, scores_a), (y_b, pred_b, scores_b) = scored
    comparison.update(independent_figures(y_a, pred_a, scores_a, y_b, pred_b, scores_b, len(names), positive_label))
    return _with_operating_point_caveats(comparison)


def _with_operating_point_caveats(comparison: dict) -> dict:
    """`comparison` with `operating_point_caveats`: a side whose threshold was chosen on the images it scores (its
    sensitivity met by construction), and one model deciding at other operating points on the two sides (QA, an
    external validation: A at a threshold chosen on val, B at each image's most probable class, a specificity drop of
    38 points of which 27 were the threshold's)."""
    caveats = []
    for side in "ab":
        record = comparison[side]
        point = record.get("operating_point") or {}
        if point.get("chosen_on") is not None and point.get("chosen_on") == record.get("split") and \
                point.get("dataset") == record.get("dataset"):  # fmt: skip
            caveats.append(
                f"{side.upper()}'s threshold was chosen on the images it scores ({point['chosen_on']} of "
                f"{point['dataset']}): its figures at that threshold are met by construction, not estimates."
            )
    points = [comparison[side].get("operating_point") for side in "ab"]
    thresholds = [None if point is None else point.get("threshold") for point in points]
    model = comparison["a"].get("model_sha256")
    if model is not None and model == comparison["b"].get("model_sha256") and thresholds[0] != thresholds[1]:
        said = [f"{side} at {'its most probable class' if t is None else f'the threshold {t!r}'}"
                for side, t in zip("AB", thresholds)]  # fmt: skip
        caveats.append(
            f"One model decides at other operating points on the two sides ({'; '.join(said)}): the differences of "
            "accuracy, sensitivity and specificity are the threshold's too, not only the images'."
        )
    comparison["operating_point_caveats"] = caveats
    return comparison


def _check_other_images(side_a: _ScoredRows, side_b: _ScoredRows) -> None:
    """Refuse an unpaired comparison of two evaluations of the same split (their metrics.json record the same split,
    data and carving); warn where the two name images alike (path and frame), which may be the same images (QA: the
    same 624 test images compared unpaired, "other images": an interval twice as wide, a p-value of 0.31 for 0.004)."""
    records = [None if side.evaluation is None else {name: side.evaluation.get(name) for name in _SPLIT_RECORD}
               for side in (side_a, side_b)]  # fmt: skip
    if records[0] is not None and records[0] == records[1]:
        raise ValueError(
            f"unpaired: A and B scored the same split ({records[0]}): the same images are no independent draws; "
            "compare them paired (without --unpaired)"
        )
    shared = set(side_a.named) & set(side_b.named)
    if shared:
        warnings.warn(
            f"unpaired: A and B name {len(shared)} images alike (e.g. {sorted(shared)[:_SHOWN]}): where they are the "
            "same images they are no independent draws, and are compared paired (without --unpaired)",
            UserWarning,
            stacklevel=4,
        )


def _proper_score_figures(y_true: np.ndarray, sides: tuple) -> tuple[dict, dict]:
    """The Brier score and log loss figures (`paired_statistics.paired_proper_score_differences`) where both sides'
    `prob_<class>` rows are probabilities; else empty, their method naming the side whose rows are not (QA: a
    calibrated and an uncalibrated model compared by their decisions only)."""
    from ..paired_statistics import PROPER_SCORES, paired_proper_score_differences

    probabilities = [side.probs[rows] for side, rows in sides]
    others = [side.source for (side, _), probs in zip(sides, probabilities) if not _distributions(probs)]
    if others:
        reason = (
            f"none: the prob_<class> columns of {' and '.join(others)} are not probabilities (in [0, 1], each row "
            f"summing to 1 within {_SUM_SLACK})"
        )
        empty = {"a": None, "b": None, "difference": None, "interval": None}
        return {name: dict(empty) for name in PROPER_SCORES}, dict.fromkeys(PROPER_SCORES, reason)
    return paired_proper_score_differences(y_true, *probabilities)


def _distributions(probs: np.ndarray) -> bool:
    """Whether every row is a probability distribution, as far as a file's rounded digits keep one."""
    return bool(((probs >= 0) & (probs <= 1)).all() and (np.abs(probs.sum(1) - 1) <= _SUM_SLACK).all())


def _read_side(source: str | os.PathLike, side: str, pair_by: list) -> _ScoredRows:
    """The rows of one side, refused before any figure where they cannot be compared (no true labels, no key)."""
    path, evaluation = _rows_file(Path(source), side)
    columns, rows = read_predictions(path)
    where = f"{side} ({path})"
    missing = [name for name in ("true_label", "label") if name not in columns]
    class_names = [column[len("prob_"):] for column in columns if column.startswith("prob_")]
    if missing or not class_names:
        raise ValueError(
            f"{where}: expected evaluate's image_predictions.csv or a predict output of labelled images (true_label, "
            f"label and prob_<class> columns), got columns {columns}"
        )
    table = {name: [row[index] for row in rows] for index, name in enumerate(columns)}
    keys = _keys(table, pair_by, where)
    log_odds, ranking_class, recorded_positive, point = _recorded_ranking(table, path, class_names)
    if point is not None:  # a predict run that labelled its images at an operating point
        evaluation = {**(evaluation or {}), "operating_point": point}
    probs = np.column_stack([np.array(table[f"prob_{name}"], dtype=np.float64) for name in class_names])
    _check_scores(probs, log_odds, where)
    return _ScoredRows(
        source=str(source), path=path, keys=keys, true_labels=np.array(table["true_label"], dtype=object),
        labels=np.array(table["label"], dtype=object),
        probs=probs,
        class_names=class_names,
        log_odds=log_odds, ranking_class=ranking_class, recorded_positive=recorded_positive,
        training_images=np.array([is_training_image(value) for value in table.get(TRAINING_IMAGE_KEY, [])] or
                                 np.zeros(len(rows), bool), dtype=bool),
        evaluation=evaluation, file_bytes=table.get("file_bytes"), named=_named_images(table),
    )  # fmt: skip


def _named_images(table: dict) -> list:
    """The (path, frame) of each row of a file that names its image file; none for rows of images held in arrays."""
    frames = table.get("frame") or [0] * len(table.get("path") or [])
    return [(path, 0 if frame in (None, "") else int(frame)) for path, frame in zip(table.get("path") or [], frames)
            if path not in (None, "")]  # fmt: skip


def _check_scores(probs: np.ndarray, log_odds: Optional[np.ndarray], where: str) -> None:
    """Refuse a row whose probabilities or ranking score is missing or not a number (an edited file): a NaN would
    pass through the figures as one."""
    for name, values in (("prob_<class>", probs), ("ranking column", log_odds)):
        if values is None:
            continue
        missing = np.flatnonzero(np.isnan(values.reshape(len(values), -1)).any(axis=1))
        if len(missing):
            raise ValueError(
                f"{where}: {len(missing)} rows have an empty or NaN {name} cell (e.g. line {missing[0] + 2} of the "
                "file)"
            )


def _being_replaced(folder: Path) -> str:
    """Where an evaluate replacing the report of `folder` (running, or killed on another machine) keeps the earlier
    one."""
    aside = sorted(folder.glob(".replaced-metrics.json-*")) if folder.is_dir() else []
    return f" (an evaluate replacing its report runs, or was stopped on another machine: the earlier one is in " \
        f"{aside[0]})" if aside else ""


def _rows_file(source: Path, side: str) -> tuple[Path, Optional[dict]]:
    """The rows file of `source` (a folder: evaluate's `image_predictions.csv` in it) and what the evaluation beside
    it records (its metrics.json: split, data, carving, model, method, call settings, operating point), if any."""
    if source.is_dir():
        try:  # an evaluate killed while replacing its report: the earlier one moved back, as the next evaluate does
            settle_replaced_report(source)
        except OSError:  # a folder this user may only read: said below where the report is missing
            pass
    path = source / EVALUATION_ROWS if source.is_dir() else source
    if path.name != EVALUATION_ROWS and path.suffix.lower() in OUTPUT_SUFFIXES:
        check_predict_run_finished(path, side)  # QA: a killed --overwrite run's output was said to be of no kind
    if not path.is_file() or path.suffix.lower() not in OUTPUT_SUFFIXES:
        found = "not found" if not source.exists() else "found none"
        raise FileNotFoundError(
            f"{side} ({source}): expected an evaluate output folder (holding {EVALUATION_ROWS}), or a .csv / .parquet "
            f"file of evaluate's or predict's rows; {found}{_being_replaced(source)}"
        )
    metrics = path.parent / "metrics.json"
    if path.name != EVALUATION_ROWS or not metrics.is_file():
        return path, None
    recorded = json.loads(metrics.read_text())
    described = (*_SPLIT_RECORD, "model_sha256", "method", "pipeline_call", "operating_point")
    return path, {name: recorded[name] for name in described if name in recorded}


def _recorded_ranking(table: dict, path: Path, class_names: list) -> tuple:
    """What a file records beside its rows: its binary ranking column and the class that column points to (evaluate's
    `log_odds_<class>`; a Score-SDE predict output's `log_likelihood_ratio` where its sidecar, or an aggregate
    output's where its metrics.json, says which way it points: its probabilities saturate at 0 and 1, ranked by them
    its images would tie), the positive class its run recorded, and the operating point a predict run labelled at."""
    for column in table:
        if column.startswith("log_odds_"):
            return np.array(table[column], dtype=np.float64), column[len("log_odds_"):], column[len("log_odds_"):], None
    if path.name == EVALUATION_ROWS:
        return None, None, None, None
    sidecar, run = recorded_run(path)
    if run:
        pointed = ratio_positive_class(run, class_names, sidecar) if RATIO_KEY in table else None
        recorded_positive, point = run.get(POSITIVE_CLASS_KEY), recorded_point(sidecar)
    else:  # no predict sidecar: an aggregate output names its ratio in its metrics.json
        pointed, recorded_positive = aggregated_ratio_class(path, class_names)
        pointed, point = pointed if RATIO_KEY in table else None, None
    ratios = None if pointed is None else np.array(table[RATIO_KEY], dtype=np.float64)
    return ratios, pointed, recorded_positive, point


def _keys(table: dict, pair_by: Sequence[str], where: str) -> list:
    """Each row's pairing key: (path, frame), its position in the split, or the values of other columns (an aggregate
    output's study_uid); refused where a row has none. Unpaired (no `pair_by`): the row's number."""
    if not pair_by:
        return list(range(len(table["true_label"])))
    if list(pair_by) not in (["path"], ["image"]):
        return _column_keys(table, pair_by, where)
    if pair_by == ["image"]:
        if "image" not in table:
            raise ValueError(f"{where}: pair_by 'image': expected evaluate's `image` column (a predict output "
                             "names its images by path: pair by path)")  # fmt: skip
        return [int(value) for value in table["image"]]
    paths = table.get("path") or []
    unnamed = [index for index, value in enumerate(paths) if value in (None, "")]
    if not paths or unnamed:
        raise ValueError(
            f"{where}: {len(unnamed) if paths else 'its'} rows have no path (images held in arrays or a dataset): "
            "pair them by their position in the split (--pair_by image) where both models carved it alike"
        )
    frames = table.get("frame") or [0] * len(paths)
    return [(path, 0 if frame in (None, "") else int(frame)) for path, frame in zip(paths, frames)]


def _column_keys(table: dict, columns: Sequence[str], where: str) -> list:
    missing = [column for column in columns if column not in table]
    if missing:
        raise ValueError(f"{where}: pair_by {list(columns)}: no column {missing}; its columns are {list(table)}")
    keys = list(zip(*(table[column] for column in columns)))
    empty = sum(any(value in (None, "") for value in key) for key in keys)
    if empty:
        raise ValueError(f"{where}: pair_by {list(columns)}: {empty} rows have an empty value")
    return keys


def _check_same_classes(side_a: _ScoredRows, side_b: _ScoredRows) -> None:
    """Refuse two files of other classes; both sides' probability columns put in the classes' sorted order, so the
    seeded bootstrap draws alike whichever order the files list them in."""
    if sorted(side_a.class_names) != sorted(side_b.class_names):
        raise ValueError(
            f"B ({side_b.source}): expected the classes A scores, {side_a.class_names}, got {side_b.class_names}"
        )
    for side in (side_a, side_b):
        order = np.argsort(side.class_names, kind="stable")
        side.probs, side.class_names = side.probs[:, order], sorted(side.class_names)


def _check_same_split(side_a: _ScoredRows, side_b: _ScoredRows) -> None:
    """Positions name the same images only in the same split of the same data carved alike: refused where the two
    evaluations' metrics.json record other splits, data or carvings, or where one is not there to say."""
    for side in (side_a, side_b):
        if side.evaluation is None:
            raise ValueError(
                f"pair_by 'image': {side.source} has no evaluate metrics.json beside its rows to say which split its "
                "positions number: compare evaluate output folders, or pair by path"
            )
    scored_a, scored_b = ({name: side.evaluation.get(name) for name in _SPLIT_RECORD} for side in (side_a, side_b))
    if scored_a != scored_b:
        raise ValueError(
            f"pair_by 'image': A scored {scored_a} and B {scored_b}: the same position names "
            "other images; pair by path, or evaluate both models on one saved split"
        )


def _paired_rows(side_a: _ScoredRows, side_b: _ScoredRows, common_images_only: bool) -> tuple:
    """The row indices of the images both sides scored, in A's order, and what was left out."""
    index_a, index_b = (_index_of_keys(side) for side in (side_a, side_b))
    only_a = [key for key in index_a if key not in index_b]
    only_b = [key for key in index_b if key not in index_a]
    if (only_a or only_b) and not common_images_only:
        raise ValueError(
            f"A and B scored different images: {len(only_a)} only in A (e.g. {only_a[:_SHOWN]}), {len(only_b)} only in "
            f"B (e.g. {only_b[:_SHOWN]}): compare the images both scored with --common_images_only"
        )
    rows_a = np.array([index_a[key] for key in index_a if key in index_b], dtype=np.int64)
    rows_b = np.array([index_b[side_a.keys[row]] for row in rows_a], dtype=np.int64)
    training = side_a.training_images[rows_a] | side_b.training_images[rows_b]
    left_out = {"only_in_a": len(only_a), "only_in_b": len(only_b), "training_images": int(training.sum())}
    if not len(rows_a):
        raise ValueError("A and B: no image scored by both: nothing to compare")
    if training.all():
        raise ValueError("A and B: every image both scored is a training image of a model: nothing to compare")
    return rows_a[~training], rows_b[~training], left_out


def _check_same_files(side_a: _ScoredRows, side_b: _ScoredRows, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
    """Where both predict outputs record each file's size, refuse paired rows whose files differ in size: files of
    the same name in other folders, not the same images."""
    if side_a.file_bytes is None or side_b.file_bytes is None:
        return
    sizes_a = np.array(side_a.file_bytes, dtype=object)[rows_a]
    sizes_b = np.array(side_b.file_bytes, dtype=object)[rows_b]
    disagree = "record files of other sizes (bytes) under one path"
    _refuse_disagreement(sizes_a, sizes_b, side_a.keys, rows_a, disagree, "not the same images")


def _refuse_disagreement(values_a, values_b, keys: list, rows_a: np.ndarray, disagree: str, conclusion: str) -> None:
    """Refuse paired images whose values in A and B differ, naming how many and the first."""
    differ = np.flatnonzero(values_a != values_b)
    if len(differ):
        first = differ[0]
        raise ValueError(
            f"A and B {disagree} for {len(differ)} of the {len(rows_a)} paired images (e.g. {keys[rows_a[first]]}: "
            f"{values_a[first]!r} in A, {values_b[first]!r} in B): {conclusion}"
        )


def _index_of_keys(side: _ScoredRows) -> dict:
    index = {}
    for row, key in enumerate(side.keys):
        if key in index:
            raise ValueError(f"{side.source}: the image {key} has two rows (rows {index[key] + 1} and {row + 1})")
        index[key] = row
    return index


def _checked_true_labels(side_a: _ScoredRows, side_b: _ScoredRows, rows_a, rows_b) -> np.ndarray:
    """The paired images' class ids; refused where the two sides' true labels of an image differ."""
    true_a, true_b = side_a.true_labels[rows_a], side_b.true_labels[rows_b]
    _refuse_disagreement(true_a, true_b, side_a.keys, rows_a, "give other true labels", "not the same labelled images")
    return _label_ids(true_a, side_a.class_names, side_a.source)


def _label_ids(labels: np.ndarray, class_names: Sequence[str], source: str) -> np.ndarray:
    ids = {name: index for index, name in enumerate(class_names)}
    unknown = sorted({str(label) for label in labels if label not in ids})
    if unknown:
        raise ValueError(f"{source}: labels {unknown[:_SHOWN]} are not among its classes {list(class_names)}")
    return np.array([ids[label] for label in labels], dtype=np.int64)


def _positive_class(side_a: _ScoredRows, side_b: _ScoredRows, given: Optional[str]) -> tuple:
    """A binary task's positive class and where it came from: given, else the one A's (then B's) rows record, else
    A's second class (class 1, as everywhere in this library); a `UserWarning` where it contradicts a recorded one."""
    names = side_a.class_names
    if len(names) != 2:
        if given is not None:
            raise ValueError(f"positive_class: only a binary task has one; A and B score {len(names)} classes")
        return None, None
    recorded = {side: rows.recorded_positive for side, rows in (("A", side_a), ("B", side_b)) if rows.recorded_positive}
    if len(set(recorded.values())) > 1:
        warnings.warn(f"A's rows record the positive class {recorded['A']!r} and B's {recorded['B']!r}", stacklevel=3)
    if given is not None:
        if given not in names:
            raise ValueError(f"positive_class: expected one of {names}, got {given!r}")
        for side, class_name in recorded.items():
            if class_name != given:
                warnings.warn(f"positive_class {given!r}: {side}'s rows record {class_name!r}", stacklevel=3)
        return given, "given"
    if recorded:
        side, class_name = next(iter(recorded.items()))
        return class_name, f"recorded by {side}'s rows"
    return names[1], "the second class of A's file (none recorded)"


def _ranking_scores(side: _ScoredRows, rows: np.ndarray, positive: Optional[str]) -> np.ndarray:
    """What the AUC ranks by: binary, the positive class's log-odds (evaluate's column, else log(p / q) of the
    probabilities, as precise as they are); otherwise the probabilities [N, K]."""
    from ..metrics import finite_ranking

    if positive is None:
        return side.probs[rows]
    if side.log_odds is not None and side.ranking_class in side.class_names:
        sign = 1.0 if side.ranking_class == positive else -1.0
        log_odds = sign * side.log_odds[rows]
    else:
        label = side.class_names.index(positive)
        with np.errstate(divide="ignore"):
            log_odds = np.log(side.probs[rows, label]) - np.log(side.probs[rows, 1 - label])
    return finite_ranking(log_odds[:, None])[:, 0]


def render_comparison(comparison: dict) -> str:
    """A Markdown report of `compare_predictions`' result: a table of each figure, A, B, B's less A's with its
    interval, and the p-value with its test."""
    from ..metrics import percent

    level, unpaired = comparison["level"], comparison.get("unpaired", False)
    lines = [
        f"# {'Unpaired' if unpaired else 'Paired'} comparison: B ({comparison['b']['source']}) against A "
        f"({comparison['a']['source']})", "",
        _what_is_compared(comparison) + _positive_class_text(comparison) + _operating_points_text(comparison),
        "", f"| figure | A | B | B - A ({level:.0%} interval) | p-value |", "| --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name, figure in comparison["figures"].items():
        value, difference = (_score, _signed_score) if name in _PROPER_SCORE_NAMES else (percent, _points)
        interval = figure.get("interval")
        spread = "" if interval is None else f" ({difference(interval[0])} to {difference(interval[1])})"
        cells = [value(figure["a"]), value(figure["b"]), difference(figure["difference"]) + spread]
        disagree = _DISAGREE_MARK if figure.get("interval_and_test_disagree") else ""
        cells.append(_p_value_text(figure) + _discordant_text(figure) + disagree)
        lines.append(f"| {_figure_name(name)} | " + " | ".join(cells) + " |")
    units = _UNITS if set(comparison["figures"]) & set(_PROPER_SCORE_NAMES) else "Differences in percentage points."
    lines += ["", units, "Intervals and tests:", ""]
    by_method: dict = {}
    for name, method in comparison["methods"].items():
        by_method.setdefault(method, []).append(_figure_name(name))
    lines += [f"- {', '.join(names)}: {method}" for method, names in by_method.items()]
    caveats = comparison.get("operating_point_caveats") or []
    lines += ["", *(f"**{caveat}**" for caveat in caveats), *([""] if caveats else [])]
    lines += [_UNPAIRED_CAVEATS if unpaired else _CAVEATS]
    return "\n".join(lines) + "\n"


def _operating_points_text(comparison: dict) -> str:
    """Which side decided at an operating point its run records (evaluate's metrics.json, predict's sidecar), and
    which at each image's most probable class."""
    points = {side: comparison[side.lower()].get("operating_point") for side in "AB"}
    if not any(points.values()):
        return ""
    said = [f"{side} at the threshold {point['threshold']!r} its run recorded" if point else
            f"{side} at each image's most probable class" for side, point in points.items()]  # fmt: skip
    return f" Decisions: {'; '.join(said)}."


def _positive_class_text(comparison: dict) -> str:
    if "positive_class" not in comparison:
        return ""
    return f" Positive class (of sensitivity, specificity and the AUC): {comparison['positive_class']!r}, " \
        f"{comparison['positive_class_from']}."  # fmt: skip


def _discordant_text(figure: dict) -> str:
    """McNemar's counts: the images only one model gets right."""
    if "only_a_correct" not in figure:
        return ""
    return f" ({figure['only_a_correct']} only A right, {figure['only_b_correct']} only B right)"


def _p_value_text(figure: dict) -> str:
    """The p-value as the table shows it: "no test" for a figure none is run for, "n/a" where its test could not run."""
    if "p_value" not in figure:
        return "no test"
    if figure["p_value"] is None:
        return "n/a"
    return "< 0.0001" if figure["p_value"] < 1e-4 else f"{figure['p_value']:.4f}"


def _what_is_compared(comparison: dict) -> str:
    """The report's first sentence: how many images (or groups) were paired by what, or each side's count."""
    if not comparison.get("unpaired"):
        paired_by = comparison["paired_by"]
        return (f"{comparison['num_paired']} {_what_is_paired(paired_by)} paired by {paired_by}"
                + _left_out_text(comparison) + ".")  # fmt: skip
    left_out = comparison["left_out"]
    training = [f"{left_out[f'training_images_{side}']} training images of {side.upper()}" for side in "ab"
                if left_out[f"training_images_{side}"]]  # fmt: skip
    return (
        f"Unpaired: A's {comparison['num_a']} rows and B's {comparison['num_b']}, other images, each side's "
        f"independent draws" + (f" (left out: {', '.join(training)})" if training else "") + "."
    )


def _what_is_paired(paired_by) -> str:
    return "images" if paired_by in ("path", "image") else "rows (groups of images)"


def _points(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _score(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _signed_score(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _figure_name(name: str) -> str:
    from ..hub import METRIC_NAMES

    return _PROPER_SCORE_NAMES.get(name) or METRIC_NAMES[name][1]


def _left_out_text(comparison: dict) -> str:
    left_out = comparison["left_out"]
    parts = [f"{left_out['only_in_a']} only in A", f"{left_out['only_in_b']} only in B"] if left_out["only_in_a"] or \
        left_out["only_in_b"] else []  # fmt: skip
    if left_out["training_images"]:
        parts.append(f"{left_out['training_images']} training images")
    return f" (left out: {', '.join(parts)})" if parts else ""


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="A: an evaluate output folder, its image_predictions.csv, or a predict output with "
                        "true_label (.csv or .parquet)")  # fmt: skip
    parser.add_argument("b", help="B, the same kind of file: differences are B's less A's")
    parser.add_argument(
        "--pair_by", nargs="+", default=["path"],
        help="path: an image is its file and frame; image: its position in the split evaluated (images held in "
        "arrays), the same image only where both models carved the split alike (checked against their evaluations); "
        "or columns of both files, e.g. study_uid for two aggregate outputs (each scan once: its slices are not "
        "independent draws)",
    )  # fmt: skip
    parser.add_argument(
        "--positive_class", default=None,
        help="binary: the class sensitivity and the AUC refer to (default: evaluate's log_odds_<class> column's, else "
        "the predict run's recorded one, else the second class)",
    )  # fmt: skip
    parser.add_argument("--common_images_only", action="store_true",
                        help="compare the images both scored, leaving the others out, instead of refusing")  # fmt: skip
    parser.add_argument(
        "--unpaired", action="store_true",
        help="A and B scored other images (one site's and another's): compare them as independent samples, "
        "nothing paired (no --pair_by or --common_images_only)",
    )  # fmt: skip
    parser.add_argument("--output", default=None, help="also write the comparison as JSON to this .json file")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier --output (default: refuse it)")


def run_compare(args: argparse.Namespace) -> dict:
    output = None if args.output is None else Path(args.output)
    if output is not None and output.suffix.lower() != ".json":
        raise ValueError(f"--output {output}: expected a .json file")
    if output is not None and output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output}: exists; --overwrite replaces it")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    comparison = compare_predictions(
        args.a, args.b, args.pair_by, args.positive_class, args.common_images_only, unpaired=args.unpaired
    )
    print(render_comparison(comparison), end="")
    if output is not None:
        write_json_atomically(output, {**comparison, "environment": run_environment()})
        print(f"wrote {output}")
    return comparison

"""Operating points of a binary classifier: the decision threshold on the positive class, given, chosen on one split
for a target sensitivity (a screening programme's "90% of cancers found"), or read from the metrics of the
evaluation that chose it, so that a threshold chosen on val is applied unchanged to test, or to new images by
`predict`.

Decisions compare the positive class's log-odds with the threshold's: `log(p / q)` of the two classes' probabilities,
or the log-odds a pipeline gives (a Score-SDE classifier's, whose probabilities saturate at exactly 0 and 1 in float32
where its log-odds still differ: a threshold on those probabilities could only be 1.0, calling every saturated image
positive). An operating point is recorded (`metrics.json`'s `"operating_point"`) as `{"threshold": probability,
"log_odds": its log-odds}`, with, where chosen for a target, `"target_sensitivity"`, `"chosen_on"` (the split:
"val", "all" for every image of a data set, None for images of no named split) and `"dataset"`; where it was read
from another run's metrics, `"from"`, that file, which must record the same positive class, model and pipeline call
settings (`pipeline_call`: a Score-SDE call's priors, timesteps and method move every log-odds). Without one, each
image is given its most probable class (0.5; at a tie, the class listed first), as before.
"""

import json
import math
import os
from typing import Optional, Union

import numpy as np

__all__ = [
    "check_decision_rule",
    "decisions_at",
    "given_operating_point",
    "is_saturated",
    "log_odds_of",
    "operating_point_at",
    "positive_log_odds",
    "read_operating_point",
    "recorded_positive_class",
    "threshold_argument",
    "threshold_for_sensitivity",
]


def check_decision_rule(threshold, target_sensitivity) -> None:
    """`threshold` (a probability strictly between 0 and 1, or a metrics.json path) and `target_sensitivity` (in
    (0, 1]), not both, refused by name before any image is scored."""
    if threshold is not None and target_sensitivity is not None:
        raise ValueError(
            "threshold and target_sensitivity: expected one of them (a threshold, or the sensitivity to choose one "
            f"for), got both ({threshold!r}, {target_sensitivity!r})"
        )
    if _is_number(threshold) and not 0 < threshold < 1:
        raise ValueError(f"threshold: expected a probability strictly between 0 and 1, got {threshold!r}")
    if threshold is not None and not _is_number(threshold) and not isinstance(threshold, (str, os.PathLike)):
        raise ValueError(f"threshold: expected a probability or the path of a metrics.json, got {threshold!r}")
    if target_sensitivity is not None and not (_is_number(target_sensitivity) and 0 < target_sensitivity <= 1):
        raise ValueError(f"target_sensitivity: expected a fraction in (0, 1], got {target_sensitivity!r}")


def threshold_argument(text: str):
    """An argparse `type` for `--threshold`: a probability strictly between 0 and 1, or the path of a metrics.json
    (which must exist)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = text
        if not os.path.isfile(text):  # QA: a mistyped metrics.json path was told it was no probability
            looks_like_a_file = text.endswith(".json") or os.sep in text
            found = f"{text}: no such file" if looks_like_a_file else f"got {text!r}"
            raise argparse.ArgumentTypeError(f"expected a probability in (0, 1) or a metrics.json file; {found}")
    try:
        check_decision_rule(value, None)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def is_saturated(point: dict) -> bool:
    """Whether an operating point's probability is too near 0 or 1 to decide by (a Score-SDE model's, whose
    probabilities round to exactly 0 or 1 in float32): its log-odds decide."""
    return not 1e-4 < point["threshold"] < 1 - 1e-4


def recorded_positive_class(path: Union[str, os.PathLike], class_names) -> str:
    """The positive class an evaluate run's metrics.json at `path` chose its threshold for, one of `class_names`."""
    positive = _read_metrics(path).get("positive_class")
    if positive not in list(class_names):
        raise ValueError(f"threshold: {path} records the positive class {positive!r}, not one of {list(class_names)}")
    return positive


def log_odds_of(probability: float) -> float:
    """The log-odds `log(p / (1 - p))` of a threshold given as a probability strictly between 0 and 1."""
    return math.log(probability) - math.log1p(-probability)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def operating_point_at(log_odds: float) -> dict:
    """The operating point of a threshold on the positive class's log-odds: `{"threshold", "log_odds"}`."""
    return {"threshold": 1 / (1 + math.exp(-log_odds)) if log_odds > -700 else 0.0, "log_odds": float(log_odds)}


def given_operating_point(
    threshold, target_sensitivity, class_names, positive_label: Optional[int], model_sha256: Optional[str],
    pipeline_call: Optional[dict] = None,
) -> Optional[dict]:  # fmt: skip
    """The operating point `threshold` gives (a probability, or the metrics.json of the run that chose one: see
    `read_operating_point`), None without one or where `target_sensitivity` is to choose it on the scores; refused
    for a task that is not binary (`positive_label` None), before any image is scored."""
    if threshold is None and target_sensitivity is None:
        return None
    if positive_label is None:
        raise ValueError(
            f"threshold, target_sensitivity: decide between a binary task's two classes; the model has "
            f"{len(class_names)} classes {list(class_names)}"
        )
    if threshold is None:
        return None
    if _is_number(threshold):
        return {**operating_point_at(log_odds_of(threshold)), "threshold": float(threshold)}
    return read_operating_point(threshold, class_names[positive_label], model_sha256, pipeline_call)


def read_operating_point(
    path: Union[str, os.PathLike], positive_class: Optional[str], model_sha256: Optional[str],
    pipeline_call: Optional[dict] = None,
) -> dict:  # fmt: skip
    """The operating point an evaluation recorded in its metrics.json at `path`, with `"from": path`, refused unless
    it records one, of the same positive class, for the same model (where both runs know the model's fingerprint: a
    model given as a folder) and the same pipeline call settings (where both record them; its seed, which only
    redraws the Monte-Carlo noise, may differ)."""
    recorded = _read_metrics(path)
    point = recorded.get("operating_point")
    if not isinstance(point, dict) or not _valid_point(point):
        raise ValueError(
            f"threshold: {path} records no operating point (a threshold strictly between 0 and 1, or its finite "
            "log-odds); expected the metrics.json of an evaluate run given --target_sensitivity (or --threshold)"
        )
    if recorded.get("positive_class") != positive_class:
        raise ValueError(
            f"threshold: {path} chose its threshold for the positive class {recorded.get('positive_class')!r}; this "
            f"run's is {positive_class!r}: the same --positive_class, or a threshold chosen for this one"
        )
    chosen_for = recorded.get("model_sha256")
    if chosen_for is not None and model_sha256 is not None and chosen_for != model_sha256:
        raise ValueError(
            f"threshold: {path} was measured on another model (model_sha256 {chosen_for[:12]}..., this one "
            f"{model_sha256[:12]}...): a threshold holds for the scores of the model it was chosen on"
        )
    chosen_with = recorded.get("pipeline_call")
    differ = [] if chosen_with is None or pipeline_call is None else sorted(
        key for key in {*chosen_with, *pipeline_call} - _REDRAWS if chosen_with.get(key) != pipeline_call.get(key)
    )  # fmt: skip
    if differ:
        raise ValueError(
            f"threshold: {path} was chosen with the pipeline called otherwise ({', '.join(differ)}: "
            f"{[chosen_with.get(key) for key in differ]} there, {[pipeline_call.get(key) for key in differ]} here): "
            "priors, timesteps and the method move every score; call it as the threshold was chosen"
        )
    if "log_odds" not in point:  # given as a number
        point = {**point, "log_odds": log_odds_of(point["threshold"])}
    return {**point, "from": os.fspath(path)}


# Settings of a pipeline call that redraw its Monte-Carlo noise only: a threshold holds across them
_REDRAWS = {"seed", "seed_by"}


def _read_metrics(path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"threshold: cannot read {path} as a metrics.json ({error})") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"threshold: {path} is not a metrics.json (a JSON object)")
    return recorded


def _valid_point(point: dict) -> bool:
    """A recorded point decides: a finite log-odds, else a threshold strictly between 0 and 1 (QA: a file's threshold
    of 1.0 was applied where a typed one is refused)."""
    if "log_odds" in point:
        return _is_number(point["log_odds"]) and math.isfinite(point["log_odds"])
    return _is_number(point.get("threshold")) and 0 < point["threshold"] < 1


def threshold_for_sensitivity(is_positive, log_odds, target: float) -> dict:
    """The operating point of the largest log-odds threshold at which at least `target` of the positive images
    score the threshold or more: that of the ceil(target x positives)-th highest-scoring positive."""
    positives = np.sort(np.asarray(log_odds, dtype=np.float64)[np.asarray(is_positive, dtype=bool)])[::-1]
    if not len(positives):
        raise ValueError("target_sensitivity: the images scored hold no positive image to choose a threshold on")
    needed = max(1, math.ceil(target * len(positives) - 1e-9))  # a fraction of the positives, as sensitivity counts
    if not math.isfinite(positives[needed - 1]):
        raise ValueError(
            f"target_sensitivity: the positive image that sets the threshold has log-odds {positives[needed - 1]}: "
            "a probability of exactly 0 or 1, which no threshold can tell apart; a pipeline's log-odds can"
        )
    return operating_point_at(positives[needed - 1])


def positive_log_odds(probs, ranking, positive_label: int) -> np.ndarray:
    """Each image's log-odds of the positive class: `ranking`'s column where a pipeline ranked by log-odds (a
    Score-SDE classifier's `log_odds`: `ranking` is not its probabilities), else `log(p / q)` of the two classes'
    probabilities `probs` (QA: `log(p / (1 - p))` of a float32 p was +inf from log-odds 16.6 up, where q, a float32
    softmax's own, keeps its precision down to about -87; +inf where q is 0, -inf where p is)."""
    probs = np.asarray(probs, dtype=np.float64)
    ranking = np.asarray(ranking, dtype=np.float64)[:, positive_label]
    if not np.array_equal(ranking, probs[:, positive_label], equal_nan=True):  # review: a NaN read as log-odds
        return ranking
    with np.errstate(divide="ignore"):
        return np.log(probs[:, positive_label]) - np.log(probs[:, 1 - positive_label])


def decisions_at(log_odds, positive_label: int, point: dict) -> np.ndarray:
    """Each image's class: the positive one where its log-odds (of the positive class) are the point's or more."""
    return np.where(np.asarray(log_odds, dtype=np.float64) >= point["log_odds"], positive_label, 1 - positive_label)

"""Operating points of a binary classifier: the decision threshold on the positive class's probability, given, chosen
on one split for a target sensitivity (a screening programme's "90% of cancers found"), or read from the metrics of
the evaluation that chose it, so that a threshold chosen on val is applied unchanged to test.

`evaluate` records the point as `metrics.json`'s `"operating_point"`: `{"threshold", ["target_sensitivity",]
"chosen_on"}`, `chosen_on` naming the split it was chosen on ("val", "all" for every image of a data set; None for
a threshold given as a number, or chosen on images of no named split), and where it was read from another run's
metrics, `"from"`, that file. Without one, each image is given its most probable class
(0.5, at a tie the class listed first), as before.
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
    "read_operating_point",
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


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def given_operating_point(
    threshold, target_sensitivity, class_names, positive_label: Optional[int], model_sha256: Optional[str]
) -> Optional[dict]:
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
        return {"threshold": float(threshold), "chosen_on": None}
    return read_operating_point(threshold, class_names[positive_label], model_sha256)


def read_operating_point(
    path: Union[str, os.PathLike], positive_class: Optional[str], model_sha256: Optional[str]
) -> dict:
    """The operating point an evaluation recorded in its metrics.json at `path`, with `"from": path`, refused unless
    it records one, of the same positive class, for the same model (where both runs know the model's fingerprint)."""
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"threshold: cannot read {path} as a metrics.json ({error})") from None
    point = recorded.get("operating_point") if isinstance(recorded, dict) else None
    if not isinstance(point, dict) or not _is_number(point.get("threshold")):
        raise ValueError(
            f"threshold: {path} records no operating point; expected the metrics.json of an evaluate run given "
            "--target_sensitivity (or --threshold)"
        )
    if recorded.get("positive_class") != positive_class:
        raise ValueError(
            f"threshold: {path} chose its threshold for the positive class {recorded.get('positive_class')!r}; this "
            f"evaluation's is {positive_class!r}: pass --positive_class {recorded.get('positive_class')}"
        )
    chosen_for = recorded.get("model_sha256")
    if chosen_for is not None and model_sha256 is not None and chosen_for != model_sha256:
        raise ValueError(
            f"threshold: {path} was measured on another model (model_sha256 {chosen_for[:12]}..., this one "
            f"{model_sha256[:12]}...): a threshold holds for the scores of the model it was chosen on"
        )
    return {**point, "from": os.fspath(path)}


def threshold_for_sensitivity(is_positive, scores, target: float) -> float:
    """The largest threshold on `scores` at which at least `target` of the positive images score the threshold or
    more: the score of the ceil(target x positives)-th highest-scoring positive."""
    positives = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(is_positive, dtype=bool)])[::-1]
    if not len(positives):
        raise ValueError("target_sensitivity: the images scored hold no positive image to choose a threshold on")
    needed = max(1, math.ceil(target * len(positives) - 1e-9))  # a fraction of the positives, as sensitivity counts
    return float(positives[needed - 1])


def decisions_at(probs: np.ndarray, positive_label: int, threshold: float) -> np.ndarray:
    """Each image's class: the positive one where its probability is `threshold` or more, else the other."""
    return np.where(np.asarray(probs)[:, positive_label] >= threshold, positive_label, 1 - positive_label)

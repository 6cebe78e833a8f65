"""The train / val / test carving of a model's data, recorded beside the model (`data_splits.json`): the `probe` and
`evaluate` commands carve the same splits from the same data, so their test images are none the model was trained on.

A data set with splits of its own (a MedMNIST `.npz`, IDX test files, `train/val/test.txt`) keeps them; the record
matters where the splits are carved (an image folder, a CSV).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional, Sequence

__all__ = ["SPLIT_DEFAULTS", "SPLIT_RECORD_NAME", "read_split_record", "resolve_split_args", "save_split_record"]

SPLIT_RECORD_NAME = "data_splits.json"
SPLIT_DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0, "class_names": None}


def save_split_record(
    folder: str | os.PathLike,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Optional[Sequence[str]] = None,
) -> None:
    """Record in `folder` (a saved model's) how its data was carved: the fractions, the seed and the `class_names`
    the data was read with (their order numbers the classes, and the carving draws class by class), None when the
    names were found in the data."""
    record = {
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
        "class_names": None if class_names is None else list(class_names),
    }  # fmt: skip
    with open(os.path.join(folder, SPLIT_RECORD_NAME), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def read_split_record(folder: str | os.PathLike) -> Optional[dict]:
    """The carving recorded in `folder` (every key of `SPLIT_DEFAULTS`), or None for a model saved without one."""
    path = os.path.join(folder, SPLIT_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(record, dict) or not set(SPLIT_DEFAULTS) - {"class_names"} <= set(record) <= set(SPLIT_DEFAULTS):
        raise ValueError(f"{path}: expected the keys {sorted(SPLIT_DEFAULTS)}, got {record!r}")
    return {**SPLIT_DEFAULTS, **record}


def resolve_split_args(model_dir: str | os.PathLike, **given: Any) -> dict:
    """The carving (`SPLIT_DEFAULTS`' keys) of the data of the model in `model_dir`: each value `given` (not None),
    else the model's record, else `SPLIT_DEFAULTS`. A given value that contradicts the record is kept, with a
    warning: where the data has no splits of its own, its test split may hold images the model was trained on."""
    unknown = set(given) - set(SPLIT_DEFAULTS)
    if unknown:
        raise TypeError(f"resolve_split_args: unknown keys {sorted(unknown)}; expected some of {sorted(SPLIT_DEFAULTS)}")
    recorded = read_split_record(model_dir)
    if recorded is not None:
        changed = {name: value for name, value in given.items() if value is not None and value != recorded[name]}
        if changed:
            warnings.warn(
                f"{model_dir}: its data was carved with {recorded} ({SPLIT_RECORD_NAME}); "
                f"{', '.join(f'--{name} {value}' for name, value in changed.items())} carve(s) other splits where the "
                "data has none of its own, whose test and val may hold images the model was trained on",
                UserWarning,
                stacklevel=2,
            )
    fallback = recorded or SPLIT_DEFAULTS
    return {name: given.get(name) if given.get(name) is not None else fallback[name] for name in SPLIT_DEFAULTS}

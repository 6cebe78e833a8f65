"""Seeded subsets of a labelled set: stratified and patient-grouped splits; stratified, long-tailed, few-label subsets.

Every helper takes integer labels and returns sorted index arrays; the same call gives the same indices.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .split_record import SPLIT_DEFAULTS

__all__ = [
    "few_label_indices",
    "long_tailed_indices",
    "stratified_group_split",
    "stratified_split",
    "stratified_subset_indices",
    "stratified_train_val_test_split",
]

# Where a grouped split's fraction is set, for its errors.
_FRACTION_OPTIONS = "(val_fraction / test_fraction; the scripts' --val_fraction / --test_fraction)"
# The start of scikit-learn's warning for a class with fewer members than folds, replaced by `_FewImagesWarning`.
_SKLEARN_FEW_MEMBERS = "The least populated class in y has only"


class _FewImagesWarning(UserWarning):
    """A grouped split's classes with fewer images than folds (scikit-learn's "least populated class" warning, in this
    library's words); the loaders replace it by the split and class that got no image (`readers.carve_splits`)."""


# --------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------


def stratified_split(labels: Any, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into `(kept, split)` with about `fraction` of every class in `split`.

    Class `c` with `n_c` images puts `round(fraction * n_c)` of them (half up) in `split`,
    at least 1 and at most `n_c - 1`; a class with a single image stays in `kept`. The images
    are drawn with `numpy.random.default_rng(seed)`. Both index arrays are sorted.
    """
    labels = _as_label_array(labels)
    _check_fraction(fraction, "fraction")
    rng = np.random.default_rng(seed)
    chosen = []
    for members in _class_members(labels):
        if len(members) < 2:
            continue
        n_split = min(max(_round_half_up(fraction * len(members)), 1), len(members) - 1)
        chosen.append(rng.permutation(members)[:n_split])
    split = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), split)
    return kept.astype(np.int64), split.astype(np.int64)


def stratified_train_val_test_split(
    labels: Any,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    min_per_class: int = 2,
    class_names: Any = None,
) -> dict[str, np.ndarray]:
    r"""
    Seeded, stratified `{"train", "val", "test"}` indices with at least `min_per_class` images of every class in val
    and in test (a long tail keeps its rare classes measurable) and at least one in train.

    Class `c` with `n_c` images puts `round(test_fraction * n_c)` in test, then `round(val_fraction * rest)` in val
    (halves up), each raised to `min_per_class` and lowered so the later splits keep their share; the images are
    drawn from one `numpy.random.default_rng(seed)` permutation per class.

    Args:
        labels (`np.ndarray` or `torch.Tensor`): `[N]` integer labels >= 0; every class `0..max` must have images.
        val_fraction, test_fraction (`float`): strictly between 0 and 1.
        seed (`int`, *optional*, defaults to 0): the same call gives the same indices.
        min_per_class (`int`, *optional*, defaults to 2): images of each class at least in val and in test.
        class_names (`Sequence[str]`, *optional*): names the class in the error.

    Returns:
        `Dict[str, np.ndarray]`: sorted int64 indices of each split.

    Raises:
        `ValueError`: a class with fewer than `2 * min_per_class + 1` images (named, with its count), before any
            draw.
    """
    labels = _as_label_array(labels)
    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, (int, np.integer)) or min_per_class < 1:
        raise ValueError(f"min_per_class: expected an integer >= 1, got {min_per_class!r}")
    members = _class_members(labels)
    needed = 2 * min_per_class + 1
    for c, class_members in enumerate(members):
        if len(class_members) < needed:
            name = f"class {class_names[c]!r} (label {c})" if class_names is not None else f"class {c}"
            raise ValueError(
                f"{name} has {len(class_members)} images; the split needs at least {needed} of each class "
                f"({min_per_class} for val, {min_per_class} for test, 1 for train)"
            )
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for class_members in members:
        n = len(class_members)
        n_test = min(max(_round_half_up(test_fraction * n), min_per_class), n - min_per_class - 1)
        n_val = min(max(_round_half_up(val_fraction * (n - n_test)), min_per_class), n - n_test - 1)
        order = rng.permutation(class_members)
        parts["test"].append(order[:n_test])
        parts["val"].append(order[n_test : n_test + n_val])
        parts["train"].append(order[n_test + n_val :])
    return {name: np.sort(np.concatenate(chosen)).astype(np.int64) for name, chosen in parts.items()}


def stratified_group_split(labels: Any, groups: Any, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""
    Split indices into `(kept, split)` keeping every group (a patient) on one side, stratified by label as far as
    the groups allow.

    Built on scikit-learn's `StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)` with
    `k = round(1 / fraction)`: `split` is its first test fold, so it holds about `1 / k` of the samples (exactly
    `fraction` when `1 / fraction` is a whole number). Each fold's class proportions stay within about one group's
    share of the overall proportions: the folds are filled group by group.

    Args:
        labels (`np.ndarray` or `torch.Tensor`): `[N]` integer labels >= 0.
        groups (`Sequence`): `[N]` group ids (strings or integers, e.g. DICOM PatientID); samples sharing an id
            land on the same side.
        fraction (`float`): strictly between 0 and 1, at most 0.5 (`k >= 2`).
        seed (`int`, *optional*, defaults to 0): the same call gives the same indices.

    Returns:
        `Tuple[np.ndarray, np.ndarray]`: sorted int64 `kept` and `split` indices.

    Raises:
        `ValueError`: `groups` of another length than `labels` or with missing ids, a fraction above 0.5, or fewer
            than `k` groups.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = _as_label_array(labels)
    _check_fraction(fraction, "fraction")
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups: expected one group id per label ({len(labels)}), got shape {groups.shape}")
    if any(group is None or group == "" for group in groups.tolist()):
        raise ValueError("groups: expected an id for every sample, got a missing (None or empty) one")
    num_folds = _round_half_up(1 / fraction)
    num_groups = len(np.unique(groups))
    if num_folds < 2:
        raise ValueError(f"fraction: expected at most 0.5 for a grouped split, got {fraction!r}")
    if num_groups < 2:
        raise ValueError(
            f"groups: {num_groups} distinct group (patient); a grouped split needs at least 2, one for each side; give "
            "more patients"
        )
    if num_groups < num_folds:
        raise ValueError(
            f"groups: {num_groups} distinct groups (patients); a grouped split of fraction {fraction} needs at least "
            f"{num_folds} (one fold of {num_folds}); give more patients or a fraction of at least 1 / {num_groups} "
            f"{_FRACTION_OPTIONS}"
        )
    largest_class = int(np.bincount(labels).max())
    if largest_class < num_folds:  # scikit-learn: "n_splits=5 cannot be greater than the number of members in each class"
        raise ValueError(
            f"labels: the largest class has {largest_class} images; a stratified grouped split of fraction {fraction} "
            f"needs at least {num_folds} in a class: give more images or a fraction of at least 1 / {largest_class} "
            f"{_FRACTION_OPTIONS}"
        )
    folds = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept, split = next(folds.split(np.zeros(len(labels)), labels, groups))
    for warning in caught:
        if str(warning.message).startswith(_SKLEARN_FEW_MEMBERS):
            _warn_few_images(labels, groups, fraction, num_folds)
        else:  # any other warning reaches the user as it was
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return np.sort(kept).astype(np.int64), np.sort(split).astype(np.int64)


def _warn_few_images(labels: np.ndarray, groups: np.ndarray, fraction: float, num_folds: int) -> None:
    """The classes with fewer images than the grouped split's folds, with their image and group counts: the split
    (one fold) may get none of them."""
    few = [
        f"class {c}: {count} images in {len(np.unique(groups[labels == c]))} groups"
        for c, count in enumerate(np.bincount(labels)) if 0 < count < num_folds
    ]  # fmt: skip
    warnings.warn(
        f"stratified_group_split: {'; '.join(few)}; fewer than the {num_folds} folds a grouped split of fraction "
        f"{fraction} is cut from, so the split may hold no image of such a class. Give more patients of it or a "
        f"larger fraction {_FRACTION_OPTIONS}",
        _FewImagesWarning,
        stacklevel=3,
    )


def stratified_subset_indices(labels: Any, size: int, seed: int = 0) -> np.ndarray:
    r"""
    Indices of a stratified subset of about `size` samples: every class keeps about its share.

    Args:
        labels (`np.ndarray` or `torch.Tensor`): `[N]` integer labels >= 0.
        size (`int`): the number of samples wanted, >= 1. With `size >= N` every index is returned.
        seed (`int`, *optional*, defaults to 0): the draw is a function of `(labels, size, seed)` only.

    Returns:
        `np.ndarray`: sorted int64 indices: the `split` part of `stratified_split(labels, size / N, seed)`, so each
        class contributes `round(size / N * n_c)` samples (half up, at least 1 for a class of 2 or more, none for a
        class of 1); the total can differ from `size` by rounding.
    """
    labels = _as_label_array(labels)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size: expected an integer >= 1, got {size!r}")
    if size >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return stratified_split(labels, size / len(labels), seed)[1]


def long_tailed_indices(labels: Any, imbalance_ratio: float, seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset with an exponential class profile.

    With `K = max(labels) + 1` classes and `n_max` the size of the largest class, class `c`
    keeps `floor(n_max * imbalance_ratio ** (-c / (K - 1)))` images (capped at its size), so class
    0 is the head and class `K - 1` has `n_max / imbalance_ratio`. The kept images are drawn with
    `numpy.random.default_rng(seed)`. Returns sorted indices.
    """
    labels = _as_label_array(labels)
    if not np.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio: expected a finite number >= 1, got {imbalance_ratio!r}")
    members = _class_members(labels)
    n_max = max(len(m) for m in members)
    num_classes = len(members)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, class_members in enumerate(members):
        exponent = -c / (num_classes - 1) if num_classes > 1 else 0.0
        n_keep = int(np.floor(n_max * imbalance_ratio**exponent + 1e-9))  # 1e-9: float rounding
        chosen.append(rng.permutation(class_members)[: min(n_keep, len(class_members))])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def few_label_indices(
    labels: Any, n_per_class: int | None = None, fraction: float | None = None, seed: int = 0, min_per_class: int = 1
) -> np.ndarray:
    """Indices of a few-label subset: `n_per_class` images of each class, or `fraction` of each.

    Exactly one of `n_per_class` (capped at the class size) and `fraction` (`round(fraction *
    n_c)` half up, at least `min_per_class` per class, capped at the class size) must be given. Each class draws
    from its own seeded permutation, so for one seed a smaller subset is contained in a larger one. Returns sorted
    indices.
    """
    labels = _as_label_array(labels)
    if (n_per_class is None) == (fraction is None):
        raise ValueError(
            f"few_label_indices: expected exactly one of n_per_class and fraction, got "
            f"n_per_class={n_per_class!r}, fraction={fraction!r}"
        )
    if n_per_class is not None and (not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1):
        raise ValueError(f"n_per_class: expected a positive int, got {n_per_class!r}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, (int, np.integer)) or min_per_class < 1:
        raise ValueError(f"min_per_class: expected an integer >= 1, got {min_per_class!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for members in _class_members(labels):
        n_members = len(members)
        if n_members == 0:
            continue
        n = n_per_class if n_per_class is not None else max(min_per_class, _round_half_up(fraction * n_members))
        chosen.append(rng.permutation(members)[: min(n, len(members))])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _as_label_array(labels: Any) -> np.ndarray:
    """`labels` (array, list or tensor) as a non-empty 1-D int64 array of values >= 0."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"labels: expected a non-empty 1-D integer array, got ndarray of shape {array.shape} and dtype {array.dtype}"
        )
    if array.min() < 0:
        raise ValueError(f"labels: expected values >= 0, got {array.min()}")
    return array.astype(np.int64)


def _class_members(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class 0..max(labels), in index order (empty arrays for absent classes)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    return [order[bounds[c]: bounds[c + 1]] for c in range(labels.max() + 1)]


def _round_half_up(x: float) -> int:
    """`round(x)` with halves rounded up (numpy's `round` rounds halves to even)."""
    return int(np.floor(x + 0.5))


def check_split_fractions(val_fraction: float, test_fraction: float, carved: bool = True) -> None:
    """The loaders' `val_fraction` and `test_fraction`: strictly between 0 and 1; where nothing is carved (`carved`
    False: an unlabeled folder, trained on whole), only their defaults, since any other value would be ignored."""
    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    given = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    stated = [f"{name} {value:g}" for name, value in given.items() if value != SPLIT_DEFAULTS[name]]
    if not carved and stated:
        raise ValueError(
            f"unlabeled: every image of the folder is trained on and none carved for val or test: {', '.join(stated)} "
            "only choose(s) how splits are carved; leave them out"
        )


def _check_fraction(fraction: float, name: str) -> None:
    """`fraction` strictly between 0 and 1; the error names the argument."""
    if not 0 < fraction < 1:
        raise ValueError(f"{name}: expected a number strictly between 0 and 1, got {fraction!r}")


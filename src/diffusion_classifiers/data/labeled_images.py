"""The split names, [`LabeledImages`] (preprocessed images, integer labels and class names, validated together), and
[`RawData`], what every reader returns before preprocessing, with its labels and class names checked."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..validation import (
    check_class_names,
    check_finite_rows,
    check_name_list,
    check_unique_class_names,
    first_and_more,
)
from .preprocessing import ImagePreprocessing, _describe

__all__ = [
    "ONE_SET",
    "SPLITS",
    "LabeledImages",
    "RawData",
]

SPLITS = ("train", "val", "test")
ONE_SET = "all"  # every image of a data set as one set, none carved (the loaders' `one_set=True`)


@dataclass(repr=False)
class LabeledImages:
    r"""
    Images with integer labels and the names of the classes.

    Args:
        images (`torch.Tensor`): float32 `[N, C, H, W]` in `[-1, 1]` (build them with [`preprocess_images`]).
        labels (`torch.Tensor` or `np.ndarray`): `[N]` integer labels in `0..K-1`, stored as int64.
        class_names (`List[str]`): `K` unique names; `class_names[i]` is the name of label `i`.
        preprocessing ([`ImagePreprocessing`], *optional*): the contract that turns raw images into these tensors
            (set by [`load_image_classification_data`]): trainers save it with the model, so `pipe(...)`,
            evaluation and prediction read new images the same way.

    Construction validates shapes, dtypes, the value range, NaN/inf and the label range.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    preprocessing: ImagePreprocessing | None = None

    def __repr__(self) -> str:
        """A summary, not the pixel values (QA: a notebook cell showing a split printed 11,000 characters of them)."""
        counts = np.bincount(self.labels.numpy(), minlength=len(self.class_names)).tolist()
        per_class = first_and_more([f"{name!r}: {count}" for name, count in zip(self.class_names, counts)], 10)
        read = f", read at {self.preprocessing.summary()}" if self.preprocessing is not None else ""
        shape = list(self.images.shape[1:])
        return f"LabeledImages({len(self)} images {shape}, {len(counts)} classes {{{per_class}}}{read})"

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise ValueError(
                f"LabeledImages.images: expected a float32 torch tensor [N, C, H, W], got {_describe(self.images)}"
            )
        self.labels = _as_tensor(self.labels)
        if self.labels.ndim != 1 or self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise ValueError(f"LabeledImages.labels: expected integer labels [N], got {_describe(self.labels)}")
        self.labels = self.labels.to(torch.int64)
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"LabeledImages: {len(self.images)} images but {len(self.labels)} labels; expected one label per image"
            )
        check_name_list(self.class_names, "LabeledImages.class_names")
        self.class_names = [str(name) for name in self.class_names]
        check_unique_class_names(self.class_names, "LabeledImages.class_names")
        _check_label_range(self.labels.numpy(), len(self.class_names), "LabeledImages.labels")
        check_finite_rows(self.images, "LabeledImages.images", item="image")
        if len(self.images) and (self.images.min() < -1 or self.images.max() > 1):
            raise ValueError(
                f"LabeledImages.images: expected values in [-1, 1], got [{self.images.min():.4g}, "
                f"{self.images.max():.4g}]; build them with preprocess_images()"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes `K` (`len(class_names)`)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> LabeledImages:
        """The images and labels at `indices` (integer positions), with the same `class_names`."""
        index = _as_tensor(indices)
        if index.ndim != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"subset: expected a 1-D array of integer indices, got {_describe(index)}")
        return LabeledImages(self.images[index], self.labels[index], list(self.class_names), self.preprocessing)


def _check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every label in `0..num_classes-1`; the error names `where` the labels come from and the first bad one."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"{where}: label {labels[bad][0]} is outside 0..K-1 for K={num_classes} classes")


def _as_tensor(values: Any) -> torch.Tensor:
    """`values` (tensor, array or list) as a tensor; a numpy array shares its memory."""
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))


@dataclass
class RawData:
    """What a reader returns: images not yet preprocessed, labels, class names and official splits."""

    images: Any  # anything preprocess_images accepts
    labels: np.ndarray
    class_names: list[str]
    splits: dict[str, np.ndarray]  # split name -> indices into images; "train" always present
    default_image_size: int | None = None
    groups: np.ndarray | None = None  # a patient id per image: carved splits keep each group on one side
    preprocessed: bool = False  # images already a float32 [N, C, H, W] tensor in [-1, 1] (read with a contract)
    guessed_bits_stored: int | None = None  # the one depth every 16-bit file was scaled by, guessed from its maximum
    dicom_files: bool = False  # some of the images were read from DICOM files


def labels_and_names(
    labels_per_split: dict[str, np.ndarray], class_names: Sequence[str] | None, where: str
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Concatenate per-split labels, pick the class names and validate the label range."""
    for split, labels in labels_per_split.items():
        if len(labels) == 0:
            raise ValueError(f"{where}: split {split!r} is empty; expected at least one labeled image")
    labels = np.concatenate(list(labels_per_split.values())).astype(np.int64)
    names_given = class_names is not None
    if not names_given:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    check_class_names(class_names, where)
    _check_label_range(labels, len(class_names), f"{where} (class_names {list(class_names)})" if names_given else where)
    if not names_given:
        _check_no_label_gaps(labels, where)
    absent = sorted(set(range(len(class_names))) - set(labels.tolist()))
    if absent:  # kept, as class_names asks (a subset of a larger label space), but a miscount shows here
        warnings.warn(
            f"{where}: {len(absent)} of the {len(class_names)} class_names have no image (first: label {absent[0]}, "
            f"{class_names[absent[0]]!r}); they stay classes no image can teach"
        )
    _check_classes_in_train(labels_per_split, class_names, where)
    bounds = np.cumsum([0] + [len(v) for v in labels_per_split.values()])
    splits = {split: np.arange(bounds[i], bounds[i + 1]) for i, split in enumerate(labels_per_split)}
    return labels, list(class_names), splits


def _check_no_label_gaps(labels: np.ndarray, where: str) -> None:
    """Labels without class names must be `0..K-1` with every class present: `{0, 7}` is not 8 classes."""
    present = np.unique(labels)
    missing = np.setdiff1d(np.arange(int(present[-1]) + 1), present)
    if len(missing):
        found = set(present.tolist()) if len(present) <= 10 else f"({len(present)} distinct values)"
        raise ValueError(
            f"{where}: labels {found} are not 0..K-1: {len(missing)} of the classes 0..{present[-1]} have no "
            f"images (first: {missing[0]}). Pass class_names= naming all {present[-1] + 1} classes if the gaps are "
            f"intended, or relabel to 0..{len(present) - 1}"
        )


def _check_classes_in_train(labels_per_split: dict[str, np.ndarray], class_names: Sequence[str], where: str) -> None:
    """Every class with images in an official val/test split has training images too."""
    in_train = set(np.unique(labels_per_split["train"]).tolist())
    for split, labels in labels_per_split.items():
        absent = sorted(set(np.unique(labels).tolist()) - in_train)
        if absent:
            raise ValueError(
                f"{where}: class {class_names[absent[0]]!r} (label {absent[0]}) has images in split {split!r} but "
                "none in 'train'; expected every val/test class among the training labels"
            )

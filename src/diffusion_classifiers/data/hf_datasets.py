"""`datasets.Dataset` / `DatasetDict` sources: their splits, image and label columns, decoded."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from .image_files import DECODE_ERRORS, decode_error_text
from .file_decoding import _BitDepths, warn_mixed_channels
from .labeled_images import RawData, labels_and_names
from .preprocessing import ImagePreprocessing, check_images_fit_in_memory, preprocess_images
from .sixteen_bit import record_bit_depths

__all__ = [
    "canonical_split_name",
    "is_saved_dataset",
    "open_saved_dataset",
    "read_classification_split",
    "split_columns",
]

HF_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
# How a column of another type becomes the one `find_column` looks for, by its role.
_CAST_HINTS = {
    "image": "cast a column of encoded images or file paths with dataset.cast_column(name, Image()); arrays of "
    "pixels: save them in a .npz file",
    "label": "cast an integer column with dataset.cast_column(name, ClassLabel(names=...)), or number a column of "
    "class names with dataset.class_encode_column(name)",
}


def canonical_split_name(name: str) -> str:
    """`"val"` for `"validation"` (the Hub's name for it, which `to_datasets` writes); any other name as it is."""
    return HF_SPLIT_NAMES.get(name, name)


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` holds a `datasets.Dataset` or `DatasetDict` written by `save_to_disk`."""
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def open_saved_dataset(source: Any) -> Any:
    """`source` opened with `datasets.load_from_disk` (memory-mapped) when it is a folder written by `save_to_disk`,
    else `source` as it is."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() and is_saved_dataset(Path(source)):
        import datasets  # imported lazily: it is only needed for datasets sources

        return datasets.load_from_disk(str(source))
    return source


def dataset_name(source: Any) -> str:
    """How messages name a `datasets` source: by its folder when one was given, else "dataset"."""
    return f"dataset {source}" if isinstance(source, (str, os.PathLike)) else "dataset"


def hf_splits(
    source: Any, image_column: str | None, label_column: str | None, where: str = "dataset"
) -> tuple[dict, str, str, Any]:
    """The splits of a `datasets.Dataset` (train only) or `DatasetDict`, checked: known split names, one Image and one
    ClassLabel column (found or named), the same label feature in every split; a refusal names the source by
    `where` ([`dataset_name`]). Returns `(splits, image column, label column, label feature)`."""
    import datasets

    parts = {"train": source} if isinstance(source, datasets.Dataset) else dict(source)
    unknown = [name for name in parts if name not in HF_SPLIT_NAMES]
    if unknown or "train" not in parts or ("val" in parts and "validation" in parts):
        raise ValueError(
            f"{where}: DatasetDict splits {sorted(parts)}: expected 'train' and optionally one of 'validation'/'val', "
            "and 'test'"
        )
    features = parts["train"].features
    image_column = find_column(features, image_column, datasets.Image, "image", where)
    label_column = find_column(features, label_column, datasets.ClassLabel, "label", where)
    for name, part in parts.items():
        if part.features.get(label_column) != features[label_column]:
            raise ValueError(
                f"{where}: split {name!r}: label column {label_column!r} is {part.features.get(label_column)!r}; "
                f"expected {features[label_column]!r} as in 'train' (splits numbered one by one, as "
                "class_encode_column does where a split lacks a class: number them by name as train does, "
                f"dataset[{name!r}].align_labels_with_mapping({{name: i for i, name in enumerate(dataset['train']"
                f".features[{label_column!r}].names)}}, {label_column!r}))"
            )
    return parts, image_column, label_column, features[label_column]


# A datasets column that names patients, which carving does not read (a CSV's `patient_id` and DICOM headers it does)
PATIENT_COLUMN = "patient_id"


def warn_patients_not_carved_by(parts: dict, where: str) -> None:
    """A warning where splits the data lacks are carved from rows that name their patients (a `patient_id` column):
    carving a `datasets` source reads no patient, so a patient's images may go to train and to test (QA: 30 of 40
    patients on several splits, without a word)."""
    carved = [name for name in ("val", "test") if name not in {HF_SPLIT_NAMES[part] for part in parts}]
    if carved and PATIENT_COLUMN in parts["train"].features:
        warnings.warn(
            f"{where}: its {PATIENT_COLUMN!r} column is not read when the {' and '.join(map(repr, carved))} split(s) "
            "are carved from its rows, so a patient's images may be both in train and in a carved split; give a "
            "DatasetDict whose train, validation and test splits keep each patient on one side, or a CSV of "
            "path,label,patient_id (carved by patient)",
            UserWarning,
            stacklevel=4,
        )


def read_hf_dataset(
    source: Any, image_column: str | None, label_column: str | None, reading: ImagePreprocessing,
    where: str = "dataset",
) -> RawData:
    """The splits of a `datasets` source, every split's labels checked before any image is decoded, then each row
    preprocessed by `reading` as soon as it is decoded: one full-size image held at a time, as for image folders (see
    [`decode_files`]); the result equals `preprocess_images(<every decoded row>, preprocessing=reading)`."""
    import datasets

    parts, image_column, label_column, label_feature = hf_splits(source, image_column, label_column, where)
    warn_patients_not_carved_by(parts, where)
    labels = {HF_SPLIT_NAMES[name]: split_labels(part, label_column, name) for name, part in parts.items()}
    all_labels, names, splits = labels_and_names(labels, label_feature.names, "dataset")
    check_images_fit_in_memory(len(all_labels), reading)
    images, rows = [], []
    with record_bit_depths(_RowDepths()) as record:  # the depths the 16-bit rows were scaled by, as files' are
        for name, part in parts.items():
            decoded = _decoded_rows(part.cast_column(image_column, datasets.Image(decode=True)), image_column, name)
            for row, image in enumerate(decoded):
                record.row = f"split {name!r} row {row}"
                images.append(_preprocess_row(image, reading, name, row))
                rows.append(record.row)
    record.depths.warn()
    return RawData(
        _one_batch(images, rows, reading), all_labels, names, splits, preprocessed=True,
        guessed_bits_stored=record.depths.single,
    )  # fmt: skip


class _RowDepths:
    """The bit depths of a data set's 16-bit rows, each named by its row (`row`, set before it is read: the
    preprocessing reads it alone, and names it so: `sixteen_bit.pil_image_name`), for the warning about rows of
    different depths."""

    def __init__(self) -> None:
        self.depths, self.row = _BitDepths(), None

    def add(self, name: str, bits: int) -> None:
        self.depths.add(self.row or name, bits)


def _preprocess_row(image: Image.Image, reading: ImagePreprocessing, split: str, row: int) -> torch.Tensor:
    """One decoded row through `reading` (its own channels when `reading.num_channels` is None); an error names it."""
    try:
        return preprocess_images(image, preprocessing=reading)
    except ValueError as error:
        raise ValueError(f"split {split!r} row {row}: {error}") from error


def _one_batch(images: list[torch.Tensor], rows: list[str], reading: ImagePreprocessing) -> torch.Tensor:
    """The rows preprocessed one by one as one tensor, as `preprocess_images` makes of them all: one size when
    `reading` resizes none (else refused naming the first row of another, by its split and row: `rows`), and with
    `num_channels=None` 3 channels if any row is colour (a grey row's channel repeated, with a warning naming the
    colour rows), else 1. (QA: rows were numbered across the splits, "image 262" of an 80-row test split.)"""
    if reading.image_size is None:
        first = tuple(images[0].shape[-2:])
        other = next((i for i, image in enumerate(images) if tuple(image.shape[-2:]) != first), None)
        if other is not None:
            raise ValueError(
                f"images have different sizes: {rows[0]} is {first[0]}x{first[1]}, {rows[other]} is "
                f"{images[other].shape[2]}x{images[other].shape[3]}; pass image_size= to resize them"
            )
    if reading.num_channels is None and any(image.shape[1] == 3 for image in images):
        warn_mixed_channels([image.shape[1] for image in images], rows, 5)
        images = [image.repeat(1, 3, 1, 1) if image.shape[1] == 1 else image for image in images]
    return torch.cat(images)


def split_labels(part: Any, label_column: str, name: str) -> np.ndarray:
    """The int64 labels of one split; a row labelled -1, ClassLabel's "no label" (a Hub test split whose labels are
    withheld), is refused naming the split and how to read the rest, before any image is decoded."""
    labels = np.asarray(part[label_column], dtype=np.int64)
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise ValueError(
            f"split {name!r}: {unlabelled} of its {len(labels)} rows have label {int(labels.min())} in column "
            f"{label_column!r} (ClassLabel's 'no label', as in a test split whose labels are withheld); expected a "
            "class on every row: leave the split out (then a test split is carved from 'train') or drop those rows"
        )
    return labels


def split_columns(dataset: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The image and label columns of one non-empty `datasets.Dataset` split, found by feature type unless named."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset split, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("expected a non-empty dataset, got 0 rows")
    image_column = find_column(dataset.features, image_column, datasets.Image, "image")
    return image_column, find_column(dataset.features, label_column, datasets.ClassLabel, "label")


def read_classification_split(
    dataset: Any, image_column: str | None = None, label_column: str | None = None
) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """One `datasets.Dataset` split as (decoded PIL images, integer labels, ClassLabel names), with the image and
    label columns found by feature type as in [`load_image_classification_data`]."""
    import datasets

    image_column, label_column = split_columns(dataset, image_column, label_column)
    images = _decode_column(dataset.cast_column(image_column, datasets.Image(decode=True)), image_column, "evaluation")
    return images, np.asarray(dataset[label_column], dtype=np.int64), list(dataset.features[label_column].names)


def find_column(features: Any, name: str | None, feature_type: type, role: str, where: str | None = None) -> str:
    """The column of `feature_type` for `role` ("image", "label"): `name`, checked, else the one of that type; a
    refusal starts with `where` when given (the source: QA, a wrong --label_column was not said to be the dataset's)."""
    columns = {column: repr(feature) for column, feature in features.items()}
    expected = feature_type.__name__
    source = f"{where}: " if where else ""
    if name is not None:
        if name not in features:
            raise ValueError(f"{source}{role} column {name!r} not found; columns: {columns}")
        if not isinstance(features[name], feature_type):  # QA: the hint was given only when no column was named
            hint = f" ({_CAST_HINTS[role]})" if role in _CAST_HINTS else ""
            raise ValueError(f"{source}{role} column {name!r} has type {features[name]!r}; expected {expected}{hint}")
        return name
    matches = [column for column, feature in features.items() if isinstance(feature, feature_type)]
    if len(matches) != 1:
        found = "no" if not matches else f"several ({matches})"
        if matches:
            how = (
                f"Pass {role}_column= naming one (the commands and training scripts: --{role}_column), or save the "
                f"dataset with one {expected} column (dataset.remove_columns([...]))"
            )
        else:
            how = f"Pass {role}_column= naming one {expected} column ({_CAST_HINTS.get(role, '')})"
        raise ValueError(f"{source}{found} {expected} column for the {role}s; columns: {columns}. {how}")
    return matches[0]


def _decode_column(dataset: Any, column: str, split: str) -> list[Image.Image]:
    return list(_decoded_rows(dataset, column, split))


def _decoded_rows(dataset: Any, column: str, split: str) -> Iterator[Image.Image]:
    """The decoded images of `column`, one at a time; a row without an image or that cannot be decoded is refused
    naming it."""
    row = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for row, example in enumerate(dataset.select_columns([column])):
                if example[column] is None:
                    raise ValueError(f"split {split!r} row {row}: column {column!r} has no image")
                yield example[column]
    except DECODE_ERRORS as error:
        raise ValueError(
            f"split {split!r} row {row}: cannot decode column {column!r}: {decode_error_text(error)}"
        ) from error

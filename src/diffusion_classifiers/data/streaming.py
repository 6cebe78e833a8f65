"""Datasets larger than memory: image files listed (never decoded up front) in a `datasets.Dataset`, each image
decoded and preprocessed only when it is read, in the process (or `DataLoader` worker) that reads it.

[`StreamingImages`] is a torch `Dataset` of `(image [C, H, W] in [-1, 1], label)` over a `datasets.Dataset` whose
image column holds paths or encoded bytes (`datasets.Image(decode=False)`): `with_transform` decodes and preprocesses
each item through [`preprocess_images`], the one preprocessing contract, so a streamed image equals the in-memory one
of [`load_image_classification_data`] exactly. [`streaming_image_classification_data`] carves the same seeded
`train` / `val` / `test` splits as [`load_image_classification_data`], from the labels alone.

A table of paths holds about 100 bytes per image (3 MB for 30,000), so it is built in memory (`Dataset.from_dict`);
a `datasets` source keeps its own Arrow table, memory-mapped when it was loaded from disk or the Hub cache.
"""

from __future__ import annotations

import io
import os
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .dicom import DICOM_EXTENSIONS
from .preprocessing import _describe, preprocess_images
from .readers import (
    _DECODE_ERRORS,
    _HF_SPLIT_NAMES,
    DEFAULT_FOLDER_SIZE,
    SPLITS,
    _carve_splits,
    _decode_error_text,
    _decode_image_file,
    _hf_splits,
    _find_column,
    _labels_and_names,
    _list_csv,
    _list_image_folder,
    _RawData,
)
from .splits import _check_fraction

__all__ = ["StreamingImages", "streaming_image_classification_data"]

_IMAGE, _LABEL = "image", "label"  # the columns of a table built from files


def _preprocess_one(image: Any, image_size: int | tuple[int, int] | None, num_channels: int) -> torch.Tensor:
    """One decoded image -> float32 `[C, H, W]` in [-1, 1]: the adapter between streaming and the one preprocessing
    contract (its signature lives here only)."""
    return preprocess_images(image, image_size=image_size, num_channels=num_channels)[0]


def _decode(item: dict) -> Any:
    """An undecoded `datasets.Image` value (`{"bytes", "path"}`) -> a decoded image; the error names the file."""
    path = item.get("path")
    if item.get("bytes") is None:
        if path is None:
            raise ValueError("an image row has neither bytes nor a path")
        if Path(path).suffix.lower() in DICOM_EXTENSIONS:
            raise ValueError(f"cannot stream DICOM file {path}: read DICOM data with load_image_classification_data")
        return _decode_image_file(Path(path))
    try:  # decoded as datasets.Image decodes bytes, so a streamed image equals the in-memory one
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(item["bytes"])) as image:
                image.load()
                return image.copy()
    except _DECODE_ERRORS as error:
        raise ValueError(f"cannot decode image {path or '(bytes without a path)'}: {_decode_error_text(error)}") from error


def _decode_and_preprocess(batch: dict, image_column: str, label_column: str | None, image_size, num_channels) -> dict:
    """The `with_transform` of [`StreamingImages`]: a batch of rows -> preprocessed images (and labels)."""
    output = {"pixel_values": [_preprocess_one(_decode(item), image_size, num_channels) for item in batch[image_column]]}
    if label_column is not None:
        output[_LABEL] = batch[label_column]
    return output


class StreamingImages(torch.utils.data.Dataset):
    r"""
    Images decoded and preprocessed on access, over a `datasets.Dataset` of undecoded images: a torch `Dataset` of
    `(image, label)`, `image` float32 `[C, H, W]` in `[-1, 1]` (`label` 0 without a label column). Picklable, so
    `DataLoader` worker processes decode in parallel; `__getitems__` reads a whole batch of rows at once.

    Args:
        dataset (`datasets.Dataset`): an `Image` column (decoded or not: it is read undecoded) and optionally a
            `ClassLabel` column.
        image_size (`int` or `Tuple[int, int]`): every image is resized to it (see [`preprocess_images`]).
        num_channels (`int`): 1 or 3.
        image_column, label_column (`str`, *optional*): default: the one `Image` / `ClassLabel` column (no label
            column: `label_column=False`).
    """

    def __init__(
        self,
        dataset: Any,
        image_size: int | tuple[int, int],
        num_channels: int,
        image_column: str | None = None,
        label_column: str | None | bool = None,
    ):
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"expected a datasets.Dataset, got {_describe(dataset)}")
        if num_channels not in (1, 3):
            raise ValueError(
                f"num_channels: expected 1 or 3 (streaming cannot look at every image first), got {num_channels!r}"
            )
        if image_size is None:
            raise ValueError("image_size: expected an int or (height, width) (streamed images are resized on the fly)")
        self.image_column = _find_column(dataset.features, image_column, datasets.Image, "image")
        self.label_column = (
            None if label_column is False else _find_column(dataset.features, label_column, datasets.ClassLabel, "label")
        )
        self.image_size, self.num_channels = image_size, num_channels
        self.dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.class_names = list(dataset.features[self.label_column].names) if self.label_column else []
        transform = partial(
            _decode_and_preprocess, image_column=self.image_column, label_column=self.label_column,
            image_size=image_size, num_channels=num_channels,
        )  # fmt: skip
        self._rows = self.dataset.with_transform(transform)

    @property
    def labels(self) -> torch.Tensor:
        """int64 `[N]` (zeros without a label column); read from the label column alone, no image decoded."""
        if self.label_column is None:
            return torch.zeros(len(self), dtype=torch.int64)
        return torch.as_tensor(np.asarray(self.dataset[self.label_column], dtype=np.int64))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self._rows[int(index)]
        return row["pixel_values"], row.get(_LABEL, 0)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        rows = self._rows[[int(i) for i in indices]]
        labels = rows.get(_LABEL, [0] * len(indices))
        return list(zip(rows["pixel_values"], labels))

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> StreamingImages:
        """The rows at `indices` (an index mapping over the same Arrow table: nothing is copied or decoded)."""
        indices = np.asarray(indices, dtype=np.int64)
        label_column = False if self.label_column is None else self.label_column
        return StreamingImages(
            self.dataset.select(indices), self.image_size, self.num_channels, self.image_column, label_column
        )

    @classmethod
    def from_files(
        cls,
        files: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        image_size: int | tuple[int, int] = DEFAULT_FOLDER_SIZE,
        num_channels: int = 3,
        check_files: bool = True,
    ) -> StreamingImages:
        """Image files (and their integer labels in `0..len(class_names)-1`) as a streaming dataset. With
        `check_files`, every file's header is read now, so a missing or unreadable file is refused (named) before
        any long computation; a file whose pixel data is corrupt fails when it is read, again naming the file."""
        import datasets

        files = [str(file) for file in files]
        if not files:
            raise ValueError("files: expected at least one image file, got none")
        if (labels is None) != (class_names is None):
            raise ValueError("expected labels and class_names together, got only one of them")
        if check_files:
            _check_headers(files)
        columns = {_IMAGE: [{"path": file, "bytes": None} for file in files]}
        features = {_IMAGE: datasets.Image(decode=False)}
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) != len(files):
                raise ValueError(f"expected one label per file ({len(files)}), got {len(labels)} labels")
            columns[_LABEL], features[_LABEL] = labels, datasets.ClassLabel(names=[str(n) for n in class_names])
        dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        return cls(dataset, image_size, num_channels, _IMAGE, _LABEL if labels is not None else False)


def _check_headers(files: Sequence[str]) -> None:
    """Every file exists and PIL recognises its header (cheap: no pixel data is decoded)."""
    for file in files:
        if Path(file).suffix.lower() in DICOM_EXTENSIONS:
            raise ValueError(f"cannot stream DICOM file {file}: read DICOM data with load_image_classification_data")
        try:
            with Image.open(file):
                pass
        except (*_DECODE_ERRORS, FileNotFoundError) as error:
            raise ValueError(f"cannot decode image file {file}: {_decode_error_text(error)}") from error


def streaming_image_classification_data(
    source: Any,
    num_channels: int,
    image_size: int | tuple[int, int] = DEFAULT_FOLDER_SIZE,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    patient_id_column: str | None = None,
    check_files: bool = True,
) -> dict[str, StreamingImages]:
    r"""
    [`load_image_classification_data`] for data larger than memory: `{"train", "val", "test"}` [`StreamingImages`]
    with the same images, labels, class names and seeded splits (the images decoded only when read).

    Args:
        source: an image folder (`<root>/<class>/<image>`, `splits/*.txt` honoured), a `.csv` file of
            `path,label[,patient_id]`, a `datasets.Dataset` / `DatasetDict` (`Image` and `ClassLabel` columns), or a
            folder a `Dataset` / `DatasetDict` was saved to (`save_to_disk`; memory-mapped). DICOM files are refused.
        num_channels (`int`): 1 or 3 (required: the in-memory default looks at every image first).
        image_size (`int` or `Tuple[int, int]`, *optional*, defaults to 32): every image is resized to it.
        val_fraction, test_fraction, seed, class_names, image_column, label_column, patient_id_column: as in
            [`load_image_classification_data`].
        check_files (`bool`, *optional*, defaults to `True`): read every file's header now (see
            [`StreamingImages.from_files`]).

    Raises:
        `ValueError`: as [`load_image_classification_data`] for the listing (empty folder, missing file, bad CSV,
            label problems), and a file PIL cannot read, named, before anything is decoded.
    """
    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() and _is_saved_dataset(Path(source)):
        import datasets

        source = datasets.load_from_disk(str(source))
    if type(source).__module__.startswith("datasets"):
        dataset, raw = _hf_rows(source, image_column, label_column)
        full = StreamingImages(dataset, image_size, num_channels, image_column=_IMAGE, label_column=_LABEL)
    else:
        files, raw = _file_rows(source, class_names, patient_id_column)
        full = StreamingImages.from_files(files, raw.labels, raw.class_names, image_size, num_channels, check_files)
    splits = _carve_splits(raw, val_fraction, test_fraction, seed)
    return {name: full.subset(splits[name]) for name in SPLITS}


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def _file_rows(source: Any, class_names: Sequence[str] | None, patient_id_column: str | None):
    """The files of an image folder or CSV, and their labels, names, official splits and groups (as `_RawData`)."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"source: {str(path)!r} does not exist; expected an image folder, a .csv file or a dataset")
    if path.is_file() and path.suffix == ".csv":
        files, labels, names, patients = _list_csv(path, class_names, patient_id_column)
        labels_per_split, where = {"train": labels}, f"CSV {path}"
        groups = None if patients is None else np.asarray(patients, dtype=object)
    elif path.is_dir():
        if class_names is not None or patient_id_column is not None:
            raise ValueError("class_names / patient_id_column apply to CSV sources only, not to an image folder")
        files, labels_per_split, names = _list_image_folder(path)
        where, groups = f"image folder {path}", None
    else:
        raise ValueError(f"source: {str(path)!r} is a file; expected an image folder, a .csv file or a dataset")
    labels, names, splits = _labels_and_names(labels_per_split, names, where)
    return files, _RawData(None, labels, names, splits, groups=groups)


def _hf_rows(source: Any, image_column: str | None, label_column: str | None):
    """One table of every split's (undecoded) images and labels, and its `_RawData` (labels, names, splits)."""
    import datasets

    parts, image_column, label_column, label_feature = _hf_splits(source, image_column, label_column)
    tables, labels = [], {}
    for name, part in parts.items():
        part = part.select_columns([image_column, label_column]).cast_column(image_column, datasets.Image(decode=False))
        renames = {old: new for old, new in ((image_column, _IMAGE), (label_column, _LABEL)) if old != new}
        tables.append(part.rename_columns(renames))
        labels[_HF_SPLIT_NAMES[name]] = np.asarray(part[label_column], dtype=np.int64)
    all_labels, names, splits = _labels_and_names(labels, label_feature.names, "dataset")
    return datasets.concatenate_datasets(tables), _RawData(None, all_labels, names, splits)

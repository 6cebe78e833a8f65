"""Image-classification datasets in, seeded `train` / `val` / `test` [`LabeledImages`] out.

[`LabeledImages`] holds preprocessed images, their integer labels and the class names, validated together.

[`load_image_classification_data`] reads scikit-learn's digits, MedMNIST-style `.npz` files, IDX (MNIST /
Fashion-MNIST) directories, image folders (DICOM and 16-bit PNG / TIFF included), CSV files of
`path,label[,patient_id]` and `datasets.Dataset` / `datasets.DatasetDict` objects, validates them (empty data,
out-of-range labels, NaN, corrupt files) before any long computation, preprocesses them with [`preprocess_images`]
and carves the splits the source lacks with [`stratified_split`], or [`stratified_group_split`] when patient ids are
known (each patient on one side).
"""

from __future__ import annotations

import csv
import gzip
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..validation import check_finite_rows
from .dicom import (
    _DICOM_HEADER_NOTE,
    DICOM_EXTENSIONS,
    MedicalPreprocessing,
    is_dicom_file,
    parse_windows,
    read_dicom,
    read_dicom_header,
    _scale_16bit,
    window_channels,
)
from .image_files import DECODE_ERRORS, IMAGE_EXTENSIONS, decode_error_text, open_image
from .preprocessing import _PIL_16BIT_MODES, ImagePreprocessing, _describe, fit_options, preprocess_images
from .splits import _check_fraction, _FewImagesWarning, stratified_group_split, stratified_split

__all__ = [
    "DEFAULT_DIGITS_SIZE",
    "DEFAULT_FOLDER_SIZE",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "LabeledImages",
    "PNEUMONIAMNIST_CLASSES",
    "SPLITS",
    "list_image_folder",
    "load_data_from_args",
    "load_image_classification_data",
    "read_classification_split",
    "read_idx",
    "split_columns",
    "to_datasets",
]

SPLITS = ("train", "val", "test")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
PNEUMONIAMNIST_CLASSES = ["normal", "pneumonia"]
# What a listing reads, for its errors.
_ACCEPTED_FILES = f"extensions {sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS)}; {_DICOM_HEADER_NOTE}"
DEFAULT_DIGITS_SIZE = 32
DEFAULT_FOLDER_SIZE = 32


# --------------------------------------------------------------------------------------------------
# LabeledImages
# --------------------------------------------------------------------------------------------------


@dataclass
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
        self.class_names = [str(name) for name in self.class_names]
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"LabeledImages.class_names: expected unique names, got {self.class_names}")
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


# --------------------------------------------------------------------------------------------------
# The entry point and the shared assembly
# --------------------------------------------------------------------------------------------------


def load_image_classification_data(
    source: Any = "digits",
    image_size: int | tuple[int, int] | None = None,
    num_channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    medical: MedicalPreprocessing | None = None,
    patient_id_column: str | None = None,
    resize_mode: str = "stretch",
    pad_value: float = -1.0,
    normalize_background: bool = False,
) -> dict[str, LabeledImages]:
    r"""
    Load an image-classification dataset as `{"train", "val", "test"}` [`LabeledImages`].

    Args:
        source (`str`, `os.PathLike`, `datasets.Dataset` or `datasets.DatasetDict`, *optional*, defaults to `"digits"`):
            one of

            * `"digits"`: scikit-learn's bundled 8x8 digits (values 0..16), upsampled to 32 px by
              default, 1 channel, classes `"0".."9"`.
            * a MedMNIST-style `.npz` file: `train_images` / `train_labels` (required),
              `val_*` and `test_*` (optional, of train's size and channels); images `(N, H, W)` or
              `(N, H, W, C)` with C = 1 or 3, labels `(N,)` or `(N, 1)`. `pneumoniamnist.npz` gets
              `["normal", "pneumonia"]`.
            * a directory of IDX files: `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`
              (required), `t10k-*` (optional), each gzipped (`.gz`) or not. A directory whose name
              contains "fashion" gets the Fashion-MNIST class names.
            * an image folder: `<root>/<class>/<image>` (or `<root>/images/<class>/<image>`); class
              names are the sorted subfolder names and the images of a class the image files directly in
              its folder (names starting with "." skipped). An empty class folder, a folder inside a class
              folder (a nested layout, a symlink loop) and two class folders that are one are refused.
              If `<root>/splits/train.txt` exists, the splits come from `splits/{train,val,test}.txt`
              (lines `relative/path label`, paths relative to the class folders' parent) and the names
              from `splits/classes.txt` when present.
              Images are resized to 32 px by default; 3 channels if any image is color (with a warning
              naming the colour files when grey ones are mixed in), else 1.
              DICOM files (`.dcm`, `.dicom`, `.dic`, `.ima`, or another or no extension and the 'DICM' header, as
              PACS exports name them)
              and 16-bit PNG / TIFF are read as `medical` says; a multi-frame DICOM gives one image per frame, all
              with its label; the DICOM files of one series (SeriesInstanceUID) in one folder must share one size (a
              scout mixed into the slices is refused; independent images of different series may differ); DICOM and
              other image files are read together through one window only (several windows refuse the mix: an image
              file has no Hounsfield units to window). When DICOM files name a PatientID, the carved splits keep each
              patient on one side (images without one are their own group).
            * a `.csv` file with a header and the columns `path` (relative to the CSV's folder), `label` (a class
              name) and optionally a patient id column (`patient_id`, or the one `patient_id_column` names): images
              read as in an image folder; classes are `class_names` or the sorted labels (numerically if all are
              integers); with patient ids, the carved splits keep each patient on one side.
            * a `datasets.Dataset` or `datasets.DatasetDict` with an `Image` column and a
              `ClassLabel` column (found by feature type, or named by `image_column` /
              `label_column`); splits `train`, `validation` or `val`, `test`.
        image_size (`int` or `Tuple[int, int]`, *optional*):
            resize to this size (see [`preprocess_images`]); default: the native size, except 32 for digits and
            image folders. Float image arrays (digits, `.npz`, windowed DICOM, 16-bit files) are read as `[0, 1]`.
        num_channels (`int`, *optional*):
            1 or 3 (see [`preprocess_images`]); default: the data's.
        val_fraction (`float`, *optional*, defaults to 0.1):
            when the source has no validation split, this fraction of the training pool (after the test split is
            removed) becomes `val` (stratified).
        test_fraction (`float`, *optional*, defaults to 0.2):
            when the source has no test split, this fraction of all images becomes `test` (stratified).
        seed (`int`, *optional*, defaults to 0):
            seed of the carved splits.
        class_names (`Sequence[str]`, *optional*):
            names of label ids `0..K-1` for sources that store only integer labels (digits, `.npz`, IDX); for a CSV,
            the classes in label-id order (a CSV label outside them is refused).
            Default: `"0".."K-1"` with `K = max(label) + 1`, and then every label in `0..K-1` must occur: labels
            `{0, 7}` are refused rather than read as 8 classes, unless `class_names` names all 8.
        image_column, label_column (`str`, *optional*):
            column names for `datasets` sources; default: the one `Image` and the one `ClassLabel` column.
        medical ([`MedicalPreprocessing`], *optional*):
            how DICOM files are windowed (one channel per window) and 16-bit PNG / TIFF scaled; default
            `MedicalPreprocessing()`: each DICOM's own window, 16-bit images by their maximum's bit depth (a
            `UserWarning` when the images of the data set get different ones: state `bits_stored`).
        patient_id_column (`str`, *optional*):
            for a CSV source, the column of patient (group) ids; it must exist. Default: `patient_id` if present.
        resize_mode (`str`, *optional*, defaults to `"stretch"`), pad_value (`float`, *optional*, defaults to -1.0),
        normalize_background (`bool`, *optional*, defaults to `False`):
            how images meet `image_size` and whether their bright-field background is made white (see
            [`ImagePreprocessing`]); saved in the splits' contract, so a model trained on them applies the same.

    Returns:
        `Dict[str, LabeledImages]`: the `"train"`, `"val"` and `"test"` splits, each with the `preprocessing`
        contract a model trained on them is saved with (the resulting size and channels, `medical`).

    Raises:
        `ValueError`: unknown source, missing files or keys, corrupt or truncated files, decompression bombs,
            empty data or class folders, nested folders or symlink loops, labels outside `0..K-1` or with gaps,
            a val/test class absent from train, val/test images whose size or channels differ from train's,
            NaN/inf, or an empty split; each names the file, key or folder, and all but NaN/inf are raised before
            preprocessing.
    """
    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    kind = _source_kind(source)
    if class_names is not None and kind not in ("digits", "npz", "idx", "csv"):
        raise ValueError(
            f"class_names: only digits, .npz, IDX and CSV sources take class_names; a {kind} source carries its own"
        )
    if patient_id_column is not None and kind != "csv":
        raise ValueError(f"patient_id_column applies to CSV sources only, not to a {kind} source")
    medical = MedicalPreprocessing() if medical is None else medical
    medical.check_channels(num_channels)
    fit = fit_options(resize_mode, pad_value, normalize_background)
    # the readers' float arrays (digits, .npz, windowed DICOM, 16-bit files) are in [0, 1]; checked before any read
    reading = ImagePreprocessing(image_size, num_channels, input_range="[0, 1]", medical=medical, **fit)
    if (image_column is not None or label_column is not None) and kind != "datasets":
        raise ValueError(f"image_column / label_column apply to datasets sources only, not to a {kind} source")
    if kind == "digits":
        raw = _read_digits(class_names)
    elif kind == "npz":
        raw = _read_npz(Path(source), class_names)
    elif kind == "idx":
        raw = _read_idx_directory(Path(source), class_names)
    elif kind in ("folder", "csv"):  # each file preprocessed as it is decoded: one full-size image held at a time
        files_reading = reading if image_size is not None else replace(reading, image_size=DEFAULT_FOLDER_SIZE)
        if kind == "folder":
            raw = _read_image_folder(Path(source), medical, files_reading)
        else:
            raw = _read_csv(Path(source), class_names, patient_id_column, medical, files_reading)
    else:
        raw = _read_hf_dataset(source, image_column, label_column)
    if image_size is None:
        reading = replace(reading, image_size=raw.default_image_size)
    if kind == "datasets" and num_channels is None:
        rows = [f"row {i}" for i in range(len(raw.images))]
        _warn_mixed_channels([_pil_channels(image) for image in raw.images], rows, stacklevel=3)
    images = raw.images if raw.preprocessed else preprocess_images(raw.images, preprocessing=reading)
    splits = _assemble(images, raw, val_fraction, test_fraction, seed)
    # What a model trained on these tensors is saved with: the same steps, for files and [-1, 1] tensors alike.
    contract = ImagePreprocessing(tuple(images.shape[-2:]), images.shape[1], medical=medical, **fit)
    for split in splits.values():
        split.preprocessing = contract
    return splits


@dataclass
class _RawData:
    """What a reader returns: images not yet preprocessed, labels, class names and official splits."""

    images: Any  # anything preprocess_images accepts
    labels: np.ndarray
    class_names: list[str]
    splits: dict[str, np.ndarray]  # split name -> indices into images; "train" always present
    default_image_size: int | None = None
    groups: np.ndarray | None = None  # a patient id per image: carved splits keep each group on one side
    preprocessed: bool = False  # images already a float32 [N, C, H, W] tensor in [-1, 1] (read with a contract)


def _source_kind(source: Any) -> str:
    if isinstance(source, str) and source == "digits":
        return "digits"
    if type(source).__module__.startswith("datasets"):
        import datasets  # imported lazily: it is only needed for datasets sources

        if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
            return "datasets"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"source: expected 'digits', a path or a datasets.Dataset/DatasetDict, got {_describe(source)}"
        )
    path = Path(source)
    if not path.exists():
        raise ValueError(
            f"source: {str(path)!r} does not exist; expected 'digits', a .npz file, a .csv of paths, an IDX directory "
            "or an image folder"
        )
    if path.is_file():
        if path.suffix not in (".npz", ".csv"):
            raise ValueError(f"source: {str(path)!r} is a file; expected a .npz or .csv file or a directory")
        return path.suffix[1:]
    if any((path / name).exists() for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")):
        return "idx"
    return "folder"


def _assemble(
    images: torch.Tensor, raw: _RawData, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, LabeledImages]:
    """Fill in missing test / val splits (stratified, seeded) and build the LabeledImages."""
    splits = _carve_splits(raw, val_fraction, test_fraction, seed)
    result = {}
    for name in SPLITS:
        index = torch.from_numpy(splits[name])
        result[name] = LabeledImages(images[index], torch.from_numpy(raw.labels[splits[name]]), raw.class_names)
    return result


def _carve_splits(raw: _RawData, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """The indices of every split in `SPLITS`: the source's own, and stratified, seeded ones carved for the rest
    (keeping each group on one side when `raw.groups` is known); an empty split is refused, and a carved split without
    an image of a class its pool has is warned about (see [`_warn_missing_classes`])."""
    splits = dict(raw.splits)

    def carve(pool: np.ndarray, fraction: float, name: str) -> tuple[np.ndarray, np.ndarray]:
        if raw.groups is None:
            kept, split = stratified_split(raw.labels[pool], fraction, seed)
        else:
            with warnings.catch_warnings():  # said below by split and class name
                warnings.simplefilter("ignore", _FewImagesWarning)
                kept, split = stratified_group_split(raw.labels[pool], raw.groups[pool], fraction, seed)
        _warn_missing_classes(raw, pool, pool[split], name, fraction)
        return pool[kept], pool[split]

    if "test" not in splits:
        splits["train"], splits["test"] = carve(splits["train"], test_fraction, "test")
    if "val" not in splits:
        splits["train"], splits["val"] = carve(splits["train"], val_fraction, "val")
    if len(splits) > len(raw.splits):
        _warn_untrained_classes(raw, splits)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise ValueError(f"split {name!r} is empty; the dataset is too small for the requested fractions")
    return splits


def _warn_missing_classes(raw: _RawData, pool: np.ndarray, split: np.ndarray, name: str, fraction: float) -> None:
    """Warn, naming the split and each class with its image (and patient) counts, when the `split` carved from `pool`
    holds no image of a class the pool has (a class of few patients: a grouped split is cut into round(1 / fraction)
    folds of whole patients); its metrics then say nothing of that class."""
    missing = sorted(set(np.unique(raw.labels[pool]).tolist()) - set(np.unique(raw.labels[split]).tolist()))

    for label in missing:
        members, left = np.flatnonzero(raw.labels == label), pool[raw.labels[pool] == label]
        carved_from = "" if len(left) == len(members) else f"; {_count(raw, left)} were left for {name!r} after 'test'"
        warnings.warn(
            f"the carved {name!r} split holds no image of class {raw.class_names[label]!r} (label {label}), which has "
            f"{_count(raw, members)}{carved_from}: too few for {name}_fraction={fraction}, so the {name!r} metrics "
            f"cannot measure it. Give more images{' and patients' if raw.groups is not None else ''} of it, or a larger "
            f"{name}_fraction (the scripts' --{name}_fraction)",
            UserWarning,
            stacklevel=6,  # the caller of load_image_classification_data / streaming_image_classification_data
        )


def _count(raw: _RawData, indices: np.ndarray) -> str:
    """`"8 images of 4 patients (groups)"`: the images at `indices` and their groups, when known."""
    def plural(number: int, noun: str) -> str:
        return f"{number} {noun}{'s' if number != 1 else ''}"

    if raw.groups is None:
        return plural(len(indices), "image")
    return f"{plural(len(indices), 'image')} of {plural(len(np.unique(raw.groups[indices])), 'patient')} (groups)"


def _warn_untrained_classes(raw: _RawData, splits: dict[str, np.ndarray]) -> None:
    """Warn when carving left `train` without any image of a class (a class of one patient, carved into val or
    test): the model cannot learn it."""
    for label in sorted(set(raw.labels.tolist()) - set(raw.labels[splits["train"]].tolist())):
        where = [name for name in ("val", "test") if (raw.labels[splits[name]] == label).any()]
        warnings.warn(
            f"the 'train' split holds no image of class {raw.class_names[label]!r} (label {label}), which has "
            f"{_count(raw, np.flatnonzero(raw.labels == label))}, all carved into {' and '.join(map(repr, where))}: "
            "the model cannot learn it. Give more images (patients) of it, or smaller val_fraction / test_fraction",
            UserWarning,
            stacklevel=5,  # the caller of load_image_classification_data / streaming_image_classification_data
        )


def _labels_and_names(
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


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------

# --- digits -----------------------------------------------------------------------------------------


def _read_digits(class_names: Sequence[str] | None) -> _RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).to(torch.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    names = class_names if class_names is not None else [str(i) for i in range(10)]
    labels, names, splits = _labels_and_names({"train": digits.target}, names, "digits")
    return _RawData(images, labels, names, splits, DEFAULT_DIGITS_SIZE)


# --- .npz -------------------------------------------------------------------------------------------


def _read_npz(path: Path, class_names: Sequence[str] | None) -> _RawData:
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"cannot read {path}: {error} (truncated or corrupt?)") from error
    found = sorted(arrays)
    present = [s for s in SPLITS if f"{s}_images" in found or f"{s}_labels" in found]
    incomplete = [f"{s}_{part}" for s in present for part in ("images", "labels") if f"{s}_{part}" not in found]
    if "train" not in present or incomplete:
        raise ValueError(
            f"{path}: expected keys train_images, train_labels (and optionally val_*/test_*); "
            f"missing {incomplete or ['train_images', 'train_labels']}, found {found}"
        )
    images, labels = {}, {}
    for split in present:
        images[split] = _nhwc_to_nchw(arrays[f"{split}_images"], f"{path}[{split}_images]")
        labels[split] = _flat_labels(arrays[f"{split}_labels"], len(images[split]), f"{path}[{split}_labels]")
    _check_same_image_shape(images, {split: f"{path}[{split}_images]" for split in images})
    if class_names is None and path.name == "pneumoniamnist.npz":
        class_names = PNEUMONIAMNIST_CLASSES
    all_labels, names, splits = _labels_and_names(labels, class_names, str(path))
    return _RawData(torch.cat(list(images.values())), all_labels, names, splits)


def _nhwc_to_nchw(array: np.ndarray, where: str) -> torch.Tensor:
    if array.ndim == 3:
        return torch.from_numpy(np.ascontiguousarray(array))[:, None]
    if array.ndim == 4 and array.shape[-1] in (1, 3):
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    raise ValueError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C) with C = 1 or 3, got {array.shape}")


def _check_same_image_shape(images: dict[str, torch.Tensor], sources: dict[str, str]) -> None:
    """Every split's images `[n, C, H, W]` have the channels and size of train's; the error names the split's source."""
    def describe(batch: torch.Tensor) -> str:
        return f"{batch.shape[1]}-channel {batch.shape[2]}x{batch.shape[3]}"

    for split, batch in images.items():
        if batch.shape[1:] != images["train"].shape[1:]:
            raise ValueError(
                f"{sources[split]}: images are {describe(batch)}; expected {describe(images['train'])} as in "
                f"{sources['train']}"
            )


def _flat_labels(labels: np.ndarray, num_images: int, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != num_images or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: expected {num_images} integer labels of shape (N,) or (N, 1), "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


# --- IDX --------------------------------------------------------------------------------------------

# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in `.gz`) into a numpy array.

    Raises `ValueError` naming the file when it cannot be decompressed, its magic number is wrong,
    its number of dimensions is not `expected_ndim`, or its size does not match its header.
    """
    path = Path(path)
    try:
        data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path}: {error} (truncated or corrupt?)") from error
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"IDX file {path}: bad magic number {data[:4].hex()}; expected 0000 followed by a type byte "
            f"({', '.join(f'{t:02x}' for t in _IDX_DTYPES)}) and the number of dimensions"
        )
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"IDX file {path}: {ndim} dimensions in the header; expected {expected_ndim}")
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected_bytes = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected_bytes:
        raise ValueError(
            f"IDX file {path}: {len(data)} bytes; its header {dims} implies {expected_bytes} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_idx_directory(root: Path, class_names: Sequence[str] | None) -> _RawData:
    images, labels, sources = {}, {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_file = _find_idx_file(root, f"{prefix}-images-idx3-ubyte")
        label_file = _find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
        if split == "test" and image_file is None and label_file is None:
            continue
        if image_file is None or label_file is None:
            raise ValueError(
                f"{root}: expected {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz], "
                f"found {sorted(p.name for p in root.iterdir())}"
            )
        images[split] = _nhwc_to_nchw(read_idx(image_file, expected_ndim=3), str(image_file))
        labels[split] = _flat_labels(read_idx(label_file, expected_ndim=1), len(images[split]), str(label_file))
        sources[split] = str(image_file)
    _check_same_image_shape(images, sources)
    if class_names is None and "fashion" in root.resolve().name.lower():
        class_names = FASHION_MNIST_CLASSES
    all_labels, names, splits = _labels_and_names(labels, class_names, str(root))
    return _RawData(torch.cat(list(images.values())), all_labels, names, splits)


def _find_idx_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


# --- image folder -----------------------------------------------------------------------------------


def _read_image_folder(
    root: Path, medical: MedicalPreprocessing, reading: ImagePreprocessing | None = None
) -> _RawData:
    """An image folder's images (preprocessed by `reading` as they are decoded, when given: see [`_decode_files`]),
    labels, class names, splits and groups."""
    files, labels_per_split, names = _list_image_folder(root)
    images, labels_per_split, groups = _decode_files(files, labels_per_split, medical, reading=reading)
    labels, names, splits = _labels_and_names(labels_per_split, names, f"image folder {root}")
    return _RawData(images, labels, names, splits, DEFAULT_FOLDER_SIZE, groups, preprocessed=reading is not None)


def list_image_folder(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str], dict[str, np.ndarray]]:
    """The image files of an image folder as the readers list them (class folders, or `images/` with `splits/*.txt`;
    hidden files skipped, a nested or empty class folder refused by name), their integer labels, the class names and
    each split the folder defines (indices into the files); nothing is decoded. For a tool that reads the folder
    itself and must see the images training sees."""
    files, labels_per_split, names = _list_image_folder(Path(root))
    labels, names, splits = _labels_and_names(labels_per_split, names, f"image folder {root}")
    return files, labels, names, splits


def _list_image_folder(root: Path) -> tuple[list[Path], dict[str, np.ndarray], list[str]]:
    """The image files of an image folder (listed split by split), their labels per split and the class names;
    nothing is decoded (`data.streaming` reads the files lazily)."""
    image_root = root / "images" if (root / "images").is_dir() else root
    class_dirs = sorted(
        p for p in image_root.iterdir() if p.is_dir() and p.name != "splits" and not p.name.startswith(".")
    )
    if (root / "splits" / "train.txt").is_file():
        files, labels_per_split, names = _read_split_files(root / "splits", image_root, class_dirs)
    else:
        files, labels_per_split, names = _read_class_folders(class_dirs)
        _warn_unlabelled_images(image_root)
    if not files:
        raise ValueError(
            f"image folder {root}: no images found; expected class subfolders <root>/<class>/*.jpg "
            f"({_ACCEPTED_FILES})"
        )
    return files, labels_per_split, names


def _warn_unlabelled_images(image_root: Path) -> None:
    """Image files beside the class folders have no class: they are not read, and a user who meant them to be
    should hear it."""
    stray = sorted(p.name for p in image_root.iterdir() if p.is_file() and _is_image_or_dicom_file(p)
                   and not p.name.startswith("."))  # fmt: skip
    if stray:
        warnings.warn(
            f"image folder {image_root}: {len(stray)} image file(s) directly in it (first: {stray[0]!r}) are not read; "
            "an image's class is the folder it is in (<root>/<class>/<image>)",
            stacklevel=4,
        )


def _read_class_folders(class_dirs: list[Path]) -> tuple[list[Path], dict[str, np.ndarray], list[str]]:
    """The images of each class folder, labelled by its position; an empty class folder is refused (unless all are
    empty: then the caller reports that no images were found), and so are two class folders that are one folder."""
    folders: dict[str, Path] = {}
    for folder in class_dirs:
        real = os.path.realpath(folder)
        if real in folders:
            raise ValueError(
                f"class folders {folders[real]} and {folder} are the same folder {real} (a symlink); expected one "
                "folder per class"
            )
        folders[real] = folder
    per_class = [_class_images(folder) for folder in class_dirs]
    empty = [folder for folder, paths in zip(class_dirs, per_class) if not paths]
    if empty and len(empty) < len(class_dirs):
        raise ValueError(
            f"class folder {empty[0]} holds no image files ({_ACCEPTED_FILES}); expected at least one image per "
            "class: remove the folder or add its images"
        )
    files = [path for paths in per_class for path in paths]
    labels = np.repeat(np.arange(len(per_class)), [len(paths) for paths in per_class])
    return files, {"train": labels}, [folder.name for folder in class_dirs]


def _class_images(folder: Path) -> list[Path]:
    """The image files directly inside a class folder, sorted; names starting with "." are skipped and other files
    ignored. A folder inside it (a nested layout such as `train/<class>/`, or a symlink loop) is refused."""
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    nested = [path for path in entries if path.is_dir()]
    if nested:
        raise ValueError(
            f"class folder {folder} contains the folder {nested[0].name!r}; expected image files directly in each "
            "class folder (<root>/<class>/<image>): nested folders are not read"
        )
    return [path for path in entries if _is_image_or_dicom_file(path)]


def _is_image_or_dicom_file(path: Path) -> bool:
    """Whether a folder listing reads `path`: an image extension (`IMAGE_EXTENSIONS`) or a DICOM file (see
    [`is_dicom_file`]); only a file with another extension (not a text or data file's) or none is opened to tell."""
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom_file(path)


def _read_split_files(
    splits_dir: Path, image_root: Path, class_dirs: list[Path]
) -> tuple[list[Path], dict[str, np.ndarray], list[str]]:
    classes_file = splits_dir / "classes.txt"
    names = _nonempty_lines(classes_file) if classes_file.is_file() else [d.name for d in class_dirs]
    files, labels_per_split = [], {}
    for split, filename in (("train", "train.txt"), ("val", "val.txt"), ("test", "test.txt")):
        if not (splits_dir / filename).is_file():
            continue
        labels = []
        for number, line in enumerate(_nonempty_lines(splits_dir / filename), start=1):
            relative, _, label = line.rpartition(" ")
            path = image_root / relative.strip()
            if not relative or not label.lstrip("-").isdigit():
                raise ValueError(f"{splits_dir / filename}:{number}: expected 'relative/path label', got {line!r}")
            if not path.is_file():
                raise ValueError(f"{splits_dir / filename}:{number}: image file {path} does not exist")
            files.append(path)
            labels.append(int(label))
        labels_per_split[split] = np.asarray(labels, dtype=np.int64)
    return files, labels_per_split, names


def _nonempty_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _decode_image_file(
    path: Path, bits_stored: int | None = None, depths: _BitDepths | None = None
) -> Image.Image | np.ndarray:
    """Open and fully decode an image file (so truncation is caught now, not mid-training); a 16-bit greyscale image
    comes back as float32 `[1, 1, H, W]` in `[0, 1]`, scaled by its bit depth (see [`read_16bit_image`]), which
    `depths` records when given."""
    try:
        image = open_image(path)
    except DECODE_ERRORS as error:
        raise ValueError(f"cannot decode image file {path}: {decode_error_text(error)}") from error
    if image.mode not in _PIL_16BIT_MODES:
        return image
    values, bits = _scale_16bit(image, bits_stored, path)
    if depths is not None:
        depths.add(path, bits)
    return values[None, None]


class _BitDepths:
    """The bit depths the 16-bit PNG / TIFF of one data set were scaled by (each image's own maximum's when
    `bits_stored` is unset): a set read at different depths gets one warning (see [`warn`])."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._examples: dict[int, Path] = {}  # the first file of each depth

    def add(self, path: Path, bits: int) -> None:
        self._counts[bits] = self._counts.get(bits, 0) + 1
        self._examples.setdefault(bits, path)

    def warn(self) -> None:
        """Warn (once for the data set) when its images were scaled by more than one bit depth."""
        if len(self._counts) < 2:
            return
        found = ", ".join(
            f"{count} at {bits} bits (e.g. {self._examples[bits]})" for bits, count in sorted(self._counts.items())
        )
        deepest = max(self._counts)
        warnings.warn(
            f"16-bit images scaled by different bit depths, each guessed from its own maximum: {found}. The same "
            "stored value then reads darker or brighter from image to image (a 12-bit image whose maximum is below "
            "2048 reads twice as bright). State the data's bit depth: "
            f"MedicalPreprocessing(bits_stored={deepest}) (the scripts' --bits_stored {deepest}, e.g. 12 for 12-bit "
            "detectors); it is saved with the model (medical.bits_stored) and applied to new images alike",
            UserWarning,
            stacklevel=5,
        )


def _decode_files(
    files: list[Path],
    labels_per_split: dict[str, np.ndarray],
    medical: MedicalPreprocessing,
    patient_ids: list[str] | None = None,
    reading: ImagePreprocessing | None = None,
) -> tuple[list | torch.Tensor, dict[str, np.ndarray], np.ndarray | None]:
    """Decode `files` (listed split by split); a multi-frame DICOM gives one image per frame. Returns the images and
    the labels per split and group ids of [`_expand_frames`].

    With `reading` (a contract with an `image_size`), each file is preprocessed as soon as it is decoded, so only one
    full-size image is held at a time (a 2048x1664 mammogram is 13 MB as float32, its 32x32 result 4 KB), and the
    images come back as one float32 `[N, C, H, W]` tensor in `[-1, 1]`, equal to
    `preprocess_images(<every decoded image>, preprocessing=reading)`: with `num_channels=None`, grey images are
    repeated to 3 channels after their resize when any image is colour (the same values: each channel is resized
    alone). Without `reading`, the decoded images themselves (a list).

    Every file is tried: the files that cannot be read (decode errors, no pixel data, a colour DICOM, a truncated
    file, a localizer, ...) are refused together (see [`_refuse_unreadable_files`]), then series of mixed slice sizes
    (see [`_SeriesSizes`])."""
    images, patients, failures, sizes, depths = [], [], [], _SeriesSizes(), _BitDepths()
    for path, is_dicom in zip(files, _dicom_or_not(files, medical)):
        try:
            image, patient = _decode_file(path, is_dicom, medical, sizes, depths)
            images.append(image if reading is None else _preprocess_file(image, path, reading))
        except ValueError as error:
            failures.append(error if not failures else str(error))  # no traceback kept: it holds the image
            continue
        finally:
            image = None  # the full-size image is freed before the next file is decoded
        patients.append(patient)
    _refuse_unreadable_files(failures, len(files))
    sizes.check()
    depths.warn()
    frames = [1 if isinstance(image, Image.Image) else len(image) for image in images]
    if reading is not None:
        images = _same_channels(images, reading, files)
    return images, *_expand_frames(files, labels_per_split, frames, patient_ids or patients)


def _decode_file(
    path: Path, is_dicom: bool, medical: MedicalPreprocessing, sizes: _SeriesSizes, depths: _BitDepths
) -> tuple[Image.Image | np.ndarray, str | None]:
    """One file decoded (a DICOM windowed by `medical`, its size checked against its series in `sizes`; a 16-bit
    image's bit depth recorded in `depths`) and its PatientID (None for a non-DICOM file)."""
    if not is_dicom:
        return _decode_image_file(path, medical.bits_stored, depths), None
    dicom = read_dicom(path)
    _refuse_localizer(path, dicom.metadata)
    sizes.add(path, dicom.values.shape[-2:], dicom.metadata["SeriesInstanceUID"])
    return window_channels(dicom, medical.windows, medical.padding_fill), dicom.metadata["PatientID"]


# Unreadable files named in one error; the rest are counted.
_FAILURES_SHOWN = 20


def _refuse_unreadable_files(failures: list[ValueError | str], total: int) -> None:
    """Refuse the files that cannot be read, all at once (`failures`: the first error, then the others' messages):
    one failure raises its own error; several, one error naming the first `_FAILURES_SHOWN` (each message names its
    file) and counting the rest."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        shown = "; ".join(str(error) for error in failures[:_FAILURES_SHOWN])
        more = f"; and {len(failures) - _FAILURES_SHOWN} more" if len(failures) > _FAILURES_SHOWN else ""
        raise ValueError(
            f"{len(failures)} of {total} image files cannot be read: {shown}{more}. Expected every file to be a "
            "readable image: remove or replace these files"
        )


def _preprocess_file(image: Any, path: Path, reading: ImagePreprocessing) -> torch.Tensor:
    """One decoded file's images through `reading` (its own channels when `reading.num_channels` is None: see
    [`_same_channels`]); an error names the file."""
    try:
        return preprocess_images(image, preprocessing=reading)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _same_channels(images: list[torch.Tensor], reading: ImagePreprocessing, files: list[Path]) -> torch.Tensor:
    """`files` preprocessed one by one (`images`), as one tensor: with `num_channels=None`, 3 channels if any file is
    colour (a grey image's channel repeated; with a warning naming the colour files, see [`_warn_mixed_channels`]),
    else 1, as [`preprocess_images`] decides for a whole batch."""
    if reading.num_channels is None and any(image.shape[1] == 3 for image in images):
        _warn_mixed_channels([image.shape[1] for image in images], [str(path) for path in files])
        _warn_grey_stored_as_colour(images)
        images = [image.repeat(1, 3, 1, 1) if image.shape[1] == 1 else image for image in images]
    return torch.cat(images)


# Channels closer than this (on [-1, 1], 2 levels of 8 bits) are equal: JPEG's chroma rounding of a grey image.
_GREY_TOLERANCE = 4 / 255


def _warn_grey_stored_as_colour(images: list[torch.Tensor], stacklevel: int = 6) -> None:
    """Warn when every image is colour but grey (its three channels equal, as NDSB's RGB JPEGs): with the channel
    count inferred the model becomes 3-channel for grey data, and reads another instrument's colour images as colour
    it never saw."""
    if not all(image.shape[1] == 3 for image in images):
        return
    if any((image - image.mean(1, keepdim=True)).abs().amax() > _GREY_TOLERANCE for image in images):
        return
    warnings.warn(
        f"all {len(images)} images are grey stored as colour (their three channels equal): with the channel count "
        "inferred (num_channels=None) they are read, and the model trained, as 3 channels. State the channels to "
        "silence this: num_channels=1 (the scripts' --num_channels 1) reads them as grey, the model then reads any "
        "image as grey; num_channels=3 keeps 3 channels",
        UserWarning,
        stacklevel=stacklevel,  # the caller of load_image_classification_data
    )


# Colour files named in the warning about grey and colour images mixed.
_COLOUR_SHOWN = 5


def _warn_mixed_channels(channels: list[int], names: list[str], stacklevel: int = 6) -> None:
    """Warn when grey (1-channel) and colour (3-channel) images are mixed and the channel count is inferred: one
    colour image (a screenshot among greyscale scans) makes the whole data set, and the model, 3-channel."""
    colour = [name for name, count in zip(names, channels) if count == 3]
    if not colour or len(colour) == len(names):
        return
    more = len(colour) - _COLOUR_SHOWN
    shown = ", ".join(colour[:_COLOUR_SHOWN]) + (f" and {more} more" if more > 0 else "")
    warnings.warn(
        f"{len(colour)} of {len(names)} images are colour ({shown}), the others grey: with the channel count inferred "
        "(num_channels=None) every image is read as 3 channels (a grey image's channel repeated) and the model is "
        "3-channel. If the colour images are strays (screenshots, exports), remove them; state the channels to "
        "silence this: num_channels=1 (the scripts' --num_channels 1) reads them all as grey, num_channels=3 keeps "
        "colour",
        UserWarning,
        stacklevel=stacklevel,  # the caller of load_image_classification_data
    )


def _list_frames(
    files: list[Path],
    labels_per_split: dict[str, np.ndarray],
    medical: MedicalPreprocessing,
    patient_ids: list[str] | None = None,
) -> tuple[list[Path], list[int | None], dict[str, np.ndarray], np.ndarray | None]:
    """What [`_decode_files`] gives, from the DICOM headers alone (no pixel decoded; `data.streaming` reads the images
    lazily): one row per image, the file and its frame (`None` for a non-DICOM file), and [`_expand_frames`]'s labels
    and group ids. DICOM files that cannot be decoded (no pixel data, no decoder installed) are refused now, as is
    DICOM mixed with other image files for `medical`'s windows (see [`_dicom_or_not`])."""
    kinds = _dicom_or_not(files, medical)
    headers, failures = {}, []
    for path, is_dicom in zip(files, kinds):
        if is_dicom:
            try:
                headers[path] = read_dicom_header(path)
                _refuse_localizer(path, headers[path].metadata)
            except ValueError as error:
                failures.append(error if not failures else str(error))
    _refuse_unreadable_files(failures, len(files))
    _check_dicom_sizes_per_folder(
        [(path, header.size, header.metadata["SeriesInstanceUID"]) for path, header in headers.items()]
    )
    frames = [headers[path].num_frames if path in headers else 1 for path in files]
    patients = [headers[path].metadata["PatientID"] if path in headers else None for path in files]
    rows = [path for path, count in zip(files, frames) for _ in range(count)]
    frame_of_row = [frame if path in headers else None for path, count in zip(files, frames) for frame in range(count)]
    return rows, frame_of_row, *_expand_frames(files, labels_per_split, frames, patient_ids or patients)


def _dicom_or_not(files: list[Path], medical: MedicalPreprocessing) -> list[bool]:
    """Whether each file is DICOM (see [`is_dicom_file`]). DICOM and other image files are read together through one
    window (X-rays as DICOM beside 16-bit PNG: one grey channel each), but not through several (`medical`'s windows):
    a PNG beside the slices (a screenshot, an export) has no Hounsfield units to window
    into several channels, so its grey would be copied into each and learnt as one more slice. `predict` applies the
    same rule file by file (such an image file is an errors-file row). The error names one file of each kind, before
    any is decoded."""
    kinds = [is_dicom_file(path) for path in files]
    windows = medical.to_dict()["windows"]
    if any(kinds) and not all(kinds) and len(windows) > 1:
        dicom, other = files[kinds.index(True)], files[kinds.index(False)]
        raise ValueError(
            f"images: DICOM and other image files mixed, read through {len(windows)} DICOM windows {windows}: {dicom} "
            f"is DICOM but {other} is not; "
            "an image file has no Hounsfield units to window into several channels (its grey would be copied into "
            "each). Expected DICOM files only, or one window (--window). Move the other files out, or convert them "
            "all to one kind"
        )
    return kinds


def _expand_frames(
    files: list[Path], labels_per_split: dict[str, np.ndarray], frames: list[int], patients: list[str | None]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The labels per split repeated per frame (each frame of a multi-frame DICOM has its file's label), and a group
    id per image: `patients` (one per file: the CSV's column, else the DICOM PatientID; a file without one is its own
    group), or None when no file names one."""
    frames = np.asarray(frames)
    bounds = np.cumsum([0] + [len(labels) for labels in labels_per_split.values()])
    labels_per_split = {
        split: np.repeat(labels, frames[bounds[i]: bounds[i + 1]])
        for i, (split, labels) in enumerate(labels_per_split.items())
    }
    if all(patient is None for patient in patients):
        return labels_per_split, None
    ids = [patient if patient is not None else f"file:{path}" for path, patient in zip(files, patients)]
    return labels_per_split, np.repeat(np.asarray(ids, dtype=object), frames)


class _SeriesSizes:
    """The slices of one volume share a size: DICOM files of one folder and one SeriesInstanceUID (files without one:
    those of the folder together) must have one size, recorded file by file as they are read and checked once all are
    (`check`), so that one odd slice is named as the odd one whatever the order of the files. Files of different
    series may differ: independent 2D images (mammograms or radiographs from different detectors, each its own
    series) are resized like any image."""

    def __init__(self) -> None:
        self._paths: dict[tuple[Path, str | None], dict[tuple[int, int], list[str]]] = {}

    def add(self, path: Path, size: tuple[int, int], series: str | None) -> None:
        sizes = self._paths.setdefault((path.parent, series), {})
        sizes.setdefault(tuple(int(side) for side in size), []).append(str(path))

    def check(self) -> None:
        """Refuse every series of mixed sizes in one error: each size, its file count and up to 3 of its files, the
        most common size first."""
        mixed = [(key, sizes) for key, sizes in self._paths.items() if len(sizes) > 1]
        if not mixed:
            return
        described = []
        for (folder, series), sizes in mixed:
            where = f"folder {folder}, series {series}" if series else f"folder {folder} (no SeriesInstanceUID)"
            counts = sorted(sizes.items(), key=lambda item: -len(item[1]))
            listed = ", ".join(
                f"{h}x{w}: {len(paths)} file{'s' if len(paths) > 1 else ''} ({', '.join(paths[:3])}"
                f"{', ...' if len(paths) > 3 else ''})"
                for (h, w), paths in counts
            )
            described.append(f"{where}: mixed slice sizes (height x width): {listed}")
        raise ValueError(
            "; ".join(described) + "; expected one size per series (a scout or a second series mixed in?). Move the "
            "odd files out, or resample them to one size first"
        )


def _refuse_localizer(path: Path, metadata: dict) -> None:
    """A scout / localiser (ImageType LOCALIZER) is not an image of its folder's class: the per-series size check no
    longer catches one stored as its own series."""
    image_type = metadata.get("ImageType") or ()
    if "LOCALIZER" in image_type:
        raise ValueError(
            f"DICOM file {path} is a localizer (scout) image (ImageType {'/'.join(image_type)}); expected the images of "
            "a series, read as images of their folder's class: remove it"
        )


def _check_dicom_sizes_per_folder(sizes: list[tuple[Path, tuple[int, int], str | None]]) -> None:
    """The DICOM files `(path, (height, width), SeriesInstanceUID)` have one size per series of a folder (see
    [`_SeriesSizes`])."""
    check = _SeriesSizes()
    for path, size, series in sizes:
        check.add(path, size, series)
    check.check()


# --- CSV of paths -----------------------------------------------------------------------------------


def _label_order(name: str) -> tuple:
    """Integers numerically ("2" before "10"), then names alphabetically."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _read_csv(
    path: Path,
    class_names: Sequence[str] | None,
    patient_id_column: str | None,
    medical: MedicalPreprocessing,
    reading: ImagePreprocessing | None = None,
) -> _RawData:
    """A CSV with the columns `path` (relative to the CSV), `label` (a class name) and optionally patient ids; the
    images preprocessed by `reading` as they are decoded, when given (see [`_decode_files`])."""
    files, labels, names, patients = _list_csv(path, class_names, patient_id_column)
    images, labels_per_split, groups = _decode_files(files, {"train": labels}, medical, patients, reading)
    labels, names, splits = _labels_and_names(labels_per_split, names, f"CSV {path}")
    return _RawData(images, labels, names, splits, DEFAULT_FOLDER_SIZE, groups, preprocessed=reading is not None)


def _list_csv(
    path: Path, class_names: Sequence[str] | None, patient_id_column: str | None
) -> tuple[list[Path], np.ndarray, list[str], list[str] | None]:
    """The image files a CSV names, their labels, the class names and the patient ids (None without that column);
    nothing is decoded (`data.streaming` reads the files lazily)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [column for column in ("path", "label") if column not in columns]
    if missing:
        raise ValueError(f"CSV {path}: missing column(s) {missing}; expected a header with path,label[,patient_id], "
                         f"got {columns}")
    if patient_id_column is not None and patient_id_column not in columns:
        raise ValueError(f"CSV {path}: patient_id_column {patient_id_column!r} is not a column; columns: {columns}")
    if patient_id_column is None and "patient_id" in columns:
        patient_id_column = "patient_id"
    if not rows:
        raise ValueError(f"CSV {path}: no rows; expected one row per image")
    found = sorted({row["label"] for row in rows}, key=_label_order)
    names = list(class_names) if class_names is not None else found
    ids = {name: i for i, name in enumerate(names)}
    files, labels, patients = [], [], []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        file = path.parent / (row["path"] or "")
        if not row["path"] or not file.is_file():
            raise ValueError(f"CSV {path}:{line}: image file {file} does not exist")
        if row["label"] not in ids:
            raise ValueError(f"CSV {path}:{line}: label {row['label']!r} is not one of the classes {names}")
        if patient_id_column is not None and not row[patient_id_column]:
            raise ValueError(f"CSV {path}:{line}: empty {patient_id_column!r}; expected a patient id on every row")
        files.append(file)
        labels.append(ids[row["label"]])
        patients.append(row[patient_id_column] if patient_id_column is not None else None)
    return files, np.asarray(labels, dtype=np.int64), names, patients if patient_id_column else None


# --- datasets ---------------------------------------------------------------------------------------

_HF_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def canonical_split_name(name: str) -> str:
    """`"val"` for `"validation"` (the Hub's name for it, which `to_datasets` writes); any other name as it is."""
    return _HF_SPLIT_NAMES.get(name, name)


def _hf_splits(source: Any, image_column: str | None, label_column: str | None) -> tuple[dict, str, str, Any]:
    """The splits of a `datasets.Dataset` (train only) or `DatasetDict`, checked: known split names, one Image and one
    ClassLabel column (found or named), the same label feature in every split. Returns `(splits, image column,
    label column, label feature)`."""
    import datasets

    parts = {"train": source} if isinstance(source, datasets.Dataset) else dict(source)
    unknown = [name for name in parts if name not in _HF_SPLIT_NAMES]
    if unknown or "train" not in parts or ("val" in parts and "validation" in parts):
        raise ValueError(
            f"DatasetDict splits {sorted(parts)}: expected 'train' and optionally one of 'validation'/'val', and 'test'"
        )
    features = parts["train"].features
    image_column = _find_column(features, image_column, datasets.Image, "image")
    label_column = _find_column(features, label_column, datasets.ClassLabel, "label")
    for name, part in parts.items():
        if part.features.get(label_column) != features[label_column]:
            raise ValueError(
                f"split {name!r}: label column {label_column!r} is {part.features.get(label_column)!r}; "
                f"expected {features[label_column]!r} as in 'train'"
            )
    return parts, image_column, label_column, features[label_column]


def _read_hf_dataset(source: Any, image_column: str | None, label_column: str | None) -> _RawData:
    import datasets

    parts, image_column, label_column, label_feature = _hf_splits(source, image_column, label_column)
    images, labels = [], {}
    for name, part in parts.items():
        images += _decode_column(part.cast_column(image_column, datasets.Image(decode=True)), image_column, name)
        labels[_HF_SPLIT_NAMES[name]] = np.asarray(part[label_column], dtype=np.int64)
    all_labels, names, splits = _labels_and_names(labels, label_feature.names, "dataset")
    return _RawData(images, all_labels, names, splits)


def _pil_channels(image: Image.Image) -> int:
    """The channels [`preprocess_images`] reads a PIL image as: 1 for grey modes (16-bit and float included), else 3."""
    return 1 if image.mode in _GREY_PIL_MODES else 3


_GREY_PIL_MODES = {"1", "L", "LA", "La", "F"} | _PIL_16BIT_MODES


def split_columns(dataset: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The image and label columns of one non-empty `datasets.Dataset` split, found by feature type unless named."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset split, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("expected a non-empty dataset, got 0 rows")
    image_column = _find_column(dataset.features, image_column, datasets.Image, "image")
    return image_column, _find_column(dataset.features, label_column, datasets.ClassLabel, "label")


def read_classification_split(
    dataset: Any, image_column: str | None = None, label_column: str | None = None
) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """One `datasets.Dataset` split as (decoded PIL images, integer labels, ClassLabel names), with the image and
    label columns found by feature type as in [`load_image_classification_data`]."""
    import datasets

    image_column, label_column = split_columns(dataset, image_column, label_column)
    images = _decode_column(dataset.cast_column(image_column, datasets.Image(decode=True)), image_column, "evaluation")
    return images, np.asarray(dataset[label_column], dtype=np.int64), list(dataset.features[label_column].names)


def _find_column(features: Any, name: str | None, feature_type: type, role: str) -> str:
    columns = {column: repr(feature) for column, feature in features.items()}
    expected = feature_type.__name__
    if name is not None:
        if name not in features:
            raise ValueError(f"{role} column {name!r} not found; columns: {columns}")
        if not isinstance(features[name], feature_type):
            raise ValueError(f"{role} column {name!r} has type {features[name]!r}; expected {expected}")
        return name
    matches = [column for column, feature in features.items() if isinstance(feature, feature_type)]
    if len(matches) != 1:
        found = "no" if not matches else f"several ({matches})"
        raise ValueError(
            f"{found} {expected} column for the {role}s; columns: {columns}. Pass {role}_column= naming "
            f"one {expected} column (cast an integer column with dataset.cast_column(name, ClassLabel(names=...)))"
        )
    return matches[0]


def _decode_column(dataset: Any, column: str, split: str) -> list[Image.Image]:
    images = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for example in dataset.select_columns([column]):
                if example[column] is None:
                    raise ValueError(f"split {split!r} row {len(images)}: column {column!r} has no image")
                images.append(example[column])
    except DECODE_ERRORS as error:
        raise ValueError(
            f"split {split!r} row {len(images)}: cannot decode column {column!r}: {decode_error_text(error)}"
        ) from error
    return images


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def to_datasets(labeled: dict[str, LabeledImages]) -> Any:
    """Convert `{"train", "val", "test"}` splits to a `datasets.DatasetDict`.

    Columns: `image` (`Image`, uint8 PNG: 1 channel -> `L`, 3 -> `RGB`) and `label`
    (`ClassLabel` with the class names). `val` is named `validation` as on the Hub. Loading the
    result back with [`load_image_classification_data`] gives the same images within 1/127.5.
    """
    import datasets

    result = {}
    for split, data in labeled.items():
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=data.class_names)})
        pixels = ((data.images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        images = [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
        result["validation" if split == "val" else split] = datasets.Dataset.from_dict(
            {"image": images, "label": data.labels.tolist()}, features=features
        )
    return datasets.DatasetDict(result)


# --------------------------------------------------------------------------------------------------
# Script arguments
# --------------------------------------------------------------------------------------------------


def load_data_from_args(args: Any) -> dict[str, LabeledImages]:
    """[`load_image_classification_data`] from the flags of [`add_data_args`] (and `--seed`)."""
    return load_image_classification_data(
        args.dataset, image_size=args.image_size, num_channels=args.num_channels, medical=_medical_from_args(args),
        **splits_from_args(args), **fit_from_args(args),
    )  # fmt: skip


def splits_from_args(args: Any) -> dict[str, Any]:
    """`class_names`, `val_fraction`, `test_fraction` and `seed`: the classes and the splits carved when the data
    has none."""
    return {
        "class_names": args.class_names, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
        "seed": args.seed,
    }  # fmt: skip


def fit_from_args(args: Any) -> dict[str, Any]:
    """`resize_mode`, `pad_value` and `normalize_background` from the flags of [`add_data_args`], checked."""
    return fit_options(args.resize_mode, args.pad_value, args.normalize_background)


def _medical_from_args(args: Any) -> MedicalPreprocessing:
    """The DICOM windows `--window` names (default: each file's own) and the bit depth `--bits_stored` of 16-bit
    files (default: each file's own)."""
    windows = ("file",) if args.window is None else parse_windows(args.window)
    return MedicalPreprocessing(windows=windows, bits_stored=args.bits_stored)

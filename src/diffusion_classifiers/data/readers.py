"""Image-classification datasets in, seeded `train` / `val` / `test` [`LabeledImages`] out.

[`LabeledImages`] holds preprocessed images, their integer labels and the class names, validated together.

[`load_image_classification_data`] reads scikit-learn's digits, MedMNIST-style `.npz` files, IDX (MNIST /
Fashion-MNIST) directories, image folders (DICOM and 16-bit PNG / TIFF included), CSV files of
`path,label[,patient_id]` and `datasets.Dataset` / `datasets.DatasetDict` objects, validates them (empty data,
out-of-range labels, NaN, corrupt files) before any long computation, preprocesses them with [`preprocess_images`]
and carves the splits the source lacks with [`stratified_split`], or [`stratified_group_split`] when patient ids are
known (each patient on one side).

The sources are read by `array_files` (digits, `.npz`, IDX), `image_listing` and `file_decoding` (image folders and CSV
files: which files, then their images and DICOM frames) and `hf_datasets`, each into a [`RawData`]
(`labeled_images`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .array_files import read_digits, read_idx_directory, read_npz
from .arguments import columns_from_args
from .dicom import MedicalPreprocessing, is_dicom_file
from .windows import parse_windows
from .file_decoding import _BitDepths, decode_files
from .hf_datasets import dataset_name, hf_splits, open_saved_dataset, read_hf_dataset
from .image_listing import list_csv, list_folder_files, list_image_folder, list_unlabeled_images
from .labeled_images import ONE_SET, SPLITS, LabeledImages, RawData, labels_and_names
from .preprocessing import ImagePreprocessing, _describe, check_images_fit_in_memory, fit_options, preprocess_images
from .split_record import ANONYMISED_DICOM_RULE, check_anonymised_dicom_groups
from .splits import (
    _FewImagesWarning, check_split_fractions, stratified_group_split, stratified_split,
)
from ..validation import check_class_names, check_name_list, check_seed

__all__ = [
    "DEFAULT_FOLDER_SIZE",
    "UNLABELED",
    "describe_splits",
    "load_data_from_args",
    "load_image_classification_data",
    "own_class_names",
    "to_datasets",
]

DEFAULT_FOLDER_SIZE = 32
UNLABELED = "unlabeled"  # the one class of an unlabeled folder's images (`load_image_classification_data(unlabeled=)`)


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
    transparency_fill: float | None = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    unlabeled: bool = False,
    one_set: bool = False,
) -> dict[str, LabeledImages]:
    r"""
    Load an image-classification dataset as `{"train", "val", "test"}` [`LabeledImages`] (an unlabeled folder:
    `{"train"}`; `one_set`: `{"all"}`).

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
              patient on one side (a file without one, anonymised, is grouped by its StudyInstanceUID, else its
              SeriesInstanceUID, with a warning; images naming none of them are their own group).
            * a `.csv` file with a header and the columns `path` (relative to the CSV's folder), `label` (a class
              name) and optionally a patient id column (`patient_id`, or the one `patient_id_column` names): images
              read as in an image folder; classes are `class_names` or the sorted labels (numerically if all are
              integers); with patient ids, the carved splits keep each patient on one side.
            * a `datasets.Dataset` or `datasets.DatasetDict` with an `Image` column and a
              `ClassLabel` column (found by feature type, or named by `image_column` /
              `label_column`); splits `train`, `validation` or `val`, `test`; or a folder one was saved to
              (`save_to_disk`).
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
            the classes in label-id order (a CSV label outside them is refused). An image folder and a `datasets`
            source carry their own names and order ([`own_class_names`]): `class_names` (a model's recorded ones,
            `pipe.loader_kwargs`) are accepted as a check when they are those, in that order, else refused.
            Default: `"0".."K-1"` with `K = max(label) + 1`, and then every label in `0..K-1` must occur: labels
            `{0, 7}` are refused rather than read as 8 classes, unless `class_names` names all 8.
        image_column, label_column (`str`, *optional*):
            column names for `datasets` sources; default: the one `Image` and the one `ClassLabel` column.
        medical ([`MedicalPreprocessing`], *optional*):
            how DICOM files are windowed (one channel per window) and 16-bit PNG / TIFF scaled; default
            `MedicalPreprocessing()`: each DICOM's own window, 16-bit images by their maximum's bit depth (a
            `UserWarning` when the images of the data set get different ones: state `bits_stored`; when they all get
            one, the splits' contract records it as `medical.guessed_bits_stored`, so that images read later at
            another guessed depth are warned about).
        patient_id_column (`str`, *optional*):
            for a CSV source, the column of patient (group) ids; it must exist. Default: `patient_id` if present.
        resize_mode (`str`, *optional*, defaults to `"stretch"`), pad_value (`float`, *optional*, defaults to -1.0),
        normalize_background (`bool`, *optional*, defaults to `False`), transparency_fill (`float`, *optional*):
            how images meet `image_size`, whether their bright-field background is made white and what their
            transparent pixels are composited onto (see [`ImagePreprocessing`]); saved in the splits' contract, so a
            model trained on them applies the same.
        anonymised_dicom_groups (`str`, *optional*, defaults to `"study_or_series"`):
            how DICOM files without a PatientID are grouped in the carved splits: `"study_or_series"` (by study, else
            series), or `"file"` (each file alone, with a warning), as versions before it was recorded did: the rule
            of a model whose `data_splits.json` lacks it, given by `data.resolve_split_args`.

        unlabeled (`bool`, *optional*, defaults to `False`):
            read every image and DICOM file of the image folder `source` and its subfolders at any depth, class
            folders or not, without labels ([`list_unlabeled_folder`]), all of them into `"train"` (no val or test
            carved; one class, `"unlabeled"`): the pool of a label-free trainer (the DDPM U-Net, RC-DiT).
        one_set (`bool`, *optional*, defaults to `False`):
            every image of the source as one set, `{"all": ...}` (`ONE_SET`): its own splits joined in their order,
            none carved (`val_fraction`, `test_fraction` and `seed` unused): an external test set scored whole
            (`diffusion-classifiers evaluate --split all`).

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
    check_split_fractions(val_fraction, test_fraction, carved=not unlabeled)
    check_seed(seed, "seed")
    check_name_list(class_names, "class_names")
    check_anonymised_dicom_groups(anonymised_dicom_groups)
    where = dataset_name(source)
    source = open_saved_dataset(source)
    kind = _source_kind(source)
    if unlabeled and kind != "folder":
        raise ValueError(f"unlabeled: expected an image folder (its images read without labels), got a {kind} source")
    if class_names is not None and (unlabeled or kind in ("folder", "datasets")):
        check_names_of_own_classes(source, class_names, unlabeled, image_column, label_column)
        class_names = None  # the source's own, the same
    if patient_id_column is not None and kind != "csv":
        raise ValueError(f"patient_id_column applies to CSV sources only, not to a {kind} source")
    medical = MedicalPreprocessing() if medical is None else medical
    medical.check_channels(num_channels)
    fit = fit_options(resize_mode, pad_value, normalize_background, transparency_fill)
    # the readers' float arrays (digits, .npz, windowed DICOM, 16-bit files) are in [0, 1]; checked before any read
    reading = ImagePreprocessing(image_size, num_channels, input_range="[0, 1]", medical=medical, **fit)
    if (image_column is not None or label_column is not None) and kind != "datasets":
        raise ValueError(f"image_column / label_column apply to datasets sources only, not to a {kind} source")
    if kind == "digits":
        raw = read_digits(class_names)
    elif kind == "npz":
        raw = read_npz(Path(source), class_names)
    elif kind == "idx":
        raw = read_idx_directory(Path(source), class_names)
    elif kind in ("folder", "csv"):  # each file preprocessed as it is decoded: one full-size image held at a time
        files_reading = reading if image_size is not None else replace(reading, image_size=DEFAULT_FOLDER_SIZE)
        if unlabeled:
            raw = _read_unlabeled_folder(Path(source), medical, files_reading)
        elif kind == "folder":
            raw = _read_image_folder(Path(source), medical, files_reading, anonymised_dicom_groups)
        else:
            raw = _read_csv(
                Path(source), class_names, patient_id_column, medical, files_reading, anonymised_dicom_groups
            )
    else:
        raw = read_hf_dataset(source, image_column, label_column, reading, where)  # each row preprocessed as decoded
    if image_size is None:
        reading = replace(reading, image_size=raw.default_image_size)
    if not raw.preprocessed:
        check_images_fit_in_memory(len(raw.images), reading)
    images = raw.images if raw.preprocessed else preprocess_images(raw.images, preprocessing=reading)
    if unlabeled or one_set:
        splits = {"train" if unlabeled else ONE_SET: LabeledImages(images, raw.labels, raw.class_names)}
    else:
        splits = _assemble(images, raw, val_fraction, test_fraction, seed)
    # What a model trained on these tensors is saved with: the same steps, for files and [-1, 1] tensors alike.
    contract = ImagePreprocessing(tuple(images.shape[-2:]), images.shape[1], medical=_recorded(medical, raw), **fit)
    for split in splits.values():
        split.preprocessing = contract
    return splits


def own_class_names(source: Any, image_column: str | None = None, label_column: str | None = None) -> list[str] | None:
    """The class names, in label-id order, that a source carries with its images, found without decoding one: an
    image folder's class subfolders (or `splits/classes.txt`), a `datasets` source's ClassLabel (`label_column`, else
    its one ClassLabel column); None for a source whose label ids `class_names` name (digits, `.npz`, IDX, a CSV)."""
    where = dataset_name(source)
    source = open_saved_dataset(source)
    kind = _source_kind(source)
    if kind == "datasets":
        return list(hf_splits(source, image_column, label_column, where)[3].names)
    if kind != "folder":
        return None
    with warnings.catch_warnings():  # the reader warns about the folder (files skipped, ...) when it reads it
        warnings.simplefilter("ignore")
        return list_image_folder(Path(source))[2]


def check_names_of_own_classes(
    source: Any, class_names: Sequence[str], unlabeled: bool, image_column: str | None, label_column: str | None
) -> None:
    """`class_names` given for a source that carries its own (an image folder, a `datasets` source) are accepted as
    a check when they are its own names in its order (a model's recorded names, `pipe.loader_kwargs`, read on another
    copy of its data: QA, a model trained on a CSV refused its images as a folder or a saved dataset), else refused:
    they can neither rename nor renumber its classes, and a training record of them would be false. Unlabeled data
    takes none; a source that names no classes of its own (digits, `.npz`, IDX, a CSV) is left to its reader."""
    if unlabeled:
        raise ValueError("class_names: unlabeled data has no classes to name; expected class_names=None")
    own = own_class_names(source, image_column, label_column)
    if own is not None and [str(name) for name in class_names] != own:
        raise ValueError(
            f"class_names: {list(class_names)} are not the source's own classes {own} in their order; an image folder "
            "(its class subfolders, sorted as text) and a datasets source (its ClassLabel) name and number their "
            "classes themselves: leave class_names out (a model's recorded ones from another copy of its data, "
            "pipe.loader_kwargs: the splits are then carved by this copy's order, and images the model was trained "
            "on are refused when it is evaluated)"
        )


def _recorded(medical: MedicalPreprocessing, raw: RawData) -> MedicalPreprocessing:
    """`medical` with whether the data held DICOM files (`dicom_files`), and the bit depth its 16-bit files were all
    scaled by, guessed from their maxima (`bits_stored` unset), recorded as `guessed_bits_stored`: informational, it
    changes no pixel, but images read later at another guessed depth are warned about (see
    `sixteen_bit.check_bit_depths`). No depth is recorded for files of different depths (warned about as they are
    read) or without 16-bit files."""
    medical = replace(medical, dicom_files=raw.dicom_files)
    if medical.bits_stored is not None:
        return medical
    return replace(medical, guessed_bits_stored=raw.guessed_bits_stored)


def check_source_exists(source: str | os.PathLike, name: str = "source") -> Path:
    """`source` as a `Path`, refused with what the loaders read when nothing is there (a Hub dataset id too: they
    read local data only, so the message says how to save one locally). An empty name is refused: `Path("")` is
    the working directory (QA: `--dataset ""` trained on the folder the command ran in)."""
    if not str(source).strip():
        raise ValueError(
            f"{name}: got an empty name {str(source)!r}; expected 'digits', a .npz file, a .csv of paths, an IDX "
            "directory, an image folder or a saved datasets folder (\".\" for the working directory)"
        )
    path = Path(source)
    if path.exists():
        return path
    hub_hint = ""
    if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        hub_hint = (
            "; a Hub dataset is not downloaded here: save it once with "
            f"datasets.load_dataset({str(source)!r}).save_to_disk(DIR) and pass DIR"
        )
    raise ValueError(
        f"{name}: {str(source)!r} does not exist; expected 'digits', a .npz file, a .csv of paths, an IDX directory, an "
        f"image folder or a folder a datasets Dataset / DatasetDict was saved to{hub_hint}"
    )


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
    path = check_source_exists(source)
    if path.is_file():
        if path.suffix.lower() not in (".npz", ".csv"):  # .CSV and .NPZ too, as Windows tools name them
            tabular = (  # QA: a parquet shard of a Hub data set, refused without a way out
                f" (a {path.suffix} file of a data set: save datasets.load_dataset({path.suffix[1:].lower()!r}, "
                f"data_files={str(path)!r}) with save_to_disk and pass that folder)"
                if path.suffix.lower() in (".parquet", ".arrow") else ""
            )  # fmt: skip
            raise ValueError(f"source: {str(path)!r} is a file; expected a .npz or .csv file or a directory{tabular}")
        return path.suffix[1:].lower()
    if any((path / name).exists() for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")):
        return "idx"
    return "folder"


def _assemble(
    images: torch.Tensor, raw: RawData, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, LabeledImages]:
    """Fill in missing test / val splits (stratified, seeded) and build the LabeledImages."""
    splits = carve_splits(raw, val_fraction, test_fraction, seed)
    result = {}
    for name in SPLITS:
        index = torch.from_numpy(splits[name])
        result[name] = LabeledImages(images[index], torch.from_numpy(raw.labels[splits[name]]), raw.class_names)
    return result


def carve_splits(raw: RawData, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
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
                try:
                    kept, split = stratified_group_split(raw.labels[pool], raw.groups[pool], fraction, seed)
                except ValueError as error:
                    left = " left after the 'test' split" if name == "val" and "test" not in raw.splits else ""
                    raise ValueError(f"carving the {name!r} split from the patients{left}: {error}") from error
        _warn_missing_classes(raw, pool, pool[split], name, fraction)
        return pool[kept], pool[split]

    _check_patients_for_carving(raw, [name for name in ("test", "val") if name not in splits])
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


def _check_patients_for_carving(raw: RawData, carved: list[str]) -> None:
    """Each carved split keeps its patients to itself, as train does: too few patients is refused before any carving,
    not after the first split took what the second needed."""
    if raw.groups is None or not carved:
        return
    needed = len(carved) + 1
    values, counts = np.unique(raw.groups[raw.splits["train"]], return_counts=True)
    if len(values) < needed:
        shared = ", ".join(f"{value!r} ({count} images)" for value, count in zip(values.tolist(), counts.tolist()))
        raise ValueError(
            f"groups: {len(values)} distinct patients (groups: {shared}), read from a CSV's patient_id column or the "
            f"DICOM files' PatientID (their StudyInstanceUID where it is empty); carving {' and '.join(carved)} splits "
            f"with each patient on one side needs at least {needed} (one for train and one for each carved split). "
            "Data anonymised to one PatientID for every file: give a CSV of path,label,patient_id with the true "
            "patients; else give more patients, or splits of your own (an image folder with splits/{train,val,test}.txt)"
        )


MISSING_CLASSES_NAMED = 5  # a split missing more classes names these first ones and counts the rest


def _warn_missing_classes(raw: RawData, pool: np.ndarray, split: np.ndarray, name: str, fraction: float) -> None:
    """Warn, naming the split and each class with its image (and patient) counts, when the `split` carved from `pool`
    holds no image of a class the pool has (a class of few patients: a grouped split is cut into round(1 / fraction)
    folds of whole patients); its metrics then say nothing of that class."""
    missing = sorted(set(np.unique(raw.labels[pool]).tolist()) - set(np.unique(raw.labels[split]).tolist()))
    if not missing:
        return
    described = []
    for label in missing[:MISSING_CLASSES_NAMED]:
        members, left = np.flatnonzero(raw.labels == label), pool[raw.labels[pool] == label]
        carved_from = "" if len(left) == len(members) else f"; {_count(raw, left)} were left for {name!r} after 'test'"
        described.append(f"{raw.class_names[label]!r} (label {label}), which has {_count(raw, members)}{carved_from}")
    classes, them = _classes_named(described, len(missing))  # one warning (QA: 121 classes, 40 warnings a split)
    warnings.warn(
        f"the carved {name!r} split holds no image of {classes}: too few for {name}_fraction={fraction}, so the "
        f"{name!r} metrics cannot measure {them}. Give more images{' and patients' if raw.groups is not None else ''} "
        f"of {them}, or a larger {name}_fraction (the scripts' --{name}_fraction)",
        UserWarning,
        stacklevel=6,  # the caller of load_image_classification_data / streaming_image_classification_data
    )


def _count(raw: RawData, indices: np.ndarray) -> str:
    """`"8 images of 4 patients (groups)"`: the images at `indices` and their groups, when known."""
    def plural(number: int, noun: str) -> str:
        return f"{number} {noun}{'s' if number != 1 else ''}"

    if raw.groups is None:
        return plural(len(indices), "image")
    return f"{plural(len(indices), 'image')} of {plural(len(np.unique(raw.groups[indices])), 'patient')} (groups)"


def _warn_untrained_classes(raw: RawData, splits: dict[str, np.ndarray]) -> None:
    """Warn when carving left `train` without any image of a class (a class of one patient, carved into val or
    test): the model cannot learn it. One warning, naming the first `MISSING_CLASSES_NAMED` classes."""
    untrained = sorted(set(raw.labels.tolist()) - set(raw.labels[splits["train"]].tolist()))
    if not untrained:
        return
    described = []
    for label in untrained[:MISSING_CLASSES_NAMED]:
        where = [name for name in ("val", "test") if (raw.labels[splits[name]] == label).any()]
        described.append(f"{raw.class_names[label]!r} (label {label}), which has "
                         f"{_count(raw, np.flatnonzero(raw.labels == label))}, all carved into "
                         f"{' and '.join(map(repr, where))}")  # fmt: skip
    classes, them = _classes_named(described, len(untrained))
    warnings.warn(
        f"the 'train' split holds no image of {classes}: the model cannot learn {them}. Give more images (patients) of "
        f"{them}, or smaller val_fraction / test_fraction",
        UserWarning,
        stacklevel=5,  # the caller of load_image_classification_data / streaming_image_classification_data
    )


def _classes_named(described: list[str], count: int) -> tuple[str, str]:
    """`(classes, pronoun)` of a warning naming `count` classes, `described` the first of them: "class 'a' (...)",
    "it"; or "7 classes: 'a' (...); ...; and 2 more", "them"."""
    if count == 1:
        return f"class {described[0]}", "it"
    more = f"; and {count - len(described)} more" if count > len(described) else ""
    return f"{count} classes: {'; '.join(described)}{more}", "them"


def _read_image_folder(
    root: Path,
    medical: MedicalPreprocessing,
    reading: ImagePreprocessing | None = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
) -> RawData:
    """An image folder's images (preprocessed by `reading` as they are decoded, when given: see [`decode_files`]),
    labels, class names, splits and groups (anonymised DICOM files grouped by `anonymised_dicom_groups`)."""
    files, labels_per_split, names = list_folder_files(root)
    check_class_names(names, f"image folder {root}")  # before any image is decoded
    depths = _BitDepths()
    images, labels_per_split, groups = decode_files(
        files, labels_per_split, medical, reading=reading, class_names=names,
        anonymised_dicom_groups=anonymised_dicom_groups, depths=depths,
    )  # fmt: skip
    labels, names, splits = labels_and_names(labels_per_split, names, f"image folder {root}")
    return RawData(
        images, labels, names, splits, DEFAULT_FOLDER_SIZE, groups, preprocessed=reading is not None,
        guessed_bits_stored=depths.single, dicom_files=_any_dicom(files),
    )  # fmt: skip


def _read_unlabeled_folder(root: Path, medical: MedicalPreprocessing, reading: ImagePreprocessing) -> RawData:
    """Every image of `root` and its subfolders ([`list_unlabeled_folder`]), preprocessed by `reading` as decoded, all
    of them in `"train"` with the one label of `UNLABELED`."""
    files, unlabeled = list_unlabeled_images(root, stacklevel=3)  # 3: the caller of the loader
    depths = _BitDepths()
    images, labels_per_split, _ = decode_files(files, unlabeled, medical, reading=reading, depths=depths, grouped=False)
    labels = labels_per_split["train"]  # one per image, a multi-frame DICOM's frames each
    return RawData(
        images, labels, [UNLABELED], {"train": np.arange(len(labels))}, DEFAULT_FOLDER_SIZE, preprocessed=True,
        guessed_bits_stored=depths.single, dicom_files=_any_dicom(files),
    )  # fmt: skip


def _read_csv(
    path: Path,
    class_names: Sequence[str] | None,
    patient_id_column: str | None,
    medical: MedicalPreprocessing,
    reading: ImagePreprocessing | None = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
) -> RawData:
    """A CSV with the columns `path` (relative to the CSV), `label` (a class name) and optionally patient ids; the
    images preprocessed by `reading` as they are decoded, when given (see [`decode_files`]); without patient ids,
    anonymised DICOM files grouped by `anonymised_dicom_groups`."""
    files, labels, names, patients = list_csv(path, class_names, patient_id_column)
    check_class_names(names, f"CSV {path}")  # before any image is decoded
    depths = _BitDepths()
    images, labels_per_split, groups = decode_files(
        files, {"train": labels}, medical, patients, reading, names, anonymised_dicom_groups, depths
    )
    labels, names, splits = labels_and_names(labels_per_split, names, f"CSV {path}")
    return RawData(
        images, labels, names, splits, DEFAULT_FOLDER_SIZE, groups, preprocessed=reading is not None,
        guessed_bits_stored=depths.single, dicom_files=_any_dicom(files),
    )  # fmt: skip


def _any_dicom(files: Sequence[Path]) -> bool:
    """Whether some of `files` are DICOM (by extension, or the header of a file without one: read when listed)."""
    return any(is_dicom_file(path) for path in files)


def describe_splits(splits: dict[str, Any], source: Any) -> str:
    """One line on what was loaded from `source` (the scripts print it before training): the images of each split,
    the classes (named when at most 10), and how the images are read (size, channels, DICOM windows where chosen).
    `splits`: [`LabeledImages`] or `StreamingImages` by split name."""
    train = splits["train"]
    if set(splits) == {"train"}:  # an unlabeled folder, every image trained on
        return f"data: {source}: {len(train)} unlabeled images, all for training; read at {train.preprocessing.summary()}"
    counts = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    names = f" ({', '.join(map(repr, train.class_names))})" if len(train.class_names) <= 10 else ""  # 'a,b' is one
    return f"data: {source}: {counts}, {train.num_classes} classes{names}; read at {train.preprocessing.summary()}"


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


def load_data_from_args(args: Any) -> dict[str, LabeledImages]:
    """[`load_image_classification_data`] from the flags of [`add_data_args`] (and `--seed`)."""
    return load_image_classification_data(
        args.dataset, image_size=args.image_size, num_channels=args.num_channels, medical=medical_from_args(args),
        unlabeled=getattr(args, "unlabeled", False), **splits_from_args(args), **fit_from_args(args),
        **columns_from_args(args),
    )  # fmt: skip


def splits_from_args(args: Any) -> dict[str, Any]:
    """`class_names`, `val_fraction`, `test_fraction` and `seed`: the classes and the splits carved when the data
    has none."""
    return {
        "class_names": args.class_names, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
        "seed": args.seed,
    }  # fmt: skip


def reading_from_args(args: Any) -> dict[str, Any]:
    """`{flag name: value}` of the flags of [`add_data_args`] that say how each image is read (size, channels, fit,
    DICOM windows, bit depth), as JSON: the trainers record them so that a resume reading the images otherwise is
    refused naming the flag (a `--normalize_background` left out changed no sampled pixel mean of white-field
    plankton images, and the resumed model was saved reading them otherwise)."""
    names = ("image_size", "num_channels", "resize_mode", "pad_value", "normalize_background", "transparency_fill",
             "window", "bits_stored")  # fmt: skip
    return {name: getattr(args, name) for name in names}


def fit_from_args(args: Any) -> dict[str, Any]:
    """`resize_mode`, `pad_value`, `normalize_background` and `transparency_fill` from the flags of
    [`add_data_args`], checked."""
    return fit_options(args.resize_mode, args.pad_value, args.normalize_background, args.transparency_fill)


def medical_from_args(args: Any) -> MedicalPreprocessing:
    """The DICOM windows `--window` names (default: each file's own) and the bit depth `--bits_stored` of 16-bit
    files (default: each file's own)."""
    windows = ("file",) if args.window is None else parse_windows(args.window)
    return MedicalPreprocessing(windows=windows, bits_stored=args.bits_stored)

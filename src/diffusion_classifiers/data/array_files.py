"""Arrays on disk: scikit-learn's digits, MedMNIST-style `.npz` files and IDX (MNIST / Fashion-MNIST) directories,
read as [`RawData`]."""

from __future__ import annotations

import gzip
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .labeled_images import SPLITS, RawData, labels_and_names
from .preprocessing import _describe

__all__ = [
    "DEFAULT_DIGITS_SIZE",
    "FASHION_MNIST_CLASSES",
    "built_in_class_names",
    "PNEUMONIAMNIST_CLASSES",
    "read_idx",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


PNEUMONIAMNIST_CLASSES = ["normal", "pneumonia"]


DEFAULT_DIGITS_SIZE = 32


def built_in_class_names(source: Any) -> list[str] | None:
    """The names the readers give the label ids of a known source by themselves (scikit-learn's digits, a
    `pneumoniamnist.npz`, a Fashion-MNIST IDX folder), or None: what names its ids when no `class_names` are given."""
    if str(source) == "digits":
        return [str(i) for i in range(10)]
    path = Path(source)
    if path.name == "pneumoniamnist.npz":
        return list(PNEUMONIAMNIST_CLASSES)
    if path.is_dir() and "fashion" in path.resolve().name.lower():
        return list(FASHION_MNIST_CLASSES)
    return None


def read_digits(class_names: Sequence[str] | None) -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).to(torch.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    names = class_names if class_names is not None else built_in_class_names("digits")
    labels, names, splits = labels_and_names({"train": digits.target}, names, "digits")
    return RawData(images, labels, names, splits, DEFAULT_DIGITS_SIZE)


def read_npz(path: Path, class_names: Sequence[str] | None) -> RawData:
    present, arrays = _npz_arrays(path)
    images, labels = {}, {}
    for split in present:
        images[split] = _pixel_array(arrays.pop(f"{split}_images"), f"{path}[{split}_images]")
        labels[split] = _flat_labels(arrays.pop(f"{split}_labels"), len(images[split]), f"{path}[{split}_labels]")
    _check_same_image_shape(images, {split: f"{path}[{split}_images]" for split in images})
    class_names = class_names if class_names is not None else built_in_class_names(path)
    all_labels, names, splits = labels_and_names(labels, class_names, str(path))
    return RawData(torch.cat(list(images.values())), all_labels, names, splits)


_NPZ_PARTS = ("images", "labels")
_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _npz_arrays(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The splits an `.npz` file holds and their images and labels by key, each decoded once (other keys are not
    decoded); a file that is no `.npz` archive, or a corrupt one, is refused naming it."""
    try:
        archive = np.load(path)
    except _NPZ_READ_ERRORS as error:
        raise _unreadable_npz(path, error) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: a single {_describe(archive)} (an .npy file), not an .npz archive; expected the keys "
            "train_images, train_labels (and optionally val_*/test_*): np.savez(path, train_images=..., ...)"
        )
    with archive:
        present = _npz_splits(path, sorted(archive.files))
        try:
            return present, {f"{s}_{part}": archive[f"{s}_{part}"] for s in present for part in _NPZ_PARTS}
        except _NPZ_READ_ERRORS as error:
            raise _unreadable_npz(path, error) from error


def _unreadable_npz(path: Path, error: Exception) -> ValueError:
    """Why an `.npz` file cannot be read: pickled objects refused (QA: called "truncated or corrupt?"), or damage."""
    if "allow_pickle" in str(error):
        return ValueError(
            f"{path}: holds pickled Python objects (an object array), refused unread: unpickling them could run "
            "arbitrary code; expected numeric arrays (np.savez of uint8 or float images and integer labels)"
        )
    return ValueError(f"cannot read {path}: {error} (truncated or corrupt?)")


def _npz_splits(path: Path, found: list[str]) -> list[str]:
    """The splits an `.npz` file holds (each with its images and labels), checked before any array is decoded: a key
    `<name>_images` / `<name>_labels` of another split name (`validation_images`) is refused rather than left unread
    while its split is carved from train; the other keys are ignored, with a warning naming them."""
    present = [s for s in SPLITS if any(f"{s}_{part}" in found for part in _NPZ_PARTS)]
    incomplete = [f"{s}_{part}" for s in present for part in _NPZ_PARTS if f"{s}_{part}" not in found]
    if "train" not in present or incomplete:
        raise ValueError(
            f"{path}: expected keys train_images, train_labels (and optionally val_*/test_*); "
            f"missing {incomplete or ['train_images', 'train_labels']}, found {found}"
        )
    unread = [key for key in found if key not in {f"{s}_{part}" for s in present for part in _NPZ_PARTS}]
    other_splits = [key for key in unread if key.rsplit("_", 1)[-1] in _NPZ_PARTS]
    if other_splits:
        raise ValueError(
            f"{path}: keys {other_splits} name no split; expected train_*, val_* and test_* images and labels "
            f"(rename validation_* to val_*), found {found}"
        )
    if unread:
        warnings.warn(f"{path}: keys {unread} are not read; only train_*, val_* and test_* images and labels are",
                      UserWarning, stacklevel=4)  # the caller of load_image_classification_data
    return present


def _pixel_array(array: np.ndarray, where: str) -> torch.Tensor:
    """An array of images as `[N, C, H, W]`, its pixel values checked against what they are read as: uint8 from
    `[0, 255]`, uint16 from `[0, 65535]`, bool, or float in `[0, 1]` (NaN and inf are named by `preprocess_images`)."""
    images = _nhwc_to_nchw(array, where)
    if array.dtype.kind == "f" and array.size:
        low, high = np.nanmin(array), np.nanmax(array)  # all-NaN: NaN, then refused by preprocess_images
        if low < 0 or high > 1:
            raise ValueError(
                f"{where}: float images span [{low:.4g}, {high:.4g}]; expected float images in [0, 1] (store 0..255 "
                "data as uint8, or divide it by 255)"
            )
    elif array.dtype not in (np.uint8, np.uint16, np.bool_):
        span = f", values from {array.min()} to {array.max()}" if array.size and array.dtype.kind in "iu" else ""
        raise ValueError(
            f"{where}: images of dtype {array.dtype}{span}; expected uint8 (read from 0..255), uint16 (from "
            "0..65535), bool or float in [0, 1] (cast 0..255 data to uint8)"
        )
    return images


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
    if labels.ndim == 2 and len(labels) == num_images:
        raise ValueError(f"{where}: {_label_matrix(labels)}")
    if labels.ndim != 1 or len(labels) != num_images or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: expected {num_images} integer labels of shape (N,) or (N, 1), "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def _label_matrix(labels: np.ndarray) -> str:
    """Why labels of shape `(N, K)`, K > 1, are refused: one-hot labels (one 1 per row) or several labels per image
    (ChestMNIST's 14 findings), which a single-label classifier cannot be trained on."""
    what = f"labels of shape {labels.shape}, one column per class"
    if np.isin(labels, (0, 1)).all() and (labels.sum(1) == 1).all():
        return f"{what} (one-hot); expected one class id per image, shape (N,): store labels.argmax(1)"
    return (
        f"{what} or finding: a multi-label file (as ChestMNIST's 14 findings), several labels per image, which a "
        "single-label classifier cannot learn; expected one class id per image, shape (N,) or (N, 1): store one "
        "column (labels[:, k], one finding against the rest) or one class per image"
    )


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


def read_idx_directory(root: Path, class_names: Sequence[str] | None) -> RawData:
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
        images[split] = _pixel_array(read_idx(image_file, expected_ndim=3), str(image_file))
        labels[split] = _flat_labels(read_idx(label_file, expected_ndim=1), len(images[split]), str(label_file))
        sources[split] = str(image_file)
    _check_same_image_shape(images, sources)
    class_names = class_names if class_names is not None else built_in_class_names(root)
    all_labels, names, splits = labels_and_names(labels, class_names, str(root))
    return RawData(torch.cat(list(images.values())), all_labels, names, splits)


def _find_idx_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None

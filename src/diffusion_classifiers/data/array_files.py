"""Arrays on disk: scikit-learn's digits, MedMNIST-style `.npz` files and IDX (MNIST / Fashion-MNIST) directories,
read as [`RawData`]."""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .labeled_images import SPLITS, RawData, labels_and_names

__all__ = [
    "DEFAULT_DIGITS_SIZE",
    "FASHION_MNIST_CLASSES",
    "PNEUMONIAMNIST_CLASSES",
    "read_idx",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


PNEUMONIAMNIST_CLASSES = ["normal", "pneumonia"]


DEFAULT_DIGITS_SIZE = 32


def read_digits(class_names: Sequence[str] | None) -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).to(torch.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    names = class_names if class_names is not None else [str(i) for i in range(10)]
    labels, names, splits = labels_and_names({"train": digits.target}, names, "digits")
    return RawData(images, labels, names, splits, DEFAULT_DIGITS_SIZE)


def read_npz(path: Path, class_names: Sequence[str] | None) -> RawData:
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
    all_labels, names, splits = labels_and_names(labels, class_names, str(path))
    return RawData(torch.cat(list(images.values())), all_labels, names, splits)


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
        images[split] = _nhwc_to_nchw(read_idx(image_file, expected_ndim=3), str(image_file))
        labels[split] = _flat_labels(read_idx(label_file, expected_ndim=1), len(images[split]), str(label_file))
        sources[split] = str(image_file)
    _check_same_image_shape(images, sources)
    if class_names is None and "fashion" in root.resolve().name.lower():
        class_names = FASHION_MNIST_CLASSES
    all_labels, names, splits = labels_and_names(labels, class_names, str(root))
    return RawData(torch.cat(list(images.values())), all_labels, names, splits)


def _find_idx_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None

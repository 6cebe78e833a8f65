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
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .dicom import MedicalPreprocessing, is_dicom_file
from .image_files import DECODE_ERRORS, decode_error_text, open_image
from .preprocessing import ImagePreprocessing, _describe, fit_options, preprocess_images
from .file_decoding import (
    _refuse_unreadable_files, check_file_headers, decode_image_file, every_one_listed_in, list_frames,
)
from .hf_datasets import (
    HF_SPLIT_NAMES,
    dataset_name,
    find_column,
    hf_splits,
    is_saved_dataset,
    open_saved_dataset,
    split_columns,
    split_labels,
    warn_patients_not_carved_by,
)
from .image_listing import list_csv, list_folder_files, list_unlabeled_images
from .labeled_images import ONE_SET, SPLITS, RawData, labels_and_names
from .arguments import columns_from_args
from .readers import (
    DEFAULT_FOLDER_SIZE,
    UNLABELED,
    carve_splits,
    check_names_of_own_classes,
    check_source_exists,
    describe_splits,
    fit_from_args,
    load_data_from_args,
    medical_from_args,
    splits_from_args,
)
from .split_record import ANONYMISED_DICOM_RULE, check_anonymised_dicom_groups, image_fingerprints, save_split_record
from .splits import check_split_fractions
from ..progress_bars import bar_visibility
from ..validation import check_name_list, check_output_outside_data, check_seed, first_and_more

__all__ = [
    "DecodedImages",
    "StreamingImages",
    "is_saved_dataset",
    "save_training_split_record",
    "streaming_classification_split",
    "streaming_data_from_args",
    "streaming_image_classification_data",
    "training_data_from_args",
]

_IMAGE, _LABEL, _FRAME = "image", "label", "frame"  # the columns of a table built from files (frame: of a DICOM)
_ROW = "source_row"  # a streamed dataset's row as its saved splits number it ("split 'train' row 412"), for messages


def _preprocess_one(image: Any, reading: ImagePreprocessing) -> torch.Tensor:
    """One decoded image -> float32 `[C, H, W]` in [-1, 1]: the adapter between streaming and the one preprocessing
    contract (its signature lives here only)."""
    return preprocess_images(image, preprocessing=reading)[0]


def _decode(item: dict, medical: MedicalPreprocessing, frame: int | None = None) -> Any:
    """An undecoded `datasets.Image` value (`{"bytes", "path"}`) -> a decoded image; the error names the file. DICOM and
    16-bit files are read as `medical` says (a DICOM's `frame` only), as the in-memory loader reads them."""
    if item is None:  # QA: an AttributeError from `item.get`, no row named
        raise ValueError("an image row has no image (None)")
    path = item.get("path")
    if item.get("bytes") is None:
        if path is None:
            raise ValueError("an image row has neither bytes nor a path")
        if is_dicom_file(path):
            return _read_dicom_frame(path, medical, frame)
        return decode_image_file(Path(path), medical.bits_stored)
    try:  # decoded as datasets.Image decodes bytes, so a streamed image equals the in-memory one
        return open_image(io.BytesIO(item["bytes"]), name=path)
    except DECODE_ERRORS as error:
        raise ValueError(f"cannot decode image {path or '(bytes without a path)'}: {decode_error_text(error)}") from error


def _read_dicom_frame(path: str, medical: MedicalPreprocessing, frame: int | None) -> np.ndarray:
    """One image of a DICOM file, windowed: float32 `[1, C, H, W]` in [0, 1]; a multi-frame file needs its `frame`."""
    frames = medical.read(path, frame)
    if len(frames) != 1:
        raise ValueError(
            f"DICOM file {path} has {len(frames)} frames; expected one image per row: list its frames "
            "(StreamingImages.from_files(frames=...), as streaming_image_classification_data does)"
        )
    return frames


def _decode_and_preprocess(batch: dict, image_column: str, label_column: str | None, reading: ImagePreprocessing) -> dict:
    """The `with_transform` of [`StreamingImages`]: a batch of rows -> preprocessed images (and labels)."""
    medical, frames = reading.medical_or_default, batch.get(_FRAME) or [None] * len(batch[image_column])
    output = {
        "pixel_values": [
            _preprocess_one(_decode(item, medical, frame), reading) for item, frame in zip(batch[image_column], frames)
        ]
    }
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
            column: `label_column=False`). A `frame` column, when present, names the frame of a multi-frame DICOM.
        medical ([`MedicalPreprocessing`], *optional*): how DICOM files (windows, one channel each) and 16-bit PNG /
            TIFF are read, as in [`load_image_classification_data`]; default `MedicalPreprocessing()`.
        resize_mode, pad_value, normalize_background, transparency_fill: as in [`ImagePreprocessing`]; saved in
            `preprocessing`.
    """

    def __init__(
        self,
        dataset: Any,
        image_size: int | tuple[int, int],
        num_channels: int,
        image_column: str | None = None,
        label_column: str | None | bool = None,
        medical: MedicalPreprocessing | None = None,
        resize_mode: str = "stretch",
        pad_value: float = -1.0,
        normalize_background: bool = False,
        transparency_fill: float | None = None,
    ):
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"expected a datasets.Dataset, got {_describe(dataset)}")
        self.medical = medical if medical is not None else MedicalPreprocessing()
        self.fit = fit_options(resize_mode, pad_value, normalize_background, transparency_fill)
        reading = _checked_reading(num_channels, image_size, self.medical, self.fit)
        self.image_column = find_column(dataset.features, image_column, datasets.Image, "image")
        self.label_column = (
            None if label_column is False else find_column(dataset.features, label_column, datasets.ClassLabel, "label")
        )
        self.image_size, self.num_channels = image_size, num_channels
        self.dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.class_names = list(dataset.features[self.label_column].names) if self.label_column else []
        transform = partial(
            _decode_and_preprocess, image_column=self.image_column, label_column=self.label_column,
            reading=reading,
        )  # fmt: skip
        self._rows = self.dataset.with_transform(transform)
        # the content fingerprints (`image_fingerprints`) of the images, in no set order, once `verify` read them all
        self.fingerprints: list[str] | None = None

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The contract a model trained on these images is saved with (as `LabeledImages.preprocessing`)."""
        return ImagePreprocessing(self.image_size, self.num_channels, medical=self.medical, **self.fit)

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

    def unreadable_images(self, num_workers: int = 0, progress_bar: bool = True) -> list[tuple[str, str]]:
        """`(path, reason)` of every image that cannot be read as training reads it (decoded and preprocessed, in
        `num_workers` `DataLoader` processes): a file damaged past its header (a truncated PNG or JPEG, corrupt DICOM
        pixel data) passes the header check of [`from_files`] and is otherwise found only when its batch is read."""
        return self.read_every_image(num_workers, progress_bar)[0]

    def read_every_image(
        self, num_workers: int = 0, progress_bar: bool = True
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """Read every image once as training reads it: `(failures, fingerprints)`, the `(path, reason)` of each image
        that cannot be read ([`unreadable_images`]) and the content fingerprints (`image_fingerprints`) of those
        read, which a model's `data_splits.json` records so that `evaluate` and `probe` can refuse test images it was
        trained on, as for images held in memory."""
        from tqdm.auto import tqdm

        loader = torch.utils.data.DataLoader(
            _ReadOnce(self), batch_size=_VERIFY_BATCH, num_workers=num_workers, collate_fn=list,
            worker_init_fn=_python_ctrl_c,  # a forked worker would keep the handler that holds it
        )  # fmt: skip
        with _ctrl_c_after_fork():
            batches = iter(loader)  # the workers start (fork) here
        bar = tqdm(batches, total=len(loader), desc="Reading every image", unit="batch", **bar_visibility(progress_bar))
        failures, fingerprints = [], []
        for index, reason, fingerprint in (item for batch in bar for item in batch):
            if reason is None:
                fingerprints.append(fingerprint)
            else:
                failures.append((self._path(index), reason))
        return failures, fingerprints

    def verify(self, num_workers: int = 0, progress_bar: bool = True) -> None:
        """Read every image once ([`read_every_image`]) and refuse the dataset, naming the images that fail, before
        any long computation; keep the images' content fingerprints (`fingerprints`)."""
        failures, fingerprints = self.read_every_image(num_workers, progress_bar)
        _refuse_unreadable(failures, len(self))
        self.fingerprints = fingerprints

    def _path(self, index: int) -> str:
        """How messages name the image at `index`: its file, else its row as the source numbers it (a dataset's split
        and row: QA, the carved split's position was not a row the saved dataset shows)."""
        row = self.dataset[int(index)]
        value, named = row[self.image_column], row.get(_ROW)
        if value is None:
            return f"{named or f'image {index} of the split'} (no image)"
        return value.get("path") or f"{named or f'row {index}'} (bytes without a path)"

    def files_and_frames(self) -> list[tuple[str | None, int | None]]:
        """The file of each image and its frame in that file, in order: the file None for an image stored as bytes
        without a path, or for no image; the frame None but for a frame of a multi-frame DICOM file. Read from the
        image column's paths and the frame column alone, no image decoded."""
        import pyarrow.compute as pc

        frames = _FRAME in self.dataset.column_names
        table = self.dataset.select_columns([self.image_column, *([_FRAME] if frames else [])]).with_format("arrow")
        files_and_frames: list[tuple[str | None, int | None]] = []
        for batch in table.iter(batch_size=4096):
            files = pc.struct_field(batch[self.image_column], "path").to_pylist()
            files_and_frames += zip(files, batch[_FRAME].to_pylist() if frames else [None] * len(files))
        return files_and_frames

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> StreamingImages:
        """The rows at `indices` (an index mapping over the same Arrow table: nothing is copied or decoded)."""
        indices = np.asarray(indices, dtype=np.int64)
        label_column = False if self.label_column is None else self.label_column
        return StreamingImages(
            self.dataset.select(indices), self.image_size, self.num_channels, self.image_column, label_column,
            self.medical, **self.fit,
        )  # fmt: skip

    @classmethod
    def from_files(
        cls,
        files: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        image_size: int | tuple[int, int] = DEFAULT_FOLDER_SIZE,
        num_channels: int = 3,
        check_files: bool = True,
        *,
        frames: Sequence[int | None] | None = None,
        medical: MedicalPreprocessing | None = None,
        **fit: Any,
    ) -> StreamingImages:
        """Image files (and their integer labels in `0..len(class_names)-1`) as a streaming dataset. With
        `check_files`, every file's header is read now, as the streaming listing checks it (a DICOM file's windows
        resolved, a localizer refused: `file_decoding.check_file_header`), so missing or unreadable files are refused,
        all named at once, before any long computation; a file whose pixel data is corrupt fails when it is read, again
        naming the file.
        `frames` names the frame of each row of a multi-frame DICOM (a file listed once per frame, `None` for other
        files); `medical` is how DICOM and 16-bit files are read, `fit` the `resize_mode`, `pad_value`,
        `normalize_background` and `transparency_fill` (see the class)."""
        import datasets

        files = [str(file) for file in files]
        if not files:
            raise ValueError("files: expected at least one image file, got none")
        _check_utf8_names(files, "files")
        if (labels is None) != (class_names is None):
            raise ValueError("expected labels and class_names together, got only one of them")
        medical = medical if medical is not None else MedicalPreprocessing()
        if check_files:
            _check_files([Path(file) for file in files], medical)
        columns = {_IMAGE: [{"path": file, "bytes": None} for file in files]}
        features = {_IMAGE: datasets.Image(decode=False)}
        if frames is not None and any(frame is not None for frame in frames):
            if len(frames) != len(files):
                raise ValueError(f"expected one frame (or None) per file ({len(files)}), got {len(frames)} frames")
            columns[_FRAME], features[_FRAME] = list(frames), datasets.Value("int64")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) != len(files):
                raise ValueError(f"expected one label per file ({len(files)}), got {len(labels)} labels")
            columns[_LABEL], features[_LABEL] = labels, datasets.ClassLabel(names=[str(n) for n in class_names])
        dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        return cls(dataset, image_size, num_channels, _IMAGE, _LABEL if labels is not None else False, medical, **fit)


_VERIFY_BATCH, _VERIFY_SHOWN = 64, 10


@contextmanager
def _ctrl_c_after_fork() -> Iterator[None]:
    """Hold a Ctrl-C that comes while DataLoader workers fork, and raise it once they have: one that came during the
    fork ran Python's handler in logging's at-fork callback, where CPython ignores exceptions, and the run went on to
    the end (QA: 3 of 3 times, Ctrl-C as "Reading every image" appeared). Only where Python's own handler is set."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _python_ctrl_c(worker_id: int) -> None:
    """Python's own Ctrl-C handler in a DataLoader worker (forked while `_ctrl_c_after_fork` held the signal)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _ReadOnce(torch.utils.data.Dataset):
    """Each image of a [`StreamingImages`] read as training reads it: `(index, None, its content fingerprint)`, or
    `(index, why it cannot be read, None)`."""

    def __init__(self, images: StreamingImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, str | None, str | None]:
        try:
            image, _ = self.images[index]
        except (ValueError, OSError) as error:
            return index, str(error), None
        return index, None, image_fingerprints(image[None])[0]


class DecodedImages(torch.utils.data.Dataset):
    r"""
    The images of one `Image` column of a `datasets.Dataset`, decoded as `datasets` decodes them (PIL images) only
    when read, for a model that applies its own saved preprocessing: `DataLoader(DecodedImages(...), batch_size,
    collate_fn=list)` yields lists of PIL images, and only one batch is held at a time.

    Args:
        dataset (`datasets.Dataset`): the split; memory-mapped when loaded from disk.
        image_column (`str`): its `Image` column.
    """

    def __init__(self, dataset: Any, image_column: str):
        import datasets

        self.image_column = image_column
        self.rows = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=True))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = self.rows[int(index)][self.image_column]
        except DECODE_ERRORS as error:
            raise ValueError(
                f"row {index}: cannot decode column {self.image_column!r}: {decode_error_text(error)}"
            ) from error
        if image is None:
            raise ValueError(f"row {index}: column {self.image_column!r} has no image")
        return image


def streaming_classification_split(
    dataset: Any, image_column: str | None = None, label_column: str | None = None
) -> tuple[DecodedImages, np.ndarray, list[str]]:
    """[`read_classification_split`] without decoding: one `datasets.Dataset` split as ([`DecodedImages`], integer
    labels, ClassLabel names), the columns found by feature type; only the label column is read now."""
    image_column, label_column = split_columns(dataset, image_column, label_column)
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    return DecodedImages(dataset, image_column), labels, list(dataset.features[label_column].names)


def _check_files(files: list[Path], medical: MedicalPreprocessing) -> None:
    """Every file is checked as the streaming listing checks it (`file_decoding.check_file_headers`: its header read,
    no pixel data decoded), then those that fail are refused together, as the in-memory reader does."""
    _refuse_unreadable_files(list(check_file_headers(files, medical)[1].values()), len(set(files)))


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
    medical: MedicalPreprocessing | None = None,
    resize_mode: str = "stretch",
    pad_value: float = -1.0,
    normalize_background: bool = False,
    transparency_fill: float | None = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    unlabeled: bool = False,
    one_set: bool = False,
    unreadable: list[tuple[str, str]] | None = None,
) -> dict[str, StreamingImages]:
    r"""
    [`load_image_classification_data`] for data larger than memory: `{"train", "val", "test"}` [`StreamingImages`]
    with the same images, labels, class names and seeded splits (the images decoded only when read); an unlabeled
    folder (`unlabeled=True`): `{"train"}`, every image of it, without a label column; `one_set`: `{"all"}`.

    Args:
        source: an image folder (`<root>/<class>/<image>`, `splits/*.txt` honoured), a `.csv` file of
            `path,label[,patient_id]`, a `datasets.Dataset` / `DatasetDict` (`Image` and `ClassLabel` columns), or a
            folder a `Dataset` / `DatasetDict` was saved to (`save_to_disk`; memory-mapped). DICOM files are read
            as `medical` says, one row per frame, their headers (frames, size, PatientID) read now, their pixels when
            read.
        num_channels (`int`): 1 or 3 (required: the in-memory default looks at every image first).
        image_size (`int` or `Tuple[int, int]`, *optional*, defaults to 32): every image is resized to it.
        val_fraction, test_fraction, seed, class_names, image_column, label_column, patient_id_column, medical,
            resize_mode, pad_value, normalize_background, transparency_fill, anonymised_dicom_groups, unlabeled,
            one_set: as in
            [`load_image_classification_data`] (DICOM PatientIDs keep each patient on one side there too).
        check_files (`bool`, *optional*, defaults to `True`): open every image file now, as DICOM headers are read
            (see [`StreamingImages.from_files`]).
        unreadable (`list`, *optional*): the files found unreadable when listed are refused now, all named at once;
            given a list, they are appended to it as `(path, reason)` instead and left out of the splits (which are
            carved as if they could be read), for the caller to refuse together with the images that fail to decode
            when every image is read ([`streaming_data_from_args`]).

    Raises:
        `ValueError`: as [`load_image_classification_data`] for the listing (empty folder, missing file, bad CSV,
            label problems), and a file PIL cannot read, named, before anything is decoded.
    """
    check_split_fractions(val_fraction, test_fraction, carved=not unlabeled)
    check_seed(seed, "seed")
    check_name_list(class_names, "class_names")
    check_anonymised_dicom_groups(anonymised_dicom_groups)
    fit = fit_options(resize_mode, pad_value, normalize_background, transparency_fill)
    _checked_reading(num_channels, image_size, medical or MedicalPreprocessing(), fit)  # before files are listed
    _check_source_options(source, unlabeled, patient_id_column, image_column, label_column)
    if class_names is not None and not _is_csv(source):  # a folder's or dataset's own names stand, checked
        check_names_of_own_classes(source, class_names, unlabeled, image_column, label_column)
        class_names = None
    listing = {"open_images": check_files, "unreadable": unreadable}  # each file checked once, when it is listed
    if unlabeled:
        medical = medical or MedicalPreprocessing()
        files, frames = _unlabeled_rows(source, medical, **listing)
        full = StreamingImages.from_files(
            files, None, None, image_size, num_channels, False, frames=frames, medical=_noting_dicom(medical, frames),
            **fit,
        )  # fmt: skip
        return _leave_out({"train": full}, unreadable)
    where = dataset_name(source)
    source = open_saved_dataset(source)
    if _is_datasets_object(source):
        dataset, raw = _hf_rows(source, image_column, label_column, where)
        full = StreamingImages(
            dataset, image_size, num_channels, image_column=_IMAGE, label_column=_LABEL, medical=medical, **fit
        )
    else:
        files, frames, raw = _file_rows(
            source, class_names, patient_id_column, medical or MedicalPreprocessing(), anonymised_dicom_groups,
            **listing,
        )
        full = StreamingImages.from_files(
            files, raw.labels, raw.class_names, image_size, num_channels, False, frames=frames,
            medical=_noting_dicom(medical, frames), **fit,
        )  # fmt: skip
    if one_set:
        return _leave_out({ONE_SET: full}, unreadable)
    splits = carve_splits(raw, val_fraction, test_fraction, seed)
    return _leave_out({name: full.subset(splits[name]) for name in SPLITS}, unreadable)


def _is_datasets_object(source: Any) -> bool:
    """Whether `source` is a `datasets.Dataset` / `DatasetDict`; another object of the datasets library is refused
    by name (QA: an `IterableDataset` of `streaming=True` failed on `len()`, or was read as a dict of splits)."""
    if not type(source).__module__.startswith("datasets"):
        return False
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return True
    raise ValueError(
        f"source: expected a path or a datasets.Dataset/DatasetDict, got {_describe(source)}; load it without "
        "streaming=True: a datasets.Dataset is memory-mapped from disk, and this reader decodes its images only when "
        "they are read"
    )


def _checked_reading(
    num_channels: Any, image_size: Any, medical: MedicalPreprocessing, fit: dict[str, Any]
) -> ImagePreprocessing:
    """How streamed files are read, as the in-memory loader reads them (float data, windowed DICOM and 16-bit, in
    [0, 1]), once its options are checked: by `StreamingImages`, and by the loader before a large folder is listed."""
    if num_channels not in (1, 3):
        raise ValueError(
            f"num_channels: expected 1 or 3 (streaming cannot look at every image first), got {num_channels!r}"
        )
    if image_size is None:
        raise ValueError("image_size: expected an int or (height, width) (streamed images are resized on the fly)")
    medical.check_channels(num_channels)
    return ImagePreprocessing(image_size, num_channels, input_range="[0, 1]", medical=medical, **fit)


def _is_csv(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".csv"


def _check_source_options(
    source: Any, unlabeled: bool, patient_id_column: str | None, image_column: str | None, label_column: str | None
) -> None:
    """The options a source of another kind would silently ignore are refused, as the in-memory loader refuses
    them: `patient_id_column` names a CSV's patients, `image_column` / `label_column` a dataset's columns."""
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    is_dataset = _is_datasets_object(source) or (path is not None and path.is_dir() and is_saved_dataset(path))
    is_csv = _is_csv(source)
    kind = "a dataset" if is_dataset else "a CSV" if is_csv else "an image folder"
    if patient_id_column is not None and (unlabeled or not is_csv):
        kind = "an unlabeled folder" if unlabeled else kind
        raise ValueError(f"patient_id_column applies to CSV sources only, not to {kind}")
    if (image_column is not None or label_column is not None) and not is_dataset:
        raise ValueError(f"image_column / label_column apply to datasets sources only, not to {kind}")


def _check_utf8_names(files: Sequence[str | os.PathLike], where: str) -> None:
    """A streamed file's path is stored in an Arrow table, which holds UTF-8 text only: a name in another encoding
    (a Latin-1 name from an older system) is refused by name before any file is read, not halfway with a bare
    UnicodeEncodeError."""
    bad = []
    for file in files:
        try:
            os.fspath(file).encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(file))
    if bad:
        shown = ", ".join(repr(name) for name in bad[:3])
        raise ValueError(
            f"{where}: {len(bad)} file name(s) are not valid UTF-8 ({shown}); expected UTF-8 names, since streamed "
            "images are listed by path in an Arrow table: rename them (e.g. convmv -f latin1 -t utf8), or read the "
            "data into memory (without --streaming), which reads such names"
        )


def _noting_dicom(medical: MedicalPreprocessing | None, frames: Sequence[int | None]) -> MedicalPreprocessing | None:
    """`medical` recording that the data hold DICOM files (`dicom_files`) where they do (a DICOM row has a frame), as
    the in-memory loader records it."""
    if all(frame is None for frame in frames):
        return medical
    return replace(medical or MedicalPreprocessing(), dicom_files=True)


def _leave_out(
    parts: dict[str, StreamingImages], unreadable: list[tuple[str, str]] | None
) -> dict[str, StreamingImages]:
    """`parts` without the rows of the files `unreadable` names: listed, one row each (see `list_frames`), so that
    the splits are carved as if they could be read, then left out."""
    paths = {path for path, _ in unreadable or ()}
    if not paths:
        return parts
    return {name: images.subset(_rows_not_of(images, paths)) for name, images in parts.items()}


def _rows_not_of(images: StreamingImages, paths: set[str]) -> list[int]:
    return [row for row, image in enumerate(images.dataset[images.image_column]) if image["path"] not in paths]


def _file_rows(
    source: Any,
    class_names: Sequence[str] | None,
    patient_id_column: str | None,
    medical: MedicalPreprocessing,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    **listing: Any,
):
    """The images of an image folder or CSV (a file and its DICOM frame, or None, per image; DICOM mixed with other
    files as `medical`'s windows allow), and their labels, names, official splits and groups (as `RawData`; anonymised
    DICOM files grouped by `anonymised_dicom_groups`); every file checked as `listing` says (see `list_frames`)."""
    path = check_source_exists(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        files, labels, names, patients = list_csv(path, class_names, patient_id_column)
        labels_per_split, where = {"train": labels}, f"CSV {path}"
    elif path.is_dir():  # its own class names stand; patient_id_column refused before (`_check_source_options`)
        files, labels_per_split, names = list_folder_files(path)
        where, patients = f"image folder {path}", None
    else:
        raise ValueError(f"source: {str(path)!r} is a file; expected an image folder, a .csv file or a dataset")
    _check_utf8_names(files, where)
    files, frames, labels_per_split, groups = list_frames(
        files, labels_per_split, medical, patients, names, anonymised_dicom_groups, **listing
    )
    labels, names, splits = labels_and_names(labels_per_split, names, where)
    return files, frames, RawData(None, labels, names, splits, groups=groups)


def _unlabeled_rows(source: Any, medical: MedicalPreprocessing, **listing: Any) -> tuple[list[Path], list[int | None]]:
    """Every image of the image folder `source` and its subfolders ([`list_unlabeled_folder`]): a file and its DICOM
    frame (or None) per image, every file checked as `listing` says (see `list_frames`)."""
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is None or not path.is_dir() or is_saved_dataset(path):
        raise ValueError(f"unlabeled: expected an image folder (its images read without labels), got {source!r}")
    files, unlabeled = list_unlabeled_images(path, stacklevel=3)  # 3: the caller of the loader
    _check_utf8_names(files, f"image folder {path}")
    files, frames, _, _ = list_frames(files, unlabeled, medical, None, [UNLABELED], grouped=False, **listing)
    return files, frames


def _hf_rows(source: Any, image_column: str | None, label_column: str | None, where: str):
    """One table of every split's (undecoded) images and labels, and its `RawData` (labels, names, splits)."""
    import datasets

    parts, image_column, label_column, label_feature = hf_splits(source, image_column, label_column, where)
    warn_patients_not_carved_by(parts, where)
    tables, labels = [], {}
    for name, part in parts.items():
        part = part.select_columns([image_column, label_column]).cast_column(image_column, datasets.Image(decode=False))
        renames = {old: new for old, new in ((image_column, _IMAGE), (label_column, _LABEL)) if old != new}
        rows = [f"split {name!r} row {i}" for i in range(len(part))]
        tables.append(part.rename_columns(renames).add_column(_ROW, rows))
        labels[HF_SPLIT_NAMES[name]] = split_labels(part, label_column, name)
    all_labels, names, splits = labels_and_names(labels, label_feature.names, "dataset")
    return datasets.concatenate_datasets(tables), RawData(None, all_labels, names, splits)


def streaming_data_from_args(args: Any) -> dict[str, StreamingImages]:
    """[`streaming_image_classification_data`] from the flags of `add_data_args(parser, streaming=True)` (and
    `--seed`, `--dataloader_num_workers`): the scripts' `--streaming` counterpart of `load_data_from_args`. Unless
    `--no_verify_images`, every image of every split is read once first, so a damaged file is refused before
    training (one found in val or test later, by a probe, once deleted, would re-carve every split and move images
    the model was trained on into them), named in one message with the files the listing found unreadable (with
    `--no_verify_images`, those are refused when listed), and the splits keep their images' content fingerprints
    (`fingerprints`), which [`save_training_split_record`] records as an in-memory run records them."""
    medical = medical_from_args(args)
    num_channels = args.num_channels
    if num_channels is None and len(medical.windows) == 3:  # 3 DICOM windows give 3 channels, one each
        num_channels = 3
    if num_channels is None:
        raise ValueError("--streaming needs --num_channels (1 or 3): streamed images are not all looked at first")
    image_size = args.image_size if args.image_size is not None else DEFAULT_FOLDER_SIZE
    unreadable = None if args.no_verify_images else []  # else refused now, before training, as they are listed
    splits = streaming_image_classification_data(
        args.dataset, num_channels, image_size, medical=medical, unlabeled=getattr(args, "unlabeled", False),
        unreadable=unreadable, **splits_from_args(args), **fit_from_args(args), **columns_from_args(args),
    )
    if unreadable is not None:
        _verify_across_processes(list(splits.values()), getattr(args, "dataloader_num_workers", 0), unreadable)
    return splits


def training_data_from_args(args: Any) -> dict[str, Any]:
    """The splits a training script reads: streamed with `--streaming` ([`streaming_data_from_args`]), else decoded
    into memory (`load_data_from_args`); the main process prints what was read (`describe_splits`). An
    `--output_dir` inside the data folder is refused first (`check_output_outside_data`)."""
    check_output_outside_data(getattr(args, "output_dir", None), args.dataset)
    splits = (streaming_data_from_args if getattr(args, "streaming", False) else load_data_from_args)(args)
    if _process_state().is_main_process:
        print(describe_splits(splits, args.dataset))
    return splits


def save_training_split_record(args: Any, train: Any, folder: Optional[str] = None) -> None:
    """A training script's `data_splits.json` in `folder` (default `args.output_dir`; `save_split_record`): its
    carving flags and the content fingerprints of its `train` split, computed now from the images in memory, or, for
    a streamed split (`--streaming`), those read when every image was verified; none with `--no_verify_images`, and
    `evaluate` and `probe` then say they cannot check their images against the training images. An `--unlabeled` run
    records that nothing was carved."""
    streamed = isinstance(train, StreamingImages)
    save_split_record(
        folder or args.output_dir, args.val_fraction, args.test_fraction, args.seed, args.class_names,
        train_images=None if streamed else train.images, train_fingerprints=train.fingerprints if streamed else None,
        unlabeled=getattr(args, "unlabeled", False),
    )  # fmt: skip


def _process_state() -> Any:
    """The process state as the `Accelerator` a trainer makes next will find it: a `PartialState()` without the
    `ACCELERATE_USE_CPU` flag that `Accelerator` reads would be one process on a CPU machine, and every
    `Accelerator` after it too."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _verify_across_processes(
    parts: list[StreamingImages], num_workers: int, unreadable: Sequence[tuple[str, str]] = ()
) -> None:
    """[`StreamingImages.verify`] of every split of `parts` with the reading shared: each process reads every n-th
    image of each, then all refuse the same failures, together (one process reading them all while the others wait
    could outlast the process group's timeout on large data), with the files `unreadable` when listed (left out of
    `parts`, each one image), and every process keeps each split's fingerprints."""
    from accelerate.utils import gather_object

    state = _process_state()
    failures, fingerprints = [], []
    for images in parts:
        share = images.subset(np.arange(state.process_index, len(images), state.num_processes))
        share_failures, share_fingerprints = share.read_every_image(num_workers, progress_bar=state.is_main_process)
        failures += share_failures
        fingerprints.append(share_fingerprints)
    if state.num_processes > 1:
        failures = gather_object(failures)
        fingerprints = [gather_object(part) for part in fingerprints]
    _refuse_unreadable(sorted([*failures, *unreadable]), sum(len(images) for images in parts) + len(unreadable))
    for images, part in zip(parts, fingerprints):
        images.fingerprints = list(part)


def _refuse_unreadable(failures: list[tuple[str, str]], total: int) -> None:
    if not failures:
        return
    reasons = [reason if path in reason else f"{path}: {reason}" for path, reason in failures]
    shown = first_and_more(reasons, _VERIFY_SHOWN, separator="; ")
    raise ValueError(
        f"{len(failures)} of {total} images cannot be read ({shown}); expected every image to decode: "
        f"remove or replace these files{every_one_listed_in(reasons, _VERIFY_SHOWN)} (in Python, "
        "StreamingImages.unreadable_images() lists those that fail to decode)"
    )

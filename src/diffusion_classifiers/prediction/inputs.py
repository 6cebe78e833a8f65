"""What `predict` classifies: an image folder (DICOM included), a CSV of paths or a saved `datasets` folder listed as
[`PredictionInput`]s (nothing is read until a batch needs it), and the `--window` flag parsed into DICOM windows.

Only the standard library is imported at module level (see the package docstring).
"""

from __future__ import annotations

import collections.abc
import os
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from ..data.windows import WINDOW_NAMES

__all__ = [
    "DICOM_ID_COLUMNS",
    "FILE_STAMP_COLUMNS",
    "WINDOW_NAMES",
    "PredictionInput",
    "check_input_exists",
    "check_labels",
    "dicom_ids",
    "file_stamp",
    "list_inputs",
    "parse_windows",
]



@dataclass(frozen=True)
class PredictionInput:
    r"""
    One item to classify.

    Args:
        path (`str`): its name in the output: the file relative to the input folder, the `path` cell of the CSV, or
            the row index of a dataset. A rerun skips the paths already done (all frames of a file are committed in
            one batch, so a path is done or not).
        read (`Callable[[], Sequence]`): reads it as a sequence of images (one per frame: a multi-frame DICOM gives
            several, each decoded when it is asked for); raises `ValueError` or `OSError` when the file cannot be read.
        label (`str`, *optional*): its true label, carried to the output's `true_label` column.
        dicom_file (`Path`, *optional*): the DICOM file it is, whose patient, study and series ids go to the output
            (`dicom_ids`), so slice results can be combined per scan.
        file (`Path`, *optional*): the file it is read from, whose size and modification time go to the output
            (`file_stamp`), so a rerun tells a file replaced under the same name from one done.
        columns (`Mapping[str, str]`, *optional*): the other cells of its CSV row (a plankton sample, a site, a
            date), carried to the output after `path` and `frame`, so `aggregate` can group by them.
        listed_in (`Path`, *optional*): the CSV that lists it, which a prediction never writes over.
    """

    path: str
    read: Callable[[], Sequence] = field(repr=False, compare=False)
    label: Optional[str] = None
    dicom_file: Optional[Path] = field(default=None, repr=False, compare=False)
    file: Optional[Path] = field(default=None, repr=False, compare=False)
    columns: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    listed_in: Optional[Path] = field(default=None, repr=False, compare=False)


TRAINING_IMAGE_KEY = "training_image"  # labelled inputs: the image is, by content, one the model was trained on
# The output columns of a DICOM input's ids, and the metadata keys they come from.
DICOM_ID_COLUMNS = {
    "patient_id": "PatientID", "study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
    "laterality": "Laterality", "view_position": "ViewPosition",  # mammography: a breast is read from its views
    "sop_instance_uid": "SOPInstanceUID",  # the image: a file stored twice (two exports of a scan) counts once
}  # fmt: skip
# The output columns of the file an input was read from (see `file_stamp`).
FILE_STAMP_COLUMNS = ("file_bytes", "file_modified")


def dicom_ids(item: PredictionInput) -> dict[str, Optional[str]]:
    """The patient, study, series and instance ids, laterality and view of a DICOM input (`DICOM_ID_COLUMNS`; None
    where the file names none), read from its header; all None for another input."""
    if item.dicom_file is None:
        return dict.fromkeys(DICOM_ID_COLUMNS)
    from ..data.dicom import read_dicom_header

    metadata = read_dicom_header(item.dicom_file).metadata
    return {column: metadata[key] for column, key in DICOM_ID_COLUMNS.items()}


def _input_of_file(
    path: Path, name: str, read: Callable, label: Optional[str] = None, columns: Optional[Mapping[str, str]] = None,
    listed_in: Optional[Path] = None,
) -> PredictionInput:
    """The input of an image or DICOM file (one that does not exist reads as a missing file: an errors-file row),
    listed in the CSV `listed_in`, if any."""
    from ..data.dicom import is_dicom_file

    dicom = path.is_file() and is_dicom_file(path)
    read_file = partial(_read_listed_file, path, read)
    return PredictionInput(name, read_file, label, path if dicom else None, path, dict(columns or {}), listed_in)


def file_stamp(item: PredictionInput) -> dict[str, Any]:
    """The size in bytes and the modification time (UTC, ISO 8601) of the file an input is read from
    (`FILE_STAMP_COLUMNS`); None for a dataset row or a file that cannot be read."""
    try:
        stat = item.file.stat() if item.file is not None else None
    except (OSError, ValueError):  # QA: a CSV's path holding a NUL byte stopped the run ("embedded null byte")
        stat = None
    if stat is None:
        return dict.fromkeys(FILE_STAMP_COLUMNS)
    modified = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, timezone.utc).isoformat(timespec="microseconds")
    return {"file_bytes": stat.st_size, "file_modified": modified}


def list_inputs(
    source: str | os.PathLike,
    windows: Optional[Sequence[Any]] = None,
    split: str = "test",
    image_column: Optional[str] = None,
    medical: Any = None,
    label_column: Optional[str] = None,
) -> list[PredictionInput]:
    r"""
    The items of `source`, in order.

    Args:
        source (`str` or `os.PathLike`): one of

            * a folder: every image (`data.IMAGE_EXTENSIONS`) and DICOM file (`.dcm`, `.dicom`, `.dic`, `.ima`, or
              another or no extension and the 'DICM' header: `data.is_dicom_file`) in it and its subfolders, sorted
              by path, folders linked in followed; hidden files and folders (names starting with ".") and system
              folders (`@eaDir`, `__MACOSX`: `data.image_listing.SYSTEM_FOLDERS`) are skipped, other files too, with
              a warning that counts them; a broken link named as an image is a row of the errors file. A saved
              `datasets` folder (with `dataset_info.json` or `dataset_dict.json`) is read as one.
            * a `.csv` file with a header and a `path` column (relative to the CSV's folder, or absolute); a `label`
              column, when present, is carried to the output as `true_label`, its other columns (a sample, a site)
              as they are. A file the CSV names but that does not exist becomes a row of the errors file, like an
              unreadable one.
            * a saved `datasets.Dataset` or `DatasetDict` folder (`save_to_disk`), with one `Image` column (or the one
              `image_column` names); its rows are named by index; its `ClassLabel` column (the one `label_column`
              names where it has several) is carried as `true_label`, its other columns of single values (a patient,
              a site; other ClassLabel columns by name) as they are, as a CSV's.
            * one image or DICOM file.
        windows (`Sequence`, *optional*): the DICOM windows, one channel each: preset names, `"file"`, `"full"` or
            `data.Window`s (see `data.window_channels`). 1 or 3 windows. Default: those of `medical`.
        split (`str`, *optional*, defaults to `"test"`): the split of a saved `DatasetDict`.
        label_column (`str`, *optional*): the label column of a dataset (default: its one `ClassLabel` column).
        image_column (`str`, *optional*): the image column of a dataset (default: its one `Image` column).
        medical (`data.MedicalPreprocessing`, *optional*): how DICOM and 16-bit files are read (windows, padding,
            bit depth): a model's saved `pipe.preprocessing.medical`; `windows` replace its windows. Default:
            `MedicalPreprocessing()` (each DICOM's own window).

    Raises:
        `FileNotFoundError`: `source` does not exist. `ValueError`: nothing to classify, a CSV without a `path`
        column or naming a file twice, a missing split, a bad window, or a DICOM file compressed in a transfer syntax
        whose decoder plugin is not installed (named with the packages to install; a syntax nothing decodes, such as
        a video clip's, is that file's errors-file row when it is read).
    """
    from ..data.dicom import MedicalPreprocessing, check_not_dicomdir
    from ..data.hf_datasets import is_saved_dataset
    from ..data.image_listing import ACCEPTED_FILES, is_image_or_dicom_file

    source = check_input_exists(source)
    medical = medical if medical is not None else MedicalPreprocessing()
    if windows is not None:
        medical = replace(medical, windows=tuple(windows))
        medical.check_channels(None)  # 1 or 3 windows
    read = partial(_read_file, medical=medical)
    if source.is_dir() and is_saved_dataset(source):
        if medical.reads_dicom_only:  # its images are pictures (PNG, JPEG)
            raise ValueError(
                f"input {source}: a saved datasets folder holds pictures, but the model reads DICOM files through "
                f"{len(medical.windows)} windows {medical.to_dict()['windows']}; expected a folder or CSV of DICOM files"
            )
        return _dataset_inputs(source, split, image_column, label_column)
    if image_column is not None or label_column is not None:  # QA: ignored without a word
        raise ValueError(
            f"input {source}: image_column / label_column (--image_column, --label_column) apply to a saved datasets "
            "folder only; a CSV's true labels are its 'label' column, a folder's have none"
        )
    if source.is_dir():
        return _folder_inputs(source, read)
    if source.suffix.lower() == ".csv":
        return _csv_inputs(source, read)
    check_not_dicomdir(source, "input ")  # QA: refused as a file without the DICM header it has
    if is_image_or_dicom_file(source):
        _check_dicom_decoders([source])
        return [_input_of_file(source, _output_name(Path(source.name)), read)]
    raise ValueError(
        f"input {source}: expected an image folder, a .csv file of paths, a saved datasets folder or an image / DICOM "
        f"file, got a {source.suffix or 'suffix-less'} file ({ACCEPTED_FILES})"
    )


def check_input_exists(source: str | os.PathLike) -> Path:
    """`source` as a path; `FileNotFoundError` naming it when it does not exist (checked before a model is fetched)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"input {source}: not found; expected an image folder, a .csv file of paths, a saved datasets folder or "
            "an image / DICOM file"
        )
    return source


def _folder_inputs(folder: Path, read: Callable) -> list[PredictionInput]:
    from ..data.image_listing import list_unlabeled_folder

    files = list_unlabeled_folder(folder, f"input folder {folder}")
    _check_dicom_decoders(files)
    return [_input_of_file(path, _output_name(path.relative_to(folder)), read) for path in files]


def _output_name(relative: Path) -> str:
    """A file's name as the output's `path` cell: its name, or, for a name that is not UTF-8 (Latin-1 bytes from an
    old share: Python holds them as surrogates, which no UTF-8 file can be written with), with its other bytes
    escaped as `\\xe9`, so one such file neither stops the run nor makes the output unreadable."""
    name = relative.as_posix()
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


def _csv_inputs(path: Path, read: Callable) -> list[PredictionInput]:
    from ..data.image_listing import read_csv_rows

    columns, rows = read_csv_rows(path)
    if "path" not in columns:
        raise ValueError(f"CSV {path}: no 'path' column; expected a header with path[,label], got {columns}")
    if not rows:
        raise ValueError(f"CSV {path}: no rows; expected one row per image")
    carried = [column for column in columns if column and column not in ("path", "label")]  # a sample, a site
    first_line: dict[str, int] = {}
    inputs = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = row["path"] or ""
        if name in first_line:
            raise ValueError(f"CSV {path}:{line}: {name!r} is also on line {first_line[name]}; expected each file once")
        first_line[name] = line
        label = row.get("label") or None
        cells = {column: row.get(column) or "" for column in carried}
        inputs.append(_input_of_file(path.parent / name, name, read, label, cells, listed_in=path))
    _check_dicom_decoders([path.parent / name for name in first_line if name])
    return inputs


def _check_dicom_decoders(files: Sequence[Path]) -> None:
    """Refuse now, before any prediction, DICOM files compressed in a transfer syntax whose decoder plugin is not
    installed (`data.dicom.check_decoders`): the run would stop at the first of them, after committing earlier batches,
    and installing the plugin lets it through. Files that do not exist, are not DICOM, or are in a transfer syntax
    nothing decodes (a video clip) are left to their errors-file rows."""
    from ..data.dicom import check_decoders, is_dicom_file

    check_decoders(path for path in files if path.is_file() and is_dicom_file(path))


def _read_listed_file(file: Path, read: Callable) -> list:
    if not file.is_file():
        raise FileNotFoundError(f"file not found: {file}")
    return read(file)


def _read_file(path: Path, medical: Any) -> Sequence:
    """An image file as `[PIL image]` or `[array [1, H, W]]` (16-bit), a DICOM file as one `[C, H, W]` array per
    frame ([`_DicomFrames`]: each decoded as it is asked for), all in `[0, 1]`; `ValueError` when it cannot be
    decoded, or when it is not DICOM but `medical` has several windows: such a model reads one window of Hounsfield
    units per channel, and an image file's grey, copied into every channel, would be classified as no scan looks."""
    from ..data.dicom import check_not_dicomdir, is_dicom_file
    from ..data.file_decoding import decode_image_file

    check_not_dicomdir(path)  # before the windows' rule could call it "not a DICOM file"
    if is_dicom_file(path):
        return _DicomFrames(path, medical)
    if medical.reads_dicom_only:
        raise ValueError(
            f"{path}: not a DICOM file, but the model reads DICOM files through {len(medical.windows)} windows "
            f"{medical.to_dict()['windows']}, one channel each; an image file has no Hounsfield units to window "
            "(its grey would be copied into every channel). Expected a DICOM file"
        )
    image = decode_image_file(path, medical.bits_stored)
    return [image[0]] if hasattr(image, "shape") else [image]


class _DicomFrames(collections.abc.Sequence):
    """A DICOM file's frames as `medical` reads them (`[C, H, W]` arrays in `[0, 1]`), each decoded when it is asked
    for: iterated, one at a time (QA: a breast tomosynthesis volume of 80 frames of 2457 x 1996 was decoded whole, and
    refused as over the pixel limit of a file read so); indexed, that frame alone. Its header is read only where its
    length or an index is asked for: predict and cluster iterate, and read the file once."""

    def __init__(self, path: Path, medical: Any):
        self.path, self.medical = path, medical

    @cached_property
    def num_frames(self) -> int:
        from ..data.dicom import read_dicom_header

        return read_dicom_header(self.path).num_frames

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[frame] for frame in range(self.num_frames)[index]]
        return self.medical.read(self.path, range(self.num_frames)[index])[0]  # an index out of range: IndexError

    def __iter__(self) -> Iterator:
        return self.medical.read_frames(self.path)


def _dataset_inputs(
    folder: Path, split: str, image_column: Optional[str], label_column: Optional[str]
) -> list[PredictionInput]:
    import datasets

    from ..data.hf_datasets import find_column

    dataset = saved_split(folder, split)
    if len(dataset) == 0:
        raise ValueError(f"dataset {folder}: no rows; expected one row per image")
    image_column = find_column(dataset.features, image_column, datasets.Image, "image", f"dataset {folder}")
    label_column = _label_column(dataset, label_column, folder)
    labels = _column_cells(dataset, label_column) if label_column else None
    carried = {column: _column_cells(dataset, column) for column in _carried_columns(dataset, label_column, folder)}
    images = dataset.select_columns([image_column])
    return [
        PredictionInput(
            str(i), partial(_read_dataset_row, images, image_column, i), labels[i] or None if labels else None,
            columns={column: cells[i] for column, cells in carried.items()},
        )  # fmt: skip
        for i in range(len(dataset))
    ]


def saved_split(folder: Path, split: str) -> Any:
    """The `split` of a saved DatasetDict folder ("val" names a "validation" split, as evaluate reads it; QA: refused
    here), or a saved Dataset folder's rows."""
    import datasets

    from ..data.hf_datasets import canonical_split_name

    dataset = datasets.load_from_disk(str(folder))
    if isinstance(dataset, datasets.DatasetDict):
        named = [name for name in dataset if canonical_split_name(name) == canonical_split_name(split)]
        if not named:
            raise ValueError(f"dataset {folder}: no split {split!r}; expected one of {sorted(dataset)}")
        dataset = dataset[named[0]]
    return dataset


def _label_column(dataset: Any, name: Optional[str], folder: Path) -> Optional[str]:
    """The column carried as `true_label`: the `ClassLabel` column named, else the only one, else a `label` column of
    values (as a CSV's); with several ClassLabel columns and none named, none (said: the output then lacks them)."""
    import datasets

    from ..data.hf_datasets import find_column

    if name is not None:
        return find_column(dataset.features, name, datasets.ClassLabel, "label", f"dataset {folder}")
    columns = [column for column, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(columns) > 1:
        warnings.warn(
            f"dataset {folder}: several ClassLabel columns {columns}, so none is carried as true_label; pass "
            "--label_column (label_column=) naming the one the model's classes are",
            UserWarning,
            stacklevel=4,
        )
    label = dataset.features.get("label")
    if not columns and isinstance(label, datasets.Value) and label.dtype in ("string", "large_string"):
        return "label"  # class names, as a CSV's (numbers name no class: QA, refused as unknown classes)
    return columns[0] if len(columns) == 1 else None


def _carried_columns(dataset: Any, label_column: Optional[str], folder: Path) -> list[str]:
    """A dataset's columns of single values (strings, numbers, other ClassLabels: a patient, a site), carried to the
    output as a CSV's other columns are, but those named as columns predict writes whatever the model (said)."""
    import datasets

    values = [
        column for column, feature in dataset.features.items()
        if column != label_column and isinstance(feature, (datasets.Value, datasets.ClassLabel))
    ]  # fmt: skip
    written = ("path", "frame", "true_label", TRAINING_IMAGE_KEY, "label", "score")
    clashing = [column for column in values if column in written or column.startswith(("prob_", "log_likelihood"))]
    if clashing:
        warnings.warn(
            f"dataset {folder}: its column(s) {clashing} are not carried to the output, which has columns of those "
            "names; rename them to carry them",
            UserWarning,
            stacklevel=4,
        )
    return [column for column in values if column not in clashing]


def _column_cells(dataset: Any, column: str) -> list[str]:
    """A column's cells as text: a ClassLabel's names, an empty cell for a missing value."""
    import datasets
    import numpy as np

    values, feature = list(dataset[column]), dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(value) if value is not None and value >= 0 else "" for value in values]
    if feature.dtype in ("float16", "float32"):  # as stored: 0.1, not float64's 0.10000000149011612 (QA)
        values = [None if value is None else np.dtype(feature.dtype).type(value) for value in values]
    return ["" if value is None else str(value) for value in values]


def _read_dataset_row(images: Any, column: str, index: int) -> list:
    from PIL import Image

    try:
        image = images[index][column]
        if image is None:
            raise ValueError(f"row {index}: column {column!r} has no image")
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"row {index}: cannot decode column {column!r}: {error}") from error
    return [image]


def check_labels(inputs: Sequence[PredictionInput], class_names: Sequence[str]) -> None:
    """Every true label is one of the model's classes; the error lists the others, before any image is read."""
    unknown = sorted({item.label for item in inputs if item.label is not None} - set(class_names))
    if unknown:
        from ..validation import near_miss_note  # imports torch: not at the commands' --help

        raise ValueError(
            f"inputs: labels {unknown} are not among the model's classes {list(class_names)}"
            f"{near_miss_note(unknown, class_names)}; expected the label column to name classes as the "
            "model does"
        )


def parse_windows(tokens: Sequence[str]) -> tuple:
    """`--window` tokens as 1 or 3 windows (see `data.windows.parse_windows`)."""
    from ..data.dicom import MedicalPreprocessing
    from ..data.windows import parse_windows as parse

    medical = MedicalPreprocessing(windows=parse(tokens))
    medical.check_channels(None)  # 1 or 3
    return medical.windows

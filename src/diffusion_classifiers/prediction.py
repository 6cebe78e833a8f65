"""Predict with a saved classifier pipeline over many files: `predictions.csv` / `.parquet`, `errors.csv`.

[`list_inputs`] turns an image folder (recursive; DICOM included), a CSV of paths or a saved `datasets` folder into
[`PredictionInput`]s; [`predict_files`] classifies them batch by batch. Each batch is committed as its own small part
file (written to a temporary name, then renamed), so a killed run loses at most the batch it was classifying; a rerun
reads what the output, the parts and the errors file already hold and classifies only the rest. With accelerate
(`accelerate launch --num_processes N`) every process classifies its share of what is left and writes its own parts;
the main process merges them into one output in input order. A file that cannot be read becomes a row of
`errors.csv` (path, reason) and the run goes on; a failing model call stops the run (that is not the data's fault).

Only the standard library is imported at module level, so building the `predict` parser (`add_predict_args`) stays
fast; the heavy imports happen when a prediction runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

__all__ = [
    "OUTPUT_SUFFIXES",
    "PredictionInput",
    "PredictionSummary",
    "add_predict_args",
    "check_labels",
    "list_inputs",
    "output_columns",
    "parse_windows",
    "predict_files",
    "read_saved_preprocessing",
    "run_predict",
]

OUTPUT_SUFFIXES = (".csv", ".parquet")
WINDOW_NAMES = ("brain", "subdural", "bone", "file", "full")  # data.dicom.WINDOW_PRESETS plus "file" and "full"
ERROR_COLUMNS = ("path", "reason")
_TEXT_COLUMNS = {"path", "true_label", "label", "reason"}
_INT_COLUMNS = {"frame"}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionInput:
    r"""
    One item to classify.

    Args:
        path (`str`): its name in the output: the file relative to the input folder, the `path` cell of the CSV, or
            the row index of a dataset. A rerun skips the paths already done (all frames of a file are committed in
            one batch, so a path is done or not).
        read (`Callable[[], list]`): reads it as a list of images (one per frame: a multi-frame DICOM gives several);
            raises `ValueError` or `OSError` when the file cannot be read.
        label (`str`, *optional*): its true label, carried to the output's `true_label` column.
    """

    path: str
    read: Callable[[], list] = field(repr=False, compare=False)
    label: Optional[str] = None


def list_inputs(
    source: str | os.PathLike,
    windows: Optional[Sequence[Any]] = None,
    split: str = "test",
    image_column: Optional[str] = None,
    medical: Any = None,
) -> list[PredictionInput]:
    r"""
    The items of `source`, in order.

    Args:
        source (`str` or `os.PathLike`): one of

            * a folder: every image (`data.IMAGE_EXTENSIONS`) and DICOM file (`.dcm`, `.dicom`) in it and its
              subfolders, sorted by path; hidden files and folders (names starting with ".") and other files are
              skipped. A saved `datasets` folder (with `dataset_info.json` or `dataset_dict.json`) is read as one.
            * a `.csv` file with a header and a `path` column (relative to the CSV's folder, or absolute); a `label`
              column, when present, is carried to the output as `true_label`. A file the CSV names but that does not
              exist becomes a row of the errors file, like an unreadable one.
            * a saved `datasets.Dataset` or `DatasetDict` folder (`save_to_disk`), with one `Image` column (or the one
              `image_column` names); its rows are named by index; a `ClassLabel` column, when there is exactly one,
              is carried as `true_label`.
            * one image or DICOM file.
        windows (`Sequence`, *optional*): the DICOM windows, one channel each: preset names, `"file"`, `"full"` or
            `data.Window`s (see `data.window_channels`). 1 or 3 windows. Default: those of `medical`.
        split (`str`, *optional*, defaults to `"test"`): the split of a saved `DatasetDict`.
        image_column (`str`, *optional*): the image column of a dataset (default: its one `Image` column).
        medical (`data.MedicalPreprocessing`, *optional*): how DICOM and 16-bit files are read (windows, padding,
            bit depth): a model's saved `pipe.preprocessing.medical`; `windows` replace its windows. Default:
            `MedicalPreprocessing()` (each DICOM's own window).

    Raises:
        `FileNotFoundError`: `source` does not exist. `ValueError`: nothing to classify, a CSV without a `path`
        column or naming a file twice, a missing split, or a bad window.
    """
    from .data.dicom import DICOM_EXTENSIONS, MedicalPreprocessing
    from .data.readers import IMAGE_EXTENSIONS

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"input {source}: not found; expected an image folder, a .csv file or a datasets folder"
        )
    medical = medical if medical is not None else MedicalPreprocessing()
    if windows is not None:
        medical = replace(medical, windows=tuple(windows))
    _checked_windows(medical.windows)
    read = partial(_read_file, medical=medical)
    if source.is_dir() and _is_saved_dataset(source):
        return _dataset_inputs(source, split, image_column)
    if source.is_dir():
        return _folder_inputs(source, IMAGE_EXTENSIONS | DICOM_EXTENSIONS, read)
    if source.suffix.lower() == ".csv":
        return _csv_inputs(source, read)
    if source.suffix.lower() in IMAGE_EXTENSIONS | DICOM_EXTENSIONS:
        return [PredictionInput(source.name, partial(read, source))]
    raise ValueError(
        f"input {source}: expected an image folder, a .csv file of paths, a saved datasets folder or an image / DICOM "
        f"file, got a {source.suffix or 'suffix-less'} file"
    )


def _checked_windows(windows: Sequence[Any]) -> tuple:
    windows = tuple(windows)
    if len(windows) not in (1, 3):
        raise ValueError(f"windows: {len(windows)} windows give {len(windows)} channels; expected 1 or 3 windows")
    return windows


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def _folder_inputs(folder: Path, extensions: set, read: Callable) -> list[PredictionInput]:
    files = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in extensions
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )  # fmt: skip
    if not files:
        raise ValueError(f"input folder {folder}: no image or DICOM files found (extensions {sorted(extensions)})")
    return [PredictionInput(path.relative_to(folder).as_posix(), partial(read, path)) for path in files]


def _csv_inputs(path: Path, read: Callable) -> list[PredictionInput]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if "path" not in columns:
        raise ValueError(f"CSV {path}: no 'path' column; expected a header with path[,label], got {columns}")
    if not rows:
        raise ValueError(f"CSV {path}: no rows; expected one row per image")
    first_line: dict[str, int] = {}
    inputs = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = row["path"] or ""
        if name in first_line:
            raise ValueError(f"CSV {path}:{line}: {name!r} is also on line {first_line[name]}; expected each file once")
        first_line[name] = line
        label = row.get("label") or None
        inputs.append(PredictionInput(name, partial(_read_listed_file, path.parent, name, read), label))
    return inputs


def _read_listed_file(folder: Path, name: str, read: Callable) -> list:
    file = folder / name
    if not name or not file.is_file():
        raise FileNotFoundError(f"file not found: {file}")
    return read(file)


def _read_file(path: Path, medical: Any) -> list:
    """An image file as `[PIL image]` or `[array [1, H, W]]` (16-bit), a DICOM file as one `[C, H, W]` array per
    frame, all in `[0, 1]`; `ValueError` when it cannot be decoded."""
    from .data.dicom import DICOM_EXTENSIONS
    from .data.readers import _decode_image_file

    if path.suffix.lower() in DICOM_EXTENSIONS:
        return list(medical.read(path))
    image = _decode_image_file(path, medical.bits_stored)
    return [image[0]] if hasattr(image, "shape") else [image]


def _dataset_inputs(folder: Path, split: str, image_column: Optional[str]) -> list[PredictionInput]:
    import datasets

    from .data.readers import _find_column

    dataset = datasets.load_from_disk(str(folder))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"dataset {folder}: no split {split!r}; expected one of {sorted(dataset)}")
        dataset = dataset[split]
    if len(dataset) == 0:
        raise ValueError(f"dataset {folder}: no rows; expected one row per image")
    image_column = _find_column(dataset.features, image_column, datasets.Image, "image")
    labels = _dataset_labels(dataset)
    images = dataset.select_columns([image_column])
    return [
        PredictionInput(str(i), partial(_read_dataset_row, images, image_column, i), labels[i] if labels else None)
        for i in range(len(dataset))
    ]


def _dataset_labels(dataset: Any) -> Optional[list[str]]:
    import datasets

    columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(columns) != 1:
        return None
    return dataset.features[columns[0]].int2str(list(dataset[columns[0]]))


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
        raise ValueError(
            f"inputs: labels {unknown} are not among the model's classes {list(class_names)}; expected the label "
            "column to name classes as the model does"
        )


def parse_windows(tokens: Sequence[str]) -> tuple:
    """`--window` tokens as windows: names stay names, two numbers in a row (centre, width in HU) become a
    `data.Window`: `["brain", "80", "200", "bone"]` -> `("brain", Window(80.0, 200.0), "bone")`."""
    from .data.dicom import Window

    windows, numbers = [], []
    for token in tokens:
        if token in WINDOW_NAMES:
            if numbers:
                break  # a centre without its width
            windows.append(token)
            continue
        try:
            numbers.append(float(token))
        except ValueError:
            raise ValueError(
                f"--window {' '.join(tokens)}: {token!r} is neither a window name {list(WINDOW_NAMES)} nor a number"
            ) from None
        if len(numbers) == 2:
            windows.append(Window(*numbers))
            numbers = []
    if numbers:
        raise ValueError(
            f"--window {' '.join(tokens)}: centre {numbers[0]:g} has no width; expected numbers in pairs "
            "(--window 40 80)"
        )
    return _checked_windows(windows)


# --------------------------------------------------------------------------------------------------
# Where the results go: output, sidecar, parts, errors
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    output: Path
    errors: Path

    @property
    def sidecar(self) -> Path:
        """What the output was made with (model, classes, columns, windows): a rerun must match it."""
        return self.output.with_name(self.output.name + ".json")

    @property
    def parts(self) -> Path:
        """The batches committed but not yet merged into the output."""
        return self.output.with_name(self.output.name + ".parts")

    def existing(self) -> list[Path]:
        return [path for path in (self.output, self.errors, self.parts) if path.exists()]


def _prepare_files(files: _Files, run: dict, overwrite: bool, is_main: bool) -> None:
    """Refuse to mix results of another run into existing files (every process checks, so all fail alike); with
    `overwrite` the main process deletes them. The main process then records `run` in the sidecar."""
    existing = files.existing()
    if existing and not overwrite:
        if not files.sidecar.is_file():
            raise ValueError(
                f"{', '.join(map(str, existing))} exist(s) but {files.sidecar} does not, so they were not written by "
                "this prediction: refusing to add to them. Pass --overwrite (overwrite=True) to replace them, or "
                "choose another --output / --errors"
            )
        recorded = json.loads(files.sidecar.read_text())
        changed = sorted(key for key in run if recorded.get(key) != run[key])
        if changed:
            details = "; ".join(f"{key}: {recorded.get(key)!r} then, {run[key]!r} now" for key in changed)
            raise ValueError(
                f"{files.output} was written by another prediction ({details}); refusing to mix their rows. Pass "
                "--overwrite (overwrite=True) to replace it, or choose another --output"
            )
    if not is_main:
        return
    if overwrite:
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    files.output.parent.mkdir(parents=True, exist_ok=True)
    files.errors.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(files.sidecar, lambda handle: handle.write(json.dumps(run, indent=2) + "\n"))


def _write_atomically(path: Path, write: Callable[[Any], Any], mode: str = "w") -> None:
    """Write `path` through a temporary file renamed over it: a kill leaves the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, mode, **({"newline": ""} if mode == "w" else {})) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(["" if value is None else value for value in row] for row in rows)

    _write_atomically(path, write)


def _read_csv(path: Path) -> tuple[list[str], list[list]]:
    """Header and rows of a CSV this module wrote, each cell typed as its column (text, frame int, numbers float)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        return columns, [[_typed(column, cell) for column, cell in zip(columns, row)] for row in reader]


def _typed(column: str, cell: str) -> Any:
    if cell == "":
        return None
    if column in _INT_COLUMNS:
        return int(cell)
    return cell if column in _TEXT_COLUMNS else float(cell)


def _read_table(path: Path) -> tuple[list[str], list[list]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = [table.column(name).to_pylist() for name in table.column_names]
        return table.column_names, [list(row) for row in zip(*columns)]
    return _read_csv(path)


def _write_table(path: Path, columns: Sequence[str], rows: list[list]) -> None:
    if path.suffix.lower() != ".parquet":
        _write_csv(path, columns, rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string() if c in _TEXT_COLUMNS else pa.int64() if c in _INT_COLUMNS else pa.float64())
                        for c in columns])  # fmt: skip
    table = pa.table({c: [row[i] for row in rows] for i, c in enumerate(columns)}, schema=schema)
    _write_atomically(path, lambda handle: pq.write_table(table, handle), mode="wb")


def _part_files(files: _Files, kind: str) -> list[Path]:
    return sorted(files.parts.glob(f"{kind}-*.csv")) if files.parts.is_dir() else []


def _done_paths(files: _Files) -> set[str]:
    """Paths already predicted or listed as errors, in the output, the errors file or a committed part."""
    tables = [path for path in (files.output, files.errors) if path.exists()]
    tables += _part_files(files, "rows") + _part_files(files, "errors")
    return {row[0] for path in tables for row in _read_table(path)[1]}


def _merge(files: _Files, columns: Sequence[str], order: dict[str, int]) -> int:
    """Merge the committed parts into the output and the errors file, in input order, then delete them; returns the
    output's number of rows."""
    rows = _merge_one(files.output, columns, _part_files(files, "rows"), order)
    _merge_one(files.errors, ERROR_COLUMNS, _part_files(files, "errors"), order)
    shutil.rmtree(files.parts, ignore_errors=True)
    return rows


def _merge_one(path: Path, columns: Sequence[str], parts: list[Path], order: dict[str, int]) -> int:
    rows = _read_table(path)[1] if path.exists() else []
    if not parts and path.exists():
        return len(rows)
    # keyed by (path, frame): a run killed after writing the output but before deleting the parts merges them again
    key_size = 2 if "frame" in columns else 1
    unique: dict[tuple, list] = {}
    for row in rows + [row for part in parts for row in _read_csv(part)[1]]:
        unique.setdefault(tuple(row[:key_size]), row)
    # rows of paths no longer in the input (a changed CSV) are kept, after the others
    merged = sorted(unique.values(), key=lambda row: (order.get(row[0], len(order)), *row[:key_size]))
    _write_table(path, columns, merged)
    return len(merged)


# --------------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------------


@dataclass
class PredictionSummary:
    r"""
    What [`predict_files`] did.

    Args:
        output (`str`): the predictions file. errors (`str`): the errors file.
        rows (`int`): rows of the output now (one per image or DICOM frame); 0 on processes other than the main one.
        predicted (`int`): inputs classified by this call (all processes); skipped (`int`): inputs done before.
        failed (`int`): inputs of this call listed in the errors file.
        processes (`int`): the processes that shared the work.
    """

    output: str
    errors: str
    rows: int
    predicted: int
    skipped: int
    failed: int
    processes: int


def output_columns(pipeline: Any, with_true_labels: bool) -> list[str]:
    """`path, frame, [true_label,] label, score, prob_<class>..., [log_likelihood_ratio]` for `pipeline`."""
    from .pipelines import ScoreSDEClassifierPipeline

    columns = ["path", "frame"] + (["true_label"] if with_true_labels else []) + ["label", "score"]
    columns += [f"prob_{name}" for name in pipeline.class_names]
    if isinstance(pipeline, ScoreSDEClassifierPipeline) and len(pipeline.class_names) == 2:
        columns.append("log_likelihood_ratio")
    return columns


def _classify(pipeline: Any, images: list, seed: int) -> dict[str, list]:
    """The pipeline's output for `images` as columns. Score-SDE draws its noise from each image's pixels
    (`seed_by="content"`), so an image's result does not depend on its batch, process or whether the run resumed."""
    from .pipelines import ScoreSDEClassifierPipeline

    kwargs = {"seed": seed, "seed_by": "content"} if isinstance(pipeline, ScoreSDEClassifierPipeline) else {}
    output = pipeline(images, **kwargs)
    columns = {"label": list(output.labels), "score": output.scores.tolist()}
    columns.update({f"prob_{name}": output.probs[:, k].tolist() for k, name in enumerate(pipeline.class_names)})
    ratio = getattr(output, "log_likelihood_ratio", None)
    if ratio is not None:
        columns["log_likelihood_ratio"] = ratio.tolist()
    return columns


def _read_checked(item: PredictionInput, pipeline: Any) -> list:
    """The item's images, each one accepted by the pipeline's preprocessing; `ValueError`/`OSError` otherwise."""
    images = [_in_stated_range(image, pipeline.preprocessing.input_range) for image in item.read()]
    for frame, image in enumerate(images):
        try:
            pipeline.preprocess([image])
        except ValueError as error:
            raise ValueError(f"frame {frame}: {error}" if len(images) > 1 else str(error)) from error
    return images


def _in_stated_range(image: Any, input_range: str) -> Any:
    """A file's image as the pipeline's contract reads it: DICOM / 16-bit frames come as floats in `[0, 1]`, mapped by
    `2 x - 1` (the step the contract itself applies to `[0, 1]` data) for a contract stating `[-1, 1]`; PIL images and
    the other ranges unchanged (`"auto"` reads non-negative floats as `[0, 1]`)."""
    if input_range == "[-1, 1]" and hasattr(image, "dtype") and image.dtype.kind == "f":
        return image * 2.0 - 1.0
    return image


class _BatchWriter:
    """Reads, classifies and commits one batch at a time as part files named by the batch's first input index."""

    def __init__(self, pipeline: Any, files: _Files, columns: list[str], order: dict[str, int], seed: int):
        self.pipeline, self.files, self.columns, self.order, self.seed = pipeline, files, columns, order, seed
        self.items, self.images, self.errors = [], [], []
        self.failed = 0

    def add(self, item: PredictionInput) -> None:
        try:
            images = _read_checked(item, self.pipeline)
        except (ValueError, OSError) as error:
            self.errors.append([item.path, str(error)])
            self.failed += 1
            return
        self.items.append((item, len(images)))
        self.images += images

    def commit(self) -> None:
        """Classify the batch and commit it: the errors part first, so a kill in between only redoes the batch."""
        if not self.items and not self.errors:
            return
        paths = [item.path for item, _ in self.items] + [path for path, _ in self.errors]
        first = min(self.order[path] for path in paths)
        self.files.parts.mkdir(parents=True, exist_ok=True)
        rows = self._rows() if self.images else []
        if self.errors:
            _write_csv(self.files.parts / f"errors-{first:09d}.csv", ERROR_COLUMNS, self.errors)
        if rows:
            _write_csv(self.files.parts / f"rows-{first:09d}.csv", self.columns, rows)
        self.items, self.images, self.errors = [], [], []

    def _rows(self) -> list[list]:
        predicted = _classify(self.pipeline, self.images, self.seed)
        rows, position = [], 0
        for item, num_frames in self.items:
            for frame in range(num_frames):
                values = {"path": item.path, "frame": frame, "true_label": item.label}
                values.update({column: predicted[column][position] for column in predicted})
                rows.append([values[column] for column in self.columns])
                position += 1
        return rows


def predict_files(
    pipeline: Any,
    inputs: Sequence[PredictionInput],
    output_path: str | os.PathLike,
    errors_path: Optional[str | os.PathLike] = None,
    batch_size: int = 64,
    run_info: Optional[dict] = None,
    overwrite: bool = False,
    seed: int = 0,
    accelerator: Any = None,
    progress_bar: bool = True,
) -> PredictionSummary:
    r"""
    Classify `inputs` with `pipeline`, writing one row per image (per frame of a multi-frame DICOM) to `output_path`.

    Columns: `path`, `frame` (0 for single images), `true_label` (when the inputs carry labels), `label` (the
    predicted class), `score` (its probability), `prob_<class>` for every class, and for a binary Score-SDE pipeline
    `log_likelihood_ratio` (`log p(x | positive) - log p(x | negative)`). Rows follow the input order.

    Resumable: the results of finished batches are kept in `<output>.parts/` until the end, when they are merged
    into the output and the errors file; a rerun skips every path already in the output, the errors file or a part.
    `<output>.json` records the model, its classes, the columns and `run_info`: a rerun that differs is refused
    unless `overwrite=True`, which deletes the earlier output, errors file and parts first. A file that cannot be
    read or that the pipeline's preprocessing refuses is a row `path, reason` of the errors file; to retry such
    files, delete their rows (or the errors file).

    Args:
        pipeline (`DiffusionClassifierPipeline`): a loaded classifier pipeline (on the device it should run on);
            its own progress bars are turned off (`set_progress_bar_config(disable=True)`), one bar counts the files.
        inputs (`Sequence[PredictionInput]`): from [`list_inputs`]; their paths must be unique.
        output_path (`str` or `os.PathLike`): a `.csv` or `.parquet` file.
        errors_path (`str` or `os.PathLike`, *optional*): a `.csv` file; default `errors.csv` beside the output.
        batch_size (`int`, *optional*, defaults to 64): images per pipeline call and per committed batch (a
            multi-frame file is never split, so a batch may hold more).
        run_info (`dict`, *optional*): JSON-serialisable facts a rerun must match (the CLI records the model folder
            and the DICOM windows).
        overwrite (`bool`, *optional*, defaults to `False`): replace an output written by another prediction.
        seed (`int`, *optional*, defaults to 0): the Score-SDE pipeline's seed (its draws come from the seed and each
            image's pixels).
        accelerator (`accelerate.Accelerator`, *optional*): split the work across its processes; each must call
            this function with the same arguments. Default: this process alone.
        progress_bar (`bool`, *optional*, defaults to `True`): a tqdm bar over the inputs, on the main process.

    Returns:
        [`PredictionSummary`]
    """
    from tqdm.auto import tqdm

    files = _check_prediction_args(output_path, errors_path, batch_size, inputs)
    is_main, wait = _process_roles(accelerator)
    columns = output_columns(pipeline, any(item.label is not None for item in inputs))
    check_labels(inputs, pipeline.class_names)
    run = {"run": run_info or {}, "class_names": list(pipeline.class_names), "columns": columns}
    _prepare_files(files, run, overwrite, is_main)
    wait()
    done = _done_paths(files)
    remaining = [item for item in inputs if item.path not in done]
    mine = _share(remaining, accelerator)
    order = {item.path: i for i, item in enumerate(inputs)}
    writer = _BatchWriter(pipeline, files, columns, order, seed)
    pipeline.set_progress_bar_config(disable=True)  # one bar, over the files
    for item in tqdm(mine, desc="predict", unit="file", disable=not (progress_bar and is_main)):
        writer.add(item)
        if len(writer.images) >= batch_size:
            writer.commit()
    writer.commit()
    failed = _sum_over_processes(writer.failed, accelerator)
    wait()
    rows = _merge(files, columns, order) if is_main else 0
    wait()
    return PredictionSummary(
        output=str(files.output), errors=str(files.errors), rows=rows, predicted=len(remaining) - failed,
        skipped=len(inputs) - len(remaining), failed=failed,
        processes=1 if accelerator is None else accelerator.num_processes,
    )  # fmt: skip


def _check_prediction_args(output_path, errors_path, batch_size: int, inputs: Sequence[PredictionInput]) -> _Files:
    output = Path(output_path)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"output {output}: expected a {' or '.join(OUTPUT_SUFFIXES)} file, got {output.suffix or 'no suffix'}"
        )
    errors = Path(errors_path) if errors_path is not None else output.with_name("errors.csv")
    if errors.suffix.lower() != ".csv" or errors.resolve() == output.resolve():
        raise ValueError(f"errors {errors}: expected a .csv file other than the output {output}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not inputs:
        raise ValueError("inputs: expected at least one input, got none")
    paths = [item.path for item in inputs]
    if len(set(paths)) != len(paths):
        duplicate = next(path for i, path in enumerate(paths) if path in paths[:i])
        raise ValueError(f"inputs: path {duplicate!r} appears more than once; expected unique paths")
    return _Files(output, errors)


def _process_roles(accelerator: Any) -> tuple[bool, Callable[[], None]]:
    if accelerator is None:
        return True, lambda: None
    return accelerator.is_main_process, accelerator.wait_for_everyone


def _share(items: list, accelerator: Any) -> list:
    """This process's contiguous share of `items` (all of them without an accelerator)."""
    if accelerator is None or accelerator.num_processes == 1:
        return items
    with accelerator.split_between_processes(items) as share:
        return list(share)


def _sum_over_processes(count: int, accelerator: Any) -> int:
    if accelerator is None or accelerator.num_processes == 1:
        return count
    import torch

    return int(accelerator.reduce(torch.tensor([count], device=accelerator.device), reduction="sum").item())


# --------------------------------------------------------------------------------------------------
# The `predict` command
# --------------------------------------------------------------------------------------------------


def add_predict_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `diffusion-classifiers predict` (read by [`run_predict`]); only the standard library is used."""
    parser.add_argument("--model_dir", required=True, help="a saved classifier pipeline folder (model_index.json), any method")
    parser.add_argument(
        "--input", required=True,
        help="an image folder (recursive; PNG/JPEG/TIFF/... and DICOM .dcm), a .csv with a 'path' column (relative to "
        "the CSV; a 'label' column is carried as true_label), a saved datasets folder, or one image file",
    )  # fmt: skip
    parser.add_argument("--output", default="predictions.csv", help="the predictions file, .csv or .parquet")
    parser.add_argument("--errors", default=None, help="where unreadable files are listed (path, reason); None: errors.csv beside --output")
    parser.add_argument("--batch_size", type=int, default=64, help="images per pipeline call; a killed run loses at most one batch")
    parser.add_argument(
        "--window", nargs="+", default=None, metavar="WINDOW",
        help=f"DICOM input: 1 or 3 windows, one channel each, each a name ({', '.join(WINDOW_NAMES)}; 'file' is the "
        "file's own WindowCenter/Width, 'full' its whole stored range) or a pair 'CENTER WIDTH' in HU (--window 40 80); "
        "overrides the windows saved with the model (None: those, recorded in the output's .json)",
    )  # fmt: skip
    parser.add_argument("--split", default="test", help="the split to read when --input is a saved DatasetDict")
    parser.add_argument("--image_column", default=None, help="a dataset's image column; None: its one Image column")
    parser.add_argument("--seed", type=int, default=0, help="Score-SDE pipelines: the seed of their noise, combined with each image's pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an output written by another model or settings instead of refusing")
    parser.add_argument("--no_progress_bar", action="store_true", help="no tqdm bar")
    return parser


def run_predict(args: argparse.Namespace) -> PredictionSummary:
    """`diffusion-classifiers predict`: every flag checked and the inputs listed before the model is loaded."""
    from accelerate import Accelerator

    from .pipelines import DiffusionClassifierPipeline
    from .training.launch import check_world_size

    windows = parse_windows(args.window) if args.window is not None else None
    medical = read_saved_preprocessing(args.model_dir).medical_or_default
    if windows is not None:
        medical = replace(medical, windows=windows)
    inputs = list_inputs(args.input, split=args.split, image_column=args.image_column, medical=medical)
    _check_prediction_args(args.output, args.errors, args.batch_size, inputs)
    accelerator = Accelerator()
    check_world_size(accelerator)
    pipeline = DiffusionClassifierPipeline.from_pretrained(args.model_dir).to(accelerator.device)
    run_info = {"model_dir": str(Path(args.model_dir).resolve()), "windows": _windows_json(medical.windows)}
    summary = predict_files(
        pipeline, inputs, args.output, args.errors, batch_size=args.batch_size, run_info=run_info,
        overwrite=args.overwrite, seed=args.seed, accelerator=accelerator, progress_bar=not args.no_progress_bar,
    )  # fmt: skip
    if accelerator.is_main_process:
        print(
            f"{summary.output}: {summary.rows} rows ({summary.predicted} inputs predicted now on {summary.processes} "
            f"process(es), {summary.skipped} done before); {summary.failed} unreadable -> {summary.errors}"
        )
    return summary


def read_saved_preprocessing(model_dir: str | os.PathLike) -> Any:
    """The preprocessing contract in a saved pipeline folder's `model_index.json`, read without loading the model
    (the default contract for a folder saved without one, or a model that is not a local folder)."""
    from .data import ImagePreprocessing

    index_file = Path(model_dir) / "model_index.json"
    if not index_file.is_file():
        return ImagePreprocessing()
    try:
        saved = json.loads(index_file.read_text()).get("preprocessing")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{index_file} is not valid JSON: {error}") from error
    return ImagePreprocessing() if saved is None else ImagePreprocessing.from_dict(saved)


def _windows_json(windows: Sequence[Any]) -> list:
    return [window if isinstance(window, str) else [window.center, window.width] for window in windows]

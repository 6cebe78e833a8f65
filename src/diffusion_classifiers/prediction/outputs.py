"""Where `predict`'s results go: the output table (`.csv` / `.parquet`), its `.json` sidecar, the committed batch parts
and the errors file, each written atomically; what a rerun finds already done; the final merge in input order.

Only the standard library is imported at module level (see the package docstring).
"""

from __future__ import annotations

import csv
import heapq
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

from ..atomic_files import write_atomically
from .inputs import DICOM_ID_COLUMNS, FILE_STAMP_COLUMNS, TRAINING_IMAGE_KEY

__all__ = [
    "CarriedCells",
    "ERROR_COLUMNS",
    "OUTPUT_SUFFIXES",
    "OutputFiles",
    "POSITIVE_CLASS_KEY",
    "RATIO_KEY",
    "TRAINING_IMAGE_KEY",
    "check_output_args",
    "columns_of_resumed_run",
    "default_errors_path",
    "done_paths",
    "errors_file_of_resumed_run",
    "forget_rows",
    "is_training_image",
    "listed_errors",
    "merge_parts",
    "model_moved",
    "new_part",
    "predicted_nothing",
    "prepare_output_files",
    "ratio_direction",
    "ratio_positive_class",
    "read_predictions",
    "recorded_file_stamps",
    "recorded_run_info",
    "windows_json",
    "write_csv",
]

OUTPUT_SUFFIXES = (".csv", ".parquet")
ERROR_COLUMNS = ("path", "reason")
_INT_COLUMNS = {"frame", "file_bytes"}
_FLOAT_COLUMNS = {"score", "log_likelihood_ratio", "log_likelihood_ratio_stderr"}  # and prob_<class>
# A parquet output is read and written this many rows at a time (a merge holds no more of it in memory)
PARQUET_ROWS_AT_ONCE = 4096
LEGACY_ERRORS_NAME = "errors.csv"  # the default errors file before each output had its own, shared by a folder
_ERRORS_KEY = "errors_file"  # in the sidecar, beside the run: the errors file, relative to the output's folder
# in the sidecar's "run" (whose keys an earlier version's sidecar lacks are not compared on a rerun, so it resumes):
POSITIVE_CLASS_KEY = "positive_class"  # binary: the model's saved positive class, null when it saved none
RATIO_KEY = "log_likelihood_ratio"  # binary Score-SDE: which way the log_likelihood_ratio column points
_BOOL_COLUMNS = {TRAINING_IMAGE_KEY}  # "True" / "False" in a CSV, booleans in parquet
# output columns added after outputs were first written: an output without them is resumed with its own columns
COLUMNS_ADDED_LATER = ("log_likelihood_ratio_stderr", TRAINING_IMAGE_KEY, *DICOM_ID_COLUMNS, *FILE_STAMP_COLUMNS)
# the CLI's model: its folder (or Hub id), kept for information, and its content (`hub.model_fingerprint`), which
# identifies it: the same model mounted at another path, or a copy of its folder, resumes
MODEL_PATH_KEY, MODEL_CONTENT_KEY = "model_dir", "model_sha256"


@dataclass(frozen=True)
class OutputFiles:
    """The predictions file and the errors file of one prediction, and the files kept beside the output."""

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

    @property
    def replaced(self) -> Path:
        """An earlier prediction's files an `overwrite` run set aside, deleted once it has merged its own."""
        return self.output.with_name(self.output.name + ".replaced")

    def existing(self) -> list[Path]:
        return [path for path in (self.output, self.errors, self.parts) if path.exists()]

    def recorded(self) -> Optional[dict]:
        """What the sidecar records; None without one."""
        return json.loads(self.sidecar.read_text()) if self.sidecar.is_file() else None


def prepare_output_files(files: OutputFiles, run: dict, overwrite: bool, is_main: bool) -> None:
    """Refuse to mix results of another run into existing files (every process checks, so all fail alike); with
    `overwrite` the main process sets them aside (`set_aside_replaced`). The main process then records `run` and the
    errors file in the sidecar (only `run` must match on a rerun)."""
    existing = files.existing()
    if existing and not overwrite:
        if not files.sidecar.is_file():
            raise ValueError(
                f"{', '.join(map(str, existing))} exist(s) but {files.sidecar} does not, so they were not written by "
                "this prediction: refusing to add to them. Pass --overwrite (overwrite=True) to replace them, or "
                "choose another --output / --errors"
            )
        changed = _changes(files.recorded(), run)
        if changed:
            details = "; ".join(f"{key}: {then!r} then, {now!r} now" for key, then, now in changed)
            raise ValueError(
                f"{files.output} was written by another prediction ({details}); refusing to mix their rows. Pass "
                "--overwrite (overwrite=True) to replace it, or choose another --output"
            )
    if not is_main:
        return
    if overwrite and not continues_a_killed_replacement(files, run):
        set_aside_replaced(files, existing)
    files.output.parent.mkdir(parents=True, exist_ok=True)
    files.errors.parent.mkdir(parents=True, exist_ok=True)
    recorded = {**run, _ERRORS_KEY: Path(os.path.relpath(files.errors, files.output.parent)).as_posix()}
    write_atomically(files.sidecar, lambda handle: handle.write(json.dumps(recorded, indent=2) + "\n"))


def continues_a_killed_replacement(files: OutputFiles, run: dict) -> bool:
    """Whether an overwriting prediction continues one that died with these very settings (the prediction it replaces
    still set aside in `files.replaced`, the sidecar recording `run`): its committed rows are kept, not predicted
    again (QA: the identical rerun of a killed `--overwrite` predicted every input again)."""
    return files.replaced.exists() and files.sidecar.is_file() and not _changes(files.recorded(), run)


def set_aside_replaced(files: OutputFiles, existing: list[Path]) -> None:
    """An earlier prediction's output, errors file, parts and sidecar moved into `files.replaced` (deleted once the run
    replacing them has merged its rows: one that dies first loses nothing); when an earlier one is there already, the
    `existing` files are those of a replacing run that died, and are deleted instead."""
    if files.replaced.exists():
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    files.replaced.mkdir(parents=True)
    for path in existing + ([files.sidecar] if files.sidecar.is_file() else []):
        target = files.replaced / path.name
        os.replace(path, target if not target.exists() else files.replaced / f"errors-{path.name}")


def _changes(recorded: dict, run: dict) -> list[tuple[str, Any, Any]]:
    """`(key, then, now)` for each setting of `run` that differs from the sidecar's; of the caller's `run_info` (under
    "run", and within its dicts) only the keys the sidecar has are compared: an output written before a key was
    recorded resumes."""
    changes = [(key, recorded.get(key), run[key]) for key in sorted(run) if key != "run" and recorded.get(key) != run[key]]
    then, now = recorded.get("run") or {}, run.get("run") or {}
    for key in sorted(then):
        if key == MODEL_PATH_KEY and _same_model_content(then, now):
            continue
        if isinstance(then[key], dict) and isinstance(now.get(key), dict):  # the pipeline call: settings that differ
            changes += [(f"{key}.{name}", value, now[key].get(name)) for name, value in sorted(then[key].items())
                        if value != now[key].get(name)]  # fmt: skip
        elif then[key] != now.get(key) and not (key == "windows" and _same_windows(then[key], now.get(key))):
            changes.append((key, then[key], now.get(key)))
    return changes


def _same_model_content(then: dict, now: dict) -> bool:
    """Whether two runs record the same model fingerprint; False when the earlier one records none (an output of a
    version that recorded the path alone is compared by its path)."""
    return then.get(MODEL_CONTENT_KEY) is not None and then.get(MODEL_CONTENT_KEY) == now.get(MODEL_CONTENT_KEY)


def model_moved(files: OutputFiles, run_info: dict) -> Optional[str]:
    """The model path the output's sidecar records when `run_info` gives the model at another path with the same
    fingerprint (a copy, or the folder mounted elsewhere: the rerun resumes); None otherwise."""
    recorded = recorded_run_info(files) or {}
    moved = recorded.get(MODEL_PATH_KEY) not in (None, run_info.get(MODEL_PATH_KEY))
    return recorded.get(MODEL_PATH_KEY) if moved and _same_model_content(recorded, run_info) else None


def windows_json(windows: Sequence[Any]) -> list:
    """Windows as a run's identity records them: a name, or `[center, width]` (and the function, when not linear:
    outputs of linear windows resume as recorded before windows had one); recorded ones stay as they are."""
    from ..data.windows import Window

    return [list(window.to_dict().values()) if isinstance(window, Window) else window for window in windows]


def _same_windows(then: Any, now: Any) -> bool:
    """Whether two runs' recorded windows are the same, presets compared as the centre / width they name (QA: a rerun
    with `--window 40 80 80 200 600 2800` was refused against the model's brain, subdural and bone)."""
    from ..data.windows import named_windows

    if not (isinstance(then, list) and isinstance(now, list)):
        return False
    return windows_json(named_windows(then)) == windows_json(named_windows(now))


def errors_file_of_resumed_run(files: OutputFiles, overwrite: bool) -> OutputFiles:
    """`files` with the errors file a rerun without `--errors` keeps while `<output>.errors.csv` does not exist: the
    one the output's sidecar records, or, for a sidecar written before outputs had their own errors file (it records
    none), the folder's shared `errors.csv` when there is one. A first run, or one with `overwrite`, keeps
    `<output>.errors.csv`. Called before [`prepare_output_files`], which refuses a rerun whose settings differ."""
    sidecar = None if overwrite or files.errors.exists() else files.recorded()
    if sidecar is None:
        return files
    recorded = sidecar.get(_ERRORS_KEY)
    if recorded is not None:
        return replace(files, errors=files.output.parent / recorded)
    legacy = files.output.with_name(LEGACY_ERRORS_NAME)
    if legacy.is_file() and legacy.resolve() != files.output.resolve():
        return replace(files, errors=legacy)
    return files


def predicted_nothing(files: OutputFiles) -> bool:
    """Whether the output's sidecar stands beside no result: no output, no errors file, no committed part (a run
    that failed after recording its settings, before it predicted anything). A rerun, with other settings too, may
    then record its own: there are no rows to mix."""
    parts = files.parts.is_dir() and any(files.parts.iterdir())
    return files.sidecar.is_file() and not (files.output.exists() or files.errors.exists() or parts)


def recorded_run_info(files: OutputFiles) -> Optional[dict]:
    """The `run_info` (`"run"`) the output's sidecar records; None without a sidecar."""
    recorded = files.recorded()
    return None if recorded is None else recorded.get("run") or {}


def ratio_direction(positive: str, negative: str) -> str:
    """What a binary Score-SDE `log_likelihood_ratio` column is, as the sidecar records it under `RATIO_KEY`."""
    return f"log p(x | {positive}) - log p(x | {negative})"


def ratio_positive_class(run: dict, class_names: Sequence[str], sidecar: Any) -> Optional[str]:
    """The class a binary `log_likelihood_ratio` column points to (its first term), as `run` (the "run" of the
    `sidecar`) records it; None when it records no direction (no sidecar, or one of an earlier version)."""
    direction = run.get(RATIO_KEY)
    if direction is None or len(class_names) != 2:
        return None
    first, second = class_names
    for positive, negative in ((first, second), (second, first)):
        if direction == ratio_direction(positive, negative):
            return positive
    raise ValueError(
        f"{sidecar}: records {RATIO_KEY} {direction!r}; expected {ratio_direction(first, second)!r} or "
        f"{ratio_direction(second, first)!r} of the predictions' classes {list(class_names)} (is it the sidecar of "
        "another output?)"
    )


def columns_of_resumed_run(
    files: OutputFiles, columns: list[str], overwrite: bool, carried: Sequence[str] = ()
) -> list[str]:
    """The columns a rerun writes: `columns`, or the ones the output's sidecar records when they are `columns` less
    some of `COLUMNS_ADDED_LATER` and of the input CSV's `carried` columns (an output written before those were added
    or carried is resumed as it was, not refused). Called before [`prepare_output_files`], which refuses a rerun whose
    settings differ."""
    recorded = None if overwrite else files.recorded()
    if recorded is None or not isinstance(recorded.get("columns"), list):
        return columns
    # an output may predate some of the added columns only (the stderr column, not the DICOM ids)
    missing = {column for column in columns if column not in recorded["columns"]}
    earlier = [column for column in columns if column not in missing]
    return earlier if missing <= {*COLUMNS_ADDED_LATER, *carried} and recorded["columns"] == earlier else columns


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(["" if value is None else value for value in row] for row in rows)

    write_atomically(path, write)


def _read_csv(path: Path) -> tuple[list[str], list[list]]:
    """Header and rows of a CSV this module wrote, each cell typed as its column (text, frame int, numbers float)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        return columns, [_typed_row(columns, row, path, reader) for row in reader]


def _typed_row(columns: Sequence[str], row: Sequence[str], path: Path, reader: Any) -> list:
    """A CSV row's cells typed as their columns; a cell that is not (an edited file: a word in a number column) is
    refused naming the file and line `reader` is at."""
    try:
        return [_typed(column, cell) for column, cell in zip(columns, row)]
    except ValueError as error:
        raise ValueError(f"{path}:{reader.line_num}: {error}; expected the numbers predict wrote") from error


def _typed(column: str, cell: str) -> Any:
    if cell == "":
        return None
    if column in _INT_COLUMNS:
        return int(cell)
    if column in _BOOL_COLUMNS:
        return cell.lower() == "true"
    # a column added to the file after predict (a plankton sample, a site) is text: its "007" stays "007"
    return float(cell) if _is_number_column(column) else cell


def _is_number_column(column: str) -> bool:
    return column in _FLOAT_COLUMNS or column.startswith("prob_")


def is_training_image(value: Any) -> bool:
    """Whether a `training_image` cell flags a training image: True as `read_predictions` types it, or 1.0, as the
    parquet outputs of the version that added the column stored it (and aggregate then missed it)."""
    return value == 1  # True == 1 too


def read_predictions(path: str | os.PathLike) -> tuple[list[str], list[list]]:
    """The columns and rows of a `.csv` or `.parquet` output `predict` wrote, each cell typed as its column."""
    return _read_table(Path(path))


def _read_table(path: Path) -> tuple[list[str], list[list]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = [table.column(name).to_pylist() for name in table.column_names]
        return table.column_names, [list(row) for row in zip(*columns)]
    return _read_csv(path)


def _write_table(path: Path, columns: Sequence[str], rows: Iterable[list]) -> None:
    """`rows` (typed, as `_read_table` gives them) written to a `.csv` or `.parquet` `path`, whole or not at all; a
    parquet file `PARQUET_ROWS_AT_ONCE` rows at a time, so its memory does not grow with the rows."""
    if path.suffix.lower() != ".parquet":
        write_csv(path, columns, rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    # a column of the input CSV carried through (a plankton sample, a site) is text, as `_typed` reads it back
    schema = pa.schema([(c, pa.int64() if c in _INT_COLUMNS else pa.bool_() if c in _BOOL_COLUMNS
                         else pa.float64() if _is_number_column(c) else pa.string()) for c in columns])  # fmt: skip

    def cells(chunk: list, i: int, column: str) -> list:  # an earlier version's parquet stored training_image as 1.0
        values = [row[i] for row in chunk]
        return [None if v is None else is_training_image(v) for v in values] if column in _BOOL_COLUMNS else values

    def write(handle) -> None:
        with pq.ParquetWriter(handle, schema) as writer:
            for chunk in _chunked(rows, PARQUET_ROWS_AT_ONCE):
                writer.write_table(pa.table({c: cells(chunk, i, c) for i, c in enumerate(columns)}, schema=schema))

    write_atomically(path, write, mode="wb")


def _chunked(rows: Iterable[list], size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def new_part(files: OutputFiles, kind: str, first: int) -> Path:
    """A part file of `kind` ("rows" or "errors") for a batch whose first input is number `first`, one that does not
    exist yet: after a kill, a rerun that tries again an input of an earlier part (`--retry_errors`, a replaced
    file) starts a batch at that part's number, and must not overwrite the other inputs that part holds."""
    path = files.parts / f"{kind}-{first:09d}.csv"
    again = 1
    while path.exists():
        path, again = files.parts / f"{kind}-{first:09d}-{again}.csv", again + 1
    return path


def _part_files(files: OutputFiles, kind: str) -> list[Path]:
    return sorted(files.parts.glob(f"{kind}-*.csv")) if files.parts.is_dir() else []


def _tables(files: OutputFiles, kind: str) -> list[Path]:
    """The output's tables of `kind`: "rows" (the output and its committed row parts) or "errors" (the errors file
    and its committed error parts), those that exist."""
    table = files.output if kind == "rows" else files.errors
    return [table] * table.exists() + _part_files(files, kind)


def _first_column(tables: list[Path]) -> set[str]:
    """The paths (the first column) of `tables`, the other columns neither typed nor kept (QA: a rerun over 30,000
    rows of 121 classes parsed every probability into floats to find the paths done)."""
    return {path for table in tables for path in _paths_in(table)}


def _paths_in(table: Path) -> list[str]:
    return [row[0] for row in _read_columns(table, ())]


def _read_columns(table: Path, names: Sequence[str]) -> Optional[list[tuple]]:
    """`(path, *names)` of each row of `table`, typed as their columns, the other columns neither typed nor kept; None
    when `table` has not all of `names`."""
    if table.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        header = pq.read_schema(table).names
        if not set(names) <= set(header):
            return None
        data = pq.read_table(table, columns=[header[0], *names])
        return list(zip(*(column.to_pylist() for column in data.columns)))
    with open(table, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if not set(names) <= set(header):
            return None
        where = [header.index(name) for name in names]
        return [(row[0], *_typed_row([header[i] for i in where], [row[i] for i in where], table, reader))
                for row in reader if row]  # fmt: skip


def done_paths(files: OutputFiles) -> set[str]:
    """Paths already predicted or listed as errors, in the output, the errors file or a committed part."""
    return _first_column(_tables(files, "rows")) | listed_errors(files)


def listed_errors(files: OutputFiles) -> set[str]:
    """The paths the errors file and its committed parts list (the rows `forget_errors` may remove)."""
    return _first_column(_tables(files, "errors"))


def forget_errors(files: OutputFiles, paths: set[str]) -> int:
    """Remove the rows of `paths` from the errors file and its committed parts, so a rerun tries those files again
    (repaired since); rows of other paths stay (an errors file shared by outputs of earlier versions keeps theirs).
    Returns the number of rows removed."""
    return _forget(_tables(files, "errors"), paths)


def forget_rows(files: OutputFiles, paths: set[str]) -> int:
    """Remove the rows of `paths` from the output and its committed parts, so a rerun predicts those files again
    (replaced since under the same name). Returns the number of rows removed."""
    return _forget(_tables(files, "rows"), paths)


def recorded_file_stamps(files: OutputFiles) -> dict[str, tuple]:
    """`path -> (file_bytes, file_modified)` of the rows of the output and its committed parts that record them (an
    output written before they were recorded has none)."""
    stamps = {}
    for table in _tables(files, "rows"):
        rows = _read_columns(table, FILE_STAMP_COLUMNS)
        stamps.update({row[0]: row[1:] for row in rows or ()})
    return stamps


def _forget(tables: list[Path], paths: set[str]) -> int:
    removed = 0
    for table in tables:
        columns, rows = _read_table(table)
        kept = [row for row in rows if row[0] not in paths]
        if len(kept) < len(rows):
            removed += len(rows) - len(kept)
            _write_table(table, columns, kept)
    return removed


class CarriedCells(NamedTuple):
    """The cells an output carries from its input, as the input holds them now: `columns` (an input CSV's columns,
    `true_label`) and each input path's `cells` (text, "" for none; None where the row keeps its own: an empty DICOM
    id cell, which the file's header fills), in that order."""

    columns: list
    cells: dict


def merge_parts(
    files: OutputFiles, columns: Sequence[str], order: dict[str, int], carried: Optional[CarriedCells] = None
) -> tuple[list[str], list[str], int]:
    """Merge the committed parts into the output and the errors file, in input order, then delete them; returns the
    paths of the output's rows as written (those of paths no longer in the input kept, after the others: an earlier
    run's results of files since removed) and of the errors file's (the unreadable files of this run and of earlier
    ones), so what was merged need not be read again, and how many rows took the `carried` cells (the input's as it
    is now: an earlier run's rows kept those its input had then, QA: a sample id or a label corrected in the input
    CSV stayed as it was in the output; the output is then rewritten, though no part is to merge)."""
    paths, refreshed = _merge_one(files.output, columns, _part_files(files, "rows"), order, carried)
    unreadable, _ = _merge_one(files.errors, ERROR_COLUMNS, _part_files(files, "errors"), order)
    shutil.rmtree(files.parts, ignore_errors=True)
    return paths, unreadable, refreshed


class _OutOfOrder(Exception):
    """A table whose rows are not in the merge's order: the merge is made in memory instead."""


def _merge_one(
    path: Path, columns: Sequence[str], parts: list[Path], order: dict[str, int], carried: Optional[CarriedCells] = None
) -> tuple[list[str], int]:
    """`path`'s rows and the `parts`' (committed batches, in name order), each (path, frame) once (the first: a run
    killed after writing the output but before deleting the parts merges them again), in input order (rows of paths
    not in `order` after the others), written to `path`; returns the paths of its rows and how many rows took their
    `carried` cells (another value than they held). A CSV output is streamed when
    the output and the parts, one after the other, are each in that order already, as one run's batches are (QA: the
    merge held every row in memory, +0.5 GB for 100,000 rows of 121 classes), and so is a parquet output (QA: +0.5 GB
    for 60,000 rows); else the rows are sorted in memory."""
    carried = carried if carried is not None and carried.columns else None
    if path.exists() and not parts:
        rows = _read_columns(path, carried.columns if carried else ())  # one read: the paths, and the cells to check
        if rows is None:  # an earlier output without a carried column: none to refresh
            return _paths_in(path), 0
        if carried is None or not _carried_cells_changed(rows, carried):
            return [row[0] for row in rows], 0
    key_size = 2 if "frame" in columns else 1

    def merge_key(row: Sequence) -> tuple:
        return (order.get(row[0], len(order)), row[0], *(int(value) for value in row[1:key_size]))

    sources = [[path]] * path.exists() + [parts]
    typed = path.suffix.lower() == ".parquet"  # a parquet file's cells are typed: the CSV parts' are typed to join them
    written: list[str] = []
    taking = _CarriedInto(columns, carried, typed)
    streams = [_rows_in_order(tables, merge_key, typed) for tables in sources]
    try:
        _write_table(path, columns, map(taking, _first_of_each(heapq.merge(*streams, key=merge_key), merge_key,
                                                               written)))  # fmt: skip
        return written, taking.changed
    except _OutOfOrder:
        pass  # nothing written: `write_atomically` removed its temporary file
    unique: dict[tuple, list] = {}
    for row in (row for tables in sources for table in tables for row in _read_table(table)[1]):
        unique.setdefault(tuple(row[:key_size]), row)
    taking = _CarriedInto(columns, carried, typed=True)
    merged = [taking(row) for row in sorted(unique.values(), key=merge_key)]
    _write_table(path, columns, merged)
    return [row[0] for row in merged], taking.changed


class _CarriedInto:
    """A row with the `carried` cells of its path (text, or `typed` as `_typed` reads them) in place of its own,
    counting the rows that changed; rows unchanged without `carried`, or of a path it has no cells for."""

    def __init__(self, columns: Sequence[str], carried: Optional[CarriedCells], typed: bool):
        self.positions = [] if carried is None else [list(columns).index(name) for name in carried.columns]
        self.carried, self.typed, self.changed = carried, typed, 0

    def __call__(self, row: list) -> list:
        cells = None if self.carried is None else self.carried.cells.get(row[0])
        if cells is None:
            return row
        if self.typed:
            cells = _typed_cells(self.carried.columns, cells)
        taken = [(i, cell) for i, cell in zip(self.positions, cells) if cell is not None]  # None: the row's own
        if any(row[i] != cell for i, cell in taken):
            row = list(row)
            for i, cell in taken:
                row[i] = cell
            self.changed += 1
        return row


def _typed_cells(columns: Sequence[str], cells: Sequence[Optional[str]]) -> list:
    """Carried cells as `_typed` reads them back; None (the row keeps its own) stays None."""
    return [None if cell is None else _typed(name, cell) for name, cell in zip(columns, cells)]


def _carried_cells_changed(rows: list[tuple], carried: CarriedCells) -> bool:
    """Whether a row of an output (`(path, *carried cells)`, typed as `_read_columns` reads them) holds other carried
    cells than its path's in the input now."""
    for path_cell, *cells in rows:
        now = carried.cells.get(path_cell)
        if now is None:
            continue
        if any(new is not None and new != cell for cell, new in zip(cells, _typed_cells(carried.columns, now))):
            return True
    return False


def _rows_in_order(tables: list[Path], merge_key: Any, typed: bool = False) -> Iterator[list]:
    """The rows of `tables`, one after the other: a CSV's as written (each cell checked as `_read_csv` checks it) or,
    `typed`, as `_read_csv` types them; a parquet file's typed, `PARQUET_ROWS_AT_ONCE` read at a time. `_OutOfOrder`
    at the first row that comes before the one above it by `merge_key`."""
    previous = None
    for table in tables:
        for row in _streamed_rows(table, typed):
            key = merge_key(row)
            if previous is not None and key < previous:
                raise _OutOfOrder(table)
            previous = key
            yield row


def _streamed_rows(table: Path, typed: bool) -> Iterator[list]:
    if table.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        # pre_buffer=False: pyarrow would otherwise read the whole file ahead (QA: +120 MB at 120,000 rows)
        for batch in pq.ParquetFile(table, pre_buffer=False).iter_batches(batch_size=PARQUET_ROWS_AT_ONCE):
            yield from (list(row) for row in zip(*(column.to_pylist() for column in batch.columns)))
        return
    with open(table, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        for row in reader:
            checked = _typed_row(header, row, table, reader)  # checked; written as it is unless typed
            yield checked if typed else row


def _first_of_each(rows: Iterable[list], merge_key: Any, paths: list[str]) -> Iterator[list]:
    """`rows` in merge order without the repeats of a (path, frame) after its first; each path kept is appended to
    `paths`."""
    last = None
    for row in rows:
        key = merge_key(row)
        if key != last:
            last = key
            paths.append(row[0])
            yield row


def default_errors_path(output: Path) -> Path:
    """`<output>.errors.csv` (`out/a.csv.errors.csv`): every output its own errors file, so outputs can share a
    folder."""
    return output.with_name(output.name + ".errors.csv")


def check_output_args(output_path: Any, errors_path: Any, batch_size: int) -> OutputFiles:
    """The output and errors files (default [`default_errors_path`]) and the batch size, checked before any work: a
    `.csv` / `.parquet` output, a `.csv` errors file that is not the output, a positive batch size."""
    output = Path(output_path)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"output {output}: expected a {' or '.join(OUTPUT_SUFFIXES)} file, got {output.suffix or 'no suffix'}"
        )
    errors = Path(errors_path) if errors_path is not None else default_errors_path(output)
    if errors.suffix.lower() != ".csv" or errors.resolve() == output.resolve():
        raise ValueError(f"errors {errors}: expected a .csv file other than the output {output}")
    from ..validation import check_positive_integer, check_writable_file  # imports torch: here, not at module level

    check_positive_integer(batch_size, "batch_size")

    check_writable_file(output, "output")
    check_writable_file(errors, "errors")
    return OutputFiles(output, errors)

"""`predict`'s end-of-run merge of its committed batches into the output (QA, a plankton lab at scale: the merge held
every row in memory, +0.5 GB for 100,000 rows of 121 classes): streamed when the tables are in input order, as one
run's batches are; sorted in memory otherwise; the same rows either way."""

import csv

import pytest

from diffusion_classifiers.prediction import outputs
from diffusion_classifiers.prediction.outputs import OutputFiles, merge_parts, write_csv

COLUMNS = ["path", "frame", "label", "score"]
ORDER = {f"p{i}": i for i in range(6)}


def files_in(tmp_path) -> OutputFiles:
    files = OutputFiles(tmp_path / "out.csv", tmp_path / "out.csv.errors.csv")
    files.parts.mkdir()
    return files


def rows_of(path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))[1:]


def write_run(files: OutputFiles, output_rows: list) -> None:
    """An earlier run's output, then this run's batches: one re-committed after a kill (p3 again), one of frames."""
    write_csv(files.output, COLUMNS, output_rows)
    write_csv(files.parts / "rows-000000000.csv", COLUMNS, [["p0", 0, "a", 0.25], ["p2", 0, "b", 0.5]])
    write_csv(files.parts / "rows-000000003.csv", COLUMNS, [["p3", 0, "b", 0.125]])
    frames = [["p4", 2, "a", 0.5], ["p4", 10, "a", 0.75], ["p5", 0, "b", 1.0]]
    write_csv(files.parts / "rows-000000004.csv", COLUMNS, frames)
    write_csv(files.parts / "errors-000000005.csv", outputs.ERROR_COLUMNS, [["p5.png", "cannot decode"]])


EXPECTED = [
    ["p0", "0", "a", "0.25"], ["p1", "0", "a", "0.875"], ["p2", "0", "b", "0.5"], ["p3", "0", "a", "0.375"],
    ["p4", "2", "a", "0.5"], ["p4", "10", "a", "0.75"], ["p5", "0", "b", "1.0"], ["gone", "0", "a", "0.5"],
]  # fmt: skip


def test_a_run_in_input_order_is_merged_streaming_the_first_of_each_row(tmp_path, monkeypatch):
    files = files_in(tmp_path)
    write_run(files, [["p1", 0, "a", 0.875], ["p3", 0, "a", 0.375], ["gone", 0, "a", 0.5]])  # a file removed since
    monkeypatch.setattr(outputs, "_read_table", lambda path: pytest.fail(f"{path} read into memory"))
    paths, unreadable, _ = merge_parts(files, COLUMNS, ORDER)
    # the output's p3 kept over the batch committed again; frames by number (10 after 2); removed files last
    assert rows_of(files.output) == EXPECTED
    assert paths == [row[0] for row in EXPECTED] and unreadable == ["p5.png"]
    assert not files.parts.exists()


def test_tables_out_of_input_order_are_sorted_in_memory_with_the_same_rows(tmp_path):
    files = files_in(tmp_path)
    write_run(files, [["gone", 0, "a", 0.5], ["p3", 0, "a", 0.375], ["p1", 0, "a", 0.875]])  # an earlier order
    paths, _, _ = merge_parts(files, COLUMNS, ORDER)
    assert rows_of(files.output) == EXPECTED and paths == [row[0] for row in EXPECTED]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv", "out.csv.errors.csv"]  # no temporary


def test_a_word_in_a_number_column_is_refused_naming_the_file_and_line(tmp_path):
    files = files_in(tmp_path)
    write_run(files, [["p1", 0, "a", "high"]])
    with pytest.raises(ValueError, match=r"out\.csv:2: .*expected the numbers predict wrote"):
        merge_parts(files, COLUMNS, ORDER)
    assert rows_of(files.output) == [["p1", "0", "a", "high"]]  # left as it was


def test_a_run_without_unreadable_files_still_writes_its_errors_file(tmp_path):
    files = files_in(tmp_path)
    write_csv(files.parts / "rows-000000000.csv", COLUMNS, [["p0", 0, "a", 0.25]])
    assert merge_parts(files, COLUMNS, ORDER) == (["p0"], [], 0)
    assert files.errors.read_bytes() == b"path,reason\r\n"  # the header: a file every run leaves, empty or not


def test_a_parquet_output_is_merged_streaming_a_chunk_at_a_time(tmp_path, monkeypatch):
    """QA (a lab at scale): a .parquet output's merge held every row in memory (+0.5 GB at 60,000 rows of 121
    classes) where a CSV's streams: the same rows now, read and written a few at a time."""
    import pyarrow.parquet as pq

    files = OutputFiles(tmp_path / "out.parquet", tmp_path / "out.parquet.errors.csv")
    files.parts.mkdir()
    outputs._write_table(files.output, COLUMNS, [["p1", 0, "a", 0.875], ["p3", 0, "a", 0.375], ["gone", 0, "a", 0.5]])
    write_run_parts = [["p0", 0, "a", 0.25], ["p2", 0, "b", 0.5]], [["p3", 0, "b", 0.125]], \
        [["p4", 2, "a", 0.5], ["p4", 10, "a", 0.75], ["p5", 0, "b", 1.0]]  # fmt: skip
    for first, rows in zip((0, 3, 4), write_run_parts):
        write_csv(files.parts / f"rows-{first:09d}.csv", COLUMNS, rows)
    monkeypatch.setattr(outputs, "_read_table", lambda path: pytest.fail(f"{path} read into memory"))
    monkeypatch.setattr(outputs, "PARQUET_ROWS_AT_ONCE", 3)  # several chunks of 8 rows
    paths, _, _ = merge_parts(files, COLUMNS, ORDER)
    typed = [[path, int(frame), label, float(score)] for path, frame, label, score in EXPECTED]
    table = pq.read_table(files.output)
    assert [list(row) for row in zip(*(column.to_pylist() for column in table.columns))] == typed
    assert paths == [row[0] for row in EXPECTED] and pq.ParquetFile(files.output).num_row_groups == 3

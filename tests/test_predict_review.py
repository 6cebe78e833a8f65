"""`predict` and `aggregate` over big folders, as the radiology and plankton runs meet them: file names that are not
UTF-8, an Excel CSV, a rerun after a kill that tries an input again, listed files out of reach on a rerun, and a
predictions file with a column added by hand."""

import csv
import os

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.models import LinearProbeHead
from diffusion_classifiers.prediction import list_inputs, predict_files
from diffusion_classifiers.prediction.aggregate import aggregate_predictions
from diffusion_classifiers.prediction.outputs import read_predictions, write_csv

from .test_predict import CLASSES, CountingPipeline, read_rows, write_images
from .test_readme import small_unet


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    head = LinearProbeHead(16, 3, class_names=CLASSES, block="mid_block", timestep=50)
    pipe = UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=DDPMScheduler(), head=head)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paths(output):
    return [row[0] for row in read_predictions(output)[1]]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_file_name_that_is_not_utf8_neither_stops_the_run_nor_spoils_the_output(pipe, tmp_path, suffix):
    # QA: one Latin-1 name (an old Windows share) stopped every run at its batch, rerun after rerun
    folder = tmp_path / "images"
    write_images(folder, ["a.png", "z.png"])
    latin = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    try:
        os.rename(os.path.join(os.fsencode(folder), b"z.png"), latin)
    except OSError:
        pytest.skip("this file system takes UTF-8 names only")
    output = tmp_path / f"p{suffix}"
    first = predict_files(pipe, list_inputs(folder), output, batch_size=1, progress_bar=False)
    assert (first.predicted, first.failed) == (2, 0) and paths(output) == ["a.png", "caf\\xe9.png"]
    if suffix == ".csv":
        output.read_bytes().decode("utf-8")  # readable by every CSV reader
    assert predict_files(pipe, list_inputs(folder), output, batch_size=1, progress_bar=False).skipped == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["images", f"p{suffix}", f"p{suffix}.json", f"p{suffix}.errors.csv"])


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        write_csv(tmp_path / "p.csv", ["path"], [["caf\udce9.png"]])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("tried_again", ["repaired", "replaced"])
def test_a_rerun_after_a_kill_that_tries_an_input_again_keeps_the_rows_committed(pipe, tmp_path, tried_again):
    # QA: the input tried again started a batch at the number of the part holding it, and overwrote the part, its
    # other rows lost (the run then stopped: "2 of 4 inputs are neither in ...")
    folder = tmp_path / "images"
    write_images(folder, ["1.png", "2.png", "3.png", "4.png"])
    if tried_again == "repaired":
        (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    output = tmp_path / "p.csv"
    with pytest.raises(RuntimeError, match="killed"):
        predict_files(CountingPipeline(pipe, fail_on_call=2), list_inputs(folder), output, batch_size=2)
    assert not output.exists()
    write_images(folder, ["1.png"], seed=1)
    os.utime(folder / "1.png", ns=(10**18, 10**18))
    resumed = predict_files(
        pipe, list_inputs(folder), output, batch_size=2, progress_bar=False, retry_errors=tried_again == "repaired"
    )
    assert paths(output) == ["1.png", "2.png", "3.png", "4.png"] and resumed.unreadable == 0
    assert (resumed.retried, resumed.replaced) == ((1, 0) if tried_again == "repaired" else (0, 1))


def test_a_rerun_keeps_the_rows_of_listed_files_out_of_reach(pipe, tmp_path):
    # QA: with the images moved to an archive (or their share not mounted), a rerun over the same CSV deleted every
    # row, as if each file had been replaced, and listed them all as not found
    folder = tmp_path / "images"
    write_images(folder, ["1.png", "2.png"])
    listing = tmp_path / "list.csv"
    listing.write_text("path\nimages/1.png\nimages/2.png\n")
    output = tmp_path / "p.csv"
    predict_files(pipe, list_inputs(listing), output, progress_bar=False)
    before = output.read_bytes()
    folder.rename(tmp_path / "archive")
    rerun = predict_files(pipe, list_inputs(listing), output, progress_bar=False)
    assert (rerun.replaced, rerun.skipped, rerun.unreadable) == (0, 2, 0) and output.read_bytes() == before


def test_a_csv_saved_by_excel_is_read_and_one_not_utf8_is_named(tmp_path):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "excel.csv").write_bytes("path,label\r\na.png,cat\r\n".encode("utf-8-sig"))
    assert [(item.path, item.label) for item in list_inputs(tmp_path / "excel.csv")] == [("a.png", "cat")]
    (tmp_path / "latin.csv").write_bytes("path\ncaf\xe9.png\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"CSV .*latin.csv: not UTF-8 .* expected a UTF-8 file"):
        list_inputs(tmp_path / "latin.csv")


def test_aggregate_groups_by_a_text_column_added_to_the_predictions(pipe, tmp_path):
    # QA: a plankton lab's sample column, added to predict's CSV, failed the whole file: "could not convert string
    # to float: 'S01'"; a sample "002" would have been grouped as 2.0
    folder = tmp_path / "images"
    write_images(folder, ["002/1.png", "002/2.png", "S01/1.png"])
    output = tmp_path / "p.csv"
    predict_files(pipe, list_inputs(folder), output, progress_bar=False)
    rows = read_rows(output)
    with open(tmp_path / "q.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["sample", *rows[0]])
        writer.writeheader()
        writer.writerows({"sample": row["path"].split("/")[0], **row} for row in rows)
    columns, groups, _ = aggregate_predictions(tmp_path / "q.csv", by="sample", rule="mean")
    assert [(group[0], group[1]) for group in groups] == [("002", 2), ("S01", 1)]
    probs = [[float(row[f"prob_{name}"]) for name in CLASSES] for row in rows[:2]]
    first_prob = columns.index(f"prob_{CLASSES[0]}")
    assert groups[0][first_prob : first_prob + len(CLASSES)] == pytest.approx([sum(c) / 2 for c in zip(*probs)])
    counts = groups[0][columns.index(f"count_{CLASSES[0]}") :]  # the mean rule's census: images predicted per class
    assert counts == [[row["label"] for row in rows[:2]].count(name) for name in CLASSES] and sum(counts) == 2
    rows[0]["score"] = "high"
    with open(tmp_path / "r.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=r"r.csv:2: could not convert string to float: 'high'"):
        aggregate_predictions(tmp_path / "r.csv", by="path", rule="mean")


def test_an_overwrite_that_dies_keeps_the_earlier_prediction_aside_until_its_own_rows_are_merged(tmp_path):
    """QA: `predict --overwrite` deleted the earlier complete predictions.csv when it started; killed, the rerun lost
    it. It is now set aside in predictions.csv.replaced/ and deleted once the rerun's rows are merged; a second
    overwrite after a dead one keeps the first earlier prediction, not the dead run's parts."""
    from diffusion_classifiers.prediction.outputs import OutputFiles, prepare_output_files

    files = OutputFiles(tmp_path / "predictions.csv", tmp_path / "predictions.csv.errors.csv")
    files.output.write_text("path,label\na.png,cat\n")
    files.errors.write_text("path,reason\n")
    files.sidecar.write_text('{"run": {"model_dir": "old"}}')
    prepare_output_files(files, {"model_dir": "new"}, overwrite=True, is_main=True)
    aside = tmp_path / "predictions.csv.replaced"
    assert (aside / "predictions.csv").read_text() == "path,label\na.png,cat\n"
    assert (aside / "predictions.csv.json").read_text() == '{"run": {"model_dir": "old"}}'
    assert not files.output.exists() and "new" in files.sidecar.read_text()
    files.parts.mkdir()  # the replacing run dies after a batch; another overwrite
    (files.parts / "rows-0.csv").write_text("path,label\nb.png,dog\n")
    prepare_output_files(files, {"model_dir": "newer"}, overwrite=True, is_main=True)
    assert (aside / "predictions.csv").read_text() == "path,label\na.png,cat\n" and not files.parts.exists()

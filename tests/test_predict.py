"""`diffusion-classifiers predict` and `prediction.predict_files`: the rows equal the pipeline's own output; resumable;
unreadable files listed, never fatal; outputs of another run never overwritten; one merged output from 2 processes."""

import csv
import errno
import json
from datetime import datetime, timezone
import os
import re
import signal
import shutil
import socket
import subprocess
import unicodedata
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import DiffusionClassifierPipeline, ScoreSDEClassifierPipeline, UNetFeatureClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.models import LinearProbeHead
from diffusion_classifiers.prediction import list_inputs, parse_windows, predict_files
from diffusion_classifiers.prediction.outputs import read_predictions
from diffusion_classifiers.run_lock import RunInUseError

from .conftest import PYTHON, python_subprocess_env, shared_data
from .test_readme import small_unet
from .test_training import free_port

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 3-class U-Net-feature pipeline (16 px, grey) and a binary Score-SDE pipeline (8 px), saved."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    head = LinearProbeHead(16, 3, class_names=CLASSES, block="mid_block", timestep=50)
    torch.nn.init.normal_(head.linear.weight, std=3.0)  # probabilities far from uniform, so rows differ
    UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=DDPMScheduler(), head=head).save_pretrained(root / "unet")
    ScoreSDEClassifierPipeline(
        small_unet(8, num_class_embeds=2), DDPMScheduler(), class_names=["normal", "pneumonia"], positive_class="pneumonia"
    ).save_pretrained(root / "sde")
    return root


def load(models, name):
    pipe = DiffusionClassifierPipeline.from_pretrained(str(models / name))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(12, 24))
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / name)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


IMAGES = ["a/1.png", "a/2.png", "b/3.png", "b/4.png", "b/5.png", "c.png"]


def image_folder(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, IMAGES)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "notes.txt").write_text("not listed")
    (folder / ".hidden").mkdir()
    write_images(folder, [".hidden/skipped.png"])
    return folder


class CountingPipeline:
    """The pipeline, counting its calls; call number `fail_on_call` raises, as if the run were killed there."""

    def __init__(self, pipe, fail_on_call=None):
        self.pipe, self.fail_on_call, self.calls = pipe, fail_on_call, 0

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, images, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("killed")
        return self.pipe(images, **kwargs)


def test_folder_rows_equal_the_pipeline_and_a_killed_run_resumes(models, tmp_path):
    pipe, folder = load(models, "unet"), image_folder(tmp_path)
    skipped = r"skipped 1 of its files, neither images nor DICOM images \(e.g. notes.txt\)"
    with pytest.warns(UserWarning, match=skipped):
        inputs = list_inputs(folder)  # not the hidden folder's image
    assert [item.path for item in inputs] == ["a/1.png", "a/2.png", "b/3.png", "b/4.png", "b/5.png", "b/broken.png", "c.png"]

    pipe.set_progress_bar_config(disable=True, desc="mine")
    clean = predict_files(pipe, inputs, tmp_path / "clean" / "predictions.csv", batch_size=2)
    assert pipe.progress_bar_config == {"disable": True, "desc": "mine"}  # hidden while it ran, then restored
    rows = read_rows(clean.output)
    assert list(rows[0]) == ["path", "frame", "file_bytes", "file_modified", "label", "score", "prob_cat", "prob_dog",
                             "prob_fox"]  # fmt: skip
    stat = (folder / "a" / "1.png").stat()
    assert (int(rows[0]["file_bytes"]), rows[0]["file_modified"]) == (stat.st_size, datetime.fromtimestamp(
        stat.st_mtime_ns / 1e9, timezone.utc).isoformat(timespec="microseconds"))  # fmt: skip
    assert [row["path"] for row in rows] == [name for name in IMAGES] and {row["frame"] for row in rows} == {"0"}
    # the same batches as the run made: [1, 2], [3, 4], [5, broken (an error row), c]
    images = [Image.open(folder / name) for name in IMAGES]
    direct = [pipe(images[i:j]) for i, j in ((0, 2), (2, 4), (4, 6))]
    probs = torch.cat([out.probs for out in direct])
    np.testing.assert_array_equal([[float(row[f"prob_{c}"]) for c in CLASSES] for row in rows], probs.numpy())
    assert [row["label"] for row in rows] == sum((out.labels for out in direct), [])
    assert [float(row["score"]) for row in rows] == torch.cat([out.scores for out in direct]).tolist()
    errors = read_rows(clean.errors)
    assert [row["path"] for row in errors] == ["b/broken.png"] and "cannot decode image file" in errors[0]["reason"]
    assert (clean.rows, clean.predicted, clean.skipped, clean.failed) == (6, 6, 0, 1)

    output = tmp_path / "resumed" / "predictions.csv"
    with pytest.raises(RuntimeError, match="killed"):  # the model call of the second batch fails: the run stops
        predict_files(CountingPipeline(pipe, fail_on_call=2), inputs, output, batch_size=2)
    parts = output.with_name("predictions.csv.parts")
    assert not output.exists() and [part.name for part in parts.iterdir()] == ["rows-000000000.csv"]
    shutil.copytree(parts, tmp_path / "first-batch")
    counting = CountingPipeline(pipe)
    resumed = predict_files(counting, inputs, output, batch_size=2)
    assert (resumed.predicted, resumed.skipped, resumed.failed, counting.calls) == (4, 2, 1, 2)
    assert output.read_bytes() == (tmp_path / "clean" / "predictions.csv").read_bytes()
    assert resumed.errors == str(output.with_name("predictions.csv.errors.csv")) and resumed.unreadable == 1
    assert open(resumed.errors, "rb").read() == open(clean.errors, "rb").read()
    assert not parts.exists()
    shutil.copytree(tmp_path / "first-batch", parts)  # as if killed after the merge, before the parts were deleted
    again = predict_files(counting, inputs, output, batch_size=2)  # all done: nothing classified, nothing changed
    assert (again.predicted, again.skipped, counting.calls) == (0, 7, 2)
    assert output.read_bytes() == (tmp_path / "clean" / "predictions.csv").read_bytes() and not parts.exists()


def test_a_repaired_file_is_predicted_again_with_retry_errors(models, tmp_path):
    # QA: a file listed as unreadable and repaired since was never predicted again short of --overwrite (redo all)
    pipe, folder = load(models, "unet"), image_folder(tmp_path)
    with pytest.warns(UserWarning, match="neither images nor DICOM"):
        inputs = list_inputs(folder)
    output = tmp_path / "out" / "predictions.csv"
    first = predict_files(pipe, inputs, output, batch_size=2)
    assert [row["path"] for row in read_rows(first.errors)] == ["b/broken.png"]
    write_images(folder, ["b/broken.png"])  # repaired
    assert predict_files(pipe, inputs, output, batch_size=2).predicted == 0  # a plain rerun skips it
    retried = predict_files(pipe, inputs, output, batch_size=2, retry_errors=True)
    assert (retried.retried, retried.predicted, retried.failed, retried.unreadable) == (1, 1, 0, 0)
    assert [row["path"] for row in read_rows(output)] == IMAGES[:5] + ["b/broken.png", "c.png"]  # in input order
    assert read_rows(first.errors) == []


def write_csv(path, rows, columns=("path", "label")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def test_inputs_no_process_predicted_fail_the_run_naming_their_count(models, tmp_path, monkeypatch):
    """After the merge every input must be in the output or the errors file (or done before): a share that left
    inputs out fails loudly instead of reporting success."""
    from diffusion_classifiers.prediction import runner

    monkeypatch.setattr(runner, "_share", lambda items, accelerator: items[:-2])  # two inputs nobody predicts
    with pytest.raises(RuntimeError, match=r"predict: 2 of 7 inputs are neither in .*predictions.csv .*first: 'b/broken.png', 'c.png'"):
        predict_files(load(models, "unet"), list_inputs(image_folder(tmp_path)), tmp_path / "predictions.csv", batch_size=2)
    monkeypatch.undo()  # a rerun predicts them
    rerun = predict_files(load(models, "unet"), list_inputs(tmp_path / "images"), tmp_path / "predictions.csv", batch_size=2)
    assert (rerun.predicted, rerun.skipped, rerun.failed, rerun.rows) == (1, 5, 1, 6)


def raising_on_the_second_batch(error: BaseException):
    """`UNetFeatureClassifierPipeline.__call__` as it is, but for its second call, which raises `error`."""
    call, calls = UNetFeatureClassifierPipeline.__call__, []

    def patched(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return call(self, *args, **kwargs)

    return patched


def test_a_full_disk_says_what_was_kept_and_the_same_command_resumes(models, tmp_path, monkeypatch):
    """QA (operations): a disk full during predict ended in a bare "[Errno 28] No space left on device" line, without
    a word of the batches kept or of the rerun that goes on after them."""
    folder, output = image_folder(tmp_path), tmp_path / "out" / "predictions.csv"
    argv = ["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(output),
            "--batch_size", "2", "--no_progress_bar"]  # fmt: skip
    call = UNetFeatureClassifierPipeline.__call__
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output) + ".parts/rows-000000002.csv")
    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", raising_on_the_second_batch(full))
    with pytest.warns(UserWarning, match="skipped 1 of its files"), pytest.raises(SystemExit) as stopped:
        main(argv)
    assert re.fullmatch(
        r"diffusion-classifiers predict: error: \[Errno 28\] No space left on device: '.*rows-000000002.csv'; the "
        r"batches committed so far are kept \(1 in .*predictions.csv.parts/\): make room on the disk \(or in the "
        r"quota\), then rerun the same command to resume after them", str(stopped.value.code),
    )  # fmt: skip
    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", call)
    with pytest.warns(UserWarning, match="skipped 1 of its files"):
        main(argv)
    assert [row["path"] for row in read_rows(output)] == list(IMAGES)


def test_a_permission_refused_is_not_called_a_full_disk(models, tmp_path, monkeypatch):
    """Review: a permission error got the full disk's "make room on the disk" hint."""
    folder, output = image_folder(tmp_path), tmp_path / "out" / "predictions.csv"

    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(models / "unet" / "model_index.json"))

    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", refused)
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(output),
              "--no_progress_bar"])  # fmt: skip
    said = str(stopped.value.code)
    assert "Permission denied" in said and "no batch was committed yet: rerun" in said and "make room" not in said


def test_ctrl_c_prints_one_line_exits_130_and_the_same_command_resumes(models, tmp_path, monkeypatch, capsys):
    """QA: Ctrl-C on predict printed a KeyboardInterrupt traceback."""
    folder, output = image_folder(tmp_path), tmp_path / "out" / "predictions.csv"
    argv = ["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(output),
            "--batch_size", "2", "--no_progress_bar"]  # fmt: skip
    call, calls = UNetFeatureClassifierPipeline.__call__, []

    def interrupted_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return call(self, *args, **kwargs)

    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", interrupted_on_the_second_batch)
    with pytest.warns(UserWarning, match="skipped 1 of its files"), pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted; the batches committed so far are kept" in err and "Traceback" not in err
    assert [part.name for part in output.with_name("predictions.csv.parts").iterdir()] == ["rows-000000000.csv"]
    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", call)
    with pytest.warns(UserWarning, match="skipped 1 of its files"):
        main(argv)
    assert [row["path"] for row in read_rows(output)] == list(IMAGES)
    # QA (a lab at scale): a scheduler's SIGTERM ended predict without a word, its locks left behind
    def terminated_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return call(self, *args, **kwargs)

    def not_caught(signum, frame):  # review: without predict's own handler, the signal would end the test run
        raise AssertionError("predict did not catch SIGTERM")

    calls.clear()
    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", terminated_on_the_second_batch)
    handler = signal.signal(signal.SIGTERM, not_caught)
    try:
        with pytest.warns(UserWarning, match="skipped 1 of its files"), pytest.raises(SystemExit) as stopped:
            main(argv + ["--overwrite"])
        assert stopped.value.code == 143 and signal.getsignal(signal.SIGTERM) is not_caught  # given back
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert "predict: stopped by SIGTERM; the batches committed so far are kept (1 in " in err
    assert not output.with_name("predictions.csv.lock").exists()  # released: the next run need not take it over
    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", call)
    with pytest.warns(UserWarning, match="skipped 1 of its files"):
        main(argv + ["--overwrite"])
    assert [row["path"] for row in read_rows(output)] == list(IMAGES)
    # QA (session 58): after Ctrl-C of an --overwrite run, "the same command" started again from nothing; since
    # session 60 it continues the overwrite (tests/test_replaced_reports.py)
    calls.clear()
    monkeypatch.setattr(UNetFeatureClassifierPipeline, "__call__", interrupted_on_the_second_batch)
    with pytest.warns(UserWarning, match="skipped 1 of its files"), pytest.raises(SystemExit):
        main(argv + ["--overwrite"])
    assert "rerun the same command to resume after them" in capsys.readouterr().err
    # interrupted before its first batch was committed: no parts folder to name (QA)
    calls[:] = [1]  # the next call is the second
    with warnings.catch_warnings(), pytest.raises(SystemExit):
        warnings.simplefilter("ignore")  # the folder's skipped file, said above
        main(argv[:6] + [str(tmp_path / "new" / "predictions.csv")] + argv[7:])
    assert "interrupted; no batch was committed yet: rerun the same command to start again" in capsys.readouterr().err


def test_csv_with_a_missing_file_lists_it_in_errors(models, tmp_path):
    write_images(tmp_path, ["x.png", "y.png"])
    table = write_csv(tmp_path / "list.csv", [("x.png", "dog"), ("gone.png", "cat"), ("y.png", "")])
    main(["predict", "--model_dir", str(models / "unet"), "--input", str(table), "--output", str(tmp_path / "out.csv")])
    rows = read_rows(tmp_path / "out.csv")
    assert [(row["path"], row["true_label"]) for row in rows] == [("x.png", "dog"), ("y.png", "")]
    errors = read_rows(tmp_path / "out.csv.errors.csv")
    assert errors == [{"path": "gone.png", "reason": f"file not found: {tmp_path / 'gone.png'}"}]


def test_csv_with_an_unknown_label_is_refused_before_any_work(models, tmp_path):
    write_images(tmp_path, ["x.png"])
    table = write_csv(tmp_path / "list.csv", [("x.png", "dog"), ("x2.png", "wolf"), ("x3.png", "Cat")])
    with pytest.raises(ValueError, match=r"labels \['Cat', 'wolf'\] are not among the model's classes \['cat', 'dog', 'fox'\]"):
        predict_files(load(models, "unet"), list_inputs(table), tmp_path / "out" / "predictions.csv")
    assert not (tmp_path / "out").exists()


def test_a_label_that_differs_only_in_unicode_normalisation_is_named_so(tmp_path):
    """QA: a CSV's 'détritus' (NFD) against the model's (NFC) read as "labels ['détritus'] are not among the model's
    classes [..., 'détritus', ...]"; the error says why (and nothing is normalised silently)."""
    from diffusion_classifiers.prediction.inputs import check_labels

    nfd, nfc = unicodedata.normalize("NFD", "détritus"), unicodedata.normalize("NFC", "détritus")
    write_images(tmp_path, ["x.png"])
    inputs = list_inputs(write_csv(tmp_path / "list.csv", [("x.png", nfd)]))
    with pytest.raises(ValueError, match=rf"{nfd!r} differs from {nfc!r} only in Unicode normalisation \(NFD vs NFC\)"):
        check_labels(inputs, [nfc, "copepod"])


def test_a_csv_field_over_the_csv_modules_limit_is_refused_naming_the_file_and_line(tmp_path):
    """QA (a security review): a 300,000-character field gave the csv module's bare traceback, naming neither."""
    from diffusion_classifiers.data import load_image_classification_data

    (tmp_path / "huge.csv").write_text("path,label\na.png,cat\n" + "x" * 300_000 + ".png,dog\n")
    refused = r"^CSV .*huge.csv: the row after line 2: field larger than field limit \(131072\); expected one image"
    with pytest.raises(ValueError, match=refused):
        list_inputs(tmp_path / "huge.csv")
    with pytest.raises(ValueError, match=refused):
        load_image_classification_data(tmp_path / "huge.csv")


def test_csv_without_a_path_column_or_with_a_file_twice_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no 'path' column; expected a header with path\[,label\], got \['file'\]"):
        list_inputs(write_csv(tmp_path / "a.csv", [("x.png",)], columns=("file",)))
    with pytest.raises(ValueError, match=r"b.csv:4: 'x.png' is also on line 2; expected each file once"):
        list_inputs(write_csv(tmp_path / "b.csv", [("x.png", "a"), ("y.png", "a"), ("x.png", "b")]))


def test_another_model_is_refused_and_nothing_written_is_lost(models, tmp_path):
    write_images(tmp_path / "images", ["x.png", "y.png"])
    output = tmp_path / "predictions.csv"
    args = ["predict", "--input", str(tmp_path / "images"), "--output", str(output)]
    main(args + ["--model_dir", str(models / "unet")])
    written = output.read_bytes()
    with pytest.raises(ValueError, match=r"written by another prediction \(class_names: \['cat', 'dog', 'fox'\] then"):
        main(args + ["--model_dir", str(models / "sde")])
    with pytest.raises(ValueError, match="written by another prediction"):
        main(args + ["--model_dir", str(models / "unet"), "--window", "bone"])  # other settings, same model
    assert output.read_bytes() == written
    main(args + ["--model_dir", str(models / "sde"), "--overwrite"])
    assert list(read_rows(output)[0])[-2:] == ["log_likelihood_ratio", "log_likelihood_ratio_stderr"]
    assert not (tmp_path / "predictions.csv.replaced").exists()  # the replaced prediction goes once merged
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("my own file\n")
    with pytest.raises(ValueError, match="foreign.csv.* not written by this prediction"):
        main(args[:-1] + [str(foreign), "--model_dir", str(models / "unet")])
    assert foreign.read_text() == "my own file\n"


def test_a_model_retrained_in_place_or_with_another_positive_class_is_refused(models, tmp_path, capsys):
    model = tmp_path / "sde"
    shutil.copytree(models / "sde", model)
    write_images(tmp_path / "images", ["x.png", "y.png"])
    output = tmp_path / "predictions.csv"
    args = ["predict", "--input", str(tmp_path / "images"), "--output", str(output), "--model_dir", str(model)]
    main(args)
    assert "log_likelihood_ratio = log p(x | pneumonia) - log p(x | normal)\n" in capsys.readouterr().out
    written, sidecar = output.read_bytes(), output.with_name("predictions.csv.json")
    recorded = json.loads(sidecar.read_text())["run"]
    assert recorded["log_likelihood_ratio"] == "log p(x | pneumonia) - log p(x | normal)"
    pipe = load(models, "sde")
    pipe.set_positive_class("normal")  # the same weights: the ratio's sign flips
    pipe.save_pretrained(model)
    with pytest.raises(ValueError, match=r"\(log_likelihood_ratio: 'log p\(x \| pneumonia\) - log p\(x \| normal\)' then"):
        main(args)
    pipe.set_positive_class("pneumonia")
    torch.nn.init.normal_(pipe.unet.conv_out.weight)  # retrained in place: other weights in the same folder
    pipe.save_pretrained(model)
    with pytest.raises(ValueError, match=r"\(model_sha256: '[0-9a-f]{64}' then, '[0-9a-f]{64}' now\)"):
        main(args)
    assert output.read_bytes() == written
    # an output of a version that recorded neither resumes: they are compared only where the sidecar has them
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "run": {
        key: value for key, value in recorded.items() if key not in ("model_sha256", "log_likelihood_ratio")}}))
    write_images(tmp_path / "images", ["z.png"], seed=3)
    main(args)
    assert [row["path"] for row in read_rows(output)] == ["x.png", "y.png", "z.png"]


def test_files_replaced_under_the_same_names_are_predicted_again(models, tmp_path, capsys):
    folder, output = tmp_path / "new_week", tmp_path / "weekly.csv"
    args = ["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(output)]
    write_images(folder, ["IMG_0.png", "IMG_1.png", "IMG_2.png"], seed=0)
    main(args)
    first = {row["path"]: row for row in read_rows(output)}
    for path in folder.iterdir():  # next week: the folder emptied and refilled, the instrument's names restarting
        path.unlink()
    write_images(folder, ["IMG_0.png", "IMG_1.png"], seed=7)
    main(args)
    printed = capsys.readouterr().out
    assert "(2 inputs predicted now on 1 process(es), 0 predicted before)" in printed
    assert "2 inputs changed since they were predicted" in printed
    rows = {row["path"]: row for row in read_rows(output)}
    fresh = predict_files(load(models, "unet"), list_inputs(folder), tmp_path / "fresh.csv", progress_bar=False)
    for row in read_rows(fresh.output):
        assert rows[row["path"]] == row  # this week's images' predictions, not last week's
    assert rows["IMG_2.png"] == first["IMG_2.png"]  # a file since removed keeps its row, as before
    main(args)
    printed = capsys.readouterr().out
    assert "(0 inputs predicted now on 1 process(es), 2 predicted before)" in printed and "changed since" not in printed


def test_a_second_prediction_into_an_output_in_use_is_refused_and_a_stale_lock_taken_over(models, tmp_path, caplog):
    write_images(tmp_path / "images", ["x.png", "y.png"])
    output = tmp_path / "out" / "predictions.csv"
    args = ["predict", "--input", str(tmp_path / "images"), "--output", str(output), "--model_dir", str(models / "unet")]
    lock = tmp_path / "out" / "predictions.csv.lock"
    lock.parent.mkdir()
    # another live process (this one's own pid, not holding the lock, would be a stale lock of an earlier process)
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-12-04T00:00:00"}))
    in_use = rf"--output {output} is in use by another prediction \(pid {os.getppid()} on host {socket.gethostname()}"
    with pytest.raises(RunInUseError, match=in_use):
        main(args)
    assert sorted(path.name for path in lock.parent.iterdir()) == [lock.name]  # nothing written, the lock kept
    gone = int(open("/proc/sys/kernel/pid_max").read()) + 1  # no process can have it (a finished one's may be reused)
    lock.write_text(json.dumps({"pid": gone, "host": socket.gethostname()}))
    main(args)
    assert "Taking over the lock" in caplog.text and len(read_rows(output)) == 2 and not lock.exists()
    # two outputs given one --errors file would each rewrite it without the other's rows: its lock refuses the second
    shared = tmp_path / "out" / "errors.csv"
    (tmp_path / "out" / "errors.csv.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(RunInUseError, match=rf"--errors {shared} is in use by another prediction"):
        main(args[:4] + [str(tmp_path / "out" / "other.csv"), *args[5:], "--errors", str(shared)])
    assert not (tmp_path / "out" / "other.csv.lock").exists() and not (tmp_path / "out" / "other.csv").exists()


def test_two_outputs_in_one_folder_each_have_their_errors_and_a_rerun_counts_earlier_ones(models, tmp_path, capsys):
    folder = image_folder(tmp_path)
    args = ["predict", "--model_dir", str(models / "unet"), "--input", str(folder)]
    for name in ("a.csv", "b.parquet"):  # the second was refused: errors.csv existed, written by the first
        main(args + ["--output", str(tmp_path / "out" / name), "--no_progress_bar"])
        assert [row["path"] for row in read_rows(tmp_path / "out" / f"{name}.errors.csv")] == ["b/broken.png"]
    assert len(read_rows(tmp_path / "out" / "a.csv")) == pq.read_table(tmp_path / "out" / "b.parquet").num_rows == 6
    assert not (tmp_path / "out" / "errors.csv").exists()
    (folder / "d" / "broken.png").parent.mkdir()
    (folder / "d" / "broken.png").write_bytes(b"broken")
    capsys.readouterr()
    main(args + ["--output", str(tmp_path / "out" / "a.csv"), "--no_progress_bar"])  # the one new file is unreadable
    errors = tmp_path / "out" / "a.csv.errors.csv"
    assert [row["path"] for row in read_rows(errors)] == ["b/broken.png", "d/broken.png"]
    printed = capsys.readouterr()
    assert printed.out.endswith(
        "6 rows (0 inputs predicted now on 1 process(es), 6 predicted before); 2 unreadable (1 new, 1 listed before, "
        f"skipped) -> {errors}\nto predict the files of {errors} again (repaired since), rerun with --retry_errors\n"
    )
    assert "Loading pipeline components" not in printed.err  # --no_progress_bar: diffusers' loading bar too
    main(args + ["--output", str(tmp_path / "out" / "a.csv"), "--no_progress_bar", "--retry_errors"])  # still broken
    assert capsys.readouterr().out.endswith(
        f"2 unreadable (0 new, 2 tried again and still unreadable) -> {errors}; 2 earlier errors tried again (0 now "
        "predicted)\n"
    )
    assert [row["path"] for row in read_rows(errors)] == ["b/broken.png", "d/broken.png"]
    run_info = json.loads((tmp_path / "out" / "a.csv.json").read_text())["run"]  # the model folder and windows
    summary = predict_files(load(models, "unet"), list_inputs(folder), tmp_path / "out" / "a.csv", run_info=run_info)
    assert (summary.rows, summary.predicted, summary.skipped, summary.failed, summary.unreadable) == (6, 0, 8, 0, 2)
    assert (summary.predicted_before, summary.skipped_unreadable, summary.new_unreadable) == (6, 2, 0)


def test_the_summary_tells_rows_predicted_before_from_errors_and_new_errors_from_retried_ones(models, tmp_path, capsys):
    # QA: "7 done before" counted an error row; --retry_errors called a still-broken earlier error "1 new"
    folder, output = image_folder(tmp_path), tmp_path / "out" / "predictions.csv"
    errors = tmp_path / "out" / "predictions.csv.errors.csv"
    args = ["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(output),
            "--no_progress_bar"]  # fmt: skip
    main(args)  # 6 rows, b/broken.png unreadable
    write_images(folder, ["d.png"], seed=5)
    capsys.readouterr()
    main(args)
    assert capsys.readouterr().out.startswith(
        f"{output}: 7 rows (1 inputs predicted now on 1 process(es), 6 predicted before); 1 unreadable (0 new, 1 "
        f"listed before, skipped) -> {errors}\n"
    )
    main(args + ["--retry_errors"])  # still broken
    assert capsys.readouterr().out.startswith(
        f"{output}: 7 rows (0 inputs predicted now on 1 process(es), 7 predicted before); 1 unreadable (0 new, 1 "
        f"tried again and still unreadable) -> {errors}; 1 earlier errors tried again (0 now predicted)\n"
    )
    (folder / "e.png").write_bytes(b"broken too")
    write_images(folder, ["b/broken.png"], seed=6)  # repaired
    run_info = json.loads(output.with_name("predictions.csv.json").read_text())["run"]
    summary = predict_files(load(models, "unet"), list_inputs(folder), output, run_info=run_info, retry_errors=True)
    assert (summary.predicted, summary.retried, summary.failed, summary.failed_again) == (1, 1, 1, 0)
    assert (summary.new_unreadable, summary.predicted_before, summary.skipped_unreadable) == (1, 7, 0)


def test_a_rerun_on_another_folder_is_refused_and_rows_of_removed_files_are_counted(models, tmp_path, capsys):
    """Instruments restart their file names in every sample's folder: an output is tied to its input, else a rerun on
    the next folder skipped every name done before and kept the first folder's predictions."""
    for day in ("day_a", "day_b"):
        write_images(tmp_path / day, ["1.png", "2.png", "3.png"], seed=len(day) + (day == "day_b"))
    output = tmp_path / "out" / "days.csv"
    args = ["predict", "--model_dir", str(models / "unet"), "--output", str(output), "--no_progress_bar"]
    main(args + ["--input", str(tmp_path / "day_a")])
    written = output.read_bytes()
    with pytest.raises(ValueError, match=rf"written by another prediction \(input: '{tmp_path / 'day_a'}' then, '{tmp_path / 'day_b'}' now"):
        main(args + ["--input", str(tmp_path / "day_b")])
    assert output.read_bytes() == written
    sidecar = json.loads(output.with_name("days.csv.json").read_text())
    del sidecar["run"]["input"]  # as written before the input was recorded: resumes
    output.with_name("days.csv.json").write_text(json.dumps(sidecar))
    (tmp_path / "day_a" / "2.png").unlink()
    capsys.readouterr()
    main(args + ["--input", str(tmp_path / "day_a")])
    printed = capsys.readouterr().out
    assert "3 rows (0 inputs predicted now on 1 process(es), 2 predicted before)" in printed
    assert f"1 rows of {output} are of files no longer among the inputs of {tmp_path / 'day_a'}" in printed
    assert output.read_bytes() == written  # nothing new to merge: the removed file's row kept where it was


def test_an_output_written_with_the_shared_errors_csv_resumes_with_it(models, tmp_path):
    """Before each output had its own errors file, the default was `errors.csv` beside the output: such an output,
    whose sidecar records no errors file, keeps adding to it; another output of that folder never does."""
    pipe, folder = load(models, "unet"), tmp_path / "images"
    write_images(folder, ["1.png", "2.png", "3.png"])
    (folder / "0-broken.png").write_bytes(b"broken")
    legacy, output = tmp_path / "out" / "errors.csv", tmp_path / "out" / "a.csv"
    first = predict_files(pipe, list_inputs(folder), output, legacy, batch_size=2, progress_bar=False)
    sidecar = json.loads(output.with_name("a.csv.json").read_text())
    assert sidecar.pop("errors_file") == "errors.csv"
    output.with_name("a.csv.json").write_text(json.dumps(sidecar))  # as written before: no errors file recorded
    written = output.read_bytes()
    write_images(folder, ["4.png"], seed=1)
    (folder / "5-broken.png").write_bytes(b"broken")
    resumed = predict_files(pipe, list_inputs(folder), output, batch_size=2, progress_bar=False)
    assert (resumed.errors, resumed.predicted, resumed.skipped, resumed.failed, resumed.unreadable) == (
        str(legacy), 1, 4, 1, 2)  # fmt: skip
    assert [row["path"] for row in read_rows(legacy)] == ["0-broken.png", "5-broken.png"]
    assert [row["path"] for row in read_rows(output)] == ["1.png", "2.png", "3.png", "4.png"]
    assert output.read_bytes().startswith(written) and not output.with_name("a.csv.errors.csv").exists()
    assert json.loads(output.with_name("a.csv.json").read_text())["errors_file"] == "errors.csv"
    again = predict_files(pipe, list_inputs(folder), output, progress_bar=False)  # recorded now: still errors.csv
    assert (again.errors, again.skipped, again.unreadable) == (str(legacy), 6, 2)
    assert first.errors == again.errors and not output.with_name("a.csv.errors.csv").exists()
    # another output of the folder, killed after its first batch (its errors file not merged yet), resumes with its own
    other = tmp_path / "out" / "b.csv"
    killed = CountingPipeline(pipe, fail_on_call=2)
    with pytest.raises(RuntimeError, match="killed"):
        predict_files(killed, list_inputs(folder), other, batch_size=2, progress_bar=False)
    assert not other.with_name("b.csv.errors.csv").exists()
    resumed_other = predict_files(pipe, list_inputs(folder), other, batch_size=2, progress_bar=False)
    assert resumed_other.errors == str(other.with_name("b.csv.errors.csv")) and resumed_other.unreadable == 2
    assert [row["path"] for row in read_rows(legacy)] == ["0-broken.png", "5-broken.png"]


def test_score_sde_parquet_has_the_log_likelihood_ratio_and_its_stderr(models, tmp_path):
    pipe = load(models, "sde")
    write_images(tmp_path, ["p.png", "q.png", "r.png"])
    table = write_csv(tmp_path / "list.csv", [("p.png", "normal"), ("q.png", "pneumonia"), ("r.png", "normal")])
    summary = predict_files(pipe, list_inputs(table), tmp_path / "predictions.parquet", batch_size=8, seed=3)
    written = pq.read_table(summary.output).to_pydict()
    assert list(written) == ["path", "frame", "true_label", "file_bytes", "file_modified", "label", "score",
                             "prob_normal", "prob_pneumonia",
                             "log_likelihood_ratio", "log_likelihood_ratio_stderr"]  # fmt: skip
    direct = pipe([Image.open(tmp_path / name) for name in ("p.png", "q.png", "r.png")], seed=3, seed_by="content")
    assert written["true_label"] == ["normal", "pneumonia", "normal"] and written["label"] == direct.labels
    assert written["log_likelihood_ratio"] == direct.log_likelihood_ratio.tolist()
    assert written["log_likelihood_ratio_stderr"] == direct.log_likelihood_ratio_stderr.tolist()
    assert all(value > 0 for value in written["log_likelihood_ratio_stderr"])
    assert written["prob_pneumonia"] == direct.probs[:, 1].tolist()
    # the ratio is log p(x | pneumonia) - log p(x | normal), the posterior's log-odds under uniform priors; the
    # softmax ran in float32 on log-likelihoods of this size, so they are exact to within a float32 ulp of them
    atol = 2 * np.finfo(np.float32).eps * direct.log_likelihoods.abs().max().item()
    log_odds = np.log(direct.probs[:, 1].double().numpy()) - np.log(direct.probs[:, 0].double().numpy())
    np.testing.assert_allclose(written["log_likelihood_ratio"], log_odds, rtol=0, atol=atol)
    # a longer list later: the rows done are kept as they are, the new file is appended in input order
    write_images(tmp_path, ["o.png"], seed=5)
    longer = write_csv(tmp_path / "list.csv", [("o.png", "pneumonia"), ("p.png", "normal"), ("q.png", "pneumonia"), ("r.png", "normal")])
    resumed = predict_files(pipe, list_inputs(longer), summary.output, batch_size=8, seed=3)
    assert (resumed.predicted, resumed.skipped, resumed.rows) == (1, 3, 4)
    rewritten = pq.read_table(summary.output).to_pydict()
    assert rewritten["path"] == ["o.png", "p.png", "q.png", "r.png"]
    assert {key: values[1:] for key, values in rewritten.items()} == written
    alone = pipe([Image.open(tmp_path / "o.png")], seed=3, seed_by="content")
    assert rewritten["log_likelihood_ratio"][0] == alone.log_likelihood_ratio.item()


def test_pipeline_kwargs_are_the_call_settings_recorded_and_checked_on_a_rerun(models, tmp_path, capsys):
    pipe = load(models, "sde")
    write_images(tmp_path / "images", ["p.png", "q.png"])
    inputs, output = list_inputs(tmp_path / "images"), tmp_path / "predictions.csv"
    settings = {"weighting": "uniform", "num_timesteps": 4}
    predict_files(pipe, inputs, output, seed=2, pipeline_kwargs=settings, progress_bar=False)
    direct = pipe([Image.open(tmp_path / "images" / name) for name in ("p.png", "q.png")], **settings, seed=2, seed_by="content")
    rows = read_rows(output)
    assert [float(row["log_likelihood_ratio"]) for row in rows] == direct.log_likelihood_ratio.tolist()
    assert [float(row["log_likelihood_ratio_stderr"]) for row in rows] == direct.log_likelihood_ratio_stderr.tolist()
    recorded = json.loads(output.with_name("predictions.csv.json").read_text())["run"]["pipeline_call"]
    assert {key: recorded[key] for key in ("weighting", "num_timesteps", "seed", "seed_by", "method")} == {
        **settings, "seed": 2, "seed_by": "content", "method": "elbo"}  # fmt: skip
    written = output.read_bytes()
    with pytest.raises(ValueError, match=r"another prediction \(pipeline_call.seed: 2 then, 3 now\); refusing"):
        predict_files(pipe, inputs, output, seed=3, pipeline_kwargs=settings, progress_bar=False)
    with pytest.raises(ValueError, match=r"\(pipeline_call.num_timesteps: 4 then, 100 now; pipeline_call.weighting: "
                       r"'uniform' then, 'elbo' now\)"):  # the defaults  # fmt: skip
        predict_files(pipe, inputs, output, seed=2, progress_bar=False)
    assert output.read_bytes() == written
    with pytest.raises(ValueError, match="seed not taken: the noise seed is predict's own"):
        predict_files(pipe, inputs, tmp_path / "other.csv", pipeline_kwargs={"seed": 1})
    with pytest.raises(ValueError, match=r"unknown \['steps'\]"):
        predict_files(pipe, inputs, tmp_path / "other.csv", pipeline_kwargs={"steps": 1})
    with pytest.raises(SystemExit):
        main(["predict", "--model_dir", str(models / "sde"), "--input", str(tmp_path / "images"), "--output",
              str(tmp_path / "other.csv"), "--pipeline_kwargs", "[1]"])  # fmt: skip
    assert "--pipeline_kwargs: expected a JSON object, e.g. '{\"method\": \"likelihood\"}'" in capsys.readouterr().err
    assert not (tmp_path / "other.csv").exists()
    exact = {"method": "likelihood", "solver": "rk4", "num_steps": 2, "num_probes": 1}
    predict_files(pipe, inputs, tmp_path / "exact.csv", pipeline_kwargs=exact, progress_bar=False)
    assert list(read_rows(tmp_path / "exact.csv")[0])[-1] == "log_likelihood_ratio"  # no standard error to give
    predict_files(pipe, inputs, tmp_path / "probes.csv", pipeline_kwargs={**exact, "num_probes": 2}, progress_bar=False)
    rows = read_rows(tmp_path / "probes.csv")  # the spread of two probes' ratios
    assert list(rows[0])[-2:] == ["log_likelihood_ratio", "log_likelihood_ratio_stderr"]
    assert all(float(row["log_likelihood_ratio_stderr"]) > 0 for row in rows)


@pytest.mark.parametrize("settings, refused", [
    ({"method": "likelihood", "solver": "euler"}, r"expected solver in \("),
    ({"method": "likelihood", "num_probes": 0}, r"expected num_probes >= 1, got 0"),
    ({"weighting": "snr"}, r"expected weighting in \("),
    ({"num_timesteps": True}, r"expected num_timesteps >= 1, got True"),  # a JSON true: no count
])  # fmt: skip
def test_call_settings_the_scorers_refuse_are_refused_before_any_output(models, tmp_path, settings, refused):
    """QA (a likelihood researcher): an unknown solver, weighting or a count of 0 were refused once predict had written
    its run record and part folder and read a batch; `num_timesteps=True` ran one timestep."""
    pipe = load(models, "sde")
    write_images(tmp_path / "images", ["p.png"])
    with pytest.raises(ValueError, match=refused):
        predict_files(pipe, list_inputs(tmp_path / "images"), tmp_path / "out" / "p.csv", pipeline_kwargs=settings)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_output_written_before_the_stderr_column_resumes_with_its_columns(models, tmp_path):
    pipe = load(models, "sde")
    write_images(tmp_path / "images", ["p.png", "q.png"])
    output = tmp_path / "predictions.csv"
    predict_files(pipe, list_inputs(tmp_path / "images"), output, batch_size=8, progress_bar=False)
    # as the version before the column wrote it: the CSV and the sidecar's columns without it
    rows = read_rows(output)
    old_columns = [column for column in rows[0] if column != "log_likelihood_ratio_stderr"]
    with open(output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    sidecar = output.with_name("predictions.csv.json")
    recorded = json.loads(sidecar.read_text())
    del recorded["run"]["pipeline_call"]  # nor did it record the settings of the call
    sidecar.write_text(json.dumps({**recorded, "columns": old_columns}))
    write_images(tmp_path / "images", ["r.png"], seed=5)
    with pytest.raises(ValueError, match="written before predict recorded its settings.* other num_timesteps: rerun"):
        predict_files(pipe, list_inputs(tmp_path / "images"), output, pipeline_kwargs={"num_timesteps": 4})
    # QA: another seed mixed two seeds' rows in one output, whose sidecar then recorded the new seed for all
    with pytest.raises(ValueError, match=r"a seed it did not record, taken to be the default 0; refusing to add rows "
                                         r"scored with other seed: rerun .* with --seed 0 if it was written so, else "
                                         r"pass --overwrite"):  # fmt: skip
        predict_files(pipe, list_inputs(tmp_path / "images"), output, seed=1)
    resumed = predict_files(pipe, list_inputs(tmp_path / "images"), output, batch_size=8, progress_bar=False)
    assert (resumed.predicted, resumed.skipped, resumed.rows) == (1, 2, 3)
    assert list(read_rows(output)[0]) == old_columns and json.loads(sidecar.read_text())["columns"] == old_columns
    assert [row["path"] for row in read_rows(output)] == ["p.png", "q.png", "r.png"]
    another = {**json.loads(sidecar.read_text()), "columns": old_columns[:-1]}  # any other difference is still refused
    sidecar.write_text(json.dumps(another))
    with pytest.raises(ValueError, match="written by another prediction"):
        predict_files(pipe, list_inputs(tmp_path / "images"), output, batch_size=8, progress_bar=False)


@pytest.mark.parametrize("added", [("patient_id", "study_uid", "series_uid", "laterality", "view_position",
                                    "sop_instance_uid"), ("laterality", "view_position", "sop_instance_uid"),
                                   ("sop_instance_uid",)])  # before the ids; before laterality and view; before sop
def test_an_output_written_before_the_dicom_id_columns_resumes_with_its_columns(models, tmp_path, added):
    cq500 = shared_data("cq500_dicom_sample")
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name in ("a.dcm", "b.dcm"):  # the sample's one uncompressed slice, twice
        shutil.copy(cq500 / "CQ500-CT-1" / "CT000000.dcm", folder / name)
    pipe, output = load(models, "unet"), tmp_path / "predictions.csv"
    predict_files(pipe, list_inputs(folder), output, progress_bar=False)
    rows = read_rows(output)
    old_columns = [column for column in rows[0] if column not in added]
    with open(output, "w", newline="") as handle:  # as the version before the ids wrote it
        writer = csv.DictWriter(handle, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    sidecar = output.with_name("predictions.csv.json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "columns": old_columns}))
    shutil.copy(cq500 / "CQ500-CT-1" / "CT000000.dcm", folder / "c.dcm")
    resumed = predict_files(pipe, list_inputs(folder), output, progress_bar=False)
    assert (resumed.predicted, resumed.skipped, resumed.rows) == (1, 2, 3)
    assert list(read_rows(output)[0]) == old_columns


def test_dataset_folder_rows_are_named_by_index(models, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)) for _ in range(3)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["fox", "cat"])})
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1]}, features=features)
    datasets.DatasetDict({"test": split, "val": split}).save_to_disk(tmp_path / "data")
    # the CLI names the split it reads, and a rerun on another split (rows named 0, 1, 2 again) is refused
    args = ["predict", "--model_dir", str(models / "unet"), "--input", str(tmp_path / "data"), "--output", str(tmp_path / "cli.csv")]
    main(args)
    assert f"{tmp_path / 'data'}: the 'test' split of a saved DatasetDict" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"written by another prediction \(split: 'test' then, 'val' now"):
        main(args + ["--split", "val"])
    pipe = load(models, "unet")
    summary = predict_files(pipe, list_inputs(tmp_path / "data"), tmp_path / "predictions.csv")
    rows = read_rows(summary.output)
    assert [(row["path"], row["true_label"]) for row in rows] == [("0", "fox"), ("1", "cat"), ("2", "cat")]
    assert [row["label"] for row in rows] == pipe(images).labels
    with pytest.raises(ValueError, match=r"no split 'train'; expected one of \['test', 'val'\]"):
        list_inputs(tmp_path / "data", split="train")


def test_a_rerun_over_a_datasets_folder_saved_again_with_other_rows_is_refused(models, tmp_path):
    """QA (a datasets user): a split saved again with other images (rows named 0, 1, ... again) resumed as done, the
    earlier images' predictions carried to the new rows' ids and labels; file inputs are told apart by their stamps,
    a dataset's rows by the fingerprint `datasets` keeps of the rows saved."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["fox", "cat"])})

    def save(seed_images):
        images = [Image.fromarray(seed_images.integers(0, 256, (16, 16), dtype=np.uint8)) for _ in range(3)]
        split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1]}, features=features)
        datasets.DatasetDict({"test": split}).save_to_disk(tmp_path / "weekly")
        return images

    save(rng)
    args = ["predict", "--model_dir", str(models / "unet"), "--input", str(tmp_path / "weekly"), "--output",
            str(tmp_path / "weekly.csv")]  # fmt: skip
    main(args)
    main(args)  # the same rows: resumed, nothing to predict
    images = save(rng)
    with pytest.raises(ValueError, match=r"written by another prediction \(dataset_fingerprint: '\w+' then, '\w+' now"):
        main(args)
    main(args + ["--overwrite"])
    assert [row["label"] for row in read_rows(tmp_path / "weekly.csv")] == load(models, "unet")(images).labels


def test_predict_reads_a_long_multi_frame_dicom_a_frame_at_a_time(models, tmp_path, monkeypatch):
    """QA (a mammography group): an 80-frame breast tomosynthesis volume (785 MB, uncompressed) was refused as a
    decompression bomb, and a batch held every frame at its full size; now a frame is read, preprocessed and kept at
    the model's size, one at a time, and the rows are those of the file read whole."""
    from diffusion_classifiers.prediction.runner import read_checked

    from .test_dicom import pydicom_file

    cine = pydicom_file("emri_small.dcm")  # 10 frames of 64 x 64
    (tmp_path / "volume").mkdir()
    shutil.copy(cine, tmp_path / "volume" / "tomo.dcm")
    command = ["predict", "--model_dir", str(models / "unet"), "--input", str(tmp_path / "volume"), "--window", "full"]
    other_window = r"--window \['full'\]: .* was saved with the windows \['file'\]"
    with pytest.warns(UserWarning, match=other_window):
        main(command + ["--output", str(tmp_path / "whole.csv")])
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # the file's 10 frames are over 4 frames' pixels
        main(command + ["--output", str(tmp_path / "by_frame.csv")])
    whole, by_frame = read_rows(tmp_path / "whole.csv"), read_rows(tmp_path / "by_frame.csv")
    assert len(by_frame) == 10 and by_frame == whole
    (item,) = list_inputs(tmp_path / "volume", parse_windows(["full"]))
    frames = item.read()
    assert len(frames) == 10 and frames[-1].shape == (1, 64, 64)  # a frame alone, decoded when asked for
    images, _ = read_checked(item, load(models, "unet"))
    assert [tuple(image.shape) for image in images] == [(1, 16, 16)] * 10  # the model's size, not the file's


def test_dicom_folder_gives_one_row_per_frame(models, tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    cq500 = shared_data("cq500_dicom_sample")
    folder = tmp_path / "dicom"
    (folder / "series").mkdir(parents=True)
    for name in ("CQ500-CT-0/CT000010.dcm", "CQ500-CT-1/CT000000.dcm"):
        shutil.copy(cq500 / name, folder / "series" / name.replace("/", "_"))
    cine = get_testdata_file("emri_small.dcm")  # 10 frames, no window tags
    if cine is None:
        pytest.skip("emri_small.dcm not found: install pydicom-data (the [test] extra)")
    shutil.copy(cine, folder / "cine.dcm")
    pipe = load(models, "unet")
    other = r"--window \[\{'center': 80.0, 'width': 200.0\}\]: .*unet was saved with the windows \['file'\] \(each file"
    with pytest.warns(UserWarning, match=other):  # QA: another window than the model's, silently
        main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output",
              str(tmp_path / "p.csv"), "--window", "80", "200", "--batch_size", "4"])  # fmt: skip
    rows = read_rows(tmp_path / "p.csv")
    assert [(row["path"], row["frame"]) for row in rows] == [("cine.dcm", str(f)) for f in range(10)] + [
        ("series/CQ500-CT-0_CT000010.dcm", "0"), ("series/CQ500-CT-1_CT000000.dcm", "0")]
    # each row names its file's patient, study and series, so slice results can be combined per scan
    assert list(rows[0])[:5] == ["path", "frame", "patient_id", "study_uid", "series_uid"]
    for row in rows[10:]:
        header = pydicom.dcmread(folder / row["path"], stop_before_pixels=True)
        ids = (header.PatientID, header.StudyInstanceUID, header.SeriesInstanceUID)
        assert (row["patient_id"], row["study_uid"], row["series_uid"]) == ids
    # and per scan: the 10 frames of the cine are one study, the two CT slices one each
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--rule", "mean"])
    scans = read_rows(tmp_path / "p.mean_by_study_uid.csv")
    assert [int(row["num_images"]) for row in scans] == [10, 1, 1]
    with pytest.raises(ValueError, match=r"rule 'max' takes binary predictions .* has 3 classes"):
        main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--output", str(tmp_path / "max.csv")])
    frames = list_inputs(folder, parse_windows(["brain", "80", "200", "bone"]))[1].read()
    assert frames[0].shape == (3, 512, 512) and frames[0].dtype == np.float32
    # the row is the pipeline's own reading of the file, with the window given
    pipe.set_preprocessing({"medical": {"windows": [{"center": 80, "width": 200}]}})
    assert rows[10]["label"] == pipe([folder / "series" / "CQ500-CT-0_CT000010.dcm"]).labels[0]
    # batches of 4 and of 1 may take other float32 convolution kernels: round-off (measured 1.2e-7), not a reading
    alone = pipe([folder / "series" / "CQ500-CT-0_CT000010.dcm"]).scores[0].item()
    assert float(rows[10]["score"]) == pytest.approx(alone, abs=1e-5)
    # the cine file names no window: with the file's own window it is an error row, and the CT slices are predicted
    main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(tmp_path / "q" / "q.csv")])
    assert [row["path"] for row in read_rows(tmp_path / "q" / "q.csv")] == [row["path"] for row in rows[10:]]
    assert "cine.dcm has no WindowCenter / WindowWidth" in read_rows(tmp_path / "q" / "q.csv.errors.csv")[0]["reason"]


def test_bright_dicom_slices_are_predicted_without_the_guess_that_they_are_misread(models, tmp_path):
    """QA (a PACS export): predict gives a file's frames in the model's range itself, yet on slices brighter than
    mid-grey everywhere the pipeline warned they "may be [0, 1] images" and advised a setting that would misread them;
    `pipe([path])` said nothing."""
    import pydicom

    folder = tmp_path / "dicom"
    folder.mkdir()
    slice_ = pydicom.dcmread(shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm"))
    del slice_.PixelPaddingValue  # its -3024 HU outside the scan then a value, not the background (0)
    slice_.save_as(folder / "1.dcm")
    window = ["--window", "-3100", "400"]  # -3300 to -2900 HU: -3024 HU at 0.69, the rest at 1
    assert min(frame.min() for frame in list_inputs(folder, parse_windows(window[1:]))[0].read()) >= 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output",
              str(tmp_path / "p.csv"), *window])  # fmt: skip
    assert len(read_rows(tmp_path / "p.csv")) == 1
    assert not [str(w.message) for w in caught if "no negative value" in str(w.message)]


def test_a_labels_csv_with_patient_ids_names_each_row_by_its_patient_id_not_the_header(models, tmp_path):
    """QA: the labels CSV of a patient-level split (`path,label,patient_id`), fed to training and fit-head, was
    refused by predict before any work, its `patient_id` "named as a column predict writes itself": the CSV's id now
    takes the header's place, and an empty cell keeps the header's."""
    import pydicom

    cq500 = shared_data("cq500_dicom_sample")
    names = ["CQ500-CT-0/CT000010.dcm", "CQ500-CT-1/CT000000.dcm"]
    for name in names:
        shutil.copy(cq500 / name, tmp_path / name.replace("/", "_"))
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "patient_id", "site"],
                                      [names[0].replace("/", "_"), CLASSES[0], "P007", "north"],
                                      [names[1].replace("/", "_"), CLASSES[1], "", "south"]])  # fmt: skip
    main(["predict", "--model_dir", str(models / "unet"), "--input", str(tmp_path / "labels.csv"), "--output",
          str(tmp_path / "p.csv")])  # fmt: skip
    rows = read_rows(tmp_path / "p.csv")
    header = pydicom.dcmread(tmp_path / rows[1]["path"], stop_before_pixels=True)
    assert [row["patient_id"] for row in rows] == ["P007", header.PatientID]
    assert [row["site"] for row in rows] == ["north", "south"] and list(rows[0]).count("patient_id") == 1
    assert [row["true_label"] for row in rows] == CLASSES[:2]


def test_dicom_without_its_decoder_is_refused_before_any_prediction(models, tmp_path, monkeypatch):
    import pydicom

    folder = tmp_path / "in"
    (folder / "series").mkdir(parents=True)
    write_images(folder, ["a.png"])
    shutil.copy(shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm"), folder / "series" / "1.dcm")
    shutil.copy(shared_data("cq500_dicom_sample", "CQ500-CT-0", "CT000010.dcm"), folder / "series" / "2.dcm")
    (folder / "series" / "3.dcm").write_text("not DICOM: an errors-file row, as before")
    syntax = pydicom.dcmread(folder / "series" / "2.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID
    monkeypatch.setattr(pydicom.pixels.get_decoder(syntax), "_available", {})  # as if no JPEG plugin were installed
    monkeypatch.setattr(DiffusionClassifierPipeline, "from_pretrained", pytest.fail)  # refused before the model loads
    refused = r"DICOM file .*series/2.dcm: .*compressed as JPEG Lossless.*1.2.840.10008.1.2.4.70.*pip install pylibjpeg pylibjpeg-libjpeg"
    with pytest.raises(ValueError, match=refused):
        main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(tmp_path / "p.csv"),
              "--window", "brain", "--batch_size", "1"])  # fmt: skip
    assert not (tmp_path / "p.csv.parts").exists() and not (tmp_path / "p.csv").exists()
    write_csv(tmp_path / "list.csv", [["in/series/2.dcm", "cat"]])
    for source in (tmp_path / "list.csv", folder / "series" / "2.dcm"):
        with pytest.raises(ValueError, match=refused):
            list_inputs(source)
    assert [item.path for item in list_inputs(folder / "series" / "1.dcm")] == ["1.dcm"]  # uncompressed: read


def test_bad_flags_are_refused_before_the_model_loads(tmp_path):
    write_images(tmp_path, ["x.png"])
    (tmp_path / "folder.csv").mkdir()
    base = ["predict", "--model_dir", str(tmp_path / "no-model"), "--input", str(tmp_path)]
    for extra, message in [
        (["--window", "brain", "bone"], "2 windows give 2 channels; expected 1 or 3 windows"),
        (["--window", "40"], "centre 40 has no width"),
        (["--window", "lung"], "'lung' is neither a window name"),
        (["--window", "40", "0"], r"Window\(center=40.0, width=0.0\): expected a finite center and a finite width > 0"),
        (["--output", str(tmp_path / "p.json")], r"expected a \.csv or \.parquet file, got \.json"),
        (["--output", str(tmp_path / "x.png" / "p.csv")], r"output .*p\.csv: its folder cannot be created, .*x\.png is a file"),
        (["--errors", str(tmp_path / "x.png" / "e" / "e.csv")], r"errors .*e\.csv: its folder cannot be created"),
        (["--output", str(tmp_path / "folder.csv")], r"output .*folder\.csv: expected a file, it is a folder"),
        (["--batch_size", "0"], "batch_size: expected a positive integer, got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            main(base + extra)
    with pytest.raises(FileNotFoundError, match="input .*missing: not found"):
        main(base[:-1] + [str(tmp_path / "missing")])
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "config.json").write_text('{"model_type": "diffusion-classifier"}')
    with pytest.raises(ValueError, match=r"--model_dir .*exported: a transformers model folder \(config.json\); "
                                         r"predict reads a pipeline folder"):  # fmt: skip
        main(["predict", "--model_dir", str(tmp_path / "exported"), "--input", str(tmp_path)])


def test_hub_id_applies_the_windows_saved_in_the_repo(models, tmp_path, monkeypatch):
    """`--model_dir org/name` reads the saved contract (here the bone window) from the repo's snapshot, as it does
    from a local folder: the rows are the pipeline's own reading of the DICOM file with that window."""
    from diffusion_classifiers import hub

    from .test_hub import fake_snapshot_download

    pipe = load(models, "unet")
    pipe.set_preprocessing({"medical": {"windows": ["bone"]}})
    pipe.save_pretrained(tmp_path / "repo")
    calls = []
    fake = fake_snapshot_download(tmp_path / "repo", calls)
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, cache_dir=None, **kwargs: fake(
        repo_id, cache_dir=tmp_path / "cache", **kwargs))  # fmt: skip
    scan = shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm")  # its own window is 30/80
    (tmp_path / "scans").mkdir()
    shutil.copy(scan, tmp_path / "scans" / "slice.dcm")
    main(["predict", "--model_dir", "org/ct", "--input", str(tmp_path / "scans"), "--output", str(tmp_path / "hub.csv")])
    assert [call["repo_id"] for call in calls] == ["org/ct"]
    row = read_rows(tmp_path / "hub.csv")[0]
    expected = pipe([scan])
    assert (row["label"], float(row["score"])) == (expected.labels[0], expected.scores[0].item())
    assert [float(row[f"prob_{c}"]) for c in CLASSES] == expected.probs[0].tolist()
    own_window = load(models, "unet")([scan])  # the file's own window, what ignoring the saved contract would give
    assert not torch.equal(own_window.probs, expected.probs)
    sidecar = json.loads((tmp_path / "hub.csv.json").read_text())["run"]
    assert sidecar == {"model_dir": "org/ct", "model_sha256": hub.model_fingerprint(hub.download("org/ct")),
                       "windows": ["bone"], "input": str(tmp_path / "scans"), "pipeline_call": {}}


# `predict` with process 1 slow to start (a busy node): were it to list the inputs done itself, it would see the parts
# process 0 has committed meanwhile and split another list than process 0 (inputs left out, the run "succeeding")
LATE_SECOND_PROCESS = """
import os, sys, time
from diffusion_classifiers.cli import main
from diffusion_classifiers.prediction import runner

listed = runner.done_paths
def listed_late(files):
    if os.environ.get("RANK") == "1":
        time.sleep(3)
    return listed(files)
runner.done_paths = listed_late
main(["predict", *sys.argv[1:]])
"""


@pytest.mark.slow
def test_two_processes_write_one_output_in_input_order(models, tmp_path):
    names = [f"img{i:02d}.png" for i in range(9)]
    write_images(tmp_path / "images", names)
    (tmp_path / "images" / "img04.png").write_bytes(b"broken")
    (tmp_path / "late.py").write_text(LATE_SECOND_PROCESS)
    command = [
        PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(tmp_path / "late.py"), "--model_dir", str(models / "unet"),
        "--input", str(tmp_path / "images"), "--output", str(tmp_path / "out" / "predictions.csv"), "--batch_size", "2",
    ]  # fmt: skip
    result = subprocess.run(command, env=python_subprocess_env() | {"ACCELERATE_USE_CPU": "1"}, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = "predictions.csv: 8 rows (8 inputs predicted now on 2 process(es), 0 predicted before); 1 unreadable (1 new)"
    assert summary in result.stdout
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    assert [row["path"] for row in rows] == [name for name in names if name != "img04.png"]
    assert [row["path"] for row in read_rows(tmp_path / "out" / "predictions.csv.errors.csv")] == ["img04.png"]
    single = predict_files(load(models, "unet"), list_inputs(tmp_path / "images"), tmp_path / "single.csv", batch_size=2)
    expected = read_rows(single.output)
    assert [row["label"] for row in rows] == [row["label"] for row in expected]
    # other batches, so float32 rounding may differ: within a few ulps of probabilities <= 1
    np.testing.assert_allclose([float(row["prob_dog"]) for row in rows], [float(row["prob_dog"]) for row in expected],
                               rtol=0, atol=8 * np.finfo(np.float32).eps)  # fmt: skip
    assert json.loads((tmp_path / "out" / "predictions.csv.json").read_text())["columns"][-1] == "prob_fox"


def three_window_model(folder):
    """A 3-class U-Net-feature pipeline (16 px, 3 channels) trained on the brain, subdural and bone windows, saved."""
    unet = UNet2DModel(**{**dict(small_unet(16).config), "in_channels": 3, "out_channels": 3})
    head = LinearProbeHead(16, 3, class_names=CLASSES, block="mid_block", timestep=50)
    windows = {"medical": {"windows": ["brain", "subdural", "bone"]}}
    UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head, preprocessing=windows).save_pretrained(
        folder
    )
    return folder


def test_an_image_file_given_to_a_model_of_several_dicom_windows_is_an_error_row(tmp_path):
    # the model reads 3 windows of Hounsfield units; a PNG's grey would be copied into all 3 channels: not predicted
    model = three_window_model(tmp_path / "ct")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm"), folder / "scan.dcm")
    write_images(folder, ["screenshot.png"])
    main(["predict", "--model_dir", str(model), "--input", str(folder), "--output", str(tmp_path / "p.csv")])
    assert [row["path"] for row in read_rows(tmp_path / "p.csv")] == ["scan.dcm"]
    (error,) = read_rows(tmp_path / "p.csv.errors.csv")
    assert error["path"] == "screenshot.png"
    assert "screenshot.png: not a DICOM file, but the model reads DICOM files through 3 windows" in error["reason"]
    datasets = pytest.importorskip("datasets")  # nor the pictures of a saved datasets folder
    datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8))]}).save_to_disk(tmp_path / "pictures")
    with pytest.raises(ValueError, match=r"pictures: a saved datasets folder holds pictures, but the model reads DICOM"):
        main(["predict", "--model_dir", str(model), "--input", str(tmp_path / "pictures"), "--output", str(tmp_path / "q.csv")])
    pipe = DiffusionClassifierPipeline.from_pretrained(str(model))  # the pipeline given the file refuses it too
    with pytest.raises(ValueError, match=r"item 0, .*screenshot.png, is not DICOM; expected DICOM files, read through the contract's 3"):
        pipe([str(folder / "screenshot.png")])


def test_windows_the_model_cannot_read_are_refused(models, tmp_path):
    # 3 windows for a grey model would blend into one channel; 1 window for a model trained on 3 would be repeated
    # into its 3 channels: refused before any file is read, naming the model
    write_images(tmp_path / "in", ["x.png"])
    args = ["predict", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "p.csv"), "--window"]
    with pytest.raises(ValueError, match=r"--window: 3 windows, but .*unet reads 1 channel: they would blend"):
        main(args + ["brain", "subdural", "bone", "--model_dir", str(models / "unet")])
    three_window_model(tmp_path / "ct")
    with pytest.raises(ValueError, match=r"--window: 1 window, but .*ct was trained on 3 \(\['brain', 'subdural', 'bone'\]\)"):
        main(args + ["bone", "--model_dir", str(tmp_path / "ct")])
    assert not (tmp_path / "out").exists()
    from diffusion_classifiers.data import MedicalPreprocessing
    from diffusion_classifiers.prediction.runner import _warn_other_windows

    trained = MedicalPreprocessing(windows=("brain", "subdural", "bone"))
    with warnings.catch_warnings():  # review: the presets' own centre / width are the same windows
        warnings.simplefilter("error")
        _warn_other_windows(MedicalPreprocessing(parse_windows("40 80 80 200 600 2800".split())), trained, "ct")
    with pytest.warns(UserWarning, match=r"ct was saved with the windows \['brain', 'subdural', 'bone'\];"):
        _warn_other_windows(MedicalPreprocessing(parse_windows(["brain", "subdural", "full"])), trained, "ct")


def test_a_dicom_video_clip_nothing_decodes_is_an_error_row_and_the_rest_is_predicted(models, tmp_path):
    # PACS exports hold MPEG2 / H.264 clips beside the slices: no plugin decodes them, so installing one would not let
    # the run through; the clip is an errors-file row, as any unreadable file, and the slices are predicted
    pydicom = pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm"), folder / "slice.dcm")
    clip = pydicom.dcmread(folder / "slice.dcm")
    clip.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile / Main Level
    clip.PixelData = encapsulate([b"\x00" * 16])
    clip["PixelData"].VR = "OB"
    clip.save_as(folder / "clip.dcm", enforce_file_format=True)
    assert [item.path for item in list_inputs(folder, ["brain"])] == ["clip.dcm", "slice.dcm"]
    main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(tmp_path / "p.csv"),
          "--window", "brain"])  # fmt: skip
    assert [row["path"] for row in read_rows(tmp_path / "p.csv")] == ["slice.dcm"]
    (error,) = read_rows(tmp_path / "p.csv.errors.csv")
    assert error["path"] == "clip.dcm" and "unsupported transfer syntax MPEG2" in error["reason"]


def test_a_scout_image_is_an_error_row_of_predict_and_refused_by_the_pipeline(models, tmp_path):
    """QA: training and evaluate refuse a localizer (scout), but predict scored it among the study's slices, and
    aggregate's max rule let its probability decide the study."""
    pydicom = pytest.importorskip("pydicom")

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_data("cq500_dicom_sample", "CQ500-CT-1", "CT000000.dcm"), folder / "slice.dcm")
    scout = pydicom.dcmread(folder / "slice.dcm")
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(folder / "scout.dcm", enforce_file_format=True)
    main(["predict", "--model_dir", str(models / "unet"), "--input", str(folder), "--output", str(tmp_path / "p.csv"),
          "--window", "brain"])  # fmt: skip
    assert [row["path"] for row in read_rows(tmp_path / "p.csv")] == ["slice.dcm"]
    (error,) = read_rows(tmp_path / "p.csv.errors.csv")
    assert error["path"] == "scout.dcm" and "is a localizer (scout) image" in error["reason"]
    pipe = DiffusionClassifierPipeline.from_pretrained(models / "unet")
    pipe.set_preprocessing({"medical": {"windows": ["brain"]}})
    with pytest.raises(ValueError, match=r"scout.dcm is a localizer \(scout\) image"):
        pipe([str(folder / "scout.dcm")])


def test_a_component_folder_of_a_pipeline_is_named_with_its_pipeline(tmp_path):
    """QA: `--model_dir out/sde/unet` was called a transformers model folder; it is the pipeline's unet/ component."""
    from .conftest import REPO_ROOT

    pipeline = REPO_ROOT / "tests" / "fixtures" / "v0.1.0" / "score_sde"
    write_images(tmp_path, ["x.png"])
    for component in ("unet", "scheduler"):
        with pytest.raises(ValueError, match=rf"--model_dir .*{component}: a component of a diffusers pipeline, not "
                                             rf"one; pass the pipeline folder {pipeline}$"):  # fmt: skip
            main(["predict", "--model_dir", str(pipeline / component), "--input", str(tmp_path)])


def _slice_predictions(path, with_truth=True):
    """A predict output of 5 slices of two scans (study_uid), binary, with their true labels."""
    from diffusion_classifiers.prediction.outputs import write_csv

    columns = ["path", "frame", *(["true_label"] if with_truth else []), "patient_id", "study_uid", "series_uid",
               "label", "score", "prob_normal", "prob_bleed"]  # fmt: skip
    slices = [("a1", "bleed", "s1", 0.9, 0.1), ("a2", "bleed", "s1", 0.3, 0.7), ("a3", "bleed", "s1", 0.8, 0.2),
              ("b1", "normal", "s2", 0.6, 0.4), ("b2", "normal", "s2", 0.7, 0.3)]  # fmt: skip
    rows = [[name, 0, *([truth] if with_truth else []), "p", study, "x", "bleed" if bleed >= 0.5 else "normal",
             max(normal, bleed), normal, bleed] for name, truth, study, normal, bleed in slices]  # fmt: skip
    write_csv(path, columns, rows)


def test_aggregate_gathers_slices_per_scan_with_the_any_slice_rule_and_scores_scans(tmp_path, capsys):
    """QA (a head-CT group): CQ500 reads haemorrhage per scan, predict gave slice rows only."""
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    _slice_predictions(tmp_path / "p.csv")
    columns, rows, metrics = aggregate_predictions(tmp_path / "p.csv", by="study_uid", rule="max")
    # the ids with one value in every scan are carried over (here one patient, one series name)
    assert columns == ["study_uid", "patient_id", "series_uid", "num_images", "true_label", "label", "prob_normal",
                       "prob_bleed"]  # fmt: skip
    assert rows == [["s1", "p", "x", 3, "bleed", "bleed", pytest.approx(0.3), 0.7],
                    ["s2", "p", "x", 2, "normal", "normal", 0.6, 0.4]]  # fmt: skip
    assert metrics["num_groups"] == 2 and metrics["accuracy"] == 1.0 and metrics["grouped_by"] == "study_uid"
    assert metrics["ranked_by"] == "prob_bleed"  # no log_likelihood_ratio column: the probabilities rank
    _, mean_rows, mean_metrics = aggregate_predictions(tmp_path / "p.csv", rule="mean", positive_class="normal")
    assert mean_rows[0][5] == "normal" and mean_rows[0][7] == pytest.approx(1.0 / 3)  # the mean misses one slice
    assert metrics["positive_class"] == "bleed" and mean_metrics["positive_class"] == "normal"
    _, strict, _ = aggregate_predictions(tmp_path / "p.csv", rule="max", threshold=0.75)
    assert [row[5] for row in strict] == ["normal", "normal"]
    main(["aggregate", "--predictions", str(tmp_path / "p.csv")])
    assert read_rows(tmp_path / "p.max_by_study_uid.csv")[0]["label"] == "bleed"
    recorded = json.loads((tmp_path / "p.max_by_study_uid.metrics.json").read_text())
    assert recorded["rule"] == "max" and recorded["per_class"]["bleed"]["support"] == 1
    intervals = recorded["confidence_intervals"]  # of the 2 scans, both right (Wilson: n / (n + z^2) to 1); no AUC's
    assert intervals["accuracy"] == pytest.approx([2 / (2 + 1.959964**2), 1.0], abs=1e-6) and intervals["auc"] is None
    # review: an earlier aggregation is not overwritten unasked; a predict run not merged yet, refused; the
    # inputs its errors file lists are said to be missing from their groups
    with pytest.raises(FileExistsError, match=r"p\.max_by_study_uid\.csv exists .* pass --overwrite"):
        main(["aggregate", "--predictions", str(tmp_path / "p.csv")])
    (tmp_path / "p.csv.parts").mkdir()
    with pytest.raises(ValueError, match=r"its predict run has not finished .*p\.csv\.parts holds committed batches"):
        main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--overwrite"])
    (tmp_path / "p.csv.parts").rmdir()
    (tmp_path / "p.csv.errors.csv").write_text("path,reason\na4,cannot decode\n")
    _slice_predictions(tmp_path / "p.csv", with_truth=False)
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--overwrite"])
    assert "note: 1 inputs of " in capsys.readouterr().err
    assert not (tmp_path / "p.max_by_study_uid.metrics.json").exists()  # the labelled run's, not these groups'


def test_aggregate_groups_by_a_column_whose_name_holds_a_slash(tmp_path):
    """QA (session 58, an international lab): `--by site/depth` failed with pathlib's "Invalid name", even with
    `--output` given: the default output's name was built from the column first."""
    from diffusion_classifiers.prediction.outputs import write_csv

    _slice_predictions(tmp_path / "slices.csv")
    rows = read_rows(tmp_path / "slices.csv")
    columns = [("site/depth" if name == "study_uid" else name) for name in rows[0]]
    write_csv(tmp_path / "p.csv", columns, [list(row.values()) for row in rows])
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "site/depth", "--rule", "mean"])
    assert [row["site/depth"] for row in read_rows(tmp_path / "p.mean_by_site_depth.csv")] == ["s1", "s2"]
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "site/depth", "--output",
          str(tmp_path / "by_site.csv")])  # fmt: skip
    assert (tmp_path / "by_site.csv").is_file()


def test_aggregate_counts_a_dicom_image_stored_under_two_names_once(models, tmp_path, capsys):
    """Review: one CT slice exported twice into the folder predicted weighed twice under the mean rule."""
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    cq500 = shared_data("cq500_dicom_sample")
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name in ("a.dcm", "b.dcm"):
        shutil.copy(cq500 / "CQ500-CT-1" / "CT000000.dcm", folder / name)
    shutil.copy(cq500 / "CQ500-CT-1" / "CT000000.dcm", folder / "c.dcm")
    import pydicom

    other = pydicom.dcmread(folder / "c.dcm")
    other.SOPInstanceUID = other.SOPInstanceUID + ".1"  # another slice of the same scan
    other.save_as(folder / "c.dcm")
    predict_files(load(models, "unet"), list_inputs(folder), tmp_path / "p.csv", progress_bar=False)
    rows = read_rows(tmp_path / "p.csv")
    assert [row["sop_instance_uid"] for row in rows] == [rows[0]["sop_instance_uid"]] * 2 + [other.SOPInstanceUID]
    columns, scans, _ = aggregate_predictions(tmp_path / "p.csv", rule="mean")
    assert len(scans) == 1 and scans[0][columns.index("num_images")] == 2
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--rule", "mean"])
    assert "note: 1 rows repeat a DICOM image already in their group" in capsys.readouterr().err
    by_image = aggregate_predictions(tmp_path / "p.csv", by="path", rule="mean")[1]
    assert [row[0] for row in by_image] == ["a.dcm", "b.dcm", "c.dcm"]  # a group per name when grouped by name


def test_aggregate_notes_rows_of_files_renamed_since_predict_ran(models, tmp_path, capsys):
    """QA (a plankton lab): a weekly folder where one image was renamed was counted 501 times for 500 images, the
    old name's row kept by predict; aggregate says so now."""
    write_images(tmp_path / "week1", ["a.png", "b.png"], seed=6)
    argv = ["predict", "--model_dir", str(models / "unet"), "--input", str(tmp_path / "week1"), "--output",
            str(tmp_path / "p.csv")]  # fmt: skip
    main(argv)
    (tmp_path / "week1" / "b.png").rename(tmp_path / "week1" / "c.png")
    main(argv)
    assert [row["path"] for row in read_rows(tmp_path / "p.csv")] == ["a.png", "c.png", "b.png"]
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "path", "--rule", "mean"])
    err = capsys.readouterr().err
    assert "note: 1 rows of " in err and "are of files no longer in" in err and "(e.g. 'b.png': renamed" in err


def test_aggregate_refuses_one_dicom_image_with_two_true_labels(tmp_path):
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions
    from diffusion_classifiers.prediction.outputs import write_csv

    columns = ["path", "frame", "true_label", "study_uid", "sop_instance_uid", "label", "score", "prob_normal",
               "prob_bleed"]  # fmt: skip
    rows = [["a", 0, "bleed", "s1", "1.2.3", "bleed", 0.8, 0.2, 0.8], ["copy/a", 0, "normal", "s1", "1.2.3", "bleed",
            0.8, 0.2, 0.8], ["b", 1, "bleed", "s1", "1.2.3", "bleed", 0.7, 0.3, 0.7]]  # fmt: skip
    write_csv(tmp_path / "p.csv", columns, rows)
    with pytest.raises(ValueError, match=r"'copy/a' and 'a' are one DICOM image \(SOPInstanceUID 1\.2\.3, frame 0\) "
                                         r"with the true labels 'bleed' and 'normal'"):  # fmt: skip
        aggregate_predictions(tmp_path / "p.csv")
    rows[1][2] = "bleed"
    write_csv(tmp_path / "p.csv", columns, rows)
    columns, groups, metrics = aggregate_predictions(tmp_path / "p.csv")
    assert groups[0][columns.index("num_images")] == 2 and metrics["num_images"] == 2  # frame 1 is another image


def test_mammograms_are_read_per_breast_from_their_views(tmp_path, capsys):
    """QA (a mammography group): findings are per breast, read from its CC and MLO views: predict writes each file's
    laterality and view, and aggregate gathers a study's breast from several columns."""
    import pydicom
    from pydicom.data import get_testdata_file

    from diffusion_classifiers.prediction.inputs import dicom_ids
    from diffusion_classifiers.prediction.outputs import write_csv

    source = get_testdata_file("CT_small.dcm")
    if source is None:
        pytest.skip("CT_small.dcm not found: install pydicom-data (the [test] extra)")
    dataset = pydicom.dcmread(source)
    dataset.ImageLaterality, dataset.ViewPosition, dataset.Laterality = "L", "MLO", "R"
    dataset.save_as(tmp_path / "view.dcm")
    del dataset.ImageLaterality  # the series' Laterality where the image names none
    dataset.save_as(tmp_path / "series.dcm")
    ids = [dicom_ids(item) for item in list_inputs(tmp_path)]
    assert [(i["laterality"], i["view_position"]) for i in ids] == [("R", "MLO"), ("L", "MLO")]
    columns = ["path", "frame", "true_label", "patient_id", "study_uid", "series_uid", "laterality", "view_position",
               "label", "score", "prob_benign", "prob_malignant"]  # fmt: skip
    views = [("l_cc", "L", "CC", "malignant", 0.3), ("l_mlo", "L", "MLO", "malignant", 0.8),
             ("r_cc", "R", "CC", "benign", 0.2), ("r_mlo", "R", "MLO", "benign", 0.1)]  # fmt: skip
    write_csv(tmp_path / "p.csv", columns, [
        [name, 0, truth, "p1", "s1", f"x{k}", side, view, "malignant" if m >= 0.5 else "benign", max(m, 1 - m), 1 - m, m]
        for k, (name, side, view, truth, m) in enumerate(views)
    ])  # fmt: skip
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "study_uid", "laterality"])
    breasts = read_rows(tmp_path / "p.max_by_study_uid_laterality.csv")
    assert list(breasts[0])[:4] == ["study_uid", "laterality", "patient_id", "num_images"]
    assert [(b["laterality"], b["num_images"], b["label"]) for b in breasts] == [("L", "2", "malignant"),
                                                                                 ("R", "2", "benign")]
    recorded = json.loads((tmp_path / "p.max_by_study_uid_laterality.metrics.json").read_text())
    assert recorded["grouped_by"] == ["study_uid", "laterality"] and recorded["accuracy"] == 1.0
    assert "2 groups by study_uid + laterality" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"the rows of study_uid 's1' view_position 'CC' have the true labels"):
        main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "study_uid", "view_position"])
    # QA: a file without the tag is DICOM all the same; an output of an earlier predict lacks the column
    rows = [[name, 0, truth, "p1", "s1", "x", None, view, "benign", 0.9, 0.9, 0.1] for name, _, view, truth, _ in views]
    write_csv(tmp_path / "untagged.csv", columns, rows)
    with pytest.raises(ValueError, match=r"4 of 4 rows have no laterality .* \(a DICOM file without Laterality or an "):
        main(["aggregate", "--predictions", str(tmp_path / "untagged.csv"), "--by", "study_uid", "laterality"])
    earlier = [column for column in columns if column not in ("laterality", "view_position")]
    write_csv(tmp_path / "earlier.csv", earlier, [row[:6] + row[8:] for row in rows])
    with pytest.raises(ValueError, match=r"predict writes laterality since a later version: run it again with --over"):
        main(["aggregate", "--predictions", str(tmp_path / "earlier.csv"), "--by", "study_uid", "laterality"])


def test_head_ct_reruns_and_aggregations_qa(tmp_path):
    """QA (a head-CT group, after the mammography changes): a rerun with the presets' centre / width is the same run;
    aggregate of a first predict run killed before any merge says to finish it; grouping by a gathered column refused."""
    from diffusion_classifiers.prediction.outputs import _changes

    recorded = {"run": {"windows": ["brain", "subdural", "bone"]}}
    assert _changes(recorded, {"run": {"windows": [[40.0, 80.0], [80.0, 200.0], [600.0, 2800.0]]}}) == []
    assert _changes(recorded, {"run": {"windows": [[40.0, 80.0], [80.0, 200.0], "full"]}}) != []
    (tmp_path / "killed.csv.parts").mkdir()  # committed batches, no merged output yet
    with pytest.raises(ValueError, match=r"killed.csv: its predict run has not finished .* rerun the same predict"):
        main(["aggregate", "--predictions", str(tmp_path / "killed.csv")])
    _slice_predictions(tmp_path / "p.csv")
    for gathered in ("label", "true_label", "prob_bleed"):
        with pytest.raises(ValueError, match=rf"by: \['{gathered}'\] are columns aggregate writes per group"):
            main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", gathered])


def test_aggregate_refuses_what_it_cannot_group_before_writing(tmp_path):
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    _slice_predictions(tmp_path / "p.csv")
    with pytest.raises(ValueError, match=r"no column 'accession' to group by; .* \(its DICOM ids: \['patient_id', "):
        aggregate_predictions(tmp_path / "p.csv", by="accession")
    with pytest.raises(ValueError, match=r"the rows of patient_id 'p' have the true labels \['bleed', 'normal'\]"):
        aggregate_predictions(tmp_path / "p.csv", by="patient_id")
    with pytest.raises(ValueError, match=r"positive_class: expected one of \['normal', 'bleed'\], got 'blood'"):
        aggregate_predictions(tmp_path / "p.csv", positive_class="blood")
    rows = read_rows(tmp_path / "p.csv")
    rows[1]["study_uid"] = ""
    with open(tmp_path / "blank.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=r"1 of 5 rows have no study_uid \(e\.g\. \['a2'\]\)"):
        aggregate_predictions(tmp_path / "blank.csv")
    # QA: a missing .parquet was said to be no .csv or .parquet file
    for missing in ("missing.csv", "missing.parquet"):
        with pytest.raises(FileNotFoundError, match=rf"--predictions .*{missing}: not found; expected the \.csv or "):
            main(["aggregate", "--predictions", str(tmp_path / missing)])
    with pytest.raises(FileNotFoundError, match=r"--predictions .*p\.txt: expected a \.csv or \.parquet file"):
        main(["aggregate", "--predictions", str(tmp_path / "p.txt")])
    assert not (tmp_path / "p.max_by_accession.csv").exists()


def test_aggregate_takes_the_positive_class_predict_recorded_and_warns_when_another_is_given(models, tmp_path, capsys):
    """QA (a mammography group): a model saved with positive_class 'benign' (class 0): predict's ratio pointed to
    benign, aggregate took class 1."""
    from sklearn.metrics import roc_auc_score

    model, output = tmp_path / "sde", tmp_path / "p.csv"
    pipe = load(models, "sde")
    pipe.set_positive_class("normal")  # class 0
    pipe.save_pretrained(model)
    write_images(tmp_path, ["p.png", "q.png", "r.png", "s.png"])
    table = write_csv(tmp_path / "list.csv", [("p.png", "normal"), ("q.png", "pneumonia"), ("r.png", "normal"),
                                              ("s.png", "pneumonia")])  # fmt: skip
    main(["predict", "--model_dir", str(model), "--input", str(table), "--output", str(output), "--no_progress_bar"])
    assert "log_likelihood_ratio = log p(x | normal) - log p(x | pneumonia)" in capsys.readouterr().out
    sidecar = output.with_name("p.csv.json")
    recorded = json.loads(sidecar.read_text())
    assert recorded["run"]["positive_class"] == "normal"
    predicted = read_rows(output)
    ratios = [float(row["log_likelihood_ratio"]) for row in predicted]
    aggregate = ["aggregate", "--predictions", str(output), "--by", "path", "--overwrite"]  # one image per group
    main(aggregate)
    assert "the max rule's class is 'normal', the model's positive class, recorded by its predict run in" in (
        capsys.readouterr().err)
    grouped, metrics_file = read_rows(tmp_path / "p.max_by_path.csv"), tmp_path / "p.max_by_path.metrics.json"
    assert [float(row["prob_normal"]) for row in grouped] == [float(row["prob_normal"]) for row in predicted]
    assert [row["label"] for row in grouped] == [
        "normal" if float(row["prob_normal"]) >= 0.5 else "pneumonia" for row in predicted]
    assert [float(row["log_likelihood_ratio"]) for row in grouped] == ratios
    metrics = json.loads(metrics_file.read_text())
    assert metrics["positive_class"] == "normal" and metrics["ranked_by"] == "log_likelihood_ratio"
    truth = [row["true_label"] == "normal" for row in predicted]
    assert metrics["auc"] == pytest.approx(roc_auc_score(truth, ratios))
    # another class given: kept, with a warning; the ratio gathered toward it (one image a group: itself), written the
    # way predict's column points (QA, session 59: one column name read in both directions across runs)
    with pytest.warns(UserWarning, match=r"positive_class 'pneumonia' \(--positive_class\) contradicts 'normal', "):
        main(aggregate + ["--positive_class", "pneumonia"])
    assert [float(row["log_likelihood_ratio"]) for row in read_rows(tmp_path / "p.max_by_path.csv")] == ratios
    flipped = json.loads(metrics_file.read_text())
    assert flipped["positive_class"] == "pneumonia" and flipped["auc"] == pytest.approx(metrics["auc"])
    assert flipped["log_likelihood_ratio"] == "the smallest of their images' log p(x | normal) - log p(x | pneumonia)"
    # an earlier version recorded the ratio's direction only: its positive class is the ratio's
    run = {key: value for key, value in recorded["run"].items() if key != "positive_class"}
    sidecar.write_text(json.dumps({**recorded, "run": run}))
    main(aggregate)
    assert "class is 'normal', the class of its log_likelihood_ratio (log p(x | normal) - log p(x | pneumonia))" in (
        capsys.readouterr().err)
    # one that recorded neither: class 1 as before, and the ratio of unknown direction left out
    run.pop("log_likelihood_ratio")
    sidecar.write_text(json.dumps({**recorded, "run": run}))
    main(aggregate)
    err = capsys.readouterr().err
    assert "note: --positive_class not given: the max rule's class is class 1, 'pneumonia'" in err
    assert "does not record which class the log_likelihood_ratio of" in err
    assert "log_likelihood_ratio" not in read_rows(tmp_path / "p.max_by_path.csv")[0]
    metrics = json.loads(metrics_file.read_text())
    assert metrics["positive_class"] == "pneumonia" and metrics["ranked_by"] == "prob_pneumonia"


def _saturated_predictions(path, run=None):
    """A Score-SDE predict output of 8 slices of 4 scans whose probabilities are 0 or 1, its ratio pointing to
    'normal'; the sidecar records `run` (default: positive class normal and the ratio's direction)."""
    from diffusion_classifiers.prediction.outputs import write_csv

    columns = ["path", "frame", "true_label", "patient_id", "study_uid", "series_uid", "label", "score", "prob_normal",
               "prob_bleed", "log_likelihood_ratio"]  # fmt: skip
    slices = [("a1", "bleed", "P1", "s1", "x1", 1.0, -30.0), ("a2", "bleed", "P1", "s1", "x2", 1.0, -80.0),
              ("b1", "normal", "P1", "s2", "y", 1.0, -20.0), ("b2", "normal", "P1", "s2", "y", 0.0, 50.0),
              ("c1", "bleed", "P2", "s3", "z", 0.0, 10.0), ("c2", "bleed", "P2", "s3", "z", 1.0, -40.0),
              ("d1", "normal", "P2", "s4", "w", 0.0, 30.0), ("d2", "normal", "P2", "s4", "w", 0.0, 60.0)]  # fmt: skip
    rows = [[name, 0, truth, patient, study, series, "bleed" if bleed else "normal", 1.0, 1.0 - bleed, bleed, ratio]
            for name, truth, patient, study, series, bleed, ratio in slices]  # fmt: skip
    write_csv(path, columns, rows)
    run = run if run is not None else {
        "positive_class": "normal", "log_likelihood_ratio": "log p(x | normal) - log p(x | bleed)"}
    sidecar = {"run": run, "class_names": ["normal", "bleed"], "columns": columns}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))


def test_aggregate_ranks_groups_by_the_ratio_where_probabilities_saturate(tmp_path, capsys):
    """QA: 42 of 80 images had probability 0 or 1, 18 of 40 patients a max of 1.0: the group AUC ranked ties."""
    import warnings

    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    predictions = tmp_path / "p.csv"
    _saturated_predictions(predictions)
    with pytest.warns(UserWarning, match=r"positive_class 'bleed' \(--positive_class\) contradicts 'normal'"):
        columns, rows, metrics = aggregate_predictions(predictions, positive_class="bleed")
    # each scan's largest ratio toward bleed, written as the file's column points, to normal (QA, session 59: the
    # column read in both directions across runs), and the patient each scan is of
    assert columns == ["study_uid", "patient_id", "num_images", "true_label", "label", "prob_normal", "prob_bleed",
                       "log_likelihood_ratio"]  # fmt: skip
    assert [row[1] for row in rows] == ["P1", "P1", "P2", "P2"]
    assert [row[-2:] for row in rows] == [[1.0, -80.0], [1.0, -20.0], [1.0, -40.0], [0.0, 30.0]]
    assert [row[4] for row in rows] == ["bleed", "bleed", "bleed", "normal"]  # the decision: probability >= 0.5
    # three scans tie at probability 1: ranked by it the AUC is 0.75; by the ratio, 1.0
    assert metrics["auc"] == 1.0 and metrics["ranked_by"] == "log_likelihood_ratio"
    assert metrics["log_likelihood_ratio"] == "the smallest of their images' log p(x | normal) - log p(x | bleed)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded class: no warning
        _, by_normal, normal_metrics = aggregate_predictions(predictions)
        mean_columns, mean_rows, _ = aggregate_predictions(predictions, rule="mean", positive_class="normal")
    assert [row[-1] for row in by_normal] == [-30.0, 50.0, 10.0, 60.0] and normal_metrics["positive_class"] == "normal"
    assert normal_metrics["auc"] == 1.0  # the normal scans' largest (50, 60) above the bleed scans' (-30, 10)
    ratio = mean_columns.index("log_likelihood_ratio")
    assert [row[ratio] for row in mean_rows] == [-55.0, 15.0, -15.0, 45.0]
    # per series: the study and patient of each series carried over
    columns, series, _ = aggregate_predictions(predictions, by="series_uid", positive_class="normal")
    assert columns[:4] == ["series_uid", "patient_id", "study_uid", "num_images"]
    assert series[0][:4] == ["x1", "P1", "s1", 1]
    # the CLI: the note says what the ratio column is, metrics.json which score ranked
    main(["aggregate", "--predictions", str(predictions)])
    direction = "the largest of their images' log p(x | normal) - log p(x | bleed)"
    assert f"note: the groups' log_likelihood_ratio = {direction}" in capsys.readouterr().err
    recorded = json.loads((tmp_path / "p.max_by_study_uid.metrics.json").read_text())
    assert recorded["ranked_by"] == "log_likelihood_ratio" and recorded["auc"] == normal_metrics["auc"]
    # without the direction recorded (an earlier version's sidecar) the probabilities rank, ties and all
    _saturated_predictions(predictions, run={})
    columns, _, metrics = aggregate_predictions(predictions)
    assert "log_likelihood_ratio" not in columns
    assert metrics["ranked_by"] == "prob_bleed" and metrics["auc"] == 0.75


def test_aggregate_refuses_a_sidecar_or_ratio_it_cannot_read(tmp_path):
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    predictions = tmp_path / "p.csv"
    _saturated_predictions(predictions, run={"positive_class": "blood"})
    with pytest.raises(ValueError, match=r"p\.csv\.json: records positive_class 'blood'; expected one of the "):
        aggregate_predictions(predictions)
    _saturated_predictions(predictions, run={"log_likelihood_ratio": "log p(x | a) - log p(x | b)"})
    with pytest.raises(ValueError, match=r"records log_likelihood_ratio 'log p\(x \| a\) - log p\(x \| b\)'; "):
        aggregate_predictions(predictions)
    predictions.with_name("p.csv.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"p\.csv\.json: expected the JSON predict wrote beside .*p\.csv"):
        aggregate_predictions(predictions)
    _saturated_predictions(predictions)
    rows = read_rows(predictions)
    rows[2]["log_likelihood_ratio"] = ""
    with open(predictions, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=r"1 of 8 rows have no finite log_likelihood_ratio \(e\.g\. \['b1'\]\)"):
        aggregate_predictions(predictions)


def test_aggregate_help_names_the_output_by_the_predictions_stem(capsys):
    with pytest.raises(SystemExit):
        main(["aggregate", "--help"])
    assert "predictions.csv -> predictions.max_by_study_uid.csv" in " ".join(capsys.readouterr().out.split())


def test_a_copy_of_the_model_at_another_path_resumes_and_other_weights_are_refused(models, tmp_path, capsys):
    """QA: the same model mounted at another path on a shared drive was refused; its content identifies it."""
    write_images(tmp_path / "images", ["x.png", "y.png"])
    output = tmp_path / "predictions.csv"
    args = ["predict", "--input", str(tmp_path / "images"), "--output", str(output), "--no_progress_bar"]
    main(args + ["--model_dir", str(models / "unet")])
    copy = tmp_path / "mounted" / "unet"
    shutil.copytree(models / "unet", copy)
    write_images(tmp_path / "images", ["z.png"], seed=3)
    capsys.readouterr()
    main(args + ["--model_dir", str(copy)])
    out = capsys.readouterr().out
    assert f"note: the model at {copy} has the same content (model_sha256) as the one {output} was predicted " in out
    assert "(1 inputs predicted now on 1 process(es), 2 predicted before)" in out
    assert [row["path"] for row in read_rows(output)] == ["x.png", "y.png", "z.png"]
    written = output.read_bytes()
    pipe = load(models, "unet")
    torch.nn.init.normal_(pipe.head.linear.weight)  # other weights at the path the output now records
    pipe.save_pretrained(copy)
    with pytest.raises(ValueError, match=r"written by another prediction \(model_sha256: '[0-9a-f]{64}' then, "):
        main(args + ["--model_dir", str(copy)])
    with pytest.raises(ValueError, match=rf"\(model_dir: '{copy}' then, '{tmp_path / 'other'}' now; model_sha256: "):
        main(args + ["--model_dir", str(shutil.copytree(copy, tmp_path / "other"))])
    assert output.read_bytes() == written


def test_aggregate_refuses_a_read_only_folder_before_any_work(tmp_path, monkeypatch):
    """QA: with the predictions on a read-only share and no --output, aggregate crashed writing its result."""
    import diffusion_classifiers.prediction.aggregate as aggregate

    predictions = tmp_path / "ro_preds" / "p.csv"
    predictions.parent.mkdir()
    _saturated_predictions(predictions)
    access = os.access  # chmod stops no write of root, who runs the tests: the folder reads as read-only instead
    monkeypatch.setattr(os, "access", lambda path, mode: path != predictions.parent and access(path, mode))
    monkeypatch.setattr(aggregate, "_aggregate", lambda *args: pytest.fail("aggregated before the output's check"))
    args = ["aggregate", "--predictions", str(predictions), "--by", "study_uid", "--rule", "mean"]
    with pytest.raises(ValueError, match=rf"^output \(default: beside --predictions\) .*p\.mean_by_study_uid\.csv: "
                       rf"this user may not write into {predictions.parent}; pass --output to write the grouped "):
        main(args)
    with pytest.raises(ValueError, match=rf"^--output .*g\.csv: this user may not write into {predictions.parent}$"):
        main(args + ["--output", str(predictions.with_name("g.csv"))])
    assert sorted(os.listdir(predictions.parent)) == ["p.csv", "p.csv.json"]


def test_aggregate_metrics_say_what_the_groups_are_and_carry_the_model_predict_recorded(tmp_path):
    """QA (a head-CT group): a card of aggregate's metrics.json said "6 images" of 6 scans scored by the max rule, and
    warned that the file (recording no model_sha256, nor split) was an earlier version's."""
    predictions, call = tmp_path / "p.csv", {"method": "elbo", "num_timesteps": 20, "seed": 0}
    run = {"model_dir": "/models/ct", "model_sha256": "ab" * 32, "split": "test", "positive_class": "normal",
           "log_likelihood_ratio": "log p(x | normal) - log p(x | bleed)", "pipeline_call": call}  # fmt: skip
    _saturated_predictions(predictions, run=run)
    main(["aggregate", "--predictions", str(predictions), "--threshold", "0.75"])
    recorded = json.loads((tmp_path / "p.max_by_study_uid.metrics.json").read_text())
    grouping = ("grouped_by", "rule", "threshold", "num_groups", "num_images", "num_samples")
    assert {key: recorded[key] for key in grouping} == {"grouped_by": "study_uid", "rule": "max", "threshold": 0.75,
                                                       "num_groups": 4, "num_images": 8, "num_samples": 4}
    assert recorded["model_sha256"] == "ab" * 32 and recorded["split"] == "test" and recorded["pipeline_call"] == call
    assert recorded["ranked_by"] == "log_likelihood_ratio" and recorded["positive_class"] == "normal"  # kept
    # the mean rule has no threshold; predictions without their sidecar record no model, split or call
    _slice_predictions(tmp_path / "q.csv")
    main(["aggregate", "--predictions", str(tmp_path / "q.csv"), "--rule", "mean", "--by", "study_uid", "series_uid"])
    mean = json.loads((tmp_path / "q.mean_by_study_uid_series_uid.metrics.json").read_text())
    assert mean["grouped_by"] == ["study_uid", "series_uid"] and mean["rule"] == "mean" and "threshold" not in mean
    assert mean["num_groups"] == mean["num_samples"] == 2 and mean["num_images"] == 5
    assert not {"model_sha256", "split", "pipeline_call"} & set(mean)


def test_the_aggregations_of_a_csv_and_a_parquet_of_one_name_do_not_clash_and_say_what_they_score(tmp_path, capsys):
    """QA: `p.csv` and `p.parquet` both aggregated into `p.max_by_study_uid.csv`, the second refused (or, with
    --overwrite, replacing the first's); the group metrics did not say that predict never checks for training images."""
    import pyarrow.csv

    _slice_predictions(tmp_path / "p.csv")
    pq.write_table(pyarrow.csv.read_csv(tmp_path / "p.csv"), tmp_path / "p.parquet")
    for name in ("p.csv", "p.parquet"):
        main(["aggregate", "--predictions", str(tmp_path / name)])
    assert (tmp_path / "p.max_by_study_uid.csv").is_file() and (tmp_path / "p.parquet.max_by_study_uid.csv").is_file()
    assert read_rows(tmp_path / "p.max_by_study_uid.csv") == read_rows(tmp_path / "p.parquet.max_by_study_uid.csv")
    assert "the predictions do not say which images the model was trained on" in capsys.readouterr().err



def test_labelled_predictions_flag_training_images_and_aggregate_scores_the_other_scans(models, tmp_path, capsys):
    """QA (a head-CT group): predict scored scans the model was trained on and aggregate counted them in its group
    metrics (6 of 12 studies; evaluate refuses such images). A model recording its training images' fingerprints
    flags them (`training_image`), and aggregate leaves their groups out of the metrics, saying how many."""
    import shutil as shell

    from diffusion_classifiers.data.split_record import image_fingerprints, save_split_record

    model = tmp_path / "model"
    shell.copytree(models / "unet", model)
    write_images(tmp_path, ["s1/a.png", "s1/b.png", "s2/a.png", "s3/a.png"], seed=4)
    pipe = load(models, "unet")
    trained = image_fingerprints(pipe.preprocess([str(tmp_path / "s1" / "b.png")]))  # one slice of study s1
    save_split_record(model, 0.1, 0.2, 0, train_fingerprints=trained)
    rows = [(f"{study}/a.png", "cat") for study in ("s1", "s2", "s3")] + [("s1/b.png", "cat")]
    write_csv(tmp_path / "in.csv", rows)
    main(["predict", "--model_dir", str(model), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "p.csv")])
    predicted = read_rows(tmp_path / "p.csv")
    flags = {row["path"]: row["training_image"] for row in predicted}
    assert flags == {"s1/a.png": "False", "s2/a.png": "False", "s3/a.png": "False", "s1/b.png": "True"}
    study = [{**row, "study": row["path"].split("/")[0]} for row in predicted]  # a study column added by hand
    write_csv(tmp_path / "p.csv", [list(row.values()) for row in study], columns=list(study[0]))
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "study", "--rule", "mean"])
    assert "note: 1 of 3 groups hold images the model was trained on" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "p.mean_by_study.metrics.json").read_text())
    assert metrics["num_groups"] == 2 and metrics["groups_left_out_holding_training_images"] == 1
    assert len(read_rows(tmp_path / "p.mean_by_study.csv")) == 3  # every group is still listed


def test_a_parquet_output_keeps_the_training_image_flags_for_aggregate(tmp_path):
    """Review: parquet stored training_image as 1.0 / 0.0, which aggregate read as no training image, and scored a
    group the model was trained on; an output of that version resumed (merged) keeps its flags."""
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions
    from diffusion_classifiers.prediction.outputs import _write_table, read_predictions

    columns = ["path", "frame", "true_label", "training_image", "study_uid", "label", "score", "prob_cat", "prob_dog"]
    rows = [["a", 0, "cat", True, "s1", "cat", 0.9, 0.9, 0.1], ["b", 0, "dog", False, "s2", "dog", 0.8, 0.2, 0.8]]
    _write_table(tmp_path / "p.parquet", columns, rows)
    assert [row[3] for row in read_predictions(tmp_path / "p.parquet")[1]] == [True, False]
    _, _, metrics = aggregate_predictions(tmp_path / "p.parquet", by="study_uid", rule="mean")
    assert metrics["groups_left_out_holding_training_images"] == 1 and metrics["num_groups"] == 1
    earlier = [[*row[:3], float(row[3]), *row[4:]] for row in rows]  # as the version that added the column wrote it
    _write_table(tmp_path / "p.parquet", columns, earlier)
    assert [row[3] for row in read_predictions(tmp_path / "p.parquet")[1]] == [True, False]


def test_python_predict_flags_the_training_images_the_pipeline_records(models, tmp_path):
    """QA (a mammography group): `predict_files` wrote no training_image column unless given the fingerprints by
    hand, so `aggregate` scored groups the model was trained on; it reads the pipeline's record by default now. An
    output written before the column resumes without it."""
    import shutil as shell

    from diffusion_classifiers.data.split_record import image_fingerprints, save_split_record

    model = tmp_path / "model"
    shell.copytree(models / "unet", model)
    write_images(tmp_path, ["a.png", "b.png", "c.png"], seed=5)
    trained = image_fingerprints(load(models, "unet").preprocess([str(tmp_path / "b.png")]))
    save_split_record(model, 0.1, 0.2, 0, train_fingerprints=trained)
    pipe = UNetFeatureClassifierPipeline.from_pretrained(model)
    write_csv(tmp_path / "in.csv", [("a.png", "cat"), ("b.png", "cat")])
    predict_files(pipe, list_inputs(tmp_path / "in.csv"), tmp_path / "p.csv", progress_bar=False)
    assert [row["training_image"] for row in read_rows(tmp_path / "p.csv")] == ["False", "True"]
    rows = read_rows(tmp_path / "p.csv")  # as an earlier version wrote it, without the column
    old_columns = [column for column in rows[0] if column != "training_image"]
    write_csv(tmp_path / "p.csv", [[row[c] for c in old_columns] for row in rows], columns=old_columns)
    sidecar = tmp_path / "p.csv.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "columns": old_columns}))
    write_csv(tmp_path / "in.csv", [("a.png", "cat"), ("b.png", "cat"), ("c.png", "dog")])
    resumed = predict_files(pipe, list_inputs(tmp_path / "in.csv"), tmp_path / "p.csv", progress_bar=False)
    assert (resumed.predicted, resumed.skipped) == (1, 2) and list(read_rows(tmp_path / "p.csv")[0]) == old_columns


def test_predict_refuses_to_write_over_its_own_input_csv_even_with_overwrite(models, tmp_path):
    """QA: the refusal of a file no prediction wrote advised --overwrite, which replaced the user's list of paths."""
    write_images(tmp_path, ["a.png", "b.png"])
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,cat\nb.png,dog\n")
    for flag, name in (("--output", "output"), ("--errors", "errors file")):
        other = {"--output": str(tmp_path / "out.csv"), "--errors": str(tmp_path / "errors.csv")}
        paths = {**other, flag: str(listing)}
        with pytest.raises(ValueError, match=rf"{name} {listing}: it is the CSV listing the inputs"):
            main(["predict", "--model_dir", str(models / "unet"), "--input", str(listing), "--overwrite",
                  *[item for pair in paths.items() for item in pair]])  # fmt: skip
    with pytest.raises(ValueError, match=rf"output {listing}: it is the CSV listing the inputs"):  # in Python too
        predict_files(load(models, "unet"), list_inputs(listing), listing, overwrite=True, progress_bar=False)
    assert listing.read_text() == "path,label\na.png,cat\nb.png,dog\n"


def test_predict_says_when_it_reads_the_earlier_output_and_merges(models, tmp_path, capsys):
    """QA (session 58, a plankton lab at scale): over 30,000 files, reading the earlier output and merging the
    batches took 5-12 s each with nothing shown (longer as the output grows); each is said on stderr."""
    inputs = list_inputs(image_folder(tmp_path))
    output = tmp_path / "predictions.csv"
    predict_files(load(models, "unet"), inputs, output, batch_size=2)
    first = capsys.readouterr().err
    assert f"predict: merging the predictions into {output} ..." in first and "reading the inputs done" not in first
    predict_files(load(models, "unet"), inputs, output, batch_size=2)
    assert f"predict: reading the inputs done in {output} ..." in capsys.readouterr().err
    predict_files(load(models, "unet"), inputs, output, batch_size=2, progress_bar=False, overwrite=True)
    assert "predict:" not in capsys.readouterr().err  # no bar asked for, no status either


def test_a_float_tiff_is_predicted_as_the_pipeline_and_the_loaders_read_it(models, tmp_path):
    """QA (a plankton lab): a 32-bit float TIFF (values in [0, 1]) was read as [-1, 1] by predict (and cluster), so its
    prediction differed from the same image as a PNG and from `pipe(path)`, which read it as its file."""
    pipe = load(models, "unet")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    Image.fromarray(pixels.astype(np.float32) / 255).save(tmp_path / "image.tif")
    rows = read_rows(predict_files(pipe, list_inputs(tmp_path), tmp_path / "out" / "predictions.csv").output)
    probs = {row["path"]: [float(row[f"prob_{c}"]) for c in CLASSES] for row in rows}
    direct = pipe([str(tmp_path / "image.png"), str(tmp_path / "image.tif")]).probs.numpy()
    np.testing.assert_allclose(probs["image.tif"], direct[1], atol=1e-6)
    np.testing.assert_allclose(probs["image.tif"], probs["image.png"], atol=1e-6)


def test_no_progress_bar_hides_diffusers_and_transformers_loading_bars_and_restores_them():
    """QA (an ecologist): cluster --no_progress_bar of an RC-DiT still printed transformers' "Loading weights" bar."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from diffusion_classifiers.prediction.runner import loading_progress_bars

    libraries = (diffusers_logging, transformers_logging)
    before = [library.is_progress_bar_enabled() for library in libraries]
    with loading_progress_bars(shown=False):
        assert not any(library.is_progress_bar_enabled() for library in libraries)
    assert [library.is_progress_bar_enabled() for library in libraries] == before


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_rerun_takes_the_inputs_edited_sample_ids_and_labels(models, tmp_path, capsys, suffix):
    """QA (a lab at scale): sample ids and labels corrected in the input CSV after a run stayed as they were in the
    output on a rerun ("0 inputs predicted now"), so aggregate --by sample grouped by the old ones."""
    write_images(tmp_path / "imgs", [f"{i}.png" for i in range(6)])
    listing = tmp_path / "season.csv"

    def write_listing(samples, labels):
        with open(listing, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "sample"])
            writer.writerows([f"imgs/{i}.png", label, sample] for i, (sample, label) in enumerate(zip(samples, labels)))

    write_listing(["S1"] * 6, [CLASSES[0]] * 6)
    output = tmp_path / f"p{suffix}"
    command = ["predict", "--model_dir", str(models / "unet"), "--input", str(listing), "--output", str(output)]
    main(command)
    before = read_predictions(output)[1]
    write_listing(["S1", "S7", "S1", "S1", "S7", "S1"], [CLASSES[0]] * 5 + [CLASSES[1]])
    capsys.readouterr()
    main(command)
    printed = capsys.readouterr().out
    assert "0 inputs predicted now" in printed
    assert "3 rows predicted before took the input's sample, true_label as it is now (edited since)" in printed
    columns, rows = read_predictions(output)
    sample, truth = columns.index("sample"), columns.index("true_label")
    assert [row[sample] for row in rows] == ["S1", "S7", "S1", "S1", "S7", "S1"]
    assert [row[truth] for row in rows] == [CLASSES[0]] * 5 + [CLASSES[1]]
    unchanged = [i for i, column in enumerate(columns) if column not in ("sample", "true_label")]
    assert [[row[i] for i in unchanged] for row in rows] == [[row[i] for i in unchanged] for row in before]
    main(command)  # nothing edited since: nothing said
    assert "as it is now" not in capsys.readouterr().out


def test_a_rerun_takes_a_patient_id_corrected_in_the_input_csv(models, tmp_path, capsys):
    """QA (a mammography group): a patient_id corrected in the input CSV of DICOM files was kept as it was on a rerun,
    without a word (the labels were taken), so `aggregate --by patient_id` merged two patients."""
    cq500 = shared_data("cq500_dicom_sample")
    names = ["CQ500-CT-0/CT000010.dcm", "CQ500-CT-1/CT000000.dcm"]
    for name in names:
        shutil.copy(cq500 / name, tmp_path / name.replace("/", "_"))
    listing = tmp_path / "exams.csv"

    def write_listing(patients):
        with open(listing, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "patient_id"])
            writer.writerows([name.replace("/", "_"), CLASSES[0], patient] for name, patient in zip(names, patients))

    write_listing(["P1", "P1"])
    output = tmp_path / "p.csv"
    command = ["predict", "--model_dir", str(models / "unet"), "--input", str(listing), "--output", str(output)]
    main(command)
    before = read_rows(output)
    write_listing(["P1", "P9"])
    capsys.readouterr()
    main(command)
    assert "1 rows predicted before took the input's patient_id, true_label as it is now" in capsys.readouterr().out
    after = read_rows(output)
    assert [row["patient_id"] for row in after] == ["P1", "P9"]
    assert [{**row, "patient_id": None} for row in after] == [{**row, "patient_id": None} for row in before]


@pytest.mark.parametrize("input_range", ["[0, 1]", "auto"])
def test_predict_and_cluster_read_files_as_the_pipeline_does_whatever_its_input_range(models, tmp_path, input_range):
    """Review: predict and cluster gave the pipeline its own [-1, 1] output to read by the model's input range: a
    "[0, 1]" model refused every batch, an "auto" one read a batch of bright images as [0, 1] and rescaled it."""
    from diffusion_classifiers.prediction import cluster_files

    pipe = load(models, "unet")
    pipe.set_preprocessing({"input_range": input_range})
    pipe.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(3)
    (tmp_path / "bright").mkdir()
    for i in range(6):  # every pixel above mid-grey: no value below 0 in [-1, 1]
        Image.fromarray(rng.integers(200, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "bright" / f"{i}.png")
    main(["predict", "--model_dir", str(tmp_path / "model"), "--input", str(tmp_path / "bright"), "--output",
          str(tmp_path / "p.csv"), "--batch_size", "3"])  # fmt: skip
    rows = read_rows(tmp_path / "p.csv")
    own = load(tmp_path, "model")([tmp_path / "bright" / row["path"] for row in rows]).probs
    predicted = torch.tensor([[float(row[f"prob_{name}"]) for name in CLASSES] for row in rows])
    torch.testing.assert_close(predicted, own.float(), rtol=0, atol=1e-5)
    cluster_files(own_pipe := load(tmp_path, "model"), list_inputs(tmp_path / "bright"), tmp_path / "clusters", 2,
                  progress_bar=False)  # fmt: skip
    assert own_pipe.preprocessing.input_range == input_range and (tmp_path / "clusters" / "clusters.csv").is_file()

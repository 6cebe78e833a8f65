"""QA (session 60, the operator of a shared server): a run replacing an earlier result (`--overwrite_output_dir`)
that failed on a full disk or was killed lost both results; a probe killed while saving left a `pipeline/` without
its split record, which evaluate and predict read."""

import errno
import json
import signal
import subprocess
import sys
import textwrap

import pytest

import diffusion_classifiers.evaluation
import diffusion_classifiers.data.split_record
from diffusion_classifiers.cli import main
from diffusion_classifiers.replaced_reports import replacing_earlier_report, settle_replaced_report
from diffusion_classifiers.validation import check_no_earlier_report

from .conftest import python_subprocess_env
from .test_per_image_predictions import model_and_data  # noqa: F401 (a fixture)


def earlier_report(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text("earlier report")
    (folder / "pipeline").mkdir()
    (folder / "pipeline" / "model_index.json").write_text("{}")
    (folder / "metrics.json").write_text('{"accuracy": 0.5}')


def contents(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_replacement_moves_the_earlier_report_back_and_a_finished_one_deletes_it(tmp_path):
    earlier_report(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(OSError):
        with replacing_earlier_report(tmp_path, folders=["pipeline"], files=["report.md", "roc_pr.png"]):
            assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "pipeline").exists()
            (tmp_path / "report.md").write_text("new, half written")
            (tmp_path / "roc_pr.png").write_bytes(b"a figure the earlier run did not have")
            raise OSError(errno.EFBIG, "File too large")
    assert contents(tmp_path) == before  # and nothing hidden left beside it
    with replacing_earlier_report(tmp_path, folders=["pipeline"], files=["report.md"]):
        (tmp_path / "report.md").write_text("new")
        (tmp_path / "metrics.json").write_text("{}")
    assert contents(tmp_path) == {"metrics.json": b"{}", "report.md": b"new"}


@pytest.mark.parametrize("marker_written", [False, True])
def test_a_killed_replacement_is_settled_by_the_next_run(tmp_path, marker_written):
    earlier_report(tmp_path)
    before = contents(tmp_path)
    killed = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from diffusion_classifiers.replaced_reports import replacing_earlier_report
        folder = Path({str(tmp_path)!r})
        with replacing_earlier_report(folder, folders=["pipeline"], files=["report.md"]):
            (folder / "report.md").write_text("new")
            if {marker_written}:
                (folder / "metrics.json").write_text("{{}}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", killed], env=python_subprocess_env())
    assert result.returncode == -signal.SIGKILL
    if marker_written:  # the new report was complete: the earlier one goes
        settle_replaced_report(tmp_path)
        assert contents(tmp_path) == {"metrics.json": b"{}", "report.md": b"new"}
        return
    with pytest.raises(ValueError, match=r"holds an earlier report \(metrics.json\)"):
        check_no_earlier_report(tmp_path, overwrite=False)  # the earlier report is back, and refused as before
    assert contents(tmp_path) == before


def test_evaluate_overwriting_a_result_keeps_it_when_the_disk_fills(model_and_data, tmp_path, monkeypatch):  # noqa: F811
    """`evaluate --overwrite_output_dir` under `ulimit -f` failed on confusion_matrix.png and left the folder empty."""
    root, _ = model_and_data
    command = ["evaluate", "--model_dir", str(root / "model"), "--dataset", str(root / "grown"),
               "--output_dir", str(tmp_path), "--drop_training_images"]  # fmt: skip
    main(command)
    before = contents(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(diffusion_classifiers.evaluation, "write_texts_atomically", full_disk)
    with pytest.raises(OSError, match="File too large"):
        main([*command, "--overwrite_output_dir", "--target_sensitivity", "1.0"])
    assert contents(tmp_path) == before and sorted(before) == sorted(p.name for p in tmp_path.iterdir())


def test_a_probe_that_fails_while_saving_keeps_the_earlier_result_and_leaves_no_half_pipeline(
    model_and_data, tmp_path, monkeypatch  # noqa: F811
):
    root, _ = model_and_data
    command = ["probe", "--unet_dir", str(root / "model"), "--dataset", str(root / "data"),
               "--timesteps", "20"]  # fmt: skip

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the kill: the pipeline is saved, its split record not yet

    monkeypatch.setattr(diffusion_classifiers.data.split_record, "save_split_record", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*command, "--output_dir", str(tmp_path / "first")])
    assert not (tmp_path / "first").exists()  # no model_index.json without data_splits.json: the folder left empty
    monkeypatch.undo()
    main([*command, "--output_dir", str(tmp_path / "second")])
    before = contents(tmp_path / "second")
    assert json.loads(before["pipeline/data_splits.json"])["train_fingerprints"]
    monkeypatch.setattr(diffusion_classifiers.data.split_record, "save_split_record", killed)
    with pytest.raises(KeyboardInterrupt):
        main([*command, "--output_dir", str(tmp_path / "second"), "--overwrite_output_dir", "--timesteps", "30"])
    assert contents(tmp_path / "second") == before


def test_a_storage_refusal_inside_safetensors_names_the_file(tmp_path):
    """A trainer under a file-size limit said only "Error while serializing: I/O error: File too large (os error 27)"
    (the README promises one line naming the file a storage refusal stopped)."""
    script = textwrap.dedent(f"""
        import resource, torch
        from safetensors.torch import save_file
        from diffusion_classifiers.cli import run_from_shell
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # Python ignores SIGXFSZ: EFBIG
        run_from_shell("train", lambda: save_file({{"weight": torch.zeros(100_000)}}, {str(tmp_path / "model.safetensors")!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], env=python_subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(f"File too large (os error 27) (writing {tmp_path / 'model.safetensors'})")


def test_an_empty_lock_left_by_a_run_killed_as_it_took_it_is_taken_over_once_old(tmp_path, caplog):
    """SIGKILL between creating the lock and writing it left an empty `.run.lock` that refused every rerun as
    "unreadable lock ... delete it"; a live run writes its lock at once, so an empty one seconds old is abandoned."""
    import os

    from diffusion_classifiers.run_lock import COMMAND_LOCK_NAME, EMPTY_LOCK_SECONDS, RunLock

    lock = tmp_path / COMMAND_LOCK_NAME
    lock.touch()
    with pytest.raises(RuntimeError, match=r"unreadable lock"):  # as young as a live run's, being written: refused
        RunLock(str(lock), "--output_dir out", "--output_dir", "probe").acquire()
    os.utime(lock, (lock.stat().st_atime, lock.stat().st_mtime - EMPTY_LOCK_SECONDS - 1))
    taken = RunLock(str(lock), "--output_dir out", "--output_dir", "probe")
    taken.acquire()
    assert "Taking over the empty lock" in caplog.text and json.loads(lock.read_text())["pid"] == os.getpid()
    taken.release()


def test_a_read_only_mount_is_named_as_such_not_as_permissions(tmp_path, monkeypatch):
    """`predict --output` on a read-only mount said "this user may not write into ro" (evaluate and cluster said
    "Read-only file system"): `os.access` is False either way, the mount's flag tells them apart."""
    import os
    from types import SimpleNamespace

    from diffusion_classifiers.validation import check_writable_file

    monkeypatch.setattr(os, "access", lambda *args: False)
    with pytest.raises(ValueError, match=r"this user may not write into"):
        check_writable_file(tmp_path / "p.csv", "--output")
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(ValueError, match=rf"--output {tmp_path}/p.csv: {tmp_path} is on a read-only file system"):
        check_writable_file(tmp_path / "p.csv", "--output")


def test_a_training_folder_without_its_model_says_how_to_save_it(tmp_path):
    """A trainer killed while saving its final model left training_summary.json and no model_index.json; probe said
    only "model_index.json not found; expected a pipeline folder written by save_pretrained"."""
    from diffusion_classifiers.pipelines.pipeline_utils import read_model_index

    (tmp_path / "checkpoint-20").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds a training run without its model: .* --resume_from_checkpoint"):
        read_model_index(str(tmp_path))
    # QA (a bad-input sweep): the demo's unet_training folder, beside the pipeline it saved, was said killed
    (tmp_path / "demo" / "unet_training").mkdir(parents=True)
    (tmp_path / "demo" / "unet_training" / "training_summary.json").write_text("{}")
    (tmp_path / "demo" / "pipeline").mkdir()
    (tmp_path / "demo" / "pipeline" / "model_index.json").write_text("{}")
    saved_beside = r"unet_training holds the training run of the model saved in .*demo.pipeline: pass"
    with pytest.raises(FileNotFoundError, match=saved_beside):
        read_model_index(str(tmp_path / "demo" / "unet_training"))


def test_the_identical_rerun_of_a_killed_overwrite_continues_it(tmp_path, monkeypatch, capsys):
    """`predict --overwrite` killed after committing its batches: the identical rerun predicted every input again (the
    prediction it replaces stays aside either way, and another overwrite still starts afresh)."""
    import numpy as np
    from PIL import Image

    from diffusion_classifiers.prediction import runner

    from .test_ecosystem_loading import pipelines

    pipelines()["unet_features"].save_pretrained(tmp_path / "model")
    (tmp_path / "in").mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(tmp_path / "in" / f"{i}.png")
    output = tmp_path / "p.csv"
    command = ["predict", "--model_dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
               str(output), "--batch_size", "2", "--no_progress_bar"]  # fmt: skip
    main(command)
    earlier = output.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # every batch committed, none merged

    monkeypatch.setattr(runner, "merge_parts", killed)
    with pytest.raises(SystemExit):  # 130, saying to rerun the same command
        main([*command, "--overwrite"])
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert (tmp_path / "p.csv.replaced" / "p.csv").read_bytes() == earlier
    monkeypatch.undo()
    capsys.readouterr()
    main([*command, "--overwrite"])
    assert "0 inputs predicted now" in capsys.readouterr().out
    assert output.read_bytes() == earlier and not (tmp_path / "p.csv.replaced").exists()


def test_a_live_replacing_run_is_left_alone_by_a_second_one(tmp_path):
    """Second read: a second evaluate into the folder (even one then refused for lacking --overwrite_output_dir)
    settled the first one's set-aside report while it was writing: the earlier report.md came back beside the new
    metrics.json, and the first run failed on its own cleanup."""
    earlier_report(tmp_path)
    with replacing_earlier_report(tmp_path, folders=["pipeline"], files=["report.md"]):
        (tmp_path / "report.md").write_text("new")
        settle_replaced_report(tmp_path)  # what a second run does first: this process is alive
        check_no_earlier_report(tmp_path, overwrite=False)  # no report yet: nothing to refuse
        assert (tmp_path / "report.md").read_text() == "new"
        (tmp_path / "metrics.json").write_text("{}")
    assert contents(tmp_path) == {"metrics.json": b"{}", "report.md": b"new"}


def test_a_run_killed_while_setting_aside_loses_none_of_the_earlier_files(tmp_path):
    """Second read: killed after the marker was set aside, the next run removed the earlier report.md (still in
    place, not yet set aside) as a file of the replacing run, and moved back only the marker."""
    earlier_report(tmp_path)
    before = contents(tmp_path)
    killed = textwrap.dedent(f"""
        import os, signal
        from diffusion_classifiers import replaced_reports
        moves = []
        def replace(source, target):
            moves.append(source)
            if len(moves) == 2:  # the marker is set aside: killed before report.md
                os.kill(os.getpid(), signal.SIGKILL)
            os.rename(source, target)
        replaced_reports.os.replace = replace
        with replaced_reports.replacing_earlier_report({str(tmp_path)!r}, folders=["pipeline"], files=["report.md"]):
            pass
    """)
    assert subprocess.run([sys.executable, "-c", killed], env=python_subprocess_env()).returncode == -signal.SIGKILL
    check_no_earlier_report(tmp_path, overwrite=True)  # settles
    assert contents(tmp_path) == before


def test_a_failed_run_leaves_none_of_its_extra_figure_pages(tmp_path):
    """Second read: a failed `cluster --overwrite_output_dir` of more clusters left its pages beyond the earlier
    run's beside the restored report."""
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "cluster_examples_1.png").write_bytes(b"earlier")
    with pytest.raises(OSError):
        with replacing_earlier_report(tmp_path, patterns=["cluster_examples_*.png"]):
            for page in (1, 2):
                (tmp_path / f"cluster_examples_{page}.png").write_bytes(b"new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert contents(tmp_path) == {"cluster_examples_1.png": b"earlier", "metrics.json": b"{}"}


def test_a_killed_aggregation_is_settled_before_its_output_is_looked_for(tmp_path):
    """Second read: after a killed `aggregate --overwrite`, a rerun without --overwrite found no output, restored the
    earlier one only once it was writing, then replaced it."""
    predictions = tmp_path / "preds.csv"
    predictions.write_text("path,label,score,prob_a,prob_b,study_uid\n/x/1.png,a,0.9,0.9,0.1,s1\n")
    main(["aggregate", "--predictions", str(predictions), "--by", "study_uid", "--output", str(tmp_path / "groups.csv")])
    earlier = (tmp_path / "groups.csv").read_bytes()
    killed = textwrap.dedent(f"""
        import os, signal
        from diffusion_classifiers.replaced_reports import replacing_earlier_report
        with replacing_earlier_report({str(tmp_path)!r}, marker="groups.metrics.json", files=["groups.csv"]):
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", killed], env=python_subprocess_env()).returncode == -signal.SIGKILL
    assert not (tmp_path / "groups.csv").exists()  # the premise: set aside
    with pytest.raises(FileExistsError, match=r"groups.csv exists \(an earlier aggregation\)"):
        main(["aggregate", "--predictions", str(predictions), "--by", "study_uid", "--output", str(tmp_path / "groups.csv")])
    assert (tmp_path / "groups.csv").read_bytes() == earlier

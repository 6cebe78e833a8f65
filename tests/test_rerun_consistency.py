"""QA (killed reruns): a rerun over an earlier report (`--overwrite_output_dir`, aggregate's `--overwrite`) stopped
while it wrote its files left folders mixing the two runs (a new pipeline beside the old metrics.json, a new
metrics.json beside the old report.md), read as one consistent result. The marker of a complete run is `metrics.json`
(aggregate: `<output>.metrics.json`): removed before a rerun's first file, written after its last. Here a write fails
halfway through a rerun: the folder then holds no marker, or the earlier run's files untouched; and in a run that
completes, the marker is the last file written."""

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import diffusion_classifiers.atomic_files as atomic_files
import diffusion_classifiers.cli  # noqa: F401  (every module that binds write_atomically, imported before patching)
import diffusion_classifiers.evaluation  # noqa: F401
import diffusion_classifiers.plots  # noqa: F401
import diffusion_classifiers.prediction.aggregate  # noqa: F401
import diffusion_classifiers.prediction.outputs  # noqa: F401
import diffusion_classifiers.unet_feature_study  # noqa: F401
from diffusion_classifiers.cli import main

from .conftest import digit_folder

TICK = 0.012  # longer than the kernel's coarse clock step: files written one after another get distinct mtimes


@pytest.fixture
def writes(monkeypatch):
    """Every file written through `atomic_files.write_atomically` (the reports, PNGs, CSVs), each a `TICK` after
    whatever came before; the one named `fail_on` raises OSError instead, as on a full disk."""
    original = atomic_files.write_atomically
    state = SimpleNamespace(fail_on=None, order=[])

    def write(path, *args, **kwargs):
        time.sleep(TICK)
        if Path(path).name == state.fail_on:
            raise OSError(28, f"No space left on device (test): {path}")
        original(path, *args, **kwargs)
        state.order.append(Path(path).name)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("diffusion_classifiers"):
            if getattr(module, "write_atomically", None) is original:
                monkeypatch.setattr(module, "write_atomically", write)
    return state


def _files(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _assert_no_mixed_report(folder: Path, before: dict, marker: str = "metrics.json") -> None:
    after = _files(folder)
    assert marker not in after or after == before, "a marker beside files of another run"


def _assert_marker_written_last(folder: Path, marker: str = "metrics.json", names=None) -> None:
    paths = [path for path in folder.rglob("*") if path.is_file() and (names is None or path.name in names)]
    latest = max((path for path in paths if path.name != marker), key=lambda path: path.stat().st_mtime_ns)
    assert (folder / marker).stat().st_mtime_ns > latest.stat().st_mtime_ns, f"{latest} written after {marker}"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    """A folder of 80 of scikit-learn's digits 0 and 1: which files a run writes, and in which order, does not depend
    on the data, and all 1797 digits made each probe here take 2-3 times as long."""
    import numpy as np
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digit_folder(root, np.flatnonzero(load_digits().target <= 1)[:80])
    return str(root)


@pytest.fixture(scope="module")
def probed(tmp_path_factory, digits):
    """A tiny untrained U-Net, and an earlier complete probe of it (t=50) on digits."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.models import unet_config

    root = tmp_path_factory.mktemp("rerun")
    UNetFeatureClassifierPipeline(UNet2DModel(**unet_config("tiny", 8)), DDPMScheduler()).save_pretrained(root / "u")
    main(["probe", "--unet_dir", str(root / "u"), "--dataset", digits, "--output_dir", str(root / "probe"),
          "--timesteps", "50", "--C", "1"])  # fmt: skip
    return root


def _probe(root: Path, data: str, out: Path, timestep: str) -> None:
    main(["probe", "--unet_dir", str(root / "u"), "--dataset", data, "--output_dir", str(out), "--timesteps", timestep,
          "--C", "1", "--overwrite_output_dir"])  # fmt: skip


@pytest.mark.parametrize("fail_on", ["confusion_matrix.png", "report.md"])
def test_probe_rerun_failing_halfway_leaves_no_report_beside_the_other_runs_files(
    probed, digits, tmp_path, writes, fail_on
):
    import shutil

    out = tmp_path / "probe"
    shutil.copytree(probed / "probe", out)
    before = _files(out)
    writes.fail_on = fail_on
    with pytest.raises(OSError, match="No space left"):
        _probe(probed, digits, out, "10")
    _assert_no_mixed_report(out, before)


def test_probe_rerun_writes_metrics_json_last(probed, digits, tmp_path, writes):
    import shutil

    out = tmp_path / "probe"
    shutil.copytree(probed / "probe", out)
    _probe(probed, digits, out, "10")
    assert json.loads((out / "metrics.json").read_text())["summary"]["best_timestep"] == 10
    assert writes.order[-1] == "metrics.json"
    _assert_marker_written_last(out)  # pipeline/ included


@pytest.mark.parametrize("fail_on", ["reliability.png", "report.md"])
def test_evaluate_rerun_failing_halfway_leaves_no_report_beside_the_other_runs_files(
    probed, digits, tmp_path, writes, fail_on
):
    out = tmp_path / "e"
    model = ["evaluate", "--model_dir", str(probed / "probe" / "pipeline"), "--dataset", digits, "--output_dir",
             str(out)]  # fmt: skip
    main(model)
    before = _files(out)
    writes.fail_on = fail_on
    with pytest.raises(OSError, match="No space left"):
        main([*model, "--split", "val", "--overwrite_output_dir"])
    _assert_no_mixed_report(out, before)
    writes.fail_on = None
    writes.order.clear()
    main([*model, "--split", "val", "--overwrite_output_dir"])
    assert json.loads((out / "metrics.json").read_text())["split"] == "val"
    assert writes.order[-1] == "metrics.json" and "report.md" in writes.order
    _assert_marker_written_last(out)


def _slice_predictions(path: Path) -> None:
    from diffusion_classifiers.prediction.outputs import write_csv

    columns = ["path", "frame", "true_label", "patient_id", "study_uid", "series_uid", "label", "score", "prob_normal",
               "prob_bleed"]  # fmt: skip
    slices = [("a1", "bleed", "s1", 0.9, 0.1), ("a2", "bleed", "s1", 0.3, 0.7), ("a3", "bleed", "s1", 0.8, 0.2),
              ("b1", "normal", "s2", 0.6, 0.4), ("b2", "normal", "s2", 0.7, 0.3)]  # fmt: skip
    rows = [[name, 0, truth, "p", study, "x", "bleed" if bleed >= 0.5 else "normal", max(normal, bleed), normal, bleed]
            for name, truth, study, normal, bleed in slices]  # fmt: skip
    write_csv(path, columns, rows)


def test_aggregate_rerun_failing_or_completing_keeps_its_metrics_with_their_own_groups(tmp_path, writes):
    folder = tmp_path / "agg"
    folder.mkdir()
    _slice_predictions(folder / "p.csv")
    output = folder / "groups.csv"
    first = ["aggregate", "--predictions", str(folder / "p.csv"), "--by", "study_uid", "--output", str(output)]
    main(first)
    before = _files(folder)
    second = [*first[:-2], "--rule", "mean", "--positive_class", "normal", "--output", str(output), "--overwrite"]
    writes.fail_on = "groups.metrics.json"  # the CSV written, its metrics not
    with pytest.raises(OSError, match="No space left"):
        main(second)
    _assert_no_mixed_report(folder, before, marker="groups.metrics.json")
    writes.fail_on = None
    writes.order.clear()
    main(second)
    assert json.loads((folder / "groups.metrics.json").read_text())["rule"] == "mean"
    assert writes.order == ["groups.csv", "groups.metrics.json"]
    _assert_marker_written_last(folder, "groups.metrics.json", names={"groups.csv", "groups.metrics.json"})


def _saved_rc_dit(folder: Path) -> str:
    from .test_rc_dit import tiny_pipeline

    tiny_pipeline().save_pretrained(folder)
    return str(folder)


def test_fit_head_rerun_replaces_the_pipeline_whole_and_writes_metrics_json_last(digits, tmp_path, writes):
    model, out = _saved_rc_dit(tmp_path / "rc"), tmp_path / "head"
    common = ["fit-head", "--model_dir", model, "--dataset", digits, "--test_fraction", "0.3", "--output_dir", str(out)]
    main([*common, "--head", "linear_probe", "--C", "1"])
    linear = set(_files(out / "pipeline"))
    before = _files(out)
    writes.fail_on = "report.md"  # the prototype pipeline saved, its report not
    with pytest.raises(OSError, match="No space left"):
        main([*common, "--head", "prototypes", "--shots", "3", "--overwrite_output_dir"])
    _assert_no_mixed_report(out, before)
    writes.fail_on = None
    main([*common, "--head", "prototypes", "--shots", "3", "--overwrite_output_dir"])
    assert json.loads((out / "metrics.json").read_text())["head"]["kind"] == "prototypes"
    _assert_marker_written_last(out)  # pipeline/ included
    fresh = tmp_path / "fresh"
    main([*common[:-1], str(fresh), "--head", "prototypes", "--shots", "3"])
    assert set(_files(out / "pipeline")) == set(_files(fresh / "pipeline")) != linear  # no earlier head's file left


def test_a_fit_head_rerun_failing_while_scoring_test_keeps_the_earlier_result_whole(digits, tmp_path, monkeypatch):
    """A second read: the rerun removed the earlier metrics.json and pipeline/ before scoring test, so a failure
    there lost the earlier complete result; the new pipeline is now saved aside and moved in once test is scored."""
    from diffusion_classifiers import evaluation

    model, out = _saved_rc_dit(tmp_path / "rc"), tmp_path / "head"
    common = ["fit-head", "--model_dir", model, "--dataset", digits, "--test_fraction", "0.3", "--output_dir", str(out)]
    main([*common, "--head", "linear_probe", "--C", "1"])
    before = _files(out)

    def out_of_memory(*args, **kwargs):  # test scored, nothing written yet
        raise MemoryError("out of memory (test)")

    monkeypatch.setattr(evaluation, "write_evaluation", out_of_memory)
    with pytest.raises(MemoryError):
        main([*common, "--head", "prototypes", "--shots", "3", "--overwrite_output_dir"])
    assert _files(out) == before and [path.name for path in out.iterdir() if path.name.startswith(".pipeline")] == []

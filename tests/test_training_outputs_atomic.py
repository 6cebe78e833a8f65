"""A training run's loss table and sample grids are written whole or not at all: a run killed while writing them
(or a disk that fills up) leaves the earlier, complete file, never a truncated one."""

import csv

import pytest
import torch
from PIL import Image

from diffusion_classifiers.training import monitoring
from diffusion_classifiers.training.monitoring import LossHistory, write_sample_grid


def test_a_failed_loss_table_write_leaves_the_earlier_table_whole(tmp_path, monkeypatch):
    history = LossHistory()
    for step, loss in enumerate([0.9, 0.5, 0.3], start=1):
        history.append(step, loss)
    history.save(str(tmp_path))
    before = (tmp_path / "loss_history.csv").read_text()
    history.append(4, 0.2)

    class FailingWriter:
        def __init__(self, handle):
            self.handle = handle

        def writerow(self, row):
            self.handle.write("step,loss\n")

        def writerows(self, rows):
            raise OSError("No space left on device")

    monkeypatch.setattr(monitoring.csv, "writer", FailingWriter)
    with pytest.raises(OSError, match="No space left"):
        history.save(str(tmp_path))
    assert (tmp_path / "loss_history.csv").read_text() == before
    assert list(csv.reader(before.splitlines()))[1:] == [["1", "0.9"], ["2", "0.5"], ["3", "0.3"]]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary file left


def test_a_failed_sample_grid_write_leaves_the_earlier_grid_whole(tmp_path, monkeypatch):
    grid = Image.new("L", (8, 8), 255)
    path = write_sample_grid(lambda model: grid, torch.nn.Linear(1, 1), None, str(tmp_path), step=5)
    before = open(path, "rb").read()

    def failing_save(self, handle, *args, **kwargs):
        handle.write(b"\x89PNG partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        write_sample_grid(lambda model: Image.new("L", (8, 8), 0), torch.nn.Linear(1, 1), None, str(tmp_path), 5)
    assert open(path, "rb").read() == before


def write_model(folder, version, extra=()):
    """A saved pipeline's layout: model_index.json (the marker), a component folder, a file beside."""
    import json
    import os

    os.makedirs(os.path.join(folder, "unet"), exist_ok=True)
    for name in ("unet/config.json", "data_splits.json", *extra):
        with open(os.path.join(folder, name), "w") as handle:
            handle.write(version)
    with open(os.path.join(folder, "model_index.json"), "w") as handle:
        json.dump({"version": version}, handle)


def model_files(folder):
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_trained_models_save_is_whole_a_failing_one_leaves_the_earlier_model(tmp_path):
    """QA: a kill during a training script's final save left the new unet/ beside the earlier model_index.json, or
    a 0-byte model_index.json; the save now goes through a hidden folder and the marker moves in last."""
    from diffusion_classifiers.training import save_model_whole

    run = tmp_path / "run"
    save_model_whole(str(run), lambda folder: write_model(folder, "old", extra=("unet/old_only.txt",)))
    earlier = model_files(run)

    def failing(folder):
        write_model(folder, "new")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_model_whole(str(run), failing)
    assert model_files(run) == earlier and [p.name for p in run.iterdir() if p.name.startswith(".saving")] == []
    save_model_whole(str(run), lambda folder: write_model(folder, "new"))
    assert model_files(run) == {"data_splits.json": "new", "model_index.json": '{"version": "new"}',
                                "unet/config.json": "new"}  # the earlier model's unet/old_only.txt is gone  # fmt: skip


def test_a_model_saved_over_another_leaves_none_of_its_components_or_code(tmp_path, caplog):
    """QA (training engineer): rc_dit_train.py --overwrite_output_dir over a U-Net's folder left its unet/ (1.1 MB)
    and its saved code beside the RC-DiT; whoever shared the folder shipped both."""
    import json
    import logging
    import os

    from diffusion_classifiers.training import save_model_whole

    def unet_model(folder):
        write_model(folder, "old")
        with open(f"{folder}/model_index.json", "w") as handle:
            json.dump({"_class_name": ["pipeline_unet_features", "UNetFeatureClassifierPipeline"],
                       "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}, handle)
        (tmp_path / "run" / "notes.py").write_text("print('mine')\n")  # the user's file: kept
        code = {"pipeline_unet_features.py": '"""... Written by `save_pretrained`."""\n',
                "diffusion_classifiers_models.py": "# Bundled copy of diffusion_classifiers.models (\n"}
        for name, text in code.items():
            with open(f"{folder}/{name}", "w") as handle:
                handle.write(text)

    def rc_dit_model(folder):
        for name in ("encoder", "transformer", "scheduler"):
            os.makedirs(f"{folder}/{name}")
            with open(f"{folder}/{name}/config.json", "w") as handle:
                handle.write("{}")
        with open(f"{folder}/model_index.json", "w") as handle:
            json.dump({"encoder": ["transformers", "ViTModel"], "transformer": ["x", "Y"]}, handle)
        with open(f"{folder}/data_splits.json", "w") as handle:
            handle.write("new")

    run = tmp_path / "run"
    save_model_whole(str(run), unet_model)
    with caplog.at_level(logging.WARNING):
        save_model_whole(str(run), rc_dit_model)
    left = sorted(p.name for p in run.iterdir())
    assert left == ["data_splits.json", "encoder", "model_index.json", "notes.py", "scheduler", "transformer"]
    assert "removed the earlier model's diffusion_classifiers_models.py, pipeline_unet_features.py, unet" in caplog.text


def test_a_save_stopped_while_moving_in_leaves_no_marker_beside_a_mix(tmp_path, monkeypatch):
    import os

    from diffusion_classifiers.training import output_dir, save_model_whole

    run = tmp_path / "run"
    save_model_whole(str(run), lambda folder: write_model(folder, "old"))
    moved, replace = [], os.replace

    def killed_after_one(source, target):
        if moved:
            raise KeyboardInterrupt  # the process stops between two entries
        moved.append(target)
        replace(source, target)

    monkeypatch.setattr(output_dir.os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        save_model_whole(str(run), lambda folder: write_model(folder, "new"))
    monkeypatch.setattr(output_dir.os, "replace", replace)
    assert not (run / "model_index.json").exists()  # no marker: loading says there is no model, not a mix of two
    save_model_whole(str(run), lambda folder: write_model(folder, "new"))
    assert json_of(run / "model_index.json") == {"version": "new"}


def test_the_hidden_folder_of_a_killed_save_is_removed_by_the_next(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from diffusion_classifiers.atomic_files import STALE_TEMPORARY_SECONDS

    from diffusion_classifiers.training import save_model_whole

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    killed = tmp_path / "run" / f".saving-{process.pid}"
    killed.mkdir(parents=True)
    (killed / "model_index.json").write_text("{}")
    old = time.time() - 2 * STALE_TEMPORARY_SECONDS
    os.utime(killed, (old, old))
    save_model_whole(str(tmp_path / "run"), lambda folder: write_model(folder, "new"))
    assert not killed.exists() and json_of(tmp_path / "run" / "model_index.json") == {"version": "new"}


def json_of(path):
    import json

    return json.loads(path.read_text())

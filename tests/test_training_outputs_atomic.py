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

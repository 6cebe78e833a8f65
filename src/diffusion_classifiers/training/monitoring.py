"""What a training run shows without a tracker: the loss curve and sample grids, written into `--output_dir`.

- `LossHistory`: the loss of every optimizer step, saved at each checkpoint and at the end as `loss_history.json`,
  `loss_history.csv` and `loss_curve.png`; a resumed run continues the history of the checkpoint it resumed from
  (each checkpoint holds its `loss_history.json` and `monitor_history.json`).
- `write_sample_grid`: calls a trainer's `SampleGridFunction` on the model (its EMA weights when there are some) and
  saves the grid as `samples/step_<N>.png`, leaving the weights, the train mode and every random state as they were.
- `MonitorHistory`: what a trainer's `MonitorFunction` measured on the model at each checkpoint (the same
  evaluation view as the grid), saved as `monitor_history.json`.
- `image_grid`: the PIL grid of a batch of images in [0, 1], small images enlarged so a person can see them.
"""

import csv
import json
import os
import random
import re
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from torch import nn

from ..atomic_files import write_atomically, write_json_atomically

__all__ = [
    "LOSS_CURVE_NAME",
    "LOSS_HISTORY_NAME",
    "SAMPLES_DIR",
    "LossHistory",
    "MONITOR_HISTORY_NAME",
    "MonitorFunction",
    "MonitorHistory",
    "SampleGridFunction",
    "evaluation_view",
    "global_random_states_kept",
    "image_grid",
    "remove_samples_after",
    "write_sample_grid",
]

LOSS_HISTORY_NAME = "loss_history.json"
LOSS_CURVE_NAME = "loss_curve.png"
MONITOR_HISTORY_NAME = "monitor_history.json"
SAMPLES_DIR = "samples"
SAMPLE_PATTERN = re.compile(r"^step_(\d+)\.png$")
MIN_TILE_SIDE = 64  # pixels: an 8 or 16 px image is enlarged (nearest neighbour) to at least this side

# sample_grid(model) -> a PIL image; called with the unwrapped model in eval mode, under torch.no_grad
SampleGridFunction = Callable[[nn.Module], PIL.Image.Image]
# monitor(model) -> {name: number}; called like a SampleGridFunction
MonitorFunction = Callable[[nn.Module], Dict[str, float]]


def _saved_for_resume(output_dir: str, name: str, up_to_step: int, checkpoint: Optional[str]):
    """The JSON a run saved as `name` in the `checkpoint` folder it resumes from (`up_to_step` > 0), or in
    `output_dir` for a checkpoint written before checkpoints held it; None for a fresh run or when there is none."""
    paths = [os.path.join(folder, name) for folder in (checkpoint, output_dir) if folder is not None]
    path = next((path for path in paths if os.path.isfile(path)), None)
    if up_to_step == 0 or path is None:
        return None
    with open(path) as f:
        return json.load(f)


class LossHistory:
    """The training loss at each optimizer step (the mean over the step's accumulated batches on every process), and
    the files that show it."""

    def __init__(self, steps: Optional[List[int]] = None, losses: Optional[List[float]] = None):
        self.steps, self.losses = list(steps or []), list(losses or [])

    @classmethod
    def resume(cls, output_dir: str, up_to_step: int, checkpoint: Optional[str] = None) -> "LossHistory":
        """The history saved in the `checkpoint` folder resumed from (else in `output_dir`) up to `up_to_step`, the
        step resumed from; empty for a fresh run."""
        saved = _saved_for_resume(output_dir, LOSS_HISTORY_NAME, up_to_step, checkpoint)
        if saved is None:
            return cls()
        kept = [(s, v) for s, v in zip(saved["steps"], saved["losses"]) if s <= up_to_step]
        return cls([s for s, _ in kept], [v for _, v in kept])

    def append(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def to_json(self) -> dict:
        """What `loss_history.json` holds (a checkpoint holds it too)."""
        return {"steps": self.steps, "losses": self.losses}

    def save(self, output_dir: str) -> None:
        """`loss_history.json`, `loss_history.csv` and `loss_curve.png`, each written whole, then renamed."""
        with global_random_states_kept():  # importing scikit-learn (by `plots`) draws from Python's global RNG
            from ..plots import plot_loss_curve

        write_json_atomically(os.path.join(output_dir, LOSS_HISTORY_NAME), self.to_json())
        def write_csv(handle) -> None:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss"])
            writer.writerows(zip(self.steps, self.losses))

        write_atomically(os.path.join(output_dir, "loss_history.csv"), write_csv)
        if self.steps:
            plot_loss_curve(self.steps, self.losses, os.path.join(output_dir, LOSS_CURVE_NAME))


def image_grid(
    images: torch.Tensor, rows: Optional[int] = None, column_titles: Optional[Sequence[str]] = None
) -> PIL.Image.Image:
    """A `rows`-row grid of images `[N, C, H, W]` in [0, 1] (C = 1 or 3; N a multiple of `rows`), each tile enlarged
    by an integer factor to at least `MIN_TILE_SIDE` pixels. `rows` defaults to the largest divisor of N that is at
    most sqrt(N) (8 images: 2 rows of 4). `column_titles` (one per column: class names) are written in a white band
    above the grid, each cut to its column's width."""
    if rows is None:
        rows = max(r for r in range(1, int(len(images) ** 0.5) + 1) if len(images) % r == 0)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) % rows:
        raise ValueError(f"expected images [N, 1 or 3, H, W] with N a multiple of rows={rows}, got {tuple(images.shape)}")
    if column_titles is not None and len(column_titles) != len(images) // rows:
        raise ValueError(f"column_titles: expected one per column ({len(images) // rows}), got {len(column_titles)}")
    scale = max(1, -(-MIN_TILE_SIDE // min(images.shape[-2:])))
    array = (images.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    tiles = [PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
    tiles = [tile.resize((tile.width * scale, tile.height * scale), PIL.Image.NEAREST) for tile in tiles]
    grid = make_image_grid(tiles, rows=rows, cols=len(tiles) // rows)
    if column_titles is None:
        return grid
    return _with_column_titles(grid, [str(title) for title in column_titles], tiles[0].width)


def _with_column_titles(grid: PIL.Image.Image, titles: List[str], tile_width: int) -> PIL.Image.Image:
    """`grid` below a white band with `titles` centred over its columns of `tile_width` pixels, a title too wide for
    its column cut short with ".."."""
    try:
        font = PIL.ImageFont.load_default(size=max(11, min(24, tile_width // 5)))
    except TypeError:  # Pillow < 10.1 takes no size: its bitmap font
        font = PIL.ImageFont.load_default()
    band = round(font.size * 1.6) if hasattr(font, "size") else 16  # the bitmap font (no FreeType) is 11 px high
    titled = PIL.Image.new(grid.mode, (grid.width, grid.height + band), "white")
    titled.paste(grid, (0, band))
    draw = PIL.ImageDraw.Draw(titled)
    for column, title in enumerate(titles):
        text = title
        while len(text) > 1 and draw.textlength(text, font=font) > tile_width - 4:
            text = text[:-1]
        text = text if text == title else text[:-2].rstrip() + ".."
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = column * tile_width + (tile_width - (right - left)) / 2 - left
        draw.text((x, (band - (bottom - top)) / 2 - top), text, fill="black", font=font)
    return titled


def remove_samples_after(output_dir: str, step: int) -> None:
    """Delete `samples/step_N.png` with N > `step`: left by an earlier run in this folder, not by this one."""
    folder = os.path.join(output_dir, SAMPLES_DIR)
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        match = SAMPLE_PATTERN.match(name)
        if match and int(match.group(1)) > step:
            os.remove(os.path.join(folder, name))


@contextmanager
def evaluation_view(model: nn.Module, ema: Optional[EMAModel]) -> Iterator[nn.Module]:
    """The model in eval mode under `torch.no_grad`, with the EMA weights swapped in when `ema` is given; on exit the
    weights, the train/eval mode and the global random states (Python's, numpy's, torch's) are restored, so training
    continues exactly as without the look."""
    was_training = model.training
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    try:
        with global_random_states_kept():
            model.eval()
            with torch.no_grad():
                yield model
    finally:
        if ema is not None:
            ema.restore(model.parameters())
        model.train(was_training)


@contextmanager
def global_random_states_kept() -> Iterator[None]:
    """Python's, numpy's and torch's global random states (those accelerate saves in a checkpoint, which a loss or a
    dataset may draw from) as they were on entry, whatever the block drew; also a decorator,
    `@global_random_states_kept()` (the trainers: QA, a notebook's own draws after a training cell came from the
    state `args.seed` left). CUDA's are kept where CUDA was in use on entry."""
    python_state, numpy_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    # CUDA's only where it is in use already: reading them would set CUDA up on every device of every process
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def write_sample_grid(
    sample_grid: SampleGridFunction, model: nn.Module, ema: Optional[EMAModel], output_dir: str, step: int
) -> str:
    """Save `sample_grid(model)` as `samples/step_<step>.png`, in the `evaluation_view` of the model (EMA weights
    when `ema` is given, nothing changed afterwards). Returns the file's path."""
    with evaluation_view(model, ema):
        grid = sample_grid(model)
    os.makedirs(os.path.join(output_dir, SAMPLES_DIR), exist_ok=True)
    path = os.path.join(output_dir, SAMPLES_DIR, f"step_{step}.png")
    write_atomically(path, lambda handle: grid.save(handle, format="PNG"), mode="wb")
    return path


class MonitorHistory:
    """`{"step": N, **monitor(model)}` at each checkpoint, in `monitor_history.json`; a resumed run keeps the
    records up to the step it resumed from."""

    def __init__(self, records: Optional[List[dict]] = None):
        self.records = list(records or [])

    @classmethod
    def resume(cls, output_dir: str, up_to_step: int, checkpoint: Optional[str] = None) -> "MonitorHistory":
        saved = _saved_for_resume(output_dir, MONITOR_HISTORY_NAME, up_to_step, checkpoint)
        return cls([record for record in saved or [] if record["step"] <= up_to_step])

    def measure(self, monitor: MonitorFunction, model: nn.Module, ema: Optional[EMAModel], step: int) -> dict:
        """`monitor(model)` in the `evaluation_view`, recorded for `step`; returns what it measured."""
        with evaluation_view(model, ema):
            values = {name: float(value) for name, value in monitor(model).items()}
        self.records.append({"step": step, **values})
        return values

    def save(self, output_dir: str) -> None:
        write_json_atomically(os.path.join(output_dir, MONITOR_HISTORY_NAME), self.records)

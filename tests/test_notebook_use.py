"""The library in a long-lived notebook session (QA persona: a data scientist in Jupyter): what a cell shows, and
the session's own settings left as they were (the plotting backend and the random generators: test_plots.py and
test_training.py)."""

import subprocess
import sys

import torch

from diffusion_classifiers.data import LabeledImages


def test_a_split_shows_its_size_and_classes_not_its_pixels():
    split = LabeledImages(torch.zeros(300, 1, 28, 28), torch.arange(300) % 3, ["normal", "bleed", "other"])
    shown = repr(split)
    assert shown == "LabeledImages(300 images [1, 28, 28], 3 classes {'normal': 100, 'bleed': 100, 'other': 100})"


def test_tqdm_disable_hides_a_pipelines_bars_unless_the_pipeline_asks_for_them():
    """QA: the pipeline passed `disable=False` down, which overrode `TQDM_DISABLE=1` (features, probes, likelihood)."""
    script = (
        "from diffusers import DDPMScheduler, UNet2DModel; "
        "from diffusion_classifiers import UNetFeatureClassifierPipeline; "
        "from diffusion_classifiers.models import unet_config; "
        "pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config('tiny', 8)), scheduler=DDPMScheduler()); "
        "print(pipe.progress_bar_config); pipe.set_progress_bar_config(disable=False); print(pipe.progress_bar_config)"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert shown.split("\n")[:2] == ["{}", "{'disable': False}"]

"""The library in a long-lived notebook session (QA persona: a data scientist in Jupyter): what a cell shows, and
the session's own settings left as they were (the plotting backend and the random generators: test_plots.py and
test_training.py)."""

import torch

from diffusion_classifiers.data import LabeledImages


def test_a_split_shows_its_size_and_classes_not_its_pixels():
    split = LabeledImages(torch.zeros(300, 1, 28, 28), torch.arange(300) % 3, ["normal", "bleed", "other"])
    shown = repr(split)
    assert shown == "LabeledImages(300 images [1, 28, 28], 3 classes {'normal': 100, 'bleed': 100, 'other': 100})"


def test_tqdm_disable_hides_a_pipelines_bars_unless_the_pipeline_asks_for_them():
    """QA: the pipeline passed `disable=False` down, which overrode `TQDM_DISABLE=1` (features, probes, likelihood).
    Its bars' arguments leave `disable` to tqdm (which reads TQDM_DISABLE) unless the pipeline sets it; they depend on
    no tqdm setting of this process, so they are read here (a fresh interpreter printed the same)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.models import unet_config

    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 8)), scheduler=DDPMScheduler())
    assert pipe.progress_bar_config == {}
    pipe.set_progress_bar_config(disable=False)
    assert pipe.progress_bar_config == {"disable": False}


def test_the_studys_feature_bars_leave_tqdm_disable_in_force(monkeypatch):
    """QA (session 58): `extract_study_features(show_progress=True)` passed `disable=False` to each split's bar, which
    overrode `TQDM_DISABLE=1` (a log full of bars in a job that asked for none); hidden, it still passes True."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import features, unet_feature_study
    from diffusion_classifiers.models import unet_config

    asked = []
    monkeypatch.setattr(features.DiffusionFeatureExtractor, "extract", lambda self, *a, **kw: asked.append(kw) or {})
    split = LabeledImages(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), ["a", "b"])
    unet = UNet2DModel(**unet_config("tiny", 8))
    for shown in (True, False):
        unet_feature_study.extract_study_features(unet, DDPMScheduler(), dict.fromkeys(("train", "val", "test"), split),
                                                  timesteps=[10], show_progress=shown)  # fmt: skip
    assert [bar["progress_bar"].get("disable") for bar in asked] == [None] * 3 + [True] * 3
    assert all(bar["progress_bar"]["desc"].startswith("U-Net features") for bar in asked)

"""Every place a person waits shows a tqdm bar; one `set_progress_bar_config` (or `progress_bar=`) governs it.

tests/conftest.py sets `TQDM_DISABLE=1` for the rest of the suite, so each bar here is asked for with
`disable=False` and written to a `StringIO` (`file=`).
"""

import io

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.std import TqdmKeyError

from diffusion_classifiers import ScoreSDEClassifierPipeline, UNetFeatureClassifierPipeline
from diffusion_classifiers.features import DiffusionFeatureExtractor
from diffusion_classifiers.likelihood import denoising_error_scores, probability_flow_log_likelihood
from diffusion_classifiers.models import LinearProbeHead, unet_config
from diffusion_classifiers.probing import evaluate_protocols, fit_probe_grid

from .test_rc_dit import SIZE, tiny_pipeline, variation_of


def eps_fn(x, t, labels):
    return 0.1 * x + 0.01 * labels.view(-1, *[1] * (x.ndim - 1))


def score_sde_pipeline():
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    return ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=["a", "b"])


def unet_feature_pipeline():
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8))
    head = LinearProbeHead(unet.config.block_out_channels[-1], 2, block="mid_block", timestep=10)
    return UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)


def rc_dit_with_prototypes():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.fit_prototypes(torch.rand(4, 1, SIZE, SIZE) * 2 - 1, [0, 1, 0, 1])
    return pipe


def features(num_images, dim=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {("mid_block", 10): torch.randn(num_images, dim, generator=generator)}


IMAGES_8 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
IMAGES_16 = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
LABELS = np.array([0, 1] * 6)

# Library functions: `progress_bar` is a dict of tqdm arguments. Each entry: (expected bar title, call).
LIBRARY = {
    "likelihood": ("Probability-flow ODE", lambda bar: probability_flow_log_likelihood(
        eps_fn, IMAGES_8, 2, num_steps=2, progress_bar=bar)),
    "elbo": ("Denoising-error scores", lambda bar: denoising_error_scores(
        eps_fn, IMAGES_8, 2, num_timesteps=3, progress_bar=bar)),
    "unet_features": ("U-Net features", lambda bar: DiffusionFeatureExtractor(
        UNet2DModel(**unet_config("tiny", 8)), DDPMScheduler()).extract(IMAGES_8, ["mid_block"], [10], progress_bar=bar)),
    "dit_features": ("DiT features", lambda bar: tiny_pipeline().dit_feature_extractor.extract(
        IMAGES_16, block_indices=[0], progress_bar=bar)),
    "probe_grid": ("Fitting probes", lambda bar: fit_probe_grid(
        features(12), LABELS, features(12, seed=1), LABELS, device="cpu", progress_bar=bar)),
    "protocols": ("Evaluation protocols", lambda bar: evaluate_protocols(
        features(12)[("mid_block", 10)], LABELS, features(12, seed=1)[("mid_block", 10)], LABELS, shots=(1, None),
        num_episodes=2, progress_bar=bar)),
}  # fmt: skip

# Pipelines: one `set_progress_bar_config` governs every bar of the call. Each entry: (title, pipeline, call).
PIPELINES = {
    "score_sde_elbo": ("Denoising-error scores", score_sde_pipeline, lambda pipe: pipe(IMAGES_8, num_timesteps=2)),
    "score_sde_likelihood": ("Probability-flow ODE", score_sde_pipeline,
                             lambda pipe: pipe(IMAGES_8, method="likelihood", num_steps=1)),
    "unet_features_call": ("U-Net features", unet_feature_pipeline, lambda pipe: pipe(IMAGES_8)),
    "unet_extract_features": ("U-Net features", unet_feature_pipeline,
                              lambda pipe: pipe.extract_features(IMAGES_8, ["mid_block"], [10])),
    "rc_dit_call": ("it/s", rc_dit_with_prototypes, lambda pipe: pipe(IMAGES_16)),
    "rc_dit_encode": ("it/s", tiny_pipeline, lambda pipe: pipe.encode(IMAGES_16)),
    "rc_dit_dit_features": ("DiT features", tiny_pipeline, lambda pipe: pipe.dit_features(IMAGES_16, block_indices=[0])),
    "image_variation": ("it/s", lambda: variation_of(tiny_pipeline()),
                        lambda pipe: pipe(IMAGES_16[:1], num_inference_steps=2)),
}  # fmt: skip


def shown(**config) -> dict:
    return {"file": io.StringIO(), "disable": False, "mininterval": 0, **config}


@pytest.mark.parametrize("name", LIBRARY)
def test_library_functions_show_a_bar_that_disable_hides(name):
    title, call = LIBRARY[name]
    bar = shown()
    call(bar)
    assert title in bar["file"].getvalue() and "100%" in bar["file"].getvalue()
    hidden = shown(disable=True)
    call(hidden)
    assert hidden["file"].getvalue() == ""


@pytest.mark.parametrize("name", PIPELINES)
def test_pipelines_show_a_bar_that_set_progress_bar_config_hides(name):
    title, make_pipeline, call = PIPELINES[name]
    pipe, bar = make_pipeline(), shown()
    pipe.set_progress_bar_config(**bar)
    call(pipe)
    assert title in bar["file"].getvalue() and "100%" in bar["file"].getvalue()
    hidden = shown(disable=True)
    pipe.set_progress_bar_config(**hidden)
    call(pipe)
    assert hidden["file"].getvalue() == ""


def test_the_exact_likelihood_bar_counts_images_per_second_and_shows_the_nfe():
    bar = shown()
    probability_flow_log_likelihood(eps_fn, IMAGES_8, 2, num_steps=2, batch_size=2, progress_bar=bar)
    last = bar["file"].getvalue().split("\r")[-1]
    assert "3.00/3.00" in last and "image/s" in last
    assert "nfe_per_image=16" in last  # 2 RK4 steps x 4 evaluations x 2 classes


def test_the_elbo_bar_ends_at_the_evaluations_made_after_an_early_stop():
    bar = shown()
    result = denoising_error_scores(
        eps_fn, IMAGES_8, 2, num_timesteps=40, early_stop_confidence=0.6, timesteps_per_check=5, progress_bar=bar
    )
    done = int(result.nfe_per_image.sum())
    assert done < 3 * 2 * 40  # the early stop saved evaluations
    assert f"{done}/{done}" in bar["file"].getvalue().split("\r")[-1]


def test_unknown_progress_bar_arguments_raise_tqdm_key_error():
    # a disabled tqdm checks no argument: shown, as with TQDM_DISABLE unset (pytest-xdist's workers inherit conftest's)
    unknown = {"not_a_tqdm_argument": 1, "disable": False, "file": io.StringIO()}
    with pytest.raises(TqdmKeyError, match="not_a_tqdm_argument"):
        probability_flow_log_likelihood(eps_fn, IMAGES_8, 2, num_steps=1, progress_bar=unknown)
    pipe = score_sde_pipeline()
    pipe.set_progress_bar_config(**unknown)
    with pytest.raises(TqdmKeyError, match="not_a_tqdm_argument"):
        pipe(IMAGES_8, num_timesteps=2)

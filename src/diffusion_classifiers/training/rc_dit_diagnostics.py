"""Is the RC-DiT's representation alive? Diagnostics of r during and after joint training.

Joint training can collapse r: the encoder learns to output one constant vector and the denoiser stops reading it
(the loss barely notices, since at most noise levels r can explain little of the noise). Two measures show it:

- the spread of r: the standard deviation of each dimension of the encoder's raw output across images, averaged
  over dimensions, also relative to the size of r (a collapsed r has a relative spread near 0);
- the own-vs-shuffled gap: the denoising error with each image's own r, with another image's r (the batch
  shuffled) and with the null representation, on the same noisy images; a denoiser that uses r does better with
  the image's own.

`rc_dit_monitor` computes them at every checkpoint of `train_rc_dit` (`training.train(monitor=...)`, written to
`monitor_history.json` and logged to trackers) and warns when r collapses. `recompute_representation_statistics`
gives a `representation_norm="batch"` transformer running statistics of the final (EMA) encoder's r.
"""

import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from ..models.encoders import encode_representation
from ..models.rc_dit import RepresentationConditionedDiTModel
from ..models.vae_latents import encode_latents
from .patch_masks import hide_patches, random_patch_mask
from .sampling import evenly_spaced_positions
from .unet import TrainingImages, images_at

__all__ = [
    "COLLAPSED_RELATIVE_SPREAD",
    "diagnostic_timestep",
    "rc_dit_monitor",
    "recompute_representation_statistics",
    "representation_diagnostics",
    "representation_spread",
]

logger = logging.getLogger(__name__)

# relative spread below which r counts as collapsed: at initialisation it is about 0.1-1 (a ViT's CLS or pooler
# output), collapsed runs fell to 0.001-0.01 (issue 13's measurements)
COLLAPSED_RELATIVE_SPREAD = 0.01
# a low noise level, where the noise error still depends on r (issue 13: 0.230 with the own r, 0.277 shuffled), of a
# 1,000-step schedule; other schedules take the same fraction of theirs (`diagnostic_timestep`)
DIAGNOSTIC_TIMESTEP = 100
DIAGNOSTIC_SCHEDULE_STEPS = 1000


def diagnostic_timestep(scheduler: DDPMScheduler) -> int:
    """`DIAGNOSTIC_TIMESTEP` of a 1,000-step schedule, the same fraction of `scheduler`'s (QA: t = 100 crashed every
    checkpoint of a run with `--num_train_timesteps 100`, resumed or not): at least 1 (0 of a 1-step schedule), at
    most its last timestep."""
    num_timesteps = scheduler.config.num_train_timesteps
    return min(max(1, round(DIAGNOSTIC_TIMESTEP * num_timesteps / DIAGNOSTIC_SCHEDULE_STEPS)), num_timesteps - 1)


def representation_spread(r: torch.Tensor) -> tuple:
    """The spread of `r` `[N, D]` across images (the standard deviation of each dimension, averaged over dimensions)
    and that spread relative to the size of r (its root mean square): near 0 for a collapsed r."""
    spread = r.float().std(dim=0).mean()
    return spread, spread / r.float().pow(2).mean().sqrt().clamp_min(1e-12)


def _batch_standardized(raw: torch.Tensor, transformer: RepresentationConditionedDiTModel) -> torch.Tensor:
    """r as the denoiser sees it in training, with this batch's statistics and no side effect on running ones."""
    if transformer.config.representation_norm == "batch":
        return F.batch_norm(raw, None, None, training=True, eps=transformer.representation_normalizer.eps)
    return raw


@torch.no_grad()
def representation_diagnostics(
    encoder: nn.Module,
    transformer: RepresentationConditionedDiTModel,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    timestep: Optional[int] = None,
    seed: int = 0,
    vae=None,
    mask_ratio: float = 0.0,
    masked_target: str = "pixels",
) -> dict:
    """The spread of r and the denoising error with own, shuffled and null r on `images` `[N, C, H, W]` in [-1, 1]
    (N >= 2), noised to `timestep` (default `diagnostic_timestep(scheduler)`: t = 100 of 1,000) with noise drawn from
    `seed`. Runs as the models are (call in eval mode).

    A DiT trained to redraw hidden patches (`RCDiTLoss(denoiser_mask_ratio=...)`, `train_rc_dit`'s default) is
    scored on the task it learned: `mask_ratio` of each image's patches hidden (drawn from `seed` too) and the loss's
    target there (`masked_target`). Scored on whole images instead, such a DiT reads r on inputs it never saw, and
    the gap came out negative (own r worse than a shuffled one) for a DiT that used r."""
    if images.shape[0] < 2:
        raise ValueError(f"expected at least 2 images to compare own and shuffled r, got {images.shape[0]}")
    num_timesteps = scheduler.config.num_train_timesteps
    timestep = diagnostic_timestep(scheduler) if timestep is None else timestep
    if not 0 <= timestep < num_timesteps:
        raise ValueError(f"timestep: expected 0 <= t < {num_timesteps} (the scheduler's timesteps), got {timestep}")
    device, config = transformer.device, transformer.config
    images = images.to(device)
    raw = encode_representation(encoder, images, config.representation_readout, config.encoder_preprocessing).float()
    spread, relative_spread = representation_spread(raw)
    clean = images if vae is None else encode_latents(vae.to(device), images)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator).to(device, clean.dtype)
    timesteps = torch.full((clean.shape[0],), timestep, device=device, dtype=torch.long)
    noisy, target = scheduler.add_noise(clean, noise, timesteps), noise
    if mask_ratio > 0:
        hidden = random_patch_mask(clean.shape, config.patch_size, mask_ratio, device, generator)
        noisy, target = hide_patches(noisy, noise, clean, hidden, masked_target, config.patch_size)
    own = _batch_standardized(raw, transformer)

    def error(representation: Optional[torch.Tensor]) -> float:
        prediction = transformer(noisy, timesteps, representation).sample.float()
        return F.mse_loss(prediction, target.float()).item()

    errors = {"own": error(own), "shuffled": error(own.roll(1, dims=0)), "null": error(None)}
    return {
        "representation_spread": spread.item(),
        "representation_relative_spread": relative_spread.item(),
        "denoising_error_own": errors["own"],
        "denoising_error_shuffled": errors["shuffled"],
        "denoising_error_null": errors["null"],
        "own_vs_shuffled_gap": errors["shuffled"] - errors["own"],
        "diagnostic_timestep": timestep,
        "diagnostic_mask_ratio": mask_ratio,
    }


def rc_dit_monitor(
    images: TrainingImages, scheduler: DDPMScheduler, vae=None, num_images: int = 256, seed: int = 0,
    mask_ratio: float = 0.0, masked_target: str = "pixels",
) -> Callable[[nn.Module], dict]:
    """`joint model -> diagnostics` for `training.train(monitor=...)`: `representation_diagnostics` on the first
    `num_images` training images (the same images, noise and hidden patches at every checkpoint), logged (INFO);
    logs a warning when r has collapsed (relative spread under `COLLAPSED_RELATIVE_SPREAD`)."""
    fixed = images_at(images, range(min(num_images, len(images)))).float()

    def monitor(model: nn.Module) -> dict:
        diagnostics = representation_diagnostics(
            model.encoder, model.transformer, scheduler, fixed, seed=seed, vae=vae, mask_ratio=mask_ratio,
            masked_target=masked_target,
        )  # fmt: skip
        logger.info(
            "r: relative spread %.3g; denoising error at t = %d with the own r %.4f, a shuffled r %.4f, the null r %.4f",
            diagnostics["representation_relative_spread"], diagnostics["diagnostic_timestep"],
            diagnostics["denoising_error_own"], diagnostics["denoising_error_shuffled"], diagnostics["denoising_error_null"],
        )  # fmt: skip
        if diagnostics["representation_relative_spread"] < COLLAPSED_RELATIVE_SPREAD:
            logger.warning(
                "the representation r has collapsed: its relative spread across images is %.2g (< %g) and the "
                "denoiser's error with another image's r differs from its own by %.3g; train with "
                "representation_norm='batch' and representation_readout='mean_patch' (train_rc_dit's defaults)",
                diagnostics["representation_relative_spread"], COLLAPSED_RELATIVE_SPREAD,
                diagnostics["own_vs_shuffled_gap"],
            )  # fmt: skip
        return diagnostics

    return monitor


@torch.no_grad()
def recompute_representation_statistics(
    encoder: nn.Module,
    transformer: RepresentationConditionedDiTModel,
    images: TrainingImages,
    batch_size: int = 256,
    max_images: int = 10_000,
    device: Optional[torch.device] = None,
) -> None:
    """Reset the running mean and variance of a `representation_norm="batch"` transformer to the exact statistics
    of the encoder's r over `images` (`[N, C, H, W]` in [-1, 1] or a dataset of `(image, ...)`), or over
    `max_images` of them spread evenly over the whole set (QA: the first 10,000 of a class-sorted NDSB train split
    held 42 of its 121 classes, and the statistics were 0.3 standard deviations off). Training leaves running
    statistics of the live weights, averaged over the last steps; the returned EMA weights give another r, so they
    are recomputed with the weights as they are now. No-op without batch normalisation. Both models end in eval
    mode."""
    norm = transformer.representation_normalizer
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return
    encoder.eval()
    transformer.eval()
    norm.reset_running_stats()
    device, config = device or transformer.device, transformer.config
    count = min(len(images), max_images)
    if count < 2:
        return  # the variance of one image is undefined
    chosen = evenly_spaced_positions(len(images), count)  # every image where they fit
    # every image weighs the same, batch means and spreads combined exactly in float64 (QA: BatchNorm's cumulative
    # average weighed a last batch of 2 images as the 256 before it and missed the spread between batches)
    seen, mean, squares = 0, 0.0, 0.0
    with torch.no_grad():
        for start in range(0, count, batch_size):
            chunk = images_at(images, chosen[start : start + batch_size]).float().to(device)
            raw = encode_representation(encoder, chunk, config.representation_readout, config.encoder_preprocessing)
            raw = raw.to(transformer.dtype).cpu().double()  # as the normaliser reads it; float64 on any device
            batch_mean = raw.mean(0)
            shift, total = batch_mean - mean, seen + len(raw)
            squares = squares + ((raw - batch_mean) ** 2).sum(0) + shift**2 * seen * len(raw) / total
            mean, seen = mean + shift * len(raw) / total, total
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(squares / (seen - 1))  # unbiased, as BatchNorm keeps it

"""The DDPM denoising objective every diffusion trainer minimises, and the images it trains on.

`DenoisingLoss` is the epsilon-prediction loss for `training.train`; the U-Net trainers use it as it is, the RC-DiT
trainer subclasses it (latents as x0, the clean image's representation as the condition).
"""

from typing import Optional

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from torch import nn

from ..validation import check_finite_rows, check_unit_range

__all__ = ["LOSS_WEIGHTINGS", "DenoisingLoss", "check_training_images"]

# how each image's squared noise error is weighted by the signal-to-noise ratio SNR(t) of its timestep
LOSS_WEIGHTINGS = ("epsilon", "min_snr", "truncated_snr")


def check_training_images(images: torch.Tensor, name: str = "training data") -> None:
    """Square images `[N, C, H, H]` in [-1, 1] without NaN or inf, what every denoising trainer takes; the error
    names the first bad image. Runs before training writes anything."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images [N, C, H, H] as {name}, got shape {tuple(images.shape)}")
    check_finite_rows(images, name, item="image")
    check_unit_range(images, name)


class DenoisingLoss:
    r"""
    DDPM epsilon-prediction loss: noise a batch's clean sample x0 to a uniformly drawn timestep t, predict the noise,
    return the mean squared error, each image's weighted by `loss_weighting`.

    Batches are `(images,)` or `(images, labels)`. With `conditional=True` the labels go to the model as
    `class_labels`; `label_dropout > 0` replaces that fraction of labels by `null_class` so the same model also
    learns the unconditional score.

    Args:
        scheduler (`DDPMScheduler`): the noise schedule; its `prediction_type` must be "epsilon".
        conditional (`bool`, *optional*, defaults to `False`): pass the batch's labels as `class_labels`.
        label_dropout (`float`, *optional*, defaults to 0.0): fraction of labels replaced by `null_class`.
        null_class (`int`, *optional*): the class id that stands for "no label"; needed when `label_dropout > 0`.
        loss_weighting (`str`, *optional*, defaults to `"epsilon"`): the weight of an image's noise error, a function
            of the SNR of its timestep (diffusers' `compute_snr`): `"epsilon"` 1 (DDPM's simple loss);
            `"min_snr"` min(SNR, `snr_gamma`) / SNR (Min-SNR-gamma, Hang et al. 2023), less weight on low noise;
            `"truncated_snr"` max(1, 1 / SNR) (Salimans & Ho 2022): the noise error where SNR > 1, the error of the
            implied x0 where SNR < 1. Under the plain noise loss a high-noise image weighs SNR x its x0 error,
            about 0, so a condition that tells what the image shows barely lowers it; with `"truncated_snr"` it does.
            These weights are those of noise errors: an error against another target (a subclass's hidden patches,
            scored against the clean image) weighs 1, as under `"epsilon"`.
        snr_gamma (`float`, *optional*, defaults to 5.0): the gamma of `"min_snr"`.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler,
        conditional: bool = False,
        label_dropout: float = 0.0,
        null_class: Optional[int] = None,
        loss_weighting: str = "epsilon",
        snr_gamma: float = 5.0,
    ):
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"expected an epsilon-prediction scheduler, got {scheduler.config.prediction_type!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"expected label_dropout in [0, 1), got {label_dropout}")
        if label_dropout > 0 and (not conditional or null_class is None):
            raise ValueError("label_dropout > 0 needs conditional=True and a `null_class` id")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"expected loss_weighting in {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        if snr_gamma <= 0:
            raise ValueError(f"expected a positive snr_gamma, got {snr_gamma}")
        self.loss_weighting = loss_weighting
        self.snr_gamma = snr_gamma
        self.scheduler = scheduler
        self.conditional = conditional
        self.label_dropout = label_dropout
        self.null_class = null_class

    def __call__(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        images = self.clean_sample(batch)  # x0: (N, C, H, W)
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (images.shape[0],), device=images.device)
        noisy = self.scheduler.add_noise(images, noise, timesteps)
        noisy, target, target_is_noise = self.denoiser_input_and_target(noisy, noise, images)
        prediction = self.predict_noise(model, noisy, timesteps, batch)
        if self.loss_weighting == "epsilon":
            return nn.functional.mse_loss(prediction.float(), target.float())
        squared_errors = (prediction.float() - target.float()).pow(2)
        return (squared_errors * self.error_weights(timesteps, target_is_noise)).mean()

    def denoiser_input_and_target(self, noisy: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor) -> tuple:
        """What the model reads, what its output is compared with, and where that target is the noise (a boolean
        mask broadcastable to the images; None: everywhere): x_t and the noise here; subclasses may hide part of x_t
        and ask for something else there."""
        return noisy, noise, None

    def error_weights(self, timesteps: torch.Tensor, target_is_noise: Optional[torch.Tensor]) -> torch.Tensor:
        """The weight of each squared error, broadcastable to the images: `snr_weights` where the target is the
        noise, 1 elsewhere (with truncated-SNR a noise weight reaches ~25,000 at t = 999 of 1,000 linear betas)."""
        weights = self.snr_weights(timesteps).view(-1, 1, 1, 1)
        return weights if target_is_noise is None else torch.where(target_is_noise, weights, torch.ones_like(weights))

    def snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The weight of each image's noise error under `loss_weighting` ("min_snr" or "truncated_snr"), [N]."""
        snr = compute_snr(self.scheduler, timesteps)
        if self.loss_weighting == "min_snr":
            return snr.clamp(max=self.snr_gamma) / snr
        return (1 / snr).clamp(min=1.0)

    def clean_sample(self, batch: tuple) -> torch.Tensor:
        """x0, the sample the noise is added to: the batch's images here; latents for a latent-space model."""
        return batch[0]

    def predict_noise(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, batch: tuple) -> torch.Tensor:
        """The model's epsilon prediction; subclasses change what conditions it (class labels here)."""
        class_labels = batch[1] if self.conditional else None
        if class_labels is not None and self.label_dropout > 0:
            drop = torch.rand(class_labels.shape, device=noisy.device) < self.label_dropout
            class_labels = torch.where(drop, torch.full_like(class_labels, self.null_class), class_labels)
        return model(noisy, timesteps, class_labels=class_labels).sample

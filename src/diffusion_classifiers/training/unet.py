"""Train the unconditional DDPM U-Net of the U-Net-features method (and the U-Net builder the Score-SDE trainer
shares): a diffusers `UNet2DModel` of a named preset, epsilon prediction, `DDPMScheduler` linear betas."""

from typing import Optional

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils.data import Sampler, TensorDataset

from ..models.unet_presets import unet_config
from .arguments import TrainingArguments
from .denoising import DenoisingLoss, check_training_images
from .loop import TrainingSummary, train

__all__ = ["train_ddpm_unet"]


def _train_unet(
    args: TrainingArguments,
    dataset: TensorDataset,
    preset: str,
    num_train_timesteps: int,
    num_class_embeds: Optional[int] = None,
    label_dropout: float = 0.0,
    null_class: Optional[int] = None,
    sampler: Optional[Sampler] = None,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    """Build a `UNet2DModel` of `preset` for the dataset's images (class-conditional when `num_class_embeds` is
    set), seeded with `args.seed`, and train it with `DenoisingLoss` through `training.train`."""
    images = dataset.tensors[0]  # (N, C, H, H)
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same model
    unet = UNet2DModel(**unet_config(preset, images.shape[-1], images.shape[1], num_class_embeds))
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    conditional = num_class_embeds is not None
    loss = DenoisingLoss(scheduler, conditional=conditional, label_dropout=label_dropout, null_class=null_class)
    unet, _, summary = train(args, unet, dataset, loss, sampler=sampler)
    return unet, scheduler, summary


def train_ddpm_unet(
    args: TrainingArguments,
    images: torch.Tensor,
    preset: str = "small",
    num_train_timesteps: int = 1000,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    r"""
    Train an unconditional `UNet2DModel` (epsilon prediction, `DDPMScheduler` linear betas) on unlabeled images.

    Args:
        args (`TrainingArguments`): the loop's flags; `args.seed` also seeds the initial weights.
        images (`torch.Tensor`): square training images `[N, C, H, H]` in [-1, 1].
        preset (`str`, *optional*, defaults to `"small"`): a `models.UNET_PRESETS` size.
        num_train_timesteps (`int`, *optional*, defaults to 1000): diffusion steps of the scheduler.

    Returns:
        The trained U-Net (EMA weights when `args.use_ema`, eval mode), the scheduler and the `TrainingSummary`.
    """
    check_training_images(images)
    return _train_unet(args, TensorDataset(images), preset, num_train_timesteps)

"""Train the unconditional DDPM U-Net of the U-Net-features method (and the U-Net builder the Score-SDE trainer
shares): a diffusers `UNet2DModel` of a named preset, epsilon prediction, `DDPMScheduler` linear betas."""

from functools import partial
from typing import Callable, Optional

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch.utils.data import Sampler, TensorDataset

from ..models.unet_presets import unet_config
from .arguments import TrainingArguments
from .denoising import DenoisingLoss, check_training_images
from .loop import TrainingSummary, train
from .monitoring import SampleGridFunction, image_grid

__all__ = ["ddpm_sample_grid", "train_ddpm_unet"]


def ddpm_sample_grid(
    scheduler: DDPMScheduler, num_images: int = 8, num_inference_steps: int = 25, seed: int = 0
) -> SampleGridFunction:
    """`unet -> grid` of `num_images` unconditional samples of a `DDPMPipeline` on the U-Net, `num_inference_steps`
    strided ancestral steps of a copy of `scheduler`, the same noise at every call (`seed`). Ancestral (stochastic)
    steps show what a briefly trained U-Net learned; deterministic DDIM with few steps turns its errors into noise."""
    sampling_scheduler = DDPMScheduler.from_config(scheduler.config)

    def sample_grid(unet: UNet2DModel):
        pipe = DDPMPipeline(unet=unet, scheduler=sampling_scheduler)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(seed)
        images = pipe(num_images, generator, num_inference_steps=num_inference_steps, output_type="np").images
        return image_grid(torch.from_numpy(images).permute(0, 3, 1, 2))  # (N, C, H, W) in [0, 1]

    return sample_grid


def _train_unet(
    args: TrainingArguments,
    dataset: TensorDataset,
    preset: str,
    num_train_timesteps: int,
    num_class_embeds: Optional[int] = None,
    label_dropout: float = 0.0,
    null_class: Optional[int] = None,
    sampler: Optional[Sampler] = None,
    sample_grid: Optional[Callable[[DDPMScheduler], SampleGridFunction]] = None,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    """Build a `UNet2DModel` of `preset` for the dataset's images (class-conditional when `num_class_embeds` is
    set), seeded with `args.seed`, and train it with `DenoisingLoss` through `training.train`; `sample_grid`, given
    the scheduler, makes the sample-grid function of the loop."""
    images = dataset.tensors[0]  # (N, C, H, H)
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same model
    unet = UNet2DModel(**unet_config(preset, images.shape[-1], images.shape[1], num_class_embeds))
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    conditional = num_class_embeds is not None
    loss = DenoisingLoss(scheduler, conditional=conditional, label_dropout=label_dropout, null_class=null_class)
    grid = sample_grid(scheduler) if sample_grid is not None and args.num_sample_images else None
    unet, _, summary = train(args, unet, dataset, loss, sampler=sampler, sample_grid=grid)
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

    At every checkpoint and at the end, `args.num_sample_images` samples (DDIM, `args.sample_inference_steps` steps)
    go to `samples/step_N.png` in `args.output_dir`, beside `loss_curve.png`.

    Returns:
        The trained U-Net (EMA weights when `args.use_ema`, eval mode), the scheduler and the `TrainingSummary`.
    """
    check_training_images(images)
    sample_grid = partial(
        ddpm_sample_grid, num_images=args.num_sample_images, num_inference_steps=args.sample_inference_steps, seed=args.seed
    )
    return _train_unet(args, TensorDataset(images), preset, num_train_timesteps, sample_grid=sample_grid)

"""Train the unconditional DDPM U-Net of the U-Net-features method (and the U-Net builder the Score-SDE trainer
shares): a diffusers `UNet2DModel` of a named preset, epsilon prediction, `DDPMScheduler` linear betas."""

from functools import partial
from typing import Callable, Optional, Union

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch.utils.data import Dataset, Sampler, TensorDataset

from ..models.unet_presets import unet_config
from .arguments import TrainingArguments
from .denoising import DenoisingLoss, check_training_images
from .loop import TrainingSummary, train
from .monitoring import SampleGridFunction, global_random_states_kept, image_grid

__all__ = ["TrainingImages", "ddpm_objective", "ddpm_sample_grid", "train_ddpm_unet", "training_dataset"]

# What the trainers train on: a tensor of images (small data, in memory) or a torch `Dataset` whose items are
# `(image [C, H, W] in [-1, 1], label, ...)`, such as `data.StreamingImages` (decoded on the fly, workers in parallel).
TrainingImages = Union[torch.Tensor, Dataset]


def training_dataset(images: TrainingImages, labels: Optional[torch.Tensor] = None) -> Dataset:
    """The `Dataset` of `images`, checked before training writes anything: a tensor becomes a `TensorDataset` (with
    `labels` when given) after `check_training_images`; a dataset is checked on its first image (its other images
    are checked as they are read, by the preprocessing that decodes them)."""
    if isinstance(images, torch.Tensor):
        check_training_images(images)
        return TensorDataset(images) if labels is None else TensorDataset(images, labels)
    if not isinstance(images, Dataset):
        raise TypeError(f"expected training images as a tensor [N, C, H, H] or a torch Dataset, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("expected a non-empty training dataset, got 0 examples")
    check_training_images(first_image(images)[None], "the first image of the training dataset")
    return images


def first_image(dataset: Dataset) -> torch.Tensor:
    """The image `[C, H, W]` of a training dataset's first item (the shape the models are built for); an item that is
    not an `(image, ...)` tuple is refused as such (QA: a bare image's first channel was blamed for its shape)."""
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or not item:
        raise ValueError(
            f"expected training dataset items (image [C, H, W], label, ...) as torch's TensorDataset gives them, got "
            f"a {type(item).__name__}{f' of shape {tuple(item.shape)}' if hasattr(item, 'shape') else ''} (return "
            "(image,) from __getitem__)"
        )
    return item[0]


def images_at(images: TrainingImages, indices) -> torch.Tensor:
    """The images `[len(indices), C, H, W]` at `indices` of a tensor or of a training dataset of `(image, ...)`."""
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(list(indices), dtype=torch.long)]
    return torch.stack([images[int(i)][0] for i in indices])


def ddpm_objective(num_train_timesteps: int = 1000, reading: Optional[dict] = None) -> dict:
    """What `train_ddpm_unet`'s own flags make of the loss, for the run record (`training.train`'s `objective`): a
    resume with another value is refused, before the data is read when a script passes it to `check_run_can_start`;
    `reading` (`data.reading_from_args`: how the images were read) joins them."""
    return {"num_train_timesteps": int(num_train_timesteps), **(reading or {})}


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


@global_random_states_kept()
def _train_unet(
    args: TrainingArguments,
    dataset: Dataset,
    preset: str,
    num_train_timesteps: int,
    num_class_embeds: Optional[int] = None,
    label_dropout: float = 0.0,
    null_class: Optional[int] = None,
    sampler: Optional[Sampler] = None,
    sample_grid: Optional[Callable[[DDPMScheduler], SampleGridFunction]] = None,
    objective: Optional[dict] = None,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    """Build a `UNet2DModel` of `preset` for the dataset's images (class-conditional when `num_class_embeds` is
    set), seeded with `args.seed`, and train it with `DenoisingLoss` through `training.train`; `sample_grid`, given
    the scheduler, makes the sample-grid function of the loop; `objective` goes into the run record."""
    image = first_image(dataset)  # (C, H, H)
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same model
    unet = UNet2DModel(**unet_config(preset, image.shape[-1], image.shape[0], num_class_embeds))
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    conditional = num_class_embeds is not None
    loss = DenoisingLoss(scheduler, conditional=conditional, label_dropout=label_dropout, null_class=null_class)
    grid = sample_grid(scheduler) if sample_grid is not None and args.num_sample_images else None
    unet, _, summary = train(args, unet, dataset, loss, sampler=sampler, sample_grid=grid, objective=objective)
    return unet, scheduler, summary


def train_ddpm_unet(
    args: TrainingArguments,
    images: TrainingImages,
    preset: str = "small",
    num_train_timesteps: int = 1000,
    reading: Optional[dict] = None,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    r"""
    Train an unconditional `UNet2DModel` (epsilon prediction, `DDPMScheduler` linear betas) on unlabeled images.

    Args:
        args (`TrainingArguments`): the loop's flags; `args.seed` also seeds the initial weights.
        images (`torch.Tensor` or `torch.utils.data.Dataset`): square training images `[N, C, H, H]` in [-1, 1], or
            a dataset of `(image [C, H, H], ...)` items such as `data.StreamingImages` (data larger than memory,
            decoded by `args.dataloader_num_workers` worker processes).
        preset (`str`, *optional*, defaults to `"small"`): a `models.UNET_PRESETS` size.
        num_train_timesteps (`int`, *optional*, defaults to 1000): diffusion steps of the scheduler.
        reading (`dict`, *optional*): how the images were read, `{flag name: value}` (`data.reading_from_args`),
            recorded with every checkpoint: a resume reading them otherwise is refused naming the flag.

    At every checkpoint and at the end, `args.num_sample_images` samples (`args.sample_inference_steps` strided
    ancestral DDPM steps, `ddpm_sample_grid`) go to `samples/step_N.png` in `args.output_dir`, beside
    `loss_curve.png`.

    Returns:
        The trained U-Net (EMA weights when `args.use_ema`, eval mode), the scheduler and the `TrainingSummary`.
    """
    dataset = training_dataset(images)
    sample_grid = partial(
        ddpm_sample_grid, num_images=args.num_sample_images, num_inference_steps=args.sample_inference_steps, seed=args.seed
    )
    objective = ddpm_objective(num_train_timesteps, reading)
    return _train_unet(args, dataset, preset, num_train_timesteps, sample_grid=sample_grid, objective=objective)

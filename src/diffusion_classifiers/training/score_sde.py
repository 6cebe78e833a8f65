"""Train the class-conditional score model of the Score-SDE generative classifier: one `UNet2DModel` with a class
embedding (`num_class_embeds`), trained on labeled images with the denoising loss; optionally a null class (label
dropout) for the unconditional score, and class-balanced sampling for imbalanced data."""

import math
from functools import partial
from typing import Optional, Sequence

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.data import WeightedRandomSampler

from ..validation import as_labels, check_label_range, resolve_num_classes
from .arguments import TrainingArguments
from .loop import TrainingSummary
from .monitoring import SampleGridFunction, image_grid
from .sampling import EpochSeededSampler
from .unet import TrainingImages, _train_unet, training_dataset

__all__ = ["class_balanced_sampler", "class_conditional_sample_grid", "score_sde_objective", "train_score_sde_unet"]


def class_conditional_sample_grid(
    scheduler: DDPMScheduler,
    num_classes: int,
    num_images: int = 8,
    num_inference_steps: int = 25,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
) -> SampleGridFunction:
    """`unet -> grid` of class-conditional samples, one column per class (`ceil(num_images / num_classes)` rows) under
    its name (`class_names`, default the class ids): `num_inference_steps` strided ancestral steps of a copy of
    `scheduler`, the same noise at every call (`seed`)."""
    sampling_scheduler = DDPMScheduler.from_config(scheduler.config)
    rows = math.ceil(num_images / num_classes)
    titles = list(class_names) if class_names is not None else [f"class {k}" for k in range(num_classes)]

    def sample_grid(unet: UNet2DModel):
        labels = torch.arange(num_classes, device=unet.device).repeat(rows)  # row-major: class k in column k
        config = unet.config
        shape = (len(labels), config.in_channels, config.sample_size, config.sample_size)
        generator = torch.Generator().manual_seed(seed)
        sample = randn_tensor(shape, generator=generator, device=unet.device)
        # set step values
        sampling_scheduler.set_timesteps(num_inference_steps, device=unet.device)
        for t in sampling_scheduler.timesteps:
            # predict noise model_output
            noise_pred = unet(sample, t, class_labels=labels).sample
            # compute previous image: x_t -> x_t-1
            sample = sampling_scheduler.step(noise_pred, t, sample, generator=generator).prev_sample
        return image_grid((sample / 2 + 0.5).clamp(0, 1), rows=rows, column_titles=titles)

    return sample_grid


def class_balanced_sampler(labels: torch.Tensor, num_classes: int, seed: int = 0) -> EpochSeededSampler:
    """Draw (with replacement) every class equally often: weight 1 / count(label) per example; the draws of epoch e
    are a function of (seed, e) (`set_epoch`), so a resumed run draws what the uninterrupted one would have."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    weighted = WeightedRandomSampler(1.0 / counts[labels], len(labels), replacement=True, generator=torch.Generator())
    return EpochSeededSampler(weighted, seed)


def score_sde_objective(
    label_dropout: float = 0.0,
    class_balanced: bool = False,
    num_train_timesteps: int = 1000,
    reading: Optional[dict] = None,
) -> dict:
    """What `train_score_sde_unet`'s own flags make of the loss and the data order, for the run record
    (`training.train`'s `objective`): a resume with another label dropout, sampling or number of diffusion steps is
    refused naming the flag, before the data is read when a script passes it to `check_run_can_start`; `reading`
    (`data.reading_from_args`: how the images were read) joins them."""
    return {
        "label_dropout": float(label_dropout),
        "class_balanced": bool(class_balanced),
        "num_train_timesteps": int(num_train_timesteps),
        **(reading or {}),
    }


def train_score_sde_unet(
    args: TrainingArguments,
    images: TrainingImages,
    labels: Optional[torch.Tensor] = None,
    num_classes: Optional[int] = None,
    preset: str = "small",
    num_train_timesteps: int = 1000,
    label_dropout: float = 0.0,
    class_balanced: bool = False,
    class_names: Optional[Sequence[str]] = None,
    reading: Optional[dict] = None,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    r"""
    Train a class-conditional `UNet2DModel` (epsilon prediction, `DDPMScheduler` linear betas, class embedding),
    the score model `ScoreSDEClassifierPipeline` classifies with.

    Args:
        args (`TrainingArguments`): the loop's flags; `args.seed` also seeds the initial weights and the sampler.
        images (`torch.Tensor` or `torch.utils.data.Dataset`): square training images `[N, C, H, H]` in [-1, 1], or
            a dataset of `(image [C, H, H], label)` items with a `labels` attribute, such as `data.StreamingImages`
            (data larger than memory, decoded by `args.dataloader_num_workers` worker processes).
        labels (`torch.Tensor`): one class id in `[0, num_classes)` per image, `[N]`; with a dataset, omitted (its
            `labels` are used).
        num_classes (`int`, *optional*): the number of classes K; defaults to the largest label + 1.
        preset (`str`, *optional*, defaults to `"small"`): a `models.UNET_PRESETS` size.
        num_train_timesteps (`int`, *optional*, defaults to 1000): diffusion steps of the scheduler.
        label_dropout (`float`, *optional*, defaults to 0.0): fraction of labels replaced by a null class (id K, one
            more class embedding), so the same U-Net also learns the unconditional score.
        class_balanced (`bool`, *optional*, defaults to `False`): draw every class equally often.
        class_names (`Sequence[str]`, *optional*): the classes' names, written above their columns of the sample
            grids; default "class 0", "class 1", ...
        reading (`dict`, *optional*): how the images were read, `{flag name: value}` (`data.reading_from_args`),
            recorded with every checkpoint: a resume reading them otherwise is refused naming the flag.

    At every checkpoint and at the end, class-conditional samples (one column per class, under its name,
    `args.num_sample_images` in all, rounded up to whole rows) go to `samples/step_N.png` in `args.output_dir`, beside
    `loss_curve.png`.

    Returns:
        The trained U-Net (EMA weights when `args.use_ema`, eval mode), the scheduler and the `TrainingSummary`.
    """
    streaming = not isinstance(images, torch.Tensor)
    if streaming and labels is not None:
        raise ValueError("labels: expected None with a training dataset (its items carry their labels)")
    if labels is None and not streaming:
        raise ValueError("labels: expected one class id per image with a training tensor, got None")
    if streaming and not isinstance(getattr(images, "labels", None), torch.Tensor):
        raise ValueError(
            f"expected a training dataset with a `labels` tensor (data.StreamingImages), got {type(images).__name__}"
        )
    labels = torch.from_numpy(as_labels(images.labels if streaming else labels, "labels")).long()
    if len(labels) != len(images):
        raise ValueError(f"expected one label per image ({len(images)}), got {len(labels)} labels")
    num_classes = resolve_num_classes(num_classes, class_names, labels.numpy())
    check_label_range(labels, "labels", num_classes)  # id K is the null class, never a training label
    sampler = class_balanced_sampler(labels, num_classes, args.seed) if class_balanced else None
    null_class = num_classes if label_dropout > 0 else None
    num_class_embeds = num_classes + (label_dropout > 0)
    dataset = training_dataset(images, None if streaming else labels)
    sample_grid = partial(
        class_conditional_sample_grid, num_classes=num_classes, num_images=args.num_sample_images,
        num_inference_steps=args.sample_inference_steps, seed=args.seed, class_names=class_names,
    )  # fmt: skip
    objective = score_sde_objective(label_dropout, class_balanced, num_train_timesteps, reading)
    return _train_unet(
        args, dataset, preset, num_train_timesteps, num_class_embeds, label_dropout, null_class, sampler, sample_grid,
        objective,
    )  # fmt: skip

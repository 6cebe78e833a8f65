"""Train the class-conditional score model of the Score-SDE generative classifier: one `UNet2DModel` with a class
embedding (`num_class_embeds`), trained on labeled images with the denoising loss; optionally a null class (label
dropout) for the unconditional score, and class-balanced sampling for imbalanced data."""

from typing import Optional

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils.data import TensorDataset, WeightedRandomSampler

from ..validation import as_labels, check_label_range, resolve_num_classes
from .arguments import TrainingArguments
from .denoising import check_training_images
from .loop import TrainingSummary
from .sampling import EpochSeededSampler
from .unet import _train_unet

__all__ = ["class_balanced_sampler", "train_score_sde_unet"]


def class_balanced_sampler(labels: torch.Tensor, num_classes: int, seed: int = 0) -> EpochSeededSampler:
    """Draw (with replacement) every class equally often: weight 1 / count(label) per example; the draws of epoch e
    are a function of (seed, e) (`set_epoch`), so a resumed run draws what the uninterrupted one would have."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    weighted = WeightedRandomSampler(1.0 / counts[labels], len(labels), replacement=True, generator=torch.Generator())
    return EpochSeededSampler(weighted, seed)


def train_score_sde_unet(
    args: TrainingArguments,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: Optional[int] = None,
    preset: str = "small",
    num_train_timesteps: int = 1000,
    label_dropout: float = 0.0,
    class_balanced: bool = False,
) -> tuple[UNet2DModel, DDPMScheduler, TrainingSummary]:
    r"""
    Train a class-conditional `UNet2DModel` (epsilon prediction, `DDPMScheduler` linear betas, class embedding),
    the score model `ScoreSDEClassifierPipeline` classifies with.

    Args:
        args (`TrainingArguments`): the loop's flags; `args.seed` also seeds the initial weights and the sampler.
        images (`torch.Tensor`): square training images `[N, C, H, H]` in [-1, 1].
        labels (`torch.Tensor`): one class id in `[0, num_classes)` per image, `[N]`.
        num_classes (`int`, *optional*): the number of classes K; defaults to the largest label + 1.
        preset (`str`, *optional*, defaults to `"small"`): a `models.UNET_PRESETS` size.
        num_train_timesteps (`int`, *optional*, defaults to 1000): diffusion steps of the scheduler.
        label_dropout (`float`, *optional*, defaults to 0.0): fraction of labels replaced by a null class (id K, one
            more class embedding), so the same U-Net also learns the unconditional score.
        class_balanced (`bool`, *optional*, defaults to `False`): draw every class equally often.

    Returns:
        The trained U-Net (EMA weights when `args.use_ema`, eval mode), the scheduler and the `TrainingSummary`.
    """
    check_training_images(images)
    labels = torch.from_numpy(as_labels(labels, "labels")).long()
    if len(labels) != len(images):
        raise ValueError(f"expected one label per image ({len(images)}), got {len(labels)} labels")
    num_classes = resolve_num_classes(num_classes, None, labels.numpy())
    check_label_range(labels, "labels", num_classes)  # id K is the null class, never a training label
    sampler = class_balanced_sampler(labels, num_classes, args.seed) if class_balanced else None
    null_class = num_classes if label_dropout > 0 else None
    num_class_embeds = num_classes + (label_dropout > 0)
    dataset = TensorDataset(images, labels)
    return _train_unet(args, dataset, preset, num_train_timesteps, num_class_embeds, label_dropout, null_class, sampler)

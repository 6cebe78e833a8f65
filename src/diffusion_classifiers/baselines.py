"""Supervised baselines that the diffusion classifiers are compared against.

`SupervisedCNN` is a small conv net of about the size of a small U-Net's encoder, trained with labels through the
library's one training loop (`training.train`); the checkpoint kept is the one with the best validation accuracy.
"""

import math
import os
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from .training import TrainingArguments, train


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


class SupervisedCNN(nn.Module):
    """Conv stages (conv-GroupNorm-SiLU twice; every stage after the first starts with a stride-2 conv), global
    average pooling and a linear classifier.

    Args:
        in_channels: image channels.
        num_classes: number of classes `K`; `forward` returns logits `[N, K]`.
        widths: channels of each stage; the resolution halves from one stage to the next.
        norm_num_groups: GroupNorm groups (reduced to a divisor of each stage's width).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths: Sequence[int] = (32, 64, 128), norm_num_groups: int = 8):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or not widths or min(widths) < 1:
            raise ValueError(
                f"expected in_channels >= 1, num_classes >= 2 and positive widths, got {in_channels}, {num_classes}, {list(widths)}"
            )
        layers, channels = [], in_channels
        for stage, width in enumerate(widths):
            layers += _conv_norm_act(channels, width, stride=1 if stage == 0 else 2, groups=norm_num_groups)
            layers += _conv_norm_act(width, width, stride=1, groups=norm_num_groups)
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).mean(dim=(2, 3)))


def _conv_norm_act(in_channels: int, out_channels: int, stride: int, groups: int) -> list:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(math.gcd(groups, out_channels), out_channels),
        nn.SiLU(),
    ]


def _random_shift(images: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in each direction (edges replicated)."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, len(images))).tolist()
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))])


class SupervisedLoss:
    """`training.train` loss for `(images, labels)` batches; `augment` adds random shifts of up to 2 pixels."""

    def __init__(self, augment: bool = False):
        self.augment = augment

    def __call__(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        images, labels = batch
        if self.augment:
            images = _random_shift(images)
        return F.cross_entropy(model(images), labels)


def _check_labeled_images(images, labels, num_classes: int, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"{name}: expected float images [N, C, H, W], got {getattr(images, 'shape', type(images))}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point() or len(labels) != len(images):
        raise ValueError(f"{name}: expected one integer label per image ({len(images)}), got {getattr(labels, 'shape', type(labels))}")
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{name}: label {int(labels[i])} at index {i} is outside the expected range 0..{num_classes - 1}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: images contain NaN or inf values")


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities `[N, K]` (float32, on the CPU) of `model` on `images`, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    probs = [model(batch.to(device)).softmax(dim=1).float().cpu() for batch in images.split(batch_size)]
    return torch.cat(probs)


def train_supervised_cnn(
    images: torch.Tensor,
    labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    output_dir: str,
    max_train_steps: int = 500,
    train_batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    augment: bool = False,
    widths: Sequence[int] = (32, 64, 128),
    num_checkpoints: int = 5,
) -> Tuple[SupervisedCNN, Dict[str, object]]:
    """Train a `SupervisedCNN` with cross-entropy through `training.train` and keep the best checkpoint on val.

    `num_checkpoints` evenly spaced checkpoints (the last at `max_train_steps`) are scored on the validation
    images; the one with the highest val accuracy (ties: the earlier one) is loaded. Test data plays no part.

    Returns:
        the model (eval mode) and `info`: `num_parameters`, `selected_step`, `val_accuracy_by_step`, `final_loss`.
    """
    _check_labeled_images(images, labels, num_classes, "images/labels")
    _check_labeled_images(val_images, val_labels, num_classes, "val_images/val_labels")
    if num_checkpoints < 1:
        raise ValueError(f"expected num_checkpoints >= 1, got {num_checkpoints}")
    torch.manual_seed(seed)
    model = SupervisedCNN(images.shape[1], num_classes, widths)
    every = math.ceil(max_train_steps / num_checkpoints)
    args = TrainingArguments(
        output_dir=output_dir,
        train_batch_size=train_batch_size,
        max_train_steps=max_train_steps,
        learning_rate=learning_rate,
        lr_warmup_steps=max_train_steps // 20,
        checkpointing_steps=every,
        seed=seed,
    )
    model, _, summary = train(args, model, TensorDataset(images, labels.long()), SupervisedLoss(augment))
    val_accuracy = {}
    for step in sorted({*range(every, max_train_steps, every), max_train_steps}):
        model.load_state_dict(load_file(os.path.join(output_dir, f"checkpoint-{step}", "model.safetensors")))
        val_accuracy[step] = (predict_proba(model, val_images).argmax(1) == val_labels).double().mean().item()
    best_step = max(val_accuracy, key=lambda step: (val_accuracy[step], -step))
    model.load_state_dict(load_file(os.path.join(output_dir, f"checkpoint-{best_step}", "model.safetensors")))
    model.eval()
    info = {
        "num_parameters": count_parameters(model),
        "selected_step": best_step,
        "val_accuracy_by_step": val_accuracy,
        "final_loss": summary.final_loss,
    }
    return model, info

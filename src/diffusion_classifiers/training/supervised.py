"""Train the supervised baseline the diffusion classifiers are compared against.

`models.SupervisedCNN`, a small conv net of about the size of a small U-Net's encoder, is trained with labels
through the library's one training loop (`training.train`); the checkpoint kept is the one with the best
validation accuracy.
"""

import math
import os
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from ..models.supervised_cnn import SupervisedCNN, count_parameters
from ..validation import as_labels, check_finite_rows, check_label_range
from .arguments import TrainingArguments
from .loop import train
from .monitoring import global_random_states_kept

__all__ = ["SupervisedLoss", "checkpoint_weights", "predict_proba", "train_supervised_cnn"]


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


def _checked_labels(images: torch.Tensor, labels, num_classes: int, prefix: str = "") -> torch.Tensor:
    """`labels` as int64 `[N]` after checking that `images` are float `[N, C, H, W]` without NaN or inf and that
    each image has one label in `[0, num_classes)`; `prefix` ("val_") names the split in the errors."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"expected float {prefix}images [N, C, H, W], got {getattr(images, 'shape', type(images))}")
    check_finite_rows(images, f"{prefix}images:", item="image")
    labels = as_labels(labels, f"{prefix}labels")
    if len(labels) != len(images):
        raise ValueError(f"expected one label per image in {prefix}labels ({len(images)}), got {len(labels)}")
    check_label_range(labels, f"{prefix}labels", num_classes)
    return torch.from_numpy(labels).long()


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities `[N, K]` (float32, on the CPU) of `model` on `images`, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    probs = [model(batch.to(device)).softmax(dim=1).float().cpu() for batch in images.split(batch_size)]
    return torch.cat(probs)


def checkpoint_weights(output_dir: str, step: int) -> Dict[str, torch.Tensor]:
    """The model weights the training loop saved in `output_dir` at optimizer step `step`."""
    return load_file(os.path.join(output_dir, f"checkpoint-{step}", "model.safetensors"))


@global_random_states_kept()
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
    labels = _checked_labels(images, labels, num_classes)
    val_labels = _checked_labels(val_images, val_labels, num_classes, prefix="val_")
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
    model, _, summary = train(args, model, TensorDataset(images, labels), SupervisedLoss(augment))
    val_accuracy = {}
    for step in sorted({*range(every, max_train_steps, every), max_train_steps}):
        model.load_state_dict(checkpoint_weights(output_dir, step))
        val_accuracy[step] = (predict_proba(model, val_images).argmax(1) == val_labels).double().mean().item()
    best_step = max(val_accuracy, key=lambda step: (val_accuracy[step], -step))
    model.load_state_dict(checkpoint_weights(output_dir, best_step))
    model.eval()
    info = {
        "num_parameters": count_parameters(model),
        "selected_step": best_step,
        "val_accuracy_by_step": val_accuracy,
        "final_loss": summary.final_loss,
    }
    return model, info

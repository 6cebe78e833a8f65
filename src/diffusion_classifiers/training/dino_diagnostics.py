"""Is DINO learning? Diagnostics of the teacher's targets during and after training.

DINO's targets are the teacher's centred, sharpened distributions over `out_dim` prototypes. It fails in two ways
(Caron et al. 2021, Sec. 5.3): the targets become uniform (centring wins) or one distribution for every image
(sharpening wins). Either way they stop depending on the image, which the information between image and prototype
measures: `H(mean target) - mean H(target)`, 0 when every image gets the same target, up to `log(out_dim)`.
Measured in this repository (issue 13), on Fashion-MNIST 16 px with a 4-layer ViT, batch 64, 400 steps: with DINO's
published schedule the targets never leave near-uniform (per-image entropy 7.8 of the 8.3 nats of 4,096
prototypes, information 0.3 nats) and the encoder ends below its random initialisation; with a fast teacher
(momentum 0.9, learning rate 1e-3) they collapsed to one distribution for every image (information under
0.006 nats from step 50 on).

`dino_monitor` computes the diagnostics at every checkpoint of `train_contrastive_encoder(method="dino")`
(`training.train(monitor=...)`, written to `monitor_history.json` and logged to trackers) and warns when the targets
tell fewer than two groups of images apart (information under `log 2`).
"""

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.encoders import encode_representation
from .rc_dit_diagnostics import representation_spread
from .unet import TrainingImages, images_at

__all__ = ["UNINFORMATIVE_TARGETS_NATS", "dino_monitor", "dino_target_diagnostics"]

logger = logging.getLogger(__name__)

# the targets' information about the image below which they tell fewer than two groups of images apart
UNINFORMATIVE_TARGETS_NATS = math.log(2)


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def dino_target_diagnostics(model: nn.Module, images: torch.Tensor, teacher_temperature: float) -> dict:
    """The teacher's targets on `images` `[N, C, H, W]` in [-1, 1] (N >= 2, plain images, no views) at
    `teacher_temperature`: their mean entropy per image, the entropy of their mean, the information between image
    and prototype (the difference), the maximum `log(out_dim)`, and the relative spread across images of the
    teacher encoder's representation (a collapsed r has one near 0). Runs as the model is (call in eval mode)."""
    if images.shape[0] < 2:
        raise ValueError(f"expected at least 2 images to measure how DINO's targets vary, got {images.shape[0]}")
    images = images.to(model.center.device)
    logits = model.teacher(images).float()
    targets = F.softmax((logits - model.center) / teacher_temperature, dim=-1)
    per_image, of_mean = _entropy(targets).mean(), _entropy(targets.mean(0))
    r = encode_representation(model.teacher_encoder, images, model.readout, model.preprocessing)
    return {
        "teacher_target_entropy": per_image.item(),
        "teacher_mean_target_entropy": of_mean.item(),
        "teacher_target_information": (of_mean - per_image).item(),
        "teacher_max_entropy": math.log(targets.shape[-1]),
        "representation_relative_spread": representation_spread(r)[1].item(),
    }


def dino_monitor(images: TrainingImages, loss, num_images: int = 256) -> Callable[[nn.Module], dict]:
    """`DINOModel -> diagnostics` for `training.train(monitor=...)`: `dino_target_diagnostics` on the first
    `num_images` training images at the `DINOLoss`'s current teacher temperature; logs a warning when the targets
    carry less than `UNINFORMATIVE_TARGETS_NATS` of information about the image."""
    fixed = images_at(images, range(min(num_images, len(images)))).float()

    def monitor(model: nn.Module) -> dict:
        temperature = loss.teacher_temperature_at(int(model.teacher_updates))
        diagnostics = dino_target_diagnostics(model, fixed, temperature)
        if diagnostics["teacher_target_information"] < UNINFORMATIVE_TARGETS_NATS:
            logger.warning(
                "DINO's targets barely depend on the image: %.2g nats of information between image and prototype "
                "(< log 2), entropy per image %.3g of at most %.3g (near it: uniform; far below it: one target for "
                "every image); the encoder learns little from them (issue 13: at small budgets DINO stays there, "
                "SimCLR does not)",
                diagnostics["teacher_target_information"], diagnostics["teacher_target_entropy"],
                diagnostics["teacher_max_entropy"],
            )  # fmt: skip
        return diagnostics

    return monitor

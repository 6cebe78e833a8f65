"""Contrastive and self-distillation baselines for the RC-DiT encoder.

The baseline trains the *same* ViT (`models.encoders.build_vit_encoder`) on the same images for the same number of
optimizer steps as an RC-DiT run, through the same loop (`training.train`: accelerate, AdamW + schedule, EMA,
checkpoints, resume), with one of two label-free objectives on kornia-augmented views:

- `"simclr"` (default): the NT-Xent contrastive loss of SimCLR (Chen et al., 2020) on two views per image.
- `"dino"`: self-distillation with no labels (Caron et al., 2021). A student (the ViT + a projection
  head) matches the sharpened, centred output distribution of a teacher, an exponential moving average of the
  student, across views; 2 global views plus optional local (small-crop) views, at the global views' size. The
  reference's first-epoch freeze of the head's last layer is an option (`freeze_last_layer_steps`), off by default
  as the benchmarks ran. Faithful to the paper's recipe, it collapses at the small budgets of the benchmarks here (a
  tiny ViT on 28x28 images for a few thousand steps: the image-dependent part of a fresh ViT's output is too small
  for centering + sharpening), hence SimCLR by default.

Both heads read the encoder's representation r = `encode_representation(encoder, images)`, the vector the
evaluation protocols use, so the trained encoder is evaluated exactly like an RC-DiT encoder. Pretrained
backbones (DINOv2, ...) are in `models.encoders.load_pretrained_encoder`.
"""

import copy
import inspect
import math
from typing import Optional, Sequence

import kornia.augmentation as K
import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.state import GradientState
from torch import nn
from torch.utils.data import TensorDataset

from ..models.encoders import encode_representation, freeze_unused_pooler, representation_size
from ..validation import check_finite_rows, check_unit_range
from .arguments import TrainingArguments
from .dino_diagnostics import dino_monitor
from .loop import total_optimizer_steps, train
from .monitoring import global_random_states_kept

__all__ = [
    "METHODS",
    "DINOHead",
    "DINOLoss",
    "DINOModel",
    "ImageAugmentation",
    "SimCLRLoss",
    "SimCLRModel",
    "build_augmentation",
    "cosine_teacher_momentum",
    "nt_xent_loss",
    "train_contrastive_encoder",
]

METHODS = ("dino", "simclr")


# ------------------------------------------------------------------------------------------------------------------
# Augmentations
# ------------------------------------------------------------------------------------------------------------------


class ImageAugmentation(nn.Module):
    """A kornia augmentation pipeline for images in [-1, 1]: maps to [0, 1], augments, clamps, maps back.

    Every call draws new random parameters per image, so two calls on the same batch give two views. With
    `cuda_pipeline`, images on a GPU go through it instead: the same steps, the crop as one batched warp.
    """

    def __init__(self, pipeline: nn.Module, num_channels: int, cuda_pipeline: Optional[nn.Module] = None):
        super().__init__()
        self.pipeline = pipeline
        self.cuda_pipeline = cuda_pipeline
        self.num_channels = num_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.num_channels:
            raise ValueError(
                f"expected images [N, {self.num_channels}, H, W] in [-1, 1] for the augmentation, "
                f"got {tuple(images.shape)}"
            )
        unit = ((images.float() + 1) / 2).clamp(0, 1)
        pipeline = self.cuda_pipeline if images.is_cuda and self.cuda_pipeline is not None else self.pipeline
        return (pipeline(unit).clamp(0, 1) * 2 - 1).to(images.dtype)


def build_augmentation(
    image_size: int,
    num_channels: int,
    strength: float = 1.0,
    crop_scale: Sequence[float] = (0.25, 1.0),
    flip_p: float = 0.5,
    blur_p: float = 0.5,
) -> ImageAugmentation:
    """SimCLR/DINO-style views for small images: random resized crop to `image_size` (area fraction in
    `crop_scale`), horizontal flip (`flip_p`), colour jitter (p=0.8; brightness and contrast 0.4 x `strength`, and for
    RGB saturation 0.4 x `strength`, hue 0.1 x `strength` plus random grayscale p=0.2), Gaussian blur (`blur_p`,
    sigma in [0.1, 2 x `strength`], kernel about a tenth of the image, odd, at least 3).

    `strength=0` keeps only crop and flip. Works for 1- and 3-channel images.
    """
    if num_channels not in (1, 3):
        raise ValueError(f"expected num_channels 1 or 3 for the augmentation, got {num_channels}")
    if image_size < 1:
        raise ValueError(f"expected a positive image_size, got {image_size}")
    if strength < 0:
        raise ValueError(f"expected a non-negative augmentation strength, got {strength}")
    low, high = crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"expected crop_scale (low, high) with 0 < low <= high <= 1, got {tuple(crop_scale)}")
    for name, p in (("flip_p", flip_p), ("blur_p", blur_p)):
        if not 0 <= p <= 1:
            raise ValueError(f"expected `{name}` in [0, 1], got {p}")
    rgb = num_channels == 3
    steps = [K.RandomHorizontalFlip(p=flip_p)]
    if strength > 0:
        jitter = 0.4 * strength
        saturation, hue = (jitter, min(0.1 * strength, 0.5)) if rgb else (0.0, 0.0)
        steps.append(K.ColorJitter(jitter, jitter, saturation, hue, p=0.8))
        if rgb:
            steps.append(K.RandomGrayscale(p=0.2))
        if blur_p > 0:
            kernel = max(3, (image_size // 10) | 1)
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, max(0.1, 2.0 * strength)), p=blur_p))

    def crop_then(steps, cropping_mode):
        crop = K.RandomResizedCrop((image_size, image_size), scale=(low, high), cropping_mode=cropping_mode)
        return nn.Sequential(crop, *steps)

    # kornia crops image by image ("slice", the faster on a CPU) or warps the batch at once ("resample"): on a GPU,
    # whose small steps wait on kernel launches, one warp instead of a crop and resize per image (4,966 profiled
    # operations for a batch of 256 against 1,088; not timed on a GPU)
    return ImageAugmentation(crop_then(steps, "slice"), num_channels, cuda_pipeline=crop_then(steps, "resample"))


# ------------------------------------------------------------------------------------------------------------------
# DINO
# ------------------------------------------------------------------------------------------------------------------


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a `bottleneck_dim` vector, L2-normalised, then a linear layer
    to `out_dim` logits whose weight rows are normalised to norm 1 times a gain (weight norm): the gain fixed at 1
    with `norm_last_layer=True`, else learned per prototype, which DINO's code recommends for ViT-S ("better
    performance but can make the training unstable") since it lets the logits leave [-1, 1]."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        for name, value in (("out_dim", out_dim), ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim)):
            if value < 1:
                raise ValueError(f"expected a positive DINO head `{name}`, got {value}")
        norm = (lambda: nn.BatchNorm1d(hidden_dim)) if use_bn else nn.Identity
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), norm(), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), norm(), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.mlp.apply(_init_linear)
        self.last_layer = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_layer, std=0.02)
        # only when learned: checkpoints of the fixed-gain head keep their keys
        self.last_layer_gain = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, features: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        """Logits [N, out_dim]; with `freeze_last_layer` the last layer (and its gain) get a zero gradient, as DINO
        freezes it for its first epoch ("helps training", its code says)."""
        bottleneck = F.normalize(self.mlp(features), dim=-1)
        last_layer, gain = self.last_layer, self.last_layer_gain
        if freeze_last_layer:  # a zero gradient, not none: DDP waits for a gradient of every trainable parameter
            last_layer = last_layer.detach() + 0 * last_layer
            gain = None if gain is None else gain.detach() + 0 * gain
        prototypes = F.normalize(last_layer, dim=-1)
        if gain is not None:
            prototypes = gain * prototypes
        return F.linear(bottleneck, prototypes)


class DINOModel(nn.Module):
    """Student (the encoder + a `DINOHead`) and teacher (a frozen copy of both, updated only by `update_teacher`;
    it follows the model's train/eval mode, as in DINO, so a `use_bn` head normalises with batch statistics).

    `forward(images)` is the student's logits [N, out_dim] on the representation r; `teacher(images)` the teacher's,
    without gradients. The buffers `center` (the running mean of teacher logits) and `teacher_updates` (how many
    momentum updates were made, for the momentum schedule) are saved in checkpoints with the weights.
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_dim: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        use_bn: bool = False,
        readout: str = "pooler",
        preprocessing: Optional[dict] = None,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        freeze_unused_pooler(encoder, readout)
        self.readout, self.preprocessing = readout, preprocessing
        self.encoder = encoder
        in_dim = representation_size(encoder)
        self.head = DINOHead(in_dim, out_dim, hidden_dim, bottleneck_dim, use_bn, norm_last_layer)
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("teacher_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("center_initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, images: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        features = encode_representation(self.encoder, images, self.readout, self.preprocessing)
        return self.head(features, freeze_last_layer)

    @torch.no_grad()
    def teacher(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(encode_representation(self.teacher_encoder, images, self.readout, self.preprocessing))

    def student_parameters(self) -> list:
        return list(self.encoder.parameters()) + list(self.head.parameters())

    def teacher_parameters(self) -> list:
        return list(self.teacher_encoder.parameters()) + list(self.teacher_head.parameters())

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
        if not 0 <= momentum <= 1:
            raise ValueError(f"expected a teacher momentum in [0, 1], got {momentum}")
        for teacher, student in zip(self.teacher_parameters(), self.student_parameters()):
            teacher.mul_(momentum).add_(student.detach().to(teacher.dtype), alpha=1 - momentum)
        self.teacher_updates += 1

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, momentum: float) -> None:
        """center <- momentum * center + (1 - momentum) * mean teacher logits (averaged over all processes)."""
        batch_center = teacher_logits.float().mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        if not self.center_initialized:  # start from the first batch's mean, not 0: no early one-dimension collapse
            momentum = 0.0
            self.center_initialized.fill_(True)
        self.center.mul_(momentum).add_(batch_center.to(self.center.dtype), alpha=1 - momentum)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / accelerate wrapper (`.module`), or the model itself."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"expected a positive `{name}`, got {value}")


def cosine_teacher_momentum(step: int, total_steps: Optional[int], base_momentum: float) -> float:
    """DINO's schedule: from `base_momentum` at step 0 up to 1 at `total_steps` (cosine); constant if no total."""
    if total_steps is None or total_steps <= 0:
        return base_momentum
    progress = min(step / total_steps, 1.0)
    return 1 - (1 - base_momentum) * (math.cos(math.pi * progress) + 1) / 2


class DINOLoss:
    """DINO's self-distillation loss for a `DINOModel` under `training.train`: batches are `(images,)` or
    `(images, labels)` (labels ignored), images in [-1, 1].

    Each call: (1) at the first batch after each optimizer step the teacher takes a momentum step towards the
    student, momentum following `cosine_teacher_momentum(model.teacher_updates, total_steps, teacher_momentum)`. Under
    `training.train` the optimizer steps are accelerate's (`sync_gradients`: every `gradient_accumulation_steps`
    batches and at each epoch's last batch); given a model accelerate did not prepare, every `update_every` calls
    (set it to the accumulation steps); (2) two global views (and `num_local_views` local ones) are drawn; (3) the
    loss is the mean over view pairs (teacher view a, student view b, a != b) of the cross-entropy between
    softmax((teacher - center) / teacher_temperature) and softmax(student / student_temperature); (4) the center moves
    towards the teacher's batch mean (`center_momentum`). The teacher temperature rises linearly from
    `warmup_teacher_temperature` over `warmup_teacher_temperature_steps` teacher updates. During the first
    `freeze_last_layer_steps` optimizer steps the head's last layer is frozen (DINO's `freeze_last_layer`, one epoch
    in its code; 0 here, as the benchmarks ran).
    """

    def __init__(
        self,
        augmentation: nn.Module,
        local_augmentation: Optional[nn.Module] = None,
        num_local_views: int = 0,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: Optional[float] = None,
        warmup_teacher_temperature_steps: int = 0,
        center_momentum: float = 0.9,
        teacher_momentum: float = 0.996,
        total_steps: Optional[int] = None,
        update_every: int = 1,
        freeze_last_layer_steps: int = 0,
    ):
        _check_temperature("student_temperature", student_temperature)
        _check_temperature("teacher_temperature", teacher_temperature)
        if warmup_teacher_temperature is not None:
            _check_temperature("warmup_teacher_temperature", warmup_teacher_temperature)
        if num_local_views < 0:
            raise ValueError(f"expected a non-negative `num_local_views`, got {num_local_views}")
        if num_local_views > 0 and local_augmentation is None:
            raise ValueError("num_local_views > 0 needs a `local_augmentation` (small crops)")
        for name, value in (("center_momentum", center_momentum), ("teacher_momentum", teacher_momentum)):
            if not 0 <= value <= 1:
                raise ValueError(f"expected `{name}` in [0, 1], got {value}")
        if update_every < 1:
            raise ValueError(f"expected a positive `update_every`, got {update_every}")
        if freeze_last_layer_steps < 0:
            raise ValueError(f"expected a non-negative `freeze_last_layer_steps`, got {freeze_last_layer_steps}")
        self.augmentation = augmentation
        self.local_augmentation = local_augmentation
        self.num_local_views = num_local_views
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature or teacher_temperature
        self.warmup_teacher_temperature_steps = warmup_teacher_temperature_steps
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.total_steps = total_steps
        self.update_every = update_every
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.calls = 0
        # whether the optimizer stepped after the last training call; True at the start, for a run resumed from a
        # checkpoint (always taken at an optimizer step); a fresh run's first batch waits for `center_initialized`
        self.optimizer_stepped = True

    def teacher_temperature_at(self, step: int) -> float:
        if step >= self.warmup_teacher_temperature_steps:
            return self.teacher_temperature
        fraction = step / self.warmup_teacher_temperature_steps
        start = self.warmup_teacher_temperature
        return start + fraction * (self.teacher_temperature - start)

    def maybe_update_teacher(self, dino: DINOModel, prepared: bool = False) -> None:
        """The momentum step of the teacher, once per optimizer step (see the class docstring); `prepared`: the model
        is accelerate's, trained in its loop."""
        if not dino.training:
            return
        if self.optimizer_stepped and dino.center_initialized:
            step = int(dino.teacher_updates)
            dino.update_teacher(cosine_teacher_momentum(step, self.total_steps, self.teacher_momentum))
        self.calls += 1
        # accelerate's `accumulate` sets `sync_gradients` for the batch as it is entered, before the loss is called
        self.optimizer_stepped = GradientState().sync_gradients if prepared else self.calls % self.update_every == 0

    def __call__(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        dino = _unwrap(model)
        if not isinstance(dino, DINOModel):
            raise TypeError(f"expected a DINOModel for DINOLoss, got {type(dino).__name__}")
        self.maybe_update_teacher(dino, prepared=getattr(model, "_is_accelerate_prepared", False))
        images = batch[0]
        global_views = torch.cat([self.augmentation(images), self.augmentation(images)])
        views = [global_views] + [self.local_augmentation(images) for _ in range(self.num_local_views)]
        # after `maybe_update_teacher`, `teacher_updates` is the number of optimizer steps taken before this batch's
        freeze = int(dino.teacher_updates) < self.freeze_last_layer_steps
        student = model(torch.cat(views), freeze_last_layer=freeze).float() / self.student_temperature
        teacher_logits = dino.teacher(global_views).float()
        temperature = self.teacher_temperature_at(int(dino.teacher_updates))
        targets = F.softmax((teacher_logits - dino.center) / temperature, dim=-1).chunk(2)
        log_probs = F.log_softmax(student, dim=-1).chunk(2 + self.num_local_views)
        losses = [
            -(target * log_prob).sum(dim=-1).mean()
            for a, target in enumerate(targets)
            for b, log_prob in enumerate(log_probs)
            if a != b
        ]
        if dino.training:
            dino.update_center(teacher_logits, self.center_momentum)
        return torch.stack(losses).mean()


# ------------------------------------------------------------------------------------------------------------------
# SimCLR
# ------------------------------------------------------------------------------------------------------------------


class SimCLRModel(nn.Module):
    """The encoder + SimCLR's projection head (Linear, BatchNorm, ReLU, Linear): `forward(images)` gives the
    projections z [N, projection_dim] of the representation r."""

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        readout: str = "pooler",
        preprocessing: Optional[dict] = None,
    ):
        super().__init__()
        for name, value in (("projection_dim", projection_dim), ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"expected a positive SimCLR head `{name}`, got {value}")
        freeze_unused_pooler(encoder, readout)
        self.readout, self.preprocessing = readout, preprocessing
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(representation_size(encoder), hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, projection_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(encode_representation(self.encoder, images, self.readout, self.preprocessing))


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent: for each of the 2N projections, the cross-entropy of picking its positive (the other view
    of the same image) among the other 2N - 1 by cosine similarity / `temperature`; mean over the 2N."""
    _check_temperature("temperature", temperature)
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(
            "expected two [N, D] projection batches of the same shape, N >= 2, "
            f"got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, positives)


class SimCLRLoss:
    """NT-Xent on two augmented views for a `SimCLRModel` under `training.train`; batches `(images, ...)` in
    [-1, 1]. Negatives are the other images of the process's batch."""

    def __init__(self, augmentation: nn.Module, temperature: float = 0.2):
        _check_temperature("temperature", temperature)
        self.augmentation = augmentation
        self.temperature = temperature

    def __call__(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        images = batch[0]
        if images.shape[0] < 2:
            raise ValueError(f"SimCLR needs at least 2 images per batch (the negatives), got {images.shape[0]}")
        z = model(torch.cat([self.augmentation(images), self.augmentation(images)]))
        z1, z2 = z.chunk(2)
        return nt_xent_loss(z1, z2, self.temperature)


# ------------------------------------------------------------------------------------------------------------------
# Training entry point
# ------------------------------------------------------------------------------------------------------------------


def _keyword_names(function) -> set:
    return {name for name in inspect.signature(function).parameters if name not in ("self", "encoder", "augmentation")}


_ROUTED_ELSEWHERE = {"image_size", "num_channels", "local_augmentation", "total_steps", "update_every"}


def _split_objective_kwargs(method: str, kwargs: dict) -> tuple[dict, dict, dict]:
    """Route `objective_kwargs` to the augmentation, the model and the loss by their parameter names."""
    model_class, loss_class = (DINOModel, DINOLoss) if method == "dino" else (SimCLRModel, SimCLRLoss)
    extra_augmentation = {"local_crop_scale"} if method == "dino" else set()
    groups = (
        _keyword_names(build_augmentation) - _ROUTED_ELSEWHERE | extra_augmentation,
        _keyword_names(model_class),
        _keyword_names(loss_class) - _ROUTED_ELSEWHERE,
    )
    unknown = set(kwargs) - set().union(*groups)
    if unknown:
        known = sorted(set().union(*groups))
        raise ValueError(f"unknown {method} option(s) {sorted(unknown)}; expected some of {known}")
    return tuple({k: v for k, v in kwargs.items() if k in group} for group in groups)


@global_random_states_kept()
def train_contrastive_encoder(
    args: TrainingArguments,
    images: torch.Tensor,
    encoder: nn.Module,
    method: str = "simclr",
    return_teacher: bool = True,
    **objective_kwargs,
) -> nn.Module:
    """Train `encoder` (a transformers ViT, e.g. `build_vit_encoder`) on unlabeled images `[N, C, H, W]` in [-1, 1]
    with `method` "dino" or "simclr", through `training.train` (accelerate, AdamW + schedule, EMA, checkpoints).

    `objective_kwargs` go by name to `build_augmentation` (strength, crop_scale, flip_p, blur_p; for DINO also
    `local_crop_scale`, default (0.05, 0.25)), to the model (`DINOModel`: out_dim, hidden_dim, bottleneck_dim, use_bn,
    readout, preprocessing; `SimCLRModel`: projection_dim, hidden_dim, readout, preprocessing: how r is read out and
    how a pretrained encoder's input is prepared, `encode_representation`) and to the loss (`DINOLoss`:
    student_temperature, teacher_temperature, num_local_views, teacher_momentum, freeze_last_layer_steps, ...;
    `SimCLRLoss`: temperature). The heads are seeded
    with `args.seed`. For DINO, `return_teacher` returns the teacher's encoder (as the DINO paper evaluates) instead
    of the student's, and every checkpoint measures how much the teacher's targets depend on the image
    (`dino_target_diagnostics`, in `monitor_history.json`), with a warning when they stop doing so. Returns the
    trained encoder in eval mode, ready for `encode_representation` with the readout trained, which its config records
    as `representation_readout` (saved in `config.json` by `save_pretrained`).
    """
    if method not in METHODS:
        raise ValueError(f"expected a contrastive method in {METHODS}, got {method!r}")
    config = encoder.config
    channels = images.shape[1] if objective_kwargs.get("preprocessing") else config.num_channels  # made RGB by it
    if images.ndim != 4 or images.shape[1] != channels or channels not in (1, 3):
        raise ValueError(f"expected training images [N, {channels}, H, W] for the encoder, got {tuple(images.shape)}")
    check_finite_rows(images, "training data", item="image")
    check_unit_range(images, "training data")
    augmentation_kwargs, model_kwargs, loss_kwargs = _split_objective_kwargs(method, objective_kwargs)
    local_crop_scale = augmentation_kwargs.pop("local_crop_scale", (0.05, 0.25))
    # views at the encoder's input size; with a pretrained encoder's preprocessing, at the images' (it resizes them)
    size = images.shape[-1] if objective_kwargs.get("preprocessing") else config.image_size
    augmentation = build_augmentation(size, channels, **augmentation_kwargs)
    torch.manual_seed(args.seed)
    if method == "simclr":
        model, loss = SimCLRModel(encoder, **model_kwargs), SimCLRLoss(augmentation, **loss_kwargs)
    else:
        local = build_augmentation(size, channels, **dict(augmentation_kwargs, crop_scale=local_crop_scale))
        model = DINOModel(encoder, **model_kwargs)
        total = total_optimizer_steps(args, len(images), PartialState().num_processes)
        accumulation = args.gradient_accumulation_steps
        loss = DINOLoss(augmentation, local, total_steps=total, update_every=accumulation, **loss_kwargs)
    monitor = dino_monitor(images, loss) if method == "dino" else None
    model, _, _ = train(args, model, TensorDataset(images), loss, monitor=monitor)
    trained = model.teacher_encoder if method == "dino" and return_teacher else model.encoder
    # saved with it (`save_pretrained`): how r was read out in training; a token readout leaves the pooler untrained
    trained.config.representation_readout = model.readout
    return trained.requires_grad_(True).eval()

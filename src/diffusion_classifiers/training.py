"""The one accelerate training loop shared by every trainer in `examples/`.

A trainer supplies a model, a dataset and a loss; this module owns the rest: distributed data loading,
AdamW with a warmup + cosine schedule, gradient accumulation, mixed precision, EMA (diffusers `EMAModel`),
`checkpoint-N` folders with `--resume_from_checkpoint latest`, and a tqdm bar on the main process.
"""

import argparse
import json
import logging
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingArguments:
    """Training flags, named as in diffusers' example scripts."""

    output_dir: str
    train_batch_size: int = 64
    max_train_steps: Optional[int] = 1000
    num_epochs: Optional[int] = None
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    use_ema: bool = False
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = None
    resume_from_checkpoint: Optional[str] = None
    seed: int = 0
    report_to: Optional[str] = None
    dataloader_num_workers: int = 0

    def __post_init__(self):
        checks = {
            "train_batch_size": self.train_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "learning_rate": self.learning_rate > 0,
            "checkpointing_steps": self.checkpointing_steps >= 1,
            "max_train_steps": self.max_train_steps is None or self.max_train_steps >= 1,
            "num_epochs": self.num_epochs is None or self.num_epochs >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"expected a positive `{name}`, got {getattr(self, name)!r}")
        if self.max_train_steps is None and self.num_epochs is None:
            raise ValueError("expected `max_train_steps` or `num_epochs`, got neither")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"expected `mixed_precision` in no/fp16/bf16, got {self.mixed_precision!r}")


def _flag_type(annotation) -> type:
    for caster in (bool, int, float):
        if annotation is caster or annotation == Optional[caster]:
            return caster
    return str


def add_training_args(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    """Add every `TrainingArguments` field as a `--flag`; `defaults` overrides the dataclass defaults."""
    for field in fields(TrainingArguments):
        flag, kind = f"--{field.name}", _flag_type(field.type)
        if field.name == "output_dir" and "output_dir" not in defaults:
            parser.add_argument(flag, type=str, required=True)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=defaults.get(field.name, field.default))
        else:
            parser.add_argument(flag, type=kind, default=defaults.get(field.name, field.default))
    return parser


def training_args_from_namespace(namespace: argparse.Namespace) -> TrainingArguments:
    names = {field.name for field in fields(TrainingArguments)}
    return TrainingArguments(**{k: v for k, v in vars(namespace).items() if k in names})


def find_latest_checkpoint(output_dir: str) -> Optional[str]:
    """The `checkpoint-N` folder with the largest N, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = [int(m.group(1)) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def _resolve_resume_path(args: TrainingArguments) -> Optional[str]:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        return find_latest_checkpoint(args.output_dir)  # nothing saved yet: a fresh start
    path = args.resume_from_checkpoint
    if not os.path.isdir(path):
        path = os.path.join(args.output_dir, path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder {args.resume_from_checkpoint!r}")
    return path


def _save_checkpoint(accelerator: Accelerator, args: TrainingArguments, step: int) -> None:
    """Write `checkpoint-step` through a temporary folder so an interrupted save never leaves a half checkpoint;
    only then prune the oldest ones beyond `checkpoints_total_limit`."""
    final = os.path.join(args.output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    accelerator.save_state(partial)
    if not accelerator.is_main_process:
        return
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(partial, final)
    if args.checkpoints_total_limit is not None:
        steps = sorted(int(m.group(1)) for n in os.listdir(args.output_dir) if (m := CHECKPOINT_PATTERN.match(n)))
        for old in steps[: max(0, len(steps) - args.checkpoints_total_limit)]:
            shutil.rmtree(os.path.join(args.output_dir, f"checkpoint-{old}"))


def check_world_size(accelerator: Accelerator) -> None:
    """`accelerate launch --cpu --num_processes 2` silently runs one process; fail instead of training alone."""
    expected = int(os.environ.get("WORLD_SIZE", accelerator.num_processes))
    if expected != accelerator.num_processes:
        raise RuntimeError(
            f"WORLD_SIZE={expected} but accelerate runs {accelerator.num_processes} process(es); on a CPU machine "
            "use ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N"
        )


@dataclass
class TrainingSummary:
    global_step: int
    resumed_from_step: int
    num_processes: int
    samples_per_process: list
    final_loss: float

    def save(self, output_dir: str) -> None:
        with open(os.path.join(output_dir, "training_summary.json"), "w") as f:
            json.dump(asdict(self), f, indent=2)


def optimizer_steps_per_epoch(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    batches = math.ceil(num_examples / (args.train_batch_size * num_processes))
    return math.ceil(batches / args.gradient_accumulation_steps)


def total_optimizer_steps(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    """The optimizer steps `train` makes: `max_train_steps`, else `num_epochs` epochs of `num_examples`."""
    return args.max_train_steps or args.num_epochs * optimizer_steps_per_epoch(args, num_examples, num_processes)


LossFunction = Callable[[nn.Module, tuple], torch.Tensor]


def train(
    args: TrainingArguments,
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFunction,
    sampler: Optional[torch.utils.data.Sampler] = None,
) -> tuple[nn.Module, Accelerator, TrainingSummary]:
    """Train `model` on `dataset` minimising `loss_fn(model, batch)`; `sampler` replaces uniform shuffling.

    Returns the unwrapped model (EMA weights copied in when `use_ema`), the accelerator, and a summary that
    records how many samples each process saw. Only the main process should save the returned model.
    """
    if len(dataset) == 0:
        raise ValueError("expected a non-empty training dataset, got 0 examples")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
    )
    check_world_size(accelerator)
    set_seed(args.seed, device_specific=True)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    dataloader = DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) >= args.train_batch_size * accelerator.num_processes,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    updates_per_epoch = optimizer_steps_per_epoch(args, len(dataset), accelerator.num_processes)
    max_train_steps = total_optimizer_steps(args, len(dataset), accelerator.num_processes)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    ema = None
    if args.use_ema:
        ema = EMAModel(
            accelerator.unwrap_model(model).parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    global_step = 0
    resume_path = _resolve_resume_path(args)
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(resume_path)
        global_step = int(CHECKPOINT_PATTERN.match(os.path.basename(resume_path)).group(1))
    resumed_from_step = global_step

    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers("diffusion-classifiers", config=asdict(args))

    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="train")
    samples_seen = torch.zeros((), dtype=torch.long, device=accelerator.device)
    loss_value = float("nan")
    batches_to_skip = (global_step * args.gradient_accumulation_steps) % max(len(dataloader), 1)
    epoch = global_step // max(updates_per_epoch, 1)
    model.train()
    while global_step < max_train_steps:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(dataloader, batches_to_skip) if batches_to_skip else dataloader
        batches_to_skip = 0
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at step {global_step}; lower --learning_rate")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            samples_seen += batch[0].shape[0]
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
            global_step += 1
            loss_value = loss.detach().item()
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            if args.report_to:
                accelerator.log({"train_loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
                _save_checkpoint(accelerator, args, global_step)
            if global_step >= max_train_steps:
                break
        epoch += 1
    progress.close()

    samples_per_process = accelerator.gather(samples_seen.reshape(1)).tolist()
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(trained.parameters())
    trained.eval()
    accelerator.end_training()
    summary = TrainingSummary(global_step, resumed_from_step, accelerator.num_processes, samples_per_process, loss_value)
    if accelerator.is_main_process:
        summary.save(args.output_dir)
    return trained, accelerator, summary


class DenoisingLoss:
    """DDPM epsilon-prediction loss, the objective every U-Net trainer minimises.

    Batches are `(images,)` or `(images, labels)`. With `conditional=True` the labels go to the model as
    `class_labels`; `label_dropout > 0` replaces that fraction of labels by `null_class` so the same model
    also learns the unconditional score.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler,
        conditional: bool = False,
        label_dropout: float = 0.0,
        null_class: Optional[int] = None,
    ):
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"expected an epsilon-prediction scheduler, got {scheduler.config.prediction_type!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"expected label_dropout in [0, 1), got {label_dropout}")
        if label_dropout > 0 and (not conditional or null_class is None):
            raise ValueError("label_dropout > 0 needs conditional=True and a `null_class` id")
        self.scheduler = scheduler
        self.conditional = conditional
        self.label_dropout = label_dropout
        self.null_class = null_class

    def __call__(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        images = self.clean_sample(batch)
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (images.shape[0],), device=images.device)
        noisy = self.scheduler.add_noise(images, noise, timesteps)
        prediction = self.predict_noise(model, noisy, timesteps, batch)
        return nn.functional.mse_loss(prediction.float(), noise.float())

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


def train_ddpm_unet(
    args: TrainingArguments,
    images: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    preset: str = "small",
    num_train_timesteps: int = 1000,
    label_dropout: float = 0.0,
    num_classes: Optional[int] = None,
    class_balanced: bool = False,
) -> tuple[nn.Module, DDPMScheduler, TrainingSummary]:
    """Train a `UNet2DModel` (epsilon prediction, `DDPMScheduler` linear betas) on images in [-1, 1].

    Unconditional when `labels` is None; otherwise class-conditional through `num_class_embeds` (`num_classes`,
    default the largest label + 1, plus one null class when `label_dropout > 0`); `class_balanced` draws every
    class equally often. Returns the trained U-Net (EMA weights when `use_ema`).
    """
    from diffusers import UNet2DModel
    from torch.utils.data import TensorDataset

    from .models import unet_config

    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images [N, C, H, H], got shape {tuple(images.shape)}")
    sampler = None
    if labels is not None:
        num_classes = num_classes or int(labels.max()) + 1
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"expected training labels in 0..{num_classes - 1}, got {int(labels[i])} at index {i}")
        if class_balanced:
            sampler = class_balanced_sampler(labels, num_classes, args.seed)
    elif class_balanced:
        raise ValueError("class_balanced sampling needs labels")
    null_class = num_classes if label_dropout > 0 else None
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same model
    num_class_embeds = None if num_classes is None else num_classes + (label_dropout > 0)
    unet = UNet2DModel(**unet_config(preset, images.shape[-1], images.shape[1], num_class_embeds))
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    loss = DenoisingLoss(scheduler, conditional=labels is not None, label_dropout=label_dropout, null_class=null_class)
    dataset = TensorDataset(images) if labels is None else TensorDataset(images, labels)
    unet, _, summary = train(args, unet, dataset, loss, sampler=sampler)
    return unet, scheduler, summary


def class_balanced_sampler(labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.utils.data.Sampler:
    """Draw (with replacement) every class equally often: weight 1 / count(label) per example."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    return torch.utils.data.WeightedRandomSampler(
        1.0 / counts[labels], num_samples=len(labels), replacement=True, generator=torch.Generator().manual_seed(seed)
    )

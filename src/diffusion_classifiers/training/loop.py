"""The one accelerate training loop shared by every trainer in `examples/`.

A trainer supplies a model, a dataset and a loss; this module owns the rest: distributed data loading,
AdamW with a warmup + cosine schedule, gradient accumulation, mixed precision, EMA (diffusers `EMAModel`),
`checkpoint-N` folders with `--resume_from_checkpoint latest`, and a tqdm bar on the main process.
"""

import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .arguments import TrainingArguments

__all__ = [
    "LossFunction",
    "TrainingSummary",
    "check_world_size",
    "find_latest_checkpoint",
    "optimizer_steps_per_epoch",
    "total_optimizer_steps",
    "train",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
    """What a `train` call did, saved as `training_summary.json` in `output_dir`: the optimizer steps reached, the
    step it resumed from (0 for a fresh start), the processes, the samples each process saw, the last loss."""

    global_step: int
    resumed_from_step: int
    num_processes: int
    samples_per_process: list
    final_loss: float

    def save(self, output_dir: str) -> None:
        with open(os.path.join(output_dir, "training_summary.json"), "w") as f:
            json.dump(asdict(self), f, indent=2)


def optimizer_steps_per_epoch(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    """Optimizer steps in one epoch of `num_examples` split across `num_processes` (batches rounded up)."""
    batches = math.ceil(num_examples / (args.train_batch_size * num_processes))
    return math.ceil(batches / args.gradient_accumulation_steps)


def total_optimizer_steps(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    """The optimizer steps `train` makes: `max_train_steps`, else `num_epochs` epochs of `num_examples`."""
    return args.max_train_steps or args.num_epochs * optimizer_steps_per_epoch(args, num_examples, num_processes)


LossFunction = Callable[[nn.Module, tuple], torch.Tensor]  # loss_fn(model, batch) -> a scalar loss


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

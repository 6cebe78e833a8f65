"""The `checkpoint-N` folders of the training loop: written whole or not at all, checked before they are loaded.

A folder holds what `Accelerator.save_state` writes (the model as safetensors; the optimizer, the learning-rate
schedule and each process's random states, which `load_state` reads with `torch.load(weights_only=True)`) and the
EMA weights as `ema.safetensors` + `ema.json`, which this module writes and reads itself. Nothing in it is loaded
with an unrestricted pickle: a folder with any other file (e.g. a `custom_checkpoint_0.pkl`, which accelerate
would unpickle as it is) is refused before anything is read.
"""

import json
import os
import re
import shutil
from typing import Optional

from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from ..remote_code import make_weights_readable_as_umask_allows
from .arguments import TrainingArguments

__all__ = [
    "CHECKPOINT_PATTERN",
    "EMA_CONFIG_NAME",
    "EMA_WEIGHTS_NAME",
    "check_checkpoint_folder",
    "checkpoint_step",
    "find_latest_checkpoint",
    "load_ema",
    "resolve_resume_path",
    "save_checkpoint",
    "save_ema",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
EMA_WEIGHTS_NAME = "ema.safetensors"
EMA_CONFIG_NAME = "ema.json"
# What `Accelerator.save_state` writes for this loop's model, optimizer and schedule (plus the GradScaler of fp16).
ACCELERATE_STATE_FILES = re.compile(
    r"^(model(_\d+)?\.safetensors|optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin|random_states_\d+\.pkl|scaler\.pt)$"
)


def find_latest_checkpoint(output_dir: str) -> Optional[str]:
    """The `checkpoint-N` folder with the largest N, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = [int(m.group(1)) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def checkpoint_step(path: str) -> int:
    """N of a `checkpoint-N` folder."""
    match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
    if match is None:
        raise ValueError(f"expected a `checkpoint-N` folder to resume from, got {path!r}")
    return int(match.group(1))


def resolve_resume_path(args: TrainingArguments) -> Optional[str]:
    """The folder `--resume_from_checkpoint` names (a path, a name in `--output_dir`, or "latest"), or None."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        return find_latest_checkpoint(args.output_dir)  # nothing saved yet: a fresh start
    path = args.resume_from_checkpoint
    if not os.path.isdir(path):
        path = os.path.join(args.output_dir, path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder {args.resume_from_checkpoint!r}")
    checkpoint_step(path)
    return path


def check_checkpoint_folder(path: str, num_processes: int, use_ema: bool) -> None:
    """Refuse a checkpoint folder with a file this library never writes, or without one that resuming needs."""
    for name in sorted(os.listdir(path)):
        if not (ACCELERATE_STATE_FILES.match(name) or name in (EMA_WEIGHTS_NAME, EMA_CONFIG_NAME)):
            raise ValueError(
                f"checkpoint folder {path} contains {name!r}, which this library never writes; refusing to resume "
                "from it (accelerate would unpickle such a file, which can run arbitrary code)"
            )
    required = ["model.safetensors", "optimizer.bin", "scheduler.bin"]
    required += [f"random_states_{i}.pkl" for i in range(num_processes)]  # else accelerate silently keeps the RNG
    required += [EMA_WEIGHTS_NAME, EMA_CONFIG_NAME] if use_ema else []
    for name in required:
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(
                f"checkpoint folder {path} has no {name!r}, which resuming {num_processes} process(es)"
                f"{' with --use_ema' if use_ema else ''} needs"
            )


def save_ema(ema: EMAModel, parameter_names: list, folder: str) -> None:
    """The EMA's shadow weights as safetensors (keyed by parameter name), its step and decay settings as JSON."""
    state = ema.state_dict()
    shadow = zip(parameter_names, state.pop("shadow_params"))
    weights = {name: weight.detach().contiguous().cpu() for name, weight in shadow}
    save_file(weights, os.path.join(folder, EMA_WEIGHTS_NAME))
    with open(os.path.join(folder, EMA_CONFIG_NAME), "w") as f:
        json.dump(state, f, indent=2)


def load_ema(ema: EMAModel, parameter_names: list, folder: str) -> None:
    """Load what `save_ema` wrote into `ema` (safetensors and JSON only, no pickle); the weights stay on the CPU."""
    shadow = load_file(os.path.join(folder, EMA_WEIGHTS_NAME))
    if set(shadow) != set(parameter_names):
        missing, unexpected = sorted(set(parameter_names) - set(shadow)), sorted(set(shadow) - set(parameter_names))
        raise ValueError(
            f"{os.path.join(folder, EMA_WEIGHTS_NAME)} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    with open(os.path.join(folder, EMA_CONFIG_NAME)) as f:
        state = json.load(f)
    ema.load_state_dict({**state, "shadow_params": [shadow[name] for name in parameter_names]})


def save_checkpoint(
    accelerator: Accelerator,
    args: TrainingArguments,
    step: int,
    ema: Optional[EMAModel] = None,
    parameter_names: Optional[list] = None,
) -> None:
    """Write `checkpoint-step` through `checkpoint-step.partial`, renamed by the main process once every process has
    written its part, so an interrupted save never leaves a half checkpoint; then prune the oldest ones beyond
    `checkpoints_total_limit`. Every process calls this and returns when the checkpoint is complete."""
    final = os.path.join(args.output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    accelerator.save_state(partial)
    if ema is not None and accelerator.is_main_process:
        save_ema(ema, parameter_names, partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        make_weights_readable_as_umask_allows([partial])  # resumable by the other users of a shared folder
        if os.path.isdir(final):  # resumed from an earlier checkpoint: this step's is written again
            shutil.rmtree(final)
        os.replace(partial, final)
        _prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
    accelerator.wait_for_everyone()


def _prune_checkpoints(output_dir: str, limit: Optional[int]) -> None:
    if limit is None:
        return
    steps = sorted(int(m.group(1)) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name)))
    for old in steps[: max(0, len(steps) - limit)]:
        shutil.rmtree(os.path.join(output_dir, f"checkpoint-{old}"))

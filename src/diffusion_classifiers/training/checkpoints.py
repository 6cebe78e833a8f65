"""The `checkpoint-N` folders of the training loop: written whole or not at all, checked before they are loaded.

A folder holds what `Accelerator.save_state` writes (the model as safetensors; the optimizer, the learning-rate
schedule and each process's random states, which `load_state` reads with `torch.load(weights_only=True)`) and the
EMA weights as `ema.safetensors` + `ema.json`, which this module writes and reads itself. Nothing in it is loaded
with an unrestricted pickle: a folder with any other file (e.g. a `custom_checkpoint_0.pkl`, which accelerate
would unpickle as it is) is refused before anything is read.
"""

import json
import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch

from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from ..atomic_files import remove_entry
from ..remote_code import make_weights_readable_as_umask_allows
from ..validation import PICKLE_SUFFIXES
from .arguments import TrainingArguments
from .monitoring import LOSS_HISTORY_NAME, MONITOR_HISTORY_NAME
from .sampling import evenly_spaced_positions

__all__ = [
    "CHECKPOINT_PATTERN",
    "EMA_CONFIG_NAME",
    "EMA_WEIGHTS_NAME",
    "RUN_RECORD_NAME",
    "check_checkpoint_files",
    "check_checkpoint_folder",
    "check_resumed_by_as_many_processes",
    "check_resumed_with_the_same_settings",
    "check_resumed_within_the_run",
    "checkpoint_step",
    "data_identity",
    "find_latest_checkpoint",
    "load_ema",
    "reading_checkpoint",
    "resolve_resume_path",
    "run_record",
    "save_checkpoint",
    "save_ema",
    "training_settings",
    "warn_if_schedule_stretched",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
EMA_WEIGHTS_NAME = "ema.safetensors"
EMA_CONFIG_NAME = "ema.json"
RUN_RECORD_NAME = "training_run.json"  # what a resume must match (`run_record`)
V0_1_0_EMA_PICKLE = "custom_checkpoint_0.pkl"  # version 0.1.0's EMA: accelerate's register_for_checkpointing
JSON_RECORDS = (RUN_RECORD_NAME, LOSS_HISTORY_NAME, MONITOR_HISTORY_NAME)  # what `save_checkpoint` may add
# The flags a resume must keep (`training_settings`): the optimizer, schedule and EMA that `load_state` and `load_ema`
# restore over new values without a word, and the seed of the data order
RESUMED_SETTINGS = (
    "seed", "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay",
    "adam_epsilon", "use_ema", "max_grad_norm", "mixed_precision",
)  # fmt: skip
EMA_SETTINGS = ("ema_max_decay", "ema_inv_gamma", "ema_power")  # recorded with --use_ema only
MODEL_SETTINGS = ("encoder_learning_rate_scale",)  # attributes of a model (`RCDiTJointModel`) `build_optimizer` reads
# The record's entries as a person names them, in the order they are reported (then the model's config)
RUN_RECORD_LABELS = {
    "num_processes": "processes",
    "train_batch_size": "--train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    # a folder listed otherwise by this library too (upgrade QA: the refusal pointed at flags that had not changed)
    "num_examples": "training examples (--dataset; or the same folder listed otherwise: a checkpoint of a version "
    "before 2026-12-07 counted no image of a linked folder, and counted system folders such as @eaDir, which this "
    "version skips)",
    **{name: f"--{name}" for name in (*RESUMED_SETTINGS, *EMA_SETTINGS, *MODEL_SETTINGS)},
}
# What a damaged file raises when accelerate, safetensors or json reads it (a truncated zip, pickle or header)
UNDECODABLE = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError, json.JSONDecodeError)
READ_ERRORS = (*UNDECODABLE, OSError, RuntimeError)
SAMPLED_ITEMS = 64  # the items read to recognise a run's training data (`data_identity`)
IDENTITY_TOLERANCE = 1e-4  # of a sampled image's mean pixel value in [-1, 1]: another reading of it differs by ~1e-7
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


def _model_config(model: nn.Module) -> Optional[dict]:
    """The config a diffusers or transformers model was built from (public keys, as JSON would read them); for a
    module without one that holds such models (the RC-DiT's encoder and DiT, a contrastive encoder with its heads),
    theirs, flattened as `child.key`; None when there is none."""
    own = _config_of(model)
    if own is not None:
        return own
    children = {name: _config_of(child) for name, child in model.named_children()}
    flat = {f"{name}.{key}": value for name, config in children.items() if config for key, value in config.items()}
    return flat or None


def _config_of(model: nn.Module) -> Optional[dict]:
    config = getattr(model, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(config, dict):
        return None
    public = {key: value for key, value in config.items() if not key.startswith("_") and not key.endswith("_version")}
    return json.loads(json.dumps(public, default=str))


def run_record(
    args: TrainingArguments,
    num_processes: int,
    num_examples: int,
    model: nn.Module,
    dataset: Optional[Dataset] = None,
    objective: Optional[dict] = None,
    max_train_steps: Optional[int] = None,
) -> dict:
    """What a resume must match, saved with every checkpoint as `RUN_RECORD_NAME`: what defines the step arithmetic
    (the learning-rate schedule, which accelerate steps once per process per optimizer step; the epoch and batch a
    step falls in), the model's config, the training data (`data_identity` of `dataset`) and the trainer's
    `objective` (`{flag name: value}` of what changes the loss or the data order, `_objective_changes`); and the
    run's length in optimizer steps, `max_train_steps`, which a resume may change (`warn_if_schedule_stretched`)."""
    record = {
        "num_processes": num_processes,
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_examples": num_examples,
        **training_settings(args, model, objective),
        "model_config": _model_config(model),
    }
    if max_train_steps is not None:
        record["max_train_steps"] = max_train_steps
    identity = None if dataset is None else data_identity(dataset)
    return record if identity is None else {**record, "data_identity": identity}


def training_settings(
    args: TrainingArguments, model: Optional[nn.Module] = None, objective: Optional[dict] = None
) -> dict:
    """The flags a resume must keep, part of the `run_record`: the optimizer's, the schedule's and the EMA's, which
    the checkpoint's state would override, the seed of the data order, and the gradient clipping and mixed precision
    (with others the resumed run would not end with the weights of the uninterrupted one); with `model`, its
    `MODEL_SETTINGS`; with `objective`, the trainer's own flags as `"objective"`."""
    names = RESUMED_SETTINGS + (EMA_SETTINGS if args.use_ema else ())
    settings = {name: getattr(args, name) for name in names}
    model_settings = {name: getattr(model, name) for name in MODEL_SETTINGS if hasattr(model, name)}
    objective_settings = {} if objective is None else {"objective": json.loads(json.dumps(objective))}  # as read back
    return {**settings, **model_settings, **objective_settings}


def data_identity(dataset: Dataset) -> Optional[dict]:
    """What recognises a run's training data when it resumes (the same number of images from another pool, or the
    same files read through other DICOM windows, would otherwise train on silently): the mean pixel value and the
    label of `SAMPLED_ITEMS` evenly spaced items (a streamed dataset decodes those), compared within
    `IDENTITY_TOLERANCE` (`_data_changes`), so the same files read on another machine still match; and how a dataset
    with a `preprocessing` contract (`data.StreamingImages`) reads its files, which a refusal names. None for a
    dataset whose items change from one read to the next (a user's dataset that augments on read): nothing to
    recognise it by."""
    positions = evenly_spaced_positions(len(dataset), SAMPLED_ITEMS)
    items = [dataset[int(i)] for i in positions]
    if not all(isinstance(item, (tuple, list)) for item in items):  # not (image, ...) items: nothing known to read
        return None
    images = [torch.as_tensor(item[0]) for item in items]  # numpy arrays too
    if not torch.equal(torch.as_tensor(dataset[int(positions[0])][0]), images[0]):
        return None
    labels = [item[1] for item in items if len(item) > 1 and isinstance(item[1], (int, np.integer, torch.Tensor))]
    identity = {
        "image_means": [round(float(image.double().mean()), 7) for image in images],
        "labels": [int(label) for label in labels],
    }
    reading = getattr(dataset, "preprocessing", None)  # a streamed dataset's contract names how files are read
    return identity if reading is None else {**identity, "reading": reading.summary()}


def _setting_changes(saved: dict, record: dict) -> list:
    """The `RUN_RECORD_LABELS` entries and the `objective` flags recorded in both that differ (a checkpoint written
    before an entry was recorded is not refused for it)."""
    changes = [
        f"{label} {saved[key]} -> {record[key]}"
        for key, label in RUN_RECORD_LABELS.items()
        if key in saved and key in record and saved[key] != record[key]
    ]
    return changes + _objective_changes(saved.get("objective"), record.get("objective"))


def _objective_changes(saved: Optional[dict], now: Optional[dict]) -> list:
    """The trainer's flags (`run_record`'s `objective`) recorded in both that differ, each named as its `--flag`."""
    if not isinstance(saved, dict) or not isinstance(now, dict):
        return []
    return [f"--{name} {saved[name]} -> {now[name]}" for name in now if name in saved and saved[name] != now[name]]


def _record_changes(saved: dict, record: dict) -> list:
    changes = _setting_changes(saved, record)
    if saved.get("num_examples", record["num_examples"]) == record["num_examples"]:  # else that says it
        changes += _data_changes(saved.get("data_identity"), record.get("data_identity"))
    before, now = saved.get("model_config") or {}, record["model_config"] or {}
    # keys in both only: a library upgrade may add a key with its default (the tensors then decide)
    keys = sorted(key for key in before.keys() & now.keys() if before[key] != now[key])
    config = [f"{key} {before.get(key)} -> {now.get(key)}" for key in keys]
    return changes + ([f"the model's config ({', '.join(config)})"] if config else [])


def _data_changes(saved: Optional[dict], now: Optional[dict]) -> list:
    """How the training data differs from the checkpoint's (`data_identity`); nothing for a checkpoint written before
    it was recorded."""
    if saved is None or now is None:
        return []
    before, after = np.asarray(saved["image_means"]), np.asarray(now["image_means"])
    differ = saved["labels"] != now["labels"] or before.shape != after.shape
    differ = differ or bool(np.abs(before - after).max(initial=0.0) > IDENTITY_TOLERANCE)
    if not differ:
        return []
    if "reading" in saved and "reading" in now and saved["reading"] != now["reading"]:
        return [f"how the training images are read ({saved['reading']} -> {now['reading']})"]
    return [
        "the training images (other images, or the same read otherwise: --dataset, --window, --image_size, "
        "--resize_mode, --pad_value, --normalize_background, --transparency_fill, --bits_stored, or other splits "
        "carved by --seed, --val_fraction, --test_fraction; or by this library: since 2026-12-06 the 16-bit rows of a "
        "datasets source are scaled by their bit depth, as their PNG files are, not from 0..65535: a run started "
        "before on such rows cannot resume, start it afresh)"
    ]


def _model_changes(path: str, model: nn.Module) -> list:
    """How `model`'s tensors differ from those saved in `path`/model.safetensors (read from its header only)."""
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        return []  # refused as a file resuming needs
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as saved:
        saved_shapes = {name: list(saved.get_slice(name).get_shape()) for name in saved.keys()}
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    reshaped = [name for name, shape in shapes.items() if saved_shapes.get(name, shape) != shape]
    differences = [
        *(f"{name} {saved_shapes[name]} -> {shapes[name]}" for name in reshaped),
        *(f"{name} new" for name in sorted(set(shapes) - set(saved_shapes))),
        *(f"{name} gone" for name in sorted(set(saved_shapes) - set(shapes))),
    ]
    shown = ", ".join(differences[:3]) + (", ..." if len(differences) > 3 else "")
    return [f"the model's tensors ({len(differences)} differ: {shown})"] if differences else []


def check_checkpoint_folder(path: str, record: dict, model: nn.Module, use_ema: bool) -> None:
    """Refuse a checkpoint folder with a file this library never writes, one written by a run whose `run_record` or
    model differs from this one's (its schedule position, data order and weights hold only for those; a checkpoint
    written before the record was kept is checked on its model's tensors only), or one without a file that resuming
    needs."""
    _check_only_files_written_here(path)
    changes = []
    saved = _saved_record(path)
    if saved is not None:
        changes = _record_changes(saved, record)
    elif (written_by := _processes_that_wrote(path)) and written_by != record["num_processes"]:  # before the record
        changes = [f"{RUN_RECORD_LABELS['num_processes']} {written_by} -> {record['num_processes']}"]
    if not any(change.startswith("the model's config") for change in changes):  # else that says why tensors differ
        changes += _model_changes(path, model)
    if changes:
        raise _changed_run_error(path, changes)
    check_checkpoint_files(path, record["num_processes"], use_ema)


def _check_only_files_written_here(path: str) -> None:
    _check_not_of_v0_1_0(path)
    for name in sorted(os.listdir(path)):
        if not (ACCELERATE_STATE_FILES.match(name) or name in (EMA_WEIGHTS_NAME, EMA_CONFIG_NAME, *JSON_RECORDS)):
            raise ValueError(
                f"checkpoint folder {path} contains {name!r}, which this version never writes; refusing to resume "
                "from it (accelerate would unpickle such a file, which can run arbitrary code)"
            )


def _check_not_of_v0_1_0(path: str) -> None:
    """Refuse a checkpoint of version 0.1.0, which saved its EMA weights as accelerate's pickle of a registered
    object: said as such, with what to do (QA: "which this library never writes", or a missing `ema.safetensors` as
    of a folder copied in part)."""
    written = set(os.listdir(path))
    if V0_1_0_EMA_PICKLE in written and RUN_RECORD_NAME not in written:
        raise ValueError(
            f"checkpoint folder {path} was written by the first release of diffusion-classifiers (0.1.0 as first "
            f"published), which saved its EMA weights as the pickle {V0_1_0_EMA_PICKLE!r}; this code never unpickles "
            "it (that can run arbitrary code), so the run cannot be resumed: start a new run in another "
            "--output_dir. If that run finished, the model it saved beside its checkpoints still loads (features, "
            "probe, evaluate): --overwrite_output_dir would delete it"
        )


def check_checkpoint_files(path: str, num_processes: int, use_ema: bool) -> None:
    """Refuse checkpoint folder `path` when a file that resuming `num_processes` processes (with `use_ema`) needs is
    missing (a folder emptied, or copied in part) or its random states do not read whole. Needs neither the data nor
    the model (`check_run_can_start`)."""
    _check_not_of_v0_1_0(path)
    required = ["model.safetensors", "optimizer.bin", "scheduler.bin"]
    required += [f"random_states_{i}.pkl" for i in range(num_processes)]  # else accelerate silently keeps the RNG
    required += [EMA_WEIGHTS_NAME, EMA_CONFIG_NAME] if use_ema else []
    written_by = _processes_that_wrote(path)
    for name in required:
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(
                f"checkpoint folder {path} has no {name!r}, which resuming {num_processes} process(es)"
                f"{' with --use_ema' if use_ema else ''} needs"
                f"{f' (it was written by {written_by} process(es))' if written_by else ''}"
            )
    for i in range(num_processes):  # accelerate skips one it cannot read without a word: the RNG would not resume
        _read_whole(os.path.join(path, f"random_states_{i}.pkl"))


def _saved_record(path: str) -> Optional[dict]:
    """The `run_record` a checkpoint was written with, None for one written before it was kept. A record written
    before `use_ema` was recorded has it from the EMA files, which a run writes with it only."""
    if not os.path.isfile(os.path.join(path, RUN_RECORD_NAME)):
        return None
    with open(os.path.join(path, RUN_RECORD_NAME)) as f:
        saved = json.load(f)
    if isinstance(saved, dict):
        saved.setdefault("use_ema", os.path.isfile(os.path.join(path, EMA_WEIGHTS_NAME)))
    return saved


def _changed_run_error(path: str, changes: list) -> ValueError:
    return ValueError(
        f"cannot resume from {path}: this run differs from the one that wrote it in {'; '.join(changes)} "
        "(checkpoint -> now); resume with the settings it was written with, or, to train with other settings, start "
        "a new run (--overwrite_output_dir, or another --output_dir)"
    )


def check_resumed_with_the_same_settings(path: str, args: TrainingArguments, objective: Optional[dict] = None) -> None:
    """Refuse a resume with other `training_settings` (the trainer's `objective` included) than the checkpoint's (the
    optimizer, schedule and EMA states it restores would silently override them), before the data is read
    (`check_run_can_start`); `check_checkpoint_folder` checks the whole record once the model is built, and names
    what is wrong with a record it cannot read."""
    try:
        saved = _saved_record(path)
    except (OSError, ValueError):
        return
    changes = _setting_changes(saved, training_settings(args, objective=objective)) if isinstance(saved, dict) else []
    if changes:
        raise _changed_run_error(path, changes)


def check_resumed_by_as_many_processes(path: str, num_processes: int) -> None:
    """A checkpoint resumes only on the number of processes that wrote it (its schedule position and data order hold
    for those): its `training_run.json`'s, or for one written before that record, its random states' (one per
    process). Needs neither the data nor the model (`check_run_can_start`); `check_checkpoint_folder` checks the rest
    once the model is built, and names what is wrong with a record it cannot read."""
    written_by = None
    if os.path.isfile(os.path.join(path, RUN_RECORD_NAME)):
        try:
            with open(os.path.join(path, RUN_RECORD_NAME)) as f:
                written_by = json.load(f).get("num_processes")
        except (OSError, ValueError, AttributeError):
            return
    elif os.path.isdir(path):
        written_by = _processes_that_wrote(path)
    if isinstance(written_by, int) and written_by > 0 and written_by != num_processes:
        raise ValueError(
            f"cannot resume from {path}: it was written by {written_by} process(es), this run has {num_processes}; "
            f"resume with accelerate launch --num_processes {written_by} (its schedule position and data order hold "
            "for that many), or start a new run (--overwrite_output_dir, or another --output_dir)"
        )


# Schedules whose rate does not depend on the run's length (diffusers' `get_scheduler` names)
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup", "piecewise_constant")


def warn_if_schedule_stretched(path: str, max_train_steps: int, lr_scheduler: str) -> None:
    """Warn when the run resumed from checkpoint `path` was scheduled for another number of optimizer steps than this
    one's `max_train_steps` under a schedule that depends on it (QA: a cosine run of 150 steps resumed at step 150 for
    200 restarted at the 200-step cosine's rate without a word; the model matches neither run). Allowed, since
    training a finished run longer is what a resume with more steps asks for; said, so that it is not mistaken for
    the run continued as it was. Nothing for a checkpoint written before its run's length was recorded."""
    scheduled = (_saved_record(path) or {}).get("max_train_steps")
    if scheduled is None or scheduled == max_train_steps or lr_scheduler in LENGTH_FREE_SCHEDULES:
        return
    warnings.warn(
        f"resuming from {path}, written by a run of {scheduled} optimizer steps, for {max_train_steps} "
        f"(--max_train_steps or --num_epochs): the {lr_scheduler} learning-rate schedule continues as one of "
        f"{max_train_steps} steps from step {checkpoint_step(path)}, so its rate jumps there and the model will match "
        f"neither an uninterrupted {scheduled}-step run nor a {max_train_steps}-step one; resume with "
        f"--max_train_steps {scheduled} to continue the run as it was",
        UserWarning,
        stacklevel=2,
    )


def check_resumed_within_the_run(path: str, max_train_steps: int) -> None:
    """Refuse to resume from a checkpoint past the run's last step: no step would be made, and the model returned
    (and saved by the scripts) would be that of the checkpoint's later step, not of the `max_train_steps` asked for."""
    step = checkpoint_step(path)
    if step > max_train_steps:
        raise ValueError(
            f"cannot resume from {path}: its step {step} is past this run's {max_train_steps} steps "
            f"(--max_train_steps or --num_epochs), so the model of step {step} would be returned; resume with {step} "
            f"steps or more, or from a checkpoint-N with N <= {max_train_steps} "
            "(--resume_from_checkpoint checkpoint-N)"
        )


@contextmanager
def reading_checkpoint(path: str, output_dir: str) -> Iterator[None]:
    """Turn a failure to read checkpoint `path` that a damaged file explains (truncated or cut short: a node that
    crashed before its writes reached the disk) into a `ValueError` naming the folder, the file when one is found to
    be damaged, and the earlier checkpoint to resume from instead; other errors pass unchanged."""
    try:
        yield
    except READ_ERRORS as error:
        damaged = _damaged_file(path)
        if damaged is None and not isinstance(error, UNDECODABLE):
            raise
        raise ValueError(_damaged_checkpoint_message(path, damaged, error, output_dir)) from error


def _damaged_checkpoint_message(path: str, damaged: Optional[str], error: Exception, output_dir: str) -> str:
    first_sentence = " ".join(str(error).split()).split(". ")[0]  # torch's goes on with advice for its own API
    reason = f"{type(error).__name__}: {first_sentence}" if first_sentence else type(error).__name__
    what = f"its {damaged} is damaged or truncated" if damaged else "one of its files is damaged or truncated"
    if "Weights only load failed" in str(error):  # QA: a crafted optimizer.bin was called damaged
        found = _file_of_objects(path)
        file = f"its {found}" if found else "one of its files"
        what = f"{file} holds objects other than tensors (refused unread: unpickling them could run arbitrary code)"
    previous = _previous_checkpoint(path)
    if previous is None:
        instead = "start a new run (--overwrite_output_dir, or another --output_dir)"
    else:
        in_output_dir = os.path.abspath(os.path.dirname(previous)) == os.path.abspath(output_dir)
        instead = (
            f"resume from the checkpoint before it with --resume_from_checkpoint "
            f"{os.path.basename(previous) if in_output_dir else previous}"
        )
    return f"cannot resume from {path}: {what} ({reason}); {instead}"


def _file_of_objects(path: str) -> Optional[str]:
    """The first file of checkpoint folder `path` that torch reads only by unpickling objects other than tensors
    (refused by `weights_only=True`, which runs none of their code), or None."""
    for name in sorted(os.listdir(path)):
        if name.endswith(PICKLE_SUFFIXES) and os.path.isfile(os.path.join(path, name)):
            try:
                torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                return name
            except Exception:  # damaged otherwise: `_damaged_file` names those
                continue
    return None


def _damaged_file(path: str) -> Optional[str]:
    """The first file of checkpoint folder `path` that does not read whole, or None."""
    for name in sorted(name for name in os.listdir(path) if os.path.isfile(os.path.join(path, name))):
        try:
            _read_whole(os.path.join(path, name))
        except (*UNDECODABLE, UnicodeDecodeError):
            return name
        except OSError:  # unreadable whole (permissions): the error itself names it
            continue
    return None


def _read_whole(file: str) -> None:
    """Raise if `file` is empty, a safetensors file whose header or data is cut short, JSON that does not parse, or
    a `torch.save` zip archive (what accelerate writes) whose directory or checksums fail."""
    if os.path.getsize(file) == 0:
        raise EOFError("the file is empty")
    if file.endswith(".safetensors"):
        with safe_open(file, framework="pt") as weights:
            weights.keys()
    elif file.endswith(".json"):
        with open(file) as f:
            json.load(f)
    else:
        with zipfile.ZipFile(file) as archive:
            failing = archive.testzip()
        if failing is not None:
            raise EOFError(f"its {failing} fails its CRC check")


def _previous_checkpoint(path: str) -> Optional[str]:
    """The `checkpoint-M` folder beside `path` with the largest M below its N, or None."""
    folder, step = os.path.dirname(os.path.normpath(path)), checkpoint_step(path)
    earlier = [int(m.group(1)) for name in os.listdir(folder) if (m := CHECKPOINT_PATTERN.match(name))]
    earlier = [m for m in earlier if m < step]
    return os.path.join(folder, f"checkpoint-{max(earlier)}") if earlier else None


def _processes_that_wrote(path: str) -> int:
    """The number of processes that wrote a checkpoint: accelerate saves one random state per process."""
    return len([name for name in os.listdir(path) if re.match(r"^random_states_\d+\.pkl$", name)])


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
    records: Optional[dict] = None,
) -> None:
    """Write `checkpoint-step` through `checkpoint-step.partial`, renamed by the main process once every process has
    written its part, so an interrupted save never leaves a half checkpoint; then prune the oldest ones beyond
    `checkpoints_total_limit`. `records` (`{name: value}`, names of `JSON_RECORDS`: the `run_record`, the loss and
    monitor histories up to `step`) are saved in it as JSON, so that they are there whenever it is. Every process
    calls this and returns when the checkpoint is complete."""
    final = os.path.join(args.output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    accelerator.save_state(partial)
    if ema is not None and accelerator.is_main_process:
        save_ema(ema, parameter_names, partial)
    for name, value in (records or {}).items() if accelerator.is_main_process else ():
        if name not in JSON_RECORDS:
            raise ValueError(f"expected a checkpoint record named one of {list(JSON_RECORDS)}, got {name!r}")
        with open(os.path.join(partial, name), "w") as f:
            json.dump(value, f)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        make_weights_readable_as_umask_allows([partial])  # resumable by the other users of a shared folder
        if os.path.isdir(final):  # resumed from an earlier checkpoint: this step's is written again
            _remove_checkpoint(final)
        os.replace(partial, final)
        _prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
    accelerator.wait_for_everyone()


def _prune_checkpoints(output_dir: str, limit: Optional[int]) -> None:
    if limit is None:
        return
    steps = sorted(int(m.group(1)) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name)))
    for old in steps[: max(0, len(steps) - limit)]:
        _remove_checkpoint(os.path.join(output_dir, f"checkpoint-{old}"))


def _remove_checkpoint(path: str) -> None:
    """Delete checkpoint folder `path` under its `.partial` name: a process killed while deleting it (a scheduler's
    SIGKILL after its grace period) leaves a folder the next run removes, never a `checkpoint-N` missing some files. A
    symbolic link (to an archived run's checkpoint) is removed, not what it points to."""
    os.replace(path, path + ".partial")
    remove_entry(path + ".partial")

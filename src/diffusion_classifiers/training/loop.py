"""The one accelerate training loop shared by every trainer in `examples/`.

A trainer supplies a model, a dataset and a loss; this module owns the rest: distributed data loading in an order
that is a function of (seed, epoch), AdamW with a warmup + cosine schedule, gradient accumulation, mixed precision,
EMA (diffusers `EMAModel`), `checkpoint-N` folders with `--resume_from_checkpoint latest` (a resumed run ends with
the weights of the uninterrupted one, bit for bit), one run per `--output_dir`, a tqdm bar on the main process, and
at every checkpoint (the last step included) the loss curve and the trainer's sample grid (`monitoring.py`).

Hardware speed: on CUDA the loop turns on what makes a step faster without changing what is learned beyond rounding:
TF32 matmuls while it trains (`--allow_tf32`), channels-last weights for convolutional models (`--channels_last`),
fused AdamW and multi-tensor (foreach) EMA updates; bf16 autocast is `--mixed_precision bf16` (or accelerate
launch's, when the flag is not given: `launch.resolve_mixed_precision`), compilation
`--torch_compile` (`--torch_compile_mode`; in the modes that replay CUDA graphs every step starts a graph iteration
and the returned model is no longer compiled). diffusers' attention already runs PyTorch's SDPA (`AttnProcessor2_0`).
On CPU each of these measured no faster (`benchmarks/training_speed.py`), so the CPU path is the plain one.
`--max_train_minutes` stops a run cleanly when its wall-clock budget runs out: a final checkpoint, the loss files and
the model, as at the last step; the learning-rate schedule is fitted to the budget (`time_budget.py`). SIGTERM (a
scheduler's time limit or preemption) and Ctrl-C stop it the same way (`stop_signal.py`).
"""

import atexit
import copy
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from tqdm.auto import tqdm

from ..provenance import run_environment
from ..atomic_files import write_json_atomically
from ..progress_bars import bar_visibility
from ..validation import check_seed, typed_command
from ..run_lock import claim_on_main_process
from .arguments import TrainingArguments
from .checkpoints import (
    RUN_RECORD_NAME,
    check_checkpoint_files,
    check_checkpoint_folder,
    check_resumed_by_as_many_processes,
    check_resumed_with_the_same_settings,
    check_resumed_within_the_run,
    checkpoint_step,
    find_latest_checkpoint,
    load_ema,
    reading_checkpoint,
    resolve_resume_path,
    run_record,
    warn_if_schedule_stretched,
    save_checkpoint,
)
from .launch import (
    LAUNCHER_PRECISION_VARIABLE,
    check_world_size,
    launcher_mixed_precision,
    precision_override_warning,
    resolve_mixed_precision,
)
from .monitoring import (
    LOSS_HISTORY_NAME,
    MONITOR_HISTORY_NAME,
    LossHistory,
    MonitorFunction,
    MonitorHistory,
    SampleGridFunction,
    global_random_states_kept,
    remove_samples_after,
    write_sample_grid,
)
from .output_dir import (
    REPLACED_CHECKPOINTS,
    OutputDirLock,
    check_output_dir,
    check_output_dir_writable,
    refuse_another_runs_output_dir,
    set_aside_checkpoints_after,
    settle_replaced_checkpoints,
)
from .sampling import EpochSeededSampler
from .stop_signal import StopSignal
from .time_budget import ScheduleOnTheClock, TrainingBudget, restore_step_rates

__all__ = [
    "LossFunction",
    "TrainingSummary",
    "build_optimizer",
    "check_run_can_start",
    "cuda_math",
    "find_latest_checkpoint",
    "optimizer_steps_per_epoch",
    "prepare_model_for_speed",
    "total_optimizer_steps",
    "train",
    "uses_channels_last",
]


@dataclass
class TrainingSummary:
    """What a `train` call did, saved as `training_summary.json` in `output_dir`: the optimizer steps reached, the
    step it resumed from (0 for a fresh start), the processes, the samples each process saw in this call (since
    `resumed_from_step`: QA read a resumed run's as the whole run's), the loss of the last step (of the run resumed
    when no step was left to make; None when it is not known), whether `--max_train_minutes` ran out before
    `max_train_steps`, the signal that stopped it before (SIGTERM, SIGINT; None), the run's length in optimizer steps
    (`max_train_steps`, which the learning-rate schedule spans) and the images of one optimizer step over all
    processes (`effective_batch_size`: `train_batch_size` x processes x `gradient_accumulation_steps`, nominal: a step
    at the end of an epoch, or of a data set smaller than one such batch, holds fewer); and what ran it, the
    process's command line (`process_command`: the training script and its flags), every training argument as it
    was resolved, defaults included (`arguments`: QA, only the flags typed were kept beside the model, the rest in
    checkpoints that pruning deletes), the packages' `versions` and the UTC date it ended (`date_utc`:
    `provenance.run_environment`)."""

    global_step: int
    resumed_from_step: int
    num_processes: int
    samples_per_process: list
    final_loss: Optional[float]
    stopped_by_time_budget: bool = False
    stopped_by_signal: Optional[str] = None
    max_train_steps: Optional[int] = None
    effective_batch_size: Optional[int] = None
    process_command: Optional[str] = None
    arguments: Optional[dict] = None
    versions: Optional[dict] = None
    date_utc: Optional[str] = None

    def save(self, output_dir: str) -> None:
        path = os.path.join(output_dir, "training_summary.json")
        write_json_atomically(path, asdict(self), indent=2, allow_nan=False)  # strict JSON


def _resolved_arguments(args: TrainingArguments) -> dict:
    """Every field of `args` as strict JSON: numbers, strings, booleans, None and lists of them as they are; anything
    else (a non-finite number, an object) as its text."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
            return value
        return str(value)

    return plain(asdict(args))


def _batches_per_epoch(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    """Batches each process loads in one epoch: the loader drops the last partial round of `train_batch_size *
    num_processes` examples, unless there is no full round (then one batch, which accelerate completes from the
    start of the epoch)."""
    return max(1, num_examples // (args.train_batch_size * num_processes))


def optimizer_steps_per_epoch(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    """Optimizer steps in one epoch of `num_examples` split across `num_processes`: one every
    `gradient_accumulation_steps` batches, and one at the epoch's last batch (accelerate syncs at the loader's end)."""
    return math.ceil(_batches_per_epoch(args, num_examples, num_processes) / args.gradient_accumulation_steps)


def total_optimizer_steps(args: TrainingArguments, num_examples: int, num_processes: int) -> int:
    """The optimizer steps `train` makes: `max_train_steps`, else `num_epochs` epochs of `num_examples` (the arguments
    hold one of the two)."""
    if args.max_train_steps is not None:
        return args.max_train_steps
    return args.num_epochs * optimizer_steps_per_epoch(args, num_examples, num_processes)


LossFunction = Callable[[nn.Module, tuple], torch.Tensor]  # loss_fn(model, batch) -> a scalar loss


@global_random_states_kept()
def train(
    args: TrainingArguments,
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFunction,
    sampler: Optional[Sampler] = None,
    sample_grid: Optional[SampleGridFunction] = None,
    monitor: Optional[MonitorFunction] = None,
    objective: Optional[dict] = None,
) -> tuple[nn.Module, Accelerator, TrainingSummary]:
    """Train `model` on `dataset` minimising `loss_fn(model, batch)`.

    At every checkpoint (and so at the last step) the main process writes `loss_history.json` / `.csv` and
    `loss_curve.png` into `output_dir` and, given `sample_grid`, `samples/step_<N>.png`: the grid
    `sample_grid(model)` returns for the model of that step (its EMA weights with `use_ema`; see
    `monitoring.write_sample_grid`); given `monitor`, what `monitor(model)` measures on that model (a dict of
    numbers) goes to `monitor_history.json` and to the trackers of `--report_to`.

    `sampler` replaces uniform shuffling; its order must be a function of the epoch, so that a resumed run replays
    it: a sampler with `set_epoch(epoch)`, or one drawing from a `torch.Generator` in its `generator` attribute (it
    is then wrapped in an `EpochSeededSampler` seeded with `args.seed`).

    `objective` (`{flag name: value}`) is what the trainer's own flags make of the loss and the data order (a label
    dropout, class-balanced sampling, the number of diffusion steps): it goes into the run record, so a resume with
    another value is refused naming the flag.

    Returns the unwrapped model (EMA weights copied in when `use_ema`), the accelerator, and a summary that
    records how many samples each process saw. Only the main process should save the returned model.
    """
    if len(dataset) == 0:
        raise ValueError("expected a non-empty training dataset, got 0 examples")
    check_output_dir_writable(args.output_dir)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=torch.Generator())
    if not hasattr(sampler, "set_epoch"):
        sampler = EpochSeededSampler(sampler, args.seed)
    budget, stop_signal = TrainingBudget(args.max_train_minutes), StopSignal()
    requested = args.mixed_precision  # None: the launcher's
    args = _with_mixed_precision(args, resolve_mixed_precision(requested))
    allow_mixed_precision(args.mixed_precision)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
    )
    check_world_size(accelerator)
    _check_precision_runs_here(args.mixed_precision, accelerator.device, requested)
    if accelerator.is_main_process and (override := precision_override_warning(requested)):
        warnings.warn(override, UserWarning, stacklevel=2)
    args.mixed_precision = accelerator.mixed_precision  # the precision it trains in: the run record's, the trackers'
    with _claim_output_dir(accelerator, args) as outcome, cuda_math(args, accelerator.device), stop_signal.listening():
        stop_conditions = (budget, stop_signal)
        trained = _train(
            accelerator, args, model, dataset, loss_fn, sampler, sample_grid, monitor, stop_conditions, objective,
            requested,
        )
        outcome["ended"] = trained[2].stopped_by_signal is None  # a run SIGTERM or Ctrl-C stopped goes on when resumed
        return trained


def check_run_can_start(args: TrainingArguments, objective: Optional[dict] = None) -> None:
    """The refusals of `train` that need neither the data nor the model, without its changes to `output_dir`: a
    launch that runs another number of processes than it was asked for, a folder holding another run, a
    `--resume_from_checkpoint` folder that is not there, lacks a file resuming needs, is past `--max_train_steps`, or
    was written by another number of processes or with other optimizer, schedule, EMA, seed, clipping or precision
    flags or another `objective` (the trainer's own flags, as `train` takes them), fp16 on a CPU, an `--output_dir`
    that is a file.
    The scripts call it before they read their data (`--streaming` reads every image first), so a wrong flag is
    refused in seconds, each a `ValueError` or `FileNotFoundError`/`FileExistsError` (one line from a shell); `train`
    checks again, with the folder locked."""
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_world_size(state)
    requested = args.mixed_precision  # None: the launcher's
    args = _with_mixed_precision(args, resolve_mixed_precision(requested))
    _check_precision_runs_here(args.mixed_precision, state.device, requested)
    check_output_dir_writable(args.output_dir)
    if os.path.isdir(os.path.join(args.output_dir, REPLACED_CHECKPOINTS)):
        return  # a replacing run killed before it settled them: `train` moves them back first, then decides
    if os.path.isdir(args.output_dir):
        if state.num_processes == 1:  # (the first of several processes may hold the lock already: `train` checks)
            OutputDirLock(args.output_dir).refuse_if_held()  # QA: a live run's folder was called an earlier run's
        refuse_another_runs_output_dir(args.output_dir, args.resume_from_checkpoint is not None, args.overwrite_output_dir)
    resume_path = resolve_resume_path(args)
    if resume_path is not None:
        check_resumed_by_as_many_processes(resume_path, state.num_processes)
        with _naming_the_launchers_precision(requested):
            check_resumed_with_the_same_settings(resume_path, args, objective)
        if args.max_train_steps is not None:  # else the data sets the length
            check_resumed_within_the_run(resume_path, args.max_train_steps)
        with reading_checkpoint(resume_path, args.output_dir):
            check_checkpoint_files(resume_path, state.num_processes, args.use_ema)


def _with_mixed_precision(args: TrainingArguments, mixed_precision: str) -> TrainingArguments:
    """A copy of `args` (the caller's are left as they are) with `mixed_precision` resolved (`resolve_mixed_precision`):
    what the checks, the run record and the trackers see."""
    resolved = copy.copy(args)  # not `dataclasses.replace`, which would check (and warn about) every flag again
    resolved.mixed_precision = mixed_precision
    return resolved


def _check_precision_runs_here(
    mixed_precision: str, device: torch.device, requested: Optional[str] = None
) -> None:
    """accelerate runs `fp16` on a CPU in float32 without a word: the run would not be the one asked for.
    `requested` is the script's `--mixed_precision`; when it is None the fp16 is the launcher's, which the refusal
    names."""
    if mixed_precision != "fp16" or device.type != "cpu":
        return
    if requested is None:
        raise ValueError(
            f"accelerate launch's mixed precision fp16 ({LAUNCHER_PRECISION_VARIABLE}, from its --mixed_precision or "
            "accelerate config) needs a GPU: on this CPU accelerate would train in float32 instead; launch with "
            "--mixed_precision bf16 (autocast on CPU too) or no, or pass the script's --mixed_precision, which "
            "overrides the launcher's"
        )
    raise ValueError(
        "--mixed_precision fp16 needs a GPU: on this CPU accelerate would train in float32 instead; pass bf16 "
        "(autocast on CPU too) or no"
    )


@contextmanager
def _naming_the_launchers_precision(requested: Optional[str]) -> Iterator[None]:
    """A resume refused for another mixed precision when the script's `--mixed_precision` was not given (so the
    precision is the launcher's, or "no"): the refusal says where this run's came from and how to resume in the
    checkpoint's."""
    try:
        yield
    except ValueError as error:
        if requested is None and "--mixed_precision " in str(error):
            launcher = launcher_mixed_precision()
            source = f"accelerate launch's ({LAUNCHER_PRECISION_VARIABLE}={launcher})" if launcher else '"no"'
            raise ValueError(
                f"{error}; this run's mixed precision is {source}, as the script's --mixed_precision was not given: "
                "pass the checkpoint's (the script's --mixed_precision overrides the launcher's) to resume"
            ) from error
        raise


def allow_mixed_precision(mixed_precision: str) -> None:
    """accelerate keeps one `AcceleratorState` per process and refuses an `Accelerator` of another mixed precision; a
    process that trains several models one after the other (a benchmark's DDPM in bf16, then its CNN in fp32; a
    notebook) gets the one it asks for. Only the mixed-precision state is reset, as accelerate's own tests do: the
    process group (`PartialState`) is kept."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()


@contextmanager
def _claim_output_dir(accelerator: Accelerator, args: TrainingArguments) -> Iterator[dict]:
    """The main process locks `output_dir` and checks it (`check_output_dir`; a run resumed from an earlier checkpoint
    than the latest sets the later ones aside) before anything is written there, and at the end, also on errors,
    settles the checkpoints of a run it replaces (`settle_replaced_checkpoints`: deleted only when the block set the
    yielded `outcome["ended"]`, a run that ran to its end; a run a signal stopped is resumed, and until then the
    replaced run stays recoverable) and releases the lock. A refusal is raised on every process."""
    lock = OutputDirLock(args.output_dir) if accelerator.is_main_process else None
    claim_on_main_process(lock, accelerator, lambda: _check_output_dir(args))
    outcome = {"ended": False}
    try:
        yield outcome
    finally:
        if lock is not None:
            settle_replaced_checkpoints(args.output_dir, outcome["ended"])
            lock.release()


def _check_output_dir(args: TrainingArguments) -> None:
    """`check_output_dir`; a run resumed from an earlier checkpoint than the latest sets the later ones aside."""
    check_output_dir(args.output_dir, args.resume_from_checkpoint is not None, args.overwrite_output_dir)
    resume_path = resolve_resume_path(args)
    if resume_path is not None:
        set_aside_checkpoints_after(args.output_dir, checkpoint_step(resume_path))


def _resume(
    accelerator: Accelerator,
    args: TrainingArguments,
    record: dict,
    model: nn.Module,
    ema: Optional[EMAModel],
    max_train_steps: int,
    requested_precision: Optional[str] = None,
) -> Optional[str]:
    """Load the checkpoint `--resume_from_checkpoint` names into the unwrapped `model` (prepared) and `ema`, once
    `check_checkpoint_folder` accepts it for this run's `record` and it is not past `max_train_steps`; returns its path
    (None when there is none to resume from). A file that cannot be read is named with the folder
    (`reading_checkpoint`); a refused precision, with where this run's came from (`requested_precision`, the script's
    `--mixed_precision`: None when it is the launcher's)."""
    path = resolve_resume_path(args)
    if path is None:
        return None
    check_resumed_within_the_run(path, max_train_steps)
    with reading_checkpoint(path, args.output_dir), _naming_the_launchers_precision(requested_precision):
        check_checkpoint_folder(path, record, model, use_ema=ema is not None)
        if accelerator.is_main_process:
            warn_if_schedule_stretched(path, max_train_steps, args.lr_scheduler)
        accelerator.print(f"Resuming from {path}")
        accelerator.load_state(path)  # model, optimizer, schedule, accumulation step, every process's RNG states
        if ema is not None:
            load_ema(ema, [name for name, _ in model.named_parameters()], path)
    if ema is not None:
        ema.to(accelerator.device)
    return path


def _build_dataloader(
    args: TrainingArguments, dataset: Dataset, sampler: Sampler, accelerator: Accelerator, stop_signal: StopSignal
):
    """The loader of `train` and the generator of its workers' base seed (reseeded every epoch). The sampler draws
    the indices in the main process, so worker processes change where items are decoded, never which are drawn;
    the base seed comes from this generator, never from the global RNG the loss draws its noise from. Its workers
    leave SIGTERM and SIGINT to the main process while it trains (`stop_signal`)."""
    generator = torch.Generator()
    dataloader = DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        drop_last=len(sampler) >= args.train_batch_size * accelerator.num_processes,
        num_workers=args.dataloader_num_workers,
        persistent_workers=args.dataloader_num_workers > 0,
        pin_memory=args.dataloader_pin_memory and accelerator.device.type == "cuda",
        generator=generator,
        worker_init_fn=stop_signal.worker_init_fn,
    )
    return dataloader, generator


def _stop_loader_workers(loader: DataLoader) -> None:
    """Shut the persistent worker processes of `loader` down now. Left to the garbage collector (the prepared loader
    sits in reference cycles), they outlive training and, at the interpreter's exit, are terminated by
    multiprocessing's teardown before the loader is freed: torch's SIGCHLD handler then printed "DataLoader worker
    (pid N) is killed by signal: Terminated" after a run that had succeeded (QA, the README's streaming example)."""
    iterator = getattr(loader, "_iterator", None)  # where DataLoader keeps the iterator of persistent workers
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


def _build_ema(args: TrainingArguments, model: nn.Module, device: torch.device) -> EMAModel:
    ema = EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        foreach=device.type == "cuda",  # a few multi-tensor kernels instead of several per parameter
    )
    ema.to(device)
    return ema


# ------------------------------------------------------------------------------------------------------------------
# Hardware speed: what a step on CUDA turns on (each measured no faster on CPU, where the plain path stays)
# ------------------------------------------------------------------------------------------------------------------


@contextmanager
def cuda_math(args: TrainingArguments, device: torch.device) -> Iterator[None]:
    """TF32 tensor-core matmuls and convolutions for float32 work on CUDA (`--allow_tf32`) while the loop trains. The
    flags are process-wide: they are restored afterwards, so that what runs next in the process (feature extraction,
    a likelihood, a probe) computes as it would have without the training."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda" and args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Channels-last (NHWC) weights, so that cuDNN runs the convolutions without layout transposes: for models
    with 2-D convolutions, on CUDA only (on CPU it measured 0.88x)."""
    return device.type == "cuda" and any(isinstance(module, nn.Conv2d) for module in model.modules())


def build_optimizer(args: TrainingArguments, model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW of the loop's flags; fused (one kernel for all parameters) on CUDA, the default kernels elsewhere. A
    model with a `parameter_groups(learning_rate)` method (`RCDiTJointModel`) gives its own groups."""
    groups = model.parameter_groups(args.learning_rate) if hasattr(model, "parameter_groups") else model.parameters()
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        fused=device.type == "cuda",
    )


def prepare_model_for_speed(args: TrainingArguments, model: nn.Module, device: torch.device) -> nn.Module:
    """The model's memory layout and compilation, before `accelerator.prepare`. `nn.Module.compile` compiles in
    place: parameter names, `state_dict` keys (checkpoints, EMA) and the returned module stay those of `model`."""
    if args.channels_last and uses_channels_last(model, device):
        model.to(memory_format=torch.channels_last)  # saving makes tensors contiguous: checkpoints are unchanged
    if args.torch_compile:
        model.compile(mode=args.torch_compile_mode)
    return model


def _schedule_clock(
    args: TrainingArguments, lr_scheduler, max_train_steps: int, num_processes: int
) -> Optional[ScheduleOnTheClock]:
    """The schedule's catch-up to the clock when `--max_train_minutes` is set and `--fit_lr_schedule_to_budget`."""
    if args.max_train_minutes is None or not args.fit_lr_schedule_to_budget:
        return None
    # accelerate steps the schedule once per process at each optimizer step
    return ScheduleOnTheClock(lr_scheduler, max_train_steps * num_processes, args.lr_warmup_steps * num_processes)


def _checkpoint_with_progress(
    accelerator: Accelerator,
    args: TrainingArguments,
    histories: tuple[LossHistory, MonitorHistory],
    record: dict,
    sample_grid: Optional[SampleGridFunction],
    monitor: Optional[MonitorFunction],
    model: nn.Module,
    ema: Optional[EMAModel],
    step: int,
) -> None:
    """`checkpoint-step` with the run's `record` and its loss and monitor histories up to `step` inside, so that any
    checkpoint a run resumes from has them; on the main process the sample grid and the monitor's measures of the
    model before, and after it the loss files and curve and the monitor history in `output_dir`. An error of the
    sample grid or the monitor is raised once the checkpoint is saved: the steps made are not lost to it."""
    loss_history, monitor_history = histories
    measures, failure = {}, None
    if accelerator.is_main_process:
        try:
            if sample_grid is not None:
                write_sample_grid(sample_grid, model, ema, args.output_dir, step)
            if monitor is not None:
                measures = monitor_history.measure(monitor, model, ema, step)
        except Exception as error:  # noqa: BLE001 - raised below, after the checkpoint
            failure = error
    records = {RUN_RECORD_NAME: record, LOSS_HISTORY_NAME: loss_history.to_json()}
    records |= {MONITOR_HISTORY_NAME: monitor_history.records} if monitor is not None else {}
    save_checkpoint(accelerator, args, step, ema, [name for name, _ in model.named_parameters()], records)
    if not accelerator.is_main_process:
        return
    loss_history.save(args.output_dir)
    if monitor is not None:
        monitor_history.save(args.output_dir)
        if args.report_to and measures:
            accelerator.log(measures, step=step)
    if failure is not None:
        failure.add_note(
            f"checkpoint-{step} was saved before this error: fix the sample grid or monitor, then "
            "--resume_from_checkpoint latest continues the run"
        )
        raise failure


def _diverged(what: str, value: float, step: int) -> FloatingPointError:
    """The error of a non-finite training loss or gradient norm at optimizer step `step` (1-based, as `checkpoint-N`),
    raised before the step changes any weight: the checkpoints written so far stay finite."""
    return FloatingPointError(
        f"training {what} became {value} at step {step}, before its weights were updated; train a new run with a "
        "lower --learning_rate (--overwrite_output_dir, or another --output_dir): a resume must keep the rate its "
        "checkpoint was written with"
    )


def _end_trackers(accelerator: Accelerator) -> None:
    """What `accelerator.end_training()` does but destroy the process group (accelerate 1.15 destroys it there): the
    script goes on with its processes (`wait_for_everyone` before its save, a second `train`). The group is destroyed
    at the interpreter's exit instead (left to the interpreter's teardown, gloo's threads can abort a finished
    process)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []
    global _destroy_registered
    if accelerator.num_processes > 1 and not _destroy_registered:
        atexit.register(_destroy_process_group)
        _destroy_registered = True


_destroy_registered = False


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@dataclass
class _Prepared:
    """What `_prepare` builds for a run: the model, optimizer, loader and schedule as accelerate wraps them, the
    model unwrapped (the one EMA, checkpoints and resuming read), the loader's generator, and the run's step counts."""

    model: nn.Module
    unwrapped: nn.Module
    optimizer: torch.optim.Optimizer
    dataloader: DataLoader
    loader_generator: torch.Generator
    lr_scheduler: object
    updates_per_epoch: int
    max_train_steps: int


def _prepare(
    accelerator: Accelerator, args: TrainingArguments, model: nn.Module, dataset: Dataset, sampler: Sampler,
    stop_signal: StopSignal,
) -> _Prepared:  # fmt: skip
    check_seed(args.seed, "--seed", accelerator.num_processes)  # each process seeds with seed + its index
    set_seed(args.seed, device_specific=True)
    num_examples, num_processes = len(sampler), accelerator.num_processes
    dataloader, loader_generator = _build_dataloader(args, dataset, sampler, accelerator, stop_signal)
    if num_processes > 1 and accelerator.device.type == "cuda":
        # batch statistics (an RC-DiT's representation_norm) over every process's batch; torch's SyncBatchNorm
        # runs on GPUs only, so processes on CPUs keep their own batch's statistics
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = prepare_model_for_speed(args, model, accelerator.device)
    optimizer = build_optimizer(args, model, accelerator.device)
    max_train_steps = total_optimizer_steps(args, num_examples, num_processes)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
    )
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    expected_batches = _batches_per_epoch(args, num_examples, num_processes)
    if len(dataloader) != expected_batches:  # the epoch arithmetic of resuming would misplace the data
        raise RuntimeError(f"the loader yields {len(dataloader)} batches per epoch, expected {expected_batches}")
    updates_per_epoch = optimizer_steps_per_epoch(args, num_examples, num_processes)
    unwrapped = accelerator.unwrap_model(model)
    return _Prepared(
        model, unwrapped, optimizer, dataloader, loader_generator, lr_scheduler, updates_per_epoch, max_train_steps
    )


class _TrainingRun:
    """The optimizer steps of one `train` call from the step it resumed from: batches accumulated into steps, each
    step's loss recorded, checkpoints, and the stop at `max_train_steps`, when the time budget runs out or at
    SIGTERM; then the model and the summary (`finish`)."""

    def __init__(
        self,
        accelerator: Accelerator,
        args: TrainingArguments,
        prepared: _Prepared,
        loss_fn: LossFunction,
        ema: Optional[EMAModel],
        checkpoint_contents: tuple[dict, Optional[SampleGridFunction], Optional[MonitorFunction]],
        stop_conditions: tuple[TrainingBudget, StopSignal],
        resume_path: Optional[str],
    ):
        self.accelerator, self.args, self.prepared, self.loss_fn, self.ema = accelerator, args, prepared, loss_fn, ema
        self.record, self.sample_grid, self.monitor = checkpoint_contents
        self.budget, self.stop_signal = stop_conditions
        self.unwrapped = prepared.unwrapped
        self.resumed_from_step = self.global_step = checkpoint_step(resume_path) if resume_path else 0
        self.histories = (
            LossHistory.resume(args.output_dir, self.resumed_from_step, resume_path),
            MonitorHistory.resume(args.output_dir, self.resumed_from_step, resume_path),
        )
        self.schedule_clock = _schedule_clock(
            args, prepared.lr_scheduler, prepared.max_train_steps, accelerator.num_processes
        )
        device = accelerator.device
        self.samples_seen = torch.zeros((), dtype=torch.long, device=device)
        self.step_loss, self.step_batches = torch.zeros((), device=device), 0  # summed over the step's batches
        self.budget_used = 0.0
        self.out_of_time = self.stopped_by_signal = False

    @property
    def stopping(self) -> bool:
        return self.global_step >= self.prepared.max_train_steps or self.out_of_time or self.stopped_by_signal

    def run(self) -> None:
        """Every step left, epoch by epoch; resuming mid-epoch, the first epoch skips the batches done."""
        accelerator, args, dataloader = self.accelerator, self.args, self.prepared.dataloader
        shown = bar_visibility(accelerator.is_local_main_process)  # other processes draw no bar
        self.progress = tqdm(total=self.prepared.max_train_steps, initial=self.global_step, desc="train", **shown)
        epoch, steps_into_epoch = divmod(self.global_step, self.prepared.updates_per_epoch)
        batches_to_skip = steps_into_epoch * args.gradient_accumulation_steps
        self.prepared.model.train()
        epoch_loader = dataloader  # or, resuming mid-epoch, a loader that skips the batches done
        try:
            while not self.stopping:
                dataloader.set_epoch(epoch)  # the sampler's order of this epoch: a function of (seed, epoch)
                self.prepared.loader_generator.manual_seed(args.seed + epoch)
                if epoch_loader is not dataloader:  # its workers would idle until the garbage collector frees it
                    _stop_loader_workers(epoch_loader)
                epoch_loader = dataloader
                if batches_to_skip:
                    epoch_loader = accelerator.skip_first_batches(dataloader, batches_to_skip)
                batches_to_skip = 0
                self._run_epoch(epoch_loader)
                epoch += 1
        finally:
            _stop_loader_workers(dataloader)
            _stop_loader_workers(epoch_loader)
        self.progress.close()

    def _run_epoch(self, loader: DataLoader) -> None:
        for batch in loader:
            self._accumulate(batch)
            if not self.accelerator.sync_gradients:
                continue
            self._end_step()
            if self.stopping:
                self._say_why_it_stopped_early()
                return

    def _accumulate(self, batch: tuple) -> None:
        """One batch's forward and backward pass; at the step's last batch, the optimizer step."""
        accelerator, args, model = self.accelerator, self.args, self.prepared.model
        if args.replays_cuda_graphs:  # the last step's graph outputs may be overwritten (cudagraph trees)
            torch.compiler.cudagraph_mark_step_begin()
        with accelerator.accumulate(model):
            loss = self.loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise _diverged("loss", loss.item(), self.global_step + 1)
            accelerator.backward(loss)
            self.step_loss += loss.detach().float()
            self.step_batches += 1
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                # a finite loss can still back-propagate to inf/NaN gradients, which would turn every weight to
                # NaN in the checkpoint and the model saved next; fp16's GradScaler skips such steps itself
                if accelerator.scaler is None and grad_norm is not None and not torch.isfinite(grad_norm):
                    raise _diverged("gradient norm", grad_norm.item(), self.global_step + 1)
            self.prepared.optimizer.step()
            self.prepared.lr_scheduler.step()
            if accelerator.sync_gradients:
                self.budget_used = self.budget.fraction_used(accelerator)
                if self.schedule_clock is not None:  # the next step's learning rate: the clock's, when further on
                    self.schedule_clock.catch_up(self.budget_used)
            self.prepared.optimizer.zero_grad()
        self.samples_seen += batch[0].shape[0]

    def _end_step(self) -> None:
        """After an optimizer step: the EMA update, the step's loss recorded and shown, whether to stop early, and the
        checkpoint when one is due."""
        accelerator, args, max_train_steps = self.accelerator, self.args, self.prepared.max_train_steps
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())
        self.global_step += 1
        # the step's loss: the mean over its accumulated batches on every process, not the last batch's alone
        loss_value = accelerator.gather((self.step_loss / self.step_batches).reshape(1)).mean().item()
        self.step_loss, self.step_batches = torch.zeros((), device=accelerator.device), 0
        self._show_loss(loss_value)
        step = self.global_step
        self.out_of_time = step < max_train_steps and self.budget_used >= 1.0
        self.stopped_by_signal = step < max_train_steps and bool(self.stop_signal.received_anywhere(accelerator))
        if step % args.checkpointing_steps == 0 or self.stopping:
            _checkpoint_with_progress(
                accelerator, args, self.histories, self.record, self.sample_grid, self.monitor, self.unwrapped,
                self.ema, step,
            )

    def _show_loss(self, loss_value: float) -> None:
        learning_rate = self.prepared.lr_scheduler.get_last_lr()[0]
        self.histories[0].append(self.global_step, loss_value)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{learning_rate:.2e}")
        if self.args.report_to:
            self.accelerator.log({"train_loss": loss_value, "lr": learning_rate}, step=self.global_step)

    def _say_why_it_stopped_early(self) -> None:
        step = self.global_step
        if self.out_of_time:
            self.accelerator.print(f"--max_train_minutes {self.args.max_train_minutes} ran out at step {step}")
        if self.stopped_by_signal:
            self.accelerator.print(
                f"stopped by {self.stop_signal.name} at step {step}, with checkpoint-{step}: "
                "--resume_from_checkpoint latest continues the run"
            )

    def _effective_batch_size(self) -> int:
        args = self.args
        return args.train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps

    def finish(self) -> tuple[nn.Module, TrainingSummary]:
        """The trained model (EMA weights copied in with `use_ema`), unwrapped for inference, and the run's summary,
        saved in `output_dir` by the main process."""
        accelerator = self.accelerator
        samples_per_process = accelerator.gather(self.samples_seen.reshape(1)).tolist()
        accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(self.unwrapped.parameters())
        unwrapped = accelerator.unwrap_model(self.prepared.model, keep_fp32_wrapper=False)  # inference is not autocast
        # accelerate marks a model it prepared and never prepares it again: trained anew (another mixed precision, more
        # steps) it would miss its autocast and device placement
        unwrapped.__dict__.pop("_is_accelerate_prepared", None)
        if self.args.replays_cuda_graphs:  # its next call would overwrite the last's outputs (feature hooks, samplers)
            unwrapped.__dict__.pop("_compiled_call_impl", None)  # what `nn.Module.compile` set
        unwrapped.eval()
        _end_trackers(accelerator)
        losses = self.histories[0].losses
        summary = TrainingSummary(
            global_step=self.global_step, resumed_from_step=self.resumed_from_step,
            num_processes=accelerator.num_processes, samples_per_process=samples_per_process,
            final_loss=losses[-1] if losses else None,  # the resumed one's when no step was left to make
            stopped_by_time_budget=self.out_of_time,
            stopped_by_signal=self.stop_signal.record_stop() if self.stopped_by_signal else None,
            max_train_steps=self.prepared.max_train_steps, effective_batch_size=self._effective_batch_size(),
            process_command=typed_command(self.args),
            arguments=_resolved_arguments(self.args), **run_environment(),
        )
        if accelerator.is_main_process:
            summary.save(self.args.output_dir)
        return unwrapped, summary


def _train(
    accelerator: Accelerator,
    args: TrainingArguments,
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFunction,
    sampler: Sampler,
    sample_grid: Optional[SampleGridFunction],
    monitor: Optional[MonitorFunction],
    stop_conditions: tuple[TrainingBudget, StopSignal],
    objective: Optional[dict],
    requested_precision: Optional[str] = None,
) -> tuple[nn.Module, Accelerator, TrainingSummary]:
    prepared = _prepare(accelerator, args, model, dataset, sampler, stop_conditions[1])
    unwrapped = prepared.unwrapped
    ema = _build_ema(args, unwrapped, accelerator.device) if args.use_ema else None
    record = run_record(
        args, accelerator.num_processes, len(sampler), unwrapped, dataset, objective, prepared.max_train_steps
    )
    resume_path = _resume(accelerator, args, record, unwrapped, ema, prepared.max_train_steps, requested_precision)
    restore_step_rates(prepared.lr_scheduler)
    run = _TrainingRun(
        accelerator, args, prepared, loss_fn, ema, (record, sample_grid, monitor), stop_conditions, resume_path
    )
    if accelerator.is_main_process:
        remove_samples_after(args.output_dir, run.resumed_from_step)
    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers("diffusion-classifiers", config=asdict(args))
    run.run()
    trained_model, summary = run.finish()
    return trained_model, accelerator, summary

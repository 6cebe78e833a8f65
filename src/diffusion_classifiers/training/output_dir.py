"""One training run per `--output_dir`: a lock file, and no silent training over another run's results.

`OutputDirLock` is `.training.lock` in the folder, JSON with the owner's pid, host and start time, created
atomically; a second run into a locked folder fails at once, a lock left by a dead process on this host is taken
over. `check_output_dir` refuses a folder that already holds another run's model or checkpoints unless the run
resumes (`--resume_from_checkpoint`) or replaces it (`--overwrite_output_dir`). A replaced run's checkpoints are set
aside, not deleted, until the run that replaces them ends (`settle_replaced_checkpoints`): a run that fails, on data
it cannot read halfway or on anything else, loses nothing.
"""

import json
import logging
import os
import shutil
from typing import Any, Callable

from ..atomic_files import remove_entry, remove_leftovers_of_killed_writers
from ..run_lock import RunInUseError, RunLock
from .checkpoints import CHECKPOINT_PATTERN, checkpoint_step
from .monitoring import SAMPLE_PATTERN, SAMPLES_DIR, remove_samples_after

__all__ = [
    "LOCK_NAME", "REPLACED_CHECKPOINTS", "OutputDirInUseError", "OutputDirLock", "check_output_dir",
    "check_output_dir_writable", "previous_run_files", "refuse_another_runs_output_dir",
    "save_model_whole", "save_trained_pipeline", "set_aside_checkpoints_after", "settle_replaced_checkpoints",
]  # fmt: skip

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"
REPLACED_CHECKPOINTS = ".replaced_checkpoints"  # a replaced run's checkpoints, until the run replacing them ends
REPLACING_RUN_NAME = "replacing_run.json"  # in it: the step the run replacing them started from
EARLIER_SET_ASIDE = "earlier"  # in it: what was set aside before, by a replacing run that failed after a checkpoint
# Written at the end of a run: the summary of `training.train`, a `save_pretrained` pipeline or model.
FINISHED_RUN_FILES = ("training_summary.json", "model_index.json", "config.json")
# The file that makes a folder a saved model (a diffusers pipeline's, a model's): `save_model_whole` writes it last.
MODEL_MARKERS = ("model_index.json", "config.json")
SAVING_PREFIX = ".saving-"  # `save_model_whole`'s folder while it saves, named with its process id


class OutputDirInUseError(RunInUseError):
    """Another training run holds the `--output_dir`."""


class OutputDirLock(RunLock):
    r"""
    The lock of one training run on `output_dir` (created if missing): `acquire()` before anything is written,
    `release()` at the end, also on errors; or `with OutputDirLock(output_dir):`.

    Args:
        output_dir (`str`): the folder the run writes to.
    """

    def __init__(self, output_dir: str):
        super().__init__(
            os.path.join(output_dir, LOCK_NAME), f"--output_dir {output_dir}", "--output_dir", "training run",
            OutputDirInUseError,
        )  # fmt: skip
        self.output_dir = output_dir


def previous_run_files(output_dir: str) -> list:
    """The entries of `output_dir` that another run left: `checkpoint-N` folders, a summary, a saved model."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    return sorted(name for name in names if CHECKPOINT_PATTERN.match(name) or name in FINISHED_RUN_FILES)


def check_output_dir_writable(output_dir: str) -> None:
    """Refuse an `output_dir` that exists but is not a folder (a file; creating the folder there fails later with
    a bare `[Errno 17] File exists`), or that this process could not write or create (a read-only disk: QA, the
    training scripts failed only once they had read every image), without creating it."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(
            f"--output_dir {output_dir} is a file; expected a folder, or a path that does not exist yet"
        )
    existing = os.path.abspath(output_dir)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):  # a file (or a dangling link) partway up the path
        raise FileExistsError(f"--output_dir {output_dir}: {existing} is not a folder; expected a path of folders")
    if not os.access(existing, os.W_OK | os.X_OK):  # on a read-only file system, also for root
        where = "" if existing == os.path.abspath(output_dir) else f" (its folder {existing} is not)"
        raise ValueError(f"--output_dir {output_dir}: expected a folder this process can write{where}")


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Make `output_dir` ready for a run, or refuse it; call with the lock held.

    Leftover `checkpoint-N.partial` folders (saves that were interrupted) are removed. A folder holding another run's
    checkpoints or model (`previous_run_files`) is refused unless `resume` and it holds a `checkpoint-N` (that run
    continues; with a model and no checkpoint, `--resume_from_checkpoint latest` would train over it) or `overwrite`
    (its `checkpoint-N` folders are moved into `REPLACED_CHECKPOINTS` now, deleted when this run runs to its end (not
    when SIGTERM stops it) or moved back when it fails before its first checkpoint (`settle_replaced_checkpoints`);
    its other files are replaced as this run writes them).
    """
    for name in os.listdir(output_dir):
        if name.endswith(".partial") and CHECKPOINT_PATTERN.match(name[: -len(".partial")]):
            remove_entry(os.path.join(output_dir, name))
    settle_replaced_checkpoints(output_dir, succeeded=False)  # a replacing run killed before it could settle them
    refuse_another_runs_output_dir(output_dir, resume, overwrite)
    previous = previous_run_files(output_dir)
    checkpoints = [name for name in previous if CHECKPOINT_PATTERN.match(name)]
    if previous and overwrite and not (resume and checkpoints):
        _set_aside(output_dir, checkpoints, 0, f"--overwrite_output_dir: the previous run in {output_dir}")


def refuse_another_runs_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """The refusal of `check_output_dir`, without its changes to the folder: `output_dir` holds another run's files
    and neither `overwrite` nor (with `resume`) a `checkpoint-N` to continue from lets this run in."""
    previous = previous_run_files(output_dir)
    resumable = resume and any(CHECKPOINT_PATTERN.match(name) for name in previous)
    if not previous or resumable or overwrite:
        return
    advice = "--resume_from_checkpoint latest to continue that run or " if not resume else ""
    raise FileExistsError(
        f"--output_dir {output_dir} already holds another run's {', '.join(previous)}"
        f"{' and no checkpoint-N to resume from' if resume else ''}; pass {advice}--overwrite_output_dir to "
        "replace it (in Python, the TrainingArguments of the same names)"
    )


def set_aside_checkpoints_after(output_dir: str, step: int) -> None:
    """A run resumed from step `step`, earlier than the folder's latest checkpoint, leaves the timeline of the later
    ones: they are set aside as `check_output_dir` sets aside a replaced run's, so that `--resume_from_checkpoint
    latest` does not go back to them; call with the lock held."""
    later = sorted(
        (name for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name)) and int(m.group(1)) > step),
        key=checkpoint_step,
    )
    if later:
        _set_aside(output_dir, later, step, f"resuming from step {step}: the later steps of the run it rewinds")


def _set_aside(output_dir: str, checkpoints: list, from_step: int, whose: str) -> None:
    """Move `checkpoints` (`whose` they are) and the sample grids after `from_step`, the step the run replacing them
    starts from, into `REPLACED_CHECKPOINTS`, with that step."""
    samples_dir = os.path.join(output_dir, SAMPLES_DIR)
    names = os.listdir(samples_dir) if os.path.isdir(samples_dir) else []
    samples = [name for name in names if (m := SAMPLE_PATTERN.match(name)) and int(m.group(1)) > from_step]
    if not (checkpoints or samples):
        return
    aside = os.path.join(output_dir, REPLACED_CHECKPOINTS)
    earlier = aside + ".earlier"
    if os.path.isdir(aside):  # set aside by a replacing run that failed after its own first checkpoint: kept within
        os.replace(aside, earlier)
    logger.warning(
        f"{whose}: {', '.join(checkpoints + [f'{SAMPLES_DIR}/{name}' for name in samples])} moved into {aside}, "
        "deleted when this run runs to its end, moved back if it fails before a checkpoint of its own"
    )
    os.makedirs(os.path.join(aside, SAMPLES_DIR))
    if os.path.isdir(earlier):
        os.replace(earlier, os.path.join(aside, EARLIER_SET_ASIDE))
    with open(os.path.join(aside, REPLACING_RUN_NAME), "w") as f:
        json.dump({"from_step": from_step}, f)
    for name in checkpoints:
        os.replace(os.path.join(output_dir, name), os.path.join(aside, name))
    for name in samples:
        os.replace(os.path.join(samples_dir, name), os.path.join(aside, SAMPLES_DIR, name))


def settle_replaced_checkpoints(output_dir: str, succeeded: bool) -> None:
    """At the end of a run: delete the checkpoints `check_output_dir` or `set_aside_checkpoints_after` set aside when
    the run `succeeded`; when it failed before writing a checkpoint of its own (after the step it started from), move
    them back, so the folder is as the replaced run left it (after a checkpoint of the failed run they stay aside:
    two runs' checkpoints in one folder would let `--resume_from_checkpoint latest` pick the wrong one). The next run
    in the folder calls it too, before anything else, for a run that was killed (SIGKILL, SIGTERM) before its end
    could."""
    aside = os.path.join(output_dir, REPLACED_CHECKPOINTS)
    if not os.path.isdir(aside):
        return
    if succeeded:
        shutil.rmtree(aside)
        return
    record = os.path.join(aside, REPLACING_RUN_NAME)
    from_step = 0  # what a run of before the record set aside
    if os.path.isfile(record):
        with open(record) as f:
            from_step = json.load(f)["from_step"]
    if any(checkpoint_step(name) > from_step for name in os.listdir(output_dir) if CHECKPOINT_PATTERN.match(name)):
        logger.warning(f"the replaced run's checkpoints stay in {aside}: the run replacing it failed after its first checkpoint")
        return
    for name in os.listdir(aside):
        if CHECKPOINT_PATTERN.match(name):
            os.replace(os.path.join(aside, name), os.path.join(output_dir, name))
    if os.path.isdir(os.path.join(aside, SAMPLES_DIR)):
        remove_samples_after(output_dir, from_step)  # the failed run's, of a step it made no checkpoint of
        for name in os.listdir(os.path.join(aside, SAMPLES_DIR)):  # none where the run drew none: no folder (QA)
            os.makedirs(os.path.join(output_dir, SAMPLES_DIR), exist_ok=True)
            os.replace(os.path.join(aside, SAMPLES_DIR, name), os.path.join(output_dir, SAMPLES_DIR, name))
    _restore_earlier_set_aside(aside)


def _restore_earlier_set_aside(aside: str) -> None:
    """Remove the emptied `aside`; what an earlier replacing run had set aside there (kept within it) is set aside
    again, as that run left it."""
    earlier = os.path.join(aside, EARLIER_SET_ASIDE)
    if not os.path.isdir(earlier):
        shutil.rmtree(aside)
        return
    parked = aside + ".earlier"
    os.replace(earlier, parked)
    shutil.rmtree(aside)
    os.replace(parked, aside)


def save_model_whole(output_dir: str, save: Callable[[str], None]) -> None:
    """`save(folder)` (a trained model's `save_pretrained` and the files that go with it) into `output_dir` as one
    piece, under the folder's lock: written first into a hidden folder inside it, then moved in entry by entry, the
    earlier model's marker (`model_index.json`, `config.json`) removed before anything is replaced and the new one
    moved in last. A save killed or failing halfway leaves no marker beside a mix of two models' files (loading says
    the folder holds no model, and `--resume_from_checkpoint latest` saves it again); a failing `save` leaves the
    earlier model as it was. The hidden folders of saves that were killed are removed first."""
    with OutputDirLock(output_dir):
        remove_leftovers_of_killed_writers(output_dir, SAVING_PREFIX)
        staging = os.path.join(output_dir, f"{SAVING_PREFIX}{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)  # this pid's: a restarted container's killed save
        try:
            save(staging)
            names = os.listdir(staging)
            left = _earlier_model_entries(output_dir, names)
            markers = [name for name in names if name in MODEL_MARKERS]
            for name in markers:
                remove_entry(os.path.join(output_dir, name))
            for name in [name for name in names if name not in markers] + markers:
                remove_entry(os.path.join(output_dir, name))
                os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
            for name in left:
                remove_entry(os.path.join(output_dir, name))
            if left:
                logger.warning("removed the earlier model's %s, which this model does not have", ", ".join(left))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _earlier_model_entries(output_dir: str, saved: list) -> list:
    """The entries of the model saved earlier in `output_dir` that the new save (`saved`) does not replace: the
    components its `model_index.json` names and the code `save_pretrained` wrote beside it (QA: a U-Net's `unet/` and
    its code stayed beside an RC-DiT saved over it with `--overwrite_output_dir`, and went with it when shared)."""
    try:
        with open(os.path.join(output_dir, "model_index.json")) as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        index = {}
    components = [name for name, value in index.items() if isinstance(value, list) and not name.startswith("_")]
    code = [name for name in os.listdir(output_dir) if name.endswith(".py") and _written_by_save(output_dir, name)]
    present = [name for name in {*components, *code} if os.path.lexists(os.path.join(output_dir, name))]
    return sorted(name for name in present if name not in saved)


def _written_by_save(output_dir: str, name: str) -> bool:
    """Whether a `.py` file is code `save_pretrained` saved with a model (`remote_code`): a bundled copy or an entry."""
    try:
        with open(os.path.join(output_dir, name), encoding="utf-8") as handle:
            head = handle.read(2000)
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("# Bundled copy of ") or "Written by `save_pretrained`." in head


def save_trained_pipeline(pipeline: Any, args: Any, train: Any) -> None:
    """A training script's end: its pipeline and `data_splits.json` (its carving, its training images' fingerprints:
    `data.save_training_split_record`) saved into `args.output_dir` as one piece (`save_model_whole`)."""
    from ..data import save_training_split_record

    def save(folder: str) -> None:
        pipeline.save_pretrained(folder)
        save_training_split_record(args, train, folder)  # for probe and evaluate

    save_model_whole(args.output_dir, save)


"""Review of the training loop's infrastructure: a diverging step never reaches a checkpoint or the returned model, the
logged loss is the step's, and a bad `--output_dir` or an incomplete checkpoint is refused before the data is read."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from diffusion_classifiers.training import TrainingArguments, train
from diffusion_classifiers.training.loop import check_run_can_start


def args_for(output_dir, **overrides):
    defaults = dict(
        output_dir=str(output_dir), train_batch_size=4, max_train_steps=3, learning_rate=1e-2, lr_warmup_steps=0,
        checkpointing_steps=1, num_sample_images=0,
    )  # fmt: skip
    return TrainingArguments(**{**defaults, **overrides})


def dataset(n=16):
    return TensorDataset(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)))


def linear():
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def test_a_finite_loss_with_nan_gradients_stops_before_the_weights_turn_nan(tmp_path):
    """Reviewed: a finite loss whose backward gave NaN gradients (an overflow) turned every weight to NaN; the run
    saved them as its last checkpoint, returned them as the model and reported success."""
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = model(batch[0]).pow(2).mean()
        if len(calls) == 3:  # the value stays finite, its gradient is NaN (0 * inf)
            loss = loss + torch.sqrt(model.weight.sum() * 0)
        return loss

    with pytest.raises(FloatingPointError, match=r"^training gradient norm became nan at step 3, before its weights"):
        train(args_for(tmp_path), linear(), dataset(), loss_fn)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        weights = load_file(tmp_path / checkpoint / "model.safetensors")
        assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert not (tmp_path / "training_summary.json").exists()


def test_a_nan_loss_names_the_step_as_its_checkpoint_would_be_named(tmp_path):
    """Reviewed: a NaN loss in the first step was reported `at step 0` (the steps made before it), though the step
    that failed writes `checkpoint-1`."""

    def nan_loss(model, batch):
        return model(batch[0]).mean() * float("nan")

    with pytest.raises(FloatingPointError, match=r"^training loss became nan at step 1, before its weights"):
        train(args_for(tmp_path), linear(), dataset(), nan_loss)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_the_logged_loss_is_the_mean_over_the_steps_accumulated_batches(tmp_path):
    """Reviewed: with --gradient_accumulation_steps 4 the loss history, the bar, the trackers and the summary's
    final_loss held the last of a step's 4 batches alone (0.0070 for a step whose batches averaged 0.479)."""
    losses = []

    def loss_fn(model, batch):
        loss = model(batch[0]).pow(2).mean()
        losses.append(loss.item())
        return loss

    args = args_for(tmp_path, train_batch_size=2, gradient_accumulation_steps=4, max_train_steps=2)
    _, _, summary = train(args, linear(), dataset(), loss_fn)
    assert len(losses) == 8
    expected = [sum(losses[:4]) / 4, sum(losses[4:]) / 4]
    history = json.loads((tmp_path / "loss_history.json").read_text())
    assert history["steps"] == [1, 2]
    assert history["losses"] == pytest.approx(expected, rel=1e-6)
    assert summary.final_loss == pytest.approx(expected[1], rel=1e-6)
    assert not math.isclose(expected[1], losses[-1], rel_tol=0.01)  # the batch alone would not pass


def test_an_output_dir_that_is_a_file_is_refused_naming_it_before_the_data(tmp_path):
    """Reviewed: the scripts' early check let it through and `train` failed with `[Errno 17] File exists`."""
    output = tmp_path / "model.safetensors"
    output.write_bytes(b"not a folder")
    expected = rf"^--output_dir {output} is a file; expected a folder, or a path that does not exist yet$"
    with pytest.raises(FileExistsError, match=expected):
        check_run_can_start(args_for(output))
    with pytest.raises(FileExistsError, match=expected):
        train(args_for(output), linear(), dataset(), lambda model, batch: model(batch[0]).pow(2).mean())
    assert output.read_bytes() == b"not a folder"


@pytest.mark.parametrize("removed", ["optimizer.bin", "random_states_0.pkl", "ema.safetensors", "everything"])
def test_a_checkpoint_missing_a_file_is_refused_naming_it_before_the_data(tmp_path, removed):
    """Reviewed: a checkpoint folder missing a file resuming needs (copied in part, emptied by hand) passed the
    scripts' early check, so the data was read first; an empty one was then refused as written by `processes 0`."""
    loss = lambda model, batch: model(batch[0]).pow(2).mean()  # noqa: E731
    train(args_for(tmp_path, max_train_steps=2, use_ema=True), linear(), dataset(), loss)
    checkpoint = tmp_path / "checkpoint-2"
    names = sorted(os.listdir(checkpoint)) if removed == "everything" else [removed]
    for name in names:
        (checkpoint / name).unlink()
    missing = "model.safetensors" if removed == "everything" else removed
    needs = r"which resuming 1 process\(es\) with --use_ema needs"
    expected = rf"^checkpoint folder {checkpoint} has no '{missing}', {needs}"
    resume = args_for(tmp_path, max_train_steps=3, use_ema=True, resume_from_checkpoint="latest")
    with pytest.raises(FileNotFoundError, match=expected):
        check_run_can_start(resume)
    with pytest.raises(FileNotFoundError, match=expected):
        train(resume, linear(), dataset(), loss)


def recorded_monitor(failing_calls=()):
    calls = []

    def monitor(model):
        calls.append(1)
        if len(calls) in failing_calls:
            raise RuntimeError("CUDA out of memory in the monitor's batch")
        return {"weight_norm": float(model.weight.norm())}

    return monitor


def test_a_failing_monitor_keeps_the_checkpoint_of_the_steps_made_and_the_run_resumes_bitwise(tmp_path):
    """Reviewed: the monitor (and sample grid) ran before the checkpoint was written, so an error in it (an
    out-of-memory evaluation batch, a user's bug) lost every step since the last checkpoint: 3 steps of 6 left an
    empty --output_dir."""
    loss = lambda model, batch: model(batch[0]).pow(2).mean()  # noqa: E731
    length = dict(max_train_steps=6, checkpointing_steps=3)
    straight, _, _ = train(args_for(tmp_path / "run", **length), linear(), dataset(), loss, monitor=recorded_monitor())
    with pytest.raises(RuntimeError, match="CUDA out of memory") as raised:
        train(args_for(tmp_path / "failed", **length), linear(), dataset(), loss, monitor=recorded_monitor((1,)))
    assert raised.value.__notes__ == [
        "checkpoint-3 was saved before this error: fix the sample grid or monitor, then --resume_from_checkpoint "
        "latest continues the run"
    ]
    assert sorted(p.name for p in (tmp_path / "failed").glob("checkpoint-*")) == ["checkpoint-3"]
    assert json.loads((tmp_path / "failed" / "loss_history.json").read_text())["steps"] == [1, 2, 3]
    resumed_args = args_for(tmp_path / "failed", **length, resume_from_checkpoint="latest")
    resumed, _, summary = train(resumed_args, linear(), dataset(), loss, monitor=recorded_monitor())
    assert (summary.resumed_from_step, summary.global_step) == (3, 6)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_a_monitor_drawing_from_numpy_and_python_rngs_leaves_training_unchanged(tmp_path):
    """Reviewed: the monitor's view restored torch's random state only: one drawing from numpy's (scikit-learn's
    KMeans without a random_state does) changed the training of a loss drawing from it (weights differed in the 4th
    decimal)."""
    import random

    import numpy as np

    def loss(model, batch):  # a loss, or a dataset's augmentation, drawing from the global RNGs
        noise = torch.as_tensor(np.random.randn(*batch[0].shape), dtype=torch.float32) * random.random()
        return model(batch[0] + noise).pow(2).mean()

    def monitor(model):
        return {"drawn": float(np.random.rand() + random.random())}

    weights = [
        train(args_for(tmp_path / f"run{i}", max_train_steps=6, checkpointing_steps=2), linear(), dataset(), loss,
              monitor=look)[0].weight  # fmt: skip
        for i, look in enumerate((None, monitor))
    ]
    assert torch.equal(*weights)


FIRST_RUN_IN_A_PROCESS = """
import json, random, sys, tempfile
import torch
from torch import nn
from torch.utils.data import TensorDataset
from diffusion_classifiers.training import TrainingArguments, train

draws = []
def loss(model, batch):  # a dataset's augmentation drawing from Python's RNG, as `random.random() < 0.5` flips do
    draws.append(random.random())
    return model(batch[0] * draws[-1]).pow(2).mean()

runs = []
for run in range(2):
    draws.clear()
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), train_batch_size=4, max_train_steps=4, lr_warmup_steps=0,
                             checkpointing_steps=1, num_sample_images=0)
    train(args, nn.Linear(4, 1), TensorDataset(torch.randn(16, 4)), loss)
    runs.append(list(draws))
print(json.dumps(runs))
"""


def test_the_first_checkpoint_in_a_process_leaves_pythons_rng_as_it_was(tmp_path):
    """Reviewed: the loss curve's first plot imports scikit-learn, which draws from Python's global RNG: in a fresh
    process the steps after the first checkpoint drew other numbers than in a second run (and a resumed run, whose
    first checkpoint comes later, other numbers than the uninterrupted one)."""
    import subprocess

    from .conftest import PYTHON, REPO_ROOT, python_subprocess_env

    script = tmp_path / "first_run.py"
    script.write_text(FIRST_RUN_IN_A_PROCESS)
    env = python_subprocess_env() | {"TQDM_DISABLE": "1"}
    command = [PYTHON, str(script)]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(first) == 4 and first == second


def test_a_run_killed_while_pruning_a_checkpoint_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Reviewed: --checkpoints_total_limit deleted the oldest `checkpoint-N` in place: a process killed during the
    deletion (a scheduler's SIGKILL after the grace period of its SIGTERM) left a `checkpoint-N` without some of its
    files, which --resume_from_checkpoint checkpoint-N would then try."""
    from diffusion_classifiers.training import checkpoints

    def killed_while_deleting(path):
        os.remove(os.path.join(path, sorted(os.listdir(path))[0]))
        raise KeyboardInterrupt  # stands for the kill: the deletion stops with one file gone

    monkeypatch.setattr(checkpoints, "remove_entry", killed_while_deleting)
    loss = lambda model, batch: model(batch[0]).pow(2).mean()  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        train(args_for(tmp_path, checkpoints_total_limit=1), linear(), dataset(), loss)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-1.partial",
        "checkpoint-2",
    ]
    monkeypatch.undo()
    _, _, summary = train(args_for(tmp_path, checkpoints_total_limit=1, resume_from_checkpoint="latest"), linear(),
                          dataset(), loss)  # fmt: skip
    assert (summary.resumed_from_step, summary.global_step) == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3"]


def test_resuming_a_checkpoint_past_the_runs_last_step_is_refused_before_the_data(tmp_path):
    """Reviewed: --max_train_steps 4 with --resume_from_checkpoint latest on a run at checkpoint-6 made no step and
    returned (for the scripts to save) the model of step 6, with a summary of 6 steps."""
    loss = lambda model, batch: model(batch[0]).pow(2).mean()  # noqa: E731
    train(args_for(tmp_path, max_train_steps=6, checkpointing_steps=3), linear(), dataset(), loss)
    shorter = args_for(tmp_path, max_train_steps=4, checkpointing_steps=3, resume_from_checkpoint="latest")
    expected = (
        rf"^cannot resume from {tmp_path}/checkpoint-6: its step 6 is past this run's 4 steps \(--max_train_steps or "
        r"--num_epochs\), so the model of step 6 would be returned; resume with 6 steps or more, or from a "
        r"checkpoint-N with N <= 4 \(--resume_from_checkpoint checkpoint-N\)$"
    )
    with pytest.raises(ValueError, match=expected):
        check_run_can_start(shorter)
    with pytest.raises(ValueError, match=expected):
        train(shorter, linear(), dataset(), loss)
    by_epochs = args_for(tmp_path, max_train_steps=None, num_epochs=1, resume_from_checkpoint="latest")  # 4 steps
    with pytest.raises(ValueError, match=expected):
        train(by_epochs, linear(), dataset(), loss)
    _, _, summary = train(args_for(tmp_path, max_train_steps=4, resume_from_checkpoint="checkpoint-3"), linear(),
                          dataset(), loss)  # fmt: skip
    assert (summary.resumed_from_step, summary.global_step) == (3, 4)


def test_a_folder_a_live_run_trains_in_is_refused_as_in_use_before_its_checkpoints_are_named(tmp_path):
    """QA (operations): a second run into the folder a live run was training in was told the folder 'already holds
    another run's checkpoint-165, ...; pass --resume_from_checkpoint latest ... or --overwrite_output_dir', inviting
    it to replace a live run; both flags then met the lock. The lock is named first; a stale one is left to `train`."""
    import socket

    from diffusion_classifiers.training.output_dir import LOCK_NAME, OutputDirInUseError

    run = tmp_path / "run"
    train(args_for(run), linear(), dataset(), lambda model, batch: model(batch[0]).pow(2).mean())
    lock = run / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))  # alive
    with pytest.raises(OutputDirInUseError, match=rf"--output_dir {run} is in use by another training run \(pid "):
        check_run_can_start(args_for(run))
    before = lock.read_text()
    with pytest.raises(OutputDirInUseError, match="is in use by another training run"):
        check_run_can_start(args_for(run, overwrite_output_dir=True))
    assert lock.read_text() == before  # checked, not taken
    lock.write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))  # no such process: stale
    with pytest.raises(FileExistsError, match="already holds another run's checkpoint-1"):
        check_run_can_start(args_for(run))


def test_an_output_dir_that_cannot_be_written_is_refused_before_the_data(tmp_path, monkeypatch):
    """QA (operations): into a read-only folder the training scripts failed with Python's EROFS traceback only once
    every image was read. (`os.access` answers for a read-only file system even as root; stood in for here.)"""
    read_only = tmp_path / "mounted"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(read_only) and real_access(path, mode))
    with pytest.raises(ValueError, match=rf"^--output_dir {read_only}/run: expected a folder this process can write "
                                         rf"\(its folder {read_only} is not\)$"):  # fmt: skip
        check_run_can_start(args_for(read_only / "run"))
    assert not (read_only / "run").exists()
    with pytest.raises(ValueError, match=rf"^--output_dir {read_only}: expected a folder this process can write$"):
        check_run_can_start(args_for(read_only))
    check_run_can_start(args_for(tmp_path / "elsewhere" / "run"))  # a path to create under a writable folder
    (tmp_path / "notes").write_text("")
    os.chmod(tmp_path / "notes", 0o755)  # review: os.access passed an executable file as a folder to write in
    with pytest.raises(FileExistsError, match=rf"--output_dir {tmp_path}/notes/run: {tmp_path}/notes is not a folder"):
        check_run_can_start(args_for(tmp_path / "notes" / "run"))

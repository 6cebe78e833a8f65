"""SIGTERM (a scheduler's time limit or preemption) and Ctrl-C (SIGINT) stop a training run after its step with a
final checkpoint, the loss files and the model, on every process at the same step, and the command then exits with
status 143 or 130 (1 under accelerate launch --multi_gpu, whose torch elastic agent turns the signal into an
error)."""

import json
import multiprocessing
import os
import signal
import time

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, get_worker_info

from diffusion_classifiers.cli import run_from_shell
from diffusion_classifiers.training import TrainingArguments, train
from diffusion_classifiers.training.stop_signal import StopSignal

from .test_multiprocess_qa import launch_two


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Ctrl-C raising KeyboardInterrupt, as Python sets it up in a terminal: pytest-xdist's workers start with it
    ignored, which training leaves as it is (`test_a_signal_the_process_was_started_to_ignore_stays_ignored`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def args_for(output_dir, **overrides):
    defaults = dict(
        output_dir=str(output_dir), train_batch_size=4, max_train_steps=10, learning_rate=1e-3, lr_warmup_steps=0,
        checkpointing_steps=100, num_sample_images=0,
    )  # fmt: skip
    return TrainingArguments(**{**defaults, **overrides})


def dataset(n=16):
    return TensorDataset(torch.randn(n, 1, generator=torch.Generator().manual_seed(0)))


def signalled_at(step, signum=signal.SIGTERM):
    """A loss that sends this process `signum` during its `step`-th call, as a scheduler (or a person) would."""
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return model(batch[0]).pow(2).mean()

    return loss


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_after_the_step_with_a_final_checkpoint_and_the_run_resumes(tmp_path, signum, capfd):
    """QA (operations): Ctrl-C lost every step since the last periodic checkpoint, where SIGTERM lost none."""
    handlers_before = [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)]
    model, _, summary = train(args_for(tmp_path / "run"), nn.Linear(1, 1), dataset(), signalled_at(3, signum))

    assert (summary.global_step, summary.stopped_by_signal, summary.stopped_by_time_budget) == (3, signum.name, False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]
    assert json.loads((run / "training_summary.json").read_text())["stopped_by_signal"] == signum.name
    assert len(json.loads((run / "loss_history.json").read_text())["steps"]) == 3
    assert not (run / ".run.lock").exists()
    assert [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)] == handlers_before
    said = capfd.readouterr()
    assert f"stopped by {signum.name} at step 3, with checkpoint-3" in said.out
    assert ("Ctrl-C again stops it at once" in said.err) == (signum == signal.SIGINT)

    resumed_args = args_for(run, resume_from_checkpoint="latest")
    _, _, resumed = train(resumed_args, nn.Linear(1, 1), dataset(), lambda model, batch: model(batch[0]).pow(2).mean())
    assert (resumed.resumed_from_step, resumed.global_step, resumed.stopped_by_signal) == (3, 10, None)


def test_a_signal_the_process_was_started_to_ignore_stays_ignored(tmp_path):
    """Review: a shell script's background job (`python train.py & wait`) starts with Ctrl-C ignored, so that the
    script's Ctrl-C does not reach it; training took it as a stop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, _, summary = train(args_for(tmp_path / "run", max_train_steps=4), nn.Linear(1, 1), dataset(),
                              signalled_at(2, signal.SIGINT))  # fmt: skip
        assert (summary.global_step, summary.stopped_by_signal) == (4, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_command_whose_training_a_signal_stopped_exits_with_its_status_after_saving(tmp_path, signum, status):
    saved = tmp_path / "saved.txt"

    def command():
        model, _, _ = train(args_for(tmp_path / "run"), nn.Linear(1, 1), dataset(), signalled_at(2, signum))
        saved.write_text("model saved")  # what a training script does once `train` returns

    with pytest.raises(SystemExit) as exited:
        run_from_shell("train.py", command)
    assert exited.value.code == status and saved.read_text() == "model saved"

    run_from_shell("train.py", lambda: None)  # a later command that trains nothing ends normally


class SelfSignallingImages(Dataset):
    """Each item a loader worker reads sends it `signum`, as when a scheduler signals the whole process group (or a
    terminal's Ctrl-C its foreground group)."""

    def __init__(self, signum):
        self.signum = signum

    def __len__(self):
        return 16

    def __getitem__(self, index):
        if get_worker_info() is not None:  # not in the main process (the run's record reads an item)
            os.kill(os.getpid(), self.signum)
        return (torch.full((1,), float(index)),)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_loader_workers_leave_the_stop_signals_to_the_main_process(tmp_path, signum):
    args = args_for(tmp_path / "run", dataloader_num_workers=1)
    _, _, summary = train(args, nn.Linear(1, 1), SelfSignallingImages(signum), signalled_at(2, signum))
    assert (summary.global_step, summary.stopped_by_signal) == (2, signum.name)


def _wait_as_a_loader_worker(stop_signal, ready):
    stop_signal.worker_init_fn(0)
    ready.set()
    time.sleep(60)


def test_a_loader_worker_ignores_sigterm_only_while_its_process_trains():
    """After training, SIGTERM ends a worker again: `multiprocessing` terminates its daemon processes at exit and
    waits for them, so a worker that still ignored it would hang the exit of a script whose loader outlived `train`."""
    stop_signal, ready = StopSignal(), multiprocessing.Event()
    stop_signal.listening_now.value = True
    worker = multiprocessing.Process(target=_wait_as_a_loader_worker, args=(stop_signal, ready), daemon=True)
    worker.start()
    assert ready.wait(timeout=30)
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=1.0)
    assert worker.is_alive()  # left to the main process while it trains

    stop_signal.listening_now.value = False
    worker.terminate()  # what multiprocessing's exit does
    worker.join(timeout=30)
    assert not worker.is_alive() and worker.exitcode == -signal.SIGTERM


# process 1 alone is signalled during its second step (Ctrl-C); both must stop after it with the same checkpoint, and
# name the signal
SIGNAL_ONE_PROCESS = """
import os, signal, sys, torch
from torch import nn
from torch.utils.data import TensorDataset
from diffusion_classifiers.training import TrainingArguments, train
from diffusion_classifiers.training.stop_signal import StopSignal

calls = []
def loss(model, batch):
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGINT)
    return model(batch[0]).pow(2).mean()

args = TrainingArguments(output_dir=sys.argv[1], train_batch_size=2, max_train_steps=10, lr_warmup_steps=0,
                         checkpointing_steps=100, num_sample_images=0)
model, accelerator, summary = train(args, nn.Linear(1, 1), TensorDataset(torch.randn(16, 1)), loss)
print(f"process {accelerator.process_index}: step {summary.global_step}, {summary.stopped_by_signal}", flush=True)
"""


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    (tmp_path / "signal_one.py").write_text(SIGNAL_ONE_PROCESS)
    result = launch_two(str(tmp_path / "signal_one.py"), str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    for process in range(2):
        assert f"process {process}: step 2, SIGINT" in result.stdout
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_replacing_run_sigterm_stopped_keeps_the_replaced_runs_checkpoints_until_it_ends(tmp_path):
    """QA: an --overwrite_output_dir rerun stopped by SIGTERM 5 s in deleted the finished run's checkpoints, as if it
    had ended: it had not (it is resumed), and the replaced run was lost. They stay aside until the rerun ends."""
    run = tmp_path / "run"
    plain = lambda model, batch: model(batch[0]).pow(2).mean()  # noqa: E731
    train(args_for(run, checkpointing_steps=5), nn.Linear(1, 1), dataset(), plain)
    replacing = args_for(run, checkpointing_steps=5, overwrite_output_dir=True, seed=1)
    _, _, stopped = train(replacing, nn.Linear(1, 1), dataset(), signalled_at(3))
    assert stopped.stopped_by_signal == "SIGTERM"
    aside = run / ".replaced_checkpoints"
    assert sorted(p.name for p in aside.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]
    resumed = args_for(run, checkpointing_steps=5, seed=1, resume_from_checkpoint="latest")
    _, _, ended = train(resumed, nn.Linear(1, 1), dataset(), plain)
    assert (ended.resumed_from_step, ended.global_step, ended.stopped_by_signal) == (3, 10, None)
    assert not aside.exists()  # the rerun ended: the replaced run's checkpoints go


def test_a_demo_whose_training_sigterm_stopped_probes_and_reports_nothing(
    tmp_path, tmp_path_factory, monkeypatch, capsys
):
    """QA (operations): the demo probed the U-Net SIGTERM cut short, wrote its report, metrics.json and pipeline as a
    finished demo's, and only then exited 143; it now stops once the checkpoint is saved, and a resume finishes it."""
    import numpy as np
    from sklearn.datasets import load_digits

    from diffusion_classifiers.cli import main

    from .conftest import digit_folder

    data = tmp_path_factory.mktemp("digits")  # 80 digits 0 and 1, which the resumed demo probes (all 1797 digits:
    digit_folder(data, np.flatnonzero(load_digits().target <= 1)[:80])  # 11 s instead of 7): the data is not tested
    monkeypatch.setattr(StopSignal, "received_anywhere", lambda self, accelerator: True)  # at the first step
    demo = ["demo", "--dataset", str(data), "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny",
            "--max_train_steps", "3", "--lr_warmup_steps", "0", "--timesteps", "10"]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        run_from_shell("diffusion-classifiers demo", lambda: main(demo))
    assert exited.value.code == 143
    assert "training stopped by SIGTERM at step 1: nothing probed or reported" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["unet_training"]
    assert (tmp_path / "unet_training" / "checkpoint-1").is_dir()
    monkeypatch.undo()
    main([*demo, "--resume_from_checkpoint", "latest"])
    assert json.loads((tmp_path / "unet_training" / "training_summary.json").read_text())["global_step"] == 3
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "pipeline" / "model_index.json").is_file()

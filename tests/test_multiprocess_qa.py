"""What a script run by `accelerate launch` on several processes may do around the library: keep using the process
group after `train` returns, and have a wrong launch refused early, in one line."""

import re
import subprocess

import pytest

from .conftest import PYTHON, python_subprocess_env
from .test_training import free_port

# two models trained one after the other in one 2-process script, with the diffusers habit of a barrier before saving
TRAIN_TWICE = """
import sys, torch
from torch import nn
from torch.utils.data import TensorDataset
from diffusion_classifiers.training import TrainingArguments, train

dataset = TensorDataset(torch.randn(16, 1))
for k in range(2):
    args = TrainingArguments(output_dir=f"{sys.argv[1]}/run{k}", train_batch_size=4, max_train_steps=2,
                             lr_warmup_steps=0, checkpointing_steps=100, num_sample_images=0)
    model, accelerator, summary = train(args, nn.Linear(1, 1), dataset, lambda model, batch: model(batch[0]).pow(2).mean())
    accelerator.wait_for_everyone()
    print(f"run {k} process {accelerator.process_index}: {summary.global_step} steps on {summary.num_processes}", flush=True)
"""


def launch_two(*script_and_args, env=None):
    command = [
        PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *script_and_args,
    ]  # fmt: skip
    env = python_subprocess_env() | {"ACCELERATE_USE_CPU": "1"} | (env or {})
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_process_group_outlives_train(tmp_path):
    (tmp_path / "twice.py").write_text(TRAIN_TWICE)
    result = launch_two(str(tmp_path / "twice.py"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    for k in range(2):
        for process in range(2):
            assert f"run {k} process {process}: 2 steps on 2" in result.stdout


def run_script_from_shell(monkeypatch, script, *argv):
    """An example script run as from a shell (its `run_from_shell`); the one line it exits with."""
    import runpy
    import sys

    from .conftest import REPO_ROOT

    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "examples" / script), run_name="__main__")
    return str(exited.value.code)


def two_process_checkpoint(output_dir, with_record=True):
    import json

    checkpoint = output_dir / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    for rank in range(2):
        (checkpoint / f"random_states_{rank}.pkl").write_bytes(b"")
    if with_record:
        (checkpoint / "training_run.json").write_text(json.dumps({"num_processes": 2, "train_batch_size": 4}))
    return checkpoint


@pytest.mark.parametrize("with_record", [True, False])
def test_resuming_another_process_count_is_refused_before_the_data_in_one_line(tmp_path, monkeypatch, with_record):
    from diffusion_classifiers.training import TrainingArguments, check_run_can_start

    checkpoint = two_process_checkpoint(tmp_path / "out", with_record)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), resume_from_checkpoint="latest")
    expected = (
        f"cannot resume from {checkpoint}: it was written by 2 process(es), this run has 1; resume with accelerate "
        "launch --num_processes 2"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_run_can_start(args)
    missing = tmp_path / "missing.npz"  # the data is never read: the refusal comes first
    line = run_script_from_shell(monkeypatch, "unet_features_train.py", "--dataset", str(missing), "--output_dir",
                                 str(tmp_path / "out"), "--resume_from_checkpoint", "latest")  # fmt: skip
    assert line.startswith(f"unet_features_train.py: error: {expected}")


def test_a_misused_launcher_is_refused_before_the_data_in_one_line_naming_its_cause(tmp_path, monkeypatch):
    from diffusion_classifiers.training import launch

    monkeypatch.setattr(launch, "_requested_processes", lambda: 2)  # as `accelerate launch --cpu --num_processes 2`
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = ["--dataset", str(tmp_path / "missing.npz"), "--output_dir", str(tmp_path / "out")]
    line = run_script_from_shell(monkeypatch, "unet_features_train.py", *args)
    assert line.startswith(
        "unet_features_train.py: error: accelerate launch was asked for 2 processes but 1 runs (the simple launcher "
        "starts one process without --multi_gpu); on a CPU machine use ACCELERATE_USE_CPU=1 accelerate launch"
    )
    # --multi_gpu (torchrun sets WORLD_SIZE) without ACCELERATE_USE_CPU=1 on a machine without a GPU: that is the cause
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    line = run_script_from_shell(monkeypatch, "unet_features_train.py", *args)
    assert "(--multi_gpu on a machine without a GPU: without ACCELERATE_USE_CPU=1 each process trains alone)" in line
    assert "simple launcher" not in line and not (tmp_path / "out").exists()


def test_an_output_in_use_is_one_line_from_a_shell(tmp_path):
    from diffusion_classifiers.cli import run_from_shell
    from diffusion_classifiers.training.output_dir import OutputDirLock

    def second_run():
        with OutputDirLock(str(tmp_path)):
            pass

    with OutputDirLock(str(tmp_path)):
        with pytest.raises(SystemExit) as exited:
            run_from_shell("unet_features_train.py", second_run)
    assert str(exited.value.code).startswith(f"unet_features_train.py: error: --output_dir {tmp_path} is in use by another training run")


# process 0 refuses an image during its second step; process 1, in the step's collective call, loses its peer
ONE_PROCESS_FAILS = """
import os, sys, torch
from torch import nn
from torch.utils.data import TensorDataset
from diffusion_classifiers.cli import run_from_shell
from diffusion_classifiers.training import TrainingArguments, train

calls = []
def loss(model, batch):
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "0":
        raise ValueError("cannot decode image file b/017.png: image file is truncated")
    return model(batch[0]).pow(2).mean()

def main():
    args = TrainingArguments(output_dir=sys.argv[1], train_batch_size=2, max_train_steps=10, lr_warmup_steps=0,
                             checkpointing_steps=100, num_sample_images=0)
    train(args, nn.Linear(1, 1), TensorDataset(torch.randn(16, 1)), loss)

run_from_shell("fails.py", main)
"""


@pytest.mark.slow
def test_a_process_whose_peer_failed_says_so_in_one_line(tmp_path):
    """QA (scaling out): the peer of a process that failed with a one-line error printed 40 lines of a gloo
    traceback ("Connection closed by peer") after it, which buried it."""
    (tmp_path / "fails.py").write_text(ONE_PROCESS_FAILS)
    result = launch_two(str(tmp_path / "fails.py"), str(tmp_path / "run"))
    assert result.returncode != 0
    assert "fails.py: error: cannot decode image file b/017.png: image file is truncated" in result.stderr
    assert "fails.py: error: stopped, another process of this run failed (see its output above" in result.stderr
    assert "[rank1]: Traceback" not in result.stderr and "Connection closed by peer" not in result.stderr

"""What a script run by `accelerate launch` on several processes may do around the library: keep using the process
group after `train` returns, and have a wrong launch refused early, in one line."""

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

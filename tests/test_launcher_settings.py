"""What `accelerate launch` (or `accelerate config`) sets reaches the training loop: its mixed precision.

QA: `accelerate launch --mixed_precision bf16 ... examples/unet_features_train.py` trained in float32 and recorded
"mixed_precision": "no" in `checkpoint-N/training_run.json`: the script's `--mixed_precision` defaulted to "no" and
overrode the launcher's `ACCELERATE_MIXED_PRECISION`. These tests set that variable as the launcher does and train a
tiny model in this process for a step or two.
"""

import argparse
import json
import warnings

import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import TensorDataset

from diffusion_classifiers.training import TrainingArguments, check_run_can_start, train
from diffusion_classifiers.training.arguments import add_training_args, training_args_from_namespace

LAUNCHER = "ACCELERATE_MIXED_PRECISION"


@pytest.fixture(autouse=True)
def fresh_accelerator_state(monkeypatch):
    """accelerate keeps one mixed-precision setting per process: each test starts and ends afresh, without a
    launcher's precision unless it sets one."""
    monkeypatch.delenv(LAUNCHER, raising=False)
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def tiny_args(output_dir, **overrides):
    settings = dict(
        train_batch_size=8, max_train_steps=1, learning_rate=1e-3, lr_warmup_steps=0, checkpointing_steps=1,
        num_sample_images=0,
    )  # fmt: skip
    return TrainingArguments(output_dir=str(output_dir), **{**settings, **overrides})


def linear_dataset(n=16):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


def regression_loss(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def tiny_train(args):
    """Train a small MLP with `args`; returns the dtypes its first layer computed in and `train`'s result."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    dtypes = set()
    model[0].register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    return dtypes, train(args, model, linear_dataset(), regression_loss)


def recorded_precision(output_dir, step):
    return json.loads((output_dir / f"checkpoint-{step}" / "training_run.json").read_text())["mixed_precision"]


def test_the_flag_defaults_to_none_so_that_the_launcher_decides():
    args = training_args_from_namespace(add_training_args(argparse.ArgumentParser()).parse_args(["--output_dir", "x"]))
    assert args.mixed_precision is None
    assert TrainingArguments(output_dir="x", max_train_steps=1, lr_warmup_steps=0).mixed_precision is None
    with pytest.raises(ValueError, match=r'expected --mixed_precision to be None, "no", "fp16" or "bf16"'):
        TrainingArguments(output_dir="x", max_train_steps=1, lr_warmup_steps=0, mixed_precision="fp8")


def test_the_launchers_mixed_precision_applies_when_the_flag_is_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv(LAUNCHER, "bf16")  # what `accelerate launch --mixed_precision bf16` passes its processes
    args = tiny_args(tmp_path)
    dtypes, (trained, accelerator, summary) = tiny_train(args)
    assert summary.global_step == 1
    assert accelerator.mixed_precision == "bf16"
    assert dtypes == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert recorded_precision(tmp_path, 1) == "bf16"  # the precision it trained in, not the flag's None
    assert args.mixed_precision is None  # the caller's arguments are left as they were
    assert trained[0].weight.dtype == torch.float32


def test_no_launcher_and_no_flag_trains_and_records_no(tmp_path):
    dtypes, (_, accelerator, _) = tiny_train(tiny_args(tmp_path))
    assert accelerator.mixed_precision == "no" and dtypes == {torch.float32}
    assert recorded_precision(tmp_path, 1) == "no"


def test_the_scripts_flag_overrides_the_launchers_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(LAUNCHER, "bf16")
    with pytest.warns(UserWarning, match=r"--mixed_precision no overrides accelerate launch's mixed precision 'bf16'"):
        dtypes, (_, accelerator, _) = tiny_train(tiny_args(tmp_path, mixed_precision="no"))
    assert accelerator.mixed_precision == "no" and dtypes == {torch.float32}
    assert recorded_precision(tmp_path, 1) == "no"


@pytest.mark.parametrize("flag", ["no", "bf16"])
def test_a_flag_over_the_launchers_default_or_its_own_precision_is_not_warned_about(tmp_path, monkeypatch, flag):
    """"no" is accelerate launch's default when neither its flag nor its config gives one: `accelerate launch
    train.py --mixed_precision bf16`, the usual way, overrides nothing the user asked for."""
    monkeypatch.setenv(LAUNCHER, "no")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*overrides accelerate launch")
        tiny_train(tiny_args(tmp_path, mixed_precision=flag))


def test_a_launcher_fp16_on_a_cpu_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv(LAUNCHER, "fp16")
    args = tiny_args(tmp_path / "run")
    refused = r"accelerate launch's mixed precision fp16 \(ACCELERATE_MIXED_PRECISION.*needs a GPU"
    with pytest.raises(ValueError, match=refused):
        check_run_can_start(args)  # what the scripts check before they read the data
    with pytest.raises(ValueError, match=refused):
        tiny_train(args)
    assert not (tmp_path / "run").exists()


def test_a_launcher_precision_the_loop_does_not_train_in_is_refused_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(LAUNCHER, "fp8")
    with pytest.raises(ValueError, match=r"mixed precision 'fp8' \(ACCELERATE_MIXED_PRECISION.*--mixed_precision"):
        check_run_can_start(tiny_args(tmp_path / "run"))
    with pytest.warns(UserWarning, match="overrides accelerate launch's mixed precision 'fp8'"):
        tiny_train(tiny_args(tmp_path / "run", mixed_precision="no"))  # the script's flag overrides it


def test_a_resume_compares_the_precision_trained_in_not_the_flag(tmp_path, monkeypatch):
    """A checkpoint written in "no" (no launcher, no flag: every checkpoint written before the flag defaulted to None)
    resumes without the flag; under a launcher asking for bf16 the resume is refused, naming where bf16 came from;
    a checkpoint written in the launcher's bf16 resumes under the same launcher and with the same flag."""
    tiny_train(tiny_args(tmp_path))
    resume = dict(max_train_steps=2, resume_from_checkpoint="latest")
    check_run_can_start(tiny_args(tmp_path, **resume))
    _, (_, _, summary) = tiny_train(tiny_args(tmp_path, **resume))
    assert (summary.resumed_from_step, summary.global_step, recorded_precision(tmp_path, 2)) == (1, 2, "no")

    monkeypatch.setenv(LAUNCHER, "bf16")
    refused = r"--mixed_precision no -> bf16.*precision is accelerate launch's \(ACCELERATE_MIXED_PRECISION=bf16\)"
    resume = dict(max_train_steps=3, resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match=refused):
        check_run_can_start(tiny_args(tmp_path, **resume))
    with pytest.raises(ValueError, match=refused):
        tiny_train(tiny_args(tmp_path, **resume))
    with pytest.warns(UserWarning, match="overrides accelerate launch's"):  # the checkpoint's "no", given
        _, (_, _, summary) = tiny_train(tiny_args(tmp_path, mixed_precision="no", **resume))
    assert (summary.resumed_from_step, summary.global_step) == (2, 3)

    bf16_run = tmp_path / "bf16"
    tiny_train(tiny_args(bf16_run))  # the launcher's bf16
    assert recorded_precision(bf16_run, 1) == "bf16"
    resume = dict(max_train_steps=2, resume_from_checkpoint="latest")
    _, (_, _, summary) = tiny_train(tiny_args(bf16_run, **resume))
    assert (summary.resumed_from_step, summary.global_step) == (1, 2)
    monkeypatch.delenv(LAUNCHER)
    resume = dict(max_train_steps=3, resume_from_checkpoint="latest")
    _, (_, _, summary) = tiny_train(tiny_args(bf16_run, mixed_precision="bf16", **resume))
    assert (summary.resumed_from_step, summary.global_step) == (2, 3)
    with pytest.raises(ValueError, match=r'--mixed_precision bf16 -> no.*mixed precision is "no"'):
        check_run_can_start(tiny_args(bf16_run, max_train_steps=4, resume_from_checkpoint="latest"))


def run_example_from_shell(monkeypatch, script, *argv):
    """An example script run as from a shell (its `run_from_shell`); the one line it exits with, or None."""
    import runpy
    import sys

    from .conftest import REPO_ROOT

    monkeypatch.setattr(sys, "argv", [script, *argv])
    try:
        runpy.run_path(str(REPO_ROOT / "examples" / script), run_name="__main__")
    except SystemExit as exited:
        return None if exited.code in (None, 0) else str(exited.code)
    return None


def test_a_training_script_trains_in_the_launchers_precision(tmp_path, monkeypatch):
    """What the QA ran, in one process: `accelerate launch --mixed_precision bf16 examples/unet_features_train.py`."""
    script, out = "unet_features_train.py", tmp_path / "out"
    argv = [
        "--dataset", "digits", "--unet_preset", "tiny", "--image_size", "8", "--output_dir", str(out),
        "--max_train_steps", "1", "--lr_warmup_steps", "0", "--train_batch_size", "4", "--num_sample_images", "0",
    ]  # fmt: skip
    monkeypatch.setenv(LAUNCHER, "fp16")  # refused on this CPU before the data is read, naming the launcher
    message = run_example_from_shell(monkeypatch, script, *argv)
    assert message.startswith(f"{script}: error: accelerate launch's mixed precision fp16 (ACCELERATE_MIXED_PRECISION")
    assert not out.exists()
    monkeypatch.setenv(LAUNCHER, "bf16")
    assert run_example_from_shell(monkeypatch, script, *argv) is None
    assert recorded_precision(out, 1) == "bf16"

"""The training loop's speed options: what is turned on where (CUDA only, the plain path on CPU), that bf16 mixed
precision really autocasts the model's forward, that the CUDA memory layout keeps checkpoints and saved models
unchanged, and that `--max_train_minutes` stops cleanly with a final checkpoint, the loss files and the model."""

import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from torch.utils.data import TensorDataset

from diffusion_classifiers.models import RepresentationConditionedDiTModel, rc_dit_config, unet_config
from diffusion_classifiers.training import TrainingArguments, add_training_args, train, train_ddpm_unet
from diffusion_classifiers.training.arguments import training_args_from_namespace
from diffusion_classifiers.training import loop
from diffusion_classifiers.training.loop import build_optimizer, uses_channels_last
from diffusion_classifiers.training.time_budget import TrainingBudget

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def tiny_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path), train_batch_size=8, max_train_steps=4, learning_rate=1e-3, lr_warmup_steps=1,
        checkpointing_steps=2, num_sample_images=0,
    )  # fmt: skip
    return TrainingArguments(**{**defaults, **overrides})


def tiny_images(n=16, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def regression_loss(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def linear_dataset(n=32):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


# ------------------------------------------------------------------------------------------------------------------
# What runs where
# ------------------------------------------------------------------------------------------------------------------


def test_cuda_only_options_are_off_on_cpu_and_on_for_cuda():
    args = TrainingArguments(output_dir="unused")
    unet = UNet2DModel(**unet_config("tiny", 8))
    dit = RepresentationConditionedDiTModel(**rc_dit_config("tiny", 8, 1, 16))  # a patch-embedding convolution
    mlp = nn.Sequential(nn.Linear(4, 4))
    assert uses_channels_last(unet, CUDA) and uses_channels_last(dit, CUDA)
    assert not uses_channels_last(unet, CPU) and not uses_channels_last(mlp, CUDA)
    assert build_optimizer(args, mlp, CUDA).defaults["fused"] is True
    assert not build_optimizer(args, mlp, CPU).defaults["fused"]


def tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_is_on_while_cuda_trains_and_restored_after_even_on_errors():
    args, before = TrainingArguments(output_dir="unused", allow_tf32=True), tf32_flags()
    with loop.cuda_math(args, CPU):
        assert tf32_flags() == before  # CPU math is left alone
    with pytest.raises(RuntimeError), loop.cuda_math(args, CUDA):  # the flags can be set without a GPU
        assert tf32_flags() == (True, True)
        raise RuntimeError("a failed training")
    assert tf32_flags() == before


def test_diffusers_attention_of_our_models_is_pytorch_sdpa():
    unet = UNet2DModel(**unet_config("tiny", 8))
    dit = RepresentationConditionedDiTModel(**rc_dit_config("tiny", 8, 1, 16))
    attentions = [m for model in (unet, dit) for m in model.modules() if isinstance(m, Attention)]
    assert len(attentions) >= 3
    assert all(isinstance(attention.processor, AttnProcessor2_0) for attention in attentions)


def test_speed_flags_are_command_line_flags_and_bad_budgets_are_refused():
    parser = add_training_args(argparse.ArgumentParser())
    flags = parser.parse_args(
        ["--output_dir", "o", "--max_train_minutes", "2.5", "--torch_compile", "--no-allow_tf32", "--no-channels_last"]
    )
    assert (flags.max_train_minutes, flags.torch_compile, flags.allow_tf32, flags.channels_last) == (2.5, True, False, False)
    defaults = parser.parse_args(["--output_dir", "o"])
    assert (defaults.max_train_minutes, defaults.torch_compile, defaults.allow_tf32, defaults.channels_last) == (None, False, True, True)
    with pytest.raises(ValueError, match=r"expected --max_train_minutes to be None or a positive number, got 0"):
        TrainingArguments(output_dir="o", max_train_minutes=0)
    with pytest.raises(ValueError, match=r"expected --torch_compile_mode to be one of \['default', 'reduce-overhead'"):
        TrainingArguments(output_dir="o", max_train_steps=1, torch_compile_mode="fast")


def test_torch_compile_mode_reaches_torch_compile(monkeypatch):
    model, modes = nn.Linear(2, 2), []
    monkeypatch.setattr(model, "compile", lambda **options: modes.append(options["mode"]))
    parser = add_training_args(argparse.ArgumentParser())
    cases = {(): [], ("--torch_compile",): ["default"]}
    cases[("--torch_compile", "--torch_compile_mode", "reduce-overhead")] = ["reduce-overhead"]
    for flags, expected in cases.items():
        modes.clear()
        args = training_args_from_namespace(parser.parse_args(["--output_dir", "o", "--max_train_steps", "1", *flags]))
        loop.prepare_model_for_speed(args, model, CPU)
        assert modes == expected


def fake_compile(module, **options):  # what `nn.Module.compile` sets, without compiling (that is timed on a GPU)
    module._compiled_call_impl = module._call_impl


def test_cuda_graph_modes_start_an_iteration_each_step_and_return_the_model_uncompiled(tmp_path, monkeypatch):
    monkeypatch.setattr(nn.Module, "compile", fake_compile)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode, replays in {"reduce-overhead": True, "max-autotune": True, "default": False, "max-autotune-no-cudagraphs": False}.items():
        marks.clear()
        args = tiny_args(tmp_path / mode, max_train_steps=3, torch_compile=True, torch_compile_mode=mode)
        model, _, _ = train(args, nn.Linear(4, 1), linear_dataset(), regression_loss)
        assert len(marks) == (3 if replays else 0), mode
        assert ("_compiled_call_impl" in model.__dict__) is not replays, mode  # its next call would overwrite outputs


def test_gradient_accumulation_is_refused_with_cuda_graphs():
    with pytest.raises(ValueError, match="gradient_accumulation_steps 1 with --torch_compile_mode reduce-overhead"):
        TrainingArguments(output_dir="o", max_train_steps=1, torch_compile=True, torch_compile_mode="reduce-overhead",
                          gradient_accumulation_steps=2)  # fmt: skip
    TrainingArguments(output_dir="o", max_train_steps=1, torch_compile=True, gradient_accumulation_steps=2)  # default mode


# ------------------------------------------------------------------------------------------------------------------
# Mixed precision
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process: a test that changes it starts and ends afresh."""
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_mixed_precision_autocasts_the_model_forward(tmp_path, fresh_accelerator_state):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    seen = {}

    def record_dtype(name):
        return lambda module, inputs, output: seen.setdefault(name, set()).add(output.dtype)

    model[0].register_forward_hook(record_dtype("linear"))
    args = tiny_args(tmp_path, max_train_steps=2, mixed_precision="bf16")
    trained, _, summary = train(args, model, linear_dataset(), regression_loss)
    assert seen["linear"] == {torch.bfloat16}  # the matmul ran in bf16 under autocast
    assert trained[0].weight.dtype == torch.float32  # the weights (and the optimizer) stay float32
    assert summary.global_step == 2 and torch.isfinite(torch.tensor(summary.final_loss))

    seen.clear()
    trained(torch.zeros(2, 4))  # the returned model runs as it was built: no autocast left on its forward
    assert seen["linear"] == {torch.float32}

    seen.clear()  # another model of the same process in fp32: accelerate's state follows (it refuses a change itself)
    train(tiny_args(tmp_path / "fp32", max_train_steps=1), model, linear_dataset(), regression_loss)
    assert seen["linear"] == {torch.float32}
    seen.clear()
    train(tiny_args(tmp_path / "bf16_again", max_train_steps=1, mixed_precision="bf16"), model, linear_dataset(), regression_loss)
    assert seen["linear"] == {torch.bfloat16}


# ------------------------------------------------------------------------------------------------------------------
# The CUDA memory layout, run on CPU: checkpoints, resuming and the saved model are unchanged
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_channels_last_training_checkpoints_resumes_and_saves(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "uses_channels_last", lambda model, device: True)  # the CUDA layout, on CPU
    images = tiny_images()
    args = tiny_args(tmp_path / "run", use_ema=True)
    unet, _, summary = train_ddpm_unet(args, images, preset="tiny")
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert summary.global_step == 4 and (tmp_path / "run" / "checkpoint-4").is_dir()
    unet.save_pretrained(tmp_path / "saved")
    reloaded = UNet2DModel.from_pretrained(tmp_path / "saved")
    for name, weight in reloaded.state_dict().items():
        torch.testing.assert_close(weight, unet.state_dict()[name], rtol=0, atol=0)

    # resuming the layout's checkpoint-2 ends at the uninterrupted run's weights, bit for bit
    resumed_args = tiny_args(tmp_path / "run", use_ema=True, resume_from_checkpoint="checkpoint-2", overwrite_output_dir=True)
    resumed, _, resumed_summary = train_ddpm_unet(resumed_args, images, preset="tiny")
    assert resumed_summary.resumed_from_step == 2
    for name, weight in resumed.state_dict().items():
        torch.testing.assert_close(weight, unet.state_dict()[name], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# --max_train_minutes
# ------------------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.seconds = 0.0

    def __call__(self):
        return self.seconds


def test_budget_runs_out_at_its_deadline_on_a_fake_clock(tmp_path):
    from accelerate import Accelerator

    accelerator, clock = Accelerator(cpu=True), FakeClock()
    budget = TrainingBudget(2.0, clock=clock)
    clock.seconds = 30.0
    assert budget.fraction_used(accelerator) == 0.25
    clock.seconds = 119.9
    assert budget.fraction_used(accelerator) < 1.0
    clock.seconds = 120.0
    assert budget.fraction_used(accelerator) >= 1.0
    assert TrainingBudget(None, clock=clock).fraction_used(accelerator) == 0.0


def test_max_train_minutes_stops_with_a_final_checkpoint_loss_files_and_the_model(tmp_path):
    images = tiny_images()
    args = tiny_args(tmp_path / "run", max_train_steps=50, checkpointing_steps=20, max_train_minutes=1e-9)
    unet, _, summary = train_ddpm_unet(args, images, preset="tiny")  # the budget runs out during the first step
    run = tmp_path / "run"
    assert summary.global_step == 1 and summary.stopped_by_time_budget
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((run / "training_summary.json").read_text())["stopped_by_time_budget"] is True
    assert len(json.loads((run / "loss_history.json").read_text())["steps"]) == 1
    unet.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()

    # the budgeted run resumes from its final checkpoint to the end of its schedule
    resumed_args = tiny_args(run, max_train_steps=50, checkpointing_steps=20, resume_from_checkpoint="latest")
    resumed_args.max_train_steps = 3
    _, _, resumed = train_ddpm_unet(resumed_args, images, preset="tiny")
    assert (resumed.resumed_from_step, resumed.global_step, resumed.stopped_by_time_budget) == (1, 3, False)


def cosine(step, length, warmup=0):
    if step < warmup:
        return step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (length - warmup)))


def train_on_a_fake_clock(tmp_path, monkeypatch, seconds_per_step, **overrides):
    """A run whose budget's clock advances `seconds_per_step` (a number, or a function of the step) at each optimizer
    step; returns the learning rate of every step and the summary."""
    clock, step_seconds = FakeClock(), seconds_per_step if callable(seconds_per_step) else lambda step: seconds_per_step
    monkeypatch.setattr(loop, "TrainingBudget", lambda minutes: TrainingBudget(minutes, clock=clock))
    optimizers = []
    monkeypatch.setattr(loop, "build_optimizer", lambda *a: optimizers.append(build_optimizer(*a)) or optimizers[-1])
    learning_rates = []

    def loss_fn(model, batch):
        learning_rates.append(optimizers[0].param_groups[0]["lr"])
        clock.seconds += step_seconds(len(learning_rates))
        return regression_loss(model, batch)

    args = tiny_args(tmp_path, **{"lr_scheduler": "cosine", "lr_warmup_steps": 0, **overrides})
    _, _, summary = train(args, nn.Linear(4, 1), linear_dataset(), loss_fn)
    return learning_rates, summary


def test_a_run_cut_by_its_budget_ends_its_schedule_at_the_deadline(tmp_path, monkeypatch):
    # 100 steps planned, a budget of 10 s, 1 s a step: after the first step the clock takes over and the cosine
    # schedule's remaining 99 steps are spread over the remaining 9 s
    lrs, summary = train_on_a_fake_clock(tmp_path / "fit", monkeypatch, 1.0, max_train_steps=100, max_train_minutes=10 / 60)
    assert summary.global_step == 10 and summary.stopped_by_time_budget
    positions = [0, 1] + [1 + 11 * (k - 1) for k in range(2, 10)]  # 1 + 99 * (k - 1) / 9 after step k
    assert lrs == pytest.approx([1e-3 * cosine(p, 100) for p in positions], rel=1e-6)
    # without fitting, the schedule is cut in its first tenth: the last step still near the peak
    lrs, _ = train_on_a_fake_clock(
        tmp_path / "cut", monkeypatch, 1.0, max_train_steps=100, max_train_minutes=10 / 60, fit_lr_schedule_to_budget=False
    )
    assert lrs == pytest.approx([1e-3 * cosine(k, 100) for k in range(10)], rel=1e-6)


def test_a_run_that_reaches_its_steps_first_follows_the_schedule_step_by_step(tmp_path, monkeypatch):
    lrs, summary = train_on_a_fake_clock(tmp_path, monkeypatch, 1.0, max_train_steps=8, max_train_minutes=100 / 60)
    assert summary.global_step == 8 and not summary.stopped_by_time_budget
    assert lrs == pytest.approx([1e-3 * cosine(k, 8) for k in range(8)], rel=1e-6)


def test_the_warmup_runs_on_steps_however_slow_the_first_step(tmp_path, monkeypatch):
    # a first step of 6 s (compiling, say) in a 20 s budget: the warmup's 5 steps are not skipped, the decay then
    # follows the clock to the deadline
    lrs, summary = train_on_a_fake_clock(
        tmp_path, monkeypatch, lambda step: 6.0 if step == 1 else 1.0,
        max_train_steps=100, max_train_minutes=20 / 60, lr_warmup_steps=5,
    )  # fmt: skip
    assert summary.global_step == 15 and summary.stopped_by_time_budget
    assert lrs[:6] == pytest.approx([1e-3 * cosine(k, 100, warmup=5) for k in range(6)], rel=1e-6)
    assert all(later <= earlier for earlier, later in zip(lrs[5:], lrs[6:])) and lrs[-1] < 0.05e-3


def test_a_resumed_run_starts_from_its_steps_and_spreads_the_rest_of_the_schedule_over_its_own_budget(tmp_path, monkeypatch):
    run = tmp_path / "run"
    lrs, first = train_on_a_fake_clock(run, monkeypatch, 1.0, max_train_steps=100, max_train_minutes=4 / 60, checkpointing_steps=50)
    assert first.global_step == 4 and lrs == pytest.approx([1e-3 * cosine(p, 100) for p in (0, 1, 34, 67)], rel=1e-6)
    lrs, resumed = train_on_a_fake_clock(
        run, monkeypatch, 1.0, max_train_steps=100, max_train_minutes=6 / 60, resume_from_checkpoint="latest"
    )
    assert (resumed.resumed_from_step, resumed.global_step) == (4, 10)
    assert lrs == pytest.approx([1e-3 * cosine(p, 100) for p in (4, 5, 24, 43, 62, 81)], rel=1e-6)


def test_a_run_resumed_without_a_budget_starts_from_the_rate_of_its_steps(tmp_path, monkeypatch):
    # the checkpoint's optimizer holds the clock's last rate (the cosine's end, 0), its schedule the steps made (4)
    run = tmp_path / "run"
    train_on_a_fake_clock(run, monkeypatch, 1.0, max_train_steps=100, max_train_minutes=4 / 60, checkpointing_steps=50)
    lrs, _ = train_on_a_fake_clock(run, monkeypatch, 1.0, max_train_steps=8, resume_from_checkpoint="latest")
    assert lrs == pytest.approx([1e-3 * cosine(p, 8) for p in range(4, 8)], rel=1e-6)  # a schedule of 8 steps now


QUIET_TRAINING = """
import sys, torch
from torch import nn
from torch.utils.data import TensorDataset
from diffusion_classifiers.training import TrainingArguments, train
x = torch.randn(32, 4)
args = TrainingArguments(output_dir=sys.argv[1], train_batch_size=8, max_train_steps=2, num_sample_images=0)
train(args, nn.Linear(4, 1), TensorDataset(x, x.sum(1, keepdim=True)), lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
"""


def test_tqdm_disable_silences_the_training_bar(tmp_path, monkeypatch, capfd):
    # tqdm reads TQDM_DISABLE when it is imported, so the quiet run (a log-writing one, as the GPU suite's) is a new
    # process: this one's tqdm may have read it already (pytest-xdist's workers inherit conftest's TQDM_DISABLE=1)
    env = {name: value for name, value in os.environ.items() if name != "TQDM_DISABLE"} | {"TQDM_DISABLE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", QUIET_TRAINING, str(tmp_path / "quiet")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "train:" not in run.stderr
    # the same run where TQDM_DISABLE is unset draws the bar (here, in this process: tqdm's default shown as there)
    import tqdm.auto

    class Shown(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"disable": False, **kwargs})

    monkeypatch.setattr(loop, "tqdm", Shown)
    monkeypatch.setattr(sys, "argv", ["-c", str(tmp_path / "shown")])
    capfd.readouterr()
    exec(compile(QUIET_TRAINING, "<QUIET_TRAINING>", "exec"), {"__name__": "__main__"})
    assert "train:" in capfd.readouterr().err

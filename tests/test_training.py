import argparse
import json
import re
import socket

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from torch.utils.data import TensorDataset

from diffusion_classifiers.models import unet_config
from diffusion_classifiers.training import (
    DenoisingLoss,
    TrainingArguments,
    add_training_args,
    class_balanced_sampler,
    find_latest_checkpoint,
    train,
    train_ddpm_unet,
    train_score_sde_unet,
    training_args_from_namespace,
)

from diffusion_classifiers.training.arguments import SCHEDULER_NAMES
from diffusion_classifiers.training.monitoring import LossHistory, image_grid


def tiny_images(n=24, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path), train_batch_size=8, max_train_steps=4, learning_rate=1e-3, lr_warmup_steps=1, checkpointing_steps=2)
    return TrainingArguments(**{**defaults, **overrides})


def test_unet_preset_puts_attention_at_16px():
    config = unet_config("small", sample_size=32)
    assert config["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    assert config["up_block_types"] == ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    with pytest.raises(ValueError, match="preset"):
        unet_config("huge")


def test_training_reduces_denoising_loss_and_checkpoints(tmp_path):
    images = tiny_images(64)
    args = tiny_args(tmp_path, max_train_steps=30, checkpointing_steps=10, checkpoints_total_limit=2, learning_rate=3e-3)
    unet, scheduler, summary = train_ddpm_unet(args, images, preset="tiny")
    assert summary.global_step == 30
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]
    assert not list(tmp_path.glob("*.partial"))
    (tmp_path / "plain.txt").write_text("")  # the mode a plain open() gives under this umask
    weight_files = list((tmp_path / "checkpoint-30").glob("*.safetensors"))
    assert weight_files and {f.stat().st_mode for f in weight_files} == {(tmp_path / "plain.txt").stat().st_mode}
    loss_fn = DenoisingLoss(scheduler)
    torch.manual_seed(0)
    trained_loss = loss_fn(unet, (images,)).item()
    torch.manual_seed(0)
    fresh_loss = loss_fn(UNet2DModel(**unet_config("tiny", 8)), (images,)).item()
    assert trained_loss < fresh_loss


def test_resume_from_latest_continues_where_it_stopped(tmp_path):
    dataset = TensorDataset(tiny_images())

    def run(output_dir, steps, resume=None):
        torch.manual_seed(0)
        model = UNet2DModel(**unet_config("tiny", 8))
        args = tiny_args(output_dir, max_train_steps=steps, resume_from_checkpoint=resume, lr_scheduler="constant")
        return train(args, model, dataset, DenoisingLoss(DDPMScheduler()))

    straight, _, _ = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    resumed, _, summary = run(tmp_path / "resumed", 4, resume="latest")
    assert summary.resumed_from_step == 2 and summary.global_step == 4
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_ema_weights_are_returned(tmp_path):
    dataset = TensorDataset(tiny_images())
    torch.manual_seed(0)
    raw, _, _ = train(tiny_args(tmp_path / "raw"), UNet2DModel(**unet_config("tiny", 8)), dataset, DenoisingLoss(DDPMScheduler()))
    torch.manual_seed(0)
    ema, _, _ = train(tiny_args(tmp_path / "ema", use_ema=True), UNet2DModel(**unet_config("tiny", 8)), dataset, DenoisingLoss(DDPMScheduler()))
    assert any(not torch.allclose(a, b) for a, b in zip(raw.parameters(), ema.parameters()))


def test_a_warmup_as_long_as_the_run_is_said(tmp_path):
    """QA: --max_train_steps 30 with the default 100 warmup steps ended at 30% of the learning rate, silently."""
    with pytest.warns(UserWarning, match=r"--lr_warmup_steps 100 >= --max_train_steps 30: .*\(it ends near 0.0003\)"):
        tiny_args(tmp_path, max_train_steps=30, lr_warmup_steps=100)


def test_bad_training_arguments_fail_early(tmp_path):
    with pytest.raises(ValueError, match="train_batch_size"):
        tiny_args(tmp_path, train_batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        tiny_args(tmp_path, mixed_precision="fp8")
    for flag, value, expected in [
        ("checkpointing_steps", 0, "a positive integer"),
        ("gradient_accumulation_steps", 0, "a positive integer"),
        ("max_train_steps", 0, "None or a positive integer"),
        ("checkpoints_total_limit", 0, "None or a positive integer"),
        ("lr_warmup_steps", -1, "0 or more"),
        ("lr_scheduler", "cosine_annealing", "one of ['linear', 'cosine'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"expected --{flag} to be {expected}")):
            tiny_args(tmp_path, **{flag: value})
    with pytest.raises(ValueError, match="expected --checkpointing_steps to be a positive integer, got 0"):
        training_args_from_namespace(add_training_args(argparse.ArgumentParser()).parse_args(["--output_dir", "x", "--checkpointing_steps", "0"]))
    with pytest.raises(ValueError, match="non-empty"):
        train(tiny_args(tmp_path), UNet2DModel(**unet_config("tiny", 8)), TensorDataset(torch.zeros(0, 1, 8, 8)), DenoisingLoss(DDPMScheduler()))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(tiny_args(tmp_path, resume_from_checkpoint="checkpoint-99"), UNet2DModel(**unet_config("tiny", 8)), TensorDataset(tiny_images()), DenoisingLoss(DDPMScheduler()))


def test_num_epochs_or_max_train_steps_sets_the_length_from_the_shell():
    """`--num_epochs` given alone sets the run's length (no default step count overrides it), `--max_train_steps` alone
    too, both are refused, neither is 1000 steps (the demo's own default: 600)."""
    from diffusion_classifiers.cli import build_parser
    from diffusion_classifiers.training import total_optimizer_steps

    def parsed(*flags, parser=None, command=()):
        parser = parser or add_training_args(argparse.ArgumentParser())
        return training_args_from_namespace(parser.parse_args([*command, "--output_dir", "x", *flags]))

    epochs = parsed("--num_epochs", "1", "--train_batch_size", "8")
    assert (epochs.max_train_steps, epochs.num_epochs) == (None, 1)
    assert total_optimizer_steps(epochs, num_examples=24, num_processes=1) == 3  # one pass over 24 examples, not 1000
    assert total_optimizer_steps(parsed("--max_train_steps", "7"), 24, 1) == 7
    assert total_optimizer_steps(parsed(), 24, 1) == 1000
    with pytest.raises(ValueError, match="expected --max_train_steps or --num_epochs, not both"):
        parsed("--max_train_steps", "7", "--num_epochs", "1")
    with pytest.raises(ValueError, match="not both"):
        TrainingArguments(output_dir="x", max_train_steps=7, num_epochs=1)
    assert TrainingArguments(output_dir="x", num_epochs=2).max_train_steps is None  # the Python API alike
    helps = {action.dest: action.help for action in add_training_args(argparse.ArgumentParser())._actions}
    assert "not both (default: 1000 when `--num_epochs` is not given)" in helps["max_train_steps"]
    demo = build_parser(["demo"])
    assert parsed(parser=demo, command=["demo"]).max_train_steps == 600
    assert parsed("--num_epochs", "2", parser=demo, command=["demo"]).num_epochs == 2


def test_scheduler_names_are_diffusers_own():
    from diffusers.optimization import SchedulerType

    assert list(SCHEDULER_NAMES) == [scheduler.value for scheduler in SchedulerType]


def test_cli_flags_follow_diffusers_names():
    args = add_training_args(argparse.ArgumentParser()).parse_args(["--output_dir", "x", "--use_ema", "--mixed_precision", "bf16", "--checkpoints_total_limit", "3"])
    assert args.use_ema is True and args.mixed_precision == "bf16" and args.checkpoints_total_limit == 3
    assert find_latest_checkpoint("/nonexistent") is None


def free_port() -> int:
    """A port nothing listens on now: the default 29500 may still be held by another test's DDP processes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_conditional_training_checks_labels_and_balances_classes(tmp_path):
    images = tiny_images(24)
    labels = torch.tensor([0] * 20 + [1] * 4)
    with pytest.raises(ValueError, match=r"labels\[3\] = 2 is outside the expected range \[0, 1\]"):
        train_score_sde_unet(tiny_args(tmp_path), images, torch.tensor([0, 1, 0, 2] * 6), num_classes=2, preset="tiny")
    with pytest.raises(ValueError, match="one label per image"):
        train_score_sde_unet(tiny_args(tmp_path), images, labels[:10], preset="tiny")
    assert not any(tmp_path.iterdir())  # refused before training wrote anything
    drawn = labels.repeat(100)[list(class_balanced_sampler(labels.repeat(100), 2, seed=0))]
    assert abs(drawn.float().mean().item() - 0.5) < 0.05  # minority class 1 is 1/6 of the data, half of the draws
    unet, _, summary = train_score_sde_unet(tiny_args(tmp_path, max_train_steps=2), images, labels, preset="tiny", class_balanced=True, label_dropout=0.1)
    assert unet.config.num_class_embeds == 3 and summary.global_step == 2  # 2 classes + the null class
    width, height = Image.open(tmp_path / "samples" / "step_2.png").size
    assert width == 2 * 64 and 4 * 64 < height < 5 * 64  # a column per class, 8 images, their titles above


def test_trainers_refuse_bad_images_before_writing(tmp_path):
    images = tiny_images(24)
    with pytest.raises(ValueError, match="square"):
        train_ddpm_unet(tiny_args(tmp_path), images[..., :6], preset="tiny")
    with pytest.raises(ValueError, match="training data image 5 contains NaN or inf"):
        train_ddpm_unet(tiny_args(tmp_path), torch.cat([images[:5], torch.full((1, 1, 8, 8), float("nan"))]), preset="tiny")
    with pytest.raises(ValueError, match=r"image 0 has values in \[0, 255\]"):
        train_score_sde_unet(tiny_args(tmp_path), torch.linspace(0, 255, 64).reshape(1, 1, 8, 8), torch.tensor([0]), num_classes=2)
    assert not any(tmp_path.iterdir())


def test_score_sde_training_is_reproducible(tmp_path):
    """Same seed: same initial weights, same class-balanced draws, same label dropout, so the same trained U-Net."""
    images, labels = tiny_images(), torch.tensor([0] * 20 + [1] * 4)
    runs = [
        train_score_sde_unet(tiny_args(tmp_path / name, max_train_steps=2), images, labels, preset="tiny", label_dropout=0.5, class_balanced=True)[0]
        for name in ("a", "b")
    ]  # fmt: skip
    for a, b in zip(*(run.parameters() for run in runs)):
        assert torch.equal(a, b)


def test_same_seed_same_initial_weights(tmp_path):
    first, _, _ = train_ddpm_unet(tiny_args(tmp_path / "a", max_train_steps=1), tiny_images(), preset="tiny")
    second, _, _ = train_ddpm_unet(tiny_args(tmp_path / "b", max_train_steps=1), tiny_images(), preset="tiny")
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_every_training_flag_has_help_showing_its_default():
    parser = add_training_args(argparse.ArgumentParser())
    for action in parser._actions[1:]:  # after -h
        assert action.help, action.dest
        # --max_train_steps: its default (None) gives way to --num_epochs, so its help states the length it falls back to
        shown = "(default: 1000 when `--num_epochs` is not given)" if action.dest == "max_train_steps" else "(default: %(default)s)"
        assert action.required or shown in action.help, action.dest
    help_text = parser.format_help()
    assert "(default: 64)" in help_text and "(default: cosine)" in help_text


# ---------------------------------------------------------------------------------------------------------------
# What a run shows without a tracker: loss curve and sample grids
# ---------------------------------------------------------------------------------------------------------------


def test_loss_curve_and_sample_grids_at_each_checkpoint_leave_training_unchanged(tmp_path):
    shown = tiny_args(tmp_path / "shown", use_ema=True, num_sample_images=4, sample_inference_steps=2)
    unet, _, summary = train_ddpm_unet(shown, tiny_images(), preset="tiny")
    history = json.loads((tmp_path / "shown" / "loss_history.json").read_text())
    assert history["steps"] == [1, 2, 3, 4] and history["losses"][-1] == summary.final_loss
    assert (tmp_path / "shown" / "loss_history.csv").read_text().splitlines()[0] == "step,loss"
    assert Image.open(tmp_path / "shown" / "loss_curve.png").size == (700, 400)
    # checkpoints at steps 2 and 4; 4 tiles of 8 px, enlarged 8x to 64 px, in 2 rows of 2
    assert sorted(p.name for p in (tmp_path / "shown" / "samples").iterdir()) == ["step_2.png", "step_4.png"]
    grid = Image.open(tmp_path / "shown" / "samples" / "step_4.png")
    assert grid.size == (128, 128) and len(np.unique(np.asarray(grid))) > 10  # images, not a flat tile
    quiet, _, _ = train_ddpm_unet(tiny_args(tmp_path / "quiet", use_ema=True, num_sample_images=0), tiny_images(), preset="tiny")
    assert not (tmp_path / "quiet" / "samples").exists() and (tmp_path / "quiet" / "loss_curve.png").exists()
    for a, b in zip(unet.parameters(), quiet.parameters()):  # sampling swapped the EMA weights in and back out
        assert torch.equal(a, b)


def test_resumed_run_continues_the_loss_history_and_drops_later_samples(tmp_path):
    straight = tiny_args(tmp_path / "straight", lr_scheduler="constant", num_sample_images=2, sample_inference_steps=1)
    train_ddpm_unet(straight, tiny_images(), preset="tiny")
    folder = tmp_path / "resumed"
    train_ddpm_unet(tiny_args(folder, max_train_steps=2, lr_scheduler="constant", num_sample_images=2, sample_inference_steps=1), tiny_images(), preset="tiny")
    (folder / "samples" / "step_6.png").write_bytes(b"left by an earlier run")
    resumed = tiny_args(folder, lr_scheduler="constant", num_sample_images=2, sample_inference_steps=1, resume_from_checkpoint="latest")
    train_ddpm_unet(resumed, tiny_images(), preset="tiny")
    assert json.loads((folder / "loss_history.json").read_text()) == json.loads((tmp_path / "straight" / "loss_history.json").read_text())
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step_2.png", "step_4.png"]
    assert LossHistory.resume(str(folder), up_to_step=3).steps == [1, 2, 3]


def test_image_grid_enlarges_small_tiles_and_keeps_their_pixels():
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = image_grid(images)  # 6 images: 2 rows of 3
    assert grid.size == (3 * 64, 2 * 64)
    expected = (images[4, 0] * 255).round().to(torch.uint8)  # row 1, column 1; each pixel an 8 x 8 block
    tile = torch.tensor(np.asarray(grid.convert("L")))[64:128:8, 64:128:8]
    assert torch.equal(tile, expected)
    with pytest.raises(ValueError, match="multiple of rows=4"):
        image_grid(images, rows=4)
    # the class-conditional grid's columns are titled (QA: which column is which class?), in a band above the tiles
    titled = np.asarray(image_grid(images, column_titles=["benign", "a very long class name", "c"]).convert("L"))
    band = titled.shape[0] - 2 * 64
    assert titled.shape[1] == 3 * 64 and band > 0 and np.array_equal(titled[band:], np.asarray(grid.convert("L")))
    assert all((titled[:band, 64 * k : 64 * (k + 1)] < 128).any() for k in range(3))  # dark text over each column
    assert (titled[:band, [0, 63, 64, 127]] == 255).all()  # the long name cut short, within its column
    with pytest.raises(ValueError, match=r"column_titles: expected one per column \(3\), got 2"):
        image_grid(images, column_titles=["a", "b"])


def test_rc_dit_sample_grid_shows_references_above_their_variations(tmp_path):
    from diffusion_classifiers.models import RepresentationConditionedDiTModel, build_vit_encoder, rc_dit_config
    from diffusion_classifiers.training import RCDiTJointModel
    from diffusion_classifiers.training.rc_dit import rc_dit_sample_grid

    torch.manual_seed(0)
    encoder = build_vit_encoder(16, 1, 24, num_layers=1, num_heads=2, patch_size=4)
    model = RCDiTJointModel(encoder, RepresentationConditionedDiTModel(**rc_dit_config("tiny", 16, 1, 24))).eval()
    images = tiny_images(10, size=16)
    sample_grid = rc_dit_sample_grid(images, DDPMScheduler(), num_images=3, num_inference_steps=2, seed=0)
    grid = sample_grid(model)
    assert grid.size == (3 * 64, 2 * 64)
    index = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:3]
    top_left = torch.tensor(np.asarray(grid.convert("L")))[0:64:4, 0:64:4]
    assert torch.equal(top_left, ((images[index[0], 0] + 1) / 2 * 255).round().to(torch.uint8))
    assert np.array_equal(np.asarray(grid), np.asarray(sample_grid(model)))  # the same references and noise each time


def test_a_tracker_whose_package_is_missing_is_refused(monkeypatch):
    """accelerate drops such a tracker silently: a run with --report_to tensorboard logged nowhere, without a word."""
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match=r"--report_to tensorboard: its package is not installed.*\(none installed\)"):
        TrainingArguments(output_dir="unused", max_train_steps=1, report_to="tensorboard")
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [accelerate.utils.LoggerType.TENSORBOARD])
    assert TrainingArguments(output_dir="unused", max_train_steps=1, report_to="tensorboard").report_to == "tensorboard"


def test_fp16_on_a_cpu_is_refused_before_training(tmp_path):
    """accelerate trains `fp16` on a CPU in float32 without a word (the checkpoints were bitwise those of `no`)."""
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_train_steps=1, mixed_precision="fp16", train_batch_size=2)
    with pytest.raises(ValueError, match="--mixed_precision fp16 needs a GPU"):
        train_ddpm_unet(args, tiny_images(4), preset="tiny")
    assert not (tmp_path / "run").exists()


def test_a_lock_left_by_an_earlier_process_with_this_pid_is_taken_over(tmp_path, caplog):
    """A container restarted in its pod has the same hostname and often the same pid (1): its earlier lock names this
    very process, alive, and refused the restarted run. A lock this process holds is still refused."""
    import os

    from diffusion_classifiers.run_lock import RunInUseError, RunLock

    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-01T00:00:00"}))
    lock = RunLock(str(path), "x", "--x", "run")
    lock.acquire()
    assert "Taking over the lock of x" in caplog.text and json.loads(path.read_text()) == lock.owner
    with pytest.raises(RunInUseError, match=rf"x is in use by another run \(pid {os.getpid()} on host"):
        RunLock(str(path), "x", "--x", "run").acquire()  # a second lock of this process: the first holds it
    lock.release()
    assert not path.exists()
    # a live process of this host whose start is not the recorded one: the owner's pid, reused
    parent = {"pid": os.getppid(), "host": socket.gethostname()}
    path.write_text(json.dumps(parent))
    with pytest.raises(RunInUseError, match=rf"pid {os.getppid()} on host"):
        lock.acquire()
    if lock.owner is None and os.path.exists(f"/proc/{os.getppid()}/stat"):
        path.write_text(json.dumps({**parent, "pid_start": 0}))  # no process of this host started at boot's tick 0
        lock.acquire()
        lock.release()
        assert not path.exists()


def test_a_lock_whose_owner_could_not_be_written_is_not_left_behind(tmp_path, monkeypatch):
    """QA (operations): a full disk failed the lock's owner record after the file was created, and the empty lock left
    refused every later run (of training, predict, evaluate) as 'unreadable' until deleted by hand."""
    import errno

    from diffusion_classifiers import run_lock
    from diffusion_classifiers.run_lock import RunLock

    def disk_full(owner, handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_lock.json, "dump", disk_full)
    path = tmp_path / "run" / "run.lock"
    with pytest.raises(OSError, match="No space left on device"):
        RunLock(str(path), "x", "--x", "run").acquire()
    assert not path.parent.exists()  # nor the folder the lock made (review)
    monkeypatch.undo()
    lock = RunLock(str(path), "x", "--x", "run")
    lock.acquire()  # the space freed: the next run starts
    lock.release()


def test_training_leaves_the_callers_random_generators_as_they_were(tmp_path):
    """QA: after a training cell, a notebook's own draws came from the state `args.seed` left, whatever it seeded."""
    import random

    from diffusion_classifiers.training import TrainingArguments, train_ddpm_unet, train_supervised_cnn

    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(8) % 2
    draws = []
    for run in range(2):
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        args = TrainingArguments(str(tmp_path / f"run{run}"), max_train_steps=1, lr_warmup_steps=0, train_batch_size=4,
                                 num_sample_images=0, seed=run)  # fmt: skip
        train_ddpm_unet(args, images, preset="tiny")
        train_supervised_cnn(images, labels, images, labels, 2, str(tmp_path / f"cnn{run}"), max_train_steps=1,
                             train_batch_size=4, seed=run, widths=(4, 8), num_checkpoints=1)  # fmt: skip
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert draws[0] == draws[1] == (random.random(), float(np.random.rand()), float(torch.rand(1)))

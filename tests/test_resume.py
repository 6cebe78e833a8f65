"""Nothing lost, nothing run: killed runs resume bit for bit, checkpoints load without unpickling, one run per folder.

The kill tests train a tiny U-Net (`run_tiny_unet`) in a process that SIGKILLs itself right after checkpoint N is
complete (`run_until_killed`: a fork of this process; for 2-process DDP, workers that accelerate's `debug_launcher`
forks in a fresh interpreter, see the end of this file), resume it with `--resume_from_checkpoint latest`, and compare
every final tensor with `torch.equal` against an uninterrupted run of the same configuration.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
from accelerate import debug_launcher
from accelerate.checkpointing import load_custom_state
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file
from torch.multiprocessing import ProcessExitedException
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset

import diffusion_classifiers.training.loop as loop
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.training import (
    DenoisingLoss,
    EpochSeededSampler,
    OutputDirInUseError,
    TrainingArguments,
    add_training_args,
    class_balanced_sampler,
    optimizer_steps_per_epoch,
    train,
    training_args_from_namespace,
)
from diffusion_classifiers.training.output_dir import LOCK_NAME, REPLACED_CHECKPOINTS, check_output_dir

from .conftest import PYTHON, REPO_ROOT, python_subprocess_env


def run_tiny_unet(argv: list) -> None:
    """Train a tiny U-Net on 14 random images with the training flags `argv` (plus `--class_balanced`); the main
    process saves the final weights to `<output_dir>.safetensors`."""
    parser = add_training_args(argparse.ArgumentParser(), learning_rate=1e-3, lr_warmup_steps=1, checkpointing_steps=1)
    parser.add_argument("--class_balanced", action="store_true")
    args = parser.parse_args(argv)
    images = torch.rand(14, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = (torch.arange(14) % 4 == 0).long()
    sampler = class_balanced_sampler(labels, 2, seed=args.seed) if args.class_balanced else None
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8))
    loss = DenoisingLoss(DDPMScheduler(num_train_timesteps=100))
    dataset = TensorDataset(images, labels)
    trained, accelerator, _ = train(training_args_from_namespace(args), unet, dataset, loss, sampler)
    if accelerator.is_main_process:
        weights = {name: value.contiguous() for name, value in trained.state_dict().items()}
        save_file(weights, f"{args.output_dir}.safetensors")


def run_until_killed(argv: list, kill_after: int) -> None:
    """`run_tiny_unet`, SIGKILLing this process right after checkpoint `kill_after` is complete."""
    save_checkpoint = loop.save_checkpoint

    def save_then_die(accelerator, args, step, *rest):
        save_checkpoint(accelerator, args, step, *rest)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    loop.save_checkpoint = save_then_die
    run_tiny_unet(argv)


def check_killed_after(output_dir, kill_after):
    steps = sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*") if p.is_dir())
    assert steps[-1] == kill_after and not list(output_dir.glob("*.partial")), steps  # killed right after checkpoint N
    assert (output_dir / LOCK_NAME).exists()  # no cleanup ran: the resumed run takes the stale lock over


def check_resumed_bitwise(tmp_path, kill_after):
    assert json.loads((tmp_path / "killed" / "training_summary.json").read_text())["resumed_from_step"] == kill_after
    history = [json.loads((tmp_path / run / "loss_history.json").read_text()) for run in ("straight", "killed")]
    assert history[0] == history[1]  # killed before it was written beside the checkpoint: read from inside it
    reference, resumed = load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "killed.safetensors")
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name


def kill_and_resume(tmp_path, flags, kill_after):
    """Uninterrupted, killed and resumed runs, the killed one in a fork of this process."""
    run_tiny_unet(["--output_dir", str(tmp_path / "straight"), *flags])
    killed = multiprocessing.get_context("fork").Process(
        target=run_until_killed, args=(["--output_dir", str(tmp_path / "killed"), *flags], kill_after)
    )
    killed.start()
    killed.join(timeout=300)
    assert killed.exitcode == -signal.SIGKILL
    check_killed_after(tmp_path / "killed", kill_after)
    run_tiny_unet(["--output_dir", str(tmp_path / "killed"), *flags, "--resume_from_checkpoint", "latest"])
    check_resumed_bitwise(tmp_path, kill_after)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [2, 4])
def test_killed_run_resumes_bitwise_inside_epochs_one_and_two(tmp_path, kill_after):
    # 14 examples in batches of 4: 3 batches (2 examples dropped), 3 optimizer steps per epoch
    kill_and_resume(tmp_path, ["--train_batch_size", "4", "--max_train_steps", "7"], kill_after)


@pytest.mark.slow
def test_killed_run_with_ema_accumulation_and_class_balance_resumes_bitwise(tmp_path):
    # 3 batches of 4 with accumulation 2: optimizer steps after batches 2 and 3, 2 per epoch; killed in epoch 2
    flags = ["--train_batch_size", "4", "--max_train_steps", "5", "--gradient_accumulation_steps", "2"]
    kill_and_resume(tmp_path, [*flags, "--use_ema", "--class_balanced"], 3)


def ddp_kill_and_resume(tmp_path, kill_after: int, flags: list) -> None:
    """Uninterrupted, killed and resumed 2-process DDP runs (CPU, gloo), each forked by accelerate's `debug_launcher`
    from this process, which must not have made an `Accelerator`."""
    debug_launcher(run_tiny_unet, (["--output_dir", str(tmp_path / "straight"), *flags],))
    with pytest.raises(ProcessExitedException, match="SIGKILL"):
        debug_launcher(run_until_killed, (["--output_dir", str(tmp_path / "killed"), *flags], kill_after))
    check_killed_after(tmp_path / "killed", kill_after)
    assert {p.name for p in (tmp_path / "killed" / f"checkpoint-{kill_after}").glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    resume = ["--output_dir", str(tmp_path / "killed"), *flags, "--resume_from_checkpoint", "latest"]
    debug_launcher(run_tiny_unet, (resume,))


DDP_FLAGS = ["--train_batch_size", "2", "--max_train_steps", "5", "--gradient_accumulation_steps", "2", "--use_ema"]


@pytest.mark.slow
def test_killed_two_process_ddp_run_resumes_bitwise(tmp_path):
    # per process 14 // (2 * 2) = 3 batches of 2, accumulation 2: 2 steps per epoch; killed in epoch 2
    command = [PYTHON, "-m", "tests.test_resume", str(tmp_path), "3", *DDP_FLAGS, "--class_balanced"]
    env = python_subprocess_env()
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    check_resumed_bitwise(tmp_path, 3)
    summary = json.loads((tmp_path / "killed" / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["samples_per_process"] == [3 * 2, 3 * 2]  # after step 3: 1 batch for step 4, 2 for step 5
    # QA (scaling out): the images of a step over both processes were left for a reader to rebuild from the flags
    assert summary["effective_batch_size"] == 2 * 2 * 2


# ------------------------------------------------------------------------------------------------------------------
# In-process: checkpoint files, epoch arithmetic, the data order, the output folder
# ------------------------------------------------------------------------------------------------------------------


def tiny_run(output_dir, dataset=None, unet=None, **overrides):
    """Train a tiny U-Net (or `unet`) in this process on 12 random images (or `dataset`); returns `train`'s result."""
    settings = dict(train_batch_size=4, max_train_steps=2, learning_rate=1e-3, lr_warmup_steps=1, checkpointing_steps=2)
    torch.manual_seed(0)
    unet = unet or UNet2DModel(**unet_config("tiny", 8))
    args = TrainingArguments(output_dir=str(output_dir), **{**settings, **overrides})
    return train(args, unet, dataset or TensorDataset(tiny_images()), DenoisingLoss(DDPMScheduler(num_train_timesteps=100)))


def tiny_images():
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


class UnreadableAfter(torch.utils.data.Dataset):
    """The tiny images, until `readable` have been read: then every read fails, as a streamed folder's truncated file
    does when its batch comes."""

    def __init__(self, readable: int):
        self.images = tiny_images()
        self.readable = readable + len(self.images) + 1  # a run first reads each (up to 64), and one again, to
        # recognise its data

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.readable -= 1
        if self.readable < 0:
            raise ValueError("cannot decode image file zz_trunc.png: image file is truncated")
        return (self.images[index],)


class Poison:
    """Unpickling it creates the file `canary`: what a planted checkpoint file could do."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return open, (self.canary, "w")


def test_a_planted_pickle_is_refused_before_anything_is_unpickled(tmp_path):
    tiny_run(tmp_path / "run", use_ema=True)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert {"ema.safetensors", "ema.json", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.glob("*custom_checkpoint*"))  # the EMA is not accelerate's pickle any more
    canary = tmp_path / "canary"
    torch.save(Poison(canary), checkpoint / "custom_checkpoint_0.pkl")  # as accelerate's `save_custom_state` would
    for use_ema in (True, False):
        with pytest.raises(ValueError, match=r"contains 'custom_checkpoint_0\.pkl', which this version never writes"):
            tiny_run(tmp_path / "run", use_ema=use_ema, max_train_steps=4, resume_from_checkpoint="latest")
        assert not canary.exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released on the error
    with pytest.raises(TypeError):  # how accelerate 1.15 reads it: weights_only=False, the code runs, then it fails
        load_custom_state(torch.nn.Linear(1, 1), str(checkpoint))
    assert canary.exists()  # the poison was real


def test_a_checkpoint_of_version_0_1_0_is_refused_as_such_with_what_to_do(tmp_path):
    """QA: resuming a 0.1.0 run (its EMA accelerate's pickle `custom_checkpoint_0.pkl`, no `training_run.json`) was
    refused as holding a file "this library never writes", or, with --use_ema, as missing `ema.safetensors` like a
    folder copied in part; it now says which version wrote it and what to do, before anything is unpickled."""
    tiny_run(tmp_path / "run", use_ema=True)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    for name in ("ema.safetensors", "ema.json", "training_run.json"):  # as 0.1.0 wrote a checkpoint
        (checkpoint / name).unlink()
    canary = tmp_path / "canary"
    torch.save(Poison(canary), checkpoint / "custom_checkpoint_0.pkl")
    for use_ema in (True, False):
        refused = (r"checkpoint-2 was written by the first release of diffusion-classifiers \(0\.1\.0 as first "
                   r"published\), which saved its EMA weights as the pickle 'custom_checkpoint_0\.pkl'.*cannot be "
                   r"resumed: start a new run in another --output_dir")
        with pytest.raises(ValueError, match=refused):
            tiny_run(tmp_path / "run", use_ema=use_ema, max_train_steps=4, resume_from_checkpoint="latest")
        assert not canary.exists()


def test_a_resume_that_changes_the_step_arithmetic_or_the_model_is_refused_naming_the_change(tmp_path):
    tiny_run(tmp_path, max_train_steps=2)
    resume = dict(max_train_steps=3, resume_from_checkpoint="latest")
    smaller = dict(unet=UNet2DModel(**{**unet_config("tiny", 8), "block_out_channels": (8, 16, 16)}), **resume)
    for changed, overrides in [
        ("--train_batch_size 4 -> 3; --gradient_accumulation_steps 1 -> 2",
         dict(train_batch_size=3, gradient_accumulation_steps=2)),
        (r"training examples \(--dataset; or the same folder listed otherwise: .*\) 12 -> 10",
         dict(dataset=TensorDataset(tiny_images()[:10]))),
        # QA: the same number of other images (another pool, other DICOM windows) resumed silently
        (r"the training images \(other images, or the same read otherwise: --dataset, --window[^)]*\)",
         dict(dataset=TensorDataset(tiny_images().flip(0)))),
        (r"the model's config \(block_out_channels \[16, 32, 32\] -> \[8, 16, 16\]\)", {}),
    ]:
        with pytest.raises(ValueError, match=rf"differs from the one that wrote it in {changed} \(checkpoint -> now\)"):
            tiny_run(tmp_path, **{**(smaller if not overrides else resume), **overrides})
    (tmp_path / "checkpoint-2" / "training_run.json").unlink()  # a checkpoint of before the record: its tensors
    with pytest.raises(ValueError, match=r"the model's tensors \(\d+ differ: conv_in.weight \[16, 1, 3, 3\] -> \[8,"):
        tiny_run(tmp_path, **smaller)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]  # refused before training
    # and on the number of processes, one random state each: as if two had written it
    shutil.copyfile(tmp_path / "checkpoint-2" / "random_states_0.pkl", tmp_path / "checkpoint-2" / "random_states_1.pkl")
    with pytest.raises(ValueError, match=r"differs from the one that wrote it in processes 2 -> 1 \(checkpoint -> now\)"):
        tiny_run(tmp_path, **resume)
    (tmp_path / "checkpoint-2" / "random_states_1.pkl").unlink()
    _, _, summary = tiny_run(tmp_path, **resume)  # and it still resumes with what wrote it
    assert summary.resumed_from_step == 2 and summary.global_step == 3


def test_a_dataset_that_augments_on_read_resumes_though_it_cannot_be_recognised(tmp_path):
    """A user's dataset may change its items from one read to the next (augmentation): the run's data identity is
    then not recorded, rather than refusing every resume."""

    class Augmenting(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, index):
            return (tiny_images()[index] * torch.empty(()).uniform_(0.5, 1.0),)

    tiny_run(tmp_path, dataset=Augmenting())
    assert "data_identity" not in json.loads((tmp_path / "checkpoint-2" / "training_run.json").read_text())
    _, _, summary = tiny_run(tmp_path, dataset=Augmenting(), max_train_steps=3, resume_from_checkpoint="latest")
    assert summary.resumed_from_step == 2 and summary.global_step == 3


@pytest.mark.slow
def test_a_two_process_checkpoint_resumed_by_one_process_is_refused(tmp_path):
    # accelerate steps the schedule once per process per optimizer step: alone, the run would be past its schedule
    command = [PYTHON, "-m", "tests.test_resume", "two-then-one", str(tmp_path / "run")]
    result = subprocess.run(command, env=python_subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "differs from the one that wrote it in processes 2 -> 1 (" in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1"]


def test_a_run_stopped_as_its_checkpoint_appears_keeps_its_loss_history(tmp_path, monkeypatch):
    tiny_run(tmp_path / "straight", max_train_steps=4)
    save_checkpoint = loop.save_checkpoint

    def save_then_stop(accelerator, args, step, *rest):
        save_checkpoint(accelerator, args, step, *rest)
        if step == 2:  # visible, the loss files beside it not written yet
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "stopped", max_train_steps=4)
    assert not (tmp_path / "stopped" / "loss_history.json").exists()
    monkeypatch.undo()
    tiny_run(tmp_path / "stopped", max_train_steps=4, resume_from_checkpoint="latest")
    history = [json.loads((tmp_path / run / "loss_history.json").read_text()) for run in ("straight", "stopped")]
    assert history[0] == history[1] and history[1]["steps"] == [1, 2, 3, 4]


def test_resuming_with_ema_needs_the_ema_files(tmp_path):
    tiny_run(tmp_path, use_ema=True)  # a run without EMA resumed with it is refused as --use_ema False -> True
    (tmp_path / "checkpoint-2" / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no 'ema.safetensors'"):
        tiny_run(tmp_path, use_ema=True, max_train_steps=4, resume_from_checkpoint="latest")


@pytest.mark.parametrize("num_examples, batch_size, accumulation", [(12, 4, 1), (14, 4, 2), (10, 4, 2), (3, 4, 2)])
def test_epoch_arithmetic_matches_the_loader(tmp_path, num_examples, batch_size, accumulation):
    """`num_epochs` epochs take exactly the optimizer steps the formula says and see whole batches only."""
    images = torch.rand(num_examples, 1, 8, 8) * 2 - 1
    args = TrainingArguments(
        output_dir=str(tmp_path), train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_train_steps=None, num_epochs=2, checkpointing_steps=100, lr_warmup_steps=0,
    )  # fmt: skip
    model = torch.nn.Linear(64, 64)
    loss = lambda model, batch: model(batch[0].flatten(1)).square().mean()  # noqa: E731
    _, _, summary = train(args, model, TensorDataset(images), loss)
    assert summary.global_step == 2 * optimizer_steps_per_epoch(args, num_examples, 1)
    batches = max(1, num_examples // batch_size)  # the last partial batch is dropped unless it is the only one
    assert summary.samples_per_process == [2 * batches * min(batch_size, num_examples)]
    assert summary.effective_batch_size == batch_size * accumulation


def test_epoch_seeded_sampler_order_depends_only_on_seed_and_epoch():
    sampler = EpochSeededSampler(RandomSampler(range(20), generator=torch.Generator()), seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    fresh = EpochSeededSampler(RandomSampler(range(20), generator=torch.Generator()), seed=3)
    fresh.set_epoch(1)  # a resumed run starts here, without having drawn epoch 0
    assert list(fresh) == second != first
    assert sorted(second) == list(range(20))
    with pytest.raises(ValueError, match="SequentialSampler"):
        EpochSeededSampler(SequentialSampler(range(3)), seed=0)


def write_lock(output_dir, pid, host=None):
    output_dir.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01T00:00:00+00:00"}
    (output_dir / LOCK_NAME).write_text(json.dumps(owner))
    return owner


def test_a_folder_in_use_is_refused_at_once(tmp_path):
    owner = write_lock(tmp_path, os.getppid())  # another live process on this host
    in_use = rf"{tmp_path} is in use by another training run \(pid {os.getppid()} on host {socket.gethostname()}"
    with pytest.raises(OutputDirInUseError, match=in_use):
        tiny_run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]  # nothing written, the owner's lock untouched
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == owner
    write_lock(tmp_path, 1, host="another-host")  # cannot tell if it is alive: refused too
    with pytest.raises(OutputDirInUseError, match="another-host"):
        tiny_run(tmp_path)


def test_a_stale_lock_is_taken_over_and_the_lock_released(tmp_path, caplog):
    write_lock(tmp_path, int(open("/proc/sys/kernel/pid_max").read()) + 1)  # no process can have that pid
    _, _, summary = tiny_run(tmp_path)
    assert summary.global_step == 2 and "Taking over the lock" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(FileNotFoundError, match="checkpoint-9"):  # released on errors too
        tiny_run(tmp_path / "new", resume_from_checkpoint="checkpoint-9")
    assert not (tmp_path / "new").exists()  # the folder it made for the lock is gone with it


def test_a_finished_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("a fresh folder with unrelated files is fine")
    tiny_run(tmp_path, max_train_steps=4)
    previous_run = r"holds another run's checkpoint-2, checkpoint-4, training_summary\.json; pass --resume_from"
    with pytest.raises(FileExistsError, match=previous_run):
        tiny_run(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    (tmp_path / "checkpoint-5.partial").mkdir()  # a save that was interrupted
    _, _, summary = tiny_run(tmp_path, overwrite_output_dir=True, checkpointing_steps=1)
    assert summary.resumed_from_step == 0
    loss_files = ["loss_curve.png", "loss_history.csv", "loss_history.json"]
    expected = sorted(["checkpoint-1", "checkpoint-2", "notes.txt", "training_summary.json", *loss_files])  # no checkpoint-4
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    _, _, summary = tiny_run(tmp_path, max_train_steps=3, resume_from_checkpoint="latest")
    assert summary.resumed_from_step == 2 and summary.global_step == 3


def test_resuming_latest_over_a_model_without_checkpoints_is_refused_and_a_new_folder_starts_fresh(tmp_path):
    tiny_run(tmp_path / "run", max_train_steps=2, checkpointing_steps=1)
    for checkpoint in (tmp_path / "run").glob("checkpoint-*"):  # deleted, or a copied model folder
        shutil.rmtree(checkpoint)
    summary = (tmp_path / "run" / "training_summary.json").read_text()
    refused = r"holds another run's training_summary\.json and no checkpoint-N to resume from; pass --overwrite_output"
    with pytest.raises(FileExistsError, match=refused):
        tiny_run(tmp_path / "run", max_train_steps=1, resume_from_checkpoint="latest")
    assert (tmp_path / "run" / "training_summary.json").read_text() == summary  # the model it describes is untouched
    _, _, summary = tiny_run(tmp_path / "new", max_train_steps=1, resume_from_checkpoint="latest")
    assert summary.resumed_from_step == 0 and summary.global_step == 1


def test_a_replacing_run_that_fails_loses_nothing_of_the_run_it_replaces(tmp_path, caplog):
    tiny_run(tmp_path, max_train_steps=4)
    (tmp_path / "samples").mkdir()
    for step in (2, 4):  # the sample grids of a trainer that draws them
        (tmp_path / "samples" / f"step_{step}.png").write_bytes(b"a grid of the replaced run")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="zz_trunc.png"):  # fails at its first batch
        tiny_run(tmp_path, dataset=UnreadableAfter(0), overwrite_output_dir=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the checkpoints are back, nothing set aside
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_2.png", "step_4.png"]  # and the grids
    help_text = add_training_args(argparse.ArgumentParser()).format_help()
    help_text = " ".join(help_text.split())
    assert "are set aside in `.replaced_checkpoints/`" in help_text and "deleted first" not in help_text
    with pytest.raises(ValueError, match="zz_trunc.png"):  # fails after a checkpoint of its own (batches of 4 images,
        # one fetched ahead: the third fails after step 1)
        tiny_run(tmp_path, dataset=UnreadableAfter(10), overwrite_output_dir=True, checkpointing_steps=1, max_train_steps=3)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    replaced = sorted(p.name for p in (tmp_path / REPLACED_CHECKPOINTS).glob("checkpoint-*"))
    assert replaced == ["checkpoint-2", "checkpoint-4"]
    grids = sorted(p.name for p in (tmp_path / REPLACED_CHECKPOINTS / "samples").iterdir())
    assert grids == ["step_2.png", "step_4.png"]
    assert "stay in" in caplog.text
    tiny_run(tmp_path, max_train_steps=3, resume_from_checkpoint="latest")  # the failed run, resumed, ends well
    assert not (tmp_path / REPLACED_CHECKPOINTS).exists()


def test_a_failed_replacing_run_of_a_run_without_sample_grids_leaves_no_samples_folder(tmp_path):
    """QA (operations): after a replacing run killed before its first checkpoint, the folder of a run that drew no
    sample grids (`--num_sample_images 0`) got an empty `samples/` it never had."""
    tiny_run(tmp_path, max_train_steps=4)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="zz_trunc.png"):
        tiny_run(tmp_path, dataset=UnreadableAfter(0), overwrite_output_dir=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and "samples" not in before


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path, caplog):
    tiny_run(tmp_path, max_train_steps=6)  # checkpoints 2, 4, 6
    with pytest.raises(ValueError, match="zz_trunc.png"):  # the rewind fails before a checkpoint of its own
        tiny_run(tmp_path, dataset=UnreadableAfter(0), max_train_steps=4, resume_from_checkpoint="checkpoint-2")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    _, _, summary = tiny_run(tmp_path, max_train_steps=3, checkpointing_steps=1, resume_from_checkpoint="checkpoint-2")
    assert summary.global_step == 3 and "checkpoint-4, checkpoint-6 moved into" in caplog.text
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / REPLACED_CHECKPOINTS).exists()  # the rewound run ended well: the old timeline is gone
    assert json.loads((tmp_path / "loss_history.json").read_text())["steps"] == [1, 2, 3]
    _, _, summary = tiny_run(tmp_path, max_train_steps=4, checkpointing_steps=1, resume_from_checkpoint="latest")
    assert summary.resumed_from_step == 3  # not 6, of the run rewound


def test_checkpoints_set_aside_by_a_killed_run_are_back_for_the_next(tmp_path):
    # a replacing run killed (SIGKILL, or SIGTERM from a launcher) before its first checkpoint never settles what
    # it set aside; the next run in the folder does, before it looks for a checkpoint to resume
    tiny_run(tmp_path, max_train_steps=4)
    check_output_dir(str(tmp_path), resume=False, overwrite=True)  # what the killed run did, and no more
    assert not list(tmp_path.glob("checkpoint-*"))
    _, _, summary = tiny_run(tmp_path, max_train_steps=5, checkpointing_steps=1, resume_from_checkpoint="latest")
    assert summary.resumed_from_step == 4 and not (tmp_path / REPLACED_CHECKPOINTS).exists()


if __name__ == "__main__":
    # python -m tests.test_resume TMP_DIR KILL_AFTER FLAGS...: the DDP kill test, in a fresh interpreter
    # python -m tests.test_resume two-then-one OUTPUT_DIR: a step of 2 processes, then the resume of 1
    from pathlib import Path

    if sys.argv[1] == "two-then-one":
        flags = ["--output_dir", sys.argv[2], "--train_batch_size", "2", "--max_train_steps", "1"]
        debug_launcher(run_tiny_unet, (flags,))
        run_tiny_unet([*flags[:-1], "2", "--resume_from_checkpoint", "latest"])
    else:
        ddp_kill_and_resume(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])


def test_a_model_of_models_records_their_configs_and_an_added_config_key_is_no_change(tmp_path):
    """The RC-DiT's joint module has no config of its own: its encoder's and DiT's are recorded (a resume with another
    head count or readout, the tensors' shapes unchanged, was accepted); a key the record lacks (a library upgrade
    adds one with its default) is left to the tensors, not refused."""
    from diffusion_classifiers.models import build_vit_encoder
    from diffusion_classifiers.training import train_rc_dit

    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run(steps, heads, readout, **kwargs):
        torch.manual_seed(0)
        encoder = build_vit_encoder(16, 1, 16, num_layers=1, num_heads=heads, patch_size=4)
        args = TrainingArguments(output_dir=str(tmp_path), train_batch_size=4, max_train_steps=steps,
                                 checkpointing_steps=1, num_sample_images=0, **kwargs)  # fmt: skip
        return train_rc_dit(args, images, encoder, "tiny", representation_readout=readout)[-1]

    run(1, 2, "mean_patch")
    changed = r"encoder.num_attention_heads 2 -> 4, transformer.representation_readout mean_patch -> cls"
    with pytest.raises(ValueError, match=rf"the model's config \({changed}\)"):
        run(2, 4, "cls", resume_from_checkpoint="latest")
    record_path = tmp_path / "checkpoint-1" / "training_run.json"
    record = json.loads(record_path.read_text())
    del record["model_config"]["encoder.num_attention_heads"]  # as written by a library without that key
    record_path.write_text(json.dumps(record))
    assert run(2, 2, "mean_patch", resume_from_checkpoint="latest").resumed_from_step == 1


def test_a_second_failed_rewind_gives_back_what_the_first_had_set_aside(tmp_path):
    """Rewind B fails after a checkpoint of its own (the first run's later checkpoints stay set aside); rewind C from
    the same step fails before one: the folder is as B left it. C's set-aside deleted the first run's checkpoints."""
    checkpoints = lambda folder: sorted(p.name for p in folder.glob("checkpoint-*"))  # noqa: E731
    aside = tmp_path / ".replaced_checkpoints"
    tiny_run(tmp_path, max_train_steps=6)  # checkpoints 2, 4, 6
    rewind = dict(max_train_steps=6, resume_from_checkpoint="checkpoint-2")
    with pytest.raises(ValueError, match="cannot decode"):
        tiny_run(tmp_path, dataset=UnreadableAfter(10), checkpointing_steps=1, **rewind)  # writes checkpoint-3, fails
    assert (checkpoints(tmp_path), checkpoints(aside)) == (["checkpoint-2", "checkpoint-3"], ["checkpoint-4", "checkpoint-6"])
    with pytest.raises(ValueError, match="cannot decode"):
        tiny_run(tmp_path, dataset=UnreadableAfter(0), **rewind)  # sets checkpoint-3 aside, fails before a checkpoint
    assert (checkpoints(tmp_path), checkpoints(aside)) == (["checkpoint-2", "checkpoint-3"], ["checkpoint-4", "checkpoint-6"])
    _, _, summary = tiny_run(tmp_path, **rewind)  # a rewind that ends well: everything set aside is deleted
    assert summary.global_step == 6 and not aside.exists()


def test_the_scripts_early_check_leaves_a_killed_replacing_runs_checkpoints_to_train(tmp_path):
    """A run that replaced another (--overwrite_output_dir) and was killed before its first checkpoint left the old
    run's checkpoints aside; `train` moves them back and resumes from them, so the scripts' early check must not
    refuse the folder as one holding a model and no checkpoint."""
    from dataclasses import replace

    from diffusion_classifiers.training import check_run_can_start

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    check_output_dir(str(tmp_path), resume=False, overwrite=True)  # the replacing run sets checkpoint-2 aside ...
    assert (tmp_path / REPLACED_CHECKPOINTS / "checkpoint-2").is_dir()  # ... and is killed
    args = TrainingArguments(output_dir=str(tmp_path), max_train_steps=1, resume_from_checkpoint="latest")
    check_run_can_start(args)
    check_run_can_start(replace(args, resume_from_checkpoint="checkpoint-2"))
    check_output_dir(str(tmp_path), resume=True, overwrite=False)  # what train does first: moved back, accepted
    assert (tmp_path / "checkpoint-2").is_dir()


def test_a_stale_lock_taken_over_by_another_run_meanwhile_is_not_removed(tmp_path, monkeypatch):
    """Two runs find the same stale lock: the first takes it over; the second, which read the stale owner before,
    must not delete the first's live lock (it did: read, then remove), and is refused as the lock is in use."""
    from diffusion_classifiers.run_lock import RunInUseError, RunLock

    gone = int(open("/proc/sys/kernel/pid_max").read()) + 1
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"pid": gone, "host": socket.gethostname()}))
    first, second = RunLock(str(path), "x", "--x", "run"), RunLock(str(path), "x", "--x", "run")
    stale_owner_read = RunLock._remove_stale

    def first_takes_over_meanwhile(self, holder):  # the second run is between its read and its removal
        if self is second:
            first.acquire()
        stale_owner_read(self, holder)

    monkeypatch.setattr(RunLock, "_remove_stale", first_takes_over_meanwhile)
    with pytest.raises(RunInUseError, match="took its stale lock .* over at the same time"):
        second.acquire()
    assert json.loads(path.read_text()) == first.owner  # the first run's lock is still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
    first.release()
    assert not path.exists()


NEW_RUN = (
    r"\(checkpoint -> now\); resume with the settings it was written with, or, to train with other settings, start a "
    r"new run \(--overwrite_output_dir, or another --output_dir\)"
)


def test_a_resume_with_other_optimizer_schedule_ema_or_seed_flags_is_refused_naming_them(tmp_path):
    """QA: the checkpoint's optimizer, schedule and EMA were restored over new flags without a word (resumed with
    --learning_rate 1e-5 it trained at 1e-3; without --use_ema it returned the raw weights); another --seed changed
    the data order. The run's length, its checkpoints and its budget stay free to change."""
    from diffusion_classifiers.training import check_run_can_start
    from diffusion_classifiers.training.checkpoints import EMA_SETTINGS, RESUMED_SETTINGS

    tiny_run(tmp_path, use_ema=True)
    resume = dict(use_ema=True, max_train_steps=3, resume_from_checkpoint="latest")
    for changed, overrides in [
        (r"--learning_rate 0\.001 -> 1e-05", dict(learning_rate=1e-5)),
        (r"--use_ema True -> False", dict(use_ema=False)),
        (r"--seed 0 -> 1; --adam_beta2 0\.999 -> 0\.99; --ema_max_decay 0\.9999 -> 0\.5",
         dict(seed=1, adam_beta2=0.99, ema_max_decay=0.5)),
        (r"--max_grad_norm 1\.0 -> 0\.5; --mixed_precision no -> bf16", dict(max_grad_norm=0.5, mixed_precision="bf16")),
    ]:
        with pytest.raises(ValueError, match=rf"differs from the one that wrote it in {changed} {NEW_RUN}"):
            tiny_run(tmp_path, **{**resume, **overrides})
    early = TrainingArguments(str(tmp_path), learning_rate=1e-3, lr_warmup_steps=1, lr_scheduler="constant", **resume)
    with pytest.raises(ValueError, match=r"in --lr_scheduler cosine -> constant \(checkpoint"):
        check_run_can_start(early)  # what the scripts check before they read the data
    _, _, summary = tiny_run(tmp_path, **resume, checkpointing_steps=1, max_train_minutes=60)
    assert (summary.resumed_from_step, summary.global_step) == (2, 3)
    record_path = tmp_path / "checkpoint-3" / "training_run.json"
    record = json.loads(record_path.read_text())
    assert (record["learning_rate"], record["use_ema"], record["ema_max_decay"]) == (1e-3, True, 0.9999)
    new_keys = (*RESUMED_SETTINGS, *EMA_SETTINGS)
    record_path.write_text(json.dumps({key: value for key, value in record.items() if key not in new_keys}))
    with pytest.raises(ValueError, match=r"in --use_ema True -> False \(checkpoint"):  # told by its EMA files
        tiny_run(tmp_path, **{**resume, "use_ema": False, "max_train_steps": 4})
    _, _, summary = tiny_run(tmp_path, **{**resume, "max_train_steps": 4})  # a record of before: still resumes
    assert (summary.resumed_from_step, summary.global_step) == (3, 4)


def test_rerunning_a_finished_run_keeps_its_final_loss_in_strict_json(tmp_path):
    """QA: a requeued job reran a finished run with --resume_from_checkpoint latest: no step was left to make, and the
    summary's final_loss became NaN (not JSON)."""
    _, _, first = tiny_run(tmp_path, resume_from_checkpoint="latest")
    _, _, again = tiny_run(tmp_path, resume_from_checkpoint="latest")
    summary_path = tmp_path / "training_summary.json"
    strict = json.loads(summary_path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the summary"))
    assert (strict["resumed_from_step"], strict["global_step"]) == (2, 2)
    assert strict["final_loss"] == again.final_loss == first.final_loss
    for history in (tmp_path / "loss_history.json", tmp_path / "checkpoint-2" / "loss_history.json"):
        history.unlink()  # a checkpoint of before the histories were kept: the loss is not known
    _, _, unknown = tiny_run(tmp_path, resume_from_checkpoint="latest")
    assert unknown.final_loss is None and json.loads(summary_path.read_text())["final_loss"] is None


def test_a_damaged_checkpoint_is_named_with_the_checkpoint_to_resume_from_instead(tmp_path):
    """QA: a checkpoint truncated by a crash failed the resume with `EOFError:` or `SafetensorError: header too
    small`, naming no file."""
    import re

    tiny_run(tmp_path, max_train_steps=4)  # checkpoints 2 and 4
    optimizer = tmp_path / "checkpoint-4" / "optimizer.bin"
    os.truncate(optimizer, optimizer.stat().st_size // 2)
    damaged = (
        rf"^cannot resume from {re.escape(str(tmp_path))}/checkpoint-4: its optimizer\.bin is damaged or truncated "
        r"\(RuntimeError: [^)]*\); resume from the checkpoint before it with --resume_from_checkpoint checkpoint-2$"
    )
    with pytest.raises(ValueError, match=damaged):
        tiny_run(tmp_path, max_train_steps=4, resume_from_checkpoint="latest")
    (tmp_path / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"")  # accelerate would skip it without a word
    empty = r"checkpoint-2: its random_states_0\.pkl is damaged or truncated \(EOFError: the file is empty\); start"
    with pytest.raises(ValueError, match=rf"{empty} a new run \(--overwrite_output_dir, or another --output_dir\)$"):
        tiny_run(tmp_path, max_train_steps=4, resume_from_checkpoint="checkpoint-2")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # all kept


def test_a_resume_that_stretches_a_length_dependent_schedule_says_so_and_records_the_length(tmp_path):
    """QA: a 150-step cosine run resumed at its end for 200 steps restarted at the 200-step cosine's rate without a
    word, and no file recorded either length. Allowed (training longer is what was asked), but warned about."""
    import importlib.metadata
    import warnings

    tiny_run(tmp_path / "cosine", checkpointing_steps=1)
    assert json.loads((tmp_path / "cosine" / "checkpoint-2" / "training_run.json").read_text())["max_train_steps"] == 2
    with pytest.warns(UserWarning, match=r"run of 2 optimizer steps, for 4 .*cosine learning-rate schedule continues "
                                         r"as one of 4 steps from step 2.*--max_train_steps 2 to continue"):
        _, _, summary = tiny_run(tmp_path / "cosine", max_train_steps=4, resume_from_checkpoint="latest")
    assert summary.max_train_steps == 4
    recorded = json.loads((tmp_path / "cosine" / "training_summary.json").read_text())
    assert recorded["max_train_steps"] == 4 and recorded["process_command"]
    assert recorded["versions"]["torch"] == importlib.metadata.version("torch")
    assert recorded["versions"]["datasets"] == importlib.metadata.version("datasets") and recorded["date_utc"]
    tiny_run(tmp_path / "constant", lr_scheduler="constant", checkpointing_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a rate that does not depend on the length: nothing to say
        tiny_run(tmp_path / "constant", lr_scheduler="constant", max_train_steps=4, resume_from_checkpoint="latest")
        tiny_run(tmp_path / "cosine", max_train_steps=4, resume_from_checkpoint="latest")  # the 4-step run, as it was

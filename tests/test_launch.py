import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.data.split_record import image_fingerprints, recorded_train_fingerprints
from diffusion_classifiers.training.launch import launcher_requested_processes

from .conftest import PYTHON, REPO_ROOT, python_subprocess_env
from .test_training import free_port


def test_the_launcher_flags_are_read_before_the_script_and_not_after():
    assert launcher_requested_processes(["python", "/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "a.py"]) == 2
    assert launcher_requested_processes(["python", "-m", "accelerate.commands.launch", "--num_processes=4", "a.py"]) == 4
    assert launcher_requested_processes(["python", "/bin/accelerate", "launch", "a.py", "--num_processes", "2"]) is None
    assert launcher_requested_processes(["python", "train.py", "launch", "--num_processes", "2"]) is None
    assert launcher_requested_processes([]) is None


@pytest.mark.slow
def test_cpu_launch_asked_for_two_processes_refuses_to_train_alone(tmp_path):
    """accelerate 1.15's simple launcher runs ONE process for `--cpu --num_processes 2` and exits 0 unless the
    script notices: it must refuse before writing anything."""
    output_dir = tmp_path / "unet"
    command = [
        PYTHON, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO_ROOT / "examples" / "unet_features_train.py"),
        "--dataset", "digits", "--image_size", "8", "--unet_preset", "tiny", "--output_dir", str(output_dir),
        "--train_batch_size", "16", "--max_train_steps", "2",
    ]
    result = subprocess.run(command, env=python_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unet_features_train.py: error: accelerate launch was asked for 2 processes but 1 runs (the simple " \
        "launcher starts one process without --multi_gpu)" in result.stderr  # one line, no traceback of ours
    assert "raise ValueError" not in result.stderr and "raise RuntimeError" not in result.stderr
    assert not output_dir.exists() or not any(output_dir.iterdir())


@pytest.mark.slow
def test_two_cpu_processes_train_on_streamed_images_read_once_beforehand(tmp_path):
    """The images are read once before training, each process reading its share, with the process group the trainer
    then joins: a healthy folder trains on 2 processes and records every training image's fingerprint; a folder with
    a damaged file is refused by both (the failure found by either), before anything is written."""
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")

    def launch(output_dir):
        command = [
            PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            str(REPO_ROOT / "examples" / "unet_features_train.py"), "--dataset", str(tmp_path / "data"), "--streaming",
            "--num_channels", "1", "--image_size", "8", "--unet_preset", "tiny", "--output_dir", str(output_dir),
            "--train_batch_size", "4", "--max_train_steps", "1", "--num_sample_images", "0",
        ]  # fmt: skip
        env = python_subprocess_env() | {"ACCELERATE_USE_CPU": "1"}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    result = launch(tmp_path / "healthy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"num_processes": 2' in (tmp_path / "healthy" / "training_summary.json").read_text()
    train = load_image_classification_data(str(tmp_path / "data"), image_size=8, num_channels=1)["train"]
    # each process fingerprinted its share: the record holds the whole train split's
    assert recorded_train_fingerprints(tmp_path / "healthy") == set(image_fingerprints(train.images))
    damaged = tmp_path / "data" / "b" / "3.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    result = launch(tmp_path / "damaged")
    assert result.returncode != 0 and re.search(r"1 of \d+ images cannot be read \(cannot decode image file", result.stderr)
    assert str(damaged) in result.stderr and not (tmp_path / "damaged").exists()

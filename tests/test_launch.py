import subprocess

import pytest

from diffusion_classifiers.training.launch import launcher_requested_processes

from .conftest import PYTHON, REPO_ROOT, python_subprocess_env


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
    assert "asked for 2 processes but 1 runs" in result.stderr and "--multi_gpu" in result.stderr
    assert not output_dir.exists() or not any(output_dir.iterdir())

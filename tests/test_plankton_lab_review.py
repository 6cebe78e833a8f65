"""A plankton lab's second season: resuming last season's training with the images read otherwise is refused naming
the flag (a `--normalize_background` left out changed no sampled pixel mean of white-field plankton images, and the
resumed model was saved reading them otherwise)."""

import importlib.util

import pytest

from .conftest import REPO_ROOT, shared_data


def unet_script():
    spec = importlib.util.spec_from_file_location("unet_features_train", REPO_ROOT / "examples" / "unet_features_train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_resume_reading_the_images_otherwise_is_refused_naming_the_flag(tmp_path, monkeypatch):
    script = unet_script()
    argv = ["--dataset", str(shared_data("plankton_flowcam_demo")), "--output_dir", str(tmp_path / "unet"),
            "--image_size", "8", "--num_channels", "1", "--unet_preset", "tiny", "--train_batch_size", "16",
            "--lr_warmup_steps", "0", "--checkpointing_steps", "1", "--num_sample_images", "0", "--resize_mode", "pad",
            "--pad_value", "1"]  # fmt: skip
    script.main(argv + ["--max_train_steps", "1", "--normalize_background"])
    resumed = argv + ["--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    monkeypatch.setattr(script, "training_data_from_args", pytest.fail)  # refused before the data is read
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-1: .*--normalize_background True -> False"):
        script.main(resumed)
    with pytest.raises(ValueError, match=r"--pad_value 1.0 -> 0.5"):
        script.main(resumed + ["--normalize_background", "--pad_value", "0.5"])

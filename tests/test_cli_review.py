"""The command line a user meets, reviewed as a new user would meet it: the `diffusion-classifiers` commands and the
`examples/*.py` training scripts refuse impossible flags while parsing them (before any data is read or model
loaded), keep an earlier run's outputs, and their help says what the flags do."""

import argparse
import json
import runpy

import pytest

import diffusion_classifiers.data
from diffusion_classifiers.cli import build_parser, main

from .conftest import REPO_ROOT
from .test_bad_inputs import too_late


def example(script: str) -> dict:
    """The globals of `examples/<script>` (its `parse_args` and `main`), run as a module, not as `__main__`."""
    return runpy.run_path(str(REPO_ROOT / "examples" / script))


def help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    """The help text of `flag`, as `--help` shows it (its default filled in)."""
    action = next(action for action in parser._actions if flag in action.option_strings)
    return " ".join(parser._get_formatter()._expand_help(action).split())


# ---------------------------------------------------------------------------------------------------------------------
# demo: an earlier run's report and checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def test_demo_refuses_an_output_dir_holding_an_earlier_report_before_reading_data(tmp_path, monkeypatch):
    """The demo replaced another run's metrics.json and report.md without a word; probe, evaluate and fit-head refuse
    such a folder unless --overwrite_output_dir."""
    monkeypatch.setattr(diffusion_classifiers.data, "load_data_from_args", too_late)
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.99}')
    with pytest.raises(ValueError, match=r"holds an earlier report \(metrics.json\); .* --overwrite_output_dir"):
        main(["demo", "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"accuracy": 0.99}


def test_demo_refuses_another_runs_checkpoints_before_reading_data(tmp_path, monkeypatch):
    """A demo interrupted in training left unet_training/checkpoint-N: a new demo read the whole data set first and
    only then refused the folder."""
    monkeypatch.setattr(diffusion_classifiers.data, "load_data_from_args", too_late)
    (tmp_path / "unet_training" / "checkpoint-4").mkdir(parents=True)
    refusal = r"unet_training already holds another run's checkpoint-4; pass --resume_from_checkpoint latest .* or "
    with pytest.raises(FileExistsError, match=refusal + "--overwrite_output_dir"):
        main(["demo", "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny"])
    assert (tmp_path / "unet_training" / "checkpoint-4").is_dir()


def test_demo_refuses_several_processes_and_a_second_run_in_its_folder_before_reading_data(tmp_path, monkeypatch):
    """Under accelerate launch with 2 processes each ran the study and wrote the same report; two demos at once into
    one folder wrote over each other's report."""
    monkeypatch.setattr(diffusion_classifiers.data, "load_data_from_args", too_late)
    demo = ["demo", "--output_dir", str(tmp_path / "demo"), "--image_size", "8", "--unet_preset", "tiny"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="demo runs as one process, but accelerate launch started 2"):
        main(demo)
    monkeypatch.delenv("WORLD_SIZE")
    from diffusion_classifiers.run_lock import RunInUseError, output_dir_lock

    with output_dir_lock(str(tmp_path / "demo"), "demo"), pytest.raises(RunInUseError, match="in use by another demo"):
        main(demo)


def test_demo_names_the_training_outputs_it_wrote(tmp_path, capsys):
    """With --num_sample_images 0 the demo still pointed the user to a samples/ folder it never wrote; its k-means
    figures came without their chance level (QA: "k-means accuracy 100.00%" on 121 classes of one test image each)."""
    main([
        "demo", "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny", "--max_train_steps", "1",
        "--lr_warmup_steps", "0", "--timesteps", "10", "--num_sample_images", "0",
    ])  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    kmeans = [line for line in printed if "k-means" in line]
    assert len(kmeans) == 2 and [line.count("(by chance ") for line in kmeans] == [1, 2]
    last = printed[-1]
    assert last == f"and {tmp_path}/unet_training/ (loss_curve.png)"
    assert (tmp_path / "unet_training" / "loss_curve.png").is_file()
    assert not (tmp_path / "unet_training" / "samples").exists()


# ---------------------------------------------------------------------------------------------------------------------
# numbers out of range: refused while the flags are parsed, naming the flag and the range
# ---------------------------------------------------------------------------------------------------------------------

UNET, SDE, RC_DIT, CONTRASTIVE = (
    "unet_features_train.py", "score_sde_train.py", "rc_dit_train.py", "rc_dit_train_contrastive_baseline.py"
)  # fmt: skip
SCRIPT_FLAGS = [  # each was refused after the data was read (--num_train_timesteps 0: a traceback in training)
    (UNET, "--num_train_timesteps", "0", "expected an integer in [1, inf)"),
    (UNET, "--image_size", "0", "expected an integer in [1, inf)"),
    (UNET, "--val_fraction", "0", "expected a number in (0, 1)"),
    (UNET, "--test_fraction", "nan", "expected a number in (0, 1)"),
    (SDE, "--label_dropout", "1", "expected a number in [0, 1)"),
    (RC_DIT, "--rep_dropout", "2", "expected a number in [0, 1]"),
    (RC_DIT, "--denoiser_mask_ratio", "1", "expected a number in [0, 1)"),
    (RC_DIT, "--denoiser_mask_probability", "0", "expected a number in (0, 1]"),
    (RC_DIT, "--encoder_learning_rate_scale", "0", "expected a number in (0, inf)"),
    (RC_DIT, "--encoder_num_heads", "0", "expected an integer in [1, inf)"),
    (CONTRASTIVE, "--flip_p", "2", "expected a number in [0, 1]"),
    (CONTRASTIVE, "--temperature", "0", "expected a number in (0, inf)"),
    (CONTRASTIVE, "--num_local_views", "-1", "expected an integer in [0, inf)"),
]


@pytest.mark.parametrize("script, flag, value, expected", SCRIPT_FLAGS, ids=[f"{s} {f}" for s, f, *_ in SCRIPT_FLAGS])
def test_a_training_script_refuses_a_number_out_of_range_while_parsing(tmp_path, capsys, script, flag, value,
                                                                       expected):
    parse_args = example(script)["parse_args"]
    with pytest.raises(SystemExit) as exited:
        parse_args(["--output_dir", str(tmp_path / "out"), flag, value])
    assert exited.value.code == 2 and f"error: argument {flag}: {expected}, got {value!r}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


COMMAND_FLAGS = [  # evaluate read the model and the data first (a fraction: with a warning first); fit-head the data
    ("evaluate", "--dataloader_num_workers", "-1", "expected an integer in [0, inf)"),
    ("evaluate", "--test_fraction", "1.5", "expected a number in (0, 1)"),
    ("fit-head", "--batch_size", "0", "expected an integer in [1, inf)"),
    ("probe", "--val_fraction", "1", "expected a number in (0, 1)"),
]


@pytest.mark.parametrize(
    "command, flag, value, expected", COMMAND_FLAGS, ids=[f"{c} {f}" for c, f, *_ in COMMAND_FLAGS]
)
def test_a_command_refuses_a_number_out_of_range_while_parsing(capsys, command, flag, value, expected):
    model_flag = "--unet_dir" if command == "probe" else "--model_dir"
    with pytest.raises(SystemExit) as exited:
        build_parser([command]).parse_args([command, model_flag, "m", flag, value])
    assert exited.value.code == 2 and f"error: argument {flag}: {expected}, got {value!r}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# the RC-DiT scripts: an encoder or VAE they cannot use, refused before the data is read
# ---------------------------------------------------------------------------------------------------------------------

ENCODER_REFUSALS = [
    # a new ViT whose heads do not divide its width was built and trained without a word
    (["--encoder_hidden_size", "24", "--encoder_num_heads", "5"], r"--encoder_num_heads 5 does not divide "
     r"--encoder_hidden_size 24"),
    # a missing folder was an OSError traceback, after the data was read
    (["--encoder_name_or_path", "{tmp}/none"], r"--encoder_name_or_path .*none: cannot read a model config"),
]  # fmt: skip


@pytest.mark.parametrize("script", ["rc_dit_train.py", "rc_dit_train_contrastive_baseline.py"])
@pytest.mark.parametrize("flags, message", ENCODER_REFUSALS, ids=["heads", "missing encoder"])
def test_the_rc_dit_scripts_refuse_an_encoder_they_cannot_build_before_reading_data(
    tmp_path, monkeypatch, script, flags, message
):
    monkeypatch.setattr(diffusion_classifiers.data, "training_data_from_args", too_late)  # bound by the script
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    with pytest.raises(ValueError, match=message):
        example(script)["main"](["--output_dir", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--vae", "{tmp}/no-vae"], r"^--vae .*no-vae: cannot load an AutoencoderKL: [^\n]*$"),  # was an OSError traceback
    (["--vae_subfolder", "vae"], r"--vae_subfolder vae: a subfolder of --vae, which was not given"),  # was ignored
], ids=["missing vae", "subfolder without vae"])  # fmt: skip
def test_rc_dit_train_refuses_a_vae_it_cannot_load_before_reading_data(tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr(diffusion_classifiers.data, "training_data_from_args", too_late)
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    with pytest.raises(ValueError, match=message):
        example("rc_dit_train.py")["main"](["--output_dir", str(tmp_path / "out"), *flags])


def test_new_vit_sizes_beside_a_pretrained_encoder_are_warned_about(tmp_path, monkeypatch):
    """--encoder_hidden_size and the other sizes of a new ViT were silently ignored with --encoder_name_or_path."""
    from diffusion_classifiers.models import build_vit_encoder

    build_vit_encoder(8, 1, 16, num_layers=1, num_heads=2, patch_size=4).save_pretrained(tmp_path / "vit")
    monkeypatch.setattr(diffusion_classifiers.data, "training_data_from_args", too_late)
    flags = ["--encoder_name_or_path", str(tmp_path / "vit"), "--encoder_hidden_size", "64", "--encoder_num_layers", "2"]
    with pytest.warns(UserWarning, match=r"--encoder_hidden_size 64, --encoder_num_layers 2: the sizes of a new ViT, "
                      r"unused: --encoder_name_or_path .*vit keeps the pretrained model's own sizes"):  # fmt: skip
        with pytest.raises(AssertionError, match="a long step started"):  # the data is read next
            example("rc_dit_train.py")["main"](["--output_dir", str(tmp_path / "out"), *flags])


# ---------------------------------------------------------------------------------------------------------------------
# help texts that say what the flags do
# ---------------------------------------------------------------------------------------------------------------------


def test_the_data_flags_help_says_what_image_size_and_val_fraction_mean():
    """--image_size said "(default: None, the dataset's)", but digits, image folders and CSVs are read at 32 px;
    --val_fraction said "the share of the images", but it is the share of those left after the test split."""
    from diffusion_classifiers.data import add_data_args, load_image_classification_data

    parser = add_data_args(argparse.ArgumentParser())
    assert "32 px for digits, image folders and CSVs of paths, else the data's own" in help_of(parser, "--image_size")
    assert help_of(parser, "--val_fraction").startswith("the share of the images left after the test split")
    splits = load_image_classification_data("digits", val_fraction=0.5, test_fraction=0.5)  # 1797 digits, 8 px
    assert splits["train"].images.shape[-1] == 32
    num_test, num_val = len(splits["test"]), len(splits["val"])
    assert abs(num_test - 1797 / 2) < 10 and abs(num_val - (1797 - num_test) / 2) < 10  # half of the rest, not of all


def test_the_contrastive_baseline_script_trains_the_baselines_the_benchmarks_measure(tmp_path):
    """RC-DiT QA: --method dino trained DINO on the tanh pooler without BatchNorm in its head, while the benchmarks'
    DINO baseline (chosen on val in the recipe benchmark) reads the CLS token with BatchNorm."""
    import sys

    script = example("rc_dit_train_contrastive_baseline.py")
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from rc_dit_accuracy import BASELINES
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    for method in ("simclr", "dino"):
        kwargs = script["objective_kwargs"](script["parse_args"](["--output_dir", str(tmp_path), "--method", method]))
        benchmark_method, benchmark_kwargs = BASELINES[method]
        assert benchmark_method == method
        assert {name: kwargs[name] for name in benchmark_kwargs} == benchmark_kwargs
        assert kwargs["readout"] == benchmark_kwargs.get("readout", "pooler")

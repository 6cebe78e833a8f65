"""Arguments a careless user mistypes, refused before any work and by name (QA persona: a bad-input fuzzer over
every command and public loader): NaN and inf optimizer and EMA settings (one trained and saved a model of NaN weights
over a good one), an empty data set name, a prediction over its own input, duplicated probe strengths, a benchmark's
device and timesteps checked only after training."""

import argparse
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.cli import main
from diffusion_classifiers.data import (
    LabeledImages,
    load_image_classification_data,
    streaming_image_classification_data,
)
from diffusion_classifiers.training import TrainingArguments

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import _common  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("ema_power", float("nan"), "a positive finite number"),
        ("ema_inv_gamma", 0.0, "a positive finite number"),
        ("learning_rate", float("inf"), "a positive finite number"),
        ("adam_beta1", 1.5, r"a number in \[0, 1\)"),
        ("adam_beta2", float("nan"), r"a number in \[0, 1\)"),
        ("adam_epsilon", -1.0, "a finite number >= 0"),
        ("adam_weight_decay", float("inf"), "a finite number >= 0"),
        ("seed", -1, r"an integer in 0\.\.4294967295"),
    ],
)
def test_optimizer_ema_and_seed_flags_out_of_range_are_refused_by_name(tmp_path, flag, value, expected):
    with pytest.raises(ValueError, match=rf"expected --{flag} to be {expected}, got {value!r}"):
        TrainingArguments(str(tmp_path), use_ema=True, **{flag: value})


def test_the_loaders_refuse_an_empty_name_a_float_size_a_string_of_class_names_and_a_bad_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an image folder: what "" read before
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(np.full((4, 4), 50 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    def streamed(source, **kwargs):
        return streaming_image_classification_data(source, 1, **kwargs)

    for load, source in ((load_image_classification_data, "digits"), (streamed, ".")):
        with pytest.raises(ValueError, match=r"source: got an empty name ''"):
            load("")
        with pytest.raises(ValueError, match=r"seed: expected an integer in 0\.\.4294967295, got 1\.5"):
            load(source, seed=1.5)
        with pytest.raises(ValueError, match=r"class_names: expected a list of names, one per label id, got the str"):
            load(source, class_names="ab")
    with pytest.raises(ValueError, match=r"LabeledImages.class_names: expected a list of names"):
        LabeledImages(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), "ab")
    with pytest.raises(ValueError, match=r"image_size: expected a positive int or \(height, width\), got 8\.5"):
        load_image_classification_data("digits", image_size=8.5)


def test_probe_strengths_given_twice_are_refused_as_repeated_timesteps_are(tmp_path):
    with pytest.raises(ValueError, match=r"--C: expected distinct values, got \[1\.0, 1\.0\]"):
        main(["probe", "--unet_dir", str(tmp_path / "missing"), "--C", "1", "1", "--output_dir", str(tmp_path / "p")])


def test_a_benchmark_refuses_a_device_this_machine_lacks_and_timesteps_out_of_range_before_training():
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last this machine has
    with pytest.raises(ValueError, match=rf"--device {missing}: this machine has \d+ CUDA device"):
        _common.usable_device(missing)
    with pytest.raises(ValueError, match=r"--device 'gpu0'"):
        _common.usable_device("gpu0")
    assert _common.usable_device("cpu").type == "cpu"
    parser = argparse.ArgumentParser()
    for bad in ([5000], [10, 10]):
        with pytest.raises(SystemExit):
            _common.check_timesteps_arg(parser, bad)
    _common.check_timesteps_arg(parser, [0, 999])


def test_a_dataset_of_bare_images_is_refused_for_its_items_not_their_shape(tmp_path):
    """QA: items `image` instead of `(image, ...)` were refused as images of shape (8, 8), the first one's channel."""

    from diffusion_classifiers.training import train_ddpm_unet

    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.zeros(1, 8, 8)

    args = TrainingArguments(str(tmp_path), max_train_steps=1, num_sample_images=0)
    with pytest.raises(ValueError, match=r"expected training dataset items \(image \[C, H, W\], label, \.\.\.\).*"
                                         r"got a Tensor of shape \(1, 8, 8\)"):
        train_ddpm_unet(args, Bare(), preset="tiny")


def test_a_python_caller_is_told_the_argument_not_the_flag_that_replaces_an_earlier_report(tmp_path):
    from diffusion_classifiers.validation import check_no_earlier_report

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"output_dir .* pass overwrite=True to replace it"):
        check_no_earlier_report(tmp_path, False, "output_dir")
    with pytest.raises(ValueError, match=r"--output_dir .* pass --overwrite_output_dir to replace it"):
        check_no_earlier_report(tmp_path, False)


def test_the_highest_seed_accepted_seeds_every_resample_of_a_clustering(tmp_path):
    """Second read: `--seed 4294967295` was accepted, then KMeans refused `seed + resample` once the features were
    extracted."""
    from diffusion_classifiers.probing.protocols import clustering_stability

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    assert 0 <= clustering_stability(x, 2, seed=2**32 - 1) <= 1


def test_predict_takes_any_seed_and_the_others_numpys():
    """Upgrade QA: a prediction made with `--seed 5000000000` (a Score-SDE pipeline hashes any integer with each
    image's pixels) could no longer be resumed; the seeds numpy and scikit-learn take stay below 2**32."""
    from diffusion_classifiers.cli import build_parser

    base = ["--model_dir", "m", "--input", "i", "--output", "o.csv"]
    assert build_parser(["predict"]).parse_args(["predict", *base, "--seed", "5000000000"]).seed == 5000000000
    with pytest.raises(SystemExit):
        build_parser(["cluster"]).parse_args(["cluster", *base[:4], "--num_clusters", "2", "--seed", "5000000000"])

"""The pieces the plankton study adds to the library: aspect-preserving resize, splits that keep rare classes
measurable, label-free choice of the k-means feature and K, and the bad inputs of the study refused early."""

import numpy as np
import pytest
import torch

from diffusion_classifiers.data import ImagePreprocessing, preprocess_images
from diffusion_classifiers.data.splits import stratified_train_val_test_split
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.probing import kmeans_evaluate
from diffusion_classifiers.probing.protocols import select_clustering_without_labels
from diffusion_classifiers.training import TrainingArguments, train_ddpm_unet

# --------------------------------------------------------------------------------------------------
# Resize modes
# --------------------------------------------------------------------------------------------------


def test_pad_keeps_the_aspect_ratio_and_fills_with_the_pad_value():
    wide = torch.full((1, 1, 10, 20), -1.0)  # a black 10 x 20 image
    out = ImagePreprocessing(8, 1, resize_mode="pad", pad_value=1.0)(wide)
    # scaled by 8 / 20 to 4 x 8, centred: rows 2..5 black, two white rows above and below
    expected = torch.ones(1, 1, 8, 8)
    expected[:, :, 2:6] = -1.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)  # antialiasing weights sum to 1 up to float32 rounding


def test_crop_covers_the_square_and_keeps_its_centre():
    wide = torch.zeros(1, 1, 10, 20)
    wide[..., 5:15] = 1.0  # the central 10 columns white
    out = ImagePreprocessing(10, 1, resize_mode="crop")(wide)
    torch.testing.assert_close(out, torch.ones(1, 1, 10, 10), rtol=0, atol=0)  # scale 1: exactly the white centre


def test_the_resize_mode_is_saved_and_old_contracts_load_as_stretch():
    contract = ImagePreprocessing(16, 1, resize_mode="pad", pad_value=1.0)
    assert ImagePreprocessing.from_dict(contract.to_dict()) == contract
    old = {"image_size": 16, "num_channels": 1, "input_range": "[-1, 1]", "resample": "bilinear", "medical": None}
    assert ImagePreprocessing.from_dict(old).resize_mode == "stretch"
    assert ImagePreprocessing.from_dict(old).to_dict() == old  # files saved without the mode stay as they were
    image = torch.rand(1, 1, 12, 20) * 2 - 1
    assert torch.equal(preprocess_images(image, preprocessing=old), ImagePreprocessing(16, 1)(image))
    with pytest.raises(ValueError, match=r"resize_mode: expected one of \['stretch', 'pad', 'crop'\], got 'fit'"):
        ImagePreprocessing(16, 1, resize_mode="fit")
    with pytest.raises(ValueError, match=r"pad_value: expected a number in \[-1, 1\].*got 255"):
        ImagePreprocessing(16, 1, resize_mode="pad", pad_value=255)


def test_background_normalisation_makes_a_grey_field_white_and_keeps_a_white_one():
    grey_field = torch.zeros(1, 1, 12, 12)  # background 0.5 on [0, 1]
    grey_field[..., 4:8, 4:8] = -0.5  # an object at 0.25: half of the background
    white_field = grey_field * 0 + 1.0
    white_field[..., 4:8, 4:8] = -0.5
    contract = ImagePreprocessing(None, 1, normalize_background=True)
    expected = torch.ones(1, 1, 12, 12)
    expected[..., 4:8, 4:8] = 0.0  # 0.25 / 0.5 = 0.5 on [0, 1]
    torch.testing.assert_close(contract(grey_field), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(contract(white_field), white_field, rtol=0, atol=1e-6)
    assert ImagePreprocessing.from_dict(contract.to_dict()) == contract
    assert "normalize_background" not in ImagePreprocessing(None, 1).to_dict()  # saved as before the option existed


def test_background_normalisation_refuses_a_dark_field_naming_the_image():
    images = [torch.zeros(1, 1, 12, 12), torch.full((1, 1, 12, 12), -0.9)]  # the second: background 0.05
    with pytest.raises(ValueError, match=r"normalize_background: image 1 has a background level of 0\.050"):
        ImagePreprocessing(None, 1, normalize_background=True)(images)


def test_the_data_flags_reach_both_loaders_and_the_saved_contract():
    import argparse

    from diffusion_classifiers.data import MedicalPreprocessing
    from diffusion_classifiers.data.arguments import add_data_args
    from diffusion_classifiers.data.readers import load_data_from_args
    from diffusion_classifiers.data.streaming import streaming_data_from_args

    from .conftest import shared_data

    parser = add_data_args(argparse.ArgumentParser(), streaming=True)
    parser.add_argument("--seed", type=int, default=0)
    flags = ["--dataset", str(shared_data("plankton_flowcam_demo")), "--image_size", "16", "--num_channels", "1"]
    args = parser.parse_args(flags + ["--resize_mode", "pad", "--pad_value", "1", "--normalize_background"])
    in_memory, streamed = load_data_from_args(args), streaming_data_from_args(args)
    fit = {"resize_mode": "pad", "pad_value": 1.0, "normalize_background": True}
    expected = ImagePreprocessing(16, 1, medical=MedicalPreprocessing(), **fit)
    assert in_memory["test"].preprocessing == streamed["test"].preprocessing == expected
    images = torch.stack([image for image, _ in streamed["test"]])
    torch.testing.assert_close(images, in_memory["test"].images, rtol=0, atol=1e-6)
    assert float(in_memory["test"].images[:, :, 0].median()) > 0.99  # the top rows white (0.38 without the flag)
    with pytest.raises(ValueError, match=r"resize_mode: expected one of \['stretch', 'pad', 'crop'\], got 'fit'"):
        load_data_from_args(parser.parse_args(flags + ["--resize_mode", "fit"]))


def test_probe_reads_the_data_as_the_unet_was_trained(tmp_path):
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.cli import main

    from .conftest import shared_data

    flowcam = str(shared_data("plankton_flowcam_demo"))
    main([
        "demo", "--dataset", flowcam, "--output_dir", str(tmp_path), "--image_size", "8", "--num_channels", "1",
        "--resize_mode", "pad", "--pad_value", "1", "--normalize_background", "--unet_preset", "tiny",
        "--max_train_steps", "2", "--lr_warmup_steps", "1", "--timesteps", "10",
    ])  # fmt: skip
    probe = ["probe", "--unet_dir", str(tmp_path / "pipeline"), "--dataset", flowcam, "--timesteps", "10"]
    main(probe + ["--output_dir", str(tmp_path / "probe")])
    probed = DiffusionClassifierPipeline.from_pretrained(str(tmp_path / "probe" / "pipeline")).preprocessing
    assert probed.fit == {"resize_mode": "pad", "pad_value": 1.0, "normalize_background": True}


# --------------------------------------------------------------------------------------------------
# Splits of a long tail
# --------------------------------------------------------------------------------------------------


def test_every_class_keeps_two_images_in_val_and_test():
    labels = np.repeat(np.arange(4), [200, 40, 9, 5])
    splits = stratified_train_val_test_split(labels, 0.1, 0.2, seed=3, min_per_class=2)
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(len(labels)))  # a partition
    for name, expected in (("test", [40, 8, 2, 2]), ("val", [16, 3, 2, 2]), ("train", [144, 29, 5, 1])):
        assert np.bincount(labels[splits[name]], minlength=4).tolist() == expected
    again = stratified_train_val_test_split(labels, 0.1, 0.2, seed=3, min_per_class=2)
    assert all(np.array_equal(splits[name], again[name]) for name in splits)


def test_a_class_folder_too_small_for_the_split_is_named_with_its_count():
    labels = np.repeat(np.arange(3), [30, 20, 4])
    with pytest.raises(ValueError, match=r"class 'heteropod' \(label 2\) has 4 images; the split needs at least 5"):
        stratified_train_val_test_split(labels, 0.1, 0.2, min_per_class=2, class_names=["a", "b", "heteropod"])


# --------------------------------------------------------------------------------------------------
# k-means: K chosen without labels, and K larger than the images
# --------------------------------------------------------------------------------------------------


def test_the_label_free_choice_finds_the_clustered_feature_and_its_k():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 4)) * 10
    clustered = centres[np.repeat(np.arange(3), 30)] + rng.normal(size=(90, 4))
    noise = rng.normal(size=(90, 4))
    choice = select_clustering_without_labels({("noise", 0): noise, ("clustered", 0): clustered}, [2, 3, 6], 6)
    assert choice["pair"] == ["clustered", 0] and choice["num_clusters"] == 3
    assert set(choice["silhouette_by_num_clusters"]) == {2, 3, 6}


def test_more_clusters_than_images_is_refused():
    with pytest.raises(ValueError, match=r"number of clusters K=6 is larger than the number of images \(5\)"):
        kmeans_evaluate(np.eye(5), [0, 1, 0, 1, 0], num_classes=2, num_clusters=6)
    with pytest.raises(ValueError, match=r"K=121 is larger than the number of images \(40\)"):
        kmeans_evaluate(np.ones((40, 3)), np.arange(40) % 2, num_classes=121)


# --------------------------------------------------------------------------------------------------
# A resolution the U-Net cannot take
# --------------------------------------------------------------------------------------------------


def test_a_resolution_the_unet_cannot_take_fails_before_training(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_train_steps=1, train_batch_size=2)
    with pytest.raises(ValueError, match=r"sample_size divisible by 4 for preset 'tiny', got 30.*28 or 32 px"):
        train_ddpm_unet(args, torch.zeros(2, 1, 30, 30), preset="tiny")
    assert not (tmp_path / "run").exists()  # nothing written
    for size in (0, -8, 2):  # too small: no size near it would do
        with pytest.raises(ValueError, match=rf"sample_size an integer of at least 4 for preset 'tiny', got {size}: "):
            unet_config("tiny", size)


def test_the_study_and_evaluate_read_the_loaders_tensors_without_normalising_their_background_again():
    """Review: the study's test metrics and `evaluate_classifier` gave the loaders' preprocessed test images to the
    pipeline, whose contract normalised their background a second time (not idempotent: 78.75% where the same head on
    the files scored 80.0%). They are read as they are: the study's test probabilities are the pipeline's on the raw
    images, and evaluate scores the same."""
    from diffusers import DDPMScheduler, UNet2DModel
    from sklearn.datasets import load_digits

    from diffusion_classifiers.data import ImagePreprocessing, LabeledImages
    from diffusion_classifiers.evaluation import evaluate_classifier
    from diffusion_classifiers.models import unet_config
    from diffusion_classifiers.unet_feature_study import run_unet_feature_study

    digits = load_digits()
    generator = torch.Generator().manual_seed(0)
    ink = torch.nn.functional.interpolate(torch.tensor(digits.images[:120], dtype=torch.float32)[:, None] / 16, (40, 40))
    field = 0.5 + 0.4 * torch.rand(120, 1, 1, 1, generator=generator)  # a grey-to-white field per image
    raw = (field * (1 - 0.8 * ink) + 0.03 * torch.randn(120, 1, 40, 40, generator=generator)).clamp(0, 1) * 2 - 1
    contract = ImagePreprocessing(16, 1, normalize_background=True)
    once = contract(raw)
    torch.testing.assert_close(contract(once), once, rtol=0, atol=0)  # its own output: not normalised twice
    labels, names = torch.tensor(digits.target[:120]), [str(i) for i in range(10)]
    splits = {name: LabeledImages(once[rows], labels[rows], names, preprocessing=contract)
              for name, rows in (("train", slice(0, 60)), ("val", slice(60, 90)), ("test", slice(90, 120)))}  # fmt: skip
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 16)).eval()
    study = run_unet_feature_study(
        unet, DDPMScheduler(), splits, blocks=["mid_block"], timesteps=[50], show_progress=False
    )  # fmt: skip
    with study.pipeline.progress_bars_off():
        on_files = study.pipeline(raw[90:]).probs  # the raw test images, read once as in training
    assert torch.allclose(on_files, study.test_probs, atol=1e-5)
    assert evaluate_classifier(study.pipeline, splits["test"])["accuracy"] == study.test_metrics["accuracy"]

"""Every bad input fails early with an error that names it (issue 14, items 4-5).

One table row per bad input: what is fed, the error type, and a pattern naming the image, file, key, folder or flag.
Arguments of the long jobs (`demo`, `examples/evaluate.py`) are refused before any data is read, model trained or
image classified: the long steps are replaced by functions that fail the test if they are reached.
"""

import json
import os
import re
import runpy
import shutil
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import (
    DiffusionClassifierConfig,
    DiffusionClassifierImageProcessor,
    DiffusionClassifierPipeline,
    RepresentationConditionedDiTModel,
    RepresentationConditionedDiTPipeline,
    UNetFeatureClassifierPipeline,
)
from diffusion_classifiers.cli import main as cli_main
from diffusion_classifiers.data import load_image_classification_data, preprocess_images
from diffusion_classifiers.evaluation import evaluate_classifier
from diffusion_classifiers.models import LinearProbeHead, build_vit_encoder, rc_dit_config, unet_config

from .conftest import REPO_ROOT

# --------------------------------------------------------------------------------------------------
# helpers: tiny inputs built in tmp_path
# --------------------------------------------------------------------------------------------------


def image_folder(root, classes, size=(8, 8)):
    """`root/<class>/<i>.png` for each `{class: number of images}`."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def gray(n, size=8):
    return np.zeros((n, size, size), np.uint8)


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A saved UNetFeatureClassifierPipeline with a head: model_index.json, unet/, scheduler/, head/."""
    torch.manual_seed(0)
    pipe = UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 16)),
        scheduler=DDPMScheduler(),
        head=LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10),
    )
    path = tmp_path_factory.mktemp("pipeline") / "pipe"
    pipe.save_pretrained(path)
    return path


def pipeline_copy(request, tmp_path):
    path = tmp_path / "pipe"
    shutil.copytree(request.getfixturevalue("saved_pipeline"), path)
    return path


def pipeline_without(request, tmp_path, component):
    path = pipeline_copy(request, tmp_path)
    shutil.rmtree(path / component)
    return path


def pickled_head(request, tmp_path, filename):
    path = pipeline_copy(request, tmp_path)
    weights = path / "head" / "diffusion_pytorch_model.safetensors"
    torch.save({"linear.weight": torch.zeros(2, 32)}, path / "head" / filename)
    weights.unlink()
    return path


def too_late(*args, **kwargs):
    raise AssertionError("a long step started before the bad argument was refused")


@pytest.fixture
def no_long_work(monkeypatch):
    """Data loading, training and model loading all fail the test if reached."""
    import diffusion_classifiers.data
    import diffusion_classifiers.training

    monkeypatch.setattr(diffusion_classifiers.data, "load_data_from_args", too_late)
    monkeypatch.setattr(diffusion_classifiers.training, "train_ddpm_unet", too_late)


def under_a_file(tmp_path):
    """A folder path that cannot be created: its parent is a file."""
    (tmp_path / "a-file").write_text("not a folder")
    return str(tmp_path / "a-file" / "out")


def run_demo(request, *flags):
    request.getfixturevalue("no_long_work")
    cli_main(["demo", *flags])


def run_evaluate_example(monkeypatch, argv):
    """`python examples/evaluate.py ARGV`, with loading the model or the data counted as too late."""
    import diffusion_classifiers.evaluation

    monkeypatch.setattr(diffusion_classifiers.evaluation, "load_classifier", too_late)
    monkeypatch.setattr(diffusion_classifiers.evaluation, "load_evaluation_split", too_late)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *argv])
    monkeypatch.setenv("DIFFUSION_CLASSIFIERS_TRACEBACK", "1")  # the error itself, not its one line from a shell
    runpy.run_path(str(REPO_ROOT / "examples" / "evaluate.py"), run_name="__main__")


# --------------------------------------------------------------------------------------------------
# the table: name -> (feed the bad input, error type, pattern naming it)
# --------------------------------------------------------------------------------------------------


def folder_with_symlink_loop(tmp_path):
    root = image_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    os.symlink(root / "dog", root / "dog" / "loop")  # dog/loop/loop/loop/... never ends if followed blindly
    return root


def folder_with_linked_class(tmp_path):
    root = image_folder(tmp_path / "data", {"cat": 2})
    os.symlink(root / "cat", root / "dog")  # the same images under two classes
    return root


def bomb_folder(tmp_path, monkeypatch, size):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # PIL warns above 50 pixels and refuses above 100
    return image_folder(tmp_path / "data", {"cat": 1, "dog": 1}, size=size)


def truncated_npz(tmp_path):
    path = npz(tmp_path / "cut.npz", train_images=gray(20), train_labels=np.arange(20) % 2)
    path.write_bytes(path.read_bytes()[:700])
    return path


def corrupt_npz_member(tmp_path):
    path = npz(tmp_path / "flipped.npz", train_images=np.full((20, 8, 8), 7, np.uint8), train_labels=np.arange(20) % 2)
    data = bytearray(path.read_bytes())
    data[data.index(bytes([7] * 64)) + 10] = 8  # one pixel changed: the member's CRC no longer matches
    path.write_bytes(bytes(data))
    return path


CASES = {
    # --- A. layouts ----------------------------------------------------------------------------------
    "torch [5, H, W] (not 5 images)": (
        lambda tmp_path, request, monkeypatch: preprocess_images(torch.rand(5, 16, 16)),
        ValueError, r"got 5 on axis 0 and 16 on axis 2 of image 0 of batch, shape \(5, 16, 16\).*accepted layouts",
    ),
    "numpy [3, 32, 3] (C or last?)": (
        lambda tmp_path, request, monkeypatch: preprocess_images(np.zeros((3, 32, 3), np.uint8)),
        ValueError, r"channel axis of image 0 of batch, shape \(3, 32, 3\): axes 0 and 2 both.*input_data_format",
    ),
    "torch [1, H, 1] in a list, item 2": (
        lambda tmp_path, request, monkeypatch: preprocess_images([torch.rand(8, 8), torch.rand(8, 8), torch.rand(1, 8, 1)]),
        ValueError, r"image 2 of batch, shape \(1, 8, 1\)",
    ),
    "numpy [H, W, 4] (RGBA array)": (
        lambda tmp_path, request, monkeypatch: preprocess_images(np.zeros((8, 8, 4), np.uint8)),
        ValueError, r"expected 1 or 3 channels, got 8 on axis 0 and 4 on axis 2 of image 0 of batch, shape \(8, 8, 4\)",
    ),
    "4-D [2, 4, 8, 8] (4 channels)": (
        lambda tmp_path, request, monkeypatch: preprocess_images(torch.rand(2, 4, 8, 8)),
        ValueError, r"expected 1 or 3 channels, got 4 on axis 1 and 8 on axis 3 of images 0\.\.1 of batch",
    ),
    "4-D [2, 3, 8, 3]": (
        lambda tmp_path, request, monkeypatch: preprocess_images(torch.rand(2, 3, 8, 3)),
        ValueError, r"images 0\.\.1 of batch, shape \(2, 3, 8, 3\)",
    ),
    "5-D tensor": (
        lambda tmp_path, request, monkeypatch: preprocess_images(torch.rand(1, 2, 3, 8, 8)),
        ValueError, r"item 0 is Tensor of shape \(1, 2, 3, 8, 8\).*; expected one of the layouts \[H, W\]",
    ),
    "input_data_format='NHWC'": (
        lambda tmp_path, request, monkeypatch: preprocess_images(torch.rand(8, 8), input_data_format="NHWC"),
        ValueError, r"input_data_format: expected 'channels_first', 'channels_last' or None, got 'NHWC'",
    ),
    "pipeline given torch [5, H, W]": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(
            request.getfixturevalue("saved_pipeline"))(torch.rand(5, 16, 16)),
        ValueError, r"of image 0 of batch, shape \(5, 16, 16\)",
    ),
    "image processor given numpy [3, 16, 3]": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierImageProcessor(16, 1)(np.zeros((3, 16, 3), np.uint8)),
        ValueError, r"image 0 of batch, shape \(3, 16, 3\)",
    ),
    # --- B. dataset oddities -------------------------------------------------------------------------
    "empty class folder": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(
            image_folder(tmp_path / "data", {"cat": 3, "dog": 0, "eel": 3})),
        ValueError, r"class folder .*data/dog holds no image files",
    ),
    "symlink loop in an image folder": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(folder_with_symlink_loop(tmp_path)),
        ValueError, r"class folder .*data/dog contains the folder 'loop'; expected image files directly",
    ),
    "class folder symlinked to another class": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(folder_with_linked_class(tmp_path)),
        ValueError, r"class folders .*data/cat and .*data/dog are the same folder",
    ),
    "train/ and val/ folders of class folders": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(
            image_folder(tmp_path / "data", {"train/cat": 2, "train/dog": 2, "val/cat": 1, "val/dog": 1})),
        ValueError, r"class folder .*data/train contains the folder 'cat'",
    ),
    ".npz labels {0, 7}": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(
            npz(tmp_path / "gaps.npz", train_images=gray(6), train_labels=np.array([0, 7, 0, 7, 0, 7]))),
        ValueError, r"gaps\.npz: labels \{0, 7\} are not 0\.\.K-1: 6 of the classes 0\.\.7 have no images",
    ),
    "class in test, not in train": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(npz(
            tmp_path / "unseen.npz", train_images=gray(4), train_labels=np.array([0, 1, 0, 1]),
            test_images=gray(2), test_labels=np.array([0, 2]))),
        ValueError, r"unseen\.npz: class '2' \(label 2\) has images in split 'test' but none in 'train'",
    ),
    "truncated .npz": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(truncated_npz(tmp_path)),
        ValueError, r"cannot read .*cut\.npz: .*truncated or corrupt",
    ),
    "corrupt .npz member": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(corrupt_npz_member(tmp_path)),
        ValueError, r"cannot read .*flipped\.npz: .*train_images",
    ),
    "val images of another size": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(npz(
            tmp_path / "sizes.npz", train_images=gray(4), train_labels=np.array([0, 1, 0, 1]),
            val_images=gray(2, size=6), val_labels=np.array([0, 1]))),
        ValueError, r"sizes\.npz\[val_images\]: images are 1-channel 6x6; expected 1-channel 8x8 as in .*\[train_images\]",
    ),
    "test images with other channels": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(npz(
            tmp_path / "channels.npz", train_images=np.zeros((4, 8, 8, 3), np.uint8), train_labels=np.array([0, 1, 0, 1]),
            test_images=gray(2), test_labels=np.array([0, 1]))),
        ValueError, r"channels\.npz\[test_images\]: images are 1-channel 8x8; expected 3-channel 8x8",
    ),
    "decompression bomb (PIL's warning)": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(bomb_folder(tmp_path, monkeypatch, (8, 8))),
        ValueError, r"cannot decode image file .*data/cat/0\.png: .*decompression bomb",
    ),
    "decompression bomb (PIL's error)": (
        lambda tmp_path, request, monkeypatch: load_image_classification_data(bomb_folder(tmp_path, monkeypatch, (16, 16))),
        ValueError, r"cannot decode image file .*data/cat/0\.png: .*decompression bomb",
    ),
    "pipeline folder without unet/": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(
            pipeline_without(request, tmp_path, "unet")),
        FileNotFoundError, r"pipe/unet: folder not found; model_index.json names component 'unet'",
    ),
    "pipeline folder without head/": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(
            pipeline_without(request, tmp_path, "head")),
        FileNotFoundError, r"pipe/head: folder not found; model_index.json names component 'head'",
    ),
    "folder without model_index.json": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(tmp_path),
        FileNotFoundError, r"model_index\.json not found",
    ),
    "plain-pickle head (.bin)": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(
            pickled_head(request, tmp_path, "diffusion_pytorch_model.bin")),
        ValueError, r"head/diffusion_pytorch_model\.bin: pickled weights are refused",
    ),
    "plain-pickle head (.pkl)": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(
            pickled_head(request, tmp_path, "head.pkl")),
        ValueError, r"head/head\.pkl: pickled weights are refused",
    ),
    "head with views 'rotations'": (
        lambda tmp_path, request, monkeypatch: LinearProbeHead(32, 2, views="rotations"),
        ValueError, r"unknown views 'rotations'; expected one of \(None, 'dihedral'\)",
    ),
    "transformers config with feature_views 'rotations'": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierConfig(feature_views="rotations"),
        ValueError, r"unknown views 'rotations'; expected one of \(None, 'dihedral'\)",
    ),
    "use_safetensors=False": (
        lambda tmp_path, request, monkeypatch: DiffusionClassifierPipeline.from_pretrained(
            request.getfixturevalue("saved_pipeline"), use_safetensors=False),
        ValueError, r"use_safetensors: expected True",
    ),
    "evaluate.py --batch_size 0": (
        lambda tmp_path, request, monkeypatch: run_evaluate_example(
            monkeypatch, ["--model_dir", "m", "--output_dir", str(tmp_path), "--batch_size", "0"]),
        ValueError, r"batch_size: expected a positive integer, got 0",
    ),
    "evaluate_classifier(batch_size=0)": (
        lambda tmp_path, request, monkeypatch: evaluate_classifier(str(tmp_path / "no-model"), None, batch_size=0),
        ValueError, r"batch_size: expected a positive integer, got 0",
    ),
    "evaluate.py with an unwritable --output_dir": (
        lambda tmp_path, request, monkeypatch: run_evaluate_example(
            monkeypatch, ["--model_dir", "m", "--output_dir", under_a_file(tmp_path)]),
        ValueError, r"output_dir '.*a-file/out': expected a writable folder",
    ),
    "demo --timesteps 5000": (
        lambda tmp_path, request, monkeypatch: run_demo(request, "--output_dir", str(tmp_path), "--timesteps", "10", "5000"),
        ValueError, r"timestep 5000 is invalid: expected an integer in \[0, 1000\)",
    ),
    "demo --train_batch_size 0": (
        lambda tmp_path, request, monkeypatch: run_demo(request, "--output_dir", str(tmp_path), "--train_batch_size", "0"),
        ValueError, r"train_batch_size.*positive.*got 0",
    ),
    "demo --image_size 10 (U-Net levels need a multiple of 4)": (
        lambda tmp_path, request, monkeypatch: run_demo(request, "--output_dir", str(tmp_path), "--image_size", "10"),
        ValueError, r"sample_size divisible by 4 for preset 'small', got 10",
    ),
    "demo with an unwritable --output_dir": (
        lambda tmp_path, request, monkeypatch: run_demo(request, "--output_dir", under_a_file(tmp_path)),
        ValueError, r"--output_dir '.*a-file/out': expected a writable folder",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_early_with_a_named_error(name, tmp_path, request, monkeypatch):
    feed, error, pattern = CASES[name]
    with pytest.raises(error, match=pattern):
        feed(tmp_path, request, monkeypatch)


# --------------------------------------------------------------------------------------------------
# the good side of the same rules
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, input_data_format, expected",
    [
        ((16, 16), None, (1, 1, 16, 16)),
        ((16, 16, 3), None, (1, 3, 16, 16)),  # H x W x C tensor: one image, not 16
        ((3, 16, 16), None, (1, 3, 16, 16)),  # channels-first array: one image, not 3
        ((1, 16, 16), None, (1, 1, 16, 16)),
        ((5, 16, 16, 1), None, (5, 1, 16, 16)),
        ((5, 3, 16, 16), None, (5, 3, 16, 16)),
        ((3, 16, 3), "channels_first", (1, 3, 16, 3)),
        ((3, 16, 3), "channels_last", (1, 3, 3, 16)),
        ((2, 3, 8, 3), "channels_last", (2, 3, 3, 8)),
    ],
)
def test_each_layout_is_read_one_way(shape, input_data_format, expected):
    for make in (np.zeros, torch.zeros):
        assert preprocess_images(make(shape), input_data_format=input_data_format).shape == expected


def test_label_gaps_load_when_class_names_explain_them(tmp_path):
    path = npz(tmp_path / "gaps.npz", train_images=gray(20), train_labels=np.arange(20) % 2 * 7)
    with pytest.warns(UserWarning, match=r"6 of the 8 class_names have no image \(first: label 1, 'c1'\)"):
        data = load_image_classification_data(path, class_names=[f"c{i}" for i in range(8)])
    assert data["train"].num_classes == 8 and set(data["train"].labels.tolist()) <= {0, 7}


def test_images_beside_the_class_folders_are_named_in_a_warning(tmp_path):
    root = image_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "unsorted.png")
    (root / "notes.txt").write_text("not an image: no warning for it alone")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) directly in it \(first: 'unsorted\.png'\) are not read"):
        data = load_image_classification_data(root, val_fraction=0.25, test_fraction=0.25)
    assert sum(len(split) for split in data.values()) == 6


def test_hidden_files_and_folders_are_skipped(tmp_path):
    root = image_folder(tmp_path / "data", {"cat": 3, "dog": 3, "dog/.thumbnails": 2})
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class, so not an empty class either
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "cat" / "._0.png")  # macOS resource fork
    data = load_image_classification_data(root, val_fraction=0.25, test_fraction=0.25)
    assert data["train"].class_names == ["cat", "dog"]
    assert sum(len(split) for split in data.values()) == 6


def test_a_component_passed_to_from_pretrained_needs_no_folder(request, tmp_path):
    path = pipeline_without(request, tmp_path, "head")
    head = LinearProbeHead(in_features=32, num_classes=3, block="mid_block", timestep=10, class_names=list("abc"))
    pipe = DiffusionClassifierPipeline.from_pretrained(path, head=head)
    assert pipe.head is head and pipe(torch.zeros(2, 1, 16, 16)).probs.shape == (2, 3)


@pytest.mark.parametrize(
    "kind, missing",
    [
        ("unet_features", "scheduler/scheduler_config.json"),
        ("unet_features", "unet/config.json"),
        ("unet_features", "unet/diffusion_pytorch_model.safetensors"),
        ("unet_features", "head/config.json"),
        ("unet_features", "head/diffusion_pytorch_model.safetensors"),
        ("rc_dit", "encoder/config.json"),
        ("rc_dit", "encoder/model.safetensors"),
        ("rc_dit", "transformer/diffusion_pytorch_model.safetensors"),
    ],
)
def test_a_component_folder_missing_a_file_is_refused_naming_it(kind, missing, tmp_path):
    """QA: one file deleted inside a component folder gave diffusers' or transformers' OSError traceback."""
    torch.manual_seed(0)
    if kind == "unet_features":
        head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10)
        pipe = UNetFeatureClassifierPipeline(UNet2DModel(**unet_config("tiny", 8)), DDPMScheduler(), head=head)
    else:
        encoder = build_vit_encoder(8, 1, 16, num_layers=1, num_heads=2, patch_size=4)
        config = rc_dit_config("tiny", 8, 1, 16, hidden_size=16, num_layers=1)
        transformer = RepresentationConditionedDiTModel(**config)
        head = LinearProbeHead(16, 2, block="encoder", timestep=0, pool=None)
        pipe = RepresentationConditionedDiTPipeline(encoder, transformer, DDPMScheduler(), head=head)
    pipe.save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / missing).unlink()
    component = missing.split("/")[0]
    pattern = re.escape(f"pipe/{missing}: not found; component '{component}' (")
    with pytest.raises(FileNotFoundError, match=pattern + r".*model_index\.json needs its (config|weights)"):
        DiffusionClassifierPipeline.from_pretrained(tmp_path / "pipe")


def test_storage_that_refuses_a_write_ends_a_command_in_one_line(capsys):
    """QA (operations): a full disk, a file-size limit or a read-only folder ended commands in tracebacks; now one
    line, naming the file where Python knows it. Other OS errors keep their traceback."""
    import errno

    from diffusion_classifiers.cli import run_from_shell

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "out/predictions.csv")

    with pytest.raises(SystemExit) as exited:
        run_from_shell("diffusion-classifiers predict", full_disk)
    assert exited.value.code == "diffusion-classifiers predict: error: [Errno 28] No space left on device: " \
        "'out/predictions.csv'"

    def broken_device():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        run_from_shell("diffusion-classifiers predict", broken_device)

    def write_on_full_disk():  # what file.write raises: no file named
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit, match=r"^x: error: \[Errno 28\] No space left on device "
                                         r"\(DIFFUSION_CLASSIFIERS_TRACEBACK=1 shows where\)$"):  # fmt: skip
        run_from_shell("x", write_on_full_disk)

    from safetensors import SafetensorError

    def weights_on_full_disk():  # review: safetensors' own error, seen on a full tmpfs
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(SystemExit, match=r"^x: error: Error while serializing: I/O error: No space left on device"):
        run_from_shell("x", weights_on_full_disk)


def test_ctrl_c_ends_a_command_in_one_line_with_status_130(capsys):
    """QA (operations): Ctrl-C in a training script printed a KeyboardInterrupt traceback of the loop's innards."""
    from diffusion_classifiers.cli import run_from_shell

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_from_shell("unet_features_train.py", interrupted)
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().startswith("unet_features_train.py: interrupted")


def test_the_hub_layouts_of_a_data_set_are_refused_with_the_way_to_read_them(tmp_path):
    """QA (a datasets user): parquet shards, a parquet file and the imagefolder layout <root>/<split>/<class>/<image>
    were refused as holding no images, as no .npz / .csv, or as nested class folders, without a way to read them."""
    from diffusion_classifiers.data import load_image_classification_data

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "test.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"shards: no images found \(it holds parquet files, .* datasets\.load_dataset"
                                         r"\('parquet', data_dir="):  # fmt: skip
        load_image_classification_data(str(tmp_path / "shards"))
    with pytest.raises(ValueError, match=r"test.parquet' is a file; .* \(a \.parquet file of a data set: save "
                                         r"datasets\.load_dataset\('parquet', data_files="):  # fmt: skip
        load_image_classification_data(str(tmp_path / "shards" / "test.parquet"))
    for split in ("train", "test"):
        (tmp_path / "splits" / split / "cat").mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "splits" / split / "cat" / "a.png")
    with pytest.raises(ValueError, match=r"nested folders are not read \(a folder of split folders, .* the imagefolder "
                                         r"layout of datasets: save datasets\.load_dataset\('imagefolder', data_dir="):
        load_image_classification_data(str(tmp_path / "splits"))


def test_an_output_folder_named_digits_is_not_taken_for_the_built_in_data(tmp_path, monkeypatch):
    """QA (a clinician): `demo --dataset digits --output_dir digits` was refused as writing inside the input folder
    'digits', which names scikit-learn's digits, never a folder."""
    from diffusion_classifiers.validation import check_output_outside_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    check_output_outside_data("digits", "digits")
    (tmp_path / "scans").mkdir()
    with pytest.raises(ValueError, match=r"--output_dir scans/out: inside the input folder scans"):
        check_output_outside_data("scans/out", "scans")


def test_a_csv_is_read_alike_by_training_and_predict_bom_included_and_a_repeated_column_refused(tmp_path):
    """QA (a bad-input sweep): a header `path,label,label` trained and scored on the second label column without a
    word (and `path,label,path` predicted the second file); a CSV saved by Excel as "CSV UTF-8" (a byte-order mark)
    was read by predict but refused by training ("missing column(s) ['path']")."""
    from diffusion_classifiers.data import load_image_classification_data
    from diffusion_classifiers.prediction import list_inputs

    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        for i in range(6):
            Image.new("L", (8, 8), 40 * i + int(label)).save(tmp_path / label / f"{i}.png")
    rows = [f"{label}/{i}.png,{label}" for label in ("0", "1") for i in range(6)]
    (tmp_path / "excel.csv").write_text("\n".join(["path,label", *rows]) + "\n", encoding="utf-8-sig")
    assert load_image_classification_data(str(tmp_path / "excel.csv"), image_size=8)["train"].class_names == ["0", "1"]
    assert len(list_inputs(tmp_path / "excel.csv")) == 12
    (tmp_path / "twice.csv").write_text("\n".join(["path,label,label", *(f"{row},7" for row in rows)]) + "\n")
    repeated = r"twice.csv: its header names the column\(s\) \['label'\] more than once; expected each once"
    with pytest.raises(ValueError, match=repeated):
        load_image_classification_data(str(tmp_path / "twice.csv"), image_size=8)
    with pytest.raises(ValueError, match=repeated):
        list_inputs(tmp_path / "twice.csv")
    (tmp_path / "latin.csv").write_bytes("path,label,site\n0/0.png,0,Córdoba\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv: not UTF-8 .*expected a UTF-8 file"):
        load_image_classification_data(str(tmp_path / "latin.csv"), image_size=8)


def test_a_damaged_model_folder_is_refused_naming_the_file_not_with_a_traceback(tmp_path):
    """QA (a bad-input sweep): a safetensors file cut short in a copy, or a component config that is no JSON, ended
    the CLI in a traceback through diffusers ("Unable to load weights from checkpoint file ...")."""
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["a", "b"])
    UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 8)), scheduler=DDPMScheduler(), head=head
    ).save_pretrained(tmp_path / "model")  # fmt: skip
    (tmp_path / "images").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "images" / "a.png")
    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors: not a readable safetensors file .*cut "
                                         r"short in a copy\?\): re-save the pipeline"):
        DiffusionClassifierPipeline.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"not a readable safetensors file"):  # a ValueError: one line from a shell
        cli_main(["predict", "--model_dir", str(tmp_path / "model"), "--input", str(tmp_path / "images"),
                  "--output", str(tmp_path / "p.csv")])  # fmt: skip
    weights.write_bytes(whole)
    (tmp_path / "model" / "head" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"head.config.json: not valid JSON \(.*\); expected the component's config"):
        DiffusionClassifierPipeline.from_pretrained(tmp_path / "model")
    head_config = json.loads(json.dumps(head.config))
    del head_config["num_classes"], head_config["in_features"]
    (tmp_path / "model" / "head" / "config.json").write_text(json.dumps(head_config))
    # diffusers' own: "TypeError: LinearProbeHead.__init__() missing 2 required positional arguments"
    with pytest.raises(ValueError, match=r"head.config.json: no 'in_features', 'num_classes', which LinearProbeHead "
                                         r"requires: re-save the pipeline"):  # fmt: skip
        DiffusionClassifierPipeline.from_pretrained(tmp_path / "model")


def test_an_output_folder_among_the_image_folders_a_csv_lists_is_refused(tmp_path):
    """QA (a bad-input sweep): `cluster --input good.csv --output_dir imgs/cl3` and a trainer's `--output_dir imgs/run`
    wrote their PNGs beside the CSV's class folders imgs/<class>/; the folder then read as 11 classes, 'cl3' one."""
    from diffusion_classifiers.validation import check_output_outside_data

    for label in ("0", "1"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "imgs" / label / "a.png")
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "b.png")
    rows = ["path,label", "imgs/0/a.png,0", "imgs/1/a.png,1", "flat/b.png,1"]
    (tmp_path / "good.csv").write_text("\n".join(rows) + "\n")
    for output in ("imgs/cl3", "imgs/0/run", "flat/run"):
        with pytest.raises(ValueError, match=rf"--output_dir .*{output}: inside a folder of images .*good.csv lists "
                                             r"\(--dataset\), "):  # fmt: skip
            check_output_outside_data(tmp_path / output, tmp_path / "good.csv")
    check_output_outside_data(tmp_path / "runs" / "cl3", tmp_path / "good.csv")  # beside the data: its own folder


def test_an_image_size_whose_images_would_not_fit_in_memory_is_refused_before_any_is_read(tmp_path):
    """QA (a bad-input sweep): `--image_size 100000` ended in the allocator's traceback ("you tried to allocate
    71880000000000 bytes"), and 2048 px of the 1,797 digits would have taken 30 GB before failing."""
    from diffusion_classifiers.data import load_image_classification_data

    too_large = r"image_size 100000: 1797 images of 1 x 100000 x 100000 float32 values take .* GiB, over this "
    with pytest.raises(ValueError, match=too_large + r"machine.s .* \(--streaming\)"):
        load_image_classification_data("digits", image_size=100000, num_channels=1)
    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "a" / "0.png")
    with pytest.raises(ValueError, match=r"image_size 100000: 1 images of 1 x 100000 x 100000 float32"):
        load_image_classification_data(str(tmp_path), image_size=100000, num_channels=1, val_fraction=0.5)


def test_evaluate_refuses_to_write_its_report_into_the_model_folder(tmp_path):
    """QA (a bad-input sweep): `evaluate --output_dir` of the model's own folder wrote metrics.json, report.md and
    the predictions beside its weights, a folder push_to_hub then refuses."""
    head = LinearProbeHead(in_features=32, num_classes=10, block="mid_block", timestep=10)
    UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 8)), scheduler=DDPMScheduler(), head=head
    ).save_pretrained(tmp_path / "model")  # fmt: skip
    before = sorted(path.name for path in (tmp_path / "model").iterdir())
    for output in ("model", "model/eval"):
        inside = rf"--output_dir .*{output}: inside the model folder .*model \(--model_dir\)"
        with pytest.raises(ValueError, match=inside):
            cli_main(["evaluate", "--model_dir", str(tmp_path / "model"), "--dataset", "digits", "--output_dir",
                      str(tmp_path / output)])  # fmt: skip
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == before


def test_outputs_beside_a_csv_whose_class_folders_are_beside_it_are_not_refused(tmp_path):
    """Review: `proj/labels.csv` beside `proj/<class>/`, the usual layout, had every output folder under proj refused
    (the class folders' parent taken for an image folder), and so did an empty path cell for the CSV's folder."""
    from diffusion_classifiers.validation import check_output_outside_data

    for label in ("cat", "dog"):
        (tmp_path / "proj" / label).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "proj" / label / "a.png")
    (tmp_path / "proj" / "labels.csv").write_text("path,label\ncat/a.png,cat\ndog/a.png,dog\n,dog\n")
    check_output_outside_data(tmp_path / "proj" / "eval", tmp_path / "proj" / "labels.csv")
    with pytest.raises(ValueError, match=r"inside a folder of images .*labels.csv lists"):
        check_output_outside_data(tmp_path / "proj" / "cat" / "eval", tmp_path / "proj" / "labels.csv")

import gzip
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from diffusion_classifiers.data import (
    FASHION_MNIST_CLASSES,
    LabeledImages,
    few_label_indices,
    load_image_classification_data,
    long_tailed_indices,
    preprocess_images,
    read_idx,
    stratified_split,
    stratified_subset_indices,
    to_datasets,
)

from .conftest import shared_data

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Reference IDX encoder (uint8 only)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def class_counts(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    return np.bincount(labels.numpy(), minlength=num_classes)


@pytest.fixture(scope="module")
def digits_splits():
    return load_image_classification_data("digits", seed=0)


@pytest.fixture(scope="module")
def fashion_splits():
    return load_image_classification_data(shared_data("fashion_mnist"), seed=0)


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def test_digits_shapes_range_and_sizes(digits_splits):
    assert list(digits_splits) == ["train", "val", "test"]
    for split in digits_splits.values():
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 32, 32)
        assert split.images.min() >= -1 and split.images.max() <= 1
        assert split.class_names == [str(i) for i in range(10)] and split.num_classes == 10
    assert sum(len(s) for s in digits_splits.values()) == 1797
    # digits are 0..16: the background is exactly -1 and the strokes reach +1
    assert digits_splits["train"].images.min() == -1 and digits_splits["train"].images.max() == 1


def test_digits_splits_match_reference_stratified_carving(digits_splits):
    digits = load_digits()
    reference = F.interpolate(
        torch.from_numpy(digits.images / 8.0 - 1.0).float()[:, None],
        size=(32, 32), mode="bilinear", antialias=True, align_corners=False,
    ).clamp(-1, 1)
    labels = digits.target
    pool, test = stratified_split(labels, 0.2, seed=0)
    kept, val = stratified_split(labels[pool], 0.1, seed=0)
    expected = {"train": pool[kept], "val": pool[val], "test": test}
    assert sorted(np.concatenate(list(expected.values())).tolist()) == list(range(1797))  # disjoint, complete
    for name, index in expected.items():
        assert torch.equal(digits_splits[name].labels, torch.from_numpy(labels[index]))
        torch.testing.assert_close(digits_splits[name].images, reference[index], atol=1e-6, rtol=0)
    # stratified: each class puts round(0.2 * n_c) images in test
    n_c = np.bincount(labels)
    assert class_counts(digits_splits["test"].labels, 10).tolist() == np.floor(0.2 * n_c + 0.5).astype(int).tolist()


def test_digits_deterministic_per_seed(digits_splits):
    again = load_image_classification_data("digits", seed=0)
    other = load_image_classification_data("digits", seed=1)
    for name in digits_splits:
        assert torch.equal(again[name].images, digits_splits[name].images)
        assert torch.equal(again[name].labels, digits_splits[name].labels)
    assert len(other["test"]) == len(digits_splits["test"])
    assert not torch.equal(other["test"].images, digits_splits["test"].images)


def test_digits_options():
    data = load_image_classification_data("digits", image_size=(8, 12), num_channels=3, class_names=list("abcdefghij"))
    assert data["train"].images.shape[1:] == (3, 8, 12)
    assert data["val"].class_names == list("abcdefghij")
    with pytest.raises(ValueError, match="val_fraction"):
        load_image_classification_data("digits", val_fraction=1.5)
    with pytest.raises(ValueError, match="num_channels: expected 1, 3 or None, got 2"):
        load_image_classification_data("digits", num_channels=2)


# --------------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------------


def test_npz_pneumoniamnist_official_splits():
    path = shared_data("medmnist_pneumonia", "pneumoniamnist.npz")
    data = load_image_classification_data(path)
    assert {k: len(v) for k, v in data.items()} == {"train": 4708, "val": 524, "test": 624}
    assert data["train"].class_names == ["normal", "pneumonia"]
    assert data["test"].images.shape[1:] == (1, 28, 28)
    assert class_counts(data["train"].labels, 2).tolist() == [1214, 3494]
    assert class_counts(data["test"].labels, 2).tolist() == [234, 390]
    raw = np.load(path)
    expected = torch.from_numpy(raw["test_images"][:5]).float()[:, None] / 127.5 - 1
    torch.testing.assert_close(data["test"].images[:5], expected, atol=1e-6, rtol=0)
    assert torch.equal(data["val"].labels, torch.from_numpy(raw["val_labels"][:, 0].astype(np.int64)))


def test_npz_generic_rgb_carves_missing_splits(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 6, 5, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    data = load_image_classification_data(
        write_npz(tmp_path / "rgb.npz", train_images=images, train_labels=labels),
        val_fraction=0.25, test_fraction=0.25,
    )
    assert {k: len(v) for k, v in data.items()} == {"train": 20, "val": 8, "test": 12}
    assert data["train"].class_names == ["0", "1", "2", "3"]
    assert data["train"].images.shape[1:] == (3, 6, 5)


def test_npz_missing_keys_lists_found_and_expected(tmp_path):
    path = write_npz(tmp_path / "bad.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"expected keys train_images, train_labels.*found \['x', 'y'\]"):
        load_image_classification_data(path)
    path = write_npz(
        tmp_path / "half.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros(2, np.int64),
        val_images=np.zeros((2, 4, 4), np.uint8),
    )
    with pytest.raises(ValueError, match=r"missing \['val_labels'\]"):
        load_image_classification_data(path)


def test_npz_labels_outside_range(tmp_path):
    path = write_npz(
        tmp_path / "labels.npz",
        train_images=np.zeros((6, 4, 4), np.uint8), train_labels=np.array([[0], [1], [2], [0], [1], [0]]),
    )
    with pytest.raises(ValueError, match="label 2 is outside 0..K-1 for K=2 classes"):
        load_image_classification_data(path, class_names=["a", "b"])
    path = write_npz(
        tmp_path / "negative.npz",
        train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.array([0, -1, 1]),
    )
    with pytest.raises(ValueError, match="label -1 is outside"):
        load_image_classification_data(path)


def test_npz_nan_rejected(tmp_path):
    images = np.zeros((4, 4, 4), np.float32)
    images[3, 1, 1] = np.nan
    path = write_npz(tmp_path / "nan.npz", train_images=images, train_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="preprocess_images: input image 3 contains NaN or inf"):
        load_image_classification_data(path)


def test_npz_empty_rejected(tmp_path):
    path = write_npz(tmp_path / "empty.npz", train_images=np.zeros((0, 4, 4), np.uint8),
                     train_labels=np.zeros((0, 1), np.uint8))
    with pytest.raises(ValueError, match="split 'train' is empty"):
        load_image_classification_data(path)


# --------------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------------


def test_idx_fashion_mnist(fashion_splits):
    assert len(fashion_splits["train"]) + len(fashion_splits["val"]) == 60000
    assert len(fashion_splits["test"]) == 10000
    assert fashion_splits["test"].class_names == FASHION_MNIST_CLASSES
    assert class_counts(fashion_splits["val"].labels, 10).tolist() == [600] * 10
    assert class_counts(fashion_splits["test"].labels, 10).tolist() == [1000] * 10
    with gzip.open(shared_data("fashion_mnist", "t10k-images-idx3-ubyte.gz")) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    expected = torch.from_numpy(raw[-3:].astype(np.float32))[:, None] / 127.5 - 1
    torch.testing.assert_close(fashion_splits["test"].images[-3:], expected, atol=1e-6, rtol=0)


def test_idx_uncompressed_directory_and_generic_names(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(30, 5, 7), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(train))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(30) % 3))
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"), train)
    data = load_image_classification_data(tmp_path, test_fraction=0.2, val_fraction=0.25)
    assert {k: len(v) for k, v in data.items()} == {"train": 18, "val": 6, "test": 6}
    assert data["train"].class_names == ["0", "1", "2"]
    assert data["train"].images.shape[1:] == (1, 5, 7)


def test_idx_truncated_gz_names_file(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 4, 4), np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8))))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*truncated or corrupt"):
        load_image_classification_data(tmp_path)


def test_idx_truncated_content_and_wrong_magic(tmp_path):
    truncated = tmp_path / "short-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8))[:-5]))
    with pytest.raises(ValueError, match=r"short-idx3-ubyte\.gz: 171 bytes; its header \[10, 4, 4\] implies 176"):
        read_idx(truncated)
    wrong = tmp_path / "wrong-idx3-ubyte"
    wrong.write_bytes(b"\x12\x34\x56\x78" + bytes(64))
    with pytest.raises(ValueError, match=r"wrong-idx3-ubyte: bad magic number 12345678"):
        read_idx(wrong)
    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="1 dimensions in the header; expected 3"):
        read_idx(labels, expected_ndim=3)


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------


def test_image_folder_plankton_official_splits():
    root = shared_data("plankton_flowcam_demo")
    data = load_image_classification_data(root)
    assert {k: len(v) for k, v in data.items()} == {"train": 82, "val": 15, "test": 8}
    names = ["Actinoptychus", "Bacillariophyceae", "Ciliophora", "Dinoflagellata", "Noctilucales", "Tripos"]
    assert data["train"].class_names == names
    for split in data.values():
        assert split.images.shape[1:] == (3, 32, 32)  # mixed RGB / L -> 3 channels, resized
    lines = (root / "splits" / "test.txt").read_text().split()
    files, labels = lines[0::2], [int(x) for x in lines[1::2]]
    assert data["test"].labels.tolist() == labels
    for i, file in enumerate(files):
        image = Image.open(root / "images" / file)
        torch.testing.assert_close(data["test"].images[i], preprocess_images(image, 32, 3)[0])
    gray = [i for i, f in enumerate(files) if Image.open(root / "images" / f).mode == "L"]
    assert gray, "the test split holds grayscale images"
    for i in gray:  # grayscale images are repeated, not tinted
        assert torch.equal(data["test"].images[i, 0], data["test"].images[i, 2])


def test_image_folder_corrupt_file_named(tmp_path):
    root = tmp_path / "plankton"
    shutil.copytree(shared_data("plankton_flowcam_demo"), root)
    victim = root / "images" / (root / "splits" / "val.txt").read_text().split()[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated JPEG: the header opens, the decode fails
    with pytest.raises(ValueError, match=f"cannot decode image file {victim}"):
        load_image_classification_data(root)


def test_image_folder_without_splits(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["zebra", "ant"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            size = (6 + i, 8 + c)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    skipped = r"skipped 1 of its files, neither images nor DICOM images \(e.g. ant/notes.txt\)"
    with pytest.warns(UserWarning, match=skipped):
        data = load_image_classification_data(tmp_path, image_size=8, test_fraction=0.2, val_fraction=0.25)
    assert data["train"].class_names == ["ant", "zebra"]
    assert {k: len(v) for k, v in data.items()} == {"train": 12, "val": 4, "test": 4}
    assert data["test"].images.shape[1:] == (1, 8, 8)  # all grayscale -> 1 channel
    (tmp_path / "zebra" / "3.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"cannot decode image file .*zebra/3\.png"):
        load_image_classification_data(tmp_path)


def test_image_folder_empty(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        load_image_classification_data(tmp_path)
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_image_classification_data(tmp_path)


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_classification_data(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="expected 'digits', a path or a datasets"):
        load_image_classification_data(42)


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------


def test_datasets_round_trip(digits_splits):
    small = {name: split.subset(np.arange(20)) for name, split in digits_splits.items()}
    hub = to_datasets(small)
    assert set(hub) == {"train", "validation", "test"}
    assert isinstance(hub["train"].features["image"], datasets.Image)
    assert hub["train"].features["label"].names == small["train"].class_names
    back = load_image_classification_data(hub)
    for name in small:
        assert torch.equal(back[name].labels, small[name].labels)
        assert back[name].class_names == small[name].class_names
        torch.testing.assert_close(back[name].images, small[name].images, atol=1 / 127.5, rtol=0)


def make_dataset(n=12, label_feature=None, with_label=True):
    rng = np.random.default_rng(0)
    columns = {"img": [Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)) for _ in range(n)]}
    features = {"img": datasets.Image()}
    if with_label:
        columns["target"] = [i % 3 for i in range(n)]
        features["target"] = label_feature or datasets.ClassLabel(names=["x", "y", "z"])
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def test_datasets_single_dataset_is_carved():
    data = load_image_classification_data(make_dataset(30), val_fraction=0.25, test_fraction=0.2)
    assert {k: len(v) for k, v in data.items()} == {"train": 18, "val": 6, "test": 6}
    assert data["train"].class_names == ["x", "y", "z"]
    assert data["train"].images.shape[1:] == (3, 5, 5)


def test_datasets_label_column_not_classlabel():
    with pytest.raises(ValueError, match=r"no ClassLabel column.*'target': \"Value\('int64'\)\""):
        load_image_classification_data(make_dataset(label_feature=datasets.Value("int64")))
    with pytest.raises(ValueError, match=r"label column 'target' has type Value\('int64'\); expected ClassLabel"):
        load_image_classification_data(make_dataset(label_feature=datasets.Value("int64")), label_column="target")
    # named, the column gets the hint it gets unnamed (QA, session 58: a string column of class names)
    with pytest.raises(ValueError, match=r"expected ClassLabel \(cast .* dataset.class_encode_column\(name\)\)"):
        load_image_classification_data(make_dataset(label_feature=datasets.Value("int64")), label_column="target")


def test_datasets_missing_label_column():
    with pytest.raises(ValueError, match=r"no ClassLabel column for the labels; columns: \{'img'"):
        load_image_classification_data(make_dataset(with_label=False))
    with pytest.raises(ValueError, match="label column 'label' not found"):
        load_image_classification_data(make_dataset(), label_column="label")


def test_datasets_unknown_split_name():
    bad = datasets.DatasetDict({"train": make_dataset(), "holdout": make_dataset()})
    with pytest.raises(ValueError, match=r"splits \['holdout', 'train'\]"):
        load_image_classification_data(bad)


# --------------------------------------------------------------------------------------------------
# preprocess_images
# --------------------------------------------------------------------------------------------------


def random_uint8(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_preprocess_pil_modes():
    rgba = random_uint8(6, 7, 4)
    out = preprocess_images(Image.fromarray(rgba, "RGBA"))
    assert out.shape == (1, 3, 6, 7)  # RGBA -> RGB, alpha discarded
    torch.testing.assert_close(out, preprocess_images(rgba[..., :3]))
    gray = random_uint8(6, 7)
    out = preprocess_images(Image.fromarray(gray, "L"))
    assert out.shape == (1, 1, 6, 7)
    torch.testing.assert_close(out[0, 0], torch.from_numpy(gray).float() / 127.5 - 1)
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    torch.testing.assert_close(preprocess_images(palette), preprocess_images(palette.convert("RGB")))
    sixteen = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    out = preprocess_images(Image.fromarray(sixteen))
    torch.testing.assert_close(out[0, 0], torch.from_numpy(sixteen.astype(np.float32)) / 32767.5 - 1)
    # L and RGB together: promoted to 3 channels by repetition
    both = preprocess_images([Image.fromarray(gray), Image.fromarray(rgba[..., :3])])
    assert both.shape == (2, 3, 6, 7)
    assert torch.equal(both[0, 0], both[0, 1]) and torch.equal(both[0, 1], both[0, 2])


def test_preprocess_channel_conversion():
    rgb = random_uint8(9, 9, 3)
    gray = preprocess_images(rgb, num_channels=1)
    expected = (torch.from_numpy(rgb).float() / 127.5 - 1) @ torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(gray[0, 0], expected)
    pil_gray = preprocess_images(Image.fromarray(rgb).convert("L"))
    torch.testing.assert_close(gray, pil_gray, atol=1 / 127.5, rtol=0)  # PIL rounds to uint8


def test_preprocess_layouts_agree():
    batch = random_uint8(5, 10, 11, 3)
    from_numpy = preprocess_images(batch)  # NHWC
    from_torch = preprocess_images(torch.from_numpy(batch).permute(0, 3, 1, 2))  # NCHW
    from_list = preprocess_images([Image.fromarray(b) for b in batch])
    assert from_numpy.shape == (5, 3, 10, 11)
    assert torch.equal(from_numpy, from_torch) and torch.equal(from_numpy, from_list)
    grays = random_uint8(6, 10, 11)
    assert preprocess_images(grays[:, None]).shape == (6, 1, 10, 11)  # numpy [N, 1, H, W]
    assert preprocess_images(torch.from_numpy(grays)[..., None]).shape == (6, 1, 10, 11)  # torch [N, H, W, 1]
    assert preprocess_images(torch.from_numpy(grays[:3])).shape == (1, 3, 10, 11)  # torch [C, H, W]
    assert preprocess_images(grays[:3]).shape == (1, 3, 10, 11)  # numpy [C, H, W]: the same single image
    for three_d in (grays, torch.from_numpy(grays)):  # [6, H, W] is neither one image nor, silently, six
        with pytest.raises(ValueError, match=r"got 6 on axis 0 and 11 on axis 2 of image 0 of batch, shape \(6, 10, 11\)"):
            preprocess_images(three_d)
    image = random_uint8(3, 10, 3)  # [C, H, W] or [H, W, C]: the caller says which
    with pytest.raises(ValueError, match=r"channel axis of image 0 of batch, shape \(3, 10, 3\): axes 0 and 2 both"):
        preprocess_images(image)
    first = preprocess_images(image, input_data_format="channels_first")
    last = preprocess_images(image, input_data_format="channels_last")
    assert first.shape == (1, 3, 10, 3) and last.shape == (1, 3, 3, 10)
    as_batch = torch.from_numpy(image)[None]  # the same image as a batch [1, 3, 10, 3]
    assert torch.equal(first, preprocess_images(as_batch, input_data_format="channels_first"))
    assert torch.equal(last, preprocess_images(as_batch, input_data_format="channels_last"))


def test_preprocess_uint8_and_float_scaling_equal():
    x = random_uint8(2, 3, 8, 8)
    as_uint8 = preprocess_images(torch.from_numpy(x))
    as_unit = preprocess_images(torch.from_numpy(x).double() / 255)
    as_signed = preprocess_images(torch.from_numpy(x).float() / 127.5 - 1)
    torch.testing.assert_close(as_uint8, as_unit)
    torch.testing.assert_close(as_uint8, as_signed)
    assert as_uint8.dtype == torch.float32
    assert as_uint8.min() == -1 and as_uint8.max() == 1
    ramp = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)
    with pytest.raises(ValueError, match=r"image 1 of batch spans \[0, 255\].*pass uint8"):
        preprocess_images(np.stack([ramp / 255, ramp])[:, None])
    with pytest.raises(ValueError, match="unsupported dtype torch.int64 in image 0"):
        preprocess_images(torch.from_numpy(x).long())


def test_preprocess_bad_channels_name_the_image():
    good = [torch.rand(1, 8, 8) for _ in range(7)]
    with pytest.raises(ValueError, match="expected 1 or 3 channels, got 4 in image 7 of batch"):
        preprocess_images(good + [torch.rand(4, 8, 8)], input_data_format="channels_first")
    with pytest.raises(ValueError, match="expected 1 or 3 channels, got 2 in image 0 of batch"):
        preprocess_images(torch.rand(5, 2, 8, 8), input_data_format="channels_first")
    with pytest.raises(ValueError, match="expected 1 or 3 channels, got 4 in image 2 of batch"):
        preprocess_images([random_uint8(8, 8, 3), random_uint8(8, 8), random_uint8(8, 8, 4)], input_data_format="channels_last")
    # without input_data_format a 4-channel image has no recognisable channel axis: refused, naming it
    with pytest.raises(ValueError, match=r"expected 1 or 3 channels, got 4 on axis 0 and 8 on axis 2 of image 7 of batch"):
        preprocess_images(good + [torch.rand(4, 8, 8)])
    with pytest.raises(ValueError, match=r"expected 1 or 3 channels, got 2 on axis 1 and 8 on axis 3 of images 0\.\.4 of batch"):
        preprocess_images(torch.rand(5, 2, 8, 8))


def test_preprocess_nan_and_inf_name_the_image():
    batch = torch.rand(4, 1, 8, 8)
    batch[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="input image 2 contains NaN or inf"):
        preprocess_images(batch)
    arrays = [np.zeros((8, 8), np.float32), np.full((8, 8), np.inf, np.float32)]
    with pytest.raises(ValueError, match="input image 1 contains NaN or inf"):
        preprocess_images(arrays)


def test_preprocess_resizes_lists_of_different_sizes():
    arrays = [random_uint8(10, 12, seed=1), random_uint8(30, 20, seed=2), random_uint8(16, 16, seed=3)]
    out = preprocess_images(arrays, image_size=16)
    assert out.shape == (3, 1, 16, 16)
    reference = F.interpolate(
        torch.from_numpy(arrays[1]).float()[None, None] / 127.5 - 1,
        size=(16, 16), mode="bilinear", antialias=True, align_corners=False,
    )
    torch.testing.assert_close(out[1:2], reference)
    torch.testing.assert_close(out[2, 0], torch.from_numpy(arrays[2]).float() / 127.5 - 1)  # already 16 px
    assert preprocess_images(arrays, image_size=(7, 9)).shape == (3, 1, 7, 9)
    with pytest.raises(ValueError, match="image 0 is 10x12, image 1 is 30x20; pass image_size="):
        preprocess_images(arrays)


def test_preprocess_empty_and_bad_input():
    with pytest.raises(ValueError, match="empty list"):
        preprocess_images([])
    with pytest.raises(ValueError, match="item 0 is empty"):
        preprocess_images(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="got str"):
        preprocess_images("image.png")
    with pytest.raises(ValueError, match="image_size"):
        preprocess_images(random_uint8(4, 4), image_size=0)


# --------------------------------------------------------------------------------------------------
# split helpers
# --------------------------------------------------------------------------------------------------


def shuffled_balanced_labels(num_classes, per_class, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.mark.parametrize(
    "num_classes, ratio, expected",
    [(5, 16.0, [1000, 500, 250, 125, 62]), (3, 100.0, [1000, 100, 10]), (4, 1.0, [1000] * 4)],
)
def test_long_tailed_profile_exact(num_classes, ratio, expected):
    labels = shuffled_balanced_labels(num_classes, 1000)
    index = long_tailed_indices(labels, ratio, seed=0)
    assert np.bincount(labels[index], minlength=num_classes).tolist() == expected
    assert np.all(np.diff(index) > 0)  # sorted, no duplicates
    np.testing.assert_array_equal(index, long_tailed_indices(labels, ratio, seed=0))


def test_long_tailed_seed_and_validation():
    labels = shuffled_balanced_labels(3, 100)
    a, b = long_tailed_indices(labels, 10, seed=0), long_tailed_indices(labels, 10, seed=1)
    assert len(a) == len(b) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="imbalance_ratio: expected a finite number >= 1, got 0.5"):
        long_tailed_indices(labels, 0.5)


def test_few_label_indices():
    labels = np.concatenate([np.zeros(50, int), np.ones(3, int), np.full(20, 2)])
    index = few_label_indices(labels, n_per_class=5, seed=0)
    assert np.bincount(labels[index]).tolist() == [5, 3, 5]  # capped at the class size
    larger = few_label_indices(labels, n_per_class=10, seed=0)
    assert set(index) <= set(larger)  # nested for a seed
    np.testing.assert_array_equal(index, few_label_indices(labels, n_per_class=5, seed=0))
    assert not np.array_equal(index, few_label_indices(labels, n_per_class=5, seed=1))
    by_fraction = few_label_indices(labels, fraction=0.1, seed=0)
    assert np.bincount(labels[by_fraction]).tolist() == [5, 1, 2]  # round(0.1 n_c), at least 1
    with pytest.raises(ValueError, match="exactly one of n_per_class and fraction"):
        few_label_indices(labels, n_per_class=2, fraction=0.5)
    with pytest.raises(ValueError, match="exactly one of n_per_class and fraction"):
        few_label_indices(labels)
    with pytest.raises(ValueError, match="fraction: expected a number in"):
        few_label_indices(labels, fraction=0.0)


def test_stratified_split_properties():
    labels = np.concatenate([np.zeros(10, int), np.ones(25, int), np.full(1, 2), np.full(4, 3)])
    kept, split = stratified_split(torch.from_numpy(labels), 0.3, seed=0)
    assert np.intersect1d(kept, split).size == 0
    assert np.union1d(kept, split).tolist() == list(range(len(labels)))
    # round(0.3 n_c) half up, >= 1, the single image of class 2 stays in kept
    assert np.bincount(labels[split], minlength=4).tolist() == [3, 8, 0, 1]
    again = stratified_split(labels, 0.3, seed=0)
    other = stratified_split(labels, 0.3, seed=5)
    np.testing.assert_array_equal(split, again[1])
    assert not np.array_equal(split, other[1])
    with pytest.raises(ValueError, match="labels: expected a non-empty 1-D integer array"):
        stratified_split(np.array([0.5, 1.0]), 0.3)


def test_stratified_subset_indices_is_the_split_part_of_stratified_split():
    labels = np.concatenate([np.zeros(10, int), np.ones(25, int), np.full(1, 2), np.full(4, 3)])
    index = stratified_subset_indices(torch.from_numpy(labels), 12, seed=3)
    np.testing.assert_array_equal(index, stratified_split(labels, 12 / 40, seed=3)[1])
    assert np.bincount(labels[index], minlength=4).tolist() == [3, 8, 0, 1]  # round(0.3 n_c) half up
    np.testing.assert_array_equal(stratified_subset_indices(labels, 40), np.arange(40))  # size >= N: every index
    np.testing.assert_array_equal(stratified_subset_indices(labels, 100), np.arange(40))
    with pytest.raises(ValueError, match="size: expected an integer >= 1, got 0"):
        stratified_subset_indices(labels, 0)


# --------------------------------------------------------------------------------------------------
# LabeledImages
# --------------------------------------------------------------------------------------------------


def test_labeled_images_validation_and_subset():
    images = torch.zeros(4, 1, 2, 2)
    data = LabeledImages(images, np.array([0, 1, 1, 0]), ["a", "b"])
    assert data.labels.dtype == torch.int64 and len(data) == 4 and data.num_classes == 2
    part = data.subset([3, 1])
    assert part.labels.tolist() == [0, 1] and part.class_names == ["a", "b"]
    with pytest.raises(ValueError, match="label 5 is outside 0..K-1 for K=2 classes"):
        LabeledImages(images, torch.tensor([0, 5, 1, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        LabeledImages(images, torch.tensor([0, 1, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="LabeledImages.images image 2 contains NaN or inf"):
        LabeledImages(torch.zeros(3, 1, 2, 2).index_fill_(0, torch.tensor([2]), float("nan")), [0, 1, 0], ["a", "b"])
    with pytest.raises(ValueError, match=r"expected values in \[-1, 1\]"):
        LabeledImages(images + 2, torch.tensor([0, 1, 1, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="expected a float32 torch tensor"):
        LabeledImages(images.double(), torch.tensor([0, 1, 1, 0]), ["a", "b"])


def test_stratified_group_split_keeps_patients_apart_and_classes_balanced():
    from diffusion_classifiers.data import stratified_group_split

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=300)  # images per patient: 1..5
    groups = np.repeat([f"P{i}" for i in range(300)], sizes)
    labels = np.repeat(rng.choice(3, size=300, p=[0.5, 0.3, 0.2]), sizes)  # one label per patient
    overall = np.bincount(labels, minlength=3) / len(labels)
    for fraction in (0.1, 0.2, 0.5):
        kept, split = stratified_group_split(labels, groups, fraction, seed=1)
        assert not set(groups[kept]) & set(groups[split])  # no patient crosses
        np.testing.assert_array_equal(np.sort(np.concatenate([kept, split])), np.arange(len(labels)))
        # The folds are filled a whole patient at a time, so a split's size and class shares can miss their targets
        # by about one patient: at most sizes.max() images.
        assert abs(len(split) - fraction * len(labels)) <= sizes.max()
        shares = np.bincount(labels[split], minlength=3) / len(split)
        assert np.abs(shares - overall).max() <= sizes.max() / len(split)
    first = stratified_group_split(labels, groups, 0.2, seed=1)[1]
    np.testing.assert_array_equal(stratified_group_split(labels, groups, 0.2, seed=1)[1], first)
    assert not np.array_equal(stratified_group_split(labels, groups, 0.2, seed=2)[1], first)


def test_stratified_group_split_bad_input():
    from diffusion_classifiers.data import stratified_group_split

    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"groups: expected one group id per label \(4\)"):
        stratified_group_split(labels, ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="2 distinct groups .* needs at least 5"):
        stratified_group_split(labels, ["a", "a", "b", "b"], 0.2)
    with pytest.raises(ValueError, match="missing"):
        stratified_group_split(labels, ["a", None, "b", "c"], 0.5)


def test_an_image_with_an_exif_orientation_reads_upright_through_every_path(tmp_path):
    """A photo taken sideways (EXIF Orientation 6: rotate 90 degrees clockwise to view) reads the same, upright, from
    a folder, a path given to the pipelines' preprocessing, streamed files, streamed `datasets` bytes, and
    transformers' `load_image` (which `pipeline()` uses); it was read as stored everywhere but the last."""
    from transformers.image_utils import load_image

    from diffusion_classifiers.data import preprocess_images
    from diffusion_classifiers.data.streaming import StreamingImages, streaming_image_classification_data

    stored = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4  # 6 rows x 10 columns, as stored
    upright = np.rot90(stored, k=-1)  # 10 x 6, as viewed
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(stored).save(tmp_path / "photos" / label / f"{i}.png", exif=exif)
    path = tmp_path / "photos" / "a" / "0.png"
    assert np.array_equal(np.asarray(load_image(str(path)).convert("L")), upright)

    size = (10, 6)  # the upright image's own size: no resampling
    as_read = preprocess_images([path], image_size=size, num_channels=1)[0, 0]
    expected = torch.from_numpy(upright.astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(as_read, expected, rtol=0, atol=1e-6)
    folder = load_image_classification_data(tmp_path / "photos", image_size=size, num_channels=1)
    torch.testing.assert_close(folder["train"].images[0, 0], expected, rtol=0, atol=1e-6)
    streamed = streaming_image_classification_data(tmp_path / "photos", num_channels=1, image_size=size)
    torch.testing.assert_close(streamed["train"][0][0][0], expected, rtol=0, atol=1e-6)
    with_bytes = datasets.Dataset.from_dict({"image": [{"bytes": path.read_bytes(), "path": None}]},
                                           features=datasets.Features({"image": datasets.Image(decode=False)}))
    torch.testing.assert_close(StreamingImages(with_bytes, size, 1, label_column=False)[0][0][0], expected,
                               rtol=0, atol=1e-6)  # fmt: skip


def test_a_split_record_is_read_checked_and_flags_that_contradict_it_warn(tmp_path):
    from diffusion_classifiers.data import read_split_record, resolve_split_args, save_split_record

    assert read_split_record(tmp_path) is None
    assert resolve_split_args(tmp_path, seed=None) == {
        "val_fraction": 0.1, "test_fraction": 0.2, "seed": 0, "class_names": None,
        "anonymised_dicom_groups": "study_or_series",
    }  # fmt: skip
    save_split_record(tmp_path, 0.15, 0.25, 3, ("b", "a"))
    recorded = {"val_fraction": 0.15, "test_fraction": 0.25, "seed": 3, "class_names": ["b", "a"],
                "anonymised_dicom_groups": "study_or_series"}  # fmt: skip
    assert read_split_record(tmp_path) == resolve_split_args(tmp_path, val_fraction=None, seed=None) == recorded
    with pytest.warns(UserWarning, match=r"--seed 4 carve\(s\) other splits where the data has none of its own"):
        assert resolve_split_args(tmp_path, seed=4)["seed"] == 4
    (tmp_path / "data_splits.json").write_text('{"val_fraction": 0.15, "test_fraction": 0.25, "seed": 3}')
    assert read_split_record(tmp_path)["class_names"] is None  # a record without class names: found in the data
    (tmp_path / "data_splits.json").write_text('{"val_fraction": 0.15}')
    with pytest.raises(ValueError, match=r"data_splits.json: expected the keys \['class_names', 'seed', "):
        read_split_record(tmp_path)
    (tmp_path / "data_splits.json").write_text("{not json")
    with pytest.raises(ValueError, match="data_splits.json is not valid JSON"):
        read_split_record(tmp_path)

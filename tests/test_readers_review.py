"""Review of the readers that turn users' files into labelled tensors: `.npz`, IDX and `datasets` sources."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.data import load_image_classification_data, preprocess_images
from diffusion_classifiers.data import preprocessing as preprocessing_module


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def grey_images(count: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size), dtype=np.uint8)


def idx_bytes(array: np.ndarray, type_byte: int, dtype: str) -> bytes:
    """An IDX file of `array` stored as `dtype` (big-endian), the type byte `type_byte`."""
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(dtype).tobytes()


# --------------------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------------------


def test_npz_validation_keys_are_refused_rather_than_dropped_for_a_carved_split(tmp_path):
    # Before: validation_images / validation_labels were silently left unread and 'val' carved from train instead.
    path = write_npz(
        tmp_path / "hub_names.npz", train_images=grey_images(30), train_labels=np.arange(30) % 3,
        validation_images=grey_images(6, seed=1), validation_labels=np.arange(6) % 3,
    )
    with pytest.raises(ValueError, match=r"keys \['validation_images', 'validation_labels'\] name no split.*val_\*"):
        load_image_classification_data(path)


def test_npz_keys_that_are_not_read_are_named_in_a_warning(tmp_path):
    path = write_npz(
        tmp_path / "extra.npz", train_images=grey_images(30), train_labels=np.arange(30) % 3,
        class_names=np.array(["a", "b", "c"]),
    )
    with pytest.warns(UserWarning, match=r"keys \['class_names'\] are not read"):
        data = load_image_classification_data(path)
    assert sum(len(split) for split in data.values()) == 30


def test_npz_file_holding_a_single_array_is_refused_naming_it(tmp_path):
    # np.save writes an .npy file whatever its name; before, np.load's ndarray broke the `with` with a TypeError.
    path = tmp_path / "arrays.npz"
    with open(path, "wb") as handle:
        np.save(handle, grey_images(4))
    with pytest.raises(ValueError, match=r"arrays\.npz: a single ndarray of shape \(4, 8, 8\).*not an \.npz archive"):
        load_image_classification_data(path)


def test_npz_float_images_outside_0_1_are_refused_naming_the_split_key(tmp_path):
    # Before: "image 30 of batch spans [...]", an index into all splits joined, naming neither file nor key.
    path = write_npz(
        tmp_path / "floats.npz", train_images=grey_images(30) / 255.0, train_labels=np.arange(30) % 3,
        val_images=grey_images(6).astype(np.float32), val_labels=np.arange(6) % 3,
    )
    with pytest.raises(ValueError, match=r"floats\.npz\[val_images\]: float images span \[0, 2\d\d\]; expected float"):
        load_image_classification_data(path)


def test_npz_signed_integer_images_are_refused_naming_the_key_and_their_values(tmp_path):
    # Before: the message spoke of a DICOM's pixel_array and named "image 0 of batch", not the file.
    path = write_npz(
        tmp_path / "ct.npz", train_images=np.full((6, 8, 8), -1000, np.int16), train_labels=np.arange(6) % 2,
    )
    with pytest.raises(ValueError, match=r"ct\.npz\[train_images\]: images of dtype int16, values from -1000 to"):
        load_image_classification_data(path)


def test_npz_multi_label_and_one_hot_labels_are_refused_saying_what_they_are(tmp_path):
    images = grey_images(20)
    findings = np.random.default_rng(0).integers(0, 2, (20, 14)).astype(np.uint8)  # as ChestMNIST
    path = write_npz(tmp_path / "chestmnist.npz", train_images=images, train_labels=findings)
    with pytest.raises(ValueError, match=r"chestmnist\.npz\[train_labels\]: labels of shape \(20, 14\).*multi-label"):
        load_image_classification_data(path)
    one_hot = np.eye(4, dtype=np.uint8)[np.arange(20) % 4]
    path = write_npz(tmp_path / "one_hot.npz", train_images=images, train_labels=one_hot)
    with pytest.raises(ValueError, match=r"\(one-hot\); expected one class id per image.*labels\.argmax\(1\)"):
        load_image_classification_data(path)


def test_npz_with_official_splits_reads_as_before(tmp_path):
    train, val = grey_images(30), grey_images(6, seed=1)
    path = write_npz(
        tmp_path / "ok.npz", train_images=train, train_labels=(np.arange(30) % 3)[:, None],
        val_images=val, val_labels=np.arange(6) % 3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key left unread
        data = load_image_classification_data(path, test_fraction=0.2)
    torch.testing.assert_close(data["val"].images, torch.from_numpy(val).float()[:, None] / 127.5 - 1)
    assert data["val"].labels.tolist() == (np.arange(6) % 3).tolist()


# --------------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------------


def test_idx_images_of_a_signed_type_are_refused_naming_the_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 4096, (30, 6, 6))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x0B, ">i2"))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(30) % 3, 0x08, ">u1"))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: images of dtype int16, values from \d+ to \d+"):
        load_image_classification_data(tmp_path)


def test_idx_float_images_in_0_1_are_read(tmp_path):
    images = np.random.default_rng(0).uniform(0, 1, (30, 6, 6))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x0D, ">f4"))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(30) % 3, 0x08, ">u1"))
    data = load_image_classification_data(tmp_path, one_set=True)["all"]
    expected = torch.from_numpy(images.astype(np.float32))[:, None] * 2 - 1
    torch.testing.assert_close(data.images, expected)


# --------------------------------------------------------------------------------------------------
# datasets sources
# --------------------------------------------------------------------------------------------------


def labelled_dataset(images: list, labels: list, names=("a", "b", "c")):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_a_dataset_is_preprocessed_row_by_row_with_the_tensors_of_one_batch(monkeypatch):
    # Before: every row was decoded into a list of full-size PIL images, then all preprocessed at once (uint8 and
    # float32 copies of them all): 300 grey 512x512 rows peaked at 765 MB over the baseline, 215 MB after.
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 16 + i % 3), dtype=np.uint8)) for i in range(12)]
    images[5] = images[5].convert("RGB").point(lambda v: 255 - v)  # one colour row
    dataset = labelled_dataset(images, [0, 1, 2] * 4)
    held = []
    original = preprocessing_module._to_unit_batches

    def count_items(items, *args):
        held.append(len(items))
        return original(items, *args)

    monkeypatch.setattr(preprocessing_module, "_to_unit_batches", count_items)
    with pytest.warns(UserWarning, match=r"1 of 12 images are colour \(split 'train' row 5\)"):
        data = load_image_classification_data(dataset, 10, one_set=True)["all"]
    assert max(held) == 1
    monkeypatch.setattr(preprocessing_module, "_to_unit_batches", original)
    torch.testing.assert_close(data.images, preprocess_images(images, 10, num_channels=3), atol=1e-6, rtol=0)


def test_dataset_rows_of_different_sizes_without_image_size_are_refused_naming_one():
    images = [Image.fromarray(np.zeros((8, 8 + (i == 4)), np.uint8)) for i in range(6)]
    with pytest.raises(ValueError, match=r"split 'train' row 0 is 8x8, split 'train' row 4 is 8x9; pass image_size="):
        load_image_classification_data(labelled_dataset(images, [0, 1, 2] * 2))


def test_an_error_preprocessing_a_dataset_row_names_its_split_and_row():
    images = [Image.fromarray(np.full((8, 8), 0.5, np.float32)) for _ in range(6)]
    images[4] = Image.fromarray(np.full((8, 8), 200.0, np.float32))
    with pytest.raises(ValueError, match=r"split 'train' row 4: float values must lie in \[0, 1\]"):
        load_image_classification_data(labelled_dataset(images, [0, 1, 2] * 2))


def test_withheld_test_labels_are_refused_before_any_train_image_is_decoded():
    # Before: the train split's images were all decoded before the test split's labels were looked at.
    datasets = pytest.importorskip("datasets")
    train = labelled_dataset([{"bytes": b"not an image", "path": None}] * 6, [0, 1, 2] * 2)
    test = labelled_dataset([{"bytes": b"not an image", "path": None}] * 3, [-1] * 3)
    source = datasets.DatasetDict({"train": train, "test": test})
    with pytest.raises(ValueError, match=r"split 'test': 3 of its 3 rows have label -1"):
        load_image_classification_data(source)


def test_sixteen_bit_arrays_and_pil_images_are_scaled_by_a_stated_bit_depth(tmp_path):
    """Review: a stated bits_stored was recorded with the model but applied to 16-bit files only: a 12-bit .npz was
    read from [0, 65535] (its white, 4095, at -0.875) with a warning to pass file paths, which an .npz has none of."""
    from diffusion_classifiers.data.dicom import MedicalPreprocessing

    values = np.tile(np.arange(0, 4096, 65, dtype=np.uint16)[:64].reshape(8, 8), (20, 1, 1))
    values[:, 0, 0] = 4095
    path = write_npz(tmp_path / "twelve.npz", train_images=values, train_labels=np.repeat([0, 1], 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = load_image_classification_data(path, medical=MedicalPreprocessing(bits_stored=12), one_set=True)
    split = next(iter(images.values()))
    expected = torch.from_numpy(values.astype(np.float32))[:, None] / 4095 * 2 - 1  # as a 12-bit PNG is read
    assert torch.allclose(split.images, expected, atol=1e-6) and split.images.max() == 1
    read = preprocess_images(Image.fromarray(values[0]), preprocessing=split.preprocessing)  # a datasets row, say
    assert torch.allclose(read, expected[:1], atol=1e-6)
    with pytest.raises(ValueError, match="item 0: maximum value 4095 does not fit bits_stored=10"):
        load_image_classification_data(path, medical=MedicalPreprocessing(bits_stored=10), one_set=True)

"""16-bit PIL images (the rows of a `datasets` Image column, `Image.open` of a 16-bit PNG) read as the files they were
decoded from, in every path (the in-memory and streaming loaders, `evaluate`'s decoded split, `predict`,
`read_classification_split`, `pipe(...)` on rows a user decoded), while contracts saved before keep the earlier rule
(from `[0, 65535]`), so their models read such images as they were trained on them.

QA: a model trained on a DatasetDict of 12-bit PNG rows scored 83.75% on its test split and 50% when `predict` read
the same PNG files from a folder (31 of 80 labels flipped), without a word: the rows were scaled from 0..65535, the
files by their 12 bits.
"""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.data import (
    ImagePreprocessing,
    MedicalPreprocessing,
    load_image_classification_data,
    read_classification_split,
    streaming_image_classification_data,
)
from diffusion_classifiers.data.streaming import streaming_classification_split
from diffusion_classifiers.prediction.inputs import list_inputs

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def rows_and_files(tmp_path_factory):
    """12-bit values in 16-bit PNG files, 4 per class and split, and a saved DatasetDict of the same files' bytes."""
    root = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    parts = {}
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / "files" / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 4096, (8, 8)).astype(np.uint16)
                pixels[0, 0] = 4095  # each file's maximum: 12 bits
                Image.fromarray(pixels).save(root / "files" / split / label / f"{i}.png")
        paths = sorted((root / "files" / split).rglob("*.png"))
        rows = {"image": [str(path) for path in paths], "label": [int(path.parent.name == "b") for path in paths]}
        parts[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(root / "rows"))  # the PNG files' bytes, embedded
    return root / "rows", sorted((root / "files" / "test").rglob("*.png"))


def _from_files(contract, test_files):
    return torch.cat([contract(str(path)) for path in test_files])


def test_rows_read_as_their_files_in_every_path(rows_and_files):
    rows, test_files = rows_and_files
    read = load_image_classification_data(str(rows), num_channels=1)
    contract = read["test"].preprocessing
    assert contract.medical.guessed_bits_stored == 12  # recorded as for files
    expected = _from_files(contract, test_files)
    assert float(expected.max()) == 1.0  # 4095 is white: read by 12 bits
    torch.testing.assert_close(read["test"].images, expected, rtol=0, atol=1e-6)

    saved = ImagePreprocessing.from_dict(contract.to_dict())  # the model's contract, as saved and loaded
    assert saved.to_dict()["medical"]["pil_images_as_files"] is True
    test_rows = datasets.load_from_disk(str(rows))["test"]
    streamed = streaming_image_classification_data(str(rows), num_channels=1, image_size=8)["test"]
    torch.testing.assert_close(torch.stack([image for image, _ in streamed]), expected, rtol=0, atol=1e-6)
    decoded, _, _ = streaming_classification_split(test_rows)  # evaluate's rows of a datasets split
    torch.testing.assert_close(saved([decoded[i] for i in range(len(decoded))]), expected, rtol=0, atol=1e-6)
    images, _, _ = read_classification_split(test_rows)
    torch.testing.assert_close(saved(images), expected, rtol=0, atol=1e-6)
    predicted = [item.read()[0] for item in list_inputs(rows, split="test")]
    torch.testing.assert_close(saved(predicted), expected, rtol=0, atol=1e-6)
    users_own = [row["image"] for row in test_rows]  # decoded by datasets, as `pipe(ds["test"]["image"])` gets them
    torch.testing.assert_close(saved(users_own), expected, rtol=0, atol=1e-6)
    opened = [Image.open(path) for path in test_files]
    torch.testing.assert_close(saved(opened), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("earlier", ["without the key", "without medical"])
def test_a_contract_saved_before_reads_16_bit_pil_images_as_it_did(rows_and_files, earlier):
    """Its model was trained on rows read from [0, 65535]: it keeps reading them so, and files as before."""
    rows, test_files = rows_and_files
    config = ImagePreprocessing(8, 1, medical=MedicalPreprocessing()).to_dict()
    if earlier == "without the key":
        del config["medical"]["pil_images_as_files"]
    else:
        config["medical"] = None
    contract = ImagePreprocessing.from_dict(config)
    assert contract.medical_or_default.pil_images_as_files is False
    images, _, _ = read_classification_split(datasets.load_from_disk(str(rows))["test"])
    full_range = torch.stack([torch.from_numpy(np.asarray(image, dtype=np.float32)) for image in images])
    torch.testing.assert_close(contract(images)[:, 0], full_range * (2 / 65535) - 1, rtol=0, atol=1e-6)
    read = load_image_classification_data(str(rows), **contract.loader_kwargs)  # evaluate / probe of such a model
    torch.testing.assert_close(read["test"].images, contract(images), rtol=0, atol=1e-6)
    assert "pil_images_as_files" not in read["test"].preprocessing.to_dict()["medical"]  # saved as it was
    torch.testing.assert_close(contract(str(test_files[0])), _from_files(contract, test_files[:1]))


def test_pil_images_read_at_another_depth_than_training_are_warned_about(rows_and_files):
    rows, _ = rows_and_files
    trained = ImagePreprocessing(8, 1, medical=MedicalPreprocessing(guessed_bits_stored=16))
    images, _, _ = read_classification_split(datasets.load_from_disk(str(rows))["test"])
    with pytest.warns(UserWarning, match=r"8 of 8 16-bit images .*item 0 \(a 16-bit PIL image\) at 12 bits"):
        trained(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataclasses.replace(trained, medical=MedicalPreprocessing(guessed_bits_stored=12))(images)


def test_the_rule_is_saved_and_checked():
    assert MedicalPreprocessing.from_dict(MedicalPreprocessing().to_dict()) == MedicalPreprocessing()
    assert MedicalPreprocessing.from_dict({}).pil_images_as_files is False  # saved before the key existed
    with pytest.raises(ValueError, match="pil_images_as_files: expected True or False, got 'yes'"):
        MedicalPreprocessing(pil_images_as_files="yes")


def test_rows_of_different_depths_are_named_by_their_row(tmp_path):
    """QA (second read): every example was "item 0 (a 16-bit PIL image)", each row being preprocessed alone."""
    pixels = [np.full((4, 4), 4095 if i % 2 else 2047, dtype=np.uint16) for i in range(8)]  # 12 and 11 bits
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels], "label": [0, 1] * 4},
                                      features=features)  # fmt: skip
    with pytest.warns(UserWarning, match=r"4 at 11 bits \(e.g. split 'train' row 0\), 4 at 12 bits \(e.g. split "
                                         r"'train' row 1\)"):
        load_image_classification_data(rows, num_channels=1, test_fraction=0.25, val_fraction=0.34)


def test_a_low_contrast_row_is_named_by_its_row():
    """Session 52's note: the low-contrast warning of a 16-bit row read by the in-memory loader named it "item 0"."""
    pixels = [np.arange(16, dtype=np.uint16).reshape(4, 4) * 273 for _ in range(8)]  # 0..4095: 12 bits, contrast
    pixels[5] = np.full((4, 4), 3000, dtype=np.uint16)
    pixels[5][0, 0] = 3010  # 10 of 4095 steps: little contrast
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels], "label": [0, 1] * 4},
                                      features=features)  # fmt: skip
    with pytest.warns(UserWarning, match=r"^split 'train' row 5 \(a 16-bit PIL image\): values span \[3000, 3010\]"):
        load_image_classification_data(rows, num_channels=1, test_fraction=0.25, val_fraction=0.34)


def test_an_earlier_contract_says_when_it_reads_a_16_bit_pil_image_unlike_its_file(rows_and_files):
    """QA (second read): a head fitted over a model saved without `medical` read the rows from [0, 65535] and the same
    PNG files by their 12 bits (66.7% against 50%), without a word."""
    rows, test_files = rows_and_files
    earlier = ImagePreprocessing(8, 1)  # no medical: the earlier rule
    with pytest.warns(UserWarning, match=r"item\(s\) 0 are 16-bit PIL images read from \[0, 65535\].*"
                                         r"'pil_images_as_files': True"):
        earlier(Image.open(test_files[0]))
    full = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))  # its file reads alike: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        earlier(full)

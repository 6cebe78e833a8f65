"""Data at scale and splits, reviewed: a streamed source is checked before its files are listed and refuses what it
would silently ignore, records the reading it was given, names files it cannot list; CSV patient ids, split files
and saved datasets that would leak or mislabel are named; the split record survives an interrupted write; the carving
does not depend on the order a filesystem lists files in."""

import csv
import io
import os
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers import atomic_files
from diffusion_classifiers.data import streaming
from diffusion_classifiers.data.dicom import MedicalPreprocessing
from diffusion_classifiers.data.split_record import SPLIT_RECORD_NAME, read_split_record, save_split_record
from diffusion_classifiers.data.streaming import streaming_image_classification_data

from .conftest import random_image_folder


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _saved_dataset(path: Path, labels, image_feature=None, label_feature=None, images=None) -> Path:
    rng = np.random.default_rng(0)
    images = images or [{"bytes": _png(rng.integers(0, 256, (8, 8), dtype=np.uint8)), "path": None} for _ in labels]
    features = datasets.Features({
        "image": image_feature or datasets.Image(), "label": label_feature or datasets.ClassLabel(names=["x", "y"]),
    })  # fmt: skip
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return path


def test_a_non_utf8_file_name_is_refused_by_name_before_streaming(tmp_path):
    root = random_image_folder(tmp_path / "data")
    try:
        with open(os.fsencode(root / "ant") + b"/caf\xe9.png", "wb") as f:
            f.write(_png(np.zeros((8, 8), dtype=np.uint8)))
    except OSError:
        pytest.skip("this filesystem refuses names that are not UTF-8")
    assert sum(len(split) for split in load_image_classification_data(root).values()) == 13  # read in memory
    with pytest.raises(ValueError, match=r"1 file name\(s\) are not valid UTF-8 \(b'.*/ant/caf\\xe9\.png'\)"):
        streaming_image_classification_data(root, num_channels=1)


@pytest.mark.parametrize(
    "reading, message",
    [({"num_channels": 2}, "num_channels: expected 1 or 3"), ({"num_channels": 1, "image_size": 0}, "image_size")],
)
def test_streaming_checks_how_to_read_before_listing_every_file(tmp_path, monkeypatch, reading, message):
    root = random_image_folder(tmp_path / "data")

    def listed(*args, **kwargs):
        raise AssertionError("the folder was listed (every file's header read) before the reading was checked")

    monkeypatch.setattr(streaming, "list_folder_files", listed)
    with pytest.raises(ValueError, match=message):
        streaming_image_classification_data(root, **reading)


def test_streaming_refuses_options_its_source_would_ignore_as_the_in_memory_loader_does(tmp_path):
    saved = _saved_dataset(tmp_path / "saved", [0, 1] * 6)
    folder = random_image_folder(tmp_path / "data")
    for source, options in ((saved, {"class_names": ["y", "x"]}), (saved, {"patient_id_column": "patient"}),
                            (folder, {"image_column": "image"})):  # fmt: skip
        # class names other than the dataset's own, in its order: refused as renaming its classes (test_data_routes)
        with pytest.raises(ValueError, match="(appl(y|ies) to|not the source's own classes) "):
            load_image_classification_data(source, **options)
        with pytest.raises(ValueError, match="(appl(y|ies) to (CSV|datasets) sources only|not the source's own classes)"):
            streaming_image_classification_data(source, 1, **options)


def test_a_streamed_dataset_records_the_medical_reading_as_the_in_memory_one(tmp_path):
    saved = _saved_dataset(tmp_path / "saved", [0, 1] * 6)
    medical = MedicalPreprocessing(bits_stored=12)
    in_memory = load_image_classification_data(saved, 8, 1, medical=medical)["train"].preprocessing
    streamed = streaming_image_classification_data(saved, 1, 8, medical=medical)["train"].preprocessing
    assert streamed.medical == in_memory.medical
    assert streamed.medical.bits_stored == 12


def _patients_csv(folder: Path, patient_of) -> Path:
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id"])
        for name in ("ant", "bee"):
            for i in range(20):
                writer.writerow([f"{name}/{i}.png", name, patient_of(i)])
    return path


@pytest.mark.parametrize("load", [load_image_classification_data, streaming_image_classification_data])
def test_patient_ids_that_differ_only_by_spaces_are_warned_about(tmp_path, load):
    folder = random_image_folder(tmp_path / "data", per_folder=20)
    path = _patients_csv(folder, lambda i: f"P{i // 2}" + " " * (i % 2))  # 'P3' and 'P3 ': an export's stray space
    match = r"patient_id values that differ only by surrounding spaces or letter case are different patients"
    match += r".*'P0' and 'P0 '"
    with pytest.warns(UserWarning, match=match):
        load(path, num_channels=1, image_size=8)


def test_an_image_listed_in_two_split_files_is_warned_about(tmp_path):
    root = random_image_folder(tmp_path / "data")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(f"{name}/{i}.png {c}" for c, name in enumerate(("ant", "bee"))
                                                         for i in range(4)))  # fmt: skip
    (root / "splits" / "test.txt").write_text("ant/3.png 0\nant/4.png 0\nbee/5.png 1\n")
    with pytest.warns(UserWarning, match=r"1 image\(s\) are listed in both train.txt and test.txt \(first: .*ant/3"):
        load_image_classification_data(root, 8, 1)


@pytest.mark.parametrize("load", [load_image_classification_data, streaming_image_classification_data])
def test_a_saved_split_of_withheld_labels_is_refused_naming_the_split(tmp_path, load):
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    images = [_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(16)]
    parts = {
        "train": datasets.Dataset.from_dict({"image": images[:12], "label": [0, 1] * 6}, features=features),
        "test": datasets.Dataset.from_dict({"image": images[12:], "label": [-1] * 4}, features=features),
    }
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"split 'test': 4 of its 4 rows have label -1 .*leave the split out"):
        load(tmp_path / "saved", num_channels=1, image_size=8)


@pytest.mark.parametrize(
    "features, hint",
    [
        ({"label_feature": datasets.Value("string")}, r"class_encode_column\(name\)"),
        ({"image_feature": datasets.Value("binary")}, r"cast_column\(name, Image\(\)\)"),
    ],
)
def test_a_saved_dataset_without_the_column_types_says_how_to_cast_that_column(tmp_path, features, hint):
    labels = ["x", "y"] * 3 if "label_feature" in features else [0, 1] * 3
    rng = np.random.default_rng(0)
    images = [_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in labels]
    images = images if "image_feature" in features else None
    saved = _saved_dataset(tmp_path / "saved", labels, images=images, **features)
    with pytest.raises(ValueError, match=hint):
        streaming_image_classification_data(saved, 1)


def test_an_interrupted_write_of_the_split_record_keeps_the_earlier_one(tmp_path, monkeypatch):
    save_split_record(tmp_path, 0.1, 0.2, 0, train_fingerprints=["00" * 8])
    earlier = read_split_record(tmp_path)

    class DiskFull(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    def open_full_disk(path, mode="r", *args, **kwargs):
        if "w" not in mode:
            return open(path, mode, *args, **kwargs)
        open(path, mode, *args, **kwargs).close()  # opening for writing truncates, as on a full disk
        return DiskFull()

    monkeypatch.setattr(atomic_files, "open", open_full_disk, raising=False)
    with pytest.raises(OSError, match="No space left"):
        save_split_record(tmp_path, 0.3, 0.3, 5, train_fingerprints=["11" * 8])
    monkeypatch.undo()
    assert read_split_record(tmp_path) == earlier
    assert sorted(os.listdir(tmp_path)) == [SPLIT_RECORD_NAME]


def test_the_carving_does_not_depend_on_the_order_the_filesystem_lists_files(tmp_path, monkeypatch):
    root = random_image_folder(tmp_path / "data", ("ant", "bee", "cat"), per_folder=9)

    def carved():
        splits = streaming_image_classification_data(root, 1, 8, check_files=False)
        return {name: [image["path"] for image in split.dataset["image"]] for name, split in splits.items()}

    listed = carved()
    iterdir = Path.iterdir

    def shuffled(self):  # another filesystem's os.listdir order
        entries = list(iterdir(self))
        random.Random(1).shuffle(entries)
        return iter(entries)

    monkeypatch.setattr(Path, "iterdir", shuffled)
    assert carved() == listed


def test_a_csv_or_npz_with_an_upper_case_suffix_is_read_and_its_carved_splits_are_known(tmp_path):
    """Reviewed: `images.CSV` (as Windows tools name files) was refused as 'a file; expected a .npz or .csv file', and
    evaluate would have taken it for data with splits of its own, skipping the check of its test split against the
    training images."""
    from diffusion_classifiers.evaluation import carved_splits

    folder = random_image_folder(tmp_path / "images")
    listed = tmp_path / "images.CSV"
    listed.write_text("path,label\n" + "".join(
        f"{path.relative_to(tmp_path).as_posix()},{path.parent.name}\n" for path in sorted(folder.rglob("*.png"))
    ))  # fmt: skip
    for read in (load_image_classification_data, streaming_image_classification_data):
        data = read(str(listed), image_size=8, num_channels=1, val_fraction=0.25, test_fraction=0.25)
        assert sum(len(data[name]) for name in ("train", "val", "test")) == 12
    assert carved_splits(listed) == {"val", "test"}

    archive = tmp_path / "pixels.NPZ"
    with open(archive, "wb") as handle:  # np.savez would add .npz to the name
        np.savez(handle, train_images=np.zeros((8, 8, 8), np.uint8), train_labels=np.arange(8) % 2)
    assert len(load_image_classification_data(str(archive), val_fraction=0.25, test_fraction=0.25)["train"]) == 4
    assert carved_splits(archive) == {"val", "test"}


def test_a_saved_datasetdict_carves_the_splits_it_lacks_and_they_are_known_as_carved(tmp_path):
    """QA: a saved DatasetDict was said to carve no split whatever it held, so `probe` on one with a train split only
    (the diffusion model's own training data) did not check the val and test carved from it, and scored on them."""
    from diffusion_classifiers.data import to_datasets
    from diffusion_classifiers.evaluation import carved_splits

    whole = to_datasets(load_image_classification_data("digits", image_size=8))
    for kept, carved in ((["train"], {"val", "test"}), (["train", "validation"], {"test"}),
                         (["train", "validation", "test"], set())):  # fmt: skip
        folder = tmp_path / "_".join(kept)
        whole.__class__({name: whole[name] for name in kept}).save_to_disk(str(folder))
        assert carved_splits(folder) == carved
        splits = load_image_classification_data(str(folder), image_size=8)
        assert all(len(splits[name]) > 0 for name in ("train", "val", "test"))

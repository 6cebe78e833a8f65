"""An image folder's own splits (`splits/{train,val,test}.txt`, `splits/classes.txt`) as a lab writes them after
naming the clusters of an unlabelled pool (QA): class names come from the class folders only where the images lie in
them, each image has one label, and a bad line is named by its file and line number."""

import warnings

import numpy as np
import pytest
from PIL import Image

from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.data.streaming import streaming_image_classification_data

from .conftest import random_image_folder

READING = {"image_size": 8, "num_channels": 1}
LOADERS = [load_image_classification_data, streaming_image_classification_data]


def _pool(root, runs=("run_01", "run_02")):
    """Images in dated run folders, no class folders: an unlabelled pool; `root`."""
    return random_image_folder(root, runs)


def _write_splits(root, lines_per_split, classes=None):
    (root / "splits").mkdir(exist_ok=True)
    for split, lines in lines_per_split.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    if classes is not None:
        (root / "splits" / "classes.txt").write_text("\n".join(classes) + "\n")


def _named_clusters(runs=("run_01", "run_02")):
    """Each run's first images as class 0, the others class 1, across runs (classes that are not the run folders)."""
    lines = {"train": [], "val": [], "test": []}
    for run in runs:
        for index, split in zip(range(6), ["train", "train", "val", "test", "train", "train"]):
            lines[split].append(f"{run}/{index}.png {index % 2}")
    return lines


@pytest.mark.parametrize("load", LOADERS)
def test_a_pool_labelled_without_classes_txt_is_refused_not_named_by_its_run_folders(tmp_path, load):
    root = _pool(tmp_path / "pool")
    _write_splits(root, _named_clusters())
    with pytest.raises(ValueError, match=r"train\.txt:2: 'run_01/1\.png' has label 1, which names class folder "
                                         r"'run_02', but the image is not inside it .*classes\.txt naming the classes"):
        load(root, **READING)


@pytest.mark.parametrize("load", LOADERS)
def test_a_pool_labelled_with_classes_txt_reads_its_names(tmp_path, load):
    root = _pool(tmp_path / "pool")
    _write_splits(root, _named_clusters(), classes=["copepod", "diatom"])
    data = load(root, **READING)
    assert data["train"].class_names == ["copepod", "diatom"]
    assert data["train"].labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_class_folders_still_name_the_classes_of_split_files_that_list_images_in_them(tmp_path):
    root = _pool(tmp_path / "data", runs=("ant", "bee"))
    lines = {"train": [f"{name}/{i}.png {label}" for label, name in enumerate(("ant", "bee")) for i in range(4)],
             "test": ["ant/4.png 0", "bee/5.png 1"]}  # fmt: skip
    _write_splits(root, lines)
    data = load_image_classification_data(root, **READING)
    assert data["train"].class_names == ["ant", "bee"]


def test_split_files_of_images_outside_any_class_folder_ask_for_classes_txt(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for index in range(4):
        Image.fromarray(np.full((8, 8), index, dtype=np.uint8)).save(root / f"{index}.png")
    _write_splits(root, {"train": ["0.png 0", "1.png 1", "2.png 0", "3.png 1"]})
    with pytest.raises(ValueError, match=r"train\.txt:1: '0\.png' has label 0, which is not the id of any of the 0 "
                                         r"class folders there .*: none\); expected .*classes\.txt"):
        load_image_classification_data(root, **READING)


@pytest.mark.parametrize(
    "line, message",
    [
        ("run_01/0.png copepod", r"train\.txt:3: expected 'relative/path label', the label an integer class id"),
        ("run_01/0.png -1", r"train\.txt:3: label -1 is not a class id of the 2 names in .*; expected 0..1"),
        ("run_01/0.png 2", r"train\.txt:3: label 2 is not a class id"),
    ],
)
def test_a_bad_label_is_named_by_its_file_and_line(tmp_path, line, message):
    root = _pool(tmp_path / "pool")
    _write_splits(root, {"train": ["run_01/1.png 1", "", line, "run_02/0.png 0"]}, classes=["copepod", "diatom"])
    with pytest.raises(ValueError, match=message):  # line 3: a blank line counts
        load_image_classification_data(root, **READING)


@pytest.mark.parametrize("second_split", ["train", "test"])
def test_an_image_given_two_labels_is_refused_naming_both_lines(tmp_path, second_split):
    root = _pool(tmp_path / "pool")
    lines = {"train": ["run_01/0.png 0", "run_01/1.png 1", "run_02/0.png 0", "run_02/1.png 1"], "test": []}
    lines[second_split].append("run_01/../run_01/1.png 0")
    _write_splits(root, lines, classes=["copepod", "diatom"])
    line = 5 if second_split == "train" else 1
    with pytest.raises(ValueError, match=rf"{second_split}\.txt:{line}: 'run_01/\.\./run_01/1\.png' is labelled 0 here "
                                         r"and 1 on .*train\.txt:2; expected one label per image"):
        load_image_classification_data(root, **READING)


def test_an_image_repeated_with_its_label_in_one_split_is_warned_about(tmp_path):
    root = _pool(tmp_path / "pool")
    lines = {"train": ["run_01/0.png 0", "run_01/1.png 1", "run_02/0.png 0", "run_02/1.png 1", "run_01/1.png 1",
                       "run_01/1.png 1"]}  # fmt: skip
    _write_splits(root, lines, classes=["copepod", "diatom"])
    with pytest.warns(UserWarning, match=r"1 image\(s\) are listed in train\.txt more than once \(first: "
                                         r".*run_01/1\.png\); each is read once per line and weighs as often"):
        data = load_image_classification_data(root, **READING)
    assert len(data["train"]) + len(data["val"]) + len(data["test"]) == 6


def test_split_files_that_list_each_image_once_read_without_a_warning(tmp_path):
    root = _pool(tmp_path / "pool")
    _write_splits(root, _named_clusters(), classes=["copepod", "diatom"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_classification_data(root, **READING)


def test_an_image_is_the_same_image_however_its_path_is_spelled(tmp_path, monkeypatch):
    """Review: a relative root with one line relative and one absolute let an image of two labels through."""
    root = _pool(tmp_path / "pool")
    lines = {"train": ["run_01/0.png 0", "run_01/1.png 1", "run_02/0.png 0"], "test": [f"{root / 'run_01/1.png'} 0"]}
    _write_splits(root, lines, classes=["copepod", "diatom"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"test\.txt:1: .* is labelled 0 here and 1 on .*train\.txt:2"):
        load_image_classification_data("pool", **READING)


def test_two_labels_are_said_before_class_folders_are_asked_for(tmp_path):
    """Review: without classes.txt, an image of two labels was refused as lying outside a class folder."""
    root = _pool(tmp_path / "data", runs=("ant", "bee"))
    _write_splits(root, {"train": ["ant/0.png 0", "bee/0.png 1", "ant/1.png 0"], "test": ["ant/0.png 1"]})
    with pytest.raises(ValueError, match=r"test\.txt:1: 'ant/0\.png' is labelled 1 here and 0 on .*train\.txt:1"):
        load_image_classification_data(root, **READING)


def test_class_folders_reached_through_a_symbolic_link_name_the_classes(tmp_path):
    """Review: absolute lines through the real folder of a root given by a symbolic link were refused as lying
    outside their class folders."""
    real = _pool(tmp_path / "real", runs=("ant", "bee"))
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    lines = [f"{real / name / str(i)}.png {label}" for label, name in enumerate(("ant", "bee")) for i in range(4)]
    _write_splits(real, {"train": lines, "test": [f"{real}/ant/4.png 0", f"{real}/bee/4.png 1"]})
    data = load_image_classification_data(tmp_path / "link", **READING)
    assert data["train"].class_names == ["ant", "bee"]

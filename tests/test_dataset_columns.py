"""A saved `datasets` folder with several Image or ClassLabel columns (CIFAR-100's fine_label and coarse_label, an
image and its mask) is read by every command and training script through `--image_column` and `--label_column`;
`predict` carries its other columns (a patient, a site) to the output as a CSV's.

QA: only `predict` and `cluster` had `--image_column`, and none had `--label_column`: `evaluate`, `probe`, `fit-head`
and the training scripts refused such a folder, and `predict` wrote no true labels, without a word.
"""

import argparse
import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from diffusion_classifiers.cli import main
from diffusion_classifiers.data import add_data_args, load_data_from_args

from .test_cli import _saved_rc_dit

datasets = pytest.importorskip("datasets")

COARSE = ["low", "high"]  # digits 0-4 and 5-9


@pytest.fixture(scope="module")
def two_of_each(tmp_path_factory):
    """Digits as a DatasetDict with two Image columns (`image`, `inverted`), two ClassLabel columns (`digit`,
    `coarse`) and a `patient_id`; 60 / 30 / 30 rows."""
    digits = load_digits()
    features = datasets.Features({
        "image": datasets.Image(), "inverted": datasets.Image(), "patient_id": datasets.Value("string"),
        "digit": datasets.ClassLabel(names=[str(i) for i in range(10)]), "coarse": datasets.ClassLabel(names=COARSE),
    })  # fmt: skip
    parts, start = {}, 0
    for split, size in (("train", 60), ("validation", 30), ("test", 30)):
        pixels = (digits.images[start:start + size] * 255 / 16).astype(np.uint8)
        labels = digits.target[start:start + size]
        parts[split] = datasets.Dataset.from_dict({
            "image": [Image.fromarray(image) for image in pixels],
            "inverted": [Image.fromarray(255 - image) for image in pixels],
            "patient_id": [f"P{start + i}" for i in range(size)],
            "digit": labels.tolist(), "coarse": (labels >= 5).astype(int).tolist(),
        }, features=features)  # fmt: skip
        start += size
    folder = tmp_path_factory.mktemp("columns") / "rows"
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return str(folder)


def test_fit_head_evaluate_and_predict_read_the_columns_named(two_of_each, tmp_path):
    model = _saved_rc_dit(tmp_path / "rc")
    columns = ["--image_column", "image", "--label_column", "coarse"]
    with pytest.raises(ValueError, match=r"several \(\['image', 'inverted'\]\) .*training scripts: --image_column"):
        main(["fit-head", "--model_dir", model, "--dataset", two_of_each, "--output_dir", str(tmp_path / "refused")])
    main(["fit-head", "--model_dir", model, "--dataset", two_of_each, *columns, "--output_dir", str(tmp_path / "h")])
    fitted = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert list(fitted["per_class"]) == COARSE and fitted["num_samples"] == 30
    pipeline = str(tmp_path / "h" / "pipeline")
    main(["evaluate", "--model_dir", pipeline, "--dataset", two_of_each, *columns, "--output_dir", str(tmp_path / "e")])
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (evaluated["num_samples"], evaluated["accuracy"]) == (30, fitted["accuracy"])
    main(["evaluate", "--model_dir", pipeline, "--dataset", two_of_each, *columns, "--split", "all",
          "--drop_training_images", "--output_dir", str(tmp_path / "all")])  # fmt: skip
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["num_samples"] == 60  # val and test

    output = tmp_path / "predictions.csv"
    main(["predict", "--model_dir", pipeline, "--input", two_of_each, *columns, "--output", str(output)])
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    test = datasets.load_from_disk(two_of_each)["test"]
    assert [row["true_label"] for row in rows] == [COARSE[label] for label in test["coarse"]]
    assert [(row["patient_id"], row["digit"]) for row in rows] == list(zip(test["patient_id"], map(str, test["digit"])))
    with pytest.warns(UserWarning, match=r"several ClassLabel columns \['digit', 'coarse'\], so none is carried"):
        main(["predict", "--model_dir", pipeline, "--input", two_of_each, "--image_column", "image", "--output",
              str(tmp_path / "unlabelled.csv")])  # fmt: skip


def test_the_training_scripts_read_the_columns_named(two_of_each):
    parser = add_data_args(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", two_of_each, "--image_column", "inverted", "--label_column", "digit"])
    args.seed = 0
    splits = load_data_from_args(args)
    assert splits["train"].class_names == [str(i) for i in range(10)]
    test = datasets.load_from_disk(two_of_each)["test"]
    np.testing.assert_array_equal(splits["test"].labels.numpy(), test["digit"])
    assert float(splits["test"].images[0].mean()) > 0  # the inverted digits: mostly white


def test_predict_carries_columns_as_stored_and_skips_or_refuses_what_it_cannot(two_of_each, tmp_path, capsys):
    """QA (second read): an int `label` column (Dataset.from_pandas) made predict refuse every row as of unknown
    classes; a `training_image` column stopped it; a float32 cell was written 0.10000000149011612; `--label_column`
    on a CSV was ignored; `aggregate` called a dataset's numbered rows files gone from the folder."""
    model = _saved_rc_dit(tmp_path / "rc")
    main(["fit-head", "--model_dir", model, "--dataset", two_of_each, "--image_column", "image", "--label_column",
          "coarse", "--output_dir", str(tmp_path / "h")])  # fmt: skip
    pipeline = str(tmp_path / "h" / "pipeline")
    rows = datasets.load_from_disk(two_of_each)["test"].select(range(4)).select_columns(["image", "patient_id"])
    rows = rows.add_column("label", [0, 1, 0, 1]).add_column("training_image", [False] * 4)
    rows = rows.add_column("weight", [0.1] * 4).cast_column("weight", datasets.Value("float32"))
    rows.save_to_disk(str(tmp_path / "from_pandas"))
    output = tmp_path / "out.csv"
    with pytest.warns(UserWarning, match=r"its column\(s\) \['label', 'training_image'\] are not carried"):
        main(["predict", "--model_dir", pipeline, "--input", str(tmp_path / "from_pandas"), "--output", str(output)])
    with open(output, newline="") as handle:
        predicted = list(csv.DictReader(handle))
    assert [(row["patient_id"], row["weight"]) for row in predicted] == [(f"P{90 + i}", "0.1") for i in range(4)]
    assert "true_label" not in predicted[0]
    main(["aggregate", "--predictions", str(output), "--by", "patient_id", "--output", str(tmp_path / "by.csv")])
    printed = capsys.readouterr()
    assert "of files no longer" not in printed.out + printed.err

    (tmp_path / "list.csv").write_text("path,diagnosis\nx.png,low\n")
    with pytest.raises(ValueError, match=r"--image_column, --label_column\) apply to a saved datasets folder only"):
        main(["predict", "--model_dir", pipeline, "--input", str(tmp_path / "list.csv"), "--label_column", "diagnosis",
              "--output", str(tmp_path / "csv_out.csv")])  # fmt: skip


def test_carving_a_dataset_that_names_its_patients_warns_that_they_are_not_read(two_of_each, tmp_path):
    """QA (a datasets user): the splits carved from a Dataset with a `patient_id` column put 30 of its 40 patients on
    several sides, without a word; a CSV's patient_id column is carved by patient, a dataset's is not read."""
    from diffusion_classifiers.data import load_image_classification_data, streaming_image_classification_data

    whole = datasets.load_from_disk(str(two_of_each))
    datasets.DatasetDict({"train": whole["train"]}).save_to_disk(str(tmp_path / "train_only"))
    not_read = r"train_only: its 'patient_id' column is not read when the 'val' and 'test' split\(s\) are carved"
    reading = {"image_size": 8, "num_channels": 1, "image_column": "image", "label_column": "digit"}
    for load in (load_image_classification_data, streaming_image_classification_data):
        with pytest.warns(UserWarning, match=not_read):
            load(str(tmp_path / "train_only"), **reading)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # its own splits: nothing carved
            load(str(two_of_each), **reading)


def test_splits_numbered_one_by_one_are_refused_naming_the_dataset_and_the_call_that_aligns_them(tmp_path):
    """QA (a datasets user): class_encode_column on a DatasetDict whose test split lacks a class numbers each split
    on its own; training refused it without naming the data set or the way to number it as train is."""
    from diffusion_classifiers.data import load_image_classification_data

    images = [Image.new("L", (8, 8), value) for value in (0, 255, 0, 255)]
    parts = {
        "train": datasets.Dataset.from_dict({"image": images, "label": ["normal", "pneumonia"] * 2}),
        "test": datasets.Dataset.from_dict({"image": images[:2], "label": ["pneumonia"] * 2}),
    }
    split_by_split = datasets.DatasetDict(parts).cast_column("image", datasets.Image()).class_encode_column("label")
    split_by_split.save_to_disk(str(tmp_path / "encoded"))
    call = r"dataset\['test'\]\.align_labels_with_mapping\(\{name: i for i, name in enumerate\(dataset\['train'\]"
    with pytest.raises(ValueError, match=r"encoded: split 'test': label column 'label' is ClassLabel\(names="
                                         rf"\['pneumonia'\]\); .* {call}\.features\['label'\]\.names\)\}}, 'label'\)"):
        load_image_classification_data(str(tmp_path / "encoded"))
    aligned = split_by_split["test"].align_labels_with_mapping({"normal": 0, "pneumonia": 1}, "label")  # as said
    datasets.DatasetDict({"train": split_by_split["train"], "test": aligned}).save_to_disk(str(tmp_path / "aligned"))
    assert load_image_classification_data(str(tmp_path / "aligned"), image_size=8)["test"].labels.tolist() == [1, 1]

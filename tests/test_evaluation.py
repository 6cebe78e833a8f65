import copy
import json
import runpy
import sys
import unicodedata
import warnings

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits

from diffusion_classifiers import UNetFeatureClassifierPipeline, export_unet_feature_pipeline
from diffusion_classifiers.data import ImagePreprocessing, LabeledImages, load_image_classification_data, to_datasets
from diffusion_classifiers.data.split_record import image_fingerprints, save_split_record
from diffusion_classifiers.evaluation import evaluate_classifier, evaluate_compatible_transformers, load_metric, map_labels_by_name
from diffusion_classifiers.metrics import calibration_metrics, percent, selective_accuracy
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.probing import fit_probe_grid

from .conftest import REPO_ROOT, digit_folder

BINARY_NAMES = ["malignant", "benign"]  # label 0 is the finding: sensitivity must be its recall, not label 1's


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.manual_seed(0)
    splits = load_image_classification_data("digits", image_size=16, seed=0)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    feats = {name: pipe.extract_features(splits[name].images, ["mid_block"], [20]) for name in ("train", "val")}
    probe = fit_probe_grid(feats["train"], splits["train"].labels, feats["val"], splits["val"].labels, class_names=splits["train"].class_names)
    pipe.register_modules(head=probe.head)
    root = tmp_path_factory.mktemp("models")
    pipe.save_pretrained(root / "pipeline")
    export_unet_feature_pipeline(pipe, root / "transformers")
    test = to_datasets({"test": splits["test"].subset(np.arange(120))})["test"]
    return pipe, root, test


def test_pipeline_and_exported_model_score_the_same(fitted, tmp_path):
    pipe, root, test = fitted
    from_pipeline = evaluate_classifier(pipe, test, tmp_path / "a")
    from_transformers = evaluate_classifier(str(root / "transformers"), test, tmp_path / "b")
    assert from_pipeline["accuracy"] == from_transformers["accuracy"] > 0.6
    assert from_pipeline["confusion_matrix"] == from_transformers["confusion_matrix"]
    written = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "balanced_accuracy", "auc", "per_class", "confusion_matrix", "calibration"} <= set(written)
    assert Image.open(tmp_path / "a" / "confusion_matrix.png").size == (round(100 * (0.55 * 10 + 4.5)), round(100 * (0.55 * 10 + 3.5)))
    assert Image.open(tmp_path / "a" / "reliability.png").size == (550, 700)
    assert not (tmp_path / "a" / "roc_pr.png").exists() and "positive_class" not in written  # 10 classes
    assert f"| accuracy | {100 * written['accuracy']:.2f}% |" in (tmp_path / "a" / "report.md").read_text()
    low, high = written["confidence_intervals"]["accuracy"]
    assert low < written["accuracy"] < high
    assert min(row["support"] for row in written["per_class"].values()) < 10  # 120 images of 10 classes
    assert written["confidence_intervals"]["auc"] is None and "average_precision" not in written["confidence_intervals"]
    assert "classes scored hold fewer than 10 images" in written["confidence_intervals"]["methods"]["auc"]


def test_a_hub_id_evaluates_like_its_folder(fitted, tmp_path, monkeypatch):
    """`evaluate_classifier("org/name")` (and `evaluate --model_dir org/name`) reads the repo's snapshot, a pipeline
    or a transformers export, as `predict` does; it was refused as no such folder."""
    from diffusion_classifiers import hub

    from .test_hub import fake_snapshot_download

    pipe, root, test = fitted
    for kind in ("pipeline", "transformers"):
        calls = []
        monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, cache_dir=None, **kwargs: fake_snapshot_download(
            root / kind, calls)(repo_id, cache_dir=tmp_path / "cache" / kind, **kwargs))  # fmt: skip
        from_hub = evaluate_classifier(f"org/{kind}", test)
        assert calls[0]["repo_id"] == f"org/{kind}"
        assert from_hub["confusion_matrix"] == evaluate_classifier(str(root / kind), test)["confusion_matrix"]


def test_labels_are_matched_by_name(fitted, tmp_path):
    pipe, _, test = fitted
    names = test.features["label"].names
    reversed_names = names[::-1]
    relabeled = test.cast_column("label", datasets.Value("int64")).map(lambda row: {"label": 9 - row["label"]})
    relabeled = relabeled.cast_column("label", datasets.ClassLabel(names=reversed_names))
    assert evaluate_classifier(pipe, relabeled)["accuracy"] == evaluate_classifier(pipe, test)["accuracy"]


def test_label_names_that_differ_are_refused_listing_both():
    with pytest.raises(ValueError, match=r"\['cat', 'dog'\] are not among the model's classes \['normal', 'pneumonia'\]"):
        map_labels_by_name(["cat", "dog"], ["normal", "pneumonia"])


def test_an_image_folder_and_a_saved_dataset_have_class_names_of_their_own_to_check(tmp_path):
    import datasets
    from PIL import Image

    from diffusion_classifiers.evaluation import _own_class_names

    for name in ("cat", "dog"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "folder" / name / "a.png")
    assert _own_class_names(str(tmp_path / "folder")) == ["cat", "dog"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    saved = datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8))] * 2, "label": [0, 1]}, features=features)
    saved.save_to_disk(str(tmp_path / "saved"))  # its ClassLabel, checked before any image is decoded (QA)
    assert _own_class_names(str(tmp_path / "saved")) == ["cat", "dog"]
    assert _own_class_names("digits") is None and _own_class_names(str(tmp_path / "missing")) is None


def test_some_of_the_models_classes_are_matched_by_name():
    assert map_labels_by_name(["fox", "cat"], ["cat", "dog", "fox"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\['owl'\] are not among the model's classes"):
        map_labels_by_name(["cat", "owl"], ["cat", "dog", "fox"])


def test_a_name_that_differs_only_in_unicode_normalisation_is_named_so():
    nfd, nfc = unicodedata.normalize("NFD", "détritus"), unicodedata.normalize("NFC", "détritus")
    with pytest.raises(ValueError, match=r"only in Unicode normalisation \(NFD vs NFC\)"):
        map_labels_by_name([nfd, "copepod"], [nfc, "copepod"])


def test_calibration_of_a_known_case():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    result = calibration_metrics([0, 1, 1, 1], probs, num_bins=2)
    # bin (0.5, 1.0] holds all four: mean confidence 0.7375, accuracy 0.75
    assert result["ece"] == pytest.approx(abs(0.75 - 0.7375))
    assert result["bins"][1]["count"] == 4 and result["bins"][0]["count"] == 0
    # confidences 0.9, 0.8, 0.7, 0.55 (correct, wrong, correct, correct): the 90% most confident are ceil(3.6) = all
    # 4, 75% right; 80%: the 4th too (ceil(3.2)); 50%: the first 2, 50% right
    selective = [(row["images"], row["min_confidence"], row["accuracy"]) for row in result["selective"]]
    assert selective == [(4, 0.55, 0.75), (4, 0.55, 0.75), (2, 0.8, 0.5)]
    tied = calibration_metrics([0, 0, 1, 1], np.array([[0.6, 0.4]] * 4), num_bins=2)["selective"]
    assert [(row["images"], row["coverage"]) for row in tied] == [(4, 1.0)] * 3  # a tie at the cut keeps them all
    with pytest.raises(ValueError, match=r"expected finite confidences and as many correct flags"):
        selective_accuracy(np.array([0.9, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match=r"coverages: expected fractions in \(0, 1\], got \[1.5\]"):
        selective_accuracy(np.array([0.9, 0.8]), np.array([True, False]), coverages=(1.5,))


def test_a_report_gives_the_accuracy_of_the_most_confident_images(fitted, tmp_path):
    """What a lab that checks the least confident images by hand gets for the rest."""
    _, root, test = fitted
    metrics = evaluate_classifier(str(root / "transformers"), test, output_dir=str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    for row in metrics["calibration"]["selective"]:
        assert f"| accuracy of the {row['images']} most confident ({100 * row['coverage']:.2f}% of the images" in report
    assert [row["target_coverage"] for row in metrics["calibration"]["selective"]] == [0.9, 0.8, 0.5]


def test_evaluate_evaluator_with_the_shipped_metric_inside_the_scoped_shim(fitted):
    import evaluate
    import transformers
    from transformers import pipeline

    _, root, test = fitted
    classify = pipeline("image-classification", model=str(root / "transformers"))
    label2id = {name: i for i, name in enumerate(test.features["label"].names)}
    with evaluate_compatible_transformers():
        results = evaluate.evaluator("image-classification").compute(
            model_or_pipeline=classify, data=test, metric=load_metric(), input_column="image", label_column="label", label_mapping=label2id
        )
    assert "TFPreTrainedModel" not in dir(transformers)  # nothing leaks out of the block
    expected = evaluate_classifier(str(root / "transformers"), test)
    assert results["accuracy"] == pytest.approx(expected["accuracy"])
    assert results["macro_f1"] == pytest.approx(expected["macro_f1"])


def test_evaluate_script_end_to_end(fitted, tmp_path, capsys, monkeypatch):
    """The example script as run from a shell (in this process: the fresh-interpreter path of saved pipelines is
    tests/test_ecosystem_loading.py's)."""
    _, root, _ = fitted
    argv = ["evaluate.py", "--model_dir", str(root / "pipeline"), "--dataset", "digits", "--output_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO_ROOT / "examples" / "evaluate.py"), run_name="__main__")
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["accuracy"] == json.loads((tmp_path / "metrics.json").read_text())["accuracy"]
    from diffusion_classifiers.evaluation import load_evaluation_split  # every kind of --dataset named when missing

    with pytest.raises(ValueError, match=r"does not exist; expected .*a \.csv of paths.*Dataset / DatasetDict was saved to$"):
        load_evaluation_split(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"save it once with datasets.load_dataset\('org/plankton'\).save_to_disk\(DIR\)"):
        load_evaluation_split("org/plankton")  # a Hub id: said how to read it here, not just missing


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """A binary pipeline (digits 0 = "malignant", 1 = "benign") and a test split on which it makes some mistakes."""
    torch.manual_seed(0)
    splits = load_image_classification_data("digits", image_size=16, seed=0)

    def two_classes(split, limit):
        keep = np.flatnonzero(split.labels.numpy() <= 1)[:limit]
        return LabeledImages(split.images[keep], split.labels[keep], BINARY_NAMES)

    train, val, test = two_classes(splits["train"], 60), two_classes(splits["val"], 40), two_classes(splits["test"], 80)
    inverted = np.flatnonzero(test.labels.numpy() == 0)[::2]
    test.images[inverted] = -test.images[inverted]  # errors on malignant images only: sensitivity != specificity
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    feats = {name: pipe.extract_features(split.images, ["mid_block"], [20]) for name, split in (("train", train), ("val", val))}
    pipe.register_modules(head=fit_probe_grid(feats["train"], train.labels, feats["val"], val.labels, class_names=BINARY_NAMES).head)
    return pipe, test, to_datasets({"test": test})["test"]


def test_a_report_written_from_python_names_its_split_data_set_positives_and_threshold(binary, tmp_path):
    # QA (a reviewer): a report of evaluate_classifier(...) named neither, nor the operating point of its sensitivity
    pipe, test, dataset = binary
    metrics = evaluate_classifier(
        pipe, dataset, tmp_path, positive_class="malignant", split="test", dataset_name="digits"
    )
    positives, images = int(np.sum(test.labels.numpy() == 0)), len(test)
    assert metrics["num_positives"] == positives
    report = (tmp_path / "report.md").read_text()
    assert f"\n{images} images of the test split of `digits`, read at " in report
    positive = f"positive class: **malignant** ({positives} of {images} images), predicted where its probability exceeds"
    assert f"{positive} 0.5" in report


def test_bright_preprocessed_images_are_scored_without_the_guess_that_they_are_misread(binary):
    """QA (a PACS export): the loaders' own [-1, 1] output, brighter than mid-grey everywhere (bright DICOM slices),
    was taken for "[0, 1] images" with advice that would misread them."""
    pipe, test, _ = binary
    bright = copy.copy(test)
    bright.images, bright.preprocessing = test.images.abs(), pipe.preprocessing  # as the loaders record it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_classifier(pipe, bright)
    assert not [str(w.message) for w in caught if "no negative value" in str(w.message)]
    # a caller's own bright floats, wrapped by hand (nothing says how they were read) or given to the pipeline: said
    bright.preprocessing = None
    with pytest.warns(UserWarning, match="no negative value"):
        evaluate_classifier(pipe, bright)
    with pytest.warns(UserWarning, match="no negative value"):
        pipe(test.images.abs()[:2])


def test_drop_training_images_where_none_can_be_dropped_is_refused(binary):
    """Second read (an upgrading lab): from Python, drop_training_images was ignored on a datasets split and on a model
    that records no training images, the report then saying its images were not checked."""
    pipe, test, dataset = binary
    with pytest.raises(ValueError, match=r"^drop_training_images: the model records no fingerprints of its training"):
        evaluate_classifier(pipe, test, drop_training_images=True)
    with pytest.raises(ValueError, match=r"^drop_training_images: a datasets.Dataset is not checked against"):
        evaluate_classifier(pipe, dataset, drop_training_images=True, train_fingerprints=["0" * 32])
    with pytest.raises(ValueError, match=r"^drop_training_images: no training images are checked against"):
        evaluate_classifier(pipe, test, drop_training_images=True, split="train")


def test_binary_evaluation_reports_the_positive_class(binary, tmp_path):
    pipe, test, dataset = binary
    metrics = evaluate_classifier(pipe, dataset, tmp_path, positive_class="malignant")
    predicted = pipe(test.images).label_ids.numpy()
    truth = test.labels.numpy()
    malignant = truth == 0
    assert metrics["positive_class"] == "malignant"
    assert metrics["sensitivity"] == pytest.approx(np.mean(predicted[malignant] == 0))
    assert metrics["specificity"] == pytest.approx(np.mean(predicted[~malignant] == 1))
    assert metrics["sensitivity"] == metrics["per_class"]["malignant"]["recall"] != metrics["per_class"]["benign"]["recall"]
    assert json.loads((tmp_path / "metrics.json").read_text())["positive_class"] == "malignant"
    report = (tmp_path / "report.md").read_text()
    assert "positive class: **malignant**" in report
    decided_malignant = predicted == 0
    assert metrics["negative_predictive_value"] == pytest.approx(np.mean(truth[~decided_malignant] == 1))
    ppv = percent(metrics["positive_precision"])
    assert f"| PPV (precision of malignant) | {ppv} | " in report and "| NPV (precision of benign) |" in report
    # how the images were read, recorded and said (QA: a CT report named neither the size nor the windows)
    assert metrics["preprocessing"] == pipe.preprocessing.to_dict()
    assert f"images, read at {pipe.preprocessing.summary()}; positive class" in report
    assert Image.open(tmp_path / "roc_pr.png").size == (1000, 500)
    with pytest.warns(UserWarning, match=r"not saved with the model: sensitivity, specificity and the ROC take class 1, "
                                         r"'benign' .* not 'malignant'"):  # fmt: skip
        default = evaluate_classifier(pipe, dataset)  # no saved positive class: class 1, named in the result
    assert default["positive_class"] == "benign" and default["sensitivity"] == metrics["specificity"]
    pipe.set_positive_class("malignant")
    try:
        assert evaluate_classifier(pipe, dataset)["sensitivity"] == metrics["sensitivity"]  # the saved one by default
    finally:
        pipe.set_positive_class(None)
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['malignant', 'benign'\], got 'pneumonia'"):
        evaluate_classifier(pipe, dataset, positive_class="pneumonia")


def test_a_saved_datasetdict_answers_to_val_and_validation_alike(tmp_path):
    from diffusion_classifiers.evaluation import load_evaluation_split

    splits = load_image_classification_data("digits")
    to_datasets(splits).save_to_disk(str(tmp_path / "digits"))  # written as 'validation'
    for name in ("val", "validation"):
        assert load_evaluation_split(str(tmp_path / "digits"), name)["label"] == splits["val"].labels.tolist()
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"label": [0]})}).save_to_disk(str(tmp_path / "test_only"))
    with pytest.raises(ValueError, match=r"split 'val': the DatasetDict saved in .*test_only has no such split; it has \['test'\]"):
        load_evaluation_split(str(tmp_path / "test_only"), "val")


def test_a_split_a_saved_datasetdict_lacks_is_carved_from_its_train_split_as_in_training(tmp_path):
    """Training on a saved DatasetDict of train and test carves val from train; evaluate --split val said the folder
    had no such split. It reads the folder as training did (the model's recorded fractions and seed)."""
    from diffusion_classifiers.evaluation import load_evaluation_split

    splits = load_image_classification_data("digits")
    to_datasets({"train": splits["train"], "test": splits["test"]}).save_to_disk(str(tmp_path / "no_val"))
    trained_on = load_image_classification_data(tmp_path / "no_val", val_fraction=0.2, seed=3)  # the folder, in memory
    val, train = load_evaluation_split(str(tmp_path / "no_val"), "val", val_fraction=0.2, seed=3, with_train=True)
    assert torch.equal(val.images, trained_on["val"].images) and torch.equal(val.labels, trained_on["val"].labels)
    assert torch.equal(train.images, trained_on["train"].images)
    assert load_evaluation_split(str(tmp_path / "no_val"), "test")["label"] == splits["test"].labels.tolist()


def test_metrics_json_records_the_split_and_the_dataset(fitted, tmp_path, capsys):
    """`evaluate --split val` wrote metrics.json without its split, so a model card published its numbers as the test
    split's: the split and the dataset, as given, are recorded, and the Hub reads the split back."""
    from diffusion_classifiers.cli import main
    from diffusion_classifiers.hub import load_eval_split

    pipe, root, test = fitted
    main(["evaluate", "--model_dir", str(root / "pipeline"), "--dataset", "digits", "--split", "val", "--output_dir", str(tmp_path / "cli")])
    written = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert (written["split"], written["dataset"]) == ("val", "digits")
    assert load_eval_split(tmp_path / "cli" / "metrics.json") == "val"
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "local" / "digits-dd"))
    main(["evaluate", "--model_dir", str(root / "pipeline"), "--dataset", str(tmp_path / "local" / "digits-dd"), "--output_dir", str(tmp_path / "path")])
    assert json.loads((tmp_path / "path" / "metrics.json").read_text())["dataset"] == "digits-dd"  # its name, not its path
    evaluate_classifier(pipe, test, tmp_path / "api", split="test", dataset_name="digits/test.arrow")
    assert load_eval_split(tmp_path / "api" / "metrics.json") == "test"
    evaluate_classifier(pipe, test, tmp_path / "unnamed")
    assert "split" not in json.loads((tmp_path / "unnamed" / "metrics.json").read_text())
    assert load_eval_split(tmp_path / "unnamed" / "metrics.json") is None
    with pytest.raises(ValueError, match="split: expected a non-empty string or None, got ''"):
        evaluate_classifier(pipe, test, tmp_path / "bad", split="")


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """A binary U-Net feature classifier trained on an image folder of 60 digits (its train split's fingerprints in
    its data_splits.json, as the training scripts save them), and an external folder of 30 digits it never saw."""
    rows = np.flatnonzero(load_digits().target <= 1)
    root = tmp_path_factory.mktemp("external")
    digit_folder(root / "data", rows[:60])
    digit_folder(root / "external", rows[60:90])
    splits = load_image_classification_data(str(root / "data"), image_size=8, seed=0)
    train, val = splits["train"], splits["val"]
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8))
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), preprocessing=train.preprocessing)
    feats = {name: pipe.extract_features(splits[name].images, ["mid_block"], [20]) for name in ("train", "val")}
    probe = fit_probe_grid(feats["train"], train.labels, feats["val"], val.labels, class_names=train.class_names)
    pipe.register_modules(head=probe.head)
    pipe.set_positive_class("one")
    pipe.save_pretrained(root / "model")
    save_split_record(root / "model", 0.1, 0.2, 0, None, train_images=train.images)
    return root, splits


def _evaluate(model, dataset, output_dir, *flags) -> dict:
    from diffusion_classifiers.cli import main

    main(["evaluate", "--model_dir", str(model), "--dataset", str(dataset), "--output_dir", str(output_dir), *flags])
    return json.loads((output_dir / "metrics.json").read_text())


def test_split_all_scores_every_image_of_an_external_folder(external, tmp_path):
    """A lab scoring a model on another instrument's labelled folder had its test split carved (a fifth of it) and
    scored: `--split all` scores every image, once, as one set, in memory and streamed."""
    root, _ = external
    carved = _evaluate(root / "model", root / "external", tmp_path / "test")
    whole = _evaluate(root / "model", root / "external", tmp_path / "all", "--split", "all")
    assert carved["num_samples"] < whole["num_samples"] == 30
    assert (whole["split"], whole["dataset"], whole["training_images_checked"]) == ("all", "external", True)
    report = (tmp_path / "all" / "report.md").read_text()
    title = "# Frozen DDPM U-Net features (model) on external (all)"
    assert report.startswith(f"{title}\n\n30 images, every image of the data set `external`, read at 8 px")
    # the reference: the saved pipeline called on the 30 files themselves
    pipe = UNetFeatureClassifierPipeline.from_pretrained(str(root / "model"))
    files = sorted((root / "external").glob("*/*.png"))
    predicted = pipe([Image.open(file) for file in files]).labels
    right = [label == file.parent.name for label, file in zip(predicted, files)]
    assert whole["accuracy"] == pytest.approx(np.mean(right))
    streamed = _evaluate(root / "model", root / "external", tmp_path / "streamed", "--split", "all", "--streaming")
    assert streamed["num_samples"] == 30 and streamed["confusion_matrix"] == whole["confusion_matrix"]


def test_split_all_refuses_the_carving_flags_before_loading_the_model(external, tmp_path, monkeypatch):
    import diffusion_classifiers.evaluation
    from diffusion_classifiers.cli import main

    root, _ = external
    monkeypatch.setattr(diffusion_classifiers.evaluation, "load_classifier", pytest.fail)
    argv = ["evaluate", "--model_dir", str(root / "model"), "--dataset", str(root / "external")]
    argv += ["--output_dir", str(tmp_path / "out")]
    refused = r"--split all scores every image of --dataset and carves no split: {} only choose\(s\) how splits are "
    refused += r"carved; leave them out"
    noise = r" \(the scoring noise's seed is --pipeline_kwargs '\{\"seed\": N\}'\)$"
    with pytest.raises(ValueError, match=refused.format("--seed 3") + noise):
        main(argv + ["--split", "all", "--seed", "3"])
    with pytest.raises(ValueError, match=refused.format("--val_fraction 0.2 --test_fraction 0.3") + "$"):
        main(argv + ["--split", "all", "--val_fraction", "0.2", "--test_fraction", "0.3"])
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'validation', 'val', 'test', 'all'\] "
                                         r".*, got 'everything'"):  # fmt: skip
        main(argv + ["--split", "everything"])
    assert not (tmp_path / "out").exists()


def test_split_all_checks_every_image_against_the_training_fingerprints(external, tmp_path, capsys):
    """An external set that secretly holds the model's training images is refused (or they are dropped), whichever
    split the data would have put them in; a model that records no fingerprints is scored with a note."""
    root, splits = external
    model, leaky = root / "model", tmp_path / "leaky"
    digit_folder(leaky, np.flatnonzero(load_digits().target <= 1)[:90])  # the training folder and 30 more
    leaked = len(splits["train"])
    with pytest.raises(ValueError, match=rf"^{leaked} of 90 images of the data set leaky are images the model was "
                                         r"trained on .*: the data holds images the model was trained on .*Leave "
                                         r"them out of the data, or pass --drop_training_images "
                                         r".* to score the other "
                                         rf"{90 - leaked} only$"):  # fmt: skip
        _evaluate(model, leaky, tmp_path / "refused", "--split", "all")
    assert not (tmp_path / "refused").exists()  # refused before scoring
    with pytest.raises(ValueError, match=rf"^{leaked} of 90 images .* e\.g\. .*leaky/(zero|one)/\d+\.png"):
        _evaluate(model, leaky, tmp_path / "streamed", "--split", "all", "--streaming")
    dropped = _evaluate(model, leaky, tmp_path / "dropped", "--split", "all", "--drop_training_images")
    assert (dropped["num_samples"], dropped["training_images_dropped"]) == (90 - leaked, leaked)
    expected = f"{90 - leaked} images of `leaky` (the data set's 90 less the {leaked} the model was trained on)"
    assert expected in (tmp_path / "dropped" / "report.md").read_text()
    old = tmp_path / "old"  # a model of an earlier version: no fingerprints
    UNetFeatureClassifierPipeline.from_pretrained(str(model)).save_pretrained(old)
    (old / "data_splits.json").write_text('{"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}')
    capsys.readouterr()
    unchecked = _evaluate(old, leaky, tmp_path / "unchecked", "--split", "all")
    assert unchecked["num_samples"] == 90 and unchecked["training_images_checked"] is False  # said, not left out
    assert "**Not checked against the model's training images**" in (tmp_path / "unchecked" / "report.md").read_text()
    assert capsys.readouterr().err.count("cannot check that the leaky images are none it was trained on") == 1


def test_split_all_of_a_saved_datasetdict_is_its_splits_together_checked(external, tmp_path):
    """A saved DatasetDict's splits are scored together as its own test split would score them, and checked too."""
    root, splits = external
    external_splits = to_datasets(load_image_classification_data(str(root / "external"), image_size=8, seed=0))
    external_splits.save_to_disk(str(tmp_path / "dd"))
    one_split = datasets.concatenate_datasets([external_splits[name] for name in ("train", "validation", "test")])
    datasets.DatasetDict({"test": one_split}).save_to_disk(str(tmp_path / "dd_test"))
    whole = _evaluate(root / "model", tmp_path / "dd", tmp_path / "all", "--split", "all")
    as_test = _evaluate(root / "model", tmp_path / "dd_test", tmp_path / "test")
    assert whole["num_samples"] == as_test["num_samples"] == 30 and whole["training_images_checked"] is True
    assert whole["confusion_matrix"] == as_test["confusion_matrix"] and whole["auc"] == pytest.approx(as_test["auc"])
    to_datasets({"train": splits["train"]}).save_to_disk(str(tmp_path / "training"))
    num_train = len(splits["train"])
    with pytest.raises(ValueError, match=rf"^{num_train} of {num_train} images of the data set training are images "
                                         r"the model was trained on"):  # fmt: skip
        _evaluate(root / "model", tmp_path / "training", tmp_path / "refused", "--split", "all")


def test_a_saved_datasetdicts_own_split_is_checked_and_its_train_split_carved_as_in_training(external, tmp_path):
    """QA (session 58, a datasets user): a saved DatasetDict's own test split was scored as a raw Dataset, unchecked
    (29 of its 32 images were training images; `--help` promised the check), and `--split train` of one holding a
    train split only scored every image, the val and test carved out of it included, as "carved"."""
    root, splits = external
    leaky = {"train": splits["val"], "test": splits["train"]}  # its own test split: the model's training images
    to_datasets(leaky).save_to_disk(str(tmp_path / "leaky"))
    num_train = len(splits["train"])
    with pytest.raises(ValueError, match=rf"^{num_train} of {num_train} images of the test split .* are images the "
                                         "model was trained on"):  # fmt: skip
        _evaluate(root / "model", tmp_path / "leaky", tmp_path / "refused")
    clean = {"train": splits["train"], "validation": splits["val"], "test": splits["test"]}
    to_datasets(clean).save_to_disk(str(tmp_path / "own"))  # its own test: the train split excuses no duplicate here
    scored = _evaluate(root / "model", tmp_path / "own", tmp_path / "own_test")
    assert scored["training_images_checked"] is True and scored["num_samples"] == len(splits["test"])
    from diffusion_classifiers.evaluation import load_evaluation_split

    to_datasets({"train": splits["train"]}).save_to_disk(str(tmp_path / "train_only"))
    carved = load_evaluation_split(str(tmp_path / "train_only"), "train", val_fraction=0.1, test_fraction=0.2, seed=0)
    whole = len(splits["train"])
    assert 0 < len(carved) < whole  # the train split as training carved it, not all of it


def test_training_images_a_datasetdict_holds_in_its_train_and_test_splits_are_counted_and_said(external, tmp_path):
    """QA (a datasets user): images the model was trained on, in the data's test split and its train split too (the
    data's duplicates across its splits), passed the check as the data's own, uncounted, and the report said that none
    of the images scored was one the model was trained on."""
    root, splits = external
    own = to_datasets({"train": splits["train"], "test": splits["test"]})
    copies = own["train"].select(range(3))
    test = datasets.concatenate_datasets([own["test"], copies])
    datasets.DatasetDict({"train": own["train"], "test": test}).save_to_disk(str(tmp_path / "duplicates"))
    scored = _evaluate(root / "model", tmp_path / "duplicates", tmp_path / "scored")
    assert scored["num_samples"] == len(splits["test"]) + 3
    assert scored["training_images_also_in_the_data_train_split"] == 3
    report = (tmp_path / "scored" / "report.md").read_text()
    assert "**3 of the images scored are images the model was trained on**, copies of images the data's" in report
    assert "None of the images scored" not in report
    clean = _evaluate(root / "model", tmp_path / "duplicates", tmp_path / "train_split", "--split", "train")
    assert "training_images_also_in_the_data_train_split" not in clean  # the data's train split: none


def test_load_evaluation_split_all_is_every_split_once_without_carving_warnings(tmp_path):
    from diffusion_classifiers.evaluation import load_evaluation_split

    digits = load_digits()
    images, labels = (digits.images[:30] * 15).astype(np.uint8), digits.target[:30] % 2
    np.savez(tmp_path / "own.npz", train_images=images[:20], train_labels=labels[:20], test_images=images[20:],
             test_labels=labels[20:])  # fmt: skip
    whole, train = load_evaluation_split(str(tmp_path / "own.npz"), "all", with_train=True)
    parts = [load_evaluation_split(str(tmp_path / "own.npz"), name) for name in ("train", "val", "test")]
    assert train is None and whole.labels.tolist() == labels.tolist()  # the data's own order: its train, its test
    carved = image_fingerprints(torch.cat([part.images for part in parts]))
    assert sorted(image_fingerprints(whole.images)) == sorted(carved)  # each image once
    rows = np.flatnonzero(digits.target <= 1)
    digit_folder(tmp_path / "few", [*rows[digits.target[rows] == 0][:10], *rows[digits.target[rows] == 1][:2]])
    with pytest.warns(UserWarning, match=r"the carved 'val' split holds no image of class 'one'"):
        load_evaluation_split(str(tmp_path / "few"), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # carving only reads the data: nothing to say about it
        assert len(load_evaluation_split(str(tmp_path / "few"), "all")) == 12
    digit_folder(tmp_path / "tiny", [rows[digits.target[rows] == 0][0], rows[digits.target[rows] == 1][0]])
    with pytest.raises(ValueError, match="split '(val|test)' is empty"):  # too small to carve
        load_evaluation_split(str(tmp_path / "tiny"), "test")
    for streaming in (False, True):  # but scored whole: nothing carved
        contract = ImagePreprocessing(image_size=8, num_channels=1)
        tiny = load_evaluation_split(str(tmp_path / "tiny"), "all", preprocessing=contract, streaming=streaming)
        assert len(tiny) == 2


def test_a_split_without_a_class_is_flagged_not_read_as_perfect(binary, tmp_path):
    """QA: a test split with malignant images only read accuracy 1.0, macro-F1 1.0, AUC null, without a word."""
    pipe, test, _ = binary
    only_malignant = test.subset(np.flatnonzero(test.labels.numpy() == 0))
    with pytest.warns(UserWarning, match=r"the evaluated test has no image of the model's class\(es\) benign .*AUC is undefined"):
        metrics = evaluate_classifier(pipe, only_malignant, tmp_path, positive_class="malignant", split="test")
    assert metrics["absent_classes"] == ["benign"] and metrics["auc"] is None
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["absent_classes"] == ["benign"] and written["auc_undefined"] == "no image of class benign in the split"
    report = (tmp_path / "report.md").read_text()
    assert "**Warning: the split has no image of class benign.**" in report
    assert "| AUC | undefined (no image of class benign in the split) |" in report
    complete = evaluate_classifier(pipe, test)  # both classes: no flag
    assert "absent_classes" not in complete and complete["auc"] is not None


def test_metrics_json_records_the_pipeline_call_settings(tmp_path):
    """QA: metrics.json did not say which method, number of timesteps, priors or seed a Score-SDE model was scored with."""
    from diffusion_classifiers import ScoreSDEClassifierPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    pipe = ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=["a", "b"])
    data = LabeledImages(torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    metrics = evaluate_classifier(pipe, data, tmp_path / "default")
    call = json.loads((tmp_path / "default" / "metrics.json").read_text())["pipeline_call"]
    assert metrics["pipeline_call"] == call
    assert (call["method"], call["num_timesteps"], call["priors"], call["seed"]) == ("elbo", 100, None, 0)
    given = {"num_timesteps": 4, "seed": 7, "priors": [0.3, 0.7]}
    evaluate_classifier(pipe, data, tmp_path / "given", pipeline_kwargs=given)
    call = json.loads((tmp_path / "given" / "metrics.json").read_text())["pipeline_call"]
    assert {k: call[k] for k in given} == given and call["method"] == "elbo"
    # QA: the report of one setting read as the report of another, but for the numbers
    report = (tmp_path / "given" / "report.md").read_text()
    assert "Scored by the pipeline called with `method='elbo', priors=[0.3, 0.7], num_timesteps=4, " in report
    assert " seed=7, " in report
    direct = pipe(data.images, num_timesteps=4, seed=7, priors=[0.3, 0.7], input_data_format="channels_first").probs
    scored = evaluate_classifier(pipe, data, pipeline_kwargs=given)  # the settings are the ones scored with
    assert scored["accuracy"] == pytest.approx(float((direct.argmax(-1) == data.labels).float().mean()))
    with pytest.raises(ValueError, match=r"pipeline_kwargs: unknown \['num_steps_typo'\] for ScoreSDEClassifierPipeline"):
        evaluate_classifier(pipe, data, pipeline_kwargs={"num_steps_typo": 3})


def test_an_unsaved_exported_model_needs_its_image_processor(fitted, tmp_path):
    """QA: evaluating the model `export_unet_feature_pipeline(pipe)` returns (not saved) failed with a Hub error about
    the repo id '' (its empty name_or_path)."""
    pipe, _, test = fitted
    model, processor = export_unet_feature_pipeline(pipe)
    refused = r"image_processor: expected one .* \(empty name_or_path\).* return \(model, image_processor\)"
    with pytest.raises(ValueError, match=refused):
        evaluate_classifier(model, test)
    small = test.select(range(20))
    expected = evaluate_classifier(pipe, small)["accuracy"]
    assert evaluate_classifier(model, small, image_processor=processor)["accuracy"] == expected


def test_the_shipped_metric_refuses_probabilities_for_class_ids():
    """QA: `compute(predictions=[0.7, 1.2], references=[0, 1])` truncated them and gave accuracy 1.0."""
    metric = load_metric()
    refused = r"predictions: expected integer class ids, got 0.7 at index 0 .* not probabilities"
    with pytest.raises(ValueError, match=refused):
        metric.compute(predictions=[0.7, 1.2], references=[0, 1])
    with pytest.raises(ValueError, match=r"references: expected integer class ids, got 0.0 at index 0"):
        metric.compute(predictions=[0, 1], references=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"expected a 1-D list of integer class ids, got shape \(2, 2\)"):
        metric.compute(predictions=torch.tensor([[0.3, 0.7], [0.9, 0.1]]), references=[1, 0])
    with pytest.raises(ValueError, match="prediction: expected integer class ids, got 0.7"):
        metric.add(prediction=0.7, reference=1)
    scores = metric.compute(predictions=np.array([0, 1, 1]), references=torch.tensor([0, 1, 0]))
    assert scores["accuracy"] == pytest.approx(2 / 3)


def test_a_component_folder_of_a_pipeline_is_named_with_its_pipeline(tmp_path):
    """QA: `evaluate --model_dir out/sde/unet` said "unknown model_type None": it is the pipeline's unet/ component."""
    from diffusion_classifiers import DiffusionClassifierPipeline
    from diffusion_classifiers.cli import main

    pipeline = REPO_ROOT / "tests" / "fixtures" / "v0.1.0" / "score_sde"
    with pytest.raises(ValueError, match=rf"unet: a component of a diffusers pipeline, not a classifier; pass the "
                                         rf"pipeline folder {pipeline}$"):  # fmt: skip
        main(["evaluate", "--model_dir", str(pipeline / "unet"), "--dataset", "digits",
              "--output_dir", str(tmp_path / "e")])  # fmt: skip
    assert not (tmp_path / "e").exists()  # a refused run leaves no empty folder behind
    with pytest.raises(FileNotFoundError, match=rf"unet is a component of the pipeline {pipeline}: pass that folder"):
        DiffusionClassifierPipeline.from_pretrained(str(pipeline / "unet"))


PNEUMONIA_NPZ = ("medmnist_pneumonia", "pneumoniamnist.npz")


def test_a_model_recording_its_classes_in_another_order_reads_a_named_source_by_its_own_names():
    """RC-DiT QA: a head fitted on a CSV of PneumoniaMNIST images listing pneumonia first recorded that order, and
    evaluate named the .npz's label ids by it: every normal image read as pneumonia (19% accuracy for 81%)."""
    from diffusion_classifiers.evaluation import load_evaluation_split

    from .conftest import shared_data

    npz = str(shared_data(*PNEUMONIA_NPZ))
    labels = np.load(npz)["test_labels"].ravel()
    for recorded in (["pneumonia", "normal"], ["normal", "pneumonia"], None):
        test = load_evaluation_split(npz, "test", class_names=recorded)
        assert test.class_names == ["normal", "pneumonia"] and test.labels.tolist() == labels.tolist()
    renamed = load_evaluation_split(npz, "test", class_names=["healthy", "sick"])  # other names: they rename the ids
    assert renamed.class_names == ["healthy", "sick"] and renamed.labels.tolist() == labels.tolist()


def test_evaluate_checks_a_datas_own_test_split_against_images_a_head_was_fitted_on(tmp_path):
    """RC-DiT QA: a head fitted on other data (a CSV of PneumoniaMNIST test images) was evaluated on the .npz's own
    test split, which holds those images, without a word: a data set's own split is its word about its own train
    split only."""
    from diffusion_classifiers.cli import main
    from diffusion_classifiers.evaluation import load_evaluation_split
    from diffusion_classifiers.models import LinearProbeHead

    from .conftest import shared_data

    npz = str(shared_data(*PNEUMONIA_NPZ))
    torch.manual_seed(0)
    head = LinearProbeHead(16, 2, class_names=["normal", "pneumonia"], block="mid_block", timestep=50)
    config = unet_config("tiny", 28)
    config.update(block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=4)
    pipe = UNetFeatureClassifierPipeline(UNet2DModel(**config), DDPMScheduler(), head=head,
                                         preprocessing=ImagePreprocessing(28, 1))  # fmt: skip
    pipe.save_pretrained(tmp_path / "model")
    fitted_on = load_evaluation_split(npz, "test", preprocessing=ImagePreprocessing(28, 1)).images[:5]
    save_split_record(tmp_path / "model", 0.1, 0.2, 0, train_fingerprints=image_fingerprints(fitted_on))
    with pytest.raises(ValueError, match=r"5 of 624 images of the test split .* are images the model was trained on"):
        main(["evaluate", "--model_dir", str(tmp_path / "model"), "--dataset", npz, "--split", "test",
              "--output_dir", str(tmp_path / "out")])  # fmt: skip


def test_an_unlabelled_row_of_a_saved_datasetdicts_own_split_is_refused(tmp_path):
    """Third read (session 58): read through the model's contract, a -1 label (an image without one) was scored as the
    last class instead of refused."""
    from diffusion_classifiers.data import ImagePreprocessing
    from diffusion_classifiers.evaluation import load_evaluation_split

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"image": [np.zeros((8, 8), dtype=np.uint8)] * 3, "label": [0, -1, 1]},
                                       features=features)  # fmt: skip
    labelled = datasets.Dataset.from_dict({"image": [np.zeros((8, 8), dtype=np.uint8)] * 2, "label": [0, 1]},
                                          features=features)  # fmt: skip
    datasets.DatasetDict({"train": split, "test": split, "val": labelled}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"1 of 3 labels are not class ids in \[0, 1\]"):
        load_evaluation_split(str(tmp_path / "dd"), "test", preprocessing=ImagePreprocessing(8, 1))
    # an unlabelled image of its train split is no reason to refuse scoring another split (it only excuses duplicates)
    assert len(load_evaluation_split(str(tmp_path / "dd"), "val", preprocessing=ImagePreprocessing(8, 1))) == 2


def test_a_binary_evaluation_ranks_by_the_log_odds_its_decisions_read():
    """QA (a biostatistician): the average precision was ranked by the float32 probabilities, which saturate and tie a
    positive and a negative image that the log-odds (what decisions and operating points read) tell apart."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from diffusion_classifiers.evaluation import ranked_by_log_odds, _scored_metrics
    from diffusion_classifiers.operating_points import positive_log_odds

    other = torch.tensor([1e-9, 1e-12, 0.2, 0.6, 0.9], dtype=torch.float32)  # the negative class's probability
    probs = torch.stack([other, 1 - other], 1)  # float32: the first two positive probabilities are both 1.0
    y_true = np.array([0, 1, 1, 0, 0])  # a negative ranked above a positive in log-odds, tied with it in probability
    assert probs[0, 1] == probs[1, 1]
    log_odds = positive_log_odds(probs, probs, 1)
    ranking = ranked_by_log_odds(probs, log_odds, 1)
    metrics = _scored_metrics(y_true, probs.argmax(1).numpy(), log_odds, probs, ranking, [None], [None],
                              ["benign", "malignant"], 1, None, None)  # fmt: skip
    assert metrics["average_precision"] == pytest.approx(average_precision_score(y_true, log_odds), abs=1e-12)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y_true, log_odds), abs=1e-12)
    assert metrics["average_precision"] != pytest.approx(average_precision_score(y_true, probs[:, 1]), abs=1e-6)


def test_metrics_json_records_the_software_and_date_it_was_measured_with(external, tmp_path):
    """QA (a reproducibility audit): evaluate's and demo's metrics.json named no version of the library or of the
    packages its figures depend on, and no date."""
    import importlib.metadata
    from datetime import datetime, timezone

    import diffusion_classifiers

    root, _ = external
    before = datetime.now(timezone.utc).replace(microsecond=0)
    environment = _evaluate(root / "model", root / "external", tmp_path / "scored", "--split", "all")["environment"]
    assert before <= datetime.fromisoformat(environment["date_utc"]) <= datetime.now(timezone.utc)
    versions = environment["versions"]
    assert versions["diffusion-classifiers"] == diffusion_classifiers.__version__
    assert versions["torch"] == importlib.metadata.version("torch")
    assert versions["scikit-learn"] == importlib.metadata.version("scikit-learn") and versions["python"]

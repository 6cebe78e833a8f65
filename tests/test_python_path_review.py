"""The README's Python path, as a mammography group used it: data loaded for val / test must be carved as the model's
training run carved it (`pipe.loader_kwargs`), `evaluate_classifier` checks the images it scores against the
pipeline's recorded training images, and per-breast metrics of `aggregate` go on a model card named as the data they
were measured on (an external set is not a split of the training data)."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import (
    DiffusionClassifierPipeline,
    LinearProbeHead,
    UNetFeatureClassifierPipeline,
    evaluate_classifier,
    load_image_classification_data,
)
from diffusion_classifiers import hub
from diffusion_classifiers.data.split_record import (
    ANONYMISED_DICOM_RULE,
    SPLIT_DEFAULTS,
    image_fingerprints,
    recorded_train_fingerprints,
    save_split_record,
)
from diffusion_classifiers.models import unet_config

from .test_hub import front_matter, push_script_argv, run_push_script

# the QA model's carving: not the loaders' defaults (val 0.1, test 0.2, seed 0)
CARVING = {"val_fraction": 0.2, "test_fraction": 0.34, "seed": 3}


def tiny_pipeline(num_classes: int = 10, class_names=None) -> UNetFeatureClassifierPipeline:
    torch.manual_seed(0)
    names = class_names or [str(i) for i in range(num_classes)]
    head = LinearProbeHead(in_features=32, num_classes=len(names), block="mid_block", timestep=10, class_names=names)
    unet = UNet2DModel(**unet_config("tiny", 16))
    return UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)


@pytest.fixture(scope="module")
def recorded_model(tmp_path_factory):
    """A saved pipeline whose data_splits.json records CARVING and the fingerprints of its train split of digits;
    and the splits its training run carved."""
    folder = tmp_path_factory.mktemp("python_path") / "pipeline"
    pipe = tiny_pipeline()
    pipe.save_pretrained(folder)
    trained = load_image_classification_data("digits", **pipe.preprocessing.loader_kwargs, **CARVING)
    save_split_record(folder, **CARVING, train_images=trained["train"].images)
    return folder, trained


def num_training_images(images, folder) -> int:
    fingerprints = recorded_train_fingerprints(folder)
    return sum(fingerprint in fingerprints for fingerprint in image_fingerprints(images))


def test_pipe_loader_kwargs_read_and_carve_as_the_training_run(recorded_model):
    folder, trained = recorded_model
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    kwargs = pipe.loader_kwargs
    assert {name: kwargs[name] for name in CARVING} == CARVING
    assert kwargs["anonymised_dicom_groups"] == ANONYMISED_DICOM_RULE and kwargs["class_names"] is None
    assert {name: kwargs[name] for name in pipe.preprocessing.loader_kwargs} == pipe.preprocessing.loader_kwargs
    splits = load_image_classification_data("digits", **kwargs)
    for name in ("train", "val", "test"):
        assert torch.equal(splits[name].images, trained[name].images)
        assert torch.equal(splits[name].labels, trained[name].labels)
    assert num_training_images(splits["val"].images, folder) == 0
    assert num_training_images(splits["test"].images, folder) == 0
    # the defect: the reading alone carves with the loaders' defaults, whose test holds training images
    loose = load_image_classification_data("digits", **pipe.preprocessing.loader_kwargs)
    assert num_training_images(loose["test"].images, folder) > 0
    # a pipeline without a record (built in code): the training scripts' defaults
    unrecorded = tiny_pipeline().loader_kwargs
    assert {name: unrecorded[name] for name in SPLIT_DEFAULTS} == SPLIT_DEFAULTS
    assert unrecorded["anonymised_dicom_groups"] == ANONYMISED_DICOM_RULE


def test_evaluate_classifier_checks_the_pipelines_recorded_training_images(recorded_model, tmp_path):
    folder, trained = recorded_model
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    loose = load_image_classification_data("digits", **pipe.preprocessing.loader_kwargs)["test"]
    leaked = num_training_images(loose.images, folder)
    # before: scored all of them, silently; now refused, naming how many and how to carve as the model did
    with pytest.raises(ValueError, match=rf"{leaked} of {len(loose)} images of the test split .* trained on.*"
                                         r"pipe\.loader_kwargs"):  # fmt: skip
        evaluate_classifier(pipe, loose, split="test")
    dropped = evaluate_classifier(pipe, loose, drop_training_images=True)
    assert dropped["training_images_checked"] is True and dropped["training_images_dropped"] == leaked
    assert dropped["num_samples"] == len(loose) - leaked
    unchecked = evaluate_classifier(pipe, loose, check_training_images=False)  # the explicit opt-out
    assert "training_images_checked" not in unchecked and unchecked["num_samples"] == len(loose)
    with pytest.raises(ValueError, match="train_fingerprints: given with check_training_images=False"):
        evaluate_classifier(pipe, loose, train_fingerprints=["0" * 16], check_training_images=False)
    # the documented path: the model's own test, checked, by the pipeline or by its saved folder
    test = load_image_classification_data("digits", **pipe.loader_kwargs)["test"]
    metrics = evaluate_classifier(pipe, test)
    assert metrics["training_images_checked"] is True and metrics["num_samples"] == len(trained["test"])
    saved = evaluate_classifier(str(folder), test, output_dir=str(tmp_path / "eval"))
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["training_images_checked"] is True and recorded["training_images_checked"] is True
    # scoring the train split is asking for training accuracy: not refused, and not said to be checked
    train = evaluate_classifier(pipe, trained["train"].subset(range(20)), tmp_path / "train", split="train")
    assert "training_images_checked" not in train
    report = (tmp_path / "train" / "report.md").read_text()  # QA: nothing said so beside the figures
    assert "**A train split, not checked against the model's training images**: where it is the model's own" in report
    # a head registered by hand drops the fingerprints: nothing to check against, which metrics.json says
    pipe.register_modules(head=tiny_pipeline().head)
    assert evaluate_classifier(pipe, loose)["training_images_checked"] is False


@pytest.fixture(scope="module")
def breast_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("breast") / "sde"
    tiny_pipeline(class_names=["cancer", "normal"]).save_pretrained(folder)
    return folder


def write_predictions(tmp_path, model, run_extra: dict, training_column: bool = True):
    """Per-view predictions of four breasts (two views each) as predict writes them; the first breast's views are
    training images when `training_column`."""
    from diffusion_classifiers.prediction.outputs import write_csv

    cancer = [0.9, 0.7, 0.2, 0.1, 0.8, 0.3, 0.1, 0.2]
    columns = ["path", "frame", "true_label", *(["training_image"] if training_column else []), "study_uid",
               "laterality", "label", "score", "prob_cancer", "prob_normal"]  # fmt: skip
    rows = []
    for i, p in enumerate(cancer):
        truth = "cancer" if i in (0, 1, 4, 5) else "normal"
        training = [str(i < 2)] if training_column else []
        label = "cancer" if p >= 0.5 else "normal"
        rows.append([f"{i}.dcm", 0, truth, *training, f"s{i // 4}", "LR"[i // 2 % 2], label, max(p, 1 - p), p, 1 - p])
    write_csv(tmp_path / "p.csv", columns, rows)
    run = {"model_dir": str(model), "model_sha256": hub.model_fingerprint(model), "positive_class": "cancer",
           **run_extra}  # fmt: skip
    sidecar = {"run": run, "class_names": ["cancer", "normal"], "columns": columns}
    (tmp_path / "p.csv.json").write_text(json.dumps(sidecar))


def aggregate_per_breast(tmp_path) -> dict:
    from diffusion_classifiers.cli import main

    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "study_uid", "laterality", "--overwrite"])
    return json.loads((tmp_path / "p.max_by_study_uid_laterality.metrics.json").read_text())


def card_argv(model, tmp_path, *extra):
    argv = push_script_argv(model, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"), *extra)
    argv[argv.index("--metrics_json") + 1] = str(tmp_path / "p.max_by_study_uid_laterality.metrics.json")
    return argv


def test_per_breast_metrics_of_an_external_csv_go_on_the_card_as_every_image_of_it(breast_model, monkeypatch,
                                                                                   tmp_path):
    write_predictions(tmp_path, breast_model, {"input": "/data/hospital_b/labels.csv"})
    metrics = aggregate_per_breast(tmp_path)
    # what evaluate --split all --drop_training_images records of the same images
    assert metrics["training_images_checked"] is True and metrics["groups_left_out_holding_training_images"] == 1
    assert metrics["split"] == "all" and metrics["dataset"] == "labels.csv" and metrics["num_samples"] == 3
    with pytest.raises(SystemExit, match=r"--dataset_split 'test' contradicts .* measured on the 'all' split"):
        run_push_script(monkeypatch, card_argv(breast_model, tmp_path, "--dataset_split", "test"))
    run_push_script(monkeypatch, card_argv(breast_model, tmp_path))  # no --dataset_split: the recorded one
    card = (tmp_path / "card" / "README.md").read_text()
    flat = " ".join(card.split())
    assert "Results on the images of labels.csv the model was not trained on (3 groups by study_uid + laterality" \
        in flat
    assert "the data set's 4 less the 1 the model was trained on" in flat
    assert "split of" not in flat and "could not check" not in flat
    results = front_matter(card)["model-index"][0]["results"]
    assert {(result["dataset"]["name"], result["dataset"]["split"]) for result in results} == {("labels.csv", "all")}


def test_per_breast_metrics_say_when_training_images_were_not_checked(breast_model, monkeypatch, tmp_path):
    write_predictions(tmp_path, breast_model, {"input": "/data/hospital_b/labels.csv"}, training_column=False)
    metrics = aggregate_per_breast(tmp_path)
    assert metrics["training_images_checked"] is False and "groups_left_out_holding_training_images" not in metrics
    with pytest.raises(SystemExit, match=r"could not check them against the model's training images .*"
                                         r"training_image column"):  # fmt: skip
        run_push_script(monkeypatch, card_argv(breast_model, tmp_path))
    # a saved DatasetDict's split, as predict recorded it, stays that split
    write_predictions(tmp_path, breast_model, {"input": "/data/mammo_dd", "split": "test"})
    metrics = aggregate_per_breast(tmp_path)
    assert metrics["split"] == "test" and metrics["dataset"] == "mammo_dd" and metrics["training_images_checked"]

import json
import subprocess

import datasets
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import UNetFeatureClassifierPipeline, export_unet_feature_pipeline
from diffusion_classifiers.data import load_image_classification_data, to_datasets
from diffusion_classifiers.evaluation import evaluate_classifier, image_classification_evaluator, load_metric, map_labels_by_name
from diffusion_classifiers.metrics import calibration_metrics
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.probing import fit_probe_grid

from .conftest import PYTHON, REPO_ROOT, python_subprocess_env


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
    assert (tmp_path / "a" / "confusion_matrix.png").stat().st_size > 0 and (tmp_path / "a" / "reliability.png").stat().st_size > 0


def test_labels_are_matched_by_name(fitted, tmp_path):
    pipe, _, test = fitted
    names = test.features["label"].names
    reversed_names = names[::-1]
    relabeled = test.cast_column("label", datasets.Value("int64")).map(lambda row: {"label": 9 - row["label"]})
    relabeled = relabeled.cast_column("label", datasets.ClassLabel(names=reversed_names))
    assert evaluate_classifier(pipe, relabeled)["accuracy"] == evaluate_classifier(pipe, test)["accuracy"]


def test_label_names_that_differ_are_refused_listing_both():
    with pytest.raises(ValueError, match=r"\['cat', 'dog'\] differ from the model's \['normal', 'pneumonia'\]"):
        map_labels_by_name(["cat", "dog"], ["normal", "pneumonia"])


def test_calibration_of_a_known_case():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    result = calibration_metrics([0, 1, 1, 1], probs, num_bins=2)
    # bin (0.5, 1.0] holds all four: mean confidence 0.7375, accuracy 0.75
    assert result["ece"] == pytest.approx(abs(0.75 - 0.7375))
    assert result["bins"][1]["count"] == 4 and result["bins"][0]["count"] == 0


def test_evaluate_evaluator_with_the_shipped_metric(fitted):
    from transformers import pipeline

    _, root, test = fitted
    classify = pipeline("image-classification", model=str(root / "transformers"))
    evaluator = image_classification_evaluator()
    label2id = {name: i for i, name in enumerate(test.features["label"].names)}
    results = evaluator.compute(
        model_or_pipeline=classify, data=test, metric=load_metric(), input_column="image", label_column="label", label_mapping=label2id
    )
    expected = evaluate_classifier(str(root / "transformers"), test)
    assert results["accuracy"] == pytest.approx(expected["accuracy"])
    assert results["macro_f1"] == pytest.approx(expected["macro_f1"])


def test_evaluate_script_end_to_end(fitted, tmp_path):
    _, root, _ = fitted
    command = [PYTHON, str(REPO_ROOT / "examples" / "evaluate.py"), "--model_dir", str(root / "pipeline"), "--dataset", "digits", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, env=python_subprocess_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["accuracy"] == json.loads((tmp_path / "metrics.json").read_text())["accuracy"]

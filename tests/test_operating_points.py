"""Operating points (QA, session 59, a screening programme): a threshold chosen on val for a target sensitivity and
applied unchanged to test, as `evaluate --target_sensitivity` / `--threshold <metrics.json>` record and read them."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.data import LabeledImages, load_image_classification_data
from diffusion_classifiers.evaluation import evaluate_classifier
from diffusion_classifiers.hub import load_eval_operating_point, render_model_card
from diffusion_classifiers.models import LinearProbeHead, unet_config
from diffusion_classifiers.operating_points import decisions_at, threshold_for_sensitivity


def test_the_threshold_for_a_sensitivity_is_the_largest_that_reaches_it():
    is_positive = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.2, 0.85, 0.5, 0.1])
    for target, expected in ((0.2, 0.9), (0.4, 0.8), (0.6, 0.8), (0.61, 0.4), (0.9, 0.2), (1.0, 0.2)):
        threshold = threshold_for_sensitivity(is_positive, scores, target)
        assert threshold == expected
        reached = (scores[is_positive] >= threshold).mean()
        assert reached >= target and not (scores[is_positive] > threshold).mean() >= target  # the largest
    probs = np.stack([1 - scores, scores], axis=1)
    assert decisions_at(probs, 1, 0.8).tolist() == [1, 1, 1, 0, 0, 1, 0, 0]
    assert decisions_at(probs, 0, 0.5).tolist() == [1, 1, 1, 0, 0, 1, 0, 0]  # class 0: its probability 1 - score


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """A probe pipeline of two digit classes with a random head (the figures need not be good), saved, and its data."""
    torch.manual_seed(0)
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["normal", "lesion"])
    torch.nn.init.normal_(head.linear.weight, std=2.0)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head)
    pipe.set_positive_class("lesion")
    folder = tmp_path_factory.mktemp("model") / "pipeline"
    pipe.save_pretrained(folder)
    splits = load_image_classification_data("digits", image_size=16, seed=0)
    binary = {}
    for name in ("val", "test"):
        keep = np.flatnonzero(splits[name].labels.numpy() < 2)
        binary[name] = LabeledImages(splits[name].images[keep], splits[name].labels[keep], ["normal", "lesion"])
    return folder, binary


def test_a_threshold_chosen_on_val_for_a_sensitivity_is_applied_unchanged_to_test(binary, tmp_path):
    folder, data = binary
    chosen = evaluate_classifier(str(folder), data["val"], tmp_path / "val", split="val", target_sensitivity=0.9)
    point = chosen["operating_point"]
    assert point["target_sensitivity"] == 0.9 and point["chosen_on"] == "val" and chosen["sensitivity"] >= 0.9
    report = " ".join((tmp_path / "val" / "report.md").read_text().split())
    assert f"predicted where its probability is {point['threshold']:.6g} or more, the threshold chosen on the val " \
        "split for a sensitivity of at least 90.00% (on these very images" in report
    applied = evaluate_classifier(str(folder), data["test"], tmp_path / "test", threshold=tmp_path / "val" / "metrics.json")
    assert applied["operating_point"] == {**point, "from": str(tmp_path / "val" / "metrics.json")}
    probs = torch.softmax(
        UNetFeatureClassifierPipeline.from_pretrained(folder).head.float()(
            UNetFeatureClassifierPipeline.from_pretrained(folder).extract_features(
                data["test"].images, ["mid_block"], [10]
            )[("mid_block", 10)]
        ), -1
    ).detach().numpy()
    expected = decisions_at(probs, 1, point["threshold"])
    positives = data["test"].labels.numpy() == 1
    assert applied["sensitivity"] == pytest.approx((expected[positives] == 1).mean())
    assert applied["specificity"] == pytest.approx((expected[~positives] == 0).mean())
    at_half = evaluate_classifier(str(folder), data["test"])  # no threshold: the most probable class, as before
    assert "operating_point" not in at_half and at_half["sensitivity"] == pytest.approx(
        (decisions_at(probs, 1, 0.5)[positives] == 1).mean()
    )
    card = str(render_model_card(
        "unet_features", model_name="m", dataset_name="digits", dataset_license="BSD-3-Clause", training_command="t",
        evaluation_command="e", metrics={"sensitivity": applied["sensitivity"]}, class_names=["normal", "lesion"],
        positive_class="lesion", dataset_split="test", operating_point=load_eval_operating_point(tmp_path / "test" / "metrics.json"),
    ))  # fmt: skip
    assert f"predicted where its probability is {point['threshold']:.6g} or more, the threshold chosen on the val" in card


def test_operating_points_are_refused_before_scoring_where_they_cannot_hold(binary, tmp_path):
    folder, data = binary
    with pytest.raises(ValueError, match=r"threshold and target_sensitivity: expected one of them"):
        evaluate_classifier(str(folder), data["val"], threshold=0.3, target_sensitivity=0.9)
    with pytest.raises(ValueError, match=r"threshold: expected a probability strictly between 0 and 1, got 1.5"):
        evaluate_classifier(str(folder), data["val"], threshold=1.5)
    with pytest.raises(ValueError, match=r"target_sensitivity: expected a fraction in \(0, 1\], got 0"):
        evaluate_classifier(str(folder), data["val"], target_sensitivity=0)
    (tmp_path / "plain.json").write_text(json.dumps({"accuracy": 0.5, "positive_class": "lesion"}))
    with pytest.raises(ValueError, match=r"plain.json records no operating point; expected the metrics.json of an"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "plain.json")
    other = {"positive_class": "normal", "operating_point": {"threshold": 0.4, "chosen_on": "val"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"chose its threshold for the positive class 'normal'; this evaluation's is"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "other.json")
    another_model = {**other, "positive_class": "lesion", "model_sha256": "0" * 64}
    (tmp_path / "model.json").write_text(json.dumps(another_model))
    with pytest.raises(ValueError, match=r"was measured on another model \(model_sha256 000000000000\.\.\., this one"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "model.json", model_sha256="1" * 64)
    ten = load_image_classification_data("digits", image_size=16, seed=0)["val"].subset(np.arange(20))
    head = LinearProbeHead(in_features=32, num_classes=10, block="mid_block", timestep=10)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head)
    with pytest.raises(ValueError, match=r"decide between a binary task's two classes; the model has 10 classes"):
        evaluate_classifier(pipe, ten, target_sensitivity=0.9)


def test_the_evaluate_command_chooses_on_val_and_applies_on_test(binary, tmp_path, capsys):
    _, data = binary
    torch.manual_seed(1)
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["0", "1"])
    torch.nn.init.normal_(head.linear.weight, std=2.0)
    folder = tmp_path / "model"  # the classes an .npz's labels name
    UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head,
                                  positive_class="1").save_pretrained(folder)  # fmt: skip
    dataset = tmp_path / "digits.npz"
    arrays = {f"{name}_images": ((data[name].images[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8) for name in data}
    arrays |= {f"{name}_labels": data[name].labels.numpy()[:, None] for name in data}
    arrays["train_images"], arrays["train_labels"] = arrays["val_images"][:4], arrays["val_labels"][:4]
    np.savez(dataset, **arrays)
    common = ["evaluate", "--model_dir", str(folder), "--dataset", str(dataset)]
    main(common + ["--split", "val", "--target_sensitivity", "0.95", "--output_dir", str(tmp_path / "val")])
    main(common + ["--threshold", str(tmp_path / "val" / "metrics.json"), "--output_dir", str(tmp_path / "test")])
    chosen, applied = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("val", "test"))
    assert applied["operating_point"]["threshold"] == chosen["operating_point"]["threshold"]
    assert chosen["sensitivity"] >= 0.95 and math.isfinite(applied["sensitivity"])
    with pytest.raises(SystemExit):
        main(common + ["--threshold", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "x")])
    assert "expected a probability in (0, 1) or a metrics.json file, got" in capsys.readouterr().err

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
from diffusion_classifiers.hub import load_eval_counts, load_eval_operating_point, render_model_card
from diffusion_classifiers.metrics import decision_sentence
from diffusion_classifiers.models import LinearProbeHead, unet_config
from diffusion_classifiers.operating_points import (
    decisions_at,
    given_operating_point,
    positive_log_odds,
    threshold_for_sensitivity,
)


def test_the_threshold_for_a_sensitivity_is_the_largest_that_reaches_it():
    is_positive = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    log_odds = np.array([0.9, 0.8, 0.8, 0.4, 0.2, 0.85, 0.5, 0.1]) * 10
    for target, expected in ((0.2, 9.0), (0.4, 8.0), (0.6, 8.0), (0.61, 4.0), (0.9, 2.0), (1.0, 2.0)):
        point = threshold_for_sensitivity(is_positive, log_odds, target)
        assert point["log_odds"] == expected and point["threshold"] == pytest.approx(1 / (1 + math.exp(-expected)))
        reached = (log_odds[is_positive] >= expected).mean()
        assert reached >= target and not (log_odds[is_positive] > expected).mean() >= target  # the largest
    assert decisions_at(log_odds, 1, {"log_odds": 8.0}).tolist() == [1, 1, 1, 0, 0, 1, 0, 0]
    assert decisions_at(-log_odds, 0, {"log_odds": -5.0}).tolist() == [1, 1, 1, 0, 0, 1, 0, 0]  # class 0's log-odds


def test_saturated_probabilities_are_decided_by_the_pipelines_log_odds():
    """Review: a Score-SDE classifier's probabilities round to exactly 1 in float32 beyond log-odds of about 17; chosen
    on them a threshold was 1.0 (every saturated image positive: sensitivity 0.75 asked 0.5), its logit infinite."""
    log_odds = np.array([120.0, 40.0, 20.0, 5.0, 30.0, -3.0])  # four positives, two negatives
    is_positive = np.array([1, 1, 1, 1, 0, 0], bool)
    probs = torch.sigmoid(torch.tensor(np.stack([-log_odds, log_odds], 1), dtype=torch.float32))
    assert (probs[:, 1] == 1.0).sum() == 4  # saturated
    ranking = torch.tensor(np.stack([-log_odds, log_odds], 1))
    point = threshold_for_sensitivity(is_positive, positive_log_odds(probs, ranking, 1), 0.5)
    assert point["log_odds"] == 40.0 and point["threshold"] == pytest.approx(1.0)
    decided = decisions_at(positive_log_odds(probs, ranking, 1), 1, point)
    assert decided.tolist() == [1, 1, 0, 0, 0, 0]  # sensitivity 0.5 as asked; the negative at 30 stays negative
    plain = positive_log_odds(probs, probs, 1)  # a pipeline without log-odds: from its two probabilities
    # QA (session 60): the other class's float32 probability keeps the log-odds to about 87 (log(p / (1 - p)) of p
    # alone was inf from 16.6); beyond, it underflows to 0
    assert np.isinf(plain[0]) and plain[1:3] == pytest.approx([40.0, 20.0], rel=1e-6)
    assert plain[-1] == pytest.approx(-3.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"has log-odds inf: a probability of exactly 0 or 1, which no threshold"):
        threshold_for_sensitivity(is_positive, plain, 0.25)  # one of four: the saturated one


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """A probe pipeline of two digit classes with a random head (the figures need not be good), saved, and its data."""
    torch.manual_seed(0)
    names = ["normal", "lesion"]
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=names)
    torch.nn.init.normal_(head.linear.weight, std=2.0)
    unet = UNet2DModel(**unet_config("tiny", 16))
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)
    pipe.set_positive_class("lesion")
    folder = tmp_path_factory.mktemp("model") / "pipeline"
    pipe.save_pretrained(folder)
    splits = load_image_classification_data("digits", image_size=16, seed=0)
    binary = {}
    for name in ("val", "test"):
        keep = np.flatnonzero(splits[name].labels.numpy() < 2)
        binary[name] = LabeledImages(splits[name].images[keep], splits[name].labels[keep], ["normal", "lesion"])
    return folder, binary


def _probs(folder, images) -> np.ndarray:
    pipe = UNetFeatureClassifierPipeline.from_pretrained(folder)
    features = pipe.extract_features(images, ["mid_block"], [10])[("mid_block", 10)]
    return torch.softmax(pipe.head(features), -1).detach().numpy()


def test_a_threshold_chosen_on_val_for_a_sensitivity_is_applied_unchanged_to_test(binary, tmp_path):
    folder, data = binary
    chosen = evaluate_classifier(
        str(folder), data["val"], tmp_path / "val", split="val", dataset_name="digits", target_sensitivity=0.9
    )  # fmt: skip
    point = chosen["operating_point"]
    assert (point["target_sensitivity"], point["chosen_on"], point["dataset"]) == (0.9, "val", "digits")
    assert chosen["sensitivity"] >= 0.9
    # QA (an external validation): a Wilson interval was given for a sensitivity fixed by the threshold's choice
    intervals = chosen["confidence_intervals"]
    assert intervals["sensitivity"] is None and intervals["specificity"] is not None
    assert intervals["methods"]["sensitivity"].startswith("none: the threshold was chosen on these very images")
    report = " ".join((tmp_path / "val" / "report.md").read_text().split())
    assert f"predicted where its probability is {point['threshold']:.8g} or more (log-odds {point['log_odds']:.8g} " \
        "or more, which decide), the threshold chosen for a " \
        f"sensitivity of at least 90.00% on the val split of digits, from its {chosen['num_positives']} positive " \
        "images (these very images" in report
    val_metrics = tmp_path / "val" / "metrics.json"
    applied = evaluate_classifier(str(folder), data["test"], tmp_path / "test", threshold=val_metrics)
    assert applied["operating_point"] == {**point, "from": str(val_metrics)}
    assert "by construction" not in (tmp_path / "test" / "report.md").read_text()
    assert applied["confidence_intervals"]["sensitivity"] is not None  # held-out images: an estimate
    # QA (a biostatistician): applied again to the split it was chosen on, the report read as a held-out result
    evaluate_classifier(str(folder), data["val"], tmp_path / "val_again", split="val", dataset_name="digits",
                        threshold=val_metrics)  # fmt: skip
    assert "the sensitivity is met by construction" in (tmp_path / "val_again" / "report.md").read_text()
    again = json.loads((tmp_path / "val_again" / "metrics.json").read_text())
    assert again["confidence_intervals"]["sensitivity"] is None
    unnamed = {**point, "chosen_on": None, "dataset": None, "from": "m.json"}  # review: two unnamed splits
    assert "by construction" not in decision_sentence({"positive_class": "lesion", "per_class": {},
                                                       "operating_point": unnamed}, (None, None))  # fmt: skip
    probs, positives = _probs(folder, data["test"].images), data["test"].labels.numpy() == 1
    expected = decisions_at(positive_log_odds(probs, probs, 1), 1, point)
    assert (expected == np.where(probs[:, 1] >= point["threshold"], 1, 0)).mean() > 0.99  # float32 vs its logit
    assert applied["sensitivity"] == pytest.approx((expected[positives] == 1).mean())
    assert applied["specificity"] == pytest.approx((expected[~positives] == 0).mean())
    at_half = evaluate_classifier(str(folder), data["test"])  # no threshold: the most probable class, as before
    assert "operating_point" not in at_half
    assert at_half["sensitivity"] == pytest.approx((probs[positives].argmax(1) == 1).mean())
    card = str(render_model_card(
        "unet_features", model_name="m", dataset_name="digits", dataset_license="BSD-3-Clause", training_command="t",
        evaluation_command="e", metrics={"sensitivity": applied["sensitivity"]}, class_names=["normal", "lesion"],
        positive_class="lesion", dataset_split="test",
        operating_point=load_eval_operating_point(tmp_path / "test" / "metrics.json"),
    ))  # fmt: skip
    assert f"predicted where its probability is {point['threshold']:.8g} or more (log-odds {point['log_odds']:.8g} " \
        "or more, which decide), the threshold chosen for a" in card
    assert f"`out.probs[:, 1] >= {point['threshold']!r}`" in " ".join(card.split())  # the snippet decides so too


def test_a_card_is_refused_for_figures_at_a_threshold_chosen_on_the_images_they_score(binary, tmp_path, monkeypatch):
    """QA (deployment): `evaluate --split test --target_sensitivity 0.9` then push_to_hub published test sensitivity
    0.90, met by construction."""
    from .test_hub import push_script_argv, run_push_script

    folder, data = binary
    evaluate_classifier(str(folder), data["test"], tmp_path / "test", split="test", target_sensitivity=0.9)
    argv = push_script_argv(folder, tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    argv[argv.index("--metrics_json") + 1] = str(tmp_path / "test" / "metrics.json")
    with pytest.raises(SystemExit, match=r"its threshold was chosen on the images it scores, for a sensitivity of at"):
        run_push_script(monkeypatch, argv)
    evaluate_classifier(  # review: applied by --threshold to the split it was chosen on, it passed
        str(folder), data["test"], tmp_path / "again", split="test", threshold=tmp_path / "test" / "metrics.json"
    )  # fmt: skip
    argv[argv.index("--metrics_json") + 1] = str(tmp_path / "again" / "metrics.json")
    with pytest.raises(SystemExit, match=r"its threshold was chosen on the images it scores"):
        run_push_script(monkeypatch, argv)


def test_operating_points_are_refused_before_scoring_where_they_cannot_hold(binary, tmp_path):
    folder, data = binary
    with pytest.raises(ValueError, match=r"threshold and target_sensitivity: expected one of them"):
        evaluate_classifier(str(folder), data["val"], threshold=0.3, target_sensitivity=0.9)
    with pytest.raises(ValueError, match=r"threshold: expected a probability strictly between 0 and 1, got 1.5"):
        evaluate_classifier(str(folder), data["val"], threshold=1.5)
    with pytest.raises(ValueError, match=r"target_sensitivity: expected a fraction in \(0, 1\], got 0"):
        evaluate_classifier(str(folder), data["val"], target_sensitivity=0)
    (tmp_path / "plain.json").write_text(json.dumps({"accuracy": 0.5, "positive_class": "lesion"}))
    with pytest.raises(ValueError, match=r"plain.json records no operating point \(a threshold strictly between 0"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "plain.json")
    saturated = {"positive_class": "lesion", "operating_point": {"threshold": 1.0, "chosen_on": "val"}}
    (tmp_path / "one.json").write_text(json.dumps(saturated))  # review: typed, 1.0 is refused; read, it was applied
    with pytest.raises(ValueError, match=r"one.json records no operating point"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "one.json")
    called = {**saturated, "operating_point": {"threshold": 0.9, "log_odds": 2.2},
              "pipeline_call": {"priors": [0.9, 0.1], "seed": 1}}  # fmt: skip
    (tmp_path / "call.json").write_text(json.dumps(called))  # review: chosen with priors, applied without
    with pytest.raises(ValueError, match=r"call.json was chosen with the pipeline called otherwise \(priors: "):
        given_operating_point(tmp_path / "call.json", None, ["normal", "lesion"], 1, None, {"priors": None, "seed": 1})
    same_but_seed = given_operating_point(tmp_path / "call.json", None, ["normal", "lesion"], 1, None, {
        "priors": [0.9, 0.1], "seed": 7})  # another seed redraws the noise only
    assert same_but_seed["log_odds"] == 2.2
    negatives = data["val"].subset(np.flatnonzero(data["val"].labels.numpy() == 0))
    with pytest.raises(ValueError, match=r"target_sensitivity: the images to score hold no 'lesion' image"):
        evaluate_classifier(_refusing_to_score(folder), negatives, target_sensitivity=0.9)  # before any is scored
    other = {"positive_class": "normal", "operating_point": {"threshold": 0.4, "log_odds": -0.4}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"chose its threshold for the positive class 'normal'; this run's is"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "other.json")
    another_model = {**other, "positive_class": "lesion", "model_sha256": "0" * 64}
    (tmp_path / "model.json").write_text(json.dumps(another_model))
    with pytest.raises(ValueError, match=r"was measured on another model \(model_sha256 000000000000\.\.\., this one"):
        evaluate_classifier(str(folder), data["test"], threshold=tmp_path / "model.json", model_sha256="1" * 64)
    ten = load_image_classification_data("digits", image_size=16, seed=0)["val"].subset(np.arange(20))
    head = LinearProbeHead(in_features=32, num_classes=10, block="mid_block", timestep=10)
    unet = UNet2DModel(**unet_config("tiny", 16))
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)
    with pytest.raises(ValueError, match=r"decide between a binary task's two classes; the model has 10 classes"):
        evaluate_classifier(pipe, ten, target_sensitivity=0.9)


def _refusing_to_score(folder):
    pipe = UNetFeatureClassifierPipeline.from_pretrained(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("scored an image")

    pipe.head.forward = refuse
    return pipe


def test_the_evaluate_command_chooses_on_val_and_applies_on_test(binary, tmp_path, capsys):
    _, data = binary
    torch.manual_seed(1)
    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["0", "1"])
    torch.nn.init.normal_(head.linear.weight, std=2.0)
    folder = tmp_path / "model"  # the classes an .npz's labels name
    UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head,
                                  positive_class="1").save_pretrained(folder)  # fmt: skip
    dataset = tmp_path / "digits.npz"
    pixels = {name: ((data[name].images[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8) for name in data}
    arrays = {f"{name}_images": pixels[name] for name in data}
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
    # QA (session 60): a mistyped path was told only that it was no probability
    assert f"a metrics.json file; {tmp_path / 'missing.json'}: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(common + ["--threshold", "high", "--output_dir", str(tmp_path / "x")])
    assert "expected a probability in (0, 1) or a metrics.json file; got 'high'" in capsys.readouterr().err


def test_predict_labels_new_images_at_the_operating_point_chosen_on_val(binary, tmp_path, capsys):
    """QA (deployment): predict labelled each image's most probable class whatever threshold was chosen."""
    import csv

    from PIL import Image

    folder, data = binary
    evaluate_classifier(str(folder), data["val"], tmp_path / "val", split="val", target_sensitivity=0.9)
    point = json.loads((tmp_path / "val" / "metrics.json").read_text())["operating_point"]
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(data["test"].images[:40]):
        pixels = ((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{index:03d}.png")
    output = tmp_path / "p.csv"
    predict = ["predict", "--model_dir", str(folder), "--input", str(images), "--output", str(output),
               "--no_progress_bar"]  # fmt: skip
    main(predict + ["--threshold", str(tmp_path / "val" / "metrics.json")])
    rows = list(csv.DictReader(output.open()))
    lesion = np.array([float(row["prob_lesion"]) for row in rows])
    expected = np.where(np.log(lesion) - np.log1p(-lesion) >= point["log_odds"], "lesion", "normal")
    assert [row["label"] for row in rows] == expected.tolist()
    assert json.loads(output.with_name("p.csv.json").read_text())["operating_point"]["positive_class"] == "lesion"
    with pytest.raises(ValueError, match=r"written by another prediction \(operating_point: "):
        main(predict)  # the rows labelled at the threshold are not mixed with rows labelled at 0.5
    strict = float(np.quantile(lesion, 0.5))  # typed, above half of them: labels other than the most probable
    main(predict[:-3] + ["--output", str(tmp_path / "q.csv"), "--no_progress_bar", "--threshold", repr(strict)])
    labels = [row["label"] for row in csv.DictReader((tmp_path / "q.csv").open())]
    assert labels == np.where(lesion >= strict, "lesion", "normal").tolist() and labels.count("normal") >= 19


def test_aggregate_decides_groups_at_the_operating_point_predict_labelled_at(binary, tmp_path, capsys):
    """QA (deployment): aggregate decided studies at 0.5 over images predict had labelled at val's threshold, and
    refused a metrics.json as --threshold."""
    import csv

    from PIL import Image

    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    folder, data = binary
    evaluate_classifier(str(folder), data["val"], tmp_path / "val", split="val", target_sensitivity=0.9)
    val_metrics = tmp_path / "val" / "metrics.json"
    point = json.loads(val_metrics.read_text())["operating_point"]
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for index, image in enumerate(data["test"].images[:20]):
        Image.fromarray(((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(images / f"{index:02d}.png")
        rows.append([f"images/{index:02d}.png", f"study{index // 2}"])
    with (tmp_path / "list.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "study_uid"], *rows])
    output = tmp_path / "p.csv"
    main(["predict", "--model_dir", str(folder), "--input", str(tmp_path / "list.csv"), "--output", str(output),
          "--no_progress_bar", "--threshold", str(val_metrics)])  # fmt: skip
    columns, groups, _ = aggregate_predictions(output, by="study_uid")
    capsys.readouterr()
    main(["aggregate", "--predictions", str(output), "--by", "study_uid"])
    said = capsys.readouterr().err
    assert f"note: groups decided at the operating point of {output}.json (the predict run's): " in said
    largest = [max(float(r["prob_lesion"]) for r in csv.DictReader(output.open()) if r["study_uid"] == g[0])
               for g in groups]  # fmt: skip
    assert [g[columns.index("label")] for g in groups] == [
        "lesion" if value >= point["threshold"] else "normal" for value in largest
    ]
    named = aggregate_predictions(output, by="study_uid", threshold=str(val_metrics))[1]
    assert named == groups  # the same point, named


def test_review_a_rerun_names_the_file_otherwise_and_aggregate_follows_the_points_class(binary, tmp_path, capsys):
    """Second read: a rerun giving the same metrics.json by another spelling was refused (the path was compared); a
    point of the other class left aggregate deciding at 0.5 without a word; a saturated point's card told readers to
    threshold probabilities of 1."""
    from PIL import Image

    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    folder, data = binary
    evaluate_classifier(
        str(folder), data["val"], tmp_path / "val", split="val", target_sensitivity=0.9, positive_class="normal"
    )  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(data["test"].images[:6]):
        Image.fromarray(((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(images / f"{index}.png")
    output = tmp_path / "p.csv"
    predict = ["predict", "--model_dir", str(folder), "--input", str(images), "--output", str(output),
               "--no_progress_bar", "--threshold"]  # fmt: skip
    main(predict + [str(tmp_path / "val" / "metrics.json")])
    main(predict + [str(tmp_path / "val" / ".." / "val" / "metrics.json")])  # the same file: resumed, nothing to do
    sidecar = json.loads(output.with_name("p.csv.json").read_text())
    assert sidecar["run"]["positive_class"] == "normal"  # the class the labels were decided about: aggregate's
    capsys.readouterr()
    main(["aggregate", "--predictions", str(output), "--by", "path"])
    assert "note: groups decided at the operating point of" in capsys.readouterr().err
    main(["aggregate", "--predictions", str(output), "--by", "path", "--positive_class", "lesion", "--overwrite"])
    said = " ".join(capsys.readouterr().err.split())
    assert "labelled its images at an operating point of normal, not lesion: groups of lesion are not decided" in said
    saturated = {"threshold": 1.0, "log_odds": 40.0, "target_sensitivity": 0.9, "chosen_on": "val", "from": "v.json"}
    card = " ".join(str(render_model_card(
        "score_sde", model_name="m", dataset_name="d", dataset_license="CC0-1.0", training_command="t",
        evaluation_command="e", metrics={"sensitivity": 0.9}, class_names=["normal", "lesion"], positive_class="lesion",
        dataset_split="test", operating_point=saturated,
    )).split())  # fmt: skip
    assert "an image is **lesion** where its log-odds are 40.0 or more (a probability that rounds to 1.0)" in card
    assert "`out.log_odds[:, 1] >= 40.0`" in card and "out.probs[:, 1] >= 1.0" not in card


def test_predict_takes_the_positive_class_a_numeric_threshold_decides_about(binary, tmp_path):
    """QA (three methods compared): predict alone of the commands had no --positive_class."""
    import csv

    from PIL import Image

    folder, data = binary
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(data["test"].images[:8]):
        Image.fromarray(((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(images / f"{index}.png")
    output = tmp_path / "p.csv"
    main(["predict", "--model_dir", str(folder), "--input", str(images), "--output", str(output), "--no_progress_bar",
          "--positive_class", "normal", "--threshold", "0.2"])  # fmt: skip
    rows = list(csv.DictReader(output.open()))
    expected = ["normal" if float(row["prob_normal"]) >= 0.2 else "lesion" for row in rows]
    assert [row["label"] for row in rows] == expected
    assert json.loads(output.with_name("p.csv.json").read_text())["run"]["positive_class"] == "normal"
    evaluate_classifier(str(folder), data["val"], tmp_path / "val", split="val", target_sensitivity=0.9)  # lesion's
    with pytest.raises(ValueError, match=r"--positive_class normal: .*metrics.json chose its threshold for lesion"):
        main(["predict", "--model_dir", str(folder), "--input", str(images), "--output", str(tmp_path / "q.csv"),
              "--positive_class", "normal", "--threshold", str(tmp_path / "val" / "metrics.json")])  # fmt: skip


def test_a_binary_report_states_the_prevalence_its_predictive_values_hold_at(binary, tmp_path):
    """QA (a clinician): a PPV of 89.38% was given without the test set's 62.5% of pneumonia it holds at, read as a
    positive call's worth anywhere; `--prevalence` gives the PPV and NPV where the model is to be used."""
    from diffusion_classifiers.metrics import predictive_values_at

    folder, data = binary
    scored = evaluate_classifier(str(folder), data["test"], tmp_path / "own")
    support, total = scored["per_class"]["lesion"]["support"], scored["num_samples"]
    own = f"those of this set, whose prevalence of lesion is {100 * support / total:.2f}% ({support} of {total} images)"
    report = (tmp_path / "own" / "report.md").read_text()
    assert f"The PPV, NPV, precisions, F1s, ECE and precision-recall curve below are {own}: a population" in report
    screening = evaluate_classifier(str(folder), data["test"], tmp_path / "screening", prevalence=0.01)
    at = predictive_values_at(0.01, screening)
    assert screening["at_prevalence"] == at and at["positive_predictive_value"] < screening["positive_precision"]
    ppv = f"{100 * at['positive_predictive_value']:.2f}%"
    assert f"; where lesion is 1.00% of the images, this sensitivity and specificity give a PPV of {ppv}" in (
        tmp_path / "screening" / "report.md").read_text()
    for bad in (0, 1.0, True):
        with pytest.raises(ValueError, match=r"prevalence: expected a fraction of the images in \(0, 1\)"):
            evaluate_classifier(str(folder), data["test"], prevalence=bad)


def test_an_operating_points_report_says_its_calibration_is_of_the_most_probable_class(binary, tmp_path):
    """QA (a clinician): the reliability diagram's accuracy (of the most probable class) disagreed with the report's
    accuracy at its threshold, without a word."""
    folder, data = binary
    evaluate_classifier(str(folder), data["test"], tmp_path / "point", threshold=0.3)
    assert "The ECE and the reliability diagram are of each image's most probable class, not of the decisions" in (
        tmp_path / "point" / "report.md").read_text()
    evaluate_classifier(str(folder), data["test"], tmp_path / "argmax")
    assert "reliability diagram are of" not in (tmp_path / "argmax" / "report.md").read_text()


def test_a_card_names_the_threshold_file_without_its_local_folder(binary, tmp_path):
    """QA (a clinician): the card published `/tmp/.../eval-val/metrics.json`, a local path (a user's home, a site)."""
    folder, data = binary
    evaluate_classifier(str(folder), data["val"], tmp_path / "val", split="val", target_sensitivity=0.9)
    evaluate_classifier(str(folder), data["test"], tmp_path / "test", threshold=tmp_path / "val" / "metrics.json")
    card = str(render_model_card(
        "unet_features", model_name="m", dataset_name="digits", dataset_license="BSD-3-Clause", training_command="t",
        evaluation_command="e", metrics={"sensitivity": 0.9}, class_names=["normal", "lesion"],
        positive_class="lesion", dataset_split="test",
        operating_point=load_eval_operating_point(tmp_path / "test" / "metrics.json"),
    ))  # fmt: skip
    assert "(read from `metrics.json`)" in card and str(tmp_path) not in card


def test_a_card_counts_the_images_scored_that_its_figures_are_optimistic_on(tmp_path):
    """QA (a clinician): report.md counted 516 of 1,140 images scored as val images the head was chosen on; the card
    only hedged ("if it is the model's own training data ..."), and published the figures without the count."""
    recorded = {"num_samples": 1140, "images_the_head_was_chosen_on": 516,
                "training_images_also_in_the_data_train_split": 8, "accuracy": 0.9}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(recorded))
    counts = load_eval_counts(tmp_path / "metrics.json")
    assert (counts["num_selection_images"], counts["num_training_copies"]) == (516, 8)
    card = " ".join(str(render_model_card(
        "unet_features", model_name="m", dataset_name="digits", dataset_license="BSD-3-Clause", training_command="t",
        evaluation_command="e", metrics={"accuracy": 0.9}, class_names=["normal", "lesion"], dataset_split="all",
        **counts,
    )).split())  # fmt: skip
    assert "**516 of the 1140 images scored are val images the model's head was chosen on**: these figures" in card
    assert "**8 of the 1140 images scored are images the model was trained on**, copies of images the data's" in card

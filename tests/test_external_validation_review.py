"""QA (session 59): a lab validating a model on another site's images, and a screening programme choosing operating
points. The model's own preprocessed tensors of a background-normalised model were normalised a second time (21 of
60 FlowCam images refused, the others changed); a class name differing only in case or spaces was refused without
saying so; a card named the training data for a split carved from other data; the card's model index said
"Sensitivity" without the class; `aggregate --threshold` was ignored under the mean rule."""

import json
import unicodedata

import numpy as np
import pytest
import torch

from diffusion_classifiers.cli import main
from diffusion_classifiers.data import ImagePreprocessing, load_image_classification_data
from diffusion_classifiers.hub import render_model_card
from diffusion_classifiers.validation import near_miss_note, unicode_normalisation_note

from .conftest import shared_data
from .test_predict import _slice_predictions


def test_a_background_normalised_models_own_tensors_are_read_unchanged():
    flowcam = shared_data("plankton_flowcam_demo", "images")
    contract = ImagePreprocessing(16, 1, resize_mode="pad", normalize_background=True)  # black pad bars: dark borders
    splits = load_image_classification_data(str(flowcam), **contract.loader_kwargs, seed=0)
    images = torch.cat([splits[name].images for name in ("train", "val", "test")])
    torch.testing.assert_close(contract(images), images, rtol=0, atol=0)  # was: ValueError, a dark background
    torch.testing.assert_close(contract(list(images)), images, rtol=0, atol=0)  # one [C, H, W] tensor at a time
    elongated = images[:, :, :, 2:-2]  # not the contract's size: a picture to read, normalised as before
    with pytest.raises(ValueError, match=r"normalize_background: image \d+ has a background level of"):
        contract(elongated)


def test_a_class_name_differing_only_in_case_or_spaces_is_named_so():
    note = near_miss_note(["Noctilucales", "detritus ", "Ciliophora"], ["noctilucales", "detritus", "diatom"])
    assert "'Noctilucales' differs from 'noctilucales' only in letter case" in note
    assert "'detritus ' differs from 'detritus' only in surrounding spaces" in note
    assert "Ciliophora" not in note and note.endswith("write them as the model does)")
    nfd = unicodedata.normalize("NFD", "Détritus")  # review: both at once, and several matches, named
    both = f"{nfd!r} differs from 'détritus' only in Unicode normalisation (NFD vs NFC) and letter case"
    assert both in near_miss_note([nfd], ["détritus"])
    assert "'CAT' differs from 'Cat' or 'cat' only in letter case" in near_miss_note(["CAT"], ["Cat", "cat"])
    # QA (another site's folders): another separator between the words of a class name
    note = near_miss_note(["diatom chain string", "Diatom-Chain-String"], ["diatom_chain_string"])
    assert "'diatom chain string' differs from 'diatom_chain_string' only in the separators between words" in note
    assert "'Diatom-Chain-String' differs from 'diatom_chain_string' only in letter case and the separators" in note
    assert unicode_normalisation_note is near_miss_note  # the name of earlier versions


def _card(**overrides) -> str:
    metrics = {"accuracy": 0.9, "sensitivity": 0.8, "specificity": 0.95, "average_precision": 0.85}
    fields = dict(
        model_name="m", dataset_name="NDSB subset", dataset_license="CC0-1.0", training_command="t",
        evaluation_command="e", metrics=metrics, class_names=["normal", "pneumonia"], positive_class="pneumonia",
        dataset_split="test",
    )  # fmt: skip
    return str(render_model_card("unet_features", **{**fields, **overrides}))


def test_the_card_names_the_positive_class_of_its_metrics_and_where_the_split_was_read_from():
    card = _card(eval_data_source="siteB2")
    assert "Results on the `test` split of NDSB subset (read from `siteB2`)" in card
    assert "name: Sensitivity (pneumonia positive)" in card and "name: Specificity (pneumonia positive)" in card
    assert "name: Average precision (PR AUC, pneumonia positive)" in card and "pos_label: pneumonia" in card
    assert "| Sensitivity (pneumonia positive) | 0.8000 |" in card
    assert "| Accuracy | 0.9000 |" in card and "read from" not in _card()


def test_the_push_script_shows_what_the_split_was_read_from(monkeypatch, tmp_path):
    """A test split evaluate carved from another site's folder (`--split all` forgotten): metrics.json records the
    folder, which the card shows beside the training data's name the script was given."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.models import LinearProbeHead, unet_config

    from .test_hub import METRICS, push_script_argv, run_push_script

    head = LinearProbeHead(in_features=32, num_classes=2, block="mid_block", timestep=10, class_names=["a", "b"])
    UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head
    ).save_pretrained(tmp_path / "model")
    argv = push_script_argv(tmp_path / "model", tmp_path, "--dry_run", "--output_dir", str(tmp_path / "card"))
    (tmp_path / "metrics.json").write_text(json.dumps({**METRICS, "split": "test", "dataset": "siteB2"}))
    run_push_script(monkeypatch, argv)
    card = " ".join((tmp_path / "card" / "README.md").read_text().split())
    assert "Results on the `test` split of scikit-learn digits (read from `siteB2`)" in card


def test_aggregate_applies_a_threshold_under_the_mean_rule_and_records_it(tmp_path):
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions

    _slice_predictions(tmp_path / "p.csv")  # scan s1: bleed 0.1, 0.7, 0.2 (mean 1/3); s2: 0.4, 0.3
    _, rows, metrics = aggregate_predictions(tmp_path / "p.csv", rule="mean")
    assert [row[5] for row in rows] == ["normal", "normal"] and "threshold" not in metrics  # the most probable
    _, rows, metrics = aggregate_predictions(tmp_path / "p.csv", rule="mean", threshold=0.3)
    assert [row[5] for row in rows] == ["bleed", "bleed"] and metrics["threshold"] == 0.3  # means 1/3 and 0.35
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--rule", "mean", "--threshold", "0.3"])
    recorded = json.loads((tmp_path / "p.mean_by_study_uid.metrics.json").read_text())
    assert recorded["threshold"] == 0.3 and recorded["sensitivity"] == 1.0
    assert aggregate_predictions(tmp_path / "p.csv", rule="max")[2]["threshold"] == 0.5  # as before


def test_a_threshold_for_predictions_of_more_than_two_classes_is_refused(tmp_path):
    from diffusion_classifiers.prediction.aggregate import aggregate_predictions
    from diffusion_classifiers.prediction.outputs import write_csv

    columns = ["path", "study_uid", "label", "score", "prob_a", "prob_b", "prob_c"]
    write_csv(tmp_path / "p.csv", columns, [["x.png", "s", "a", 0.5, 0.5, 0.3, 0.2]])
    with pytest.raises(ValueError, match=r"threshold: decides binary predictions .* 3 classes \['a', 'b', 'c'\]"):
        aggregate_predictions(tmp_path / "p.csv", rule="mean", threshold=0.3)
    columns, rows, _ = aggregate_predictions(tmp_path / "p.csv", rule="mean")
    assert rows[0][columns.index("label")] == "a" and np.isclose(rows[0][columns.index("prob_a")], 0.5)


def test_evaluating_the_split_a_probe_was_chosen_on_says_its_figures_are_optimistic(tmp_path):
    """QA (screening): `evaluate --split val` of a probe reported 95.99% (test: 87.34%) without a word."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline, export_unet_feature_pipeline
    from diffusion_classifiers.evaluation import evaluate_classifier
    from diffusion_classifiers.models import LinearProbeHead, unet_config

    torch.manual_seed(0)
    head = LinearProbeHead(in_features=32, num_classes=10, block="mid_block", timestep=10)
    unet = UNet2DModel(**unet_config("tiny", 16))
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)
    pipe.set_progress_bar_config(disable=True)
    export_unet_feature_pipeline(pipe, tmp_path / "exported")
    val = load_image_classification_data("digits", image_size=16, seed=0)["val"].subset(np.arange(30))
    for index, classifier in enumerate((pipe, str(tmp_path / "exported"))):
        metrics = evaluate_classifier(classifier, val, tmp_path / f"val{index}", split="val")
        assert metrics["head_chosen_on_a_val_split"] is True
        report = (tmp_path / f"val{index}" / "report.md").read_text()
        assert "**A val split**: where it is the one the model's head was chosen on (a U-Net-feature model's" in report
    assert "head_chosen_on_a_val_split" not in evaluate_classifier(pipe, val, split="test")


def test_predictive_values_at_a_stated_prevalence_are_bayes_rule():
    from diffusion_classifiers.metrics import predictive_values_at

    metrics = {"sensitivity": 0.836, "specificity": 0.868, "num_positives": 390, "num_samples": 624}
    at = predictive_values_at(0.01, metrics)
    assert at["positive_predictive_value"] == pytest.approx(0.836 * 0.01 / (0.836 * 0.01 + 0.132 * 0.99))  # 6.0%
    assert at["negative_predictive_value"] == pytest.approx(0.868 * 0.99 / (0.868 * 0.99 + 0.164 * 0.01))
    assert at["scored_prevalence"] == pytest.approx(0.625) and at["prevalence"] == 0.01
    assert predictive_values_at(0.5, {"sensitivity": 0.0, "specificity": 1.0})["positive_predictive_value"] is None


def test_a_report_scored_with_priors_gives_the_predictive_values_at_their_prevalence(tmp_path):
    """QA (screening): priors [0.99, 0.01] beside "precision of pneumonia 91.32%", of the test split's 62.5%."""
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import ScoreSDEClassifierPipeline
    from diffusion_classifiers.data import LabeledImages
    from diffusion_classifiers.evaluation import evaluate_classifier
    from diffusion_classifiers.metrics import predictive_values_at
    from diffusion_classifiers.models import unet_config

    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    pipe = ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=["normal", "pneumonia"])
    pipe.set_progress_bar_config(disable=True)
    pipe.set_positive_class("pneumonia")
    labels = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1])
    data = LabeledImages(torch.rand(8, 1, 8, 8) * 2 - 1, labels, ["normal", "pneumonia"])
    priors = {"normal": 0.99, "pneumonia": 0.01}
    metrics = evaluate_classifier(pipe, data, tmp_path, pipeline_kwargs={"num_timesteps": 2, "priors": priors})
    assert metrics["at_priors"] == predictive_values_at(0.01, metrics)
    assert metrics["at_priors"]["scored_prevalence"] == 0.75
    report = " ".join((tmp_path / "report.md").read_text().split())
    assert "Scored with priors that give pneumonia a prevalence of 1.00%: the precisions, F1s, ECE and precision-" \
        "recall curve below are those of this set, whose prevalence of pneumonia is 75.00%" in report
    assert "at_priors" not in evaluate_classifier(pipe, data, pipeline_kwargs={"num_timesteps": 2})

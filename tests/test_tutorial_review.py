"""The U-Net-feature path of the README as a tutorial author followed it: a classifier probed in Python keeps the
record of the images it was trained on, and `evaluate_classifier` refuses images read otherwise than the model reads
them (scored as they are, they measured other images than the model is given)."""

import dataclasses

import pytest

from diffusion_classifiers import (
    DiffusionClassifierPipeline,
    evaluate_classifier,
    load_image_classification_data,
    run_unet_feature_study,
)

from .test_python_path_review import recorded_model  # noqa: F401 (a fixture)


def few_per_class(split, count):
    index = [i for c in range(split.num_classes) for i in (split.labels == c).nonzero().flatten()[:count].tolist()]
    return split.subset(index)


def test_a_study_given_the_unets_record_saves_a_classifier_that_refuses_its_training_images(recorded_model, tmp_path):
    """QA: the README's `run_unet_feature_study(pipe.unet, pipe.scheduler, splits, ...)` saved a classifier with no
    data_splits.json, which then scored its own train split (73.7%) without a word."""
    folder, _ = recorded_model
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    splits = load_image_classification_data("digits", **pipe.loader_kwargs)
    splits = {"train": few_per_class(splits["train"], 6), "val": few_per_class(splits["val"], 3),
              "test": few_per_class(splits["test"], 3)}  # fmt: skip
    study = run_unet_feature_study(
        pipe.unet, pipe.scheduler, splits, blocks=["mid_block"], timesteps=[10], show_progress=False,
        split_record=pipe.split_record,
    )  # fmt: skip
    study.pipeline.save_pretrained(tmp_path / "classifier")
    classifier = DiffusionClassifierPipeline.from_pretrained(tmp_path / "classifier")
    assert classifier.loader_kwargs["test_fraction"] == pipe.loader_kwargs["test_fraction"]
    with pytest.raises(ValueError, match=r"60 of 60 images of .* are images the model was trained on"):
        evaluate_classifier(classifier, splits["train"])
    metrics = evaluate_classifier(classifier, splits["test"])
    assert metrics["training_images_checked"] is True and metrics["num_samples"] == 30


def test_evaluate_refuses_images_read_otherwise_than_the_model_reads_them(recorded_model):
    """QA: a folder read without `**pipe.loader_kwargs` (stretched where the model pads) was scored 50% for 62.5%,
    its metrics.json recording the model's reading; at another size, training images passed the fingerprint check."""
    folder, _ = recorded_model
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    test = few_per_class(load_image_classification_data("digits", **pipe.loader_kwargs)["test"], 2)
    other = dataclasses.replace(test, preprocessing=dataclasses.replace(test.preprocessing, image_size=8,
                                                                        resize_mode="pad"))  # fmt: skip
    with pytest.raises(ValueError, match=r"dataset: read otherwise than the model reads images: image_size 8 \(the "
                                         r"model's: 16\); resize_mode 'pad' \(the model's: 'stretch'\); expected the "
                                         r"model's reading: load_image_classification_data"):  # fmt: skip
        evaluate_classifier(pipe, other)


def test_evaluate_names_what_it_takes_when_given_every_split(recorded_model):
    folder, _ = recorded_model
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    splits = load_image_classification_data("digits", **pipe.loader_kwargs)
    with pytest.raises(TypeError, match=r"dataset: expected one split, .* got a dict of splits \['test', 'train', "
                                        r"'val'\]: pass one of them, e.g. splits\[\"test\"\]"):  # fmt: skip
        evaluate_classifier(pipe, splits)
    with pytest.raises(TypeError, match=r"dataset: expected one split, .* got Tensor"):
        evaluate_classifier(pipe, splits["test"].images)

"""The same images kept three ways (an image folder, a CSV of paths, a saved `datasets` Dataset): a model's recorded
class names read every copy, data of other classes is refused by name, not as training images, and a refusal of
training images in a carved split names a reordered copy as a cause (QA, a plankton lab's three copies of its data)."""

import csv

import datasets
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.data import LabeledImages, load_image_classification_data
from diffusion_classifiers.data.split_record import image_fingerprints
from diffusion_classifiers.data.streaming import streaming_image_classification_data
from diffusion_classifiers.evaluation import evaluate_classifier
from diffusion_classifiers.models import LinearProbeHead, unet_config

CLASSES = ["cat", "dog"]
READING = {"image_size": 8, "num_channels": 1}


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """10 images per class as a folder, a CSV of the folder's files and a saved Dataset; `{kind: path}`."""
    root = tmp_path_factory.mktemp("copies")
    rows, images = [], []
    for label, name in enumerate(CLASSES):
        (root / "folder" / name).mkdir(parents=True)
        for index in range(10):
            image = Image.fromarray(np.full((8, 8), 10 * index + 120 * label, dtype=np.uint8))
            image.save(root / "folder" / name / f"{index}.png")
            rows.append((f"folder/{name}/{index}.png", name))
            images.append(image)
    with open(root / "labels.csv", "w", newline="") as file:
        csv.writer(file).writerows([("path", "label"), *rows])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    labels = [CLASSES.index(name) for _, name in rows]
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(root / "saved")
    return {"folder": str(root / "folder"), "csv": str(root / "labels.csv"), "saved": str(root / "saved")}


@pytest.mark.parametrize("kind", ["folder", "saved"])
@pytest.mark.parametrize("loader", [load_image_classification_data, streaming_image_classification_data])
def test_a_models_recorded_class_names_read_a_copy_that_carries_the_same(copies, kind, loader):
    """A model trained on the CSV with --class_names records them (`pipe.loader_kwargs`): the folder and the saved
    Dataset of the same images were refused ("only digits, .npz, IDX and CSV sources take class_names"). Their own
    names in their order are now accepted as a check."""
    splits = loader(copies[kind], class_names=CLASSES, **READING)
    plain = loader(copies[kind], **READING)
    assert splits["test"].class_names == CLASSES
    assert all(torch.equal(splits[name].labels, plain[name].labels) for name in ("train", "val", "test"))


@pytest.mark.parametrize("kind", ["folder", "saved"])
@pytest.mark.parametrize("loader", [load_image_classification_data, streaming_image_classification_data])
@pytest.mark.parametrize("names", [["dog", "cat"], ["cat"], ["cat", "dog", "fox"]])
def test_class_names_that_would_rename_or_renumber_a_copys_classes_are_refused(copies, kind, loader, names):
    """Second read: names accepted and not applied were recorded by the training scripts as the data's, and numbered
    a CSV copy's classes otherwise at evaluation (3 of 4 test images training images)."""
    with pytest.raises(ValueError, match=r"are not the source's own classes \['cat', 'dog'\] in their order"):
        loader(copies[kind], class_names=names, **READING)


@pytest.mark.parametrize("loader", [load_image_classification_data, streaming_image_classification_data])
def test_class_names_of_unlabeled_or_id_sources_keep_their_readers_errors(copies, tmp_path, loader):
    with pytest.raises(ValueError, match=r"unlabeled data has no classes to name"):
        loader(copies["folder"], class_names=CLASSES, unlabeled=True, **READING)
    np.savez(tmp_path / "x.npz", train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([0, 1, 0, 1]))
    if loader is streaming_image_classification_data:  # second read: a TypeError
        with pytest.raises(ValueError, match=r"is a file; expected an image folder, a .csv file or a dataset"):
            loader(str(tmp_path / "x.npz"), class_names=CLASSES, **READING)
    else:
        with pytest.raises(ValueError, match=r"unlabeled: expected an image folder .*, got a npz source"):
            loader(str(tmp_path / "x.npz"), class_names=CLASSES, unlabeled=True, **READING)


@pytest.fixture(scope="module")
def cat_dog_pipeline():
    torch.manual_seed(0)
    config = unet_config("tiny", 8)
    config.update(in_channels=1, out_channels=1, block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=4)
    head = LinearProbeHead(16, 2, class_names=CLASSES, block="mid_block", timestep=50)
    pipe = UNetFeatureClassifierPipeline(UNet2DModel(**config), DDPMScheduler(), head=head)
    pipe.set_positive_class("dog")
    return pipe


def test_data_of_other_classes_is_refused_by_name_before_being_called_training_images(cat_dog_pipeline):
    """QA: `evaluate --label_column coarse_label` (another ClassLabel of the same images) said that 47 of 64 test
    images were training images; the classes it named are what is wrong."""
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    other = LabeledImages(images, torch.tensor([0, 1, 2, 0, 1, 2]), ["animal", "nonliving", "protist"])
    with pytest.raises(ValueError, match=r"\['animal', 'nonliving', 'protist'\] are not among the model's classes"):
        evaluate_classifier(cat_dog_pipeline, other, train_fingerprints=image_fingerprints(images))


def test_training_images_in_a_split_name_a_reordered_copy_as_a_cause(cat_dog_pipeline):
    """QA: a CSV listing the model's images in another order carves other splits from the same seed; the refusal
    named a folder that grew or a re-export only."""
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    split = LabeledImages(images, torch.tensor([0, 1, 0, 1, 0, 1]), CLASSES)
    with pytest.raises(ValueError, match=r"listed in another order: a CSV's rows reordered, or the classes numbered"):
        evaluate_classifier(cat_dog_pipeline, split, train_fingerprints=image_fingerprints(images[:2]))


@pytest.mark.parametrize("loader", [load_image_classification_data, streaming_image_classification_data])
def test_a_wrong_column_of_a_saved_dataset_is_refused_naming_the_dataset(copies, loader):
    """QA: "label column 'site' has type Value('string'); expected ClassLabel" did not say whose column it was."""
    with pytest.raises(ValueError, match=r"^dataset .*saved: label column 'image' has type Image"):
        loader(copies["saved"], label_column="image", **READING)
    with pytest.raises(ValueError, match=r"^dataset .*saved: image column 'img' not found"):
        loader(copies["saved"], image_column="img", **READING)


def test_predicts_inputs_name_the_dataset_whose_column_is_wrong(copies):
    """QA (a datasets user): predict's "image column 'img' not found" did not say whose column it was."""
    from diffusion_classifiers.prediction import list_inputs

    with pytest.raises(ValueError, match=r"^dataset .*saved: image column 'img' not found"):
        list_inputs(copies["saved"], image_column="img")
    with pytest.raises(ValueError, match=r"^dataset .*saved: label column 'image' has type Image"):
        list_inputs(copies["saved"], label_column="image")

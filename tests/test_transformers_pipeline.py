"""transformers' `pipeline()` on files whose bit depth its `load_image` loses: the package's pipeline class keeps it."""

import numpy as np
import pydicom
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import (
    DiffusionClassifierImageClassificationPipeline,
    UNetFeatureClassifierPipeline,
    export_unet_feature_pipeline,
)
from diffusion_classifiers.models import LinearProbeHead, unet_config

from .test_dicom import pydicom_file, write_dicom


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    head = LinearProbeHead(32, 2, block="down_blocks.1", timestep=50, class_names=["normal", "bleed"])
    torch.nn.init.normal_(head.linear.weight, std=0.3)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(), head=head)
    pipe.set_preprocessing({"medical": {"bits_stored": 12, "windows": ["brain"]}})
    path = tmp_path_factory.mktemp("exported")
    export_unet_feature_pipeline(pipe, path)
    return path


def test_16_bit_files_and_dicom_keep_their_depth(exported, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    processor, model = AutoImageProcessor.from_pretrained(exported), AutoModelForImageClassification.from_pretrained(exported)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):  # 12-bit radiographs, values far above 255
        paths.append(tmp_path / f"x{i}.png")
        Image.fromarray(rng.integers(0, 4096, (20, 20)).astype(np.uint16)).save(paths[-1])
    write_dicom(pydicom.dcmread(pydicom_file("CT_small.dcm")), tmp_path / "ct.dcm")
    paths.append(tmp_path / "ct.dcm")
    with torch.no_grad():
        expected = model(**processor([str(p) for p in paths])).logits.softmax(-1)

    classify = pipeline("image-classification", model=str(exported), pipeline_class=DiffusionClassifierImageClassificationPipeline)
    for path, probs in zip(paths, expected):
        scores = {row["label"]: row["score"] for row in classify(str(path))}
        # one image against a batch of 5: other float32 kernels, a few ulps (6e-8 each) of probabilities below 1
        np.testing.assert_allclose([scores["normal"], scores["bleed"]], probs.numpy(), rtol=0, atol=1e-6)
    wide = Image.open(paths[0])  # mode I;16 given as a PIL image: pixel data at its natural scale, 0..65535, unclipped
    with torch.no_grad():
        expected_wide = model(**processor(wide)).logits.softmax(-1)[0, 1]
    assert {r["label"]: r["score"] for r in classify(wide)}["bleed"] == pytest.approx(float(expected_wide), abs=1e-6)

    plain = pipeline("image-classification", model=str(exported))  # transformers' own: 8-bit RGB, values clipped
    clipped = [{r["label"]: r["score"] for r in plain(str(p))}["bleed"] for p in paths[:4]]
    assert not np.allclose(clipped, expected[:4, 1].numpy(), atol=1e-3), (clipped, expected)


def test_a_transparent_pil_image_reaches_the_contracts_transparency_fill(tmp_path):
    """Second read (session 58): `load_image` converts a PIL image to RGB before the processor, dropping alpha, so a
    model composited cutouts onto white in `pipe(...)` but scored them on their hidden background in `pipeline()`."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    torch.manual_seed(0)
    head = LinearProbeHead(32, 2, block="down_blocks.1", timestep=50, class_names=["normal", "bleed"])
    torch.nn.init.normal_(head.linear.weight, std=3.0)
    unet = UNet2DModel(**unet_config("tiny", 16))
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head)
    pipe.set_preprocessing({"transparency_fill": 1.0, "num_channels": 1})
    export_unet_feature_pipeline(pipe, tmp_path / "export")
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[..., 1] = 200  # a green background, transparent; an opaque dark organism in the middle
    pixels[4:12, 4:12] = (30, 30, 30, 255)
    cutout = Image.fromarray(pixels, "RGBA")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "export")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "export")
    with torch.no_grad():
        expected = model(**processor(cutout)).logits.softmax(-1)[0, 1]
    classify = pipeline("image-classification", model=str(tmp_path / "export"),
                        pipeline_class=DiffusionClassifierImageClassificationPipeline)  # fmt: skip
    assert {r["label"]: r["score"] for r in classify(cutout)}["bleed"] == pytest.approx(float(expected), abs=1e-6)
    assert processor(cutout)["pixel_values"][0, 0, 0, 0] == 1.0  # the background composited onto white

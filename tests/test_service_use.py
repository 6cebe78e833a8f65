"""QA (session 60, an engineer embedding the pipelines in an inference service, in Python only): one pipeline shared
by threads, pipelines cast to bfloat16, and class names a service relies on to be one per class."""

import threading

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from transformers import AutoModelForImageClassification

from diffusion_classifiers import (
    DiffusionClassifierPipeline,
    LinearProbeHead,
    PrototypeHead,
    ScoreSDEClassifierPipeline,
    UNetFeatureClassifierPipeline,
    export_rc_dit_pipeline,
    unet_config,
)
from diffusion_classifiers.data import ImagePreprocessing
from diffusion_classifiers.probing import fit_probe_grid
from tests.test_ecosystem_loading import rc_dit_pipeline, small_unet

SIZE = 16  # test_ecosystem_loading's models


def unet_pipeline(**preprocessing) -> UNetFeatureClassifierPipeline:
    torch.manual_seed(0)
    head = LinearProbeHead(16, 3, block="down_blocks.1", timestep=50, class_names=["a", "b", "c"])
    with torch.no_grad():
        head.linear.weight.normal_(0, 1)
    return UNetFeatureClassifierPipeline(
        small_unet(), DDPMScheduler(), head=head, preprocessing=ImagePreprocessing(SIZE, 1, **preprocessing)
    )


def test_reading_preprocessed_images_in_one_thread_leaves_anothers_calls_as_they_are():
    """A service scored requests on the pipeline an evaluation thread held inside `reading_preprocessed_images()`:
    its images lost their background normalisation (pixels up to 0.72 off, probabilities up to 0.998)."""
    pipe = unet_pipeline(normalize_background=True)
    pipe.set_progress_bar_config(disable=True)
    grey_field = (np.random.default_rng(0).integers(0, 120, (SIZE, SIZE)) + 100).astype(np.uint8)
    alone = pipe.preprocess(grey_field)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def evaluation():
        with pipe.reading_preprocessed_images():
            seen["raw"] = pipe.preprocess(grey_field)  # in this thread read as already preprocessed: not normalised
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=evaluation)
    thread.start()
    inside.wait(30)
    during = pipe.preprocess(grey_field)
    release.set()
    thread.join()
    assert torch.equal(during, alone)
    assert (seen["raw"] - alone).abs().max() > 0.5  # the premise: the block changes how this thread's images read


def test_heads_stay_float32_in_a_bfloat16_pipeline(tmp_path):
    """A bfloat16 prototype head (temperature 1e-3) tied its top two classes on 94.5% of a service's images and chose
    class 0; the head is tiny, so it stays float32 whatever the pipeline is cast or loaded in."""
    pipe = rc_dit_pipeline()
    features = torch.randn(64, 24)
    head = PrototypeHead(24, 3, temperature=1e-3, class_names=["a", "b", "c"])
    with torch.no_grad():
        head.prototypes.copy_(torch.nn.functional.normalize(torch.randn(3, 24) * 0.01 + 1, dim=1))
    expected = head(features)
    head.to(torch.bfloat16)
    assert head.prototypes.dtype == torch.float32 and torch.equal(head(features), expected)
    pipe.register_modules(head=head)
    pipe.to(torch.bfloat16)
    assert pipe.encoder.dtype == torch.bfloat16 and pipe.head.prototypes.dtype == torch.float32
    pipe.to(torch.float32).save_pretrained(tmp_path / "rc_dit")
    loaded = DiffusionClassifierPipeline.from_pretrained(tmp_path / "rc_dit", dtype=torch.bfloat16)
    assert loaded.encoder.dtype == torch.bfloat16 and loaded.head.prototypes.dtype == torch.float32
    assert torch.equal(loaded.head(features), expected)
    images = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    probs = loaded(images).probs
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(1), torch.ones(4))


def test_an_exported_encoder_loads_in_the_dtype_asked(tmp_path):
    """`AutoModelForImageClassification.from_pretrained(..., dtype=torch.bfloat16)` left the exported RC-DiT's ViT in
    float32 and said `model.dtype` float32 (the U-Net export was bfloat16 throughout)."""
    pipe = rc_dit_pipeline()
    pipe.encoder.config.dtype = torch.float32  # as an encoder saved and loaded records it (one built in code: none)
    export_rc_dit_pipeline(pipe, tmp_path / "hf")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "hf").dtype == torch.float32


def test_repeated_class_names_are_refused():
    """Accepted before: `set_positive_class` of an ambiguous name, and an export whose `label2id` lost a class."""
    names = ["normal", "tumour", "tumour"]
    message = r"class_names: expected distinct names, got \['tumour'\] more than once in \['normal', 'tumour', 'tumour'\]"
    with pytest.raises(ValueError, match=message):
        LinearProbeHead(4, 3, class_names=names)
    with pytest.raises(ValueError, match=message):
        PrototypeHead(4, 3, class_names=names)
    with pytest.raises(ValueError, match=message):
        ScoreSDEClassifierPipeline(small_unet(3), DDPMScheduler(), class_names=names)
    features = {("mid_block", 10): torch.randn(12, 4)}
    labels = torch.arange(12) % 3
    with pytest.raises(ValueError, match=message):
        fit_probe_grid(features, labels, features, labels, class_names=names)
    with pytest.raises(ValueError, match=r"expected distinct names, got \['1'\] more than once in \['1', '1'\]"):
        ScoreSDEClassifierPipeline(small_unet(2), DDPMScheduler(),
                                   class_names=[1, "1"])  # fmt: skip


def test_a_temperature_at_the_end_of_its_range_is_warned_of():
    """`fit_prototypes(..., val_features=...)` stopped at the range's 1e-3 without a word: probabilities that the val
    images' likelihood wants sharper than the range allows are not calibrated."""
    head = PrototypeHead(2, 2, class_names=["a", "b"])
    with torch.no_grad():
        head.prototypes.copy_(torch.eye(2))
    margin = 1e-6  # every image a millionth of a radian on its class's side of 45 degrees, one just across
    angles = torch.tensor([torch.pi / 4 - margin] * 20 + [torch.pi / 4 + margin] * 20 + [torch.pi / 4 + margin / 10])
    features, labels = torch.stack([angles.cos(), angles.sin()], 1), torch.tensor([0] * 20 + [1] * 20 + [0])
    with pytest.warns(UserWarning, match=r"at the end of TEMPERATURE_RANGE .* less confident than they support"):
        assert head.calibrate_temperature(features.double(), labels) == pytest.approx(1e-3, rel=0.01)


def test_a_negative_seed_is_refused_however_images_are_seeded():
    """`seed=-1` was accepted with `seed_by="content"` (the default) and refused with `"position"`."""
    pipe = ScoreSDEClassifierPipeline(small_unet(2), DDPMScheduler(), class_names=["a", "b"])
    images = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    for seed_by in ("content", "position"):
        with pytest.raises(ValueError, match=r"seed: expected a non-negative int"):
            pipe(images, num_timesteps=2, seed=-1, seed_by=seed_by)

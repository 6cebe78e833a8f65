import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers import DiffusionClassifierPipeline, UNetFeatureClassifierPipeline
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.pipelines import RepresentationConditionedDiTImageVariationPipeline
from diffusion_classifiers.probing import fit_probe_grid

from .conftest import run_loading_script

BLOCKS, TIMESTEPS = ["down_blocks.1", "mid_block"], [10, 100]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"


@pytest.fixture(scope="module")
def digits():
    return load_image_classification_data("digits", image_size=16, seed=0)


@pytest.fixture(scope="module")
def fitted_pipeline(digits):
    torch.manual_seed(0)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    features = {name: pipe.extract_features(digits[name].images, BLOCKS, TIMESTEPS) for name in ("train", "val")}
    probe = fit_probe_grid(
        features["train"], digits["train"].labels, features["val"], digits["val"].labels,
        class_names=digits["train"].class_names,
    )
    pipe.register_modules(head=probe.head)
    return pipe, probe


def test_pipeline_classifies_with_the_head_it_was_given(fitted_pipeline, digits):
    pipe, probe = fitted_pipeline
    test = digits["test"]
    out = pipe(test.images)
    assert out.probs.shape == (len(test), 10) and out.label_ids.shape == (len(test),)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(len(test)))
    assert out.labels == [str(i) for i in out.label_ids.tolist()]
    torch.testing.assert_close(out.scores, out.probs.max(-1).values)
    block, t = probe.best_pair
    features = pipe.extract_features(test.images, [block], [t])[(block, t)]
    torch.testing.assert_close(out.probs, probe.head(features).softmax(-1))
    # A random-init U-Net still gives linearly separable digit features.
    assert (out.label_ids == test.labels).float().mean() > 0.7


def test_pipeline_accepts_pil_and_arrays_like_tensors(fitted_pipeline, digits):
    pipe, _ = fitted_pipeline
    images = digits["test"].images[:3]
    as_uint8 = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    pil = [Image.fromarray(a, mode="L") for a in as_uint8]
    from_pil = pipe(pil)
    from_arrays = pipe(list(as_uint8))
    torch.testing.assert_close(from_pil.probs, from_arrays.probs)
    assert pipe(pil[0]).probs.shape == (1, 10)
    labels, label_ids, scores, probs = pipe(pil, return_dict=False)
    assert labels == from_pil.labels


def test_save_and_load_gives_identical_outputs(fitted_pipeline, digits, tmp_path):
    pipe, _ = fitted_pipeline
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["head"] == ["linear_probe_head", "LinearProbeHead"]  # diffusers' custom-component form (remote_code)
    assert index["_class_name"] == ["pipeline_unet_features", "UNetFeatureClassifierPipeline"]
    images = digits["test"].images[:16]
    np.save(tmp_path / "images.npy", images.numpy())
    expected = pipe(images).probs
    script = f"""
import numpy, torch
from diffusion_classifiers import DiffusionClassifierPipeline
pipe = DiffusionClassifierPipeline.from_pretrained({str(tmp_path / 'pipe')!r})
assert type(pipe).__name__ == "UNetFeatureClassifierPipeline", type(pipe)
out = pipe(torch.from_numpy(numpy.load({str(tmp_path / 'images.npy')!r})))
numpy.save({str(tmp_path / 'probs.npy')!r}, out.probs.numpy())
"""
    run_loading_script(script)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "probs.npy")), expected)


def test_saving_pickled_weights_is_refused_before_anything_is_written(fitted_pipeline, tmp_path):
    """QA (session 58): `save_pretrained(safe_serialization=False)` wrote `.bin` weights that `from_pretrained`
    refuses, with advice ("save with save_pretrained") the user had followed."""
    pipe, _ = fitted_pipeline
    with pytest.raises(ValueError, match="safe_serialization: expected True, got False; this pipeline is saved"):
        pipe.save_pretrained(tmp_path / "pipe", safe_serialization=False)
    assert not (tmp_path / "pipe").exists()


def test_dispatch_rejects_unknown_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*expected one of"):
        DiffusionClassifierPipeline.from_pretrained(str(tmp_path))


def test_a_concrete_pipeline_refuses_another_pipelines_folder():
    from diffusion_classifiers import ScoreSDEClassifierPipeline

    score_sde = str(FIXTURES / "score_sde")  # a class-conditional U-Net that unconditional features cannot run
    with pytest.raises(ValueError, match=r"score_sde: model_index.json names pipeline ScoreSDEClassifierPipeline, "
                                         r"not a UNetFeatureClassifierPipeline; load it with ScoreSDEClassifierPipeline"):
        UNetFeatureClassifierPipeline.from_pretrained(score_sde)
    assert isinstance(ScoreSDEClassifierPipeline.from_pretrained(score_sde), ScoreSDEClassifierPipeline)


def test_pipeline_without_head_can_extract_but_not_classify(digits):
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    features = pipe.extract_features(digits["val"].images[:4], ["mid_block"], [5])
    assert features[("mid_block", 5)].shape == (4, 32)
    with pytest.raises(ValueError, match="no `head`"):
        pipe(digits["val"].images[:4])


def test_a_pipeline_without_head_says_what_fits_one_for_its_kind(tmp_path):
    from .test_rc_dit import tiny_pipeline

    unet = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match=r"the UNetFeatureClassifierPipeline has no `head`.*diffusion-classifiers "
                                         r"probe --unet_dir DIR.*fit_probe_grid") as refused:
        unet.class_names
    assert "fit_prototypes" not in str(refused.value)  # a U-Net feature pipeline has no such method
    rc_dit = tiny_pipeline()
    rc_dit.save_pretrained(tmp_path)  # as `predict --model_dir` and `evaluate` load it: the message names the folder
    rc_dit = DiffusionClassifierPipeline.from_pretrained(str(tmp_path))
    expected = rf"the RepresentationConditionedDiTPipeline {re.escape(str(tmp_path))} has no `head`"
    with pytest.raises(ValueError, match=expected) as refused:
        rc_dit.class_names
    message = str(refused.value)
    assert "pipe.fit_prototypes(images, labels" in message and "pipe.fit_linear_probe(images, labels" in message
    assert "--unet_dir" not in message  # `probe --unet_dir` refuses an RC-DiT pipeline
    assert all(hasattr(rc_dit, method) for method in ("fit_prototypes", "fit_linear_probe"))
    # a Score-SDE pipeline's classes are its class embeddings: it needs no head, so the message cannot occur
    from diffusion_classifiers import ScoreSDEClassifierPipeline

    score_unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    score_sde = ScoreSDEClassifierPipeline(score_unet, DDPMScheduler(), class_names=["benign", "malignant"])
    assert getattr(score_sde, "head", None) is None and score_sde.class_names == ["benign", "malignant"]


def test_pipeline_rejects_bad_images(fitted_pipeline):
    pipe, _ = fitted_pipeline
    with pytest.raises(ValueError, match="channels"):
        pipe(torch.zeros(2, 4, 16, 16))
    with pytest.raises(ValueError, match="NaN|inf"):
        pipe(torch.full((2, 1, 16, 16), float("nan")))


def test_pipeline_reads_one_image_whatever_its_unambiguous_layout(fitted_pipeline, digits):
    pipe, _ = fitted_pipeline
    image = digits["test"].images[0]  # [1, 16, 16]
    expected = pipe(image[None]).probs
    assert expected.shape == (1, 10)
    for one_image in (image, image.permute(1, 2, 0), image.numpy(), image.permute(1, 2, 0).numpy()):
        torch.testing.assert_close(pipe(one_image).probs, expected)  # one image in, one prediction out
    rgb = image.repeat(3, 1, 1)
    torch.testing.assert_close(pipe(rgb.permute(1, 2, 0)).probs, pipe(rgb).probs)  # H x W x C: 1 prediction, not 16
    with pytest.raises(ValueError, match=r"image 0 of batch, shape \(5, 16, 16\)"):
        pipe(digits["test"].images[:5, 0])  # [5, H, W]: refused, not read as 5 images


@pytest.mark.parametrize("name", ["unet_features", "score_sde", "rc_dit_linear_head"])
def test_every_pipeline_threads_input_data_format(name):
    pipe = DiffusionClassifierPipeline.from_pretrained(str(FIXTURES / name))
    image = np.random.default_rng(0).random((3, 16, 3), dtype=np.float32)  # [C, H, W] or [H, W, C]: ambiguous
    with pytest.raises(ValueError, match="axes 0 and 2 both have size 1 or 3"):
        pipe.preprocess(image)
    as_last = pipe.preprocess(image, input_data_format="channels_last")
    torch.testing.assert_close(as_last, pipe.preprocess(image.transpose(2, 0, 1), input_data_format="channels_first"))
    assert not torch.allclose(as_last, pipe.preprocess(image, input_data_format="channels_first"))
    if name == "score_sde":
        return  # its __call__ passes input_data_format to the same preprocess; the ELBO is too slow for this test
    call = dict(input_data_format="channels_last")
    torch.testing.assert_close(pipe(image, **call).probs, pipe(image.transpose(2, 0, 1), input_data_format="channels_first").probs)
    if name == "rc_dit_linear_head":
        torch.testing.assert_close(pipe.encode(image, **call), pipe.encode(image.transpose(2, 0, 1)[None]))
        variation = RepresentationConditionedDiTImageVariationPipeline.from_pipe(pipe)
        gray = image[..., :1]  # [3, 16, 1]: 3 channels first (refused: the encoder reads 1) or 1 channel last
        references = variation.check_inputs(gray, 1.0, 1, "pt", None, input_data_format="channels_last")
        torch.testing.assert_close(references, pipe.preprocess(gray[..., 0]))


# ---------------------------------------------------------------------------------------------------- positive class


def binary_pipelines():
    """A classifier pipeline of each kind with classes ("benign", "malignant")."""
    from diffusion_classifiers import ScoreSDEClassifierPipeline
    from diffusion_classifiers.models import LinearProbeHead

    from .test_rc_dit import tiny_pipeline

    names = ["benign", "malignant"]
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8))
    head = LinearProbeHead(unet.config.block_out_channels[-1], 2, block="mid_block", timestep=10, class_names=names)
    rc_dit = tiny_pipeline()
    rc_dit.set_progress_bar_config(disable=True)
    rc_dit.fit_prototypes(torch.rand(2, 1, 16, 16) * 2 - 1, [0, 1], class_names=names)
    score_unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    return {
        "unet_features": UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head),
        "score_sde": ScoreSDEClassifierPipeline(score_unet, DDPMScheduler(), class_names=names),
        "rc_dit": rc_dit,
    }


@pytest.mark.parametrize("name", ["unet_features", "score_sde", "rc_dit"])
def test_positive_class_is_checked_and_saved_with_the_pipeline(name, tmp_path):
    pipe = binary_pipelines()[name]
    assert pipe.positive_class is None
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['benign', 'malignant'\]"):
        pipe.set_positive_class("cancer")
    pipe.set_positive_class("malignant")
    assert pipe.positive_class == "malignant"
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["positive_class"] == "malignant"
    assert DiffusionClassifierPipeline.from_pretrained(str(tmp_path)).positive_class == "malignant"
    pipe.set_positive_class(None)
    assert pipe.positive_class is None


def test_positive_class_is_checked_when_constructed():
    pipe = binary_pipelines()["unet_features"]
    again = UNetFeatureClassifierPipeline(pipe.unet, pipe.scheduler, pipe.head, positive_class="benign")
    assert again.positive_class == "benign"
    with pytest.raises(ValueError, match=r"expected one of the class names \['benign', 'malignant'\], got 'x'"):
        UNetFeatureClassifierPipeline(pipe.unet, pipe.scheduler, pipe.head, positive_class="x")
    with pytest.raises(ValueError, match="no `head`"):
        UNetFeatureClassifierPipeline(pipe.unet, pipe.scheduler, positive_class="benign")


@pytest.mark.parametrize("name", ["unet_features", "score_sde", "rc_dit_linear_head", "rc_dit_prototype_head"])
def test_pipelines_saved_before_positive_class_load_without_one(name):
    assert DiffusionClassifierPipeline.from_pretrained(str(FIXTURES / name)).positive_class is None


def test_a_diffusers_ddpm_pipeline_folder_reads_floats_in_the_stated_range_not_the_legacy_guess(tmp_path):
    """QA (session 58, a user of their own diffusers models): a `DDPMPipeline` folder has no `preprocessing`, and was
    read as this package's v0.1.0 folder (`input_range="auto"`): [-1, 1] images without a negative value were taken
    for [0, 1] ones and rescaled, features 31% off, without a word."""
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=UNet2DModel(**unet_config("tiny", 8)), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "d")
    loaded = UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "d")
    assert loaded.preprocessing.input_range == "[-1, 1]"


def test_a_diffusers_ddpm_pipeline_folder_loads_as_a_headless_unet_feature_pipeline(tmp_path):
    """QA (session 58): `cluster` (and the README's `DiffusionClassifierPipeline.from_pretrained`) refused a
    `DDPMPipeline` folder that `probe --unet_dir` reads: its U-Net and scheduler are such a pipeline without a head."""
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=UNet2DModel(**unet_config("tiny", 8)), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "d")
    pipe = DiffusionClassifierPipeline.from_pretrained(tmp_path / "d")
    assert type(pipe) is UNetFeatureClassifierPipeline and pipe.head is None
    from diffusion_classifiers import ScoreSDEClassifierPipeline  # a U-Net and a scheduler too, its own class kept

    unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=["a", "b"]).save_pretrained(tmp_path / "s")
    assert type(DiffusionClassifierPipeline.from_pretrained(tmp_path / "s")) is ScoreSDEClassifierPipeline


def test_a_folder_saved_as_one_variant_loads_without_naming_it(fitted_pipeline, tmp_path):
    """QA (session 58): a `save_pretrained(variant="fp16")` folder loaded in Python with `variant="fp16"`, but the
    CLI, which names none, failed on diffusers' "no file named diffusion_pytorch_model.safetensors"."""
    pipe, _ = fitted_pipeline
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = DiffusionClassifierPipeline.from_pretrained(tmp_path / "fp16")
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight)

"""A review of the pipelines and of how saved pipelines load: arguments refused by name, the image-variation
pipeline's loading held to the package's rules (safetensors only, a classifier's folder read without warnings), and
saved code that loads without this package without a false "missing package" warning."""

import logging
from contextlib import contextmanager
from typing import Iterator, List

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from diffusion_classifiers import RepresentationConditionedDiTImageVariationPipeline, ScoreSDEClassifierPipeline
from diffusion_classifiers.models import unet_config

from .test_rc_dit import SIZE, tiny_pipeline, variation_of

BAD_BATCH_SIZES = [0, -1, 2.5]


@contextmanager
def diffusers_warnings() -> Iterator[List[str]]:
    """The warnings diffusers logs inside the block (its loggers write to their own handler and do not propagate)."""
    messages: List[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def score_sde_pipeline() -> ScoreSDEClassifierPipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2))
    pipe = ScoreSDEClassifierPipeline(unet, DDPMScheduler(), class_names=["a", "b"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- batch_size -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", BAD_BATCH_SIZES)
def test_rc_dit_refuses_a_batch_size_that_is_no_positive_integer_by_name(batch_size):
    """Review: `encode` and `__call__` failed inside torch's `split` (`split_size can only be 0 ...`, a TypeError
    for 2.5), naming no argument."""
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(3, 1, SIZE, SIZE) * 2 - 1
    pipe.fit_prototypes(images, [0, 1, 0], class_names=["a", "b"])
    message = rf"^batch_size: expected a positive integer, got {batch_size}$"
    with pytest.raises(ValueError, match=message):
        pipe.encode(images, batch_size=batch_size)
    with pytest.raises(ValueError, match=message):
        pipe(images, batch_size=batch_size)
    assert pipe(images, batch_size=2).probs.shape == (3, 2)


@pytest.mark.parametrize("method", ["likelihood", "elbo"])
@pytest.mark.parametrize("batch_size", BAD_BATCH_SIZES)
def test_score_sde_refuses_a_bad_batch_size_with_either_method(method, batch_size):
    """Review: `method="likelihood"` ran with `batch_size=0`, `-1` or `2.5` (made 1 without a word), and the ELBO
    refused it as `max_batch_size`, a name the call does not have."""
    pipe = score_sde_pipeline()
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    settings = {"num_steps": 2} if method == "likelihood" else {"num_timesteps": 2}
    with pytest.raises(ValueError, match=rf"^batch_size: expected a positive integer, got {batch_size}$"):
        pipe(images, method=method, batch_size=batch_size, **settings)


# --- the image-variation pipeline's from_pretrained -----------------------------------------------------------------


@pytest.mark.parametrize("saved_by", ["classifier", "variation"])
def test_image_variation_from_pretrained_refuses_pickled_weights(saved_by, tmp_path):
    """Review: where a component held `diffusion_pytorch_model.bin` and no safetensors, the image-variation pipeline's
    own `from_pretrained` unpickled it ("Defaulting to unsafe serialization"), where the classifiers' refuse."""
    classifier = tiny_pipeline()
    (classifier if saved_by == "classifier" else variation_of(classifier)).save_pretrained(tmp_path)
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(ValueError, match=r"transformer/diffusion_pytorch_model.bin: pickled weights are refused"):
        RepresentationConditionedDiTImageVariationPipeline.from_pretrained(tmp_path)


def test_image_variation_from_pretrained_reads_safetensors_only_and_names_a_missing_component(tmp_path):
    variation_of(tiny_pipeline()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="use_safetensors: expected True"):
        RepresentationConditionedDiTImageVariationPipeline.from_pretrained(tmp_path, use_safetensors=False)
    (tmp_path / "transformer" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"transformer/config.json: not found; component 'transformer'"):
        RepresentationConditionedDiTImageVariationPipeline.from_pretrained(tmp_path)


def test_image_variation_loads_a_classifier_folder_without_warnings(tmp_path):
    """Review: the documented way to load a generator from a classifier's folder made diffusers warn that the head and
    positive class 'are not expected and will be ignored. Please verify your model_index.json'."""
    classifier = tiny_pipeline()
    classifier.set_progress_bar_config(disable=True)
    references = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    classifier.fit_prototypes(references, [0, 1], class_names=["a", "b"])
    classifier.set_positive_class("b")
    classifier.save_pretrained(tmp_path)
    with diffusers_warnings() as warnings:
        loaded = RepresentationConditionedDiTImageVariationPipeline.from_pretrained(tmp_path)
    assert not [message for message in warnings if "not expected" in message], warnings
    assert sorted(name for name, value in loaded.components.items() if value is not None) == [
        "encoder", "scheduler", "transformer"
    ]  # fmt: skip
    loaded.set_progress_bar_config(disable=True)
    expected = variation_of(classifier)(references, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    got = loaded(references, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got.images, expected.images)


# --- the code saved with a model ------------------------------------------------------------------------------------


def test_saved_entry_files_give_no_missing_package_warning_where_the_package_is_absent(tmp_path, monkeypatch):
    """Review: loading with `trust_remote_code=True` without the package, diffusers warned for every entry file (the
    pipeline's and each custom component's) "might require ... diffusion_classifiers. Run `pip install
    diffusion_classifiers`", although the bundled copy loads it. diffusers' own check runs here, with the package
    made unimportable to it."""
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    tiny_pipeline().save_pretrained(tmp_path)
    import_module = dynamic_modules.importlib.import_module

    def without_the_package(name, *args, **kwargs):
        if name.split(".")[0] == "diffusion_classifiers":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return import_module(name, *args, **kwargs)

    monkeypatch.setattr(dynamic_modules.importlib, "import_module", without_the_package)
    entries = [tmp_path / "pipeline_rc_dit.py", tmp_path / "transformer" / "rc_dit.py"]
    with diffusers_warnings() as warnings:
        for entry in entries:
            assert 'importlib.import_module("diffusion_classifiers.' in entry.read_text()  # the package tried first
            dynamic_modules.check_imports(str(entry))
    assert not [message for message in warnings if "might require" in message], warnings

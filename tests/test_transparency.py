"""Transparent pixels (PNG cutouts, a palette's transparent colour): discarded as every saved model reads them, said
once, or composited onto a stated grey level by contracts that ask (`ImagePreprocessing.transparency_fill`;
session 57's messy-folders persona: a cutout's hidden green background reached the model)."""

import argparse
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.data import (
    ImagePreprocessing,
    add_data_args,
    load_image_classification_data,
    preprocess_images,
    streaming_image_classification_data,
)
from diffusion_classifiers.data.preprocessing import TRANSPARENCY_WARNING
from diffusion_classifiers.data.readers import fit_from_args, reading_from_args

GREEN, RED = (0, 200, 0), (200, 30, 30)


def cutout(size: int = 8) -> Image.Image:
    """A red organism (the centre, opaque), a half-transparent rim and a fully transparent green background."""
    pixels = np.zeros((size, size, 4), dtype=np.uint8)
    pixels[...] = (*GREEN, 0)
    pixels[2:-2, 2:-2] = (*RED, 128)
    pixels[3:-3, 3:-3] = (*RED, 255)
    return Image.fromarray(pixels, "RGBA")


def on_unit_scale(colour) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32) / 127.5 - 1


def composited(colour, alpha: int, level: int) -> torch.Tensor:
    """Porter-Duff "over" of `colour` at `alpha` on an opaque grey `level`, rounded to 8 bits as PIL stores it."""
    over = [round(c * alpha / 255 + level * (1 - alpha / 255)) for c in colour]
    return on_unit_scale(over)


def test_without_a_fill_alpha_is_discarded_as_saved_models_read_it_and_said_once(tmp_path, monkeypatch):
    """Said once per process, not per image (second read: a folder of cutouts said it for every file)."""
    from diffusion_classifiers.data import preprocessing

    monkeypatch.setattr(preprocessing, "_transparency_said", False)
    write_cutout_folder(tmp_path / "cutouts")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = preprocess_images(cutout())
        load_image_classification_data(tmp_path / "cutouts", image_size=8, one_set=True)
        preprocess_images([str(tmp_path / "cutouts" / "diatom" / "0.png")])
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out[0, :, 0, 0], on_unit_scale(GREEN))  # the hidden background, as before
    said = [w for w in caught if str(w.message).startswith(TRANSPARENCY_WARNING)]
    assert len(said) == 1 and "transparency_fill" in str(said[0].message) and said[0].filename == __file__


def test_an_opaque_image_with_an_alpha_channel_is_not_warned_about():
    opaque = np.full((4, 4, 4), 255, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess_images(Image.fromarray(opaque, "RGBA"))


@pytest.mark.parametrize("fill, level", [(1.0, 255), (-1.0, 0), (0.0, 128)])
def test_a_fill_composites_transparent_pixels_onto_its_grey_level(fill, level):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: the contract states what transparency becomes
        out = preprocess_images(cutout(), preprocessing=ImagePreprocessing(transparency_fill=fill))
    torch.testing.assert_close(out[0, :, 0, 0], composited(GREEN, 0, level), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, :, 2, 2], composited(RED, 128, level), atol=1 / 127.5, rtol=0)  # PIL rounds
    torch.testing.assert_close(out[0, :, 4, 4], on_unit_scale(RED))


def test_grey_and_palette_transparency_are_composited_too():
    grey = np.zeros((4, 4, 2), dtype=np.uint8)
    grey[..., 0], grey[:2, :, 1] = 90, 255  # the top half opaque grey 90, the bottom transparent
    white = ImagePreprocessing(transparency_fill=1.0)
    out = preprocess_images(Image.fromarray(grey, "LA"), preprocessing=white)
    assert out.shape == (1, 1, 4, 4)  # a grey image stays one channel
    assert out[0, 0, 0, 0].item() == pytest.approx(90 / 127.5 - 1) and out[0, 0, 3, 0].item() == 1.0
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    palette.putpalette([*GREEN, *RED])
    palette.info["transparency"] = 0  # palette entry 0 (green) is transparent, as a GIF or palette PNG stores it
    out = preprocess_images(palette, preprocessing=white)
    torch.testing.assert_close(out[0, :, 0, 0], torch.ones(3))
    torch.testing.assert_close(out[0, :, 0, 1], on_unit_scale(RED))


def test_the_fill_is_saved_with_the_contract_and_absent_from_contracts_without_it():
    plain = ImagePreprocessing(image_size=8)
    assert "transparency_fill" not in plain.to_dict() and "transparency_fill" not in plain.loader_kwargs
    white = ImagePreprocessing(image_size=8, transparency_fill=1)
    assert ImagePreprocessing.from_dict(white.to_dict()) == white
    assert white.loader_kwargs["transparency_fill"] == 1
    assert "transparent pixels composited onto 1.0" in white.summary()
    assert ImagePreprocessing.from_dict({"image_size": 8}).transparency_fill is None  # a contract saved before


@pytest.mark.parametrize("bad", [True, "white", 2.0, float("nan"), [1.0]])
def test_a_fill_that_is_no_grey_level_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=r"transparency_fill: expected None or a number in \[-1, 1\]"):
        ImagePreprocessing(transparency_fill=bad)


def write_cutout_folder(root) -> None:
    for name in ("copepod", "diatom"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            cutout().save(root / name / f"{i}.png")


def test_the_loaders_read_and_record_the_fill(tmp_path):
    write_cutout_folder(tmp_path / "cutouts")
    options = dict(image_size=8, num_channels=3, transparency_fill=1.0, one_set=True)
    loaded = load_image_classification_data(tmp_path / "cutouts", **options)["all"]
    streamed = streaming_image_classification_data(tmp_path / "cutouts", **options)["all"]
    for reading in (loaded.preprocessing, streamed.preprocessing):
        assert reading.transparency_fill == 1.0
    torch.testing.assert_close(loaded.images[0, :, 0, 0], torch.ones(3))
    torch.testing.assert_close(streamed[0][0][:, 0, 0], torch.ones(3))


def test_the_scripts_flag_reaches_the_loaders_and_the_run_record():
    parser = add_data_args(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "folder", "--transparency_fill", "1"])
    assert fit_from_args(args)["transparency_fill"] == 1.0
    assert reading_from_args(args)["transparency_fill"] == 1.0
    unset = parser.parse_args(["--dataset", "folder"])
    assert "transparency_fill" not in fit_from_args(unset) and reading_from_args(unset)["transparency_fill"] is None

"""One preprocessing contract (`data.ImagePreprocessing`), stated, saved with every model and applied alike by
`pipe(...)`, the transformers image processor, evaluation and prediction."""

import csv
import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import DiffusionClassifierPipeline, UNetFeatureClassifierPipeline, hub
from diffusion_classifiers.cli import main
from diffusion_classifiers.data import (
    ImagePreprocessing,
    MedicalPreprocessing,
    Window,
    load_image_classification_data,
    preprocess_images,
    read_dicom,
    window_channels,
)
from diffusion_classifiers.models import LinearProbeHead

from .conftest import shared_data
from .test_readme import small_unet

FIXTURES = "tests/fixtures/v0.1.0"
CT_SLICE = ("cq500_dicom_sample", "CQ500-CT-0", "CT000010.dcm")


def signed_images(seed=0):
    """Four [-1, 1] images [1, 8, 8]; image 2 has no negative pixel, as after a bright crop."""
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    images[2] = images[2].abs()
    return images


def unet_pipeline(sample_size=16, in_channels=1, preprocessing=None):
    head = LinearProbeHead(16, 3, class_names=["a", "b", "c"], block="mid_block", timestep=50)
    torch.nn.init.normal_(head.linear.weight, generator=torch.Generator().manual_seed(0), std=3.0)
    unet = small_unet(sample_size)
    if in_channels != 1:
        unet = UNet2DModel(**{**dict(unet.config), "in_channels": in_channels, "out_channels": in_channels})
    pipe = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head, preprocessing=preprocessing)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# A list and a batch are the same images
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_range", ["[-1, 1]", "auto"])
def test_a_list_of_signed_tensors_equals_the_batch(input_range):
    images = signed_images()
    contract = ImagePreprocessing(image_size=8, input_range=input_range)
    batch = contract(images)
    as_list = contract(list(images))
    assert torch.equal(as_list, batch)
    torch.testing.assert_close(batch, images, rtol=0, atol=0)  # [-1, 1] stated (or found once per call): unchanged
    # the case: earlier versions rescaled image 2 of the list alone (it has no negative pixel)
    assert torch.equal(as_list[2], images[2])


def test_the_keyword_form_decides_the_float_range_once_per_call():
    images = signed_images()
    assert torch.equal(preprocess_images(list(images)), preprocess_images(images))
    unit = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(preprocess_images(list(unit)), unit * 2 - 1)  # no negative value anywhere: [0, 1]


def test_a_pipeline_reads_a_list_and_a_batch_alike():
    pipe, images = unet_pipeline(), signed_images()
    assert pipe.preprocessing.input_range == "[-1, 1]"
    assert torch.equal(pipe.preprocess(list(images)), pipe.preprocess(images))
    torch.testing.assert_close(pipe(list(images)).probs, pipe(images).probs, rtol=0, atol=0)


def test_a_datasets_column_of_images_reads_as_a_list():
    """QA (a collaborator): `pipe(ds["image"])` was refused ("got Column"), a datasets 4+ column being no list."""
    from datasets import Dataset
    from PIL import Image

    pictures = [Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), mode="L") for i in range(3)]
    column = Dataset.from_dict({"image": pictures})["image"]
    pipe = unet_pipeline()
    assert torch.equal(pipe.preprocess(column), pipe.preprocess(pictures))
    with pytest.raises(ValueError, match=r"expected a file path, PIL image, .* or a sequence of them, got bytes"):
        pipe.preprocess(b"not an image")


# --------------------------------------------------------------------------------------------------
# Stated ranges
# --------------------------------------------------------------------------------------------------


def test_stated_ranges_scale_floats_and_leave_integers_alone():
    unit = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ImagePreprocessing(input_range="[0, 1]")(unit), unit * 2.0 - 1.0)
    with pytest.warns(UserWarning, match=r"float images with no negative value are read as \[-1, 1\]"):
        assert torch.equal(ImagePreprocessing(input_range="[-1, 1]")(unit), unit)  # the same data, another statement
    pixels = np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8)
    expected = torch.from_numpy(pixels).float()[None, None] * (2.0 / 255.0) - 1.0
    for input_range in ("[0, 1]", "[-1, 1]", "auto"):
        assert torch.equal(ImagePreprocessing(input_range=input_range)(pixels), expected), input_range


def test_unit_range_floats_given_to_a_signed_model_are_warned_about_once_per_call(tmp_path):
    """QA: arrays divided by 255, given to a model reading floats as [-1, 1], were read brighter than they are and 27%
    of its decisions changed, without a word. Floats of a call none of which is negative are warned about (signed
    ones, integers, a stated [0, 1] are not), and the model card says how floats are read."""
    from diffusion_classifiers.hub import input_description_of

    unit = [np.random.default_rng(i).random((6, 6), dtype=np.float32) for i in range(3)]
    signed = ImagePreprocessing(input_range="[-1, 1]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signed(unit)
        signed([image * 2 - 1 for image in unit])  # a negative value: the library's own range
        signed([(image * 255).astype(np.uint8) for image in unit])
        ImagePreprocessing(input_range="[0, 1]")(unit)
        signed([np.zeros((6, 6), np.float32)])  # constant: nothing to tell by
    assert [str(w.message)[:60] for w in caught] == ["preprocess_images: float images with no negative value are r"]
    UNetFeatureClassifierPipeline(unet=small_unet(8), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "model")
    assert "Float arrays and tensors are read as values in [-1, 1] (0 is mid-grey); give 0..255 pictures as uint8" in (
        input_description_of(tmp_path / "model")
    )


def test_floats_outside_the_stated_range_name_the_image_and_the_range():
    images = signed_images()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\] \(the stated input_range\); image 0 of batch spans"):
        ImagePreprocessing(input_range="[0, 1]")(images)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\] .*image 3 of batch spans \[255, 255\]"):
        ImagePreprocessing()([images[0], images[1], images[2], torch.full((1, 8, 8), 255.0)])


@pytest.mark.parametrize(
    "config, message",
    [
        ({"input_range": "[0, 255]"}, r"input_range: expected one of \['\[-1, 1\]', '\[0, 1\]', 'auto'\], got '\[0, 255\]'"),
        ({"resample": "lanczos"}, r"resample: expected one of \['bilinear', 'bicubic', 'nearest'\], got 'lanczos'"),
        ({"num_channels": 4}, "num_channels: expected 1, 3 or None, got 4"),
        ({"image_size": 0}, "image_size: expected a positive int or"),
        ({"do_rescale": True}, r"preprocessing: unknown keys \['do_rescale'\]"),
        ({"medical": {"windows": [{"center": 40, "width": 0}]}}, r"Window\(center=40, width=0\): expected .* width > 0"),
        ({"medical": {"windows": ["lung"]}}, "windows: 'lung' is not a window"),
    ],
)
def test_bad_contract_values_are_refused_before_any_work(config, message):
    with pytest.raises(ValueError, match=message):
        ImagePreprocessing.from_dict(config)
    with pytest.raises(ValueError, match=message):  # also when building the pipeline, before a model runs
        unet_pipeline(preprocessing=config)


def test_a_contract_for_another_size_than_the_model_is_refused():
    with pytest.raises(ValueError, match="preprocessing: image_size 32 differs from the model's 16"):
        unet_pipeline(preprocessing={"image_size": 32})


# --------------------------------------------------------------------------------------------------
# Saved with the model
# --------------------------------------------------------------------------------------------------


def test_the_contract_round_trips_through_json():
    contract = ImagePreprocessing(
        (12, 16), 3, "[0, 1]", "bicubic", MedicalPreprocessing((Window(40, 80), "bone", "file"), 0.5, 12)
    )
    assert ImagePreprocessing.from_dict(json.loads(json.dumps(contract.to_dict()))) == contract


def test_the_summary_names_the_pad_fill_and_the_background_normalisation():
    """QA: a plankton contract read "32 px (pad), 1 channel" in the card, the data line and the report, without its
    white fill and background normalisation."""
    assert ImagePreprocessing(32, 1, resize_mode="pad").summary() == "32 px (pad), 1 channel"
    plankton = ImagePreprocessing(32, 1, resize_mode="pad", pad_value=1.0, normalize_background=True)
    assert plankton.summary() == "32 px (pad, fill 1.0), 1 channel, background normalised to white"


def test_a_pipeline_saves_and_loads_its_contract(tmp_path):
    pipe = unet_pipeline(preprocessing={"input_range": "[0, 1]", "medical": {"windows": ["brain"], "bits_stored": 12}})
    pipe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "model_index.json").read_text())["preprocessing"]
    assert saved == {
        "image_size": 16, "num_channels": 1, "input_range": "[0, 1]", "resample": "bilinear",
        "medical": {"windows": ["brain"], "padding_fill": 0.0, "bits_stored": 12},
    }  # fmt: skip
    loaded = DiffusionClassifierPipeline.from_pretrained(str(tmp_path))
    assert loaded.preprocessing == pipe.preprocessing
    unit = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.preprocess(unit), unit * 2 - 1)


def test_setting_one_key_keeps_the_rest_of_the_contract(tmp_path):
    # the README's pipe.set_preprocessing({"input_range": "[0, 1]"}) on a CT model must not drop its windows
    medical = {"windows": ["brain", "subdural", "bone"], "bits_stored": 12}
    pipe = unet_pipeline(in_channels=3, preprocessing={"medical": medical, "resize_mode": "pad", "resample": "bicubic"})
    before = pipe.preprocessing
    pipe.set_preprocessing({"input_range": "[0, 1]"})
    assert pipe.preprocessing == dataclasses.replace(before, input_range="[0, 1]")
    pipe.set_preprocessing({"medical": {"bits_stored": 16}})  # the windows stay
    assert pipe.preprocessing.medical == dataclasses.replace(before.medical, bits_stored=16)
    # QA: one window given to a model of three ran, reading that window three times, as predict's --window refuses
    with pytest.raises(ValueError, match=r"preprocessing: 1 window, but the model was trained on 3 \(\['brain'"):
        pipe.set_preprocessing({"medical": {"windows": ["brain"]}})
    with pytest.warns(UserWarning, match=r"\['bone', 'brain', 'subdural'\] are those the model was trained with in"):
        pipe.set_preprocessing({"medical": {"windows": ["bone", "brain", "subdural"]}})
    pipe.set_preprocessing(None)
    assert pipe.preprocessing == pipe.default_preprocessing()


def test_a_pipeline_saved_before_the_contract_keeps_guessing_the_range():
    pipe = DiffusionClassifierPipeline.from_pretrained(f"{FIXTURES}/unet_features")
    assert pipe.preprocessing.input_range == "auto"
    assert pipe.preprocessing.image_size == pipe.unet.config.sample_size


def test_a_model_saved_before_the_contract_warns_that_a_numpy_array_of_3_planes_is_one_image_now():
    """QA (an upgrading lab): v0.1.0 read a [3, H, W] numpy array as 3 grey images; read as one colour image now, old
    batch code got one prediction for three, without a word."""
    pipe = DiffusionClassifierPipeline.from_pretrained(f"{FIXTURES}/unet_features")
    three = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"item 0, a numpy array of shape \(3, 16, 16\), is read as one colour image"):
        assert len(pipe.preprocess(three)) == 1
    # named at the caller's line, whichever way it came (QA: it named lines of the package)
    for call in (pipe.preprocess, pipe.preprocessing, lambda images: preprocess_images(images, 16)):
        with pytest.warns(UserWarning, match="is read as one colour image") as warned:
            call(three)
        assert {Path(warning.filename).name for warning in warned} == {Path(__file__).name}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(pipe.preprocess(three[:, None])) == 3  # as v0.1.0 read it, said as [N, 1, H, W]
        pipe.preprocess(three, input_data_format="channels_first")  # its layout stated: nothing to say


def test_a_numpy_array_of_3_planes_given_to_a_grey_model_warns_that_it_is_read_as_one_colour_image():
    """QA (an RC-DiT notebook user): `pipe.encode(test_images[:3])` on a 1-channel model gave one row without a word,
    where 2 or 4 grey images are refused (their count is no channel count)."""
    grey = ImagePreprocessing(16, 1, input_range="[-1, 1]")
    three = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"item 0, a numpy array of shape \(3, 16, 16\), is read as one colour image, "
                                         r"channels first, made grey for this 1-channel model"):  # fmt: skip
        assert len(grey(three)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(grey(three[:, None])) == 3  # said as [N, 1, H, W]
        assert len(grey(three, input_data_format="channels_first")) == 1  # its layout stated
        assert len(grey(np.moveaxis(three, 0, -1))) == 1  # [H, W, 3]: one colour image, unambiguously
        assert len(ImagePreprocessing(16, 3, input_range="[-1, 1]")(three)) == 1  # a colour model's colour image
    with pytest.warns(UserWarning, match=r"item 0, a tensor of shape \(3, 16, 16\), is read as one colour image"):
        grey(torch.from_numpy(three))  # review: torchvision's MNIST.data[:3], say


def test_floats_of_0_to_255_are_refused_without_the_unit_range_advice_first():
    """QA: a 0..255 float tensor was first told it is read as [-1, 1] (pass [0, 1] images as uint8), then refused
    as out of range (pass uint8 for 0..255 data): the advice contradicted the error."""
    grey = ImagePreprocessing(16, 1, input_range="[-1, 1]")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"float values must lie in \[-1, 1\]"):
            grey(torch.rand(2, 1, 16, 16) * 255)


def test_a_head_fitted_over_a_model_that_records_no_training_images_claims_no_check(tmp_path):
    """QA (an upgrading lab): probe over a v0.1.0 U-Net recorded its head's train images as the model's training
    images, so evaluate later said the images it scored were checked against them, and push_to_hub took the metrics.
    The head's images are still left out where asked; the check is not claimed."""
    import shutil
    from sklearn.datasets import load_digits

    from .conftest import digit_folder

    shutil.copytree(f"{FIXTURES}/unet_features", tmp_path / "unet")
    digit_folder(tmp_path / "digits", [i for i, label in enumerate(load_digits().target[:200]) if label in (0, 1)])
    main(["probe", "--unet_dir", str(tmp_path / "unet"), "--dataset", str(tmp_path / "digits"), "--timesteps", "10",
          "--output_dir", str(tmp_path / "probe")])  # fmt: skip
    record = json.loads((tmp_path / "probe" / "pipeline" / "data_splits.json").read_text())
    assert record["train_fingerprints_partial"] is True and record["train_fingerprints"]
    main(["evaluate", "--model_dir", str(tmp_path / "probe" / "pipeline"), "--dataset", str(tmp_path / "digits"),
          "--split", "all", "--drop_training_images", "--output_dir", str(tmp_path / "evaluated")])  # fmt: skip
    metrics = json.loads((tmp_path / "evaluated" / "metrics.json").read_text())
    assert metrics["training_images_checked"] is False and metrics["training_images_dropped"] > 0
    assert "the model records none, or only its head's" in (tmp_path / "evaluated" / "report.md").read_text()
    # kept through save_pretrained and a probe over the probe; published without it, as without the fingerprints
    resaved = DiffusionClassifierPipeline.from_pretrained(str(tmp_path / "probe" / "pipeline"))
    resaved.save_pretrained(tmp_path / "again")
    main(["probe", "--unet_dir", str(tmp_path / "again"), "--dataset", str(tmp_path / "digits"), "--timesteps", "10",
          "--output_dir", str(tmp_path / "probe2")])  # fmt: skip
    for folder in (tmp_path / "again", tmp_path / "probe2" / "pipeline"):
        assert json.loads((folder / "data_splits.json").read_text())["train_fingerprints_partial"] is True, folder
    published = json.loads(hub._published_split_record(tmp_path / "again" / "data_splits.json"))
    assert "train_fingerprints" not in published and "train_fingerprints_partial" not in published
    # predict's training_image column, then aggregate, claim no check either
    rows = [f"{path.relative_to(tmp_path / 'digits')},{path.parent.name},{path.stem}"  # a case an image
            for path in sorted((tmp_path / "digits").rglob("*.png"))]  # fmt: skip
    (tmp_path / "digits" / "list.csv").write_text("path,label,case\n" + "\n".join(rows) + "\n")
    main(["predict", "--model_dir", str(tmp_path / "again"), "--input", str(tmp_path / "digits" / "list.csv"),
          "--output", str(tmp_path / "p.csv")])  # fmt: skip
    main(["aggregate", "--predictions", str(tmp_path / "p.csv"), "--by", "case", "--rule", "mean"])
    grouped = json.loads((tmp_path / "p.mean_by_case.metrics.json").read_text())
    assert grouped["training_images_checked"] is False


def test_a_head_fitted_over_a_head_fitted_over_such_a_model_claims_no_check_either(tmp_path):
    """Second read: fit-head over a fit-head's output (a partial record, which has fingerprints) dropped the mark, and
    its test split was then said to be checked."""
    import shutil
    from sklearn.datasets import load_digits

    from .conftest import digit_folder

    shutil.copytree(f"{FIXTURES}/rc_dit_linear_head", tmp_path / "rc")
    digit_folder(tmp_path / "digits", [i for i, label in enumerate(load_digits().target[:120]) if label in (0, 1)])
    model = tmp_path / "rc"
    for run in ("first", "second"):
        main(["fit-head", "--model_dir", str(model), "--dataset", str(tmp_path / "digits"), "--output_dir",
              str(tmp_path / run)])  # fmt: skip
        model = tmp_path / run / "pipeline"
        assert json.loads((model / "data_splits.json").read_text())["train_fingerprints_partial"] is True, run
        assert json.loads((tmp_path / run / "metrics.json").read_text())["training_images_checked"] is False, run


def test_evaluating_a_model_that_records_no_training_images_says_only_what_applies(tmp_path, capsys):
    """QA (an upgrading lab): --drop_training_images was ignored without a word on a model that records no training
    images, and --split all, which carves nothing, was said to carve the data by --seed and the fractions."""
    import shutil
    from sklearn.datasets import load_digits

    from .conftest import digit_folder

    shutil.copytree(f"{FIXTURES}/unet_features", tmp_path / "unet")
    digit_folder(tmp_path / "digits", [i for i, label in enumerate(load_digits().target[:60]) if label in (0, 1)])
    evaluate = ["evaluate", "--model_dir", str(tmp_path / "unet"), "--dataset", str(tmp_path / "digits"), "--split",
                "all", "--output_dir", str(tmp_path / "evaluated")]  # fmt: skip
    with pytest.raises(ValueError, match=r"^--drop_training_images: .*unet records no fingerprints of its training "
                                         r"images, so none can be dropped"):  # fmt: skip
        main(evaluate + ["--drop_training_images"])
    assert not (tmp_path / "evaluated").exists()
    with pytest.raises(ValueError, match="the model's own train split is scored as it is, so none can be dropped"):
        main(evaluate[:-4] + ["--split", "train", "--drop_training_images", "--output_dir", str(tmp_path / "train")])
    capsys.readouterr()
    main(evaluate)
    note = capsys.readouterr().err
    assert "cannot check that the digits images are none it was trained on" in note and "carved by" not in note


def test_the_transformers_export_saves_and_applies_the_same_contract(tmp_path):
    from transformers import AutoImageProcessor

    from diffusion_classifiers import export_unet_feature_pipeline

    pipe = unet_pipeline(preprocessing={"input_range": "[0, 1]", "resample": "bicubic"})
    export_unet_feature_pipeline(pipe, tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())["preprocessing"]
    assert saved == pipe.preprocessing.to_dict()
    processor = AutoImageProcessor.from_pretrained(str(tmp_path))
    unit = torch.rand(3, 1, 20, 12, generator=torch.Generator().manual_seed(4))
    assert torch.equal(processor(list(unit), return_tensors="pt")["pixel_values"], pipe.preprocess(unit))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        processor(unit * 2 - 1)


def test_the_loader_records_the_contract_its_tensors_were_made_with():
    splits = load_image_classification_data("digits", image_size=12)
    contract = splits["test"].preprocessing
    assert (contract.image_size, contract.num_channels, contract.input_range) == (12, 1, "[-1, 1]")
    assert contract == splits["train"].subset([0, 1]).preprocessing
    assert torch.equal(contract(splits["test"].images), splits["test"].images)  # its own output passes unchanged


# --------------------------------------------------------------------------------------------------
# Files: DICOM windows and bit depth from the saved contract
# --------------------------------------------------------------------------------------------------


def test_a_dicom_path_is_read_with_the_saved_windows(tmp_path):
    path = shared_data(*CT_SLICE)
    windows = ["brain", {"center": 80, "width": 200}, "bone"]
    pipe = unet_pipeline(in_channels=3, preprocessing={"medical": {"windows": windows}})
    pipe.save_pretrained(tmp_path)
    pipe = DiffusionClassifierPipeline.from_pretrained(str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    channels = window_channels(read_dicom(path), ["brain", Window(80, 200), "bone"])  # [1, 3, 512, 512] in [0, 1]
    expected = F.interpolate(
        torch.from_numpy(channels) * 2.0 - 1.0, size=(16, 16), mode="bilinear", antialias=True, align_corners=False
    )
    assert torch.equal(pipe.preprocess([str(path)]), expected)
    torch.testing.assert_close(pipe([path]).probs, pipe(expected).probs, rtol=0, atol=0)


def test_a_16_bit_file_is_scaled_by_the_saved_bit_depth(tmp_path):
    from PIL import Image

    values = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "scan.png")
    contract = ImagePreprocessing(medical={"bits_stored": 12})
    expected = torch.from_numpy(values.astype(np.float32) / 4095)[None, None] * 2.0 - 1.0
    assert torch.equal(contract(tmp_path / "scan.png"), expected)
    with pytest.raises(ValueError, match="cannot read item 1, got str .*: no such file"):
        contract([tmp_path / "scan.png", str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="cannot read item 0, got str .*: a folder; expected an image or DICOM file"):
        contract(str(tmp_path))  # QA: called "no such file" though it exists


def test_a_uint16_array_given_to_a_model_that_reads_medical_files_warns_to_pass_the_files():
    values = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)  # a pydicom pixel_array: stored values
    with pytest.warns(UserWarning, match=r"item\(s\) 1 are uint16 arrays.*pass the file paths") as said:
        ImagePreprocessing(medical={"windows": ["full"]})([values.astype(np.uint8), values])
    assert "DICOM" not in str(said[0].message)  # QA: a model of no DICOM files was warned of DICOM windows
    with pytest.warns(UserWarning, match=r"uint16 arrays.* \(DICOM windows, .*MONOCHROME1 inversion.*pass the file"):
        ImagePreprocessing(medical={"windows": ["full"], "dicom_files": True})(values)
    with warnings.catch_warnings():  # a 16-bit PIL image is read as its file (a datasets row: as in training)
        warnings.simplefilter("error")
        from PIL import Image

        ImagePreprocessing(medical=MedicalPreprocessing(windows=("full",)))(Image.fromarray(values))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImagePreprocessing()(values)  # no medical files in the contract: uint16 is read from [0, 65535] as documented


HEAD_CT = {"medical": {"windows": ["brain", "subdural", "bone"]}}  # a head-CT model's contract: 3 DICOM windows


def test_pictures_given_to_a_model_of_several_dicom_windows_warn_that_they_have_no_hounsfield_units():
    """QA (head CT): `pipe(["x.png"])` was refused, but `pipe(Image.open("x.png"))` and uint8 arrays were scored
    silently, through the transformers image processor too."""
    from PIL import Image

    from diffusion_classifiers import export_unet_feature_pipeline

    pipe = unet_pipeline(in_channels=3, preprocessing=HEAD_CT)
    grey, pixels = Image.new("L", (32, 32)), np.zeros((32, 32, 3), dtype=np.uint8)
    expected = (
        r"item\(s\) 0 \(a PIL image of mode L\) are pictures, not DICOM: a picture has no Hounsfield units to "
        r"window, so it is read as it is \(a grey one copied into every channel\), but this model reads DICOM files "
        r"through the contract's 3 DICOM windows \['brain', 'subdural', 'bone'\], one channel each. Pass the DICOM "
        r"file paths, or window them in memory: `window_channels\(read_dicom\(path\), \['brain', 'subdural', "
        r"'bone'\]\) \* 2 - 1`"
    )
    with pytest.warns(UserWarning, match=expected):
        probs = pipe(grey).probs
    with pytest.warns(UserWarning, match=r"item\(s\) 0 \(a PIL .*\), 1 \(a uint8 ndarray\), 2 \(a bool Tensor\) are"):
        torch.testing.assert_close(pipe([grey, pixels, torch.zeros(32, 32, dtype=torch.bool)]).probs[0], probs[0])
    _, processor = export_unet_feature_pipeline(pipe)
    with pytest.warns(UserWarning, match=r"item\(s\) 0 \(a PIL image of mode RGB\) are pictures, not DICOM"):
        processor(Image.new("RGB", (32, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(torch.zeros(1, 3, 16, 16))  # floats: windowed values, the library's own tensors
        for contract in ({}, {"medical": {"windows": ["brain"]}}):  # one window reads pictures, as training does
            ImagePreprocessing(**contract)([grey, pixels[..., 0]])
        ImagePreprocessing(16, 1, **{"medical": {"windows": ["brain"]}})(torch.zeros(1, 1, 16, 16))  # one window
        ImagePreprocessing(16, None, **HEAD_CT)(torch.zeros(1, 3, 16, 16))  # the loaders' channels, inferred (review)
    # QA (an RC-DiT notebook user): one grey float channel was copied into the 3 windows without a word
    with pytest.warns(UserWarning, match=r"item\(s\) 0 \(a 1-channel float Tensor\) are pictures, not DICOM"):
        pipe(torch.zeros(2, 1, 16, 16))


def test_a_dicom_pixel_array_names_hounsfield_units_and_how_to_window_it():
    """QA (head CT): `pipe(pydicom.dcmread(path).pixel_array)`, int16, was told to cast to uint8, which wraps the
    stored values; HU floats (`read_dicom(path).values`) were told the same."""
    pipe = unet_pipeline(in_channels=3, preprocessing=HEAD_CT)
    stored = np.array([[-2000, 0], [40, 1200]], dtype=np.int16)
    code = r"`window_channels\(read_dicom\(path\), \['brain', 'subdural', 'bone'\]\) \* 2 - 1`"
    with pytest.raises(ValueError, match=(
        r"^unsupported dtype torch.int16 in image 0 of batch; expected uint8, uint16, bool or a float dtype. A "
        r"DICOM's pixel_array holds stored values, not Hounsfield units \(its RescaleSlope / RescaleIntercept are not "
        r"applied, nor the windows\), and casting it to uint8 would wrap them. Pass the DICOM file path, which this "
        r"model reads through the contract's 3 DICOM windows \['brain', 'subdural', 'bone'\], or window it in "
        rf"memory: {code}; cast 0..255 picture data to uint8$"
    )):  # fmt: skip
        pipe(stored)
    with pytest.raises(ValueError, match=r"int32 .* not Hounsfield units .* each file's own window \(its WindowCen"):
        ImagePreprocessing()(stored.astype(np.int32))  # every contract reads DICOM files: the default its own window
    with pytest.raises(ValueError, match=rf"spans \[-2000, 1200\] .*; for Hounsfield units .* in memory: {code}$"):
        pipe(stored.astype(np.float32))
    path = shared_data(*CT_SLICE)
    (advice,) = re.findall(r"`(.*)`", str(pytest.raises(ValueError, pipe, stored).value))
    windowed = eval(advice, {"window_channels": window_channels, "read_dicom": read_dicom, "path": path})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(pipe(windowed).probs, pipe([path]).probs, rtol=0, atol=0)  # the advice is right


def first_score(output) -> float:
    with open(output, newline="") as handle:
        return float(next(csv.DictReader(handle))["score"])


def test_predict_uses_the_saved_windows_unless_told_otherwise(tmp_path):
    path = shared_data(*CT_SLICE)
    unet_pipeline(preprocessing={"medical": {"windows": ["bone"]}}).save_pretrained(tmp_path / "model")
    pipe = DiffusionClassifierPipeline.from_pretrained(str(tmp_path / "model"))
    pipe.set_progress_bar_config(disable=True)
    run = ["predict", "--model_dir", str(tmp_path / "model"), "--input", str(path), "--no_progress_bar"]
    main(run + ["--output", str(tmp_path / "saved.csv")])
    main(run + ["--output", str(tmp_path / "brain" / "brain.csv"), "--window", "brain"])
    assert json.loads((tmp_path / "saved.csv.json").read_text())["run"]["windows"] == ["bone"]
    assert json.loads((tmp_path / "brain" / "brain.csv.json").read_text())["run"]["windows"] == ["brain"]
    bone, brain = (first_score(output) for output in (tmp_path / "saved.csv", tmp_path / "brain" / "brain.csv"))
    assert bone == pipe([path]).scores[0].item()
    pipe.set_preprocessing({"medical": {"windows": ["brain"]}})
    assert brain == pipe([path]).scores[0].item() and brain != bone


# --------------------------------------------------------------------------------------------------
# 16-bit files at another guessed bit depth than the training images'
# --------------------------------------------------------------------------------------------------

# The medical contract of a model trained on 16-bit files that were all guessed at 12 bits, and as saved before the
# record existed.
RECORDED_12 = {"windows": ["file"], "padding_fill": 0.0, "bits_stored": None, "guessed_bits_stored": 12}
EARLIER = {"windows": ["file"], "padding_fill": 0.0, "bits_stored": None}


def scans(folder):
    """A 12-bit scan (maximum 4000: read at 12 bits) and the same scan at half dose (maximum 2000: 11 bits)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(0).integers(0, 4001, (20, 16)).astype(np.uint16)
    values[0, 0] = 4000
    Image.fromarray(values).save(folder / "full_dose.png")
    Image.fromarray(values // 2).save(folder / "half_dose.png")
    return folder / "full_dose.png", folder / "half_dose.png"


def recorded_and_earlier(folder):
    """One tiny model saved twice: with the record (`model`), and as saved before the record existed (`earlier`)."""
    import shutil

    unet_pipeline(preprocessing={"medical": RECORDED_12}).save_pretrained(folder / "model")
    shutil.copytree(folder / "model", folder / "earlier")
    index = json.loads((folder / "earlier" / "model_index.json").read_text())
    index["preprocessing"]["medical"] = EARLIER
    (folder / "earlier" / "model_index.json").write_text(json.dumps(index))
    return folder / "model", folder / "earlier"


def depth_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "another bit depth than the model's training" in str(w.message)]


def test_the_recorded_bit_depth_round_trips_and_an_earlier_contract_loads_as_saved():
    contract = ImagePreprocessing(8, 1, medical=RECORDED_12)
    assert contract.medical == MedicalPreprocessing(guessed_bits_stored=12, pil_images_as_files=False)  # as saved
    assert ImagePreprocessing.from_dict(json.loads(json.dumps(contract.to_dict()))) == contract
    earlier = ImagePreprocessing.from_dict({"image_size": 8, "num_channels": 1, "medical": EARLIER})
    assert earlier.medical.guessed_bits_stored is None
    assert earlier.to_dict()["medical"] == EARLIER  # written back as it was saved
    with pytest.raises(ValueError, match="guessed_bits_stored: expected an integer in 1..16 or None, got 17"):
        MedicalPreprocessing(guessed_bits_stored=17)


def test_pipe_warns_once_about_paths_read_at_another_guessed_depth_than_its_training_files(tmp_path):
    from PIL import Image

    full, half = scans(tmp_path / "scans")
    model, earlier = recorded_and_earlier(tmp_path)
    pipe, earlier = (DiffusionClassifierPipeline.from_pretrained(str(folder)) for folder in (model, earlier))
    pipe.set_progress_bar_config(disable=True)
    earlier.set_progress_bar_config(disable=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = pipe([str(full), str(half), str(half)]).probs
    (message,) = depth_warnings(caught)  # one for the call
    assert message.startswith("2 of 3 16-bit images were scaled by another bit depth than the model's training "
                              "images, all read at 12 bits")  # fmt: skip
    assert f"{half} at 11 bits" in message and str(full) not in message and "--bits_stored 12" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe([str(full)])  # read at the training images' depth: nothing to say
    with pytest.warns(UserWarning, match=r"item 0 \(a 16-bit PIL image\) at 16 bits"):
        pipe(Image.open(full))  # read from [0, 65535]: 16 bits
    assert earlier.preprocessing.medical.guessed_bits_stored is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no record, nothing to compare with
        assert torch.equal(earlier([str(full), str(half), str(half)]).probs, probs)  # the same pixels: only warned
    stated = unet_pipeline(preprocessing={"medical": {**RECORDED_12, "bits_stored": 12}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the depth stated: every file read at 12 bits
        stated([str(full), str(half)])


def test_predict_warns_once_about_the_files_read_at_another_guessed_depth(tmp_path):
    full, half = scans(tmp_path / "scans")
    model, earlier = recorded_and_earlier(tmp_path)
    run = ["predict", "--model_dir", str(model), "--input", str(tmp_path / "scans"), "--no_progress_bar",
           "--batch_size", "1"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(run + ["--output", str(tmp_path / "recorded.csv")])
    (message,) = depth_warnings(caught)  # one for the run, each file counted once
    assert message.startswith("1 of 2 16-bit images were scaled by another bit depth")
    assert f"{half} at 11 bits" in message and str(full) not in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(run[:2] + [str(earlier)] + run[3:] + ["--output", str(tmp_path / "earlier.csv")])
    assert depth_warnings(caught) == []
    assert (tmp_path / "recorded.csv").read_text() == (tmp_path / "earlier.csv").read_text()  # the same scores


# --------------------------------------------------------------------------------------------------
# Evaluation sees the demo's pixels
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_reproduces_the_demo_report_exactly(tmp_path, capsys):
    main([
        "demo", "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny", "--max_train_steps", "2",
        "--lr_warmup_steps", "1", "--timesteps", "10", "100",
    ])  # fmt: skip
    main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--dataset", "digits", "--output_dir", str(tmp_path / "eval")])
    reported = json.loads((tmp_path / "metrics.json").read_text())["test"]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "confusion_matrix", "num_samples"):
        assert evaluated[key] == reported[key], key
    assert evaluated["calibration"]["ece"] == reported["calibration"]["ece"]  # the same probabilities, not only labels

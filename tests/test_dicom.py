"""DICOM to Hounsfield units to windowed channels, 16-bit PNG / TIFF, DICOM and CSV sources, patient-level splits.

References are hand computations on the files' own tags (raw little-endian bytes * RescaleSlope + RescaleIntercept;
the LINEAR_EXACT window `clip((x - (c - w / 2)) / w, 0, 1)`) and pydicom's own VOI implementation. Windowed values
are float32 in [0, 1]: rounding to float32 moves them by at most half an ulp below 1, 2**-25, so the tolerance
2**-24 leaves room for the float64 reference's own rounding.
"""

import copy
import csv
import json
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.data import (
    SPLITS,
    ImagePreprocessing,
    MedicalPreprocessing,
    StreamingImages,
    VoiTable,
    Window,
    load_image_classification_data,
    preprocess_images,
    read_16bit_image,
    read_dicom,
    read_dicom_folder,
    stratified_group_split,
    streaming_image_classification_data,
    window_channels,
)

from .conftest import shared_data

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from diffusion_classifiers.data.dicom import read_dicom_header  # noqa: E402
from diffusion_classifiers.data.windows import parse_windows  # noqa: E402

WINDOW_TOLERANCE = 2.0**-24


def pydicom_file(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not found: install pydicom-data (the [test] extra)")
    return path


def cq500(*parts):
    return shared_data("cq500_dicom_sample", *parts)


def hand_window(values, center, width):
    lower = center - width / 2
    return np.clip((np.asarray(values, dtype=np.float64) - lower) / width, 0.0, 1.0)


def raw_pixels(dataset, dtype):
    """The uncompressed PixelData bytes as an array [F, H, W], without pydicom's pixel pipeline."""
    frames = int(dataset.get("NumberOfFrames") or 1)
    return np.frombuffer(dataset.PixelData, dtype=dtype).reshape(frames, dataset.Rows, dataset.Columns)


def write_dicom(dataset, path, **tags):
    dataset = copy.deepcopy(dataset)
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------------
# Hounsfield units, windows, MONOCHROME1, padding, frames
# --------------------------------------------------------------------------------------------------


def test_cq500_uncompressed_hu_and_metadata_match_tags():
    path = cq500("CQ500-CT-1", "CT000000.dcm")
    dataset = pydicom.dcmread(path)
    hu = raw_pixels(dataset, "<i2") * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    image = read_dicom(path)
    assert image.values.dtype == np.float32 and image.values.shape == (1, 512, 512)
    np.testing.assert_array_equal(image.values, hu)  # integers below 2**24: exact in float32
    np.testing.assert_array_equal(image.padding, raw_pixels(dataset, "<i2") == dataset.PixelPaddingValue)
    assert image.windows == (Window(30.0, 80.0),)
    assert image.metadata == {
        "PatientID": "CQ500-CT-1",
        "StudyInstanceUID": dataset.StudyInstanceUID,
        "SeriesInstanceUID": dataset.SeriesInstanceUID,
        "Laterality": None,  # a head CT names no ImageLaterality nor Laterality
        "ViewPosition": None,
        "SOPInstanceUID": dataset.SOPInstanceUID,
        "Modality": "CT",
        "PresentationIntentType": None,
        "InstanceNumber": int(dataset.InstanceNumber),
        "ImageType": tuple(dataset.ImageType),  # ("ORIGINAL", "PRIMARY", "AXIAL")
    }


def test_cq500_jpeg_lossless_hu_and_three_windows_match_hand_computation():
    pytest.importorskip("libjpeg", reason="JPEG Lossless needs pylibjpeg-libjpeg (the [medical] extra)")
    path = cq500("CQ500-CT-0", "CT000010.dcm")
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID.is_compressed
    stored = dataset.pixel_array
    hu = stored * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    image = read_dicom(path)
    np.testing.assert_array_equal(image.values[0], hu)
    channels = window_channels(image, ["brain", "subdural", "bone"])
    assert channels.shape == (1, 3, 512, 512) and channels.dtype == np.float32
    np.testing.assert_array_equal(window_channels(image, "brain")[:, 0], channels[:, 0])  # one window given alone
    padding = stored == dataset.PixelPaddingValue
    assert padding.sum() > 0
    for channel, (center, width) in enumerate([(40, 80), (80, 200), (600, 2800)]):
        expected = np.where(padding, 0.0, hand_window(hu, center, width))
        np.testing.assert_allclose(channels[0, channel], expected, rtol=0, atol=WINDOW_TOLERANCE)
    # Brain window edges, by hand: 0 HU -> 0, 40 HU -> 0.5, 80 HU -> 1.
    for value, expected in [(0, 0.0), (40, 0.5), (80, 1.0)]:
        assert np.all(channels[0, 0][hu == value] == expected)


def test_693_unci_file_window_matches_pydicom_linear_exact():
    path = pydicom_file("693_UNCI.dcm")
    dataset = pydicom.dcmread(path)
    image = read_dicom(path)
    assert image.windows == (Window(40.0, 100.0),)
    np.testing.assert_array_equal(image.values, raw_pixels(dataset, "<i2") * 1.0 - 1024.0)
    ours = window_channels(image, ["file"], padding_fill=0.0)[0, 0]
    # pydicom's VOI implementation maps onto the rescaled storable range [low, high]; bring it to [0, 1].
    dataset.VOILUTFunction = "LINEAR_EXACT"
    reference = pydicom.pixels.apply_windowing(image.values[0].astype(np.float64), dataset)
    low, high = image.stored_range
    assert (low, high) == (-(2**13) - 1024.0, 2**13 - 1 - 1024.0)  # BitsStored 14, signed
    reference = np.where(image.padding[0], 0.0, (reference - low) / (high - low))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=WINDOW_TOLERANCE)
    np.testing.assert_allclose(ours, np.where(image.padding[0], 0.0, hand_window(image.values[0], 40, 100)),
                               rtol=0, atol=WINDOW_TOLERANCE)


def test_693_jpeg2000_decodes_with_openjpeg():
    pytest.importorskip("openjpeg", reason="JPEG 2000 needs pylibjpeg-openjpeg (the [medical] extra)")
    dataset = pydicom.dcmread(pydicom_file("693_J2KR.dcm"))
    image = read_dicom(pydicom_file("693_J2KR.dcm"))
    np.testing.assert_array_equal(image.values[0], dataset.pixel_array - 1024.0)
    assert image.metadata["PatientID"] == "CQ500-CT-310"


def test_rg1_monochrome1_is_inverted_after_windowing():
    path = pydicom_file("RG1_UNCI.dcm")
    dataset = pydicom.dcmread(path)
    image = read_dicom(path)
    assert image.monochrome1 and image.windows == (Window(15000.0, 30000.0),)
    stored = raw_pixels(dataset, "<u2")
    np.testing.assert_array_equal(image.values, stored)  # no rescale tags: modality values are the stored values
    channels = window_channels(image, ["file"])
    np.testing.assert_allclose(channels[:, 0], 1.0 - hand_window(stored, 15000, 30000), rtol=0, atol=WINDOW_TOLERANCE)
    darkest_stored = np.unravel_index(np.argmin(stored), stored.shape)
    assert channels[:, 0][darkest_stored] == channels.max()  # the lowest value shows white


def test_sigmoid_voi_lut_function_of_a_radiograph_matches_pydicom_then_is_inverted(tmp_path):
    # digital mammography files often name VOILUTFunction SIGMOID: read as linear, the tails would be clipped flat
    dataset = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))  # CR, MONOCHROME1, 15 bits stored, no rescale
    stored = raw_pixels(dataset, "<u2")
    center, width = float(np.median(stored)), float(np.subtract(*np.percentile(stored, [75, 25])))
    path = write_dicom(dataset, tmp_path / "sigmoid.dcm", WindowCenter=center, WindowWidth=width,
                       VOILUTFunction="SIGMOID")
    image = read_dicom(path)
    assert image.windows == (Window(center, width, "SIGMOID"),) and read_dicom_header(path).windows == image.windows
    reference = pydicom.pixels.apply_windowing(stored[0].astype(np.float64), pydicom.dcmread(path))
    assert image.stored_range == (0.0, 2.0**15 - 1)  # pydicom's sigmoid spans the storable range: bring it to [0, 1]
    channel = window_channels(image, ["file"])[0, 0]
    np.testing.assert_allclose(channel, 1.0 - reference / (2**15 - 1), rtol=0, atol=WINDOW_TOLERANCE)
    linear = 1.0 - hand_window(stored[0], center, width)
    assert np.abs(channel - linear).max() > 0.1  # not the linear window
    tails = (stored[0] < center - width / 2) | (stored[0] > center + width / 2)
    assert tails.mean() > 0.2 and len(np.unique(channel[tails])) > 100  # the tails keep their grey levels


def test_a_voi_lut_sequence_is_the_files_own_window_without_window_tags(tmp_path):
    dataset = pydicom.dcmread(pydicom_file("vlut_04.dcm"))  # 8-bit, a 256-entry VOI LUT of 16 bits, no window tags
    dataset.VOILUTSequence[0].LUTData = [round(65535 * (k / 255) ** 2) for k in range(256)]  # its own: a gamma curve
    path = write_dicom(dataset, tmp_path / "table.dcm")
    dataset = pydicom.dcmread(path)
    image = read_dicom(path)
    (table,) = image.windows
    assert isinstance(table, VoiTable) and read_dicom_header(path).windows == image.windows
    assert table.describe() == "VOI LUT of 256 entries from 0"
    reference = pydicom.pixels.apply_voi(dataset.pixel_array, dataset) / (2**16 - 1)
    channel = MedicalPreprocessing(windows=("file",)).read(path)[0, 0]
    np.testing.assert_allclose(channel, reference, rtol=0, atol=WINDOW_TOLERANCE)
    assert np.abs(channel - dataset.pixel_array / 255.0).max() > 0.1  # not the stored values scaled
    # window tags, when a file has both, are its own window, as before tables were read
    both = write_dicom(dataset, tmp_path / "both.dcm", WindowCenter=128, WindowWidth=256)
    assert read_dicom(both).windows == (Window(128.0, 256.0),)
    # QA: an 8-bit table of more than 256 entries (pydicom's apply_voi indexes it in 8 bits: it wrapped, near black)
    radiograph = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))  # MONOCHROME1, made 12 bits stored below
    stored = raw_pixels(radiograph, "<u2")[0] >> 3
    radiograph.PixelData, radiograph.BitsStored, radiograph.HighBit = stored.astype("<u2").tobytes(), 12, 11
    del radiograph.WindowCenter, radiograph.WindowWidth
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 8])
    item.add_new("LUTData", "US", [k // 16 for k in range(4096)])
    radiograph.VOILUTSequence = pydicom.Sequence([item])
    lut8 = write_dicom(radiograph, tmp_path / "lut8.dcm")
    assert stored.max() > 2048  # indices far past 256
    np.testing.assert_allclose(MedicalPreprocessing(windows=("file",)).read(lut8)[0, 0], 1.0 - (stored // 16) / 255.0,
                               rtol=0, atol=WINDOW_TOLERANCE)
    # a table stated 16 bits whose entries span 12 (some devices state the storage size): read at 12, not near black
    item.LUTDescriptor, item.LUTData = [4096, 0, 16], list(range(4096))
    wide = write_dicom(radiograph, tmp_path / "stated16.dcm")
    assert read_dicom(wide).windows[0].bits == 12
    np.testing.assert_allclose(MedicalPreprocessing(windows=("file",)).read(wide)[0, 0], 1.0 - stored / 4095.0,
                               rtol=0, atol=WINDOW_TOLERANCE)
    # a table whose entries exceed its stated bit depth refuses only the file's own window
    dataset.VOILUTSequence[0].LUTDescriptor = [256, 0, 8]
    bad = write_dicom(dataset, tmp_path / "bad_table.dcm")
    assert MedicalPreprocessing(windows=("full",)).read(bad).shape == (1, 1, 512, 512)
    with pytest.raises(ValueError, match=r"bad_table.dcm: bad window tags VOI LUT Sequence item 0: .*its own window"):
        window_channels(read_dicom(bad), ["file"])


@pytest.mark.parametrize("syntax", ["ExplicitVRLittleEndian", "ImplicitVRLittleEndian"])
def test_a_voi_table_of_signed_values_written_as_words_is_read_as_written(tmp_path, syntax):
    # review: LUTData as OW words in the file's byte order; a first mapped value of -1024 for signed pixels written
    # as US (64512) would have mapped every pixel below the table, one grey
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))  # signed pixels
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.file_meta.TransferSyntaxUID = getattr(pydicom.uid, syntax)
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 2**16 - 1024, 12])
    item.add_new("LUTData", "OW", np.arange(4096, dtype="<u2")[::-1].tobytes())  # an inverting ramp
    dataset.VOILUTSequence = pydicom.Sequence([item])
    image = read_dicom(write_dicom(dataset, tmp_path / "table.dcm"))
    assert image.windows[0].first_mapped == -1024
    expected = (4095 - np.clip(np.rint(image.values[0]) + 1024, 0, 4095)) / 4095
    np.testing.assert_allclose(window_channels(image, ["file"])[0, 0], expected, rtol=0, atol=WINDOW_TOLERANCE)
    assert read_dicom(tmp_path / "table.dcm").windows[0] is image.windows[0]  # equal tables are one object
    # a big-endian file's words (its transfer syntax says so)
    big = pydicom.Dataset()
    big.file_meta = pydicom.dataset.FileMetaDataset()
    big.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    words = pydicom.Dataset()
    words.add_new("LUTDescriptor", "US", [4, 0, 16])
    words.add_new("LUTData", "OW", np.array([1, 2, 300, 65535], ">u2").tobytes())
    big.VOILUTSequence = pydicom.Sequence([words])
    (table,) = VoiTable.from_tags(big)
    assert np.frombuffer(table.entries, np.uint16).tolist() == [1, 2, 300, 65535]


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", ""])
def test_linear_voi_lut_functions_read_as_linear_exact(tmp_path, function):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    path = write_dicom(dataset, tmp_path / "linear.dcm", WindowCenter=40, WindowWidth=80, VOILUTFunction=function)
    assert read_dicom(path).windows == (Window(40.0, 80.0),)


def test_a_sigmoid_window_is_saved_with_its_function_and_a_linear_one_as_before():
    medical = MedicalPreprocessing(windows=(Window(2047.0, 4096.0, "SIGMOID"), "brain", Window(40.0, 80.0)))
    config = medical.to_dict()
    assert config["windows"] == [{"center": 2047.0, "width": 4096.0, "function": "SIGMOID"}, "brain",
                                 {"center": 40.0, "width": 80.0}]
    assert MedicalPreprocessing.from_dict(json.loads(json.dumps(config))) == medical
    assert repr(Window(40.0, 80.0)) == "Window(center=40.0, width=80.0)"
    values = np.array([2047.0 - 4096.0, 2047.0, 2047.0 + 4096.0])
    np.testing.assert_allclose(Window(2047.0, 4096.0, "SIGMOID").apply(values), 1 / (1 + np.exp([4.0, 0.0, -4.0])),
                               rtol=0, atol=WINDOW_TOLERANCE)
    with pytest.raises(ValueError, match=r"Window function 'GAMMA': expected one of \['LINEAR_EXACT', 'SIGMOID'\]"):
        Window(40.0, 80.0, "GAMMA")


def test_multiframe_file_is_split_into_frames():
    path = pydicom_file("emri_small.dcm")
    dataset = pydicom.dcmread(path)
    image = read_dicom(path)
    assert image.num_frames == 10 and image.values.shape == (10, 64, 64)
    np.testing.assert_array_equal(image.values, raw_pixels(dataset, "<u2"))
    # No window tags: "full" spans the 12 stored bits, so the windowed value is stored / 4095.
    assert image.windows == () and image.stored_range == (0.0, 4095.0)
    channels = window_channels(image, ["full"])
    np.testing.assert_allclose(channels[:, 0], raw_pixels(dataset, "<u2") / 4095.0, rtol=0, atol=WINDOW_TOLERANCE)
    with pytest.raises(ValueError, match="no WindowCenter / WindowWidth"):
        window_channels(image, ["file"])


def functional_group(**tags):
    item = pydicom.Dataset()
    for keyword, value in tags.items():
        setattr(item, keyword, value)
    return pydicom.Sequence([item])


def test_enhanced_ct_rescale_and_window_come_from_its_functional_groups(tmp_path):
    # Enhanced CT keeps RescaleSlope / Intercept and its window in the functional groups, none at the top level
    path = pydicom_file("eCT_Supplemental.dcm")
    dataset = pydicom.dcmread(path)
    assert "RescaleIntercept" not in dataset and "WindowCenter" not in dataset
    stored = raw_pixels(dataset, "<u2")
    image = read_dicom(path)
    hu = stored * 1.0 - 1024.0  # the Shared Functional Groups' Pixel Value Transformation: slope 1, intercept -1024
    np.testing.assert_array_equal(image.values, hu)
    assert image.values.min() == -1024.0 and image.windows == (Window(49.0, 102.0),) and not image.frame_windows
    assert image.stored_range == (-1024.0, 2**16 - 1 - 1024.0)
    np.testing.assert_allclose(window_channels(image, ["file"])[:, 0], hand_window(hu, 49, 102), rtol=0,
                               atol=WINDOW_TOLERANCE)
    np.testing.assert_allclose(window_channels(image, ["brain"])[:, 0], hand_window(hu, 40, 80), rtol=0,
                               atol=WINDOW_TOLERANCE)
    # the second frame's own Per-frame Functional Groups override the shared ones, for that frame only
    frame = dataset.PerFrameFunctionalGroupsSequence[1]
    frame.PixelValueTransformationSequence = functional_group(RescaleSlope=2, RescaleIntercept=-2048, RescaleType="HU")
    frame.FrameVOILUTSequence = functional_group(WindowCenter=100, WindowWidth=400)
    path = write_dicom(dataset, tmp_path / "per_frame.dcm")
    image = read_dicom(path)
    np.testing.assert_array_equal(image.values[0], hu[0])
    np.testing.assert_array_equal(image.values[1], stored[1] * 2.0 - 2048.0)
    assert image.frame_windows == ((Window(49.0, 102.0),), (Window(100.0, 400.0),))
    channels = window_channels(image, ["file"])
    np.testing.assert_allclose(channels[0, 0], hand_window(hu[0], 49, 102), rtol=0, atol=WINDOW_TOLERANCE)
    np.testing.assert_allclose(channels[1, 0], hand_window(image.values[1], 100, 400), rtol=0, atol=WINDOW_TOLERANCE)
    (second,) = read_dicom(path, frame=1).values
    np.testing.assert_array_equal(second, image.values[1])
    assert read_dicom(path, frame=1).windows == (Window(100.0, 400.0),)
    header = read_dicom_header(path)
    assert header.frame_windows == image.frame_windows
    assert header.stored_range == image.stored_range == (-2048.0, 2 * (2**16 - 1) - 2048.0)



def test_a_tomosynthesis_volume_names_its_breast_in_its_frames_anatomy(tmp_path):
    # review: breast tomosynthesis (enhanced multi-frame) keeps laterality in its Frame Anatomy functional group
    dataset = pydicom.dcmread(pydicom_file("eCT_Supplemental.dcm"))
    assert read_dicom_header(pydicom_file("eCT_Supplemental.dcm")).metadata["Laterality"] == "U"  # unpaired
    dataset.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = functional_group(FrameLaterality="R")
    assert read_dicom_header(write_dicom(dataset, tmp_path / "volume.dcm")).metadata["Laterality"] == "R"


def test_a_frame_read_alone_equals_that_frame_of_the_whole_file_when_frames_have_their_own_rescale(tmp_path):
    # streaming training reads one frame at a time, predict and in-memory training the whole file: "full" spans the
    # file's storable range over every frame's rescale either way, so both give one tensor per frame
    dataset = pydicom.dcmread(pydicom_file("eCT_Supplemental.dcm"))
    frame = dataset.PerFrameFunctionalGroupsSequence[1]
    frame.PixelValueTransformationSequence = functional_group(RescaleSlope=2, RescaleIntercept=-2048, RescaleType="HU")
    frame.FrameVOILUTSequence = functional_group(WindowCenter=100, WindowWidth=400)
    path = write_dicom(dataset, tmp_path / "per_frame.dcm")
    file_range = (-2048.0, 2 * (2**16 - 1) - 2048.0)
    assert read_dicom(path).stored_range == file_range
    for windows in [("full",), ("file",), ("full", "file", "brain")]:
        medical = MedicalPreprocessing(windows)
        whole = medical.read(path)
        for k in range(len(whole)):
            assert read_dicom(path, frame=k).stored_range == file_range
            np.testing.assert_array_equal(medical.read(path, frame=k), whole[k : k + 1])
    # the frames' own windows differ: each frame read alone has its own, as in the whole file
    assert [read_dicom(path, frame=k).windows for k in range(2)] == [(Window(49.0, 102.0),), (Window(100.0, 400.0),)]
    # tags that are no window in one frame refuse the file's own window whichever frame is read, as for the whole file
    frame.FrameVOILUTSequence = functional_group(WindowCenter=100, WindowWidth=0)
    path = write_dicom(dataset, tmp_path / "bad_frame_window.dcm")
    for k in (None, 0, 1):
        with pytest.raises(ValueError, match=r"bad_frame_window.dcm: bad window tags WindowCenter 100.0 and WindowWidth 0.0"):
            MedicalPreprocessing(("file",)).read(path, frame=k)


def test_padding_range_limit_is_masked_to_the_stated_fill(tmp_path):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    stored = raw_pixels(dataset, "<i2")
    limit = int(np.percentile(stored, 10))  # pad the darkest tenth
    dataset.add_new("PixelPaddingValue", "SS", int(stored.min()))  # SS: the pixels are signed
    dataset.add_new("PixelPaddingRangeLimit", "SS", limit)
    path = write_dicom(dataset, tmp_path / "padded.dcm")
    image = read_dicom(path)
    expected_mask = (stored >= stored.min()) & (stored <= limit)
    np.testing.assert_array_equal(image.padding, expected_mask)
    channels = window_channels(image, ["brain", Window(0.0, 4000.0)], padding_fill=0.25)
    assert np.all(channels[:, :, expected_mask[0]] == 0.25)
    kept = ~expected_mask[0]
    np.testing.assert_allclose(channels[0, 1][kept], hand_window(image.values[0], 0, 4000)[kept], rtol=0,
                               atol=WINDOW_TOLERANCE)


def test_window_from_tags_reads_multi_valued_windows():
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    dataset.WindowCenter, dataset.WindowWidth = [40, 600], [80, 2800]
    assert Window.from_tags(dataset) == (Window(40.0, 80.0), Window(600.0, 2800.0))
    dataset.WindowWidth = [80]
    with pytest.raises(ValueError, match="as many centres as widths"):
        Window.from_tags(dataset)


def test_read_dicom_folder_orders_slices_by_instance_number():
    pytest.importorskip("libjpeg", reason="JPEG Lossless needs pylibjpeg-libjpeg (the [medical] extra)")
    images = read_dicom_folder(cq500("CQ500-CT-0"))
    numbers = [image.metadata["InstanceNumber"] for image in images]
    assert len(images) == 23 and numbers == sorted(numbers)


# --------------------------------------------------------------------------------------------------
# Bad input: each a clear error
# --------------------------------------------------------------------------------------------------


def test_dicom_without_pixel_data_is_refused(tmp_path):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del dataset.PixelData
    path = write_dicom(dataset, tmp_path / "no_pixels.dcm")
    with pytest.raises(ValueError, match=r"no_pixels.dcm has no pixel data \(CT Image Storage"):
        read_dicom(path)


def test_segmentations_and_dose_grids_are_refused_and_objects_without_pixels_named_generally(tmp_path):
    """QA (a PACS export): a segmentation's masks and a dose grid were read as training images and classified by
    predict; an ECG waveform was said to be "a structured report or presentation state"."""
    dose = r"rtdose.dcm is a RT Dose Storage object \(modality RTDOSE\): its pixels are a radiotherapy plan's dose grid"
    with pytest.raises(ValueError, match=rf"{dose}, not a scan; expected an image"):
        read_dicom_header(pydicom_file("rtdose.dcm"))
    segmentation = write_dicom(
        pydicom.dcmread(pydicom_file("CT_small.dcm")), tmp_path / "seg.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4"
    )
    with pytest.raises(ValueError, match=r"seg.dcm is a Segmentation Storage object .* a segmentation's label masks"):
        read_dicom(segmentation)
    label_map = write_dicom(pydicom.dcmread(segmentation), segmentation, SOPClassUID="1.2.840.10008.5.1.4.1.1.66.7")
    with pytest.raises(ValueError, match=r"seg.dcm is a Label Map Segmentation Storage object .* label map, not a"):
        read_dicom(label_map)  # a class pydicom 3.0 has no name for
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del dataset.PixelData
    waveform = write_dicom(dataset, tmp_path / "ecg.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.9.1.1")
    no_pixels = r"a report, presentation state, waveform, plan or document holds no pixels"
    with pytest.raises(ValueError, match=rf"\(12-lead ECG Waveform Storage, .*\); expected an image \({no_pixels}\)"):
        read_dicom(waveform)


def test_a_dicom_declaring_more_pixels_than_pils_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    """QA (a security review): a 282 KB deflated file of 12000 x 12000 pixels took 4.6 GB to predict, where a PNG of
    that size is refused as a decompression bomb."""
    from PIL import Image

    huge = write_dicom(pydicom.dcmread(pydicom_file("CT_small.dcm")), tmp_path / "huge.dcm", Rows=12000, Columns=12000)
    refused = r"huge.dcm: 1 frame\(s\) of 12000 x 12000 pixels, over the limit of 89478485 pixels a frame .* Refused"
    for read in (read_dicom_header, read_dicom):
        with pytest.raises(ValueError, match=refused):
            read(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # a frame of the cine at the limit, its 10 over 4 of them
    with pytest.raises(ValueError, match=r"10 frame\(s\) of 64 x 64 pixels, over the limit of 4096 pixels a frame and "
                                         r"16384 a file"):  # fmt: skip
        read_dicom(pydicom_file("emri_small.dcm"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's switch for no limit
    assert read_dicom_header(pydicom_file("emri_small.dcm")).num_frames == 10


def test_a_native_multi_frame_file_is_read_a_frame_at_a_time_past_the_files_pixel_limit(monkeypatch):
    """QA (a mammography group): predict refused an 80-frame breast tomosynthesis volume of 2457 x 1996 (785 MB,
    uncompressed) as a decompression bomb, after reading its pixels whole. A native file's pixels are in its bytes:
    read a frame at a time, it is held to the frame's limit alone; a compressed one, to the file's too."""
    from PIL import Image

    from diffusion_classifiers.data.dicom import read_dicom_frames

    names = ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm", "image_dfl.dcm", "CT_small.dcm"]
    for path in map(pydicom_file, names):  # native, compressed, deflated: each frame as the whole file's
        whole, frames = read_dicom(path), list(read_dicom_frames(path))
        assert len(frames) == read_dicom_header(path).num_frames == whole.num_frames
        for k, frame in enumerate(frames):
            alone = read_dicom(path, k)
            for image in (frame, alone):
                np.testing.assert_array_equal(image.values, whole.values[k : k + 1])
                np.testing.assert_array_equal(image.padding, whole.padding[k : k + 1])
                assert (image.windows, image.stored_range, image.metadata) == (
                    alone.windows, whole.stored_range, whole.metadata)  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # a frame at the limit, the file's 10 frames over 4
    cine, compressed = pydicom_file("emri_small.dcm"), pydicom_file("emri_small_RLE.dcm")
    over = r"10 frame\(s\) of 64 x 64 pixels, over the limit of 4096 pixels a frame and 16384 a file decoded whole or "
    with pytest.raises(ValueError, match=over + r"compressed .* images this large, or read it a frame at a time"):
        read_dicom(cine)
    assert len(list(read_dicom_frames(cine))) == read_dicom_header(cine).num_frames == 10
    assert read_dicom(cine, 9).values.shape == (1, 64, 64)
    for read in (read_dicom_header, read_dicom, lambda path: next(read_dicom_frames(path))):
        with pytest.raises(ValueError, match=over + r"compressed \(a decompression bomb .* images this large$"):
            read(compressed)  # a small file could declare them


def test_file_that_is_not_dicom_is_named(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"not a DICOM file" * 20)
    with pytest.raises(ValueError, match=r"cannot read DICOM file .*scan.dcm: .*'DICM' prefix") as refused:
        read_dicom(path)
    assert "force=True" not in str(refused.value)  # pydicom's advice, for its own API
    (tmp_path / "empty.dcm").write_bytes(b"")  # QA: said to be "missing DICOM File Meta Information header"
    for read in (read_dicom, read_dicom_header):
        with pytest.raises(ValueError, match=r"cannot read DICOM file .*empty.dcm: the file is empty \(0 bytes\)$"):
            read(tmp_path / "empty.dcm")


def test_truncated_dicom_is_named_truncated_or_corrupt(tmp_path):
    # cut inside its encapsulated (JPEG) pixel data, pydicom reads an empty dataset and only warns
    data = Path(pydicom_file("JPEG-LL.dcm")).read_bytes()
    cut = tmp_path / "cut_jpeg.dcm"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    truncated = r"cannot read DICOM file .*cut_jpeg.dcm: truncated or corrupt \(End of file reached before delimiter"
    with pytest.raises(ValueError, match=truncated):
        read_dicom(cut)
    with pytest.raises(ValueError, match=truncated):  # when data are listed
        read_dicom_header(cut)
    # cut inside its header: an image storage file without pixel data says it may be truncated
    cut.write_bytes(Path(pydicom_file("CT_small.dcm")).read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"has no pixel data \(CT Image Storage.*may be truncated or corrupt"):
        read_dicom(cut)


def test_the_readme_quotes_what_a_truncated_dicom_is_refused_with(tmp_path):
    from .conftest import REPO_ROOT

    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    sentence = readme[readme.index("a truncated or corrupt DICOM (") :]
    quoted = re.findall(r'"([^"]+)"', sentence[: sentence.index("), a compressed file")])
    jpeg = Path(pydicom_file("JPEG-LL.dcm")).read_bytes()
    cuts = {  # cut in its header, in uncompressed pixel data (a 512x512 CT slice cut to 5,000 bytes), in compressed
        "header.dcm": Path(pydicom_file("CT_small.dcm")).read_bytes()[:1000],
        "CT999.dcm": Path(cq500("CQ500-CT-1", "CT000000.dcm")).read_bytes()[:5000],
        "jpeg.dcm": jpeg[: int(len(jpeg) * 0.6)],
    }
    messages = []
    for name, data in cuts.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as refused:
            read_dicom(tmp_path / name)
        messages.append(str(refused.value))
    patterns = [".*".join(re.escape(part) for part in quote.split("...")) for quote in quoted]
    assert len(patterns) == len(messages)
    for pattern, message in zip(patterns, messages):  # in the order the README lists the cuts
        assert re.search(pattern, message), (pattern, message)


@pytest.mark.parametrize(
    "path, plugin",
    [
        (("cq500", "CQ500-CT-0", "CT000010.dcm"), "pylibjpeg-libjpeg"),
        (("pydicom", "693_J2KR.dcm"), "pylibjpeg-openjpeg"),
    ],
)
def test_compressed_file_without_decoder_names_the_plugin(monkeypatch, path, plugin):
    path = cq500(*path[1:]) if path[0] == "cq500" else pydicom_file(path[1])
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    decoder = pydicom.pixels.get_decoder(syntax)
    monkeypatch.setattr(decoder, "_available", {})  # as if no plugin were installed
    assert not decoder.is_available
    with pytest.raises(ImportError, match=rf"compressed as .* no decoder .* pip install pylibjpeg {plugin}"):
        read_dicom(path)
    with pytest.raises(ImportError, match=rf"pip install pylibjpeg {plugin}"):  # when data are listed, not read
        read_dicom_header(path)



def video_clip(path):
    """CT_small.dcm as if it were a DICOM video clip (MPEG2: a transfer syntax pydicom has no decoder for)."""
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile
    dataset.PixelData = encapsulate([b"\x00" * 16])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_check_decoders_refuses_a_missing_plugin_but_leaves_a_syntax_nothing_decodes_to_its_file(tmp_path, monkeypatch):
    from diffusion_classifiers.data.dicom import check_decoders

    clip = video_clip(tmp_path / "clip.dcm")
    jpeg = cq500("CQ500-CT-0", "CT000010.dcm")
    check_decoders([clip, jpeg, pydicom_file("CT_small.dcm")])  # installing nothing would decode the clip: no refusal
    with pytest.raises(ValueError, match=r"clip.dcm: unsupported transfer syntax MPEG2"):  # where the file is read
        read_dicom(clip)
    syntax = pydicom.dcmread(jpeg, stop_before_pixels=True).file_meta.TransferSyntaxUID
    monkeypatch.setattr(pydicom.pixels.get_decoder(syntax), "_available", {})  # as if no JPEG plugin were installed
    with pytest.raises(ValueError, match=r"CT000010.dcm: .*compressed as JPEG Lossless.*pip install pylibjpeg"):
        check_decoders([clip, jpeg])


def test_missing_pydicom_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r'pip install "diffusion-classifiers\[medical\]"'):
        read_dicom(pydicom_file("CT_small.dcm"))


@pytest.mark.parametrize("width", [0.0, -80.0, float("nan")])
def test_window_width_not_positive_is_refused(width):
    with pytest.raises(ValueError, match=r"Window\(center=40, width=.*expected a finite center and a finite width > 0"):
        Window(40, width)


@pytest.mark.parametrize(
    "center, width, values",
    [("40", "0", "WindowCenter 40 and WindowWidth 0"), ("40", "-80", "WindowCenter 40 and WindowWidth -80"),
     (["40", "400"], "80", r"WindowCenter \[40, 400\] and WindowWidth 80")],
)
def test_bad_window_tags_refuse_only_the_files_own_window_naming_file_and_values(tmp_path, center, width, values):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    path = write_dicom(dataset, tmp_path / "odd_window.dcm", WindowCenter=center, WindowWidth=width)
    hu = raw_pixels(dataset, "<i2") * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    three = MedicalPreprocessing(windows=("brain", "subdural", Window(600, 2800)))
    channels = three.read(path)  # the presets need nothing of the file's own window tags
    for channel, (c, w) in enumerate([(40, 80), (80, 200), (600, 2800)]):
        np.testing.assert_allclose(channels[0, channel], hand_window(hu[0], c, w), rtol=0, atol=WINDOW_TOLERANCE)
    streaming_headers_pass = StreamingImages.from_files([path], image_size=8, num_channels=3, medical=three)
    assert len(streaming_headers_pass) == 1
    own = rf"DICOM file .*odd_window.dcm: bad window tags {values}: expected .*; its own window \('file'\) cannot"
    with pytest.raises(ValueError, match=own):
        window_channels(read_dicom(path), ["file"])
    with pytest.raises(ValueError, match=own):  # refused when files are listed, before any pixel is decoded
        StreamingImages.from_files([path], image_size=8, num_channels=1)


def test_an_unknown_voi_lut_function_refuses_only_the_files_own_window(tmp_path):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    path = write_dicom(dataset, tmp_path / "gamma.dcm", WindowCenter=40, WindowWidth=80, VOILUTFunction="GAMMA")
    assert MedicalPreprocessing(windows=("brain",)).read(path).shape == (1, 1, 128, 128)
    message = (r"gamma.dcm: bad window tags VOILUTFunction 'GAMMA': expected LINEAR, LINEAR_EXACT or SIGMOID; its own "
               r"window \('file'\) cannot be used")
    with pytest.raises(ValueError, match=message):
        window_channels(read_dicom(path), ["file"])


def test_unknown_window_names_and_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"'lung' is not a window; expected a Window or one of \['bone', 'brain'"):
        MedicalPreprocessing(windows=("brain", "lung"))
    with pytest.raises(ValueError, match="bits_stored"):
        MedicalPreprocessing(bits_stored=17)
    with pytest.raises(ValueError, match="unknown keys"):
        MedicalPreprocessing.from_dict({"window": ["brain"]})
    with pytest.raises(ValueError, match="2 windows give 2 channels; expected 1 or 3 windows"):
        MedicalPreprocessing(windows=("brain", "bone")).check_channels(None)
    assert parse_windows(["brain", "80 200", "bone"]) == ("brain", Window(80.0, 200.0), "bone")  # a quoted pair
    with pytest.raises(ValueError, match=r"window 'brian': expected a Window\(center, width\) or one of \['brain'.*'full'\]"):
        window_channels(read_dicom(pydicom_file("CT_small.dcm")), ["brian"])


def test_three_windows_into_one_channel_are_refused_before_any_file_is_read(tmp_path, monkeypatch):
    # one channel would blend the three windows into one grey (luma): a model trained so sees none of them
    three = MedicalPreprocessing(windows=("brain", "subdural", "bone"))
    with pytest.raises(ValueError, match=r"num_channels 1 with 3 DICOM windows \['brain', 'subdural', 'bone'\]"):
        three.check_channels(1)
    make_patients(tmp_path, num_patients=12, slices=1)
    monkeypatch.setattr("diffusion_classifiers.data.readers._read_image_folder", pytest.fail)
    with pytest.raises(ValueError, match="num_channels 1 with 3 DICOM windows"):
        load_image_classification_data(tmp_path, image_size=16, num_channels=1, medical=three)
    with pytest.raises(ValueError, match="num_channels 1 with 3 DICOM windows"):
        streaming_image_classification_data(tmp_path, num_channels=1, image_size=16, medical=three)
    # a contract saved so by an earlier version still loads: the check is on reading data, not on the contract
    for windows in (three.windows, ("brain", "bone")):
        contract = ImagePreprocessing(32, 1, medical=MedicalPreprocessing(windows=windows))
        assert ImagePreprocessing.from_dict(json.loads(json.dumps(contract.to_dict()))) == contract


def test_dicom_mixed_with_other_images_is_refused_naming_one_of_each_before_any_is_decoded(tmp_path, monkeypatch):
    # a PNG screenshot beside the slices: with 3 windows its grey would be copied into the 3 windows' channels
    from diffusion_classifiers.data import file_decoding, image_listing

    make_patients(tmp_path, num_patients=12, slices=1)
    Image.new("L", (128, 128), 90).save(tmp_path / "bleed" / "screenshot.png")
    three = MedicalPreprocessing(windows=("brain", "subdural", "bone"))
    monkeypatch.setattr("diffusion_classifiers.data.file_decoding.read_dicom", pytest.fail)
    monkeypatch.setattr("diffusion_classifiers.data.file_decoding.read_dicom_header", pytest.fail)
    mixed = (r"DICOM and other image files mixed, read through 3 DICOM windows \['brain', 'subdural', 'bone'\]: "
             r".*bleed/p\d+_0.dcm is DICOM but .*bleed/screenshot.png is not; an image file has no Hounsfield units")
    with pytest.raises(ValueError, match=mixed):
        load_image_classification_data(tmp_path, image_size=16, medical=three)
    files, labels, _ = image_listing.list_folder_files(tmp_path)
    with pytest.raises(ValueError, match=mixed):  # the streaming listing, told the windows
        file_decoding.list_frames(files, labels, medical=three)
    with pytest.raises(ValueError, match=r"DICOM and other image files mixed, read through .*bleed/screenshot.png"):
        streaming_image_classification_data(tmp_path, num_channels=3, image_size=16, medical=three)
    with pytest.raises(ValueError, match=mixed):  # a list of files given directly, as the listing gives them
        StreamingImages.from_files(files, num_channels=3, image_size=16, medical=three)


def test_image_files_only_through_several_dicom_windows_are_refused(tmp_path):
    """Review: a PNG folder read with --window brain subdural bone was read (each grey copied into 3 channels), and
    the model saved with those windows then refused its own kind of files at predict."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for index in range(3):
            Image.new("L", (16, 16), 40 * index).save(tmp_path / label / f"{index}.png")
    three = MedicalPreprocessing(windows=("brain", "subdural", "bone"))
    refused = r"images: none of the 6 files is DICOM \(e\.g\. .*\.png\), but they are read through 3 DICOM windows"
    with pytest.raises(ValueError, match=refused):
        load_image_classification_data(tmp_path, image_size=8, medical=three)
    with pytest.raises(ValueError, match=refused):
        streaming_image_classification_data(tmp_path, num_channels=3, image_size=8, medical=three)
    assert len(load_image_classification_data(tmp_path, image_size=8)["train"]) > 0  # without windows: read


def test_dicom_beside_16bit_images_is_read_through_one_window_as_predict_reads_them(tmp_path):
    # DICOM X-rays beside 16-bit PNG X-rays, one grey channel each: read together, as predict reads such a folder;
    # only several windows refuse the mix (an image file has no Hounsfield units to window into several channels)
    from diffusion_classifiers.data import file_decoding, image_listing, readers

    make_patients(tmp_path, num_patients=12, slices=1)
    for label in ("bleed", "healthy"):
        ramp = np.tile(np.arange(128, dtype=np.uint16) * 32, (128, 1))  # 0..4064: 12 bits
        Image.fromarray(ramp).save(tmp_path / label / "xray.png")
    one = MedicalPreprocessing(windows=("full",), bits_stored=12)
    raw = readers._read_image_folder(tmp_path, one)
    assert len(raw.images) == 14 and all(image.shape == (1, 1, 128, 128) for image in raw.images)
    files, labels, _ = image_listing.list_folder_files(tmp_path)
    pngs = [i for i, path in enumerate(files) if path.suffix == ".png"]
    for i in pngs:  # the PNG at its bit depth, the DICOM slices through the window
        np.testing.assert_array_equal(raw.images[i][0, 0], read_16bit_image(files[i], bits_stored=12))
    assert file_decoding.list_frames(files, labels, medical=one)[1] == [None if i in pngs else 0 for i in range(14)]
    splits = load_image_classification_data(tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25, medical=one)
    assert sum(len(split.labels) for split in splits.values()) == 14
    streamed = streaming_image_classification_data(  # streaming training lists the folder alike
        tmp_path, num_channels=1, image_size=16, val_fraction=0.25, test_fraction=0.25, medical=one
    )  # fmt: skip
    for name, split in splits.items():
        torch.testing.assert_close(torch.stack([streamed[name][i][0] for i in range(len(split))]), split.images)


def test_mixed_slice_sizes_in_one_folder_name_two_files(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    write_dicom(pydicom.dcmread(pydicom_file("CT_small.dcm")), folder / "a.dcm")
    write_dicom(pydicom.dcmread(pydicom_file("MR_small.dcm")), folder / "b.dcm")
    with pytest.raises(ValueError, match=r"mixed slice sizes: .*a.dcm is 128x128 but .*b.dcm is 64x64"):
        read_dicom_folder(folder)


# --------------------------------------------------------------------------------------------------
# The saved configuration and 16-bit PNG / TIFF
# --------------------------------------------------------------------------------------------------


def test_medical_preprocessing_round_trips_through_json():
    config = MedicalPreprocessing(windows=("brain", Window(80, 200), "full"), padding_fill=0.5, bits_stored=12)
    restored = MedicalPreprocessing.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and restored.num_channels == 3
    assert config.to_dict()["windows"][1] == {"center": 80, "width": 200}


def test_medical_preprocessing_reads_dicom_as_the_windows_say():
    path = pydicom_file("693_UNCI.dcm")
    config = MedicalPreprocessing(windows=("brain", "subdural", "bone"))
    np.testing.assert_array_equal(config.read(path), window_channels(read_dicom(path), ["brain", "subdural", "bone"]))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_image_read_at_its_bit_depth(tmp_path, suffix, caplog):
    values = np.array([[0, 1000], [4095, 2048]], dtype=np.uint16)  # 12-bit data in a 16-bit file
    path = tmp_path / f"scan{suffix}"
    Image.fromarray(values).save(path)
    with caplog.at_level("INFO", logger="diffusion_classifiers.data.sixteen_bit"):
        read = read_16bit_image(path)
    assert "scaled by 12 bits stored" in caplog.text
    np.testing.assert_allclose(read, values / 4095.0, rtol=0, atol=WINDOW_TOLERANCE)
    np.testing.assert_allclose(read_16bit_image(path, bits_stored=16), values / 65535.0, rtol=0, atol=WINDOW_TOLERANCE)
    with pytest.raises(ValueError, match="maximum value 4095 does not fit bits_stored=10"):
        read_16bit_image(path, bits_stored=10)


def test_16bit_image_filling_little_of_the_range_warns(tmp_path):
    path = tmp_path / "faint.png"
    Image.fromarray(np.array([[1000, 1100], [1200, 1300]], dtype=np.uint16)).save(path)
    with pytest.warns(UserWarning, match=r"values span \[1000, 1300\], 0.46% of the 16-bit range"):
        read_16bit_image(path, bits_stored=16)
    Image.fromarray(np.array([[0, 200]], dtype=np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(ValueError, match="expected a 16-bit greyscale image"):
        read_16bit_image(tmp_path / "eight.png")


def test_a_folder_of_16bit_images_reads_each_file_once(tmp_path, monkeypatch):
    import PIL.Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            values = np.zeros((8, 8), dtype=np.uint16)
            values[:, 4:] = 1000 * (i + 1)  # a range the reader does not warn about
            PIL.Image.fromarray(values).save(tmp_path / label / f"{i}.png")
    opened, open_file = [], PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: opened.append(str(path)) or open_file(path, *a, **k))
    data = load_image_classification_data(tmp_path, image_size=8, medical=MedicalPreprocessing(bits_stored=12))
    assert sorted(opened) == sorted(str(path) for path in tmp_path.glob("*/*.png"))
    read = sorted(round(float(v), 4) for split in data.values() for v in (split.images.flatten(1).mean(1) + 1) / 2)
    assert read == sorted(round(500 * (i + 1) / 4095, 4) for i in range(3) for _ in range(2))


# --------------------------------------------------------------------------------------------------
# DICOM class folders and CSV sources, patient-level splits
# --------------------------------------------------------------------------------------------------


PATIENT_STEP = 100  # stored value of patient p's constant slices: p * PATIENT_STEP
FULL = MedicalPreprocessing(windows=("full",))  # CT_small: signed 16 bits, so y = (stored + 32768) / 65535


def make_patients(root, num_patients=12, slices=2):
    """`root/<class>/p<ii>_<j>.dcm`: CT_small copies with PatientID `P<ii>`, class = patient parity, and every pixel
    `p * PATIENT_STEP`, so an image tells its patient after any resize."""
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    rows = []
    for patient in range(num_patients):
        label = ("healthy", "bleed")[patient % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        pixels = np.full((dataset.Rows, dataset.Columns), patient * PATIENT_STEP, dtype="<i2").tobytes()
        for j in range(slices):
            name = f"{label}/p{patient:02d}_{j}.dcm"
            write_dicom(dataset, root / name, PatientID=f"P{patient:02d}", InstanceNumber=j + 1, PixelData=pixels)
            rows.append({"path": name, "label": label, "patient_id": f"P{patient:02d}"})
    return rows


def patients_in(split):
    """Patient numbers of a split's images (constant images in [-1, 1], windowed by FULL)."""
    stored = (split.images.flatten(1).mean(1).double() + 1) / 2 * 65535 - 32768
    return (stored / PATIENT_STEP).round().long().tolist()


def check_patient_split(splits, num_patients, slices):
    sides = {name: patients_in(split) for name, split in splits.items()}
    for name, patients in sides.items():
        assert all(patients.count(p) == slices for p in set(patients)), f"a patient's slices are split within {name}"
    assert not set(sides["train"]) & set(sides["val"]) and not set(sides["train"]) & set(sides["test"])
    assert not set(sides["val"]) & set(sides["test"])
    assert set().union(*sides.values()) == set(range(num_patients))


def test_dicom_class_folders_keep_each_patient_on_one_side(tmp_path):
    make_patients(tmp_path, num_patients=12, slices=2)
    splits = load_image_classification_data(
        tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25, seed=3, medical=FULL
    )
    assert splits["train"].class_names == ["bleed", "healthy"] and splits["train"].images.shape[1:] == (1, 16, 16)
    check_patient_split(splits, num_patients=12, slices=2)
    for split in splits.values():  # labels follow the patient: bleed = odd patients
        assert split.labels.tolist() == [0 if p % 2 else 1 for p in patients_in(split)]


def test_anonymised_files_without_a_patient_id_keep_each_study_on_one_side_with_a_warning(tmp_path):
    # anonymisation often blanks PatientID: split slice by slice, one scan's slices would land in train and test
    make_patients(tmp_path, num_patients=12, slices=2)
    for path in tmp_path.rglob("*.dcm"):
        patient = int(path.name[1:3])
        write_dicom(pydicom.dcmread(path), path, PatientID="  ", StudyInstanceUID=f"1.2.826.0.1.{patient}")
    anonymised = r"24 of 24 DICOM files have no PatientID \(anonymised\?\): grouped by their StudyInstanceUID \(24\)"
    with pytest.warns(UserWarning, match=anonymised):
        splits = load_image_classification_data(
            tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25, seed=3, medical=FULL
        )
    check_patient_split(splits, num_patients=12, slices=2)
    with pytest.warns(UserWarning, match=anonymised):  # the streaming listing groups them alike
        streamed = streaming_image_classification_data(
            tmp_path, num_channels=1, image_size=16, val_fraction=0.25, test_fraction=0.25, seed=3, medical=FULL
        )
    assert {name: len(split) for name, split in streamed.items()} == {name: len(split) for name, split in splits.items()}
    # QA (a PACS export): an unlabeled pool is carved into no splits, so how its files would be grouped is not said
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no PatientID")
        pool = load_image_classification_data(tmp_path, image_size=16, medical=FULL, unlabeled=True)
        streamed = streaming_image_classification_data(
            tmp_path, num_channels=1, image_size=16, medical=FULL, unlabeled=True
        )
    assert len(pool["train"]) == len(streamed["train"]) == 24


# Stored value of slice j of study p (anonymised, see make_anonymised_studies): every image its own, 1.2 windowed
# 8-bit levels (FULL) or more from any other, so the training images' fingerprints tell each apart.
STUDY_STEP, SLICE_STEP = 1000, 300
EARLIER_VERSION = (r"36 of 36 DICOM files have no PatientID \(anonymised\?\): split file by file \(slice by slice\), "
                   r"as the model was trained: it was saved by an earlier version .*Retraining the model groups them "
                   r"by their StudyInstanceUID")  # fmt: skip
ANONYMISED = r"DICOM files have no PatientID \(anonymised\?\): grouped by their StudyInstanceUID"


def make_anonymised_studies(root, num_studies=12, slices=3):
    """`root/<class>/p<ii>_<j>.dcm` (see make_patients) with PatientID blank, as anonymisation leaves it, one
    StudyInstanceUID per study and slice j of study p stored as `p * STUDY_STEP + j * SLICE_STEP`."""
    make_patients(root, num_patients=num_studies, slices=slices)
    for path in root.rglob("*.dcm"):
        study, j = int(path.name[1:3]), int(path.stem.split("_")[1])
        dataset = pydicom.dcmread(path)
        pixels = np.full((dataset.Rows, dataset.Columns), study * STUDY_STEP + j * SLICE_STEP, dtype="<i2").tobytes()
        write_dicom(dataset, path, PatientID="", StudyInstanceUID=f"1.2.826.0.1.{study}", PixelData=pixels)


def slices_in(images):
    """`(study, slice)` of each image of make_anonymised_studies (constant images in [-1, 1], windowed by FULL)."""
    stored = ((torch.as_tensor(images).flatten(1).mean(1).double() + 1) / 2 * 65535 - 32768).round().long()
    return [(value // STUDY_STEP, value % STUDY_STEP // SLICE_STEP) for value in stored.tolist()]


def file_by_file_splits(root, **carving):
    """The `(study, slice)` of each split's images as carved with each file its own group (groups=None), as versions
    before anonymised files were grouped by study carved them."""
    import dataclasses

    from diffusion_classifiers.data import readers
    from diffusion_classifiers.data.image_listing import list_folder_files

    with pytest.warns(UserWarning, match=ANONYMISED):
        raw = readers._read_image_folder(root, FULL)
    files = list_folder_files(root)[0]
    ids = [(int(path.name[1:3]), int(path.stem.split("_")[1])) for path in files]
    splits = readers.carve_splits(dataclasses.replace(raw, groups=None), **carving)
    return {name: [ids[index] for index in indices] for name, indices in splits.items()}


def test_a_record_of_an_earlier_version_splits_anonymised_files_file_by_file_as_its_model_was_trained(tmp_path):
    # regression: earlier versions split anonymised DICOM file by file; carved by study now, the test split of a model
    # they trained held images it was trained on
    from diffusion_classifiers.data import resolve_split_args, save_split_record

    data, old, new = tmp_path / "data", tmp_path / "old", tmp_path / "new"
    make_anonymised_studies(data)
    old.mkdir(), new.mkdir()
    (old / "data_splits.json").write_text('{"val_fraction": 0.25, "test_fraction": 0.25, "seed": 3}')  # an earlier one
    save_split_record(new, 0.25, 0.25, 3)
    expected = file_by_file_splits(data, val_fraction=0.25, test_fraction=0.25, seed=3)
    assert {study for study, _ in expected["train"]} & {study for study, _ in expected["test"]}  # the premise
    carving = resolve_split_args(old)
    assert carving["anonymised_dicom_groups"] == "file"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_image_classification_data(data, image_size=16, medical=FULL, **carving)
        streamed = streaming_image_classification_data(data, 1, 16, medical=FULL, **carving)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    assert len([m for m in messages if re.search(EARLIER_VERSION, m)]) == 2, messages
    assert not any(re.search(ANONYMISED, message) for message in messages)  # the current rule's warning: not applied
    for name in SPLITS:
        assert slices_in(splits[name].images) == expected[name], name
        read = torch.stack([streamed[name][index][0] for index in range(len(streamed[name]))])
        assert slices_in(read) == expected[name], name
    # a record of this version groups them by study, as training did
    with pytest.warns(UserWarning, match=ANONYMISED):
        grouped = load_image_classification_data(data, image_size=16, medical=FULL, **resolve_split_args(new))
    sides = {name: {study for study, _ in slices_in(split.images)} for name, split in grouped.items()}
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["val"]
    assert not sides["val"] & sides["test"]


def test_data_without_anonymised_dicom_splits_alike_by_either_rule_without_a_word(tmp_path):
    from diffusion_classifiers.data import resolve_split_args

    make_patients(tmp_path / "data", num_patients=12, slices=2)  # every file names its PatientID
    (tmp_path / "data_splits.json").write_text('{"val_fraction": 0.25, "test_fraction": 0.25, "seed": 3}')
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not a word
        earlier = load_image_classification_data(tmp_path / "data", image_size=16, medical=FULL,
                                                 **resolve_split_args(tmp_path))  # fmt: skip
        current = load_image_classification_data(tmp_path / "data", image_size=16, medical=FULL, val_fraction=0.25,
                                                 test_fraction=0.25, seed=3)  # fmt: skip
    for name in SPLITS:
        assert torch.equal(earlier[name].images, current[name].images), name


def test_evaluate_and_probe_carve_a_model_of_an_earlier_version_as_it_was_trained(tmp_path):
    # regression: evaluate re-carved an earlier version's model's anonymised DICOM by study: its test split then held
    # images it was trained on (refused here, where the record holds the training images' fingerprints; scored
    # silently where it holds none)
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.cli import main
    from diffusion_classifiers.data import read_split_record, save_split_record
    from diffusion_classifiers.data.split_record import image_fingerprints
    from diffusion_classifiers.models import unet_config
    from diffusion_classifiers.probing import fit_probe_grid

    data, model = tmp_path / "data", tmp_path / "model"
    make_anonymised_studies(data)
    carving = {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 3}
    with pytest.warns(UserWarning, match=EARLIER_VERSION):  # as the earlier version read it
        splits = load_image_classification_data(data, image_size=16, medical=FULL, anonymised_dicom_groups="file",
                                                 **carving)  # fmt: skip
    torch.manual_seed(0)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler(),
                                         preprocessing=splits["train"].preprocessing)  # fmt: skip
    feats = {name: pipe.extract_features(splits[name].images, ["mid_block"], [20]) for name in ("train", "val")}
    pipe.register_modules(head=fit_probe_grid(feats["train"], splits["train"].labels, feats["val"],
                                              splits["val"].labels, class_names=splits["train"].class_names).head)
    pipe.save_pretrained(model)
    save_split_record(model, **carving, train_images=splits["train"].images)
    record = json.loads((model / "data_splits.json").read_text())
    assert record.pop("anonymised_dicom_groups") == "study_or_series"
    (model / "data_splits.json").write_text(json.dumps(record))  # as an earlier version wrote it
    with pytest.warns(UserWarning, match=ANONYMISED):
        by_study = load_image_classification_data(data, image_size=16, medical=FULL, **carving)
    trained_on = set(image_fingerprints(splits["train"].images))
    assert any(f in trained_on for f in image_fingerprints(by_study["test"].images))  # the premise: it would leak
    for flags in ([], ["--streaming"]):
        output = tmp_path / f"evaluate{len(flags)}"
        with pytest.warns(UserWarning, match=EARLIER_VERSION):
            main(["evaluate", "--model_dir", str(model), "--dataset", str(data), "--output_dir", str(output),
                  "--positive_class", "bleed", *flags])  # fmt: skip
        metrics = json.loads((output / "metrics.json").read_text())
        assert metrics["training_images_checked"] is True and metrics["num_samples"] == len(splits["test"])
    # a probe on that U-Net carves alike, and records the rule its splits were carved by
    with pytest.warns(UserWarning, match=EARLIER_VERSION):
        main(["probe", "--unet_dir", str(model), "--dataset", str(data), "--output_dir", str(tmp_path / "probe"),
              "--timesteps", "20", "--C", "1"])  # fmt: skip
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["test"]["num_samples"] == len(splits["test"])
    assert read_split_record(tmp_path / "probe" / "pipeline")["anonymised_dicom_groups"] == "file"


def test_a_small_cohort_splits_with_the_fractions_the_script_flags_give(tmp_path):
    # 8 patients, 2 held out for test: the other 6 cannot give a grouped val split of 10%; the error says what would
    import argparse

    from diffusion_classifiers.data import add_data_args, load_data_from_args

    with pytest.raises(ValueError, match=r"the largest class has 4 images; .* needs at least 5 .* at least 1 / 4"):
        stratified_group_split(np.repeat([0, 1], 4), np.arange(8), fraction=0.2)  # scikit-learn's words were obscure
    make_patients(tmp_path, num_patients=8, slices=2)
    parser = add_data_args(argparse.ArgumentParser())
    parser.add_argument("--seed", type=int, default=0)
    flags = ["--dataset", str(tmp_path), "--image_size", "16", "--window", "full", "--bits_stored", "12"]
    with pytest.raises(ValueError, match=r"carving the 'val' split from the patients left after the 'test' split: "
                                         r"groups: 6 distinct groups .* at least 10 .* a fraction of at least 1 / 6"):
        load_data_from_args(parser.parse_args(flags))
    with pytest.raises(ValueError, match=r"groups: 1 distinct group \(patient\); a grouped split needs at least 2"):
        stratified_group_split(np.repeat([0, 1], 4), np.zeros(8), fraction=0.5)
    args = parser.parse_args(flags + ["--val_fraction", "0.25", "--test_fraction", "0.25"])
    splits = load_data_from_args(args)
    check_patient_split(splits, num_patients=8, slices=2)
    assert splits["train"].preprocessing.medical == MedicalPreprocessing(("full",), bits_stored=12, dicom_files=True)


def test_too_few_patients_for_every_carved_split_is_refused_before_carving(tmp_path):
    # QA: 2 patients; the advice "a fraction of at least 1 / 2" followed, the val split then found 1 patient left
    make_patients(tmp_path, num_patients=2, slices=2)
    with pytest.raises(ValueError, match=r"2 distinct patients \(groups: '.*' \(2 images\), '.*' \(2 images\)\), "
                                         r"read from .* PatientID .*; carving test and val splits with each patient on "
                                         r"one side needs at least 3 .* a CSV of path,label,patient_id"):  # fmt: skip
        load_image_classification_data(tmp_path, image_size=16, val_fraction=0.5, test_fraction=0.5, medical=FULL)


def test_a_model_of_dicom_files_records_it_in_its_contract(tmp_path):
    # QA: a model trained on DICOM through each file's own window (the default) stated nothing of DICOM, so its card
    # did not say to give files by path
    make_patients(tmp_path / "ct", num_patients=16, slices=1)
    for path in (tmp_path / "ct").rglob("*.dcm"):
        write_dicom(pydicom.dcmread(path), path, WindowCenter=30, WindowWidth=80)
    in_memory = load_image_classification_data(tmp_path / "ct", image_size=8, val_fraction=0.25, test_fraction=0.25)
    streamed = streaming_image_classification_data(tmp_path / "ct", num_channels=1, image_size=8, val_fraction=0.25,
                                                   test_fraction=0.25)  # fmt: skip
    for splits in (in_memory, streamed):
        medical = splits["train"].preprocessing.medical
        assert medical.dicom_files and medical.to_dict()["dicom_files"] is True
        assert splits["train"].preprocessing.summary().endswith(", DICOM files through each file's own window")
    assert MedicalPreprocessing.from_dict(medical.to_dict()) == medical
    for name in ("a", "b"):  # pictures only: nothing recorded, saved as before
        (tmp_path / "png" / name).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(np.full((6, 6), 40 * k, np.uint8)).save(tmp_path / "png" / name / f"{k}.png")
    pictures = load_image_classification_data(tmp_path / "png", image_size=8, val_fraction=0.25, test_fraction=0.25)
    assert "dicom_files" not in pictures["train"].preprocessing.medical.to_dict()


def test_files_own_windows_that_differ_by_class_are_warned_about(tmp_path):
    # QA: two sites' series, one per class, windowed 30/80 and 30/300 and read with their own window: no word
    make_patients(tmp_path, num_patients=12, slices=1)
    for path in tmp_path.rglob("*.dcm"):
        width = 80 if path.parent.name == "bleed" else 300
        write_dicom(pydicom.dcmread(path), path, WindowCenter=30, WindowWidth=width)
    follow = (r"DICOM files read with their own window \('file', the default\) carry windows that follow the classes "
              r"\(window: files per class\): 30/80: bleed 6; 30/300: healthy 6")  # fmt: skip
    with pytest.warns(UserWarning, match=follow):
        load_image_classification_data(tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25)
    with pytest.warns(UserWarning, match=follow):
        streaming_image_classification_data(tmp_path, num_channels=1, image_size=16, val_fraction=0.25,
                                            test_fraction=0.25)  # fmt: skip
    # windows that do not follow the classes (a site per patient, both classes at each) are not warned about
    for path in tmp_path.rglob("*.dcm"):
        write_dicom(pydicom.dcmread(path), path, WindowWidth=80 if int(path.name[1:3]) < 6 else 300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image_classification_data(tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25)
    assert not any("follow the classes" in str(warning.message) for warning in caught)


def test_streaming_three_windows_need_no_num_channels(tmp_path):
    # QA: --streaming demanded --num_channels although 3 windows give 3 channels
    import argparse

    from diffusion_classifiers.data import add_data_args, streaming_data_from_args

    make_patients(tmp_path, num_patients=12, slices=1)
    parser = add_data_args(argparse.ArgumentParser(), streaming=True)
    parser.add_argument("--seed", type=int, default=0)
    flags = ["--dataset", str(tmp_path), "--image_size", "8", "--val_fraction", "0.25", "--test_fraction", "0.25"]
    splits = streaming_data_from_args(parser.parse_args(flags + ["--window", "brain", "subdural", "bone"]))
    assert splits["train"].preprocessing.num_channels == 3
    with pytest.raises(ValueError, match=r"--streaming needs --num_channels \(1 or 3\)"):  # one window: grey or not
        streaming_data_from_args(parser.parse_args(flags + ["--window", "brain"]))


def test_folder_reader_reports_dicom_patient_ids(tmp_path):
    from diffusion_classifiers.data import readers

    make_patients(tmp_path, num_patients=12, slices=2)
    raw = readers._read_image_folder(tmp_path, MedicalPreprocessing(windows=("brain", "subdural", "bone")))
    assert raw.groups.tolist() == [f"P{p:02d}" for p in (1, 3, 5, 7, 9, 11, 0, 2, 4, 6, 8, 10) for _ in range(2)]
    assert all(image.shape == (1, 3, 128, 128) for image in raw.images)


# Two copies of one 10-frame cine, without the ids that group files (its frames are then split one by one).
UNGROUPED = r"2 of 2 DICOM files have no PatientID .*else each file alone \(2\)"


def without_group_ids(dataset):
    """A copy of `dataset` without the ids its images are grouped by in a carved split (each file its own group)."""
    dataset = copy.deepcopy(dataset)
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        delattr(dataset, keyword)
    return dataset


def write_ungrouped_cines(root):
    cine = without_group_ids(pydicom.dcmread(pydicom_file("emri_small.dcm")))
    for label in ("a", "b"):
        (root / label).mkdir()
        write_dicom(cine, root / label / "cine.dcm")


def test_multiframe_dicom_in_a_class_folder_gives_one_image_per_frame(tmp_path):
    write_ungrouped_cines(tmp_path)
    with pytest.warns(UserWarning, match=UNGROUPED):
        splits = load_image_classification_data(tmp_path, image_size=8, test_fraction=0.2, val_fraction=0.25,
                                                medical=MedicalPreprocessing(windows=("full",)))
    labels = np.concatenate([splits[name].labels.numpy() for name in ("train", "val", "test")])
    assert len(labels) == 20 and np.bincount(labels).tolist() == [10, 10]


def test_csv_source_with_patient_ids(tmp_path):
    rows = make_patients(tmp_path / "images", num_patients=12, slices=2)
    csv_path = tmp_path / "images" / "labels.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    from diffusion_classifiers.data import readers

    raw = readers._read_csv(csv_path, ["healthy", "bleed"], None, FULL)
    assert raw.class_names == ["healthy", "bleed"]
    assert raw.labels.tolist() == [p % 2 for p in range(12) for _ in range(2)]
    assert raw.groups.tolist() == [row["patient_id"] for row in rows]
    splits = load_image_classification_data(csv_path, image_size=8, val_fraction=0.25, test_fraction=0.25,
                                            class_names=["healthy", "bleed"], medical=FULL)
    check_patient_split(splits, num_patients=12, slices=2)


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(row) for row in rows]) + "\n")
    return path


def test_csv_missing_file_is_named(tmp_path):
    write_dicom(pydicom.dcmread(pydicom_file("CT_small.dcm")), tmp_path / "a.dcm")
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.dcm", "x"], ["gone.dcm", "y"]])
    with pytest.raises(ValueError, match=r"labels.csv:3: image file .*gone.dcm does not exist"):
        load_image_classification_data(path)


def write_small_ct_files(folder, names):
    for name in names:
        write_dicom(pydicom.dcmread(pydicom_file("CT_small.dcm")), folder / name)


def test_csv_unknown_label_is_named(tmp_path):
    write_small_ct_files(tmp_path, ["a.dcm", "b.dcm"])
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.dcm", "normal"], ["b.dcm", "bleeed"]])
    with pytest.raises(ValueError, match=r"labels.csv:3: label 'bleeed' is not one of the classes \['normal', 'bleed'"):
        load_image_classification_data(path, class_names=["normal", "bleed"])
    import argparse

    from diffusion_classifiers.data import add_data_args, load_data_from_args

    parser = add_data_args(argparse.ArgumentParser())
    parser.add_argument("--seed", type=int, default=0)
    with pytest.raises(ValueError, match="label 'bleeed' is not one of the classes"):  # the scripts' --class_names
        load_data_from_args(parser.parse_args(["--dataset", str(path), "--class_names", "normal", "bleed"]))


def test_csv_empty_label_is_refused_and_labels_differing_by_spaces_or_case_are_warned_about(tmp_path):
    write_small_ct_files(tmp_path, ["a.dcm", "b.dcm", "c.dcm", "d.dcm"])
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.dcm", "ich"], ["b.dcm", " "]])
    with pytest.raises(ValueError, match=r"labels.csv:3: empty label; expected a class name on every row"):
        load_image_classification_data(path)  # not a class named ' '
    rows = [["a.dcm", "ich"], ["b.dcm", "ich "], ["c.dcm", "no"], ["d.dcm", "No"]]
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], rows)
    from diffusion_classifiers.data.image_listing import list_csv

    with pytest.warns(UserWarning, match=r"differ only by surrounding spaces or letter case are different classes: "
                                         r"'ich' and 'ich '; 'No' and 'no'"):  # fmt: skip
        assert list_csv(path, None, None)[2] == ["No", "ich", "ich ", "no"]


def test_csv_listing_an_image_twice_is_refused_naming_both_lines(tmp_path):
    """QA (a mammography group): a file listed as normal and again as cancer, and another listed twice, trained on
    154 images of 152 files without a word (the second could land in train and test at once)."""
    write_small_ct_files(tmp_path, ["a.dcm", "b.dcm"])
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.dcm", "normal"], ["b.dcm", "normal"],
                                                                   ["./a.dcm", "cancer"]])  # fmt: skip
    with pytest.raises(ValueError, match=r"labels.csv:4: image file './a.dcm' is listed on line 2 too \(labelled "
                                         r"'normal' there, 'cancer' here\); expected each image once"):  # fmt: skip
        load_image_classification_data(path)
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.dcm", "normal"], ["b.dcm", "cancer"],
                                                                   ["b.dcm", "cancer"]])  # fmt: skip
    for read in (load_image_classification_data, streaming_image_classification_data):
        with pytest.raises(ValueError, match=r"labels.csv:4: image file 'b.dcm' is listed on line 3 too \(with the "
                                             r"same label\)"):  # fmt: skip
            read(path, num_channels=1)


def test_csv_absent_or_blank_patient_ids_are_refused(tmp_path):
    write_small_ct_files(tmp_path, ["a.dcm", "b.dcm"])
    rows = [["a.dcm", "x", "P1"], ["b.dcm", "y", " "]]
    path = write_csv(tmp_path / "labels.csv", ["path", "label", "patient_id"], rows)
    with pytest.raises(ValueError, match=r"labels.csv:3: empty 'patient_id'; expected a patient id on every row"):
        load_image_classification_data(path)  # not one patient ' ' holding every blank row
    path = write_csv(tmp_path / "labels.csv", ["path", "label"], [["a.dcm", "x"]])
    with pytest.raises(ValueError, match=r"patient_id_column 'PatientID' is not a column; columns: \['path', 'label"):
        load_image_classification_data(path, patient_id_column="PatientID")


# --------------------------------------------------------------------------------------------------
# DICOM larger than memory: streamed through the same preprocessing
# --------------------------------------------------------------------------------------------------


def stacked(split):
    return torch.stack([split[i][0] for i in range(len(split))])


def check_streamed_equals_in_memory(source, **kwargs):
    memory = load_image_classification_data(source, **kwargs)
    streamed = streaming_image_classification_data(source, num_channels=1, **kwargs)
    for name in SPLITS:  # the same files, frames, labels and splits, read by the same code: equal to the bit
        torch.testing.assert_close(stacked(streamed[name]), memory[name].images, rtol=0, atol=0)
        assert streamed[name].labels.tolist() == memory[name].labels.tolist()
    assert streamed["train"].preprocessing == memory["train"].preprocessing  # what a trained model is saved with
    return streamed


def test_streamed_dicom_folder_equals_in_memory_and_keeps_patients_apart(tmp_path):
    make_patients(tmp_path, num_patients=8, slices=2)
    streamed = check_streamed_equals_in_memory(
        tmp_path, image_size=8, val_fraction=0.25, test_fraction=0.25, seed=3, medical=FULL
    )
    decoded = {name: SimpleNamespace(images=stacked(split)) for name, split in streamed.items()}
    check_patient_split(decoded, num_patients=8, slices=2)


def test_streamed_multiframe_dicom_gives_one_row_per_frame(tmp_path):
    write_ungrouped_cines(tmp_path)
    with pytest.warns(UserWarning, match=UNGROUPED):
        streamed = check_streamed_equals_in_memory(
            tmp_path, image_size=8, test_fraction=0.2, val_fraction=0.25, medical=FULL
        )
    assert sum(len(streamed[name]) for name in SPLITS) == 20


def test_streamed_cq500_slices_equal_the_saved_contract_reading_the_files():
    files = [cq500("CQ500-CT-0", "CT000010.dcm"), cq500("CQ500-CT-1", "CT000000.dcm")]  # JPEG Lossless, uncompressed
    medical = MedicalPreprocessing(windows=("brain", "subdural", "bone"))
    streamed = StreamingImages.from_files(files, image_size=32, num_channels=3, medical=medical)
    assert streamed.preprocessing.medical == medical
    expected = preprocess_images([str(file) for file in files], preprocessing=streamed.preprocessing)
    torch.testing.assert_close(stacked(streamed), expected, rtol=0, atol=0)  # [2, 3, 32, 32]: a channel per window
    assert not torch.equal(expected[:, 0], expected[:, 2])


def test_an_odd_slice_sorting_first_is_named_as_the_odd_one(tmp_path):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(1, 4):
            write_dicom(dataset, tmp_path / label / f"{i}.dcm")
    write_dicom(pydicom.dcmread(pydicom_file("MR_small.dcm")), tmp_path / "b" / "0.dcm",
                SeriesInstanceUID=dataset.SeriesInstanceUID)  # read first: the good slices are not the odd ones
    with pytest.raises(ValueError, match=r"128x128: 3 files \(.*1.dcm.*\), 64x64: 1 file \(.*b/0.dcm\)") as refused:
        load_image_classification_data(tmp_path, num_channels=1, medical=FULL)
    assert "cannot be read" not in str(refused.value)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_localizer_in_its_own_series_is_refused_naming_it(tmp_path, streaming):
    # the per-series size check lets a scout stored as its own series through: its ImageType names it
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            write_dicom(dataset, tmp_path / label / f"{i}.dcm")
    write_dicom(pydicom.dcmread(pydicom_file("MR_small.dcm")), tmp_path / "b" / "scout.dcm",
                SeriesInstanceUID="1.2.3.4", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    read = streaming_image_classification_data if streaming else load_image_classification_data
    expected = (r"scout.dcm is a localizer \(scout\) image \(ImageType ORIGINAL/PRIMARY/LOCALIZER\); expected the "
                r"images of a series: remove it \(a localizer is not a slice\)$")
    for unlabeled in (False, True):  # a folder's class or an unlabeled pool: the message names no class
        with pytest.raises(ValueError, match=expected):
            read(tmp_path, num_channels=1, medical=FULL, unlabeled=unlabeled)


def test_streaming_refuses_bad_dicom_when_listing_not_when_reading(tmp_path):
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for label in ("a", "b"):
        (tmp_path / "mixed" / label).mkdir(parents=True)
        for i in range(3):
            write_dicom(dataset, tmp_path / "mixed" / label / f"{i}.dcm")
    write_dicom(  # a scout of the same series: one series, one size
        pydicom.dcmread(pydicom_file("MR_small.dcm")), tmp_path / "mixed" / "b" / "scout.dcm",
        SeriesInstanceUID=dataset.SeriesInstanceUID,
    )
    with pytest.raises(ValueError, match=r"mixed slice sizes \(height x width\): 128x128: 3 files .*64x64: 1 file \(.*scout.dcm\)"):
        streaming_image_classification_data(tmp_path / "mixed", num_channels=1, medical=FULL)
    no_pixels = copy.deepcopy(dataset)
    del no_pixels.PixelData
    (tmp_path / "mixed" / "b" / "scout.dcm").unlink()
    write_dicom(no_pixels, tmp_path / "mixed" / "b" / "report.dcm")
    with pytest.raises(ValueError, match=r"report.dcm has no pixel data"):
        streaming_image_classification_data(tmp_path / "mixed", num_channels=1, medical=FULL)
    cine = write_dicom(pydicom.dcmread(pydicom_file("emri_small.dcm")), tmp_path / "cine.dcm")
    with pytest.raises(ValueError, match=r"cine.dcm has no WindowCenter / WindowWidth nor VOI LUT Sequence; expected a "
                                         r"window for 'file'"):
        StreamingImages.from_files([cine], image_size=8, num_channels=1)  # refused before any pixel is decoded
    with pytest.raises(ValueError, match=r"cine.dcm has 10 frames; expected one image per row"):
        StreamingImages.from_files([cine], image_size=8, num_channels=1, medical=FULL)[0]


def write_folder_with_four_bad_files(root):
    """QA: `root/{a,b}/` of 6 readable windowed CT slices each, and in `a` four files each refused at another stage
    before: an RGB secondary capture (no extension), a file without window tags read with its own window ('file', the
    default), one of WindowWidth 0, and one cut short in its pixel data (its header reads). Returns the three files
    refused by their headers, and the cut one."""
    big = np.zeros((256, 256), dtype="<i2").tobytes()  # deferred when a header is read: only decoding finds the cut
    dataset = without_group_ids(pydicom.dcmread(pydicom_file("CT_small.dcm")))
    dataset.Rows, dataset.Columns, dataset.PixelData = 256, 256, big
    dataset.WindowCenter, dataset.WindowWidth = 40, 400
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            write_dicom(dataset, root / label / f"{i}.dcm", InstanceNumber=i + 1)
    no_window = copy.deepcopy(dataset)
    del no_window.WindowCenter, no_window.WindowWidth
    bad = [
        write_dicom(dataset, root / "a" / "SC_0001", PhotometricInterpretation="RGB"),
        write_dicom(no_window, root / "a" / "no_window.dcm"),
        write_dicom(dataset, root / "a" / "zero_width.dcm", WindowWidth=0),
    ]
    truncated = write_dicom(dataset, root / "a" / "truncated.dcm")
    truncated.write_bytes(truncated.read_bytes()[: -len(big) // 2])
    return bad, truncated


def test_streaming_names_every_bad_dicom_at_once_reading_each_header_once(tmp_path, monkeypatch):
    """QA: a streamed folder with four bad files took three runs, each naming what one stage found: the listing (the
    RGB file alone), the header check (the windows), then the reading of every image (the truncated file)."""
    import runpy

    from .conftest import REPO_ROOT

    bad, truncated = write_folder_with_four_bad_files(tmp_path / "data")
    headers = re.escape("3 of 16 image files cannot be read: ")
    named = (r"DICOM file .*SC_0001: PhotometricInterpretation 'RGB'.*; .*no_window.dcm has no WindowCenter / "
             r"WindowWidth.*; .*zero_width.dcm: bad window tags WindowCenter 40.0 and WindowWidth 0.0")
    reads, read = [], pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda path, *a, **kw: reads.append(str(path)) or read(path, *a, **kw))
    with pytest.raises(ValueError, match=rf"^{headers}{named}.*Expected every file to be a readable image"):
        streaming_image_classification_data(tmp_path / "data", num_channels=1, image_size=8)
    assert sorted(reads) == sorted(str(path) for path in (tmp_path / "data").glob("*/*"))  # each header read once
    with pytest.raises(ValueError, match=rf"^{headers}{named}"):  # the public check alike
        StreamingImages.from_files(sorted((tmp_path / "data").glob("*/*")), image_size=8, num_channels=1)

    example = runpy.run_path(str(REPO_ROOT / "examples" / "score_sde_train.py"), run_name="example")
    flags = ["--dataset", str(tmp_path / "data"), "--streaming", "--num_channels", "1", "--image_size", "8",
             "--output_dir", str(tmp_path / "out"), "--max_train_steps", "1", "--lr_warmup_steps", "0"]  # fmt: skip
    with pytest.raises(ValueError, match=rf"^{headers}{named}"):  # no reading: the headers refused before training
        example["main"](flags + ["--no_verify_images"])
    with pytest.raises(ValueError) as refused:  # every image read first: one message names all four
        example["main"](flags)
    message = str(refused.value)
    assert message.startswith("4 of 16 images cannot be read (")
    for path in [*bad, truncated]:
        assert str(path) in message
    assert f"cannot decode the pixel data of DICOM file {truncated}" in message
    assert not (tmp_path / "out").exists()


def test_image_variation_pipeline_saves_and_reads_the_classifiers_dicom_contract(tmp_path):
    from diffusion_classifiers.pipelines import RepresentationConditionedDiTImageVariationPipeline as Variation

    from .test_rc_dit import tiny_pipeline

    classifier = tiny_pipeline()
    classifier.set_preprocessing({"medical": {"windows": ["brain"]}})
    classifier.save_pretrained(tmp_path / "classifier")
    scan = pydicom_file("693_UNCI.dcm")
    expected = classifier.preprocess([scan])  # the brain window of the scan, resized to the encoder's 16 px
    for variation in (Variation.from_pipe(classifier), Variation.from_pretrained(tmp_path / "classifier")):
        assert variation.preprocessing == classifier.preprocessing
        torch.testing.assert_close(variation.preprocess([scan]), expected, rtol=0, atol=0)
    variation.save_pretrained(tmp_path / "variation")
    assert Variation.from_pretrained(tmp_path / "variation").preprocessing == classifier.preprocessing
    # a folder saved before the contract reads float references as it did then: [0, 1] when none is negative
    index_file = tmp_path / "variation" / "model_index.json"
    index_file.write_text(json.dumps({k: v for k, v in json.loads(index_file.read_text()).items() if k != "preprocessing"}))
    legacy = Variation.from_pretrained(tmp_path / "variation")
    assert legacy.preprocessing.input_range == "auto"
    ones = torch.ones(1, 1, 16, 16)
    assert torch.equal(legacy.preprocess(ones * 0.5), torch.zeros(1, 1, 16, 16))
    assert torch.equal(variation.preprocess(ones * 0.5), ones * 0.5)


def test_unet_example_trains_on_a_streamed_dicom_folder_and_saves_how_it_read_it(tmp_path):
    import runpy

    from diffusion_classifiers import DiffusionClassifierPipeline

    from .conftest import REPO_ROOT

    dataset = without_group_ids(pydicom.dcmread(pydicom_file("CT_small.dcm")))
    for label in ("bleed", "healthy"):  # no group ids: a per-image split (a grouped one needs >= 10 patients a class)
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            write_dicom(dataset, tmp_path / "data" / label / f"{i}.dcm", InstanceNumber=i + 1)
    example = runpy.run_path(str(REPO_ROOT / "examples" / "unet_features_train.py"), run_name="example")
    example["main"]([
        "--dataset", str(tmp_path / "data"), "--streaming", "--num_channels", "1", "--image_size", "8", "--window", "40", "400",
        "--unet_preset", "tiny", "--output_dir", str(tmp_path / "out"), "--train_batch_size", "4",
        "--max_train_steps", "1", "--checkpointing_steps", "100", "--num_sample_images", "0",
    ])  # fmt: skip
    pipe = DiffusionClassifierPipeline.from_pretrained(tmp_path / "out")
    streamed = streaming_image_classification_data(
        tmp_path / "data", num_channels=1, image_size=8, medical=MedicalPreprocessing(windows=(Window(40, 400),))
    )
    assert pipe.preprocessing == streamed["train"].preprocessing  # the window given, 8 px, grey
    scan = streamed["train"].dataset[0]["image"]["path"]  # a training file, read by the saved pipeline as in training
    torch.testing.assert_close(pipe.preprocess([scan])[0], streamed["train"][0][0], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# DICOM files without an extension (PACS exports): recognised by the 'DICM' header
# --------------------------------------------------------------------------------------------------


def strip_extensions(named_root, bare_root):
    """A copy of `named_root` with every `.dcm` file's extension removed (`p00_0.dcm` -> `p00_0`), other files kept."""
    for file in sorted(named_root.rglob("*")):
        if file.is_file():
            target = bare_root / file.relative_to(named_root)
            target = target.with_suffix("") if file.suffix == ".dcm" else target
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    return bare_root


def add_files_that_are_not_read(folder, dicom_bytes):
    (folder / "LICENSE").write_text("MIT License\n" + "x" * 200)  # suffix-less, long enough to hold a header
    (folder / "README").write_bytes(b"")
    (folder / ".IM_hidden").write_bytes(dicom_bytes)  # hidden
    (folder / "notes.txt").write_bytes(dicom_bytes)  # another suffix: never sniffed


def test_is_dicom_file_by_extension_or_by_the_header_of_suffix_less_files(tmp_path):
    from diffusion_classifiers.data import is_dicom_file

    dicom_bytes = Path(pydicom_file("CT_small.dcm")).read_bytes()
    (tmp_path / "IM_P00_0").write_bytes(dicom_bytes)
    (tmp_path / "1.2.840.113619.2.55.3").write_bytes(dicom_bytes)  # named by its SOP Instance UID
    (tmp_path / "counts.2024").write_bytes(b"\0" * 200)
    (tmp_path / "short").write_bytes(b"\0" * 100)
    (tmp_path / "folder").mkdir()
    add_files_that_are_not_read(tmp_path, dicom_bytes)
    assert is_dicom_file(tmp_path / "IM_P00_0") and is_dicom_file(str(tmp_path / "IM_P00_0"))
    assert is_dicom_file(tmp_path / "1.2.840.113619.2.55.3") and not is_dicom_file(tmp_path / "counts.2024")
    assert is_dicom_file(tmp_path / "absent.dcm") and is_dicom_file(tmp_path / "ABSENT.DICOM")  # not opened
    (tmp_path / "DICOMDIR").write_bytes(Path(pydicom_file("DICOMDIR")).read_bytes())  # a media export's index
    for name in ("LICENSE", "README", "short", "folder", "notes.txt", "absent", "DICOMDIR"):
        assert not is_dicom_file(tmp_path / name), name


def test_a_dicomdir_given_by_itself_is_named_as_the_index_it_is(tmp_path):
    """QA: predict said a DICOMDIR given as --input had no DICM header (it has one), and `read_dicom` called it of an
    "unknown SOP class" like "a structured report": both now name it and ask for its folder."""
    from diffusion_classifiers.data import read_dicom
    from diffusion_classifiers.prediction.inputs import list_inputs

    index = tmp_path / "DICOMDIR"
    index.write_bytes(Path(pydicom_file("DICOMDIR")).read_bytes())
    expected_folder = re.escape(str(tmp_path))
    with pytest.raises(ValueError, match=rf"a DICOMDIR, the index of a DICOM media export, holds no image; expected "
                                         rf"the folder holding its files \({expected_folder}"):  # fmt: skip
        list_inputs(index)
    with pytest.raises(ValueError, match=rf"no pixel data \(Media Storage Directory Storage, modality \?\); expected "
                                         rf"an image \(a DICOMDIR indexes a media export's files: give the folder "
                                         rf"holding them, {expected_folder}\)"):  # fmt: skip
        read_dicom(index)
    # listed in a CSV (a list built by `find export -type f`) or given to a pipeline: the same words, not PIL's
    from diffusion_classifiers.data import load_image_classification_data, preprocess_images

    dicomdir = rf"{re.escape(str(index))}: a DICOMDIR, the index of a DICOM media export, holds no image"
    with pytest.raises(ValueError, match=rf"^preprocess_images: item 0, {dicomdir}"):
        preprocess_images([index], 8, 1)
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "labels.csv").write_text(f"path,label\n{index},a\n{tmp_path / 'ct.dcm'},b\n")
    for windows in (("full",), ("brain", "subdural", "bone")):  # several: before the rule on DICOM and other files
        medical = MedicalPreprocessing(windows)
        with pytest.raises(ValueError, match=dicomdir):
            load_image_classification_data(tmp_path / "labels.csv", image_size=8, medical=medical)
        with pytest.raises(ValueError, match=dicomdir):
            streaming_image_classification_data(
                tmp_path / "labels.csv", num_channels=len(windows), image_size=8, medical=medical
            )
        with pytest.raises(ValueError, match=dicomdir):  # predict's errors-file row
            list_inputs(tmp_path / "labels.csv", medical=medical)[0].read()


def test_dicom_with_other_extensions_is_read_and_other_files_are_not_opened(tmp_path, monkeypatch):
    from diffusion_classifiers.data import dicom, is_dicom_file
    from diffusion_classifiers.prediction.inputs import list_inputs

    dicom_bytes = Path(pydicom_file("CT_small.dcm")).read_bytes()
    names = ["CT.0001.IMA", "s2.dic", "s3.DICOM", "s4.img"]  # Siemens, two more extensions, one DICOM never used
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for name in names:
            (tmp_path / label / name).write_bytes(dicom_bytes)
        for name in ("notes.txt", "table.csv", "meta.json"):  # text and data files, never read even holding DICOM
            (tmp_path / label / name).write_bytes(dicom_bytes)
        Image.new("L", (4, 4)).save(tmp_path / label / "scout.png")
    sniffed, sniff = [], dicom._has_dicom_magic
    monkeypatch.setattr(dicom, "_has_dicom_magic", lambda path: sniffed.append(Path(path).name) or sniff(path))
    kinds = [is_dicom_file(tmp_path / "a" / name) for name in [*names, "notes.txt", "scout.png"]]
    assert kinds == [True] * 4 + [False] * 2
    assert sniffed == ["s4.img"]  # the known extensions, DICOM or not, are told apart without opening the file
    inputs = list_inputs(tmp_path, windows=["full"])
    assert [item.path for item in inputs] == sorted(f"{label}/{name}" for label in "ab" for name in [*names, "scout.png"])
    expected = window_channels(read_dicom(pydicom_file("CT_small.dcm")), ["full"])[0]
    for item in inputs:
        if not item.path.endswith(".png"):
            np.testing.assert_array_equal(item.read()[0], expected)
    for label in ("a", "b"):
        (tmp_path / label / "scout.png").unlink()
    from diffusion_classifiers.data import image_listing

    files, labels, _ = image_listing.list_folder_files(tmp_path)  # training lists them too
    assert [path.name for path in files] == sorted(names) * 2 and labels["train"].tolist() == [0] * 4 + [1] * 4


def test_listing_a_folder_of_images_opens_no_file_to_look_for_dicom(tmp_path, monkeypatch):
    from diffusion_classifiers.data import dicom
    from diffusion_classifiers.prediction.inputs import list_inputs

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("L", (4, 4), 40 * i).save(tmp_path / label / f"{i}.png")
        (tmp_path / label / "labels.csv").write_text("path,label\n")
    monkeypatch.setattr(dicom, "_has_dicom_magic", pytest.fail)
    assert len(list_inputs(tmp_path)) == 6
    assert sum(len(split) for split in load_image_classification_data(tmp_path, image_size=4).values()) == 6


def test_class_folders_of_extension_less_dicom_read_as_the_same_files_named_dcm(tmp_path):
    make_patients(tmp_path / "named", num_patients=8, slices=2)
    bare = strip_extensions(tmp_path / "named", tmp_path / "bare")
    add_files_that_are_not_read(bare / "bleed", (bare / "bleed" / "p01_0").read_bytes())
    kwargs = dict(image_size=8, val_fraction=0.25, test_fraction=0.25, seed=3, medical=FULL)
    named = load_image_classification_data(tmp_path / "named", **kwargs)
    stripped = load_image_classification_data(bare, **kwargs)
    for name in SPLITS:  # the same images (patients included: read from the headers), labels and splits
        torch.testing.assert_close(stripped[name].images, named[name].images, rtol=0, atol=0)
        assert stripped[name].labels.tolist() == named[name].labels.tolist()
    check_patient_split(stripped, num_patients=8, slices=2)
    streamed = check_streamed_equals_in_memory(bare, **kwargs)  # the streaming listing and reading
    listed = [Path(row["image"]["path"]) for name in SPLITS for row in streamed[name].dataset]
    assert len(listed) == 16 and all(path.suffix == "" and path.name.startswith("p") for path in listed)


def test_csv_and_dicom_folder_read_extension_less_files(tmp_path):
    rows = make_patients(tmp_path / "named", num_patients=2, slices=2)
    bare = strip_extensions(tmp_path / "named", tmp_path / "bare")
    write_csv(bare / "labels.csv", ["path", "label"], [[row["path"][: -len(".dcm")], row["label"]] for row in rows])
    from diffusion_classifiers.data import readers

    raw = readers._read_csv(bare / "labels.csv", ["healthy", "bleed"], None, FULL)
    assert raw.groups.tolist() == [row["patient_id"] for row in rows]  # the PatientIDs: read as DICOM
    expected = [window_channels(read_dicom(tmp_path / "named" / row["path"]), FULL.windows) for row in rows]
    for image, reference in zip(raw.images, expected):
        np.testing.assert_array_equal(image, reference)
    add_files_that_are_not_read(bare / "bleed", (bare / "bleed" / "p01_0").read_bytes())
    assert [Path(image.path).name for image in read_dicom_folder(bare / "bleed")] == ["p01_0", "p01_1"]


def test_predict_lists_and_reads_extension_less_dicom_as_the_same_files_named_dcm(tmp_path):
    from diffusion_classifiers.prediction.inputs import list_inputs

    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    (tmp_path / "named").mkdir()
    for i in range(2):
        write_dicom(dataset, tmp_path / "named" / f"IM_P00_{i}.dcm", InstanceNumber=i + 1)
    strip_extensions(tmp_path / "named", tmp_path / "export" / "series")
    write_dicom(dataset, tmp_path / "export" / "a.dcm")
    add_files_that_are_not_read(tmp_path / "export" / "series", (tmp_path / "export" / "a.dcm").read_bytes())
    windows = ["brain", "subdural", "bone"]
    inputs = list_inputs(tmp_path / "export", windows=windows)
    assert [item.path for item in inputs] == ["a.dcm", "series/IM_P00_0", "series/IM_P00_1"]
    for bare, named in zip(inputs[1:], list_inputs(tmp_path / "named", windows=windows)):
        (bare_image,), (named_image,) = bare.read(), named.read()
        assert bare_image.shape == (3, 128, 128)
        np.testing.assert_array_equal(bare_image, named_image)
    (single,) = list_inputs(tmp_path / "export" / "series" / "IM_P00_1", windows=windows)  # one file as the input
    np.testing.assert_array_equal(single.read()[0], named_image)


def test_suffix_less_files_that_are_not_dicom_are_ignored_and_errors_name_the_header(tmp_path):
    from diffusion_classifiers.prediction.inputs import list_inputs

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "LICENSE").write_text("MIT License\n" + "x" * 200)
    with pytest.raises(ValueError, match=r"no images found; .*extension-less DICOM files are recognised by"):
        load_image_classification_data(tmp_path)
    with pytest.raises(ValueError, match=r"no image or DICOM files found .*extension-less DICOM files are recognised"):
        list_inputs(tmp_path)
    with pytest.raises(ValueError, match=r"got a suffix-less file .*recognised by their 'DICM' header"):
        list_inputs(tmp_path / "a" / "LICENSE")
    write_dicom(pydicom.dcmread(pydicom_file("CT_small.dcm")), tmp_path / "a" / "IM_P00_0")
    with pytest.raises(ValueError, match=r"class folder .*b holds no image files .*recognised by their 'DICM' header"):
        load_image_classification_data(tmp_path)


def test_pipeline_reads_an_extension_less_dicom_path_as_the_file_named_dcm(tmp_path):
    from .test_rc_dit import tiny_pipeline

    named = write_dicom(pydicom.dcmread(pydicom_file("693_UNCI.dcm")), tmp_path / "scan.dcm")
    bare = tmp_path / "I0000123"
    bare.write_bytes(named.read_bytes())
    pipe = tiny_pipeline()
    pipe.set_preprocessing({"medical": {"windows": ["brain"]}})
    torch.testing.assert_close(pipe.preprocess([str(bare)]), pipe.preprocess([named]), rtol=0, atol=0)
    files = [cq500("CQ500-CT-1", "CT000000.dcm")]  # a real CT slice, streamed from a path without extension
    (tmp_path / "CT000000").write_bytes(files[0].read_bytes())
    streamed = StreamingImages.from_files([tmp_path / "CT000000"], image_size=16, num_channels=1)
    expected = preprocess_images([str(files[0])], preprocessing=streamed.preprocessing)
    torch.testing.assert_close(stacked(streamed), expected, rtol=0, atol=0)


@pytest.mark.parametrize("streaming", [False, True])
def test_mammograms_of_two_sizes_in_one_series_are_resized_not_refused(tmp_path, streaming):
    """QA (a mammography group): a magnification view (here 64x64) in the series of 128x128 views, and files whose
    anonymiser removed the SeriesInstanceUID, were refused as "mixed slice sizes"; projection images (Modality MG,
    DX, CR, ...) are not slices of a volume. A CT series of two sizes is still refused."""
    big, small = pydicom.dcmread(pydicom_file("CT_small.dcm")), pydicom.dcmread(pydicom_file("MR_small.dcm"))
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            write_dicom(big, tmp_path / label / f"{i}.dcm", Modality="MG", SeriesInstanceUID="1.2.3")
    write_dicom(small, tmp_path / "b" / "magnified.dcm", Modality="MG", SeriesInstanceUID="1.2.3")
    read = streaming_image_classification_data if streaming else load_image_classification_data
    assert len(read(tmp_path, num_channels=1, image_size=16, medical=FULL, unlabeled=True)["train"]) == 5
    write_dicom(small, tmp_path / "b" / "magnified.dcm", Modality="CT", SeriesInstanceUID="1.2.3")
    for path in (tmp_path / "b").glob("[01].dcm"):
        write_dicom(big, path, Modality="CT", SeriesInstanceUID="1.2.3")
    with pytest.raises(ValueError, match=r"mixed slice sizes \(height x width\): 128x128: 2 files .*64x64: 1 file"):
        read(tmp_path, num_channels=1, image_size=16, medical=FULL, unlabeled=True)

"""DICOM header values read as the standard and other readers do, or refused naming the file: a rescale given in part
or empty, a padding value of signed pixels written unsigned, header values that are no numbers, a file cut short in
its file meta, a file missing an Image Pixel element refused from its header alone; a file without the Part 10
header read as the data set it holds."""

import copy
import warnings

import numpy as np
import pytest

from diffusion_classifiers.data import read_dicom, window_channels

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataelem import DataElement  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402

from diffusion_classifiers.data.dicom import read_dicom_header  # noqa: E402


@pytest.fixture(scope="module")
def ct_small():
    """pydicom's CT_small.dcm: 128 x 128 signed 16-bit, RescaleSlope 1, RescaleIntercept -1024, no window tags."""
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def write_dicom(dataset, path, pixels=None, elements=(), **tags):
    """`dataset` saved to `path` with `tags` set (`None`: empty, `...`: removed) and `elements` (tag, VR, value) added
    as they are (a VR other than the standard's)."""
    dataset = copy.deepcopy(dataset)
    for keyword, value in tags.items():
        if value is ...:
            del dataset[keyword]
        else:
            setattr(dataset, keyword, value)
    for tag, vr, value in elements:
        dataset[tag] = DataElement(tag, vr, value)
    if pixels is not None:
        dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_with_bad_value(dataset, path, keyword, placeholder, bad):
    """`dataset` saved with `keyword` written as the bytes `bad` (pydicom refuses to write a value that is none)."""
    write_dicom(dataset, path, **{keyword: placeholder})
    data = path.read_bytes()
    assert data.count(placeholder.encode()) == 1
    path.write_bytes(data.replace(placeholder.encode(), bad.encode()))
    return path


def read_both(path):
    """The errors of `read_dicom` and `read_dicom_header` on `path`, which must both be `ValueError`s."""
    errors = []
    for read in (read_dicom, read_dicom_header):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError) as caught:
                read(path)
        errors.append(str(caught.value))
    return errors


# --------------------------------------------------------------------------------------------------
# The Modality LUT: a rescale given in part
# --------------------------------------------------------------------------------------------------


def test_an_intercept_without_its_slope_is_read_with_slope_one(tmp_path, ct_small):
    # pydicom's apply_modality_lut skips the rescale unless both tags are present: every HU was 1024 too high
    path = write_dicom(ct_small, tmp_path / "no_slope.dcm", RescaleSlope=...)
    stored = ct_small.pixel_array.astype(np.float64)
    image = read_dicom(path)
    np.testing.assert_array_equal(image.values[0], stored - 1024)
    assert image.stored_range == (-32768 - 1024, 32767 - 1024)


@pytest.mark.parametrize(
    "tags, slope, intercept",
    [
        ({"RescaleSlope": None}, 1.0, -1024.0),
        ({"RescaleIntercept": None}, 1.0, 0.0),
        ({"RescaleSlope": None, "RescaleIntercept": None}, 1.0, 0.0),
        ({"RescaleSlope": "0.5", "RescaleIntercept": ...}, 0.5, 0.0),
    ],
)
def test_an_empty_or_absent_rescale_tag_is_the_identitys(tmp_path, ct_small, tags, slope, intercept):
    path = write_dicom(ct_small, tmp_path / "rescale.dcm", **tags)
    stored = ct_small.pixel_array.astype(np.float64)
    np.testing.assert_array_equal(read_dicom(path).values[0], stored * slope + intercept)
    assert read_dicom_header(path).stored_range == (-32768 * slope + intercept, 32767 * slope + intercept)


@pytest.mark.parametrize("bad", ["ab.c", "0", "0.0"])
def test_a_rescale_slope_that_is_no_number_or_zero_is_refused_naming_file_and_value(tmp_path, ct_small, bad):
    path = write_with_bad_value(ct_small, tmp_path / "bad_slope.dcm", "RescaleSlope", "7.25", bad.ljust(4))
    for error in read_both(path):
        assert str(path) in error and "RescaleSlope" in error and bad in error


# --------------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vr, value", [("SS", -2000), ("US", 63536)])
def test_the_padding_value_of_signed_pixels_is_masked_written_signed_or_unsigned(tmp_path, ct_small, vr, value):
    # PixelPaddingValue takes the pixels' VR (SS here); written US, -2000 reads 63536 and matched no pixel
    pixels = ct_small.pixel_array.astype(np.int16)
    pixels[:10] = -2000
    path = write_dicom(ct_small, tmp_path / "padded.dcm", pixels, [(0x00280120, vr, value)])
    image = read_dicom(path)
    assert image.padding[0, :10].all() and not image.padding[0, 10:].any()
    assert (window_channels(image, ("full",), padding_fill=0.5)[0, 0, :10] == 0.5).all()


# --------------------------------------------------------------------------------------------------
# Header values that are none, and files cut short: a ValueError naming the file
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["InstanceNumber", "NumberOfFrames"])
def test_an_integer_tag_that_is_no_integer_is_refused_naming_file_and_tag(tmp_path, ct_small, keyword):
    path = write_with_bad_value(ct_small, tmp_path / "bad_integer.dcm", keyword, "9876", "98A6")
    for error in read_both(path):
        assert str(path) in error and keyword in error and "98A6" in error


def test_a_file_cut_short_in_its_file_meta_is_refused_naming_it(tmp_path):
    path = tmp_path / "cut.dcm"
    path.write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read()[:153])
    for error in read_both(path):
        assert str(path) in error


def test_an_element_of_an_unknown_vr_is_refused_naming_the_file(tmp_path, ct_small):
    path = write_dicom(ct_small, tmp_path / "bad_vr.dcm")
    data = path.read_bytes()
    columns = data.index(b"\x28\x00\x11\x00US")  # (0028,0011) Columns, explicit VR little endian
    path.write_bytes(data[: columns + 4] + b"\x55\xc4" + data[columns + 6:])
    for error in read_both(path):
        assert str(path) in error


@pytest.mark.parametrize("keyword", ["Rows", "BitsAllocated", "BitsStored", "PixelRepresentation"])
def test_a_missing_image_pixel_element_is_refused_from_the_header_alone(tmp_path, ct_small, keyword):
    # the streaming listing reads headers only: it let such a file through, to fail when its pixels were decoded
    path = write_dicom(ct_small, tmp_path / "incomplete.dcm", **{keyword: ...})
    for error in read_both(path):
        assert str(path) in error and keyword in error


def test_bits_stored_beyond_bits_allocated_is_refused_from_the_header_alone(tmp_path, ct_small):
    path = write_dicom(ct_small, tmp_path / "bits.dcm", BitsStored=17)
    for error in read_both(path):
        assert str(path) in error and "BitsStored 17" in error


# --------------------------------------------------------------------------------------------------
# A file without the Part 10 header (no preamble, 'DICM' nor file meta)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, implicit_vr, little_endian",
    [("CT_small.dcm", True, True), ("CT_small.dcm", False, True), ("MR_small_bigendian.dcm", False, False)],
)
def test_a_bare_data_set_reads_as_the_part_10_file_it_came_from(tmp_path, name, implicit_vr, little_endian):
    # pydicom reads one only with force=True, and then without a transfer syntax to decode its pixels by
    dataset = pydicom.dcmread(get_testdata_file(name))
    dataset.file_meta, dataset.preamble = FileMetaDataset(), None
    path = tmp_path / "bare.dcm"
    pydicom.dcmwrite(path, dataset, implicit_vr=implicit_vr, little_endian=little_endian, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    expected = read_dicom(get_testdata_file(name))
    image, header = read_dicom(path), read_dicom_header(path)
    np.testing.assert_array_equal(image.values, expected.values)
    assert image.windows == expected.windows and header.size == (dataset.Rows, dataset.Columns)


def test_a_file_neither_part_10_nor_a_bare_image_is_still_refused_naming_it(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not a DICOM file\n" * 20)
    for error in read_both(path):
        assert str(path) in error and "DICM" in error

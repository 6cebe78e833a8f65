"""In-memory reading of image folders at scale and its notices: one full-size image held at a time (and the same
tensors as decoding them all first), the slice-size rule per DICOM series, every unreadable file named at once,
16-bit images scaled by different bit depths, grey and colour images mixed, carved splits that miss a class.

The DICOM files are built here with pydicom (12-bit mammography-like images, MONOCHROME1 and 2), the PNGs with PIL.
"""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.data import (
    MedicalPreprocessing,
    load_image_classification_data,
    preprocess_images,
    streaming_image_classification_data,
)
from diffusion_classifiers.data import readers

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

FULL = MedicalPreprocessing(windows=("full",))


def write_mammogram(path, size=(40, 32), seed=0, patient="P0", series=None, monochrome1=True, bits=12):
    """A 12-bit greyscale DICOM (Digital Mammography For Presentation) of `size`, its own series unless `series`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "MG"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series or generate_uid()
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    values = np.random.default_rng(seed).integers(0, 2**bits, size, dtype=np.uint16)
    ds.PixelData = values.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def class_folders(root, counts):
    folders = {}
    for name in counts:
        folders[name] = root / name
        folders[name].mkdir(parents=True)
    return folders


# --------------------------------------------------------------------------------------------------
# Slice sizes: one size per series, not per folder
# --------------------------------------------------------------------------------------------------


def test_mammograms_of_different_series_and_sizes_in_one_folder_are_read(tmp_path):
    folders = class_folders(tmp_path, ["benign", "malignant"])
    for name, folder in folders.items():
        for i in range(6):  # two detectors: 40x32 and 48x36, each image its own series
            size = (40, 32) if i % 2 == 0 else (48, 36)
            write_mammogram(folder / f"{i}.dcm", size, seed=i + 10 * len(name), patient=f"{name}{i}")
    splits = load_image_classification_data(tmp_path, image_size=16, medical=FULL, val_fraction=0.5,
                                            test_fraction=0.5)  # fmt: skip
    assert sum(len(split) for split in splits.values()) == 12
    assert splits["train"].images.shape[1:] == (1, 16, 16)
    streamed = streaming_image_classification_data(tmp_path, num_channels=1, image_size=16, medical=FULL,
                                                   val_fraction=0.5, test_fraction=0.5)  # fmt: skip
    for name, split in splits.items():
        torch.testing.assert_close(torch.stack([streamed[name][i][0] for i in range(len(split))]), split.images,
                                   rtol=0, atol=0)  # fmt: skip


def test_mixed_sizes_within_one_series_are_still_refused(tmp_path):
    folders = class_folders(tmp_path, ["a", "b"])
    series = generate_uid()
    for i in range(3):
        write_mammogram(folders["a"] / f"{i}.dcm", (40, 32), seed=i, series=series)
        write_mammogram(folders["b"] / f"{i}.dcm", (40, 32), seed=10 + i)
    write_mammogram(folders["a"] / "scout.dcm", (24, 24), seed=5, series=series)
    match = r"series .*: mixed slice sizes: .*0.dcm is 40x32 but .*scout.dcm is 24x24.*expected one size per series"
    with pytest.raises(ValueError, match=match):
        load_image_classification_data(tmp_path, image_size=16, medical=FULL)
    with pytest.raises(ValueError, match=match):
        streaming_image_classification_data(tmp_path, num_channels=1, image_size=16, medical=FULL)

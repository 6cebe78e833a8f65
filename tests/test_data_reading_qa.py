"""In-memory reading of image folders at scale and its notices: one full-size image held at a time (and the same
tensors as decoding them all first), the slice-size rule per DICOM series, every unreadable file named at once,
16-bit images scaled by different bit depths, grey and colour images mixed, carved splits that miss a class.

The DICOM files are built here with pydicom (12-bit mammography-like images, MONOCHROME1 and 2), the PNGs with PIL.
"""

import warnings
import weakref

from pathlib import Path

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
from diffusion_classifiers.data import file_decoding, readers
from diffusion_classifiers.data.labeled_images import RawData

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


def test_raw_and_processed_mammograms_read_together_are_warned_about(tmp_path):
    """QA (a mammography group): 'FOR PROCESSING' raw detector images were read beside 'FOR PRESENTATION' ones
    without a word; the model would learn the kind of file."""
    folders = class_folders(tmp_path, ["a", "b"])
    for name, folder in folders.items():
        for i in range(3):
            path = write_mammogram(folder / f"{i}.dcm", seed=i + 10 * len(name), patient=f"{name}{i}")
            dataset = pydicom.dcmread(path)
            dataset.PresentationIntentType = "FOR PROCESSING" if (name, i) == ("b", 2) else "FOR PRESENTATION"
            dataset.save_as(path)
    match = (r"two PresentationIntentTypes are read together \(FOR PRESENTATION: 5 files \(e.g. .*0.dcm\); FOR "
             r"PROCESSING: 1 files \(e.g. .*b/2.dcm\)\)")
    with pytest.warns(UserWarning, match=match) as caught:
        load_image_classification_data(tmp_path, image_size=16, medical=FULL, unlabeled=True)
    assert {Path(record.filename).name for record in caught if "Presentation" in str(record.message)} == {
        Path(__file__).name}
    with pytest.warns(UserWarning, match=match):
        streaming_image_classification_data(tmp_path, num_channels=1, image_size=16, medical=FULL, unlabeled=True)


def test_mixed_sizes_within_one_series_of_a_volume_are_still_refused(tmp_path):
    """A volume's series (here CT) holds one size; a mammography series may hold several (see test_dicom.py)."""
    folders = class_folders(tmp_path, ["a", "b"])
    series = generate_uid()
    for i in range(3):
        write_mammogram(folders["a"] / f"{i}.dcm", (40, 32), seed=i, series=series)
        write_mammogram(folders["b"] / f"{i}.dcm", (40, 32), seed=10 + i)
    write_mammogram(folders["a"] / "scout.dcm", (24, 24), seed=5, series=series)
    for path in folders["a"].glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.Modality = "CT"
        dataset.save_as(path)
    match = r"series .*: mixed slice sizes \(height x width\): 40x32: 3 files .*24x24: 1 file \(.*scout.dcm\).*expected one size per series"
    with pytest.raises(ValueError, match=match):
        load_image_classification_data(tmp_path, image_size=16, medical=FULL)
    with pytest.raises(ValueError, match=match):
        streaming_image_classification_data(tmp_path, num_channels=1, image_size=16, medical=FULL)


# --------------------------------------------------------------------------------------------------
# Memory: each image preprocessed as it is decoded
# --------------------------------------------------------------------------------------------------


def mixed_folder(root):
    """Two classes of DICOM (MONOCHROME1 and 2, two sizes), 16-bit PNG, 8-bit grey and RGB PNG files."""
    folders = class_folders(root, ["a", "b"])
    rng = np.random.default_rng(0)
    for k, folder in enumerate(folders.values()):
        for i in range(4):
            write_mammogram(folder / f"m{i}.dcm", (40, 32) if i % 2 else (36, 44), seed=10 * k + i,
                            patient=f"p{k}{i}", monochrome1=i % 2 == 0)  # fmt: skip
        Image.fromarray(rng.integers(0, 4096, (30, 26), dtype=np.uint16)).save(folder / "x16.png")
        Image.fromarray(rng.integers(0, 256, (28, 34), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (33, 29, 3), dtype=np.uint8)).save(folders["b"] / "rgb.png")
    return folders


@pytest.mark.parametrize("options", [
    {"resize_mode": "stretch"},
    {"resize_mode": "pad", "pad_value": 0.5},
    {"resize_mode": "crop", "num_channels": 1},
    {"normalize_background": True, "num_channels": 3},
])  # fmt: skip
def test_decoding_file_by_file_gives_the_tensors_of_preprocessing_them_all_at_once(tmp_path, options):
    mixed_folder(tmp_path)
    options = dict(options)
    num_channels = options.pop("num_channels", None)
    if options.get("normalize_background"):  # a bright field: every image's border bright
        for path in tmp_path.rglob("*.png"):
            image = np.asarray(Image.open(path)).copy()
            image[:2], image[-2:], image[:, :2], image[:, -2:] = (image.max(),) * 4
            Image.fromarray(image).save(path)
        for path in tmp_path.rglob("*.dcm"):
            path.unlink()
    medical = MedicalPreprocessing(windows=("full",), bits_stored=12)
    reading = readers.ImagePreprocessing(20, num_channels, input_range="[0, 1]", medical=medical, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoded = readers._read_image_folder(tmp_path, medical)  # every image decoded first, as before
        expected = preprocess_images(decoded.images, preprocessing=reading)
        streamed = readers._read_image_folder(tmp_path, medical, reading)
        splits = load_image_classification_data(tmp_path, 20, num_channels, medical=medical, val_fraction=0.25,
                                                test_fraction=0.25, **options)  # fmt: skip
    assert streamed.preprocessed and expected.shape == (len(decoded.labels), num_channels or 3, 20, 20)
    assert torch.equal(streamed.images, expected)  # bit-identical
    np.testing.assert_array_equal(streamed.labels, decoded.labels)
    np.testing.assert_array_equal(streamed.groups, decoded.groups)
    raw = RawData(expected, decoded.labels, decoded.class_names, decoded.splits, groups=decoded.groups)
    carved = readers.carve_splits(raw, 0.25, 0.25, 0)
    for name, split in splits.items():
        assert torch.equal(split.images, expected[torch.from_numpy(carved[name])])


def test_at_most_one_full_size_image_is_held_while_reading(tmp_path, monkeypatch):
    mixed_folder(tmp_path)
    alive, most = [], []

    def tracked(function):
        def wrapper(*args, **kwargs):
            most.append(sum(ref() is not None for ref in alive))  # full-size images still held when decoding the next
            result = function(*args, **kwargs)
            alive.append(weakref.ref(result))
            return result
        return wrapper

    monkeypatch.setattr(file_decoding, "window_channels", tracked(file_decoding.window_channels))
    monkeypatch.setattr(file_decoding, "decode_image_file", tracked(file_decoding.decode_image_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = load_image_classification_data(tmp_path, 16, medical=FULL, val_fraction=0.25, test_fraction=0.25)
    assert len(most) == sum(len(split) for split in splits.values()) == 13
    assert max(most) == 0, most  # before: every decoded image held until all were read ([0, 1, 2, ..., 12])


# --------------------------------------------------------------------------------------------------
# Every unreadable file named at once
# --------------------------------------------------------------------------------------------------


def test_every_unreadable_file_of_a_folder_is_named_in_one_error(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the list of them all: written here, not in /tmp
    folders = class_folders(tmp_path, ["a", "b"])
    for k, folder in enumerate(folders.values()):
        for i in range(3):
            write_mammogram(folder / f"ok{i}.dcm", seed=10 * k + i, patient=f"p{k}{i}")
    no_pixels = pydicom.dcmread(folders["a"] / "ok0.dcm")
    del no_pixels.PixelData
    no_pixels.save_as(folders["a"] / "report.dcm")
    colour = pydicom.dcmread(folders["a"] / "ok1.dcm")
    colour.PhotometricInterpretation = "RGB"
    colour.save_as(folders["a"] / "screen.dcm")
    data = (folders["a"] / "ok2.dcm").read_bytes()
    (folders["a"] / "cut.dcm").write_bytes(data[: len(data) // 3])
    (folders["b"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    for i in range(19):
        (folders["b"] / f"zz{i:02d}.dcm").write_bytes(b"not DICOM" * 20)
    with pytest.raises(ValueError) as caught:
        load_image_classification_data(tmp_path, 16, medical=FULL)
    message = str(caught.value)
    assert message.startswith("23 of 29 image files cannot be read: ")
    for name in ("report.dcm has no pixel data", "screen.dcm: PhotometricInterpretation 'RGB'", "cut.dcm",
                 "broken.png", "zz00.dcm", "zz15.dcm"):  # fmt: skip
        assert name in message
    assert "zz16.dcm" not in message and message.count("cannot read DICOM file") == 16  # zz00..zz15: 20 named in all
    assert "; and 3 more. Expected every file to be a readable image" in message
    one = tmp_path / "one"
    class_folders(one, ["a", "b"])
    for k, name in enumerate(("a", "b")):
        for i in range(3):
            write_mammogram(one / name / f"ok{i}.dcm", seed=i + 3 * k, patient=f"q{k}{i}")
    (one / "b" / "report.dcm").write_bytes((folders["a"] / "report.dcm").read_bytes())
    with pytest.raises(ValueError, match=r"^DICOM file .*report.dcm has no pixel data"):  # one: its own error
        load_image_classification_data(one, 16, medical=FULL)
    (one / "a" / "screen.dcm").write_bytes((folders["a"] / "screen.dcm").read_bytes())
    match = (r"^2 of 8 image files cannot be read: .*screen.dcm: PhotometricInterpretation 'RGB'.*; "
             r"DICOM file .*report.dcm has no pixel data")
    with pytest.raises(ValueError, match=match):
        load_image_classification_data(one, 16, medical=FULL)
    with pytest.raises(ValueError, match=match):  # streaming lists the headers alike
        streaming_image_classification_data(one, num_channels=1, image_size=16, medical=FULL)


# --------------------------------------------------------------------------------------------------
# 16-bit images scaled by different bit depths
# --------------------------------------------------------------------------------------------------


def sixteen_bit_folder(root, fatty=2):
    """12-bit detector PNGs (maximum above 2047); `fatty` of class a's halved (maximum below 2048: 11 bits guessed)."""
    folders = class_folders(root, ["a", "b"])
    rng = np.random.default_rng(0)
    for k, folder in enumerate(folders.values()):
        for i in range(4):
            values = rng.integers(0, 4096, (20, 16), dtype=np.uint16)
            values[0, 0] = 4000
            if k == 0 and i < fatty:
                values //= 2
            Image.fromarray(values).save(folder / f"{i}.png")
    return folders


def test_16bit_images_scaled_by_different_guessed_bit_depths_warn_once(tmp_path):
    folders = sixteen_bit_folder(tmp_path)
    with pytest.warns(UserWarning, match="different bit depths") as caught:
        splits = load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25)
    depth_warnings = [w for w in caught if "different bit depths" in str(w.message)]
    assert len(depth_warnings) == 1
    message = str(depth_warnings[0].message)
    assert f"2 at 11 bits (e.g. {folders['a'] / '0.png'})" in message
    assert f"6 at 12 bits (e.g. {folders['a'] / '2.png'})" in message
    assert "MedicalPreprocessing(bits_stored=12)" in message and "--bits_stored 12" in message
    assert splits["train"].preprocessing.medical.bits_stored is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stated: one depth, no warning
        load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25,
                                       medical=MedicalPreprocessing(bits_stored=12))  # fmt: skip
    uniform = tmp_path / "uniform"
    sixteen_bit_folder(uniform, fatty=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every image guessed at 12 bits: nothing to say
        load_image_classification_data(uniform, 8, val_fraction=0.25, test_fraction=0.25)


def test_one_guessed_bit_depth_of_the_training_files_is_recorded_in_the_contract(tmp_path):
    uniform = tmp_path / "uniform"
    sixteen_bit_folder(uniform, fatty=0)  # every image guessed at 12 bits
    splits = load_image_classification_data(uniform, 8, val_fraction=0.25, test_fraction=0.25)
    medical = splits["train"].preprocessing.medical
    assert (medical.bits_stored, medical.guessed_bits_stored) == (None, 12)  # recorded, not stated: nothing refused
    assert medical.to_dict()["guessed_bits_stored"] == 12
    sixteen_bit_folder(tmp_path / "mixed")  # 11 and 12 bits: warned about as they are read, nothing recorded
    with pytest.warns(UserWarning, match="different bit depths"):
        splits = load_image_classification_data(tmp_path / "mixed", 8, val_fraction=0.25, test_fraction=0.25)
    assert splits["train"].preprocessing.medical.guessed_bits_stored is None
    assert "guessed_bits_stored" not in splits["train"].preprocessing.to_dict()["medical"]  # saved as before
    stated = MedicalPreprocessing(bits_stored=12)
    splits = load_image_classification_data(uniform, 8, val_fraction=0.25, test_fraction=0.25, medical=stated)
    assert splits["train"].preprocessing.medical == stated


def test_files_read_for_a_model_at_another_guessed_depth_than_its_training_files_warn_once(tmp_path):
    sixteen_bit_folder(tmp_path, fatty=2)  # class a's 0.png and 1.png at 11 bits, the rest at 12
    recorded = MedicalPreprocessing(guessed_bits_stored=12)  # a model trained on 12-bit files: evaluate reads so
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25, medical=recorded)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages  # this one, not also the data set's "different bit depths"
    assert messages[0].startswith("2 of 8 16-bit images were scaled by another bit depth than the model's training")
    assert f"{tmp_path / 'a' / '0.png'} at 11 bits" in messages[0] and "all read at 12 bits" in messages[0]
    assert "--bits_stored 12" in messages[0] and "'bits_stored': 12" in messages[0]
    assert caught[0].filename == __file__  # blamed on the loader's caller
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unrecorded = load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25)
    for split in ("train", "val", "test"):  # only warned: the pixels are those read without the record
        assert torch.equal(splits[split].images, unrecorded[split].images)


# --------------------------------------------------------------------------------------------------
# Grey and colour images mixed
# --------------------------------------------------------------------------------------------------


def test_a_colour_image_among_grey_ones_warns_when_the_channels_are_inferred(tmp_path):
    folders = mixed_folder(tmp_path)  # 12 grey files (DICOM, 16-bit and 8-bit PNG) and b/rgb.png
    with pytest.warns(UserWarning, match=r"1 of 13 images are colour \(.*rgb.png\), the others grey") as caught:
        splits = load_image_classification_data(tmp_path, 16, medical=FULL, val_fraction=0.25, test_fraction=0.25)
    assert splits["train"].images.shape[1] == 3  # still read as before
    message = next(str(w.message) for w in caught if "are colour" in str(w.message))
    assert str(folders["b"] / "rgb.png") in message and "num_channels=1" in message and "--num_channels 1" in message
    for channels in (1, 3):  # stated: no warning
        with warnings.catch_warnings(record=True) as stated:
            warnings.simplefilter("always")
            splits = load_image_classification_data(tmp_path, 16, channels, medical=FULL, val_fraction=0.25,
                                                    test_fraction=0.25)  # fmt: skip
        assert not [w for w in stated if "are colour" in str(w.message)] and splits["val"].images.shape[1] == channels


def test_grey_images_stored_as_colour_warn_when_the_channels_are_inferred(tmp_path):
    """QA: NDSB's grey JPEGs are stored as RGB: the model became 3-channel, silently (its loss 3.5x higher at step 200
    than with --num_channels 1 on a toy copy)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(6):
            grey = rng.integers(0, 256, (12, 12), dtype=np.uint8)
            Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / name / f"{i}.jpg", quality=90)
    with pytest.warns(UserWarning, match=r"all 12 images are grey stored as colour \(their three channels equal\)"):
        splits = load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25)
    assert splits["train"].images.shape[1] == 3  # still read as before
    for channels in (1, 3):  # stated: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_image_classification_data(tmp_path, 8, channels, val_fraction=0.25, test_fraction=0.25)
    colour = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "b" / "0.jpg", quality=90)  # one real colour image: grey no longer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25)
    assert not [w for w in caught if "grey stored as colour" in str(w.message)]
    Image.fromarray(colour[..., 0]).save(tmp_path / "b" / "0.png")  # QA: a grey PNG among grey RGB JPEGs
    (tmp_path / "b" / "0.jpg").unlink()
    with pytest.warns(UserWarning, match=r"11 of 12 images are stored as colour, all grey \(their three channels "
                                         r"equal\) \(.*\), the others grey"):  # fmt: skip
        load_image_classification_data(tmp_path, 8, val_fraction=0.25, test_fraction=0.25)


def test_a_colour_row_among_grey_rows_of_a_dataset_warns(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(9)]
    images.append(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 5}, features=features)
    with pytest.warns(UserWarning, match=r"1 of 10 images are colour \(split 'train' row 9\)"):
        load_image_classification_data(dataset, 8, val_fraction=0.25, test_fraction=0.25)


def test_a_row_of_another_size_is_named_by_its_split_and_row(tmp_path):
    """QA: rows were numbered across the splits: "image 262 is 32x32" of a DatasetDict whose test split has 80."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})

    def split(sizes):
        return datasets.Dataset.from_dict(
            {"image": [Image.new("L", (size, size)) for size in sizes], "label": [0, 1] * (len(sizes) // 2)},
            features=features,
        )

    parts = datasets.DatasetDict({"train": split([8] * 6), "test": split([8, 8, 12, 8])})
    with pytest.raises(ValueError, match=r"different sizes: split 'train' row 0 is 8x8, split 'test' row 2 is 12x12"):
        load_image_classification_data(parts, num_channels=1)


# --------------------------------------------------------------------------------------------------
# Carved splits without an image of a class
# --------------------------------------------------------------------------------------------------


def mammography_cohort():
    """40 benign images of 20 patients and 8 malignant of 4 (two views each), as the QA's mammography set."""
    labels = np.array([0] * 40 + [1] * 8)
    groups = np.array([f"B{i // 2:03d}" for i in range(40)] + [f"M{i // 2:03d}" for i in range(8)], dtype=object)
    return labels, groups


def sklearn_split(labels, groups, fraction, seed):
    """The grouped split as it was carved before: scikit-learn's first fold of round(1 / fraction)."""
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folds = StratifiedGroupKFold(n_splits=round(1 / fraction), shuffle=True, random_state=seed)
        kept, split = next(folds.split(np.zeros(len(labels)), labels, groups))
    return np.sort(kept), np.sort(split)


def test_a_carved_split_without_several_classes_warns_once_naming_the_first_few(tmp_path):
    """QA: on a long tail (NDSB's 121 classes, 524 warnings in one benchmark run) every class missing from a carved
    split was its own warning."""
    names = ["common"] + [f"rare{k}" for k in range(7)]
    labels = np.array([0] * 60 + list(range(1, 8)))  # seven classes of one image each
    raw = RawData(None, labels, names, {"train": np.arange(len(labels))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        readers.carve_splits(raw, 0.1, 0.2, 0)
    messages = [str(w.message) for w in caught if "holds no image" in str(w.message)]
    val = [message for message in messages if message.startswith("the carved 'val' split")]
    assert len(val) == 1, messages
    assert val[0].startswith("the carved 'val' split holds no image of 7 classes: 'rare0' (label 1), which has 1 image")
    assert "'rare4' (label 5), which has 1 image; and 2 more: too few for val_fraction=0.1" in val[0]
    assert "cannot measure them. Give more images of them, or a larger val_fraction" in val[0]


def test_a_carved_split_without_a_class_is_named_in_the_library_s_words(tmp_path):
    labels, groups = mammography_cohort()
    raw = RawData(None, labels, ["benign", "malignant"], {"train": np.arange(48)}, groups=groups)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = readers.carve_splits(raw, 0.1, 0.2, 0)
    messages = [str(w.message) for w in caught]
    assert not any("least populated" in message for message in messages), messages
    assert len(messages) == 1 and messages[0].startswith(
        "the carved 'val' split holds no image of class 'malignant' (label 1), which has 8 images of 4 patients "
        "(groups); 6 images of 3 patients (groups) were left for 'val' after 'test': too few for val_fraction=0.1"
    ), messages
    assert "Give more images and patients of it, or a larger val_fraction (the scripts' --val_fraction)" in messages[0]
    # the carving is unchanged: scikit-learn's folds, test first, then val from the rest
    kept, test = sklearn_split(labels, groups, 0.2, 0)
    train, val = sklearn_split(labels[kept], groups[kept], 0.1, 0)
    np.testing.assert_array_equal(splits["test"], test)
    np.testing.assert_array_equal(splits["val"], kept[val])
    np.testing.assert_array_equal(splits["train"], kept[train])
    assert (labels[splits["val"]] == 1).sum() == 0
    # called directly, the grouped split words scikit-learn's warning as the library's, and splits as scikit-learn
    with pytest.warns(UserWarning, match=r"stratified_group_split: class 1: 6 images in 3 groups; fewer than the 10 "
                                         r"folds") as direct:  # fmt: skip
        kept_direct, split_direct = readers.stratified_group_split(labels[kept], groups[kept], 0.1, 0)
    assert not any("least populated" in str(w.message) for w in direct)
    np.testing.assert_array_equal(split_direct, val)
    np.testing.assert_array_equal(kept_direct, train)


def test_a_carved_split_holding_every_class_says_nothing():
    labels, groups = mammography_cohort()
    raw = RawData(None, labels, ["benign", "malignant"], {"train": np.arange(48)}, groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = readers.carve_splits(raw, 0.25, 0.25, 0)
    assert all((labels[splits[name]] == 1).any() for name in ("train", "val", "test"))


def test_a_class_carved_out_of_train_entirely_is_named():
    labels = np.array([0] * 12 + [1])  # one image of one patient: the grouped split may carve it out of train
    groups = np.array([f"B{i // 2}" for i in range(12)] + ["M0"], dtype=object)
    raw = RawData(None, labels, ["benign", "malignant"], {"train": np.arange(13)}, groups=groups)
    for seed in range(20):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            splits = readers.carve_splits(raw, 0.25, 0.25, seed)
        if (labels[splits["train"]] == 1).any():
            continue
        where = "'val'" if (labels[splits["val"]] == 1).any() else "'test'"
        expected = (f"the 'train' split holds no image of class 'malignant' (label 1), which has 1 image of 1 patient "
                    f"(groups), all carved into {where}: the model cannot learn it")  # fmt: skip
        assert any(str(w.message).startswith(expected) for w in caught), [str(w.message) for w in caught]
        break
    else:
        pytest.fail("no seed carved the malignant patient out of train")


def test_two_image_columns_are_refused_with_a_way_every_command_can_take():
    """QA: `evaluate` was told to "Pass image_column=", a flag only predict and cluster had (every command and training
    script has it now: tests/test_dataset_columns.py)."""
    datasets = pytest.importorskip("datasets")
    image = datasets.Image()
    features = datasets.Features({"a": image, "b": image, "label": datasets.ClassLabel(names=["x"])})
    rows = datasets.Dataset.from_dict({"a": [Image.new("L", (4, 4))] * 2, "b": [Image.new("L", (4, 4))] * 2,
                                       "label": [0, 0]}, features=features)  # fmt: skip
    refused = (r"several \(\['a', 'b'\]\) .*Pass image_column= naming one \(the commands and training scripts: "
               r"--image_column\), or save the dataset with one Image column")
    with pytest.raises(ValueError, match=refused):
        load_image_classification_data(rows)

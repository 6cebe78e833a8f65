"""Image folders as labs keep them: run folders linked in from other disks, broken links, the thumbnail and
resource-fork folders NAS and archivers add, link loops (QA persona: a microscopy lab's messy folders)."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from diffusion_classifiers.data import list_unlabeled_folder, load_image_classification_data
from diffusion_classifiers.prediction import list_inputs


def write_images(folder, count, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.fromarray(np.full((6, 6), 40 * i % 256, dtype=np.uint8)).save(folder / f"img{i}.png")


def relative_names(paths, root):
    return sorted(os.path.relpath(path, root) for path in paths)


def test_a_run_folder_linked_in_is_read_as_its_own_folder_is(tmp_path):
    write_images(tmp_path / "elsewhere" / "run2", 3)
    pool = tmp_path / "pool"
    write_images(pool / "run1", 2)
    (pool / "run2").symlink_to(tmp_path / "elsewhere" / "run2", target_is_directory=True)
    expected = ["run1/img0.png", "run1/img1.png", "run2/img0.png", "run2/img1.png", "run2/img2.png"]
    assert relative_names(list_unlabeled_folder(pool, "pool"), pool) == expected
    assert sorted(item.path for item in list_inputs(pool)) == expected  # as predict's rows name them
    data = load_image_classification_data(str(pool), unlabeled=True, image_size=6, num_channels=1)
    assert len(data["train"].images) == 5


def test_a_broken_link_named_as_an_image_is_listed_for_its_reader_to_report(tmp_path):
    pool = tmp_path / "pool"
    write_images(pool, 2)
    (pool / "gone.png").symlink_to(tmp_path / "missing.png")
    assert "gone.png" in relative_names(list_unlabeled_folder(pool, "pool"), pool)
    with pytest.raises(ValueError, match="gone.png"):
        load_image_classification_data(str(pool), unlabeled=True, image_size=6, num_channels=1)


def test_nas_thumbnails_and_archive_resource_forks_are_skipped_as_hidden_files_are(tmp_path):
    pool = tmp_path / "pool"
    write_images(pool / "run1", 2)
    write_images(pool / "@eaDir" / "img0.png", 1)  # a Synology NAS's thumbnails of run1/img0.png
    write_images(pool / "__MACOSX" / "run1", 1)
    write_images(pool / "run1" / "@eaDir", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: skipped unmentioned, as .DS_Store is
        assert relative_names(list_unlabeled_folder(pool, "pool"), pool) == ["run1/img0.png", "run1/img1.png"]
    labelled = tmp_path / "labelled"
    write_images(labelled / "a", 4)
    write_images(labelled / "b", 4)
    write_images(labelled / "a" / "@eaDir", 1)  # not a nested class layout: the NAS's own folder
    write_images(labelled / "__MACOSX" / "a", 1)  # not a third class
    data = load_image_classification_data(str(labelled), image_size=6, num_channels=1, val_fraction=0.25,
                                          test_fraction=0.25)  # fmt: skip
    assert data["train"].class_names == ["a", "b"]


def test_a_link_back_up_the_tree_is_read_once_and_said(tmp_path):
    pool = tmp_path / "pool"
    write_images(pool / "run1", 2)
    (pool / "run1" / "again").symlink_to(pool, target_is_directory=True)  # a loop
    (pool / "copy_of_run1").symlink_to(pool / "run1", target_is_directory=True)
    (pool / "a_link").symlink_to(pool / "z" / "deeper", target_is_directory=True)  # read under its own name
    write_images(pool / "z" / "deeper", 1)
    with pytest.warns(UserWarning, match=r"3 folder\(s\) reached through links are read once.*a_link"):
        files = list_unlabeled_folder(pool, "pool")
    assert relative_names(files, pool) == ["run1/img0.png", "run1/img1.png", "z/deeper/img0.png"]


def write_stacks(folder, names, values=(0, 128, 255)):
    folder.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(np.full((6, 6), value, dtype=np.uint8)) for value in values]
    for name in names:
        frames[0].save(folder / name, save_all=True, append_images=frames[1:])


def multi_frame_warnings(caught):
    return [str(warning.message) for warning in caught if "hold several frames" in str(warning.message)]


@pytest.fixture
def no_file_warned_yet(monkeypatch):
    from diffusion_classifiers.data import image_files

    monkeypatch.setattr(image_files, "_warned_by_this_process", set())
    monkeypatch.setattr(image_files, "_warnings_outside_a_notice", [0])


def test_a_multi_frame_tiff_or_gif_reads_its_first_frame_and_says_so_once(tmp_path, no_file_warned_yet):
    from diffusion_classifiers.data import preprocess_images

    write_stacks(tmp_path, ["stack.tif", "clip.gif"])
    for name in ("stack.tif", "clip.gif"):
        with pytest.warns(UserWarning, match=rf"1 image file\(s\) hold several frames .*{name} \(3 frames\)"):
            first = preprocess_images([str(tmp_path / name)])
        assert float(first.max()) == -1.0  # frame 0, black
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            preprocess_images([str(tmp_path / name)])  # read again (another epoch): said already
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(tmp_path / "single.tif")
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / "photo.mpo", format="MPO",
                                                              save_all=True, append_images=[Image.new("RGB", (6, 6))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an MPO's second frame is a camera's preview: not an image of its own
        preprocess_images([str(tmp_path / "single.tif"), str(tmp_path / "photo.mpo")])


def test_multi_frame_files_opened_one_by_one_are_named_a_few_times_then_counted(tmp_path, no_file_warned_yet):
    """Second read: outside the loaders each file was its own warning, without end; bytes were all one file."""
    import io

    from diffusion_classifiers.data import image_files

    names = [f"stack{i}.tif" for i in range(image_files.MULTI_FRAME_FILES_NAMED + 3)]
    write_stacks(tmp_path, names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in names + names:  # every file twice
            image_files.open_image(tmp_path / name)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == image_files.MULTI_FRAME_FILES_NAMED + 1 and "not named further" in messages[-1]
    write_stacks(tmp_path / "bytes", ["a.tif", "b.tif"])
    with pytest.warns(UserWarning, match=r"^2 image file\(s\).*image 2 given as bytes"):
        with image_files.first_frames_noted():
            for name in ("a.tif", "b.tif"):
                image_files.open_image(io.BytesIO((tmp_path / "bytes" / name).read_bytes()))


@pytest.mark.parametrize("streaming", [False, True])
def test_the_multi_frame_files_of_a_folder_are_named_in_one_warning(tmp_path, no_file_warned_yet, streaming):
    from diffusion_classifiers.data import image_files, streaming_image_classification_data

    names = [f"stack{i}.tif" for i in range(image_files.MULTI_FRAME_FILES_NAMED + 3)]
    write_stacks(tmp_path / "pool", names)
    write_images(tmp_path / "pool", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if streaming:
            data = streaming_image_classification_data(str(tmp_path / "pool"), 1, image_size=6, unlabeled=True)
            [data["train"][i] for i in range(len(data["train"]))]  # read as training reads them: said already
        else:
            load_image_classification_data(str(tmp_path / "pool"), unlabeled=True, image_size=6, num_channels=1)
    messages = multi_frame_warnings(caught)
    assert len(messages) == 1 and messages[0].startswith(f"{len(names)} image file(s)") and "and 3 more" in messages[0]


@pytest.mark.parametrize("streaming", [False, True])
def test_every_unreadable_file_of_a_large_folder_is_listed_in_one_file(tmp_path, streaming, monkeypatch):
    import re
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    from diffusion_classifiers.data import streaming_image_classification_data

    pool = tmp_path / "pool"
    write_images(pool, 3)
    for i in range(25):
        (pool / f"zero_{i:02d}.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="25 of 28") as refused:
        if streaming:
            streaming_image_classification_data(str(pool), unlabeled=True, image_size=6, num_channels=1)
        else:
            load_image_classification_data(str(pool), unlabeled=True, image_size=6, num_channels=1)
    listing = re.search(r"all 25 are listed in (\S+)\)", str(refused.value)).group(1)
    assert os.path.dirname(listing) == str(tmp_path)
    lines = open(listing, encoding="utf-8").read().splitlines()
    assert len(lines) == 25 and all(f"zero_{i:02d}.jpg" in line for i, line in enumerate(lines))


def test_a_folder_that_cannot_be_listed_is_said(tmp_path, monkeypatch):
    pool = tmp_path / "pool"
    write_images(pool / "run1", 2)
    write_images(pool / "locked", 1)
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # as chmod 000 would, also for root
    with pytest.warns(UserWarning, match=r"1 folder\(s\) cannot be listed, their files not read: .*locked"):
        files = list_unlabeled_folder(pool, "pool")
    assert relative_names(files, pool) == ["run1/img0.png", "run1/img1.png"]


def test_a_named_pipe_in_a_folder_is_not_listed(tmp_path):
    """Second read of the listing: reading a pipe named like an image would block for ever (regular files and broken
    links only)."""
    pool = tmp_path / "pool"
    write_images(pool, 1)
    os.mkfifo(pool / "stream.png")
    assert relative_names(list_unlabeled_folder(pool, "pool"), pool) == ["img0.png"]


def test_class_folders_named_alike_but_for_unicode_normalisation_are_refused(tmp_path):
    """QA (session 58, an international lab): `café` precomposed (NFC) beside `café` with a combining accent (NFD, a
    folder copied from a Mac) made two classes that looked the same in report.md, the plots and the card."""
    import unicodedata

    from .conftest import random_image_folder

    root = random_image_folder(tmp_path / "data", folders=("copepod", unicodedata.normalize("NFC", "café")))
    (root / unicodedata.normalize("NFC", "café")).rename(root / unicodedata.normalize("NFD", "café"))
    random_image_folder(tmp_path / "more", folders=(unicodedata.normalize("NFC", "café"),))
    (tmp_path / "more" / unicodedata.normalize("NFC", "café")).rename(root / unicodedata.normalize("NFC", "café"))
    (root / "copepod" / "0.png").write_bytes(b"not an image")  # refused before any image is decoded
    with pytest.raises(ValueError, match=r"class names 'caf.*' and 'caf.*' differ only in Unicode normalisation"):
        load_image_classification_data(root, image_size=8)


def test_a_folder_in_the_imagefolder_metadata_layout_is_told_how_to_read_it(tmp_path):
    """QA (session 58, a datasets user): a flat folder of 105 JPEGs with a metadata.csv (Hugging Face's imagefolder
    layout) was refused as holding "no images", naming neither the images nor the metadata file."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "metadata.csv").write_text("file_name,label\n0.png,a\n1.png,b\n2.png,a\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 3 images beside no class folder, said as before
        with pytest.raises(ValueError, match=r"no images found \(its metadata.csv labels its images as Hugging Face"):
            load_image_classification_data(folder, image_size=8)

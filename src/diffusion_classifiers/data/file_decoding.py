"""Listed files decoded into the images the preprocessing reads: PNG / JPEG / 16-bit files and DICOM frames (a
multi-frame file expanded into its frames), unreadable files refused together, grey and colour files checked."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .dicom import (
    DicomHeader,
    MedicalPreprocessing,
    check_not_dicomdir,
    is_dicom_file,
    read_dicom,
    read_dicom_header,
    refuse_localizer,
    resolve_windows,
    window_channels,
)
from .image_files import DECODE_ERRORS, decode_error_text, first_frames_noted, note_first_frame_read, open_image
from .preprocessing import ImagePreprocessing, check_images_fit_in_memory, preprocess_images
from .sixteen_bit import _PIL_16BIT_MODES, _scale_16bit, check_bit_depths, note_bit_depth
from .windows import VoiTable, Window
from .split_record import ANONYMISED_DICOM_RULE, EARLIER_ANONYMISED_DICOM_RULE, SPLIT_RECORD_NAME
from ..validation import first_and_more

__all__ = [
    "check_file_header",
    "check_file_headers",
    "decode_image_file",
    "every_one_listed_in",
    "list_frames",
]

def decode_image_file(
    path: Path, bits_stored: int | None = None, depths: _BitDepths | None = None
) -> Image.Image | np.ndarray:
    """Open and fully decode an image file (so truncation is caught now, not mid-training); a 16-bit greyscale image
    comes back as float32 `[1, 1, H, W]` in `[0, 1]`, scaled by its bit depth (see [`read_16bit_image`]), which
    `depths` records when given and an open [`check_bit_depths`] is told."""
    check_not_dicomdir(path)
    try:
        image = open_image(path)
    except DECODE_ERRORS as error:
        raise ValueError(f"cannot decode image file {path}: {decode_error_text(error)}") from error
    if image.mode not in _PIL_16BIT_MODES:
        return image
    values, bits = _scale_16bit(image, bits_stored, path)
    if depths is not None:
        depths.add(path, bits)
    note_bit_depth(path, bits)
    return values[None, None]


class _BitDepths:
    """The bit depths the 16-bit PNG / TIFF of one data set were scaled by (each image's own maximum's when
    `bits_stored` is unset): a set read at different depths gets one warning (see [`warn`])."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._examples: dict[int, Path] = {}  # the first file of each depth

    def add(self, path: Path, bits: int) -> None:
        self._counts[bits] = self._counts.get(bits, 0) + 1
        self._examples.setdefault(bits, path)

    @property
    def single(self) -> int | None:
        """The one bit depth every 16-bit image was scaled by; None when there were none, or several depths."""
        return next(iter(self._counts)) if len(self._counts) == 1 else None

    def warn(self) -> None:
        """Warn (once for the data set) when its images were scaled by more than one bit depth."""
        if len(self._counts) < 2:
            return
        found = ", ".join(
            f"{count} at {bits} bits (e.g. {self._examples[bits]})" for bits, count in sorted(self._counts.items())
        )
        deepest = max(self._counts)
        warnings.warn(
            f"16-bit images scaled by different bit depths, each guessed from its own maximum: {found}. The same "
            "stored value then reads darker or brighter from image to image (a 12-bit image whose maximum is below "
            "2048 reads twice as bright). State the data's bit depth: "
            f"MedicalPreprocessing(bits_stored={deepest}) (the scripts' --bits_stored {deepest}, e.g. 12 for 12-bit "
            "detectors); it is saved with the model (medical.bits_stored) and applied to new images alike",
            UserWarning,
            stacklevel=5,
        )


# A window the files read with their own ("file") share counts when this many files carry it.
_COMMON_WINDOW_FILES = 5
# The windows follow the classes when telling the class by the window is right for this share of those files.
_WINDOW_SHORTCUT = 0.9


class _OwnWindows:
    """The windows DICOM files read with their own window (`"file"`) were read through, per class: warned about when
    the windows follow the classes (QA: CT series of two sites, one per class, windowed 30/80 and 30/300: the contrast
    alone then tells the classes, and the model can learn the window instead of the finding). They do when, among
    the files of windows at least `_COMMON_WINDOW_FILES` files share, each window's commonest class is the class of
    at least `_WINDOW_SHORTCUT` of them while no class is that common overall; windows that vary from image to image
    (auto-windowed MR or radiographs) are not warned about."""

    def __init__(self, medical: MedicalPreprocessing, labels: np.ndarray, class_names: Sequence[str] | None = None):
        self.active = "file" in medical.windows
        self.labels, self.class_names = labels, class_names
        self.files: dict[Window | VoiTable, list[int]] = {}  # a window -> the positions of the files read through it

    def add(self, position: int, own: Sequence[Any]) -> None:
        """The file at `position` has its own windows `own` (maybe none)."""
        if self.active and own:
            self.files.setdefault(own[0], []).append(position)

    def warn(self, stacklevel: int = 5) -> None:
        num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        counts = {
            window: np.bincount(self.labels[positions], minlength=num_classes)
            for window, positions in self.files.items() if len(positions) >= _COMMON_WINDOW_FILES
        }  # fmt: skip
        if len(counts) < 2:
            return
        total = sum(counts.values())
        told_by_window = sum(count.max() for count in counts.values()) / total.sum()
        if told_by_window < _WINDOW_SHORTCUT or total.max() / total.sum() >= _WINDOW_SHORTCUT:
            return
        name = (lambda k: self.class_names[k]) if self.class_names else str
        shown = "; ".join(
            f"{window.describe()}: " + ", ".join(f"{name(k)} {n}" for k, n in enumerate(count) if n)
            for window, count in sorted(counts.items(), key=lambda item: -item[1].sum())[:5]  # the commonest first
        )
        warnings.warn(
            f"DICOM files read with their own window ('file', the default) carry windows that follow the classes "
            f"(window: files per class): {shown}. The contrast then tells the classes apart, and the model can "
            "learn the window instead of the finding: state the windows to read every file through (--window; CT: "
            "a preset such as brain, or CENTER WIDTH; MedicalPreprocessing(windows=...))",
            UserWarning,
            stacklevel=stacklevel,
        )


def warn_mixed_presentation_intents(files: Sequence[Path], metadata: Sequence[dict | None], stacklevel: int = 5):
    """Warn when the DICOM files mix PresentationIntentType "FOR PROCESSING" (a detector's raw data) with "FOR
    PRESENTATION" (the image processed for viewing, what readers see): the two look nothing alike, so a model would
    learn the kind of file along with the finding."""
    by_intent: dict[str, list[str]] = {}
    for path, header in zip(files, metadata):
        if header is not None and header.get("PresentationIntentType"):
            by_intent.setdefault(header["PresentationIntentType"], []).append(str(path))
    if len(by_intent) < 2:
        return
    shown = "; ".join(f"{intent}: {len(paths)} files (e.g. {paths[0]})" for intent, paths in sorted(by_intent.items()))
    warnings.warn(
        f"DICOM files of two PresentationIntentTypes are read together ({shown}); raw detector data ('FOR "
        "PROCESSING') and images processed for viewing ('FOR PRESENTATION') look nothing alike: keep one kind (the "
        "one the model will be given)",
        UserWarning,
        stacklevel=stacklevel,
    )


def decode_files(
    files: list[Path],
    labels_per_split: dict[str, np.ndarray],
    medical: MedicalPreprocessing,
    patient_ids: list[str] | None = None,
    reading: ImagePreprocessing | None = None,
    class_names: Sequence[str] | None = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    depths: _BitDepths | None = None,
    grouped: bool = True,
) -> tuple[list | torch.Tensor, dict[str, np.ndarray], np.ndarray | None]:
    """Decode `files` (listed split by split); a multi-frame DICOM gives one image per frame. Returns the images and
    the labels per split and group ids of [`_expand_frames`] (DICOM files without a PatientID grouped by the rule
    `anonymised_dicom_groups`, see [`_dicom_groups`]). DICOM files read with their own windows that differ are
    warned about, per class (`class_names`: the labels' names, for the warning; see [`_OwnWindows`]). `grouped=False`
    (an unlabeled pool, carved into no splits): no group ids, and no word on how anonymised files would be grouped.

    The bit depths the 16-bit PNG / TIFF are scaled by are recorded in `depths` (a new [`_BitDepths`] when not
    given; the loaders save its `single` depth with the model): different ones are warned about, unless `medical`
    records the depth a model's training images were read at (`guessed_bits_stored`, read for evaluation): then the
    images read at another one are (see [`check_bit_depths`]).

    With `reading` (a contract with an `image_size`), each file is preprocessed as soon as it is decoded, so only one
    full-size image is held at a time (a 2048x1664 mammogram is 13 MB as float32, its 32x32 result 4 KB), and the
    images come back as one float32 `[N, C, H, W]` tensor in `[-1, 1]`, equal to
    `preprocess_images(<every decoded image>, preprocessing=reading)`: with `num_channels=None`, grey images are
    repeated to 3 channels after their resize when any image is colour (the same values: each channel is resized
    alone). Without `reading`, the decoded images themselves (a list).

    Every file is tried: the files that cannot be read (decode errors, no pixel data, a colour DICOM, a truncated
    file, a localizer, ...) are refused together (see [`_refuse_unreadable_files`]), then series of mixed slice sizes
    (see [`_SeriesSizes`])."""
    if reading is not None:
        check_images_fit_in_memory(len(files), reading)
    images, metadata, failures, sizes = [], [], [], _SeriesSizes()
    depths = _BitDepths() if depths is None else depths
    own_windows = _OwnWindows(medical, np.concatenate(list(labels_per_split.values())), class_names)
    # 4: the caller of the loader
    with check_bit_depths(medical, stacklevel=4) as trained_depth, first_frames_noted(stacklevel=4):
        for position, (path, is_dicom) in enumerate(zip(files, dicom_or_not(files, medical))):
            try:
                image, file_metadata = _decode_file(path, is_dicom, medical, sizes, depths)
                if file_metadata is not None:
                    own_windows.add(position, file_metadata["own_windows"])
                images.append(image if reading is None else _preprocess_file(image, path, reading))
            except ValueError as error:
                failures.append(error if not failures else str(error))  # no traceback kept: it holds the image
                continue
            finally:
                image = None  # the full-size image is freed before the next file is decoded
            metadata.append(file_metadata)
        _refuse_unreadable_files(failures, len(files))
        sizes.check()
    if trained_depth.trained is None:  # else the images at another depth than the training images' were warned about
        depths.warn()
    own_windows.warn()
    warn_mixed_presentation_intents(files, metadata)
    frames = [1 if isinstance(image, Image.Image) else len(image) for image in images]
    if reading is not None:
        images = _same_channels(images, reading, files)
    groups = patient_ids or _group_ids(metadata, anonymised_dicom_groups, grouped)
    return images, *_expand_frames(files, labels_per_split, frames, groups)


def _decode_file(
    path: Path, is_dicom: bool, medical: MedicalPreprocessing, sizes: _SeriesSizes, depths: _BitDepths
) -> tuple[Image.Image | np.ndarray, str | None]:
    """One file decoded (a DICOM windowed by `medical`, its size checked against its series in `sizes`; a 16-bit
    image's bit depth recorded in `depths`) and its DICOM metadata (None for a non-DICOM file)."""
    if not is_dicom:
        return decode_image_file(path, medical.bits_stored, depths), None
    dicom = read_dicom(path)
    refuse_localizer(path, dicom.metadata)
    sizes.add(path, dicom.values.shape[-2:], dicom.metadata)
    own_windows = dicom.frame_windows[0] if dicom.frame_windows else dicom.windows
    metadata = {**dicom.metadata, "own_windows": own_windows}
    return window_channels(dicom, medical.windows, medical.padding_fill), metadata


def _group_ids(metadata: list[dict | None], anonymised_dicom_groups: str, grouped: bool) -> list[str | None]:
    """[`_dicom_groups`], or no group for any file where the images are not carved into splits (`grouped=False`)."""
    return _dicom_groups(metadata, anonymised_dicom_groups, stacklevel=6) if grouped else [None] * len(metadata)


def _dicom_groups(
    metadata: list[dict | None], anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE, stacklevel: int = 5
) -> list[str | None]:
    """The group each file's images are split with (None for a non-DICOM file): its PatientID; a DICOM file without
    one (anonymised) is grouped by its StudyInstanceUID, else its SeriesInstanceUID, so the slices of one scan stay in
    one split, with a warning that counts them; a file naming none of them is its own group. With the earlier
    versions' rule (`anonymised_dicom_groups="file"`, a model whose record predates it) each anonymised file is its
    own group, see [`_earlier_dicom_groups`]."""
    if anonymised_dicom_groups == EARLIER_ANONYMISED_DICOM_RULE:
        return _earlier_dicom_groups(metadata, stacklevel + 1)
    groups, fallbacks = [], {"StudyInstanceUID": 0, "SeriesInstanceUID": 0, "none": 0}
    for file_metadata in metadata:
        if file_metadata is None or file_metadata["PatientID"]:
            groups.append(None if file_metadata is None else file_metadata["PatientID"])
            continue
        key = next((key for key in ("StudyInstanceUID", "SeriesInstanceUID") if file_metadata[key]), "none")
        fallbacks[key] += 1
        groups.append(None if key == "none" else f"{key} {file_metadata[key]}")
    if any(fallbacks.values()):
        dicom_files = sum(file_metadata is not None for file_metadata in metadata)
        warnings.warn(
            f"{sum(fallbacks.values())} of {dicom_files} DICOM files have no PatientID (anonymised?): grouped by "
            f"their StudyInstanceUID ({fallbacks['StudyInstanceUID']}), else their SeriesInstanceUID "
            f"({fallbacks['SeriesInstanceUID']}), else each file alone ({fallbacks['none']}), so that the slices of "
            "one scan stay in one split; two scans of one patient can still land in train and test. To split by "
            "patient, list the files in a CSV with a patient_id column",
            UserWarning,
            stacklevel=stacklevel,
        )
    return groups


def _earlier_dicom_groups(metadata: list[dict | None], stacklevel: int) -> list[str | None]:
    """The groups of the versions before anonymised files were grouped by study: a DICOM file's PatientID, None (its
    own group) for one without, so a model trained then is tested on the splits it was trained with (none of its test
    images among its training images), not on those this version's rule carves; warned about when a file has none."""
    groups = [None if file_metadata is None else file_metadata["PatientID"] for file_metadata in metadata]
    anonymised = sum(file_metadata is not None and not file_metadata["PatientID"] for file_metadata in metadata)
    if anonymised:
        dicom_files = sum(file_metadata is not None for file_metadata in metadata)
        warnings.warn(
            f"{anonymised} of {dicom_files} DICOM files have no PatientID (anonymised?): split file by file (slice by "
            f"slice), as the model was trained: it was saved by an earlier version ({SPLIT_RECORD_NAME} without "
            f"anonymised_dicom_groups, or '{EARLIER_ANONYMISED_DICOM_RULE}'), which split them so, and splitting them "
            "by study now would put images it was trained on in its test split. Retraining the model groups them by "
            "their StudyInstanceUID, else their SeriesInstanceUID, so that one scan's slices stay in one split. (A "
            "model saved by the version of 2026-12-05 that first grouped them by study recorded no rule either: for "
            f"it, add \"anonymised_dicom_groups\": \"study_or_series\" to its {SPLIT_RECORD_NAME}.)",
            UserWarning,
            stacklevel=stacklevel,
        )
    return groups


# Unreadable files named in one error; the rest are counted.
_FAILURES_SHOWN = 20


def _refuse_unreadable_files(failures: list[ValueError | str], total: int) -> None:
    """Refuse the files that cannot be read, all at once (`failures`: the first error, then the others' messages):
    one failure raises its own error; several, one error naming the first `_FAILURES_SHOWN` (each message names its
    file) and counting the rest."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        messages = [str(error) for error in failures]
        shown = first_and_more(messages, _FAILURES_SHOWN, separator="; ")
        raise ValueError(
            f"{len(failures)} of {total} image files cannot be read: {shown}. Expected every file to be a "
            f"readable image: remove or replace these files{every_one_listed_in(messages, _FAILURES_SHOWN)}"
        )


def every_one_listed_in(messages: list[str], shown: int) -> str:
    """For an error naming the first `shown` of `messages` (one unreadable file each): where all of them are listed,
    one a line, in a file of the temporary folder (QA: 25 corrupt files of a large folder were fixed 20 at a time,
    every image decoded again each round); "" when all are shown or that file cannot be written."""
    if len(messages) <= shown:
        return ""
    try:
        handle, path = tempfile.mkstemp(prefix="diffusion-classifiers-unreadable-", suffix=".txt", text=True)
        with os.fdopen(handle, "w", encoding="utf-8", errors="backslashreplace") as listing:
            listing.write("".join(f"{message}\n" for message in messages))
    except OSError:
        return ""
    return f" (all {len(messages)} are listed in {path})"


def _preprocess_file(image: Any, path: Path, reading: ImagePreprocessing) -> torch.Tensor:
    """One decoded file's images through `reading` (its own channels when `reading.num_channels` is None: see
    [`_same_channels`]); an error names the file."""
    try:
        return preprocess_images(image, preprocessing=reading)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _same_channels(images: list[torch.Tensor], reading: ImagePreprocessing, files: list[Path]) -> torch.Tensor:
    """`files` preprocessed one by one (`images`), as one tensor: with `num_channels=None`, 3 channels if any file is
    colour (a grey image's channel repeated; with a warning naming the colour files, see [`warn_mixed_channels`]),
    else 1, as [`preprocess_images`] decides for a whole batch."""
    if reading.num_channels is None and any(image.shape[1] == 3 for image in images):
        colour = [image for image in images if image.shape[1] == 3]
        grey = all(_channels_equal(image) for image in colour)  # each image compared once, not per warning
        warn_mixed_channels([image.shape[1] for image in images], [str(path) for path in files], colour_is_grey=grey)
        if grey and len(colour) == len(images):
            _warn_grey_stored_as_colour(len(images))
        images = [image.repeat(1, 3, 1, 1) if image.shape[1] == 1 else image for image in images]
    return torch.cat(images)


# Channels closer than this (on [-1, 1], 2 levels of 8 bits) are equal: JPEG's chroma rounding of a grey image.
_GREY_TOLERANCE = 4 / 255


def _channels_equal(image: torch.Tensor) -> bool:
    """Whether a colour image is grey: its three channels equal, within JPEG's chroma rounding."""
    return bool((image - image.mean(1, keepdim=True)).abs().amax() <= _GREY_TOLERANCE)


def _warn_grey_stored_as_colour(num_images: int, stacklevel: int = 6) -> None:
    """Warn that every one of `num_images` is colour but grey (its three channels equal, as NDSB's RGB JPEGs): with
    the channel count inferred the model becomes 3-channel for grey data, and reads another instrument's colour
    images as colour it never saw."""
    warnings.warn(
        f"all {num_images} images are grey stored as colour (their three channels equal): with the channel count "
        "inferred (num_channels=None) they are read, and the model trained, as 3 channels. State the channels to "
        "silence this: num_channels=1 (the scripts' --num_channels 1) reads them as grey, the model then reads any "
        "image as grey; num_channels=3 keeps 3 channels",
        UserWarning,
        stacklevel=stacklevel,  # the caller of load_image_classification_data
    )


# Colour files named in the warning about grey and colour images mixed.
_COLOUR_SHOWN = 5


def warn_mixed_channels(
    channels: list[int], names: list[str], stacklevel: int = 6, colour_is_grey: bool = False
) -> None:
    """Warn when grey (1-channel) and colour (3-channel) images are mixed and the channel count is inferred: one
    colour image (a screenshot among greyscale scans) makes the whole data set, and the model, 3-channel.
    `colour_is_grey`: every 3-channel image's channels are equal, said so (QA: NDSB's grey RGB JPEGs beside two grey
    PNGs were called "colour")."""
    colour = [name for name, count in zip(names, channels) if count == 3]
    if not colour or len(colour) == len(names):
        return
    shown = first_and_more(colour, _COLOUR_SHOWN)
    stored = "stored as colour, all grey (their three channels equal)" if colour_is_grey else "colour"
    warnings.warn(
        f"{len(colour)} of {len(names)} images are {stored} ({shown}), the others grey: with the channel count "
        "inferred (num_channels=None) every image is read as 3 channels (a grey image's channel repeated) and the "
        "model is 3-channel. If the colour images are strays (screenshots, exports), remove them; state the channels "
        "to silence this: num_channels=1 (the scripts' --num_channels 1) reads them all as grey, num_channels=3 keeps "
        "colour",
        UserWarning,
        stacklevel=stacklevel,  # the caller of load_image_classification_data
    )


def list_frames(
    files: list[Path],
    labels_per_split: dict[str, np.ndarray],
    medical: MedicalPreprocessing,
    patient_ids: list[str] | None = None,
    class_names: Sequence[str] | None = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    *,
    open_images: bool = True,
    unreadable: list[tuple[str, str]] | None = None,
    grouped: bool = True,
) -> tuple[list[Path], list[int | None], dict[str, np.ndarray], np.ndarray | None]:
    """What [`decode_files`] gives, from the DICOM headers alone (no pixel decoded; `data.streaming` reads the images
    lazily): one row per image, the file and its frame (`None` for a non-DICOM file), and [`_expand_frames`]'s labels
    and group ids. Every file is checked once, as far as it can be without decoding its pixels
    ([`check_file_headers`]; other image files opened only with `open_images`), DICOM mixed with other image files as
    `medical`'s windows allow. The files that cannot be read are refused together; given an `unreadable` list, they are
    appended to it as `(path, reason)` instead, and listed as one row each (frame `None`), for the caller to leave
    out and refuse with the images that fail to decode when every image is read. `grouped` as in [`decode_files`]."""
    headers, failures = check_file_headers(files, medical, open_images)
    if unreadable is None:
        _refuse_unreadable_files(list(failures.values()), len(set(files)))
    else:
        unreadable += [(str(path), str(reason)) for path, reason in failures.items()]
    own_windows = _OwnWindows(medical, np.concatenate(list(labels_per_split.values())), class_names)
    for position, header in enumerate(headers.get(path) for path in files):
        if header is not None:
            own_windows.add(position, header.frame_windows[0] if header.frame_windows else header.windows)
    own_windows.warn()
    _check_dicom_sizes_per_folder(
        [(path, header.size, header.metadata) for path, header in headers.items()]
    )
    frames = [headers[path].num_frames if path in headers else 1 for path in files]
    metadata = [headers[path].metadata if path in headers else None for path in files]
    warn_mixed_presentation_intents(files, metadata)
    groups = patient_ids or _group_ids(metadata, anonymised_dicom_groups, grouped)
    rows = [path for path, count in zip(files, frames) for _ in range(count)]
    frame_of_row = [frame if path in headers else None for path, count in zip(files, frames) for frame in range(count)]
    return rows, frame_of_row, *_expand_frames(files, labels_per_split, frames, groups)


def check_file_headers(
    files: Sequence[Path], medical: MedicalPreprocessing, open_images: bool = True
) -> tuple[dict[Path, DicomHeader], dict[Path, ValueError | str]]:
    """[`check_file_header`] of every one of `files` (a file listed twice is checked once; DICOM mixed with other
    image files only as `medical`'s windows allow, see [`dicom_or_not`]): the headers of the DICOM files that pass,
    and the files that fail, each with its error (the first) or its message (the others: no traceback kept), for
    [`_refuse_unreadable_files`] to refuse together."""
    unique = list(dict.fromkeys(files))
    headers, failures = {}, {}
    with first_frames_noted(stacklevel=4):  # 4: the caller of the streaming loader
        for path, is_dicom in zip(unique, dicom_or_not(unique, medical)):
            try:
                header = check_file_header(path, is_dicom, medical, open_images)
            except ValueError as error:
                failures[path] = error if not failures else str(error)
                continue
            if header is not None:
                headers[path] = header
    return headers, failures


def check_file_header(
    path: Path, is_dicom: bool, medical: MedicalPreprocessing, open_images: bool = True
) -> DicomHeader | None:
    """One file checked as far as it can be without decoding its pixels (cheap: headers only), the one check of the
    streaming listing and `StreamingImages.from_files`: a DICOM file's header read ([`read_dicom_header`]: pixel data,
    greyscale, a decoder installed), not a localizer, and `medical`'s windows resolved for it (its own window tags for
    `"file"`); another image file (with `open_images`) recognised by PIL. Returns the DICOM header (None for another
    file); a `ValueError` naming the file when it cannot be read."""
    check_not_dicomdir(path)
    if not is_dicom:
        if open_images:
            _check_image_header(path)
        return None
    header = read_dicom_header(path)
    refuse_localizer(path, header.metadata)
    resolve_windows(header, medical.windows)
    return header


def _check_image_header(path: Path) -> None:
    try:
        with Image.open(path) as image:
            note_first_frame_read(image, str(path))  # warned about once, when listed: then read by the first frame
    except (*DECODE_ERRORS, FileNotFoundError) as error:
        raise ValueError(f"cannot decode image file {path}: {decode_error_text(error)}") from error


def dicom_or_not(files: list[Path], medical: MedicalPreprocessing) -> list[bool]:
    """Whether each file is DICOM (see [`is_dicom_file`]). DICOM and other image files are read together through one
    window (X-rays as DICOM beside 16-bit PNG: one grey channel each), but not through several (`medical`'s windows):
    a PNG beside the slices (a screenshot, an export) has no Hounsfield units to window
    into several channels, so its grey would be copied into each and learnt as one more slice. `predict` applies the
    same rule file by file (such an image file is an errors-file row). The error names one file of each kind, before
    any is decoded. A `DICOMDIR` listed among them is refused as the export's index it is (`check_not_dicomdir`),
    before it could be taken for the other kind of file."""
    for path in files:
        check_not_dicomdir(path)
    kinds = [is_dicom_file(path) for path in files]
    windows = medical.to_dict()["windows"]
    if kinds and not any(kinds) and medical.reads_dicom_only:  # a model saved with these windows would refuse them
        raise ValueError(
            f"images: none of the {len(files)} files is DICOM (e.g. {files[0]}), but they are read through "
            f"{len(windows)} DICOM windows {windows}: an image file has no Hounsfield units to window (its grey would "
            "be copied into each channel, and a model saved with these windows reads DICOM files only). Leave --window "
            "out (or give one), or give the DICOM files"
        )
    if any(kinds) and not all(kinds) and medical.reads_dicom_only:
        dicom, other = files[kinds.index(True)], files[kinds.index(False)]
        raise ValueError(
            f"images: DICOM and other image files mixed, read through {len(windows)} DICOM windows {windows}: {dicom} "
            f"is DICOM but {other} is not; "
            "an image file has no Hounsfield units to window into several channels (its grey would be copied into "
            "each). Expected DICOM files only, or one window (--window). Move the other files out, or convert them "
            "all to one kind"
        )
    return kinds


def _expand_frames(
    files: list[Path], labels_per_split: dict[str, np.ndarray], frames: list[int], patients: list[str | None]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The labels per split repeated per frame (each frame of a multi-frame DICOM has its file's label), and a group
    id per image: `patients` (one per file: the CSV's column, else the DICOM group of [`_dicom_groups`]; a file
    without one is its own group), or None when no file names one."""
    frames = np.asarray(frames)
    bounds = np.cumsum([0] + [len(labels) for labels in labels_per_split.values()])
    labels_per_split = {
        split: np.repeat(labels, frames[bounds[i]: bounds[i + 1]])
        for i, (split, labels) in enumerate(labels_per_split.items())
    }
    if all(patient is None for patient in patients):
        return labels_per_split, None
    ids = [patient if patient is not None else f"file:{path}" for path, patient in zip(files, patients)]
    return labels_per_split, np.repeat(np.asarray(ids, dtype=object), frames)


# Projection radiography (mammography, radiographs, fluoroscopy, angiography, intra-oral, panoramic): each file is an
# image of its own, never a slice of a volume, so one series may hold views of several sizes (a magnification view
# beside a CC) and an anonymiser's files without a SeriesInstanceUID may come from several detectors.
PROJECTION_MODALITIES = frozenset({"MG", "DX", "CR", "RF", "XA", "IO", "PX", "RG"})


class _SeriesSizes:
    """The slices of one volume share a size: DICOM files of one folder and one SeriesInstanceUID (files without one:
    those of the folder together) must have one size, recorded file by file as they are read and checked once all are
    (`check`), so that one odd slice is named as the odd one whatever the order of the files. Files of different
    series may differ, and so may projection images (`PROJECTION_MODALITIES`: mammograms, radiographs), which are
    resized like any image."""

    def __init__(self) -> None:
        self._paths: dict[tuple[Path, str | None], dict[tuple[int, int], list[str]]] = {}

    def add(self, path: Path, size: tuple[int, int], metadata: dict) -> None:
        if metadata.get("Modality") in PROJECTION_MODALITIES:
            return
        sizes = self._paths.setdefault((path.parent, metadata["SeriesInstanceUID"]), {})
        sizes.setdefault(tuple(int(side) for side in size), []).append(str(path))

    def check(self) -> None:
        """Refuse every series of mixed sizes in one error: each size, its file count and up to 3 of its files, the
        most common size first."""
        mixed = [(key, sizes) for key, sizes in self._paths.items() if len(sizes) > 1]
        if not mixed:
            return
        described = []
        for (folder, series), sizes in mixed:
            where = f"folder {folder}, series {series}" if series else f"folder {folder} (no SeriesInstanceUID)"
            counts = sorted(sizes.items(), key=lambda item: -len(item[1]))
            listed = ", ".join(
                f"{h}x{w}: {len(paths)} file{'s' if len(paths) > 1 else ''} ({', '.join(paths[:3])}"
                f"{', ...' if len(paths) > 3 else ''})"
                for (h, w), paths in counts
            )
            described.append(f"{where}: mixed slice sizes (height x width): {listed}")
        raise ValueError(
            "; ".join(described) + "; expected one size per series (a scout or a second series mixed in?). Move the "
            "odd files out, or resample them to one size first"
        )


def _check_dicom_sizes_per_folder(sizes: list[tuple[Path, tuple[int, int], dict]]) -> None:
    """The DICOM files `(path, (height, width), metadata)` have one size per series of a folder (see
    [`_SeriesSizes`])."""
    check = _SeriesSizes()
    for path, size, metadata in sizes:
        check.add(path, size, metadata)
    check.check()

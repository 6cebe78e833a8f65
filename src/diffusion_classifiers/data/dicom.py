"""Medical images in, float32 values in `[0, 1]` out: DICOM (Hounsfield units, windows, padding, frames) and 16-bit
PNG / TIFF at their real bit depth.

DICOM follows the standard's display pipeline (PS3.4 N.2): stored values -> Modality LUT (RescaleSlope /
RescaleIntercept: Hounsfield units for CT) -> VOI LUT (a [`Window`]) -> Presentation LUT (MONOCHROME1 inverted).
[`read_dicom`] stops after the Modality LUT; [`window_channels`] does the rest, one channel per window;
[`MedicalPreprocessing`] holds those choices (and the bit depth of 16-bit PNG / TIFF) as a JSON-serialisable config.

pydicom and the JPEG decoders are optional: `pip install "diffusion-classifiers[medical]"`.
"""

from __future__ import annotations

import logging
import math
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .image_files import IMAGE_EXTENSIONS
from .sixteen_bit import LOW_RANGE_FILL, _check_bits_stored, _read_16bit, check_bit_depths, note_bit_depth
from .sixteen_bit import read_16bit_image, scale_16bit_image
from .windows import _OTHER_WINDOWS, WINDOW_NAMES, WINDOW_PRESETS, VoiTable, Window, named_windows, parse_windows


__all__ = [
    "DICOM_EXTENSIONS",
    "DicomHeader",
    "DicomImage",
    # moved to windows.py and sixteen_bit.py (2026-12-05); importable from here as before
    "LOW_RANGE_FILL",
    "WINDOW_NAMES",
    "WINDOW_PRESETS",
    "VoiTable",
    "Window",
    "check_bit_depths",
    "parse_windows",
    "read_16bit_image",
    "scale_16bit_image",
    # this module's own
    "MedicalPreprocessing",
    "check_decoders",
    "check_same_slice_size",
    "is_dicom_file",
    "read_dicom",
    "read_dicom_frames",
    "refuse_localizer",
    "read_dicom_folder",
    "read_dicom_header",
    "resolve_windows",
    "window_channels",
]

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = {".dcm", ".dicom", ".dic", ".ima"}  # .ima: Siemens exports
# A DICOM Part 10 file starts with a 128-byte preamble and then this magic (PS3.10 7.1).
_DICOM_MAGIC, _DICOM_MAGIC_OFFSET = b"DICM", 128
# Files that are never DICOM, so never opened to look for the magic: images and the text and data files that sit
# beside them (a folder of PNG lists at the speed of its directory entries).
_NOT_DICOM_EXTENSIONS = IMAGE_EXTENSIONS | {
    ".arrow", ".csv", ".gz", ".htm", ".html", ".json", ".jsonl", ".log", ".md", ".npy", ".npz", ".parquet", ".pdf",
    ".py", ".tar", ".tsv", ".txt", ".xml", ".yaml", ".yml", ".zip",
}
# Appended to the errors that list the accepted extensions.
_DICOM_HEADER_NOTE = (
    "extension-less DICOM files are recognised by their 'DICM' header, as are those with other extensions"
)
_INSTALL_HINT = 'pip install "diffusion-classifiers[medical]"'
# The pip packages that decode each compressed transfer-syntax family (the [medical] extra installs them).
_JPEG_PLUGIN = "pylibjpeg pylibjpeg-libjpeg"
_JPEG2000_PLUGIN = "pylibjpeg pylibjpeg-openjpeg"
_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# An enhanced multi-frame file (Enhanced CT / MR / XA, PS3.3 C.7.6.16) keeps its rescale and window in these
# functional-group macros, shared by all frames or per frame, not at the top level where pydicom's
# apply_modality_lut looks: the keywords read from them.
_FRAME_LUT_SEQUENCES = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_LUT_KEYWORDS = (
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence",
)  # fmt: skip
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR
# objects whose pixels are derived from a scan, not a scan (QA: a PACS export's segmentations and dose grids were
# read as training images): SOP Class UID -> (its name, which pydicom may not know; what its pixels are)
_DERIVED_PIXEL_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": ("Segmentation Storage", "a segmentation's label masks"),
    "1.2.840.10008.5.1.4.1.1.66.7": ("Label Map Segmentation Storage", "a segmentation's label map"),
    "1.2.840.10008.5.1.4.1.1.481.2": ("RT Dose Storage", "a radiotherapy plan's dose grid"),
}
# The Image Pixel module elements pydicom needs to decode each kind of pixel data (PS3.3 C.7.6.3).
_FLOAT_PIXEL_ELEMENTS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")
_PIXEL_ELEMENTS = (*_FLOAT_PIXEL_ELEMENTS, "BitsStored", "PixelRepresentation")
# What pydicom raises for a corrupt file while its header is read or a value parsed (pydicom parses an element when
# it is first used, so also after dcmread): an unknown VR, a value cut short, a number that is none.
_HEADER_ERRORS = (EOFError, NotImplementedError, OSError, ValueError, struct.error)


def _import_pydicom() -> Any:
    """pydicom, imported here alone (inside `try`): transformers loads a Hub export's bundled copy of this file only
    when every import outside a `try` block is installed, and pydicom is an optional dependency."""
    try:
        import pydicom
    except ImportError as error:
        raise ImportError(f"reading DICOM files needs pydicom: {_INSTALL_HINT}") from error
    return pydicom


# --------------------------------------------------------------------------------------------------
# Reading DICOM
# --------------------------------------------------------------------------------------------------


def is_dicom_file(path: str | Path) -> bool:
    """Whether `path` is read as DICOM: its extension is one of `DICOM_EXTENSIONS` (`.dcm`, `.dicom`, `.dic`, `.ima`;
    any case), or it has another or no extension (PACS exports name files `IM_P00_0`, `I0000123`, or by their SOP
    Instance UID, `1.2.840.113619.2.55.3`) and holds the DICOM Part 10 header (`b"DICM"` after the 128-byte preamble).
    Only such a file is opened, and only its first 132 bytes are read; an image (`.png`) or a text or data file
    (`.txt`, `.csv`, `.json`) is never opened here. A media export's `DICOMDIR` (a directory of the files, no image)
    is not one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if is_dicomdir(path) or suffix in _NOT_DICOM_EXTENSIONS:
        return False
    return suffix in DICOM_EXTENSIONS or _has_dicom_magic(path)


def is_dicomdir(path: str | Path) -> bool:
    """Whether `path` is named as a media export's `DICOMDIR` (a directory of its files, no image)."""
    return Path(path).name.upper() == "DICOMDIR"


def check_not_dicomdir(path: str | Path, where: str = "") -> None:
    """`ValueError` for a `DICOMDIR` given as an image (listed in a CSV, passed to a pipeline, given as `--input`),
    asking for the folder of its files (QA: a list built by `find export -type f` failed on it "cannot identify image
    file")."""
    if is_dicomdir(path):
        raise ValueError(
            f"{where}{path}: a DICOMDIR, the index of a DICOM media export, holds no image; expected the folder "
            f"holding its files ({Path(path).parent}: its DICOMDIR is skipped there)"
        )


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError:  # a folder, a missing or unreadable file: not a DICOM file
        return False
    return head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC


@dataclass(frozen=True, eq=False)
class DicomImage:
    r"""
    One DICOM file after the Modality LUT.

    Args:
        path (`str`): the file.
        values (`np.ndarray`): float32 `[F, H, W]` modality values (Hounsfield units for CT), one row per frame, as
            stored (MONOCHROME1 is not inverted here).
        padding (`np.ndarray`): bool `[F, H, W]`, True where the stored value is PixelPaddingValue (or between it
            and PixelPaddingRangeLimit, both included).
        windows (`Tuple[Window | VoiTable, ...]`): the file's own windows (WindowCenter / WindowWidth, through its
            VOILUTFunction; without them, the tables of its VOI LUT Sequence), maybe none: those of its first frame
            read.
        stored_range (`Tuple[float, float]`): the modality values of the smallest and largest storable value
            (BitsStored, PixelRepresentation), over all the file's frames (also when one frame is read: the `"full"`
            window of a frame is the same whether the frame is read alone or with the others).
        monochrome1 (`bool`): whether the lowest value is displayed white.
        metadata (`Dict[str, Any]`): PatientID, StudyInstanceUID, SeriesInstanceUID, Laterality (the image's
            ImageLaterality, else the series' Laterality: `"L"`, `"R"`, `"B"` or `"U"`) and ViewPosition (`"CC"`,
            `"MLO"`, ...: mammography's views) (`str` or None), InstanceNumber (`int` or None) and ImageType (a tuple
            of its values, e.g. `("ORIGINAL", "PRIMARY", "LOCALIZER")` for a scout, or None).
        frame_windows (`Tuple[Tuple[Window, ...], ...]`, *optional*): each frame's own windows, when the frames do
            not share one (an enhanced multi-frame file's Per-frame Functional Groups); empty: every frame has
            `windows`.
        window_error (`str`, *optional*): why the file's window tags (any frame's, also when one frame is read) are
            no window (a width of 0, two centres for one width), naming the file and the values; that frame's windows
            are then empty. Such a file is read with the other windows, and refused only where its own one (`"file"`)
            is asked for.

    An enhanced multi-frame file's rescale and windows are read from its functional groups (the frame's own, else the
    shared ones), where such files keep them.
    """

    path: str
    values: np.ndarray
    padding: np.ndarray
    windows: tuple[Window | VoiTable, ...]
    stored_range: tuple[float, float]
    monochrome1: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    frame_windows: tuple[tuple[Window | VoiTable, ...], ...] = ()
    window_error: str | None = None

    @property
    def num_frames(self) -> int:
        return len(self.values)


def refuse_localizer(path: str | Path, metadata: dict) -> None:
    """A scout / localiser (ImageType LOCALIZER) is not a slice, of a folder's class, of an unlabeled pool or of the
    files a model classifies (`predict` put its probability among the study's slices): refused wherever a DICOM file
    is read. The per-series size check does not catch one stored as its own series."""
    image_type = metadata.get("ImageType") or ()
    if "LOCALIZER" in image_type:
        raise ValueError(
            f"DICOM file {path} is a localizer (scout) image (ImageType {'/'.join(image_type)}); expected the images of "
            "a series: remove it (a localizer is not a slice)"
        )


def read_dicom(path: str | Path, frame: int | None = None) -> DicomImage:
    r"""
    Read a DICOM file's pixels as modality values (Hounsfield units for CT), frames first.

    The stored values go through pydicom's Modality LUT (RescaleSlope / RescaleIntercept, the one missing or empty
    taken as the identity's, or a Modality LUT Sequence; an enhanced multi-frame file's from its functional groups,
    frame by frame); a multi-frame file gives `[F, H, W]`, a single frame `[1, H, W]`. A file without the Part 10
    header (no 'DICM' nor file meta) is read as the uncompressed data set it holds.

    Args:
        path (`str` or `os.PathLike`): the file.
        frame (`int`, *optional*): decode this frame only (0-based), as `[1, H, W]`; default: every frame.

    Raises:
        `ValueError`: the file is not DICOM, has no pixel data (a structured report, a presentation state), is not
            greyscale (MONOCHROME1/2), has no frame `frame`, a header value that is none (a rescale, a frame count), or
            its pixel data cannot be decoded; each names the file.
        `ImportError`: pydicom is not installed, or no decoder for the file's compressed transfer syntax is; the
            message names the package to install.
    """
    path = Path(path)
    with _naming_the_file(path):
        dataset = _open_image_dataset(path, _PIXELS_LEFT_ON_DISK, whole_file=frame is None)
        return _DicomFile(dataset, path).image(frame)


def read_dicom_frames(path: str | Path) -> Iterator[DicomImage]:
    """[`read_dicom`]`(path, frame)` of each frame in turn, the file's header read once and one frame's pixels in
    memory at a time (of a native or encapsulated Part 10 file, only that frame's bytes read): a breast tomosynthesis
    volume of 80 frames of 2457 x 1996 is read in the memory of one frame, where a whole read takes several GB (QA:
    refused by the file's pixel limit, which a file read this way is not held to, see [`_check_pixel_count`])."""
    path = Path(path)
    with _naming_the_file(path):
        file = _DicomFile(_open_image_dataset(path, _PIXELS_LEFT_ON_DISK, whole_file=False), path)
    for frame in range(len(file.luts)):
        with _naming_the_file(path):
            image = file.image(frame)
        yield image


# Values this large stay on disk until read: a refused file's pixels are never read, one frame's alone are decoded.
_PIXELS_LEFT_ON_DISK = "64 KB"


class _DicomFile:
    """An opened DICOM image file, its frames' LUTs and what they share read once, from which frames are decoded."""

    def __init__(self, dataset: Any, path: Path):
        self.dataset, self.path = dataset, path
        self.luts = _frame_luts(dataset, range(_num_frames(dataset)))  # all frames': the stored range is the file's
        self.stored_range, self.metadata = _stored_range(self.luts, dataset), _metadata(dataset)

    def image(self, frame: int | None) -> DicomImage:
        stored = _decode_pixels(self.dataset, self.path, frame)
        frames = self.luts if frame is None else [self.luts[int(frame)]]
        return DicomImage(
            path=str(self.path),
            values=_modality_values(stored, frames),
            padding=_padding_mask(self.dataset, stored),
            stored_range=self.stored_range,
            monochrome1=self.dataset.PhotometricInterpretation == "MONOCHROME1",
            metadata=dict(self.metadata),
            **_own_windows(self.luts, self.path, frame),
        )


@dataclass(frozen=True)
class DicomHeader:
    r"""
    What a DICOM image file holds, read without decoding its pixels (see [`read_dicom_header`]).

    Args:
        path (`str`): the file.
        num_frames (`int`): its frames (NumberOfFrames, 1 when absent).
        size (`Tuple[int, int]`): (Rows, Columns).
        windows, stored_range, metadata, frame_windows, window_error: as in [`DicomImage`], of all its frames.
    """

    path: str
    num_frames: int
    size: tuple[int, int]
    windows: tuple[Window | VoiTable, ...]
    stored_range: tuple[float, float]
    metadata: dict[str, Any] = field(default_factory=dict)
    frame_windows: tuple[tuple[Window | VoiTable, ...], ...] = ()
    window_error: str | None = None


def read_dicom_header(path: str | Path) -> DicomHeader:
    """The frames, size and metadata of a DICOM image file, its pixel data left undecoded (and unread: large values
    are deferred), after the checks [`read_dicom`] makes before decoding: so a file without pixel data (or without an
    Image Pixel element), a colour image or a compressed one with no decoder installed is refused when data are listed,
    not hours into training."""
    path = Path(path)
    with _naming_the_file(path):
        dataset = _open_image_dataset(path, _PIXELS_LEFT_ON_DISK, whole_file=False)
        _check_decoder(dataset, path)
        frames = _frame_luts(dataset, range(_num_frames(dataset)))
        return DicomHeader(
            path=str(path),
            num_frames=len(frames),
            size=(int(dataset.Rows), int(dataset.Columns)),
            stored_range=_stored_range(frames, dataset),
            metadata=_metadata(dataset),
            **_own_windows(frames, path),
        )


@contextmanager
def _naming_the_file(path: Path) -> Any:
    """Errors raised while `path` is read (a header value that is none, an element of a corrupt file) as a
    `ValueError` naming the file, as the readers' callers expect of a file that cannot be read; errors that already
    name it pass as they are."""
    try:
        yield
    except _HEADER_ERRORS as error:
        if isinstance(error, ValueError) and str(path) in str(error):
            raise
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"cannot read DICOM file {path}: {reason}") from error


def _open_image_dataset(path: Path, defer_size: str | None = None, whole_file: bool = True) -> Any:
    """The pydicom dataset of a greyscale DICOM image file, its size within [`_check_pixel_count`]'s limits for a file
    decoded whole or a frame at a time (`whole_file`); `ValueError` naming the file otherwise. A file cut short
    inside encapsulated (compressed) pixel data reads as an empty dataset with only a warning: it is refused as
    truncated, and pydicom's warnings are the reason given. A file without the Part 10 header is read as a bare data
    set (see [`_bare_dataset`])."""
    pydicom = _import_pydicom()
    if path.is_file() and path.stat().st_size == 0:  # QA: "missing DICOM File Meta Information header", misleading
        raise ValueError(f"cannot read DICOM file {path}: the file is empty (0 bytes)")
    _check_inflated_size(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(path, defer_size=defer_size)
        except (pydicom.errors.InvalidDicomError, *_HEADER_ERRORS) as error:  # struct.error: cut short in its meta
            dataset = _bare_dataset(path, defer_size) if isinstance(error, pydicom.errors.InvalidDicomError) else None
            if dataset is None:
                # pydicom's advice to pass force=True is for its own API, not something a user of this one can do
                reason = str(error).replace(" Use force=True to force reading.", "")
                raise ValueError(f"cannot read DICOM file {path}: {reason}") from error
    if len(dataset) == 0:
        reason = "; ".join(str(warning.message) for warning in caught) or "no data elements after its file meta"
        raise ValueError(f"cannot read DICOM file {path}: truncated or corrupt ({reason})")
    for warning in caught:  # a dataset read despite them: the user still sees them
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    _check_has_grey_pixels(dataset, path)
    _check_pixel_count(dataset, path, whole_file)
    return dataset


# A bare data set's transfer syntax from how pydicom read its first elements: (implicit VR, little endian).
_BARE_SYNTAXES = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
                  (False, False): "1.2.840.10008.1.2.2"}


def _bare_dataset(path: Path, defer_size: str | None) -> Any:
    """A DICOM file without the Part 10 header (no preamble, 'DICM' nor file meta: ACR-NEMA-era and some PACS
    exports), read as dcmtk and pydicom's `force=True` read one, its uncompressed transfer syntax told by its first
    elements; None unless that gives native (not encapsulated) pixel data."""
    pydicom = _import_pydicom()
    try:
        dataset = pydicom.dcmread(path, defer_size=defer_size, force=True)
        syntax = _BARE_SYNTAXES.get(tuple(dataset.original_encoding))
        native = "PixelData" in dataset and not dataset["PixelData"].is_undefined_length
    except (*_HEADER_ERRORS, AttributeError, KeyError, TypeError):  # not DICOM at all: read as garbage
        return None
    if syntax is None or not native or dataset.file_meta.get("TransferSyntaxUID") is not None:
        return None
    dataset.file_meta.TransferSyntaxUID = syntax
    return dataset


def _num_frames(dataset: Any) -> int:
    return _integer(dataset, "NumberOfFrames") or 1


def _integer(dataset: Any, keyword: str) -> int | None:
    """An integer tag's value (None when absent or empty); `ValueError` naming the tag and its value when it is no
    integer (pydicom keeps an invalid IS value as its text)."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} {str(value)!r}: expected an integer") from None


# A file's frames together may hold this many times PIL's limit on one image's pixels (a tomosynthesis volume: 70
# frames of 2457 x 1890, 3.6x; an enhanced CT of 1000 slices of 512 x 512, 2.9x), each frame PIL's limit itself.
# Reading peaks at 20-32 bytes a pixel (measured: 4.6 GB for one 12000 x 12000 frame, 3.9 GB for 3 of 8000 x 8000),
# 7-11 GB at this limit.
_FRAMES_PIXEL_FACTOR = 4


def _check_pixel_count(dataset: Any, path: Path, whole_file: bool = True) -> None:
    """Refuse, before decoding, a DICOM whose declared size is over PIL's decompression-bomb limit, as a PNG of that
    size is (QA: a 282 KB deflated 12000 x 12000 file took 4.6 GB to predict): `PIL.Image.MAX_IMAGE_PIXELS` a frame,
    and `_FRAMES_PIXEL_FACTOR` times it a file decoded whole (`whole_file`) or whose pixel data are compressed (a small
    file could declare them). A native file read a frame at a time holds its pixels in its bytes and has one frame
    decoded at once."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    rows, columns, frames = _integer(dataset, "Rows") or 0, _integer(dataset, "Columns") or 0, _num_frames(dataset)
    if limit is None:
        return
    native, frame_over = _native_pixel_data(dataset), rows * columns > limit
    if not frame_over and (native and not whole_file or rows * columns * frames <= _FRAMES_PIXEL_FACTOR * limit):
        return
    by_frame = native and not frame_over
    raise ValueError(
        f"DICOM file {path}: {frames} frame(s) of {rows} x {columns} pixels, over the limit of {limit} pixels a frame "
        f"and {_FRAMES_PIXEL_FACTOR * limit} a file decoded whole or compressed (a decompression bomb could declare "
        "them). Refused; raise PIL.Image.MAX_IMAGE_PIXELS to read images this large"
        + (", or read it a frame at a time (predict, cluster, and --streaming data do)" if by_frame else "")
    )


def _native_pixel_data(dataset: Any) -> bool:
    """Whether the pixel data are stored as they are (not encapsulated, not deflated): the file's bytes hold them."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return syntax is not None and not syntax.is_encapsulated and not syntax.is_deflated


def _inflated_limit() -> int | None:
    """The most bytes a deflated data set may inflate to: the largest pixel data the pixel limit lets through
    (`_check_pixel_count`, 2 bytes a pixel: 716 MB), and an eighth more for its other elements; None without a pixel
    limit."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * _FRAMES_PIXEL_FACTOR * limit * 9 // 8


def _check_inflated_size(path: Path) -> None:
    """Refuse, before pydicom inflates it whole, a file of the Deflated Explicit VR Little Endian transfer syntax whose
    data set inflates beyond `_inflated_limit()`, read in chunks (QA: a 1.4 MB file with a 1.2 GB private element,
    its pixels of an ordinary size, took predict from 0.6 to 3.0 GB). Other files pass unread."""
    import zlib

    pydicom, limit = _import_pydicom(), _inflated_limit()
    try:
        with open(path, "rb") as handle:
            pydicom.filereader.read_preamble(handle, True)  # QA: a file without its preamble was read unchecked
            meta = pydicom.filereader._read_file_meta_info(handle)
            if limit is None or meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
                return
            inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
            while inflated <= limit and (chunk := inflater.unconsumed_tail or handle.read(1 << 20)):
                inflated += len(inflater.decompress(chunk, 1 << 24))
    except (pydicom.errors.InvalidDicomError, zlib.error, *_HEADER_ERRORS, AttributeError, KeyError, TypeError):
        return  # not read here: pydicom's own reading names what is wrong
    if inflated > limit:
        raise ValueError(
            f"DICOM file {path}: its deflated data set inflates to over {limit} bytes, more than an image within the "
            f"pixel limit holds (a decompression bomb). Refused; raise PIL.Image.MAX_IMAGE_PIXELS to read it"
        )


def _check_has_grey_pixels(dataset: Any, path: Path) -> None:
    # a DICOMDIR names its class in its file meta only (QA: "unknown SOP class ... a structured report")
    file_meta = getattr(dataset, "file_meta", None)
    sop_class = dataset.get("SOPClassUID") or getattr(file_meta, "MediaStorageSOPClassUID", None)
    kind = getattr(sop_class, "name", None) or "unknown SOP class"
    if not any(tag in dataset for tag in _PIXEL_DATA_TAGS):
        why = (
            "the file may be truncated or corrupt" if kind.endswith("Image Storage")
            else f"a DICOMDIR indexes a media export's files: give the folder holding them, {path.parent}"
            if sop_class == _DICOMDIR_SOP_CLASS
            else "a report, presentation state, waveform, plan or document holds no pixels"
        )  # fmt: skip
        raise ValueError(
            f"DICOM file {path} has no pixel data ({kind}, modality {dataset.get('Modality', '?')}); expected an "
            f"image ({why})"
        )
    if sop_class in _DERIVED_PIXEL_SOP_CLASSES:
        name, pixels = _DERIVED_PIXEL_SOP_CLASSES[sop_class]
        raise ValueError(
            f"DICOM file {path} is a {name} object (modality {dataset.get('Modality', '?')}): its pixels are {pixels}, "
            "not a scan; expected an image"
        )
    required = _PIXEL_ELEMENTS if "PixelData" in dataset else _FLOAT_PIXEL_ELEMENTS
    missing = [keyword for keyword in required if dataset.get(keyword) in (None, "")]
    if missing:
        raise ValueError(
            f"DICOM file {path}: no {', '.join(missing)} beside its pixel data; expected the Image Pixel module's "
            f"{', '.join(required)} (the file may be corrupt)"
        )
    bits_stored, bits_allocated = _integer(dataset, "BitsStored"), _integer(dataset, "BitsAllocated")
    if bits_stored is not None and not 1 <= bits_stored <= bits_allocated:
        raise ValueError(
            f"DICOM file {path}: BitsStored {bits_stored}; expected 1 to its BitsAllocated, {bits_allocated} (the "
            "file may be corrupt)"
        )
    photometric = dataset.get("PhotometricInterpretation")
    if photometric not in _GREY_PHOTOMETRICS:
        raise ValueError(
            f"DICOM file {path}: PhotometricInterpretation {photometric!r}; expected a greyscale image "
            f"({' or '.join(_GREY_PHOTOMETRICS)})"
        )


def _check_decoder(dataset: Any, path: Path) -> None:
    """A decoder for the file's transfer syntax is installed; the error names the package to install."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        raise ValueError(f"DICOM file {path}: no TransferSyntaxUID in its file meta; expected a DICOM Part 10 file")
    error = _decoder_error(syntax, path)
    if error is not None:
        raise error


def _decoder_error(syntax: Any, path: Path) -> Exception | None:
    """Why the pixel data of `path`, in transfer syntax `syntax`, cannot be decoded here (`ValueError`: pydicom
    knows no decoder for it; `ImportError`: the plugin is not installed, named), or None."""
    get_decoder = _import_pydicom().pixels.get_decoder
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        return ValueError(f"DICOM file {path}: unsupported transfer syntax {syntax.name}: {error}")
    if decoder.is_available:
        return None
    return ImportError(
        f"DICOM file {path}: its pixel data are compressed as {syntax.name} ({syntax}) and no decoder for it is "
        f"installed. Install one: pip install {_decoder_packages(syntax, decoder)} (or {_INSTALL_HINT})"
    )


def check_decoders(paths: Iterable[str | Path]) -> None:
    """No DICOM file of `paths` is compressed in a transfer syntax whose pydicom decoder lacks its plugin, so a run
    over them is refused before its first batch, not stopped midway by the first such file: `ValueError` naming one
    file, its transfer syntax and the pip packages to install (installing them lets the whole run through). A transfer
    syntax that nothing decodes (MPEG2 / H.264 video clips in a PACS export) is no reason to refuse the others: such a
    file is left to fail where it is read, naming the syntax, as a file whose file meta cannot be read is. Only each
    file's file meta is read (its first few hundred bytes) and each syntax looked up once."""
    pydicom = _import_pydicom()
    checked = set()
    for path in paths:
        try:
            syntax = pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID")
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if syntax is None or syntax in checked:
            continue
        checked.add(syntax)
        error = _decoder_error(syntax, Path(path))
        # a plugin to install; a ValueError: no decoder exists, the file's own error
        if isinstance(error, ImportError):
            raise ValueError(str(error)) from error


def _decode_pixels(dataset: Any, path: Path, frame: int | None = None) -> np.ndarray:
    """The stored values `[F, H, W]` (`[1, H, W]` of one `frame`), after checking that a decoder is installed."""
    pixel_array = _import_pydicom().pixels.pixel_array
    _check_decoder(dataset, path)
    frames = _num_frames(dataset)
    if frame is not None and not (isinstance(frame, (int, np.integer)) and 0 <= frame < frames):
        raise ValueError(f"DICOM file {path}: frame {frame!r}; expected a frame index in 0..{frames - 1}")
    try:
        if frame is None:
            pixels = dataset.pixel_array
        else:  # from the file: only the frame's bytes are read
            pixels = pixel_array(path if _frames_readable_from_file(dataset) else dataset, index=int(frame))
    except Exception as error:  # pydicom and its plugins raise many types for corrupt or truncated pixel data
        raise ValueError(f"cannot decode the pixel data of DICOM file {path}: {error}") from error
    return pixels.reshape(frames if frame is None else 1, int(dataset.Rows), int(dataset.Columns))


def _frames_readable_from_file(dataset: Any) -> bool:
    """Whether pydicom can decode one frame from the file itself: a Part 10 file (a bare data set's transfer syntax is
    this module's guess, `_bare_dataset`), not deflated (its data set is read inflated, in memory)."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return getattr(dataset, "preamble", None) is not None and syntax is not None and not syntax.is_deflated


def _decoder_packages(syntax: Any, decoder: Any) -> str:
    if syntax.is_compressed and "2000" in syntax.name:
        return _JPEG2000_PLUGIN
    if syntax.is_compressed and "JPEG" in syntax.name:
        return _JPEG_PLUGIN
    return "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"


def _frame_luts(dataset: Any, frames: Sequence[int]) -> list[Any]:
    """For each of `frames`, a dataset holding its Modality / VOI LUT attributes: `dataset` itself, unless it has
    functional groups that hold them (an enhanced multi-frame file keeps them only there, and pydicom's
    `apply_modality_lut` reads the top level alone); then the top level's, replaced by the Shared Functional Groups',
    replaced by the frame's Per-frame Functional Groups' (PS3.3 C.7.6.16)."""
    shared = _lut_items(_first_item(dataset, "SharedFunctionalGroupsSequence"))
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    # one object for every frame without its own: one call reads them all
    shared_lut = _with_rescale(_lut_of(dataset, shared))
    return [
        _with_rescale(_lut_of(dataset, shared + own))
        if (own := _lut_items(per_frame[frame] if frame < len(per_frame) else None)) else shared_lut
        for frame in frames
    ]


_RESCALE_IDENTITY = {"RescaleSlope": 1, "RescaleIntercept": 0}


def _with_rescale(lut: Any) -> Any:
    """`lut` with both rescale tags or neither: pydicom's `apply_modality_lut` skips a rescale missing either (an
    intercept of -1024 alone left every CT value 1024 HU too high) and fails on an empty one, so the one missing or
    empty is the identity's (slope 1, intercept 0), as dcmtk and GDCM read it. A value that is no number, or a slope
    of 0, is refused naming it. A Modality LUT Sequence replaces the rescale: `lut` is then left as it is."""
    if lut.get("ModalityLUTSequence"):
        return lut
    given = {keyword: _rescale_value(lut, keyword) for keyword in _RESCALE_IDENTITY}
    for keyword, value in given.items():
        if value is not None:
            continue
        if all(other is None for other in given.values()):
            if keyword in lut:  # empty: no rescale
                del lut[keyword]
        else:
            setattr(lut, keyword, _RESCALE_IDENTITY[keyword])
    return lut


def _rescale_value(lut: Any, keyword: str) -> float | None:
    value = lut.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):  # text pydicom kept as it is, or several values
        number = math.nan
    if not math.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
        slope = ", not 0" if keyword == "RescaleSlope" else ""
        raise ValueError(f"{keyword} {str(value)!r}: expected a finite number{slope}")
    return number


def _lut_items(group: Any) -> list:
    """The LUT macros (`_FRAME_LUT_SEQUENCES`) a functional group holds."""
    items = [_first_item(group, name) for name in _FRAME_LUT_SEQUENCES] if group is not None else []
    return [item for item in items if item is not None]


def _lut_of(dataset: Any, items: list) -> Any:
    """`dataset` when `items` is empty, else a dataset of its LUT attributes, replaced by each item's in turn."""
    if not items:
        return dataset
    lut = _import_pydicom().dataset.Dataset()
    for source in (dataset, *items):
        for keyword in _LUT_KEYWORDS:
            if keyword in source:
                lut.add(source[keyword])
    return lut


def _own_windows(frames: Sequence[Any], path: Path, frame: int | None = None) -> dict[str, Any]:
    """The file's own windows as [`DicomImage`] holds them (`windows`, `frame_windows`, `window_error`), from its
    frames' LUTs (see [`_frame_luts`]); with `frame`, those of that frame read alone (its windows, and the error of
    any frame's tags, as a read of every frame has). Tags that are no window are kept as an error, not raised: a file
    is refused for them only where its own window (`"file"`) is asked for."""
    windows, error = [], None
    for lut in frames:
        try:
            windows.append(Window.from_tags(lut) or VoiTable.from_tags(lut))
        except ValueError as bad:
            windows.append(())
            error = error or f"DICOM file {path}: bad window tags {bad}"
    if frame is not None:
        return {"windows": windows[int(frame)], "frame_windows": (), "window_error": error}
    frame_windows = tuple(windows) if len(set(windows)) > 1 else ()
    return {"windows": windows[0], "frame_windows": frame_windows, "window_error": error}


def _first_item(dataset: Any, keyword: str) -> Any:
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _modality_values(stored: np.ndarray, frames: Sequence[Any]) -> np.ndarray:
    """The stored values `[F, H, W]` through each frame's Modality LUT (`frames`: from [`_frame_luts`]), float32."""
    apply_modality_lut = _import_pydicom().pixels.apply_modality_lut
    if all(lut is frames[0] for lut in frames):  # one LUT for the file: one call
        return np.asarray(apply_modality_lut(stored, frames[0]), dtype=np.float32)
    return np.stack([
        np.asarray(apply_modality_lut(values, lut), dtype=np.float32) for values, lut in zip(stored, frames)
    ])


def _padding_mask(dataset: Any, stored: np.ndarray) -> np.ndarray:
    padding_value = dataset.get("PixelPaddingValue")
    if padding_value is None:
        return np.zeros(stored.shape, dtype=bool)
    limit = dataset.get("PixelPaddingRangeLimit", padding_value)
    low, high = sorted(_as_stored_value(dataset, value) for value in (padding_value, limit))
    return (stored >= low) & (stored <= high)


def _as_stored_value(dataset: Any, value: Any) -> int:
    """A PixelPaddingValue (or range limit) as the stored value it stands for. It takes the pixels' VR (SS for
    signed pixels); written US, its bits are the two's complement of the stored value (63536 for -2000), read so."""
    value = int(value)
    if int(dataset.get("PixelRepresentation") or 0) != 1:
        return value
    for bits in (int(dataset.get("BitsStored") or dataset.BitsAllocated), int(dataset.BitsAllocated)):
        if 2 ** (bits - 1) <= value < 2**bits:
            return value - 2**bits
    return value


def _stored_range(frames: Sequence[Any], dataset: Any) -> tuple[float, float]:
    """The modality values of the smallest and largest storable value, over the frames' LUTs (see [`_frame_luts`])."""
    pydicom = _import_pydicom()
    bits = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    luts = {_lut_key(lut): lut for lut in frames}.values()  # one call per distinct LUT
    rescaled = [pydicom.pixels.apply_modality_lut(np.array([low, high]), lut) for lut in luts]
    return float(np.min(rescaled)), float(np.max(rescaled))


def _lut_key(lut: Any) -> Any:
    """What `apply_modality_lut` reads of `lut`: its rescale's values (frames that share a rescale share a key), or
    the dataset itself when it holds a Modality LUT Sequence."""
    if lut.get("ModalityLUTSequence"):
        return id(lut)
    return str(lut.get("RescaleSlope")), str(lut.get("RescaleIntercept"))


def _metadata(dataset: Any) -> dict[str, Any]:
    def text(keyword: str) -> str | None:
        value = dataset.get(keyword)
        return str(value).strip() or None if value is not None else None  # anonymised files leave ids blank

    instance, image_type = _integer(dataset, "InstanceNumber"), dataset.get("ImageType")
    return {
        "PatientID": text("PatientID"),
        "StudyInstanceUID": text("StudyInstanceUID"),
        "SeriesInstanceUID": text("SeriesInstanceUID"),
        # a mammogram's breast (findings are per breast); a tomosynthesis volume's is its frames' (FrameLaterality)
        "Laterality": text("ImageLaterality") or text("Laterality") or _frame_laterality(dataset),
        "ViewPosition": text("ViewPosition"),
        "SOPInstanceUID": text("SOPInstanceUID"),  # the image itself: one stored under two names is one image
        "Modality": text("Modality"),
        # digital mammography / radiography: raw detector data or the image processed for viewing
        "PresentationIntentType": text("PresentationIntentType"),
        "InstanceNumber": instance,
        "ImageType": None if image_type in (None, "") else tuple(
            str(v) for v in (image_type if isinstance(image_type, Sequence) and not isinstance(image_type, str)
                             else [image_type])
        ),
    }


def _frame_laterality(dataset: Any) -> str | None:
    """The FrameLaterality an enhanced multi-frame file (breast tomosynthesis) gives its frames in its Frame Anatomy
    functional group, shared or the first frame's."""
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = _first_item(dataset, name)
        anatomy = _first_item(group, "FrameAnatomySequence") if group is not None else None
        value = anatomy.get("FrameLaterality") if anatomy is not None else None
        if value not in (None, "") and str(value).strip():
            return str(value).strip()
    return None


def check_same_slice_size(
    images: Sequence[tuple[str, tuple[int, int]]], where: str, unit: str = "folder"
) -> None:
    """Every `(path, (height, width))` has the first one's size; the error names two files and their sizes, and
    `unit` what should have one size (`"folder"`, `"series"`).

    Mixed sizes among the slices of one volume usually mean a scout / localiser or a second series mixed in, so they
    are refused rather than silently resized.
    """
    if not images:
        return
    first_path, first_size = images[0]
    for path, size in images[1:]:
        if tuple(size) != tuple(first_size):
            raise ValueError(
                f"{where}: mixed slice sizes: {first_path} is {first_size[0]}x{first_size[1]} but {path} is "
                f"{size[0]}x{size[1]} (height x width); expected one size per {unit} (a scout or a second series "
                "mixed in?). Move the odd files out, or resample them to one size first"
            )


def read_dicom_folder(folder: str | Path) -> list[DicomImage]:
    """The DICOM files (`*.dcm`, `*.dicom`, `*.dic`, `*.ima`, or others holding the 'DICM' header: see
    [`is_dicom_file`]) directly in `folder`,
    ordered by (SeriesInstanceUID, InstanceNumber, file name); all slices must have one size (see
    [`check_same_slice_size`])."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_dicom_file(p))
    if not paths:
        raise ValueError(f"DICOM folder {folder}: no DICOM files found (extensions {sorted(DICOM_EXTENSIONS)}; "
                         f"{_DICOM_HEADER_NOTE})")
    images = [read_dicom(path) for path in paths]
    check_same_slice_size([(image.path, image.values.shape[1:]) for image in images], f"DICOM folder {folder}")
    return sorted(images, key=_slice_order)


def _slice_order(image: DicomImage) -> tuple:
    instance = image.metadata["InstanceNumber"]
    return (image.metadata["SeriesInstanceUID"] or "", instance is None, instance or 0, Path(image.path).name)


# --------------------------------------------------------------------------------------------------
# Windowing into channels
# --------------------------------------------------------------------------------------------------

def window_channels(
    image: DicomImage, windows: Sequence[Window | str] = ("file",), padding_fill: float = 0.0
) -> np.ndarray:
    r"""
    Window a [`DicomImage`] into float32 `[F, C, H, W]` in `[0, 1]`, one channel per window.

    Args:
        image ([`DicomImage`]): from [`read_dicom`].
        windows (`Sequence`, *optional*, defaults to `("file",)`): each a [`Window`], a preset name (`"brain"`,
            `"subdural"`, `"bone"`), `"file"` (the file's first WindowCenter / WindowWidth, through its VOILUTFunction,
            else the first table of its VOI LUT Sequence; each frame's own when an enhanced multi-frame file gives its
            frames their own) or `"full"` (the whole
            storable range, from BitsStored through the rescale). Brain / subdural / bone as 3 channels is the usual
            input for haemorrhage detection.
        padding_fill (`float`, *optional*, defaults to 0.0): the value of padding pixels (PixelPaddingValue) in
            every channel, after any inversion: 0 is the window's minimum, shown black.

    MONOCHROME1 is inverted after windowing (`1 - y`), as the Presentation LUT does, so the modality values and the
    file's own window tags keep their meaning.
    """
    frames = [resolve_windows(image, windows, frame) for frame in range(image.num_frames)]
    channels = np.stack([
        np.stack([window.apply(values) for window in resolved]) for values, resolved in zip(image.values, frames)
    ])  # (F, C, H, W)
    if image.monochrome1:
        channels = 1.0 - channels
    channels[np.broadcast_to(image.padding[:, None], channels.shape)] = padding_fill
    return channels


def resolve_windows(
    image: DicomImage | DicomHeader, windows: Sequence[Window | str], frame: int = 0
) -> tuple[Window | VoiTable, ...]:
    """`windows` (see [`window_channels`]) as [`Window`]s (or a file's [`VoiTable`]) for `image`'s frame `frame` (or
    its header: a window it cannot resolve, such as `"file"` for a file without window tags, is then refused before
    any pixel is decoded). One window may be given alone (`"brain"`), as `MedicalPreprocessing` takes it."""
    if isinstance(windows, (str, Window)):  # not its letters, one window each
        windows = (windows,)
    if not windows:
        raise ValueError("windows: expected at least one window")
    own = image.frame_windows[frame] if image.frame_windows else image.windows
    return tuple(_resolve_window(spec, image, own) for spec in windows)


def _resolve_window(
    spec: Window | str, image: DicomImage | DicomHeader, own: tuple[Window | VoiTable, ...]
) -> Window | VoiTable:
    if isinstance(spec, Window):
        return spec
    if spec == "file":
        if image.window_error:
            raise ValueError(f"{image.window_error}; its own window ('file') cannot be used. Name another: "
                             f"{_OTHER_WINDOWS}")
        if not own:
            raise ValueError(
                f"DICOM file {image.path} has no WindowCenter / WindowWidth nor VOI LUT Sequence; expected a window "
                f"for 'file'. Name one: {_OTHER_WINDOWS}"
            )
        return own[0]
    if spec == "full":
        low, high = image.stored_range
        return Window((low + high) / 2, high - low)
    if spec not in WINDOW_PRESETS:
        raise ValueError(f"window {spec!r}: expected a Window(center, width) or one of {list(WINDOW_NAMES)}")
    return WINDOW_PRESETS[spec]


# --------------------------------------------------------------------------------------------------
# The saved configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MedicalPreprocessing:
    r"""
    How medical files become `[0, 1]` values: the windows of DICOM files and the bit depth of 16-bit PNG / TIFF.

    JSON-serialisable ([`to_dict`] / [`from_dict`]) so it can be saved with a model and applied identically later.

    Args:
        windows (`Tuple`, *optional*, defaults to `("file",)`): the DICOM windows, one channel each (see
            [`window_channels`]): [`Window`]s, preset names, `"file"` or `"full"`.
        padding_fill (`float`, *optional*, defaults to 0.0): the value in `[0, 1]` of padding pixels.
        bits_stored (`int`, *optional*): the bit depth of 16-bit PNG / TIFF values (see [`read_16bit_image`]).
        guessed_bits_stored (`int`, *optional*): informational, recorded by the loaders: the one bit depth every
            16-bit PNG / TIFF of the training data was scaled by, guessed from each image's maximum (`bits_stored`
            unset; none when they got different ones, which is warned about). It changes no pixel: images read later
            at another guessed depth are warned about (see [`check_bit_depths`]). Saved only when set.
        dicom_files (`bool`, *optional*, defaults to `False`): informational, recorded by the loaders: the training
            data held DICOM files, so the model is given DICOM files by path (its card and reading summary say so,
            also for each file's own window, the default, which states nothing). Saved only when set.
        pil_images_as_files (`bool`, *optional*, defaults to `True`): a 16-bit PIL image (a `datasets` Image
            column's row, `Image.open` of a 16-bit PNG) is scaled as the file it was decoded from is, by its maximum's
            bit depth (recorded and checked as files' are), so that the rows of a `datasets` source, the same PNG
            files in a folder and the images a user opens read alike; a stated `bits_stored` scales both alike
            anyway. `False`, the rule of contracts saved before 2026-12-06 (which lack the key, as do contracts without
            `medical`, and a `medical` dict given without it): from `[0, 65535]`, so that their models read such
            images as they were trained on them (which is warned about where a file would read otherwise).
            Saved when `True`, which earlier versions of this library refuse as an unknown key (a model saved from
            2026-12-06 needs this version or later).
    """

    windows: tuple[Window | str, ...] = ("file",)
    padding_fill: float = 0.0
    bits_stored: int | None = None
    guessed_bits_stored: int | None = None
    dicom_files: bool = False
    pil_images_as_files: bool = True

    def __post_init__(self) -> None:
        windows = (self.windows,) if isinstance(self.windows, (str, Window)) else tuple(self.windows)
        allowed = sorted(WINDOW_PRESETS) + ["file", "full"]
        for spec in windows:
            if not isinstance(spec, Window) and spec not in allowed:
                raise ValueError(f"windows: {spec!r} is not a window; expected a Window or one of {allowed}")
        if not windows:
            raise ValueError("windows: expected at least one window")
        object.__setattr__(self, "windows", windows)
        if not 0.0 <= self.padding_fill <= 1.0:
            raise ValueError(f"padding_fill: expected a number in [0, 1], got {self.padding_fill!r}")
        _check_bits_stored(self.bits_stored)
        _check_bits_stored(self.guessed_bits_stored, "guessed_bits_stored")
        if not isinstance(self.pil_images_as_files, bool):
            raise ValueError(f"pil_images_as_files: expected True or False, got {self.pil_images_as_files!r}")

    @property
    def num_channels(self) -> int:
        """Channels of a windowed DICOM image: one per window."""
        return len(self.windows)

    @property
    def reads_dicom_only(self) -> bool:
        """Several windows: only DICOM files are read through them, one channel each. An image file (PNG, JPEG) has
        no Hounsfield units to window, and its grey copied into every channel would look like no scan: the training
        readers, predict and `preprocess_images` refuse one (pictures given in memory are warned about)."""
        return len(self.windows) > 1

    @property
    def stated(self) -> bool:
        """Windows or a bit depth chosen for the data, not the defaults (each file's own window and bit depth)."""
        return tuple(self.windows) != ("file",) or self.bits_stored is not None

    def check_channels(self, num_channels: int | None) -> None:
        """What reading images for a model needs of the windows, checked where images are read for training or
        prediction (a saved contract loads as it was saved): 1 or 3 windows, one channel each, and not 3 windows
        read into 1 channel (`num_channels`; None: the data's own), which would blend them into one grey."""
        count = len(self.windows)
        if count not in (1, 3):
            raise ValueError(f"windows: {count} windows give {count} channels; expected 1 or 3 windows")
        if count == 3 and num_channels == 1:
            raise ValueError(
                f"num_channels 1 with 3 DICOM windows {self.to_dict()['windows']}: one channel would blend them into "
                "one grey; give 1 window or 3 channels"
            )

    def check_replaces(self, trained: MedicalPreprocessing, num_channels: int, where: str, model: str) -> None:
        """These windows, given in place of those `model` was `trained` with (it reads `num_channels` channels): not 1
        for a model of 3 (it would read that one repeated), nor 3 for a grey model (blended into one grey); the same 3
        in another order read each channel through a window the model did not learn it with, which is warned about."""
        given, saved = self.to_dict()["windows"], trained.to_dict()["windows"]
        if len(given) == 1 and len(saved) == 3:
            raise ValueError(f"{where}: 1 window, but {model} was trained on 3 ({saved}), one channel each; give 3")
        if len(given) == 3 and num_channels == 1:
            raise ValueError(
                f"{where}: 3 windows, but {model} reads 1 channel: they would blend into one grey; give 1"
            )
        named, trained_named = (list(map(repr, named_windows(m.windows))) for m in (self, trained))
        if named != trained_named and sorted(named) == sorted(trained_named):
            warnings.warn(
                f"{where}: the windows {given} are those {model} was trained with in another order ({saved}): each "
                "channel is read through a window the model did not learn it with; give them in the trained order",
                UserWarning,
                stacklevel=3,
            )

    def to_dict(self) -> dict[str, Any]:
        windows = [w.to_dict() if isinstance(w, Window) else w for w in self.windows]
        config = {"windows": windows, "padding_fill": self.padding_fill, "bits_stored": self.bits_stored}
        if self.guessed_bits_stored is not None:  # saved as before the record existed when there is none
            config["guessed_bits_stored"] = self.guessed_bits_stored
        if self.dicom_files:  # the same
            config["dicom_files"] = True
        if self.pil_images_as_files:  # its absence is the earlier rule
            config["pil_images_as_files"] = True
        return config

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> MedicalPreprocessing:
        known = ("windows", "padding_fill", "bits_stored", "guessed_bits_stored", "dicom_files", "pil_images_as_files")
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"MedicalPreprocessing: unknown keys {unknown}; expected {', '.join(known)}")
        windows = tuple(Window(**w) if isinstance(w, dict) else w for w in config.get("windows", ("file",)))
        padding_fill, bits_stored = float(config.get("padding_fill", 0.0)), config.get("bits_stored")
        guessed, dicom_files = config.get("guessed_bits_stored"), bool(config.get("dicom_files", False))
        as_files = config.get("pil_images_as_files", False)  # saved before the key existed: the earlier rule
        return cls(windows, padding_fill, bits_stored, guessed, dicom_files, as_files)

    def read(self, path: str | Path, frame: int | None = None) -> np.ndarray:
        """One file as float32 `[F, C, H, W]` in `[0, 1]`: a DICOM file (see [`is_dicom_file`]) windowed into
        `len(windows)` channels (only its frame `frame` when given: `[1, C, H, W]`), else a 16-bit greyscale PNG / TIFF
        as `[1, 1, H, W]` (its bit depth told to an open [`check_bit_depths`])."""
        if is_dicom_file(path):
            image = read_dicom(path, frame)
            refuse_localizer(path, image.metadata)
            return window_channels(image, self.windows, self.padding_fill)
        values, bits = _read_16bit(path, self.bits_stored)
        note_bit_depth(path, bits)
        return values[None, None]

    def read_frames(self, path: str | Path) -> Iterator[np.ndarray]:
        """[`read`]'s frames one at a time, each float32 `[C, H, W]`: a DICOM file's decoded as they are asked for
        ([`read_dicom_frames`]), so a long multi-frame file is read in the memory of one frame."""
        if not is_dicom_file(path):
            yield from self.read(path)
            return
        for image in read_dicom_frames(path):
            refuse_localizer(path, image.metadata)
            yield window_channels(image, self.windows, self.padding_fill)[0]

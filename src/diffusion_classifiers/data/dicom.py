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
import warnings
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .image_files import DECODE_ERRORS, IMAGE_EXTENSIONS, decode_error_text, open_image


__all__ = [
    "DICOM_EXTENSIONS",
    "DicomHeader",
    "DicomImage",
    "LOW_RANGE_FILL",
    "MedicalPreprocessing",
    "WINDOW_NAMES",
    "WINDOW_PRESETS",
    "VoiTable",
    "Window",
    "check_decoders",
    "check_same_slice_size",
    "is_dicom_file",
    "parse_windows",
    "read_16bit_image",
    "scale_16bit_image",
    "read_dicom",
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
# PIL modes of 16-bit greyscale images (`data.preprocessing` reads them through here too).
_PIL_16BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_INSTALL_HINT = 'pip install "diffusion-classifiers[medical]"'
# The pip packages that decode each compressed transfer-syntax family (the [medical] extra installs them).
_JPEG_PLUGIN = "pylibjpeg pylibjpeg-libjpeg"
_JPEG2000_PLUGIN = "pylibjpeg pylibjpeg-openjpeg"
_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# An enhanced multi-frame file (Enhanced CT / MR / XA, PS3.3 C.7.6.16) keeps its rescale and window in these
# functional-group macros, shared by all frames or per frame, not at the top level where pydicom's
# apply_modality_lut looks: the keywords read from them.
_FRAME_LUT_SEQUENCES = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_LUT_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction")
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# 16-bit data spanning less than this share of their scale keep fewer than 0.05 * 255 ~ 13 grey levels once stored or
# shown at 8 bits: too little contrast to be a deliberate choice, so read_16bit_image warns.
LOW_RANGE_FILL = 0.05


def _import_pydicom() -> Any:
    try:
        import pydicom
    except ImportError as error:
        raise ImportError(f"reading DICOM files needs pydicom: {_INSTALL_HINT}") from error
    return pydicom


# --------------------------------------------------------------------------------------------------
# Windows (VOI LUT)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    r"""
    A VOI window: modality values (Hounsfield units for CT) -> `[0, 1]`.

    The mapping is a VOI LUT Function of DICOM PS3.3 C.11.2.1.3 with `y_min = 0`, `y_max = 1`:

    - `"LINEAR_EXACT"`: `y = clip((x - center) / width + 0.5, 0, 1)`, so `center - width / 2` maps to 0 and
      `center + width / 2` to 1. (The older `LINEAR` of C.11.2.1.2.1, the standard's default when a file names no
      function, shifts by 0.5 and divides by `width - 1`; it differs by at most `1 / width` and needs `width >= 1`.
      A file's `LINEAR` window is read as `LINEAR_EXACT`.)
    - `"SIGMOID"`: `y = 1 / (1 + exp(-4 (x - center) / width))`, the function many digital mammography systems name
      in their files (`VOILUTFunction`): read as linear, their images would be clipped where the sigmoid is not.

    Args:
        center (`float`): the window centre (WindowCenter), in modality units.
        width (`float`): the window width (WindowWidth), > 0.
        function (`str`, *optional*, defaults to `"LINEAR_EXACT"`): `"LINEAR_EXACT"` or `"SIGMOID"`.
    """

    center: float
    width: float
    function: str = "LINEAR_EXACT"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)) or self.width <= 0:
            raise ValueError(
                f"Window(center={self.center!r}, width={self.width!r}): expected a finite center and a finite width > 0"
            )
        if self.function not in VOI_LUT_FUNCTIONS:
            raise ValueError(f"Window function {self.function!r}: expected one of {list(VOI_LUT_FUNCTIONS)}")

    def __repr__(self) -> str:
        function = "" if self.function == "LINEAR_EXACT" else f", function={self.function!r}"
        return f"Window(center={self.center!r}, width={self.width!r}{function})"

    @classmethod
    def preset(cls, name: str) -> Window:
        """The named window: `brain` 40/80, `subdural` 80/200 or `bone` 600/2800 (centre/width in HU)."""
        if name not in WINDOW_PRESETS:
            raise ValueError(f"window {name!r}: expected one of the presets {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[name]

    @classmethod
    def from_tags(cls, dataset: Any) -> tuple[Window, ...]:
        """The windows a pydicom dataset names in WindowCenter / WindowWidth (one or several values each); `()` if
        it names none. The error for tags that are no windows names their values."""
        centers, widths = dataset.get("WindowCenter"), dataset.get("WindowWidth")
        if centers in (None, "") or widths in (None, ""):
            return ()
        tags = f"WindowCenter {centers} and WindowWidth {widths}"
        try:
            centers, widths = _as_float_list(centers), _as_float_list(widths)
        except ValueError:
            raise ValueError(f"{tags}: expected numbers") from None
        if len(centers) != len(widths):
            raise ValueError(f"{tags}: expected as many centres as widths")
        if not all(math.isfinite(value) for value in centers + widths) or min(widths) <= 0:
            raise ValueError(f"{tags}: expected finite centres and widths > 0")
        function = _voi_lut_function(dataset.get("VOILUTFunction"))
        return tuple(cls(center, width, function) for center, width in zip(centers, widths))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map modality values to float32 in `[0, 1]` (see the class docstring)."""
        offset = (np.asarray(values, dtype=np.float64) - self.center) / self.width
        if self.function == "SIGMOID":
            return (0.5 + 0.5 * np.tanh(2.0 * offset)).astype(np.float32)  # 1 / (1 + exp(-4 offset)), no overflow
        return np.clip(offset + 0.5, 0.0, 1.0).astype(np.float32)

    def describe(self) -> str:
        """`center/width`, and the function when not linear: `40/80`, `2047/4096 SIGMOID`."""
        function = "" if self.function == "LINEAR_EXACT" else f" {self.function}"
        return f"{self.center:g}/{self.width:g}{function}"

    def to_dict(self) -> dict[str, Any]:
        """As saved in a [`MedicalPreprocessing`] config (`Window(**config)` reads it back); a linear window without
        its function, as saved before windows had one."""
        config = {"center": self.center, "width": self.width}
        return config if self.function == "LINEAR_EXACT" else {**config, "function": self.function}


@dataclass(frozen=True)
class VoiTable:
    r"""
    A file's own VOI LUT table (an item of its VOI LUT Sequence, PS3.3 C.11.2.1.1), its window (`"file"`) when it
    has no WindowCenter / WindowWidth: modality value `x` -> the table's entry `x - first_mapped` (values below the
    first mapped one take the first entry, values past the last the last), divided by `2^bits - 1`. Never saved: each
    file brings its own.

    Args:
        first_mapped (`int`): the first modality value the table maps (the LUTDescriptor's second value).
        entries (`bytes`): the table's entries, uint16 in this machine's byte order.
        bits (`int`): the entries' bit depth (the LUTDescriptor's third value).
    """

    first_mapped: int
    entries: bytes
    bits: int

    @classmethod
    def from_tags(cls, dataset: Any) -> tuple[VoiTable, ...]:
        """The tables of `dataset`'s VOI LUT Sequence, read by pydicom (the data's VR and byte order); `()` if it has
        none. A table pydicom cannot read, or whose entries exceed its bit depth, is refused naming its values."""
        from pydicom.pixels import apply_voi

        tables = []
        for index, item in enumerate(dataset.get("VOILUTSequence") or []):
            try:
                count, first, bits = _lut_descriptor(item)
                entries = apply_voi(np.arange(first, first + count), dataset, index)
            except (AttributeError, IndexError, KeyError, NotImplementedError, OverflowError, TypeError, ValueError) as error:
                raise ValueError(f"VOI LUT Sequence item {index}: {error}") from None
            if entries.max() > 2**bits - 1:
                raise ValueError(f"VOI LUT Sequence item {index}: entries up to {entries.max()} exceed its "
                                 f"LUTDescriptor's {bits} bits per entry")
            tables.append(cls(first, entries.astype(np.uint16).tobytes(), bits))
        return tuple(tables)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map modality values to float32 in `[0, 1]` (see the class docstring)."""
        table = np.frombuffer(self.entries, dtype=np.uint16)
        offsets = np.rint(np.asarray(values, dtype=np.float64)) - self.first_mapped
        return (table[np.clip(offsets, 0, len(table) - 1).astype(np.int64)] / (2.0**self.bits - 1)).astype(np.float32)

    def describe(self) -> str:
        """The table in words: `VOI LUT of 4096 entries from 0`."""
        return f"VOI LUT of {len(self.entries) // 2} entries from {self.first_mapped}"


def _lut_descriptor(item: Any) -> tuple[int, int, int]:
    """A VOI LUT item's (number of entries, first mapped value, bits per entry); 0 entries means 2^16."""
    count, first, bits = (int(value) for value in item.LUTDescriptor)
    return count or 2**16, first, bits


# The VOI LUT Functions a window applies, and how a file's VOILUTFunction names each (none: LINEAR, the default).
VOI_LUT_FUNCTIONS = ("LINEAR_EXACT", "SIGMOID")
_FILE_VOI_LUT_FUNCTIONS = {"": "LINEAR_EXACT", "LINEAR": "LINEAR_EXACT", "LINEAR_EXACT": "LINEAR_EXACT",
                           "SIGMOID": "SIGMOID"}


def _voi_lut_function(value: Any) -> str:
    """The [`Window`] function of a file's VOILUTFunction value (None when absent)."""
    name = "" if value is None else str(value).strip().upper()
    if name not in _FILE_VOI_LUT_FUNCTIONS:
        raise ValueError(f"VOILUTFunction {value!r}: expected LINEAR, LINEAR_EXACT or SIGMOID")
    return _FILE_VOI_LUT_FUNCTIONS[name]


WINDOW_PRESETS = {
    "brain": Window(40.0, 80.0),
    "subdural": Window(80.0, 200.0),
    "bone": Window(600.0, 2800.0),
}

WINDOW_NAMES = (*WINDOW_PRESETS, "file", "full")  # what a window may be called (`--window` flags)
# The windows a file without a usable one of its own can be read through (CT presets mean nothing for a mammogram).
_OTHER_WINDOWS = (
    f"Window(center, width) in the file's modality values (--window CENTER WIDTH), 'full' (its whole stored range), "
    f"or for CT a preset in Hounsfield units {sorted(WINDOW_PRESETS)}"
)


def parse_windows(tokens: Sequence[str]) -> tuple[Window | str, ...]:
    """`--window` tokens as windows: names stay names, two numbers in a row (centre, width in HU) become a
    [`Window`]: `["brain", "80", "200", "bone"]` -> `("brain", Window(80.0, 200.0), "bone")`."""
    windows, numbers = [], []
    tokens = [part for token in tokens for part in str(token).split()]  # a quoted pair, '40 80', is two tokens
    for token in tokens:
        if token in WINDOW_NAMES:
            if numbers:
                break  # a centre without its width
            windows.append(token)
            continue
        try:
            numbers.append(float(token))
        except ValueError:
            raise ValueError(
                f"--window {' '.join(tokens)}: {token!r} is neither a window name {list(WINDOW_NAMES)} nor a number"
            ) from None
        if len(numbers) == 2:
            windows.append(Window(*numbers))
            numbers = []
    if numbers:
        raise ValueError(
            f"--window {' '.join(tokens)}: centre {numbers[0]:g} has no width; expected numbers in pairs "
            "(--window 40 80)"
        )
    return tuple(windows)


def _as_float_list(value: Any) -> list[float]:
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]  # MultiValue or one
    return [float(v) for v in values]


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
    if path.name.upper() == "DICOMDIR" or suffix in _NOT_DICOM_EXTENSIONS:
        return False
    return suffix in DICOM_EXTENSIONS or _has_dicom_magic(path)


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


def read_dicom(path: str | Path, frame: int | None = None) -> DicomImage:
    r"""
    Read a DICOM file's pixels as modality values (Hounsfield units for CT), frames first.

    The stored values go through pydicom's Modality LUT (RescaleSlope / RescaleIntercept, or a Modality LUT
    Sequence; an enhanced multi-frame file's from its functional groups, frame by frame); a multi-frame file gives
    `[F, H, W]`, a single frame `[1, H, W]`.

    Args:
        path (`str` or `os.PathLike`): the file.
        frame (`int`, *optional*): decode this frame only (0-based), as `[1, H, W]`; default: every frame.

    Raises:
        `ValueError`: the file is not DICOM, has no pixel data (a structured report, a presentation state), is not
            greyscale (MONOCHROME1/2), has no frame `frame`, or its pixel data cannot be decoded; each names the file.
        `ImportError`: pydicom is not installed, or no decoder for the file's compressed transfer syntax is; the
            message names the package to install.
    """
    path = Path(path)
    dataset = _open_image_dataset(path)
    stored = _decode_pixels(dataset, path, frame)
    luts = _frame_luts(dataset, range(_num_frames(dataset)))  # all frames': the stored range is the file's
    frames = luts if frame is None else [luts[int(frame)]]
    return DicomImage(
        path=str(path),
        values=_modality_values(stored, frames),
        padding=_padding_mask(dataset, stored),
        stored_range=_stored_range(luts, dataset),
        monochrome1=dataset.PhotometricInterpretation == "MONOCHROME1",
        metadata=_metadata(dataset),
        **_own_windows(luts, path, frame),
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
    are deferred), after the checks [`read_dicom`] makes before decoding: so a file without pixel data, a colour image or
    a compressed one with no decoder installed is refused when data are listed, not hours into training."""
    path = Path(path)
    dataset = _open_image_dataset(path, defer_size="64 KB")
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


def _open_image_dataset(path: Path, defer_size: str | None = None) -> Any:
    """The pydicom dataset of a greyscale DICOM image file; `ValueError` naming the file otherwise. A file cut short
    inside encapsulated (compressed) pixel data reads as an empty dataset with only a warning: it is refused as
    truncated, and pydicom's warnings are the reason given."""
    pydicom = _import_pydicom()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(path, defer_size=defer_size)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError) as error:
            # pydicom's advice to pass force=True is for its own API, not something a user of this one can do
            reason = str(error).replace(" Use force=True to force reading.", "")
            raise ValueError(f"cannot read DICOM file {path}: {reason}") from error
    if len(dataset) == 0:
        reason = "; ".join(str(warning.message) for warning in caught) or "no data elements after its file meta"
        raise ValueError(f"cannot read DICOM file {path}: truncated or corrupt ({reason})")
    for warning in caught:  # a dataset read despite them: the user still sees them
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    _check_has_grey_pixels(dataset, path)
    return dataset


def _num_frames(dataset: Any) -> int:
    return int(dataset.get("NumberOfFrames") or 1)


def _check_has_grey_pixels(dataset: Any, path: Path) -> None:
    if not any(tag in dataset for tag in _PIXEL_DATA_TAGS):
        kind = getattr(dataset.get("SOPClassUID"), "name", None) or "unknown SOP class"
        why = (
            "the file may be truncated or corrupt" if kind.endswith("Image Storage")
            else "a structured report or presentation state holds no pixels"
        )  # fmt: skip
        raise ValueError(
            f"DICOM file {path} has no pixel data ({kind}, modality {dataset.get('Modality', '?')}); expected an "
            f"image ({why})"
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
    from pydicom.pixels import get_decoder

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
        if isinstance(error, ImportError):  # a plugin to install; a ValueError: no decoder exists, the file's own error
            raise ValueError(str(error)) from error


def _decode_pixels(dataset: Any, path: Path, frame: int | None = None) -> np.ndarray:
    """The stored values `[F, H, W]` (`[1, H, W]` of one `frame`), after checking that a decoder is installed."""
    from pydicom.pixels import pixel_array

    _check_decoder(dataset, path)
    frames = _num_frames(dataset)
    if frame is not None and not (isinstance(frame, (int, np.integer)) and 0 <= frame < frames):
        raise ValueError(f"DICOM file {path}: frame {frame!r}; expected a frame index in 0..{frames - 1}")
    try:
        pixels = dataset.pixel_array if frame is None else pixel_array(dataset, index=int(frame))
    except Exception as error:  # pydicom and its plugins raise many types for corrupt or truncated pixel data
        raise ValueError(f"cannot decode the pixel data of DICOM file {path}: {error}") from error
    return pixels.reshape(frames if frame is None else 1, int(dataset.Rows), int(dataset.Columns))


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
    shared_lut = _lut_of(dataset, shared)  # one object for every frame without its own: one call reads them all
    return [
        _lut_of(dataset, shared + own) if (own := _lut_items(per_frame[frame] if frame < len(per_frame) else None))
        else shared_lut
        for frame in frames
    ]


def _lut_items(group: Any) -> list:
    """The LUT macros (`_FRAME_LUT_SEQUENCES`) a functional group holds."""
    items = [_first_item(group, name) for name in _FRAME_LUT_SEQUENCES] if group is not None else []
    return [item for item in items if item is not None]


def _lut_of(dataset: Any, items: list) -> Any:
    """`dataset` when `items` is empty, else a dataset of its LUT attributes, replaced by each item's in turn."""
    if not items:
        return dataset
    from pydicom.dataset import Dataset

    lut = Dataset()
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
    from pydicom.pixels import apply_modality_lut

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
    low, high = min(padding_value, limit), max(padding_value, limit)
    return (stored >= low) & (stored <= high)


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

    instance, image_type = dataset.get("InstanceNumber"), dataset.get("ImageType")
    return {
        "PatientID": text("PatientID"),
        "StudyInstanceUID": text("StudyInstanceUID"),
        "SeriesInstanceUID": text("SeriesInstanceUID"),
        "Laterality": text("ImageLaterality") or text("Laterality"),  # a mammogram's breast: its findings are per breast
        "ViewPosition": text("ViewPosition"),
        "InstanceNumber": int(instance) if instance not in (None, "") else None,
        "ImageType": None if image_type in (None, "") else tuple(
            str(v) for v in (image_type if isinstance(image_type, Sequence) and not isinstance(image_type, str)
                             else [image_type])
        ),
    }


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
    """`windows` (see [`window_channels`]) as [`Window`]s (or a file's [`VoiTable`]) for `image`'s frame `frame` (or its header: a window it
    cannot resolve, such as `"file"` for a file without window tags, is then refused before any pixel is decoded).
    One window may be given alone (`"brain"`), as `MedicalPreprocessing` takes it."""
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
# 16-bit PNG / TIFF
# --------------------------------------------------------------------------------------------------


def read_16bit_image(path: str | Path, bits_stored: int | None = None) -> np.ndarray:
    r"""
    Read a 16-bit greyscale PNG / TIFF (PIL mode `I;16*` or `I`) as float32 `[H, W]` in `[0, 1]`: value / (2^bits - 1).

    Args:
        path (`str` or `os.PathLike`): the file.
        bits_stored (`int`, *optional*): the bit depth the values use (1..16, e.g. 12 for most CT and radiographs).
            Default: the image's maximum rounded up to a whole number of bits (logged), decided per image: pass it to
            scale a data set alike.

    A `UserWarning` is issued when the values span less than 5 % of the scale (`LOW_RANGE_FILL`): at 8 bits that
    is fewer than 13 grey levels.

    Raises:
        `ValueError`: not a 16-bit greyscale image, values above `2^bits_stored - 1` or negative, or a bad
            `bits_stored`; each names the file.
    """
    return _read_16bit(path, bits_stored)[0]


def _read_16bit(path: str | Path, bits_stored: int | None) -> tuple[np.ndarray, int]:
    """[`read_16bit_image`] and the bit depth it scaled by (see [`_scale_16bit`])."""
    _check_bits_stored(bits_stored)
    try:
        image = open_image(path)
    except DECODE_ERRORS as error:
        raise ValueError(f"cannot decode image file {path}: {decode_error_text(error)}") from error
    return _scale_16bit(image, bits_stored, path)


def scale_16bit_image(image: Image.Image, bits_stored: int | None = None, name: Any = "image") -> np.ndarray:
    """[`read_16bit_image`] of an opened 16-bit greyscale `image` (errors and warnings name it `name`)."""
    return _scale_16bit(image, bits_stored, name)[0]


def _scale_16bit(image: Image.Image, bits_stored: int | None, name: Any) -> tuple[np.ndarray, int]:
    """[`scale_16bit_image`] and the bit depth it scaled by (`bits_stored`, or the one guessed from the maximum):
    readers compare those of a data set's images."""
    _check_bits_stored(bits_stored)
    mode, values = image.mode, np.asarray(image).astype(np.int64)
    if mode not in _PIL_16BIT_MODES:
        raise ValueError(f"{name}: PIL mode {mode}; expected a 16-bit greyscale image (I;16 or I)")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{name}: values span [{low}, {high}]; expected 0..65535")
    if bits_stored is None:
        bits_stored = max(high.bit_length(), 1)
        logger.info("%s: scaled by %d bits stored (its maximum %d rounded up); pass bits_stored= to state it",
                    name, bits_stored, high)
    elif high >= 2**bits_stored:
        raise ValueError(
            f"{name}: maximum value {high} does not fit bits_stored={bits_stored} (max {2**bits_stored - 1})"
        )
    scale = 2**bits_stored - 1
    if (high - low) < LOW_RANGE_FILL * scale:
        warnings.warn(
            f"{name}: values span [{low}, {high}], {100 * (high - low) / scale:.2f}% of the {bits_stored}-bit range "
            f"(< {100 * LOW_RANGE_FILL:.0f}%); the image will have little contrast. Check bits_stored or window it",
            UserWarning,
            stacklevel=2,
        )
    return (values / scale).astype(np.float32), bits_stored


def _check_bits_stored(bits_stored: Any, name: str = "bits_stored") -> None:
    if bits_stored is not None and (isinstance(bits_stored, bool) or bits_stored not in range(1, 17)):
        raise ValueError(f"{name}: expected an integer in 1..16 or None, got {bits_stored!r}")


# The images named in the warning about bit depths other than the training images'; the rest are counted.
_OTHER_DEPTHS_SHOWN = 5
# The bit depth check of the run being read, if any (see [`check_bit_depths`]).
_DEPTH_CHECK: ContextVar[_BitDepthCheck | None] = ContextVar("diffusion_classifiers_bit_depth_check", default=None)


def check_bit_depths(medical: MedicalPreprocessing | None, stacklevel: int = 1) -> _BitDepthCheck:
    """A context manager: while it is open, the 16-bit images read (see [`note_bit_depth`]) are compared with the bit
    depth `medical` records for the model's training images (`guessed_bits_stored`); on leaving, one warning names
    those scaled by another (`stacklevel` 1 blames the function holding the `with`). It checks nothing when `medical`
    states `bits_stored` or records no depth, and inside another open check the images join that one (one warning
    for a whole prediction run). No pixel value changes."""
    return _BitDepthCheck(medical, stacklevel)


def note_bit_depth(name: Any, bits: int, image: Any = None) -> None:
    """Tell the open [`check_bit_depths`], if any, that the 16-bit image `name` was scaled by `bits` bits (`image`:
    the PIL image itself, counted once however often it is preprocessed)."""
    check = _DEPTH_CHECK.get()
    if check is not None:
        check.add(name, bits, image)


class _BitDepthCheck:
    """The 16-bit images of one run (a `pipe(...)` call, a prediction, an evaluated data set) whose guessed bit depth
    (`bits_stored` unset: each image's maximum's) is not the one the model's training images all had (`trained`,
    None: nothing to check): the same stored value then reads brighter or darker than in training, which is warned
    about once for the run. Keeps counts and the first few names: flat memory however many images are read."""

    def __init__(self, medical: MedicalPreprocessing | None, stacklevel: int = 1) -> None:
        unset = medical is None or medical.bits_stored is not None
        self.trained = None if unset else medical.guessed_bits_stored
        self.stacklevel, self.total, self._token = stacklevel, 0, None
        self.counts: dict[int, int] = {}  # bit depth other than the trained one -> images
        self.shown: list[str] = []
        self._seen: dict[int, weakref.ref] = {}  # PIL images counted, by id

    def __enter__(self) -> _BitDepthCheck:
        if self.trained is not None and _DEPTH_CHECK.get() is None:
            self._token = _DEPTH_CHECK.set(self)
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self._token is None:
            return
        _DEPTH_CHECK.reset(self._token)
        self._token = None
        if kind is None:
            self.warn(self.stacklevel + 1)  # 1: __exit__'s caller, the function holding the `with`

    def add(self, name: Any, bits: int, image: Any = None) -> None:
        if image is not None:  # a PIL image preprocessed twice (checked, then classified) is one image
            seen = self._seen.get(id(image))
            if seen is not None and seen() is image:
                return
            self._seen[id(image)] = weakref.ref(image, lambda _, key=id(image): self._seen.pop(key, None))
        self.total += 1
        if bits == self.trained:
            return
        self.counts[bits] = self.counts.get(bits, 0) + 1
        if len(self.shown) < _OTHER_DEPTHS_SHOWN:
            self.shown.append(f"{name} at {bits} bits")

    def warn(self, stacklevel: int = 1) -> None:
        """One warning when any image was scaled by a depth other than the training images' (`stacklevel` 1 blames
        the caller)."""
        other = sum(self.counts.values())
        if not other:
            return
        more = f" and {other - len(self.shown)} more" if other > len(self.shown) else ""
        depths = ", ".join(f"{count} at {bits} bits" for bits, count in sorted(self.counts.items()))
        trained = self.trained
        warnings.warn(
            f"{other} of {self.total} 16-bit images were scaled by another bit depth than the model's training "
            f"images, all read at {trained} bits (its preprocessing's medical.guessed_bits_stored): "
            f"{'; '.join(self.shown)}{more} ({depths}). No bits_stored was stated, so each 16-bit PNG / TIFF is "
            "scaled by its own maximum rounded up to whole bits (a 16-bit PIL image from [0, 65535], 16 bits): a "
            "stored value reads twice as bright as in training per bit fewer (a dark or half-dose 12-bit scan, "
            "maximum below 2048, reads at 11 bits) and half as bright per bit more. The images are read as before; "
            f"to read them as the training images were, state the depth: train with --bits_stored {trained} "
            f"(MedicalPreprocessing(bits_stored={trained})), or set it on this model: "
            f"pipe.set_preprocessing({{'medical': {{'bits_stored': {trained}}}}}) and save it (save_pretrained; "
            "predict reads the saved folder)",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


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
    """

    windows: tuple[Window | str, ...] = ("file",)
    padding_fill: float = 0.0
    bits_stored: int | None = None
    guessed_bits_stored: int | None = None

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
            raise ValueError(f"{where}: 3 windows, but {model} reads 1 channel: they would blend into one grey; give 1")
        if given != saved and sorted(map(str, given)) == sorted(map(str, saved)):
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
        return config

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> MedicalPreprocessing:
        unknown = sorted(set(config) - {"windows", "padding_fill", "bits_stored", "guessed_bits_stored"})
        if unknown:
            raise ValueError(
                f"MedicalPreprocessing: unknown keys {unknown}; expected windows, padding_fill, bits_stored, "
                "guessed_bits_stored"
            )
        windows = tuple(Window(**w) if isinstance(w, dict) else w for w in config.get("windows", ("file",)))
        padding_fill, bits_stored = float(config.get("padding_fill", 0.0)), config.get("bits_stored")
        return cls(windows, padding_fill, bits_stored, config.get("guessed_bits_stored"))

    def read(self, path: str | Path, frame: int | None = None) -> np.ndarray:
        """One file as float32 `[F, C, H, W]` in `[0, 1]`: a DICOM file (see [`is_dicom_file`]) windowed into
        `len(windows)` channels (only its frame `frame` when given: `[1, C, H, W]`), else a 16-bit greyscale PNG / TIFF
        as `[1, 1, H, W]` (its bit depth told to an open [`check_bit_depths`])."""
        if is_dicom_file(path):
            return window_channels(read_dicom(path, frame), self.windows, self.padding_fill)
        values, bits = _read_16bit(path, self.bits_stored)
        note_bit_depth(path, bits)
        return values[None, None]

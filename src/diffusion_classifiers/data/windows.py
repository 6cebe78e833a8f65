"""DICOM's VOI LUT step, from modality values (Hounsfield units for CT) to `[0, 1]`: a [`Window`] (centre, width and
function: linear or sigmoid), a file's own table ([`VoiTable`], its VOI LUT Sequence), the named CT presets, and the
`--window` flags' parsing. [`window_channels`] (`dicom.py`) applies them to a read file, one channel per window.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


__all__ = [
    "VOI_LUT_FUNCTIONS", "VoiTable", "WINDOW_NAMES", "WINDOW_PRESETS", "Window", "named_windows", "parse_windows",
]  # fmt: skip


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
        bits (`int`): the entries' bit depth: the LUTDescriptor's third value, or fewer where the entries need fewer
            (some devices state the bits a table is stored in, 16, for entries of 12: read at 16 bits such an image
            would be nearly black; viewers such as Horos and Cornerstone read the entries' own range the same way).
    """

    first_mapped: int
    entries: bytes
    bits: int

    @classmethod
    def from_tags(cls, dataset: Any) -> tuple[VoiTable, ...]:
        """The first table of `dataset`'s VOI LUT Sequence (the one `"file"` reads; the others are alternative views),
        as a tuple; `()` if it has none. A table that cannot be read (a descriptor that is none, fewer entries than it
        says) or whose entries exceed its bit depth is refused, naming its values. (Not through pydicom's
        `apply_voi`, which indexes an 8-bit table in 8 bits: the entries past the 256th wrap around, and a mammogram
        with a 4096-entry 8-bit table read nearly black.) Equal tables are one object: a device writes the same few
        tables into every file, and a folder's headers are held together while it is listed."""
        items = dataset.get("VOILUTSequence") or []
        if not items:
            return ()
        try:
            return (_table_of(items[0], dataset),)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"VOI LUT Sequence item 0: {error}") from None

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map modality values to float32 in `[0, 1]` (see the class docstring)."""
        table = np.frombuffer(self.entries, dtype=np.uint16)
        offsets = np.rint(np.asarray(values, dtype=np.float64)) - self.first_mapped
        return (table[np.clip(offsets, 0, len(table) - 1).astype(np.int64)] / (2.0**self.bits - 1)).astype(np.float32)

    def describe(self) -> str:
        """The table in words: `VOI LUT of 4096 entries from 0`."""
        return f"VOI LUT of {len(self.entries) // 2} entries from {self.first_mapped}"


def _table_of(item: Any, dataset: Any) -> VoiTable:
    """The [`VoiTable`] of a VOI LUT Sequence item of `dataset`, checked (see [`VoiTable.from_tags`])."""
    count, first, bits = _lut_descriptor(item, dataset)
    entries = _lut_data(item, dataset)
    if len(entries) < count:
        raise ValueError(f"{len(entries)} entries in LUTData, fewer than its LUTDescriptor's {count}")
    entries = entries[:count]
    if entries.max() > 2**bits - 1:
        raise ValueError(
            f"entries from {entries.min()} to {entries.max()} outside its LUTDescriptor's {bits} bits per entry "
            f"(0..{2**bits - 1})"
        )
    needed = max(int(entries.max()).bit_length(), 1)
    return _interned_table(first, entries.astype(np.uint16).tobytes(), min(bits, needed))


@functools.lru_cache(maxsize=64)
def _interned_table(first_mapped: int, entries: bytes, bits: int) -> VoiTable:
    """One object per distinct table among the last 64 read (see [`VoiTable.from_tags`])."""
    return VoiTable(first_mapped, entries, bits)


def _lut_descriptor(item: Any, dataset: Any) -> tuple[int, int, int]:
    """A VOI LUT item's (number of entries, first mapped value, bits per entry); 0 entries means 2^16. The values are
    16-bit words whatever VR they were read with (pydicom reads them as SS for signed pixels, where a count of 2^15 or
    more would turn negative); the first mapped value is signed where the modality values can be negative (signed
    pixels, or a negative rescale intercept) though written as US."""
    count, first, bits = (int(value) & 0xFFFF for value in item.LUTDescriptor)
    if not 1 <= bits <= 16:
        raise ValueError(f"LUTDescriptor {list(item.LUTDescriptor)}: expected 1 to 16 bits per entry")
    signed = dataset.get("PixelRepresentation") == 1 or float(dataset.get("RescaleIntercept") or 0) < 0
    return count or 2**16, first - 2**16 if signed and first >= 2**15 else first, bits


def _lut_data(item: Any, dataset: Any) -> np.ndarray:
    """A VOI LUT item's LUTData as integers: its values (VR US), or its 16-bit words (OW) in the file's byte order."""
    value = item["LUTData"].value
    if isinstance(value, (bytes, bytearray)):
        return np.frombuffer(value, dtype="<u2" if _little_endian(dataset) else ">u2").astype(np.int64)
    return np.atleast_1d(np.asarray(value, dtype=np.int64)) & 0xFFFF  # words, also where pydicom read them as SS


def _little_endian(dataset: Any) -> bool:
    """Whether `dataset` was stored little-endian (its transfer syntax, else how pydicom read it; little by default,
    as nearly every file is)."""
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is not None:
        return bool(syntax.is_little_endian)
    encoding = getattr(dataset, "original_encoding", None)
    return True if not encoding or encoding[1] is None else bool(encoding[1])


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


def named_windows(windows: Sequence[Any]) -> list:
    """`windows` with each preset name as the [`Window`] it names (`"brain"` is `Window(40, 80)`), so that windows
    written either way compare equal; other names (`"file"`, `"full"`) and values as they are."""
    return [WINDOW_PRESETS.get(window, window) if isinstance(window, str) else window for window in windows]


def parse_windows(tokens: Sequence[str]) -> tuple[Window | str, ...]:
    """`--window` tokens as windows: names stay names, two numbers in a row (centre, width in modality values: HU for
    CT) become a [`Window`]: `["brain", "80", "200", "bone"]` -> `("brain", Window(80.0, 200.0), "bone")`."""
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

"""16-bit greyscale PNG / TIFF at their real bit depth (`value / (2^bits - 1)`), and the check that the 16-bit images
of a run were scaled by the bit depth the model's training images had ([`check_bit_depths`], [`note_bit_depth`]).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .image_files import DECODE_ERRORS, decode_error_text, open_image


__all__ = [
    "LOW_RANGE_FILL",
    "check_bit_depths",
    "note_bit_depth",
    "read_16bit_image",
    "pil_image_name",
    "record_bit_depths",
    "scale_16bit_image",
]

logger = logging.getLogger(__name__)

# PIL modes of 16-bit greyscale images (`data.preprocessing` and the transformers pipeline read them through here too).
_PIL_16BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
# 16-bit data spanning less than this share of their scale keep fewer than 0.05 * 255 ~ 13 grey levels once stored or
# shown at 8 bits: too little contrast to be a deliberate choice, so read_16bit_image warns.
LOW_RANGE_FILL = 0.05

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
# The record of the depths a data set's images are read at, if one is kept (see [`record_bit_depths`]).
_DEPTH_RECORD: ContextVar[Any] = ContextVar("diffusion_classifiers_bit_depth_record", default=None)


def check_bit_depths(medical: Any, stacklevel: int = 1) -> _BitDepthCheck:
    """A context manager: while it is open, the 16-bit images read (see [`note_bit_depth`]) are compared with the bit
    depth `medical` (a `MedicalPreprocessing`, or None) records for the model's training images
    (`guessed_bits_stored`); on leaving, one warning names
    those scaled by another (`stacklevel` 1 blames the function holding the `with`). It checks nothing when `medical`
    states `bits_stored` or records no depth, and inside another open check the images join that one (one warning
    for a whole prediction run). No pixel value changes."""
    return _BitDepthCheck(medical, stacklevel)


@contextmanager
def record_bit_depths(record: Any) -> Iterator[Any]:
    """While open, every 16-bit image read through the preprocessing (see [`note_bit_depth`]) is added to `record`
    (`record.add(name, bits)`): how a reader that preprocesses decoded images, such as a `datasets` source's rows,
    learns the depths its 16-bit images were scaled by (16-bit PIL images read as files: see
    `MedicalPreprocessing.pil_images_as_files`), which the files' readers record as they decode."""
    token = _DEPTH_RECORD.set(record)
    try:
        yield record
    finally:
        _DEPTH_RECORD.reset(token)


def pil_image_name(position: int) -> str:
    """How messages name the 16-bit PIL image at `position` of a preprocessing call: by the row the open
    [`record_bit_depths`] reads (a data set's row, which preprocessing alone would call "item 0"), else by
    `position`."""
    row = getattr(_DEPTH_RECORD.get(), "row", None)
    return f"{f'item {position}' if row is None else row} (a 16-bit PIL image)"


def note_bit_depth(name: Any, bits: int, image: Any = None) -> None:
    """Tell the open [`check_bit_depths`] and [`record_bit_depths`], if any, that the 16-bit image `name` was scaled
    by `bits` bits (`image`: the PIL image itself, counted once by the check however often it is preprocessed)."""
    check, record = _DEPTH_CHECK.get(), _DEPTH_RECORD.get()
    if check is not None:
        check.add(name, bits, image)
    if record is not None:
        record.add(name, bits)


class _BitDepthCheck:
    """The 16-bit images of one run (a `pipe(...)` call, a prediction, an evaluated data set) whose guessed bit depth
    (`bits_stored` unset: each image's maximum's) is not the one the model's training images all had (`trained`,
    None: nothing to check): the same stored value then reads brighter or darker than in training, which is warned
    about once for the run. Keeps counts and the first few names: flat memory however many images are read."""

    def __init__(self, medical: Any, stacklevel: int = 1) -> None:
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
            "scaled by its own maximum rounded up to whole bits (a 16-bit PIL image too, but by a model saved before "
            "2026-12-06: from [0, 65535], 16 bits): a "
            "stored value reads twice as bright as in training per bit fewer (a dark or half-dose 12-bit scan, "
            "maximum below 2048, reads at 11 bits) and half as bright per bit more. The images are read as before; "
            f"to read them as the training images were, state the depth: train with --bits_stored {trained} "
            f"(MedicalPreprocessing(bits_stored={trained})), or set it on this model: "
            f"pipe.set_preprocessing({{'medical': {{'bits_stored': {trained}}}}}) and save it (save_pretrained; "
            "predict reads the saved folder)",
            UserWarning,
            stacklevel=stacklevel + 1,
        )

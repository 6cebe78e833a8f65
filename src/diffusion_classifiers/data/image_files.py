"""Decoding image files (PNG, JPEG, TIFF, ...) the one way every reader of this package does.

An image is decoded whole when it is opened, so a truncated file fails where it is read, not later; its EXIF
Orientation is applied, as `datasets` and transformers' `load_image` apply it, so a photo taken sideways reads the
same through a file path, a `datasets.Dataset`, the pipelines, `predict` and transformers' `pipeline()`; and a
decompression bomb (PIL's warning too) is refused like a corrupt file.
"""

from __future__ import annotations

import os
import warnings
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DECODE_ERRORS", "IMAGE_EXTENSIONS", "decode_error_text", "open_image"]

# What folder listings read as images (PIL decodes them).
IMAGE_EXTENSIONS = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}

# Multi-frame files (multi-page TIFF, animated GIF) named in a warning per process; one more warning says that others
# follow, unnamed (a folder of 10,000 z-stacks would otherwise print 10,000).
MULTI_FRAME_FILES_NAMED = 5
_multi_frame_files_warned = [0]

# What opening an image may raise.
DECODE_ERRORS = (
    OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning
)


def open_image(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """The decoded image of a file path or binary file object, its EXIF Orientation applied (and its tag removed);
    of a multi-frame file its first frame, which is warned about. Raises one of `DECODE_ERRORS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            image.load()
            frames = image.n_frames if getattr(image, "is_animated", False) else 1
            transposed = ImageOps.exif_transpose(image)  # a copy, transposed or not: valid once the file is closed
    if frames > 1:
        _warn_first_frame_only(source, frames)
    return transposed


def _warn_first_frame_only(source: str | os.PathLike | IO[bytes], frames: int) -> None:
    """QA: a multi-page TIFF's and an animated GIF's other frames were dropped without a word (a multi-frame DICOM is
    read frame by frame)."""
    _multi_frame_files_warned[0] += 1
    if _multi_frame_files_warned[0] > MULTI_FRAME_FILES_NAMED + 1:
        return
    if _multi_frame_files_warned[0] > MULTI_FRAME_FILES_NAMED:
        message = "more multi-frame image files are read by their first frame only (not named further)"
    else:
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "an image file given as bytes"
        message = (
            f"{name} holds {frames} frames (a multi-page TIFF, an animated GIF): only its first is read; save each "
            "frame as a file of its own to classify every one"
        )
    warnings.warn(message, UserWarning, stacklevel=3)


def decode_error_text(error: Exception) -> str:
    """What a user should read about a decoding `error`."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"{error} Refused; raise PIL.Image.MAX_IMAGE_PIXELS to read images this large"
    return str(error)

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

# What opening an image may raise.
DECODE_ERRORS = (
    OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning
)


def open_image(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """The decoded image of a file path or binary file object, its EXIF Orientation applied (and its tag removed).
    Raises one of `DECODE_ERRORS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            image.load()
            return ImageOps.exif_transpose(image)  # a copy, transposed or not: valid once the file is closed


def decode_error_text(error: Exception) -> str:
    """What a user should read about a decoding `error`."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"{error} Refused; raise PIL.Image.MAX_IMAGE_PIXELS to read images this large"
    return str(error)

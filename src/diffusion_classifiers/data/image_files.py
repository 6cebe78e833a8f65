"""Decoding image files (PNG, JPEG, TIFF, ...) the one way every reader of this package does.

An image is decoded whole when it is opened, so a truncated file fails where it is read, not later; its EXIF
Orientation is applied, as `datasets` and transformers' `load_image` apply it, so a photo taken sideways reads the
same through a file path, a `datasets.Dataset`, the pipelines, `predict` and transformers' `pipeline()`; and a
decompression bomb (PIL's warning too) is refused like a corrupt file.
"""

from __future__ import annotations

import os
import warnings
from contextvars import ContextVar
from typing import IO, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from ..validation import first_and_more

__all__ = [
    "DECODE_ERRORS",
    "IMAGE_EXTENSIONS",
    "decode_error_text",
    "first_frames_noted",
    "note_first_frame_read",
    "open_image",
]

# What folder listings read as images (PIL decodes them).
IMAGE_EXTENSIONS = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}

# Multi-frame image files named in a warning; the rest are counted.
MULTI_FRAME_FILES_NAMED = 5

# What opening an image may raise.
DECODE_ERRORS = (
    OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning
)


def open_image(source: str | os.PathLike | IO[bytes], name: str | None = None) -> Image.Image:
    """The decoded image of a file path or binary file object (`name`: how messages name a file object, such as a
    dataset row's path), its EXIF Orientation applied (and its tag removed); of a multi-frame file (a multi-page TIFF,
    an animated GIF) its first frame, which is warned about ([`note_first_frame_read`]). Raises one of
    `DECODE_ERRORS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            image.load()
            note_first_frame_read(image, os.fspath(source) if isinstance(source, (str, os.PathLike)) else name)
            return ImageOps.exif_transpose(image)  # a copy, transposed or not: valid once the file is closed


def note_first_frame_read(image: Image.Image, name: str | None) -> None:
    """Say that only the first frame of the opened file `image` (named `name`; None: bytes without a name) is read,
    when it has several: to the open [`first_frames_noted`], else in a warning of its own, once per named file and at
    most `MULTI_FRAME_FILES_NAMED` times per process (then once that more follow, unnamed). An MPO JPEG's further
    frames are a camera's previews or depth maps, not images of their own: not noted."""
    if not getattr(image, "is_animated", False) or image.format == "MPO" or name in _warned_by_this_process:
        return
    notice = _NOTICE.get()
    if notice is not None:
        notice.add(name, image.n_frames)
        return
    if name is not None:
        _warned_by_this_process.add(name)
    _warnings_outside_a_notice[0] += 1
    if _warnings_outside_a_notice[0] <= MULTI_FRAME_FILES_NAMED:
        _warn_first_frames_read({name or "an image given as bytes": image.n_frames}, stacklevel=4)
    elif _warnings_outside_a_notice[0] == MULTI_FRAME_FILES_NAMED + 1:
        warnings.warn(
            "more multi-frame image files are read by their first frame only (not named further in this process)",
            UserWarning,
            stacklevel=3,
        )


def first_frames_noted(stacklevel: int = 1) -> _FirstFramesNotice:
    """A context manager: while it is open, the multi-frame files read are noted, and on leaving one warning names
    the first few and counts the rest (`stacklevel` 1 blames the function holding the `with`; inside another open
    one, its files join that one). The loaders, `preprocess_images`, `predict_files` and `cluster_files` open one. A
    named file warned about is not warned about again by this process (a data set's images are read again every
    epoch; DataLoader workers forked after a streaming listing checked the files inherit what it warned about)."""
    return _FirstFramesNotice(stacklevel)


class _FirstFramesNotice:
    """QA: a multi-page TIFF's and an animated GIF's other frames were dropped without a word (a multi-frame DICOM is
    read frame by frame); a warning per file would bury the others for a folder of 10,000 z-stacks."""

    def __init__(self, stacklevel: int) -> None:
        self.stacklevel, self.files, self.unnamed, self._token = stacklevel, {}, [], None

    def __enter__(self) -> _FirstFramesNotice:
        if _NOTICE.get() is None:
            self._token = _NOTICE.set(self)
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self._token is None:
            return
        _NOTICE.reset(self._token)
        self._token = None
        if kind is None and (self.files or self.unnamed):
            _warned_by_this_process.update(self.files)
            unnamed = {f"image {i} given as bytes": frames for i, frames in enumerate(self.unnamed, start=1)}
            _warn_first_frames_read({**self.files, **unnamed}, self.stacklevel + 2)  # 2: past __exit__, to its caller

    def add(self, name: str | None, frames: int) -> None:
        if name is None:
            self.unnamed.append(frames)
        else:
            self.files.setdefault(name, frames)


def _warn_first_frames_read(files: dict, stacklevel: int) -> None:
    shown = first_and_more([f"{name} ({frames} frames)" for name, frames in files.items()], MULTI_FRAME_FILES_NAMED)
    warnings.warn(
        f"{len(files)} image file(s) hold several frames (a multi-page TIFF, an animated GIF), of which only the "
        f"first is read: {shown}; save each frame as a file of its own to classify every one",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


# The open notice of the files being read, if any; the named files this process has warned about (one entry per
# multi-frame file, for the process's life), and how many warnings it gave outside a notice.
_NOTICE: ContextVar[_FirstFramesNotice | None] = ContextVar("diffusion_classifiers_first_frames", default=None)
_warned_by_this_process: set[str] = set()
_warnings_outside_a_notice = [0]


def decode_error_text(error: Exception) -> str:
    """What a user should read about a decoding `error`."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"{error} Refused; raise PIL.Image.MAX_IMAGE_PIXELS to read images this large"
    return str(error)

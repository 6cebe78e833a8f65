"""The one preprocessing contract: images in any common form in, float32 `[N, C, H, W]` tensors in `[-1, 1]` out.

[`ImagePreprocessing`] states every step (the value range of float inputs, the size and resampling, the channels,
how DICOM / 16-bit files are read); it is saved with every model (`model_index.json`, `preprocessor_config.json`)
and applied by [`preprocess_images`] in training, `pipe(...)`, evaluation and prediction alike.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..validation import check_finite_rows, first_and_more, user_stacklevel
from .dicom import MedicalPreprocessing, check_not_dicomdir, is_dicom_file
from .sixteen_bit import _PIL_16BIT_MODES, _scale_16bit, check_bit_depths, note_bit_depth, pil_image_name
from .image_files import DECODE_ERRORS, decode_error_text, first_frames_noted, open_image

__all__ = [
    "INPUT_RANGES", "RESAMPLE_MODES", "RESIZE_MODES", "ImagePreprocessing", "check_images_fit_in_memory",
    "preprocess_images", "preprocessed_as_input",
]  # fmt: skip

# The stated value ranges of float inputs. "auto" is the rule of models saved before the range was stated: [-1, 1]
# when any float input of the call is negative, else [0, 1] (decided once per call, never per image).
INPUT_RANGES = ("[-1, 1]", "[0, 1]", "auto")
# Resampling filters (torch.nn.functional.interpolate modes); bilinear and bicubic antialias when downsizing.
RESAMPLE_MODES = ("bilinear", "bicubic", "nearest")
# How an image meets `image_size`: stretched to it (the rule of models saved before the mode was stated), scaled to fit
# inside it keeping the aspect ratio and padded with `pad_value` (elongated plankton), or scaled to cover it and
# centre-cropped.
RESIZE_MODES = ("stretch", "pad", "crop")
# `normalize_background` reads an image's background as the median of this many pixels along each edge.
_BACKGROUND_BORDER = 2
# A background darker than this (on [0, 1]) is no bright field: dividing by it would saturate the image.
_MIN_BACKGROUND = 0.1

# The values of `input_data_format` (transformers' `ChannelDimension` values); `None` infers the layout.
_INPUT_DATA_FORMATS = ("channels_first", "channels_last")

# ITU-R BT.601 luma weights (the ones PIL uses for RGB -> L).
_LUMA = torch.tensor([0.299, 0.587, 0.114])
# Integer dtypes and the value that maps to +1.
_INTEGER_MAX = {torch.uint8: 255.0, torch.uint16: 65535.0, torch.bool: 1.0}
# The signed dtypes of a DICOM's pixel_array (PixelRepresentation 1): stored values, before any rescale to Hounsfield
# units.
_PIXEL_ARRAY_DTYPES = (torch.int8, torch.int16, torch.int32)
# Float inputs may overshoot their stated range by this much (rounding); the result is clamped.
_FLOAT_RANGE_TOLERANCE = 1e-3
_PIL_GRAY_MODES = {"1", "L", "LA", "La"}
_PIL_PALETTE_MODES = {"P", "PA"}
_PIL_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}  # and images of another mode with a `transparency` colour
# Channel counts a channel axis may have, and the layouts accepted (for error messages).
_CHANNEL_COUNTS = (1, 3)
_LAYOUTS = "[H, W]; one image [C, H, W] or [H, W, C]; a batch [N, C, H, W] or [N, H, W, C]; C = 1 or 3"
# Medical files (DICOM, 16-bit PNG / TIFF) are read into [0, 1] by `MedicalPreprocessing`, whatever `input_range`.
_FILE_RANGE = "[0, 1]"


# --------------------------------------------------------------------------------------------------
# The preprocessing contract
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePreprocessing:
    r"""
    Every preprocessing step, stated: saved with a model and applied by [`preprocess_images`].

    The steps, in this order: read (file paths: DICOM windowed and 16-bit files scaled by `medical`, other files
    decoded by PIL) -> scale to `[-1, 1]` (`uint8` from `[0, 255]`, `uint16` from `[0, 65535]`, `bool` from
    `{0, 1}`, float by `input_range`, DICOM / 16-bit files from `[0, 1]`) -> convert channels -> normalise the
    background (when asked) -> resize.

    Args:
        image_size (`int` or `Tuple[int, int]`, *optional*): `int` (square) or `(height, width)`; `None` keeps the
            size (then all images must have one size). `resize_mode` says whether the aspect ratio is kept.
        num_channels (`int`, *optional*): 1 or 3. 1 -> 3 repeats the channel; 3 -> 1 takes the ITU-R 601 luma
            (0.299 R + 0.587 G + 0.114 B, as PIL's `convert("L")`). `None` keeps the channels when all images agree
            and gives 3 when grayscale and color images are mixed.
        input_range (`str`, *optional*, defaults to `"[-1, 1]"`): the value range of float inputs (arrays, tensors,
            PIL mode `F`): `"[-1, 1]"` (the library's own tensors: `LabeledImages.images`, `pipe.preprocess(...)`,
            which therefore pass through unchanged), `"[0, 1]"` (rescaled by `2 x - 1`), or `"auto"`, the rule of
            models saved before the range was stated (`[-1, 1]` when any float input of the call is negative, else
            `[0, 1]`, decided once per call). A float image outside the range raises `ValueError` naming it.
        resample (`str`, *optional*, defaults to `"bilinear"`): `"bilinear"`, `"bicubic"` (both antialiased when
            downsizing, as PIL does) or `"nearest"`.
        medical ([`MedicalPreprocessing`] or `dict`, *optional*): how DICOM files (`.dcm`, `.dicom`, `.dic`, `.ima`,
            or another or no extension and a 'DICM' header) and 16-bit PNG / TIFF given as paths are read: the DICOM
            windows (one channel each) and the bit depth. `None`: `MedicalPreprocessing(pil_images_as_files=False)`
            (each DICOM's own window, 16-bit files by their maximum's bit depth, 16-bit PIL images as contracts saved
            without `medical` read them). Without a stated `bits_stored`, 16-bit images (files, and
            PIL images: as files, or from `[0, 65535]` where `pil_images_as_files` is off) scaled by a depth other
            than the one recorded for the training images
            (`guessed_bits_stored`) get one `UserWarning` per call; their values are unchanged.
        resize_mode (`str`, *optional*, defaults to `"stretch"`): how an image meets `image_size`: `"stretch"` to it
            (the aspect ratio is not kept), `"pad"` (scaled to fit inside it keeping the aspect ratio, centred, the
            rest filled with `pad_value`) or `"crop"` (scaled to cover it keeping the aspect ratio, centre-cropped).
        pad_value (`float`, *optional*, defaults to -1.0): the fill of `"pad"`, on the output scale `[-1, 1]`: -1
            black, 1 white (the background of dark organisms imaged on white).
        normalize_background (`bool`, *optional*, defaults to `False`): divide each image, channel by channel on the
            `[0, 1]` scale, by its background level (the median of the pixels within 2 of its edges, before any
            resize) and clip, so that the background becomes white whatever the instrument's illumination: a grey
            FlowCam field and a white in-situ camera field then look alike. Meant for bright-field images (dark
            objects on a light background); an image whose background is darker than 0.1 raises `ValueError`.
            Float tensors at the contract's size and channels read as `[-1, 1]`, its own output (`LabeledImages.images`,
            `pipe.preprocess(...)`), are taken as normalised already (the normalisation is not idempotent); pictures
            (files, PIL images, arrays, tensors of another size) are normalised.
        transparency_fill (`float`, *optional*): the grey level, on the output scale `[-1, 1]` (-1 black, 1 white),
            that the transparent pixels of PIL images and image files (alpha, a palette's or a PNG's transparent
            colour) are composited onto, before any other step, in 8 bits as the image's own pixels are (the level
            rounded to the nearest of 256: 0.0 reads as 1/255). `None` (the default, and the rule of every contract
            saved before the option existed) discards alpha: a transparent pixel reads as the colour stored under it
            (a cutout's hidden background), with one `UserWarning` per process when an image has such pixels.
    """

    image_size: int | tuple[int, int] | None = None
    num_channels: int | None = None
    input_range: str = "[-1, 1]"
    resample: str = "bilinear"
    medical: MedicalPreprocessing | None = None
    resize_mode: str = "stretch"
    pad_value: float = -1.0
    normalize_background: bool = False
    transparency_fill: float | None = None

    def __post_init__(self) -> None:
        size = _check_image_size(self.image_size)
        object.__setattr__(self, "image_size", size[0] if size is not None and size[0] == size[1] else size)
        if self.num_channels not in (None, 1, 3):
            raise ValueError(f"num_channels: expected 1, 3 or None, got {self.num_channels!r}")
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"input_range: expected one of {list(INPUT_RANGES)}, got {self.input_range!r}")
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample: expected one of {list(RESAMPLE_MODES)}, got {self.resample!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode: expected one of {list(RESIZE_MODES)}, got {self.resize_mode!r}")
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, (int, float)) or not -1 <= self.pad_value <= 1:
            raise ValueError(f"pad_value: expected a number in [-1, 1] (the output scale), got {self.pad_value!r}")
        if not isinstance(self.normalize_background, bool):
            raise ValueError(f"normalize_background: expected True or False, got {self.normalize_background!r}")
        fill = self.transparency_fill
        if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float)) or not -1 <= fill <= 1):
            raise ValueError(
                f"transparency_fill: expected None or a number in [-1, 1] (the output scale: -1 black, 1 white), "
                f"got {fill!r}"
            )
        if isinstance(self.medical, dict):
            object.__setattr__(self, "medical", MedicalPreprocessing.from_dict(self.medical))
        elif self.medical is not None and not isinstance(self.medical, MedicalPreprocessing):
            raise ValueError(
                f"medical: expected a MedicalPreprocessing, a dict or None, got {type(self.medical).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: what `model_index.json` and `preprocessor_config.json` store."""
        config = asdict(replace(self, medical=None))
        config["image_size"] = list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size
        config["medical"] = None if self.medical is None else self.medical.to_dict()
        if self.resize_mode == "stretch" and self.pad_value == -1.0:  # saved as before the resize mode existed
            del config["resize_mode"], config["pad_value"]
        if not self.normalize_background:  # saved as before the option existed
            del config["normalize_background"]
        if self.transparency_fill is None:  # saved as before the option existed
            del config["transparency_fill"]
        return config

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImagePreprocessing:
        """The inverse of [`to_dict`]; unknown keys raise `ValueError` listing the known ones."""
        if isinstance(config, ImagePreprocessing):
            return config
        if not isinstance(config, dict):
            raise ValueError(f"preprocessing: expected a dict or an ImagePreprocessing, got {type(config).__name__}")
        known = tuple(field.name for field in fields(cls))
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"preprocessing: unknown keys {unknown}; expected some of {list(known)}")
        image_size = config.get("image_size")
        return cls(**{**config, "image_size": tuple(image_size) if isinstance(image_size, list) else image_size})

    @property
    def fit(self) -> dict[str, Any]:
        """`resize_mode`, `pad_value`, `normalize_background` and, where set, `transparency_fill`: the keywords the
        loaders take to read images as this contract does (a contract without the fill gives the keywords it gave
        before the option existed)."""
        fit = {name: getattr(self, name) for name in ("resize_mode", "pad_value", "normalize_background")}
        return fit if self.transparency_fill is None else {**fit, "transparency_fill": self.transparency_fill}

    def for_its_output(self) -> "ImagePreprocessing":
        """The contract that reads this contract's own output (`[-1, 1]` tensors at its size and channels, as the
        loaders give them, in its input range: `preprocessed_as_input`) unchanged: the same without the background
        normalisation, which is not idempotent (a second pass divides by the border median of the already normalised
        image, below 1, again), and reading `"auto"` as `"[-1, 1]"`, which it is (review: `"auto"`'s rule read a
        batch of bright images, none below 0, as `[0, 1]`, and rescaled it)."""
        input_range = "[-1, 1]" if self.input_range == "auto" else self.input_range
        return replace(self, normalize_background=False, input_range=input_range)

    @property
    def loader_kwargs(self) -> dict[str, Any]:
        """The keywords `load_image_classification_data` and `streaming_image_classification_data` take to read data
        as this contract does (size, channels, DICOM reading and `fit`): how each image is read, not how the data is
        carved into train / val / test (the loaders' defaults then, not the model's training run's: a pipeline's
        `loader_kwargs` adds the carving its `split_record` records)."""
        medical = self.medical_or_default  # a contract without `medical` reads 16-bit PIL images as it did
        return {"image_size": self.image_size, "num_channels": self.num_channels, "medical": medical, **self.fit}

    def summary(self) -> str:
        """How images are read, in words, for reports, cards and logs: `32 px (pad), 3 channels, DICOM windows
        ['brain', 'subdural', 'bone']`; the pad fill where not -1 (`32 px (pad, fill 1.0)`), the background
        normalisation, the windows and the bit depth where stated."""
        if self.image_size is None:
            size = "each image's own size"
        else:
            side = self.image_size if isinstance(self.image_size, int) else "x".join(map(str, self.image_size))
            fill = f", fill {float(self.pad_value)}" if self.resize_mode == "pad" and self.pad_value != -1.0 else ""
            size = f"{side} px ({self.resize_mode}{fill})"
        channels = {1: "1 channel", 3: "3 channels"}.get(self.num_channels, "each image's own channels")
        stated = ["background normalised to white"] if self.normalize_background else []
        if self.transparency_fill is not None:
            stated += [f"transparent pixels composited onto {float(self.transparency_fill)}"]
        medical = self.medical_or_default
        windows = medical.to_dict()["windows"]
        stated += [f"DICOM windows {windows}"] if windows != ["file"] else []
        stated += ["DICOM files through each file's own window"] if windows == ["file"] and medical.dicom_files else []
        stated += [f"16-bit files at {medical.bits_stored} bits"] if medical.bits_stored is not None else []
        return ", ".join([size, channels, *stated])

    @property
    def medical_or_default(self) -> MedicalPreprocessing:
        """`medical`, or when unset `MedicalPreprocessing()` with 16-bit PIL images read as contracts saved without
        `medical` read them (`pil_images_as_files=False`)."""
        return self.medical if self.medical is not None else MedicalPreprocessing(pil_images_as_files=False)

    def __call__(self, images: Any, input_data_format: str | None = None) -> torch.Tensor:
        """[`preprocess_images`] with this contract."""
        return preprocess_images(images, input_data_format=input_data_format, preprocessing=self)


def fit_options(
    resize_mode: str = "stretch",
    pad_value: float = -1.0,
    normalize_background: bool = False,
    transparency_fill: float | None = None,
) -> dict:
    """The contract's options for how an image meets its size and background, as keyword arguments, checked now
    (`ValueError` naming a bad one) so that loaders refuse them before reading any file."""
    return ImagePreprocessing(
        resize_mode=resize_mode, pad_value=pad_value, normalize_background=normalize_background,
        transparency_fill=transparency_fill,
    ).fit  # fmt: skip


def preprocessed_as_input(images: torch.Tensor, input_range: str) -> torch.Tensor:
    """A contract's own `[-1, 1]` output as images to give it again (inside a pipeline's
    `reading_preprocessed_images()`, whose contract, `for_its_output`, reads them by its `input_range`): in `[0, 1]`
    for `"[0, 1]"` (review: predict gave them as `[-1, 1]`, and every batch was refused), else as they are."""
    return (images + 1.0) / 2.0 if input_range == "[0, 1]" else images


def check_images_fit_in_memory(num_images: int, reading: ImagePreprocessing) -> None:
    """Refuse, before any image is read, an `image_size` at which `num_images` float32 images (of one channel at
    least) would take more than this machine's memory (QA: `--image_size 100000` ended in the allocator's traceback,
    and 2048 px of the 1,797 digits would have taken 30 GB before failing)."""
    if reading.image_size is None or num_images == 0:
        return
    size = reading.image_size
    height, width = (size, size) if isinstance(size, int) else size
    channels = reading.num_channels or 1
    needed, memory = num_images * channels * height * width * 4, _physical_memory()
    if memory is None or needed <= memory:
        return
    raise ValueError(
        f"image_size {size}: {num_images} images of {channels} x {height} x {width} float32 values take "
        f"{needed / 2**30:.1f} GiB, over this machine's {memory / 2**30:.1f} GiB of memory; expected a smaller "
        "image_size (--image_size), or the images read a batch at a time (--streaming)"
    )


def _physical_memory() -> int | None:
    """This machine's memory in bytes; None where the system does not tell it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def preprocess_images(
    images: Any,
    image_size: int | tuple[int, int] | None = None,
    num_channels: int | None = None,
    input_data_format: str | None = None,
    *,
    preprocessing: ImagePreprocessing | dict | None = None,
) -> torch.Tensor:
    r"""
    Turn images into a float32 CPU tensor `[N, C, H, W]` with values in `[-1, 1]`, as `preprocessing` states.

    This is the one preprocessing path of the library: loaders use it for training data and pipelines, the
    transformers image processor and `diffusion-classifiers predict` use it on user input. Every image is processed
    on its own, by the same stated rules, so a list and the same images as one batch give identical tensors.

    Each input is read one way, by its type and number of dimensions (the same for numpy arrays and torch tensors):

    | input | read as | channels |
    | --- | --- | --- |
    | file path (`str`, `os.PathLike`) | DICOM (`.dcm`, `.dicom`, `.dic`, `.ima`, or another or no extension and a 'DICM' header, one image per frame) and 16-bit PNG / TIFF through `preprocessing.medical`, other files by PIL | DICOM: one per window |
    | PIL image | one image | its mode: `1`/`L`/`LA`/`I`/`I;16*`/`F` give 1, every other mode is converted to `RGB` |
    | 2-D array or tensor | one image `[H, W]` | 1 |
    | 3-D array or tensor | one image `[C, H, W]` or `[H, W, C]`, never several images | C = 1 or 3 |
    | 4-D array or tensor | a batch `[N, C, H, W]` or `[N, H, W, C]` | C = 1 or 3 |
    | list or tuple | the concatenation of its items, each read as above | |

    With `input_data_format=None` the channel axis of a 3-D or 4-D input is inferred as in transformers'
    `infer_channel_dimension_format`: channels first when the first (3-D) or second (4-D) axis is 1 or 3 and the
    last is not, channels last when the reverse holds. When both have size 1 or 3 (`[3, 32, 3]`, `[1, H, 1]`) the
    input is refused unless `input_data_format` says which; when neither has (`[5, H, W]`, `[H, W, 4]`) it is
    refused (pass N grayscale images as `[N, 1, H, W]`). Each error names the image and the accepted layouts.

    Args:
        images (`str`, `os.PathLike`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a sequence of them):
            one image or a batch, or a sequence of them (a list, a datasets column; each may have its own size and
            type), read as in the table above.
            PIL modes: `I`/`I;16*` are read as their files are, by their bit depth (the stated `medical.bits_stored`,
            else their maximum's; `medical.pil_images_as_files`, as every new contract says), else from `[0, 65535]` (or
            the stated depth), `F` is one float channel; transparent pixels are composited onto the contract's
            `transparency_fill`, or without one alpha is discarded (the colour stored under them is read). Values:
            `uint8` is scaled from `[0, 255]`, `uint16` from `[0, 65535]` (from `[0, 2^bits_stored - 1]` where
            `medical.bits_stored` is stated, else with a warning where the contract reads medical files), `bool` from
            `{0, 1}`, float data by the contract's `input_range` (see [`ImagePreprocessing`]). Float values outside
            that range, other integer dtypes (int16: a DICOM's `pixel_array`, not Hounsfield units), NaN and inf raise
            `ValueError`. A contract of several DICOM windows
            warns about pictures (PIL images, `uint8` / `bool` arrays and tensors, and float images of fewer channels
            than its windows): they have no Hounsfield units to window, and are read as given. A 1-channel contract
            warns about a `[3, H, W]` array or tensor whose layout is inferred: it is read as one colour image, not as
            3 grey ones.
        image_size (`int` or `Tuple[int, int]`, *optional*), num_channels (`int`, *optional*):
            shorthand for `preprocessing=ImagePreprocessing(image_size, num_channels, input_range="auto")`, the
            rule of earlier versions; not together with `preprocessing`.
        input_data_format (`str`, *optional*):
            `"channels_first"` (`[C, H, W]`, `[N, C, H, W]`) or `"channels_last"` (`[H, W, C]`, `[N, H, W, C]`)
            for every 3-D and 4-D array or tensor (transformers' `ChannelDimension` values are accepted); `None`
            infers it (see above). PIL images, paths and 2-D inputs need none.
        preprocessing ([`ImagePreprocessing`] or `dict`, *optional*): the contract (a saved model's
            `pipe.preprocessing`); default: the shorthand above.

    Returns:
        `torch.Tensor`: float32 `[N, C, H, W]` in `[-1, 1]`.

    Raises:
        `ValueError`: empty input, an unreadable file, an unsupported shape or dtype, an ambiguous layout, a channel
            count other than 1 or 3, NaN/inf, float values outside `input_range`, or different sizes with
            `image_size=None`. The message names the index of the offending image in the flattened batch.
    """
    contract = _resolve_contract(preprocessing, image_size, num_channels)
    data_format = _check_data_format(input_data_format)
    items = _as_item_list(images)
    read_already = [_is_contract_output(item, data_format, contract) for item in items]
    # 16-bit images read unlike the training images, multi-frame files read by their first frame: one warning each
    with check_bit_depths(contract.medical, stacklevel=2), first_frames_noted(stacklevel=2):
        batches = _to_unit_batches(items, data_format, contract)
    offsets = np.cumsum([0] + [len(batch) for batch in batches])
    for batch, offset in zip(batches, offsets):
        if batch.shape[1] not in _CHANNEL_COUNTS:
            raise ValueError(f"expected 1 or 3 channels, got {batch.shape[1]} in image {offset} of batch")
    num_channels = contract.num_channels
    if num_channels is None:
        num_channels = 3 if any(batch.shape[1] == 3 for batch in batches) else 1
    batches = [_convert_channels(batch, num_channels) for batch in batches]
    if contract.normalize_background:
        batches = [
            batch if done else _normalize_background(batch, offset)
            for batch, offset, done in zip(batches, offsets, read_already)
        ]
    target_size = _check_image_size(contract.image_size)
    if target_size is None:
        _check_same_size(batches, offsets)
    else:
        batches = [_fit(batch, target_size, contract) for batch in batches]
    return torch.cat(batches).clamp_(-1.0, 1.0).contiguous()


def _resolve_contract(preprocessing: Any, image_size: Any, num_channels: Any) -> ImagePreprocessing:
    if preprocessing is None:
        return ImagePreprocessing(image_size, num_channels, input_range="auto")
    if image_size is not None or num_channels is not None:
        raise ValueError(
            "preprocess_images: pass either preprocessing= or image_size= / num_channels=, not both "
            f"(got preprocessing and image_size={image_size!r}, num_channels={num_channels!r})"
        )
    return ImagePreprocessing.from_dict(preprocessing)


# --------------------------------------------------------------------------------------------------
# Items -> [n, C, H, W] in [-1, 1]
# --------------------------------------------------------------------------------------------------


def _check_data_format(input_data_format: Any) -> str | None:
    """`input_data_format` as `"channels_first"` / `"channels_last"` / `None` (a `ChannelDimension` is a str)."""
    if input_data_format is None:
        return None
    value = getattr(input_data_format, "value", input_data_format)
    if value not in _INPUT_DATA_FORMATS:
        raise ValueError(f"input_data_format: expected 'channels_first', 'channels_last' or None, got {value!r}")
    return value


def _is_contract_output(item: Any, data_format: str | None, contract: ImagePreprocessing) -> bool:
    """Whether `item` is the contract's own output: a float tensor `[C, H, W]` / `[N, C, H, W]` at its size and
    channels, read as `[-1, 1]` (`LabeledImages.images`, `pipe.preprocess(...)`), which the background normalisation,
    not idempotent, leaves as it is (QA: `pipe(test.images)` of a padded plankton model refused 21 of 60 images,
    their pad a dark border, and changed the others by up to 0.02)."""
    if not (isinstance(item, torch.Tensor) and item.is_floating_point() and item.ndim in (3, 4)):
        return False
    if contract.input_range != "[-1, 1]" or contract.image_size is None or data_format == "channels_last":
        return False
    return tuple(item.shape[-3:]) == (contract.num_channels, *_check_image_size(contract.image_size))


def _as_item_list(images: Any) -> list:
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor, str, os.PathLike)):
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, bytes):  # a list, a tuple, a datasets `Column`
        if len(images) == 0:
            raise ValueError("preprocess_images: got an empty list; expected at least one image")
        return list(images)
    raise ValueError(
        "preprocess_images: expected a file path, PIL image, numpy array, torch tensor or a sequence of them, got "
        f"{_describe(images)}"
    )


def _to_unit_batches(items: list, data_format: str | None, contract: ImagePreprocessing) -> list[torch.Tensor]:
    """Each item -> float32 [n, C, H, W] in [-1, 1], validated (layout, dtype, NaN/inf, range)."""
    batches, ranges, offset, wide_arrays, pictures, full_range_pil = [], [], 0, [], [], []
    windowed = contract.medical_or_default.reads_dicom_only  # as `_read_path`: image files are refused there
    stated_bits = contract.medical_or_default.bits_stored
    for position, item in enumerate(items):
        value_range, item_format = contract.input_range, data_format
        if contract.input_range == "auto" and data_format is None:
            _warn_read_otherwise_than_v0_1_0(item, position)
        elif contract.num_channels == 1 and data_format is None:
            _warn_colour_array_to_grey_model(item, position)
        if isinstance(item, (str, os.PathLike)):  # read as [F, C, H, W] (or a PIL image), whatever the arrays' layout
            item, value_range, item_format = _read_path(item, position, contract), _FILE_RANGE, "channels_first"
        elif _reads_as_its_file(item, contract):  # a 16-bit PIL image: [1, 1, H, W] in [0, 1], as its file
            item, value_range, item_format = _scaled_as_its_file(item, position), _FILE_RANGE, "channels_first"
        pixels = item
        if isinstance(item, Image.Image):
            pixels, item_format = _pil_to_array(item, contract.transparency_fill), "channels_last"  # PIL's layout
        batch = _item_to_nchw(pixels, position, offset, item_format)
        if batch.shape[0] == 0 or batch.shape[2] == 0 or batch.shape[3] == 0:
            raise ValueError(f"preprocess_images: item {position} is empty (shape {tuple(batch.shape)})")
        if batch.dtype == torch.uint16 and stated_bits is not None:  # arrays and PIL images, as 16-bit files
            batch, value_range = _scaled_by_stated_depth(batch, stated_bits, position), "[0, 1]"
        elif batch.dtype == torch.uint16 and not isinstance(item, Image.Image):  # a PIL image may be a datasets row
            wide_arrays.append(position)
        elif isinstance(item, Image.Image) and item.mode in _PIL_16BIT_MODES:  # read from [0, 65535]: 16 bits
            note_bit_depth(pil_image_name(position), 16, item)
            if max(item.getextrema()) < 2**15:  # its file reads at fewer bits, brighter
                full_range_pil.append(position)
        if windowed and (kind := _picture_kind(item, batch, len(contract.medical_or_default.windows))) is not None:
            pictures.append(f"{position} ({kind})")
        batches.append(_check_dtype(batch, offset, contract))
        ranges.append(value_range)
        offset += len(batch)
    if wide_arrays and contract.medical is not None:
        _warn_wide_arrays(wide_arrays, contract.medical)
    if full_range_pil:
        _warn_pil_images_read_full_range(full_range_pil)
    if pictures:
        _warn_pictures(pictures, contract)
    if "auto" in ranges:
        guessed = [batch for batch, r in zip(batches, ranges) if r == "auto" and batch.is_floating_point()]
        signed = any(bool(batch.min() < 0) for batch in guessed)
        ranges = [("[-1, 1]" if signed else "[0, 1]") if r == "auto" else r for r in ranges]
    _warn_unsigned_floats([batch for batch, r in zip(batches, ranges) if r == "[-1, 1]" and batch.is_floating_point()])
    offsets = np.cumsum([0] + [len(batch) for batch in batches])
    return [_scale_to_unit_range(batch, offset, r, contract) for batch, offset, r in zip(batches, offsets, ranges)]


UNSIGNED_FLOATS_WARNING = "preprocess_images: float images with no negative value"  # how its message starts


@contextmanager
def images_in_their_stated_range() -> Iterator[None]:
    """A block whose float images are in the contract's `input_range` by construction (the frames `predict` read from
    files, the loaders' own output): without `_warn_unsigned_floats`'s guess that bright ones are `[0, 1]` arrays,
    whose advice would misread them (QA: it warned on every bright DICOM slice `predict` and `evaluate` read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(UNSIGNED_FLOATS_WARNING))
        yield


def _warn_read_otherwise_than_v0_1_0(item: Any, position: int) -> None:
    """A numpy `[3, H, W]` array whose last axis is > 4, given to a model saved by v0.1.0 (or the keyword form), which
    read it as 3 grey images `[N, H, W]`: it is one colour image, channels first, now (QA: old batch code got one
    prediction for three images, without a word). Other counts than 1 and 3 are refused by the layout check."""
    if isinstance(item, np.ndarray) and _three_planes(item):
        warnings.warn(
            f"preprocess_images: item {position}, a numpy array of shape {item.shape}, is read as one colour image, "
            "channels first; v0.1.0 read it as 3 grey images [N, H, W]. Pass those as an "
            "[N, 1, H, W] array or a list of [H, W] arrays",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _three_planes(item: Any) -> bool:
    """Whether an array or tensor is `[3, H, W]` with a last axis too long for channels: one colour image channels
    first, or 3 grey images `[N, H, W]`."""
    return item.ndim == 3 and item.shape[0] == 3 and item.shape[-1] > 4


def _warn_colour_array_to_grey_model(item: Any, position: int) -> None:
    """A numpy array or tensor `[3, H, W]` given to a 1-channel model: read as one colour image, channels first, made
    grey, though it is as likely 3 grey images `[N, H, W]` (QA: `pipe.encode(test_images[:3])` gave one row, where 2
    or 4 images are refused, since their count is no channel count)."""
    if isinstance(item, (np.ndarray, torch.Tensor)) and _three_planes(item):
        kind = "a numpy array" if isinstance(item, np.ndarray) else "a tensor"
        warnings.warn(
            f"preprocess_images: item {position}, {kind} of shape {tuple(item.shape)}, is read as one colour image, "
            "channels first, made grey for this 1-channel model. If it holds 3 grey images, pass them as an "
            "[N, 1, H, W] array or a list of [H, W] arrays; input_data_format='channels_first' says it is one image",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _warn_unsigned_floats(floats: list[torch.Tensor]) -> None:
    """Float images read as [-1, 1] none of which holds a negative value: most likely [0, 1] images (an array / 255),
    which would be read brighter than they are (QA: 27% of a model's decisions changed), so say how to pass them.
    Such images in [-1, 1] are all brighter than mid-grey, which real batches rarely are. Values above 1 (0..255
    floats) are left to the range error, which says how to pass them (QA: this advice came first). The message is
    the same for every call, so Python's warning filter shows it once, not once per batch of a long evaluation."""
    if not floats:
        return
    low, high = min(float(batch.min()) for batch in floats), max(float(batch.max()) for batch in floats)
    if low < 0 or high == low or high > 1.0 + _FLOAT_RANGE_TOLERANCE:  # above 1: refused next, by its own message
        return
    warnings.warn(
        f"{UNSIGNED_FLOATS_WARNING} are read as [-1, 1], this model's input_range, "
        "so 0 is mid-grey, not black. If they are [0, 1] images (e.g. an array "
        "divided by 255), pass them as uint8 arrays or PIL images, or state the range: "
        "pipe.set_preprocessing({'input_range': '[0, 1]'}) (a transformers image processor: "
        "processor.preprocessing['input_range'] = '[0, 1]'); if they are [-1, 1] images all brighter than mid-grey, "
        "they are read as intended",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def _read_path(path: Any, position: int, contract: ImagePreprocessing) -> Any:
    """A file as the contract reads it: DICOM / 16-bit through `medical` (float `[F, C, H, W]` in [0, 1]), other
    image files as a PIL image."""
    if not Path(path).is_file():
        folder = "a folder; expected an image or DICOM file (predict reads folders)"
        why = folder if Path(path).is_dir() else "no such file"
        raise ValueError(
            f"preprocess_images: cannot read item {position}, got {type(path).__name__} {str(path)!r}: {why}"
        )
    path = Path(path)
    check_not_dicomdir(path, f"preprocess_images: item {position}, ")
    if is_dicom_file(path):
        return contract.medical_or_default.read(path)
    windows = contract.medical_or_default.windows
    if contract.medical_or_default.reads_dicom_only:
        raise ValueError(
            f"preprocess_images: item {position}, {path}, is not DICOM; expected DICOM files, read through the "
            f"contract's {len(windows)} DICOM windows (an image file's grey would be copied into each)"
        )
    try:
        image = open_image(path)
    except DECODE_ERRORS as error:
        raise ValueError(
            f"preprocess_images: cannot decode image file {path} (item {position}): {decode_error_text(error)}"
        ) from error
    return image if image.mode not in _PIL_16BIT_MODES else contract.medical_or_default.read(path)


def _reads_as_its_file(item: Any, contract: ImagePreprocessing) -> bool:
    """A 16-bit PIL image read by its guessed bit depth, as the file it was decoded from is (`pil_images_as_files`; a
    `datasets` row, `Image.open` of a PNG); a stated `bits_stored` scales it as every 16-bit image, further on."""
    medical = contract.medical_or_default
    return (
        isinstance(item, Image.Image) and item.mode in _PIL_16BIT_MODES and medical.pil_images_as_files
        and medical.bits_stored is None
    )  # fmt: skip


def _scaled_as_its_file(image: Image.Image, position: int) -> np.ndarray:
    """A 16-bit PIL image as its file is read: float32 `[1, 1, H, W]` in `[0, 1]` by its maximum's bit depth, told to
    the open bit depth check and record."""
    name = pil_image_name(position)
    values, bits = _scale_16bit(image, None, name)
    note_bit_depth(name, bits, image)
    return values[None, None]


def _scaled_by_stated_depth(batch: torch.Tensor, bits_stored: int, position: int) -> torch.Tensor:
    """16-bit values `[n, C, H, W]` as float32 in [0, 1], scaled by the stated `bits_stored` as 16-bit files are
    (a 12-bit array's 4095 is white, not 1/16 grey); a value the depth cannot hold is refused naming the item."""
    values = batch.to(torch.float32)  # exact: 16-bit integers fit float32's 24-bit mantissa
    highest = int(values.max())
    if highest >= 2**bits_stored:
        raise ValueError(
            f"preprocess_images: item {position}: maximum value {highest} does not fit bits_stored={bits_stored} "
            f"(max {2**bits_stored - 1}), the stated bit depth of this contract's 16-bit images"
        )
    return values / (2**bits_stored - 1)


def _warn_wide_arrays(positions: list[int], medical: MedicalPreprocessing) -> None:
    """Said of the DICOM reading only where the model was trained on DICOM files (QA: a digits model's warning spoke
    of DICOM windows)."""
    shown = first_and_more([str(position) for position in positions], 5)
    if medical.dicom_files:
        reads = f"{medical} (DICOM windows, the bit depth of 16-bit PNG / TIFF)"
        bypassed = "a DICOM's rescale, window and MONOCHROME1 inversion, a 12-bit image's depth"
    else:
        reads, bypassed = "their bit depth (a 16-bit PNG / TIFF's stated or measured one)", "a 12-bit image's depth"
    warnings.warn(
        f"preprocess_images: item(s) {shown} are uint16 arrays, scaled from [0, 65535]; this model reads its image "
        f"files through {reads}, which an array of pixel values bypasses ({bypassed}): pass the file paths to read "
        "them as the model's training images were",
        UserWarning,
        stacklevel=4,
    )


def _warn_pil_images_read_full_range(positions: list[int]) -> None:
    """16-bit PIL images read from [0, 65535] by a contract saved before they were read as their files (or without
    `medical`), where their files read at fewer bits: a `datasets` row and its PNG file then read otherwise (QA: a
    head fitted over such a model scored 66.7% on the rows, 50% on the same files), which is said."""
    shown = first_and_more([str(position) for position in positions], 5)
    warnings.warn(
        f"preprocess_images: item(s) {shown} are 16-bit PIL images read from [0, 65535], as this model's contract "
        "says (saved before 2026-12-06, or without medical), where the same images given as files are read by their "
        "bit depth (brighter: a 12-bit image 16 times). If the model's training images were read as files (image "
        "files, or a datasets source by this version of the library), read these alike: "
        "pipe.set_preprocessing({'medical': {'pil_images_as_files': True}}) and save it",
        UserWarning,
        stacklevel=4,
    )


def _picture_kind(item: Any, batch: torch.Tensor, num_windows: int) -> str | None:
    """What `item` is, when it is a picture (8- or 16-bit PIL image, uint8 or bool array or tensor): pixel values
    with no Hounsfield units, or float data of fewer channels than the model's `num_windows` (one grey image, not
    windowed one window per channel: QA, it was copied into the 3 windows without a word); None for other float data
    (windowed values, the library's own tensors) and uint16 arrays (warned about by `_warn_wide_arrays`)."""
    if isinstance(item, Image.Image):
        return f"a PIL image of mode {item.mode}" if item.mode != "F" else None
    if batch.dtype in (torch.uint8, torch.bool):
        return f"a {str(batch.dtype).removeprefix('torch.')} {type(item).__name__}"
    if batch.is_floating_point() and batch.shape[1] < num_windows:
        return f"a {batch.shape[1]}-channel float {type(item).__name__}"
    return None


def _warn_pictures(pictures: list[str], contract: ImagePreprocessing) -> None:
    """Pictures given to a contract of several DICOM windows: warned, not refused (as a file path is), since they may
    be slices already windowed into channels, or datasets rows read so in training too."""
    shown = first_and_more(pictures, 5)
    warnings.warn(
        f"preprocess_images: item(s) {shown} are pictures, not DICOM: a picture has no Hounsfield units to window, "
        f"so it is read as it is (a grey one copied into every channel), but this model reads DICOM files through "
        f"{_windows_text(contract.medical_or_default)}, one channel each. Pass the DICOM file paths, or window them "
        f"in memory: {_windowing_code(contract)}. Pictures already windowed so (one window per channel, in this "
        "order) are read as intended",
        UserWarning,
        stacklevel=4,
    )


def _windows_text(medical: MedicalPreprocessing) -> str:
    """How `medical` reads a DICOM file, for messages."""
    windows = medical.to_dict()["windows"]
    if windows == ["file"]:
        return "each file's own window (its WindowCenter / WindowWidth)"
    return f"the contract's {len(windows)} DICOM window{'s' if len(windows) > 1 else ''} {windows}"


def _windowing_code(contract: ImagePreprocessing) -> str:
    """The in-memory equivalent of reading a DICOM file at `path` by `contract` (functions of the package root)."""
    medical = contract.medical_or_default
    fill = f", padding_fill={medical.padding_fill}" if medical.padding_fill != 0.0 else ""
    scale = " * 2 - 1" if contract.input_range == "[-1, 1]" else ""  # window_channels gives [0, 1]
    return f"`window_channels(read_dicom(path), {list(medical.windows)}{fill}){scale}`"


def _hounsfield_hint(contract: ImagePreprocessing) -> str:
    """The end of the out-of-range error for a contract of named DICOM windows: Hounsfield units are not windowed."""
    if contract.medical_or_default.to_dict()["windows"] == ["file"]:
        return ""
    return (
        "; for Hounsfield units (`read_dicom(path).values`), pass the DICOM file paths, which this model windows, or "
        f"window them in memory: {_windowing_code(contract)}"
    )


def _item_to_nchw(item: Any, position: int, offset: int, data_format: str | None) -> torch.Tensor:
    """One list item (array or tensor; a PIL image is an array by then) -> a tensor [n, C, H, W] of its dtype."""
    if isinstance(item, np.ndarray):
        item = _numpy_to_tensor(item)
    elif isinstance(item, torch.Tensor):
        item = item.detach().cpu()
    else:
        raise ValueError(
            f"preprocess_images: item {position} is {_describe(item)}; expected a file path, PIL image, numpy array "
            "or torch tensor"
        )
    if item.ndim == 2:
        return item[None, None]
    if item.ndim not in (3, 4):
        raise ValueError(
            f"preprocess_images: item {position} is {_describe(item)}; expected one of the layouts {_LAYOUTS}"
        )
    batch = item if item.ndim == 4 else item[None]  # a 3-D item is one image, never several
    if _is_channels_last(batch, item.ndim, offset, data_format):
        batch = batch.permute(0, 3, 1, 2)
    return batch


def _is_channels_last(batch: torch.Tensor, ndim: int, offset: int, data_format: str | None) -> bool:
    """The layout of an item of `ndim` 3 or 4 (as a `batch` [n, ., ., .]): given, or inferred when unambiguous."""
    if data_format is not None:
        return data_format == "channels_last"
    first, last = batch.shape[1] in _CHANNEL_COUNTS, batch.shape[3] in _CHANNEL_COUNTS
    if first != last:
        return last
    i, j = (0, 2) if ndim == 3 else (1, 3)
    shape = tuple(batch.shape[1:]) if ndim == 3 else tuple(batch.shape)
    where = f"image {offset}" if ndim == 3 else f"images {offset}..{offset + len(batch) - 1}"
    if first:
        raise ValueError(
            f"cannot tell the channel axis of {where} of batch, shape {shape}: axes {i} and {j} both have size 1 "
            f"or 3. Pass input_data_format='channels_first' or 'channels_last'; accepted layouts: {_LAYOUTS}"
        )
    hint = " (a 3-D input is one image: pass N grayscale images as a 4-D [N, 1, H, W] batch)" if ndim == 3 else ""
    raise ValueError(
        f"expected 1 or 3 channels, got {shape[i]} on axis {i} and {shape[j]} on axis {j} of {where} of batch, "
        f"shape {shape}{hint}; accepted layouts: {_LAYOUTS}"
    )


def _pil_to_array(image: Image.Image, transparency_fill: float | None) -> np.ndarray:
    """A PIL image as an array `[H, W]` or `[H, W, 3]`: 16-bit and float modes as they are, the others as 8-bit L or
    RGB, transparent pixels composited onto `transparency_fill` (or alpha discarded, said once, when it is None)."""
    if image.mode in _PIL_16BIT_MODES:
        array = np.asarray(image).astype(np.int64)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"PIL image of mode {image.mode}: expected values in [0, 65535], got "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    gray = image.mode in _PIL_GRAY_MODES
    if image.mode in _PIL_ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")  # a palette's or a PNG's transparent colour becomes alpha
        if transparency_fill is None:
            _warn_if_transparent(image)
        else:
            level = round((transparency_fill + 1) * 127.5)
            image = Image.alpha_composite(Image.new("RGBA", image.size, (level, level, level, 255)), image)
    return np.asarray(image.convert("L" if gray else "RGB"))


TRANSPARENCY_WARNING = "preprocess_images: an image has transparent pixels"  # how its message starts


_transparency_said = False  # by this process


def _warn_if_transparent(image: Image.Image) -> None:
    """Say once per process that an image with transparent pixels is read by the colour stored under them (a flag:
    `open_image`'s `catch_warnings` resets the registry Python's default filter would use, so a folder of cutouts
    said it for every file)."""
    global _transparency_said
    if not _transparency_said and image.getchannel("A").getextrema()[0] < 255:
        _transparency_said = True
        warnings.warn(
            f"{TRANSPARENCY_WARNING}, read as the colour stored under them (alpha is discarded: a cutout's hidden "
            "background reaches the model), as every model saved without a transparency_fill reads them. A model "
            "trained anew can composite them onto a grey level instead: transparency_fill=1.0 (white) or -1.0 "
            "(black) in the loaders and ImagePreprocessing, --transparency_fill with the training scripts",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    if not array.dtype.isnative:  # e.g. big-endian '>u2' from PIL's I;16B; torch needs native order
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else array.copy())


def _check_dtype(batch: torch.Tensor, offset: int, contract: ImagePreprocessing) -> torch.Tensor:
    if batch.dtype not in _INTEGER_MAX and not batch.dtype.is_floating_point:
        unsupported = f"unsupported dtype {batch.dtype} in image {offset} of batch; expected uint8, uint16, bool "
        if batch.dtype in _PIXEL_ARRAY_DTYPES:  # int16: a CT's pydicom pixel_array
            raise ValueError(
                f"{unsupported}or a float dtype. A DICOM's pixel_array holds stored values, not Hounsfield units "
                "(its RescaleSlope / RescaleIntercept are not applied, nor the windows), and casting it to uint8 "
                "would wrap them. Pass the DICOM file path, which this model reads through "
                f"{_windows_text(contract.medical_or_default)}, or window it in memory: "
                f"{_windowing_code(contract)}; cast 0..255 picture data to uint8"
            )
        raise ValueError(f"{unsupported}or a float dtype (cast 0..255 integer data to uint8)")
    if batch.dtype.is_floating_point:
        batch = batch.to(torch.float32)
        check_finite_rows(batch, "preprocess_images: input", item="image", start=offset)
    return batch


def _scale_to_unit_range(
    batch: torch.Tensor, offset: int, value_range: str, contract: ImagePreprocessing
) -> torch.Tensor:
    """uint8 / uint16 / bool by their natural scale, float from the stated `value_range`, to float32 in [-1, 1]; the
    out-of-range error ends with `contract`'s Hounsfield-units hint (`_hounsfield_hint`)."""
    if batch.dtype in _INTEGER_MAX:
        return batch.to(torch.float32) * (2.0 / _INTEGER_MAX[batch.dtype]) - 1.0
    low = -1.0 if value_range == "[-1, 1]" else 0.0
    per_image_min = batch.flatten(1).min(1).values
    per_image_max = batch.flatten(1).max(1).values
    bad = (per_image_min < low - _FLOAT_RANGE_TOLERANCE) | (per_image_max > 1.0 + _FLOAT_RANGE_TOLERANCE)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"float values must lie in {value_range} (the stated input_range); image {offset + i} of batch spans "
            f"[{per_image_min[i]:.4g}, {per_image_max[i]:.4g}] (pass uint8 for 0..255 data, or state input_range)"
            f"{_hounsfield_hint(contract)}"
        )
    return batch if low < 0 else batch * 2.0 - 1.0


# --------------------------------------------------------------------------------------------------
# Channels and size
# --------------------------------------------------------------------------------------------------


def _convert_channels(batch: torch.Tensor, num_channels: int) -> torch.Tensor:
    if batch.shape[1] == num_channels:
        return batch
    if num_channels == 3:
        return batch.repeat(1, 3, 1, 1)
    return torch.einsum("nchw,c->nhw", batch, _LUMA)[:, None]


def _normalize_background(batch: torch.Tensor, offset: int) -> torch.Tensor:
    """Each image of `batch` ([n, C, h, w] in [-1, 1]) divided, per channel on [0, 1], by the median of its border."""
    unit = (batch + 1) / 2
    border = max(1, min(_BACKGROUND_BORDER, *(side // 2 for side in unit.shape[-2:])))  # tiny images: all pixels
    inner = torch.zeros(unit.shape[-2:], dtype=torch.bool)
    inner[border:-border, border:-border] = True
    background = unit[:, :, ~inner].median(dim=-1).values  # [n, C]
    dark = torch.nonzero(background < _MIN_BACKGROUND)
    if len(dark):
        image, channel = dark[0].tolist()
        raise ValueError(
            f"normalize_background: image {offset + image} has a background level of {background[image, channel]:.3f} "
            f"(the median of its border pixels, channel {channel}, on [0, 1]); expected a bright field of at least "
            f"{_MIN_BACKGROUND}: leave normalize_background off for dark-background images"
        )
    return (unit / background[:, :, None, None]).clamp_(0, 1) * 2 - 1


def _fit(batch: torch.Tensor, size: tuple[int, int], contract: ImagePreprocessing) -> torch.Tensor:
    """`batch` [n, C, h, w] to `size` as `contract.resize_mode` says."""
    if contract.resize_mode == "stretch":
        return _resize(batch, size, contract.resample)
    height, width = batch.shape[-2:]
    fit = min if contract.resize_mode == "pad" else max  # fit inside the target, or cover it
    scale = fit(size[0] / height, size[1] / width)
    scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
    batch = _resize(batch, scaled, contract.resample)
    top, left = (size[0] - scaled[0]) // 2, (size[1] - scaled[1]) // 2
    if contract.resize_mode == "crop":
        return batch[:, :, -top : -top + size[0], -left : -left + size[1]]
    out = batch.new_full((*batch.shape[:2], *size), float(contract.pad_value))
    out[:, :, top : top + scaled[0], left : left + scaled[1]] = batch
    return out


def _resize(batch: torch.Tensor, size: tuple[int, int], resample: str = "bilinear") -> torch.Tensor:
    if tuple(batch.shape[-2:]) == size:
        return batch
    if resample == "nearest":
        return F.interpolate(batch, size=size, mode="nearest-exact")
    return F.interpolate(batch, size=size, mode=resample, antialias=True, align_corners=False)


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    scalar = isinstance(image_size, (int, float, np.number)) or not hasattr(image_size, "__iter__")
    size = (image_size, image_size) if scalar else tuple(image_size)
    whole = [isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size]
    if len(size) != 2 or not all(whole):
        raise ValueError(f"image_size: expected a positive int or (height, width), got {image_size!r}")
    return int(size[0]), int(size[1])


def _check_same_size(batches: list[torch.Tensor], offsets: np.ndarray) -> None:
    first = tuple(batches[0].shape[-2:])
    for batch, offset in zip(batches, offsets):
        if tuple(batch.shape[-2:]) != first:
            raise ValueError(
                f"images have different sizes: image 0 is {first[0]}x{first[1]}, image {offset} is "
                f"{batch.shape[2]}x{batch.shape[3]}; pass image_size= to resize them"
            )


def _describe(value: Any) -> str:
    """What `value` is, for error messages: its type, and the shape and dtype of an array or tensor."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__

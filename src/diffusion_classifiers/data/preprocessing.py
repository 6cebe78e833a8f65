"""The one preprocessing contract: images in any common form in, float32 `[N, C, H, W]` tensors in `[-1, 1]` out.

Every loader and every pipeline turns images into tensors through [`preprocess_images`]; training, inference,
evaluation and prediction therefore see the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..validation import check_finite_rows

__all__ = ["preprocess_images"]

# ITU-R BT.601 luma weights (the ones PIL uses for RGB -> L).
_LUMA = torch.tensor([0.299, 0.587, 0.114])
# Integer dtypes and the value that maps to +1.
_INTEGER_MAX = {torch.uint8: 255.0, torch.uint16: 65535.0, torch.bool: 1.0}
# Float inputs may overshoot [0, 1] / [-1, 1] by this much (rounding); the result is clamped.
_FLOAT_RANGE_TOLERANCE = 1e-3
_PIL_GRAY_MODES = {"1", "L", "LA", "La"}
_PIL_16BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_PIL_PALETTE_MODES = {"P", "PA"}


# --------------------------------------------------------------------------------------------------
# The preprocessing contract
# --------------------------------------------------------------------------------------------------


def preprocess_images(
    images: Any,
    image_size: int | tuple[int, int] | None = None,
    num_channels: int | None = None,
) -> torch.Tensor:
    r"""
    Turn images into a float32 CPU tensor `[N, C, H, W]` with values in `[-1, 1]`.

    This is the one preprocessing path of the library: loaders use it for training data and pipelines
    use it on user input.

    Args:
        images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a `list` of them):
            one image or a batch, or a list of them (each may have its own size and type):

            * a PIL image of any mode. `1`/`L`/`LA` give 1 channel; `I`/`I;16*` give 1 channel
              scaled from `[0, 65535]`; `F` gives 1 float channel; every other mode (`RGB`,
              `RGBA`, `P`, `PA`, `CMYK`, `YCbCr`, ...) is converted to `RGB`. Alpha is
              discarded, not composited.
            * a numpy array, channels last (image-library layout): `[H, W]`, `[H, W, C]`,
              `[N, H, W]`, `[N, H, W, C]`. A 3-D array is `[H, W, C]` when its last dim is <= 4,
              else `[N, H, W]`. A 4-D array whose last dim is > 4 is read as `[N, C, H, W]`.
            * a torch tensor, channels first: `[H, W]`, `[C, H, W]`, `[N, H, W]`,
              `[N, C, H, W]`. A 3-D tensor is `[C, H, W]` when its first dim is <= 4, else
              `[N, H, W]`; pass a 4-D `[N, 1, H, W]` tensor for a small batch of grayscale images.

            Values: `uint8` is scaled from `[0, 255]`, `uint16` from `[0, 65535]`, `bool`
            from `{0, 1}`. Float data is taken as already in `[-1, 1]` if its minimum is < 0, else
            as `[0, 1]` and rescaled; this is decided per array (a whole batch, or each list item).
            Float values outside that range, other integer dtypes, NaN and inf raise `ValueError`.
        image_size (`int` or `Tuple[int, int]`, *optional*):
            `int` (square) or `(height, width)`: resize every image to it with bilinear
            interpolation and antialiasing (aspect ratio is not kept). `None` keeps the size; then
            all images must have the same size.
        num_channels (`int`, *optional*):
            1 or 3. 1 -> 3 repeats the channel; 3 -> 1 takes the ITU-R 601 luma
            (0.299 R + 0.587 G + 0.114 B, as PIL's `convert("L")`). `None` keeps the channels when
            all images agree and gives 3 when grayscale and color images are mixed.

    Returns:
        `torch.Tensor`: float32 `[N, C, H, W]` in `[-1, 1]`.

    Raises:
        `ValueError`: empty input, an unsupported shape or dtype, a channel count other than 1 or 3,
            NaN/inf, out-of-range float values, or different sizes with `image_size=None`. The
            message names the index of the offending image in the flattened batch.
    """
    target_size = _check_image_size(image_size)
    if num_channels not in (None, 1, 3):
        raise ValueError(f"num_channels: expected 1, 3 or None, got {num_channels!r}")
    batches = _to_unit_batches(_as_item_list(images))
    offsets = np.cumsum([0] + [len(batch) for batch in batches])
    for batch, offset in zip(batches, offsets):
        if batch.shape[1] not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got {batch.shape[1]} in image {offset} of batch")
    if num_channels is None:
        num_channels = 3 if any(batch.shape[1] == 3 for batch in batches) else 1
    batches = [_convert_channels(batch, num_channels) for batch in batches]
    if target_size is None:
        _check_same_size(batches, offsets)
    else:
        batches = [_resize(batch, target_size) for batch in batches]
    return torch.cat(batches).clamp_(-1.0, 1.0).contiguous()


# --------------------------------------------------------------------------------------------------
# Items -> [n, C, H, W] in [-1, 1]
# --------------------------------------------------------------------------------------------------


def _as_item_list(images: Any) -> list:
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("preprocess_images: got an empty list; expected at least one image")
        return list(images)
    raise ValueError(
        f"preprocess_images: expected a PIL image, numpy array, torch tensor or a list of them, got {_describe(images)}"
    )


def _to_unit_batches(items: list) -> list[torch.Tensor]:
    """Each item -> float32 [n, C, H, W] in [-1, 1], validated (dtype, NaN/inf, range)."""
    batches, offset = [], 0
    for position, item in enumerate(items):
        batch = _item_to_nchw(item, position)
        if batch.shape[0] == 0 or batch.shape[2] == 0 or batch.shape[3] == 0:
            raise ValueError(f"preprocess_images: item {position} is empty (shape {tuple(batch.shape)})")
        batches.append(_scale_to_unit_range(batch, offset))
        offset += len(batch)
    return batches


def _item_to_nchw(item: Any, position: int) -> torch.Tensor:
    """One list item (PIL image, array or tensor) -> a tensor [n, C, H, W] of its original dtype."""
    if isinstance(item, Image.Image):
        item = _pil_to_array(item)
    if isinstance(item, np.ndarray):
        return _numpy_to_nchw(item, position)
    if isinstance(item, torch.Tensor):
        return _tensor_to_nchw(item.detach().cpu(), position)
    raise ValueError(
        f"preprocess_images: item {position} is {_describe(item)}; expected a PIL image, numpy array or torch tensor"
    )


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in _PIL_16BIT_MODES:
        array = np.asarray(image).astype(np.int64)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"PIL image of mode {image.mode}: expected values in [0, 65535], got "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in _PIL_PALETTE_MODES:
        image = image.convert("RGBA")  # honours palette transparency before alpha is dropped
    return np.asarray(image.convert("L" if image.mode in _PIL_GRAY_MODES else "RGB"))


def _numpy_to_nchw(array: np.ndarray, position: int) -> torch.Tensor:
    if not array.dtype.isnative:  # e.g. big-endian '>u2' from PIL's I;16B; torch needs native order
        array = array.astype(array.dtype.newbyteorder("="))
    tensor = torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else array.copy())
    if array.ndim == 2:
        return tensor[None, None]
    if array.ndim == 3:
        return tensor.permute(2, 0, 1)[None] if array.shape[-1] <= 4 else tensor[:, None]
    if array.ndim == 4:
        return tensor.permute(0, 3, 1, 2) if array.shape[-1] <= 4 else tensor
    raise ValueError(
        f"preprocess_images: item {position} is a numpy array of shape {array.shape}; expected "
        "[H, W], [H, W, C], [N, H, W] or [N, H, W, C]"
    )


def _tensor_to_nchw(tensor: torch.Tensor, position: int) -> torch.Tensor:
    if tensor.ndim == 2:
        return tensor[None, None]
    if tensor.ndim == 3:
        return tensor[None] if tensor.shape[0] <= 4 else tensor[:, None]
    if tensor.ndim == 4:
        return tensor
    raise ValueError(
        f"preprocess_images: item {position} is a torch tensor of shape {tuple(tensor.shape)}; expected "
        "[H, W], [C, H, W], [N, H, W] or [N, C, H, W]"
    )


def _scale_to_unit_range(batch: torch.Tensor, offset: int) -> torch.Tensor:
    """uint8 / uint16 / bool / float -> float32 in [-1, 1] (see preprocess_images for the rule)."""
    if batch.dtype in _INTEGER_MAX:
        return batch.to(torch.float32) * (2.0 / _INTEGER_MAX[batch.dtype]) - 1.0
    if not batch.dtype.is_floating_point:
        raise ValueError(
            f"unsupported dtype {batch.dtype} in image {offset} of batch; expected uint8, uint16, bool "
            "or a float dtype (cast 0..255 integer data to uint8)"
        )
    batch = batch.to(torch.float32)
    check_finite_rows(batch, "preprocess_images: input", item="image", start=offset)
    signed = bool(batch.min() < 0)
    low = -1.0 if signed else 0.0
    per_image_min = batch.flatten(1).min(1).values
    per_image_max = batch.flatten(1).max(1).values
    bad = (per_image_min < low - _FLOAT_RANGE_TOLERANCE) | (per_image_max > 1.0 + _FLOAT_RANGE_TOLERANCE)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"float values must lie in [0, 1] or [-1, 1]; image {offset + i} of batch spans "
            f"[{per_image_min[i]:.4g}, {per_image_max[i]:.4g}] (pass uint8 for 0..255 data)"
        )
    return batch if signed else batch * 2.0 - 1.0


# --------------------------------------------------------------------------------------------------
# Channels and size
# --------------------------------------------------------------------------------------------------


def _convert_channels(batch: torch.Tensor, num_channels: int) -> torch.Tensor:
    if batch.shape[1] == num_channels:
        return batch
    if num_channels == 3:
        return batch.repeat(1, 3, 1, 1)
    return torch.einsum("nchw,c->nhw", batch, _LUMA)[:, None]


def _resize(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == size:
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
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

"""Image encoders: a new transformers ViT for the RC-DiT, and pretrained vision backbones (DINOv2, ...).

Two ways to turn library images (`[N, C, H, W]` in [-1, 1]) into one vector per image:

- `encode_representation(encoder, images)`: r, the representation a (trainable) ViT or DINOv2 encoder gives the
  RC-DiT and the contrastive baselines; differentiable, the images read as they are (C = the encoder's channels).
- `load_pretrained_encoder(path_or_hub_id)`: a frozen pretrained RGB backbone read through its image processor's
  size, mean and std (`pretrained_pixel_values`: grayscale to RGB, the whole image resized to the processor's crop
  size, ImageNet normalisation), giving CLS-token features.

The pretrained preprocessing (`pretrained_preprocessing`, `pretrained_pixel_values`) is not the processor's own
call: a DINOv2 `BitImageProcessor` resizes the shortest edge to its `size` (256) and then centre-crops `crop_size`
(224), cutting 6.25% off every side; here the whole field of view is resized straight to the crop size (bicubic,
antialiased; bilinear for a processor that resamples bilinearly, as ViT's does) and normalised by the processor's
mean and std. Nothing at the border is lost (a lesion at the edge of a medical image stays in view), at the price of
a framing about 12% wider than the one DINOv2 was trained on (objects 224/256 of the size the processor would show).
Saved pipelines record that size, mean and std, and `"resample": "bilinear"` where it applies
(`RepresentationConditionedDiTModel.config.encoder_preprocessing`), and are read this way.
"""

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, ViTConfig, ViTModel
from transformers.utils import IMAGE_PROCESSOR_NAME

from ..validation import check_no_pickled_weights

__all__ = [
    "REPRESENTATION_READOUTS",
    "PretrainedImageEncoder",
    "build_vit_encoder",
    "encode_representation",
    "encoder_pixel_values",
    "freeze_unused_pooler",
    "load_pretrained_encoder",
    "pretrained_pixel_values",
    "pretrained_preprocessing",
    "representation_size",
]


# ------------------------------------------------------------------------------------------------------------------
# Trainable encoders: the representation r
# ------------------------------------------------------------------------------------------------------------------


def build_vit_encoder(
    image_size: int = 32,
    num_channels: int = 1,
    hidden_size: int = 192,
    num_layers: int = 6,
    num_heads: int = 3,
    patch_size: int = 4,
    mlp_ratio: float = 4.0,
) -> ViTModel:
    r"""
    A randomly initialised transformers `ViTModel` (weights drawn from the global torch RNG); its `pooler_output`
    (tanh(Linear(CLS token))) is the representation r.

    Args:
        image_size (`int`, *optional*, defaults to 32): height and width of the (square) input images.
        num_channels (`int`, *optional*, defaults to 1): channels of the input images.
        hidden_size (`int`, *optional*, defaults to 192): width of the transformer, and the size D of r.
        num_layers (`int`, *optional*, defaults to 6): transformer blocks.
        num_heads (`int`, *optional*, defaults to 3): attention heads; must divide `hidden_size`.
        patch_size (`int`, *optional*, defaults to 4): side of the square patches; must divide `image_size`.
        mlp_ratio (`float`, *optional*, defaults to 4.0): MLP width over `hidden_size`.
    """
    if image_size % patch_size:
        raise ValueError(f"expected an encoder patch_size that divides image_size={image_size}, got {patch_size}")
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=int(hidden_size * mlp_ratio),
    )
    return ViTModel(config)


REPRESENTATION_READOUTS = ("pooler", "cls", "mean_patch")


def encode_representation(
    encoder: nn.Module, images: torch.Tensor, readout: Optional[str] = None, preprocessing: Optional[dict] = None
) -> torch.Tensor:
    """r [N, D] for images [N, C, H, W] in [-1, 1], read out of the encoder's output as `readout` says (default: the
    readout the encoder was trained with, its `config.representation_readout`, which a contrastive baseline saves;
    else `"pooler"`):

    - `"pooler"`: the `pooler_output`, for transformers' `ViTModel` tanh(Linear(CLS token)), for `Dinov2Model` the
      final-layernormed CLS token; for a model built without a pooler, the final-layernormed CLS token;
    - `"cls"`: the final-layernormed CLS token (no tanh, which saturates when trained by a denoiser);
    - `"mean_patch"`: the mean of the final-layernormed patch tokens (register tokens, if any, excluded).

    The images are read as they are, resized (bilinear, antialiased) to the encoder's `image_size`; with
    `preprocessing` (`pretrained_preprocessing` of a pretrained encoder: its image processor's `image_size`,
    `image_mean`, `image_std`) by `pretrained_pixel_values`, like `load_pretrained_encoder`: the whole image resized
    to that size and normalised by that mean and std, without the processor's centre crop (see the module
    docstring). With `"pooler"`
    every encoder parameter takes part; the other readouts leave a ViT's pooler unused (see `RCDiTJointModel`).
    """
    readout = readout or getattr(encoder.config, "representation_readout", None) or "pooler"
    if readout not in REPRESENTATION_READOUTS:
        raise ValueError(f"expected a readout in {REPRESENTATION_READOUTS}, got {readout!r}")
    pixel_values = encoder_pixel_values(encoder, images, preprocessing)
    outputs = encoder(pixel_values=pixel_values.to(device=encoder.device, dtype=encoder.dtype))
    tokens = outputs.last_hidden_state  # (N, 1 + registers + patches, D), final-layernormed
    if readout == "mean_patch":
        height, width = pixel_values.shape[-2:]
        num_patches = (height // encoder.config.patch_size) * (width // encoder.config.patch_size)
        return tokens[:, -num_patches:].mean(dim=1)
    pooled = getattr(outputs, "pooler_output", None) if readout == "pooler" else None
    return tokens[:, 0] if pooled is None else pooled  # (N, D)


def freeze_unused_pooler(encoder: nn.Module, readout: str) -> None:
    """With a token readout ("cls", "mean_patch") a ViT's pooler takes no part in r: freeze it (kept, so the encoder
    saves and loads as the same model), so every trainable parameter gets a gradient and DDP needs no
    `find_unused_parameters`."""
    if readout != "pooler" and getattr(encoder, "pooler", None) is not None:
        encoder.pooler.requires_grad_(False)


def encoder_pixel_values(encoder: nn.Module, images: torch.Tensor, preprocessing: Optional[dict] = None) -> torch.Tensor:
    """Library images [N, C, H, W] in [-1, 1] -> the encoder's `pixel_values` (see `encode_representation`)."""
    config = encoder.config
    if preprocessing is not None:
        pixel_values = pretrained_pixel_values(
            images,
            preprocessing["image_size"],
            preprocessing["image_mean"],
            preprocessing["image_std"],
            preprocessing.get("resample", "bicubic"),  # saved before it was recorded: bicubic
        )
        return _model_channels(pixel_values, config.num_channels)
    if images.ndim != 4 or images.shape[1] != config.num_channels:
        raise ValueError(f"expected images [N, {config.num_channels}, H, W] for the encoder, got {tuple(images.shape)}")
    size = config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)  # ViTConfig also takes (height, width)
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return images


def _model_channels(pixel_values: torch.Tensor, num_channels: int) -> torch.Tensor:
    """The RGB `pretrained_pixel_values` for a model of `num_channels`: a 1-channel model reads the first."""
    return pixel_values[:, :1] if num_channels == 1 else pixel_values


def pretrained_preprocessing(path_or_hub_id: str) -> dict:
    """The input size, mean and std of a pretrained vision model's `AutoImageProcessor`: `{"image_size": [h, w],
    "image_mean": [...], "image_std": [...]}` (mean 0 and std 1 when it does not normalise), plus `"resample":
    "bilinear"` for a processor that resizes bilinearly (ViT's; bicubic, DINOv2's, is the default and not recorded).
    `image_size` is the size the model is fed (the processor's crop size when it centre-crops, else its resize size,
    else the model's); `pretrained_pixel_values` resizes the whole image to it and does not repeat the processor's
    resize-then-centre-crop (module docstring). A local folder without `preprocessor_config.json` is an error
    (`FileNotFoundError`): nothing else tells the size, mean and std the model was trained with."""
    processor = _load_image_processor(path_or_hub_id)
    normalize = getattr(processor, "do_normalize", True)
    config = AutoConfig.from_pretrained(path_or_hub_id)
    preprocessing = {
        "image_size": list(_processor_size(processor, config)),
        "image_mean": list(processor.image_mean) if normalize else [0.0, 0.0, 0.0],
        "image_std": list(processor.image_std) if normalize else [1.0, 1.0, 1.0],
    }
    if getattr(processor, "resample", None) == PIL_BILINEAR:
        preprocessing["resample"] = "bilinear"
    return preprocessing


PROCESSOR_FILE = IMAGE_PROCESSOR_NAME  # "preprocessor_config.json"
PIL_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, as image processors record it
RESAMPLE_MODES = ("bicubic", "bilinear")
# What a pretrained encoder's folder must hold: its weights are read from safetensors only
ENCODER_WEIGHTS = "model.safetensors (a ViT or DINOv2 folder saved with save_pretrained, which writes it)"


def _load_image_processor(path_or_hub_id: str):
    try:
        return AutoImageProcessor.from_pretrained(path_or_hub_id)
    except OSError as error:
        if not os.path.isdir(path_or_hub_id) or os.path.isfile(os.path.join(path_or_hub_id, PROCESSOR_FILE)):
            raise
        raise FileNotFoundError(
            f"pretrained encoder {path_or_hub_id!r} has no {PROCESSOR_FILE} (its image processor), so its input size, "
            f"mean and std are unknown: save the image processor of the model it comes from beside it "
            f"(AutoImageProcessor.from_pretrained(<that model>).save_pretrained({path_or_hub_id!r}))"
        ) from error


def representation_size(encoder: nn.Module) -> int:
    """The size D of `encode_representation`'s output: the pooler's output size, else the hidden size."""
    return getattr(encoder.config, "pooler_output_size", None) or encoder.config.hidden_size


# ------------------------------------------------------------------------------------------------------------------
# Pretrained encoders (DINOv2 and other transformers vision backbones), frozen
# ------------------------------------------------------------------------------------------------------------------


def _processor_size(processor, model_config) -> tuple[int, int]:
    """The (height, width) the processor feeds the model: its crop size, else its resize size, else the model's
    (`pretrained_pixel_values` resizes the whole image to it, without a crop)."""
    for name in ("crop_size", "size"):
        size = getattr(processor, name, None)
        if size is None or (name == "crop_size" and not getattr(processor, "do_center_crop", True)):
            continue  # a processor that does not crop feeds the model its resize size
        get = size.get if isinstance(size, dict) else lambda key, s=size: getattr(s, key, None)
        if get("height") and get("width"):
            return int(get("height")), int(get("width"))
        if get("shortest_edge"):
            return int(get("shortest_edge")), int(get("shortest_edge"))
    image_size = getattr(model_config, "image_size", None)
    if image_size is None:
        raise ValueError("cannot tell the pretrained model's input size: no crop_size / size in its image processor")
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def pretrained_pixel_values(
    images: torch.Tensor,
    image_size: tuple[int, int],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    resample: str = "bicubic",
) -> torch.Tensor:
    """Library images [N, C, H, W] in [-1, 1] (C = 1 or 3) to a pretrained RGB model's input: grayscale repeated to
    3 channels, the whole image resized (`resample`: bicubic or bilinear, antialiased) to `image_size`, rescaled to
    [0, 1], normalised by mean and std. No shortest-edge resize and centre crop as a DINOv2 processor does: the
    whole field of view is kept, the framing is wider than in pretraining (see the module docstring)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W] in [-1, 1], got {tuple(images.shape)}")
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"expected a resample in {RESAMPLE_MODES}, got {resample!r}")
    unit = ((images.float() + 1) / 2).expand(-1, 3, -1, -1)  # (N, 3, H, W) in [0, 1]
    if tuple(unit.shape[-2:]) != tuple(image_size):
        unit = F.interpolate(unit, size=tuple(image_size), mode=resample, antialias=True, align_corners=False)
        unit = unit.clamp(0, 1)
    mean = torch.tensor(image_mean, dtype=unit.dtype, device=unit.device).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=unit.dtype, device=unit.device).view(1, -1, 1, 1)
    return (unit - mean) / std


@dataclass
class PretrainedImageEncoder:
    """A pretrained transformers vision backbone read with its image processor's size, mean and std
    (`pretrained_pixel_values`: the whole image resized to that size, no centre crop).

    `encode(images)` maps library images [N, C, H, W] in [-1, 1] (C = 1 or 3) to CLS-token features [N, D]:
    the final (layer-normed) hidden state of the first token; for convolutional backbones, the pooled output.
    """

    model: nn.Module
    image_size: tuple[int, int]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: str = "bicubic"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        pixel_values = pretrained_pixel_values(images, self.image_size, self.image_mean, self.image_std, self.resample)
        return _model_channels(pixel_values, getattr(self.model.config, "num_channels", 3))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"expected a positive batch_size, got {batch_size}")
        parameter = next(self.model.parameters())
        features = []
        for start in range(0, images.shape[0], batch_size):
            pixel_values = self.preprocess(images[start : start + batch_size].to(parameter.device))
            outputs = self.model(pixel_values=pixel_values.to(parameter.dtype))
            hidden = outputs.last_hidden_state
            cls = hidden[:, 0] if hidden.ndim == 3 else outputs.pooler_output.flatten(1)
            features.append(cls.float().cpu())
        if not features:
            raise ValueError("expected at least one image to encode, got 0")
        return torch.cat(features)  # (N, D)

    __call__ = encode


def load_pretrained_encoder(
    path_or_hub_id: str,
    device: Union[str, torch.device, None] = None,
    torch_dtype: Optional[torch.dtype] = None,
) -> PretrainedImageEncoder:
    r"""
    Load a transformers vision backbone (`AutoModel`) and read its `AutoImageProcessor` config (input size,
    ImageNet mean and std), in eval mode without gradients. Images are read by `pretrained_pixel_values`: the whole
    image resized to the processor's crop size, not its shortest-edge resize and centre crop. A local folder
    without `preprocessor_config.json` raises `FileNotFoundError` before the weights are loaded.

    Args:
        path_or_hub_id (`str`): a local directory or Hub id, e.g. `"facebook/dinov2-small"`.
        device (`str` or `torch.device`, *optional*): where to put the model; default where it loads (CPU).
        torch_dtype (`torch.dtype`, *optional*): the model's dtype; default the checkpoint's.
    """
    check_no_pickled_weights(path_or_hub_id, ENCODER_WEIGHTS)
    preprocessing = pretrained_preprocessing(path_or_hub_id)
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    try:
        model = AutoModel.from_pretrained(path_or_hub_id, use_safetensors=True, **kwargs)
    except OSError as error:  # a Hub repo without safetensors weights, mostly
        raise ValueError(
            f"pretrained encoder {path_or_hub_id!r}: cannot load its safetensors weights: {error}"
        ) from error
    model = model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return PretrainedImageEncoder(
        model,
        tuple(preprocessing["image_size"]),
        tuple(preprocessing["image_mean"]),
        tuple(preprocessing["image_std"]),
        preprocessing.get("resample", "bicubic"),
    )

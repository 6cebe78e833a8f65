"""U-Net sizes for small images (28-32 px), instead of diffusers' 6-level 256 px default, and the timesteps whose
features the U-Net-feature method probes by default."""

import numbers
from typing import Optional

__all__ = ["DEFAULT_TIMESTEPS", "UNET_PRESETS", "unet_config"]

UNET_PRESETS = {
    "tiny": {"block_out_channels": (16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8},
    "small": {"block_out_channels": (32, 64, 64), "layers_per_block": 1, "norm_num_groups": 16, "attention_head_dim": 16},
    "base": {"block_out_channels": (64, 128, 256, 256), "layers_per_block": 2, "norm_num_groups": 32, "attention_head_dim": 32},
}
ATTENTION_RESOLUTION = 16
# of a 1000-step DDPM schedule: low noise, where the plankton and PneumoniaMNIST studies find the best features
DEFAULT_TIMESTEPS = (10, 25, 50, 100, 200, 400)


def unet_config(
    preset: str = "small",
    sample_size: int = 32,
    in_channels: int = 1,
    num_class_embeds: Optional[int] = None,
) -> dict:
    r"""
    `UNet2DModel` kwargs for a preset: one level per entry of `block_out_channels`, halving the resolution each
    level, with self-attention on the level closest to 16x16.

    Args:
        preset (`str`, *optional*, defaults to `"small"`): a key of `UNET_PRESETS` ("tiny", "small", "base").
        sample_size (`int`, *optional*, defaults to 32): image height and width; divisible by 2^(levels - 1).
        in_channels (`int`, *optional*, defaults to 1): image channels (the output has the same).
        num_class_embeds (`int`, *optional*): class embeddings of a class-conditional U-Net; `None` for an
            unconditional one.
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"expected a U-Net preset in {sorted(UNET_PRESETS)}, got {preset!r}")
    config = dict(UNET_PRESETS[preset])
    levels = len(config["block_out_channels"])
    factor = 2 ** (levels - 1)  # each level halves the resolution: the deepest must be whole
    if isinstance(sample_size, numbers.Integral) and not isinstance(sample_size, bool):
        sample_size = int(sample_size)  # numpy integers too (an image size read from an array's shape)
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < factor:
        raise ValueError(
            f"expected sample_size an integer of at least {factor} for preset {preset!r}, got {sample_size!r}: its "
            f"{levels} levels halve the image {levels - 1} times"
        )
    if sample_size % factor:
        nearest = (sample_size // factor * factor, (sample_size // factor + 1) * factor)
        raise ValueError(
            f"expected sample_size divisible by {factor} for preset {preset!r}, got {sample_size}: its {levels} "
            f"levels halve the image {levels - 1} times; use e.g. {' or '.join(map(str, nearest))} px"
        )
    resolutions = [sample_size // 2**level for level in range(levels)]
    attention_level = min(range(levels), key=lambda level: abs(resolutions[level] - ATTENTION_RESOLUTION))
    down = ["AttnDownBlock2D" if level == attention_level else "DownBlock2D" for level in range(levels)]
    up = ["AttnUpBlock2D" if level == attention_level else "UpBlock2D" for level in reversed(range(levels))]
    return dict(
        config,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        num_class_embeds=num_class_embeds,
    )

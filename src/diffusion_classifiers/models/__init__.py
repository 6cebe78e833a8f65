from .linear_probe_head import LinearProbeHead
from .unet_presets import UNET_PRESETS, unet_config

__all__ = ["LinearProbeHead", "UNET_PRESETS", "unet_config"]

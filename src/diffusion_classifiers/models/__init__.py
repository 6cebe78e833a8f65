from .linear_probe_head import LinearProbeHead
from .rc_dit import (
    RC_DIT_SIZES,
    RCDiTJointModel,
    RCDiTLoss,
    RepresentationConditionedDiTModel,
    build_vit_encoder,
    rc_dit_config,
)
from .unet_presets import UNET_PRESETS, unet_config

__all__ = [
    "LinearProbeHead",
    "RC_DIT_SIZES",
    "RCDiTJointModel",
    "RCDiTLoss",
    "RepresentationConditionedDiTModel",
    "build_vit_encoder",
    "rc_dit_config",
    "UNET_PRESETS",
    "unet_config",
]

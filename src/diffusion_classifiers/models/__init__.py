from .linear_probe_head import LinearProbeHead
from .prototype_head import PrototypeHead, fit_prototypes
from .rc_dit import (
    RC_DIT_SIZES,
    RCDiTJointModel,
    RCDiTLoss,
    RepresentationConditionedDiTModel,
    add_encoder_args,
    build_vit_encoder,
    build_vit_encoder_from_args,
    rc_dit_config,
    train_rc_dit,
)
from .unet_presets import UNET_PRESETS, unet_config

__all__ = [
    "LinearProbeHead",
    "PrototypeHead",
    "fit_prototypes",
    "RC_DIT_SIZES",
    "RCDiTJointModel",
    "RCDiTLoss",
    "RepresentationConditionedDiTModel",
    "add_encoder_args",
    "build_vit_encoder",
    "build_vit_encoder_from_args",
    "rc_dit_config",
    "train_rc_dit",
    "UNET_PRESETS",
    "unet_config",
]

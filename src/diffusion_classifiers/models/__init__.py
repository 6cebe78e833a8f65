"""Models diffusers cannot provide, heads, their sizes and encoder builders: models only (no training, no argparse).

Saved pipelines record `diffusion_classifiers.models.rc_dit`, `.linear_probe_head` and `.prototype_head` as module
paths of their components: those modules keep their names.
"""

from .encoders import (
    PretrainedImageEncoder,
    build_vit_encoder,
    encode_representation,
    load_pretrained_encoder,
    pretrained_pixel_values,
    representation_size,
)
from .linear_probe_head import LinearProbeHead
from .prototype_head import PrototypeHead, fit_prototypes
from .rc_dit import (
    RC_DIT_SIZES,
    DiTBlock,
    RCDiTModelOutput,
    RepresentationConditionedDiTModel,
    check_encoder_matches,
    rc_dit_config,
)
from .supervised_cnn import SupervisedCNN, count_parameters
from .unet_presets import UNET_PRESETS, unet_config
from .vae_latents import decode_latents, encode_latents, vae_scale_factor

__all__ = [
    # heads
    "LinearProbeHead",
    "PrototypeHead",
    "fit_prototypes",
    # representation-conditioned DiT
    "RC_DIT_SIZES",
    "DiTBlock",
    "RCDiTModelOutput",
    "RepresentationConditionedDiTModel",
    "check_encoder_matches",
    "rc_dit_config",
    # encoders
    "PretrainedImageEncoder",
    "build_vit_encoder",
    "encode_representation",
    "load_pretrained_encoder",
    "pretrained_pixel_values",
    "representation_size",
    # VAE latents
    "decode_latents",
    "encode_latents",
    "vae_scale_factor",
    # U-Net sizes
    "UNET_PRESETS",
    "unet_config",
    # supervised baseline
    "SupervisedCNN",
    "count_parameters",
]

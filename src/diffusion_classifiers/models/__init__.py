"""Models diffusers cannot provide, heads, their sizes and encoder builders: models only (no training, no argparse).

Saved pipelines record `diffusion_classifiers.models.rc_dit`, `.linear_probe_head` and `.prototype_head` as module
paths of their components: those modules keep their names.
"""

from ..lazy_exports import lazy_exports

# public name -> the module that defines it, imported on first use
_EXPORTS = {
    # heads
    "LinearProbeHead": "linear_probe_head",
    "PrototypeHead": "prototype_head",
    "fit_prototypes": "prototype_head",
    # representation-conditioned DiT
    "RC_DIT_SIZES": "rc_dit",
    "REPRESENTATION_INJECTIONS": "rc_dit",
    "REPRESENTATION_NORMS": "rc_dit",
    "DiTBlock": "rc_dit",
    "RCDiTModelOutput": "rc_dit",
    "RepresentationConditionedDiTModel": "rc_dit",
    "check_encoder_matches": "rc_dit",
    "input_image_size_and_channels": "rc_dit",
    "rc_dit_config": "rc_dit",
    "representation_of": "rc_dit",
    # encoders
    "PretrainedImageEncoder": "encoders",
    "REPRESENTATION_READOUTS": "encoders",
    "build_vit_encoder": "encoders",
    "encode_representation": "encoders",
    "encoder_pixel_values": "encoders",
    "freeze_unused_pooler": "encoders",
    "load_pretrained_encoder": "encoders",
    "pretrained_pixel_values": "encoders",
    "pretrained_preprocessing": "encoders",
    "representation_size": "encoders",
    # VAE latents
    "decode_latents": "vae_latents",
    "encode_latents": "vae_latents",
    "vae_scale_factor": "vae_latents",
    # U-Net sizes, default probed timesteps
    "DEFAULT_TIMESTEPS": "unet_presets",
    "UNET_PRESETS": "unet_presets",
    "unet_config": "unet_presets",
    # supervised baseline
    "SupervisedCNN": "supervised_cnn",
    "count_parameters": "supervised_cnn",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""An optional latent space: a frozen diffusers `AutoencoderKL` between images and a denoiser.

Latents are shifted by the VAE's `shift_factor` (when its config has one, as SD3 and Flux VAEs do) and scaled by its
`scaling_factor` on the way in, and unscaled and unshifted on the way out, as in diffusers' latent pipelines, so the
denoiser sees roughly zero-mean, unit-variance inputs.
"""

import torch

__all__ = ["decode_latents", "encode_latents", "vae_scale_factor"]


def vae_scale_factor(vae) -> int:
    """How many times smaller than the image a latent is on each side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _shift_factor(vae):
    """The config's `shift_factor`, or `None` (VAEs without one: latents are only scaled)."""
    return getattr(vae.config, "shift_factor", None)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
    """Scaled latents of images `[N, C, H, W]` in [-1, 1]: a draw from the VAE's posterior (`sample=True`, training)
    or its mode (deterministic features), minus `shift_factor` (when set), times `scaling_factor`. Height and width
    must be multiples of `vae_scale_factor(vae)`: the VAE would floor them, and decode images of another size."""
    factor = vae_scale_factor(vae)
    if images.ndim != 4 or images.shape[-2] % factor or images.shape[-1] % factor:
        raise ValueError(
            f"expected images [N, C, H, W] with H and W multiples of the VAE's scale factor {factor}, got "
            f"{tuple(images.shape)}"
        )
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.sample() if sample else posterior.mode()
    shift = _shift_factor(vae)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor  # (N, latent_channels, H / f, W / f)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents (the inverse of `encode_latents`): divided by `scaling_factor`, plus
    `shift_factor` (when set), decoded."""
    latents = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    shift = _shift_factor(vae)
    if shift is not None:
        latents = latents + shift
    return vae.decode(latents).sample

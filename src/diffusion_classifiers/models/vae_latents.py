"""An optional latent space: a frozen diffusers `AutoencoderKL` between images and a denoiser.

Latents are scaled by the VAE's `scaling_factor` on the way in and unscaled on the way out, as in diffusers'
latent pipelines, so the denoiser sees roughly unit-variance inputs.
"""

import torch

__all__ = ["decode_latents", "encode_latents", "vae_scale_factor"]


def vae_scale_factor(vae) -> int:
    """How many times smaller than the image a latent is on each side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
    """Scaled latents of images `[N, C, H, W]` in [-1, 1]: a draw from the VAE's posterior (`sample=True`, training)
    or its mode (deterministic features), times `scaling_factor`."""
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.sample() if sample else posterior.mode()
    return latents * vae.config.scaling_factor  # (N, latent_channels, H / f, W / f)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents (the inverse of `encode_latents`)."""
    return vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor).sample

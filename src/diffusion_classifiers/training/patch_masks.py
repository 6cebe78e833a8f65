"""Hidden patches of x_t, the RC-DiT recipe's information asymmetry: which patches are hidden, and what the
denoiser is asked for there (the clean content, which only the representation r can tell, instead of the noise).

One definition for the training loss (`RCDiTLoss`), the diagnostics of r (`rc_dit_diagnostics`) and the sample grid.
"""

import torch

__all__ = ["MASKED_TARGETS", "hide_patches", "random_patch_mask", "standardize_patches"]

# What a hidden patch of x_t is reconstructed as
MASKED_TARGETS = ("pixels", "normalized_patches")


def random_patch_mask(shape: torch.Size, patch_size: int, ratio: float, device, generator=None) -> torch.Tensor:
    """A boolean mask (N, 1, H, W) for images of `shape` (N, C, H, W) that hides `round(ratio * tokens)` of each
    image's `patch_size` x `patch_size` patches, drawn uniformly (with the CPU `generator` if given); it broadcasts
    over the channels."""
    n, _, height, width = shape
    rows, columns = height // patch_size, width // patch_size
    if generator is None:
        draws = torch.rand(n, rows * columns, device=device)
    else:
        draws = torch.rand(n, rows * columns, generator=generator).to(device)
    ranks = draws.argsort(1).argsort(1)
    hidden = (ranks < round(ratio * rows * columns)).view(n, 1, rows, columns)
    return hidden.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def standardize_patches(images: torch.Tensor, patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Images `[N, C, H, W]` with each `patch_size` x `patch_size` patch (over its channels) shifted to mean 0 and
    scaled to variance 1 (`eps` added to the variance, as MAE's target does)."""
    n, c, height, width = images.shape
    patches = images.reshape(n, c, height // patch_size, patch_size, width // patch_size, patch_size)
    mean = patches.mean(dim=(1, 3, 5), keepdim=True)
    variance = patches.var(dim=(1, 3, 5), keepdim=True, unbiased=False)
    return ((patches - mean) / (variance + eps).sqrt()).reshape(n, c, height, width)


def hide_patches(
    noisy: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor, hidden: torch.Tensor, masked_target: str,
    patch_size: int,
) -> tuple:
    """The denoiser's input (`noisy` zeroed where `hidden`) and its target: the noise where visible, the clean
    content where hidden (standardised per patch with `masked_target="normalized_patches"`)."""
    if masked_target not in MASKED_TARGETS:
        raise ValueError(f"expected masked_target in {MASKED_TARGETS}, got {masked_target!r}")
    if masked_target == "normalized_patches":
        clean = standardize_patches(clean, patch_size)
    return noisy.masked_fill(hidden, 0.0), torch.where(hidden, clean, noise)

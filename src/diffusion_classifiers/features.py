"""Frozen DDPM U-Net features: noise an image to timestep t, read one block's activation, pool it.

`DiffusionFeatureExtractor` hooks the blocks of a `diffusers.UNet2DModel` at their native resolution, runs every
requested timestep of a batch through one forward pass, and stops the forward after the deepest requested block.
"""

import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from tqdm.auto import tqdm

POOLS = ("mean", "2x2", None)

FeatureKey = Tuple[str, int]


@dataclass(frozen=True)
class BlockInfo:
    """One U-Net block a feature can be read from, with its activation's native size for `sample_size` inputs."""

    name: str
    resolution: Tuple[int, int]
    channels: int


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block so that the rest of the U-Net is skipped."""


def _native_output_module(name: str, block: nn.Module) -> nn.Module:
    """The sub-module whose output is the block's activation before its down/upsampler.

    In diffusers' down and up blocks each resnet is followed by its attention (if any) and the resampler comes
    last, so the last attention, else the last resnet, produces the native-resolution activation.
    """
    if name == "mid_block":
        return block
    attentions = [a for a in (getattr(block, "attentions", None) or []) if a is not None]
    return attentions[-1] if attentions else block.resnets[-1]


def _pool(activation: torch.Tensor, pool: Optional[str]) -> torch.Tensor:
    if pool == "mean":
        return activation.mean(dim=(2, 3))
    if pool == "2x2":
        return F.adaptive_avg_pool2d(activation, 2).flatten(1)
    return activation.flatten(1)


def make_noise(num_noise_draws: int, image_shape: Sequence[int], noise_seed: int) -> torch.Tensor:
    """The noise shared by every image: `[num_noise_draws, C, H, W]` from a CPU generator seeded with `noise_seed`,
    so a feature depends only on its image and the seed, never on batching or device."""
    return torch.randn((num_noise_draws, *image_shape), generator=torch.Generator().manual_seed(noise_seed))


def _as_hw(size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class DiffusionFeatureExtractor:
    r"""
    Extract pooled activations of a frozen unconditional DDPM U-Net for (block, timestep) pairs.

    Args:
        unet ([`UNet2DModel`]): the denoiser; used in eval mode on its own device and dtype, never modified.
        scheduler ([`DDPMScheduler`]): noises the clean images with `scheduler.add_noise(x0, eps, t)`.

    Example:

    ```py
    >>> extractor = DiffusionFeatureExtractor(unet, scheduler)
    >>> print(extractor.describe_blocks())
    >>> feats = extractor.extract(images, blocks=["down_blocks.1", "mid_block"], timesteps=[25, 100])
    >>> feats[("mid_block", 100)].shape  # [N, channels]
    ```
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        if not isinstance(unet, UNet2DModel):
            raise TypeError(f"expected a diffusers UNet2DModel, got {type(unet).__name__}")
        if not hasattr(scheduler, "add_noise") or "num_train_timesteps" not in scheduler.config:
            raise TypeError(
                f"expected a diffusers noise scheduler such as DDPMScheduler, got {type(scheduler).__name__}"
            )
        self.unet = unet
        self.scheduler = scheduler
        named = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
        named += [("mid_block", unet.mid_block)] if unet.mid_block is not None else []
        named += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
        self._block_modules = dict(named)  # forward order
        self._blocks = self._compute_block_infos()

    def _compute_block_infos(self) -> List[BlockInfo]:
        height, width = _as_hw(self.unet.config.sample_size)
        infos = []
        for name, block in self._block_modules.items():
            channels = block.resnets[-1].out_channels
            infos.append(BlockInfo(name, (height, width), channels))
            if getattr(block, "downsamplers", None) is not None or getattr(block, "resnet_down", None) is not None:
                height, width = (height + 1) // 2, (width + 1) // 2  # stride-2 conv with padding 1 rounds up
            if getattr(block, "upsamplers", None) is not None or getattr(block, "resnet_up", None) is not None:
                height, width = height * 2, width * 2
        return infos

    @property
    def blocks(self) -> List[BlockInfo]:
        """Every block in forward order (down_blocks.*, mid_block, up_blocks.*) with native resolution and channels."""
        return list(self._blocks)

    @property
    def block_names(self) -> List[str]:
        return [info.name for info in self._blocks]

    def describe_blocks(self) -> str:
        """A table of the blocks to choose from, with the feature size each pooling gives."""
        row = "{:<16}{:>12}{:>10}{:>8}{:>8}{:>10}".format
        lines = [row("block", "resolution", "channels", "mean", "2x2", "None")]
        for b in self._blocks:
            (h, w), c = b.resolution, b.channels
            lines.append(row(b.name, f"{h}x{w}", c, c, 4 * c, c * h * w))
        return "\n".join(lines)

    def __repr__(self) -> str:
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        return f"{type(self).__name__}(num_train_timesteps={num_train_timesteps})\n{self.describe_blocks()}"

    @torch.no_grad()
    def extract(
        self,
        images: torch.Tensor,
        blocks: Sequence[str],
        timesteps: Sequence[int],
        pool: Optional[str] = "mean",
        noise_seed: int = 0,
        num_noise_draws: int = 1,
        batch_size: int = 64,
        show_progress: bool = False,
        early_stop: bool = True,
    ) -> Dict[FeatureKey, torch.Tensor]:
        r"""
        Pooled activations of each requested block at each requested timestep.

        Args:
            images (`torch.Tensor` of shape `[N, C, H, W]`): clean images scaled to [-1, 1], with the U-Net's
                `in_channels` and `sample_size`.
            blocks (`Sequence[str]`): names from [`~DiffusionFeatureExtractor.block_names`].
            timesteps (`Sequence[int]`): integers in `[0, scheduler.config.num_train_timesteps)`; all of them share
                one forward pass per batch.
            pool (`"mean"`, `"2x2"` or `None`): global average (`[N, C]`), 2x2 average grid (`[N, 4C]`) or the whole
                flattened map (`[N, C*h*w]`).
            noise_seed (`int`): seeds the noise `eps`, shared by every image and timestep, so a feature depends only
                on its image, not on `batch_size` or the other images in the call.
            num_noise_draws (`int`): pooled features are averaged over this many noise draws.
            batch_size (`int`): images per forward pass (the forward batch is `batch_size * len(timesteps)`).
            show_progress (`bool`): show a tqdm bar over batches.
            early_stop (`bool`): stop each forward after the deepest requested block (same features, less work).

        Returns:
            `dict[tuple[str, int], torch.Tensor]`: `(block, timestep) -> float32 CPU tensor [N, D]`.
        """
        blocks, timesteps = self._check_request(blocks, timesteps, pool, num_noise_draws, batch_size)
        self._check_images(images)
        noise = make_noise(num_noise_draws, images.shape[1:], noise_seed)
        chunks = {(b, t): [] for b in blocks for t in timesteps}
        was_training = self.unet.training
        self.unet.eval()
        try:
            starts = range(0, len(images), batch_size)
            for start in tqdm(starts, desc="Extracting features", disable=not show_progress):
                batch = images[start : start + batch_size]
                for key, value in self.features_for_batch(batch, blocks, timesteps, pool, noise, early_stop).items():
                    chunks[key].append(value.float().cpu())
        finally:
            self.unet.train(was_training)
        return {key: torch.cat(values) for key, values in chunks.items()}

    def features_for_batch(
        self,
        images: torch.Tensor,
        blocks: Sequence[str],
        timesteps: Sequence[int],
        pool: Optional[str],
        noise: torch.Tensor,
        early_stop: bool = True,
    ) -> Dict[FeatureKey, torch.Tensor]:
        r"""
        Pooled features of one batch, on the U-Net's device and differentiable (no validation, no `no_grad`):
        the building block of [`~DiffusionFeatureExtractor.extract`] and of the transformers classification head.

        Args:
            images: `[B, C, H, W]` clean images in [-1, 1].
            noise: `[num_noise_draws, C, H, W]` from [`make_noise`]; features are averaged over the draws.
        """
        device, dtype = self.unet.device, self.unet.dtype
        x0 = images.to(device=device, dtype=torch.float32).repeat(len(timesteps), 1, 1, 1)
        # timestep-major: row k * B + i is image i at timesteps[k]
        t_batch = torch.tensor(timesteps, dtype=torch.long, device=device).repeat_interleave(len(images))
        captured: Dict[str, torch.Tensor] = {}
        stop_at = max(blocks, key=self.block_names.index) if early_stop else None
        handles = [self._register_hook(b, pool, captured, stop_at) for b in blocks]
        try:
            draws = [self._forward(x0, eps, t_batch, dtype, captured) for eps in noise.to(device)]
        finally:
            for handle in handles:
                handle.remove()
        return {
            (b, t): chunk
            for b in blocks
            for t, chunk in zip(timesteps, (sum(d[b] for d in draws) / len(draws)).chunk(len(timesteps)))
        }

    def _forward(self, x0, eps, t_batch, dtype, captured) -> Dict[str, torch.Tensor]:
        captured.clear()
        x_t = self.scheduler.add_noise(x0, eps.expand_as(x0), t_batch).to(dtype)
        try:
            self.unet(x_t, t_batch)
        except _StopForward:
            pass
        return dict(captured)

    def _register_hook(self, name: str, pool: Optional[str], captured: dict, stop_at: Optional[str]):
        def hook(module, args, output):
            captured[name] = _pool(output, pool).float()
            if name == stop_at:
                raise _StopForward

        return _native_output_module(name, self._block_modules[name]).register_forward_hook(hook)

    def _check_request(self, blocks, timesteps, pool, num_noise_draws, batch_size) -> Tuple[List[str], List[int]]:
        if isinstance(blocks, str):
            blocks = [blocks]
        if isinstance(timesteps, (int, torch.Tensor)):
            timesteps = torch.as_tensor(timesteps).reshape(-1).tolist()
        blocks, timesteps = list(blocks), list(timesteps)
        if not blocks or not timesteps:
            raise ValueError(f"expected at least one block and one timestep, got {blocks} and {timesteps}")
        for name in blocks:
            if name not in self._block_modules:
                raise ValueError(f"unknown block {name!r}; expected one of {self.block_names}")
        num_train = self.scheduler.config.num_train_timesteps
        for t in timesteps:
            if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < num_train:
                raise ValueError(f"timestep {t!r} is invalid: expected an integer in [0, {num_train})")
        if len(set(blocks)) != len(blocks) or len(set(timesteps)) != len(timesteps):
            raise ValueError(f"expected distinct blocks and timesteps, got blocks={blocks}, timesteps={timesteps}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        for arg, value in (("num_noise_draws", num_noise_draws), ("batch_size", batch_size)):
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"expected {arg} to be a positive integer, got {value!r}")
        return blocks, [int(t) for t in timesteps]

    def _check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected images as a torch.Tensor [N, C, H, W], got {type(images).__name__}")
        config = self.unet.config
        expected = (config.in_channels, *_as_hw(config.sample_size))
        shape = tuple(images.shape)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected images of shape [N, {', '.join(map(str, expected))}] with N >= 1, got {shape}")
        if images.shape[1] != config.in_channels:
            raise ValueError(f"expected {config.in_channels} channels, got {shape[1]} (images of shape {shape})")
        if shape[2:] != expected[1:]:
            raise ValueError(f"expected images of spatial size {expected[1:]} (unet sample_size), got {shape[2:]}")
        flat = images.detach().flatten(1).float()
        bad = ~torch.isfinite(flat).all(dim=1)
        if bad.any():
            raise ValueError(f"image {int(bad.nonzero()[0])} contains NaN or inf values")
        # The tolerance lets resampling overshoot through; [0, 255] data still fails here.
        out_of_range = (flat.abs() > 1 + 1e-3).any(dim=1)
        if out_of_range.any():
            i = int(out_of_range.nonzero()[0])
            low, high = flat[i].min(), flat[i].max()
            raise ValueError(f"image {i} has values in [{low:.3g}, {high:.3g}]; expected images scaled to [-1, 1]")

"""Frozen diffusion features: noise an image to timestep t, read one block's activation, pool it.

`DiffusionFeatureExtractor` hooks the blocks of a `diffusers.UNet2DModel` at their native resolution, runs every
requested timestep of a batch through one forward pass, and stops the forward after the deepest requested block.
`DiTFeatureExtractor` reads the blocks of a `RepresentationConditionedDiTModel` the same way: same noise
(`make_noise`), same pooling (`POOLS`), same timestep checks, the same input handling (a tensor, or a dataset larger
than memory read by a `DataLoader`) and output (`(block, timestep) -> [N, D]`, float16 memory maps beyond a memory
budget), both through one loop (`_extract_in_batches`).
"""

import contextlib
import math
import numbers
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffusion_classifiers.models import (
    RepresentationConditionedDiTModel,
    check_encoder_matches,
    encode_latents,
    input_image_size_and_channels,
    representation_of,
)
from diffusion_classifiers.validation import check_writable_dir
from diffusion_classifiers.views import check_views, image_views

__all__ = [
    "POOLS",
    "BlockInfo",
    "DiTFeatureExtractor",
    "DiffusionFeatureExtractor",
    "FeatureGrid",
    "FeatureKey",
    "Features",
    "block_label",
    "check_timesteps",
    "dit_block_name",
    "feature_blocks",
    "hypercolumn",
    "make_noise",
    "with_hypercolumns",
]

POOLS = ("mean", "2x2", None)

FeatureKey = Tuple[str, int]
# A feature matrix [N, D]: a float32 tensor in memory, or a float16 `numpy.memmap` on disk when the features of a call
# exceed its `max_memory_bytes` (`probing.fit_probe_grid` reads either).
Features = Union[torch.Tensor, np.memmap]


class FeatureGrid(dict):
    """[`DiffusionFeatureExtractor.extract`]'s `(block, timestep) -> [N, D]` features, with the `settings` they were
    made with (`pool`, `noise_seed`, `num_noise_draws`, `views`): what a head fitted on them must record for its
    pipeline to read new images the same way, which `probing.fit_probe_grid` takes from here. A plain `dict` in
    every other respect."""

    def __init__(self, features: dict, settings: Dict[str, Any]):
        super().__init__(features)
        self.settings = dict(settings)

    def __reduce__(self):
        """Pickled as its features and settings, which `torch.load`'s default `weights_only=True` reads (the class
        is registered with `torch.serialization.add_safe_globals`; a dict subclass's own state it refuses)."""
        return type(self), (dict(self), self.settings)


torch.serialization.add_safe_globals([FeatureGrid])  # features cached with torch.save load back with their settings


def feature_blocks(block: Union[str, Sequence[str]]) -> List[str]:
    """The blocks a head reads: one block's name, or several (a hypercolumn: their pooled features concatenated in
    this order, e.g. every block of the U-Net, which with many labels gives a linear head more to read)."""
    return [block] if isinstance(block, str) else list(block)


def hypercolumn(
    features: Dict[FeatureKey, torch.Tensor], block: Union[str, Sequence[str]], timestep: int
) -> torch.Tensor:
    """The feature a head over `block` (see `feature_blocks`) reads at `timestep`, from `extract`'s output."""
    parts = [features[(name, timestep)] for name in feature_blocks(block)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def with_hypercolumns(features: Dict[FeatureKey, torch.Tensor]) -> Dict[tuple, torch.Tensor]:
    """`features` and, for each timestep, the hypercolumn of all its blocks (in the dict's order), keyed
    `((block, ...), t)`: the keys `fit_probe_grid` turns into heads over several blocks."""
    if not all(isinstance(x, torch.Tensor) for x in features.values()):
        raise ValueError(
            "hypercolumns concatenate features in memory: got memory-mapped features (raise max_memory_bytes, or "
            "leave hypercolumns off)"
        )
    blocks = {}
    for block, timestep in features:
        blocks.setdefault(timestep, []).append(block)
    columns = {(tuple(names), t): hypercolumn(features, names, t) for t, names in blocks.items() if len(names) > 1}
    if isinstance(features, FeatureGrid):
        return FeatureGrid({**features, **columns}, features.settings)
    return {**features, **columns}


def block_label(block: Union[str, Sequence[str]]) -> str:
    """A short name for reports and plots: the block's name, or `"7 blocks: down_blocks.0 .. up_blocks.2"`."""
    blocks = feature_blocks(block)
    return blocks[0] if len(blocks) == 1 else f"{len(blocks)} blocks: {blocks[0]} .. {blocks[-1]}"


@dataclass(frozen=True)
class BlockInfo:
    """One U-Net block a feature can be read from, with its activation's native size for `sample_size` inputs."""

    name: str
    resolution: Tuple[int, int]
    channels: int


# A U-Net's forward hooks are state of the module that every forward fires: one extraction at a time registers, fires
# and removes them per U-Net (QA: calls from several threads on one pipeline raised KeyError, a thread's hook stopping
# another's forward, and could read each other's activations). Other code calling the same U-Net from another thread
# meanwhile (a U-Net shared with a pipeline of another kind) is not held back: give such a thread its own copy.
_HOOK_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_HOOK_LOCKS_GUARD = threading.Lock()


def _hook_lock(unet: nn.Module) -> threading.Lock:
    with _HOOK_LOCKS_GUARD:
        return _HOOK_LOCKS.setdefault(unet, threading.Lock())


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


# ------------------------------------------------------------------------------------------------------------------
# Shared by both extractors: noise, pooling, checks
# ------------------------------------------------------------------------------------------------------------------


def _pool(activation: torch.Tensor, pool: Optional[str], channels_last: bool = False) -> torch.Tensor:
    """Pool a feature map `[N, C, H, W]`, or `[N, H, W, C]` with `channels_last` (DiT tokens on their patch grid):
    "mean" -> `[N, C]`, "2x2" -> `[N, 4C]` (channel-major), `None` -> the whole map flattened in its own layout."""
    if pool == "mean":
        return activation.mean(dim=(1, 2) if channels_last else (2, 3))
    if pool == "2x2":
        activation = activation.permute(0, 3, 1, 2) if channels_last else activation
        return F.adaptive_avg_pool2d(activation, 2).flatten(1)
    return activation.flatten(1)


def make_noise(num_noise_draws: int, image_shape: Sequence[int], noise_seed: int) -> torch.Tensor:
    """The noise shared by every image: `[num_noise_draws, C, H, W]` from a CPU generator seeded with `noise_seed`,
    so a feature depends only on its image and the seed, never on batching or device."""
    return torch.randn((num_noise_draws, *image_shape), generator=torch.Generator().manual_seed(noise_seed))


def _progress_bar(config: Optional[dict], num_images: int, desc: str) -> tqdm:
    """A `tqdm.auto` bar over `num_images` images, with the caller's `config` (tqdm arguments) on top."""
    return tqdm(**{"total": num_images, "desc": desc, "unit": "image", **(config or {})})


def _check_scheduler(scheduler) -> None:
    """A diffusers scheduler that noises as the model was trained, `x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 -
    alpha_bar_t) eps` (DDPM, DDIM and PNDM do; QA: an Euler scheduler saved for sampling adds `sigma_t eps` to an
    unscaled `x_0`, and DPM-Solver's before `set_timesteps` reverses the noise levels, so the features were taken
    from images no U-Net saw in training, without a word)."""
    if not hasattr(scheduler, "add_noise") or "num_train_timesteps" not in scheduler.config:
        raise TypeError(f"expected a diffusers noise scheduler such as DDPMScheduler, got {type(scheduler).__name__}")
    last = scheduler.config.num_train_timesteps - 1
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    clean = torch.ones(1, 1, 1, 1)
    noised = scheduler.add_noise(clean, torch.zeros_like(clean), torch.tensor([last]))
    if alphas_cumprod is None or not math.isclose(float(noised), float(alphas_cumprod[last]) ** 0.5, rel_tol=1e-3):
        raise ValueError(
            f"scheduler: {type(scheduler).__name__} does not noise images as the model was trained (x_t = "
            "sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; Euler and DPM-Solver schedulers noise by their "
            "sampling sigmas); expected DDPMScheduler or one that noises alike: load it with "
            "scheduler=DDPMScheduler.from_config(pipe.scheduler.config)"
        )


def _check_unet(unet: Any) -> None:
    """An unconditional `UNet2DModel` that states the size it was trained at."""
    if not isinstance(unet, UNet2DModel):
        raise TypeError(f"expected a diffusers UNet2DModel, got {type(unet).__name__}")
    config = unet.config
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise ValueError(
            f"unet: class-conditional (num_class_embeds={config.get('num_class_embeds')}, class_embed_type="
            f"{config.get('class_embed_type')!r}); expected an unconditional U-Net, trained without labels, for the "
            "U-Net-feature method (a class-conditional one is the Score-SDE classifier's: ScoreSDEClassifierPipeline)"
        )
    if config.get("sample_size") is None:
        raise ValueError(
            "unet: its config states no sample_size; expected the size it was trained at: "
            "unet.register_to_config(sample_size=32), with its own size, then save it again"
        )


def check_timesteps(timesteps, num_train_timesteps: int) -> List[int]:
    """`timesteps` (one int, a tensor or a sequence) as a list of distinct ints in `[0, num_train_timesteps)`."""
    if isinstance(timesteps, (numbers.Integral, torch.Tensor)):
        timesteps = torch.as_tensor(timesteps).reshape(-1).tolist()
    if timesteps is None or isinstance(timesteps, str) or not isinstance(timesteps, Iterable):
        expected = f"an integer or a list of them in [0, {num_train_timesteps})"
        raise ValueError(f"timesteps: expected {expected}, got {timesteps!r}")
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError("expected at least one timestep, got []")
    for t in timesteps:
        if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < num_train_timesteps:
            raise ValueError(
                f"timestep {t!r} is invalid: expected an integer in [0, {num_train_timesteps}) (the scheduler's "
                "num_train_timesteps)"
            )
    if len(set(timesteps)) != len(timesteps):
        raise ValueError(f"expected distinct timesteps, got {timesteps}")
    return [int(t) for t in timesteps]


def _check_pool_and_sizes(pool: Optional[str], **sizes: int) -> None:
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
    for arg, value in sizes.items():
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"expected {arg} to be a positive integer, got {value!r}")


def _check_images(images, num_channels: int, size: Tuple[int, int], size_source: str) -> None:
    """Clean images `[N, num_channels, *size]` in [-1, 1], finite; `size_source` names where `size` comes from."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected images as a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    expected, shape = (num_channels, *size), tuple(images.shape)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected images of shape [N, {', '.join(map(str, expected))}] with N >= 1, got {shape}")
    if images.shape[1] != num_channels:
        raise ValueError(f"expected {num_channels} channels, got {shape[1]} (images of shape {shape}; {size_source})")
    if shape[2:] != expected[1:]:
        raise ValueError(f"expected images of spatial size {expected[1:]} ({size_source}), got {shape[2:]}")
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


@contextlib.contextmanager
def _eval_mode(*models: Optional[nn.Module]):
    """Run `models` in eval mode (no dropout), then give each back its own train/eval mode."""
    models = [m for m in models if m is not None]
    modes = [m.training for m in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def _as_hw(size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


# ------------------------------------------------------------------------------------------------------------------
# Images in (a tensor, or a dataset read by a DataLoader), features out (in memory, or float16 memory maps on disk)
# ------------------------------------------------------------------------------------------------------------------


def _image_batches(images, batch_size: int, num_workers: int) -> Tuple[int, torch.Tensor, Iterator[torch.Tensor]]:
    """`(N, the first image [1, C, H, W], an iterator over batches [B, C, H, W] in order)` of a tensor or of a torch
    `Dataset` whose items are images or `(image, ...)` tuples (read by a `DataLoader` with `num_workers` workers)."""
    if isinstance(images, torch.Tensor):
        return len(images), images, iter(images.split(batch_size))
    if not isinstance(images, Dataset):  # refused by the caller's check of `first`
        return 0, images, iter(())
    if len(images) == 0:
        raise ValueError("expected a non-empty image dataset, got 0 images")
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    first = _image_of(images[0])[None]
    return len(images), first, (_image_of(batch) for batch in loader)


def _extract_in_batches(
    images, batch_size: int, num_workers: int, check, features_of, max_memory_bytes, feature_dir, progress_bar, desc
) -> Dict[FeatureKey, Features]:
    """The one loop of both extractors: the images (a tensor, checked whole, or a dataset, checked batch by batch as a
    `DataLoader` reads it) through `features_of` (a batch -> `(block, t) -> [B, D]`) into a [`_FeatureSink`]."""
    streamed = not isinstance(images, torch.Tensor)
    num_images, first, batches = _image_batches(images, batch_size, num_workers)
    check(first if streamed else images)
    sink = _FeatureSink(num_images, max_memory_bytes, feature_dir)
    with _progress_bar(progress_bar, num_images, desc) as bar:
        for batch in batches:
            if streamed:
                check(batch)
            sink.add(features_of(batch))
            bar.update(len(batch))
    return sink.result()


def _image_of(item) -> torch.Tensor:
    """The image of a dataset item (or the images of a collated batch): the item itself or its first element."""
    return item[0] if isinstance(item, (tuple, list)) else item


class _FeatureSink:
    """Collects `(block, t) -> [N, D]` rows batch by batch into float32 tensors, or, when N x sum(D) float32 values
    exceed `max_memory_bytes`, into float16 `numpy.memmap` files: in a new folder of `feature_dir` for each extraction
    (one `feature_dir` for every split: the val features of a study are not overwritten by its test features), or in
    a temporary folder whose files are unlinked at once (the maps keep them alive until they are garbage collected;
    POSIX only)."""

    def __init__(self, num_images: int, max_memory_bytes: Optional[int], feature_dir: Optional[str]):
        if max_memory_bytes is not None and (not isinstance(max_memory_bytes, numbers.Integral) or max_memory_bytes < 0):
            raise ValueError(f"expected max_memory_bytes to be None or an integer >= 0, got {max_memory_bytes!r}")
        if feature_dir is not None:
            check_writable_dir(feature_dir, "feature_dir")  # before the first batch is extracted
        self.num_images, self.max_memory_bytes, self.feature_dir = num_images, max_memory_bytes, feature_dir
        self.arrays: Dict[FeatureKey, Features] = {}
        self.offset = 0

    def _allocate(self, batch: Dict[FeatureKey, torch.Tensor]) -> None:
        total_bytes = 4 * self.num_images * sum(value.shape[1] for value in batch.values())
        if self.max_memory_bytes is None or total_bytes <= self.max_memory_bytes:
            self.arrays = {key: torch.empty(self.num_images, v.shape[1]) for key, v in batch.items()}
            return
        folder = tempfile.mkdtemp(prefix="diffusion-features-", dir=self.feature_dir)
        for i, (key, value) in enumerate(batch.items()):
            path = os.path.join(folder, f"{i:03d}_{key[0]}_t{key[1]}.float16")
            self.arrays[key] = np.memmap(path, dtype=np.float16, mode="w+", shape=(self.num_images, value.shape[1]))
            if self.feature_dir is None:
                os.unlink(path)
        if self.feature_dir is None:
            os.rmdir(folder)

    def add(self, batch: Dict[FeatureKey, torch.Tensor]) -> None:
        if not self.arrays:
            self._allocate(batch)
        rows = slice(self.offset, self.offset + len(next(iter(batch.values()))))
        for key, value in batch.items():
            value = value.float().cpu()
            if isinstance(self.arrays[key], torch.Tensor):
                self.arrays[key][rows] = value
                continue
            half = value.numpy().astype(np.float16)
            if not np.isfinite(half).all():  # beyond float16's range (65504): the features cannot be stored
                raise ValueError(f"pair {key}: features exceed float16's range (|x| > 65504); raise max_memory_bytes")
            self.arrays[key][rows] = half
        self.offset = rows.stop

    def result(self) -> Dict[FeatureKey, Features]:
        for value in self.arrays.values():
            if isinstance(value, np.memmap):
                value.flush()
        return self.arrays


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
        _check_unet(unet)
        _check_scheduler(scheduler)
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
        images: Union[torch.Tensor, Dataset],
        blocks: Sequence[str],
        timesteps: Sequence[int],
        pool: Optional[str] = "mean",
        noise_seed: int = 0,
        num_noise_draws: int = 1,
        batch_size: int = 64,
        progress_bar: Optional[dict] = None,
        early_stop: bool = True,
        num_workers: int = 0,
        max_memory_bytes: Optional[int] = None,
        feature_dir: Optional[str] = None,
        views: Optional[str] = None,
    ) -> Dict[FeatureKey, Features]:
        r"""
        Pooled activations of each requested block at each requested timestep.

        Args:
            images (`torch.Tensor` of shape `[N, C, H, W]`, or a `torch.utils.data.Dataset`): clean images scaled to
                [-1, 1], with the U-Net's `in_channels` and `sample_size`; or a dataset of such images `[C, H, W]`
                (or of `(image, label)` items, e.g. `data.StreamingImages`), read in order by a `DataLoader` with
                `num_workers` worker processes. The same images give the same features either way.
            blocks (`Sequence[str]`): names from [`~DiffusionFeatureExtractor.block_names`].
            timesteps (`Sequence[int]`): integers in `[0, scheduler.config.num_train_timesteps)`; all of them share
                one forward pass per batch.
            pool (`"mean"`, `"2x2"` or `None`): global average (`[N, C]`), 2x2 average grid (`[N, 4C]`) or the whole
                flattened map (`[N, C*h*w]`).
            noise_seed (`int`): seeds the noise `eps`, shared by every image and timestep, so a feature depends only
                on its image, not on `batch_size` or the other images in the call.
            num_noise_draws (`int`): pooled features are averaged over this many noise draws.
            batch_size (`int`): images per forward pass (the forward batch is `batch_size * len(timesteps)`).
            progress_bar (`dict`, *optional*): `tqdm` arguments for the bar over images (advanced per batch);
                `{"disable": True}` hides it.
            early_stop (`bool`): stop each forward after the deepest requested block (same features, less work).
            num_workers (`int`, *optional*, defaults to 0): `DataLoader` worker processes for a dataset of images.
            max_memory_bytes (`int`, *optional*): when the features (N x the sum of the pairs' D, as float32) exceed
                this many bytes, they are written to float16 `numpy.memmap` files instead (relative error at most
                2^-11 per value); `None` keeps them in memory.
            feature_dir (`str`, *optional*): the folder of those files, kept there (each extraction in a new
                `diffusion-features-*` folder of it, so the extractions of several splits never overwrite each
                other); default a temporary one, removed when the maps are garbage collected.
            views (`str`, *optional*): `"dihedral"` averages each feature over the image's 8 rotations and mirror
                images (`image_views`; square `sample_size`; 8 times the work), each noised with the same `eps`: the
                feature no longer depends on the image's orientation. `None` (default) reads the image as it is.

        Returns:
            [`FeatureGrid`], a `dict[tuple[str, int], torch.Tensor | numpy.memmap]`: `(block, timestep) -> float32
            CPU tensor [N, D]`, or a float16 memory map `[N, D]` beyond `max_memory_bytes`; its `settings` record
            `pool`, `noise_seed`, `num_noise_draws` and `views`.
        """
        blocks = self._check_blocks(blocks)
        timesteps = check_timesteps(timesteps, self.scheduler.config.num_train_timesteps)
        _check_pool_and_sizes(pool, num_noise_draws=num_noise_draws, batch_size=batch_size)
        config = self.unet.config
        size = _as_hw(config.sample_size)
        check_views(views, size)
        noise = make_noise(num_noise_draws, (config.in_channels, *size), noise_seed)
        with _eval_mode(self.unet):
            features = _extract_in_batches(
                images, batch_size, num_workers,
                check=lambda batch: _check_images(batch, config.in_channels, size, "the unet's sample_size and in_channels"),
                features_of=lambda batch: self.features_for_batch(
                    batch, blocks, timesteps, pool, noise, early_stop, views
                ),
                max_memory_bytes=max_memory_bytes, feature_dir=feature_dir, progress_bar=progress_bar,
                desc="U-Net features",
            )  # fmt: skip
        settings = {"pool": pool, "noise_seed": noise_seed, "num_noise_draws": num_noise_draws, "views": views}
        return FeatureGrid(features, settings)

    def features_for_batch(
        self,
        images: torch.Tensor,
        blocks: Sequence[str],
        timesteps: Sequence[int],
        pool: Optional[str],
        noise: torch.Tensor,
        early_stop: bool = True,
        views: Optional[str] = None,
    ) -> Dict[FeatureKey, torch.Tensor]:
        r"""
        Pooled features of one batch, on the U-Net's device and differentiable (no validation, no `no_grad`):
        the building block of [`~DiffusionFeatureExtractor.extract`] and of the transformers classification head.

        Args:
            images: `[B, C, H, W]` clean images in [-1, 1].
            noise: `[num_noise_draws, C, H, W]` from [`make_noise`]; features are averaged over the draws.
            views: `None` or `"dihedral"` (see `image_views`); features are averaged over the views too.
        """
        per_view = [self._features_of_view(x, blocks, timesteps, pool, noise, early_stop) for x in image_views(images, views)]
        if len(per_view) == 1:
            return per_view[0]
        return {key: sum(view[key] for view in per_view) / len(per_view) for key in per_view[0]}

    def _features_of_view(self, images, blocks, timesteps, pool, noise, early_stop) -> Dict[FeatureKey, torch.Tensor]:
        device, dtype = self.unet.device, self.unet.dtype
        x0 = images.to(device=device, dtype=torch.float32).repeat(len(timesteps), 1, 1, 1)
        # timestep-major: row k * B + i is image i at timesteps[k]
        t_batch = torch.tensor(timesteps, dtype=torch.long, device=device).repeat_interleave(len(images))
        captured: Dict[str, torch.Tensor] = {}
        stop_at = max(blocks, key=self.block_names.index) if early_stop else None
        with _hook_lock(self.unet):
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

    def _check_blocks(self, blocks) -> List[str]:
        if blocks is None or not isinstance(blocks, (str, Iterable)):  # QA: None read "'NoneType' is not iterable"
            expected = f"a block's name or a list of them, from {self.block_names}"
            raise ValueError(f"blocks: expected {expected}, got {blocks!r}")
        blocks = [blocks] if isinstance(blocks, str) else list(blocks)
        if not blocks:
            raise ValueError(f"expected at least one block, got {blocks}")
        for name in blocks:
            if name not in self._block_modules:
                raise ValueError(f"unknown block {name!r}; expected one of {self.block_names}")
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"expected distinct blocks, got {blocks}")
        return blocks


# ------------------------------------------------------------------------------------------------------------------
# DiT blocks of a representation-conditioned DiT
# ------------------------------------------------------------------------------------------------------------------


def dit_block_name(index: int) -> str:
    """The feature key of DiT block `index`."""
    # The module is `transformer.blocks[index]`; the key keeps diffusers' DiT name "transformer_blocks.{index}",
    # which heads fitted on these features record: it is public and does not follow the attribute name.
    return f"transformer_blocks.{index}"


class DiTFeatureExtractor:
    r"""
    Extract pooled block activations of a representation-conditioned DiT on noised images, keyed like the U-Net
    features of [`DiffusionFeatureExtractor`], so `probing.fit_probe_grid` and `probing.evaluate_protocols` take them.

    Each clean image is mapped to the transformer's input x0 ([`~DiTFeatureExtractor.to_transformer_space`]),
    noised to `x_t = scheduler.add_noise(x0, eps, t)` with one noise `eps` from [`make_noise`] (the same for every
    image and timestep, so a feature depends only on its image and the seed), and run through the first blocks of the
    transformer, conditioned on the image's own representation r or on the null representation.

    Args:
        transformer ([`RepresentationConditionedDiTModel`]): the denoiser; used in eval mode, never modified.
        scheduler ([`DDPMScheduler`]): the scheduler it was trained with; noises x0.
        encoder: the transformers vision model whose representation (`representation_of`) conditions it.
        vae ([`AutoencoderKL`], *optional*): when the transformer works in the VAE's latent space.

    Example:

    ```py
    >>> extractor = DiTFeatureExtractor(pipe.transformer, pipe.scheduler, pipe.encoder, pipe.vae)
    >>> feats = extractor.extract(pipe.preprocess(images), timesteps=[100], block_indices=[3])
    >>> feats[("transformer_blocks.3", 100)].shape  # [N, hidden_size]
    ```
    """

    def __init__(
        self,
        transformer: RepresentationConditionedDiTModel,
        scheduler: DDPMScheduler,
        encoder: nn.Module,
        vae: Optional[AutoencoderKL] = None,
    ):
        if not isinstance(transformer, RepresentationConditionedDiTModel):
            raise TypeError(f"expected a RepresentationConditionedDiTModel, got {type(transformer).__name__}")
        _check_scheduler(scheduler)
        check_encoder_matches(encoder, transformer, vae)  # a model swapped into a pipeline since it was built too
        self.transformer, self.scheduler, self.encoder, self.vae = transformer, scheduler, encoder, vae

    @property
    def block_names(self) -> List[str]:
        return [dit_block_name(i) for i in range(self.transformer.config.num_layers)]

    def to_transformer_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Clean images `[N, C, H, W]` in [-1, 1] -> the transformer's x0: the VAE latents (posterior mode), else
        the images resized to its `sample_size`."""
        if self.vae is not None:
            return encode_latents(self.vae, pixels, sample=False)
        size = self.transformer.config.sample_size
        if tuple(pixels.shape[-2:]) == (size, size):
            return pixels
        return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def extract(
        self,
        images: Union[torch.Tensor, Dataset],
        timesteps: Sequence[int] = (100,),
        block_indices: Optional[Sequence[int]] = None,
        noise_seed: int = 0,
        representation: str = "encoder",
        pool: Optional[str] = "mean",
        batch_size: int = 64,
        progress_bar: Optional[dict] = None,
        num_workers: int = 0,
        max_memory_bytes: Optional[int] = None,
        feature_dir: Optional[str] = None,
    ) -> Dict[FeatureKey, Features]:
        r"""
        Pooled activations of each requested block at each requested timestep.

        Args:
            images (`torch.Tensor` of shape `[N, C, H, W]`, or a `torch.utils.data.Dataset`): clean images scaled to
                [-1, 1], of the size and channels the pipelines read (`models.input_image_size_and_channels`: the
                encoder's `image_size` and `num_channels`; for an encoder with `encoder_preprocessing`, such as one
                started from DINOv2, the DiT's input, or through the `vae` its input); or a dataset of such images (or of
                `(image, label)` items, e.g. `data.StreamingImages`), read in order by a `DataLoader`, as in
                [`DiffusionFeatureExtractor.extract`]. The same images give the same features either way.
            timesteps (`Sequence[int]`): integers in `[0, scheduler.config.num_train_timesteps)`.
            block_indices (`Sequence[int]`, *optional*): the blocks to read (default all); only blocks up to the
                deepest one are run.
            noise_seed (`int`, *optional*, defaults to 0): seeds the noise `eps`.
            representation (`str`, *optional*, defaults to `"encoder"`): `"encoder"` conditions the DiT on the
                image's own r, `"null"` on the null representation.
            pool (`"mean"`, `"2x2"` or `None`): over the patch grid: the mean token (`[N, hidden_size]`), a 2x2
                average grid (`[N, 4 * hidden_size]`) or all tokens flattened (`[N, num_patches * hidden_size]`).
            batch_size (`int`, *optional*, defaults to 64): images per forward pass.
            progress_bar (`dict`, *optional*): `tqdm` arguments for the bar over images (advanced per batch);
                `{"disable": True}` hides it.
            num_workers, max_memory_bytes, feature_dir: as in [`DiffusionFeatureExtractor.extract`] (`DataLoader`
                workers for a dataset; float16 memory maps beyond `max_memory_bytes`).

        Returns:
            `dict[tuple[str, int], torch.Tensor | numpy.memmap]`: `(dit_block_name(i), t) -> float32 CPU tensor
            [N, D]` (a float16 memory map beyond `max_memory_bytes`), e.g. `("transformer_blocks.3", 100)`,
            timestep-major.
        """
        config = self.transformer.config
        timesteps = check_timesteps(timesteps, self.scheduler.config.num_train_timesteps)
        block_indices = self._check_block_indices(block_indices)
        if representation not in ("encoder", "null"):
            raise ValueError(f"expected representation 'encoder' or 'null', got {representation!r}")
        _check_pool_and_sizes(pool, batch_size=batch_size)
        size, channels = input_image_size_and_channels(self.encoder, self.transformer, self.vae)
        size, source = _as_hw(size), self._input_source()
        noise = make_noise(1, (config.in_channels, config.sample_size, config.sample_size), noise_seed)
        with _eval_mode(self.encoder, self.transformer, self.vae):
            return _extract_in_batches(
                images, batch_size, num_workers,
                check=lambda batch: _check_images(batch, channels, size, source),
                features_of=lambda batch: self.features_for_batch(
                    batch, timesteps, block_indices, representation, pool, noise
                ),
                max_memory_bytes=max_memory_bytes, feature_dir=feature_dir, progress_bar=progress_bar,
                desc="DiT features",
            )  # fmt: skip

    def _input_source(self) -> str:
        """Where the input size and channels `extract` checks come from (`models.input_image_size_and_channels`)."""
        if self.transformer.config.encoder_preprocessing is None:
            return "the encoder's image_size and num_channels"
        if self.vae is None:
            return "the DiT's sample_size and in_channels; the encoder's preprocessing converts them for it"
        return "the VAE's input: the DiT's sample_size times the VAE's scale factor, the VAE's in_channels"

    def features_for_batch(
        self,
        images: torch.Tensor,
        timesteps: Sequence[int],
        block_indices: Sequence[int],
        representation: str,
        pool: Optional[str],
        noise: torch.Tensor,
    ) -> Dict[FeatureKey, torch.Tensor]:
        """Pooled features of one batch of clean images, on the transformer's device (no validation): the building
        block of [`~DiTFeatureExtractor.extract`]. `noise`: `[1, C, h, w]` from [`make_noise`], in transformer space."""
        config = self.transformer.config
        device, dtype = self.transformer.device, self.transformer.dtype
        grid = config.sample_size // config.patch_size
        r = representation_of(self.encoder, self.transformer, images) if representation == "encoder" else None
        x0 = self.to_transformer_space(images).to(device=device, dtype=torch.float32)
        eps = noise.to(device).expand_as(x0)
        features = {}
        for t in timesteps:
            x_t = self.scheduler.add_noise(x0, eps, torch.full((len(x0),), t, dtype=torch.long, device=device))
            # only the blocks up to the deepest requested one run
            states = self.transformer.block_hidden_states(x_t.to(dtype), t, r, num_blocks=max(block_indices) + 1)
            for i in block_indices:
                tokens = states[i].unflatten(1, (grid, grid))  # (N, h, w, hidden_size): the tokens on the patch grid
                features[(dit_block_name(i), t)] = _pool(tokens, pool, channels_last=True)
        return features

    def _check_block_indices(self, block_indices) -> List[int]:
        num_layers = self.transformer.config.num_layers
        if block_indices is None:
            return list(range(num_layers))
        block_indices = list(block_indices)
        bad = [i for i in block_indices if not isinstance(i, numbers.Integral) or not 0 <= i < num_layers]
        if not block_indices or bad:
            raise ValueError(
                f"expected block_indices in [0, {num_layers}) (the transformer's num_layers), got {block_indices}"
            )
        if len(set(block_indices)) != len(block_indices):
            raise ValueError(f"expected distinct block_indices, got {block_indices}")
        return [int(i) for i in block_indices]

"""What both scorers share: checked images and class ids, one random stream per image (so results do not depend on
batch sizes or on the other images), and the progress bar."""

import hashlib
import numbers
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..validation import check_finite_rows, check_unit_range

__all__ = ["content_seeds"]

Classes = Union[int, Sequence[int]]
Seed = Union[int, Sequence[int]]


def checked_images(images: torch.Tensor, model) -> torch.Tensor:
    """Checked images on the model's device (a callable's: the images' own device), in the scorers' dtype: float64
    images stay float64, all others become float32. Half precision is too coarse for the scores, whatever the model's
    dtype: the ODE's divergence (`tr / sigma`, about `1e3 D` near `t_min`) overflows float16, and bfloat16 rounds a
    log-likelihood of a few thousand nats to 16 or 32 (review: `-inf` and ties on 32x32 images)."""
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or len(images) == 0:
        raise ValueError(f"expected a non-empty tensor of images [N, ...], got {getattr(images, 'shape', images)}")
    config = getattr(model, "config", None) if isinstance(model, torch.nn.Module) else None
    size, channels = (config.get("sample_size"), config.get("in_channels")) if hasattr(config, "get") else (None, None)
    if size is not None and channels is not None:  # a diffusers model: refuse a size it was not trained at
        expected = (channels, *((size, size) if isinstance(size, int) else size))
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape [N, {', '.join(map(str, expected))}] (the model's in_channels and "
                f"sample_size), got {list(images.shape)}; resize them first (diffusion_classifiers.data."
                "preprocess_images, or ScoreSDEClassifierPipeline, which resizes)"
            )
    check_finite_rows(images, "input", item="image")
    if size is not None:  # a diffusers model trained on [-1, 1] pixels (a callable may model any density)
        check_unit_range(images, "images")
    device = next(model.parameters(), images).device if isinstance(model, torch.nn.Module) else images.device
    return images.to(device, torch.float64 if images.dtype == torch.float64 else torch.float32)


def checked_class_ids(classes: Classes, model, device) -> torch.Tensor:
    if isinstance(classes, numbers.Integral):
        ids = list(range(classes))
    else:
        ids = classes.tolist() if hasattr(classes, "tolist") else list(classes)
        if not all(is_non_negative_integer(c) for c in ids):  # 0.5 is not class 0
            raise ValueError(f"expected class ids as integers >= 0, got {classes!r}")
    config = getattr(model, "config", None)
    num_embeds = config.get("num_class_embeds") if hasattr(config, "get") else None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or (num_embeds and max(ids) >= num_embeds):
        expected = f"0..{num_embeds - 1}" if num_embeds else "0..K-1"
        raise ValueError(f"expected at least one class, distinct class ids in {expected}, got {ids}")
    return torch.tensor(ids, device=device)


def is_count(value) -> bool:
    """A whole number >= 1; not a bool (QA: `num_timesteps=True`, a JSON `true`, ran one timestep)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_choice(name: str, value, choices) -> None:
    """`ValueError` naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"expected {name} in {choices}, got {value!r}")


def check_counts(**values) -> None:
    """`ValueError` naming the first of `values` that is no count (`is_count`)."""
    for name, value in values.items():
        if not is_count(value):
            raise ValueError(f"expected {name} >= 1, got {value}")


def is_non_negative_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def image_seeds(seed: Seed, num_images: int) -> List[np.random.SeedSequence]:
    """One seed stream per image: `seed` int -> `SeedSequence(seed, spawn_key=(i,))`; a sequence (list, array,
    tensor) -> one per image. Seeds are non-negative integers: others are refused, not rounded."""
    seeds = seed.tolist() if hasattr(seed, "tolist") else seed  # arrays and tensors, 0-d ones included
    if is_non_negative_integer(seeds):
        return [np.random.SeedSequence(int(seeds), spawn_key=(i,)) for i in range(num_images)]
    if not isinstance(seeds, Sequence) or isinstance(seeds, str) or not all(is_non_negative_integer(s) for s in seeds):
        raise ValueError(f"seed: expected a non-negative int or one per image ({num_images}), got {seed!r}")
    if len(seeds) != num_images:
        raise ValueError(f"expected one seed per image ({num_images}), got {len(seeds)}")
    return [np.random.SeedSequence(int(s)) for s in seeds]


def check_finite_output(values: torch.Tensor, image_ids, class_ids, times: Optional[torch.Tensor] = None) -> None:
    """Refuse NaN or inf in `values` `[R, ...]`, computed from the model's predictions of image `image_ids[r]` under
    class `class_ids[r]` (at time `times[r]`; without it: somewhere along the ODE), naming the first bad row: the ELBO
    would otherwise read it as a timestep not evaluated and the ODE return NaN or -inf, both without a word."""
    finite = torch.isfinite(values.reshape(len(values), -1)).all(1)
    if bool(finite.all()):
        return
    row = int((~finite).nonzero()[0])
    when = "along the probability-flow ODE" if times is None else f"at t={float(times[row]):.4g}"
    raise RuntimeError(
        f"the model's noise prediction for image {int(image_ids[row])}, class {int(class_ids[row])} {when} gave NaN "
        "or inf; expected finite predictions (a half-precision model that overflows? run it in float32)"
    )


def content_seeds(images: torch.Tensor, seed: int = 0) -> List[int]:
    """One seed per image from `seed` and the SHA-256 of the image's values (as float32), for the scorers' `seed`:
    an image then gets the same probes, timesteps and noise alone, in any batch and at any position (identical
    images get identical draws)."""
    if not is_non_negative_integer(seed):  # QA: -1 passed here and was refused with seed_by="position"
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    prefix = f"{int(seed)}:".encode()
    return [
        int.from_bytes(hashlib.sha256(prefix + image.detach().float().cpu().numpy().tobytes()).digest()[:8], "little")
        >> 1
        for image in images
    ]


def open_progress_bar(config: Optional[dict], **defaults) -> tqdm:
    """A `tqdm.auto` bar from the `defaults` overridden by the caller's `config` (tqdm arguments)."""
    return tqdm(**{**defaults, **(config or {})})


def stream_generator(stream: np.random.SeedSequence, *key: int) -> torch.Generator:
    child = np.random.SeedSequence(stream.entropy, spawn_key=stream.spawn_key + key)
    return torch.Generator().manual_seed(int(child.generate_state(1, np.uint64)[0]) >> 1)


def as_column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`[B]` -> `[B, 1, 1, ...]` to broadcast against `like` `[B, ...]`."""
    return values.view(-1, *[1] * (like.ndim - 1))

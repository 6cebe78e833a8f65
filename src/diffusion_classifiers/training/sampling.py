"""The data order of the training loop: a function of (seed, epoch) alone, so a run resumed in any epoch draws the
batches the uninterrupted run would have drawn; and the items read where not all are (`evenly_spaced_positions`)."""

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EpochSeededSampler", "evenly_spaced_positions"]


def evenly_spaced_positions(length: int, count: int) -> np.ndarray:
    """`min(count, length)` distinct positions in `0..length-1` spread evenly over them, the first and last included:
    a sample of a data set's items that a sorted order (by class, by site) does not bias."""
    return np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int))


class EpochSeededSampler(Sampler[int]):
    r"""
    Wraps a random sampler that draws from its `generator` (a `RandomSampler`, a `WeightedRandomSampler`, ...) and
    reseeds that generator with `seed + epoch` at the start of every pass. accelerate's `DataLoaderShard.set_epoch`
    sets the epoch; every process draws the same order, and accelerate's batch sharding splits it between them.

    Args:
        sampler (`torch.utils.data.Sampler`): a sampler whose `generator` attribute is a `torch.Generator`.
        seed (`int`): the order of epoch e is the one of a generator seeded with `seed + e`.
    """

    def __init__(self, sampler: Sampler, seed: int):
        if not isinstance(getattr(sampler, "generator", None), torch.Generator):
            raise ValueError(
                f"expected a sampler with a `set_epoch(epoch)` method or a `torch.Generator` as its `generator`, got "
                f"{type(sampler).__name__} with neither: a resumed run could not replay its order"
            )
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.sampler.generator.manual_seed(self.seed + self.epoch)
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

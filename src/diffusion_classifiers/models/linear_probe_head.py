"""The linear head that classifies one pooled diffusion feature, saved as a pipeline component."""

from typing import List, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..validation import check_unique_class_names
from ..views import check_views

__all__ = ["FeatureHeadMixin", "LinearProbeHead", "column_mean_and_std"]

MIN_FEATURE_STD = 1e-6  # the standardisation's floor: a constant column is divided by this, not by 0


def column_mean_and_std(features: torch.Tensor) -> tuple:
    """The mean and the std (population, clamped at `MIN_FEATURE_STD`) of each column of `features` `[N, D]`, summed
    in float64, as float32 `[D]` tensors: a column constant in `features` then gets exactly its value as mean and is 0
    once standardised. (A float32 mean misses the constant by a rounding error, which the clamped std blows up a
    million times: a column constant on the labelled images then outweighed every other column, digits k-NN 0.945 ->
    0.173, a probe's val accuracy 0.95 -> 0.32.)"""
    x = features.double()
    mean = x.mean(0)
    return mean.float(), (x - mean).square().mean(0).sqrt().clamp(min=MIN_FEATURE_STD).float()


class FeatureHeadMixin:
    """What every classification head over one feature vector shares: the config checks, the feature-size check,
    `id2label` from the `class_names` in its config, and float32 whatever the pipeline is cast or loaded in."""

    def to(self, *args, **kwargs):
        """`torch.nn.Module.to`, but the head stays float32 whatever dtype is asked (a pipeline's `.to(torch.bfloat16)`
        casts every component): it is tiny, and its decisions turn on differences of logits or similarities below
        bfloat16's resolution (QA: a bfloat16 prototype head, temperature 1e-3, tied its top two classes on 94.5% of
        the images and chose class 0). Features of any dtype are read in float32. (`half()`, `bfloat16()` and
        `type()` called on the head itself still cast it.)"""
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        return self if device is None else super().to(device=device, non_blocking=non_blocking)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`ModelMixin.from_pretrained` in float32, whatever `dtype` (`torch_dtype`) a pipeline loads with (`to`)."""
        kwargs.pop("dtype", None)
        kwargs.pop("torch_dtype", None)
        return super().from_pretrained(*args, **kwargs)

    @staticmethod
    def check_head_config(in_features: int, num_classes: int, class_names: Optional[List[str]]) -> None:
        if in_features < 1 or num_classes < 2:
            raise ValueError(f"expected in_features >= 1 and num_classes >= 2, got {in_features} and {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"expected {num_classes} class_names, got {len(class_names)}: {class_names}")
        if class_names is not None:
            check_unique_class_names(class_names, "class_names")

    def check_features(self, features) -> None:
        """`ValueError` unless `features` is `[N, in_features]` (`checked_features` also gives them as a tensor)."""
        self.checked_features(features)

    def checked_features(self, features) -> torch.Tensor:
        """`features` `[N, in_features]` as a tensor: a tensor as it is, an array (the float16 `numpy.memmap` of an
        extraction beyond its memory budget, QA) as a float32 CPU one."""
        if not isinstance(features, torch.Tensor):
            features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if features.ndim != 2 or features.shape[1] != self.config.in_features:
            raise ValueError(f"expected features of shape [N, {self.config.in_features}], got {tuple(features.shape)}")
        return features

    @property
    def id2label(self) -> dict:
        names = self.config.class_names or [str(i) for i in range(self.config.num_classes)]
        return dict(enumerate(names))


class LinearProbeHead(FeatureHeadMixin, ModelMixin, ConfigMixin):
    """Standardise a feature vector with training statistics, then apply one linear layer.

    The config records which feature the head reads (`block`, `timestep`, `pool`, noise seed and draws, the `views`
    it is averaged over: `diffusion_classifiers.views`) and the class names, so a saved pipeline carries everything
    needed to classify: no side files. `block` may be a list of blocks: the head then reads their pooled features
    concatenated in that order (a hypercolumn).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        block: Union[str, List[str]] = "mid_block",
        timestep: int = 0,
        pool: Optional[str] = "mean",
        noise_seed: int = 0,
        num_noise_draws: int = 1,
        class_names: Optional[List[str]] = None,
        views: Optional[str] = None,
    ):
        super().__init__()
        self.check_head_config(in_features, num_classes, class_names)
        check_views(views)
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.checked_features(features).to(device=self.linear.weight.device, dtype=self.linear.weight.dtype)
        return self.linear((features - self.feature_mean) / self.feature_std)

"""The nearest-prototype head: cosine similarity to per-class mean features, saved as a pipeline component."""

import math
import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..validation import as_feature_matrix, as_labels, check_label_range, resolve_num_classes
from .linear_probe_head import FeatureHeadMixin, column_mean_and_std

__all__ = ["TEMPERATURE_RANGE", "PrototypeHead", "fit_prototypes"]

# The softmax temperatures `PrototypeHead.calibrate_temperature` searches: at the top the probabilities of cosine
# similarities in [-1, 1] are near uniform.
TEMPERATURE_RANGE = (1e-3, 1e2)


class PrototypeHead(FeatureHeadMixin, ModelMixin, ConfigMixin):
    r"""
    Classify a feature vector by its cosine similarity to one prototype per class.

    `forward(features)` standardises the features with `feature_mean` / `feature_std` (the identity unless the head
    was fitted with `standardize=True`), L2-normalises them and returns the logits `cos(x, prototype_k) /
    temperature`, `[N, num_classes]`. The prototypes are the L2-normalised class means of the L2-normalised
    (standardised) labelled features; build a head with [`fit_prototypes`]. The temperature only scales the softmax
    probabilities, never the predicted class.

    Args:
        in_features: the feature size D.
        num_classes: K >= 2.
        temperature: > 0, divides the cosine similarities.
        block, timestep: the feature the head reads, as in [`LinearProbeHead`] (("encoder", 0): the RC-DiT
            representation).
        class_names: the names of the K classes, saved with the weights.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        temperature: float = 0.1,
        block: str = "encoder",
        timestep: int = 0,
        class_names: Optional[List[str]] = None,
    ):
        super().__init__()
        self.check_head_config(in_features, num_classes, class_names)
        if not temperature > 0:
            raise ValueError(f"expected temperature > 0, got {temperature}")
        self.register_buffer("prototypes", torch.zeros(num_classes, in_features))
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """Standardise with the stored statistics, then L2-normalise each row."""
        features = self.checked_features(features).to(device=self.prototypes.device, dtype=self.prototypes.dtype)
        return F.normalize((features - self.feature_mean) / self.feature_std, dim=1)

    def similarities(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each feature to each prototype, `[N, num_classes]`."""
        return self.normalize(features) @ self.prototypes.T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.similarities(features) / self.config.temperature

    def calibrate_temperature(self, features, labels) -> float:
        """Set the temperature to the one under which the softmax probabilities of labelled `features` (held out
        from the prototypes: validation images) have the smallest negative log-likelihood (temperature scaling, Guo
        et al. 2017), within `TEMPERATURE_RANGE`, and return it; the predicted classes do not change. When the head
        classifies every one of `features` correctly, the log-likelihood only grows as the temperature falls to 0
        and names no temperature: the current one is kept, with a warning."""
        from scipy.optimize import minimize_scalar

        y = as_labels(labels, "labels")
        x = as_feature_matrix(features, "features", len(y))
        check_label_range(y, "labels", self.config.num_classes)
        with torch.no_grad():
            similarities = self.similarities(x).double().cpu()
        targets = torch.as_tensor(y)
        if torch.equal(similarities.argmax(1), targets):
            warnings.warn(
                f"calibrate_temperature: the head classifies all {len(targets)} labelled images correctly, so their "
                f"log-likelihood names no temperature (it grows as the temperature falls to 0); kept "
                f"{self.config.temperature}. Calibrate on more, or harder, held-out images",
                UserWarning,
                stacklevel=2,
            )
            return float(self.config.temperature)

        def negative_log_likelihood(log_inverse_temperature: float) -> float:
            return float(F.cross_entropy(similarities * math.exp(log_inverse_temperature), targets))

        lowest, highest = TEMPERATURE_RANGE
        bounds = (-math.log(highest), -math.log(lowest))  # of the inverse temperature's log
        best = minimize_scalar(negative_log_likelihood, bounds=bounds, method="bounded")
        temperature = float(math.exp(-best.x))
        if not lowest * 1.01 < temperature < highest * 0.99:  # QA: an RC-DiT head stopped at 1e-3 without a word
            warnings.warn(
                f"calibrate_temperature: {temperature:.3g} is at the end of TEMPERATURE_RANGE {TEMPERATURE_RANGE}: the "
                f"labelled images' log-likelihood is best beyond it, so the probabilities are "
                f"{'less' if temperature < 1 else 'more'} confident than they support (at the largest, the prototypes "
                "hardly tell the classes apart)",
                UserWarning,
                stacklevel=2,
            )
        self.register_to_config(temperature=temperature)
        return temperature


def fit_prototypes(
    features,
    labels,
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    temperature: float = 0.1,
    standardize: bool = False,
    block: str = "encoder",
    timestep: int = 0,
    val_features=None,
    val_labels=None,
) -> PrototypeHead:
    r"""
    A [`PrototypeHead`] whose prototypes are the class means of the labelled `features`.

    Args:
        features: `[N, D]` labelled features (tensor or array).
        labels: `[N]` integer labels in `[0, num_classes)`; every class needs at least one sample.
        num_classes: defaults to `len(class_names)`, else the largest label + 1.
        class_names, temperature, block, timestep: recorded in the head's config. The default temperature (0.1)
            gives probabilities that are not calibrated (with a handful of labels often above 0.99 for wrong
            decisions): give validation features to fit it.
        standardize: standardise the features with the labelled set's mean and std (std clamped at 1e-6) before the
            L2 normalisation; the statistics are stored in the head.
        val_features, val_labels: labelled features not among `features`; when given, the temperature is fitted on
            them ([`PrototypeHead.calibrate_temperature`]) in place of `temperature`.
    """
    if (val_features is None) != (val_labels is None):
        raise ValueError("val_features and val_labels: expected both or neither")
    y = as_labels(labels, "labels")
    x = as_feature_matrix(features, "features", len(y))
    num_classes = resolve_num_classes(num_classes, class_names, y)
    check_label_range(y, "labels", num_classes)
    counts = torch.bincount(torch.as_tensor(y), minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"class {int((counts == 0).nonzero()[0])} has no labelled sample: cannot build its prototype")
    names = list(class_names) if class_names is not None else None
    head = PrototypeHead(x.shape[1], num_classes, temperature, block, int(timestep), names)
    with torch.no_grad():
        if standardize:
            mean, std = column_mean_and_std(x)
            head.feature_mean.copy_(mean)
            head.feature_std.copy_(std)
        normed = head.normalize(x)
        sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, torch.as_tensor(y), normed)
        head.prototypes.copy_(F.normalize(sums / counts[:, None], dim=1))
    if val_features is not None:
        head.calibrate_temperature(val_features, val_labels)
    return head

"""The variance-preserving SDE of a DDPM schedule, the epsilon-predictor interface both scorers call, and bits per
dimension."""

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["PIXEL_BIN_WIDTH", "VPSDE", "EpsFn", "as_eps_model", "bits_per_dim"]

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PIXEL_BIN_WIDTH = 2 / 255
"""Width of one 8-bit intensity level once images are scaled to [-1, 1] as `x = k / 127.5 - 1`."""


@dataclass(frozen=True)
class VPSDE:
    r"""
    The variance-preserving SDE `dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`, `t` in `[0, 1]`, with linear
    `beta(t) = beta_min + t (beta_max - beta_min)`:

    - `alpha(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min)` (mean coefficient, `sqrt(alphas_cumprod)`),
    - `sigma(t)^2 = 1 - alpha(t)^2`, so `x_t = alpha(t) x_0 + sigma(t) eps`.

    It is the continuous limit of `DDPMScheduler`'s linear schedule with `num_train_timesteps = N`,
    `betas = linspace(beta_min / N, beta_max / N, N)` (the defaults 1e-4 .. 0.02 over 1000 steps give 0.1 .. 20).
    Discrete step `k` (0-based) is continuous time `t_k = (k + 1) / N`: `alphas_cumprod[k] = alpha(t_k)^2` to within
    1e-3 for the default schedule (`t = k / (N - 1)` is twice as far off and puts `k = 0` at zero noise).

    Args:
        beta_min, beta_max: `beta(0)` and `beta(1)`.
        num_train_timesteps: `N` of the discrete schedule a model was trained with.
        t_min: the smallest time used (the ODE starts there; denoising timesteps are drawn from `[t_min, 1]`).
            Times below `1 / N` map to float timesteps in `(-1, 0)`, an extrapolation of the timestep embedding.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    num_train_timesteps: int = 1000
    t_min: float = 1e-5

    def __post_init__(self):
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(f"expected 0 < beta_min < beta_max, got {self.beta_min} and {self.beta_max}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"expected 0 < t_min < 1, got {self.t_min}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"expected num_train_timesteps >= 1, got {self.num_train_timesteps}")

    @classmethod
    def from_scheduler(cls, scheduler, t_min: float = 1e-5) -> "VPSDE":
        """The VP-SDE of a `DDPMScheduler`-like config with a linear beta schedule and epsilon prediction."""
        config = scheduler.config
        if config.get("beta_schedule") != "linear" or config.get("trained_betas") is not None:
            raise ValueError(f"expected a linear beta schedule, got {config.get('beta_schedule')!r}")
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"expected prediction_type 'epsilon', got {config.get('prediction_type')!r}")
        n = config["num_train_timesteps"]
        return cls(config["beta_start"] * n, config["beta_end"] * n, n, t_min)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (-torch.expm1(2 * self.log_alpha(t))).sqrt()

    def discrete_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The float model timestep `k = N t - 1` of continuous time `t` (inverse of `continuous_time`)."""
        return self.num_train_timesteps * t - 1

    def continuous_time(self, k: torch.Tensor) -> torch.Tensor:
        """Continuous time `t = (k + 1) / N` of discrete timestep `k`."""
        return (k + 1) / self.num_train_timesteps

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """`lambda = log(alpha / sigma)`, in float64."""
        log_alpha = self.log_alpha(t.double())
        return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))

    def log_snr_range(self) -> torch.Tensor:
        """`lambda = log(alpha^2 / sigma^2)` at `t_min` and at 1 (float64; decreasing in t)."""
        ends = torch.tensor([self.t_min, 1.0], dtype=torch.float64)
        return 2 * self.log_alpha(ends) - torch.log(-torch.expm1(2 * self.log_alpha(ends)))

    def time_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The t of each float64 `log_snr`: `-2 log alpha = softplus(-lambda) = a t^2 + b t`, solved for t."""
        c = torch.nn.functional.softplus(-log_snr)
        a, b = (self.beta_max - self.beta_min) / 2, self.beta_min
        return 2 * c / (b + torch.sqrt(b**2 + 4 * a * c))  # the positive root, written without cancellation


def as_eps_model(model, sde: Optional[VPSDE] = None) -> EpsFn:
    r"""
    The epsilon-predictor `eps_fn(x_t, t, class_labels) -> eps` with continuous `t` (`[B]`) that the scorers call.

    - A diffusers model (`UNet2DModel(num_class_embeds=K)`, or any `ModelMixin` taking `class_labels`) is called as
      `model(x_t, sde.discrete_timestep(t), class_labels=labels).sample` in its own dtype (the timesteps in float32);
      the result comes back in the dtype of `x_t`. It must have a class embedding, and must not mix samples in a
      batch or draw random numbers: a model in training mode with dropout or batch norm is refused (`model.eval()`).
    - Any other callable is returned unchanged: it must already take continuous `t`.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        if not callable(model):
            raise TypeError(f"expected a diffusers model or a callable eps_fn(x, t, labels), got {type(model)}")
        return model
    if hasattr(model, "class_embedding") and model.class_embedding is None:
        raise ValueError(
            f"expected a class-conditional model (UNet2DModel(num_class_embeds=K)), got {type(model).__name__} "
            "without a class embedding"
        )
    _check_deterministic(model)
    sde = sde or VPSDE()
    dtype = next(model.parameters()).dtype

    def eps_fn(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        # the timesteps stay float32: in bfloat16 998.7 rounds to 1000, outside the trained 0..999 (diffusers' time
        # projection casts its embedding to the model's dtype itself)
        out = model(x.to(dtype), sde.discrete_timestep(t).float(), class_labels=class_labels)
        return getattr(out, "sample", out).to(x.dtype)

    return eps_fn


def _check_deterministic(model: torch.nn.Module) -> None:
    """Refuse a model whose layers behave as in training: dropout draws from torch's global generator (the scores
    would change from call to call, whatever `seed`) and batch norm mixes the images and classes of a batch."""
    training = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if module.training
        and (isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
             or (isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0))
    ]
    if training:
        raise ValueError(
            f"expected a model in eval mode, got {type(model).__name__} in training mode with {len(training)} dropout "
            f"or batch-norm layers active (e.g. {training[0]!r}), which make the scores random and batch-dependent; "
            "call model.eval() first"
        )


def bits_per_dim(log_likelihood: torch.Tensor, num_dims: int) -> torch.Tensor:
    r"""
    Bits per dimension of 8-bit images from the continuous log-density (nats) of their `[-1, 1]` scaling:
    `bpd = -(log p(x) - D log(127.5)) / (D log 2)`, i.e. `-log2` of the probability mass `p(x) (2/255)^D` of the
    pixel bin around `x`, per dimension. (score_sde's "+ 7" convention, bins of width 2/256, gives
    `log2(256/255)` = 0.0056 bits more. For the usual uniform-dequantisation bound, add uniform noise of one bin
    width to `x` before scoring.)
    """
    return -(log_likelihood + num_dims * math.log(PIXEL_BIN_WIDTH)) / (num_dims * math.log(2))

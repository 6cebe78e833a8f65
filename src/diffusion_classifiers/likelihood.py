r"""Score-SDE generative classification: class-conditional log-likelihoods of an epsilon-predictor.

Two scorers share one VP-SDE and one model interface:

- [`probability_flow_log_likelihood`]: the exact `log p(x | c)` of the probability-flow ODE, with the divergence
  by the Hutchinson estimator (or exactly, for small images), solved in torch with a fixed-step Heun / RK4 grid
  (by default 32 RK4 steps uniform in log-SNR), an exponential multistep solver in log-SNR (one evaluation per step)
  or an adaptive Dormand-Prince (RK45) solver. Every image is paired with every class in one ODE state.
- [`denoising_error_scores`]: the weighted denoising error (the diffusion term of the ELBO), with the same noise
  and timesteps for every class, adaptive class pruning (Li et al. 2023) and a sequential early stop that drops
  each class once a paired test settles it below the leader (for two classes: the sign of the log-likelihood
  ratio); [`replay_stopping_rule`] replays such rules on an exhaustive run, to choose one on validation images,
  and [`rank_timestep_strata`] orders the timesteps by how well each one alone separates the classes there.

Conventions:

- Time: continuous `t` in `[t_min, 1]`. A diffusers model trained with `DDPMScheduler` (linear betas from
  `beta_start` to `beta_end` over `N` steps) is called at the float timestep `k = N t - 1` (see [`VPSDE`]).
- Images: tensors `[N, C, H, W]` (any `[N, ...]` for plain callables) scaled to `[-1, 1]`; `D` = values per image.
  For a diffusers model they must already have its `in_channels` and `sample_size`: other sizes are refused, not
  resized (a convolutional U-Net would run on them, but its likelihood would be that of an untrained resolution).
  [`ScoreSDEClassifierPipeline`] resizes its inputs to the model's size first.
- NFE: one epsilon evaluation of one image for one class at one time = 1 network function evaluation.
- Seeds: everything random about image `i` (Hutchinson probes, stratified timesteps, noise) comes from its own
  stream `SeedSequence(seed, spawn_key=(i, ...))`, so the numbers depend on the image's position in the call and
  the seed, never on batch sizes, the other images' values or which classes are still alive. With one seed per
  image from [`content_seeds`] they depend on the image's own values and the seed alone: not on its position.
- Progress: `progress_bar` is a dict of `tqdm.auto.tqdm` arguments (`{"disable": True}` silences the bar;
  `ScoreSDEClassifierPipeline` passes those of its `set_progress_bar_config`). An unknown key raises tqdm's
  `TqdmKeyError`.
"""

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from .validation import check_finite_rows, check_unit_range

__all__ = [
    "PIXEL_BIN_WIDTH",
    "SOLVERS",
    "STEP_SPACINGS",
    "TIMESTEP_SPACINGS",
    "WEIGHTINGS",
    "DenoisingScoreResult",
    "LikelihoodResult",
    "VPSDE",
    "as_eps_model",
    "bits_per_dim",
    "content_seeds",
    "denoising_error_scores",
    "probability_flow_log_likelihood",
    "rank_timestep_strata",
    "replay_stopping_rule",
]

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Classes = Union[int, Sequence[int]]
Seed = Union[int, Sequence[int]]

PIXEL_BIN_WIDTH = 2 / 255
"""Width of one 8-bit intensity level once images are scaled to [-1, 1] as `x = k / 127.5 - 1`."""


# ---------------------------------------------------------------------------------------------------------------
# The SDE and the model interface
# ---------------------------------------------------------------------------------------------------------------


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


def as_eps_model(model, sde: Optional[VPSDE] = None) -> EpsFn:
    r"""
    The epsilon-predictor `eps_fn(x_t, t, class_labels) -> eps` with continuous `t` (`[B]`) that the scorers call.

    - A diffusers model (`UNet2DModel(num_class_embeds=K)`, or any `ModelMixin` taking `class_labels`) is called as
      `model(x_t, sde.discrete_timestep(t), class_labels=labels).sample` in its own dtype; the result comes back in
      the dtype of `x_t`. It must have a class embedding, and must not mix samples in a batch (eval mode).
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
    sde = sde or VPSDE()
    dtype = next(model.parameters()).dtype

    def eps_fn(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        out = model(x.to(dtype), sde.discrete_timestep(t).to(dtype), class_labels=class_labels)
        return getattr(out, "sample", out).to(x.dtype)

    return eps_fn


def bits_per_dim(log_likelihood: torch.Tensor, num_dims: int) -> torch.Tensor:
    r"""
    Bits per dimension of 8-bit images from the continuous log-density (nats) of their `[-1, 1]` scaling:
    `bpd = -(log p(x) - D log(127.5)) / (D log 2)`, i.e. `-log2` of the probability mass `p(x) (2/255)^D` of the
    pixel bin around `x`, per dimension. (score_sde's "+ 7" convention, bins of width 2/256, gives
    `log2(256/255)` = 0.0056 bits more. For the usual uniform-dequantisation bound, add uniform noise of one bin
    width to `x` before scoring.)
    """
    return -(log_likelihood + num_dims * math.log(PIXEL_BIN_WIDTH)) / (num_dims * math.log(2))


# ---------------------------------------------------------------------------------------------------------------
# Shared input handling and seeds
# ---------------------------------------------------------------------------------------------------------------


def _prepare_images(images: torch.Tensor, model) -> torch.Tensor:
    """Checked, floating-point images on the model's device (a callable's: the images' own device)."""
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
    return images.to(device, images.dtype if images.is_floating_point() else torch.float32)


def _class_ids(classes: Classes, model, device) -> torch.Tensor:
    ids = list(range(classes)) if isinstance(classes, numbers.Integral) else [int(c) for c in classes]
    config = getattr(model, "config", None)
    num_embeds = config.get("num_class_embeds") if hasattr(config, "get") else None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or (num_embeds and max(ids) >= num_embeds):
        expected = f"0..{num_embeds - 1}" if num_embeds else "0..K-1"
        raise ValueError(f"expected at least one class, distinct class ids in {expected}, got {ids}")
    return torch.tensor(ids, device=device)


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and value >= 1


def _image_seeds(seed: Seed, num_images: int) -> List[np.random.SeedSequence]:
    """One seed stream per image: `seed` int -> `SeedSequence(seed, spawn_key=(i,))`; a sequence -> one per image."""
    if isinstance(seed, numbers.Integral):
        return [np.random.SeedSequence(seed, spawn_key=(i,)) for i in range(num_images)]
    if len(seed) != num_images:
        raise ValueError(f"expected one seed per image ({num_images}), got {len(seed)}")
    return [np.random.SeedSequence(int(s)) for s in seed]


def content_seeds(images: torch.Tensor, seed: int = 0) -> List[int]:
    """One seed per image from `seed` and the SHA-256 of the image's values (as float32), for the scorers' `seed`:
    an image then gets the same probes, timesteps and noise alone, in any batch and at any position (identical
    images get identical draws)."""
    if not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    prefix = f"{int(seed)}:".encode()
    return [
        int.from_bytes(hashlib.sha256(prefix + image.detach().float().cpu().numpy().tobytes()).digest()[:8], "little")
        >> 1
        for image in images
    ]


def _progress_bar(config: Optional[dict], **defaults) -> tqdm:
    """A `tqdm.auto` bar from the `defaults` overridden by the caller's `config` (tqdm arguments)."""
    return tqdm(**{**defaults, **(config or {})})


def _generator(stream: np.random.SeedSequence, *key: int) -> torch.Generator:
    child = np.random.SeedSequence(stream.entropy, spawn_key=stream.spawn_key + key)
    return torch.Generator().manual_seed(int(child.generate_state(1, np.uint64)[0]) >> 1)


def _as_column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`[B]` -> `[B, 1, 1, ...]` to broadcast against `like` `[B, ...]`."""
    return values.view(-1, *[1] * (like.ndim - 1))


# ---------------------------------------------------------------------------------------------------------------
# Exact likelihood: the probability-flow ODE
# ---------------------------------------------------------------------------------------------------------------

SOLVERS = ("heun", "rk4", "dopri5", "dpm3m")
STEP_SPACINGS = ("log_snr", "quadratic", "uniform")


@dataclass
class LikelihoodResult:
    """
    Output of [`probability_flow_log_likelihood`].

    Args:
        log_likelihood: `[N, K]` `log p(x | c)` in nats, the continuous density of the image as given (no
            dequantisation noise added), column `k` for the `k`-th requested class; on CPU, in the images' dtype.
        bits_per_dim: `[N, K]` from [`bits_per_dim`] (8-bit images scaled to [-1, 1]).
        nfe_per_image: `[N]` network function evaluations per image: ODE right-hand-side evaluations of its batch
            times `K` (each also costs `num_probes`, or `D` with the exact trace, vector-Jacobian products).
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    nfe_per_image: torch.Tensor


def _jacobian_trace(eps: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor]) -> torch.Tensor:
    """`tr(d eps / d x)` per row: exactly (one VJP per dimension) if `probes` is None, else the Hutchinson mean of
    `z^T (d eps / d x) z` over the probes `[B, P, D]`."""
    def vjp(v):
        return torch.autograd.grad(eps, x, v, retain_graph=True)[0].flatten(1)

    if probes is None:
        basis = torch.eye(eps.shape[1], dtype=eps.dtype, device=eps.device)
        return sum(vjp(e.expand_as(eps))[:, d] for d, e in enumerate(basis))
    return torch.stack([(vjp(z) * z).sum(1) for z in probes.unbind(1)]).mean(0)


def _probability_flow(eps_fn: EpsFn, sde: VPSDE, shape, labels, probes) -> Callable:
    r"""
    The augmented ODE `y = [x, delta]` (rows `[B, D + 1]`) with

    - `dx/dt = f(x, t) - 1/2 g(t)^2 score = -1/2 beta(t) (x - eps(x, t, c) / sigma(t))`,
    - `d delta/dt = div_x(dx/dt) = -1/2 beta(t) (D - tr(d eps / d x) / sigma(t))`,

    so that `log p_{t_min}(x) = log N(x(1); 0, I) + delta(1)` with `delta(t_min) = 0` (instantaneous change of
    variables, integrated backwards in density from the data at `t_min` to the prior at 1).
    """
    num_dims = math.prod(shape[1:])

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps, trace = _eps_and_trace(eps_fn, y[:, :-1], t, shape, labels, probes)
        beta, sigma = sde.beta(t), sde.sigma(t)
        drift = -0.5 * beta * (y[:, :-1] - eps / sigma)
        divergence = -0.5 * beta * (num_dims - trace / sigma)
        return torch.cat([drift, divergence[:, None]], 1)

    return field


def _eps_and_trace(eps_fn: EpsFn, x_rows: torch.Tensor, t: torch.Tensor, shape, labels, probes):
    """`eps` `[B, D]` at the rows `x_rows` `[B, D]` and time `t` (a scalar tensor), and `tr(d eps / d x)` `[B]`
    from the same model call (see `_jacobian_trace`)."""
    with torch.enable_grad():
        x = x_rows.reshape(shape).detach().requires_grad_(True)
        eps = eps_fn(x, t.expand(len(x_rows)), labels).flatten(1)
        trace = _jacobian_trace(eps, x, probes)
    return eps.detach(), trace


def _rk4_step(f, t, y, h):
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _heun_step(f, t, y, h):
    k1 = f(t, y)
    k2 = f(t + h, y + h * k1)
    return y + h / 2 * (k1 + k2)


def _solve_fixed(f, y: torch.Tensor, grid: torch.Tensor, solver: str, on_step: Callable[[float], None]) -> torch.Tensor:
    """Steps along `grid`; `on_step(fraction of the steps done)` after each."""
    step = _rk4_step if solver == "rk4" else _heun_step
    for i, (t0, t1) in enumerate(zip(grid[:-1], grid[1:])):
        y = step(f, t0, y, t1 - t0)
        on_step((i + 1) / (len(grid) - 1))
    return y


def _half_log_snr(sde: VPSDE, t: torch.Tensor) -> torch.Tensor:
    """`lambda = log(alpha / sigma)`, in float64."""
    log_alpha = sde.log_alpha(t.double())
    return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))


def _exp_moments(h: float, count: int) -> np.ndarray:
    """`int_0^h e^-s s^k ds` for `k < count` (float64), by the recursion `I_k = k I_{k-1} - h^k e^-h`: for the
    `|h| <= 2` of a solver step, relative error ~1e-16 / |h|^k."""
    moments = [-math.expm1(-h)]
    for k in range(1, count):
        moments.append(k * moments[-1] - h**k * math.exp(-h))
    return np.array(moments)


def _lagrange_integrals(nodes: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """Weights `w_m` with `sum_m w_m f(nodes[m]) = int w(s) P(s) ds` for the polynomial `P` through the points
    `(nodes[m], f(nodes[m]))`, given the moments `int w(s) s^k ds` (`k < len(nodes)`) of the weight `w`."""
    vandermonde = np.vander(nodes, len(nodes), increasing=True)  # rows: nodes, columns: powers
    return np.linalg.solve(vandermonde.T, moments)


def _composite_weights(nodes: np.ndarray, points: int) -> np.ndarray:
    """Weights for `int_{nodes[0]}^{nodes[-1]} f` from `f` at the (monotonic, either way) nodes: on each interval,
    the exact integral of the polynomial through the `points` nodes around it (all nodes if there are fewer)."""
    weights, points = np.zeros(len(nodes)), min(points, len(nodes))
    for i in range(len(nodes) - 1):
        first = min(max(i - (points - 2) // 2, 0), len(nodes) - points)
        h = nodes[i + 1] - nodes[i]
        moments = np.array([h ** (k + 1) / (k + 1) for k in range(points)])
        weights[first : first + points] += _lagrange_integrals(nodes[first : first + points] - nodes[i], moments)
    return weights


def _solve_multistep(eps_and_trace, x: torch.Tensor, sde: VPSDE, grid: torch.Tensor, order: int,
                     on_step: Callable[[float], None]):
    r"""
    The probability-flow ODE by an exponential multistep predictor-corrector in `lambda = log(alpha / sigma)` (the
    variable of DPM-Solver; the corrector as in UniPC), from the data at `grid[0]` to the prior at `grid[-1]`, one
    model call per node, and the divergence integral by a quadrature on the same calls.

    - State: with `y = x / alpha`, the flow is `dy/dlambda = -e^-lambda eps(alpha y, lambda)` (its linear part
      solved exactly). A step `i -> i + 1` (`lambda` decreasing, `h = lambda_{i+1} - lambda_i < 0`) integrates
      `e^-lambda P(lambda)` exactly for the polynomial `P` through eps at the nodes `i, i-1, ..`: `x_{i+1} = alpha_{i+1}
      / alpha_i (x_i - sigma_i sum_m w_m eps_m)`, `w_m = int_0^h e^-s L_m(s) ds` (`L_m`: Lagrange basis in
      `s = lambda - lambda_i`). Predictor: the last `order` nodes (the first steps: those there are); once eps at
      `i + 1` is evaluated (at the predicted `x_{i+1}`), the corrector redoes the step with `order + 1` nodes,
      `i + 1` included, at no extra model call.
    - Divergence: `dx/dlambda = (dlog alpha/dlambda) x - sigma eps`, so `int_{t_min}^1 div(dx/dt) dt = D (log
      alpha(1) - log alpha(t_min)) + int_{lambda(1)}^{lambda(t_min)} sigma tr(d eps / d x) dlambda`. The integrand
      stays bounded near the data (where `tr / sigma`, the integrand in `t`, grows like `1 / t`); it is integrated
      by composite cubic interpolation of its values at the nodes, the trace coming with each node's model call.

    Returns the final `x` `[B, D]`, `int div dt` `[B]` and the number of model calls (`len(grid)`).
    """
    lam = _half_log_snr(sde, grid)
    log_alpha = sde.log_alpha(grid.double())
    alpha, sigma = log_alpha.exp().tolist(), (log_alpha - lam).exp().tolist()
    lam = lam.tolist()
    eps, integrand = {}, []

    def advance(x_i: torch.Tensor, i: int, nodes: range) -> torch.Tensor:
        """x at node `i + 1` from x at node `i` and eps at the `nodes`."""
        weights = _lagrange_integrals(np.array([lam[j] - lam[i] for j in nodes]),
                                      _exp_moments(lam[i + 1] - lam[i], len(nodes)))
        increment = sum(float(w) * eps[j] for w, j in zip(weights, nodes))
        return alpha[i + 1] / alpha[i] * (x_i - sigma[i] * increment)

    for i in range(len(grid)):
        eps[i], trace = eps_and_trace(x, grid[i])
        integrand.append(sigma[i] * trace)
        eps.pop(i - order - 1, None)
        if i > 0:  # the corrector
            x = advance(x_previous, i - 1, range(i, max(i - 1 - order, -1), -1))
        if i < len(grid) - 1:  # the predictor
            x_previous, x = x, advance(x, i, range(i, max(i - order, -1), -1))
            on_step((i + 1) / (len(grid) - 1))
    trace_integral = -sum(float(w) * g for w, g in zip(_composite_weights(np.array(lam), 4), integrand))
    return x, x.shape[1] * float(log_alpha[-1] - log_alpha[0]) + trace_integral, len(grid)


# Dormand-Prince 5(4): nodes, stage coefficients, 5th-order weights (= last stage row, FSAL) and 5th - 4th order.
_DP_C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_DP_E = [71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


def _error_norm(err, y0, y1, rtol, atol) -> torch.Tensor:
    """max over rows of max(RMS of the scaled error of x, scaled error of delta); scale = atol + rtol max(|y0|, |y1|).
    Every (image, class) row meets the tolerance, and its log-density term is controlled on its own."""
    ratio = err.abs() / (atol + rtol * torch.maximum(y0.abs(), y1.abs()))
    return torch.maximum(ratio[:, :-1].pow(2).mean(1).sqrt(), ratio[:, -1]).max()


def _solve_dopri5(
    f, y: torch.Tensor, t0: float, t1: float, rtol: float, atol: float, on_step: Callable[[float], None]
) -> torch.Tensor:
    """Adaptive Dormand-Prince RK45 with the standard controller `h *= clip(0.9 err^-1/5, 0.2, 10)`, the first step
    from Hairer, Norsett & Wanner (1993, II.4), first-same-as-last (6 evaluations per attempted step);
    `on_step(fraction of [t0, t1] done)` after each accepted step."""
    def time(s: float) -> torch.Tensor:
        return torch.tensor(s, dtype=y.dtype, device=y.device)

    k1 = f(time(t0), y)
    d0, d1 = float(_error_norm(y, y, y, rtol, atol)), float(_error_norm(k1, y, y, rtol, atol))
    h0 = 0.01 * d0 / d1 if min(d0, d1) > 1e-5 else 1e-6
    d2 = float(_error_norm(f(time(t0 + h0), y + h0 * k1) - k1, y, y, rtol, atol)) / h0
    h = min(100 * h0, (0.01 / max(d1, d2)) ** 0.2 if max(d1, d2) > 1e-15 else max(1e-6, h0 * 1e-3))
    t = t0
    while t < t1:
        if h < 1e-12:
            raise RuntimeError(f"dopri5 step size underflow at t={t}: the ODE is too stiff for rtol={rtol}")
        last, h = h >= t1 - t, min(h, t1 - t)
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:]):
            ks.append(f(time(t + c * h), y + h * sum(a_j * k for a_j, k in zip(a, ks))))
        y_new = y + h * sum(a_j * k for a_j, k in zip(_DP_A[-1], ks))
        error = float(_error_norm(h * sum(e * k for e, k in zip(_DP_E, ks)), y, y_new, rtol, atol))
        if not math.isfinite(error):
            raise RuntimeError(f"dopri5 got a non-finite state at t={t}: check the model's output")
        if error <= 1:
            t, y, k1 = t1 if last else t + h, y_new, ks[-1]
            on_step((t - t0) / (t1 - t0))
        h *= min(10.0, max(0.2, 0.9 * max(error, 1e-10) ** -0.2))
    return y


def _time_grid(sde: VPSDE, num_steps: int, spacing: str, like: torch.Tensor) -> torch.Tensor:
    """`num_steps + 1` times from `t_min` to 1 (see `step_spacing` in [`probability_flow_log_likelihood`])."""
    if spacing != "log_snr":
        s = torch.linspace(0, 1, num_steps + 1, dtype=like.dtype, device=like.device)
        return sde.t_min + (1 - sde.t_min) * (s if spacing == "uniform" else s**2)
    # uniform in lambda = log(alpha^2 / sigma^2)
    log_snr = _log_snr_ends(sde)
    lambdas = torch.linspace(float(log_snr[0]), float(log_snr[1]), num_steps + 1, dtype=torch.float64)
    grid = _time_of_log_snr(sde, lambdas)
    grid[0], grid[-1] = sde.t_min, 1.0
    return grid.to(like)


def _log_snr_ends(sde: VPSDE) -> torch.Tensor:
    """`lambda = log(alpha^2 / sigma^2)` at `t_min` and at 1 (float64; decreasing in t)."""
    ends = torch.tensor([sde.t_min, 1.0], dtype=torch.float64)
    return 2 * sde.log_alpha(ends) - torch.log(-torch.expm1(2 * sde.log_alpha(ends)))


def _time_of_log_snr(sde: VPSDE, log_snr: torch.Tensor) -> torch.Tensor:
    """The t of each float64 `log_snr`: `-2 log alpha = softplus(-lambda) = a t^2 + b t`, solved for t."""
    c = torch.nn.functional.softplus(-log_snr)
    a, b = (sde.beta_max - sde.beta_min) / 2, sde.beta_min
    return 2 * c / (b + torch.sqrt(b**2 + 4 * a * c))  # the positive root, written without cancellation


def _check_solver_args(solver, num_steps, step_spacing, rtol, atol, num_probes, batch_size) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"expected solver in {SOLVERS}, got {solver!r}")
    if solver == "dopri5" and not (rtol > 0 and atol > 0):
        raise ValueError(f"expected solver tolerances rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
    if solver != "dopri5" and not _is_count(num_steps):
        raise ValueError(f"expected num_steps >= 1 for solver {solver!r}, got {num_steps}")
    if step_spacing not in STEP_SPACINGS:
        raise ValueError(f"expected step_spacing in {STEP_SPACINGS}, got {step_spacing!r}")
    for name, value in (("num_probes", num_probes), ("batch_size", batch_size)):
        if not _is_count(value):
            raise ValueError(f"expected {name} >= 1, got {value}")


@torch.no_grad()
def probability_flow_log_likelihood(
    eps_model,
    images: torch.Tensor,
    classes: Classes,
    solver: str = "rk4",
    num_steps: int = 32,
    step_spacing: str = "log_snr",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_probes: int = 1,
    exact_trace: bool = False,
    seed: Seed = 0,
    batch_size: int = 64,
    sde: Optional[VPSDE] = None,
    progress_bar: Optional[dict] = None,
) -> LikelihoodResult:
    r"""
    `log p(x | c)` of every image under every class through the probability-flow ODE of the VP-SDE:

    `log p(x | c) = log N(x(1); 0, I) + int_{t_min}^1 div_x(-1/2 beta(t) (x - eps(x, t, c) / sigma(t))) dt`,

    with `x(t)` solved from `x(t_min) = x` along `dx/dt = -1/2 beta(t) (x - eps(x, t, c) / sigma(t))` (drift minus
    `1/2 g^2` times the score `-eps / sigma`). Images of a batch are paired with every class in one state
    `[batch_size * K, D + 1]`, so the model sees all images and classes in one call per evaluation. The divergence
    is the Hutchinson estimate `z^T (d eps / d x) z` averaged over `num_probes` Rademacher probes per image, drawn
    once per image and shared by all classes and all times (common random numbers: the class comparison sees the
    same estimator noise), or the exact trace (`D` VJPs per evaluation; for small `D`).

    Args:
        eps_model: a class-conditional diffusers model or a callable `eps_fn(x, t, labels)` (see [`as_eps_model`]).
        images: `[N, ...]` in [-1, 1], moved to the model's device (a callable: the images' device); the ODE runs
            in the images' floating dtype. For a diffusers model `[N, in_channels, sample_size, sample_size]`:
            other sizes are refused, not resized.
        classes: `K` (classes `0..K-1`) or the class ids to score, in column order.
        solver: `"rk4"` (4 evaluations per step) or `"heun"` (2) on a fixed grid of `num_steps` steps from `t_min`
            to 1; `"dpm3m"` on the same grid, 1 evaluation per step (`num_steps + 1` in all): a third-order
            exponential multistep predictor-corrector in log-SNR (DPM-Solver's variable, UniPC's corrector) with the
            divergence integrated in log-SNR by a cubic quadrature on the same model calls; or the adaptive
            `"dopri5"` with `rtol` / `atol` (error of each (image, class) row scaled by `atol + rtol |y|`; the step
            size is shared by a batch and set by its hardest row). `"dpm3m"` with 40 log-SNR steps (3.1x fewer
            evaluations than the default) was within 0.0074 bits/dim of a tight dopri5 solve on 4 training images x
            10 classes of the "tiny" preset trained 1000 steps (24 steps: 0.019, 48 steps: 0.014), and within 0.0078
            of SciPy's RK45 at 1e-5 on 16 test images (the default: 0.011); on a GPU 48 steps were 0.018 off (the
            default 0.0081). Not the default: its error is not monotone in the step count, as the model is rough in
            `t` between the trained integer timesteps, which fixed grids sample
            (`benchmarks/score_sde_bench_likelihood.py`).
        num_steps: steps of the fixed grid.
        step_spacing: where the fixed grid's steps go.

            - `"log_snr"` (default): uniform in `lambda = log(alpha^2 / sigma^2)` (as in DPM-Solver), so geometric
              near `t_min` (with 32 steps each time there is 2.1x the one before), where the divergence of a trained
              model grows like `1 / t` and the flow is stiff.
            - `"quadratic"`: `t_min + (1 - t_min) (i / num_steps)^2` (the first of 32 steps reaches 1e-3): accurate
              for lightly trained models, less so as training sharpens the score.
            - `"uniform"` in t: inaccurate near `t_min` for any trained model (the first of 32 steps jumps from 1e-5
              to 0.031, over the stiff region), where it overestimates `log p`; kept for comparisons only.

            Measured with 32 RK4 steps against dopri5 at rtol = atol = 1e-6 or 1e-5 (the same probes), max |delta
            bits/dim| on a small U-Net trained 300 steps on digits 0-2, 3 images x 3 classes
            (`tests/test_likelihood.py::test_fixed_step_grids_against_a_tight_dopri5_solve_on_a_trained_unet`) / on
            the "tiny" preset trained 1000 steps, 6 images x 3 classes: `"log_snr"` 0.0032 / 0.0028, `"quadratic"`
            0.0082 / 0.018, `"uniform"` 0.47 / 1.6 (mean 0.32 / 1.17). The default is the cheapest setting measured
            within 0.011 bits/dim on every trained model tried: 16 log-SNR RK4 steps reach 0.017 on the second, 64
            Heun steps (the same NFE as the default) 0.014, and exact Gaussian scores with one nearly degenerate
            direction (scale 0.003) put `"quadratic"` 55x further off than `"log_snr"`. For a stiffer model, check
            the default against `solver="dopri5"` on a few images.
        num_probes, exact_trace: the divergence estimator.
        seed: an int (image `i` uses stream `(seed, i)`) or one seed per image (e.g. [`content_seeds`], for
            results that do not depend on the image's position).
        batch_size: images per ODE solve. Fixed-step results do not depend on it; dopri5 results agree within the
            tolerance.
        sde: the [`VPSDE`] (default: `DDPMScheduler`'s default schedule).
        progress_bar: `tqdm` arguments for the bar over images, advanced at every solver step (images/s and the
            NFE per image so far shown); `{"disable": True}` hides it.

    Returns:
        [`LikelihoodResult`].
    """
    _check_solver_args(solver, num_steps, step_spacing, rtol, atol, num_probes, batch_size)
    images, sde = _prepare_images(images, eps_model), sde or VPSDE()
    eps_fn, class_ids = as_eps_model(eps_model, sde), _class_ids(classes, eps_model, images.device)
    streams, num_classes = _image_seeds(seed, len(images)), len(class_ids)
    log_likelihood, nfe = [], []
    with _progress_bar(progress_bar, total=len(images), desc="Probability-flow ODE", unit="image",
                       unit_scale=True) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            probes = None if exact_trace else _rademacher(streams[start : start + len(batch)], num_probes, batch)

            def on_step(fraction: float, start=start, size=len(batch)) -> None:
                bar.update(start + size * fraction - bar.n)

            log_p, evaluations = _solve_log_likelihood(eps_fn, sde, batch, class_ids, probes, solver, num_steps,
                                                       step_spacing, rtol, atol, on_step)
            log_likelihood.append(log_p.view(len(batch), num_classes))
            nfe += [evaluations * num_classes] * len(batch)
            bar.set_postfix(nfe_per_image=nfe[-1], refresh=False)
    log_likelihood = torch.cat(log_likelihood).cpu()
    return LikelihoodResult(log_likelihood, bits_per_dim(log_likelihood, images[0].numel()), torch.tensor(nfe))


def _rademacher(streams, num_probes: int, batch: torch.Tensor) -> torch.Tensor:
    """`[B, P, D]` probes of +-1, image `i`'s from its own stream."""
    draws = [torch.randint(0, 2, (num_probes, batch[0].numel()), generator=_generator(s, 0)) for s in streams]
    return (2 * torch.stack(draws) - 1).to(batch)


def _solve_log_likelihood(eps_fn, sde, batch, class_ids, probes, solver, num_steps, step_spacing, rtol, atol,
                          on_step):
    """Solve one batch (rows image-major: row `i K + k` is image `i`, class `k`); returns `log p` `[B K]` and the
    number of right-hand-side evaluations; `on_step(fraction done)` after every solver step."""
    num_classes = len(class_ids)
    x = batch.repeat_interleave(num_classes, 0)
    labels = class_ids.repeat(len(batch))
    probes = None if probes is None else probes.repeat_interleave(num_classes, 0)
    if solver == "dpm3m":
        def eps_and_trace(x_rows, t):
            return _eps_and_trace(eps_fn, x_rows, t, x.shape, labels, probes)

        grid = _time_grid(sde, num_steps, step_spacing, x)
        x1, delta, evaluations = _solve_multistep(eps_and_trace, x.flatten(1), sde, grid, 3, on_step)
    else:
        x1, delta, evaluations = _solve_augmented_state(eps_fn, sde, x, labels, probes, solver, num_steps,
                                                        step_spacing, rtol, atol, on_step)
    prior = -0.5 * (x1.pow(2).sum(1) + x1.shape[1] * math.log(2 * math.pi))
    return prior + delta, evaluations


def _solve_augmented_state(eps_fn, sde, x, labels, probes, solver, num_steps, step_spacing, rtol, atol, on_step):
    """The Runge-Kutta solvers on the state `[x, int div]`: returns the final x, the divergence integral and the
    number of right-hand-side evaluations."""
    field = _probability_flow(eps_fn, sde, x.shape, labels, probes)
    evaluations = 0

    def counted(t, y):
        nonlocal evaluations
        evaluations += 1
        return field(t, y)

    y = torch.cat([x.flatten(1), x.new_zeros(len(x), 1)], 1)
    if solver == "dopri5":
        y = _solve_dopri5(counted, y, sde.t_min, 1.0, rtol, atol, on_step)
    else:
        y = _solve_fixed(counted, y, _time_grid(sde, num_steps, step_spacing, y), solver, on_step)
    return y[:, :-1], y[:, -1], evaluations


# ---------------------------------------------------------------------------------------------------------------
# Denoising-error bound (ELBO) with shared noise, class pruning and a binary early stop
# ---------------------------------------------------------------------------------------------------------------

TIMESTEP_SPACINGS = ("even", "stratified", "log_snr")
WEIGHTINGS = ("uniform", "elbo")


@dataclass
class DenoisingScoreResult:
    """
    Output of [`denoising_error_scores`], float64 on CPU. Timestep positions are in evaluation order (see
    `timesteps`).

    Args:
        scores: `[N, K]` minus the mean weighted error over the timesteps evaluated (higher = more likely);
            `-inf` for classes pruned at any stage.
        partial_scores: `[N, K]` the same mean for every class, pruned ones included (over the timesteps they got).
        errors: `[N, K, T]` weighted error of each (image, class, timestep); NaN where not evaluated.
        timesteps: `[N, T]` continuous times, column `p` the `p`-th evaluated (shared by all classes).
        nfe_per_image: `[N]` network function evaluations, the number of non-NaN errors of the image.
        strata: `[T]` the stratum of `[t_min, 1]` (of `num_timesteps`) each column samples.
    """

    scores: torch.Tensor
    partial_scores: torch.Tensor
    errors: torch.Tensor
    timesteps: torch.Tensor
    nfe_per_image: torch.Tensor
    strata: torch.Tensor

    def shared_scores(self) -> torch.Tensor:
        """`[N, K]` minus the mean weighted error of each class over the timesteps every class was scored at (all of
        them unless a class was pruned or stopped early): scores whose differences weigh the same timesteps, where
        `partial_scores` of a pruned and a kept class differ by the weights of the timesteps only one of them got."""
        shared = ~self.errors.isnan().any(1, keepdim=True)
        return -(self.errors.nan_to_num() * shared).sum(2) / shared.sum(2).clamp_min(1)

    def difference_standard_error(self, first: int, second: int) -> torch.Tensor:
        """`[N]` the Monte-Carlo standard error of the score difference `first - second` (the mean of the error
        differences `d = e_second - e_first` over the `n` timesteps both classes were scored at, which for K > 2 may
        be more than `shared_scores` uses): how far other noise draws would move it. The timesteps' noise draws are
        independent, their times are not random draws ("even", "log_snr"), so the variance of each `d_p` is read from
        the successive differences of the `d` in time order, which leave out the smooth change of `d` with t:
        `(sum_p (d_{p+1} - d_p)^2 / 2 + ((d_2 - d_1)^2 + (d_n - d_{n-1})^2) / 4) / n^2` (the end terms give the first
        and last timestep their share; with `"elbo"` weighting and even spacing the lowest one carries most of it).
        An approximation that errs wide on weakly trained models: the first difference counts the steep change of `d`
        between the lowest timesteps as noise. With `"elbo"` weighting it read 1.15-1.2x the spread over noise seeds
        on a PneumoniaMNIST model at 100 timesteps (1.4x at 20) and 1.5x (2.7x at 20) on one trained for 300 steps;
        resting on few effective degrees of freedom (the lowest timesteps carry most of the variance), its two-sigma
        intervals held 93.8-99% of the changes between two seeds' ratios (95.4% if calibrated). With `"uniform"`
        weighting or log-SNR spacing: 1.0-1.2x, 93.7-97.5%. Second differences with the ELBO weights divided out,
        which remove the trend, read 0.7-1.1x but held only 74-89%. `benchmarks/score_sde_bench_elbo_settings.py`
        measures both on a kept pipeline. After an early stop it rests on few timesteps, chosen because they looked
        settled, and reads low. NaN with fewer than 2 shared timesteps."""
        differences = (self.errors[:, second] - self.errors[:, first]).gather(1, self.timesteps.argsort(1))
        if differences.shape[1] < 2:
            return torch.full(differences.shape[:1], float("nan"), dtype=differences.dtype)
        shared = ~differences.isnan()
        count = shared.sum(1)
        packed = differences.gather(1, (~shared).to(torch.int8).argsort(dim=1, stable=True))  # shared first, in order
        steps = packed[:, 1:] - packed[:, :-1]
        within = torch.arange(steps.shape[1], device=steps.device) < (count - 1).unsqueeze(1)
        squared = torch.where(within, steps, torch.zeros_like(steps)).pow(2)
        ends = squared[:, 0] + squared.gather(1, (count - 2).clamp_min(0).unsqueeze(1)).squeeze(1)
        standard_error = (squared.sum(1) / 2 + ends / 4).sqrt() / count.clamp_min(1)
        return torch.where(count >= 2, standard_error, torch.full_like(standard_error, float("nan")))


def _spread_order(n: int) -> List[int]:
    """Strata `0..n-1` in the order the van der Corput sequence (base 2) first visits them, so every prefix is
    spread over `[0, 1)` (for `n` a power of 2: bit-reversal order). Ends within `2n` terms."""
    order, seen, k = [], set(), 0
    while len(order) < n:
        bits = format(k, "b")
        stratum = int(int(bits[::-1], 2) / 2 ** len(bits) * n)
        if stratum not in seen:
            seen.add(stratum)
            order.append(stratum)
        k += 1
    return order


def _strata_and_draw_keys(num_timesteps: int, timestep_strata: Optional[Sequence[int]]) -> Tuple[List[int], List[int]]:
    """The strata to evaluate, in order (default: all, in spread order), and the key of each one's random draws: its
    position in the spread order, so a stratum gets the same point and noise whatever order or subset is asked."""
    spread = _spread_order(num_timesteps)
    if timestep_strata is None:
        return spread, list(range(num_timesteps))
    strata = list(timestep_strata)
    if not strata or not all(isinstance(s, numbers.Integral) and 0 <= s < num_timesteps for s in strata) \
            or len(set(strata)) != len(strata):
        raise ValueError(f"timestep_strata: expected distinct stratum indices in 0..{num_timesteps - 1} "
                         f"(num_timesteps={num_timesteps}), got {strata}")
    key = {stratum: position for position, stratum in enumerate(spread)}
    return [int(s) for s in strata], [key[s] for s in strata]


def _denoising_timesteps(streams, num_timesteps: int, strata, draw_keys, spacing: str, sde: VPSDE) -> torch.Tensor:
    """`[N, len(strata)]`: `t = t_min + (s + u) (1 - t_min) / T` for the strata `s`; `u = 1/2` ("even", midpoints)
    or uniform per image and stratum ("stratified"); "log_snr": the midpoints of `T` equal strata of log-SNR."""
    if spacing == "stratified":
        offsets = torch.stack([torch.rand(num_timesteps, generator=_generator(s, 0), dtype=torch.float64)
                               for s in streams])[:, draw_keys]
    else:
        offsets = torch.full((len(streams), len(strata)), 0.5, dtype=torch.float64)
    fractions = (torch.tensor(strata, dtype=torch.float64) + offsets) / num_timesteps
    if spacing == "log_snr":
        first, last = _log_snr_ends(sde)
        return _time_of_log_snr(sde, first + fractions * (last - first))
    return sde.t_min + fractions * (1 - sde.t_min)


def _stages(num_timesteps, num_classes, pruning, early_stop_confidence, timesteps_per_check) -> List[Tuple[int, int]]:
    """`(new timesteps, classes kept after)` per stage, validated: the pruning stages, then (with an early stop) the
    remaining timesteps in chunks of `timesteps_per_check` that keep every class the test has not eliminated."""
    stages = _pruning_stages(pruning or [], num_classes)
    pruned_timesteps = sum(count for count, _ in stages)
    if early_stop_confidence is None:
        if pruning is None:
            return [(num_timesteps, num_classes)]
        if pruned_timesteps != num_timesteps:
            raise ValueError(f"expected the pruning stages' timesteps to sum to num_timesteps={num_timesteps}, "
                             f"got {[count for count, _ in stages]}")
        return stages
    if not 0.5 < early_stop_confidence < 1:
        raise ValueError(f"expected 0.5 < early_stop_confidence < 1, got {early_stop_confidence}")
    if not _is_count(timesteps_per_check):
        raise ValueError(f"expected timesteps_per_check >= 1, got {timesteps_per_check}")
    if pruned_timesteps > num_timesteps:
        raise ValueError(f"expected the pruning stages' timesteps to sum to at most num_timesteps={num_timesteps} "
                         f"with an early stop, got {[count for count, _ in stages]}")
    kept = stages[-1][1] if stages else num_classes
    starts = range(pruned_timesteps, num_timesteps, timesteps_per_check)
    return stages + [(min(timesteps_per_check, num_timesteps - start), kept) for start in starts]


def _pruning_stages(pruning, num_classes) -> List[Tuple[int, int]]:
    previous = num_classes
    for i, (count, keep) in enumerate(pruning):
        if not _is_count(count):
            raise ValueError(f"expected pruning stage {i} to evaluate >= 1 timesteps, got {count}")
        if not 1 <= keep <= previous:
            raise ValueError(f"expected pruning stage {i} to keep 1..{previous} classes (those alive), got {keep}")
        previous = keep
    return [(int(count), int(keep)) for count, keep in pruning]


def _fill_errors(eps_fn, sde, images, class_ids, timesteps, draw_keys, streams, errors, rows, weighting, spacing,
                 max_batch_size, bar):
    r"""
    `errors[i, k, p] = w(t) ||eps - eps_fn(alpha(t) x_i + sigma(t) eps, t, c_k)||^2` for each row `(i, p, k)`, with
    `t = timesteps[i, p]` and `eps ~ N(0, I)` drawn from image `i`'s stream at `draw_keys[p]` (shared by all
    classes), `max_batch_size` rows per model call, each call advancing the progress `bar` by its rows.
    """
    if len(rows) == 0:  # every image stopped early: nothing to evaluate
        return
    for chunk in rows.split(max_batch_size):
        i, p, k = chunk.unbind(1)
        pairs, inverse = torch.unique(chunk[:, :2], dim=0, return_inverse=True)
        noise = torch.stack([torch.randn(images.shape[1:], generator=_generator(streams[a], 1, draw_keys[b]),
                                         dtype=images.dtype)
                             for a, b in pairs.tolist()]).to(images.device)[inverse]
        t = timesteps[i, p].to(images)
        x_t = _as_column(sde.alpha(t), noise) * images[i] + _as_column(sde.sigma(t), noise) * noise
        squared = (noise - eps_fn(x_t, t, class_ids[k])).pow(2).flatten(1).sum(1)
        errors[i, k, p] = (squared * _weight(sde, t, weighting, spacing)).to(errors)
        bar.update(len(chunk))


def _weight(sde: VPSDE, t: torch.Tensor, weighting: str, spacing: str = "even") -> torch.Tensor:
    """1 ("uniform") or `(1 - t_min) beta(t) / (2 sigma(t)^2)` ("elbo"), times, for timesteps spread in log-SNR,
    the density of uniform t over theirs, `(lambda(t_min) - lambda(1)) sigma(t)^2 / ((1 - t_min) beta(t))`
    (`d lambda / dt = -beta / sigma^2`), so every spacing estimates the same integral over t; with "elbo" the
    product is the constant `(lambda(t_min) - lambda(1)) / 2`."""
    if spacing == "log_snr":
        first, last = _log_snr_ends(sde)
        span = float(first - last)
        if weighting == "elbo":
            return torch.full_like(t, span / 2)
        return span * sde.sigma(t) ** 2 / ((1 - sde.t_min) * sde.beta(t))
    if weighting == "uniform":
        return torch.ones_like(t)
    return (1 - sde.t_min) * sde.beta(t) / (2 * sde.sigma(t) ** 2)


def _settled_worse(differences: torch.Tensor, confidence: float) -> torch.Tensor:
    """`[N, K]`: the paired t-statistic `mean(d) / (std(d) / sqrt(n))` of the error differences `d = e_k - e_leader`
    `[N, K, n]` exceeds Student's t quantile `t_{n-1}(confidence)` (False where any `d` is NaN)."""
    n = differences.shape[2]
    if n < 2:
        return torch.zeros(differences.shape[:2], dtype=torch.bool)
    z = differences.mean(2) / (differences.std(2) / math.sqrt(n))
    return z > stats.t.ppf(confidence, n - 1)


def _eliminate(errors, scores, alive, active, confidence):
    """One look of the early stop: every class alive whose errors are settled above the leader's is eliminated; an
    image whose rivals are all settled stops, keeping the classes of this last look alive (all evaluated on the
    same timesteps, so their scores stay comparable: with 2 classes, the log-likelihood ratio)."""
    leader = scores.masked_fill(~alive, -math.inf).argmax(1)
    rivals = alive.clone()
    rivals[torch.arange(len(alive)), leader] = False
    differences = errors - errors[torch.arange(len(errors)), leader][:, None]
    settled = _settled_worse(differences, confidence) & rivals & active[:, None]
    stops = active & (settled == rivals).all(1)
    return alive & ~(settled & ~stops[:, None]), active & ~stops


def _run_stages(fill, errors, stages, early_stop_confidence):
    """Evaluate the stages on `errors` `[N, K, T]` (NaN = not evaluated) by `fill(rows)` for rows `(image, timestep
    position, class)`; returns the classes alive `[N, K]` and the mean score so far of every class `[N, K]`."""
    alive = torch.ones(errors.shape[:2], dtype=torch.bool)
    active = torch.ones(len(errors), dtype=torch.bool)
    done = 0
    for count, keep in stages:
        todo = torch.zeros(errors.shape[0], errors.shape[2], errors.shape[1], dtype=torch.bool)
        todo[:, done : done + count] = (alive & active[:, None])[:, None]
        fill(todo.nonzero())
        done += count
        partial_scores = -errors.nanmean(2)
        rank = partial_scores.masked_fill(~alive, -math.inf).argsort(1, descending=True).argsort(1)
        alive &= (rank < keep) | ~active[:, None]  # stopped images keep the classes they stopped with
        if early_stop_confidence is not None:
            alive, active = _eliminate(errors[:, :, :done], partial_scores, alive, active, early_stop_confidence)
    return alive, partial_scores


def _result(errors, timesteps, strata, alive, partial_scores) -> "DenoisingScoreResult":
    scores = partial_scores.masked_fill(~alive, -math.inf)
    return DenoisingScoreResult(scores, partial_scores, errors, timesteps, (~errors.isnan()).sum((1, 2)),
                                torch.as_tensor(strata, dtype=torch.long))


@torch.no_grad()
def denoising_error_scores(
    eps_model,
    images: torch.Tensor,
    classes: Classes,
    num_timesteps: int = 100,
    timestep_spacing: str = "even",
    weighting: str = "uniform",
    pruning: Optional[Sequence[Tuple[int, int]]] = None,
    early_stop_confidence: Optional[float] = None,
    timesteps_per_check: int = 10,
    timestep_strata: Optional[Sequence[int]] = None,
    seed: Seed = 0,
    max_batch_size: int = 256,
    sde: Optional[VPSDE] = None,
    progress_bar: Optional[dict] = None,
) -> DenoisingScoreResult:
    r"""
    Class scores from the weighted denoising error `E_{t, eps} [w(t) ||eps - eps_theta(x_t, t, c)||^2]`,
    `x_t = alpha(t) x + sigma(t) eps`, estimated on `T = num_timesteps` timesteps, each with its own noise, all
    shared by every class (so class differences are not swamped by noise differences). Score = minus the mean.

    Timesteps: `[t_min, 1]` is cut into `T` strata, each used once: at its midpoint (`"even"`) or at a uniform point
    per image (`"stratified"`); or log-SNR `lambda = log(alpha^2 / sigma^2)` is cut into `T` equal strata, each used
    at its midpoint (`"log_snr"`), the errors weighted by the density ratio, so that it estimates the same integral
    (importance sampling: with `"elbo"` every timestep then weighs the same, where in t the weight grows as `1 / t`
    towards `t_min` and a few low-noise timesteps dominate the estimate and its noise; but about half of the log-SNR
    timesteps fall below t = 0.1, where classes differ little: with "elbo" it lowered the noise on PneumoniaMNIST and
    cost 10 points of accuracy on Fashion-MNIST, see `ScoreSDEClassifierPipeline.__call__`). Strata are evaluated in
    van der Corput order, so every stage below sees timesteps spread over the whole range; or only the strata of
    `timestep_strata`, in its order (e.g. the most informative first, ranked on validation images by
    [`rank_timestep_strata`]). A stratum's point and noise do not depend on the order or subset: a run with
    `timestep_strata` evaluates a subset of the exhaustive run's errors.

    Weighting (errors are squared norms summed over the `D` values, not per-pixel means):

    - `"uniform"`: `w = 1`, the simple DDPM loss `||eps - eps_theta||^2` (Ho et al. 2020; Li et al. 2023).
    - `"elbo"`: `w(t) = (1 - t_min) beta(t) / (2 sigma(t)^2)` (`= -1/2 d log SNR / dt`, the likelihood weighting
      `g^2`): then the mean estimates `1/2 int_{t_min}^1 beta(t) / sigma(t)^2 E ||eps - eps_theta||^2 dt`, the
      diffusion term of the bound `-log p(x | c) <= that + terms of x alone` (Song et al. 2021, Kingma et al.
      2021; a bound on the likelihood of the model's SDE, not of its probability-flow ODE), so scores are
      log-likelihood lower bounds up to a per-image constant and differences between classes estimate
      log-likelihood ratios.

    Stopping rules and network function evaluations per image (NFE; one image, one class, one timestep = 1):

    - exhaustive (default): every class at every timestep; `NFE = K T`.
    - `pruning=[(T_1, k_1), (T_2, k_2), ...]` (`sum T_s = T`, `K >= k_1 >= k_2 >= ...`): stage `s` evaluates `T_s`
      new timesteps for the classes still alive, then keeps the `k_s` classes with the best mean score so far
      (Li et al. 2023); the others score `-inf` (their `partial_scores` stay). `NFE = sum_s T_s k_{s-1}`, `k_0 = K`.
    - `early_stop_confidence=q` (any number of classes; after the `pruning` stages if given, whose timesteps then
      sum to at most `T`): the remaining timesteps come in chunks of `timesteps_per_check`; after every stage, each
      class alive is compared with the image's leader (the best mean score) by the paired t-test of its error
      differences `d_p = e_kp - e_leader,p` over the timesteps evaluated, and eliminated (score `-inf`) once its
      errors are settled higher (`t > t_{n-1}(q)`, a one-sided level `1 - q` per look, no multiplicity
      correction). An image stops when every rival is settled (the classes of that last look keep their scores,
      so with 2 classes the log-likelihood ratio stays finite) or when `T` timesteps are used. With 2 classes this
      is the sequential test of the sign of the log-likelihood ratio; with more, successive elimination. `NFE` =
      the evaluations made; choose `q` and the stages on validation images with [`replay_stopping_rule`].

    With `timestep_strata`, `T` above is the number of strata evaluated (`len(timestep_strata)`).

    Args:
        eps_model: a class-conditional diffusers model or a callable `eps_fn(x, t, labels)` (see [`as_eps_model`]).
        images: `[N, ...]` in [-1, 1], moved to the model's device. For a diffusers model
            `[N, in_channels, sample_size, sample_size]`: other sizes are refused, not resized.
        classes: `K` (classes `0..K-1`) or the class ids to score, in column order.
        num_timesteps: `T`, the strata `[t_min, 1]` is cut into.
        timestep_strata: the strata (indices in `0..T-1`) to evaluate, in order; default all, in spread order.
        seed: an int (image `i` uses stream `(seed, i)`) or one seed per image (e.g. [`content_seeds`], for
            results that do not depend on the image's position): results do not depend on `max_batch_size`, and the
            same timesteps and noise are drawn with and without pruning or early stop.
        max_batch_size: rows `(image, timestep, class)` per model call.
        sde: the [`VPSDE`] (default: `DDPMScheduler`'s default schedule).
        progress_bar: `tqdm` arguments for the bar over network function evaluations, advanced at every model
            call (its total is the NFE without early stop); `{"disable": True}` hides it.

    Returns:
        [`DenoisingScoreResult`].
    """
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"expected timestep_spacing in {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"expected weighting in {WEIGHTINGS}, got {weighting!r}")
    if not _is_count(max_batch_size):
        raise ValueError(f"expected max_batch_size >= 1, got {max_batch_size}")
    images, sde = _prepare_images(images, eps_model), sde or VPSDE()
    eps_fn, class_ids = as_eps_model(eps_model, sde), _class_ids(classes, eps_model, images.device)
    if not _is_count(num_timesteps):
        raise ValueError(f"expected num_timesteps >= 1, got {num_timesteps}")
    strata, draw_keys = _strata_and_draw_keys(num_timesteps, timestep_strata)
    stages = _stages(len(strata), len(class_ids), pruning, early_stop_confidence, timesteps_per_check)
    streams = _image_seeds(seed, len(images))
    timesteps = _denoising_timesteps(streams, num_timesteps, strata, draw_keys, timestep_spacing, sde)
    errors = torch.full((len(images), len(class_ids), len(strata)), math.nan, dtype=torch.float64)
    classes_per_stage = [len(class_ids)] + [keep for _, keep in stages[:-1]]  # alive when each stage starts
    planned = len(images) * sum(count * k for (count, _), k in zip(stages, classes_per_stage))
    with _progress_bar(progress_bar, total=planned, desc="Denoising-error scores", unit="NFE") as bar:
        def fill(rows):
            _fill_errors(eps_fn, sde, images, class_ids, timesteps, draw_keys, streams, errors, rows, weighting,
                         timestep_spacing, max_batch_size, bar)

        alive, partial_scores = _run_stages(fill, errors, stages, early_stop_confidence)
        bar.total = bar.n  # fewer than planned after an early stop
    return _result(errors, timesteps, strata, alive, partial_scores)


def replay_stopping_rule(
    exhaustive: DenoisingScoreResult,
    pruning: Optional[Sequence[Tuple[int, int]]] = None,
    early_stop_confidence: Optional[float] = None,
    timesteps_per_check: int = 10,
    timestep_strata: Optional[Sequence[int]] = None,
) -> DenoisingScoreResult:
    """
    What [`denoising_error_scores`] returns with a stopping rule (`pruning`, `early_stop_confidence`,
    `timesteps_per_check`, `timestep_strata`), computed without a network call from an exhaustive run with the same
    images, classes, `num_timesteps`, spacing, weighting and seed: a rule draws the same timesteps and noise, so its
    errors are a subset of the exhaustive ones. Use it to choose a rule on validation images: one exhaustive run,
    then any number of rules replayed in milliseconds.

    Args:
        exhaustive: a [`DenoisingScoreResult`] with every error evaluated (no stopping rule).
        pruning, early_stop_confidence, timesteps_per_check, timestep_strata: as in [`denoising_error_scores`]
            (`timestep_strata` among the strata of `exhaustive`; default its columns, in its order).
    """
    _check_exhaustive(exhaustive)
    columns = _columns_of_strata(exhaustive, timestep_strata)
    source, timesteps = exhaustive.errors[:, :, columns], exhaustive.timesteps[:, columns]
    num_images, num_classes, num_timesteps = source.shape
    stages = _stages(num_timesteps, num_classes, pruning, early_stop_confidence, timesteps_per_check)
    errors = torch.full_like(source, math.nan)

    def fill(rows):
        i, p, k = rows.unbind(1)
        errors[i, k, p] = source[i, k, p]

    alive, partial_scores = _run_stages(fill, errors, stages, early_stop_confidence)
    return _result(errors, timesteps, exhaustive.strata[columns], alive, partial_scores)


def rank_timestep_strata(exhaustive: DenoisingScoreResult, labels: torch.Tensor) -> List[int]:
    """
    The strata of an exhaustive run on labeled images (validation images: never the test set), most informative
    first: ranked by the accuracy of the decision each timestep makes alone (the class with the smallest error at
    it), ties kept in the run's order. Pass a prefix as `timestep_strata` to [`denoising_error_scores`] to evaluate
    only the timesteps that separate the classes best, the best first, so an early stop settles sooner; choose how
    many with [`replay_stopping_rule`] on the same images.

    Args:
        exhaustive: a [`DenoisingScoreResult`] with every error evaluated (no stopping rule).
        labels: `[N]` each image's class as a column index of `exhaustive.scores` (`0..K-1`).
    """
    _check_exhaustive(exhaustive)
    labels = torch.as_tensor(labels).long().cpu()
    num_images, num_classes = exhaustive.scores.shape
    if labels.shape != (num_images,) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels: expected {num_images} class columns in 0..{num_classes - 1}, got shape "
                         f"{tuple(labels.shape)} with values {labels.unique().tolist()[:10]}")
    correct = (exhaustive.errors.argmin(1) == labels[:, None]).double().mean(0)  # [T]: each timestep alone
    order = sorted(range(len(correct)), key=lambda column: -float(correct[column]))
    return exhaustive.strata[order].tolist()


def _check_exhaustive(result: DenoisingScoreResult) -> None:
    if result.errors.isnan().any():
        raise ValueError("expected an exhaustive DenoisingScoreResult (every class at every timestep), got one with "
                         f"{int(result.errors.isnan().sum())} errors not evaluated (a stopping rule was applied)")


def _columns_of_strata(result: DenoisingScoreResult, timestep_strata: Optional[Sequence[int]]) -> List[int]:
    available = result.strata.tolist()
    if timestep_strata is None:
        return list(range(len(available)))
    strata = list(timestep_strata)
    if not strata or len(set(strata)) != len(strata) or not set(strata) <= set(available):
        raise ValueError(f"timestep_strata: expected distinct strata of the exhaustive run ({sorted(available)}), "
                         f"got {strata}")
    return [available.index(stratum) for stratum in strata]

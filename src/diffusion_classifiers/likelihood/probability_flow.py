"""The exact `log p(x | c)` of the probability-flow ODE: the Hutchinson (or exact) divergence, fixed-step Heun / RK4,
an exponential multistep solver in log-SNR and adaptive Dormand-Prince, every image paired with every class in one
state."""

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .scorer_inputs import (
    Classes,
    Seed,
    check_choice,
    check_counts,
    check_finite_output,
    checked_class_ids,
    checked_images,
    image_seeds,
    is_count,
    open_progress_bar,
    stream_generator,
)
from .vp_sde import VPSDE, EpsFn, as_eps_model, bits_per_dim

__all__ = ["SOLVERS", "STEP_SPACINGS", "LikelihoodResult", "probability_flow_log_likelihood"]


SOLVERS = ("heun", "rk4", "dopri5", "dpm3m")
STEP_SPACINGS = ("log_snr", "quadratic", "uniform")


@dataclass
class LikelihoodResult:
    """
    Output of [`probability_flow_log_likelihood`].

    Args:
        log_likelihood: `[N, K]` `log p(x | c)` in nats, the continuous density of the image as given (no
            dequantisation noise added), column `k` for the `k`-th requested class; on CPU, float64 for float64
            images, else float32.
        bits_per_dim: `[N, K]` from [`bits_per_dim`] (8-bit images scaled to [-1, 1]).
        nfe_per_image: `[N]` network function evaluations per image: ODE right-hand-side evaluations of its batch
            times `K` (each also costs `num_probes`, or `D` with the exact trace, vector-Jacobian products).
        log_likelihood_per_probe: `[N, K, P]` with `num_probes = P >= 2`: the log-likelihood each Hutchinson probe
            alone gives (on the same solution of the ODE; `log_likelihood` is their mean), whose spread is the
            estimator's noise; None with one probe or the exact trace.
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    nfe_per_image: torch.Tensor
    log_likelihood_per_probe: Optional[torch.Tensor] = None

    def difference_standard_error(self, first: int, second: int) -> Optional[torch.Tensor]:
        """`[N]` the Monte-Carlo standard error of `log_likelihood[:, first] - log_likelihood[:, second]` from the
        spread of that difference over the probes (`std / sqrt(P)`; each image's probes are shared by its classes,
        so much of their noise cancels in the difference): how far other probes (another `seed`) would move it.
        None without per-probe results (one probe, or the exact trace, whose difference has no such noise)."""
        if self.log_likelihood_per_probe is None:
            return None
        differences = self.log_likelihood_per_probe[:, first] - self.log_likelihood_per_probe[:, second]
        return differences.std(1) / math.sqrt(differences.shape[1])


def _jacobian_trace(eps: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor]) -> torch.Tensor:
    """`tr(d eps / d x)` per row, `[B, C]`: exactly (one VJP per dimension) if `probes` is None, else the Hutchinson
    mean of `z^T (d eps / d x) z` over the probes `[B, P, D]`, then with `P >= 2` each probe's own (`C = 1 + P`)."""
    def vjp(v):
        return torch.autograd.grad(eps, x, v, retain_graph=True)[0].flatten(1)

    if probes is None:
        basis = torch.eye(eps.shape[1], dtype=eps.dtype, device=eps.device)
        return sum(vjp(e.expand_as(eps))[:, d] for d, e in enumerate(basis))[:, None]
    per_probe = torch.stack([(vjp(z) * z).sum(1) for z in probes.unbind(1)])  # [P, B]
    mean = per_probe.mean(0)[:, None]
    return mean if len(per_probe) == 1 else torch.cat([mean, per_probe.T], 1)


def _trace_columns(probes: Optional[torch.Tensor]) -> int:
    """The columns of [`_jacobian_trace`]: the estimate, then each probe's own where there are several."""
    return 1 if probes is None or probes.shape[1] == 1 else 1 + probes.shape[1]


def _probability_flow(eps_fn: EpsFn, sde: VPSDE, shape, labels, probes) -> Callable:
    r"""
    The augmented ODE `y = [x, delta]` (rows `[B, D + C]`, `delta` one column per [`_jacobian_trace`] column) with

    - `dx/dt = f(x, t) - 1/2 g(t)^2 score = -1/2 beta(t) (x - eps(x, t, c) / sigma(t))`,
    - `d delta/dt = div_x(dx/dt) = -1/2 beta(t) (D - tr(d eps / d x) / sigma(t))`,

    so that `log p_{t_min}(x) = log N(x(1); 0, I) + delta(1)` with `delta(t_min) = 0` (instantaneous change of
    variables, integrated backwards in density from the data at `t_min` to the prior at 1).
    """
    num_dims = math.prod(shape[1:])

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps, trace = _eps_and_trace(eps_fn, y[:, :num_dims], t, shape, labels, probes)
        beta, sigma = sde.beta(t), sde.sigma(t)
        drift = -0.5 * beta * (y[:, :num_dims] - eps / sigma)
        divergence = -0.5 * beta * (num_dims - trace / sigma)
        return torch.cat([drift, divergence], 1)

    return field


def _eps_and_trace(eps_fn: EpsFn, x_rows: torch.Tensor, t: torch.Tensor, shape, labels, probes):
    """`eps` `[B, D]` at the rows `x_rows` `[B, D]` and time `t` (a scalar tensor), and `tr(d eps / d x)` `[B, C]`
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


def _solve_fixed(f, y: torch.Tensor, grid: torch.Tensor, solver: str,
                 on_step: Callable[[float], None]) -> torch.Tensor:
    """Steps along `grid`; `on_step(fraction of the steps done)` after each."""
    step = _rk4_step if solver == "rk4" else _heun_step
    for i, (t0, t1) in enumerate(zip(grid[:-1], grid[1:])):
        y = step(f, t0, y, t1 - t0)
        on_step((i + 1) / (len(grid) - 1))
    return y


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
      `e^-lambda P(lambda)` exactly for the polynomial `P` through eps at the nodes `i, i-1, ..`:
      `x_{i+1} = alpha_{i+1} / alpha_i (x_i - sigma_i sum_m w_m eps_m)`, `w_m = int_0^h e^-s L_m(s) ds` (`L_m`:
      Lagrange basis in `s = lambda - lambda_i`). Predictor: the last `order` nodes (the first steps: those there
      are); once eps at `i + 1` is evaluated (at the predicted `x_{i+1}`), the corrector redoes the step with
      `order + 1` nodes, `i + 1` included, at no extra model call.
    - Divergence: `dx/dlambda = (dlog alpha/dlambda) x - sigma eps`, so `int_{t_min}^1 div(dx/dt) dt = D (log
      alpha(1) - log alpha(t_min)) + int_{lambda(1)}^{lambda(t_min)} sigma tr(d eps / d x) dlambda`. The integrand
      stays bounded near the data (where `tr / sigma`, the integrand in `t`, grows like `1 / t`); it is integrated
      by composite cubic interpolation of its values at the nodes, the trace coming with each node's model call.

    Returns the final `x` `[B, D]`, `int div dt` `[B, C]` (a column per trace column) and the number of model calls
    (`len(grid)`).
    """
    lam = sde.half_log_snr(grid)
    log_alpha = sde.log_alpha(grid.double())
    alpha, sigma = log_alpha.exp().tolist(), (log_alpha - lam).exp().tolist()
    lam = lam.tolist()
    eps, integrand, x_previous = {}, [], x  # x_previous: x at the node before, for the corrector

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


def _error_norm(err, y0, y1, rtol, atol, num_dims) -> torch.Tensor:
    """max over rows of max(RMS of the scaled error of x (the first `num_dims` columns), scaled error of delta (the
    next: the estimate; each probe's own, after it, rides on its steps); scale = atol + rtol max(|y0|, |y1|). Every
    (image, class) row meets the tolerance, and its log-density term is controlled on its own."""
    ratio = err.abs() / (atol + rtol * torch.maximum(y0.abs(), y1.abs()))
    return torch.maximum(ratio[:, :num_dims].pow(2).mean(1).sqrt(), ratio[:, num_dims]).max()


def _solve_dopri5(
    f, y: torch.Tensor, t0: float, t1: float, rtol: float, atol: float, on_step: Callable[[float], None], num_dims: int
) -> torch.Tensor:
    """Adaptive Dormand-Prince RK45 with the standard controller `h *= clip(0.9 err^-1/5, 0.2, 10)`, the first step
    from Hairer, Norsett & Wanner (1993, II.4), first-same-as-last (6 evaluations per attempted step);
    `on_step(fraction of [t0, t1] done)` after each accepted step."""
    def time(s: float) -> torch.Tensor:
        return torch.tensor(s, dtype=y.dtype, device=y.device)

    k1 = f(time(t0), y)
    def norm(err, y0, y1):
        return float(_error_norm(err, y0, y1, rtol, atol, num_dims))

    d0, d1 = norm(y, y, y), norm(k1, y, y)
    h0 = 0.01 * d0 / d1 if min(d0, d1) > 1e-5 else 1e-6
    d2 = norm(f(time(t0 + h0), y + h0 * k1) - k1, y, y) / h0
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
        error = norm(h * sum(e * k for e, k in zip(_DP_E, ks)), y, y_new)
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
    log_snr = sde.log_snr_range()
    lambdas = torch.linspace(float(log_snr[0]), float(log_snr[1]), num_steps + 1, dtype=torch.float64)
    grid = sde.time_of_log_snr(lambdas)
    grid[0], grid[-1] = sde.t_min, 1.0
    return grid.to(like)


def check_solver_args(solver, num_steps, step_spacing, rtol, atol, num_probes, batch_size, warn: bool = True) -> None:
    """`probability_flow_log_likelihood`'s solver settings, refused where they cannot run (and, with `warn`, those
    the solver does not read warned about): checked by the pipeline too before any image is read (`predict`)."""
    check_choice("solver", solver, SOLVERS)
    if solver == "dopri5" and not (rtol > 0 and atol > 0):
        raise ValueError(f"expected solver tolerances rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
    if solver != "dopri5" and not is_count(num_steps):
        raise ValueError(f"expected num_steps >= 1 for solver {solver!r}, got {num_steps}")
    check_choice("step_spacing", step_spacing, STEP_SPACINGS)
    check_counts(num_probes=num_probes, batch_size=batch_size)
    if warn:
        _warn_unused_solver_args(solver, num_steps=num_steps, step_spacing=step_spacing, rtol=rtol, atol=atol)


def _warn_unused_solver_args(solver: str, **given) -> None:
    """A setting the solver does not read, given other than its default, is warned about: the adaptive dopri5 sets
    its own steps from rtol / atol, the fixed-step solvers take no tolerances."""
    unused = ("num_steps", "step_spacing") if solver == "dopri5" else ("rtol", "atol")
    defaults = inspect.signature(probability_flow_log_likelihood).parameters
    ignored = [f"{name}={given[name]!r}" for name in unused if given[name] != defaults[name].default]
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)}: not used by solver={solver!r} ("
            + ("adaptive: rtol and atol set its steps" if solver == "dopri5" else "fixed steps: num_steps sets them")
            + ")",
            UserWarning,
            stacklevel=5,  # the caller of probability_flow_log_likelihood (under its torch.no_grad wrapper)
        )


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
            in float64 for float64 images, else in float32 (half precision overflows; the model keeps its own dtype).
            For a diffusers model `[N, in_channels, sample_size, sample_size]`: other sizes are refused, not resized.
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
            default 0.0081). Not the default: its error is not monotone in the step count. A trained U-Net's noise
            prediction is a staircase in its timestep, steps of period 2 pi timesteps from the highest frequency of
            its sinusoidal timestep embedding (measured on the "tiny" preset, also when trained at continuous
            timesteps), which a grid of 40-60 nodes samples at a phase that depends on the count
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
        batch_size: images per ODE solve. Fixed-step results do not depend on it; dopri5's do, and on the other
            images of the batch: the batch shares its adaptive steps (a step is taken when every image meets the
            tolerance), and the tolerance bounds each step's error, not the result's (measured: up to 0.45 nats apart
            at rtol = atol = 1e-4 on a trained 8 px model, 0.08 at 1e-5). Compare against dopri5 image by image, or at
            a tight tolerance.
        sde: the [`VPSDE`] (default: `DDPMScheduler`'s default schedule).
        progress_bar: `tqdm` arguments for the bar over images, advanced at every solver step (images/s and the
            NFE per image so far shown); `{"disable": True}` hides it.

    Returns:
        [`LikelihoodResult`].
    """
    check_solver_args(solver, num_steps, step_spacing, rtol, atol, num_probes, batch_size)
    if exact_trace and num_probes != 1:
        raise ValueError(
            f"num_probes={num_probes} with exact_trace=True: the exact trace draws no probe; leave it at 1"
        )
    images, sde = checked_images(images, eps_model), sde or VPSDE()
    eps_fn, class_ids = as_eps_model(eps_model, sde), checked_class_ids(classes, eps_model, images.device)
    streams, num_classes = image_seeds(seed, len(images)), len(class_ids)
    log_likelihood, nfe = [], []
    with open_progress_bar(progress_bar, total=len(images), desc="Probability-flow ODE", unit="image",
                       unit_scale=True) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            probes = None if exact_trace else _rademacher(streams[start : start + len(batch)], num_probes, batch)

            def on_step(fraction: float, start=start, size=len(batch)) -> None:
                bar.update(start + size * fraction - bar.n)

            log_p, evaluations = _solve_log_likelihood(eps_fn, sde, batch, class_ids, probes, solver, num_steps,
                                                       step_spacing, rtol, atol, on_step)
            rows = torch.arange(len(log_p))  # image-major: row i K + k is image start + i, class k
            check_finite_output(log_p, start + rows // num_classes, class_ids[rows % num_classes])
            log_likelihood.append(log_p.view(len(batch), num_classes, -1))
            nfe += [evaluations * num_classes] * len(batch)
            bar.set_postfix(nfe_per_image=nfe[-1], refresh=False)
    columns = torch.cat(log_likelihood).cpu()  # the estimate, then each probe's own where there are several
    log_likelihood, per_probe = columns[..., 0], columns[..., 1:] if columns.shape[-1] > 1 else None
    return LikelihoodResult(log_likelihood, bits_per_dim(log_likelihood, images[0].numel()), torch.tensor(nfe),
                            per_probe)


def _rademacher(streams, num_probes: int, batch: torch.Tensor) -> torch.Tensor:
    """`[B, P, D]` probes of +-1, image `i`'s from its own stream."""
    draws = [torch.randint(0, 2, (num_probes, batch[0].numel()), generator=stream_generator(s, 0)) for s in streams]
    return (2 * torch.stack(draws) - 1).to(batch)


def _solve_log_likelihood(eps_fn, sde, batch, class_ids, probes, solver, num_steps, step_spacing, rtol, atol,
                          on_step):
    """Solve one batch (rows image-major: row `i K + k` is image `i`, class `k`); returns `log p` `[B K, C]` (the
    estimate, then each probe's own where there are several) and the number of right-hand-side evaluations;
    `on_step(fraction done)` after every solver step."""
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
    return prior[:, None] + delta, evaluations


def _solve_augmented_state(eps_fn, sde, x, labels, probes, solver, num_steps, step_spacing, rtol, atol, on_step):
    """The Runge-Kutta solvers on the state `[x, int div]`: returns the final x, the divergence integral (a column
    per trace column, see [`_jacobian_trace`]) and the number of right-hand-side evaluations."""
    field = _probability_flow(eps_fn, sde, x.shape, labels, probes)
    evaluations = 0

    def counted(t, y):
        nonlocal evaluations
        evaluations += 1
        return field(t, y)

    num_dims = math.prod(x.shape[1:])
    y = torch.cat([x.flatten(1), x.new_zeros(len(x), _trace_columns(probes))], 1)
    if solver == "dopri5":
        y = _solve_dopri5(counted, y, sde.t_min, 1.0, rtol, atol, on_step, num_dims)
    else:
        y = _solve_fixed(counted, y, _time_grid(sde, num_steps, step_spacing, y), solver, on_step)
    return y[:, :num_dims], y[:, num_dims:], evaluations

"""The likelihood package against closed forms (Gaussian classes have an exact VP-SDE epsilon-predictor and likelihood), and
its fixed-step ODE grids against a tight adaptive solve on a trained U-Net (whose score, unlike a Gaussian's, is stiff
near t_min)."""

import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from diffusion_classifiers.likelihood import (
    STEP_SPACINGS,
    DenoisingScoreResult,
    VPSDE,
    as_eps_model,
    bits_per_dim,
    denoising_error_scores,
    probability_flow_log_likelihood,
    rank_timestep_strata,
    replay_stopping_rule,
)
from diffusion_classifiers.likelihood.probability_flow import (
    _composite_weights,
    _exp_moments,
    _lagrange_integrals,
    _time_grid,
)

SDE = VPSDE()


class GaussianClasses:
    r"""
    Class `c` is `N(mu_c, Sigma)`, `Sigma = Q diag(s^2) Q^T` (rotated, so the Jacobian of eps is not diagonal and
    Rademacher probes have variance). At time t the marginal is `N(alpha mu_c, alpha^2 Sigma + sigma^2 I)`, so the
    exact epsilon-predictor is `eps(x, t, c) = sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu_c)`.
    """

    def __init__(self, means, scales, shape, dtype=torch.float32, seed=0):
        rotation = torch.randn(len(scales), len(scales), generator=torch.Generator().manual_seed(seed))
        self.q = torch.linalg.qr(rotation.double())[0].to(dtype)
        self.means, self.scales, self.shape = means.to(dtype), scales.to(dtype), shape

    def marginal(self, t):
        """alpha(t) and the eigenvalues of the covariance at t, shaped to broadcast over [..., D]."""
        alpha = SDE.alpha(t)[..., None]
        return alpha, alpha**2 * self.scales**2 + SDE.sigma(t)[..., None] ** 2

    def __call__(self, x, t, labels):
        alpha, var = self.marginal(t)
        y = (x.flatten(1) - alpha * self.means[labels]) @ self.q
        return ((SDE.sigma(t)[:, None] * y / var) @ self.q.T).view_as(x)

    def log_density(self, x, t=SDE.t_min):
        """`[N, K]` closed-form `log p_t(x | c)`."""
        return self.class_log_density(x.flatten(1)[:, None], t)

    def class_log_density(self, points, t):
        """`[N, K]` log-density at time t of `points[:, k]` (`[N, K or 1, D]`) under class k."""
        alpha, var = self.marginal(torch.tensor(t, dtype=points.dtype))
        y = (points - alpha * self.means) @ self.q
        return -0.5 * (torch.log(2 * math.pi * var) + y**2 / var).sum(-1)

    def ode_log_likelihood(self, x):
        """`[N, K]` exact probability-flow log-likelihood with the prior N(0, I) at t = 1. The flow is linear: in the
        eigenbasis `y_d(1) = sqrt(v_d(1) / v_d(t_min)) y_d(t_min)`, so the result is `log p_{t_min}(x)` plus the prior
        mismatch `log N(x(1); 0, I) - log p_1(x(1))` (alpha(1) = 0.0066, not 0)."""
        x1 = self.flow_to_prior(x)
        prior = -0.5 * (math.log(2 * math.pi) + x1**2).sum(-1)
        return self.log_density(x) + prior - self.class_log_density(x1, 1.0)

    def flow_to_prior(self, x):
        """`[N, K, D]` x(1) of the class-c flow from x(t_min) = x."""
        (a0, v0), (a1, v1) = (self.marginal(torch.tensor(t, dtype=x.dtype)) for t in (SDE.t_min, 1.0))
        y = (x.flatten(1)[:, None] - a0 * self.means) @ self.q
        return a1 * self.means + (y * (v1 / v0).sqrt()) @ self.q.T

    def sample(self, labels, seed=1):
        z = torch.randn(len(labels), len(self.scales), generator=torch.Generator().manual_seed(seed))
        return (self.means[labels] + (z.to(self.q) * self.scales) @ self.q.T).view(len(labels), *self.shape)


def float32_accumulation_bound(num_evaluations: int, log_likelihood: torch.Tensor) -> float:
    """Worst-case float32 round-off of log-likelihoods accumulated over `num_evaluations` solver evaluations: each adds
    a trace of 16 terms (relative error <= 16 * 2^-24) to a running total (rounded to 2^-24 of it), so two summation
    orders (another batch size, another CPU kernel) differ by at most (num_evaluations + 16) * 2^-24 * |log-likelihood|."""
    return (num_evaluations + 16) * 2.0**-24 * float(log_likelihood.abs().max())


def gaussian_classes(num_classes, separation, dtype=torch.float32, shape=(1, 4, 4)):
    means = torch.randn(num_classes, math.prod(shape), generator=torch.Generator().manual_seed(2)) * separation
    return GaussianClasses(means, torch.linspace(0.2, 1.0, math.prod(shape)), shape, dtype)


def tiny_unet(num_class_embeds=3, **kwargs):
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=num_class_embeds, **kwargs,
    ).eval()


# ----------------------------------------------------------------------------------------------------- the SDE


@pytest.mark.numerics
def test_vpsde_is_the_continuous_ddpm_schedule():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    sde = VPSDE.from_scheduler(scheduler)
    assert (sde.beta_min, sde.beta_max, sde.num_train_timesteps) == pytest.approx((0.1, 20.0, 1000))
    k = torch.arange(1000, dtype=torch.float64)
    t = sde.continuous_time(k)
    # exp(-integral of beta) against the product of (1 - beta_k): the discretisation differs by ~1/2 sum beta_k^2 *
    # alpha_bar (8e-4 at most); diffusers' float32 cumprod of 1000 factors adds <= 1000 * 2^-24 = 6e-5 relative.
    assert (sde.alpha(t) ** 2 - scheduler.alphas_cumprod.double()).abs().max() < 1e-3
    assert torch.allclose(sde.discrete_timestep(t), k)
    assert torch.allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones_like(t))
    assert float(sde.alpha(torch.tensor(1.0))) == pytest.approx(math.exp(-19.9 / 4 - 0.05))
    small = torch.tensor([1e-5], dtype=torch.float32)  # sigma^2 = 1 - exp(-0.1 t - 9.95 t^2), no cancellation
    assert float(sde.sigma(small) ** 2) == pytest.approx(-math.expm1(-0.1e-5 - 9.95e-10), rel=1e-5)


def test_vpsde_rejects_other_schedules():
    with pytest.raises(ValueError, match="linear"):
        VPSDE.from_scheduler(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    with pytest.raises(ValueError, match="epsilon"):
        VPSDE.from_scheduler(DDPMScheduler(prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(beta_min=20, beta_max=0.1)


@pytest.mark.numerics
def test_as_eps_model_calls_the_unet_at_the_discrete_timestep():
    unet, x = tiny_unet(), torch.randn(3, 1, 8, 8)
    t, labels = torch.tensor([0.001, 0.5, 1.0]), torch.tensor([0, 2, 1])
    expected = unet(x, torch.tensor([0.0, 499.0, 999.0]), class_labels=labels).sample
    # The same network on the same inputs and batch: bit-identical whatever the CPU kernel.
    assert torch.equal(as_eps_model(unet)(x, t, labels), expected)
    with pytest.raises(ValueError, match="class embedding"):
        as_eps_model(tiny_unet(num_class_embeds=None))


# ------------------------------------------------------------------------------------------- exact likelihood


# The tolerance is the solver's truncation error (measured) with room for float32 round-off, which is at most
# float32_accumulation_bound(NFE, |log-likelihood| <= 50): 4.3e-4 for rk4 (128 NFE), 8e-4 for heun (256), 6e-4 for
# dopri5 (186). This score is not stiff near t_min, so it does not tell the grids apart: see the trained U-Net below.
@pytest.mark.numerics
@pytest.mark.parametrize(
    "solver_args, tolerance",
    [
        (dict(), 3e-3),  # the default, rk4 with 32 log-SNR steps: measured 1.5e-3 nats (float64 too: truncation)
        (dict(solver="rk4", num_steps=32, step_spacing="quadratic"), 2e-3),  # measured 9.2e-5 nats (float32)
        (dict(solver="heun", num_steps=128, step_spacing="quadratic"), 2e-2),  # measured 3.5e-3
        (dict(solver="dopri5", rtol=1e-5, atol=1e-5), 2e-3),  # measured 1.8e-4, 186 NFE
        (dict(solver="dpm3m", num_steps=40), 1e-2),  # measured 8.4e-3 in float32 and float64 (truncation), 123 NFE
    ],
)
def test_probability_flow_matches_gaussian_closed_form(solver_args, tolerance):
    model = gaussian_classes(3, separation=0.5)
    x = model.sample(torch.tensor([0, 1, 2, 0, 1, 2]))
    result = probability_flow_log_likelihood(model, x, 3, exact_trace=True, **solver_args)
    # The ODE against its exact solution, then against the data density (prior mismatch: <= 0.006 nats/dim here).
    assert (result.log_likelihood - model.ode_log_likelihood(x)).abs().max() < tolerance
    assert (result.log_likelihood - model.log_density(x)).abs().max() < 1e-2 * x[0].numel()
    assert torch.equal(result.log_likelihood.argmax(1), model.log_density(x).argmax(1))  # same Bayes decisions
    assert torch.allclose(result.bits_per_dim, bits_per_dim(result.log_likelihood, 16))


@pytest.mark.numerics
def test_dopri5_error_shrinks_with_tolerance():  # float64 throughout: the 1e-5 is the solver's, not round-off
    model = gaussian_classes(2, separation=0.7, dtype=torch.float64)
    x = model.sample(torch.tensor([0, 1]))
    errors, nfe = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        result = probability_flow_log_likelihood(model, x, 2, solver="dopri5", rtol=tol, atol=tol, exact_trace=True)
        errors.append(float((result.log_likelihood - model.ode_log_likelihood(x)).abs().max()))
        nfe.append(int(result.nfe_per_image[0]))
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5
    assert nfe[0] < nfe[1] < nfe[2]


@pytest.mark.numerics
def test_multistep_quadratures_are_exact_for_polynomials():  # float64: exact up to ~1e-13 relative
    nodes = np.array([6.9, 5.1, 4.0, 2.2, 0.3, -1.0, -5.0])  # decreasing and uneven, as lambda along a grid
    cubic = np.polynomial.Polynomial([0.5, -1.0, 0.3, 0.2])
    integral = cubic.integ()
    weights = _composite_weights(nodes, 4)
    assert weights @ cubic(nodes) == pytest.approx(integral(nodes[-1]) - integral(nodes[0]), rel=1e-12)
    # the exponential step: int_0^h e^-s q(s) ds for a quadratic q through 3 nodes, against e^-s q = d/ds(-e^-s Q)
    # with Q = q + q' + q''
    q, h = np.polynomial.Polynomial([1.0, -2.0, 0.7]), -0.4
    big_q = q + q.deriv() + q.deriv(2)
    exact = -math.exp(-h) * big_q(h) + big_q(0.0)
    step_nodes = np.array([0.0, 0.4, 0.8])  # eps_i, eps_{i-1}, eps_{i-2}
    assert _lagrange_integrals(step_nodes, _exp_moments(h, 3)) @ q(step_nodes) == pytest.approx(exact, rel=1e-12)


@pytest.mark.numerics
def test_dpm3m_converges_at_third_order_and_counts_nfe():  # float64, exact trace: the error is the solver's
    model = gaussian_classes(3, separation=0.5, dtype=torch.float64)
    x = model.sample(torch.tensor([0, 1, 2]))
    errors = []
    for num_steps in (128, 256):
        result = probability_flow_log_likelihood(model, x, 3, solver="dpm3m", num_steps=num_steps, exact_trace=True)
        assert result.nfe_per_image.tolist() == [3 * (num_steps + 1)] * 3  # one model call per grid node
        errors.append(float((result.log_likelihood - model.ode_log_likelihood(x)).abs().max()))
    # measured 2.1e-4 and 1.5e-5: 14x per halving (third-order predictor, fourth-order corrector)
    assert errors[0] / errors[1] > 8 and errors[1] < 1e-4


def two_images():
    return torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("solver", ["rk4", "dopri5", "dpm3m"])
def test_several_probes_give_each_probe_s_log_likelihood_on_one_solution(solver):
    unet = tiny_unet(num_class_embeds=2)  # random weights: each class its own Jacobian
    args = dict(solver=solver, rtol=1e-2, atol=1e-2) if solver == "dopri5" else dict(solver=solver, num_steps=4)
    result = probability_flow_log_likelihood(unet, two_images(), 2, num_probes=4, **args)
    assert result.log_likelihood_per_probe.shape == (2, 2, 4)
    # the same solution of the ODE: the estimate is the probes' mean (to float32 round-off of ~100 nats)
    assert torch.allclose(result.log_likelihood_per_probe.mean(-1), result.log_likelihood, atol=1e-3)
    assert result.log_likelihood_per_probe.std(-1).min() > 1e-2  # the probes differ
    single = probability_flow_log_likelihood(unet, two_images(), 2, num_probes=1, **args)
    assert single.log_likelihood_per_probe is None and single.difference_standard_error(1, 0) is None


def test_a_setting_the_solver_does_not_read_is_warned_about():
    unet, images = tiny_unet(num_class_embeds=2), two_images()
    with pytest.warns(UserWarning, match=r"num_steps=10: not used by solver='dopri5' \(adaptive: rtol and atol"):
        probability_flow_log_likelihood(unet, images, 2, solver="dopri5", num_steps=10, rtol=1e-2, atol=1e-2)
    with pytest.warns(UserWarning, match=r"rtol=0.001: not used by solver='rk4' \(fixed steps: num_steps sets them"):
        probability_flow_log_likelihood(unet, images, 2, solver="rk4", num_steps=2, rtol=1e-3)


def test_the_ratio_s_standard_error_is_the_spread_over_other_probes():
    unet, images, args = tiny_unet(num_class_embeds=2), two_images(), dict(solver="rk4", num_steps=2, num_probes=8)
    stderr = probability_flow_log_likelihood(unet, images, 2, **args).difference_standard_error(1, 0)
    # against the spread of the ratio over 10 other seeds' probes: within a factor 2 (the spread of 10 draws is
    # 0.55-1.45x the true one at 2 sigma, a stderr of 8 probes 0.5-1.5x)
    ratios = torch.stack([probability_flow_log_likelihood(unet, images, 2, seed=seed, **args)
                          .log_likelihood.diff(dim=1)[:, 0] for seed in range(1, 11)])
    assert ((stderr / ratios.std(0)) - 1).abs().max() < 1.0, (stderr, ratios.std(0))


@pytest.mark.numerics
def test_hutchinson_is_unbiased_and_shared_across_classes():
    model, num_images = gaussian_classes(3, separation=0.7), 64
    x = model.sample(torch.tensor([1])).expand(num_images, -1, -1, -1)  # one image, 64 independent probe draws
    args = dict(solver="rk4", num_steps=16, step_spacing="quadratic")
    exact = probability_flow_log_likelihood(model, x[:1], 3, exact_trace=True, **args).log_likelihood
    hutchinson = probability_flow_log_likelihood(model, x, 3, num_probes=1, **args).log_likelihood
    spread = hutchinson.std(0)
    assert (spread > 0.3).all()  # the probes are not trivially exact here
    assert ((hutchinson.mean(0) - exact[0]).abs() < 4 * spread / math.sqrt(num_images)).all()
    # Common random numbers: the Jacobian of eps does not depend on x or c here, so each image's probe error is the
    # same for every class and the log-likelihood ratios are exact, whatever the probe.
    # Exact in exact arithmetic; each of the 4 log-likelihoods compared carries float32_accumulation_bound(64 NFE)
    # (1.9e-4 at |log-likelihood| = 40) of round-off.
    ratios = hutchinson - hutchinson[:, :1]
    atol = 4 * float32_accumulation_bound(64, exact)
    assert torch.allclose(ratios, (exact - exact[:, :1]).expand_as(ratios), atol=atol, rtol=0)


@pytest.mark.numerics
def test_likelihood_nfe_batching_and_seeds():
    model = gaussian_classes(3, separation=0.7)
    x = model.sample(torch.arange(5) % 3)
    run = lambda **kw: probability_flow_log_likelihood(model, x, [2, 0], num_steps=4, num_probes=2, **kw)  # noqa: E731
    rk4, heun = run(batch_size=5), run(solver="heun", batch_size=2)
    assert rk4.log_likelihood.shape == (5, 2)
    assert rk4.nfe_per_image.tolist() == [4 * 4 * 2] * 5 and heun.nfe_per_image.tolist() == [2 * 4 * 2] * 5
    # Other batch sizes change only the summation order: two values, each within float32_accumulation_bound(32 NFE)
    # (1.4e-4 at |log-likelihood| = 50).
    atol = 2 * float32_accumulation_bound(4 * 4 * 2, rk4.log_likelihood)
    assert torch.allclose(run(batch_size=2).log_likelihood, rk4.log_likelihood, atol=atol, rtol=0)
    assert torch.equal(run(batch_size=5).log_likelihood, rk4.log_likelihood)
    assert not torch.allclose(run(batch_size=5, seed=1).log_likelihood, rk4.log_likelihood)
    per_image_seeds = run(seed=[3, 4, 5, 6, 7]).log_likelihood
    alone = probability_flow_log_likelihood(model, x[2:3], [2, 0], num_steps=4, num_probes=2, seed=[5])
    assert torch.allclose(per_image_seeds[2:3], alone.log_likelihood, atol=atol, rtol=0)
    assert torch.allclose(bits_per_dim(torch.tensor([0.0]), 16), torch.tensor([math.log2(127.5)]))


def test_likelihood_on_a_class_conditional_unet():
    unet, x = tiny_unet(), torch.rand(2, 1, 8, 8) * 2 - 1
    result = probability_flow_log_likelihood(unet, x, 3, num_steps=2)
    assert result.log_likelihood.shape == (2, 3) and torch.isfinite(result.log_likelihood).all()
    assert result.nfe_per_image.tolist() == [2 * 4 * 3] * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="dopri5", rtol=0), "tolerances"),
        (dict(solver="dopri5", atol=-1e-5), "tolerances"),
        (dict(num_steps=0), "num_steps >= 1"),
        (dict(solver="euler"), "solver in"),
        (dict(step_spacing="log"), "step_spacing"),
        (dict(num_probes=0), "num_probes >= 1"),
        (dict(classes=[0, 3]), r"class ids in 0\.\.2"),
        (dict(classes=[1, 1]), "distinct"),
        (dict(images=torch.zeros(2, 1, 8, 8).index_fill_(0, torch.tensor([1]), math.nan)), "input image 1 contains NaN or inf"),
        (dict(seed=[1, 2, 3]), "one seed per image"),
        (dict(images=torch.zeros(2, 1, 16, 16)), r"expected images of shape \[N, 1, 8, 8\].*got \[2, 1, 16, 16\]"),
        (dict(images=torch.zeros(2, 3, 8, 8)), r"expected images of shape \[N, 1, 8, 8\].*sample_size"),
    ],
)
def test_likelihood_bad_arguments(kwargs, message):
    args = dict(images=torch.zeros(2, 1, 8, 8), classes=3) | kwargs
    with pytest.raises(ValueError, match=message):
        probability_flow_log_likelihood(tiny_unet(), **args)


# ------------------------------------------------------------------- fixed-step grids on a trained score model


def test_log_snr_grid_is_uniform_in_log_snr():
    grid = _time_grid(SDE, 32, "log_snr", torch.zeros(1, dtype=torch.float64))
    assert grid[0] == SDE.t_min and grid[-1] == 1 and (grid.diff() > 0).all()
    log_snr = 2 * SDE.log_alpha(grid) - torch.log(SDE.sigma(grid) ** 2)
    step = float(log_snr[-1] - log_snr[0]) / 32  # the inverse in float64: exact to ~1e-12 relative
    assert torch.allclose(log_snr.diff(), torch.full_like(log_snr[1:], step), rtol=1e-9, atol=0)
    # geometric near t_min (sigma^2 ~ beta_min t): the first step ends at 2.1 t_min; "uniform" would end at 3125 t_min
    assert 2.0 < grid[1] / SDE.t_min < 2.2
    assert _time_grid(SDE, 32, "log_snr", torch.zeros(1)).dtype == torch.float32


@pytest.fixture(scope="module")
def trained_digits_unet(tmp_path_factory):
    """`tiny_unet` (no mid-block attention: faster) trained 300 steps on scikit-learn digits 0, 1, 2 (8 px, values
    k / 8 - 1 for k in 0..16) through the library's loop, and the last image of each class, held out. It must be
    trained: the score of a trained model is stiff near t_min, and the fixed-step grids differ there."""
    from diffusion_classifiers.training import DenoisingLoss, TrainingArguments, train

    digits = load_digits()
    keep = digits.target < 3
    images = torch.tensor(digits.images[keep] / 8 - 1, dtype=torch.float32)[:, None]  # [537, 1, 8, 8]
    labels = torch.tensor(digits.target[keep])
    held_out = torch.stack([torch.nonzero(labels == c)[-1, 0] for c in range(3)])
    training = torch.ones(len(labels), dtype=torch.bool).index_fill_(0, held_out, False)
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("digits_unet")), max_train_steps=300,
                             train_batch_size=32, learning_rate=1e-2, lr_warmup_steps=5, checkpointing_steps=10**6)
    unet, _, _ = train(args, tiny_unet(add_attention=False).train(), TensorDataset(images[training], labels[training]),
                       DenoisingLoss(DDPMScheduler(), conditional=True))
    return unet.eval(), images[held_out], labels[held_out]


# Measured on this model (3 images x 3 classes, num_steps=32, float32; |delta bits/dim| max / mean against dopri5 at
# rtol = atol = 1e-5, itself within 1.3e-3 of dopri5 at 1e-6):
#   rk4  log_snr   0.0032 / 0.0015    (the default; 384 NFE per image)
#   rk4  quadratic 0.0082 / 0.0019
#   rk4  uniform   0.47   / 0.32      (the old default: log p overestimated, 200x the default's error)
#   heun log_snr   0.042  / 0.027     (192 NFE per image)
#   heun quadratic 0.023  / 0.014
#   heun uniform   2.2    / 1.6
# Round-off is negligible here (float32_accumulation_bound(128 NFE, 300 nats) = 2.6e-3 nats = 6e-5 bits/dim); the
# spread comes from the trained weights, which change with the CPU kernels the loop ran on. Over nine trained models
# (this U-Net at 200 to 300 steps with and without attention, a one-level U-Net, the "tiny" preset at 200 and 1000
# steps) the worst max |delta| was 0.0101 for the default, 0.021 for rk4 quadratic and 0.084 for heun, and the
# smallest mean |delta| of the uniform grid 0.13 (rk4, 70x the default's) and 0.86 (heun). The bounds below are about
# twice those worst cases; the floors of the inaccurate grids, under half the smallest.
PRESET_BOUNDS = {  # (solver, step_spacing): max |delta bits/dim| allowed, or None for the inaccurate uniform grid
    ("rk4", "log_snr"): 0.02,
    ("rk4", "quadratic"): 0.05,
    ("heun", "log_snr"): 0.2,
    ("heun", "quadratic"): 0.2,
    ("rk4", "uniform"): None,
    ("heun", "uniform"): None,
}


# Not a `numerics` test: the bounds cover the spread over nine trained models, which is what other CPU kernels change
# (the trained weights); round-off itself is negligible here (see above).
@pytest.mark.slow
def test_fixed_step_grids_against_a_tight_dopri5_solve_on_a_trained_unet(trained_digits_unet):
    unet, images, labels = trained_digits_unet
    defaults = {name: p.default for name, p in inspect.signature(probability_flow_log_likelihood).parameters.items()}
    assert (defaults["solver"], defaults["step_spacing"], defaults["num_steps"]) == ("rk4", "log_snr", 32)
    assert {spacing for _, spacing in PRESET_BOUNDS} == set(STEP_SPACINGS)  # every grid offered is measured
    reference = probability_flow_log_likelihood(unet, images, 3, solver="dopri5", rtol=1e-5, atol=1e-5).bits_per_dim
    assert torch.equal(reference.argmin(1), labels)  # a trained classifier: each held-out image's class is the best
    errors = {}
    for (solver, spacing), bound in PRESET_BOUNDS.items():  # the same seed, so the same probe, as the reference
        result = probability_flow_log_likelihood(unet, images, 3, solver=solver, step_spacing=spacing)
        assert result.nfe_per_image.tolist() == [3 * 32 * (4 if solver == "rk4" else 2)] * 3
        errors[solver, spacing] = result.bits_per_dim - reference
    table = {key: (float(e.abs().max()), float(e.abs().mean())) for key, e in errors.items()}
    for key, bound in PRESET_BOUNDS.items():
        if bound is not None:
            assert table[key][0] < bound, table
    # the default keeps the reference's decisions
    assert torch.equal((reference + errors["rk4", "log_snr"]).argmin(1), labels), table
    # the old default (rk4, 32 uniform steps): its first step jumps from t_min to 0.031, over the stiff region, and
    # overestimates log p (bits/dim too low) for every image and class
    assert (errors["rk4", "uniform"] < 0).all() and table["rk4", "uniform"][1] > 0.05, table
    assert table["rk4", "uniform"][1] > 20 * table["rk4", "log_snr"][1], table
    assert (errors["heun", "uniform"] < 0).all() and table["heun", "uniform"][1] > 0.3, table
    # The exponential multistep solver, 41 evaluations per class (3.1x fewer than the default): measured max |delta|
    # 0.0065 here (the default 0.0031) and 0.0074 on the "tiny" preset trained 1000 steps on Fashion-MNIST (4 training
    # images x 10 classes, results/score_sde_bench_likelihood.json). The bound is that here times the default's spread over nine models
    # (0.0101 / 0.0031 = 3.3), rounded up.
    fast = probability_flow_log_likelihood(unet, images, 3, solver="dpm3m", num_steps=40)
    assert fast.nfe_per_image.tolist() == [3 * 41] * 3
    assert (fast.bits_per_dim - reference).abs().max() < 0.025, table
    assert torch.equal(fast.bits_per_dim.argmin(1), labels)


# ------------------------------------------------------------------------------------------ denoising bound


@pytest.mark.parametrize("weighting, spacing", [("uniform", "even"), ("elbo", "stratified"), ("elbo", "log_snr")])
def test_denoising_scores_rank_the_true_class_first(weighting, spacing):
    model = gaussian_classes(4, separation=1.0)
    labels = torch.arange(40) % 4
    result = denoising_error_scores(model, model.sample(labels), 4, num_timesteps=20, weighting=weighting,
                                    timestep_spacing=spacing)
    assert (result.scores.argmax(1) == labels).float().mean() >= 0.95
    assert result.nfe_per_image.tolist() == [4 * 20] * 40  # exhaustive: K T
    assert result.errors.shape == (40, 4, 20) and not result.errors.isnan().any()


def test_elbo_score_differences_estimate_log_likelihood_ratios():
    # With the exact eps the bound is tight, so score differences are log-likelihood ratios plus Monte Carlo noise;
    # the "uniform" weighting gives a slope far from 1 on the same numbers.
    model = gaussian_classes(2, separation=0.7)
    x = model.sample(torch.arange(16) % 2)
    exact = model.log_density(x)
    exact_ratio = exact[:, 1] - exact[:, 0]
    ratios = {}
    for weighting in ("elbo", "uniform"):
        scores = denoising_error_scores(model, x, 2, num_timesteps=500, weighting=weighting).scores.double()
        ratios[weighting] = scores[:, 1] - scores[:, 0]
    slope = {w: float((r * exact_ratio).sum() / (exact_ratio**2).sum()) for w, r in ratios.items()}
    assert 0.9 < slope["elbo"] < 1.1 and not 0.5 < slope["uniform"] < 2, slope
    assert (ratios["elbo"] - exact_ratio).abs().median() < 0.1 * exact_ratio.abs().median()


def test_timesteps_spread_in_log_snr_estimate_the_same_log_likelihood_ratios():
    # Importance sampling in log-SNR: the same integral, every timestep weighing the same under "elbo". On this model
    # (3 seeds, median |error| / median |exact ratio| of 36.3) it was 1.5-2.3 at T = 50 where even spacing was 2.6-3.4,
    # and 0.65-0.81 at T = 500 (even: 0.67-1.42).
    model = gaussian_classes(2, separation=0.7)
    x = model.sample(torch.arange(16) % 2)
    exact = model.log_density(x)
    exact_ratio = exact[:, 1] - exact[:, 0]
    scores = denoising_error_scores(model, x, 2, num_timesteps=50, weighting="elbo", timestep_spacing="log_snr").scores
    ratio = scores[:, 1].double() - scores[:, 0].double()
    assert (ratio - exact_ratio).abs().median() < 0.1 * exact_ratio.abs().median()
    half_log_snr = SDE.log_alpha(ratio.new_tensor([SDE.t_min, 1.0])) - torch.log(SDE.sigma(ratio.new_tensor([SDE.t_min, 1.0])))
    t = denoising_error_scores(model, x[:1], 2, num_timesteps=4, timestep_spacing="log_snr").timesteps[0].sort().values
    lam = SDE.log_alpha(t) - torch.log(SDE.sigma(t))  # the midpoints of 4 equal strata, from t_min to 1
    expected = half_log_snr[0] + (torch.arange(4, dtype=t.dtype) + 0.5) / 4 * (half_log_snr[1] - half_log_snr[0])
    torch.testing.assert_close(lam, expected.to(lam), rtol=1e-5, atol=1e-5)


@pytest.mark.numerics
def test_difference_standard_error_takes_the_shared_timesteps_in_time_order():
    errors = torch.tensor([[[1.0, 4.0, 2.0, 7.0], [2.0, 1.0, float("nan"), 3.0]]])  # class 1 not scored at column 2
    timesteps = torch.tensor([[0.5, 0.1, 0.3, 0.9]])
    result = DenoisingScoreResult(errors[:, :, 0], errors[:, :, 0], errors, timesteps, torch.tensor([7]), torch.arange(4))
    d = torch.tensor([1.0 - 4.0, 2.0 - 1.0, 3.0 - 7.0])  # e_1 - e_0 at t = 0.1, 0.5, 0.9
    steps = (d[1:] - d[:-1]).pow(2)
    expected = (steps.sum() / 2 + (steps[0] + steps[-1]) / 4).sqrt() / 3
    torch.testing.assert_close(result.difference_standard_error(0, 1), expected.reshape(1))
    assert result.difference_standard_error(1, 0) == result.difference_standard_error(0, 1)
    one_shared = DenoisingScoreResult(errors[:, :, :2], errors[:, :, :2], errors[:, :, 1:3], timesteps[:, :2],
                                      torch.tensor([3]), torch.arange(2))  # fmt: skip
    assert one_shared.difference_standard_error(0, 1).isnan().all()


@pytest.mark.parametrize("weighting, spacing", [("elbo", "even"), ("uniform", "even"), ("elbo", "log_snr"),
                                                ("uniform", "stratified")])  # fmt: skip
def test_difference_standard_error_is_the_seed_to_seed_spread_of_the_ratio(weighting, spacing):
    # Against the spread of the ratio over 30 noise seeds, on 8 images: the median of their quotients was 0.88, 1.42,
    # 1.44 and 1.21 (in this order). The spread over 30 seeds is itself uncertain by about 13% an image, 5% for the
    # median of 8, so the bounds sit about three of those beyond the measured quotients: the estimate is the right
    # size, not exact (the timesteps as independent draws, or out of time order, gave 1.9-3.5).
    model = gaussian_classes(2, separation=0.7)
    x = model.sample(torch.arange(8) % 2)
    runs = [denoising_error_scores(model, x, 2, num_timesteps=20, weighting=weighting, timestep_spacing=spacing,
                                   seed=seed) for seed in range(30)]  # fmt: skip
    ratios = torch.stack([run.scores[:, 1].double() - run.scores[:, 0].double() for run in runs])
    estimates = torch.stack([run.difference_standard_error(1, 0) for run in runs])
    quotient = (estimates.mean(0) / ratios.std(0)).median()
    assert 0.75 < quotient < 1.66


def test_pruning_keeps_the_exhaustive_winner_and_counts_nfe():
    model = gaussian_classes(5, separation=0.3)
    x = model.sample(torch.arange(30) % 5, seed=3)
    stages = [(4, 3), (6, 2), (10, 1)]
    exhaustive = denoising_error_scores(model, x, 5, num_timesteps=20, timestep_spacing="stratified")
    pruned = denoising_error_scores(model, x, 5, num_timesteps=20, timestep_spacing="stratified", pruning=stages)
    assert (exhaustive.scores.argmax(1) != torch.arange(30) % 5).any()  # not trivially separable
    assert torch.equal(pruned.scores.argmax(1), exhaustive.scores.argmax(1))
    assert (torch.isfinite(pruned.scores).sum(1) == 1).all() and torch.isfinite(pruned.partial_scores).all()
    assert pruned.nfe_per_image.tolist() == [4 * 5 + 6 * 3 + 10 * 2] * 30  # sum over stages of alive * timesteps
    # Same timesteps and noise with and without pruning: every evaluated error is the exhaustive one, up to the
    # summation order of a smaller batch. An error is a 16-term sum of squares of 16-term products, so its relative
    # round-off is <= 2 * 16 * 2^-24 = 1.9e-6, within allclose's rtol=1e-5.
    evaluated = ~pruned.errors.isnan()
    assert torch.allclose(pruned.errors[evaluated], exhaustive.errors[evaluated])
    winner = exhaustive.scores.argmax(1, keepdim=True)
    assert torch.allclose(pruned.scores.gather(1, winner), exhaustive.scores.gather(1, winner))


@pytest.mark.numerics
def test_binary_early_stop_settles_easy_images_early():
    model = gaussian_classes(2, separation=1.0)
    labels = torch.arange(20) % 2
    x = torch.cat([model.sample(labels), model.means.mean(0).view(1, 1, 4, 4)])  # + one on the decision boundary
    exhaustive = denoising_error_scores(model, x, 2, num_timesteps=100)
    early = denoising_error_scores(model, x, 2, num_timesteps=100, early_stop_confidence=0.99, timesteps_per_check=5)
    used = (~early.errors[:, 0].isnan()).sum(1)
    assert torch.equal(early.nfe_per_image, 2 * used)  # both classes at each timestep used
    assert (used % 5 == 0).all() and (used[:-1] < 100).float().mean() > 0.9 and used[-1] == 100
    assert torch.equal(early.scores[:-1].argmax(1), labels)
    evaluated = ~early.errors.isnan()
    assert torch.allclose(early.errors[evaluated], exhaustive.errors[evaluated])  # rtol=1e-5 >= 1.9e-6: see pruning


@pytest.mark.numerics
def test_multiclass_early_stop_eliminates_rivals_and_replays_from_an_exhaustive_run():
    model = gaussian_classes(5, separation=0.5)
    labels = torch.arange(30) % 5
    x = model.sample(labels, seed=4)
    rule = dict(pruning=[(2, 3)], early_stop_confidence=0.95, timesteps_per_check=2)
    exhaustive = denoising_error_scores(model, x, 5, num_timesteps=40)
    early = denoising_error_scores(model, x, 5, num_timesteps=40, **rule)
    assert early.nfe_per_image.float().mean() < exhaustive.nfe_per_image.float().mean() / 4
    assert (early.scores.argmax(1) == labels).float().mean() >= (exhaustive.scores.argmax(1) == labels).float().mean() - 0.1
    alive = torch.isfinite(early.scores)
    evaluated = (~early.errors.isnan()).sum(2)
    # the classes an image ends with were evaluated on the same timesteps, more than any eliminated class
    assert ((evaluated == evaluated.max(1, keepdim=True).values) == alive).all()
    assert torch.allclose(early.errors[~early.errors.isnan()], exhaustive.errors[~early.errors.isnan()])  # see pruning
    replayed = replay_stopping_rule(exhaustive, **rule)
    assert torch.equal(replayed.errors.isnan(), early.errors.isnan()) and torch.equal(replayed.scores.isinf(), ~alive)
    assert torch.equal(replayed.nfe_per_image, early.nfe_per_image)
    plain = replay_stopping_rule(exhaustive)
    assert torch.equal(plain.scores, exhaustive.scores) and torch.equal(plain.errors, exhaustive.errors)
    with pytest.raises(ValueError, match="expected an exhaustive DenoisingScoreResult"):
        replay_stopping_rule(early)


def test_an_early_stop_that_could_stop_no_image_is_warned_about_by_the_scorer_and_the_replay():
    """QA: the README's rule (10 ranked strata, a look every 10 by default) replayed at every image's full budget
    without a word, while the pipeline refused it; with a look every 2 the same strata stop images early."""
    model = gaussian_classes(4, separation=2.0)
    x = model.sample(torch.arange(12) % 4, seed=2)
    exhaustive = denoising_error_scores(model, x, 4, num_timesteps=10)
    too_late = r"the first look comes after max\(2, timesteps_per_check=10\) timesteps, and 10 are scored"
    with pytest.warns(UserWarning, match=too_late):
        replay_stopping_rule(exhaustive, early_stop_confidence=0.99, timestep_strata=list(range(10)))
    with pytest.warns(UserWarning, match=too_late):
        denoising_error_scores(model, x, 4, num_timesteps=10, early_stop_confidence=0.99)
    stopping = replay_stopping_rule(exhaustive, early_stop_confidence=0.9, timesteps_per_check=2)
    assert stopping.nfe_per_image.float().mean() < 4 * 10
    pruned = replay_stopping_rule(exhaustive, pruning=[(8, 2)], early_stop_confidence=0.9)  # pruning stops images
    assert pruned.nfe_per_image.float().mean() < 4 * 10


class ClassBlindAtHighNoise:
    """The Gaussian classes' exact eps, told the true class only for `t < 0.5` and class 0 above: timesteps above
    0.5 cannot separate the classes."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t, labels):
        return self.model(x, t, torch.where(t < 0.5, labels, torch.zeros_like(labels)))


@pytest.mark.numerics
@pytest.mark.parametrize("spacing", ["even", "stratified"])
def test_timestep_strata_evaluate_a_subset_of_the_exhaustive_errors_in_the_order_asked(spacing):
    model = gaussian_classes(4, separation=0.5)
    labels = torch.arange(24) % 4
    x = model.sample(labels, seed=3)
    exhaustive = denoising_error_scores(model, x, 4, num_timesteps=16, timestep_spacing=spacing)
    assert sorted(exhaustive.strata.tolist()) == list(range(16))
    strata = [9, 2, 14, 5, 0, 11]
    subset = denoising_error_scores(model, x, 4, num_timesteps=16, timestep_spacing=spacing, timestep_strata=strata)
    columns = [exhaustive.strata.tolist().index(s) for s in strata]
    assert subset.strata.tolist() == strata and subset.nfe_per_image.tolist() == [24] * 24
    assert torch.equal(subset.timesteps, exhaustive.timesteps[:, columns])  # same points and noise per stratum
    assert torch.allclose(subset.errors, exhaustive.errors[:, :, columns], rtol=1e-5, atol=0)
    rule = dict(pruning=[(1, 3)], early_stop_confidence=0.9, timesteps_per_check=1, timestep_strata=strata)
    direct = denoising_error_scores(model, x, 4, num_timesteps=16, timestep_spacing=spacing, **rule)
    replayed = replay_stopping_rule(exhaustive, **rule)
    assert torch.equal(replayed.nfe_per_image, direct.nfe_per_image) and torch.equal(replayed.strata, direct.strata)
    assert torch.equal(replayed.scores.isinf(), direct.scores.isinf())


@pytest.mark.numerics
def test_rank_timestep_strata_puts_the_timesteps_that_separate_the_classes_first():
    model = ClassBlindAtHighNoise(gaussian_classes(4, separation=1.0))
    labels = torch.arange(40) % 4
    x = model.model.sample(labels, seed=5)
    exhaustive = denoising_error_scores(model, x, 4, num_timesteps=10)
    ranked = rank_timestep_strata(exhaustive, labels)
    assert sorted(ranked) == list(range(10))
    # strata 0..4 cover t < 0.5: above it every class has the same error and argmin picks class 0 (25% accuracy)
    assert set(ranked[:5]) == set(range(5))
    informative = replay_stopping_rule(exhaustive, timestep_strata=ranked[:5])
    assert informative.nfe_per_image.tolist() == [5 * 4] * 40 and informative.strata.tolist() == ranked[:5]


def test_timestep_strata_and_ranking_reject_bad_input():
    model = gaussian_classes(3, separation=0.5)
    x = model.sample(torch.arange(6) % 3)
    for strata in ([], [0, 0], [4], [-1]):
        with pytest.raises(ValueError, match="timestep_strata: expected distinct stratum indices in 0..3"):
            denoising_error_scores(model, x, 3, num_timesteps=4, timestep_strata=strata)
    exhaustive = denoising_error_scores(model, x, 3, num_timesteps=4)
    with pytest.raises(ValueError, match="timestep_strata: expected distinct strata of the exhaustive run"):
        replay_stopping_rule(exhaustive, timestep_strata=[5])
    with pytest.raises(ValueError, match="labels: expected 6 class columns in 0..2"):
        rank_timestep_strata(exhaustive, torch.tensor([0, 1, 2, 3, 0, 1]))
    early = denoising_error_scores(model, x, 3, num_timesteps=4, pruning=[(2, 1), (2, 1)])
    with pytest.raises(ValueError, match="expected an exhaustive DenoisingScoreResult"):
        rank_timestep_strata(early, torch.arange(6) % 3)


@pytest.mark.numerics
def test_denoising_is_deterministic_and_independent_of_batching():
    model = gaussian_classes(3, separation=0.7)
    x = model.sample(torch.arange(6) % 3)
    run = lambda images=x, **kw: denoising_error_scores(model, images, 3, num_timesteps=8,  # noqa: E731
                                                        timestep_spacing="stratified", **kw)
    reference = run()
    assert torch.equal(run().errors, reference.errors)
    # Another batch only reorders the sums: relative round-off <= 1.9e-6 (see the pruning test), within rtol=1e-5.
    assert torch.allclose(run(max_batch_size=5).errors, reference.errors, rtol=1e-5, atol=0)
    assert torch.allclose(run(x[:2]).errors, reference.errors[:2], rtol=1e-5, atol=0)  # image i's draws are its own
    assert not torch.allclose(run(seed=1).errors, reference.errors)
    assert not torch.allclose(run(seed=[10, 11, 12, 13, 14, 15]).timesteps, reference.timesteps)
    assert ((reference.timesteps > SDE.t_min) & (reference.timesteps < 1)).all()
    # every stratum of width (1 - t_min) / 8 used exactly once per image
    strata = ((reference.timesteps - SDE.t_min) * 8 / (1 - SDE.t_min)).floor().sort(1).values
    assert torch.equal(strata, torch.arange(8, dtype=strata.dtype).expand_as(strata))


@pytest.mark.numerics
def test_elbo_weighting_formula():
    model = gaussian_classes(2, separation=0.7)
    x = model.sample(torch.tensor([0, 1]))
    uniform = denoising_error_scores(model, x, 2, num_timesteps=6)
    elbo = denoising_error_scores(model, x, 2, num_timesteps=6, weighting="elbo")
    t = uniform.timesteps
    weight = (1 - SDE.t_min) * SDE.beta(t) / (2 * SDE.sigma(t) ** 2)
    # The weight takes ~6 float32 operations and the product one more: relative error <= 7 * 2^-24 = 4e-7.
    assert torch.allclose(elbo.errors, uniform.errors * weight[:, None], rtol=1e-5, atol=0)
    assert torch.allclose(uniform.scores, -uniform.errors.mean(2))
    uniform, elbo = (denoising_error_scores(model, x, 2, num_timesteps=6, weighting=w, timestep_spacing="log_snr")
                     for w in ("uniform", "elbo"))
    t = uniform.timesteps  # in log-SNR, both weightings carry the density ratio: their quotient is the same weight
    weight = (1 - SDE.t_min) * SDE.beta(t) / (2 * SDE.sigma(t) ** 2)
    assert torch.allclose(elbo.errors, uniform.errors * weight[:, None], rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_timesteps=0), "num_timesteps >= 1"),
        (dict(pruning=[(2, 2), (2, 3)]), "stage 1 to keep 1..2"),
        (dict(pruning=[(2, 4)]), "stage 0 to keep 1..3"),
        (dict(pruning=[(0, 2), (4, 1)]), "stage 0 to evaluate >= 1"),
        (dict(pruning=[(2, 2), (1, 1)]), "sum to num_timesteps=4"),
        (dict(early_stop_confidence=0.9, pruning=[(3, 2), (2, 1)]), "at most num_timesteps=4 with an early stop"),
        (dict(classes=2, early_stop_confidence=1.0), "0.5 < early_stop_confidence < 1"),
        (dict(early_stop_confidence=0.9, timesteps_per_check=0), "timesteps_per_check >= 1"),
        (dict(weighting="snr"), "weighting in"),
        (dict(timestep_spacing="random"), "timestep_spacing in"),
        (dict(max_batch_size=0), "max_batch_size >= 1"),
        (dict(images=torch.zeros(2, 1, 4, 4)), r"expected images of shape \[N, 1, 8, 8\].*got \[2, 1, 4, 4\]"),
    ],
)
def test_denoising_bad_arguments(kwargs, message):
    args = dict(images=torch.zeros(2, 1, 8, 8), classes=3, num_timesteps=4) | kwargs
    with pytest.raises(ValueError, match=message):
        denoising_error_scores(tiny_unet(), **args)


def test_denoising_on_a_class_conditional_unet():
    result = denoising_error_scores(tiny_unet(), torch.rand(2, 1, 8, 8) * 2 - 1, 3, num_timesteps=4, max_batch_size=5)
    assert result.scores.shape == (2, 3) and torch.isfinite(result.scores).all()
    assert result.nfe_per_image.tolist() == [12, 12]


def test_a_half_precision_model_gets_its_timesteps_unrounded():
    """Review: the continuous time's model timestep k = N t - 1 was cast to the model's dtype: in bfloat16 998.7 became
    1000, outside the trained 0..999, and 150.3 became 150. It is passed in float32."""
    from diffusion_classifiers.likelihood.vp_sde import VPSDE, as_eps_model
    from diffusion_classifiers.models import unet_config

    torch.manual_seed(0)
    model = UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2)).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[1]), with_kwargs=True)
    eps_fn = as_eps_model(model.to(torch.bfloat16))
    t = torch.tensor([0.9987, 0.1513])
    with torch.no_grad():
        out = eps_fn(torch.zeros(2, 1, 8, 8), t, torch.tensor([0, 1]))
    assert out.dtype == torch.float32 and seen[0].dtype == torch.float32
    assert torch.allclose(seen[0], VPSDE().discrete_timestep(t))

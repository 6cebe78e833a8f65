"""The Score-SDE classifier against an exact score (`benchmarks/_exact_gaussian.py`): two Gaussian classes whose VP-SDE
noise prediction is known in closed form, called as the class-conditional `UNet2DModel` the pipeline calls, so the
exact `log p(x | c)` and log-likelihood ratio of every image are known. The probability-flow ODE with the exact trace
within a tolerance derived from the solver itself, the Hutchinson estimate within its own standard error, the pipeline's
posterior as Bayes' rule on its own log-likelihoods, and the exhaustive ELBO with log-SNR timesteps within its seed
spread of the exact ratio. The ELBO's known biases at the pipeline's default even spacing (QA: about 0.9x exhaustive,
several times with pruning; a standard error 3-12x wide by model) are measured by
`benchmarks/score_sde_bench_elbo_bias.py`, not asserted here."""

import math
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from diffusion_classifiers.likelihood import probability_flow_log_likelihood

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from _exact_gaussian import binary_gaussian_classes  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))

QUIET = {"disable": True}
# Family-wise false-alarm rate of the z-score bounds below (their seeds are fixed: a run either passes or fails, and a
# correct library fails one of these statistical checks with at most this probability over the choice of seeds).
FALSE_ALARM = 1e-3


@pytest.fixture(scope="module")
def model():
    """The QA review's model: 16 values per image, scales 0.02 to 0.5 in a random rotation."""
    return binary_gaussian_classes(seed=3)


@pytest.fixture(scope="module")
def images(model):
    """Four images of each class as 8-bit arrays, as the pipeline reads files."""
    x = model.sample([0, 1] * 4, seed=1)
    return [((image[0] + 1) * 127.5).round().to(torch.uint8).numpy() for image in x]


@pytest.fixture(scope="module")
def pipe(model):
    return model.pipeline(["negative", "positive"])


@pytest.fixture(scope="module")
def pixels(pipe, images):
    """The images as the pipeline scores them (`k / 127.5 - 1`, float32)."""
    return pipe.preprocess(images)


def exact_ratio(model, pixels):
    log_likelihood = model.ode_log_likelihood(pixels)
    return log_likelihood[:, 1] - log_likelihood[:, 0]


@pytest.mark.numerics
def test_the_reference_s_two_closed_forms_agree(model, pixels):
    """The ODE's closed-form ratio and the continuous ELBO's own class difference, derived independently (a linear flow
    vs an integral of the denoising error), agree to the smoothing at t_min (sigma^2 = 1e-6 against the smallest
    variance 4e-4: 0.25% of that direction's term) and the prior's mismatch at t = 1 (alpha(1)^2 = 4.4e-5)."""
    ratio = exact_ratio(model, pixels)
    elbo = model.elbo_class_term(pixels)
    assert ((elbo[:, 1] - elbo[:, 0]) - ratio).abs().max() < 2.5e-3 * ratio.abs().max()
    assert (ratio.sign() == torch.tensor([-1.0, 1.0] * 4, dtype=ratio.dtype)).all()  # each image's own class wins


@pytest.mark.numerics
def test_the_ode_log_likelihood_with_the_exact_trace_is_the_closed_form(model, pixels):
    """(a) In float64 (the model's own weights in float64: the solver's error, not float32 round-off). dopri5's global
    error shrinks with its tolerance (about as tol^(4/5) for a smooth flow; measured 64x from 1e-5 to 1e-7 here), so
    with any rate of at least tol^(1/2) the error at 1e-7 is at most a tenth of that at 1e-5, and so at most a ninth of
    the two solutions' difference: the bound is a quarter of it. Float64 round-off (about 350 evaluations x 16 trace
    terms x 1e-16 x 100 nats = 6e-11) is far below."""
    unet, x = model.unet().double(), pixels.double()
    closed = model.ode_log_likelihood(pixels)

    def solve(**kwargs):
        return probability_flow_log_likelihood(unet, x, 2, exact_trace=True, progress_bar=QUIET, **kwargs)

    loose, tight = (solve(solver="dopri5", rtol=tol, atol=tol).log_likelihood for tol in (1e-5, 1e-7))
    difference = (loose - tight).abs().max()
    assert 0 < (tight - closed).abs().max() <= difference / 4
    # The default (RK4, 32 steps uniform in log-SNR) is fourth order: with twice the steps its error is 1/16, so
    # Richardson's (LL_32 - LL_64) 16 / 15 estimates its error (measured 17x from 32 to 64 steps, in that regime).
    # Bound: twice that estimate, row by row.
    default, doubled = solve().log_likelihood, solve(num_steps=64).log_likelihood
    assert ((default - closed).abs() <= 2 * 16 / 15 * (default - doubled).abs()).all()


@pytest.mark.numerics
def test_the_hutchinson_estimate_is_unbiased_within_its_own_standard_error(model, pixels):
    """(b) On the same grid the ODE's x path does not depend on the probes, so the Hutchinson log-likelihood minus the
    exact-trace one is the estimator's noise alone, zero-mean if unbiased. Its standard error is the spread of the 16
    probes' own log-likelihoods over sqrt(16). The probes' error is the same for both classes here (the Jacobian of eps,
    sigma V_t^-1, depends on neither x nor c), so one class is tested, the images independent: each z against
    Student's t with 15 degrees of freedom, and their pooled sum against the normal, at FALSE_ALARM (Bonferroni)."""
    num_probes, unet = 16, model.unet().double()
    x = pixels.double()
    exact = probability_flow_log_likelihood(unet, x, 2, exact_trace=True, progress_bar=QUIET)
    estimate = probability_flow_log_likelihood(unet, x, 2, num_probes=num_probes, progress_bar=QUIET)
    deviation = (estimate.log_likelihood - exact.log_likelihood)[:, 0]
    stderr = estimate.log_likelihood_per_probe[:, 0].std(1) / math.sqrt(num_probes)
    assert (stderr > 0.3).all()  # the probes are not trivially exact: the covariance is rotated
    z = deviation / stderr
    assert z.abs().max() < stats.t.ppf(1 - FALSE_ALARM / (2 * len(z)), num_probes - 1), z
    pooled = deviation.sum() / stderr.pow(2).sum().sqrt()
    assert abs(pooled) < stats.norm.ppf(1 - FALSE_ALARM / 2), pooled


def softmax_round_off(num_classes: int) -> float:
    """Bound on |probs - softmax in float64| of the pipeline's float32 softmax of float64 logits shifted to a maximum of
    0: each logit cast to float32 moves by 2^-24 |l|, which moves p_k by at most p_k |dl_k| + sum_j p_j |dl_j| <=
    2^-24 (K + 1) / e (p_j |l_j| <= e^l |l| <= 1 / e); exp (1-2 ulp), the sum of K terms and the division add about
    (K + 3) 2^-24 relative."""
    return 2.0**-24 * ((num_classes + 1) / math.e + num_classes + 3) * 2  # twice: room for a 2-ulp exp on every term


@pytest.mark.numerics
@pytest.mark.parametrize("method, kwargs", [("likelihood", dict(num_probes=2)), ("elbo", {}),
                                            ("elbo", dict(timestep_spacing="log_snr"))])  # fmt: skip
def test_probs_are_bayes_rule_on_the_pipeline_s_own_log_likelihoods(model, pipe, method, kwargs):
    """(c) `probs = softmax(log p(x | c) + log prior)` of the pipeline's own `log_likelihoods`, to float32 round-off,
    with unequal priors, and the labels and log-odds the same decision; on images near the decision boundary (exact
    ratios of a few nats, float pixels: 8-bit rounding would move them by tens of nats along the fine directions), so
    that the posteriors are not all 0 or 1."""
    priors = [0.7, 0.3]
    images = model.images_at_ratios([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0]).float()
    out = pipe(images, method=method, priors=priors, **kwargs)
    logits = out.log_likelihoods.double() + torch.tensor(priors, dtype=torch.float64).log()
    expected = torch.softmax(logits, 1)
    assert ((expected > 0.01) & (expected < 0.99)).any()  # not a comparison of saturated 0s and 1s
    assert (out.probs.double() - expected).abs().max() <= softmax_round_off(2)
    assert torch.equal(out.label_ids, logits.argmax(1))
    ratio = out.log_likelihoods[:, 1] - out.log_likelihoods[:, 0]
    torch.testing.assert_close(out.log_likelihood_ratio, ratio, rtol=0, atol=0)
    torch.testing.assert_close(out.log_odds[:, 1], ratio + math.log(0.3 / 0.7), rtol=1e-12, atol=1e-12)


@pytest.mark.numerics
def test_the_exhaustive_elbo_with_log_snr_timesteps_estimates_the_exact_ratio(model, pipe, images, pixels):
    """(d) Every class at every timestep, spread in log-SNR, "elbo" weighting: the mean of 16 noise seeds' ratios is
    within its own standard error (the seeds' spread over sqrt(16)) of the exact ratio, image by image (Student's t, 15
    degrees of freedom) and pooled over the 8 images (normal), at FALSE_ALARM with Bonferroni. What is tested is the
    estimator's bias: its estimand (the continuous ELBO's class difference) is within 0.25% of the exact ratio
    (the first test), and the log-SNR midpoints' quadrature bias measured 0.03%
    (`benchmarks/score_sde_bench_elbo_bias.py`), a tenth of this test's resolution (0.4% of the ratio at 16 seeds)."""
    seeds = 16
    exact = exact_ratio(model, pixels)
    runs = [pipe(images, timestep_spacing="log_snr", seed=seed) for seed in range(seeds)]
    ratios = torch.stack([run.log_likelihood_ratio for run in runs])  # (seeds, images)
    stderr = ratios.std(0) / math.sqrt(seeds)
    z = (ratios.mean(0) - exact) / stderr
    assert z.abs().max() < stats.t.ppf(1 - FALSE_ALARM / (2 * len(z)), seeds - 1), z
    pooled = (ratios.mean(0) - exact).sum() / stderr.pow(2).sum().sqrt()
    assert abs(pooled) < stats.norm.ppf(1 - FALSE_ALARM / 2), pooled
    # Its reported standard error is the size of that spread, as the library documents for log-SNR spacing (1.0-1.2x;
    # the bar is score_sde_bench_elbo_settings.py's 1.5x, either way; 16 seeds x 8 images pin the spread within ~7%).
    reported = torch.stack([run.log_likelihood_ratio_stderr for run in runs])
    factor = float((reported.pow(2).mean() / ratios.var(0).mean()).sqrt())
    assert 1 / 1.5 < factor < 1.5, factor
    assert np.isfinite(reported.numpy()).all()


def test_the_elbo_bias_benchmark_runs_and_records_its_targets(monkeypatch, capsys):
    """`benchmarks/score_sde_bench_elbo_bias.py --quick` end to end: every setting measured, the three targets
    recorded with the direction they are read in, and the likelihood's own ratio (one probe, whose noise cancels in the
    ratio here) on the exact one."""
    import json

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import score_sde_bench_elbo_bias as bench
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["score_sde_bench_elbo_bias.py", "--quick"])
    bench.main()
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["figures"]
    assert set(figures["settings"]) == set(bench.settings(100))
    assert set(figures["targets"]) == {"default_exhaustive_llr_abs_bias", "default_pruned_llr_abs_bias",
                                       "default_stderr_factor_from_seed_spread"}  # fmt: skip
    for target in figures["targets"].values():
        assert target["met"] == (target["value"] <= target["target"]) and target["higher_is_better"] is False
    # RK4 32 steps is within 0.014 nats of each log-likelihood here (the test above), the ratios tens of nats or more
    assert abs(figures["likelihood_default"]["llr_over_exact"] - 1) < 1e-3
    assert figures["timesteps_below_zero"]["elbo_even"]["share_k_below_0"] == 0

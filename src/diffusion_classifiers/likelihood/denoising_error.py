"""The denoising-error bound (the diffusion term of the ELBO) per class, with the same noise and timesteps for every
class, adaptive class pruning and a sequential early stop; replaying stopping rules and ranking timestep strata on an
exhaustive run, to choose them on validation images."""

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .scorer_inputs import (
    Classes,
    Seed,
    as_column,
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
from .vp_sde import VPSDE, as_eps_model

__all__ = [
    "TIMESTEP_SPACINGS",
    "WEIGHTINGS",
    "DenoisingScoreResult",
    "check_stopping_rule",
    "denoising_error_scores",
    "rank_timestep_strata",
    "replay_stopping_rule",
]


TIMESTEP_SPACINGS = ("even", "stratified", "log_snr")
WEIGHTINGS = ("uniform", "elbo")
# The early stop's paired t-test needs this many timesteps' error differences before it can settle a class.
MIN_TIMESTEPS_TO_SETTLE = 2


def first_early_stop_look(timesteps_per_check: int) -> int:
    """The timesteps scored when the early stop (without pruning) can first stop an image: looks come every
    `timesteps_per_check` timesteps, and one settles nothing before `MIN_TIMESTEPS_TO_SETTLE`."""
    return timesteps_per_check * math.ceil(MIN_TIMESTEPS_TO_SETTLE / timesteps_per_check)


def check_early_stop_can_stop(num_timesteps: int, timesteps_per_check: int, refuse: bool = True) -> None:
    """Refuse (or, not `refuse`, warn of) an early stop without pruning that could stop no image: its first look
    (`first_early_stop_look`) comes at or after the last of the `num_timesteps` scored. The pipeline refuses it; the
    scorer and the replay warn (QA: the README's example rule was such a rule, replayed at every image's full budget
    without a word), since one look at the end still eliminates classes, which a study of the test may want."""
    if first_early_stop_look(timesteps_per_check) < num_timesteps:
        return
    message = (
        f"early_stop_confidence: the first look comes after max({MIN_TIMESTEPS_TO_SETTLE}, "
        f"timesteps_per_check={timesteps_per_check}) timesteps, and {num_timesteps} are scored: no image could stop "
        "early. Give more timesteps or a smaller timesteps_per_check, or leave early_stop_confidence out"
    )
    if refuse:
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


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
        offsets = torch.stack([torch.rand(num_timesteps, generator=stream_generator(s, 0), dtype=torch.float64)
                               for s in streams])[:, draw_keys]
    else:
        offsets = torch.full((len(streams), len(strata)), 0.5, dtype=torch.float64)
    fractions = (torch.tensor(strata, dtype=torch.float64) + offsets) / num_timesteps
    if spacing == "log_snr":
        first, last = sde.log_snr_range()
        return sde.time_of_log_snr(first + fractions * (last - first))
    return sde.t_min + fractions * (1 - sde.t_min)


def _stages(num_timesteps, num_classes, pruning, early_stop_confidence, timesteps_per_check) -> List[Tuple[int, int]]:
    """`(new timesteps, classes kept after)` per stage, validated: the pruning stages, then (with an early stop) the
    remaining timesteps in chunks of `timesteps_per_check` that keep every class the test has not eliminated."""
    if pruning is not None:
        pruning = list(pruning)  # a numpy array of pairs too (QA: numpy's "truth value ... is ambiguous")
        if not pruning:  # QA: refused as stages that did not sum to num_timesteps
            raise ValueError("expected pruning as (timesteps, classes kept) pairs, e.g. [(20, 3), (80, 1)], or None "
                             "for none; got no stage")
    stages = _pruning_stages(pruning or [], num_classes)
    pruned_timesteps = sum(count for count, _ in stages)
    if early_stop_confidence is None:
        if pruning is None:
            return [(num_timesteps, num_classes)]
        if pruned_timesteps != num_timesteps:
            raise ValueError(f"expected the pruning stages' timesteps to sum to num_timesteps={num_timesteps}, "
                             f"got {[count for count, _ in stages]}")
        return stages
    confidence = early_stop_confidence  # a 0-d array or tensor counts as its number
    if getattr(confidence, "ndim", None) == 0:
        confidence = confidence.item()
    if not isinstance(confidence, numbers.Real) or not 0.5 < confidence < 1:
        raise ValueError(f"expected 0.5 < early_stop_confidence < 1, got {early_stop_confidence!r}")
    if not is_count(timesteps_per_check):
        raise ValueError(f"expected timesteps_per_check >= 1, got {timesteps_per_check}")
    if pruned_timesteps > num_timesteps:
        raise ValueError(f"expected the pruning stages' timesteps to sum to at most num_timesteps={num_timesteps} "
                         f"with an early stop, got {[count for count, _ in stages]}")
    if not stages:
        check_early_stop_can_stop(num_timesteps, timesteps_per_check, refuse=False)
    kept = stages[-1][1] if stages else num_classes
    starts = range(pruned_timesteps, num_timesteps, timesteps_per_check)
    return stages + [(min(timesteps_per_check, num_timesteps - start), kept) for start in starts]


def check_denoising_args(num_timesteps, timestep_spacing, weighting, max_batch_size) -> None:
    """`denoising_error_scores`' settings that need no image, refused where they cannot run: checked by the pipeline
    too before any image is read (`predict`)."""
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_counts(max_batch_size=max_batch_size, num_timesteps=num_timesteps)


def check_stopping_rule(num_timesteps, num_classes, pruning, early_stop_confidence, timesteps_per_check) -> None:
    """Refuse a stopping rule (`pruning`, `early_stop_confidence`, `timesteps_per_check`) that the scorers would refuse
    for `num_timesteps` scored timesteps and `num_classes` classes: called before any image is scored (QA: `predict`
    refused a pruning at its first batch, its output files begun)."""
    _stages(num_timesteps, num_classes, pruning, early_stop_confidence, timesteps_per_check)


def _pruning_stages(pruning, num_classes) -> List[Tuple[int, int]]:
    for i, stage in enumerate(pruning):
        if isinstance(stage, (str, bytes)) or not hasattr(stage, "__len__") or len(stage) != 2:
            raise ValueError(
                f"expected pruning as (timesteps, classes kept) pairs, e.g. [(20, 3), (80, 1)], got stage {i}: "
                f"{stage!r}"
            )
    previous = num_classes
    for i, (count, keep) in enumerate(pruning):
        if not is_count(count):
            raise ValueError(f"expected pruning stage {i} to evaluate >= 1 timesteps, got {count}")
        if not is_count(keep) or keep > previous:
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
        noise = torch.stack([torch.randn(images.shape[1:], generator=stream_generator(streams[a], 1, draw_keys[b]),
                                         dtype=images.dtype)
                             for a, b in pairs.tolist()]).to(images.device)[inverse]
        t = timesteps[i, p].to(images)
        x_t = as_column(sde.alpha(t), noise) * images[i] + as_column(sde.sigma(t), noise) * noise
        squared = (noise - eps_fn(x_t, t, class_ids[k])).pow(2).flatten(1).sum(1)
        check_finite_output(squared, i, class_ids[k], t)  # NaN marks an error not evaluated: a NaN output would hide
        errors[i, k, p] = (squared * _weight(sde, t, weighting, spacing)).to(errors)
        bar.update(len(chunk))


def _weight(sde: VPSDE, t: torch.Tensor, weighting: str, spacing: str = "even") -> torch.Tensor:
    """1 ("uniform") or `(1 - t_min) beta(t) / (2 sigma(t)^2)` ("elbo"), times, for timesteps spread in log-SNR,
    the density of uniform t over theirs, `(lambda(t_min) - lambda(1)) sigma(t)^2 / ((1 - t_min) beta(t))`
    (`d lambda / dt = -beta / sigma^2`), so every spacing estimates the same integral over t; with "elbo" the
    product is the constant `(lambda(t_min) - lambda(1)) / 2`."""
    if spacing == "log_snr":
        first, last = sde.log_snr_range()
        span = float(first - last)
        if weighting == "elbo":
            return torch.full_like(t, span / 2)
        return span * sde.sigma(t) ** 2 / ((1 - sde.t_min) * sde.beta(t))
    if weighting == "uniform":
        return torch.ones_like(t)
    return (1 - sde.t_min) * sde.beta(t) / (2 * sde.sigma(t) ** 2)


def _settled_worse(differences: torch.Tensor, prior_gaps: torch.Tensor, confidence: float,
                   num_rivals: torch.Tensor) -> torch.Tensor:
    """`[N, K]`: the leader's margin over class `k` in the decision, `mean(d) - prior_gaps`, is settled positive: the
    paired t-statistic `(mean(d) - prior_gaps) / (std(d) / sqrt(n))` of the error differences `d = e_k - e_leader`
    `[N, K, n]` exceeds Student's t quantile `t_{n-1}(1 - (1 - confidence) / num_rivals)` (False where any `d` is
    NaN). `prior_gaps` `[N, K]` is `log prior(k) - log prior(leader)` (zeros: uniform): `mean(d)` is the leader's
    score minus class `k`'s. `num_rivals` `[N]`: the classes the leader is compared with at this look (Bonferroni:
    the leader is the best of them on the same data, so the best class is eliminated with probability at most
    `1 - confidence` per look, not up to `num_rivals` times that; 1 for two classes)."""
    from scipy import stats  # here: a saved Score-SDE pipeline loads, and scores without the early stop, without it

    n = differences.shape[2]
    if n < MIN_TIMESTEPS_TO_SETTLE:
        return torch.zeros(differences.shape[:2], dtype=torch.bool)
    z = (differences.mean(2) - prior_gaps) / (differences.std(2) / math.sqrt(n))
    level = (1 - confidence) / num_rivals.clamp_min(1).double()
    return z > torch.from_numpy(stats.t.ppf(1 - level.numpy(), n - 1))[:, None]


def _eliminate(errors, decided, log_prior, alive, active, confidence):
    """One look of the early stop: the leader is the class alive with the best `decided` score (score + log prior),
    and every class alive that the leader's margin in it is settled over is eliminated; an image whose rivals are all
    settled stops, keeping the classes of this last look alive (all evaluated on the same timesteps, so their scores
    stay comparable: with 2 classes, the log-likelihood ratio)."""
    rows = torch.arange(len(alive))
    leader = decided.masked_fill(~alive, -math.inf).argmax(1)
    rivals = alive.clone()
    rivals[rows, leader] = False
    differences = errors - errors[rows, leader][:, None]
    prior_gaps = log_prior[None, :] - log_prior[leader][:, None]
    settled = _settled_worse(differences, prior_gaps, confidence, rivals.sum(1)) & rivals & active[:, None]
    stops = active & (settled == rivals).all(1)
    return alive & ~(settled & ~stops[:, None]), active & ~stops


def _run_stages(fill, errors, stages, early_stop_confidence, log_prior=None):
    """Evaluate the stages on `errors` `[N, K, T]` (NaN = not evaluated) by `fill(rows)` for rows `(image, timestep
    position, class)`, ranking and settling classes by score + `log_prior` `[K]` (None: uniform); returns the classes
    alive `[N, K]` and the mean score so far of every class `[N, K]`."""
    alive = torch.ones(errors.shape[:2], dtype=torch.bool)
    active = torch.ones(len(errors), dtype=torch.bool)
    prior = torch.zeros(errors.shape[1], dtype=errors.dtype) if log_prior is None else log_prior
    done = 0
    for count, keep in stages:
        todo = torch.zeros(errors.shape[0], errors.shape[2], errors.shape[1], dtype=torch.bool)
        todo[:, done : done + count] = (alive & active[:, None])[:, None]
        fill(todo.nonzero())
        done += count
        partial_scores = -errors.nanmean(2)
        decided = partial_scores if log_prior is None else partial_scores + log_prior
        rank = decided.masked_fill(~alive, -math.inf).argsort(1, descending=True).argsort(1)
        alive &= (rank < keep) | ~active[:, None]  # stopped images keep the classes they stopped with
        if early_stop_confidence is not None:
            alive, active = _eliminate(errors[:, :, :done], decided, prior, alive, active, early_stop_confidence)
    return alive, partial_scores


def _checked_log_prior(log_prior, num_classes: int) -> Optional[torch.Tensor]:
    if log_prior is None:
        return None
    log_prior = torch.as_tensor(log_prior, dtype=torch.float64).cpu()
    if log_prior.shape != (num_classes,) or not torch.isfinite(log_prior).all():
        raise ValueError(f"log_prior: expected {num_classes} finite values (one per class; a class of prior 0 cannot "
                         f"be ranked), got {log_prior.tolist()}")
    return None if bool((log_prior == log_prior[0]).all()) else log_prior  # uniform: rank exactly as without


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
    log_prior: Optional[torch.Tensor] = None,
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
      new timesteps for the classes still alive, then keeps the `k_s` classes with the best mean score so far plus
      `log_prior` (Li et al. 2023); the others score `-inf` (their `partial_scores` stay). `NFE = sum_s T_s k_{s-1}`,
      `k_0 = K`.
    - `early_stop_confidence=q` (any number of classes; after the `pruning` stages if given, whose timesteps then
      sum to at most `T`): the remaining timesteps come in chunks of `timesteps_per_check`; after every stage, each
      class `k` alive is compared with the image's leader (the best mean score plus `log_prior`: the decision's) by
      the paired t-test of its error differences `d_p = e_kp - e_leader,p` over the `n` timesteps evaluated, and
      eliminated (score `-inf`) once the leader's margin in the decision, `mean(d) - (log_prior_k - log_prior_leader)`,
      is settled positive (`t = (mean(d) - (log_prior_k - log_prior_leader)) / (std(d) / sqrt(n)) > t_{n-1}(1 - (1 -
      q) / m)` with `m` the rivals alive: Bonferroni, so that a look eliminates the best class with probability at
      most `1 - q` although the leader is chosen on the same data; without it, a look at 10 timesteps of 10 classes
      dropped it 3.5x as often; no correction over the looks). An image stops when every rival is settled (the
      classes of that last look keep their scores, so with 2 classes the log-likelihood ratio stays finite) or when
      `T` timesteps are used. With 2 classes this is the sequential test of the sign of the log posterior odds (the
      log-likelihood ratio plus the log prior ratio); with more, successive elimination. `NFE` = the evaluations
      made; choose `q` and the stages on validation images with [`replay_stopping_rule`].

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
        log_prior: `[K]` finite log prior probabilities of the classes (up to a constant), for a decision
            `argmax(score + log_prior)`: pruning and the early stop then rank and settle classes by it (else they
            keep a class the decision would not take). Default `None`: uniform. The scores never include it.

    Returns:
        [`DenoisingScoreResult`].
    """
    check_denoising_args(num_timesteps, timestep_spacing, weighting, max_batch_size)
    images, sde = checked_images(images, eps_model), sde or VPSDE()
    eps_fn, class_ids = as_eps_model(eps_model, sde), checked_class_ids(classes, eps_model, images.device)
    strata, draw_keys = _strata_and_draw_keys(num_timesteps, timestep_strata)
    stages = _stages(len(strata), len(class_ids), pruning, early_stop_confidence, timesteps_per_check)
    log_prior = _checked_log_prior(log_prior, len(class_ids))
    streams = image_seeds(seed, len(images))
    timesteps = _denoising_timesteps(streams, num_timesteps, strata, draw_keys, timestep_spacing, sde)
    errors = torch.full((len(images), len(class_ids), len(strata)), math.nan, dtype=torch.float64)
    classes_per_stage = [len(class_ids)] + [keep for _, keep in stages[:-1]]  # alive when each stage starts
    planned = len(images) * sum(count * k for (count, _), k in zip(stages, classes_per_stage))
    with open_progress_bar(progress_bar, total=planned, desc="Denoising-error scores", unit="NFE") as bar:
        def fill(rows):
            _fill_errors(eps_fn, sde, images, class_ids, timesteps, draw_keys, streams, errors, rows, weighting,
                         timestep_spacing, max_batch_size, bar)

        alive, partial_scores = _run_stages(fill, errors, stages, early_stop_confidence, log_prior)
        bar.total = bar.n  # fewer than planned after an early stop
    return _result(errors, timesteps, strata, alive, partial_scores)


def replay_stopping_rule(
    exhaustive: DenoisingScoreResult,
    pruning: Optional[Sequence[Tuple[int, int]]] = None,
    early_stop_confidence: Optional[float] = None,
    timesteps_per_check: int = 10,
    timestep_strata: Optional[Sequence[int]] = None,
    log_prior: Optional[torch.Tensor] = None,
) -> DenoisingScoreResult:
    """
    What [`denoising_error_scores`] returns with a stopping rule (`pruning`, `early_stop_confidence`,
    `timesteps_per_check`, `timestep_strata`, `log_prior`), computed without a network call from an exhaustive run
    with the same images, classes, `num_timesteps`, spacing, weighting and seed: a rule draws the same timesteps and
    noise, so its errors are a subset of the exhaustive ones. Use it to choose a rule on validation images: one
    exhaustive run, then any number of rules replayed in milliseconds.

    Args:
        exhaustive: a [`DenoisingScoreResult`] with every error evaluated (no stopping rule).
        pruning, early_stop_confidence, timesteps_per_check, timestep_strata, log_prior: as in
            [`denoising_error_scores`] (`timestep_strata` among the strata of `exhaustive`; default its columns, in
            its order; `log_prior` the priors the decision will use).
    """
    _check_exhaustive(exhaustive)
    columns = _columns_of_strata(exhaustive, timestep_strata)
    source, timesteps = exhaustive.errors[:, :, columns], exhaustive.timesteps[:, columns]
    num_images, num_classes, num_timesteps = source.shape
    stages = _stages(num_timesteps, num_classes, pruning, early_stop_confidence, timesteps_per_check)
    log_prior = _checked_log_prior(log_prior, num_classes)
    errors = torch.full_like(source, math.nan)

    def fill(rows):
        i, p, k = rows.unbind(1)
        errors[i, k, p] = source[i, k, p]

    alive, partial_scores = _run_stages(fill, errors, stages, early_stop_confidence, log_prior)
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

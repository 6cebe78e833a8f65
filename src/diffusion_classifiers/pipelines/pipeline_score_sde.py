"""Classify with one class-conditional score model by Bayes' rule on per-class log-likelihoods (VP-SDE)."""

import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers.data import ImagePreprocessing
from diffusion_classifiers.likelihood import (
    VPSDE,
    content_seeds,
    denoising_error_scores,
    probability_flow_log_likelihood,
)
from diffusion_classifiers.likelihood.denoising_error import (
    check_denoising_args,
    check_early_stop_can_stop,
    check_stopping_rule,
)
from diffusion_classifiers.likelihood.probability_flow import check_solver_args
from diffusion_classifiers.likelihood.scorer_inputs import is_count
from diffusion_classifiers.validation import check_positive_integer, check_unique_class_names

from .pipeline_utils import ClassifierPipelineOutput, DiffusionClassifierPipeline

__all__ = ["ScoreSDEClassifierOutput", "ScoreSDEClassifierPipeline", "log_priors"]

METHODS = ("elbo", "likelihood")
# The arguments only one method reads: given (other than their defaults) with the other, they are refused.
METHOD_ARGUMENTS = {
    "elbo": ("num_timesteps", "timestep_spacing", "weighting", "pruning", "early_stop_confidence",
             "timesteps_per_check", "timestep_strata"),
    "likelihood": ("solver", "num_steps", "step_spacing", "rtol", "atol", "num_probes"),
}  # fmt: skip
SEED_BY = ("position", "content")


@dataclass
class ScoreSDEClassifierOutput(ClassifierPipelineOutput):
    """
    `labels`, `label_ids`, `scores`, `probs` as every classifier pipeline, plus:

    Args:
        log_likelihoods: `[N, K]` per-class scores before the prior, float64. `method="likelihood"`: `log p(x | c)`
            in nats (probability-flow ODE). `method="elbo"`: minus the mean weighted denoising error; with
            `weighting="elbo"` the log-likelihood lower bound up to a constant per image (which cancels in `probs`),
            with `weighting="uniform"` a score only. `-inf` for classes pruned early.
        log_likelihood_ratio: `[N]` for binary tasks (`None` otherwise): `log p(x | positive) - log p(x | negative)`,
            the positive class being the pipeline's `positive_class` (class 1 when unset): the continuous score of ROC
            curves. `method="elbo"`: over the timesteps both classes were scored at (all of them unless pruning or
            the early stop dropped a class: then those before), so the two means weigh the same timesteps.
        nfe_per_image: `[N]` network function evaluations (one image, one class, one time = 1).
        bits_per_dim: `[N, K]` bits per dimension of each class density (`method="likelihood"` only, else `None`),
            for 8-bit data whatever the images' bit depth (bins of 2/255 over `[-1, 1]`, see
            [`probability_flow_log_likelihood`]): 16-bit data's would be about 8 bits/dim more.
        log_odds: `[N, K]` float64, `log p(c | x) - log(1 - p(c | x))` for each class (binary: the log-likelihood
            ratio plus the priors' log-ratio): the ranking score of one-vs-rest ROC curves and AUCs. `probs` round to
            exactly 0 or 1 where classes differ by more than about 100 nats, common for density models, and such
            images would tie; their log-odds do not. `evaluate_classifier` ranks by them. Binary with a class
            pruned (scored `-inf`): `labels` and `probs` (1 for the class chosen) follow the sign of these
            log-odds, over the timesteps both classes got, so they never contradict them; pruning keeps the class
            they favour anyway (it ranks by bound + log prior), up to round-off at a tie.
        log_likelihood_ratio_stderr: `[N]` for binary tasks with `method="elbo"`, or `method="likelihood"` with
            `num_probes >= 2` (`None` otherwise): the Monte-Carlo standard error of `log_likelihood_ratio`, how far
            other noise draws or probes (another `seed`) would move it
            ([`DenoisingScoreResult.difference_standard_error`], [`LikelihoodResult.difference_standard_error`]); a
            decision whose ratio is within about 2 of them of the decision threshold could go the other way with
            another seed. The likelihood with one Hutchinson probe has such noise too, which it cannot estimate
            (a QA pass measured a median spread over seeds of 14 nats there, against 7.9 for the default ELBO, on a
            tiny PneumoniaMNIST model): give it `num_probes` (each costs one more vector-Jacobian product per
            evaluation) to see and shrink it.
    """

    log_likelihoods: torch.Tensor
    log_likelihood_ratio: Optional[torch.Tensor]
    nfe_per_image: torch.Tensor
    bits_per_dim: Optional[torch.Tensor] = None
    log_odds: Optional[torch.Tensor] = None
    log_likelihood_ratio_stderr: Optional[torch.Tensor] = None


class ScoreSDEClassifierPipeline(DiffusionClassifierPipeline):
    r"""
    Bayes' rule on one class-conditional epsilon-prediction U-Net: `p(c | x) = softmax_c(log p(x | c) + log prior(c))`.

    The U-Net is a VP-SDE score model (`score = -eps / sigma_t`), trained with `DDPMScheduler`'s linear schedule
    (`examples/score_sde_train.py`); the class enters through `UNet2DModel(num_class_embeds=...)`. A model trained
    with label dropout has one more embedding, the null class `K = len(class_names)`; it is never a candidate.

    Images (file paths, PIL, arrays or tensors) go through `preprocess`, like every pipeline: the saved
    `preprocessing` contract (`diffusion_classifiers.data.preprocess_images`), by default resized (bilinear,
    antialiased) to the U-Net's `sample_size`, converted to its channel count (1 <-> 3 by luma / repetition), float
    inputs read as `[-1, 1]`; other channel counts, NaN and inf are refused. A resized image is scored at the model's
    resolution, so its likelihood is that of the resized image.

    Args:
        unet: a class-conditional `UNet2DModel` (`num_class_embeds` = `K`, or `K + 1` with a null class).
        scheduler: the `DDPMScheduler` it was trained with (linear betas, epsilon prediction): defines the VP-SDE.
        class_names: the `K` class names, stored in `model_index.json` so they travel with the weights. Default:
            `"0".."K-1"` with `K = num_class_embeds` (no null class).
        positive_class: for a binary task, the class name its metrics and `log_likelihood_ratio` refer to (see
            `set_positive_class`); saved in `model_index.json`.
        preprocessing: the saved [`ImagePreprocessing`] contract (a dict in `model_index.json`): how `preprocess` reads
            every input (float range, size, resampling, channels, DICOM windows); default `default_preprocessing()`,
            missing keys too (see `set_preprocessing`).
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        class_names: Optional[List[str]] = None,
        positive_class: Optional[str] = None,
        preprocessing: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        num_embeds = unet.config.get("num_class_embeds")
        if num_embeds is None:
            raise ValueError(
                "expected a class-conditional UNet2DModel(num_class_embeds=K) (K classes, K + 1 with a null class), "
                "got a U-Net without class embeddings"
            )
        VPSDE.from_scheduler(scheduler)  # a linear, epsilon-prediction schedule, or a clear error now
        class_names = self.class_names_from(num_embeds, class_names)
        if len(class_names) not in (num_embeds, num_embeds - 1):
            raise ValueError(
                f"expected {num_embeds} class names ({num_embeds - 1} when the last embedding is the null class), "
                f"got {len(class_names)}"
            )
        check_unique_class_names(class_names, "class_names")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=[str(name) for name in class_names])
        self.set_positive_class(positive_class)
        self.set_preprocessing(preprocessing)

    @property
    def class_names(self) -> List[str]:
        return list(self.config.class_names)

    @property
    def sde(self) -> VPSDE:
        return VPSDE.from_scheduler(self.scheduler)

    def default_preprocessing(self) -> ImagePreprocessing:
        """The U-Net's `sample_size` and `in_channels`, float inputs in `[-1, 1]`."""
        return ImagePreprocessing(self.unet.config.sample_size, self.unet.config.in_channels)

    def check_priors(self, priors) -> Optional[torch.Tensor]:
        """`log prior` `[K]` (float64), or `None` for uniform priors; raises on a bad prior (`prior_list`)."""
        priors = self.prior_list(priors)
        return None if priors is None else log_priors(priors)

    def prior_list(self, priors) -> Optional[List[float]]:
        """`priors` as `K` floats in class order (`None` stays `None`): given in class order (a sequence, array or
        tensor) or by class name (`{"cancer": 0.01, "normal": 0.99}`, every class of `class_names` once); raises a
        one-line `ValueError` naming what was expected otherwise."""
        if priors is None:
            return None
        names, expected = self.class_names, f"one per class {self.class_names}"
        if isinstance(priors, Mapping):
            unknown = [key for key in priors if key not in names]
            missing = [name for name in names if name not in priors]
            if unknown or missing:
                raise ValueError(
                    f"priors: expected a prior for each class name {names}, got {sorted(map(str, priors))} (unknown: "
                    f"{[str(key) for key in unknown]}, missing: {missing})"
                )
            priors = [priors[name] for name in names]
        try:
            values = torch.as_tensor(priors, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            values = None
        if values is None or values.ndim != 1:  # QA: a nested list was flattened and taken
            raise ValueError(
                f"priors: expected {len(names)} numbers ({expected}, in that order) or a mapping "
                f"{{class name: prior}}, got {priors!r}"
            ) from None
        if len(values) != len(names):
            raise ValueError(f"expected {len(names)} priors ({expected}), got {len(values)}")
        if not torch.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"expected non-negative priors, got {values.tolist()}")
        if abs(float(values.sum()) - 1) > 1e-6:
            raise ValueError(f"expected priors summing to 1, got sum {float(values.sum()):.6g}")
        return values.tolist()

    @staticmethod
    def seeds_from(generator, seed: Union[int, Sequence[int]], num_images: int):
        """The scorers' seed: `seed` as given, or drawn from `generator` (one int; a list: one per image)."""
        def draw(g: torch.Generator) -> int:
            return int(torch.randint(2**62, (1,), generator=g, device=g.device))

        if generator is None:
            return seed
        if isinstance(generator, (list, tuple)):
            if len(generator) != num_images:
                raise ValueError(f"expected one generator per image ({num_images}), got {len(generator)}")
            return [draw(g) for g in generator]
        return draw(generator)

    @torch.no_grad()
    def __call__(
        self,
        images,
        method: str = "elbo",
        priors: Optional[Union[Sequence[float], Dict[str, float]]] = None,
        num_timesteps: int = 100,
        timestep_spacing: str = "even",
        weighting: str = "elbo",
        pruning: Optional[Sequence[Tuple[int, int]]] = None,
        early_stop_confidence: Optional[float] = None,
        timesteps_per_check: int = 10,
        timestep_strata: Optional[Sequence[int]] = None,
        solver: str = "rk4",
        num_steps: int = 32,
        step_spacing: str = "log_snr",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        num_probes: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        seed: Union[int, Sequence[int]] = 0,
        seed_by: str = "content",
        batch_size: int = 256,
        return_dict: bool = True,
        input_data_format: Optional[str] = None,
    ):
        r"""
        Classify `images` (one or a list of file paths, PIL images, arrays or tensors) among the `K` named classes.

        `probs = softmax(log_likelihoods + log priors)`: Bayes' rule, exact for `method="likelihood"` (up to the
        ODE solver and the Hutchinson estimate). For `method="elbo"` the scores are log-likelihood lower bounds
        (up to a per-image constant) only with `weighting="elbo"`, so `probs` is then the posterior under the
        bound; with `weighting="uniform"` (the plain DDPM loss of Li et al. 2023, often more accurate) `probs` is a
        heuristic softmax of minus the error, with an arbitrary temperature.

        Args:
            images: the images to classify (see the class docstring for resizing and channels).
            method (`str`, *optional*, defaults to `"elbo"`): `"elbo"` (denoising-error bound,
                [`denoising_error_scores`]) or `"likelihood"` (exact probability-flow ODE,
                [`probability_flow_log_likelihood`]).
            priors (`Sequence[float]` or `Dict[str, float]`, *optional*): `K` class probabilities (non-negative,
                summing to 1) in class order, or by class name (`{"cancer": 0.01, "normal": 0.99}`); default uniform.
                Pruning and the early stop rank and settle classes by bound + log prior, the decision's
                (so they take positive priors only).
            num_timesteps, timestep_spacing, weighting, pruning, early_stop_confidence, timesteps_per_check,
                timestep_strata: the ELBO estimator (`method="elbo"`), passed to [`denoising_error_scores`]; a
                stopping rule and the timesteps to evaluate are best chosen on labeled validation images with
                [`replay_stopping_rule`] and [`rank_timestep_strata`]. With `weighting="elbo"`,
                `timestep_spacing="log_snr"` gives every timestep the same weight (importance sampling) but puts
                about half of them at t < 0.1, where classes barely differ: on PneumoniaMNIST it lowered the noise
                (3-4 of 200 val decisions changed with the seed, against 10-12), on Fashion-MNIST (30 timesteps) it
                cost 10 points of accuracy. `weighting="uniform"` was more accurate than `"elbo"` on both, with
                either spacing. Compare on your own validation images with
                `benchmarks/score_sde_bench_elbo_settings.py`. Against per-class Gaussians whose score and
                `log p(x | c)` are exact (`benchmarks/score_sde_bench_elbo_bias.py`), the defaults' ratio reads 0.886x
                the exact one (the first timestep, t = 0.005, leaves out the lowest noise levels, where fine detail
                tells classes apart: a bias towards 0, not seed noise), its standard error 6.9x the spread over seeds
                (3.0-11.5x by model), and a pruning stage's after 10, 20 and 50 of 100 timesteps 5.9x, 3.1x and 1.6x
                (the lowest timestep, which weighs most, is among a stage's first); `"log_snr"` reads 1.000x
                exhaustive, 0.84-1.06x by stage, its standard error 1.15x, but puts 20% of its timesteps below the
                trained range (k < 0: the timestep embedding extrapolated). The ODE likelihood reads 0.9999x.
            solver, num_steps, step_spacing, rtol, atol, num_probes: the ODE solver and divergence estimator
                (`method="likelihood"`), passed to [`probability_flow_log_likelihood`]. The defaults, RK4 with 32
                steps uniform in log-SNR (`step_spacing="log_snr"`) and one Hutchinson probe, stayed within 0.011
                bits/dim of a tight adaptive solve on every trained model measured; `step_spacing="uniform"` is
                inaccurate near `t_min` (0.1 to 2 bits/dim too few, enough to change decisions). For a reference,
                `solver="dopri5"`; for speed, `solver="dpm3m"` (one evaluation per step: `num_steps=40` costs 41
                per class, 3.1x fewer than the default, at up to 2.2x its error in the runs measured).
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*): one generator (one seed drawn from
                it) or one per image; overrides `seed`.
            seed (`int` or `Sequence[int]`, *optional*, defaults to 0): an int (see `seed_by`) or one per image.
                The default makes calls repeatable.
            seed_by (`str`, *optional*, defaults to `"content"`): what an int `seed` (or the one drawn from a single
                `generator`) is combined with to give each image its random draws (noise, timesteps, probes):
                `"content"`, the SHA-256 of the image's preprocessed pixels ([`content_seeds`]), so an image gets the
                same draws alone, in any batch and at any position, and the same result to float32 precision (other
                batch sizes sum in another order: up to 3e-4 nats measured), but for `solver="dopri5"`, whose adaptive
                steps a batch shares; `"position"`, its index `i` in the call (stream
                `(seed, i)`, v0.1.0's only scheme, kept to reproduce its numbers: batch-vs-single results differ by
                the Monte-Carlo noise).
            batch_size (`int`, *optional*, defaults to 256): samples (image x class x time) per U-Net call; the ODE
                solves `batch_size // K` images at once.
            return_dict (`bool`, *optional*, defaults to `True`): return a [`ScoreSDEClassifierOutput`], else its
                `to_tuple()` (fields that are `None` left out).
            input_data_format (`str`, *optional*): `"channels_first"` or `"channels_last"`, the layout of 3-D and
                4-D arrays and tensors; `None` infers it when unambiguous (see `preprocess_images`).

        Examples:

        ```py
        >>> from diffusion_classifiers import DiffusionClassifierPipeline

        >>> pipe = DiffusionClassifierPipeline.from_pretrained("path/to/score_sde_pipeline")
        >>> out = pipe(images, num_timesteps=100, pruning=[(20, 2), (80, 1)])  # the 2 best classes after 20 timesteps
        >>> out.labels, out.probs, out.nfe_per_image
        >>> exact = pipe(images, method="likelihood", priors=[0.9, 0.1])  # probability-flow ODE, Bayes' rule
        >>> pipe(images, seed_by="position")  # v0.1.0's draws (by position in the call), to reproduce its numbers
        >>> pipe.set_progress_bar_config(disable=True)  # silences every bar of the call
        ```

        Returns:
            [`ScoreSDEClassifierOutput`] or `tuple`.
        """
        self.check_call_settings(dict(locals()))
        check_positive_integer(batch_size, "batch_size")
        log_prior = self.check_priors(priors)
        stopping_rule = method == "elbo" and (pruning is not None or early_stop_confidence is not None)
        num_scored = num_timesteps if timestep_strata is None else len(timestep_strata)
        class_ids = list(range(len(self.class_names)))
        pixels = self.preprocess(images, input_data_format)
        seed = self.seeds_from(generator, seed, len(pixels))
        if seed_by == "content" and isinstance(seed, numbers.Integral):
            seed = content_seeds(pixels, seed)

        # score every class: log p(x | c) by the probability-flow ODE, or the denoising-error bound
        if method == "likelihood":
            result = probability_flow_log_likelihood(
                self.unet, pixels, class_ids, solver=solver, num_steps=num_steps, step_spacing=step_spacing,
                rtol=rtol, atol=atol, num_probes=num_probes, seed=seed,
                batch_size=max(1, batch_size // len(class_ids)), sde=self.sde, progress_bar=self.progress_bar_config,
            )
            log_likelihoods, before_pruning, bits_per_dim = result.log_likelihood.double(), None, result.bits_per_dim
        else:
            result = denoising_error_scores(
                self.unet, pixels, class_ids, num_timesteps=num_timesteps, timestep_spacing=timestep_spacing,
                weighting=weighting, pruning=pruning, early_stop_confidence=early_stop_confidence,
                timesteps_per_check=timesteps_per_check, timestep_strata=timestep_strata, seed=seed,
                max_batch_size=batch_size, sde=self.sde, progress_bar=self.progress_bar_config,
                log_prior=log_prior if stopping_rule else None,  # it steers the stopping rule only
            )
            log_likelihoods, before_pruning, bits_per_dim = result.scores, result.shared_scores(), None
            if early_stop_confidence is not None and not pruning:
                _warn_if_none_stopped(result.nfe_per_image, len(class_ids) * num_scored, early_stop_confidence)
        stderr = None
        if len(class_ids) == 2:  # None for the likelihood with one probe: its spread needs several
            positive = self.positive_index()
            stderr = result.difference_standard_error(positive, 1 - positive)

        # Bayes' rule: p(c | x) = softmax_c(log p(x | c) + log prior(c))
        output = self.posterior(log_likelihoods, log_prior, before_pruning)
        output = ScoreSDEClassifierOutput(**output, nfe_per_image=result.nfe_per_image, bits_per_dim=bits_per_dim,
                                          log_likelihood_ratio_stderr=stderr)  # fmt: skip
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()

    def check_call_settings(self, settings: Dict[str, Any]) -> None:
        """What a call with these settings (names of `__call__`'s parameters; `evaluate.pipeline_call_settings` gives
        them all) would refuse that no image is needed to tell: called by the pipeline, and by `evaluate` and
        `predict` before any image is read or any output written: the method, the other method's arguments, `seed_by`,
        the priors (`prior_list`; given, they are normalised in `settings` to the list in class order, so a record of
        the call reads the same whichever form was given), the solver's or the ELBO's settings (names and counts), a
        prior of 0 with pruning or the early stop, and an ELBO
        early stop with no look that can stop an image before the last timestep (`denoising_error.
        check_early_stop_can_stop`): no image could stop (QA: the warning then blamed noisy scores)."""
        call = {**_call_defaults(), **settings}
        method = call["method"]
        if method not in METHODS:
            raise ValueError(f"expected method in {METHODS}, got {method!r}")
        _check_method_arguments(method, call)
        check_positive_integer(call["batch_size"], "batch_size")  # in the call's words, before the scorers' checks
        if method == "likelihood":  # QA: an unknown solver was refused once predict had written its files
            check_solver_args(
                call["solver"], call["num_steps"], call["step_spacing"], call["rtol"], call["atol"], call["num_probes"],
                call["batch_size"], warn=False,
            )  # fmt: skip
        else:
            check_denoising_args(call["num_timesteps"], call["timestep_spacing"], call["weighting"], call["batch_size"])
        if call["seed_by"] not in SEED_BY:
            raise ValueError(f"expected seed_by in {SEED_BY}, got {call['seed_by']!r}")
        if settings.get("priors") is not None:
            settings["priors"] = self.prior_list(settings["priors"])  # as recorded: the list in class order
        log_prior = self.check_priors(settings.get("priors"))
        if method == "elbo" and (call["pruning"] is not None or call["early_stop_confidence"] is not None):
            _check_no_zero_prior(log_prior, self.class_names)
            _warn_if_priors_weigh_less(log_prior, call)
        self._check_stopping_rule(call)

    def _check_stopping_rule(self, settings: Dict[str, Any]) -> None:
        """An ELBO call's early stop without pruning (pruning stages look too) that could stop no image refused, then
        its pruning and early stop as the scorer would check them (`denoising_error.check_stopping_rule`); a number of
        timesteps that is no count is left to the scorer, which refuses it."""
        if settings.get("method", "elbo") != "elbo":
            return
        strata, every = settings.get("timestep_strata"), settings.get("timesteps_per_check", 10)
        scored = settings.get("num_timesteps", 100) if strata is None else None
        if strata is not None and hasattr(strata, "__len__"):
            scored = len(strata)
        if not is_count(scored):
            return
        pruning, confidence = settings.get("pruning"), settings.get("early_stop_confidence")
        if confidence is not None and not pruning and is_count(every):
            check_early_stop_can_stop(scored, every)  # refused here, before the scorer's check would warn of it
        check_stopping_rule(scored, len(self.class_names), pruning, confidence, every)

    def positive_index(self) -> int:
        """The index of `positive_class` among the class names (class 1 when unset)."""
        return 1 if self.positive_class is None else self.class_names.index(self.positive_class)

    def posterior(self, log_likelihoods: torch.Tensor, log_prior: Optional[torch.Tensor],
                  before_pruning: Optional[torch.Tensor] = None) -> dict:
        """Bayes' rule: the base output of `log_likelihoods + log_prior`, with the log-likelihoods and (K = 2) the
        ratio `log p(x | positive) - log p(x | negative)` over `before_pruning` (the scores over the timesteps both
        classes got) and the log-odds it gives with the prior. K = 2 with a class pruned (`-inf`): the label and
        probs (0 / 1) follow the sign of those log-odds, so the two never contradict each other."""
        logits = log_likelihoods if log_prior is None else log_likelihoods + log_prior
        logits = logits - logits.max(1, keepdim=True).values  # in float64: build_output's softmax runs in float32
        if len(self.class_names) != 2:
            base = self.build_output(logits, self.class_names)
            return dict(base, log_likelihoods=log_likelihoods, log_likelihood_ratio=None, log_odds=_log_odds(logits))
        both = log_likelihoods if before_pruning is None else before_pruning
        positive = self.positive_index()
        ratio = both[:, positive] - both[:, 1 - positive]
        positive_odds = ratio if log_prior is None else ratio + (log_prior[positive] - log_prior[1 - positive])
        odds = torch.stack([-positive_odds, positive_odds] if positive == 1 else [positive_odds, -positive_odds], 1)
        if before_pruning is not None:
            logits = _decided_by_odds(logits, odds, torch.isinf(log_likelihoods).any(1))
        base = self.build_output(logits, self.class_names)
        return dict(base, log_likelihoods=log_likelihoods, log_likelihood_ratio=ratio, log_odds=odds)


def log_priors(priors: Sequence[float]) -> torch.Tensor:
    """The log of checked priors `[K]`, in float64: what Bayes' rule adds to the log-likelihoods (and `aggregate`
    adds to a group's ratio, to the bit, to decide as this pipeline decides)."""
    return torch.tensor(list(priors), dtype=torch.float64).log()


def _warn_if_none_stopped(nfe_per_image: torch.Tensor, budget: int, confidence: float) -> None:
    """Say so when the early stop stopped no image before its last timestep (QA: the README's example did not stop
    one image of a weakly trained model, silently): the scores are too noisy for `confidence` at these settings."""
    if len(nfe_per_image) and bool((nfe_per_image >= budget).all()):
        warnings.warn(
            f"early_stop_confidence={confidence}: no image of this call stopped before its last timestep (each took "
            "every network call): the scores are too noisy to settle at this confidence. With weighting='elbo', "
            "timestep_spacing='log_snr' or weighting='uniform' give steadier scores; a lower confidence stops sooner",
            UserWarning,
            stacklevel=4,  # the caller of the pipeline (its __call__ runs under torch.no_grad)
        )


def _decided_by_odds(logits: torch.Tensor, odds: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Binary `logits` whose `dropped` rows (a class pruned) become `0` for the class of positive `odds` and `-inf`
    for the other (both `0` at a tie): the pruned run's one-hot decision, taken from the log-odds it reports so that
    round-off cannot make them disagree."""
    chosen = torch.where(odds >= 0, torch.zeros_like(odds), torch.full_like(odds, -math.inf))
    return torch.where(dropped[:, None], chosen, logits)


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    """`logits[:, c] - logsumexp(logits of the other classes)`: the log-odds of each class's posterior, float64."""
    own = torch.eye(logits.shape[1], dtype=torch.bool, device=logits.device)
    others = logits.unsqueeze(1).expand(-1, logits.shape[1], -1).masked_fill(own, -math.inf)
    return logits - torch.logsumexp(others, dim=-1)


def _check_method_arguments(method: str, arguments: Dict[str, Any]) -> None:
    """Refuse the other method's arguments given other than their defaults: they would be ignored without a word (an
    `early_stop_confidence` with `method="likelihood"` stops nothing)."""
    defaults = _call_defaults()
    other = next(name for name in METHODS if name != method)
    ignored = [name for name in METHOD_ARGUMENTS[other] if not _is_default(arguments[name], defaults[name])]
    if ignored:
        raise ValueError(
            f"{', '.join(f'{name}={arguments[name]!r}' for name in ignored)}: argument(s) of method={other!r}, which "
            f'method={method!r} does not read; drop them or pass method="{other}"'
        )


@functools.lru_cache(maxsize=1)
def _call_defaults() -> Dict[str, Any]:
    """The defaults of `ScoreSDEClassifierPipeline.__call__`'s settings, read once (from the class as defined)."""
    parameters = inspect.signature(ScoreSDEClassifierPipeline.__call__).parameters.items()
    return {name: p.default for name, p in parameters if p.default is not inspect.Parameter.empty}


_call_defaults()  # read now, before anything can replace `__call__`


def _is_default(value: Any, default: Any) -> bool:
    if default is None:
        return value is None
    try:
        return bool(value == default)
    except (TypeError, ValueError, RuntimeError):  # an array of several values: not a default
        return False


def _warn_if_priors_weigh_less(log_prior: Optional[torch.Tensor], call: Dict[str, Any]) -> None:
    """Priors that are not uniform, under a stopping rule whose first stages' ratios read several times too large
    (the ELBO weighting at even spacing: the lowest timestep, which weighs most, is among a stage's first), are said to
    count that much less (QA, an exact-score review; `benchmarks/score_sde_bench_elbo_bias.py`)."""
    uniform = log_prior is None or bool(torch.allclose(log_prior, log_prior[0].expand_as(log_prior)))
    if uniform or call["weighting"] != "elbo" or call["timestep_spacing"] != "even":
        return
    warnings.warn(
        "priors with pruning or the early stop at weighting='elbo', timestep_spacing='even': the log-likelihood "
        "ratios of a stage's first timesteps read several times the whole estimate's (5.9x after 10 of 100, 3.1x "
        "after 20, 1.6x after 50 on exact-score Gaussians: benchmarks/score_sde_bench_elbo_bias.py), so the priors "
        "count that much less in those stages' decisions; timestep_spacing='log_snr' kept them within 0.84-1.06x",
        UserWarning,
        stacklevel=4,
    )


def _check_no_zero_prior(log_prior: Optional[torch.Tensor], class_names: List[str]) -> None:
    """Pruning and the early stop rank classes by bound + log prior, which a prior of 0 leaves undefined (`-inf`)."""
    if log_prior is None or not bool(torch.isinf(log_prior).any()):
        return
    zero = [name for name, value in zip(class_names, log_prior.tolist()) if math.isinf(value)]
    raise ValueError(
        f"priors: classes {zero} have prior 0, which pruning and the early stop cannot use (they rank classes by "
        "bound + log prior, -inf for those); give every class a positive prior, or score without pruning"
    )

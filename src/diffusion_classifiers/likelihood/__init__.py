r"""Score-SDE generative classification: class-conditional log-likelihoods of an epsilon-predictor.

Two scorers share one VP-SDE and one model interface:

- [`probability_flow_log_likelihood`]: the exact `log p(x | c)` of the probability-flow ODE, with the divergence
  by the Hutchinson estimator (or exactly, for small images), solved in torch with a fixed-step Heun / RK4 grid
  (by default 32 RK4 steps uniform in log-SNR), an exponential multistep solver in log-SNR (one evaluation per step)
  or an adaptive Dormand-Prince (RK45) solver. Every image is paired with every class in one ODE state.
- [`denoising_error_scores`]: the weighted denoising error (the diffusion term of the ELBO), with the same noise
  and timesteps for every class, adaptive class pruning (Li et al. 2023) and a sequential early stop that drops
  each class once a paired test settles it below the leader (for two classes: the sign of the log-likelihood
  ratio, plus the log prior ratio when given; for more, Bonferroni over the rivals alive at each look);
  [`replay_stopping_rule`] replays such rules on an exhaustive run, to choose one on validation images, and
  [`rank_timestep_strata`] orders the timesteps by how well each one alone separates the classes there.

Modules: `vp_sde` (the SDE, the model interface, bits per dimension), `scorer_inputs` (what both scorers share:
checked inputs, one random stream per image), `probability_flow` and `denoising_error` (one scorer each); everything
public is imported here.

Conventions:

- Time: continuous `t` in `[t_min, 1]`. A diffusers model trained with `DDPMScheduler` (linear betas from
  `beta_start` to `beta_end` over `N` steps) is called at the float timestep `k = N t - 1` (see [`VPSDE`]).
- Images: tensors `[N, C, H, W]` (any `[N, ...]` for plain callables) scaled to `[-1, 1]`; `D` = values per image;
  scored in float32 (float64 images: float64), whatever their dtype and the model's.
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

from .denoising_error import (
    TIMESTEP_SPACINGS,
    WEIGHTINGS,
    DenoisingScoreResult,
    denoising_error_scores,
    rank_timestep_strata,
    replay_stopping_rule,
)
from .probability_flow import SOLVERS, STEP_SPACINGS, LikelihoodResult, probability_flow_log_likelihood
from .scorer_inputs import content_seeds
from .vp_sde import PIXEL_BIN_WIDTH, VPSDE, as_eps_model, bits_per_dim

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

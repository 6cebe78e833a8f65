"""An exact-score reference for the Score-SDE classifier: Gaussian classes whose VP-SDE noise prediction,
probability-flow log-likelihood and ELBO are known in closed form, wrapped as the class-conditional `UNet2DModel` the
pipeline calls.

One source of truth for `benchmarks/score_sde_bench_elbo_bias.py` and `tests/test_score_sde_exact_gaussian.py` (the
tests import it as they import the other benchmark modules, with `benchmarks/` on `sys.path`).

Class `c` is `N(mu_c, Sigma)`, `Sigma = Q diag(s^2) Q^T` with a random rotation `Q` (not diagonal: the Jacobian of eps
is a full matrix, so Hutchinson probes have variance). Under the VP-SDE `x_t = alpha(t) x + sigma(t) eps` its marginal
at time t is `N(alpha mu_c, V_t)`, `V_t = alpha^2 Sigma + sigma^2 I` (eigenvalues `v_d(t) = alpha^2 s_d^2 + sigma^2`),
so the exact noise prediction is `eps(x_t, t, c) = sigma V_t^-1 (x_t - alpha mu_c)`.

The library's conventions, which the closed forms follow so that they give the quantities the library reports:

- Time (`likelihood/vp_sde.py`): the pipeline's `VPSDE.from_scheduler(DDPMScheduler())`, `beta(t)` linear from
  `beta_min = 0.1` to `beta_max = 20`, `N = 1000` training steps, `t` in `[t_min, 1]`, `t_min = 1e-5`. The U-Net is
  called at the float32 timestep `k = N t - 1` (`as_eps_model`); `ExactGaussianUNet` maps it back to `t = (k + 1) / N`
  and evaluates the exact eps there, at any `k` (the ELBO and the ODE call it below `k = 0` too: `t < 1 / N`).
- Data space (`pipelines/pipeline_score_sde.py`, `data/preprocessing.py`): the pixels the pipeline scores are
  `pipe.preprocess(images)`, float32 `[N, C, H, W]` in `[-1, 1]`, an 8-bit level `k` read as `k / 127.5 - 1`. The
  library's `log p(x | c)` is the continuous density at those points, no dequantisation noise added (bits/dim then
  count bins of width 2/255: `likelihood.bits_per_dim`). The closed forms take those same pixels, in float64.
- `ode_log_likelihood` is what `probability_flow_log_likelihood` (method `"likelihood"`) computes with this exact score:
  the flow from `x` at `t_min` to `x(1)` and the prior `N(0, I)` at `t = 1`. The flow is linear: in the eigenbasis
  `y_d(t) = sqrt(v_d(t) / v_d(t_min)) y_d(t_min)`, `y = Q^T (x_t - alpha mu_c)`, so
  `log p(x | c) = log N(x(1); 0, I) + 1/2 sum_d log(v_d(1) / v_d(t_min))`. It differs from the data density
  `data_log_likelihood` (`log N(x; mu_c, Sigma)`) by the smoothing at `t_min` (`sigma^2(t_min) = 1e-6` added to every
  `s_d^2`) and by the prior's mismatch at `t = 1` (`alpha(1) = 0.0066`, not 0).
- `elbo_class_term`: with `weighting="elbo"` the denoising-error scores estimate minus
  `1/2 int_{t_min}^1 beta / sigma^2 E ||eps - eps_hat||^2 dt`. For this model `E ||eps - eps_hat||^2 =
  tr((alpha^2 Sigma V^-1)^2) + alpha^2 sigma^2 ||V^-1 Q y||^2`; the first term is the same for every class, and since
  `d/dt (alpha^2 / v_d) = -beta alpha^2 / v_d^2` the second integrates exactly:
  `-1/2 sum_d y_d^2 (alpha(t_min)^2 / v_d(t_min) - alpha(1)^2 / v_d(1))`, `y = Q^T (x - mu_c)`. Its class differences
  are what the ELBO's log-likelihood ratio estimates (exactly in expectation with `"stratified"` timesteps; `"even"`
  and `"log_snr"` put the timesteps at stratum midpoints, a quadrature whose error is a bias).
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from diffusion_classifiers.likelihood import VPSDE
from diffusion_classifiers.pipelines.pipeline_score_sde import ScoreSDEClassifierPipeline

__all__ = ["ExactGaussianClasses", "ExactGaussianUNet", "binary_gaussian_classes"]


@dataclass
class ExactGaussianClasses:
    """
    `K` Gaussian classes `N(means[c], rotation diag(scales^2) rotation^T)` of images `shape`, under `sde`. Every
    closed form takes pixels `[N, C, H, W]` (or `[N, D]`) and returns float64 `[N, K]`.

    Args:
        means: `[K, D]` class means (float64).
        scales: `[D]` standard deviations along the columns of `rotation` (float64).
        rotation: `[D, D]` orthogonal (float64).
        shape: `(C, H, W)` of one image, `C H W = D`.
        sde: the VP-SDE the pipeline derives from its scheduler (default: `DDPMScheduler()`'s).
    """

    means: torch.Tensor
    scales: torch.Tensor
    rotation: torch.Tensor
    shape: Tuple[int, int, int]
    sde: VPSDE = field(default_factory=VPSDE)

    @property
    def num_classes(self) -> int:
        return len(self.means)

    # ------------------------------------------------------------------------------------------ the exact score

    def marginal(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`alpha(t)` `[..., 1]` and the eigenvalues `v_d(t)` `[..., D]` of the class covariance at time `t`."""
        t = torch.as_tensor(t, dtype=torch.float64)
        alpha = self.sde.alpha(t)[..., None]
        return alpha, alpha**2 * self.scales.to(t.device) ** 2 + self.sde.sigma(t)[..., None] ** 2

    def eps(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The exact noise prediction `sigma V_t^-1 (x - alpha mu_c)` at `x` `[B, ...]`, times `t` `[B]` and classes
        `labels` `[B]`, in float64 (differentiable in `x`)."""
        alpha, variances = self.marginal(t.double())
        rotation = self.rotation.to(x.device)
        y = (x.flatten(1).double() - alpha * self.means.to(x.device)[labels]) @ rotation  # (B, D) eigen coordinates
        sigma = self.sde.sigma(t.double())[:, None]
        return ((sigma * y / variances) @ rotation.T).view(x.shape)

    # ------------------------------------------------------------------------------------------ the closed forms

    def _eigen_offsets(self, pixels: torch.Tensor, alpha) -> torch.Tensor:
        """`[N, K, D]` `Q^T (x - alpha mu_c)` of every image and class."""
        x = pixels.flatten(1).double().cpu()
        return (x[:, None] - alpha * self.means) @ self.rotation

    def data_log_likelihood(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[N, K]` `log N(x; mu_c, Sigma)`, the density of the data themselves (nats)."""
        y = self._eigen_offsets(pixels, 1.0)
        return -0.5 * (y**2 / self.scales**2 + torch.log(2 * math.pi * self.scales**2)).sum(-1)

    def ode_log_likelihood(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[N, K]` the probability-flow ODE's `log p(x | c)` with this exact score (nats): what
        `probability_flow_log_likelihood` and the pipeline's `method="likelihood"` report, up to their solver and
        Hutchinson errors."""
        (a0, v0), (a1, v1) = self.marginal(self.sde.t_min), self.marginal(1.0)
        x1 = a1 * self.means + (self._eigen_offsets(pixels, a0) * (v1 / v0).sqrt()) @ self.rotation.T  # (N, K, D)
        prior = -0.5 * (x1**2 + math.log(2 * math.pi)).sum(-1)
        return prior + 0.5 * torch.log(v1 / v0).sum()

    def elbo_class_term(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[N, K]` the class-dependent part of the ELBO's diffusion term with this exact score (see the module
        docstring): its differences between classes are what the ELBO's score differences estimate."""
        (a0, v0), (a1, v1) = self.marginal(self.sde.t_min), self.marginal(1.0)
        y = self._eigen_offsets(pixels, 1.0)
        return -0.5 * (y**2 * (a0**2 / v0 - a1**2 / v1)).sum(-1)

    def elbo_weights(self, timesteps: torch.Tensor, spacing: str) -> torch.Tensor:
        """The `weighting="elbo"` weight of each timestep as `denoising_error_scores` documents it:
        `(1 - t_min) beta(t) / (2 sigma(t)^2)`, or with `"log_snr"` spacing (importance sampling in log-SNR) the
        constant `(lambda(t_min) - lambda(1)) / 2`."""
        timesteps = timesteps.double()
        if spacing == "log_snr":
            first, last = self.sde.log_snr_range()
            return torch.full_like(timesteps, float(first - last) / 2)
        return (1 - self.sde.t_min) * self.sde.beta(timesteps) / (2 * self.sde.sigma(timesteps) ** 2)

    def elbo_ratio_moments(self, pixels: torch.Tensor, timesteps: torch.Tensor, weights: torch.Tensor,
                           positive: int = 1, negative: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        `[N]` mean and standard deviation, over the noise draws, of the ELBO's score difference
        `score_positive - score_negative` (the pipeline's `log_likelihood_ratio`) when image `i` is scored at the
        `timesteps[i]` `[N, T]` with `weights[i]` `[N, T]`, one independent noise draw per timestep shared by both
        classes. In the eigenbasis, with `z ~ N(0, I)`, `A = diag(alpha^2 s^2 / v)` and `b_c = alpha sigma y_c / v`,
        the error of class c is `w ||A z - b_c||^2`, so the difference of two classes' errors is linear in `z`:
        `w (||b_+||^2 - ||b_-||^2 - 2 (A z) . (b_+ - b_-))`: Gaussian, mean and variance in closed form.
        """
        t = timesteps.double().cpu()
        alpha, variances = self.marginal(t)  # (N, T, 1), (N, T, D)
        sigma = self.sde.sigma(t)[..., None]
        y = self._eigen_offsets(pixels, 1.0)  # (N, K, D)
        b_pos = alpha * sigma * y[:, positive, None] / variances  # (N, T, D)
        b_neg = alpha * sigma * y[:, negative, None] / variances
        a = alpha**2 * self.scales**2 / variances
        w = weights.double().cpu()
        error_gap = w * ((b_pos**2).sum(-1) - (b_neg**2).sum(-1))  # (N, T) mean of e_+ - e_-
        error_gap_variance = 4 * w**2 * (a**2 * (b_pos - b_neg) ** 2).sum(-1)
        count = t.shape[1]
        return -error_gap.mean(1), error_gap_variance.sum(1).sqrt() / count

    # ------------------------------------------------------------------------------------------ images and models

    def sample(self, labels: Sequence[int], seed: int = 0) -> torch.Tensor:
        """`[N, C, H, W]` float64 draws of the classes `labels`, clipped to `[-1, 1]` (numpy's generator: the same
        numbers on every machine)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        z = torch.from_numpy(np.random.default_rng(seed).standard_normal((len(labels), len(self.scales))))
        x = self.means[labels] + (z * self.scales) @ self.rotation.T
        return x.clamp(-1, 1).view(len(labels), *self.shape)

    def images_at_ratios(self, ratios: Sequence[float], positive: int = 1, negative: int = 0) -> torch.Tensor:
        """`[N, C, H, W]` float64 images whose data log-likelihood ratio `log N(x; mu_+, Sigma) - log N(x; mu_-,
        Sigma)` is each of `ratios` (near the decision boundary, where posteriors are not 0 or 1): the ratio is linear
        in x, `a^T (x - (mu_+ + mu_-) / 2)` with `a = Sigma^-1 (mu_+ - mu_-)`, so the images are
        `(mu_+ + mu_-) / 2 + r a / ||a||^2` (the shortest step to each ratio). Not quantised: pass them as float
        tensors (8-bit rounding would move the ratio by tens of nats along the fine directions)."""
        delta = self.means[positive] - self.means[negative]
        a = ((delta @ self.rotation) / self.scales**2) @ self.rotation.T
        midpoint = (self.means[positive] + self.means[negative]) / 2
        x = midpoint + torch.as_tensor(ratios, dtype=torch.float64)[:, None] * a / (a @ a)
        if x.abs().max() > 1:
            raise ValueError(f"ratios {list(ratios)}: some images fall outside [-1, 1]")
        return x.view(len(x), *self.shape)

    def unet(self) -> "ExactGaussianUNet":
        """The exact noise predictor as a class-conditional `UNet2DModel` (`num_class_embeds = K`), in eval mode."""
        channels, height, width = self.shape
        if height != width:
            raise ValueError(f"expected square images (UNet2DModel's sample_size), got shape {self.shape}")
        torch.manual_seed(0)  # its own weights are never used: the same model on every call
        model = ExactGaussianUNet(
            sample_size=height, in_channels=channels, out_channels=channels, block_out_channels=(4, 4),
            layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2, add_attention=False,
            num_class_embeds=self.num_classes,
        )  # fmt: skip
        model.classes = self
        return model.eval()

    def scheduler(self) -> DDPMScheduler:
        """The `DDPMScheduler` whose VP-SDE is `sde` (linear betas `beta_min / N .. beta_max / N`)."""
        n = self.sde.num_train_timesteps
        return DDPMScheduler(num_train_timesteps=n, beta_start=self.sde.beta_min / n, beta_end=self.sde.beta_max / n)

    def pipeline(self, class_names: Optional[List[str]] = None) -> ScoreSDEClassifierPipeline:
        """A `ScoreSDEClassifierPipeline` around `unet()` (progress bars off); its `sde` is this model's."""
        pipe = ScoreSDEClassifierPipeline(self.unet(), self.scheduler(), class_names=class_names)
        if pipe.sde != self.sde:
            raise ValueError(f"the pipeline's VP-SDE {pipe.sde} is not the model's {self.sde} (t_min must be 1e-5)")
        pipe.set_progress_bar_config(disable=True)
        return pipe


class ExactGaussianUNet(UNet2DModel):
    """A `UNet2DModel` whose `forward` is the exact noise prediction of its `classes` ([`ExactGaussianClasses`]): the
    timestep `k` (float, any value) is read as `t = (k + 1) / N`, the class from `class_labels`, as the library's
    `as_eps_model` calls it. The U-Net's own layers exist only so that the pipeline sees a diffusers model (config,
    dtype, class embedding); they are never run. Computed in float64, returned in the sample's dtype.

    `recorded_timesteps`: None, or (after `record_timesteps()`) a list that every call appends its float timesteps
    `k` `[B]` to, e.g. to count the calls below the trained `0..N-1`."""

    classes: ExactGaussianClasses
    recorded_timesteps: Optional[List[torch.Tensor]] = None

    def record_timesteps(self) -> List[torch.Tensor]:
        """Start recording the timesteps of every call into a new list, returned."""
        self.recorded_timesteps = []
        return self.recorded_timesteps

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        if class_labels is None:
            raise ValueError("expected class_labels: the exact Gaussian predictor is class-conditional")
        k = torch.as_tensor(timestep, dtype=torch.float64, device=sample.device).reshape(-1).expand(len(sample))
        if self.recorded_timesteps is not None:
            self.recorded_timesteps.append(k.detach().cpu().clone())
        eps = self.classes.eps(sample, self.classes.sde.continuous_time(k), class_labels).to(sample.dtype)
        return UNet2DOutput(sample=eps) if return_dict else (eps,)


def binary_gaussian_classes(
    seed: int = 3, shape: Tuple[int, int, int] = (1, 4, 4), smallest_scale: float = 0.02, largest_scale: float = 0.5,
    mean_spread: float = 0.6,
) -> ExactGaussianClasses:  # fmt: skip
    """Two classes of `shape` (16 values by default) whose covariance has scales geometric from `smallest_scale` to
    `largest_scale` in a random rotation, and means uniform in `[-mean_spread / 2, mean_spread / 2]^D`: the QA review's
    model, where fine directions (scale 0.02, told apart below t = 0.01) carry much of the log-likelihood ratio.
    Drawn with numpy's generator (the same on every machine); the rotation's QR signs fixed (`diag(R) > 0`)."""
    dimension = math.prod(shape)
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dimension, dimension)))
    rotation = torch.from_numpy(q * np.sign(np.diag(r)))
    scales = torch.from_numpy(np.geomspace(smallest_scale, largest_scale, dimension))
    means = torch.from_numpy((rng.random((2, dimension)) - 0.5) * mean_spread)
    return ExactGaussianClasses(means, scales, rotation, shape)

"""The trainers' objectives and samplers against their reference formulas (a review of `training/`)."""

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from diffusion_classifiers.models import build_vit_encoder
from diffusion_classifiers.training import (
    DenoisingLoss,
    DINOLoss,
    DINOModel,
    RCDiTLoss,
    class_balanced_sampler,
    nt_xent_loss,
)
from diffusion_classifiers.training.patch_masks import random_patch_mask, standardize_patches


class _RecordingDenoiser(nn.Module):
    """Predicts zero noise and records what it was called with."""

    def forward(self, noisy, timesteps, class_labels=None):
        self.noisy, self.timesteps, self.class_labels = noisy, timesteps, class_labels
        return type("Output", (), {"sample": torch.zeros_like(noisy)})()


def test_denoising_loss_is_the_ddpm_objective_with_the_papers_snr_weights():
    # reference: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t ~ U{0..T-1}, one t per image for all its channels;
    # weights on the noise error: 1, min(SNR, gamma) / SNR (Hang et al. 2023), max(1, 1 / SNR) (Salimans & Ho 2022)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean = torch.rand(256, 3, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = _RecordingDenoiser()
    for weighting in ("epsilon", "min_snr", "truncated_snr"):
        torch.manual_seed(1)
        value = DenoisingLoss(scheduler, loss_weighting=weighting, snr_gamma=5.0)(model, (clean,))
        torch.manual_seed(1)  # the loss draws the noise, then the timesteps
        noise, timesteps = torch.randn_like(clean), torch.randint(0, 1000, (256,))
        alpha_bar = scheduler.alphas_cumprod[timesteps].double()
        noisy = alpha_bar.sqrt().view(-1, 1, 1, 1) * clean + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * noise
        snr = alpha_bar / (1 - alpha_bar)
        weight = {
            "epsilon": torch.ones_like(snr),
            "min_snr": snr.clamp(max=5.0) / snr,
            "truncated_snr": (1 / snr).clamp(min=1.0),
        }[weighting]
        expected = (noise.double().pow(2).flatten(1).mean(1) * weight).mean()
        assert torch.equal(model.timesteps, timesteps)
        # float32 arithmetic against a float64 reference: float32's default tolerances of assert_close
        torch.testing.assert_close(model.noisy, noisy.float())
        torch.testing.assert_close(value.double(), expected, rtol=1.3e-6, atol=0.0)


def test_label_dropout_replaces_that_fraction_by_the_null_class_and_keeps_the_others():
    model, n, rate = _RecordingDenoiser(), 40_000, 0.3
    labels = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    DenoisingLoss(DDPMScheduler(), conditional=True, label_dropout=rate, null_class=5)(
        model, (torch.zeros(n, 1, 1, 1), labels)
    )
    dropped = model.class_labels == 5
    assert torch.equal(model.class_labels[~dropped], labels[~dropped])
    # a binomial fraction: within 5 standard deviations sqrt(p (1 - p) / n) = 0.0023
    assert abs(dropped.double().mean().item() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)


def test_class_balanced_sampler_draws_every_class_equally_often_and_replays_each_epoch():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    sampler = class_balanced_sampler(labels, 3, seed=3)
    counts, orders = torch.zeros(3, dtype=torch.float64), []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        orders.append(order)
        counts += torch.bincount(labels[order], minlength=3)
    frequencies, draws = counts / counts.sum(), counts.sum().item()
    # multinomial frequencies of p = 1/3 over 20,000 draws: within 5 standard deviations sqrt(p (1 - p) / draws)
    assert (frequencies - 1 / 3).abs().max() < 5 * math.sqrt(1 / 3 * 2 / 3 / draws)
    sampler.set_epoch(7)
    assert torch.equal(torch.tensor(list(sampler)), orders[7])
    assert not torch.equal(orders[0], orders[1])


def test_nt_xent_is_the_loop_written_reference_at_any_temperature():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    for temperature in (0.1, 0.5):
        total = 0.0
        for i in range(12):
            positive = (i + 6) % 12
            logits = [z[i] @ z[k] / temperature for k in range(12) if k != i]
            total += -(z[i] @ z[positive] / temperature - torch.logsumexp(torch.stack(logits), 0))
        # float32 cosines / 0.1 are up to 10 in magnitude: a relative error of a few float32 eps
        torch.testing.assert_close(nt_xent_loss(z1, z2, temperature).double(), total / 12, rtol=1e-5, atol=0.0)


class _ShiftedViews(nn.Module):
    """A deterministic 'augmentation': call k adds 0.1 k, and the views are recorded."""

    def __init__(self):
        super().__init__()
        self.views = []

    def forward(self, images):
        self.views.append(images + 0.1 * len(self.views))
        return self.views[-1]


def test_dino_loss_centre_and_temperatures_follow_the_paper():
    # DINO (Caron et al. 2021): teacher sees the 2 global views, the student every view; cross-entropy between
    # softmax((teacher - centre) / tau_t) and softmax(student / tau_s) over pairs of different views; then
    # centre <- m centre + (1 - m) mean(teacher logits) (here from the first batch's mean, then with m)
    torch.manual_seed(0)
    encoder = build_vit_encoder(16, 1, hidden_size=32, num_layers=1, num_heads=2, patch_size=4)
    model = DINOModel(encoder, out_dim=32, hidden_dim=16, bottleneck_dim=8).train()
    views, local = _ShiftedViews(), _ShiftedViews()
    loss = DINOLoss(views, local, num_local_views=2, student_temperature=0.1, teacher_temperature=0.04,
                    warmup_teacher_temperature=0.02, warmup_teacher_temperature_steps=4, center_momentum=0.9,
                    teacher_momentum=0.99)  # fmt: skip
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for call in range(3):
        centre = model.center.clone()
        value = loss(model, (images,))
        global_views = torch.cat(views.views[-2:])
        all_views = [global_views, *local.views[-2:]]
        with torch.no_grad():
            student = F.log_softmax(model(torch.cat(all_views)) / 0.1, dim=-1).chunk(4)
            teacher_logits = model.teacher(global_views)
        temperature = 0.02 + int(model.teacher_updates) / 4 * (0.04 - 0.02)
        teacher = F.softmax((teacher_logits - centre) / temperature, dim=-1).chunk(2)
        terms = [-(t * s).sum(-1).mean() for a, t in enumerate(teacher) for b, s in enumerate(student) if a != b]
        assert len(terms) == 2 * 4 - 2
        torch.testing.assert_close(value.detach(), torch.stack(terms).mean())
        momentum = 0.0 if call == 0 else 0.9
        torch.testing.assert_close(model.center, momentum * centre + (1 - momentum) * teacher_logits.mean(0, True))
        value.backward()  # no optimizer: the teacher's momentum steps still happen, one per call (update_every=1)
    assert int(model.teacher_updates) == 2  # none before the centre exists, then one per call


def test_patch_masks_hide_the_rounded_ratio_of_whole_patches_uniformly():
    generator = torch.Generator().manual_seed(0)
    hidden = random_patch_mask(torch.Size([4000, 3, 8, 8]), 2, 0.5, "cpu", generator)
    assert hidden.shape == (4000, 1, 8, 8)
    patches = hidden.view(4000, 4, 2, 4, 2)
    assert (patches == patches[:, :, :1, :, :1]).all()  # whole patches, one value per patch
    assert (patches[:, :, 0, :, 0].sum((1, 2)) == 8).all()  # round(0.5 * 16) patches of every image
    # each patch hidden with probability 1/2: within 5 standard deviations sqrt(1/4 / 4000) = 0.0079
    assert (patches[:, :, 0, :, 0].double().mean(0) - 0.5).abs().max() < 5 * math.sqrt(0.25 / 4000)


def test_normalized_patch_targets_are_standardised_per_patch_over_its_channels():
    images = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)).double() * 3 + 5
    columns = F.unfold(images, 4, stride=4)  # (N, C * 16, patches): one column per patch, its channels included
    mean, variance = columns.mean(1, keepdim=True), columns.var(1, keepdim=True, unbiased=False)
    expected = F.fold((columns - mean) / (variance + 1e-6).sqrt(), (8, 8), 4, stride=4)
    torch.testing.assert_close(standardize_patches(images, 4), expected)


def test_snr_weights_apply_to_noise_errors_and_hidden_patches_weigh_one():
    """Reviewed: with masking, truncated-SNR multiplied the hidden patches' errors against the clean image by a noise
    error's weight, up to ~25,000 at t = 999."""
    loss = RCDiTLoss(DDPMScheduler(), loss_weighting="truncated_snr", denoiser_mask_ratio=0.5, mask_patch_size=4)
    timesteps = torch.tensor([999, 10])
    target_is_noise = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    target_is_noise[:, :, :4] = True
    weights = loss.error_weights(timesteps, target_is_noise)
    noise_weights = loss.snr_weights(timesteps)
    assert noise_weights[0] > 1000 and noise_weights[1] == 1.0
    assert weights.shape == (2, 1, 8, 8)
    assert torch.equal(weights[:, :, 4:], torch.ones(2, 1, 4, 8))
    assert torch.equal(weights[:, :, :4], noise_weights.view(2, 1, 1, 1).expand(2, 1, 4, 8))
    assert torch.equal(loss.error_weights(timesteps, None), noise_weights.view(2, 1, 1, 1))

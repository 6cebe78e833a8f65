"""The RC-DiT recipe of issue 13: how r is read out, normalised and fed to the DiT, the diagnostics of its collapse, the encoder's
learning rate and view, and that every consumer sees the same r."""

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from torch.utils.data import TensorDataset

from diffusion_classifiers import RepresentationConditionedDiTPipeline
from diffusion_classifiers.models import (
    RepresentationConditionedDiTModel,
    build_vit_encoder,
    encode_representation,
    rc_dit_config,
    representation_of,
)
from diffusion_classifiers.training import (
    RCDiTJointModel,
    RCDiTLoss,
    TrainingArguments,
    rc_dit_monitor,
    recompute_representation_statistics,
    representation_diagnostics,
    train,
)
from diffusion_classifiers.training.loop import build_optimizer
from diffusion_classifiers.training.monitoring import MONITOR_HISTORY_NAME
from diffusion_classifiers.training.rc_dit_diagnostics import DIAGNOSTIC_TIMESTEP

SIZE, DIM = 16, 24


def encoder(seed=0):
    torch.manual_seed(seed)
    return build_vit_encoder(SIZE, 1, DIM, num_layers=1, num_heads=2, patch_size=4).eval()


def transformer(seed=0, **overrides):
    torch.manual_seed(seed)
    config = rc_dit_config("tiny", SIZE, 1, DIM, representation_readout="cls", representation_norm="batch")
    return RepresentationConditionedDiTModel(**{**config, **overrides}).eval()


def images(count=32, seed=0):
    return torch.rand(count, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_readouts_read_the_tokens_they_name():
    model, x = encoder(), images(4)
    with torch.no_grad():
        outputs = model(pixel_values=x)
        assert torch.equal(encode_representation(model, x, "pooler"), outputs.pooler_output)
        assert torch.equal(encode_representation(model, x, "cls"), outputs.last_hidden_state[:, 0])
        assert torch.allclose(encode_representation(model, x, "mean_patch"), outputs.last_hidden_state[:, 1:].mean(1))
    with pytest.raises(ValueError, match="expected a readout in"):
        encode_representation(model, x, "tanh")


def test_unknown_readout_or_norm_fails_at_construction():
    with pytest.raises(ValueError, match="representation_readout"):
        transformer(representation_readout="first")
    with pytest.raises(ValueError, match="representation_norm"):
        transformer(representation_norm="layer")


@pytest.mark.parametrize("injection", ["adaln_per_block", "token"])
def test_representation_injections_condition_on_r_and_keep_the_output_contract(injection):
    model = transformer(representation_norm="none", representation_injection=injection)
    with torch.no_grad():  # leave the zero init, so that every path of r reaches the output
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    x, r = images(3), torch.randn(3, DIM)
    num_patches = (SIZE // model.config.patch_size) ** 2
    with torch.no_grad():
        out = model(x, 30, r, output_hidden_states=True)
        assert out.sample.shape == x.shape
        assert all(h.shape == (3, num_patches, model.config.hidden_size) for h in out.hidden_states)  # patch tokens only
        assert not torch.allclose(out.sample, model(x, 30, r.flip(0)).sample)  # another image's r changes it
        # each sample's prediction depends on its own r only
        torch.testing.assert_close(out.sample[:1], model(x[:1], 30, r[:1]).sample)
        conditions = model.block_conditions(torch.full((3,), 30), r)
        t_emb = model.time_embedding(model.time_proj(torch.full((3,), 30)))
    assert len(conditions) == model.config.num_layers + 1
    if injection == "token":  # r reaches the blocks through attention only
        assert all(torch.equal(c, t_emb) for c in conditions)
    else:  # every block has its own projection of r, the output layer the shared one
        assert not torch.allclose(conditions[0], conditions[1])
        torch.testing.assert_close(conditions[-1], t_emb + model.representation_proj(r))
    # a new model predicts zero, whatever the injection
    fresh = transformer(representation_injection=injection)
    assert torch.equal(fresh(x, 30, r).sample, torch.zeros_like(x))


def test_unknown_representation_injection_fails():
    with pytest.raises(ValueError, match=r"representation_injection in \('adaln', 'adaln_per_block', 'token'\), got 'xattn'"):
        transformer(representation_injection="xattn")


def test_representation_of_is_the_standardised_readout_in_eval_mode():
    model, dit, x = encoder(), transformer(), images(8)
    norm = dit.representation_normalizer
    with torch.no_grad():
        norm.running_mean.normal_(0, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        expected = (encode_representation(model, x, "cls") - norm.running_mean) / (norm.running_var + norm.eps).sqrt()
        torch.testing.assert_close(representation_of(model, dit, x), expected)


def test_pipeline_encode_returns_the_r_the_denoiser_is_conditioned_on():
    model, dit, x = encoder(), transformer(), images(8)
    with torch.no_grad():
        dit.representation_normalizer.running_var.fill_(4.0)
        pipe = RepresentationConditionedDiTPipeline(model, dit, DDPMScheduler())
        pipe.set_progress_bar_config(disable=True)
        torch.testing.assert_close(pipe.encode(x), representation_of(model, dit, x))


@pytest.mark.parametrize("batch_size", [40, 16])
def test_recomputed_statistics_are_those_of_the_final_encoder(batch_size):
    """Over every image alike, whatever the batches (QA: batches of 256 and 2 were averaged as equals, and the spread
    between batch means was lost: variances off by 0.5-2.5x, means by 0.23 std)."""
    model, dit, x = encoder(), transformer(), images(40)
    recompute_representation_statistics(model, dit, x, batch_size=batch_size)
    raw = encode_representation(model, x, "cls").detach()
    norm = dit.representation_normalizer
    torch.testing.assert_close(norm.running_mean, raw.mean(0))
    torch.testing.assert_close(norm.running_var, raw.var(0))  # BatchNorm keeps the unbiased variance
    assert not dit.training and norm.momentum == 0.1


def test_statistics_over_part_of_the_images_read_them_spread_over_the_whole_set():
    """QA (a methods review): over `max_images` the first ones were read: of a class-sorted NDSB train split, 42 of
    its 121 classes."""
    model, dit, x = encoder(), transformer(), images(40)
    recompute_representation_statistics(model, dit, x, batch_size=4, max_images=10)
    raw = encode_representation(model, x[np.linspace(0, 39, 10).round().astype(int)], "cls").detach()
    torch.testing.assert_close(dit.representation_normalizer.running_mean, raw.mean(0))
    torch.testing.assert_close(dit.representation_normalizer.running_var, raw.var(0))


def test_diagnostics_tell_a_denoiser_that_reads_r_from_one_that_does_not():
    model, scheduler, x = encoder(), DDPMScheduler(), images(16)
    dit = transformer()
    with torch.no_grad():  # from zero init: the output layer and the modulations let r through
        for parameter in dit.parameters():
            parameter.normal_(0, 0.2)
    reads = representation_diagnostics(model, dit, scheduler, x)
    assert reads["own_vs_shuffled_gap"] != 0 and reads["representation_relative_spread"] > 0.01
    ignores = representation_diagnostics(model, transformer(), scheduler, x)  # zero init: predicts 0 for every r
    assert ignores["own_vs_shuffled_gap"] == 0
    assert ignores["denoising_error_own"] == ignores["denoising_error_null"]


@pytest.mark.parametrize("masked_target", ["pixels", "normalized_patches"])
def test_diagnostics_of_a_dit_that_redraws_hidden_patches_score_that_task(masked_target, caplog):
    """A DiT trained with hidden patches (train_rc_dit's default) is scored on hidden patches with the loss's target
    there; it was scored on whole images, inputs it never saw in training."""
    from diffusion_classifiers.training.patch_masks import hide_patches, random_patch_mask

    model, scheduler, x, dit = encoder(), DDPMScheduler(), images(8), transformer()  # zero init: predicts 0
    masked = representation_diagnostics(model, dit, scheduler, x, seed=3, mask_ratio=0.5, masked_target=masked_target)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=generator)
    hidden = random_patch_mask(x.shape, dit.config.patch_size, 0.5, "cpu", generator)
    noisy = scheduler.add_noise(x, noise, torch.full((8,), DIAGNOSTIC_TIMESTEP))
    _, target = hide_patches(noisy, noise, x, hidden, masked_target, dit.config.patch_size)
    assert masked["denoising_error_own"] == pytest.approx(target.square().mean().item(), rel=1e-6)
    assert masked["diagnostic_mask_ratio"] == 0.5
    whole = representation_diagnostics(model, dit, scheduler, x, seed=3)
    assert whole["denoising_error_own"] == pytest.approx(noise.square().mean().item(), rel=1e-6)
    with caplog.at_level(logging.INFO, logger="diffusion_classifiers.training.rc_dit_diagnostics"):
        rc_dit_monitor(x, scheduler, mask_ratio=0.5, masked_target=masked_target)(RCDiTJointModel(model, dit))
    assert "r: relative spread" in caplog.text and "with the own r" in caplog.text


def test_diagnostics_noise_to_the_same_fraction_of_any_schedule():
    """QA (training engineer): t = 100 was out of range for `--num_train_timesteps 100`, and every checkpoint of such
    an rc_dit_train.py run crashed, resumed or not."""
    from diffusion_classifiers.training.rc_dit_diagnostics import diagnostic_timestep

    assert [diagnostic_timestep(DDPMScheduler(num_train_timesteps=n)) for n in (1000, 100, 20, 2)] == [100, 10, 2, 1]
    short = DDPMScheduler(num_train_timesteps=100)
    x = images(8)
    diagnostics = rc_dit_monitor(x, short)(RCDiTJointModel(encoder(), transformer()))
    assert diagnostics["diagnostic_timestep"] == 10
    with pytest.raises(ValueError, match=r"timestep: expected 0 <= t < 100 \(the scheduler's timesteps\), got 100"):
        representation_diagnostics(encoder(), transformer(), short, x, timestep=100)


def test_monitor_warns_when_r_has_collapsed(caplog):
    same = images(1).expand(8, -1, -1, -1)  # one image eight times: r cannot vary
    joint = RCDiTJointModel(encoder(), transformer())
    with caplog.at_level(logging.WARNING):
        diagnostics = rc_dit_monitor(same, DDPMScheduler())(joint)
    assert diagnostics["representation_relative_spread"] < 1e-3
    assert "has collapsed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc_dit_monitor(images(8), DDPMScheduler())(joint)
    assert "has collapsed" not in caplog.text


def test_training_writes_the_monitor_history_at_each_checkpoint(tmp_path):
    joint = RCDiTJointModel(encoder(), transformer().train())
    args = TrainingArguments(output_dir=str(tmp_path), train_batch_size=8, max_train_steps=4, checkpointing_steps=2)
    monitor = rc_dit_monitor(images(16), DDPMScheduler())
    train(args, joint, TensorDataset(images(16)), RCDiTLoss(DDPMScheduler()), monitor=monitor)
    records = json.loads((tmp_path / MONITOR_HISTORY_NAME).read_text())
    assert [r["step"] for r in records] == [2, 4]
    assert {"representation_spread", "own_vs_shuffled_gap", "denoising_error_null"} <= set(records[0])


def test_token_readout_freezes_the_unused_pooler_and_keeps_it():
    joint = RCDiTJointModel(encoder(), transformer())
    assert joint.encoder.pooler is not None
    assert not any(p.requires_grad for p in joint.encoder.pooler.parameters())
    pooled = RCDiTJointModel(encoder(), transformer(representation_readout="pooler"))
    assert all(p.requires_grad for p in pooled.encoder.pooler.parameters())


def test_encoder_learning_rate_scale_makes_its_own_group():
    args = TrainingArguments(output_dir="unused", learning_rate=1e-3)
    joint = RCDiTJointModel(encoder(), transformer(), encoder_learning_rate_scale=3.0)
    optimizer = build_optimizer(args, joint, torch.device("cpu"))
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 3e-3]
    assert len(optimizer.param_groups[1]["params"]) == len(list(joint.encoder.parameters()))
    single = build_optimizer(args, RCDiTJointModel(encoder(), transformer()), torch.device("cpu"))
    assert len(single.param_groups) == 1  # as before the scale existed: older checkpoints resume
    with pytest.raises(ValueError, match="encoder_learning_rate_scale"):
        RCDiTJointModel(encoder(), transformer(), encoder_learning_rate_scale=0.0)


def test_encoder_view_changes_only_what_the_encoder_reads():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, noisy, timesteps, clean):
            seen.append(clean)
            return torch.zeros_like(noisy)

    batch = (images(4),)
    RCDiTLoss(DDPMScheduler(), encoder_view=lambda x: -x)(Recorder(), batch)
    RCDiTLoss(DDPMScheduler())(Recorder(), batch)
    assert torch.equal(seen[0], -batch[0]) and torch.equal(seen[1], batch[0])


def test_masked_patches_of_x_t_are_hidden_from_the_denoiser_and_reconstructed():
    from diffusion_classifiers.training.rc_dit import random_patch_mask

    hidden = random_patch_mask(torch.Size([5, 2, 8, 8]), 4, 0.5, "cpu")
    patches = hidden[:, :, ::4, ::4]  # one entry per 4 x 4 patch
    assert torch.equal(hidden, patches.repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert hidden.shape == (5, 1, 8, 8)  # broadcast over the channels: the same patches in each
    assert (patches.flatten(1).sum(1) == 2).all()  # 2 of each image's 4 patches

    clean, noise = images(6, seed=1), images(6, seed=2)
    noisy = clean + 10  # no pixel of it is 0
    loss = RCDiTLoss(DDPMScheduler(), denoiser_mask_ratio=0.75, mask_patch_size=4)
    masked, target, target_is_noise = loss.denoiser_input_and_target(noisy, noise, clean)
    hidden = masked == 0
    assert torch.equal(target_is_noise.expand_as(hidden), ~hidden)
    assert (hidden[:, :, ::4, ::4].flatten(1).sum(1) == 12).all()  # 0.75 of 16 patches
    assert torch.equal(masked[~hidden], noisy[~hidden])
    assert torch.equal(target[hidden], clean[hidden]) and torch.equal(target[~hidden], noise[~hidden])
    assert RCDiTLoss(DDPMScheduler()).denoiser_input_and_target(noisy, noise, clean) == (noisy, noise, None)
    torch.manual_seed(0)
    half = RCDiTLoss(DDPMScheduler(), denoiser_mask_ratio=0.5, mask_patch_size=4, denoiser_mask_probability=0.5)
    many_clean, many_noise = clean.repeat(20, 1, 1, 1), noise.repeat(20, 1, 1, 1)
    masked, _, _ = half.denoiser_input_and_target(many_clean + 10, many_noise, many_clean)
    hidden_patches = (masked == 0)[:, 0, ::4, ::4].flatten(1).sum(1)
    assert set(hidden_patches.tolist()) == {0, 8} and 0 < (hidden_patches == 8).sum() < 120  # whole images unmasked
    with pytest.raises(ValueError, match="denoiser_mask_ratio"):
        RCDiTLoss(DDPMScheduler(), denoiser_mask_ratio=1.0)
    with pytest.raises(ValueError, match="denoiser_mask_probability"):
        RCDiTLoss(DDPMScheduler(), denoiser_mask_probability=0.0)


def test_hidden_patches_can_be_reconstructed_standardised_per_patch():
    from diffusion_classifiers.training.rc_dit import standardize_patches

    clean = images(3, seed=1)
    clean[0, :, :4, :4] = 0.3  # a flat patch: all zero after standardising, not a division by zero
    standardized = standardize_patches(clean, 4)
    patch = clean[1, :, 4:8, :4]
    assert torch.allclose(standardized[1, :, 4:8, :4], (patch - patch.mean()) / (patch.var(unbiased=False) + 1e-6).sqrt())
    patches = standardized.unfold(2, 4, 4).unfold(3, 4, 4).flatten(-2)  # [N, C, 2, 2, 16]
    assert torch.allclose(patches.mean(-1), torch.zeros(()), atol=1e-6)
    assert torch.allclose(patches[1:].var(-1, unbiased=False), torch.ones(()), atol=1e-4)
    assert torch.equal(standardized[0, :, :4, :4], torch.zeros(1, 4, 4))
    noise = images(3, seed=2)
    loss = RCDiTLoss(DDPMScheduler(), denoiser_mask_ratio=0.5, mask_patch_size=4, masked_target="normalized_patches")
    masked, target, _ = loss.denoiser_input_and_target(clean + 10, noise, clean)
    hidden = masked == 0
    assert torch.equal(target[hidden], standardized[hidden]) and torch.equal(target[~hidden], noise[~hidden])
    with pytest.raises(ValueError, match="masked_target"):
        RCDiTLoss(DDPMScheduler(), masked_target="latents")


def test_redraw_hidden_patches_shows_the_dits_prediction_where_patches_are_hidden_and_the_target_elsewhere():
    from diffusion_classifiers.training import redraw_hidden_patches
    from diffusion_classifiers.training.rc_dit import rc_dit_sample_grid, standardize_patches

    model, x = RCDiTJointModel(encoder(), transformer()).eval(), images(4)
    generator = torch.Generator().manual_seed(0)
    target, redrawn, hidden = redraw_hidden_patches(model, x, DDPMScheduler(), 0.75, generator=generator)
    assert torch.equal(target, standardize_patches(x, 4)) and hidden.shape == (4, 1, SIZE, SIZE)
    assert (hidden[:, :, ::4, ::4].flatten(1).sum(1) == 12).all()  # 0.75 of the 16 tokens, as in training
    hidden = hidden.expand_as(x)
    assert torch.equal(redrawn[~hidden], target[~hidden])
    model.forward = lambda noisy, timesteps, clean: torch.full_like(noisy, 7.0)
    _, redrawn, hidden = redraw_hidden_patches(model, x, DDPMScheduler(), masked_target="pixels", generator=generator)
    hidden = hidden.expand_as(x)
    assert (redrawn[hidden] == 7.0).all() and torch.equal(redrawn[~hidden], x[~hidden])
    masks = [redraw_hidden_patches(model, x, DDPMScheduler(), generator=torch.Generator().manual_seed(1))[2] for _ in range(2)]
    assert torch.equal(*masks)  # the generator's: the same patches hidden in every grid of a run
    with pytest.raises(ValueError, match=r"expected images \[N, 1, H, W\] \(a pixel-space DiT\), got \(4, 3, 16, 16\)"):
        redraw_hidden_patches(model, x.expand(-1, 3, -1, -1), DDPMScheduler())
    with pytest.raises(ValueError, match="masked_target"):
        redraw_hidden_patches(model, x, DDPMScheduler(), masked_target="latents")
    with pytest.raises(ValueError, match=r"expected mask_ratio in \(0, 1\], got 0.0"):
        redraw_hidden_patches(model, x, DDPMScheduler(), mask_ratio=0.0)

    model = RCDiTJointModel(encoder(), transformer()).eval()
    for mask_ratio, rows in ((0.0, 2), (0.9, 4)):  # references and samples; then the target and the redrawn patches
        grid = rc_dit_sample_grid(images(2), DDPMScheduler(), num_images=2, num_inference_steps=2, mask_ratio=mask_ratio,
                                  masked_target="normalized_patches")(model)  # fmt: skip
        assert grid.height == rows * grid.width // 2


def test_a_pretrained_encoder_reads_its_processors_normalisation(tmp_path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from diffusion_classifiers.models import pretrained_pixel_values, pretrained_preprocessing

    torch.manual_seed(0)
    config = Dinov2Config(image_size=SIZE, patch_size=4, num_channels=3, hidden_size=DIM, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32)  # fmt: skip
    Dinov2Model(config).save_pretrained(tmp_path)
    BitImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(tmp_path)
    preprocessing = pretrained_preprocessing(str(tmp_path))
    assert preprocessing["image_size"] == [8, 8] and preprocessing["image_mean"][0] != 0
    dino = Dinov2Model.from_pretrained(tmp_path).eval()
    dit = transformer(in_channels=1, representation_norm="none", encoder_preprocessing=preprocessing)
    x = images(3)
    expected_pixels = pretrained_pixel_values(x, (8, 8), preprocessing["image_mean"], preprocessing["image_std"])
    with torch.no_grad():
        expected = dino(pixel_values=expected_pixels).last_hidden_state[:, 0]
        torch.testing.assert_close(representation_of(dino, dit, x), expected)
    RCDiTJointModel(dino, dit)  # a 3-channel encoder over 1-channel images: the preprocessing makes them RGB


def test_loss_weightings_weigh_each_timestep_by_its_snr():
    from diffusion_classifiers.training import DenoisingLoss

    scheduler = DDPMScheduler()
    timesteps = torch.tensor([0, 100, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    truncated = DenoisingLoss(scheduler, loss_weighting="truncated_snr").snr_weights(timesteps).double()
    torch.testing.assert_close(truncated, torch.maximum(1 / snr, torch.ones_like(snr)), rtol=1e-5, atol=0)
    assert truncated[0] == 1 and truncated[-1] > 1e3  # the noise loss at low noise, the x0 loss at high noise
    min_snr = DenoisingLoss(scheduler, loss_weighting="min_snr", snr_gamma=5.0).snr_weights(timesteps).double()
    torch.testing.assert_close(min_snr, torch.minimum(snr, torch.full_like(snr, 5.0)) / snr, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="expected loss_weighting in"):
        DenoisingLoss(scheduler, loss_weighting="v")


def test_a_pretrained_encoder_adapts_by_dino_through_its_processors_normalisation(tmp_path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from diffusion_classifiers.models import pretrained_preprocessing
    from diffusion_classifiers.training import train_contrastive_encoder

    torch.manual_seed(0)
    config = Dinov2Config(image_size=SIZE, patch_size=4, num_channels=3, hidden_size=DIM, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32)  # fmt: skip
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    BitImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(tmp_path / "dino")
    before = Dinov2Model.from_pretrained(tmp_path / "dino")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), train_batch_size=8, max_train_steps=2, lr_warmup_steps=0)
    preprocessing = pretrained_preprocessing(str(tmp_path / "dino"))
    adapted = train_contrastive_encoder(
        args, images(16), Dinov2Model.from_pretrained(tmp_path / "dino"), "dino", preprocessing=preprocessing,
        out_dim=32, hidden_dim=16, bottleneck_dim=8,
    )  # fmt: skip  grayscale images, an RGB model: the preprocessing bridges them
    patch_weight = adapted.embeddings.patch_embeddings.projection.weight
    assert not torch.equal(patch_weight, before.embeddings.patch_embeddings.projection.weight)

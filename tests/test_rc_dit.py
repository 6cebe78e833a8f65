import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from torch.utils.data import TensorDataset

from diffusion_classifiers import DiffusionClassifierPipeline, RepresentationConditionedDiTPipeline
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.models import (
    RCDiTJointModel,
    RCDiTLoss,
    RepresentationConditionedDiTModel,
    build_vit_encoder,
    rc_dit_config,
)
from diffusion_classifiers.pipelines.pipeline_rc_dit import REPRESENTATION_FEATURE
from diffusion_classifiers.probing import fit_probe_grid
from diffusion_classifiers.training import TrainingArguments, train

from .conftest import PYTHON, REPO_ROOT, python_subprocess_env

SIZE, DIM = 16, 24


def tiny_transformer(seed=0, randomize=False, **overrides):
    torch.manual_seed(seed)
    model = RepresentationConditionedDiTModel(**rc_dit_config("tiny", SIZE, 1, DIM, **overrides))
    if randomize:  # leave the zero init, so every path (modulations, null representation) affects the output
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0, 0.2)
    return model.eval()


def tiny_encoder(seed=0, hidden_size=DIM):
    torch.manual_seed(seed)
    return build_vit_encoder(SIZE, 1, hidden_size, num_layers=1, num_heads=2, patch_size=4).eval()


def tiny_pipeline(seed=0):
    return RepresentationConditionedDiTPipeline(
        encoder=tiny_encoder(seed), transformer=tiny_transformer(seed, randomize=True), scheduler=DDPMScheduler()
    )


@pytest.fixture(scope="module")
def digits():
    return load_image_classification_data("digits", image_size=SIZE, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def test_forward_shapes_and_zero_init_predicts_zero():
    model = tiny_transformer()
    x = torch.randn(3, 1, SIZE, SIZE)
    r = torch.randn(3, DIM)
    out = model(x, torch.tensor([0, 10, 999]), r)
    assert out.sample.shape == x.shape
    assert torch.equal(out.sample, torch.zeros_like(x))
    assert model(x, 5, r, return_dict=False)[0].shape == x.shape
    config = rc_dit_config("S", 32, 3, 384)
    assert (config["hidden_size"], config["num_layers"], config["num_heads"], config["patch_size"]) == (384, 12, 6, 2)
    assert rc_dit_config("B", 32, 3, 768)["hidden_size"] == 768


def test_randomized_model_depends_on_timestep_and_representation():
    model = tiny_transformer(randomize=True)
    x, r = torch.randn(2, 1, SIZE, SIZE), torch.randn(2, DIM)
    with torch.no_grad():
        base = model(x, 100, r).sample
        assert not torch.allclose(base, model(x, 500, r).sample)
        assert not torch.allclose(base, model(x, 100, r + 1).sample)
        # per-sample timesteps equal one call per sample
        per_sample = model(x, torch.tensor([100, 500]), r).sample
        torch.testing.assert_close(per_sample[1:], model(x[1:], 500, r[1:]).sample)


def test_null_representation_used_when_representation_is_none():
    model = tiny_transformer(randomize=True)
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        unconditional = model(x, 50).sample
        explicit_null = model(x, 50, model.null_representation[None].expand(2, -1)).sample
        conditional = model(x, 50, torch.randn(2, DIM)).sample
    assert torch.equal(unconditional, explicit_null)
    assert not torch.allclose(unconditional, conditional)


def test_rep_dropout_substitutes_null_in_training_mode_only():
    x, r = torch.randn(16, 1, SIZE, SIZE), torch.randn(16, DIM)
    always = tiny_transformer(randomize=True, rep_dropout=1.0)
    with torch.no_grad():
        null_out, cond_out = always(x, 50).sample, always(x, 50, r).sample
        assert not torch.allclose(null_out, cond_out)  # eval: no dropout
        always.train()
        torch.testing.assert_close(always(x, 50, r).sample, null_out)  # train, p = 1: all null

        half = tiny_transformer(randomize=True, rep_dropout=0.5).train()
        torch.manual_seed(3)
        first = half(x, 50, r).sample
        torch.manual_seed(3)
        torch.testing.assert_close(half(x, 50, r).sample, first)  # seeded by the global RNG
        half.eval()
        null_out, cond_out = half(x, 50).sample, half(x, 50, r).sample
    torch.manual_seed(3)
    dropped = torch.rand(16) < 0.5  # the draw the model made
    assert 0 < dropped.sum() < 16
    torch.testing.assert_close(first[dropped], null_out[dropped])
    torch.testing.assert_close(first[~dropped], cond_out[~dropped])


def test_representation_of_wrong_dimension_fails():
    model = tiny_transformer()
    with pytest.raises(ValueError, match=r"representation of shape \[2, 24\].*got \(2, 25\)"):
        model(torch.randn(2, 1, SIZE, SIZE), 5, torch.randn(2, DIM + 1))


def test_patch_size_that_does_not_divide_image_fails():
    with pytest.raises(ValueError, match="patch_size that divides sample_size=16, got patch_size=3"):
        RepresentationConditionedDiTModel(**rc_dit_config("tiny", SIZE, 1, DIM, patch_size=3))
    with pytest.raises(ValueError, match="RC-DiT size"):
        rc_dit_config("huge")


def test_encoder_hidden_size_mismatch_fails_at_construction():
    with pytest.raises(ValueError, match="encoder hidden size 16.*representation_dim 24"):
        RepresentationConditionedDiTPipeline(tiny_encoder(hidden_size=16), tiny_transformer(), DDPMScheduler())
    with pytest.raises(ValueError, match="encoder hidden size 16"):
        RCDiTJointModel(tiny_encoder(hidden_size=16), tiny_transformer())


# ---------------------------------------------------------------------------------------------------------------
# Joint training
# ---------------------------------------------------------------------------------------------------------------


def _train_joint(tmp_path, freeze_encoder):
    torch.manual_seed(0)
    images = torch.rand(32, 1, SIZE, SIZE) * 2 - 1
    model = RCDiTJointModel(tiny_encoder(), tiny_transformer().train(), freeze_encoder=freeze_encoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path), train_batch_size=8, max_train_steps=4, lr_warmup_steps=0, learning_rate=1e-3,
        adam_weight_decay=0.0, checkpointing_steps=1000,
    )  # no weight decay: with Adam, a weight only moves if its gradient was nonzero
    trained, _, summary = train(args, model, TensorDataset(images), RCDiTLoss(DDPMScheduler()))
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])}
    return changed, summary


def test_joint_training_sends_gradients_to_the_encoder(tmp_path):
    changed, summary = _train_joint(tmp_path / "joint", freeze_encoder=False)
    assert summary.global_step == 4 and np.isfinite(summary.final_loss)
    assert any(k.startswith("encoder.layers.0.attention.q_proj") for k in changed), sorted(changed)
    assert "encoder.pooler.dense.weight" in changed
    assert "transformer.blocks.0.norm1.linear.weight" in changed  # adaLN-Zero leaves zero after the first steps


def test_frozen_encoder_does_not_change(tmp_path):
    changed, _ = _train_joint(tmp_path / "frozen", freeze_encoder=True)
    assert changed and not any(k.startswith("encoder.") for k in changed)


def test_train_script_saves_a_loadable_pipeline(tmp_path, digits):
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        import train_rc_dit
    finally:
        sys.path.pop(0)
    out = tmp_path / "run"
    train_rc_dit.main([
        "--dataset", "digits", "--image_size", str(SIZE), "--dit_size", "tiny", "--encoder_hidden_size", "16",
        "--encoder_num_layers", "1", "--encoder_num_heads", "2", "--max_train_steps", "2", "--train_batch_size", "8",
        "--lr_warmup_steps", "0", "--output_dir", str(out),
    ])  # fmt: skip
    pipe = RepresentationConditionedDiTPipeline.from_pretrained(str(out))
    assert pipe.transformer.config.representation_dim == 16
    assert pipe.encode(digits["test"].images[:3]).shape == (3, 16)
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------------------


def test_encode_accepts_pil_and_tensors(digits):
    pipe = tiny_pipeline()
    images = digits["test"].images[:4]
    r = pipe.encode(images)
    assert r.shape == (4, DIM) and r.dtype == torch.float32
    torch.testing.assert_close(r[1:2], pipe.encode(images[1:2]))
    as_uint8 = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    from_pil = pipe.encode([Image.fromarray(a, mode="L") for a in as_uint8])
    torch.testing.assert_close(from_pil, pipe.encode(list(as_uint8)))


def test_classification_needs_a_head():
    with pytest.raises(ValueError, match="no `head`"):
        tiny_pipeline()(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="no `head`"):
        tiny_pipeline().class_names


def test_save_and_load_in_fresh_process_gives_identical_outputs(digits, tmp_path):
    pipe = tiny_pipeline()
    features = {split: {REPRESENTATION_FEATURE: pipe.encode(digits[split].images)} for split in ("train", "val")}
    probe = fit_probe_grid(
        features["train"], digits["train"].labels, features["val"], digits["val"].labels,
        class_names=digits["train"].class_names, pool=None,
    )  # fmt: skip
    pipe.register_modules(head=probe.head)
    assert pipe.class_names == [str(i) for i in range(10)]
    test_images = digits["test"].images[:16]
    out = pipe(test_images)
    torch.testing.assert_close(out.probs, probe.head(pipe.encode(test_images)).softmax(-1))
    assert (pipe(digits["test"].images).label_ids == digits["test"].labels).float().mean() > 0.5

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusion_classifiers.models.rc_dit", "RepresentationConditionedDiTModel"]
    assert index["encoder"] == ["transformers", "ViTModel"]
    assert index["head"] == ["diffusion_classifiers.models.linear_probe_head", "LinearProbeHead"]
    np.save(tmp_path / "images.npy", test_images.numpy())
    script = f"""
import numpy, torch
from diffusion_classifiers import DiffusionClassifierPipeline
pipe = DiffusionClassifierPipeline.from_pretrained({str(tmp_path / 'pipe')!r})
assert type(pipe).__name__ == "RepresentationConditionedDiTPipeline", type(pipe)
images = torch.from_numpy(numpy.load({str(tmp_path / 'images.npy')!r}))
numpy.save({str(tmp_path / 'r.npy')!r}, pipe.encode(images).numpy())
numpy.save({str(tmp_path / 'probs.npy')!r}, pipe(images).probs.numpy())
sample = pipe.generate(images[:2], guidance_scale=2.0, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
numpy.save({str(tmp_path / 'sample.npy')!r}, sample.images.numpy())
"""
    result = subprocess.run([PYTHON, "-c", script], env=python_subprocess_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "r.npy")), pipe.encode(test_images))
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "probs.npy")), out.probs)
    expected = pipe.generate(test_images[:2], 2.0, 3, generator=torch.Generator().manual_seed(1)).images
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "sample.npy")), expected)


def test_generate_shapes_and_determinism(digits):
    pipe = tiny_pipeline()
    refs = digits["test"].images[:3]
    a = pipe.generate(refs, guidance_scale=1.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    b = pipe.generate(refs, guidance_scale=1.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    c = pipe.generate(refs, guidance_scale=1.5, num_inference_steps=4, generator=torch.Generator().manual_seed(1)).images
    assert a.shape == (3, 1, SIZE, SIZE) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    listed = pipe.generate(refs, 1.5, 4, generator=generators).images
    assert listed.shape == a.shape
    arrays = pipe.generate(refs, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert arrays.images.shape == (3, SIZE, SIZE, 1)
    pils = pipe.generate(refs[0], num_inference_steps=2, output_type="pil", return_dict=False)[0]
    assert len(pils) == 1 and pils[0].size == (SIZE, SIZE) and pils[0].mode == "L"


def test_generate_applies_classifier_free_guidance(digits):
    """Reference: the same DDPM loop written out with eps = eps_uncond + w (eps_cond - eps_uncond)."""
    pipe, w, steps = tiny_pipeline(), 3.0, 3
    refs = digits["test"].images[:2]
    got = pipe.generate(refs, guidance_scale=w, num_inference_steps=steps, generator=torch.Generator().manual_seed(7)).images

    generator = torch.Generator().manual_seed(7)
    scheduler, model = DDPMScheduler(), pipe.transformer
    r = pipe.encode(refs)
    x = torch.randn(2, 1, SIZE, SIZE, generator=generator)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_cond, eps_uncond = model(x, t, r).sample, model(x, t).sample
            x = scheduler.step(eps_uncond + w * (eps_cond - eps_uncond), t, x, generator=generator).prev_sample
    # batched [cond; uncond] vs separate calls: float rounding only (a wrong formula is off by ~1e-1)
    torch.testing.assert_close(got, (x / 2 + 0.5).clamp(0, 1), atol=2e-4, rtol=1e-3)
    # w = 0 is unconditional sampling: the references do not matter
    u1 = pipe.generate(refs, 0.0, 2, generator=torch.Generator().manual_seed(0)).images
    u2 = pipe.generate(refs.flip(0), 0.0, 2, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(u1, u2)


def test_generate_rejects_bad_arguments():
    pipe = tiny_pipeline()
    refs = torch.zeros(2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="guidance_scale >= 0, got -0.5"):
        pipe.generate(refs, guidance_scale=-0.5)
    with pytest.raises(ValueError, match="num_inference_steps >= 1, got 0"):
        pipe.generate(refs, num_inference_steps=0)
    with pytest.raises(ValueError, match="1 channel.*got 3"):
        pipe.generate(torch.zeros(2, 3, SIZE, SIZE))

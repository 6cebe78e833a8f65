import importlib
import json
import re
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
from diffusion_classifiers.models import PrototypeHead, RepresentationConditionedDiTModel, build_vit_encoder, rc_dit_config
from diffusion_classifiers.pipelines import RepresentationConditionedDiTImageVariationPipeline
from diffusion_classifiers.pipelines.pipeline_rc_dit import REPRESENTATION_FEATURE
from diffusion_classifiers.probing import evaluate_protocols, fit_probe_grid
from diffusion_classifiers.training import RCDiTJointModel, RCDiTLoss, TrainingArguments, train

from .conftest import REPO_ROOT, python_subprocess_env, run_loading_script

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


def variation_of(pipe):
    return RepresentationConditionedDiTImageVariationPipeline.from_pipe(pipe)


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


def test_hidden_states_are_the_block_outputs():
    model = tiny_transformer(randomize=True)
    x, r = torch.randn(2, 1, SIZE, SIZE), torch.randn(2, DIM)
    with torch.no_grad():
        out = model(x, 30, r, output_hidden_states=True)
        assert model(x, 30, r).hidden_states is None
        torch.testing.assert_close(out.sample, model(x, 30, r).sample)
        num_patches = (SIZE // model.config.patch_size) ** 2
        assert len(out.hidden_states) == model.config.num_layers == 2
        assert all(h.shape == (2, num_patches, model.config.hidden_size) for h in out.hidden_states)
        # by hand: patch embedding, then each block with the conditioning
        tokens, emb = model.patch_embed(x), model.condition(torch.full((2,), 30), r)
        for block, hidden in zip(model.blocks, out.hidden_states):
            tokens = block(tokens, emb)
            torch.testing.assert_close(hidden, tokens)
        first = model.block_hidden_states(x, 30, r, num_blocks=1)
        assert len(first) == 1 and torch.equal(first[0], out.hidden_states[0])
        sample, hidden_states = model(x, 30, r, return_dict=False, output_hidden_states=True)
        assert torch.equal(hidden_states[1], out.hidden_states[1])
    with pytest.raises(ValueError, match=r"num_blocks in \[1, 2\]"):
        model.block_hidden_states(x, 30, r, num_blocks=3)


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


def example_script(name: str):
    """`examples/<name>.py` as a module, so its `main(argv)` runs in this process."""
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def rc_dit_train_script():
    return example_script("rc_dit_train")


def test_train_script_saves_a_loadable_pipeline(tmp_path, digits):
    rc_dit_train = rc_dit_train_script()
    out = tmp_path / "run"
    rc_dit_train.main([
        "--dataset", "digits", "--image_size", str(SIZE), "--dit_size", "tiny", "--encoder_hidden_size", "16",
        "--encoder_num_layers", "1", "--encoder_num_heads", "2", "--max_train_steps", "2", "--train_batch_size", "8",
        "--lr_warmup_steps", "0", "--output_dir", str(out),
    ])  # fmt: skip
    pipe = RepresentationConditionedDiTPipeline.from_pretrained(str(out))
    assert pipe.transformer.config.representation_dim == 16
    assert pipe.encode(digits["test"].images[:3]).shape == (3, 16)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 2
    # QA (training engineer): the settings not typed (defaults) were kept only in checkpoints, which pruning deletes
    assert summary["arguments"]["train_batch_size"] == 8 and summary["arguments"]["learning_rate"] > 0


def test_train_script_takes_a_pretrained_dinov2_encoder(tmp_path, digits):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    encoder_dir = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(
        image_size=SIZE, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )).save_pretrained(encoder_dir)  # fmt: skip
    rc_dit_train = rc_dit_train_script()
    args = ["--dataset", "digits", "--image_size", str(SIZE), "--dit_size", "tiny", "--max_train_steps", "1",
            "--train_batch_size", "8", "--encoder_name_or_path", str(encoder_dir)]  # fmt: skip
    rc_dit_train.main([*args, "--output_dir", str(tmp_path / "run")])
    pipe = RepresentationConditionedDiTPipeline.from_pretrained(str(tmp_path / "run"))
    assert type(pipe.encoder).__name__ == "Dinov2Model"
    assert pipe.encode(digits["test"].images[:2]).shape == (2, 16)
    with pytest.raises(ValueError, match="reads 1-channel images, the data has 3: pass --num_channels 1"):
        rc_dit_train.main([*args, "--num_channels", "3", "--output_dir", str(tmp_path / "rgb")])


def test_train_script_takes_an_rgb_dinov2_with_its_processor_over_grayscale_images(tmp_path, digits):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    encoder_dir = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(
        image_size=32, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )).save_pretrained(encoder_dir)  # fmt: skip
    BitImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(encoder_dir)
    rc_dit_train = rc_dit_train_script()
    rc_dit_train.main(["--dataset", "digits", "--image_size", str(SIZE), "--dit_size", "tiny", "--max_train_steps", "1",
                       "--train_batch_size", "8", "--encoder_name_or_path", str(encoder_dir),
                       "--output_dir", str(tmp_path / "run")])  # fmt: skip
    pipe = RepresentationConditionedDiTPipeline.from_pretrained(str(tmp_path / "run"))
    # the pipeline reads the DiT's 1-channel 16 px images; the encoder gets them as its processor prepares them
    assert (pipe.preprocessing.image_size, pipe.preprocessing.num_channels) == (SIZE, 1)
    assert pipe.transformer.config.encoder_preprocessing["image_size"] == [8, 8]
    assert pipe.encode(digits["test"].images[:2]).shape == (2, 16)


def test_train_script_refuses_an_encoder_folder_without_its_processor_that_cannot_read_the_data(tmp_path):
    """Without preprocessor_config.json the encoder reads the images as they are: a 32 px RGB DINOv2 over 16 px
    data trained every step and failed at the save (and a resume was refused); now nothing is trained."""
    from transformers import Dinov2Config, Dinov2Model

    encoder_dir = tmp_path / "dinov2-noproc"
    Dinov2Model(Dinov2Config(
        image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )).save_pretrained(encoder_dir)  # fmt: skip
    rc_dit_train = rc_dit_train_script()
    args = ["--dataset", "digits", "--image_size", str(SIZE), "--dit_size", "tiny", "--max_train_steps", "1",
            "--train_batch_size", "8", "--encoder_name_or_path", str(encoder_dir)]  # fmt: skip
    expected = (
        rf"encoder '{re.escape(str(encoder_dir))}' has no preprocessor_config.json \(its image processor\), so it would read the images "
        r"as they are, but it reads 32 px images, the data has 16 px: pass --image_size 32, or add the image processor"
    )
    with pytest.raises(ValueError, match=expected):
        rc_dit_train.main([*args, "--num_channels", "3", "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="reads 3-channel images, the data has 1; it reads 32 px images, the data has "
                                         "16 px: pass --num_channels 3 --image_size 32"):
        rc_dit_train.main([*args, "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # before any step
    # its image processor makes it read the same data
    from transformers import BitImageProcessor

    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(encoder_dir)
    rc_dit_train.main([*args, "--output_dir", str(tmp_path / "run")])
    assert RepresentationConditionedDiTPipeline.from_pretrained(str(tmp_path / "run")).preprocessing.image_size == SIZE


def test_train_script_refuses_an_unreadable_processor_file(tmp_path):
    from diffusion_classifiers.training import encoder_preprocessing_from_args
    from transformers import Dinov2Config

    encoder_dir = tmp_path / "dinov2"
    Dinov2Config(image_size=16, patch_size=4, num_channels=1, hidden_size=16).save_pretrained(encoder_dir)
    (encoder_dir / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"--encoder_name_or_path {re.escape(str(encoder_dir))}: cannot read its preprocessor_config.json"):
        encoder_preprocessing_from_args(type("Args", (), {"encoder_name_or_path": str(encoder_dir)})())


@pytest.mark.parametrize("architecture", ["resnet", "bert"])
def test_train_scripts_refuse_an_encoder_of_another_architecture(tmp_path, architecture):
    from transformers import BertConfig, ResNetConfig

    config = {"resnet": ResNetConfig, "bert": BertConfig}[architecture]()
    config.save_pretrained(tmp_path / architecture)
    expected = (
        rf"--encoder_name_or_path {re.escape(str(tmp_path / architecture))}: a '{architecture}' model \({type(config).__name__}\), not an "
        r"image encoder this trainer supports; expected one of ViT \('vit'\), DINOv2 \('dinov2'\), DINOv2 with "
        r"registers \('dinov2_with_registers'\)"
    )
    args = ["--dataset", "digits", "--image_size", str(SIZE), "--max_train_steps", "1", "--train_batch_size", "8",
            "--encoder_name_or_path", str(tmp_path / architecture), "--output_dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(ValueError, match=expected):
        rc_dit_train_script().main([*args, "--dit_size", "tiny"])
    with pytest.raises(ValueError, match=expected):
        contrastive_baseline_script().main(args)


def contrastive_baseline_script():
    return example_script("rc_dit_train_contrastive_baseline")


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


def test_save_and_load_gives_identical_outputs(digits, tmp_path):
    pipe = tiny_pipeline()
    train, val = digits["train"], digits["val"]
    head = pipe.fit_linear_probe(train.images, train.labels, val.images, val.labels, class_names=train.class_names)
    features = {split: {REPRESENTATION_FEATURE: pipe.encode(digits[split].images)} for split in ("train", "val")}
    probe = fit_probe_grid(  # what fit_linear_probe runs
        features["train"], train.labels, features["val"], val.labels, class_names=train.class_names, pool=None
    )
    assert pipe.head is head and torch.equal(head.linear.weight, probe.head.linear.weight)
    assert pipe.class_names == [str(i) for i in range(10)]
    test_images = digits["test"].images[:16]
    out = pipe(test_images)
    torch.testing.assert_close(out.probs, probe.head(pipe.encode(test_images)).softmax(-1))
    assert (pipe(digits["test"].images).label_ids == digits["test"].labels).float().mean() > 0.5

    pipe.save_pretrained(tmp_path / "pipe")
    prototypes = tiny_pipeline(seed=1)  # the other head type, loaded by the same script
    prototypes.fit_prototypes(digits["train"].images[:100], digits["train"].labels[:100], class_names=[f"d{k}" for k in range(10)])
    prototypes.save_pretrained(tmp_path / "prototypes")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["transformer"] == ["rc_dit", "RepresentationConditionedDiTModel"]  # custom components (remote_code)
    assert index["encoder"] == ["transformers", "ViTModel"]
    assert index["head"] == ["linear_probe_head", "LinearProbeHead"]
    np.save(tmp_path / "images.npy", test_images.numpy())
    script = f"""
import numpy, torch
from diffusion_classifiers import DiffusionClassifierPipeline
pipe = DiffusionClassifierPipeline.from_pretrained({str(tmp_path / 'pipe')!r})
assert type(pipe).__name__ == "RepresentationConditionedDiTPipeline", type(pipe)
images = torch.from_numpy(numpy.load({str(tmp_path / 'images.npy')!r}))
numpy.save({str(tmp_path / 'r.npy')!r}, pipe.encode(images).numpy())
numpy.save({str(tmp_path / 'probs.npy')!r}, pipe(images).probs.numpy())
from diffusion_classifiers.pipelines import RepresentationConditionedDiTImageVariationPipeline
variation = RepresentationConditionedDiTImageVariationPipeline.from_pretrained({str(tmp_path / 'pipe')!r})
assert "head" not in variation.components, variation.components
sample = variation(images[:2], guidance_scale=2.0, num_inference_steps=3, generator=torch.Generator().manual_seed(1))
numpy.save({str(tmp_path / 'sample.npy')!r}, sample.images.numpy())
prototypes = DiffusionClassifierPipeline.from_pretrained({str(tmp_path / 'prototypes')!r})
assert type(prototypes.head).__name__ == "PrototypeHead", type(prototypes.head)
numpy.save({str(tmp_path / 'prototype_probs.npy')!r}, prototypes(images).probs.numpy())
"""
    run_loading_script(script)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "r.npy")), pipe.encode(test_images))
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "probs.npy")), out.probs)
    expected = variation_of(pipe)(test_images[:2], 2.0, 3, generator=torch.Generator().manual_seed(1)).images
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "sample.npy")), expected)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "prototype_probs.npy")), prototypes(test_images).probs)


def test_generate_shapes_and_determinism(digits):
    pipe = variation_of(tiny_pipeline())
    refs = digits["test"].images[:3]
    a = pipe(refs, guidance_scale=1.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    b = pipe(refs, guidance_scale=1.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    c = pipe(refs, guidance_scale=1.5, num_inference_steps=4, generator=torch.Generator().manual_seed(1)).images
    assert a.shape == (3, 1, SIZE, SIZE) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    listed = pipe(refs, 1.5, 4, generator=generators).images
    assert listed.shape == a.shape
    arrays = pipe(refs, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert arrays.images.shape == (3, SIZE, SIZE, 1)
    pils = pipe(refs[0], num_inference_steps=2, output_type="pil", return_dict=False)[0]
    assert len(pils) == 1 and pils[0].size == (SIZE, SIZE) and pils[0].mode == "L"


def test_generate_applies_classifier_free_guidance(digits):
    """Reference: the same DDPM loop written out with eps = eps_uncond + w (eps_cond - eps_uncond)."""
    classifier, w, steps = tiny_pipeline(), 3.0, 3
    pipe = variation_of(classifier)
    refs = digits["test"].images[:2]
    got = pipe(refs, guidance_scale=w, num_inference_steps=steps, generator=torch.Generator().manual_seed(7)).images

    generator = torch.Generator().manual_seed(7)
    scheduler, model = DDPMScheduler(), pipe.transformer
    r = classifier.encode(refs)
    x = torch.randn(2, 1, SIZE, SIZE, generator=generator)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_cond, eps_uncond = model(x, t, r).sample, model(x, t).sample
            x = scheduler.step(eps_uncond + w * (eps_cond - eps_uncond), t, x, generator=generator).prev_sample
    # batched [cond; uncond] vs separate calls: float rounding only (a wrong formula is off by ~1e-1)
    torch.testing.assert_close(got, (x / 2 + 0.5).clamp(0, 1), atol=2e-4, rtol=1e-3)
    # w = 0 is unconditional sampling: the references do not matter
    u1 = pipe(refs, 0.0, 2, generator=torch.Generator().manual_seed(0)).images
    u2 = pipe(refs.flip(0), 0.0, 2, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(u1, u2)


def test_generate_rejects_bad_arguments():
    pipe = variation_of(tiny_pipeline())
    refs = torch.zeros(2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="guidance_scale >= 0, got -0.5"):
        pipe(refs, guidance_scale=-0.5)
    with pytest.raises(ValueError, match="num_inference_steps >= 1, got 0"):
        pipe(refs, num_inference_steps=0)
    with pytest.raises(ValueError, match="expected 1 or 3 channels, got 5"):  # 3 channels are converted as the contract says
        pipe(torch.zeros(2, 5, SIZE, SIZE))
    with pytest.raises(ValueError, match="output_type 'pt', 'np' or 'pil', got 'latent'"):
        pipe(refs, output_type="latent")
    with pytest.raises(ValueError, match=r"one generator per reference image \(2\), got 3"):
        pipe(refs, generator=[torch.Generator() for _ in range(3)])


def test_tqdm_disable_hides_the_rc_dit_pipelines_own_bars_unless_asked_for():
    """QA (session 58): diffusers' `progress_bar` passes `disable=False` on the main process, which overrode
    `TQDM_DISABLE=1` (set for this suite by conftest) in `pipe(x)`, `encode` and the image-variation pipeline."""
    script = (  # a new process: tqdm reads TQDM_DISABLE when it is imported, maybe before conftest set it here
        "from tests.test_rc_dit import tiny_pipeline, variation_of\n"
        "classifier = tiny_pipeline()\n"
        "for pipe in (classifier, variation_of(classifier)):\n"
        "    print(pipe.progress_bar(total=2).disable)\n"
        "    pipe.set_progress_bar_config(disable=False)\n"
        "    print(pipe.progress_bar(iterable=range(2)).disable)\n"
    )
    env = python_subprocess_env() | {"TQDM_DISABLE": "1"}
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env,
                           cwd=REPO_ROOT).stdout  # fmt: skip
    assert shown.split() == ["True", "False"] * 2


def test_variation_pipeline_shares_the_classifiers_models_and_is_not_a_classifier(tmp_path):
    classifier = tiny_pipeline().to(torch.bfloat16)
    pipe = variation_of(classifier)
    assert pipe.transformer is classifier.transformer and pipe.encoder is classifier.encoder
    assert classifier.transformer.dtype == torch.bfloat16  # from_pipe keeps the shared models' dtype
    assert not hasattr(classifier, "generate")  # one way to generate
    direct = RepresentationConditionedDiTImageVariationPipeline(
        **{k: classifier.components[k] for k in ("encoder", "transformer", "scheduler", "vae")}
    )
    refs = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    a = pipe(refs, 2.0, 2, generator=torch.Generator().manual_seed(0)).images
    b = direct(refs, 2.0, 2, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(a, b)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == [
        "pipeline_rc_dit_image_variation", type(pipe).__name__
    ]
    assert RepresentationConditionedDiTImageVariationPipeline.from_pretrained(tmp_path).vae is None
    with pytest.raises(ValueError, match="names pipeline 'RepresentationConditionedDiTImageVariationPipeline'; expected"):
        DiffusionClassifierPipeline.from_pretrained(tmp_path)  # generation is not classification


def test_a_variation_pipeline_keeps_the_progress_bar_settings_of_the_pipeline_it_is_made_from():
    classifier = tiny_pipeline()
    classifier.set_progress_bar_config(disable=True)
    assert variation_of(classifier)._progress_bar_config == {"disable": True}


# ---------------------------------------------------------------------------------------------------------------
# DiT block features and prototype classification
# ---------------------------------------------------------------------------------------------------------------


def test_dit_features_keys_shapes_and_determinism(digits):
    pipe = tiny_pipeline()
    images = digits["test"].images[:6]
    features = pipe.dit_features(images, timesteps=(10, 500), block_indices=[1, 0], noise_seed=3, batch_size=4)
    assert list(features) == [
        ("transformer_blocks.1", 10), ("transformer_blocks.0", 10), ("transformer_blocks.1", 500), ("transformer_blocks.0", 500),
    ]  # fmt: skip
    assert all(f.shape == (6, 32) and f.dtype == torch.float32 and f.device.type == "cpu" for f in features.values())
    again = pipe.dit_features(images, timesteps=(10, 500), block_indices=[0, 1], noise_seed=3)
    for key, value in features.items():  # batching does not change a feature
        torch.testing.assert_close(again[key], value)
    assert not torch.allclose(features[("transformer_blocks.0", 10)], features[("transformer_blocks.0", 500)])
    other_seed = pipe.dit_features(images, timesteps=(500,), block_indices=[0], noise_seed=4)
    assert not torch.allclose(other_seed[("transformer_blocks.0", 500)], features[("transformer_blocks.0", 500)])
    null = pipe.dit_features(images, timesteps=(500,), block_indices=[0], noise_seed=3, representation="null")
    assert not torch.allclose(null[("transformer_blocks.0", 500)], features[("transformer_blocks.0", 500)])
    tokens = pipe.dit_features(images[:2], timesteps=(10,), block_indices=[0], pool=None)
    assert tokens[("transformer_blocks.0", 10)].shape == (2, 16 * 32)  # 16 patches x hidden 32


def test_dit_features_are_the_transformer_block_outputs_on_seeded_noise(digits):
    from diffusion_classifiers.features import make_noise

    pipe = tiny_pipeline()
    images = digits["test"].images[:3]
    got = pipe.dit_features(images, timesteps=(200,), block_indices=[1], noise_seed=5)[("transformer_blocks.1", 200)]
    x_t = pipe.scheduler.add_noise(images, make_noise(1, images.shape[1:], 5).expand_as(images), torch.full((3,), 200))
    with torch.no_grad():
        out = pipe.transformer(x_t, 200, pipe.encode(images), output_hidden_states=True)
    torch.testing.assert_close(got, out.hidden_states[1].mean(dim=1))


def test_dit_features_feed_fit_probe_grid_and_evaluate_protocols(digits):
    pipe = tiny_pipeline()
    train, test = digits["train"], digits["test"]
    f_train = pipe.dit_features(train.images[:200], timesteps=(50,), block_indices=[0, 1])
    f_test = pipe.dit_features(test.images[:100], timesteps=(50,), block_indices=[0, 1])
    grid = fit_probe_grid(f_train, train.labels[:200], f_test, test.labels[:100], max_iter=50, device="cpu")
    assert grid.best_pair in f_train and grid.head.config.block.startswith("transformer_blocks.")
    key = ("transformer_blocks.1", 50)
    result = evaluate_protocols(
        {key: f_train[key]}, train.labels[:200], {key: f_test[key]}, test.labels[:100], num_classes=10, shots=(1, None),
        num_episodes=2, linear_probe=False,
    )  # fmt: skip
    assert result["feature"] == ["transformer_blocks.1", 50] and set(result["knn"]) == {"1", "all"}


def test_dit_features_reject_bad_arguments():
    pipe = tiny_pipeline()
    images = torch.zeros(2, 1, SIZE, SIZE)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=r"timestep 1000 is invalid: expected an integer in \[0, 1000\)"):
        pipe.dit_features(images, timesteps=(1000,))
    with pytest.raises(ValueError, match="expected distinct timesteps, got \\[5, 5\\]"):
        pipe.dit_features(images, timesteps=(5, 5))
    with pytest.raises(ValueError, match=r"block_indices in \[0, 2\).*got \[2\]"):
        pipe.dit_features(images, block_indices=[2])
    with pytest.raises(ValueError, match=r"distinct block_indices, got \[1, 1\]"):
        pipe.dit_features(images, block_indices=[1, 1])
    with pytest.raises(ValueError, match="representation 'encoder' or 'null', got 'none'"):
        pipe.dit_features(images, representation="none")
    with pytest.raises(ValueError, match="unknown pool 'max'; expected one of"):
        pipe.dit_features(images, pool="max")
    with pytest.raises(ValueError, match="expected batch_size to be a positive integer, got 0"):
        pipe.dit_features(images, batch_size=0)
    with pytest.raises(ValueError, match=r"expected 1 channels, got 3"):
        pipe.dit_feature_extractor.extract(torch.zeros(2, 3, SIZE, SIZE))
    handle.remove()
    assert calls == []  # every bad argument fails before any forward


def tiny_dinov2_encoder(num_channels=3, image_size=8, hidden_size=DIM):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(
        image_size=image_size, patch_size=4, num_channels=num_channels, hidden_size=hidden_size, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32,
    )).eval()  # fmt: skip


IMAGENET_PREPROCESSING = {"image_size": [8, 8], "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize("latent", [False, True])
def test_dit_features_read_the_dits_input_for_an_encoder_with_a_processors_preprocessing(digits, latent):
    """An encoder started from an RGB DINOv2 (`encoder_preprocessing`) reads the DiT's 1-channel images, as
    `pipe.preprocess` and `pipe.encode` do: dit_features checked them against the encoder's 3 channels."""
    from diffusion_classifiers.features import make_noise

    vae = tiny_vae() if latent else None
    size, channels = (SIZE // 2, 4) if latent else (SIZE, 1)
    torch.manual_seed(0)
    transformer = RepresentationConditionedDiTModel(
        **rc_dit_config("tiny", size, channels, DIM), encoder_preprocessing=IMAGENET_PREPROCESSING
    )
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.normal_(0, 0.2)
    transformer.eval()
    pipe = RepresentationConditionedDiTPipeline(tiny_dinov2_encoder(), transformer, DDPMScheduler(), vae=vae)
    images = digits["test"].images[:3]  # (3, 1, 16, 16)
    assert tuple(pipe.preprocess(images).shape) == (3, 1, SIZE, SIZE)
    got = pipe.dit_features(images, timesteps=(200,), block_indices=[1], noise_seed=5)[("transformer_blocks.1", 200)]
    x0 = pipe.dit_feature_extractor.to_transformer_space(images)
    x_t = pipe.scheduler.add_noise(x0, make_noise(1, x0.shape[1:], 5).expand_as(x0), torch.full((3,), 200))
    with torch.no_grad():
        out = pipe.transformer(x_t, 200, pipe.encode(images), output_hidden_states=True)
    torch.testing.assert_close(got, out.hidden_states[1].mean(dim=1))
    with pytest.raises(ValueError, match=r"expected 1 channels, got 3 .*the (DiT|VAE)'s"):
        pipe.dit_feature_extractor.extract(torch.zeros(2, 3, SIZE, SIZE))


def test_dit_features_pool_the_patch_grid_like_the_unet_features(digits):
    """"2x2" averages each quadrant of the 4x4 patch grid, channel-major as for the U-Net; eval mode inside."""
    pipe = RepresentationConditionedDiTPipeline(
        tiny_encoder(), tiny_transformer(randomize=True, rep_dropout=1.0), DDPMScheduler()
    )  # in train mode this transformer replaces every r by the null representation
    images, key = digits["test"].images[:3], ("transformer_blocks.0", 30)
    in_eval = pipe.dit_features(images, timesteps=(30,), block_indices=[0])[key]
    pipe.transformer.train()
    assert torch.equal(pipe.dit_features(images, timesteps=(30,), block_indices=[0])[key], in_eval)
    assert pipe.transformer.training  # the extractor restores the mode it found
    null = pipe.dit_features(images, timesteps=(30,), block_indices=[0], representation="null")[key]
    assert not torch.allclose(null, in_eval)
    tokens = pipe.dit_features(images, timesteps=(30,), block_indices=[0], pool=None)[key]
    grid = pipe.dit_features(images, timesteps=(30,), block_indices=[0], pool="2x2")[key]
    tokens = tokens.reshape(3, 2, 2, 2, 2, 32)  # (N, quadrant row, row in it, quadrant column, column in it, D)
    expected = tokens.mean(dim=(2, 4)).permute(0, 3, 1, 2).flatten(1)  # (N, D * 2 * 2)
    torch.testing.assert_close(grid, expected)


def test_prototype_head_classifies_and_survives_save_and_load(digits, tmp_path):
    pipe = tiny_pipeline()
    train = digits["train"]
    names = [f"digit {k}" for k in range(10)]
    head = pipe.fit_prototypes(train.images[:300], train.labels[:300], class_names=names, temperature=0.05)
    assert isinstance(pipe.head, PrototypeHead) and pipe.head is head and pipe.class_names == names
    test_images = digits["test"].images[:16]
    out = pipe(test_images)
    torch.testing.assert_close(out.probs, (head.similarities(pipe.encode(test_images)) / 0.05).softmax(-1))
    assert out.labels == [names[i] for i in out.label_ids.tolist()]
    accuracy = (pipe(digits["test"].images).label_ids == digits["test"].labels).float().mean()
    assert accuracy > 0.2  # a random tiny encoder's prototypes: 0.26, well above chance (0.1)

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["head"] == ["prototype_head", "PrototypeHead"]
    reloaded = RepresentationConditionedDiTPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert isinstance(reloaded.head, PrototypeHead) and reloaded.class_names == names
    assert torch.equal(reloaded(test_images).probs, out.probs) and reloaded.head.config.temperature == 0.05
    # (a fresh process loads a PrototypeHead pipeline in test_save_and_load_in_fresh_process_gives_identical_outputs)
    val = digits["val"]
    calibrated = pipe.fit_prototypes(train.images[:300], train.labels[:300], class_names=names,
                                     val_images=val.images[:100], val_labels=val.labels[:100])  # fmt: skip
    assert torch.equal(calibrated.prototypes, head.prototypes)
    similarities = calibrated.similarities(pipe.encode(val.images[:100]))

    def val_log_loss(temperature):
        return float(torch.nn.functional.cross_entropy(similarities / temperature, val.labels[:100]))

    assert val_log_loss(calibrated.config.temperature) < val_log_loss(0.1)  # fitted on the val images given
    assert pipe(test_images).labels == out.labels  # the temperature changes the probabilities, not the decisions


# ---------------------------------------------------------------------------------------------------------------
# Latent space: an optional AutoencoderKL
# ---------------------------------------------------------------------------------------------------------------


def tiny_vae(latent_channels=4):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=latent_channels, block_out_channels=(8, 16), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=SIZE,
    ).eval()  # fmt: skip


def test_latent_training_denoises_vae_latents_and_the_pipeline_round_trips(digits, tmp_path):
    from diffusion_classifiers.training import train_rc_dit

    vae = tiny_vae()
    args = TrainingArguments(output_dir=str(tmp_path / "train"), train_batch_size=8, max_train_steps=2, checkpointing_steps=10**9)
    encoder, transformer, scheduler, _ = train_rc_dit(
        args, digits["train"].images[:16], tiny_encoder(), dit_size="tiny", patch_size=2, vae=vae
    )
    assert (transformer.config.sample_size, transformer.config.in_channels) == (SIZE // 2, 4)
    pipe = RepresentationConditionedDiTPipeline(encoder, transformer, scheduler, vae=vae)
    images = digits["test"].images[:3]
    features = pipe.dit_features(images, timesteps=[10], block_indices=[0])
    assert features[("transformer_blocks.0", 10)].shape == (3, transformer.config.hidden_size)
    generated = variation_of(pipe)(images, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert generated.shape == (3, 1, SIZE, SIZE)  # decoded back to images

    pipe.save_pretrained(tmp_path / "pipe")
    loaded = RepresentationConditionedDiTImageVariationPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.vae is not None
    again = loaded(images, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(again, generated)
    pipe.register_modules(vae=tiny_vae(latent_channels=3))  # swapped in after the pipeline was built
    with pytest.raises(ValueError, match="vae latent_channels 3 does not match the transformer's in_channels 4"):
        pipe.dit_features(images, timesteps=[10], block_indices=[0])


@pytest.mark.parametrize("pretrained", [False, True])
def test_train_rc_dit_refuses_a_vae_of_other_channels_than_the_images_before_any_step(tmp_path, pretrained):
    """A 1-channel VAE over RGB images failed at the first step with a torch RuntimeError (DINOv2 encoder) or blamed
    the encoder (a new ViT)."""
    from diffusion_classifiers.training import train_rc_dit

    images = torch.rand(8, 3, SIZE, SIZE) * 2 - 1
    encoder = tiny_dinov2_encoder() if pretrained else build_vit_encoder(SIZE, 3, DIM, num_layers=1, num_heads=2)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), train_batch_size=8, max_train_steps=1)
    preprocessing = IMAGENET_PREPROCESSING if pretrained else None
    with pytest.raises(ValueError, match=r"the vae \(--vae\) reads 1-channel images \(its in_channels\), the training "
                                         r"images are 3-channel: pass --num_channels 1, or a VAE of 3 input channels"):
        train_rc_dit(args, images, encoder, dit_size="tiny", patch_size=2, vae=tiny_vae(), encoder_preprocessing=preprocessing)
    assert not (tmp_path / "run").exists()


def test_train_rc_dit_names_the_patch_size_and_the_vaes_factor_when_the_patches_do_not_tile(tmp_path):
    from diffusion_classifiers.training import train_rc_dit

    args = TrainingArguments(output_dir=str(tmp_path / "run"), train_batch_size=8, max_train_steps=1)
    images = torch.rand(8, 1, SIZE, SIZE) * 2 - 1
    with pytest.raises(ValueError, match=r"^--patch_size 3 does not divide the DiT's input of 8 px \(16 px images / the "
                                         r"VAE's factor 2\); use --patch_size 1, 2, 4 or 8$"):
        train_rc_dit(args, images, tiny_encoder(), dit_size="tiny", patch_size=3, vae=tiny_vae())
    with pytest.raises(ValueError, match=r"^--patch_size 4 \(the default of --dit_size tiny\) does not divide the DiT's "
                                         r"input of 10 px \(10 px images\); use --patch_size 1, 2, 5 or 10$"):
        train_rc_dit(args, torch.rand(8, 1, 10, 10) * 2 - 1, build_vit_encoder(10, 1, DIM, 1, 2, patch_size=5), dit_size="tiny")
    assert not (tmp_path / "run").exists()


def test_latents_apply_the_vaes_shift_factor_when_it_has_one():
    """SD3 / Flux VAEs: latents = (mode - shift_factor) * scaling_factor, decoded from latents / scale + shift;
    a VAE without a shift_factor only scales, as before."""
    from diffusers import AutoencoderKL

    from diffusion_classifiers.models import decode_latents, encode_latents

    images = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    plain = tiny_vae()
    assert plain.config.get("shift_factor") is None
    mode = plain.encode(images).latent_dist.mode()
    torch.testing.assert_close(encode_latents(plain, images, sample=False), mode * plain.config.scaling_factor, rtol=0, atol=0)
    torch.testing.assert_close(decode_latents(plain, mode), plain.decode(mode / plain.config.scaling_factor).sample, rtol=0, atol=0)

    shifted = AutoencoderKL.from_config(plain.config, scaling_factor=0.7, shift_factor=0.5)
    shifted.load_state_dict(plain.state_dict())
    shifted.eval()
    assert (shifted.config.scaling_factor, shifted.config.shift_factor) == (0.7, 0.5)
    torch.testing.assert_close(encode_latents(shifted, images, sample=False), (mode - 0.5) * 0.7)
    latents = torch.randn(2, 4, SIZE // 2, SIZE // 2)
    with torch.no_grad():
        expected = shifted.decode(latents / 0.7 + 0.5).sample
    torch.testing.assert_close(decode_latents(shifted, latents), expected)


def test_vae_whose_latent_channels_differ_from_the_transformer_fails():
    with pytest.raises(ValueError, match="vae latent_channels 4 does not match the transformer's in_channels 1"):
        RepresentationConditionedDiTPipeline(tiny_encoder(), tiny_transformer(), DDPMScheduler(), vae=tiny_vae())


def test_saved_encoder_loads_as_a_transformers_image_classifier(tmp_path):
    from transformers import AutoModelForImageClassification

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path)
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, subfolder="encoder", num_labels=3)
    assert classifier(pixel_values=torch.randn(2, 1, SIZE, SIZE)).logits.shape == (2, 3)
    torch.testing.assert_close(
        classifier.vit.embeddings.patch_embeddings.projection.weight,
        pipe.encoder.embeddings.patch_embeddings.projection.weight,
    )


def test_fit_linear_probe_follows_the_pipeline_progress_bar_setting(digits, capsys):
    """QA (an inference service): `set_progress_bar_config(disable=True)` left "Fitting probes" on stderr."""
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    train, val = digits["train"], digits["val"]
    pipe.fit_linear_probe(train.images[:40], train.labels[:40], val.images[:20], val.labels[:20])
    assert "Fitting probes" not in capsys.readouterr().err


def test_a_head_fit_with_another_count_of_labels_than_images_names_images_and_labels(digits, monkeypatch):
    """QA: `fit_prototypes(4 images, 3 labels)` said "expected features of shape [3, D]" after encoding them."""
    pipe = tiny_pipeline()
    train = digits["train"]
    monkeypatch.setattr(pipe, "_represent", lambda *args: pytest.fail("encoded before the counts were checked"))
    with pytest.raises(ValueError, match=r"^images and labels: expected one label per image, got 4 images and 3 lab"):
        pipe.fit_prototypes(train.images[:4], train.labels[:3])
    with pytest.raises(ValueError, match=r"^val_images and val_labels: expected one label per image, got 5 images"):
        pipe.fit_linear_probe(train.images[:4], train.labels[:4], train.images[4:9], train.labels[4:6])

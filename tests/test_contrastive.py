import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from diffusion_classifiers.models import (
    build_vit_encoder,
    encode_representation,
    load_pretrained_encoder,
    pretrained_pixel_values,
)
from diffusion_classifiers.training import (
    DINOHead,
    DINOLoss,
    DINOModel,
    SimCLRLoss,
    SimCLRModel,
    TrainingArguments,
    build_augmentation,
    cosine_teacher_momentum,
    dino_monitor,
    dino_target_diagnostics,
    nt_xent_loss,
    train,
    train_contrastive_encoder,
)

SIZE = 16


@pytest.fixture(scope="module")
def digits():
    """300 scikit-learn digits, 8x8 padded with background to 16x16, in [-1, 1]."""
    images = torch.tensor(load_digits().images[:300], dtype=torch.float32)[:, None] / 16 * 2 - 1
    return F.pad(images, (4, 4, 4, 4), value=-1.0)


def tiny_encoder(num_channels=1, seed=0):
    torch.manual_seed(seed)
    return build_vit_encoder(SIZE, num_channels, hidden_size=32, num_layers=1, num_heads=2, patch_size=4)


def args_for(tmp_path, steps=15, **overrides):
    defaults = dict(train_batch_size=32, max_train_steps=steps, learning_rate=1e-3, lr_warmup_steps=0, checkpointing_steps=1000)
    return TrainingArguments(output_dir=str(tmp_path), **{**defaults, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_channels", [1, 3])
def test_augmentation_keeps_shape_and_range_and_views_differ(num_channels):
    torch.manual_seed(0)
    images = torch.rand(8, num_channels, SIZE, SIZE) * 2 - 1
    augment = build_augmentation(SIZE, num_channels)
    first, second = augment(images), augment(images)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert first.min() >= -1 and first.max() <= 1
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, images)


def test_the_gpu_crop_is_one_batched_warp_and_the_cpu_views_are_those_of_before():
    import kornia.augmentation as K

    augment = build_augmentation(SIZE, 3)
    cpu_crop, cuda_crop = augment.pipeline[0], augment.cuda_pipeline[0]
    assert (cpu_crop.flags["cropping_mode"], cuda_crop.flags["cropping_mode"]) == ("slice", "resample")
    assert list(augment.pipeline)[1:] == list(augment.cuda_pipeline)[1:]  # the same steps after the crop
    before = torch.nn.Sequential(K.RandomResizedCrop((SIZE, SIZE), scale=(0.25, 1.0)), *list(augment.pipeline)[1:])
    images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    torch.manual_seed(0)
    expected = before(((images + 1) / 2).clamp(0, 1))  # the pipeline as built until 2026-12-04 (kornia's default crop)
    torch.manual_seed(0)
    assert torch.equal(augment(images), expected.clamp(0, 1) * 2 - 1)


def test_augmentation_rejects_wrong_channels_and_bad_settings():
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        build_augmentation(SIZE, 1)(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="num_channels 1 or 3"):
        build_augmentation(SIZE, 2)
    with pytest.raises(ValueError, match="crop_scale"):
        build_augmentation(SIZE, 1, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="strength"):
        build_augmentation(SIZE, 1, strength=-1)


# ---------------------------------------------------------------------------------------------------------------
# SimCLR
# ---------------------------------------------------------------------------------------------------------------


def test_nt_xent_matches_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    t = 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    expected = 0.0
    for i, positive in enumerate([2, 3, 0, 1]):
        logits = [float(z[i] @ z[j]) / t for j in range(4) if j != i]
        pos = float(z[i] @ z[positive]) / t
        expected += -pos + math.log(sum(math.exp(v) for v in logits))
    assert nt_xent_loss(z1, z2, temperature=t).item() == pytest.approx(expected / 4, rel=1e-5)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        SimCLRLoss(build_augmentation(SIZE, 1), temperature=-0.1)


def mean_loss(loss, model, batch, repeats=4):
    """The loss on a fixed batch, averaged over fresh views (train mode: batch statistics, as in training)."""
    torch.manual_seed(0)
    with torch.no_grad():
        return sum(loss(model.train(), batch).item() for _ in range(repeats)) / repeats


def test_simclr_loss_decreases_under_train(digits, tmp_path):
    augment = build_augmentation(SIZE, 1, strength=0.0, crop_scale=(0.7, 1.0), flip_p=0.0)
    model = SimCLRModel(tiny_encoder(), projection_dim=16, hidden_dim=32)
    loss = SimCLRLoss(augment, temperature=0.2)
    before = mean_loss(loss, model, (digits[:32],))
    model, _, _ = train(args_for(tmp_path, steps=60, lr_scheduler="constant"), model, TensorDataset(digits), loss)
    assert mean_loss(loss, model, (digits[:32],)) < before - 0.3


# ---------------------------------------------------------------------------------------------------------------
# DINO
# ---------------------------------------------------------------------------------------------------------------


def test_dino_teacher_starts_as_student_and_is_frozen():
    model = DINOModel(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16)
    for teacher, student in zip(model.teacher_parameters(), model.student_parameters()):
        assert torch.equal(teacher, student) and not teacher.requires_grad and student.requires_grad
    images = torch.rand(3, 1, SIZE, SIZE) * 2 - 1
    assert torch.allclose(model.teacher(images), model(images).detach())


def test_dino_head_gain_is_fixed_at_one_or_learned_per_prototype():
    features = torch.randn(5, 24)
    fixed = DINOHead(24, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    assert fixed.last_layer_gain is None and fixed(features).abs().max() <= 1 + 1e-6  # cosines
    torch.manual_seed(0)
    learned = DINOHead(24, out_dim=64, hidden_dim=32, bottleneck_dim=16, norm_last_layer=False)
    learned.load_state_dict({**fixed.state_dict(), "last_layer_gain": torch.ones(64, 1)})
    torch.testing.assert_close(learned(features), fixed(features))  # gain 1: the same head
    with torch.no_grad():
        learned.last_layer_gain[3] = 5.0
    torch.testing.assert_close(learned(features)[:, 3], 5 * fixed(features)[:, 3])
    assert learned.last_layer_gain.requires_grad
    model = DINOModel(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16, norm_last_layer=False)
    assert model.teacher_head.last_layer_gain is not None  # the teacher follows it like every other parameter


def test_dino_teacher_is_an_ema_of_the_student():
    model = DINOModel(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16)
    with torch.no_grad():
        for student in model.student_parameters():
            student.add_(torch.randn_like(student))
    before = [p.clone() for p in model.teacher_parameters()]
    model.update_teacher(0.9)
    for old, new, student in zip(before, model.teacher_parameters(), model.student_parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * student)
    assert int(model.teacher_updates) == 1


def test_dino_loss_updates_teacher_once_per_optimizer_step(digits):
    model = DINOModel(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16).train()
    loss = DINOLoss(build_augmentation(SIZE, 1), teacher_momentum=0.5, total_steps=None, update_every=2)
    optimizer = torch.optim.SGD(model.student_parameters(), lr=0.5)
    for call in range(5):  # updates before calls 2 and 4: after each optimizer step of 2 accumulated batches
        if call in (2, 4):
            expected = [0.5 * t + 0.5 * s for t, s in zip(model.teacher_parameters(), model.student_parameters())]
        value = loss(model, (digits[:8],))
        if call in (2, 4):
            for teacher, want in zip(model.teacher_parameters(), expected):
                torch.testing.assert_close(teacher, want.detach())
        value.backward()
        if call % 2 == 1:
            optimizer.step()
            optimizer.zero_grad()
    assert int(model.teacher_updates) == 2
    assert model.center.abs().sum() > 0


def test_a_resumed_dino_run_is_bitwise_the_uninterrupted_one(digits, tmp_path):
    # the teacher's momentum step at the first batch after a resume was skipped: one update lost per resume
    def run(output_dir, steps, **resume):
        model = DINOModel(tiny_encoder(), out_dim=16, hidden_dim=16, bottleneck_dim=8)
        loss = DINOLoss(build_augmentation(SIZE, 1), total_steps=4, update_every=2, teacher_momentum=0.9)
        settings = dict(train_batch_size=16, gradient_accumulation_steps=2, lr_scheduler="constant", checkpointing_steps=2)
        return train(args_for(output_dir, steps, **settings, **resume), model, TensorDataset(digits[:64]), loss)[0]

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 4, resume_from_checkpoint="latest")
    assert int(straight.teacher_updates) == int(resumed.teacher_updates) == 3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_cosine_teacher_momentum_schedule():
    assert cosine_teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_teacher_momentum(7, None, 0.99) == 0.99


def test_dino_loss_decreases_with_a_fixed_teacher_and_center(digits, tmp_path):
    """With momentum 1 and a frozen center the objective is plain distillation: the student must fit it."""
    augment = build_augmentation(SIZE, 1, strength=0.5, crop_scale=(0.5, 1.0), flip_p=0.0)
    model = DINOModel(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16)
    loss = DINOLoss(augment, teacher_momentum=1.0, center_momentum=1.0)
    before = mean_loss(loss, model, (digits[:32],))  # the first batch also initialises the center
    center = model.center.clone()
    model, _, _ = train(args_for(tmp_path, steps=30, lr_scheduler="constant"), model, TensorDataset(digits), loss)
    assert torch.equal(model.center, center)
    assert mean_loss(loss, model, (digits[:32],)) < before - 0.1


def test_dino_diagnostics_measure_how_much_the_targets_depend_on_the_image(digits, caplog):
    model = DINOModel(tiny_encoder(), out_dim=64, hidden_dim=32, bottleneck_dim=16).eval()
    images = digits[:32]
    fresh = dino_target_diagnostics(model, images, teacher_temperature=0.04)
    assert fresh["teacher_max_entropy"] == pytest.approx(math.log(64))
    assert 0 < fresh["teacher_target_entropy"] <= fresh["teacher_mean_target_entropy"] <= math.log(64) + 1e-6
    assert fresh["teacher_target_information"] == pytest.approx(
        fresh["teacher_mean_target_entropy"] - fresh["teacher_target_entropy"])
    assert fresh["representation_relative_spread"] > 0
    # a teacher head whose bottleneck ignores its input: one target for every image, no information, a warning
    with torch.no_grad():
        model.teacher_head.mlp[-1].weight.zero_()
        model.teacher_head.mlp[-1].bias.normal_()
    loss = DINOLoss(build_augmentation(SIZE, 1), teacher_temperature=0.04)
    with caplog.at_level("WARNING", logger="diffusion_classifiers.training.dino_diagnostics"):
        collapsed = dino_monitor(images, loss)(model)
    assert collapsed["teacher_target_information"] == pytest.approx(0, abs=1e-5)
    assert "barely depend on the image" in caplog.text
    with pytest.raises(ValueError, match="at least 2 images"):
        dino_target_diagnostics(model, images[:1], 0.04)


def test_dino_loss_rejects_bad_settings():
    augment = build_augmentation(SIZE, 1)
    with pytest.raises(ValueError, match="teacher_temperature"):
        DINOLoss(augment, teacher_temperature=0)
    with pytest.raises(ValueError, match="student_temperature"):
        DINOLoss(augment, student_temperature=-1)
    with pytest.raises(ValueError, match="local_augmentation"):
        DINOLoss(augment, num_local_views=2)
    with pytest.raises(TypeError, match="DINOModel"):
        DINOLoss(augment)(SimCLRModel(tiny_encoder()), (torch.zeros(2, 1, SIZE, SIZE),))


# ---------------------------------------------------------------------------------------------------------------
# train_contrastive_encoder
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_train_contrastive_encoder_returns_a_trained_eval_encoder(digits, tmp_path, method):
    encoder = tiny_encoder()
    initial = encode_representation(encoder.eval(), digits[:4]).detach()
    kwargs = dict(projection_dim=16, hidden_dim=32) if method == "simclr" else dict(out_dim=64, hidden_dim=32, bottleneck_dim=16, num_local_views=1)
    trained = train_contrastive_encoder(args_for(tmp_path, steps=3), digits[:64], encoder, method=method, flip_p=0.0, **kwargs)
    assert not trained.training
    assert all(p.requires_grad for p in trained.parameters())
    with torch.no_grad():
        representation = encode_representation(trained, digits[:4])
    assert representation.shape == (4, 32)
    assert not torch.allclose(representation, initial)
    assert (tmp_path / "checkpoint-3").is_dir()
    assert ((tmp_path / "monitor_history.json").is_file()) == (method == "dino")  # DINO's targets, per checkpoint


def test_train_contrastive_encoder_rejects_bad_input(digits, tmp_path):
    args = args_for(tmp_path, steps=1)
    with pytest.raises(ValueError, match="method"):
        train_contrastive_encoder(args, digits, tiny_encoder(), method="byol")
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        train_contrastive_encoder(args, digits.expand(-1, 3, -1, -1), tiny_encoder())
    with pytest.raises(ValueError, match="temperature"):
        train_contrastive_encoder(args, digits, tiny_encoder(), method="simclr", temperature=0.0)
    with pytest.raises(ValueError, match="unknown simclr option"):
        train_contrastive_encoder(args, digits, tiny_encoder(), method="simclr", out_dim=8)
    with pytest.raises(ValueError, match="training data image 3 contains NaN or inf"):
        train_contrastive_encoder(args, torch.cat([digits[:3], torch.full_like(digits[:1], float("nan"))]), tiny_encoder())
    with pytest.raises(ValueError, match=r"training data: image 0 has values in \[0, .*scaled to \[-1, 1\]"):
        train_contrastive_encoder(args, digits + 1, tiny_encoder())
    assert not any(tmp_path.iterdir())  # refused before training wrote anything


# ---------------------------------------------------------------------------------------------------------------
# Pretrained encoders
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("tiny-dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return path


@pytest.mark.parametrize("num_channels", [1, 3])
def test_load_pretrained_encoder_gives_cls_features(tiny_dinov2_dir, num_channels):
    encoder = load_pretrained_encoder(str(tiny_dinov2_dir))
    assert encoder.image_size == (28, 28)
    assert encoder.image_mean == pytest.approx((0.485, 0.456, 0.406))
    images = torch.rand(5, num_channels, SIZE, SIZE) * 2 - 1
    features = encoder.encode(images, batch_size=2)
    assert features.shape == (5, 32)
    pixel_values = encoder.preprocess(images)
    with torch.no_grad():
        expected = encoder.model(pixel_values=pixel_values).pooler_output  # Dinov2: the layer-normed CLS token
    torch.testing.assert_close(features, expected)


def test_pretrained_pixel_values_apply_imagenet_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    gray = torch.full((2, 1, 8, 8), 0.5)  # 0.75 in [0, 1]
    pixel_values = pretrained_pixel_values(gray, (8, 8), mean, std)
    assert pixel_values.shape == (2, 3, 8, 8)
    for c in range(3):
        torch.testing.assert_close(pixel_values[:, c], torch.full((2, 8, 8), (0.75 - mean[c]) / std[c]))
    assert pretrained_pixel_values(gray, (14, 14), mean, std).shape == (2, 3, 14, 14)
    with pytest.raises(ValueError, match="1 or 3"):
        pretrained_pixel_values(torch.zeros(2, 2, 8, 8), (8, 8), mean, std)


def test_example_script_saves_a_loadable_encoder(tmp_path):
    import importlib.util

    from transformers import ViTModel

    from .conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("train_contrastive", REPO_ROOT / "examples" / "rc_dit_train_contrastive_baseline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--output_dir", str(tmp_path), "--image_size", "16", "--max_train_steps", "2", "--train_batch_size", "16",
            "--encoder_hidden_size", "32", "--encoder_num_layers", "1", "--encoder_num_heads", "2", "--projection_dim", "8"]
    script.main(argv)
    encoder = ViTModel.from_pretrained(tmp_path)
    assert encoder.config.hidden_size == 32 and encoder.config.image_size == 16


def test_a_pretrained_dinov2_is_adapted_by_dino_through_its_processor(tiny_dinov2_dir, digits, tmp_path):
    # rc_dit_accuracy's second DINOv2 arm: 1-channel 16 px images, an RGB 28 px model with an ImageNet normalisation
    from transformers import AutoModel

    from diffusion_classifiers.models import pretrained_preprocessing

    preprocessing = pretrained_preprocessing(str(tiny_dinov2_dir))
    assert preprocessing["image_size"] == [28, 28]
    initial = load_pretrained_encoder(str(tiny_dinov2_dir)).encode(digits[:4])
    with torch.no_grad():  # the frozen arm and the adapted arm read the images the same way
        same_input = encode_representation(AutoModel.from_pretrained(tiny_dinov2_dir).eval(), digits[:4], preprocessing=preprocessing)
    torch.testing.assert_close(same_input, initial)
    adapted = train_contrastive_encoder(
        args_for(tmp_path, steps=2), digits[:64], AutoModel.from_pretrained(tiny_dinov2_dir), method="dino",
        preprocessing=preprocessing, out_dim=64, hidden_dim=32, bottleneck_dim=16, num_local_views=1,
    )  # fmt: skip
    with torch.no_grad():
        features = encode_representation(adapted, digits[:4], preprocessing=preprocessing)
    assert features.shape == initial.shape == (4, 32)
    assert not torch.allclose(features, initial)


def _example_script(name):
    import importlib.util

    from .conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _first_encoder_input(script, argv, monkeypatch):
    """The `pixel_values` the encoder that `script.main(argv)` trains is given at its first call (the first step)."""
    seen = []
    build = script.build_vit_encoder_from_args

    def build_and_watch(args, images):
        encoder = build(args, images)
        encoder.register_forward_pre_hook(lambda _, a, kw: seen.append(kw["pixel_values"].detach().clone()), with_kwargs=True)
        return encoder

    monkeypatch.setattr(script, "build_vit_encoder_from_args", build_and_watch)
    script.main(argv)
    return seen[0]


@pytest.mark.parametrize("num_channels", [1, 3])
def test_the_baseline_script_feeds_a_dinov2_encoder_what_rc_dit_train_feeds_it(tiny_dinov2_dir, tmp_path, monkeypatch, num_channels):
    """`--encoder_name_or_path <DINOv2>`: the baseline refused 1-channel data that rc_dit_train.py takes, and fed
    3-channel data raw, without the processor's resizing and ImageNet normalisation that RC-DiT training applies.
    With the augmentations made the identity, both scripts give the encoder the same tensor for the same batch."""
    from torch import nn

    from diffusion_classifiers.training import contrastive

    common = ["--dataset", "digits", "--image_size", "16", "--num_channels", str(num_channels), "--max_train_steps", "1",
              "--train_batch_size", "8", "--encoder_name_or_path", str(tiny_dinov2_dir), "--num_sample_images", "0",
              "--checkpointing_steps", "100"]  # fmt: skip
    def identity_views(image_size, num_channels, strength=1.0, crop_scale=(0.25, 1.0), flip_p=0.5, blur_p=0.5):
        return nn.Identity()  # build_augmentation's signature: the options are routed by its parameter names

    monkeypatch.setattr(contrastive, "build_augmentation", identity_views)
    baseline = _first_encoder_input(
        _example_script("rc_dit_train_contrastive_baseline"), [*common, "--output_dir", str(tmp_path / "simclr")], monkeypatch
    )
    rc_dit = _first_encoder_input(
        _example_script("rc_dit_train"), [*common, "--dit_size", "tiny", "--output_dir", str(tmp_path / "rc")], monkeypatch
    )
    assert rc_dit.shape == (8, 3, 28, 28)  # made RGB, resized to the processor's crop size
    assert baseline.shape == (16, 3, 28, 28)  # SimCLR's two views of the batch
    torch.testing.assert_close(baseline[:8], rc_dit, rtol=0, atol=0)
    torch.testing.assert_close(baseline[8:], rc_dit, rtol=0, atol=0)
    assert rc_dit.mean(dim=(0, 2, 3)).max() < 0.5 and rc_dit.min() < -1.5  # ImageNet-normalised, not [-1, 1]
    assert (tmp_path / "simclr" / "preprocessor_config.json").is_file()  # the encoder is saved with its processor


def test_dino_teacher_follows_the_optimizer_steps_at_epoch_ends_and_across_a_resume(digits, tmp_path):
    # 3 batches per epoch, accumulation 2: accelerate also steps at each epoch's last batch, which counting the loss's
    # calls missed (4 teacher updates in 6 steps); and a resume restarted that count
    from torch.optim.optimizer import register_optimizer_step_post_hook

    optimizer_steps, seen = [0], []

    def run(output_dir, steps, **resume):
        model = DINOModel(tiny_encoder(), out_dim=16, hidden_dim=16, bottleneck_dim=8)
        loss = DINOLoss(build_augmentation(SIZE, 1), total_steps=6, update_every=2, teacher_momentum=0.9)

        def recorded_loss(prepared, batch):  # the teacher updates before each batch, with the optimizer steps taken
            value = loss(prepared, batch)
            seen.append((int(model.teacher_updates), optimizer_steps[0]))
            return value

        optimizer_steps[0] = 3 if resume else 0
        settings = dict(train_batch_size=16, gradient_accumulation_steps=2, lr_scheduler="constant")
        args = args_for(output_dir, steps, checkpointing_steps=3, **settings, **resume)
        return train(args, model, TensorDataset(digits[:56]), recorded_loss)

    handle = register_optimizer_step_post_hook(lambda *_: optimizer_steps.__setitem__(0, optimizer_steps[0] + 1))
    try:
        straight, _, summary = run(tmp_path / "straight", 6)
        run(tmp_path / "resumed", 3)
        resumed = run(tmp_path / "resumed", 6, resume_from_checkpoint="latest")[0]
    finally:
        handle.remove()
    assert summary.global_step == 6 and int(straight.teacher_updates) == int(resumed.teacher_updates) == 5
    assert len(seen) == 9 + 5 + 4 and all(updates == steps for updates, steps in seen)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

"""Review of the contrastive baselines (training/contrastive.py) and of the remote-code export (remote_code.py): each
test pins a defect found there."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from diffusion_classifiers import LinearProbeHead, UNetFeatureClassifierPipeline
from diffusion_classifiers import remote_code
from diffusion_classifiers.models import build_vit_encoder, encode_representation
from diffusion_classifiers.remote_code import write_remote_code
from diffusion_classifiers.training import (
    DINOLoss,
    DINOModel,
    TrainingArguments,
    build_augmentation,
    train,
    train_contrastive_encoder,
)

SIZE = 16


@pytest.fixture(scope="module")
def digits():
    """64 scikit-learn digits, 8x8 padded with background to 16x16, in [-1, 1]."""
    images = torch.tensor(load_digits().images[:64], dtype=torch.float32)[:, None] / 16 * 2 - 1
    return F.pad(images, (4, 4, 4, 4), value=-1.0)


def tiny_encoder():
    torch.manual_seed(0)
    encoder = build_vit_encoder(SIZE, 1, hidden_size=32, num_layers=1, num_heads=2, patch_size=4)
    with torch.no_grad():  # a pooler far from the identity: tanh(W cls + b) clearly differs from the CLS token
        encoder.pooler.dense.weight.normal_(0, 0.5)
    return encoder


def args_for(tmp_path, steps, **overrides):
    defaults = dict(train_batch_size=16, max_train_steps=steps, learning_rate=1e-3, lr_warmup_steps=0,
                    checkpointing_steps=1000, lr_scheduler="constant")  # fmt: skip
    return TrainingArguments(output_dir=str(tmp_path), **{**defaults, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Contrastive baselines
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, readout", [("dino", "cls"), ("simclr", "pooler")])
def test_a_saved_contrastive_encoder_says_how_its_representation_is_read_out(digits, tmp_path, method, readout):
    """The baseline script saves the encoder for `AutoModel.from_pretrained`, but nothing in the folder said which
    readout was trained: a DINO encoder (CLS readout) read the usual transformers way, by `pooler_output`, gave its
    frozen, untrained pooler's tanh(W cls + b). The config now records `representation_readout`."""
    from transformers import AutoModel

    dino = method == "dino"
    sizes = dict(out_dim=32, hidden_dim=16, bottleneck_dim=8) if dino else dict(projection_dim=8, hidden_dim=16)
    trained = train_contrastive_encoder(
        args_for(tmp_path / "run", 2), digits, tiny_encoder(), method=method, readout=readout, **sizes
    )
    trained.save_pretrained(tmp_path / "saved")
    loaded = AutoModel.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config.representation_readout == readout
    images = digits[:6]
    with torch.no_grad():
        expected = encode_representation(trained, images, readout)
        recorded = encode_representation(loaded, images, loaded.config.representation_readout)
        torch.testing.assert_close(recorded, expected)
        torch.testing.assert_close(encode_representation(loaded, images), expected)  # the default reads the record
        if readout == "cls":  # what the record saves a user from: the pooler is not the trained representation
            assert (encode_representation(loaded, images, "pooler") - expected).abs().max() > 0.1


def test_the_baseline_script_saves_and_names_the_readout_it_trained(tmp_path, capsys):
    import importlib.util
    import json

    from .conftest import REPO_ROOT

    path = REPO_ROOT / "examples" / "rc_dit_train_contrastive_baseline.py"
    spec = importlib.util.spec_from_file_location("baseline_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--dataset", "digits", "--output_dir", str(tmp_path), "--image_size", "16", "--max_train_steps", "1",
                 "--train_batch_size", "8", "--encoder_hidden_size", "32", "--encoder_num_layers", "1",
                 "--encoder_num_heads", "2", "--method", "dino", "--dino_out_dim", "16", "--num_sample_images", "0",
                 "--checkpointing_steps", "100"])  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["representation_readout"] == "cls"  # DINO's default
    assert "readout='cls'" in capsys.readouterr().out


def test_dino_freezes_the_last_layer_for_its_first_optimizer_steps(digits, tmp_path):
    """DINO's reference cancels the last layer's gradients during the first epoch (`freeze_last_layer`); the loss had
    no such option. `freeze_last_layer_steps=2`: the last layer (and a learned gain) keep their initial values for
    exactly 2 optimizer steps while the rest of the student trains; the third step moves them."""

    def run(steps):
        sizes = dict(out_dim=16, hidden_dim=16, bottleneck_dim=8)
        model = DINOModel(tiny_encoder(), **sizes, norm_last_layer=False, readout="cls")
        initial = {name: p.detach().clone() for name, p in model.head.named_parameters()}
        loss = DINOLoss(build_augmentation(SIZE, 1), total_steps=3, freeze_last_layer_steps=2)
        args = args_for(tmp_path / str(steps), steps, adam_weight_decay=0.0)
        model, _, _ = train(args, model, TensorDataset(digits), loss)
        return {name: torch.equal(p, initial[name]) for name, p in model.head.named_parameters()}

    unchanged = run(2)
    assert unchanged["last_layer"] and unchanged["last_layer_gain"]
    assert not unchanged["mlp.0.weight"]
    unchanged = run(3)
    assert not unchanged["last_layer"] and not unchanged["last_layer_gain"]
    with pytest.raises(ValueError, match="freeze_last_layer_steps"):
        DINOLoss(build_augmentation(SIZE, 1), freeze_last_layer_steps=-1)


def test_a_frozen_last_layer_gives_the_same_logits_and_a_zero_gradient():
    # zero, not none: under DDP a trainable parameter without a gradient stalls the reduction
    model = DINOModel(tiny_encoder(), out_dim=16, hidden_dim=16, bottleneck_dim=8)
    images = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(model(images, freeze_last_layer=True), model(images), rtol=0, atol=0)
    model(images, freeze_last_layer=True).square().sum().backward()
    assert torch.equal(model.head.last_layer.grad, torch.zeros_like(model.head.last_layer))
    assert model.head.mlp[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Remote-code export
# ---------------------------------------------------------------------------------------------------------------


def _snapshot(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_remote_code_refuses_a_missing_component_folder_before_writing_anything(tmp_path):
    """A missing component folder raised a bare FileNotFoundError for a generated file name after the whole
    bundle (some 20 modules) had been written into the folder."""
    with pytest.raises(FileNotFoundError, match=r"component folder 'head'"):
        write_remote_code(tmp_path, [UNetFeatureClassifierPipeline], {"head": LinearProbeHead})
    with pytest.raises(FileNotFoundError, match="saved model's folder"):
        write_remote_code(tmp_path / "missing", [LinearProbeHead])
    with pytest.raises(TypeError, match="expected a class for 'classes'.*got str"):
        write_remote_code(tmp_path, ["LinearProbeHead"])
    assert list(tmp_path.iterdir()) == []


def test_remote_code_is_rendered_whole_before_any_file_is_replaced(tmp_path, monkeypatch):
    """A failure while the code was being written left the folder with the bundle of the new save and the entry
    files of the old one; now every file is rendered first, then each is written whole (no temporary file left)."""
    (tmp_path / "head").mkdir()
    write_remote_code(tmp_path, [UNetFeatureClassifierPipeline], {"head": LinearProbeHead})
    for path in tmp_path.rglob("*.py"):  # an earlier save, told apart from a new one
        path.write_text(path.read_text() + "# earlier save\n")
    before = _snapshot(tmp_path)

    def failing_entry(cls, fallback, bundle):
        raise RuntimeError("stopped while rendering the entry files")

    monkeypatch.setattr(remote_code, "_entry_text", failing_entry)
    with pytest.raises(RuntimeError, match="stopped"):
        write_remote_code(tmp_path, [UNetFeatureClassifierPipeline], {"head": LinearProbeHead})
    assert _snapshot(tmp_path) == before
    monkeypatch.undo()
    write_remote_code(tmp_path, [UNetFeatureClassifierPipeline], {"head": LinearProbeHead})
    after = _snapshot(tmp_path)
    assert sorted(after) == sorted(before) and not any(b"# earlier save" in text for text in after.values())
    assert "pipeline_unet_features.py" in after and "head/linear_probe_head.py" in after


def test_the_bundled_code_of_an_export_needs_no_optional_dependency(tmp_path):
    """Loaded from the Hub (not from a local folder), transformers runs `check_imports` on the entry file and on
    every bundled module it reaches, demanding each top-level package imported outside a `try` block. Measured: an
    export in a fake Hub cache, loaded with `trust_remote_code=True` without this package and without pydicom,
    raised "This modeling file requires the following packages that were not found in your environment: pydicom"."""
    from transformers.dynamic_module_utils import get_imports

    from diffusion_classifiers import DiffusionFeaturesForImageClassification

    write_remote_code(tmp_path, [DiffusionFeaturesForImageClassification])
    imported = {module for path in tmp_path.glob("*.py") for module in get_imports(path)}
    assert {"torch", "transformers"} <= imported  # what the check reads: the bundle's own imports
    assert "pydicom" not in imported  # the medical extra's, which an export reading no DICOM file does not need


def test_an_installed_package_without_the_class_leaves_the_bundled_copy_to_serve(tmp_path):
    """The entry files take the installed package's class when there is one, else the bundled copy; but an installed
    `diffusion_classifiers` without the class's module (an older release, or another project's package of that name)
    made every load fail with "No module named 'diffusion_classifiers.configuration_diffusion_classifier'" (measured
    for both transformers exports and diffusers pipelines). The bundled copy serves there now, with the same
    numbers."""
    import json

    from diffusers import DDPMScheduler

    from diffusion_classifiers import export_unet_feature_pipeline

    from .test_ecosystem_loading import assert_same_numbers, randomized_head, run_python, small_unet

    head = randomized_head(16, block="down_blocks.1", timestep=50)
    pipe = UNetFeatureClassifierPipeline(small_unet(), DDPMScheduler(), head=head)
    pipe.save_pretrained(tmp_path / "pipe")
    model, _ = export_unet_feature_pipeline(pipe, tmp_path / "export")
    torch.manual_seed(0)
    images = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        expected = {"export": model(pixel_values=images).logits.tolist(), "pipe": pipe(images).probs.tolist()}
    (tmp_path / "images.json").write_text(json.dumps(images.tolist()))
    (tmp_path / "hide" / "diffusion_classifiers").mkdir(parents=True)  # an installed package without these classes
    (tmp_path / "hide" / "diffusion_classifiers" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    script = """
import json, torch
import diffusion_classifiers
assert diffusion_classifiers.__version__ == "0.0.1", "the package of this repository was imported: nothing is tested"
from diffusers import DiffusionPipeline
from transformers import AutoModelForImageClassification
images = torch.tensor(json.load(open("images.json")))
model = AutoModelForImageClassification.from_pretrained("export", trust_remote_code=True)
pipe = DiffusionPipeline.from_pretrained("pipe", trust_remote_code=True)
with torch.no_grad():
    results = {"export": model(pixel_values=images).logits.tolist(), "pipe": pipe(images).probs.tolist()}
results["modules"] = [type(model).__module__, type(pipe).__module__, type(pipe.head).__module__]
json.dump(results, open("result.json", "w"))
"""
    results = run_python(script, tmp_path, hide_package=True)
    assert all(module.startswith(("transformers_modules.", "diffusers_modules.")) for module in results["modules"])
    assert_same_numbers(results["export"], expected["export"])
    assert_same_numbers(results["pipe"], expected["pipe"])

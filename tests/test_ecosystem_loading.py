"""Saved models load the Hugging Face ecosystem's way: `diffusers.DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` and transformers' Auto classes / `pipeline()`, in fresh interpreters with this package
hidden (the code saved with the model runs) and with it (the installed classes run, no remote code needed)."""

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import textwrap

import numpy as np
import pytest
import torch

import diffusion_classifiers
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from diffusion_classifiers import (
    DiffusionClassifierImageProcessor,
    LinearProbeHead,
    RepresentationConditionedDiTImageVariationPipeline,
    RepresentationConditionedDiTModel,
    RepresentationConditionedDiTPipeline,
    ScoreSDEClassifierPipeline,
    UNetFeatureClassifierPipeline,
    export_rc_dit_pipeline,
    export_unet_feature_pipeline,
)
from diffusion_classifiers.data import ImagePreprocessing
from diffusion_classifiers.data.split_record import SPLIT_DEFAULTS, image_fingerprints
from diffusion_classifiers.hub import render_model_card
from diffusion_classifiers.models import build_vit_encoder, rc_dit_config, unet_config
from diffusion_classifiers.remote_code import INSTALL_HINT, make_weights_readable_as_umask_allows

from .conftest import HIDE_PACKAGE_AND_METRICS_LIBRARIES, PACKAGE_HIDDEN, PYTHON, python_subprocess_env

CLASS_NAMES = ["zero", "one", "two"]
SIZE = 16
SCORE_SDE_CALL = {"method": "elbo", "num_timesteps": 10, "seed": 0}
VARIATION_CALL = {"guidance_scale": 2.0, "num_inference_steps": 2}



# --- tiny models built in code --------------------------------------------------------------------------------------


def small_unet(num_class_embeds=None) -> UNet2DModel:
    torch.manual_seed(0)
    config = unet_config("tiny", SIZE, num_class_embeds=num_class_embeds)
    config.update(block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=4)
    return UNet2DModel(**config)


def randomized_head(in_features: int, **config) -> LinearProbeHead:
    torch.manual_seed(1)
    head = LinearProbeHead(in_features, len(CLASS_NAMES), class_names=CLASS_NAMES, **config)
    with torch.no_grad():
        head.linear.weight.normal_(0, 1)
        head.feature_mean.normal_(0, 0.1)
        head.feature_std.uniform_(0.2, 0.5)
    return head


def rc_dit_pipeline() -> RepresentationConditionedDiTPipeline:
    torch.manual_seed(0)
    encoder = build_vit_encoder(SIZE, 1, 24, num_layers=1, num_heads=2, patch_size=4).eval()
    with torch.no_grad():  # a non-trivial pooler (tanh(W cls + b) differs from the CLS token) the cls readout skips
        encoder.pooler.dense.weight.normal_(0, 0.5)
    transformer = RepresentationConditionedDiTModel(**rc_dit_config(
        "tiny", SIZE, 1, 24, hidden_size=16, num_layers=1, representation_readout="cls", representation_norm="batch"
    ))  # fmt: skip
    with torch.no_grad():  # running statistics the export must fold into its feature standardisation
        transformer.representation_normalizer.running_mean.normal_(0, 0.5)
        transformer.representation_normalizer.running_var.uniform_(0.2, 3.0)
    head = randomized_head(24, block="encoder", timestep=0, pool=None)
    return RepresentationConditionedDiTPipeline(encoder, transformer.eval(), DDPMScheduler(), head=head)


def pipelines() -> dict:
    unet = UNetFeatureClassifierPipeline(
        small_unet(), DDPMScheduler(), head=randomized_head(16, block="down_blocks.1", timestep=50)
    )
    unet.set_positive_class("two")
    score_sde = ScoreSDEClassifierPipeline(small_unet(len(CLASS_NAMES)), DDPMScheduler(), class_names=CLASS_NAMES)
    return {"unet_features": unet, "score_sde": score_sde, "rc_dit": rc_dit_pipeline()}


def pipeline_output(pipe, images) -> list:
    """What the loading tests compare: probabilities, or the Score-SDE pipeline's per-class log-likelihoods."""
    if isinstance(pipe, ScoreSDEClassifierPipeline):
        return pipe(images, **SCORE_SDE_CALL).log_likelihoods.tolist()
    return pipe(images).probs.tolist()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Saved pipelines, exported transformers models, the test images, the outputs on them, and the cards."""
    root = tmp_path_factory.mktemp("ecosystem")
    torch.manual_seed(123)
    images = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    np.save(root / "images.npy", images.numpy())
    png = Image.fromarray(((images[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8), mode="L")
    png.save(root / "image.png")  # the file the cards' usage snippets read
    expected = {}
    for name, pipe in pipelines().items():
        pipe.save_pretrained(root / name)
        expected[name] = pipeline_output(pipe, images)
        expected[f"{name}_png"] = pipeline_output(pipe, [str(root / "image.png")])
        if name in ("unet_features", "rc_dit"):
            export = export_unet_feature_pipeline if name == "unet_features" else export_rc_dit_pipeline
            model, _ = export(pipe, root / f"hf_{name}")
            with torch.no_grad():
                expected[f"hf_{name}"] = model(pixel_values=images).logits.softmax(-1).tolist()
        if name == "rc_dit":  # the generator saved from the classifier's components
            variation = RepresentationConditionedDiTImageVariationPipeline.from_pipe(pipe)
            variation.save_pretrained(root / "rc_dit_variation")
            generator = torch.Generator().manual_seed(0)
            expected["rc_dit_variation"] = variation(images[:1], generator=generator, **VARIATION_CALL).images.tolist()
    recorded = pipelines()["unet_features"]  # a trained model's folder holds its carving and training images
    recorded.split_record = {**SPLIT_DEFAULTS, "anonymised_dicom_groups": "file", "seed": 7,
                             "train_fingerprints": " ".join(image_fingerprints(images[:2]))}  # fmt: skip
    recorded.save_pretrained(root / "recorded")
    (root / "hide").mkdir()
    (root / "hide" / "sitecustomize.py").write_text(HIDE_PACKAGE_AND_METRICS_LIBRARIES)
    return root, expected


def card_snippet(library_name: str, model_id) -> str:
    """The usage snippet of the model card, as `render_model_card` writes it for `model_id`."""
    card = render_model_card(
        "unet_features", model_name="tiny", repo_id=str(model_id), dataset_name="digits",
        dataset_license="BSD-3-Clause", metrics={"accuracy": 0.5}, training_command="make demo",
        evaluation_command="make eval", library_name=library_name,
    )  # fmt: skip
    return str(card).split("## Usage")[1].split("```python\n")[1].split("```")[0]


def assert_same_numbers(got, expected):
    """The same code on the same inputs in another process: float32 reductions of at most ~1e3 terms may be summed in
    another order by another kernel, moving results by at most ~1e3 * 6e-8 = 6e-5 relative (the bound
    tests/test_frozen_checkpoints.py derives and measures); a changed model, noise or preprocessing moves them by 1e-3
    or more."""
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def assert_record_saved_again(root) -> None:
    """QA (a collaborator): a pipeline loaded with diffusers' `DiffusionPipeline.from_pretrained` (the card's route)
    and saved again lost its `data_splits.json`: `evaluate` then carved the defaults' test split, which held the
    model's training images, and could not check them."""
    saved_again = root / "recorded_resaved" / "data_splits.json"
    assert saved_again.is_file()
    assert json.loads(saved_again.read_text()) == json.loads((root / "recorded" / "data_splits.json").read_text())
    (root / "recorded_resaved" / "data_splits.json").unlink()  # the next test's script saves it again


def run_python(script: str, root, hide_package: bool) -> dict:
    """Run `script` in a fresh interpreter (stdin closed: an interactive prompt would fail) and read the JSON it
    writes to `result.json`."""
    env = python_subprocess_env()
    if hide_package:
        env["PYTHONPATH"] = str(root / "hide")
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(script)], env=env, cwd=root, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    return json.loads((root / "result.json").read_text())


LOAD_AND_RUN = """
import json, numpy, torch
from diffusers import DiffusionPipeline
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

images = torch.from_numpy(numpy.load("images.npy"))
image = Image.fromarray(((images[0, 0].numpy() + 1) * 127.5).round().astype(numpy.uint8), mode="L")
results = {"modules": {}, "outputs": {}, "errors": {}, "snippets": {}, "positive_class": {}, "image_size": {}}
DiffusionPipeline.from_pretrained("recorded", trust_remote_code=True).save_pretrained("recorded_resaved")
for name in ("unet_features", "score_sde", "rc_dit"):
    pipe = DiffusionPipeline.from_pretrained(name, trust_remote_code=True)
    head = [type(pipe.head).__module__] if "head" in pipe.components else []
    results["modules"][name] = [type(pipe).__module__] + head
    out = pipe(images, **SCORE_SDE_CALL) if name == "score_sde" else pipe(images)
    results["outputs"][name] = (out.log_likelihoods if name == "score_sde" else out.probs).tolist()
    results["positive_class"][name] = pipe.config.get("positive_class")
variation = DiffusionPipeline.from_pretrained("rc_dit_variation", trust_remote_code=True)
results["modules"]["rc_dit_variation"] = [type(variation).__module__]
generator = torch.Generator().manual_seed(0)
results["outputs"]["rc_dit_variation"] = variation(images[:1], generator=generator, **VARIATION_CALL).images.tolist()
for name in ("hf_unet_features", "hf_rc_dit"):
    model = AutoModelForImageClassification.from_pretrained(name, **TRUST)
    results["modules"][name] = [type(model).__module__]
    with torch.no_grad():
        results["outputs"][name] = model(pixel_values=images).logits.softmax(-1).tolist()
    results["outputs"][name + "_pipeline"] = pipeline("image-classification", model=name, **TRUST)(image, top_k=3)
    results["image_size"][name] = AutoImageProcessor.from_pretrained(name, **TRUST).image_size
"""


@pytest.mark.slow
def test_pipelines_and_transformers_models_load_without_the_package(saved):
    root, expected = saved
    snippets = {
        "diffusers": card_snippet("diffusers", "unet_features"),
        "transformers": card_snippet("transformers", "hf_rc_dit"),
    }
    script = f"""
{PACKAGE_HIDDEN}
SCORE_SDE_CALL, VARIATION_CALL, TRUST = {SCORE_SDE_CALL!r}, {VARIATION_CALL!r}, {{"trust_remote_code": True}}
{LOAD_AND_RUN}
for library, snippet in {snippets!r}.items():  # the model cards' usage snippets, as they are
    scope = {{}}
    exec(snippet, scope)
    out = scope.get("out") or scope["classifier"](image)
    results["snippets"][library] = out.probs.tolist() if hasattr(out, "probs") else out
for name in ("unet_features", "hf_unet_features"):
    loader = DiffusionPipeline if name == "unet_features" else AutoModelForImageClassification
    try:
        loader.from_pretrained(name, trust_remote_code=False)
    except ValueError as error:
        results["errors"][name] = str(error)
# saved again without the package (a copy of the code it was loaded from), it loads as before
DiffusionPipeline.from_pretrained("rc_dit", trust_remote_code=True).save_pretrained("resaved")
resaved = DiffusionPipeline.from_pretrained("resaved", trust_remote_code=True)
results["outputs"]["rc_dit_resaved"] = resaved(images).probs.tolist()
json.dump(results, open("result.json", "w"))
"""
    results = run_python(script, root, hide_package=True)

    for name, modules in results["modules"].items():  # the code saved in the folder ran, not an installed package
        assert all(m.startswith(("diffusers_modules.", "transformers_modules.")) for m in modules), (name, modules)
    for name in ("unet_features", "score_sde", "rc_dit", "rc_dit_variation", "hf_unet_features", "hf_rc_dit"):
        assert_same_numbers(results["outputs"][name], expected[name])
    for name in ("hf_unet_features", "hf_rc_dit"):
        top = results["outputs"][f"{name}_pipeline"][0]
        assert top["label"] == CLASS_NAMES[int(np.argmax(expected[name][0]))]
        assert results["image_size"][name] == SIZE
    assert results["positive_class"]["unet_features"] == "two"
    assert_same_numbers(results["snippets"]["diffusers"], expected["unet_features_png"])
    assert results["snippets"]["transformers"][0]["label"] == CLASS_NAMES[int(np.argmax(expected["hf_rc_dit"][0]))]
    # Without the package and without trust_remote_code the libraries refuse, saying what to pass.
    assert set(results["errors"]) == {"unet_features", "hf_unet_features"}
    for name in ("unet_features", "hf_unet_features"):
        assert "trust_remote_code=True" in results["errors"][name], results["errors"][name]
    assert_same_numbers(results["outputs"]["rc_dit_resaved"], expected["rc_dit"])
    assert_record_saved_again(root)
    assert sorted(p.name for p in (root / "resaved").rglob("*.py")) == sorted(p.name for p in (root / "rc_dit").rglob("*.py"))


@pytest.mark.slow
def test_two_folders_of_other_saved_code_loaded_in_one_process_each_run_their_own(saved):
    """QA (a collaborator comparing two models' versions in one notebook): diffusers imports every local folder's
    code as the same modules, so the second folder ran the first one's bundled code, without a word."""
    root, expected = saved
    other = root / "unet_features_other_code"
    shutil.copytree(root / "unet_features", other)
    head_code = other / "diffusion_classifiers_models_linear_probe_head.py"
    original = "        return self.linear((features - self.feature_mean) / self.feature_std)\n"
    assert head_code.read_text().count(original) == 1
    head_code.write_text(head_code.read_text().replace(original, original.replace("return ", "return 2.0 * ")))
    bundle = re.search(r'^BUNDLE = "([0-9a-f]+)"', (other / "pipeline_unet_features.py").read_text(), re.M).group(1)
    for code in other.rglob("*.py"):  # as another version's save_pretrained would mark it
        code.write_text(code.read_text().replace(f'"{bundle}"', '"0123456789abcdef"'))
    script = f"""
{PACKAGE_HIDDEN}
import json, numpy, torch
from diffusers import DiffusionPipeline

images = torch.from_numpy(numpy.load("images.npy"))
results = {{}}
for name in ("unet_features", "unet_features_other_code", "unet_features"):
    pipe = DiffusionPipeline.from_pretrained(name, trust_remote_code=True)
    results.setdefault(name, []).append(pipe(images).probs.tolist())
json.dump(results, open("result.json", "w"))
"""
    results = run_python(script, root, hide_package=True)
    for probs in results["unet_features"]:
        assert_same_numbers(probs, expected["unet_features"])
    logits = torch.tensor(expected["unet_features"], dtype=torch.float64).log()  # the softmax's input, up to a shift
    assert_same_numbers(results["unet_features_other_code"][0], (2.0 * logits).softmax(-1).tolist())


@pytest.mark.slow
def test_pipelines_and_transformers_models_load_with_the_package_without_remote_code(saved):
    root, expected = saved
    script = f"""
import diffusion_classifiers  # registers the transformers Auto classes
from diffusion_classifiers import DiffusionClassifierPipeline
SCORE_SDE_CALL, VARIATION_CALL, TRUST = {SCORE_SDE_CALL!r}, {VARIATION_CALL!r}, {{}}
{LOAD_AND_RUN}
for name in ("unet_features", "score_sde", "rc_dit"):  # no trust_remote_code: the folder's code is never run
    pipe = DiffusionClassifierPipeline.from_pretrained(name)
    results["modules"][name + "_own"] = [type(pipe).__module__]
    call = SCORE_SDE_CALL if name == "score_sde" else {{}}
    out = pipe(images, **call)
    results["outputs"][name + "_own"] = (out.log_likelihoods if name == "score_sde" else out.probs).tolist()
json.dump(results, open("result.json", "w"))
"""
    results = run_python(script, root, hide_package=False)

    for name, modules in results["modules"].items():  # trusted code imported the installed classes
        assert all(m.startswith("diffusion_classifiers.") for m in modules), (name, modules)
    for name in ("unet_features", "score_sde", "rc_dit"):
        assert_same_numbers(results["outputs"][name], expected[name])
        assert_same_numbers(results["outputs"][f"{name}_own"], expected[name])
    for name in ("hf_unet_features", "hf_rc_dit", "rc_dit_variation"):
        assert_same_numbers(results["outputs"][name], expected[name])
    assert results["image_size"] == {"hf_unet_features": SIZE, "hf_rc_dit": SIZE}
    assert_record_saved_again(root)


@pytest.mark.slow
def test_a_model_loaded_from_its_saved_code_saves_and_checkpoints_without_the_package(saved):
    """QA: without the package, `save_pretrained` of a model or processor loaded with `trust_remote_code=True` raised
    (it wrote the code again from the package), so `Trainer` crashed at its first checkpoint. The saved code is copied
    instead, and the folder reloads in a fresh interpreter without the package."""
    root, expected = saved
    resave = f"""
{PACKAGE_HIDDEN}
import json, numpy, torch
from datasets import Dataset
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

model = AutoModelForImageClassification.from_pretrained("hf_unet_features", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("hf_unet_features", trust_remote_code=True)
model.save_pretrained("resaved_hf")
processor.save_pretrained("resaved_hf")
images = numpy.load("images.npy")
data = Dataset.from_dict({{"pixel_values": images, "labels": [0, 1, 2, 0]}}).with_format("torch")
args = TrainingArguments(output_dir="trained", max_steps=1, learning_rate=0.0, save_strategy="steps", save_steps=1,
                         per_device_train_batch_size=4, report_to=[], use_cpu=True, disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=data, processing_class=processor).train()
json.dump({{"module": type(model).__module__}}, open("result.json", "w"))
"""
    assert run_python(resave, root, hide_package=True)["module"].startswith("transformers_modules.")
    reload = f"""
{PACKAGE_HIDDEN}
import json, numpy, torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

images = torch.from_numpy(numpy.load("images.npy"))
results = {{}}
for folder in ("resaved_hf", "trained/checkpoint-1"):
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        probs = model(**processor(images, input_data_format="channels_first")).logits.softmax(-1).tolist()
    results[folder] = {{"module": type(model).__module__, "probs": probs, "size": processor.image_size}}
json.dump(results, open("result.json", "w"))
"""
    results = run_python(reload, root, hide_package=True)
    for folder, result in results.items():
        assert result["module"].startswith("transformers_modules."), folder
        assert result["size"] == SIZE
        assert_same_numbers(result["probs"], expected["hf_unet_features"])
    original, resaved = root / "hf_unet_features", root / "resaved_hf"
    # the same folder as the package writes: the entry files (the installed package first) and the bundled code
    assert sorted(p.name for p in resaved.iterdir()) == sorted(p.name for p in original.iterdir())
    for name in ("config.json", "preprocessor_config.json"):
        assert json.loads((resaved / name).read_text()) == json.loads((original / name).read_text()), name
    for path in original.glob("*.py"):
        assert (resaved / path.name).read_text() == path.read_text(), path.name


# --- the code saved with a model ------------------------------------------------------------------------------------


def test_saved_code_is_flat_minimal_and_imports_the_installed_package_first(saved):
    root, _ = saved
    folder = root / "unet_features"
    code = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.py"))
    assert "pipeline_unet_features.py" in code and "head/linear_probe_head.py" in code
    bundled = [name for name in code if name.startswith("diffusion_classifiers_")]
    assert all("/" not in name for name in bundled)
    # the closure of the pipeline's imports: no training, plotting, probing or evaluation code
    unneeded = ("training", "plots", "probing", "evaluation")
    assert not [name for name in bundled if any(part in name for part in unneeded)]
    for name in bundled:  # every package import is a flat relative one
        tree = ast.parse((folder / name).read_text())
        absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
        assert not [m for m in absolute if m.startswith("diffusion_classifiers")], name
    entry = (folder / "pipeline_unet_features.py").read_text()
    assert 'getattr(importlib.import_module("diffusion_classifiers.pipelines.pipeline_unet_features"), ' \
        '"UNetFeatureClassifierPipeline")' in entry  # fmt: skip
    assert f"{INSTALL_HINT}=={diffusion_classifiers.__version__}" in entry
    assert not [line for line in entry.splitlines() if line.lstrip().startswith("from diffusion_classifiers")]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_unet_features", "UNetFeatureClassifierPipeline"]
    assert index["head"] == ["linear_probe_head", "LinearProbeHead"] and "_name_or_path" not in index
    config = json.loads((root / "hf_rc_dit" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_diffusion_classifier.DiffusionFeaturesForImageClassification"
    )


@pytest.mark.slow
def test_an_installed_package_of_another_version_is_not_mixed_with_the_saved_code(saved):
    """QA (Hub consumer): an installed diffusion_classifiers 0.0.1 gave the config class while the bundled copy gave
    the model class, without a word; the numbers of an older release's classes need not be the card's. The code saved
    with the model runs then, whole, with a warning naming both versions."""
    root, expected = saved
    script = """
import sys, types, warnings
older = types.ModuleType("diffusion_classifiers")
older.__version__, older.__path__ = "0.0.1", []
configuration = types.ModuleType("diffusion_classifiers.configuration_diffusion_classifier")
configuration.DiffusionClassifierConfig = type("DiffusionClassifierConfig", (), {})  # an older release's class
sys.modules.update({older.__name__: older, configuration.__name__: configuration})  # installed, registering nothing
import json, numpy, torch
from diffusers import DiffusionPipeline
from transformers import AutoModelForImageClassification

images = torch.from_numpy(numpy.load("images.npy"))
results = {"modules": {}, "outputs": {}}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pipe = DiffusionPipeline.from_pretrained("unet_features", trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained("hf_unet_features", trust_remote_code=True)
results["modules"] = [type(pipe).__module__, type(pipe.head).__module__, type(model).__module__,
                      type(model.config).__module__]
results["outputs"]["unet_features"] = pipe(images).probs.tolist()
with torch.no_grad():
    results["outputs"]["hf_unet_features"] = model(pixel_values=images).logits.softmax(-1).tolist()
results["warnings"] = sorted({str(w.message) for w in caught if "is installed" in str(w.message)})
json.dump(results, open("result.json", "w"))
"""
    results = run_python(script, root, hide_package=False)
    modules = results["modules"]
    assert all(m.startswith(("diffusers_modules.", "transformers_modules.")) for m in modules), modules
    for name in ("unet_features", "hf_unet_features"):
        assert_same_numbers(results["outputs"][name], expected[name])
    # review: a development checkout of the same version number, without the module the model names, falls back too
    same_version = script.replace('"0.0.1"', repr(diffusion_classifiers.__version__)).replace(
        ", configuration.__name__: configuration}", "}"
    )
    same = run_python(same_version, root, hide_package=False)
    assert all(m.startswith(("diffusers_modules.", "transformers_modules.")) for m in same["modules"]), same["modules"]
    assert same["warnings"] == []
    version = diffusion_classifiers.__version__
    assert results["warnings"] == [
        f"diffusion_classifiers 0.0.1 is installed; this model was saved with {version}: the code saved with the model "
        f"is used, not the package's ({INSTALL_HINT}=={version} to use the package's classes)"
    ]


def test_saved_weights_are_readable_as_the_umask_allows(saved, tmp_path):
    root, _ = saved
    for folder in ("unet_features", "score_sde", "rc_dit", "hf_rc_dit"):
        weights = list((root / folder).rglob("*.safetensors"))
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in weights}
        assert weights and set(modes.values()) == {0o666 & ~current_umask()}, modes
    for name in ("weights.safetensors", "private.txt"):
        (tmp_path / name).write_bytes(b"")
        os.chmod(tmp_path / name, 0o600)
    previous = os.umask(0o027)
    try:
        make_weights_readable_as_umask_allows([tmp_path])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "weights.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600  # not written by save_pretrained


def current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# --- the RC-DiT encoder as a transformers classifier -----------------------------------------------------------------


def test_rc_dit_export_keeps_the_representation_and_the_preprocessing(saved, tmp_path):
    root, _ = saved
    pipe = rc_dit_pipeline()
    images = torch.from_numpy(np.load(root / "images.npy"))
    model = AutoModelForImageClassification.from_pretrained(root / "hf_rc_dit")
    processor = AutoImageProcessor.from_pretrained(root / "hf_rc_dit")
    assert (processor.image_size, processor.num_channels) == (SIZE, 1)
    with torch.no_grad():
        hidden = model(pixel_values=images, output_hidden_states=True).hidden_states[0]
        cls_token = pipe.encoder(pixel_values=images).last_hidden_state[:, 0]
        pooled = pipe.encoder(pixel_values=images).pooler_output
    # the same function on the same weights: the transformer's readout of r (its CLS token), not the pooler a
    # ViTForImageClassification-like head would read; the representation_norm is folded into the standardisation
    assert torch.equal(hidden, cls_token)
    assert not torch.allclose(hidden, pooled, atol=1e-3)
    pil = [Image.fromarray(((image[0].numpy() + 1) * 127.5).round().astype(np.uint8), mode="L") for image in images]
    with torch.no_grad():
        logits = model(**processor(pil)).logits
    # the processor reads PIL images as the pipeline does. Folding (r - m) / s then (. - m2) / s2 into one
    # (r - (m + s m2)) / (s s2) rounds differently: a few float32 ulps (6e-8 relative) of standardised features of
    # size <= 10, over 24 features with unit weights: logits within 24 * 10 * 4 * 6e-8 = 6e-5, probabilities within
    # a quarter of that
    torch.testing.assert_close(logits.softmax(-1), pipe(pil).probs, rtol=0, atol=2e-5)


def test_rc_dit_export_over_a_pretrained_encoder_reads_the_pipelines_images(tmp_path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from diffusion_classifiers.models import pretrained_preprocessing

    torch.manual_seed(0)  # an RGB DINOv2 of another size and an ImageNet normalisation, over 1-channel 16 px images
    Dinov2Model(Dinov2Config(image_size=32, patch_size=4, num_channels=3, hidden_size=24, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "dino")  # fmt: skip
    BitImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(tmp_path / "dino")
    transformer = RepresentationConditionedDiTModel(**rc_dit_config(
        "tiny", SIZE, 1, 24, hidden_size=16, num_layers=1, representation_readout="cls",
        encoder_preprocessing=pretrained_preprocessing(str(tmp_path / "dino")),
    ))  # fmt: skip
    encoder = Dinov2Model.from_pretrained(tmp_path / "dino").eval()
    head = randomized_head(24, block="encoder", timestep=0, pool=None)
    pipe = RepresentationConditionedDiTPipeline(
        encoder, transformer.eval(), DDPMScheduler(), head=head, preprocessing={"image_size": SIZE, "num_channels": 1}
    )
    export_rc_dit_pipeline(pipe, tmp_path / "hf")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert (processor.image_size, processor.num_channels) == (SIZE, 1)  # the pipeline's images, not the encoder's
    pil = [Image.fromarray(np.full((SIZE, SIZE), 40 * i + 30, dtype=np.uint8), mode="L") for i in range(3)]
    with torch.no_grad():
        probabilities = model(**processor(pil)).logits.softmax(-1)
    # the same images, weights and readout; only the folded standardisation rounds differently (see above)
    torch.testing.assert_close(probabilities, pipe(pil).probs, rtol=0, atol=2e-5)


def test_only_a_linear_head_exports_and_the_positive_class_travels(saved):
    root, _ = saved
    assert json.loads((root / "hf_unet_features" / "config.json").read_text())["positive_class"] == "two"
    pipe = rc_dit_pipeline()
    pipe.fit_prototypes(torch.rand(6, 1, SIZE, SIZE) * 2 - 1, [0, 1, 2, 0, 1, 2], class_names=CLASS_NAMES)
    with pytest.raises(ValueError, match="expected a fitted LinearProbeHead to export .* got PrototypeHead"):
        export_rc_dit_pipeline(pipe)


def test_a_pipeline_of_another_method_is_refused_by_name():
    """QA: a Score-SDE pipeline given to export_unet_feature_pipeline raised AttributeError: ... no attribute 'head'."""
    built = pipelines()
    with pytest.raises(TypeError, match=r"a UNetFeatureClassifierPipeline, got ScoreSDEClassifierPipeline \(it classifies"):
        export_unet_feature_pipeline(built["score_sde"])
    with pytest.raises(TypeError, match="expected a RepresentationConditionedDiTPipeline, got UNetFeatureClassifierPipeline"):
        export_rc_dit_pipeline(built["unet_features"])


def test_a_processor_saved_alone_loads_through_auto_image_processor_without_the_package(tmp_path):
    """QA (session 58): a folder holding `processor.save_pretrained` alone (no model `config.json`) did not load with
    `AutoImageProcessor` ("Should have a image_processor_type key"), with or without trust_remote_code."""
    contract = ImagePreprocessing(SIZE, 1, resize_mode="pad", pad_value=1.0)
    DiffusionClassifierImageProcessor(SIZE, 1, preprocessing=contract.to_dict()).save_pretrained(tmp_path / "processor")
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_PACKAGE_AND_METRICS_LIBRARIES)
    script = f"""
{PACKAGE_HIDDEN}
import json
from transformers import AutoImageProcessor
processor = AutoImageProcessor.from_pretrained("processor", trust_remote_code=True)
json.dump({{"module": type(processor).__module__, "preprocessing": processor.preprocessing}}, open("result.json", "w"))
"""
    loaded = run_python(script, tmp_path, hide_package=True)
    assert loaded["module"].startswith("transformers_modules.")  # the code saved beside it
    assert loaded["preprocessing"] == contract.to_dict()
    # with the package (imported here; a fresh interpreter with only the package imported loads every saved kind in
    # test_pipelines_and_transformers_models_load_with_the_package_without_remote_code): the installed class, no
    # remote code asked for
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tmp_path / "processor")
    assert type(processor).__module__ == "diffusion_classifiers.image_processing_diffusion_classifier"
    assert processor.preprocessing == contract.to_dict()

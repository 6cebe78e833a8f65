"""Pipelines saved by earlier versions keep loading and predicting as they did (tests/fixtures/<version>/).

The fixtures are frozen: made once by the version named in the folder (see its make_*_fixtures.py) and never
regenerated. `model_index.json` records each component by module path, so this catches a moved class.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from .conftest import PYTHON, python_subprocess_env

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PIPELINES = ["unet_features", "score_sde", "rc_dit_linear_head", "rc_dit_prototype_head"]
TRANSFORMERS_MODELS = ["transformers_unet_features"]
SAVED = [f"v0.1.0/{name}" for name in PIPELINES + TRANSFORMERS_MODELS]

# Only the package is imported: diffusers must resolve every component from `import diffusion_classifiers`.
LOAD_ALL = """
import json, sys
import torch
from safetensors.torch import load_file
import diffusion_classifiers
from diffusion_classifiers import DiffusionClassifierPipeline
from transformers import AutoModelForImageClassification

root, names, transformers_names = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
# v0.1.0 seeded image i's Monte-Carlo draws by its position in the call; the default now seeds them by the image's
# content (the same result alone or in any batch). The old scheme is kept as an option to reproduce old numbers.
V0_1_0_CALL = {"score_sde": {"seed_by": "position"}}
results = {}
for name in names + transformers_names:
    folder = f"{root}/{name}"
    expected = json.load(open(f"{folder}/expected.json"))
    images = load_file(f"{folder}/inputs.safetensors")["images"]
    if name in transformers_names:
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            results[name] = {"logits": model(pixel_values=images).logits.tolist()}
        continue
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(images, **expected["call"], **V0_1_0_CALL.get(name, {}))
    fields = {key: getattr(out, key, None) for key in expected["outputs"] if key != "representation"}
    if "representation" in expected["outputs"]:
        fields["representation"] = pipe.encode(images)
    fields["pipeline"] = type(pipe).__name__
    results[name] = {key: value.tolist() if torch.is_tensor(value) else value for key, value in fields.items()}
print(json.dumps(results))
"""

EXPECTED_PIPELINE_CLASS = {
    "unet_features": "UNetFeatureClassifierPipeline",
    "score_sde": "ScoreSDEClassifierPipeline",
    "rc_dit_linear_head": "RepresentationConditionedDiTPipeline",
    "rc_dit_prototype_head": "RepresentationConditionedDiTPipeline",
}

# Float32 networks of a few layers whose reductions are at most ~1e3 terms long: a change of summation order
# between CPU kernels (AVX2 vs AVX-512) moves each result by at most ~n * eps32 = 1e3 * 6e-8 = 6e-5 relative per
# layer; 1e-4 relative (plus 1e-5 absolute for values near 0) bounds that with a margin, yet catches any change of
# model, noise or preprocessing, which moves outputs by 1e-3 or more. Measured with the default and AVX2 kernels:
# 5.4e-6 relative at most (6.1e-5 absolute on score-SDE log-likelihoods of 661 nats).
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def loaded_outputs():
    result = subprocess.run(
        [PYTHON, "-c", LOAD_ALL, str(FIXTURES / "v0.1.0"), ",".join(PIPELINES), ",".join(TRANSFORMERS_MODELS)],
        capture_output=True, text=True, env=python_subprocess_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("saved", SAVED)
def test_saved_model_of_an_earlier_version_predicts_as_it_did(saved, loaded_outputs):
    name = saved.split("/")[-1]
    expected = json.loads((FIXTURES / saved / "expected.json").read_text())["outputs"]
    got = loaded_outputs[name]
    if name in EXPECTED_PIPELINE_CLASS:
        assert got.pop("pipeline") == EXPECTED_PIPELINE_CLASS[name]
    assert set(got) == set(expected)
    for key, value in expected.items():
        if key == "labels":
            assert got[key] == value
        else:
            torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(value), rtol=RTOL, atol=ATOL, msg=key)


def test_fixture_components_are_recorded_by_their_public_module_paths():
    recorded = set()
    for name in PIPELINES:
        index = json.loads((FIXTURES / "v0.1.0" / name / "model_index.json").read_text())
        recorded |= {tuple(value) for value in index.values() if isinstance(value, list)}
    assert ("diffusion_classifiers.models.linear_probe_head", "LinearProbeHead") in recorded
    assert ("diffusion_classifiers.models.prototype_head", "PrototypeHead") in recorded
    assert ("diffusion_classifiers.models.rc_dit", "RepresentationConditionedDiTModel") in recorded

"""The package's layers: imports point down only, no loops, every module imports alone, one public face."""

import ast
import functools
import subprocess
from pathlib import Path

import pytest

from .conftest import PYTHON, REPO_ROOT, python_subprocess_env

PACKAGE = "diffusion_classifiers"
SOURCE = REPO_ROOT / "src" / PACKAGE

# Layers, bottom to top: a module may import its own layer and those below, never one above.
LAYERS = {
    "validation": 0, "metrics": 0, "remote_code": 0, "lazy_exports": 0, "views": 0, "run_lock": 0,
    "atomic_files": 0, "confidence_intervals": 0, "_version": 0, "progress_bars": 0, "operating_points": 0,
    "replaced_reports": 0, "paired_statistics": 0, "independent_statistics": 0, "provenance": 0,
    "data": 1, "models": 1, "likelihood": 1,
    "features": 2, "probing": 2,
    "training": 3, "pipelines": 3, "configuration_diffusion_classifier": 3, "image_processing_diffusion_classifier": 3,
    "modeling_diffusion_classifier": 3, "transformers_registration": 3, "transformers_pipeline": 3, "plots": 3, "hub": 3,
    "evaluation": 4, "unet_feature_study": 4, "prediction": 4,
    "cli": 5,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def library_modules() -> dict:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py")) if "evaluate_metrics" not in path.parts}


def imported_modules(name: str, path: Path) -> set:
    """The package modules `name` imports (absolute or relative, at any depth of the file)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(PACKAGE):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    modules = library_modules()
    return {target for target in found if target in modules and target != name}


def layer_of(name: str):
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    unplaced = [name for name in library_modules() if name != PACKAGE and layer_of(name) is None]
    assert not unplaced, f"modules without a layer in tests/test_structure.py: {unplaced}"


def test_imports_point_down_only():
    upward = []
    for name, path in library_modules().items():
        if name == PACKAGE:
            continue
        for target in imported_modules(name, path):
            if target != PACKAGE and layer_of(target) > layer_of(name):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_loops():
    modules = library_modules()
    graph = {name: imported_modules(name, path) - {PACKAGE} for name, path in modules.items()}
    state, loops = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                loops.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not loops, "import loops:\n" + "\n".join(loops)


# A fresh interpreter first checks that the package face and every command's flags import nothing heavy, and that the
# transformers classes register once this package's own import (which loads transformers' Auto modules) finishes.
LIGHT_IMPORT_THEN_REGISTRATION = """
import sys
import diffusion_classifiers
from diffusion_classifiers.cli import build_parser
build_parser().format_help()  # every command's flags: what `diffusion-classifiers <command> --help` builds
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
assert not heavy, f"import diffusion_classifiers and the commands' flags imported {heavy}"
from diffusion_classifiers.models import build_vit_encoder
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING
config = CONFIG_MAPPING["diffusion-classifier"]
assert MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[config].__name__ == "DiffusionFeaturesForImageClassification"
assert IMAGE_PROCESSOR_MAPPING[config]["pil"].__name__ == "DiffusionClassifierImageProcessor"
"""

# Then, as one fresh interpreter per module would spend ~10 s each importing torch, diffusers and transformers, the
# same interpreter imports every module once (so every third-party library is loaded), forgets the package and
# transformers' Auto modules (which the package's classes register with when they load), and forks a child per
# module that imports that module alone: each child runs this package's import order afresh.
IMPORT_EACH_ALONE = """
import importlib, os, sys, traceback
for module in sys.argv[1:]:
    importlib.import_module(module)
for name in [m for m in sys.modules if m.startswith(("diffusion_classifiers", "transformers.models.auto"))]:
    del sys.modules[name]
failures = 0
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            print(f"{module}: {traceback.format_exc()}", file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    failures += os.waitpid(pid, 0)[1] != 0
sys.exit(1 if failures else 0)
"""


@pytest.mark.slow
def test_light_import_registration_and_every_module_imported_alone_in_a_fresh_process():
    result = subprocess.run(
        [PYTHON, "-c", LIGHT_IMPORT_THEN_REGISTRATION + IMPORT_EACH_ALONE, *library_modules()],
        capture_output=True, text=True, env=python_subprocess_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]


def test_public_face_exports_what_users_call():
    import diffusion_classifiers

    missing = [name for name in diffusion_classifiers.__all__ if getattr(diffusion_classifiers, name, None) is None]
    assert not missing
    assert len(set(diffusion_classifiers.__all__)) == len(diffusion_classifiers.__all__)
    for name in ["DiffusionFeatureExtractor", "fit_probe_grid", "evaluate_protocols", "load_image_classification_data",
                 "stratified_split", "probability_flow_log_likelihood", "train_ddpm_unet", "train_rc_dit",
                 "ClassifierPipelineOutput", "denoising_error_scores", "DenoisingScoreResult", "replay_stopping_rule",
                 "rank_timestep_strata"]:  # fmt: skip
        assert name in diffusion_classifiers.__all__, name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        diffusion_classifiers.not_a_name


def test_import_pulls_in_no_plotting_or_augmentation_library():
    # accelerate is not in the list: diffusers' ModelMixin imports it, so every saved component does.
    script = (
        "import sys, diffusion_classifiers\n"
        "print(sorted(m for m in ('matplotlib', 'kornia', 'diffusion_classifiers.training') if m in sys.modules))"
    )
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=python_subprocess_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_every_public_module_declares_all():
    without = [
        name for name, path in library_modules().items()
        if (path.name == "__init__.py" or not path.name.startswith("_")) and "__all__" not in path.read_text()
    ]  # fmt: skip
    assert not without, f"public modules without __all__: {without}"


def test_every_name_a_module_exports_exists():
    """`from module import *` fails on a name in `__all__` that the module does not define."""
    import importlib
    import pkgutil

    import diffusion_classifiers

    missing = []
    for info in pkgutil.walk_packages(diffusion_classifiers.__path__, prefix=f"{PACKAGE}."):
        module = importlib.import_module(info.name)
        missing += [f"{info.name}.{name}" for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert not missing, f"names in __all__ that the module does not define: {missing}"

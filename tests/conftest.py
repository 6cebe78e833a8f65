import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_TESTS_TMPDIR = "DIFFUSION_CLASSIFIERS_TESTS_TMPDIR"

# Offline, whatever the caller's environment: tests never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every temporary file of the run (pytest's tmp_path, the library's lists of unreadable files, the HF_HOME below,
# subprocesses' through TMPDIR) in one folder, removed when the process that made it exits: the suite left
# thousands of folders and files in /tmp. pytest-xdist workers inherit it from the controller.
if _TESTS_TMPDIR not in os.environ:
    os.environ[_TESTS_TMPDIR] = tempfile.mkdtemp(prefix="diffusion-classifiers-tests-")
    atexit.register(shutil.rmtree, os.environ[_TESTS_TMPDIR], ignore_errors=True)
os.environ["TMPDIR"] = tempfile.tempdir = os.environ[_TESTS_TMPDIR]
# A fresh HF_HOME, whatever the caller's: tests never read or write a user's cache.
os.environ["HF_HOME"] = os.path.join(os.environ[_TESTS_TMPDIR], "hf-home")
# Each pytest-xdist worker its own HF_HOME inside it: loading saved code copies modules into HF_HOME/modules, and two
# workers writing the same module file at once let one import it half-written (an ImportError seen in CI).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["HF_HOME"] = os.path.join(os.environ["HF_HOME"], os.environ["PYTEST_XDIST_WORKER"])
os.environ.pop("HF_MODULES_CACHE", None)
os.makedirs(os.environ["HF_HOME"], exist_ok=True)
# No progress bars in the output of the subprocesses tests start (tqdm >= 4.66 reads TQDM_* defaults when it is
# imported, which `import torch` above has already done in this process, whose bars pytest captures).
os.environ.setdefault("TQDM_DISABLE", "1")
# One thread: with two, a second busy process on a 2-core machine makes torch spin-wait 10-50x slower.
torch.set_num_threads(1)

# Property-based tests (tests/test_properties.py) draw the same examples on every run and machine: derandomized, no
# example database (no failures replayed from an earlier run), no per-example deadline (timings vary on shared CPUs).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("ci")


def shared_data(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


def digit_folder(root: Path, rows) -> None:
    """The digits 0 and 1 at `rows` of scikit-learn's digits as an image folder (zero/, one/) of 8x8 PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in rows:
        label = ["zero", "one"][digits.target[index]]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * 15).astype(np.uint8)).save(root / label / f"{index:04d}.png")


def random_image_folder(root: Path, folders=("ant", "bee"), per_folder: int = 6) -> Path:
    """`per_folder` random 8x8 grey PNGs (`0.png`, ...) in each of `folders` under `root` (class folders, or an
    unlabelled pool's runs); `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in folders:
        (root / name).mkdir(parents=True)
        for i in range(per_folder):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def python_subprocess_env() -> dict:
    """Environment for a fresh interpreter: offline, with this session's private HF_HOME."""
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


PYTHON = sys.executable


def run_loading_script(script: str) -> None:
    """Run a load-and-predict script in this process. Loading in a fresh interpreter, where only the package is
    imported, is tested once for every saved kind in tests/test_ecosystem_loading.py and
    tests/test_frozen_checkpoints.py; here a script only saves the interpreter start-up."""
    exec(compile(script, "<loading script>", "exec"), {"__name__": "__loading_script__"})

# Put on PYTHONPATH as sitecustomize.py, this makes `diffusion_classifiers` unimportable, as where it is not installed.
HIDE_PACKAGE = """
import importlib.util
import sys

HIDDEN = {"diffusion_classifiers"}

class HidePackage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

def find_spec(name, package=None, _find_spec=importlib.util.find_spec):
    return None if name.split(".")[0] in HIDDEN else _find_spec(name, package)  # diffusers' availability checks

sys.meta_path.insert(0, HidePackage())
importlib.util.find_spec = find_spec
"""
# The same, and scipy and scikit-learn too: a model loads and classifies with what diffusers and transformers need
# (QA: a saved pipeline folder failed to load without scipy, which only its cards' metrics need).
HIDE_PACKAGE_AND_METRICS_LIBRARIES = HIDE_PACKAGE.replace(
    'HIDDEN = {"diffusion_classifiers"}', 'HIDDEN = {"diffusion_classifiers", "scipy", "sklearn"}'
)

# The first lines of a script run under HIDE_PACKAGE: it stops when the package is importable after all.
PACKAGE_HIDDEN = """
try:
    import diffusion_classifiers
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the package is importable: nothing is tested")
""".strip()

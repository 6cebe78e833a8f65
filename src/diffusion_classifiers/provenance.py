"""What a run's outputs record of the software that made them and when: the versions of this library, of the packages
its results depend on and of Python, and the UTC date (one definition for training's `training_summary.json` and
every command's `metrics.json`; QA, a reproducibility audit: `demo`'s and `evaluate`'s recorded neither)."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform

from ._version import __version__

__all__ = ["RESULT_PACKAGES", "run_environment", "software_versions"]

# The installed packages a trained model or a measured figure depends on (pydicom: how DICOM pixels are read).
RESULT_PACKAGES = (
    "torch", "diffusers", "transformers", "accelerate", "datasets", "numpy", "scikit-learn", "safetensors", "pydicom",
)  # fmt: skip


def software_versions() -> dict:
    """`{"diffusion-classifiers": ..., <package>: ..., "python": ...}`: this library's version, each of
    `RESULT_PACKAGES`' as installed (None where one is not) and Python's."""
    versions = {"diffusion-classifiers": __version__}
    for name in RESULT_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {**versions, "python": platform.python_version()}


def run_environment() -> dict:
    """`{"date_utc", "versions"}` of a run that writes its results now: the UTC date and [`software_versions`]."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"date_utc": now, "versions": software_versions()}

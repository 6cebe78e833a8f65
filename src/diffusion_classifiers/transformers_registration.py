"""The transformers Auto classes learn this package's classes when transformers loads them, not when this package does.

`AutoConfig`, `AutoModelForImageClassification` and `AutoImageProcessor` find a `"diffusion-classifier"` model
without `trust_remote_code` only once its classes are registered with them. Registering at `import
diffusion_classifiers` would import transformers and torch there (seconds), so each class is registered right after
transformers has loaded the Auto module it goes into (a post-import hook on `sys.meta_path`), or at once when that
Auto module is already loaded. When this package's own imports load transformers, the registration waits until the
outermost of them has finished: importing the classes from inside them would meet this package half-initialised.
The registration lives here, not in the modules defining the classes: those are copied into saved models
(`remote_code.py`), and a copy run for one trusted folder must not register itself for every other folder.
"""

import importlib.abc
import sys

__all__ = ["register_when_transformers_loads"]

PACKAGE = __name__.rpartition(".")[0]


def register_config() -> None:
    from transformers import AutoConfig

    from .configuration_diffusion_classifier import DiffusionClassifierConfig

    AutoConfig.register(DiffusionClassifierConfig.model_type, DiffusionClassifierConfig, exist_ok=True)


def register_model() -> None:
    from transformers import AutoModelForImageClassification

    from .configuration_diffusion_classifier import DiffusionClassifierConfig
    from .modeling_diffusion_classifier import DiffusionFeaturesForImageClassification

    AutoModelForImageClassification.register(DiffusionClassifierConfig, DiffusionFeaturesForImageClassification, exist_ok=True)


def register_image_processor() -> None:
    from transformers import AutoImageProcessor

    from .configuration_diffusion_classifier import DiffusionClassifierConfig
    from .image_processing_diffusion_classifier import DiffusionClassifierImageProcessor

    AutoImageProcessor.register(DiffusionClassifierConfig, slow_image_processor_class=DiffusionClassifierImageProcessor, exist_ok=True)


# transformers' Auto module -> the registration it takes
AUTO_MODULES = {
    "transformers.models.auto.configuration_auto": register_config,
    "transformers.models.auto.modeling_auto": register_model,
    "transformers.models.auto.image_processing_auto": register_image_processor,
}


def _initializing(module) -> bool:
    return getattr(getattr(module, "__spec__", None), "_initializing", False)


def _package_busy(finished) -> bool:
    """Whether a module of this package other than `finished` is still being imported."""
    return any(name.startswith(PACKAGE) and module is not finished and _initializing(module)
               for name, module in list(sys.modules.items()))


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loaders other finders return for transformers' Auto modules and for this
    package's modules, so that after each has run, the registrations that are due run."""

    def __init__(self, pending: dict):
        self.pending = pending  # Auto modules not loaded yet -> their registration
        self.due = []  # registrations whose Auto module has loaded
        self.searching = set()  # names being looked up through the other finders (one of which may be a copy of this)

    def find_spec(self, name, path, target=None):
        if name in self.searching or (name not in self.pending and not name.startswith(PACKAGE + ".")):
            return None
        self.searching.add(name)
        try:
            finders = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
            spec = next(filter(None, (f.find_spec(name, path, target) for f in finders)), None)
        finally:
            self.searching.discard(name)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            self._wrap(spec.loader, name)
        return spec

    def _wrap(self, loader, name: str) -> None:
        run_module = loader.exec_module

        def exec_module(module):
            run_module(module)
            if name in self.pending:
                self.due.append(self.pending.pop(name))
            if self.due and not _package_busy(finished=module):
                self._register_due()

        loader.exec_module = exec_module

    def _register_due(self) -> None:
        while self.due:
            self.due.pop(0)()
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)


def register_when_transformers_loads() -> None:
    pending = {}
    for auto_module, register in AUTO_MODULES.items():
        if auto_module in sys.modules:
            register()
        else:
            pending[auto_module] = register
    # a re-import of this package (its modules dropped from sys.modules) replaces the hook its first import installed
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__qualname__ != _RegisterAfterImport.__qualname__]
    if pending:
        sys.meta_path.insert(0, _RegisterAfterImport(pending))

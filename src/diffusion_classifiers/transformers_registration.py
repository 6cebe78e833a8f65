"""The transformers Auto classes learn this package's classes when transformers loads them, not when this package does.

`AutoConfig`, `AutoModelForImageClassification` and `AutoImageProcessor` find a `"diffusion-classifier"` model
without `trust_remote_code` only once its classes are registered with them. Registering at `import
diffusion_classifiers` would import transformers and torch there (seconds), so each class registers itself at the
end of its own module, and that module is imported once transformers has loaded the Auto module it registers with
(a post-import hook on `sys.meta_path`), or at once when that Auto module is already loaded. When this package's
own imports load transformers, the registering module waits until the outermost of them has finished: importing it
from inside them would meet this package half-initialised.
"""

import importlib
import importlib.abc
import sys

__all__ = ["register_when_transformers_loads"]

PACKAGE = __name__.rpartition(".")[0]
# transformers' Auto module -> this package's module that registers with it when imported
AUTO_MODULES = {
    "transformers.models.auto.configuration_auto": f"{PACKAGE}.configuration_diffusion_classifier",
    "transformers.models.auto.modeling_auto": f"{PACKAGE}.modeling_diffusion_classifier",
    "transformers.models.auto.image_processing_auto": f"{PACKAGE}.image_processing_diffusion_classifier",
}


def _initializing(module) -> bool:
    return getattr(getattr(module, "__spec__", None), "_initializing", False)


def _package_busy(finished) -> bool:
    """Whether a module of this package other than `finished` is still being imported."""
    return any(name.startswith(PACKAGE) and module is not finished and _initializing(module)
               for name, module in list(sys.modules.items()))


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loaders other finders return for transformers' Auto modules and for this
    package's modules, so that after each has run, the registering modules that are due get imported."""

    def __init__(self, pending: dict):
        self.pending = pending  # Auto modules not loaded yet -> registering module
        self.due = []  # registering modules whose Auto module has loaded
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
                self._import_due()

        loader.exec_module = exec_module

    def _import_due(self) -> None:
        while self.due:
            importlib.import_module(self.due.pop(0))
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)


def register_when_transformers_loads() -> None:
    pending = {}
    for auto_module, own_module in AUTO_MODULES.items():
        if auto_module in sys.modules:
            importlib.import_module(own_module)
        else:
            pending[auto_module] = own_module
    # a re-import of this package (its modules dropped from sys.modules) replaces the hook its first import installed
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__qualname__ != _RegisterAfterImport.__qualname__]
    if pending:
        sys.meta_path.insert(0, _RegisterAfterImport(pending))

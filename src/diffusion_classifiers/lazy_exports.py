"""Package faces that import their modules on first use: `import diffusion_classifiers` (or one of its packages)
stays light, so the console script's `--help` answers without loading torch."""

import importlib
from typing import Callable, Dict, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for a package whose public names (`exports`: name -> defining submodule, relative
    to `package`) are imported when first used (PEP 562)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__

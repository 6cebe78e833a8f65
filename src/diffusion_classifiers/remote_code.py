"""What `save_pretrained` adds to a saved folder: the code that loads it without this package, and usual file modes
for its weights.

diffusers and transformers load custom code as flat modules: a file in the saved folder plus the files it imports
with `from .module import name` (same folder, no sub-packages). `write_remote_code` writes, for the classes a saved
model needs:

- a flat copy of every package module they import (the import closure; each imported name is resolved to the module
  that defines it, so package `__init__` re-exports do not matter): `diffusion_classifiers/models/rc_dit.py` becomes
  `diffusion_classifiers_models_rc_dit.py`, its package imports rewritten to `from .diffusion_classifiers_... import`;
- one entry file per class, named after the class's module (`pipeline_unet_features.py`,
  `modeling_diffusion_classifier.py`), that imports the class from the installed package when there is one and from
  the bundled copy otherwise.

A class loaded from such a copy (with `trust_remote_code=True`, without this package) has no package to write from:
with `allow_bundled=True` its bundled modules are copied again as they are, beside new entry files.
"""

import ast
import functools
import importlib
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .atomic_files import write_texts_atomically

__all__ = [
    "INSTALL_HINT",
    "PACKAGE",
    "bundled_module_name",
    "entry_module_name",
    "make_weights_readable_as_umask_allows",
    "package_module",
    "transformers_copies_no_code",
    "write_remote_code",
]

PACKAGE = "diffusion_classifiers"
PACKAGE_DIR = Path(__file__).resolve().parent
INSTALL_HINT = "pip install diffusion-classifiers"

# The installed package is imported by `importlib`, never by an import line: diffusers' `check_imports` takes a line
# that starts with `from <package> import` for a requirement, and without the package would warn on every load that
# it "might require" diffusion_classifiers, although the bundled copy serves. An installed package of another version
# than the model was saved with (an older release, or another project's package of the same name) is not used: its
# classes would score the model otherwise than the card says (QA: a config class from an installed 0.0.1 beside the
# bundled model class, without a word), so the bundled copy serves, with a warning naming both versions. An import
# error of another library (a dependency the installed package misses) is raised.
_ENTRY = '''\
"""`{name}` for `trust_remote_code=True` loading: the installed diffusion-classifiers package's class where its
version is the one this model was saved with ({install_hint}=={version}), else the copy of its code saved with this
model. Written by `save_pretrained`."""

import importlib
import warnings

SAVED_WITH = "{version}"


def _installed_package():
    """The installed package, where it is the version this model was saved with; else None."""
    try:
        package = importlib.import_module("{package}")
    except ImportError as error:
        if (error.name or "").partition(".")[0] != "{package}":
            raise
        return None
    installed = getattr(package, "__version__", None)
    if installed != SAVED_WITH:
        warnings.warn(
            f"{package} {{installed or 'of an unknown version'}} is installed; this model was saved with "
            f"{{SAVED_WITH}}: the code saved with the model is used, not the package's "
            f"({install_hint}=={{SAVED_WITH}} to use the package's classes)"
        )
        return None
    return package


def _installed_class():
    """`{name}` of the installed package of the saved version; None where there is none, or it lacks the class (a
    development checkout of the same version number)."""
    if _installed_package() is None:
        return None
    try:
        return getattr(importlib.import_module("{installed_module}"), "{name}")
    except (ImportError, AttributeError) as error:
        if isinstance(error, ImportError) and (error.name or "").partition(".")[0] != "{package}":
            raise
        return None


BUNDLE = "{bundle}"  # the bundle of code saved with this model: its every module ends with it


def _drop_other_folders_bundles():
    """diffusers imports every local folder's code as the same modules (`diffusers_modules.local.<file>`): where one
    of those imported in this process is another bundle's (a folder saved with other code), all are dropped (they
    refer to each other's classes), so that this folder's own are imported. The other folder's objects keep the
    modules they were built with (one they import later, inside a function, is then this folder's)."""
    import sys

    prefix = f"{{__package__}}.{package}_"
    imported = [(name, module) for name, module in list(sys.modules.items()) if name.startswith(prefix)]
    if all(getattr(module, "_BUNDLE", None) == BUNDLE for _, module in imported):
        return
    package = sys.modules.get(__package__)
    for name, module in imported:
        del sys.modules[name]
        if getattr(package, name.rpartition(".")[2], None) is module:  # what `from . import` would read
            delattr(package, name.rpartition(".")[2])


{name} = _installed_class()
if {name} is None:
    _drop_other_folders_bundles()
{fallback}
__all__ = ["{name}"]
'''

_HEADER = "# Bundled copy of {module} (diffusion-classifiers {version}), written by save_pretrained.\n"
_BUNDLE_LINE = re.compile(r'\n_BUNDLE = "[0-9a-f]+"[^\n]*\n\Z')
_HEADER_PATTERN = re.compile(rf"# Bundled copy of ({PACKAGE}(?:\.\w+)*) \((?:diffusion-classifiers ([^)]*)\))?")

# The root entry names every bundled module itself: diffusers copies to its module cache only the files that the
# loaded file imports directly (it reads the import lines, it does not run them). The names are under `if False:`, so
# that loading runs only the imports the class needs: a module imported only where it is used (the metrics, which
# need scipy and scikit-learn, for a card) must not stop a folder from loading without those libraries.
_ROOT_NAMES = "    if False:  # for diffusers to copy these files beside this one; each is imported where it is used\n"
_ROOT_FALLBACK = "    from .{module} import {name}{noqa}\n"

# A component's entry is loaded after the pipeline's entry has put the bundled modules beside it in diffusers' module
# cache. `from . import` (unlike `from .module import`) keeps diffusers from copying them from the component's
# folder, which on the Hub holds only this file.
_COMPONENT_FALLBACK = "    from . import {module} as bundled\n\n    {name} = bundled.{name}\n"


def bundled_module_name(module: str) -> str:
    """The flat file name (without `.py`) of the bundled copy of package module `module`."""
    return module.replace(".", "_")


def entry_module_name(cls: type) -> str:
    """The module name (file name without `.py`) of `cls`'s entry file: the last part of its package module's name."""
    return package_module(cls).rsplit(".", 1)[-1]


def _loaded_file(cls: type) -> Optional[Path]:
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return None if path is None else Path(path)


def package_module(cls: type) -> str:
    """The package module defining `cls`: its own module for a class of the installed package, else the module whose
    bundled copy (saved with a model, loaded with `trust_remote_code=True`) defines it, read from the copy's header."""
    if _in_package(cls.__module__):
        return cls.__module__
    return _bundled_header(cls).group(1)


def _code_version(cls: type) -> str:
    """The diffusion-classifiers version of `cls`'s code: the installed package's, or the one its bundled copy's
    header names ("unknown" where it names none)."""
    if _in_package(cls.__module__):
        return _package_version()
    return _bundled_header(cls).group(2) or "unknown"


def _bundled_header(cls: type) -> re.Match:
    path = _loaded_file(cls)
    first_line = path.read_text(encoding="utf-8").partition("\n")[0] if path is not None and path.is_file() else ""
    match = _HEADER_PATTERN.match(first_line)
    if match is None:
        raise ValueError(
            f"{cls.__name__} comes from {cls.__module__}: expected a class of the {PACKAGE} package or of the code "
            "its save_pretrained saves with a model"
        )
    return match


def _source_path(module: str) -> Path:
    relative = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    return relative / "__init__.py" if (relative / "__init__.py").is_file() else relative.with_suffix(".py")


def _is_package(module: str) -> bool:
    return _source_path(module).name == "__init__.py"


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _parse(module: str) -> ast.Module:
    path = _source_path(module)
    status = path.stat()
    return _parsed(str(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=None)
def _parsed(path: str, modified_ns: int, size: int) -> ast.Module:
    """A source file's syntax tree, parsed once for each version of the file: a save follows the package's imports
    through the same files about 160 times (0.65 s a save, parsed each time; 0.08 s cached). Callers only read it."""
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def _import_target(node: ast.ImportFrom, module: str) -> str:
    """The absolute name of the module `node` imports from, inside `module`."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if _is_package(module) else module.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _package_imports(module: str) -> List[Tuple[ast.ImportFrom, str]]:
    """Every `from <package module> import ...` of `module` (at any depth) with its absolute target."""
    found = []
    for node in ast.walk(_parse(module)):
        if isinstance(node, ast.Import) and any(_in_package(alias.name) for alias in node.names):
            raise ValueError(f"{module}: `import {node.names[0].name}` cannot be bundled; expected `from ... import`")
        if isinstance(node, ast.ImportFrom) and _in_package(_import_target(node, module)):
            found.append((node, _import_target(node, module)))
    return found


def _defining_module(module: str, name: str) -> str:
    """The package module that defines `name` imported from `module`, followed through re-exports."""
    for node in _parse(module).body:
        if isinstance(node, ast.ImportFrom) and _in_package(_import_target(node, module)):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _defining_module(_import_target(node, module), alias.name)
    lazy = _lazy_exports(module) if _is_package(module) else {}
    if name in lazy:
        return _defining_module(f"{module}.{lazy[name]}", name)
    if _is_package(module):
        raise ValueError(
            f"cannot bundle `from {module} import {name}`: expected {name} to be re-exported from a module, not "
            "defined in (or lazily loaded by) a package __init__"
        )
    return module


def _lazy_exports(package: str) -> Dict[str, str]:
    """The `_EXPORTS` mapping (public name -> submodule) of a package face built with `lazy_exports`."""
    for node in _parse(package).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]:
            return ast.literal_eval(node.value)
    return {}


def _bundled_source(module: str) -> Tuple[str, Dict[str, str]]:
    """The source of `module` with its package imports rewritten to flat relative ones, and `{imported module: a
    name imported from it}`."""
    lines = _source_path(module).read_text(encoding="utf-8").splitlines(keepends=True)
    imported: Dict[str, str] = {}
    for node, target in sorted(_package_imports(module), key=lambda item: -item[0].lineno):
        groups: Dict[str, List[str]] = {}
        for alias in node.names:
            if alias.name == "*":
                raise ValueError(f"{module}: `from {target} import *` cannot be bundled; name the imports")
            source = _defining_module(target, alias.name)
            groups.setdefault(source, []).append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
            imported.setdefault(source, alias.name)
        indent = " " * node.col_offset
        lines[node.lineno - 1 : node.end_lineno] = [
            f"{indent}from .{bundled_module_name(source)} import {', '.join(names)}\n"
            for source, names in groups.items()
        ]
    return "".join(lines), imported


def _package_version() -> str:
    """`diffusion_classifiers.__version__`, looked up when a bundle is written (which needs the package installed:
    `_check_installed`), not imported by name: a bundled copy of this module cannot import the package's root."""
    return importlib.import_module(PACKAGE).__version__


def _check_installed(cls: type) -> None:
    if not _in_package(cls.__module__):
        raise ValueError(
            f"{cls.__name__} comes from {cls.__module__}, not the diffusion_classifiers package: saving a model "
            f"loaded from bundled code writes its code again from the package, so it needs `{INSTALL_HINT}`"
        )


def _bundle_texts(modules: Sequence[str]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """The flat copies of `modules` and of every package module they import (`{file name: text}`), and `{bundled
    module name: a name another bundled module imports from it}` ("" for a module nothing imports)."""
    header = _HEADER.format(module="{}", version=_package_version())
    texts, first_name, pending = {}, {}, list(modules)
    while pending:
        module = pending.pop()
        name = bundled_module_name(module)
        if f"{name}.py" in texts:
            continue
        source, imported = _bundled_source(module)
        texts[f"{name}.py"] = header.format(module) + source
        for dependency, imported_name in imported.items():
            first_name.setdefault(bundled_module_name(dependency), imported_name)
            pending.append(dependency)
    return texts, {Path(file).stem: first_name.get(Path(file).stem, "") for file in texts}


def _bundle_sources(files: Sequence[Path]) -> Dict[Path, str]:
    """The text of the bundled modules `files` (loaded from a saved model's code) and of every bundled module they
    import (flat `from .module import name`, resolved beside the importing file), all read before anything is
    written."""
    sources: Dict[Path, str] = {}
    pending = list(files)
    while pending:
        path = pending.pop()
        if path in sources:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected the bundled module saved with the model to be loaded")
        sources[path] = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(sources[path])):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                pending.append(path.parent / f"{node.module}.py")
    return sources


def _copied_bundle_texts(files: Sequence[Path]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """The bundled modules `files` and the bundled modules they import, as they are: what `_bundle_texts` returns."""
    sources = _bundle_sources(files)
    first_name = {path.stem: "" for path in sources}
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and not first_name[node.module]:
                first_name[node.module] = node.names[0].name
    return {path.name: source for path, source in sources.items()}, first_name


def _mark_bundle(texts: Dict[str, str]) -> str:
    """End every bundled module of `texts` with the bundle's id (16 hex digits of the sha256 of their texts without
    it, so a copy of a loaded bundle keeps it), and return it: the entry files tell another folder's bundle, imported
    under the same module names, by it."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(texts):
        texts[name] = _BUNDLE_LINE.sub("", texts[name])
        digest.update(f"{name}\n{texts[name]}".encode("utf-8"))
    bundle = digest.hexdigest()[:16]
    for name in texts:
        texts[name] += f"\n_BUNDLE = \"{bundle}\"  # the bundle this copy belongs to (see the entry files)\n"
    return bundle


def _entry_text(cls: type, fallback: str, bundle: str) -> str:
    return _ENTRY.format(
        bundle=bundle,
        name=cls.__name__,
        installed_module=package_module(cls),
        package=PACKAGE,
        install_hint=INSTALL_HINT,
        version=_code_version(cls),
        fallback=fallback,
    )


def _check_destination(folder: Path, classes: Sequence[type], components: Mapping[str, type]) -> None:
    """Refuse, before anything is written, what is not a class and a folder that is not there."""
    for where, cls in [*(("classes", cls) for cls in classes), *components.items()]:
        if not isinstance(cls, type):
            raise TypeError(f"expected a class for {where!r} to write the remote code of, got {type(cls).__name__}")
    for subfolder in ["", *components]:
        if not (folder / subfolder).is_dir():
            raise FileNotFoundError(
                f"{folder / subfolder} is not a folder: expected the saved model's "
                + (f"component folder {subfolder!r}" if subfolder else "folder")
                + " to write the remote code into"
            )


def write_remote_code(
    save_directory: Union[str, os.PathLike],
    classes: Sequence[type],
    components: Optional[Mapping[str, type]] = None,
    allow_bundled: bool = False,
) -> None:
    """Write into `save_directory` what loading `classes` with `trust_remote_code=True` needs without this package:
    the bundled closure of their modules and an entry file `<entry_module_name(cls)>.py` for each. `components`
    (`{subfolder: class}`, diffusers' custom components) get an entry file in their subfolder, which reads the
    bundled code the root entry loaded. Classes loaded from a saved model's bundled code (this package not installed)
    are refused, unless `allow_bundled`: then the bundled modules they were loaded from are copied as they are.

    Every file is rendered before the first is written, and each is written whole or not at all
    (`atomic_files.write_texts_atomically`): a refused input or a stopped process leaves no half-written code behind."""
    folder = Path(save_directory)
    components = dict(components or {})
    _check_destination(folder, classes, components)
    everything = [*classes, *components.values()]
    if allow_bundled and not all(_in_package(cls.__module__) for cls in everything):
        files = [_loaded_file(cls) for cls in everything]
        for cls in everything:
            package_module(cls)  # a class of neither the package nor its bundled code is refused here
        texts, bundled = _copied_bundle_texts(files)
    else:
        for cls in everything:
            _check_installed(cls)
        texts, bundled = _bundle_texts([cls.__module__ for cls in everything])
    bundle = _mark_bundle(texts)
    for cls in classes:
        own = bundled_module_name(package_module(cls))
        first_names = {module: name for module, name in bundled.items() if module != own and name}
        named = "".join(
            "    " + _ROOT_FALLBACK.format(module=module, name=name, noqa="  # noqa: F401")
            for module, name in sorted(first_names.items())
        )
        fallback = (_ROOT_NAMES + named if named else "") + _ROOT_FALLBACK.format(module=own, name=cls.__name__, noqa="")
        texts[f"{entry_module_name(cls)}.py"] = _entry_text(cls, fallback, bundle)
    for subfolder, cls in components.items():
        fallback = _COMPONENT_FALLBACK.format(module=bundled_module_name(package_module(cls)), name=cls.__name__)
        texts[f"{subfolder}/{entry_module_name(cls)}.py"] = _entry_text(cls, fallback, bundle)
    write_texts_atomically(folder, texts)


@contextmanager
def transformers_copies_no_code(classes: Sequence[type]) -> Iterator[None]:
    """While saving, keep transformers from copying the module files of `classes` loaded through an Auto class with
    `trust_remote_code=True` and pointing `auto_map` at them (`custom_object_save`): `write_remote_code` writes the
    code, and `auto_map` names its entry files, which prefer the installed package."""
    previous = [(cls, "_auto_class" in vars(cls), getattr(cls, "_auto_class", None)) for cls in classes]
    for cls, _, _ in previous:
        cls._auto_class = None
    try:
        yield
    finally:
        for cls, own, auto_class in previous:
            if own:
                cls._auto_class = auto_class
            else:
                del cls._auto_class


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def make_weights_readable_as_umask_allows(folders: Sequence[Union[str, os.PathLike]]) -> None:
    """Give the `.safetensors` files directly in `folders` the mode a plain `open(..., "w")` would (0o666 minus the
    umask, usually 0o644): safetensors writes them through a private temporary file (0o600), which other users of a
    shared model folder or cache could not read. Other files are left as they are."""
    mode = 0o666 & ~_umask()
    for folder in folders:
        for path in Path(folder).glob("*.safetensors"):
            if path.is_file() and not path.is_symlink():
                path.chmod(mode)

"""The input checks every layer shares: labels, class counts, feature matrices, finite values, images in [-1, 1].

Each raises a `ValueError` that names the input and the first bad item, before any long computation.
"""

import csv
import math
import numbers
import os
import re
import sys
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

# Files that are pickles: loading one can run arbitrary code, so the library never loads nor uploads them (it loads
# safetensors and JSON only).
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pickle", ".pkl", ".pt", ".pth")

__all__ = [
    "PICKLE_SUFFIXES",
    "as_feature_matrix",
    "as_inverse_regularisations",
    "as_labels",
    "check_class_names",
    "check_finite_rows",
    "check_label_range",
    "check_no_lookalike_names",
    "check_no_pickled_weights",
    "check_output_outside_data",
    "check_output_outside_model",
    "check_positive_integer",
    "check_unique_class_names",
    "check_unit_range",
    "check_writable_dir",
    "check_writable_file",
    "near_miss_note",
    "removed_if_left_empty",
    "resolve_num_classes",
    "unicode_normalisation_note",
]


def user_stacklevel() -> int:
    """The `stacklevel` that makes a warning raised where this is called name the first line outside this package
    (the user's call, whichever pipeline, image processor or function of the package it went through): counted from
    the frames, not fixed, since the same warning is reached through several paths (QA: it named package lines,
    which `warnings.filterwarnings(module=...)` could not select)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def as_labels(values, name: str) -> np.ndarray:
    """`values` (tensor, array or list) as a non-empty 1-D int64 array; float labels must be whole numbers."""
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"expected {name} as a non-empty 1-D array of integer labels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"expected integer labels in {name}, got dtype {array.dtype}")
        array = array.astype(np.int64)
    return array


def as_inverse_regularisations(C, name: str = "C") -> Tuple[float, ...]:
    """`C` (scikit-learn's inverse regularisation strength: a number, or several as any 1-D sequence, array, tensor or
    `range`) as a tuple of distinct values in the order given, each checked `0 < C < inf`."""
    try:
        values = np.asarray(C.detach().cpu() if isinstance(C, torch.Tensor) else C)
    except (TypeError, ValueError):  # e.g. a ragged list
        values = np.asarray(None)
    numbers = np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    if not numbers or values.ndim > 1 or values.size == 0 or not np.all((values > 0) & (values < math.inf)):
        raise ValueError(
            f"expected {name} as a number or a non-empty sequence of numbers with 0 < C < inf, got {name}={C!r}"
        )
    return tuple(dict.fromkeys(float(c) for c in values.reshape(-1)))


def check_positive_integer(value, name: str) -> None:
    """`value` is an integer >= 1 (a batch size): else refused by `name`, not by torch deep in the call."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


# Seeds numpy's legacy generator (and scikit-learn's random_state) take: 0..SEED_LIMIT - 1.
SEED_LIMIT = 2**32


def is_seed(value: Any, processes: int = 1) -> bool:
    """Whether `value` seeds numpy's generator in each of `processes` processes (accelerate's `set_seed(seed,
    device_specific=True)` gives process i the seed `value + i`): an integer in `0..2**32 - processes`."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return integral and 0 <= value <= SEED_LIMIT - processes


def derived_seed(seed: int, offset: int) -> int:
    """The `offset`-th seed drawn from `seed` (a resample's, an episode's), within numpy's and scikit-learn's range
    however near its top `seed` is (QA: `--seed 4294967295` failed in KMeans after the features were extracted):
    `seed` itself for offset 0 (so `fit-head --seed s` draws episode 0's labels), else numpy's `SeedSequence` of the
    pair, so runs of other seeds share no draw (QA, a methods review: as `seed + offset`, seeds 0, 1 and 2 shared 4 of
    their 5 episodes, and a spread over seeds read too narrow)."""
    if offset == 0:
        return seed % SEED_LIMIT
    return int(np.random.SeedSequence([seed, offset]).generate_state(1)[0])


def check_seed(value: Any, name: str, processes: int = 1) -> None:
    """Refuse a seed that is not [`is_seed`], by `name`, before any work (QA: numpy's own errors named no flag, or
    came after the model was loaded and its features extracted)."""
    if not is_seed(value, processes):
        per_process = f" ({processes} processes seed value + i each)" if processes > 1 else ""
        raise ValueError(f"{name}: expected an integer in 0..{SEED_LIMIT - processes}{per_process}, got {value!r}")


def check_name_list(names: Any, name: str) -> None:
    """`names` (class names, one per label id) is None or a list: a single string is refused, not read letter by
    letter as names (QA: `class_names="ab"` became the classes 'a' and 'b')."""
    if isinstance(names, (str, bytes)):
        raise ValueError(f"{name}: expected a list of names, one per label id, got the string {names!r}")


def typed_command(args: Any) -> str:
    """The command that ran, for the records of its outputs: `args.command_line`, which the console script's `main`
    sets from its argv, else this process's own command line (a `run_*` function called from Python with a namespace
    of its own: the script that called it, as `training_summary.json` records it)."""
    import shlex

    return getattr(args, "command_line", None) or shlex.join(sys.argv)


def first_and_more(texts: Sequence[str], limit: int, separator: str = ", ") -> str:
    """The first `limit` of `texts` joined by `separator`, then a count of the rest: "a, b and 3 more", or with "; "
    (texts that hold commas themselves, such as error messages) "a; b; and 3 more"."""
    left_out = len(texts) - limit
    if left_out <= 0:
        return separator.join(texts)
    before_and = "" if separator == ", " else separator.rstrip()
    return f"{separator.join(texts[:limit])}{before_and} and {left_out} more"


def check_label_range(labels, name: str, num_classes: int) -> None:
    """Every label in `[0, num_classes)`; the error names the first one outside."""
    array = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if len(bad):
        raise ValueError(f"{name}[{bad[0]}] = {array[bad[0]]} is outside the expected range [0, {num_classes - 1}]")


def resolve_num_classes(num_classes: Optional[int], class_names: Optional[Sequence[str]], *label_arrays) -> int:
    """`num_classes`, else `len(class_names)`, else the largest label + 1; at least 2 and consistent with the names."""
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(max(a.max() for a in label_arrays)) + 1
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"expected {num_classes} class_names, got {len(class_names)}: {list(class_names)}")
    if class_names is not None:
        check_unique_class_names(class_names, "class_names")
    if num_classes < 2:
        raise ValueError(f"expected num_classes >= 2, got {num_classes}")
    return num_classes


def check_no_pickled_weights(
    folder: Union[str, os.PathLike], expected: str = "model.safetensors (save with save_pretrained, which writes it)"
) -> None:
    """`ValueError` before loading when the local `folder` holds pickled weights (`PICKLE_SUFFIXES`) and no
    safetensors, naming the pickle and what was `expected`: loading a pickle can run arbitrary code. A Hub id (no such
    folder) passes: the loaders ask for safetensors only. A Trainer output's `training_args.bin` holds its arguments,
    not weights."""
    if not os.path.isdir(folder):
        return
    files = os.listdir(folder)
    pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES) and name != "training_args.bin")
    if pickles and not any(name.endswith(".safetensors") for name in files):
        raise ValueError(
            f"{os.path.join(folder, pickles[0])}: pickled weights are refused (loading a pickle can run arbitrary "
            f"code); expected {expected}"
        )


def check_unique_class_names(class_names: Sequence[str], where: str) -> None:
    """`ValueError` naming the repeated names of `class_names`, compared as text (a label id each: a repeated one
    would make two classes one name, their per-class rows merged, and a transformers export's `label2id` would lose
    one of them)."""
    names = [str(name) for name in class_names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{where}: expected distinct names, got {repeated} more than once in {names}")


def check_two_classes_at_least(class_names: Sequence[str], source, task: str) -> None:
    """A classifier needs 2 classes or more: checked as soon as the data is read, naming it."""
    if len(class_names) < 2:
        raise ValueError(
            f"{source}: {len(class_names)} class {list(class_names)}; {task} needs 2 classes or more (an image folder: "
            "one subfolder per class)"
        )


def check_finite_rows(values, name: str, item: str = "row", start: int = 0) -> None:
    r"""
    No NaN or inf in `values` (tensor or array, one item per leading index).

    Args:
        values (`torch.Tensor` or `np.ndarray`): `[N, ...]`; a 1-D input has one value per item.
        name (`str`): the input, as the error names it.
        item (`str`, *optional*, defaults to `"row"`): what one leading index is (`"image"`, `"row"`).
        start (`int`, *optional*, defaults to 0): the position of `values[0]` in a larger batch, added to the index.

    Raises:
        `ValueError`: `"{name} {item} {i} contains NaN or inf"`, `i` the first bad item (plus `start`).
    """
    flat = torch.as_tensor(values.detach() if hasattr(values, "detach") else np.asarray(values))
    if flat.numel() == 0:
        return
    finite = torch.isfinite(flat.reshape(len(flat), -1)).all(dim=1) if flat.ndim else torch.isfinite(flat)[None]
    if not finite.all():
        raise ValueError(f"{name} {item} {start + int((~finite).nonzero()[0])} contains NaN or inf")


def as_feature_matrix(features, name: str, num_rows: Optional[int] = None) -> torch.Tensor:
    """`features` (tensor or array) as a float32 CPU `[N, D]` tensor with finite rows, and `num_rows` rows if given;
    the errors name `name` and the expected shape, or the first row with NaN or inf."""
    x = torch.as_tensor(features.detach().cpu() if hasattr(features, "detach") else np.asarray(features)).float()
    if x.ndim != 2 or (num_rows is not None and len(x) != num_rows):
        rows = "N" if num_rows is None else f"{num_rows}"
        raise ValueError(f"expected {name} of shape [{rows}, D], one row per label, got {tuple(x.shape)}")
    check_finite_rows(x, name)
    return x


def check_unit_range(images: torch.Tensor, name: str = "images", tolerance: float = 1e-3) -> None:
    """Images `[N, ...]` scaled to [-1, 1] (up to `tolerance`, which lets resampling overshoot through; data in
    [0, 255] still fails)."""
    flat = images.detach().flatten(1).float()
    out_of_range = (flat.abs() > 1 + tolerance).any(dim=1)
    if out_of_range.any():
        i = int(out_of_range.nonzero()[0])
        low, high = flat[i].min(), flat[i].max()
        raise ValueError(f"{name}: image {i} has values in [{low:.3g}, {high:.3g}]; expected images scaled to [-1, 1]")


def check_no_earlier_report(path, overwrite: bool, name: str = "--output_dir") -> None:
    """Refuse a folder holding an earlier run's report (`metrics.json`) unless `overwrite`: a new report would replace
    it without a word. An overwriting run sets it aside before its first file and writes its own last
    (`replaced_reports.replacing_earlier_report`), so a run that fails halfway keeps the earlier one; one killed
    halfway is settled here first (its earlier report moved back). `name` is the flag (`--output_dir`) or, for a
    Python function, its argument (`output_dir`: then `overwrite=True` is named)."""
    from .replaced_reports import settle_replaced_report

    if os.path.isdir(path):
        settle_replaced_report(path)
    if not overwrite and os.path.exists(os.path.join(path, "metrics.json")):
        way = "--overwrite_output_dir" if name.startswith("--") else "overwrite=True"
        raise ValueError(
            f"{name} {str(path)!r} holds an earlier report (metrics.json); choose another folder, or pass {way} to "
            "replace it"
        )


def check_output_outside_data(output_dir, data, data_flag: str = "--dataset", flag: str = "--output_dir") -> None:
    """An output folder inside the image folder `data` is refused before any work: the images a run writes there
    (figures, samples, checkpoints' PNGs) would be read as the folder's images by later runs and by training (QA: a
    rerun clustered 601 images of a 600-image pool, its own figure among them; a trainer wrote into its data folder).
    `"digits"` names scikit-learn's digits, never a folder (QA: `--output_dir digits` refused as inside it). A CSV's
    image folders are those of the files it lists, and the folder of class folders they are in (a folder named as its
    image's label: QA, a run's figures in `imgs/run/` beside `imgs/<class>/` were read as a class of its own)."""
    if output_dir is None or data is None or str(data) == "digits":
        return
    output = Path(output_dir).resolve()
    if os.path.isdir(data):
        folders, where = [Path(data).resolve()], f"the input folder {data}"
    elif os.path.isfile(data) and str(data).lower().endswith(".csv"):
        folders, where = _listed_image_folders(Path(data)), f"a folder of images {data} lists"
    else:
        return
    inside = next((folder for folder in folders if output == folder or folder in output.parents), None)
    if inside is not None:
        raise ValueError(
            f"{flag} {output_dir}: inside {where} ({data_flag}), {inside}; expected a folder outside it, whose images "
            "(figures, samples) would otherwise be read as the folder's images by later runs and training"
        )


def check_output_outside_model(output_dir, model_dir) -> None:
    """An output folder in a local model folder (`--model_dir`) is refused before any work: its report, predictions
    and figures would be published with the model, which `push_to_hub` refuses (QA: `evaluate --output_dir` of the
    model's own folder wrote them beside its weights)."""
    if output_dir is None or model_dir is None or not os.path.isdir(model_dir):
        return
    folder, output = Path(model_dir).resolve(), Path(output_dir).resolve()
    if output == folder or folder in output.parents:
        raise ValueError(
            f"--output_dir {output_dir}: inside the model folder {model_dir} (--model_dir); expected a folder outside "
            "it (its report, predictions and figures would be published with the model)"
        )


def _listed_image_folders(listing: Path) -> list[Path]:
    """The folders of the files a CSV of `path,label` rows lists, with the folder above each one named as its row's
    label (a folder of class folders) but for the CSV's own (its outputs beside it are the usual layout, and read by
    no listing of it: review); none where it cannot be read (its loader says why)."""
    try:
        with open(listing, newline="", encoding="utf-8-sig") as handle:
            listed = [row for row in csv.DictReader(handle) if row.get("path")]
        rows = {(os.path.dirname(row["path"]), row.get("label")) for row in listed}
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    own, folders = listing.parent.resolve(), set()
    for folder, label in rows:
        resolved = (listing.parent / folder).resolve()
        folders.add(resolved)
        if label is not None and resolved.name == label and resolved.parent != own:
            folders.add(resolved.parent)
    return sorted(folders)


def check_writable_dir(path, name: str = "output_dir") -> None:
    """`path` is a folder this process can write into, created when missing: checked before any long work, so a run
    never fails only when it saves its results."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r}: expected a writable folder, got {error.strerror or error}") from error


def _normal_form(name: str) -> str:
    return next((form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, name)), "neither NFC nor NFD")


def check_class_names(names: Sequence[str], where: str) -> None:
    """Class names read from data (folder names, a CSV's labels) every report, card and CSV can show: none holding a
    control character (QA: a CSV label with newlines broke the card's label list into a heading and its per-class
    table across lines), and no two alike but for Unicode normalisation (`check_no_lookalike_names`)."""
    for name in names:
        controls = sorted({char for char in str(name) if unicodedata.category(char) == "Cc"})
        if controls:
            raise ValueError(
                f"{where}: class name {name!r} holds the control character(s) {', '.join(map(repr, controls))}, which "
                "break the reports', cards' and CSVs' lines; expected printable names: rename the class"
            )
    check_no_lookalike_names(names, where)


def check_no_lookalike_names(names: Sequence[str], where: str) -> None:
    """Refuse class names of which two are one name once both are in NFC (a folder written on a Mac, with accents
    as combining characters, beside one written elsewhere): two classes that look the same in every report, plot and
    card (QA: `café` twice, two identical rows in report.md)."""
    first_by_nfc: dict = {}
    for name in names:
        twin = first_by_nfc.setdefault(unicodedata.normalize("NFC", name), name)
        if twin != name:
            raise ValueError(
                f"{where}: class names {twin!r} and {name!r} differ only in Unicode normalisation "
                f"({_normal_form(twin)} vs {_normal_form(name)}: one written on a Mac?), so two classes would look the "
                "same in every report; expected distinct names: rename or merge them"
            )


def near_miss_note(unknown: Sequence[str], known: Sequence[str]) -> str:
    """For the names in `unknown` that match a name of `known` but for Unicode normalisation (identical-looking:
    `détritus` written with a combining accent, NFD, vs one precomposed character, NFC), letter case, the separators
    between words or surrounding spaces (QA, another site's folders: `Noctilucales` for `noctilucales`, `diatom chain`
    for `diatom_chain`), the words that say so, to append to the error that refuses them; `""` for none. Names are
    never matched silently: the error says which to rewrite."""
    notes = [note for name in unknown for note in [_near_miss(name, known)] if note]
    if not notes:
        return ""
    return f" ({', '.join(notes[:5])}{', ...' if len(notes) > 5 else ''}; write them as the model does)"


_WORD_SEPARATORS = re.compile(r"[\s_.-]+")


def _near_miss(name: str, known: Sequence[str]) -> str:
    """How `name` differs from the names of `known` it matches but for Unicode normalisation, letter case, the
    separators between words (spaces, `_`, `-`, `.`) and surrounding spaces (`'CAT' differs from 'Cat' or 'cat' only
    in letter case`); "" for none."""

    def loose(text: str, normal: bool = True, case: bool = True, separators: bool = True) -> str:
        text = (unicodedata.normalize("NFC", text) if normal else text).strip()
        text = text.casefold() if case else text
        return _WORD_SEPARATORS.sub("_", text) if separators else text

    matches = [match for match in known if loose(match) == loose(name)]
    if not matches:
        return ""
    first = matches[0]
    differences = []
    if loose(name, normal=False) != loose(first, normal=False):
        differences.append(f"Unicode normalisation ({_normal_form(name)} vs {_normal_form(first)})")
    if loose(name, case=False) != loose(first, case=False):
        differences.append("letter case")
    if loose(name, separators=False) != loose(first, separators=False):  # QA: "diatom chain" for "diatom_chain"
        differences.append("the separators between words")
    if name != name.strip() or first != first.strip():
        differences.append("surrounding spaces")
    return f"{name!r} differs from {' or '.join(map(repr, matches))} only in {' and '.join(differences)}"


# the name of earlier versions
unicode_normalisation_note = near_miss_note


@contextmanager
def removed_if_left_empty(path) -> Iterator[None]:
    """A block that may create the folder `path` (`check_writable_dir`, with its missing parents) and then fail: if it
    raises, the folders of `path` that did not exist before the block and are still empty are removed, deepest first,
    so a refused run leaves no empty folder behind; a folder that existed before is never touched."""
    created = []  # path and its missing parents, deepest first
    folder = Path(os.path.abspath(path))
    while not os.path.lexists(folder) and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        yield
    except BaseException:
        for folder in created:
            if not os.path.isdir(folder) or os.listdir(folder):
                break
            os.rmdir(folder)
        raise


def check_writable_file(path, name: str) -> None:
    """A file could be written at `path` at the end of a run, checked before it starts and without creating anything:
    not a folder in its place, no file where a folder of its path must be, a folder this user may write into."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {path}: expected a file, it is a folder")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{name} {path}: its folder cannot be created, {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)  # QA: a read-only mount was blamed on permissions
        why = f"{folder} is on a read-only file system" if read_only else f"this user may not write into {folder}"
        raise ValueError(f"{name} {path}: {why}")

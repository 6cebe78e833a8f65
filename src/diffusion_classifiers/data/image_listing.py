"""The files an image folder or a CSV of paths holds: class folders or split files, labels and patient ids, and
which files a listing reads (images and DICOM)."""

from __future__ import annotations

import csv
import functools
import os
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .dicom import _DICOM_HEADER_NOTE, DICOM_EXTENSIONS, is_dicom_file
from .image_files import IMAGE_EXTENSIONS
from .labeled_images import labels_and_names
from ..validation import first_and_more

__all__ = [
    "ACCEPTED_FILES",
    "list_image_folder",
    "list_unlabeled_folder",
    "warn_other_files_skipped",
]

# What a listing reads, for its errors.
ACCEPTED_FILES = f"extensions {sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS)}; {_DICOM_HEADER_NOTE}"
# Folders that file systems, NAS and archivers add beside the data (thumbnails, resource forks, recycle bins): skipped
# as hidden ones are (QA: a Synology NAS's `@eaDir/<image>/SYNOPHOTO_THUMB_S.jpg` thumbnails were predicted).
SYSTEM_FOLDERS = frozenset(
    {"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information", "#recycle", "#snapshot", "lost+found"}
)


def is_skipped_name(name: str) -> bool:
    """Whether a listing skips the file or folder `name` unread and unmentioned: hidden (a name starting with ".":
    `.DS_Store`, AppleDouble `._a.jpg`) or a system folder (`SYSTEM_FOLDERS`)."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def list_image_folder(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str], dict[str, np.ndarray]]:
    """The image files of an image folder as the readers list them (class folders, or `images/` with `splits/*.txt`;
    hidden files skipped, a nested or empty class folder refused by name), their integer labels, the class names and
    each split the folder defines (indices into the files); nothing is decoded. For a tool that reads the folder
    itself and must see the images training sees."""
    files, labels_per_split, names = list_folder_files(Path(root))
    labels, names, splits = labels_and_names(labels_per_split, names, f"image folder {root}")
    return files, labels, names, splits


def list_folder_files(root: Path) -> tuple[list[Path], dict[str, np.ndarray], list[str]]:
    """The image files of an image folder (listed split by split), their labels per split and the class names;
    nothing is decoded (`data.streaming` reads the files lazily)."""
    image_root = root / "images" if (root / "images").is_dir() else root
    class_dirs = sorted(
        p for p in image_root.iterdir() if p.is_dir() and p.name != "splits" and not is_skipped_name(p.name)
    )
    if (root / "splits" / "train.txt").is_file():
        files, labels_per_split, names = _read_split_files(root / "splits", image_root, class_dirs)
    else:
        files, labels_per_split, names = _read_class_folders(class_dirs)
        _warn_unlabelled_images(image_root)
        others = [path for folder in class_dirs for path in _other_files(folder)]
        warn_other_files_skipped(f"image folder {root}", image_root, others, 4)
    if not files:
        raise ValueError(
            f"image folder {root}: no images found{_metadata_note(image_root)}; expected class subfolders "
            f"<root>/<class>/*.jpg ({ACCEPTED_FILES})"
        )
    return files, labels_per_split, names


# The files of Hugging Face's `imagefolder` layout that label the images of a flat folder.
_IMAGEFOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _metadata_note(image_root: Path) -> str:
    """For a folder in Hugging Face's `imagefolder` layout (its images labelled by a metadata file, no class
    folders: QA, refused as holding no images), how to read it."""
    found = [name for name in _IMAGEFOLDER_METADATA if (image_root / name).is_file()]
    if not found:
        return _parquet_note(image_root)
    return (
        f" (its {found[0]} labels its images as Hugging Face's imagefolder layout does, which this reader does not "
        f"read: save datasets.load_dataset('imagefolder', data_dir={str(image_root)!r}) with save_to_disk (a column of "
        "class names numbered with class_encode_column) and pass that folder, or list path,label rows in a CSV)"
    )


def _parquet_note(folder: Path) -> str:
    """For a folder of parquet shards (as the Hub's data sets are stored: QA, refused as holding no images), how to
    read it."""
    if not any(folder.glob("*.parquet")) and not any(folder.glob("*/*.parquet")):
        return ""
    return (
        f" (it holds parquet files, which this reader does not read: save datasets.load_dataset('parquet', "
        f"data_dir={str(folder)!r}) with save_to_disk and pass that folder)"
    )


_SPLIT_FOLDER_NAMES = ("train", "training", "validation", "valid", "val", "test")


def list_unlabeled_folder(root: Path, where: str, stacklevel: int = 4) -> list[Path]:
    """Every image and DICOM file in `root` and its subfolders at any depth, sorted by path, class folders or not
    (no labels read); folders linked in are followed (each folder read once), hidden files and system folders
    ([`is_skipped_name`]) skipped, other files counted in a warning; a broken link named as an image is listed, for
    its reader to report (`where`: the folder as the messages name it; `stacklevel`: as `warnings.warn`'s would be in
    the function that calls this one). Refused when there is none."""
    visible = _visible_files(root, where, stacklevel + 1)
    files = [path for path in visible if is_image_or_dicom_file(path)]
    if not files:
        raise ValueError(f"{where}: no image or DICOM files found ({ACCEPTED_FILES})")
    listed = set(files)
    warn_other_files_skipped(where, root, [path for path in visible if path not in listed], stacklevel + 1)
    return files


def _visible_files(root: Path, where: str, stacklevel: int) -> list[Path]:
    """The files under `root` that are not hidden, sorted, through linked folders too (QA: `Path.rglob` skipped a
    linked run folder's images without a word; see [`_FolderWalk`]); the folders that cannot be listed and those
    reached again through links are warned about."""
    walk = _FolderWalk(root)
    walk.read(str(root))
    for link in walk.links:  # grows as linked folders are read
        walk.follow(link)
    unlisted = first_and_more([str(error) for error in walk.unlisted], 3, separator="; ")  # their images missing
    repeated = first_and_more([Path(path).relative_to(root).as_posix() for path in walk.repeated], 3)
    said = (
        (len(walk.unlisted), "cannot be listed, their files not read", unlisted),
        (len(walk.repeated), "reached through links are read once, by their own names", repeated),
    )
    for count, what, shown in said:
        if count:
            warnings.warn(f"{where}: {count} folder(s) {what}: {shown}", UserWarning, stacklevel=stacklevel + 1)
    return sorted(walk.files)


class _FolderWalk:
    """Every folder under a root read once, by its own name: the real folders first, links put aside
    (`links`), then the folders the links lead to that were not read yet (`follow`); a link to a folder read already,
    or to one above it, is `repeated`."""

    def __init__(self, root: Path) -> None:
        self.files, self.links, self.repeated, self.unlisted = [], [], [], []
        self.seen = {os.path.realpath(root)}

    def read(self, top: str) -> None:
        for folder, folder_names, file_names in os.walk(top, onerror=self.unlisted.append):
            folder_names[:] = [name for name in sorted(folder_names) if self._descend(os.path.join(folder, name))]
            entries = [Path(folder, name) for name in file_names if not is_skipped_name(name)]
            # files and broken links (their readers name them); not a pipe or socket, which reading would block on
            self.files.extend(path for path in entries if path.is_file() or path.is_symlink())

    def follow(self, link: str) -> None:
        if os.path.realpath(link) in self.seen:
            self.repeated.append(link)
            return
        self.seen.add(os.path.realpath(link))
        self.read(link)

    def _descend(self, path: str) -> bool:
        if is_skipped_name(os.path.basename(path)):
            return False
        if os.path.islink(path):
            self.links.append(path)  # followed once every real folder is read
            return False
        if os.path.realpath(path) in self.seen:  # under a linked folder: a folder read already
            self.repeated.append(path)
            return False
        self.seen.add(os.path.realpath(path))
        return True


def list_unlabeled_images(root: Path, stacklevel: int) -> tuple[list[Path], dict[str, np.ndarray]]:
    """The files of the unlabeled image folder `root` as the loaders read it ([`list_unlabeled_folder`]), and their
    labels per split: every one in `"train"`, labelled 0 (`stacklevel`: as `warnings.warn`'s would be in the function
    that calls this one)."""
    files = list_unlabeled_folder(root, f"image folder {root}", stacklevel + 1)
    return files, {"train": np.zeros(len(files), dtype=np.int64)}


def warn_other_files_skipped(where: str, folder: Path, others: list[Path], stacklevel: int) -> None:
    """Files of a folder that are neither images nor DICOM are not read (a predict row, a training image): say how
    many, and which (`where`: the folder as the message names it)."""
    if others:
        shown = ", ".join(path.relative_to(folder).as_posix() for path in others[:3])
        warnings.warn(
            f"{where}: skipped {len(others)} of its files, neither images nor DICOM images (e.g. {shown}); read are "
            f"{ACCEPTED_FILES}",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def _warn_unlabelled_images(image_root: Path) -> None:
    """Image files beside the class folders have no class: they are not read, and a user who meant them to be
    should hear it."""
    stray = sorted(p.name for p in image_root.iterdir() if p.is_file() and is_image_or_dicom_file(p)
                   and not is_skipped_name(p.name))  # fmt: skip
    if stray:
        warnings.warn(
            f"image folder {image_root}: {len(stray)} image file(s) directly in it (first: {stray[0]!r}) are not read; "
            "an image's class is the folder it is in (<root>/<class>/<image>)",
            stacklevel=4,
        )


def _read_class_folders(class_dirs: list[Path]) -> tuple[list[Path], dict[str, np.ndarray], list[str]]:
    """The images of each class folder, labelled by its position; an empty class folder is refused (unless all are
    empty: then the caller reports that no images were found), and so are two class folders that are one folder."""
    folders: dict[str, Path] = {}
    for folder in class_dirs:
        real = os.path.realpath(folder)
        if real in folders:
            raise ValueError(
                f"class folders {folders[real]} and {folder} are the same folder {real} (a symlink); expected one "
                "folder per class"
            )
        folders[real] = folder
    per_class = [_class_images(folder) for folder in class_dirs]
    empty = [folder for folder, paths in zip(class_dirs, per_class) if not paths]
    if empty and len(empty) < len(class_dirs):
        raise ValueError(
            f"class folder {empty[0]} holds no image files ({ACCEPTED_FILES}); expected at least one image per "
            "class: remove the folder or add its images"
        )
    files = [path for paths in per_class for path in paths]
    labels = np.repeat(np.arange(len(per_class)), [len(paths) for paths in per_class])
    return files, {"train": labels}, [folder.name for folder in class_dirs]


def _class_images(folder: Path) -> list[Path]:
    """The image files directly inside a class folder, sorted; hidden files and system folders ([`is_skipped_name`])
    are skipped, other files left to `_other_files` (counted in a warning). A folder inside it (a nested layout such
    as `train/<class>/`, or a symlink loop) is refused."""
    entries = sorted(path for path in folder.iterdir() if not is_skipped_name(path.name))
    nested = [path for path in entries if path.is_dir()]
    if nested:
        splits_note = (  # QA: the imagefolder layout <root>/<split>/<class>/<image>, refused without a way out
            f" (a folder of split folders, {folder.parent}/{folder.name}/<class>/<image>, is read as the imagefolder "
            f"layout of datasets: save datasets.load_dataset('imagefolder', data_dir={str(folder.parent)!r}) with "
            "save_to_disk and pass that folder)"
            if folder.name.lower() in _SPLIT_FOLDER_NAMES else ""
        )  # fmt: skip
        raise ValueError(
            f"class folder {folder} contains the folder {nested[0].name!r}; expected image files directly in each "
            f"class folder (<root>/<class>/<image>): nested folders are not read{splits_note}"
        )
    return [path for path in entries if is_image_or_dicom_file(path)]


def _other_files(folder: Path) -> list[Path]:
    """The files of a class folder that are not read: neither images nor DICOM (hidden ones aside)."""
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and not is_skipped_name(path.name) and not is_image_or_dicom_file(path)
    )  # fmt: skip


def is_image_or_dicom_file(path: Path) -> bool:
    """Whether a folder listing reads `path`: an image extension (`IMAGE_EXTENSIONS`) or a DICOM file (see
    [`is_dicom_file`]); only a file with another extension (not a text or data file's) or none is opened to tell."""
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom_file(path)


class _SplitLine(NamedTuple):
    """One line of a split file: where it is (`file:line`), the image it lists as written and found, its label."""

    where: str
    relative: str
    path: Path
    label: int


def _read_split_files(
    splits_dir: Path, image_root: Path, class_dirs: list[Path]
) -> tuple[list[Path], dict[str, np.ndarray], list[str]]:
    classes_file = splits_dir / "classes.txt"
    listed = {
        split: _split_lines(splits_dir / f"{split}.txt", image_root)
        for split in ("train", "val", "test") if (splits_dir / f"{split}.txt").is_file()
    }  # fmt: skip
    lines = [line for split_lines in listed.values() for line in split_lines]
    _check_each_image_listed_once(splits_dir, listed)
    if classes_file.is_file():
        names = _nonempty_lines(classes_file)
        _check_class_ids(lines, names, classes_file)
    else:
        names = _class_folder_names(lines, image_root, class_dirs, classes_file)
    labels_per_split = {split: np.asarray([line.label for line in split_lines], dtype=np.int64)
                        for split, split_lines in listed.items()}  # fmt: skip
    return [line.path for line in lines], labels_per_split, names


def _split_lines(split_file: Path, image_root: Path) -> list[_SplitLine]:
    """The lines of `split_file` (`relative/path label`, blank lines skipped), each image found under `image_root`."""
    lines = []
    for number, text in enumerate(split_file.read_text().splitlines(), start=1):
        relative, _, label = text.strip().rpartition(" ")
        relative = relative.strip()
        if not text.strip():
            continue
        if not relative or not label.lstrip("-").isdigit():
            raise ValueError(
                f"{split_file}:{number}: expected 'relative/path label', the label an integer class id (0 for the "
                f"first class of splits/classes.txt), got {text.strip()!r}"
            )
        path = image_root / relative
        if not path.is_file():
            raise ValueError(f"{split_file}:{number}: image file {path} does not exist")
        lines.append(_SplitLine(f"{split_file}:{number}", relative, path, int(label)))
    return lines


def _check_class_ids(lines: list[_SplitLine], names: list[str], classes_file: Path) -> None:
    """Every label is the id of a name in `classes_file` (`0..K-1`)."""
    for line in lines:
        if not 0 <= line.label < len(names):
            raise ValueError(
                f"{line.where}: label {line.label} is not a class id of the {len(names)} names in {classes_file}; "
                f"expected 0..{len(names) - 1} (the line number of the class's name there, from 0)"
            )


def _class_folder_names(
    lines: list[_SplitLine], image_root: Path, class_dirs: list[Path], classes_file: Path
) -> list[str]:
    """Without `classes_file` the classes are named by the sorted subfolders of `image_root`, which holds for split
    files only if each image lies in the folder its label names: else the names would be another layout's folders
    (QA: an unlabelled pool's dated runs became the class names of a model labelled from its clusters)."""
    names = [folder.name for folder in class_dirs]
    for line in lines:
        if 0 <= line.label < len(names) and _lies_in(line.path, class_dirs[line.label]):
            continue
        told = (
            f"names class folder {names[line.label]!r}, but the image is not inside it" if 0 <= line.label < len(names)
            else f"is not the id of any of the {len(names)} class folders there"
        )  # fmt: skip
        raise ValueError(
            f"{line.where}: {line.relative!r} has label {line.label}, which {told} (without {classes_file} the "
            f"classes are the sorted subfolders of {image_root}: {first_and_more(names, 8) or 'none'}); expected "
            f"{classes_file} naming the classes, one per line in label-id order (label 0 first)"
        )
    return names


def _lies_in(path: Path, folder: Path) -> bool:
    """Whether `path` is inside `folder`, as spelled or once both are resolved (symbolic links, `..`)."""
    if Path(os.path.normpath(path)).is_relative_to(os.path.normpath(folder)):
        return True
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _check_each_image_listed_once(splits_dir: Path, listed: dict[str, list[_SplitLine]]) -> None:
    """An image of two labels is refused (two answers for one image: QA, the namings of two cluster runs merged);
    one listed again with its label is read once per line, which is said: twice in one split it weighs twice, in two
    splits (train and test) its test metrics are those of an image trained on, which nothing later can tell (a split
    of the data's own is not checked against the training images). Images are compared by their resolved folders."""
    first: dict[str, tuple[str, _SplitLine]] = {}
    repeated: dict[tuple[str, str], dict[str, _SplitLine]] = {}
    resolved_folders = functools.lru_cache(maxsize=None)(os.path.realpath)  # per folder: per line cost 0.67 s / 30,000
    for split, lines in listed.items():
        for line in lines:
            image = os.path.join(resolved_folders(os.path.dirname(line.path)), line.path.name)
            earlier_split, earlier = first.setdefault(image, (split, line))
            if earlier is line:
                continue
            if earlier.label != line.label:
                raise ValueError(
                    f"{line.where}: {line.relative!r} is labelled {line.label} here and {earlier.label} on "
                    f"{earlier.where}; expected one label per image"
                )
            repeated.setdefault((earlier_split, split), {}).setdefault(image, line)
    for (first_split, split), images in repeated.items():
        shown = next(iter(images.values())).path
        if first_split == split:
            where, consequence = f"{split}.txt more than once", "each is read once per line and weighs as often"
        else:
            where = f"both {first_split}.txt and {split}.txt"
            consequence = f"each is read in both splits, so the {split!r} metrics include images of {first_split!r}"
        warnings.warn(
            f"{splits_dir}: {len(images)} image(s) are listed in {where} (first: {shown}); {consequence}: list each "
            "image once, in one split file",
            UserWarning,
            stacklevel=6,  # the caller of load_image_classification_data
        )


def _nonempty_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _label_order(name: str) -> tuple:
    """Integers numerically ("2" before "10"), then names alphabetically."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def read_csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The columns and rows of the UTF-8 CSV at `path` (the byte-order mark Excel writes, "CSV UTF-8", is not part of
    the first column's name: QA, training refused what predict read); a malformed one (a field over the csv module's
    limit) refused naming the file and line, not with the csv module's bare error (QA: a 300,000-character path gave
    a traceback naming neither), and so is a header naming a column twice (QA: the last one's cells were read, the
    labels of another column trained on without a word)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            columns, rows = list(reader.fieldnames or []), list(reader)
        except csv.Error as error:
            raise ValueError(
                f"CSV {path}: the row after line {reader.line_num}: {error}; expected one image path (and its label) a "
                "row"
            ) from None
        except UnicodeDecodeError as error:
            utf8 = "expected a UTF-8 file (save it as 'CSV UTF-8')"
            raise ValueError(f"CSV {path}: not UTF-8 ({error}); {utf8}") from None
    repeated = sorted({column for column in columns if column and columns.count(column) > 1})
    if repeated:
        raise ValueError(f"CSV {path}: its header names the column(s) {repeated} more than once; expected each once")
    return columns, rows


def list_csv(
    path: Path, class_names: Sequence[str] | None, patient_id_column: str | None
) -> tuple[list[Path], np.ndarray, list[str], list[str] | None]:
    """The image files a CSV names, their labels, the class names and the patient ids (None without that column);
    nothing is decoded (`data.streaming` reads the files lazily)."""
    columns, rows = read_csv_rows(path)
    missing = [column for column in ("path", "label") if column not in columns]
    if missing:
        raise ValueError(f"CSV {path}: missing column(s) {missing}; expected a header with path,label[,patient_id], "
                         f"got {columns}")
    if patient_id_column is not None and patient_id_column not in columns:
        raise ValueError(f"CSV {path}: patient_id_column {patient_id_column!r} is not a column; columns: {columns}")
    if patient_id_column is None and "patient_id" in columns:
        patient_id_column = "patient_id"
    if not rows:
        raise ValueError(f"CSV {path}: no rows; expected one row per image")
    _check_labels_named(path, rows)
    found = sorted({row["label"] for row in rows}, key=_label_order)
    names = list(class_names) if class_names is not None else found
    ids = {name: i for i, name in enumerate(names)}
    files, labels, patients, lines = [], [], [], {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        file = path.parent / (row["path"] or "")
        if not row["path"] or not file.is_file():
            raise ValueError(f"CSV {path}:{line}: image file {file} does not exist")
        _check_listed_once(path, line, row, rows, lines.setdefault(file.resolve(), line))
        if row["label"] not in ids:
            raise ValueError(f"CSV {path}:{line}: label {row['label']!r} is not one of the classes {names}")
        if patient_id_column is not None and not row[patient_id_column].strip():  # blanks would be one patient
            raise ValueError(f"CSV {path}:{line}: empty {patient_id_column!r}; expected a patient id on every row")
        files.append(file)
        labels.append(ids[row["label"]])
        patients.append(row[patient_id_column] if patient_id_column is not None else None)
    if patient_id_column is not None:
        meaning = "patients, whom a carved split may put on both sides"
        _warn_spaced_variants(path, patients, patient_id_column, meaning, stacklevel=5)
    return files, np.asarray(labels, dtype=np.int64), names, patients if patient_id_column else None


def _check_listed_once(path: Path, line: int, row: dict, rows: list[dict], first_line: int) -> None:
    """A file the CSV lists on an earlier line (`first_line`) too is refused: with another label it is two answers
    for one image, with the same one it would weigh twice in training or sit in train and test at once."""
    if first_line == line:
        return
    first = rows[first_line - 2]
    same = first["label"] == row["label"]
    labels = "with the same label" if same else f"labelled {first['label']!r} there, {row['label']!r} here"
    raise ValueError(
        f"CSV {path}:{line}: image file {row['path']!r} is listed on line {first_line} too ({labels}); expected each "
        "image once"
    )


def _check_labels_named(path: Path, rows: list[dict]) -> None:
    """Every row names a class: an empty cell would become a class named ''; labels that differ only by surrounding
    spaces (`'ich '` and `'ich'`) would become two classes, which is warned about."""
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if not (row["label"] or "").strip():
            raise ValueError(f"CSV {path}:{line}: empty label; expected a class name on every row")
    _warn_spaced_variants(path, [row["label"] for row in rows], "label", "classes", stacklevel=6)


def _warn_spaced_variants(path: Path, values: list[str], column: str, meaning: str, stacklevel: int) -> None:
    """Values of a CSV column that differ only by surrounding spaces or letter case (`'ich '` and `'ich'`, `'Cancer'`
    and `'cancer'`, a patient `'P7 '` and `'P7'`) are told apart, as they always were (the carving stays the same),
    which is warned about: two classes, or one patient on both sides of a split (`stacklevel`: the caller of the
    loader, as `warnings.warn` counts)."""
    by_stripped: dict[str, set[str]] = {}
    for value in values:
        by_stripped.setdefault(value.strip().casefold(), set()).add(value)
    variants = [sorted(group) for group in by_stripped.values() if len(group) > 1]
    if variants:
        shown = first_and_more([" and ".join(map(repr, group)) for group in variants], 5, separator="; ")
        warnings.warn(
            f"CSV {path}: {column} values that differ only by surrounding spaces or letter case are different "
            f"{meaning}: {shown}; correct the CSV if they are one",
            UserWarning,
            stacklevel=stacklevel,
        )

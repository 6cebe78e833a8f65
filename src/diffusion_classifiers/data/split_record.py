"""The train / val / test carving of a model's data, recorded beside the model (`data_splits.json`): the `probe` and
`evaluate` commands carve the same splits from the same data, so their test images are none the model was trained on.

A data set with splits of its own (a MedMNIST `.npz`, IDX test files, `train/val/test.txt`) keeps them; the record
matters where the splits are carved (an image folder, a CSV).

The record also names the training images by content (`train_fingerprints`, where the trainer had them in memory), so
`evaluate` and `probe` can refuse a test split that holds training images: a folder that grew, or the same images
re-exported (DICOM to PNG), carves other splits from the same seed.

It also names how DICOM files without a PatientID (anonymised) were grouped (`anonymised_dicom_groups`, one of
`ANONYMISED_DICOM_RULES`): earlier versions split them file by file, this one by study, so the same seed carves other
splits from such data. A record of an earlier version (without the key) is carved file by file, as its model was
trained, with a warning; a model without any record, and every model trained now, by study.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from ..atomic_files import write_atomically

if TYPE_CHECKING:  # torch is imported where fingerprints are taken: the commands' flags read this module's defaults
    import torch

__all__ = [
    "ANONYMISED_DICOM_RULE",
    "ANONYMISED_DICOM_RULES",
    "EARLIER_ANONYMISED_DICOM_RULE",
    "SPLIT_DEFAULTS",
    "SPLIT_RECORD_NAME",
    "changed_split_args",
    "check_anonymised_dicom_groups",
    "image_fingerprint_variants",
    "image_fingerprints",
    "read_split_record",
    "recorded_selection_fingerprints",
    "recorded_train_fingerprints",
    "resolve_split_args",
    "save_split_record",
    "trained_on_unlabeled_pool",
]

SPLIT_RECORD_NAME = "data_splits.json"
SPLIT_DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0, "class_names": None}
# Optional keys: "unlabeled" (true for a model trained on every image of an unlabeled folder, `--unlabeled`: nothing
# carved, its fractions and seed unused), "unlabeled_pool" (true for a model whose head was fitted on carved labelled
# data on top of a diffusion model trained so: `probe` on such a U-Net), "train_fingerprints" (absent in records of earlier versions, and for a
# streamed training set read without verifying its images first) and
# "anonymised_dicom_groups" (absent in records of earlier versions: `EARLIER_ANONYMISED_DICOM_RULE` then),
# "selection_fingerprints" (the val images a head was chosen on: `probe`'s (block, timestep) and C, `fit-head`'s C or
# temperature; since 2026-12-07).
SPLIT_OPTIONAL = (
    "train_fingerprints", "anonymised_dicom_groups", "unlabeled", "unlabeled_pool", "train_fingerprints_partial",
    "selection_fingerprints",
)
# How the carving groups DICOM files without a PatientID (anonymised), applied by `file_decoding._dicom_groups`:
# "study_or_series", by their StudyInstanceUID, else their SeriesInstanceUID, so one scan's slices stay on one side
# (this version's rule, `ANONYMISED_DICOM_RULE`, which training records); "file", each file its own group, slice by
# slice (`EARLIER_ANONYMISED_DICOM_RULE`: the rule of the versions that recorded none, kept for their models).
ANONYMISED_DICOM_RULES = ("study_or_series", "file")
ANONYMISED_DICOM_RULE, EARLIER_ANONYMISED_DICOM_RULE = ANONYMISED_DICOM_RULES
FINGERPRINT_LENGTH = 16  # hex digits of sha256 kept: 64 bits, no chance collision among millions of images
# A level within this much (in 1/255 steps, about 4e-7 of [0, 1]) of a rounding boundary may have rounded the other way
# in another reading of the same image; `image_fingerprint_variants` tries both ways, for at most 4 such pixels (2^4
# sha256 an image; an image with more gets its one fingerprint only).
BOUNDARY_TOLERANCE, MAX_BOUNDARY_PIXELS = 1e-4, 4
CHUNK = 1024  # images converted to float64 at once: the memory of fingerprinting stays that of 1,024 images
_UNREAD: Any = object()  # the default `record` of the functions that read one: not given, so read (None: none saved)


def image_fingerprints(images: torch.Tensor | Iterable[torch.Tensor]) -> list[str]:
    """One short content fingerprint per preprocessed image (`[N, C, H, W]` in `[-1, 1]`, or an iterable of such
    batches): the first 16 hex digits of the sha256 of its shape and its pixels quantised to 1/255 steps of `[0, 1]`.
    Read 1,024 images at a time, whatever the size of `images`.

    The quantisation makes the fingerprint the image's, not the file's: the same scan read from its DICOM or from a
    16-bit PNG export differs by about 1e-7 after preprocessing, far below a step, so both round to the same levels
    except at pixels lying on a step boundary. `image_fingerprint_variants` (which the checks use) tries those both
    ways, so a re-export matches unless more than 4 of its pixels lie within 1e-4 of a step boundary, which a large
    image often has (levels spread evenly put 2 pixels in 10,000 that near: about 50 of a 512 x 512 scan), and the
    check then misses it. 256 levels are what any 8-bit export keeps, while two different images differ by many
    steps."""
    return [variants[0] for variants in image_fingerprint_variants(images, boundary_tolerance=0.0)]


def _chunks(images: torch.Tensor | Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    import torch

    for batch in [images] if isinstance(images, torch.Tensor) else images:
        yield from batch.detach().split(CHUNK)


def image_fingerprint_variants(
    images: torch.Tensor | Iterable[torch.Tensor], boundary_tolerance: float = BOUNDARY_TOLERANCE
) -> list[list[str]]:
    """Per image, its `image_fingerprints` fingerprint first, then those it would have had if its pixels lying within
    `boundary_tolerance` steps of a rounding boundary (at most `MAX_BOUNDARY_PIXELS`, 4, of them; an image with more
    has its one fingerprint only) had rounded the other way: what another reading of the same image (a PNG re-export
    of a DICOM) may have been fingerprinted as. Read 1,024 images at a time (as float64), the boundary test done for
    the whole chunk at once: the per-variant loop runs only for images with pixels near a boundary."""
    import torch

    fingerprints = []
    for chunk in _chunks(images):
        shape = str(tuple(chunk.shape[1:])).encode()
        scaled = ((chunk.cpu().double().clamp(-1, 1) + 1) * 127.5).flatten(1)  # [0, 1] in 1/255 steps
        levels = torch.round(scaled).to(torch.uint8).numpy()
        near = ((scaled - scaled.floor()) - 0.5).abs() < boundary_tolerance
        counts = near.sum(1).tolist()
        for row, count in enumerate(counts):
            base = levels[row]
            variants = [hashlib.sha256(shape + base.tobytes()).hexdigest()[:FINGERPRINT_LENGTH]]
            if 0 < count <= MAX_BOUNDARY_PIXELS:
                indices = torch.nonzero(near[row]).flatten().tolist()
                values = scaled[row, indices].tolist()
                for flips in range(1, 2**count):
                    varied = base.copy()
                    for bit, (index, value) in enumerate(zip(indices, values)):
                        if flips >> bit & 1:
                            varied[index] = math.floor(value) if varied[index] > value else math.ceil(value)
                    variants.append(hashlib.sha256(shape + varied.tobytes()).hexdigest()[:FINGERPRINT_LENGTH])
            fingerprints.append(variants)
    return fingerprints


def save_split_record(
    folder: str | os.PathLike,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Optional[Sequence[str]] = None,
    train_images: Optional[torch.Tensor] = None,
    train_fingerprints: Optional[Iterable[str]] = None,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    unlabeled: bool = False,
    unlabeled_pool: bool = False,
    fingerprints_partial: bool = False,
    selection_images: Optional[torch.Tensor] = None,
    selection_fingerprints: Optional[Iterable[str]] = None,
) -> None:
    """Record in `folder` (a saved model's) how its data was carved: the fractions, the seed and the `class_names`
    the data was read with (their order numbers the classes, and the carving draws class by class), None when the
    names were found in the data; how anonymised DICOM files were grouped (`anonymised_dicom_groups`: this
    version's rule, unless the carving followed an earlier model's record); and, given the preprocessed
    `train_images` (`[N, C, H, W]` in `[-1, 1]`), their sorted `image_fingerprints` as one space-separated string (17
    bytes an image), which `evaluate` and `probe` check their test and val images against, with any other
    `train_fingerprints` (e.g. those of the U-Net a probe's head sits on, or those a streamed training set's
    `verify` took: `data.save_training_split_record`). `unlabeled`: the model was trained on every image of an
    unlabeled folder (none carved), so there is no carving for a later command's flags to contradict;
    `unlabeled_pool`: its head was fitted on the carving recorded, over a diffusion model trained so.
    `fingerprints_partial`: the fingerprints are a head's train images only, over a model that records none of its
    own (`"train_fingerprints_partial"`): images found among them are refused or dropped, but no check is claimed.
    `selection_images` (and any other `selection_fingerprints`): the val images a head was chosen on, recorded as
    `"selection_fingerprints"`, which `evaluate` counts among the images it scores of another split (QA: `--split
    all` of a probe's own data scored its val images too, without a word)."""
    record = {
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
        "class_names": None if class_names is None else list(class_names),
        "anonymised_dicom_groups": check_anonymised_dicom_groups(anonymised_dicom_groups),
    }  # fmt: skip
    record.update({key: True for key, value in (("unlabeled", unlabeled), ("unlabeled_pool", unlabeled_pool)) if value})
    if train_images is not None or train_fingerprints is not None:
        fingerprints = set(train_fingerprints or ())
        if train_images is not None:
            fingerprints |= set(image_fingerprints(train_images))
        record["train_fingerprints"] = " ".join(sorted(fingerprints))
        if fingerprints_partial:
            record["train_fingerprints_partial"] = True
    if selection_images is not None or selection_fingerprints is not None:
        chosen_on = set(selection_fingerprints or ())
        if selection_images is not None:
            chosen_on |= set(image_fingerprints(selection_images))
        record["selection_fingerprints"] = " ".join(sorted(chosen_on))
    text = json.dumps(record, indent=2) + "\n"
    write_atomically(os.path.join(folder, SPLIT_RECORD_NAME), lambda handle: handle.write(text))


def write_split_record(folder: str | os.PathLike, record: dict, fingerprints: bool = True) -> None:
    """`record` (a `read_split_record`, or a pipeline's `split_record`) written into `folder` (`save_split_record`);
    without its training images' fingerprints where `fingerprints` is False (a copy that may leave this machine)."""
    train = record.get("train_fingerprints") if fingerprints else None
    chosen_on = record.get("selection_fingerprints") if fingerprints else None
    save_split_record(
        folder, **{name: record[name] for name in SPLIT_DEFAULTS},
        train_fingerprints=None if train is None else train.split(),
        selection_fingerprints=None if chosen_on is None else chosen_on.split(),
        # the rule it was trained with; a record set by hand without it is read as one of an earlier version
        anonymised_dicom_groups=record.get("anonymised_dicom_groups", EARLIER_ANONYMISED_DICOM_RULE),
        unlabeled=bool(record.get("unlabeled")), unlabeled_pool=bool(record.get("unlabeled_pool")),
        fingerprints_partial=bool(record.get("train_fingerprints_partial")),
    )  # fmt: skip


def read_split_record(folder: str | os.PathLike) -> Optional[dict]:
    """The carving recorded in `folder` (every key of `SPLIT_DEFAULTS`; `anonymised_dicom_groups`, the earlier
    versions' rule `"file"` for a record without it; and `train_fingerprints`, a string of space-separated
    fingerprints, where the record holds them), or None for a model saved without one."""
    path = os.path.join(folder, SPLIT_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    allowed = set(SPLIT_DEFAULTS) | set(SPLIT_OPTIONAL)
    if not isinstance(record, dict) or not set(SPLIT_DEFAULTS) - {"class_names"} <= set(record) <= allowed:
        shown = record if not isinstance(record, dict) else {k: v for k, v in record.items() if "fingerprints" not in k}
        raise ValueError(
            f"{path}: expected the keys {sorted(SPLIT_DEFAULTS)} (and optionally {list(SPLIT_OPTIONAL)}), got {shown!r}"
        )
    for key in ("train_fingerprints", "selection_fingerprints"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(
                f"{path}: {key}: expected a string of space-separated hex digests, got {type(record[key]).__name__}"
            )
    record = {**SPLIT_DEFAULTS, "anonymised_dicom_groups": EARLIER_ANONYMISED_DICOM_RULE, **record}
    check_anonymised_dicom_groups(record["anonymised_dicom_groups"], f"{path}: anonymised_dicom_groups")
    return record


def _record_of(folder: str | os.PathLike, record: Any) -> Optional[dict]:
    """The `read_split_record` of `folder`: `record`, the one a caller already made, unless not given."""
    return read_split_record(folder) if record is _UNREAD else record


def check_anonymised_dicom_groups(rule: Any, where: str = "anonymised_dicom_groups") -> str:
    """`rule`, one of `ANONYMISED_DICOM_RULES`; refused otherwise (a record of a newer version, or edited), since
    carving by another rule gives other splits."""
    if not isinstance(rule, str) or rule not in ANONYMISED_DICOM_RULES:
        raise ValueError(
            f"{where}: expected one of {list(ANONYMISED_DICOM_RULES)} (how DICOM files without a PatientID are "
            f"grouped: by study or series, or file by file), got {rule!r}"
        )
    return rule


def recorded_train_fingerprints(folder: str | os.PathLike, *, record: Any = _UNREAD) -> Optional[frozenset]:
    """The fingerprints (`image_fingerprints`) of the training images recorded in `folder`'s `data_splits.json`, or
    None where none were recorded (no record, a record of an earlier version, a streamed training set whose images
    were not read first). `record`: the folder's `read_split_record`, where already read."""
    record = _record_of(folder, record)
    if record is None or record.get("train_fingerprints") is None:
        return None
    return frozenset(record["train_fingerprints"].split())


def recorded_selection_fingerprints(folder: str | os.PathLike, *, record: Any = _UNREAD) -> Optional[frozenset]:
    """The fingerprints of the val images a head was chosen on, recorded in `folder`'s `data_splits.json`
    (`save_split_record(selection_images=...)`), or None where none were (a record of an earlier version, a model
    trained without a choice on val). `record`: the folder's `read_split_record`, where already read."""
    record = _record_of(folder, record)
    if record is None or record.get("selection_fingerprints") is None:
        return None
    return frozenset(record["selection_fingerprints"].split())


def recorded_fingerprints_partial(folder: str | os.PathLike, *, record: Any = _UNREAD) -> bool:
    """Whether the fingerprints recorded in `folder` are a head's train images only, over a model that recorded none
    of its own (`save_split_record(fingerprints_partial=True)`). `record`: the folder's `read_split_record`."""
    return bool((_record_of(folder, record) or {}).get("train_fingerprints_partial"))


def trained_on_unlabeled_pool(model_dir: str | os.PathLike, *, record: Any = _UNREAD) -> bool:
    """Whether the diffusion model in `model_dir` was trained on every image of an unlabeled folder (`--unlabeled`),
    as its `data_splits.json` records (`"unlabeled"`; `"unlabeled_pool"` once `probe` fitted a head on it). `record`:
    the folder's `read_split_record`, where already read."""
    record = _record_of(model_dir, record) or {}
    return bool(record.get("unlabeled") or record.get("unlabeled_pool"))


def changed_split_args(model_dir: str | os.PathLike, *, record: Any = _UNREAD, **given: Any) -> dict:
    """`{name: (given value, recorded value)}` for each value `given` (not None; keys of `SPLIT_DEFAULTS`) that
    differs from the carving the model in `model_dir` records (`data_splits.json`; `record`: its `read_split_record`,
    where already read); empty for a model without one."""
    unknown = set(given) - set(SPLIT_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown split arguments {sorted(unknown)}; expected some of {sorted(SPLIT_DEFAULTS)}")
    recorded = _record_of(model_dir, record)
    if recorded is None or recorded.get("unlabeled"):  # nothing carved: nothing to contradict
        return {}
    given = {name: value for name, value in given.items() if value is not None}
    return {name: (value, recorded[name]) for name, value in given.items() if value != recorded[name]}


def resolve_split_args(model_dir: str | os.PathLike, *, record: Any = _UNREAD, **given: Any) -> dict:
    """The carving (`SPLIT_DEFAULTS`' keys) of the data of the model in `model_dir`: each value `given` (not None),
    else the model's record (`record`: its `read_split_record`, where already read; unless it was trained on an
    unlabeled folder), else `SPLIT_DEFAULTS`; and `anonymised_dicom_groups`, the record's (`"file"` for a record of an
    earlier version), else this version's rule. A given value that contradicts the record is kept, with a warning:
    where the data has no splits of its own, its test split may hold images the model was trained on."""
    recorded = _record_of(model_dir, record)
    changed = changed_split_args(model_dir, record=recorded, **given)
    if changed:
        carving = {name: recorded[name] for name in SPLIT_DEFAULTS}  # not the training images' fingerprints
        warnings.warn(
            f"{model_dir}: its data was carved with {carving} ({SPLIT_RECORD_NAME}); "
            f"{', '.join(f'--{name} {value}' for name, (value, _) in changed.items())} carve(s) other splits where "
            "the data has none of its own, whose test and val may hold images the model was trained on",
            UserWarning,
            stacklevel=2,
        )
    fallback = recorded or {**SPLIT_DEFAULTS, "anonymised_dicom_groups": ANONYMISED_DICOM_RULE}
    if fallback.get("unlabeled"):  # trained on an unlabeled folder: labelled data is carved as any other
        fallback = {**SPLIT_DEFAULTS, "anonymised_dicom_groups": ANONYMISED_DICOM_RULE}
    carving = {name: given.get(name) if given.get(name) is not None else fallback[name] for name in SPLIT_DEFAULTS}
    return {**carving, "anonymised_dicom_groups": fallback["anonymised_dicom_groups"]}

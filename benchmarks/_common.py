"""Shared benchmark helpers: the data folder, training budgets, the supervised CNN baseline, targets, timing, the
record of where and how a figure was measured, and the results writer.

Every benchmark prints its record as ONE JSON line, last; a full (non `--quick`) run also writes it to
`benchmarks/results/<name>.json`, so each stored figure carries the exact command, machine, versions and date.
Its targets are `figures["targets"] = {name: {"value": x, "target": y, "met": bool, "higher_is_better": bool}}`
(`target_entry`).
"""

import argparse
import atexit
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

import torch
from threadpoolctl import threadpool_info, threadpool_limits

from diffusion_classifiers.data.arguments import number_in, seed_argument
from diffusion_classifiers.validation import as_inverse_regularisations, check_writable_dir, check_writable_file

if TYPE_CHECKING:  # imported where used: the speed benchmarks need no trainer
    from diffusion_classifiers.data import ImagePreprocessing
    from diffusion_classifiers.training import TrainingArguments, TrainingSummary

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# `BENCHMARK_DATA_ROOT` points elsewhere, e.g. at the copy a GPU machine gets (benchmarks/gpu_carry_data.sh).
DATA_ROOT = Path(os.environ.get("BENCHMARK_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data")
# the shared labelled image sets the representation benchmarks run on, by name -> their path under DATA_ROOT
SHARED_IMAGE_DATASETS = {"pneumoniamnist": ("medmnist_pneumonia", "pneumoniamnist.npz"), "fashion_mnist": ("fashion_mnist",)}


def data_path(*parts: str) -> Path:
    """`../shared/data/<parts>`, where the benchmarks' data sets live (outside this repository); raises, naming the
    path, when it is missing."""
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"benchmark data: expected {path} (the shared data folder next to this repository), but it does not exist"
        )
    return path


def figure_dir(args: argparse.Namespace, output: Path) -> Path:
    """Where a run's figures go: beside its results file; for a `--quick` run, which writes no file, a temporary
    folder removed when the run ends (the figures are still drawn, so quick runs test the drawing code)."""
    if not args.quick:
        return output.parent
    folder = tempfile.mkdtemp(prefix="benchmark-quick-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


QUICK_FIGURES_NOTE = "not kept: a --quick run draws its figures in a temporary folder removed when the run ends"


def figure_entries(args: argparse.Namespace, **paths: Optional[Path]) -> dict:
    """The record's entries of a run's figures (`figure_dir`): each file's name, beside the results file (None for a
    figure the run did not draw); on a
    `--quick` run, whose figures are removed when it ends, None and `"figures_kept"`: `QUICK_FIGURES_NOTE` (QA: a quick
    record named PNGs in a folder that no longer existed)."""
    if not args.quick:
        return {key: None if path is None else path.name for key, path in paths.items()}
    return {**dict.fromkeys(paths), "figures_kept": QUICK_FIGURES_NOTE}


def base_parser(docstring: str) -> argparse.ArgumentParser:
    """The options every benchmark shares; `--help` describes it by the first paragraph of its `docstring`."""
    parser = argparse.ArgumentParser(description=" ".join(docstring.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="a small run (< 60 s on 2 CPU cores); writes no file")
    parser.add_argument("--device", default=None, help="torch device; defaults to cuda when available")
    parser.add_argument("--seed", type=seed_argument, default=0)
    parser.add_argument(
        "--num_threads", type=number_in("[1, inf)", int), default=None,
        help="CPU threads of torch and BLAS (scikit-learn); default: theirs",
    )  # fmt: skip
    parser.add_argument(
        "--output", default=None,
        help="results file of a full run; default results/<benchmark>.json, with --data "
        "results/<benchmark>_<data name>.json (the file or folder name, after its parent folder's name where it is a "
        f"generic one: {', '.join(sorted(GENERIC_DATA_NAMES))})",
    )  # fmt: skip
    return parser


# --------------------------------------------------------------------------------------------------
# The data a benchmark runs on: one set of options, quick sizing, few-label subsets
# --------------------------------------------------------------------------------------------------

DATA_HELP = (
    "'digits' (scikit-learn's), a MedMNIST-style .npz, an IDX folder, an image folder (<root>/<class>/<image>), "
    "a CSV of paths or a saved `datasets` folder (missing val/test splits are carved, stratified and seeded)"
)
MIN_LABELS_PER_CLASS = 5
# The inverse regularisation strengths a linear probe chooses from on val (`fit_probe_grid(C=...)`, ties: the smaller):
# the best one depends on the feature and on how many labels there are.
PROBE_C = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def add_data_options(
    parser: argparse.ArgumentParser, default_data: str, *, label_fractions: Sequence[float] | None = None,
    checkpoint: str | None = None, parts: Sequence[str] | None = None, positive_class: bool = True,
) -> argparse.ArgumentParser:  # fmt: skip
    """The options every accuracy benchmark shares (read by `check_data_options`, `load_benchmark_data`,
    `few_label_subsets`): the dataset and its class names, the positive class of a binary task (where the
    benchmark reports binary metrics: `positive_class`); with `label_fractions` (their default) several few-label
    regimes in one run; with `checkpoint` (the script that trains the benchmark's diffusion model) saving and reusing
    the trained model; with `parts` the parts of the benchmark to run (default: all)."""
    parser.add_argument("--data", default=None, help=f"the dataset: {DATA_HELP}; default {default_data}")
    parser.add_argument(
        "--class_names", nargs="+", default=None, help="names of the label ids 0..K-1 (.npz, IDX, CSV); default: the data's"
    )
    if positive_class:
        parser.add_argument(
            "--positive_class", default=None,
            help="binary data: the class name whose sensitivity, specificity and F1 (and AUC, where the benchmark "
            "scores probabilities) are reported; default class 1",
        )  # fmt: skip
    if label_fractions is not None:
        parser.add_argument(
            "--label_fractions", type=float, nargs="+", default=list(label_fractions),
            help=f"few-label regimes, fractions of the train labels in (0, 1); default {list(label_fractions)}",
        )  # fmt: skip
        parser.add_argument(
            "--min_labels_per_class", type=int, default=MIN_LABELS_PER_CLASS,
            help=f"each few-label regime keeps at least this many images of every class; default {MIN_LABELS_PER_CLASS}",
        )  # fmt: skip
    add_reading_options(parser)
    if checkpoint:
        add_checkpoint_options(parser, checkpoint)
    if parts is not None:
        parser.add_argument(
            "--parts", nargs="+", default=list(parts), choices=list(parts), help=f"parts to run; default all: {list(parts)}"
        )
    return parser


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """How the images are read (`reading_options`), as the library's training scripts take it: plankton and other
    grey images stored as colour, elongated organisms padded rather than stretched, bright-field backgrounds."""
    parser.add_argument(
        "--num_channels", type=int, choices=(1, 3), default=None,
        help="read the images as 1 (grey) or 3 channels; default: the data's own",
    )  # fmt: skip
    parser.add_argument(
        "--resize_mode", choices=("stretch", "pad", "crop"), default="stretch",
        help="how an image meets the size: stretched, padded keeping its aspect ratio, or centre-cropped; "
        "default stretch",
    )  # fmt: skip
    parser.add_argument("--pad_value", type=float, default=-1.0, help="the fill of --resize_mode pad, -1 black .. 1 white")
    parser.add_argument(
        "--normalize_background", action="store_true",
        help="divide each image by its border's level (bright-field images: dark organisms on a light background)",
    )  # fmt: skip
    parser.add_argument(
        "--transparency_fill", type=float, default=None,
        help="composite transparent pixels (PNG cutouts) onto this grey level, -1 black .. 1 white; default: alpha "
        "discarded",
    )  # fmt: skip


def reading_options(args: argparse.Namespace) -> dict:
    """The keywords of `load_image_classification_data` the reading flags give (`add_reading_options`)."""
    return {
        "num_channels": args.num_channels, "resize_mode": args.resize_mode, "pad_value": args.pad_value,
        "normalize_background": args.normalize_background, "transparency_fill": args.transparency_fill,
    }  # fmt: skip


def add_checkpoint_options(parser: argparse.ArgumentParser, trainer: str) -> None:
    """`--keep_checkpoint` and `--unet_dir` (a model of the script `trainer`), checked by
    `check_checkpoint_options`."""
    parser.add_argument(
        "--keep_checkpoint", default=None, metavar="DIR",
        help="save the trained diffusion model here (save_pretrained), to rerun with --unet_dir; default: not kept",
    )  # fmt: skip
    parser.add_argument(
        "--unet_dir", default=None, metavar="DIR",
        help=f"a model saved by --keep_checkpoint or {trainer}, used instead of training one; "
        "refused unless its saved preprocessing (size, channels, resize mode, padding, background, transparency) is "
        "this run's",
    )  # fmt: skip


def add_probe_C_option(parser: argparse.ArgumentParser) -> None:
    """`--probe_C`, checked by `check_data_options`."""
    parser.add_argument(
        "--probe_C", type=float, nargs="+", default=list(PROBE_C),
        help=f"inverse regularisation strengths each linear probe chooses from on val; default {list(PROBE_C)}",
    )  # fmt: skip


def check_data_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad option values before any data is read (argparse's error: the flag, what was expected, exit 2)."""
    if args.data not in (None, "digits") and not Path(args.data).exists():
        parser.error(f"--data: {args.data} does not exist; expected {DATA_HELP}")
    for fraction in getattr(args, "label_fractions", None) or ():
        if not 0 < fraction < 1:
            parser.error(f"--label_fractions: expected numbers strictly between 0 and 1, got {fraction}")
    if getattr(args, "probe_C", None) is not None:
        try:
            as_inverse_regularisations(args.probe_C, "--probe_C")
        except ValueError as error:
            parser.error(str(error))
    if getattr(args, "min_labels_per_class", 1) < 1:
        parser.error(f"--min_labels_per_class: expected an integer >= 1, got {args.min_labels_per_class}")
    check_checkpoint_options(parser, args)


def check_unet_size(parser: argparse.ArgumentParser, preset: str, image_size: int) -> None:
    """Refuse, as argparse does, a U-Net preset that cannot be built at `image_size` (or no preset), before any data is
    read (QA: unet_features_accuracy --image_size 10 gave a traceback from `unet_config` where plankton_accuracy gave
    this one-line error)."""
    from diffusion_classifiers.models.unet_presets import unet_config

    try:
        unet_config(preset, image_size)
    except ValueError as error:
        parser.error(f"--image_size / --unet_preset: {error}")


def check_checkpoint_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--unet_dir` must hold a saved pipeline, and is not combined with `--keep_checkpoint`."""
    unet_dir = getattr(args, "unet_dir", None)
    needed = ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")
    if unet_dir is not None and not all((Path(unet_dir) / name).is_file() for name in needed):
        parser.error(
            f"--unet_dir: expected a folder saved by --keep_checkpoint or the U-Net trainer (with {', '.join(needed)}), "
            f"got {unet_dir}"
        )
    if unet_dir is not None and getattr(args, "keep_checkpoint", None) is not None:
        parser.error("--keep_checkpoint and --unet_dir: expected at most one (a reused model is already kept)")
    if getattr(args, "keep_checkpoint", None) is not None:
        _check_new_folder(parser, args.keep_checkpoint, "--keep_checkpoint")


def _check_new_folder(parser: argparse.ArgumentParser, folder: str, flag: str) -> None:
    """A folder a run will create and fill, checked before the run trains: new or empty (a model kept earlier is
    never replaced), under a folder this user may write in."""
    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        parser.error(f"{flag}: {folder} exists and is not an empty folder; expected a new or empty one (a kept model "
                     "is never replaced; a folder without model_index.json holds a save that was stopped: remove "
                     "it)")  # fmt: skip
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        parser.error(f"{flag}: {folder} cannot be created ({existing} is not a folder this user may write in)")


# What a reused U-Net must have been trained on as this run reads its images: the same size, channels, resize,
# padding, background and transparency.
REUSED_UNET_CONTRACT = (
    "image_size", "num_channels", "resize_mode", "pad_value", "normalize_background", "transparency_fill",
)  # fmt: skip


# The flags that set each `REUSED_UNET_CONTRACT` field (`add_reading_options` and `--image_size`).
READING_FLAGS = tuple(f"--{field}" for field in REUSED_UNET_CONTRACT)


def check_unet_dir(
    unet_dir: str, preprocessing: "ImagePreprocessing", class_conditional: bool = False,
    reading_flags: Sequence[str] = READING_FLAGS,
) -> None:  # fmt: skip
    """Refuse a `--unet_dir` U-Net (a folder `check_checkpoint_options` accepted) that is class-conditional (unless
    `class_conditional`: Score-SDE's, which must be), or whose pipeline's saved preprocessing contract
    (`model_index.json`) differs from the run's `preprocessing` in a `REUSED_UNET_CONTRACT` field (the error names
    each one, and the benchmark's `reading_flags` that set them, or that it has none for a field: QA, plankton_accuracy
    was told to rerun with --resize_mode, --pad_value and --num_channels, flags it does not have); reads two JSON
    files, no weights."""
    folder = Path(unet_dir)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    if (unet_config.get("num_class_embeds") is not None) != class_conditional:
        held, expected = ("an unconditional DDPM U-Net", "a class-conditional U-Net (examples/score_sde_train.py")
        if not class_conditional:
            held, expected = ("a class-conditional U-Net (Score-SDE's)", "an unconditional DDPM U-Net (examples/"
                              "unet_features_train.py")  # fmt: skip
        raise ValueError(f"--unet_dir: {unet_dir} holds {held}; expected {expected}, or --keep_checkpoint)")
    saved = _saved_unet_contract(folder, unet_config)
    differing_fields = [f for f in REUSED_UNET_CONTRACT if getattr(saved, f) != getattr(preprocessing, f)]
    differing = [
        f"{field} {getattr(saved, field)!r} (this run: {getattr(preprocessing, field)!r})" for field in differing_fields
    ]
    if differing:
        fixed = [field for field in differing_fields if f"--{field}" not in reading_flags]
        remedy = (
            f"run with the options it was kept with ({', '.join(reading_flags)}), or train a U-Net for these"
            if not fixed else f"this benchmark has no flag to read images with another {' or '.join(fixed)}: train "
            "a U-Net for these (leave out --unet_dir)"
        )  # fmt: skip
        raise ValueError(
            f"--unet_dir: {unet_dir} holds a U-Net trained on images read otherwise than this run reads them: "
            f"{'; '.join(differing)}; expected the same preprocessing: {remedy}"
        )


# The flags that carve a benchmark's splits from its data: a model kept by a run with others was trained on images
# this run's carving puts in val or test.
CARVING_FLAGS = "--data and --seed"


def check_reused_model_saw_none_of(unet_dir: str, splits: dict, carving_flags: str = CARVING_FLAGS) -> None:
    """Refuse a `--unet_dir` model trained on any image of this run's val or test split, by the fingerprints its
    `data_splits.json` records (a kept model's: `record_kept_model_training_images`; a trainer's pipeline's), naming
    the benchmark's `carving_flags` (QA: the library's message named the trainer's --unlabeled, which no benchmark
    has); where it records none, say the run cannot check. A U-Net trained on the whole folder scored its own test
    images, with every target "met" and SimCLR trained on the train split only."""
    from diffusion_classifiers.data.split_record import SPLIT_RECORD_NAME, recorded_train_fingerprints
    from diffusion_classifiers.evaluation import check_training_overlap

    fingerprints = recorded_train_fingerprints(unet_dir)
    if fingerprints is None:
        warnings.warn(
            f"--unet_dir: {unet_dir} records no fingerprints of its training images (kept by an earlier version, or "
            "saved without them): this run cannot check that its val and test images are none the model was trained on"
        )
        return
    held_out = {name: splits[name] for name in ("val", "test") if name in splits}
    _, seen = check_training_overlap(held_out, fingerprints, drop=True, train_split=splits.get("train"))
    if any(seen.values()):
        counted = " and ".join(
            f"{seen[name]} of {len(split)} images of the {name} split" for name, split in held_out.items()
        )
        raise ValueError(
            f"{counted} of this run's data (--unet_dir {unet_dir}) are images the model was trained on (by content: "
            f"its {SPLIT_RECORD_NAME} train_fingerprints): it was trained on other data, or on these data carved "
            f"otherwise (a run with other {carving_flags}), and scoring them would overstate it; expected a model "
            f"trained on none of this run's val and test images: rerun with the {carving_flags} it was kept with, or "
            "train one here (leave out --unet_dir)"
        )


def record_kept_model_training_images(folder: str, train_images: torch.Tensor, unlabeled: bool, seed: int) -> None:
    """A `--keep_checkpoint` model's training images, by content, in its `data_splits.json` (`unlabeled`: a U-Net
    trained without labels, so any labelled data carved later is checked against them), so that a run reusing it with
    `--unet_dir` refuses val or test images it was trained on (`check_reused_model_saw_none_of`)."""
    from diffusion_classifiers.data.split_record import SPLIT_DEFAULTS, save_split_record

    carving = {**SPLIT_DEFAULTS, "seed": seed}  # as `load_benchmark_data` carved the run's data
    save_split_record(folder, **carving, train_images=train_images, unlabeled=unlabeled)


def _saved_unet_contract(folder: Path, unet_config: dict) -> "ImagePreprocessing":
    """The preprocessing contract saved with the U-Net of `folder`; for a folder saved before contracts were recorded
    (a v0.1.0 trainer's pipeline, a `DDPMPipeline` an earlier `--keep_checkpoint` kept) the one its pipeline loads
    with: the U-Net's size and channels, every other field at its default (with a warning)."""
    from diffusion_classifiers.data import ImagePreprocessing

    saved = json.loads((folder / "model_index.json").read_text()).get("preprocessing")
    if saved is not None:
        return ImagePreprocessing.from_dict(saved)
    warnings.warn(
        f"--unet_dir: {folder} records no preprocessing contract (saved before contracts were); assumed "
        "stretched resizing, padding -1 and no background normalisation, as its pipeline loads it"
    )
    return ImagePreprocessing(image_size=unet_config["sample_size"], num_channels=unet_config["in_channels"])


def trained_or_loaded_ddpm(
    args: argparse.Namespace, splits: dict, train: Callable[[], tuple], carving_flags: str = CARVING_FLAGS
) -> tuple:
    """The DDPM U-Net and scheduler saved in `--unet_dir` (refused by `check_unet_dir` unless trained on images read
    as the train split's contract reads them, and by `check_reused_model_saw_none_of` if trained on a val or test
    image of `splits`, the error naming `carving_flags`) with final loss None; else `train()`'s `(unet, scheduler,
    training summary)` as `(unet, scheduler, final loss)`, kept in `--keep_checkpoint` as a
    `UNetFeatureClassifierPipeline` without a head, which saves the contract, with the fingerprints of the train images
    and the training summary (`keep_trained_model`)."""
    preprocessing = splits["train"].preprocessing
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline

    if getattr(args, "unet_dir", None):  # a kept pipeline or a trainer's pipeline folder: both hold unet/ and scheduler/
        check_unet_dir(args.unet_dir, preprocessing)
        check_reused_model_saw_none_of(args.unet_dir, splits, carving_flags)
        unet = UNet2DModel.from_pretrained(args.unet_dir, subfolder="unet")
        return unet.eval(), DDPMScheduler.from_pretrained(args.unet_dir, subfolder="scheduler"), None
    unet, scheduler, summary = train()
    if getattr(args, "keep_checkpoint", None):
        kept = UNetFeatureClassifierPipeline(unet=unet, scheduler=scheduler, preprocessing=preprocessing)
        keep_trained_model(args.keep_checkpoint, kept, splits["train"].images, summary, unlabeled=True, seed=args.seed)
    return unet, scheduler, summary.final_loss


def keep_trained_model(
    folder: str, pipeline, train_images: torch.Tensor, summary: "TrainingSummary", unlabeled: bool, seed: int
) -> None:
    """`keep_model` of a trained `pipeline` into the `--keep_checkpoint` `folder`: its `save_pretrained`, its training
    images' fingerprints (`record_kept_model_training_images`) and its `training_summary.json` (`summary`), which a
    `--unet_dir` reuse records (`loaded_unet_facts`; QA: the U-Net benchmarks kept none, so a reuse recorded
    loaded_training_summary None)."""

    def save(staging: str) -> None:
        pipeline.save_pretrained(staging)
        record_kept_model_training_images(staging, train_images, unlabeled=unlabeled, seed=seed)
        summary.save(staging)

    keep_model(folder, save)


def keep_model(folder: str, save: Callable[[str], None]) -> None:
    """`save(staging)` (the model's `save_pretrained` and its records) into the `--keep_checkpoint` `folder` as one
    piece (`training.save_model_whole`: `model_index.json` moved in last), so a run killed while keeping it leaves
    no folder `--unet_dir` takes for a model (QA: one killed after `model_index.json` lacked its training images'
    fingerprints, and was reused without the check they allow)."""
    from diffusion_classifiers.training import save_model_whole

    os.makedirs(folder, exist_ok=True)
    save_model_whole(folder, save)


def encoder_parameters(unet) -> int:
    """Parameters of a U-Net's encoder path: conv_in, time embedding, down blocks and mid block."""
    from diffusion_classifiers.models import count_parameters

    return sum(count_parameters(m) for m in (unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block))


def loaded_unet_facts(unet_dir: str, unet, presets: Sequence[str]) -> dict:
    """What the U-Net loaded from `--unet_dir` is, for the record in place of the run's training flags (QA: records
    named the run's preset and steps for a model trained otherwise): `nearest_preset`, the one of `presets` whose
    encoder is nearest its in size (`encoder_parameters`), its block widths and the training summary saved with it
    (None when it has none)."""
    from diffusers import UNet2DModel

    from diffusion_classifiers.models import unet_config

    size, channels = unet.config.sample_size, unet.config.in_channels
    preset_sizes = {
        preset: encoder_parameters(UNet2DModel(**unet_config(preset, size, channels))) for preset in presets
    }
    loaded = encoder_parameters(unet)
    nearest = min(preset_sizes, key=lambda preset: abs(math.log(preset_sizes[preset] / loaded)))
    summary_path = Path(unet_dir) / "training_summary.json"
    return {
        "nearest_preset": nearest,
        "loaded_block_out_channels": list(unet.config.block_out_channels),
        "loaded_training_summary": json.loads(summary_path.read_text()) if summary_path.is_file() else None,
    }


def dataset_name(source: str) -> str:
    """The name results are keyed by: the file or folder name without extension, lower case, `_` for other than
    letters and digits (`pneumoniamnist.npz` -> `pneumoniamnist`)."""
    stem = Path(source).name.split(".")[0].lower()
    return "".join(c if c.isalnum() else "_" for c in stem)


def load_benchmark_data(
    source: str, class_names: Sequence[str] | None = None, positive_class: str | None = None, seed: int = 0,
    image_size: int | None = None, **reading: Any,
) -> dict:  # fmt: skip
    """`load_image_classification_data` of `source` (a saved `datasets` folder read with `load_from_disk`), read as
    `reading` (`reading_options`) says, with the positive class checked against the class names at once, before any
    training."""
    from diffusion_classifiers.data import load_image_classification_data
    from diffusion_classifiers.metrics import resolve_positive_label

    path = Path(source)
    if path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json")):
        import datasets

        source = datasets.load_from_disk(str(path))
    splits = load_image_classification_data(
        source, image_size=image_size, seed=seed, class_names=class_names, **reading
    )
    train = splits["train"]
    check_every_class_in_train(train, source if isinstance(source, str) else str(path), class_names)
    check_every_class_held_out(splits, source if isinstance(source, str) else str(path))
    resolve_positive_label(positive_class, train.class_names, train.num_classes)  # raises naming positive_class
    return splits


def check_every_class_in_train(train, source: str, class_names: Sequence[str] | None = None) -> None:
    """Refuse, before any training, a class with no train image (QA: `--class_names` naming more classes than the
    data has was only warned about; the record's counts then left it out and its "at least k of every class" was
    false): a benchmark cannot learn, nor give few-label regimes of, a class it has no image of."""
    empty = _classes_without_images(train.labels, train.class_names)
    if not empty:
        return
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    hint = (
        f"--class_names names {len(class_names)} classes; give one name for each label id 0..K-1 the data has"
        if class_names else "give train images of every class (or more images, for a carved train split)"
    )
    raise ValueError(
        f"{source}: the train split has no image of class{'es' if len(empty) > 1 else ''} {empty} "
        f"(train images per class: {dict(zip(train.class_names, counts.tolist()))}); expected every class in train, "
        f"the benchmark cannot learn a class it has no image of: {hint}"
    )


def _classes_without_images(labels: torch.Tensor, class_names: Sequence[str]) -> list:
    """The names of the classes (label ids 0..K-1, named by `class_names`) with no image among `labels`."""
    counts = torch.bincount(labels, minlength=len(class_names))
    return [class_names[label] for label in torch.nonzero(counts == 0).flatten().tolist()]


def check_every_class_held_out(splits: dict, source: str) -> None:
    """Refuse, before any training, a val or test split without a class (QA: a rare class of 1 image left the carved
    test split without it; the run trained for its whole budget, then failed on an undefined AUC): a benchmark chooses
    on val and reports on test, and neither can measure a class it has no image of. (A subset of them is checked by
    `stratified_subset_index`.)"""
    train = splits["train"]
    for name in ("val", "test"):
        empty = _classes_without_images(splits[name].labels, train.class_names)
        if empty:
            per_class = {
                class_name: sum(int((split.labels == label).sum()) for split in splits.values())
                for label, class_name in enumerate(train.class_names) if class_name in empty
            }  # fmt: skip
            raise ValueError(
                f"{source}: the {name} split has no image of class{'es' if len(empty) > 1 else ''} {empty} (images "
                f"in all splits: {per_class}); expected every class in val and test, which the benchmark chooses on "
                "and reports on: give more images of it, or leave the class out of the data"
            )


def stratified_subset_index(split, size: int, seed: int, what: str) -> "np.ndarray":
    """The indices of a seeded stratified subset of about `size` of `split`'s images (`stratified_subset_indices`; all
    of them from `size` on), refused, before any training, where it loses a class of the split (review: a class of 1
    image, which a stratified subset drops, left a --quick val without it, and the run failed after training).
    `what`: the split as the error names it."""
    from diffusion_classifiers.data import stratified_subset_indices

    index = stratified_subset_indices(split.labels, size, seed)
    counts = torch.bincount(split.labels, minlength=split.num_classes)
    lost = sorted(set(torch.nonzero(counts).flatten().tolist()) - set(split.labels[index].tolist()))
    if lost:
        held = {split.class_names[label]: int(counts[label]) for label in lost}
        raise ValueError(
            f"{what}: its stratified subset of {size} of {len(split)} images has no image of class(es) {list(held)} "
            f"(images there: {held}), a subset keeping a class only from 2 images; expected at least 2 of every "
            "class: give more images of it, a larger subset, or leave the class out of the data"
        )
    return index


def capped_sizes(splits: dict, sizes: Dict[str, int]) -> Dict[str, int]:
    """`sizes` capped at each split's size: a quick run on a small split takes all of it."""
    return {name: min(size, len(splits[name])) for name, size in sizes.items()}


def subsample_splits(splits: dict, sizes: Dict[str, int], seed: int) -> dict:
    """Seeded stratified subsets of about `sizes` images (capped at each split's size; splits not named stay), each
    keeping every class of its split (`stratified_subset_index`)."""
    subsets = dict(splits)
    for name, size in capped_sizes(splits, sizes).items():
        subsets[name] = splits[name].subset(stratified_subset_index(splits[name], size, seed, f"the {name} split"))
    return subsets


def few_label_subsets(
    labels: torch.Tensor, fractions: Sequence[float], min_per_class: int, seed: int,
    min_per_class_flag: Optional[str] = "--min_labels_per_class", class_names: Optional[Sequence[str]] = None,
) -> dict:  # fmt: skip
    """`{"all": every index, "1%": ..., ...}`: for each fraction, that share of every class, at least `min_per_class`
    images of each (all of a smaller class, which is warned about); one seed, so a smaller regime is contained in a
    larger one. A regime that selects the same images as another (or as "all") is refused before any training: its
    results would repeat the other's under a few-label name. `min_per_class_flag` is the option that sets
    `min_per_class` (None: fixed); `class_names` name the label ids in the warning."""
    from diffusion_classifiers.data import few_label_indices

    _warn_classes_below_the_minimum(labels, fractions, min_per_class, min_per_class_flag, class_names)
    subsets = {"all": torch.arange(len(labels))}
    for fraction in fractions:
        regime = f"{100 * fraction:g}%"
        index = torch.from_numpy(few_label_indices(labels, fraction=fraction, seed=seed, min_per_class=min_per_class))
        same = next((other for other, rows in subsets.items() if other == regime or torch.equal(rows, index)), None)
        if same is not None:
            floor = f"lower {min_per_class_flag} (now {min_per_class}: every class keeps at least that many) or "
            raise ValueError(
                f"--label_fractions {list(fractions)}: the '{regime}' regime selects the same {len(index)} train labels "
                f"as the '{same}' regime; expected each regime to select other images (its results would repeat the "
                f"other's): {floor if min_per_class_flag else ''}give --label_fractions that select other numbers of images"
            )
        subsets[regime] = index
    return subsets


def _warn_classes_below_the_minimum(
    labels: torch.Tensor, fractions: Sequence[float], min_per_class: int, flag: Optional[str],
    class_names: Optional[Sequence[str]],
) -> None:  # fmt: skip
    """A class with at most `min_per_class` train images gives every few-label regime all of them (QA: a "10%"
    regime held 93 of 108 labels, without a word)."""
    counts = torch.bincount(labels).tolist()
    small = {
        (class_names[label] if class_names else label): count
        for label, count in enumerate(counts) if 0 < count <= min_per_class
    }  # fmt: skip
    if small and fractions:
        regimes = ", ".join(f"'{100 * fraction:g}%'" for fraction in fractions)
        warnings.warn(
            f"{flag or 'min_per_class'} {min_per_class}: class(es) {small} have no more train images than that, so the "
            f"{regimes} regime(s) take all of them: for those classes they are not few-label regimes",
            UserWarning,
            stacklevel=3,
        )


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the common flags and check, before any long work, that a full run can write its results (the folder of
    `--output`, where figures go too); returns the device to run on. The run's start is recorded here
    ([`run_start`])."""
    run_start()
    if not args.quick:
        if args.output:
            check_writable_file(args.output, "--output")
        check_writable_dir(Path(args.output).parent if args.output else RESULTS_DIR, "--output folder")
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
        threadpool_limits(limits=args.num_threads)  # numpy/scipy BLAS, used by scikit-learn
    try:
        return usable_device(args.device)
    except ValueError as error:  # one line, as argparse's: the flag is named
        sys.exit(f"{Path(sys.argv[0]).name}: error: {error}")


def check_timesteps_arg(parser: argparse.ArgumentParser, timesteps: Optional[Sequence[int]], unet_dir=None) -> None:
    """`--timesteps` as `features.check_timesteps` takes them for the diffusion model (a `--unet_dir`'s scheduler, else
    the 1,000 steps of the one the benchmark trains), refused before any training (QA: `--timesteps 5000` trained the
    U-Net, then failed in feature extraction with a traceback). A `--unet_dir` without a scheduler is left to the
    check that reads it."""
    from diffusion_classifiers.features import check_timesteps

    config = Path(unet_dir or "", "scheduler", "scheduler_config.json")
    if not timesteps or (unet_dir and not config.is_file()):
        return
    steps = json.loads(config.read_text()).get("num_train_timesteps", 1000) if unet_dir else 1000
    try:
        check_timesteps(timesteps, steps)
    except ValueError as error:
        parser.error(f"--timesteps: {error}")


def usable_device(name: Optional[str]) -> torch.device:
    """`--device` as a torch device this machine has (default: cuda when available), refused before any work (QA:
    `--device cuda:7` on a CPU machine trained first, then failed in torch with a traceback)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r}: {error}; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: expected cpu, cuda or cuda:N")
    return device


def training_arguments(
    output_dir: str, max_train_steps: int, learning_rate: float, lr_warmup_steps: int, seed: int,
    train_batch_size: int = 64, use_ema: bool = False, num_sample_images: int = 8,
) -> "TrainingArguments":  # fmt: skip
    """The `TrainingArguments` of a benchmark run: its budget, the loop's defaults otherwise, one checkpoint (the
    last; `output_dir` is a temporary folder; `num_sample_images=0` skips its sample grid, as quick runs do)."""
    from diffusion_classifiers.training import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        train_batch_size=train_batch_size,
        max_train_steps=max_train_steps,
        learning_rate=learning_rate,
        lr_warmup_steps=lr_warmup_steps,
        checkpointing_steps=max_train_steps,
        use_ema=use_ema,
        seed=seed,
        num_sample_images=num_sample_images,
    )


@dataclass
class CNNBaseline:
    probs: torch.Tensor  # (N, K) class probabilities on the test images, on the CPU
    info: dict  # train_supervised_cnn's: num_parameters, selected_step, val_accuracy_by_step, final_loss
    train_seconds: float
    test_seconds: float


def cnn_baseline(
    train, val, test, output_dir: str, widths: Sequence[int], max_train_steps: int, train_batch_size: int,
    learning_rate: float, seed: int, augment: bool = False, device: torch.device = torch.device("cpu"),
) -> CNNBaseline:  # fmt: skip
    """The supervised baseline: a `SupervisedCNN` trained on `train` with its checkpoint chosen on `val` (test plays
    no part), then run on `test`."""
    from diffusion_classifiers.training import predict_proba, train_supervised_cnn

    start = time.perf_counter()
    model, info = train_supervised_cnn(
        train.images, train.labels, val.images, val.labels, train.num_classes, output_dir,
        max_train_steps=max_train_steps, train_batch_size=train_batch_size, learning_rate=learning_rate, seed=seed,
        augment=augment, widths=widths,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    probs = predict_proba(model.to(device), test.images)
    return CNNBaseline(probs, info, train_seconds, time.perf_counter() - start)


QUICK_FIGURE_MARK = "(quick mode: tiny budget, not a result)"


def figure_title(title: str, quick: bool) -> str:
    """The title of a PNG a benchmark writes, marked `QUICK_FIGURE_MARK` first on a `--quick` run (QA: a quick run's
    plot could be taken for a result)."""
    return f"{QUICK_FIGURE_MARK} {title}" if quick else title


def target_entry(value: Optional[float], target: Optional[float], higher_is_better: bool = True) -> dict:
    """One entry of `figures["targets"]`: the measured `value`, the `target` it must reach (at least, or at most
    when not `higher_is_better`) and whether it does; not met where either is undefined (None: an AUC of a split
    without a class)."""
    if value is None or target is None:
        return {"value": value, "target": target, "met": False, "higher_is_better": higher_is_better}
    value, target = float(value), float(target)
    met = value >= target if higher_is_better else value <= target
    return {"value": value, "target": target, "met": met, "higher_is_better": higher_is_better}


def run_seed(record: dict) -> int:
    """The `--seed` a recorded run used: its figures' `seed` where recorded, else read from its command (default 0)."""
    if "seed" in record["figures"]:
        return record["figures"]["seed"]
    words = shlex.split(record["command"])
    return int(words[words.index("--seed") + 1]) if "--seed" in words else 0


def read_seed_runs(paths: Sequence[str], budget_of: Callable[[dict], dict]) -> Dict[int, dict]:
    """The recorded full runs at `paths` by their `--seed`, for `--merge`: refused unless every run has the same
    `budget_of(record)` and each seed one run."""
    records = {path: json.loads(Path(path).read_text()) for path in paths}
    budgets = {json.dumps(budget_of(r), sort_keys=True) for r in records.values()}
    if len(budgets) != 1:
        raise ValueError(f"--merge: expected runs with one budget, got {len(budgets)}: {sorted(budgets)}")
    seeds = {path: run_seed(r) for path, r in records.items()}
    if len(set(seeds.values())) != len(seeds):
        raise ValueError(f"--merge: expected one run per seed, got seeds {seeds}")
    return {seeds[path]: {**record, "path": path} for path, record in sorted(records.items(), key=lambda x: seeds[x[0]])}


def over_seeds(tables: list, statistic: Callable, digits: Optional[int] = None):
    """`statistic` of every number of `tables` (nested dicts of one shape, one per seed) across the seeds, in that
    shape; rounded to `digits` when given."""
    if isinstance(tables[0], dict):
        return {key: over_seeds([table[key] for table in tables], statistic, digits) for key in tables[0]}
    value = float(statistic(tables))
    return value if digits is None else round(value, digits)


def coverage_floor(draws: int, level: float = 0.95) -> float:
    """The coverage target of a simulation of `draws` draws: `level` less 2 Monte-Carlo standard errors of a coverage
    of `level`."""
    return level - 2 * math.sqrt(level * (1 - level) / draws)


def simulation_args(parser: argparse.ArgumentParser, settings: Sequence[str], defaults: dict, quick: dict,
                    population: str) -> argparse.Namespace:  # fmt: skip
    """The coverage simulations' options, parsed and checked: `--draws` (test sets a setting), `--population_size`
    (images of the sample the `population` figures come from) and `--settings`; `defaults`' values, or `quick`'s with
    `--quick`, where not given."""
    parser.add_argument(
        "--draws", type=int, default=None,
        help=f"test sets drawn per setting (default {defaults['draws']}; quick {quick['draws']})",
    )  # fmt: skip
    parser.add_argument(
        "--population_size", type=int, default=None,
        help=f"images of the sample the {population} come from (default {defaults['population_size']}; quick "
        f"{quick['population_size']})",
    )  # fmt: skip
    parser.add_argument("--settings", nargs="+", choices=list(settings), default=list(settings))
    args = parser.parse_args()
    for name, value in (quick if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.draws < 1:
        parser.error(f"--draws: expected an integer >= 1, got {args.draws}")
    if args.population_size < 1000:
        parser.error(f"--population_size: expected an integer >= 1000, got {args.population_size}")
    return args


@contextmanager
def timed(walls: dict, stage: str):
    """Record the wall time of a stage in `walls[stage]` (seconds)."""
    start = time.perf_counter()
    yield
    walls[stage] = round(time.perf_counter() - start, 1)


def median_seconds(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Median wall time of each function. The functions run round-robin, so that load from other processes on a
    shared machine hits every variant alike; `warmup` untimed rounds come first; CUDA is synchronised."""

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    times = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


REPO_ROOT = Path(__file__).resolve().parents[1]


def _library_version() -> Optional[str]:
    """The version of the `diffusion_classifiers` code imported (where an editable install's metadata keeps the
    version it was installed at)."""
    import diffusion_classifiers

    return diffusion_classifiers.__version__


def code_state(root: Path = REPO_ROOT) -> dict:
    """The git commit the benchmark's code is at and whether the work tree differs from it (`git status
    --porcelain` not empty, untracked files included), so a stored result can be tied to its code; both None where
    `root` is no git work tree or git is missing. Reads only (`--no-optional-locks`: not even the index is refreshed)."""
    import subprocess

    def git(*words: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *words], capture_output=True, text=True, check=True,
            timeout=30,
        ).stdout.strip()  # fmt: skip

    try:
        state = {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
        if state["git_dirty"]:  # the tracked files' changes, which a dirty run's record cannot otherwise name
            state["git_diff_sha256"] = hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()
        return state
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


_RUN_START: dict = {}


def run_start() -> dict:
    """The UTC time and the code's state ([`code_state`]) when this run began, read once: a record names the code
    the run ran, not what is checked out when it ends (QA: a run of hours named a commit made while it ran)."""
    if not _RUN_START:
        _RUN_START.update(started_utc=_utc_now(), code=code_state())
    return dict(_RUN_START)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict:
    """Machine, package versions (the library's too), the code's git commit when the run began and the UTC dates it
    began and ended (`code_changed_during_run`: the code's state at its end, where another commit was checked out
    meanwhile; files the run writes itself make the tree dirty, so that alone is not a change)."""
    import diffusers
    import numpy
    import sklearn

    start, now = run_start(), code_state()
    changed = now["git_commit"] != start["code"]["git_commit"]
    if changed:
        warnings.warn(
            f"another commit was checked out while the benchmark ran: {start['code']} when it began, {now} at its end"
        )
    return {
        "started_utc": start["started_utc"],
        "date_utc": _utc_now(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch runs (AVX2, AVX512, ...)
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],  # other processes on a shared machine slow every variant
        "torch_num_threads": torch.get_num_threads(),
        "blas_threads": [info["num_threads"] for info in threadpool_info()],
        "torch_device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # float32 math outside training when the record is written (the loop turns TF32 matmuls on only while it
        # trains; cuDNN's convolutions use TF32 by torch's default)
        "cuda_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        if device.type == "cuda" else None,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": numpy.__version__,
            "diffusion_classifiers": _library_version(),
        },
        "code": start["code"],
        **({"code_changed_during_run": now} if changed else {}),
    }


def results_path(name: str, args: argparse.Namespace) -> Path:
    """Where a full run writes its results (and its figures, beside): `--output`, else `results/<name>.json`, or with
    `--data` (your own data) `results/<name>_<data name>.json` (`results_data_name`), so a run on other data never
    replaces the result recorded for the benchmark's own."""
    if args.output:
        return Path(args.output)
    data = getattr(args, "data", None)
    return RESULTS_DIR / (f"{name}_{results_data_name(data)}.json" if data else f"{name}.json")


# File and folder names that say what part of a data set they hold, not which data set: a default results name
# (`results_data_name`) puts the parent folder's name before them.
GENERIC_DATA_NAMES = frozenset(
    ("all", "data", "dataset", "image", "images", "imgs", "test", "train", "training", "val", "valid", "validation")
)


def results_data_name(data: str) -> str:
    """The data's part of a default results name: `dataset_name(data)`, after its parent folder's where that is
    generic (`GENERIC_DATA_NAMES`: /lab/siteA/train -> sitea_train). QA: /lab/siteA/train and /lab/siteB/train both
    wrote plankton_accuracy_train.json, the second replacing the first without a word; the parent's name tells such
    folders apart as a user would name them, where refusing to replace the first would stop the second run."""
    name = dataset_name(data)
    parent = Path(data).absolute().parent
    return f"{dataset_name(str(parent))}_{name}" if name in GENERIC_DATA_NAMES and parent.name else name


def report(name: str, args: argparse.Namespace, device: torch.device, figures: dict) -> dict:
    """Print the record as the last line; on a full run also write it atomically to `results_path(name, args)`,
    readable as the umask allows (a temporary file is created owner-only)."""
    record = {
        "benchmark": name,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "quick": bool(args.quick),
        "environment": environment(device),
        "figures": figures,
    }
    if not args.quick:
        output = results_path(name, args)
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=output.parent, suffix=".tmp", delete=False) as f:
            json.dump(record, f, indent=2)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(f.name, 0o666 & ~umask)
        os.replace(f.name, output)  # never leaves a half-written result behind
    print(json.dumps(record), flush=True)
    return record

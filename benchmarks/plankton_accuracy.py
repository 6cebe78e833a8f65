"""The plankton study on NDSB 2015: frozen DDPM U-Net features vs a supervised CNN, a SimCLR ViT and raw pixels,
121 long-tailed classes, long-tailed and class-balanced test, label efficiency, and a shift to FlowCam images. For
bright-field grey plankton images only (dark organisms on a light background): it reads every image grey, its
background made white and padded with white, with no flag to read otherwise, and refuses dark-field images.

One run, every choice made on val, test only reported:

1. splits: seeded, stratified train / val / test of `../shared/data/ndsb2015_plankton/train` (at least 2 images of
   every class in val and in test); test is reported as it is (long-tailed) and as a class-balanced subset (the same
   number of every class, as many as the rarest class has in test);
2. images: grey, the background made white (`normalize_background=True`: FlowCam's field is grey, NDSB's already
   white), aspect-preserving resize into a square with white padding (`resize_mode="pad", pad_value=1`: the
   organisms are dark on a light background and elongated);
3. method: an unconditional DDPM U-Net (EMA) trained on the train images without labels; the probe grid over blocks
   x timesteps x pooling fitted on the labels of the largest few-label subset and chosen on val; the chosen feature
   of every image then probed with 1%, 10% and 100% of the train labels (each fraction re-chooses its pair on its
   own labels when it is within the grid subset; with all labels it chooses among the grid's 3 best pairs, refitted
   upright on all labels, the best on val), plus a class-weighted probe and, with all labels, a hypercolumn
   probe (every block's feature at the chosen pooling and timestep, concatenated); k-means with K = 121 on the chosen
   test features, beside the feature, normalisation and K chosen without labels (the most stable k-means on the
   grid's train and val images, K by silhouette);
   views: a plankter has no natural orientation, so each probe (U-Net, hypercolumn, SimCLR) may read its feature
   averaged over the image's 8 rotations and mirror images and each CNN may average its probabilities over them,
   each choosing on val (probes on the labels they chose their pair with, CNNs by val macro-F1); every probe with
   val to choose on keeps its best inverse regularisation strength C on val (the preset's `probe_C`);
4. baselines on the same splits and images: a supervised CNN of about the U-Net encoder's size (natural and
   class-balanced sampling, the better val macro-F1 reported), a SimCLR ViT trained on the same unlabeled images for
   the same number of optimizer steps and probed the same way, a linear probe on raw pixels;
5. shift: the 105 FlowCam images (6 classes, another instrument and sea) classified few-shot from each method's
   frozen features (nearest prototype and linear probe, k = 1, 5, all per class, 5-fold cross-validation); the
   U-Net's feature for it is the grid feature or hypercolumn that classifies NDSB val best by nearest prototype (the
   shift's protocol), beside the probe's choice; each method's views for it by the same val score.

Presets (`--preset`): `cpu` is sized for the issue's 60 minutes on one CPU thread but took 117-148 with each probe's C
chosen on val (2026-12-03; 55 at C = 1 on a machine that ran faster) (32 px, the tiny U-Net, 350 optimizer steps of
batch 64 for the DDPM and SimCLR, 20 passes over the labelled images and at least 1,400 steps for each CNN, the grid
on the 10% label subset, 3 timesteps, mean and 2x2 pooling); `gpu` is the full-size configuration for one H100/H200
(64 px, the small U-Net, fp32 with TF32, 3000 DDPM and SimCLR steps, at least 1500 CNN steps of batch 256 and 20
passes, 4 timesteps, mean and 2x2 pooling, C and the hypercolumn as `cpu_1h`; the DDPM capped at 1.5 minutes, its
learning-rate schedule fitted to the cap, SimCLR then training as many steps as it reached; sized by estimate, not
yet run); `cpu_1h` aims at the issue's CPU budget,
60 minutes on 2 cores: `cpu` without the hypercolumn probe, with each probe's C chosen from 0.1, 1, 10 and 100 (raw
pixels' from 0.001, 0.01, 0.1) and the run's parts (the U-Net arm, the SimCLR arm, each CNN training, the raw-pixel
probe) side by side in two worker processes of one thread each; with `--num_threads 2` it took 38-49 min over 3 seeds
(2026-12-04, with the all-labels pair chosen among 3; 36-42 without on 2026-12-03; 70 with the parts one after the
other on 2 threads, only the CNN pairs side by side). `--parts` runs some of the methods, each as in the whole run
but SimCLR without the U-Net arm, which trains the preset's steps (the targets comparing two methods are set where both
ran). `--quick` is a smoke run under a minute (16 px, 8 images per
class, a few steps, no hypercolumn probe).

    python benchmarks/plankton_accuracy.py --quick
    python benchmarks/plankton_accuracy.py                 # writes benchmarks/results/plankton_accuracy.json + PNG
    python benchmarks/plankton_accuracy.py --preset gpu    # writes benchmarks/results/plankton_accuracy_gpu.json
    python benchmarks/plankton_accuracy.py --preset cpu_1h --num_threads 2  # writes ..._cpu_1h.json
    python benchmarks/plankton_accuracy.py --keep_checkpoint /tmp/plankton_unet --output /tmp/my.json
    python benchmarks/plankton_accuracy.py --unet_dir /tmp/plankton_unet --output /tmp/again.json  # no DDPM training
    python benchmarks/plankton_accuracy.py --parts cnn raw_pixels --output /tmp/baselines.json  # the baselines alone
    python benchmarks/plankton_accuracy.py --merge seed0.json seed1.json seed2.json  # ..._cpu_1h_3_seeds.json

Data: PlanktonSet 1.0 (Cowen et al. 2015, NOAA NCEI accession 0127422) and the planktonclas FlowCam demo images
(Decrop et al. 2025, VLIZ, Apache-2.0).
"""

import argparse
import dataclasses
import json
import math
import tempfile
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_limits

import _common
from _common import (
    PROBE_C,
    add_checkpoint_options,
    base_parser,
    check_checkpoint_options,
    check_timesteps_arg,
    check_unet_dir,
    check_unet_size,
    data_path,
    dataset_name,
    encoder_parameters,
    few_label_subsets,
    figure_title,
    loaded_unet_facts,
    over_seeds,
    read_seed_runs,
    report,
    setup,
    target_entry,
    timed,
    trained_or_loaded_ddpm,
    training_arguments,
)
from diffusion_classifiers.data import ImagePreprocessing, LabeledImages, few_label_indices, list_image_folder
from diffusion_classifiers.data.splits import stratified_train_val_test_split
from diffusion_classifiers.features import DiffusionFeatureExtractor, feature_blocks, hypercolumn, with_hypercolumns
from diffusion_classifiers.metrics import classification_metrics
from diffusion_classifiers.models import SupervisedCNN, build_vit_encoder, count_parameters, encode_representation
from diffusion_classifiers.plots import plot_label_efficiency
from diffusion_classifiers.probing import few_shot_indices, fit_probe_grid, kmeans_evaluate, prototype_classify
from diffusion_classifiers.probing import NORMALIZATIONS, select_clustering_without_labels
from diffusion_classifiers.training import (
    checkpoint_weights,
    class_balanced_sampler,
    predict_proba,
    train_contrastive_encoder,
    train_ddpm_unet,
    train_supervised_cnn,
)
from diffusion_classifiers.validation import derived_seed
from diffusion_classifiers.views import image_views

NAME = "plankton_accuracy"
SPLITS = ("train", "val", "test")
TAIL_TRAIN_IMAGES = 50  # a class with fewer train images than this is in the tail
SHOTS = (1, 5, None)  # FlowCam labelled images per class; None: all of the fold's training images
MOST_SHOTS = max(shots for shots in SHOTS if shots)
SHIFT_FOLDS = 5  # the shift's stratified cross-validation folds (`few_shot_transfer`)
FEW_SHOT_PROTOCOLS = ("prototype", "linear_probe")
CNN_SAMPLINGS = ("natural", "balanced")  # each regime's CNN is trained both ways, the better on val kept
# The U-Net feature for the shift is chosen on NDSB val by nearest-prototype few-shot accuracy (as the shift is
# scored) at the shots every val class can give (some have 2 val images, so 5 per class is not available).
SHIFT_CHOICE_SHOTS = (1, None)
# A plankter has no natural orientation: every learned method may average its features (the CNN its probabilities)
# over the image's 8 rotations and mirror images (`diffusion_classifiers.views`), and chooses on val whether to, as it
# chooses everything else.
VIEW_CHOICES = (None, "dihedral")
# Every linear probe with val to choose on (grid, U-Net, hypercolumn, SimCLR, raw pixels) keeps its best inverse
# regularisation strength of `PROBE_C` on val: with all 21,824 labels a trial's chosen feature scored 59.3% val
# accuracy at C = 1 (the objective's default) and 60.4% at C = 3, still rising.
# With all labels the probe chooses its (pool, block, t) among the grid's best few, refitted upright on all labels:
# over 3 seeds of `cpu_1h` the grid's (10% of the labels) best 3 pairs lay within 1.1 points of val accuracy (its
# standard error is about 0.7); refitted on all labels, seed 2's grid favourite (mean up_blocks.1, t = 25) reached
# 48.9% upright val accuracy and its second, 2x2 up_blocks.1, 54.4% (2026-12-04). Each candidate costs its extraction
# of every train image (about 75 s on one thread) and an all-labels fit.
ALL_LABELS_CANDIDATES = 3
# What carves the run's splits (`load_splits`): --quick reads at most 8 images of each class
CARVING_FLAGS = "--data, --seed, --val_fraction, --test_fraction and --quick"
# the run's parts (`--parts`): the method's arm, and each baseline's, each scored on the same splits and shift
PARTS = ("unet", "cnn", "simclr", "raw_pixels")
QUICK_PROBE_C = (1.0,)  # 8 images per class: at larger C the solver takes long (PROBE_C made the run 40 s slower)


@dataclass(frozen=True)
class Preset:
    """The sizes of one run."""

    image_size: int
    unet_preset: str
    train_steps: int  # DDPM and SimCLR optimizer steps (the same budget for both)
    cnn_steps: int  # the fewest optimizer steps of a CNN run
    train_batch_size: int
    timesteps: Tuple[int, ...]
    pools: Tuple[str, ...]  # "mean" and "2x2": the probes choose on val, the shift's prototypes too
    vit: Dict[str, int]  # build_vit_encoder sizes of the SimCLR baseline
    cnn_widths: Tuple[int, ...]  # about the U-Net encoder's parameter count (conv_in, time embedding, down, mid)
    images_per_class: Optional[int] = None  # quick runs read at most this many images of each class
    num_episodes: int = 5  # FlowCam few-shot draws
    batch_size: int = 256  # feature extraction and encoding (on CPU 64: the timesteps of a batch share one forward)
    mixed_precision: str = "no"
    cnn_epochs: float = 0.0  # passes over a regime's labelled images, when more than `cnn_steps` (a CNN learns fast)
    probe_C: Tuple[float, ...] = PROBE_C  # the inverse regularisation strengths each probe chooses from on val
    hypercolumn_probe: bool = True  # also probe every block's feature at the chosen pooling and t (8 views: costly)
    all_labels_candidates: int = ALL_LABELS_CANDIDATES  # the grid's best pairs the all-labels probe chooses among
    raw_pixel_probe_C: Optional[Tuple[float, ...]] = None  # the raw-pixel probe's strengths; None: `probe_C`
    workers: int = 1  # 2: the run's parts (each method's arm, each CNN training) in two processes of one thread each
    train_minutes: Optional[float] = None  # the DDPM's wall-clock cap; SimCLR then trains the steps the DDPM reached

    @property
    def raw_pixel_Cs(self) -> Tuple[float, ...]:
        return self.raw_pixel_probe_C or self.probe_C

    def cnn_steps_for(self, num_images: int) -> int:
        return max(self.cnn_steps, math.ceil(self.cnn_epochs * num_images / self.train_batch_size))


PRESETS = {
    "quick": Preset(
        16, "tiny", 4, 4, 16, (50, 200), ("mean",), dict(hidden_size=32, num_layers=1, num_heads=2, patch_size=4),
        (16, 32, 80), images_per_class=8, num_episodes=1, batch_size=64, probe_C=QUICK_PROBE_C,
        hypercolumn_probe=False,  # its 8-view extraction of every block took 25 of 60 s
    ),
    "cpu": Preset(
        32, "tiny", 350, 1400, 64, (25, 100, 300), ("mean", "2x2"),
        dict(hidden_size=128, num_layers=4, num_heads=4, patch_size=4), (16, 32, 80), batch_size=64, cnn_epochs=20,
    ),
    "gpu": Preset(
        64, "small", 3000, 1500, 256, (25, 50, 100, 300), ("mean", "2x2"),
        dict(hidden_size=192, num_layers=6, num_heads=3, patch_size=8), (32, 64, 160),
        cnn_epochs=20,  # fp32 (TF32): on an H200, bf16 slowed the small U-Net's training 1.31x -> 0.96x the plain loop
        train_minutes=1.5,  # DDPM speed there unmeasured; SimCLR, 6 CNNs, extraction, probes, k-means need the rest
        # as `cpu_1h`, for the 10 minutes: the fits are launch-bound on a GPU, k-means and the label-free choice on the
        # CPU (a review's estimate of the first sizing: 630-880 s, not run)
        probe_C=(0.1, 1.0, 10.0, 100.0), hypercolumn_probe=False, raw_pixel_probe_C=(0.001, 0.01, 0.1),
    ),
}  # fmt: skip
# Aimed at the CPU budget, 60 minutes on 2 cores: the `cpu` run without the hypercolumn probe (not one of the
# study's methods; its 8-view extraction alone took 1,532 of the `cpu` run's 8,906 s), every probe choosing C from 4
# strengths a decade apart instead of 7, the raw-pixel probe from 0.001, 0.01 and 0.1 (its 1,024 collinear pixels
# need strong regularisation: on val, C = 0.01 scored 36.5%, 0.1 33.8%, and 10 and 100 ran to max_iter, about 10
# minutes) and the run's parts side by side in two processes of one thread each. It took 36 min (70 with only each
# regime's two CNN trainings side by side, 73 with the C grids alone); 38-49 min over 3 seeds with the all-labels
# pair chosen among `ALL_LABELS_CANDIDATES`.
PRESETS["cpu_1h"] = dataclasses.replace(
    PRESETS["cpu"], probe_C=(0.1, 1.0, 10.0, 100.0), hypercolumn_probe=False, raw_pixel_probe_C=(0.001, 0.01, 0.1),
    workers=2,
)
BUDGET_SECONDS = {"cpu": 60 * 60, "cpu_1h": 60 * 60, "gpu": 10 * 60}
# the U-Net presets of the run presets: a U-Net read from --unet_dir is recorded by the one nearest it in size
RUN_UNET_PRESETS = tuple(dict.fromkeys(preset.unet_preset for preset in PRESETS.values()))


# ------------------------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------------------------


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument(
        "--preset", default="cpu", choices=["cpu", "cpu_1h", "gpu"], help="run sizes (see the docstring); default cpu"
    )
    parser.add_argument(
        "--data", default=None,
        help="an image folder as the library reads it (<root>/<class>/<image>, or images/ with splits/*.txt, the "
        "splits pooled), or the .npz of benchmarks/gpu_carry_plankton.py pack (images already at the preset's size); "
        "bright-field grey plankton images only (dark organisms on a light background: read grey, the background "
        "made white, padded white; dark-field images are refused); default NDSB 2015's train folder",
    )  # fmt: skip
    parser.add_argument(
        "--shift_data", default=None,
        help="the shifted set's image folder, read as --data's (bright-field only); its results are named after it "
        "(<name>_shift, <name>_unet_minus_..._points); every class needs at least "
        f"{shift_images_needed()} images (one in each of the {SHIFT_FOLDS} cross-validation folds, "
        f"{MOST_SHOTS} shots in each fold's training part); default the FlowCam demo's images "
        "folder (named flowcam)",
    )  # fmt: skip
    parser.add_argument("--image_size", type=int, default=None, help="square side in px; default: the preset's")
    parser.add_argument("--unet_preset", default=None, help="tiny, small or base; default: the preset's")
    parser.add_argument("--max_train_steps", type=int, default=None, help="DDPM and SimCLR steps; default: the preset's")
    parser.add_argument(
        "--train_minutes", type=float, default=None,
        help="the DDPM's wall-clock cap; SimCLR then trains as many steps as the DDPM reached (one worker only); "
        "default: the preset's (gpu: 1.5)",
    )  # fmt: skip
    parser.add_argument("--cnn_steps", type=int, default=None, help="the fewest CNN steps per run; default: the preset's")
    parser.add_argument(
        "--cnn_epochs", type=float, default=None,
        help="CNN passes over a regime's labelled images when that is more than --cnn_steps; default: the preset's",
    )  # fmt: skip
    parser.add_argument("--timesteps", type=int, nargs="+", default=None, help="the grid's timesteps; default: the preset's")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes of one thread each that run the run's parts (each method's arm, each CNN training) side by "
        "side; 1: all in this process; default: the preset's",
    )  # fmt: skip
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="DDPM learning rate; default 5e-4")
    parser.add_argument("--simclr_learning_rate", type=float, default=3e-4, help="SimCLR learning rate; default 3e-4")
    parser.add_argument("--cnn_learning_rate", type=float, default=1e-3, help="CNN learning rate; default 1e-3")
    parser.add_argument(
        "--label_fractions", type=float, nargs="+", default=None,
        help="few-label regimes besides all labels, fractions of every class (at least 1 image each); default 0.01 "
        "0.1 (0.1 with --quick)",
    )  # fmt: skip
    parser.add_argument("--val_fraction", type=float, default=0.1, help="of the images left after test; default 0.1")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="of every class; default 0.2")
    add_checkpoint_options(parser, "examples/unet_features_train.py")
    parser.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
        help="the methods to run, each scored on the same splits, label regimes and shift: the U-Net features (the "
        "DDPM trained, probed and clustered), the supervised CNN, the SimCLR ViT (without the U-Net part it trains the "
        "preset's or --max_train_steps' steps) and the raw-pixel probe; the targets comparing two methods are set "
        f"where both ran; default all: {list(PARTS)}",
    )  # fmt: skip
    parser.add_argument(
        "--merge", nargs="+", default=None,
        help="results files of full runs with the same preset and other --seed: their mean and spread, train nothing",
    )  # fmt: skip
    args = parser.parse_args()
    args.parts = [part for part in PARTS if part in args.parts]  # as the record compares them: in one order, once
    check_timesteps_arg(parser, args.timesteps, args.unet_dir)
    if args.merge:
        return args
    if args.num_threads is None and (args.quick or args.preset == "cpu"):
        args.num_threads = 1  # small convolutions on a shared CPU run faster on one thread
    args.label_fractions = args.label_fractions or ([0.1] if args.quick else [0.01, 0.1])
    preset = PRESETS["quick" if args.quick else args.preset]
    overrides = {
        "image_size": args.image_size, "unet_preset": args.unet_preset, "train_steps": args.max_train_steps,
        "cnn_steps": args.cnn_steps, "cnn_epochs": args.cnn_epochs, "timesteps": tuple(args.timesteps) if args.timesteps else None,
        "workers": args.workers, "train_minutes": args.train_minutes,
    }  # fmt: skip
    args.budget = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    check_args(parser, args)
    return args


def check_args(parser, args) -> None:
    """Refuse what would fail later, before any image is read: a size the U-Net cannot take, missing folders."""
    check_unet_size(parser, args.budget.unet_preset, args.budget.image_size)
    if args.budget.image_size % args.budget.vit["patch_size"]:
        parser.error(f"--image_size: expected a multiple of the ViT patch size {args.budget.vit['patch_size']}")
    if args.budget.workers < 1:
        parser.error(f"--workers: expected at least 1, got {args.budget.workers}")
    capped_ddpm = args.budget.train_minutes is not None and "unet" in args.parts  # --train_minutes, or the preset's
    if capped_ddpm and (args.budget.train_minutes <= 0 or args.budget.workers > 1):
        parser.error(
            f"--train_minutes: expected a positive number with one worker (SimCLR waits for the DDPM's steps), got "
            f"{args.budget.train_minutes} with {args.budget.workers} workers"
        )
    if not all(0 < f < 1 for f in args.label_fractions):
        parser.error(f"--label_fractions: expected numbers strictly between 0 and 1, got {args.label_fractions}")
    args.data_label = dataset_name(args.data) if args.data else "NDSB plankton"  # the plots' name of the data
    # args.data stays as given: without it, the results keep the benchmark's own name (_common.results_path)
    args.data_path = Path(args.data) if args.data else data_path("ndsb2015_plankton", "train")
    args.shift_name = shift_name(args.shift_data)  # the shift's record keys and target names: flowcam_... by default
    args.shift_data = Path(args.shift_data) if args.shift_data else data_path("plankton_flowcam_demo", "images")
    if not (args.data_path.is_dir() or (args.data_path.suffix == ".npz" and args.data_path.is_file())):
        parser.error(
            f"--data: expected an image folder (class folders, or images/ with splits/) or a packed .npz, got {args.data_path}"
        )
    if not args.shift_data.is_dir():
        parser.error(
            f"--shift_data: expected an image folder (class folders, or images/ with splits/), got {args.shift_data}"
        )
    image_roots = lambda root: {root.resolve(), (root / "images").resolve()}  # noqa: E731 (`images/` + `splits/`)
    if image_roots(args.shift_data) & image_roots(args.data_path):
        parser.error(f"--shift_data: {args.shift_data} holds --data's images; the shift is measured on other images")
    check_checkpoint_options(parser, args)
    check_parts(parser, args)
    if args.unet_dir:  # here, not in the U-Net arm: a worker's failure comes only after the other parts' work
        try:
            check_unet_dir(args.unet_dir, preprocessing(args.budget), reading_flags=("--image_size",))
        except ValueError as error:
            parser.error(str(error))
    check_shift_class_sizes(parser, args.shift_data)


def check_parts(parser, args) -> None:
    """The U-Net's flags only with the part that trains or reads the U-Net (as unet_features_accuracy.py's)."""
    if "unet" in args.parts:
        return
    for flag, value in (("--keep_checkpoint", args.keep_checkpoint), ("--unet_dir", args.unet_dir),
                        ("--train_minutes", args.train_minutes), ("--timesteps", args.timesteps)):  # fmt: skip
        if value is not None:
            parser.error(f"{flag}: for the U-Net part, which --parts {' '.join(args.parts)} does not run; expected "
                         "with the unet part")  # fmt: skip


def shift_images_needed(shot_counts: Sequence[Optional[int]] = SHOTS, num_folds: int = SHIFT_FOLDS) -> int:
    """The fewest images a class of the shifted set needs for `few_shot_transfer`: one in each of its `num_folds`
    stratified folds, and the most shots of `shot_counts` in each fold's training part (the class less its fold,
    which holds up to ceil(n / num_folds) of its n images): 7 for 5 folds and 5 shots."""
    shots, needed = max((s for s in shot_counts if s), default=1), num_folds
    while needed - math.ceil(needed / num_folds) < shots:
        needed += 1
    return needed


def check_shift_class_sizes(parser, shift_data: Path) -> None:
    """Refuse, before any training, a `--shift_data` class with fewer images than `shift_images_needed` (QA: 3 or 5
    images a class failed in scikit-learn's folds or the few-shot draw after the whole run's training, and nothing
    was written)."""
    try:
        _, labels, names = list_class_folders(shift_data)
    except ValueError as error:
        parser.error(f"--shift_data: {error}")
    needed, counts = shift_images_needed(), np.bincount(labels, minlength=len(names))
    small = {names[c]: int(counts[c]) for c in np.flatnonzero(counts < needed)}
    if small:
        parser.error(
            f"--shift_data: {shift_data} has class(es) with too few images: {small}; expected at least {needed} images "
            f"of every class (one in each of the shift's {SHIFT_FOLDS} cross-validation folds and "
            f"{MOST_SHOTS} shots in each fold's training part): give more images of them, or leave "
            "those classes out"
        )


def shift_name(shift_data: Optional[str]) -> str:
    """The name of the shifted set in the record's keys and target names (`<name>_shift`,
    `<name>_unet_minus_cnn_...`): "flowcam" for the default FlowCam demo (and a copy of it named flowcam, as
    gpu_suite.sh carries), else `_common.dataset_name` of `--shift_data` (of its parent for a folder named images)."""
    default = _common.DATA_ROOT / "plankton_flowcam_demo" / "images"
    if shift_data is None or Path(shift_data).resolve() in (default.resolve(), default.parent.resolve()):
        return DEFAULT_SHIFT_NAME
    path = Path(shift_data).resolve()
    return dataset_name(str(path.parent if path.name == "images" else path))


DEFAULT_SHIFT_NAME = "flowcam"


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


def preprocessing(budget: Preset) -> ImagePreprocessing:
    """Grey, the background made white (FlowCam's field is grey, NDSB's already white), aspect ratio kept, padded with
    white."""
    return ImagePreprocessing(budget.image_size, 1, resize_mode="pad", pad_value=1.0, normalize_background=True)


def list_class_folders(root: Path, images_per_class: Optional[int] = None) -> Tuple[list, np.ndarray, list]:
    """The image files the library reads of the image folder `root` (`<root>/<class>/<image>`, or `images/` with
    `splits/*.txt`, its splits pooled: this run carves its own), class by class (at most `images_per_class` of each,
    evenly spaced), their labels and the class names; refused with the library's errors (an empty class folder, a
    nested folder, a split file naming a missing image)."""
    files, labels, names, _ = list_image_folder(root)  # the files training reads
    order = np.argsort(labels, kind="stable")  # split files list the classes mixed
    kept = order[evenly_spaced_per_class(labels[order], images_per_class)]
    return [files[i] for i in kept], labels[kept], names


def evenly_spaced_per_class(labels: np.ndarray, images_per_class: Optional[int]) -> np.ndarray:
    """The indices `list_class_folders` keeps of each class (labels sorted by class): at most `images_per_class`,
    evenly spaced; all without a limit."""
    if not images_per_class:
        return np.arange(len(labels))
    starts = np.searchsorted(labels, np.unique(labels))
    ends = np.append(starts[1:], len(labels))
    return np.concatenate(
        [np.arange(a, b)[:: max(1, (b - a) // images_per_class)][:images_per_class] for a, b in zip(starts, ends)]
    )


def list_packed(path: Path, images_per_class: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, list]:
    """The images of a `.npz` written by `gpu_carry_plankton.py pack` (uint8 `[N, 1, H, W]`, in `list_class_folders`'
    order), their labels and class names: the arrays the contract reads as it would their PNGs, without writing and
    decoding 30,000 files (packed at the run's size they pass unchanged; at another, the contract resizes them)."""
    packed = np.load(path, allow_pickle=False)
    images, labels = packed["images"], packed["labels"]
    kept = evenly_spaced_per_class(labels, images_per_class)
    return images[kept, None], labels[kept], [str(name) for name in packed["class_names"]]


def list_images(source: Path, images_per_class: Optional[int] = None) -> Tuple[object, np.ndarray, list]:
    """`list_class_folders` of a folder, `list_packed` of a `.npz`: the images (files or arrays), labels, names."""
    if source.suffix == ".npz":
        return list_packed(source, images_per_class)
    return list_class_folders(source, images_per_class)


BRIGHT_FIELD_ONLY = (
    "this benchmark is for bright-field grey plankton images (dark organisms on a light background, as NDSB's and "
    "FlowCam's): it always reads them grey, their background made white (normalize_background) and padded with white, "
    "and has no flag to read them otherwise; for dark-field images (light organisms on a dark background) run "
    "unet_features_accuracy.py --data with its reading flags (--num_channels 1 --resize_mode pad, without "
    "--normalize_background)"
)


def read_images(
    images, labels: np.ndarray, names: list, contract: ImagePreprocessing, source: str = "--data"
) -> LabeledImages:
    """Image files, or packed uint8 arrays, through the run's preprocessing contract; a dark-background image (which
    the contract's background normalisation refuses) is refused naming `source` and `BRIGHT_FIELD_ONLY`."""
    inputs = images if isinstance(images, np.ndarray) else [str(f) for f in images]
    try:
        read = contract(inputs)
    except ValueError as error:
        if not str(error).startswith("normalize_background:"):
            raise
        raise ValueError(f"{source}: a dark-background image: {error.args[0].split(': ', 1)[1].split('; expected')[0]}; "
                         f"{BRIGHT_FIELD_ONLY}") from None  # fmt: skip
    return LabeledImages(read, torch.from_numpy(labels), names, contract)


def check_shift_holds_no_data_image(args, shift: LabeledImages, shift_files: list, splits: Dict[str, LabeledImages]):
    """Refuse, before any training, a `--shift_data` holding images of `--data` (any split), by content as read
    (`image_fingerprint_variants` against `image_fingerprints`, the fingerprints a reused U-Net's training images are
    checked by): QA, a byte-identical copy of the shift set given as --data passed the path check, and the "shift"
    was measured on the models' own training images. (A --quick run compares the images it reads of --data.)"""
    from diffusion_classifiers.data.split_record import image_fingerprint_variants, image_fingerprints

    in_data = {f for split in splits.values() for f in image_fingerprints(split.images)}
    variants = image_fingerprint_variants(shift.images)
    seen = [i for i, fingerprints in enumerate(variants) if not in_data.isdisjoint(fingerprints)]
    if seen:
        examples = ", ".join(str(shift_files[i]) for i in seen[:3])
        raise ValueError(
            f"--shift_data {args.shift_data}: {len(seen)} of its {len(shift)} images are images of --data "
            f"{args.data_path} (by content, as read), e.g. {examples}; expected a "
            "shifted set of other images (the shift measures the features on images the models were not trained on): "
            "give --data and --shift_data that share no image"
        )


def load_splits(args) -> Tuple[Dict[str, LabeledImages], torch.Tensor, Dict[str, torch.Tensor]]:
    """The seeded stratified splits, the indices of the class-balanced test subset and the train rows of each label
    regime (`"all"` first). A class too small for the splits, or a regime selecting the same images as another, is
    refused before any image is decoded."""
    images, labels, names = list_images(args.data_path, args.budget.images_per_class)
    index = stratified_train_val_test_split(
        labels, args.val_fraction, args.test_fraction, seed=args.seed, min_per_class=2, class_names=names
    )
    train_labels = torch.from_numpy(labels[index["train"]])
    try:
        subsets = few_label_subsets(
            train_labels, sorted(args.label_fractions), min_per_class=1, seed=args.seed, min_per_class_flag=None
        )
    except ValueError as error:
        if not args.budget.images_per_class:
            raise
        fewest, most = int(torch.bincount(train_labels).min()), int(torch.bincount(train_labels).max())
        raise ValueError(  # QA: refused on 25-40 images a class without saying why there were so few
            f"{error}; --quick reads at most {args.budget.images_per_class} images of each class of --data, which "
            f"leaves {fewest if fewest == most else f'{fewest} to {most}'} train images a class here: run without "
            "--quick, or with one --label_fractions value"
        ) from None
    contract = preprocessing(args.budget)
    take = (lambda rows: images[rows]) if isinstance(images, np.ndarray) else (lambda rows: [images[i] for i in rows])
    source = f"--data {args.data_path}"
    splits = {name: read_images(take(index[name]), labels[index[name]], names, contract, source) for name in SPLITS}
    test_labels = splits["test"].labels
    rarest = int(torch.bincount(test_labels, minlength=len(names)).min())
    balanced = torch.from_numpy(few_label_indices(test_labels, n_per_class=rarest, seed=args.seed))
    return splits, balanced, subsets


# ------------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------------


class Scorer:
    """Test metrics of a method's predictions: long-tailed test (with macro-F1 over the tail classes) and the
    class-balanced subset."""

    def __init__(self, splits: Dict[str, LabeledImages], balanced: torch.Tensor):
        self.test, self.balanced = splits["test"], balanced
        train_counts = torch.bincount(splits["train"].labels, minlength=self.test.num_classes)
        self.tail = [self.test.class_names[c] for c in torch.nonzero(train_counts < TAIL_TRAIN_IMAGES).flatten().tolist()]

    def __call__(self, predictions: torch.Tensor) -> dict:
        y, names = self.test.labels, self.test.class_names
        natural = classification_metrics(y, predictions, num_classes=len(names), class_names=names)
        balanced = classification_metrics(y[self.balanced], predictions[self.balanced], num_classes=len(names))
        keys = ("accuracy", "macro_f1", "balanced_accuracy")
        return {
            "long_tailed": {
                **{k: natural[k] for k in keys},
                "tail_macro_f1": float(np.mean([natural["per_class"][c]["f1"] for c in self.tail])),
            },
            "balanced": {k: balanced[k] for k in keys},
        }


def macro_f1(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> float:
    return classification_metrics(labels, predictions, num_classes=num_classes)["macro_f1"]


# ------------------------------------------------------------------------------------------------------------------
# Linear probes on frozen features
# ------------------------------------------------------------------------------------------------------------------


def fit_probe(
    features: Dict[str, torch.Tensor], splits, rows: torch.Tensor, Cs, key=("features", 0), pool=None, class_weight=None
):
    """`fit_probe_grid` on one feature, `features["train"]` being that of the train images `rows` (their labels are
    used; `class_weight` as `fit_probe_grid`'s), its C chosen on val from `Cs`; returns the head and its val accuracy
    and macro-F1 with the C kept."""
    train, val = splits["train"], splits["val"]
    fit = fit_probe_grid(
        {key: features["train"]}, train.labels[rows], {key: features["val"]}, val.labels, num_classes=train.num_classes,
        class_names=train.class_names, pool=pool, C=Cs, class_weight=class_weight, progress_bar={"disable": True},
    )  # fmt: skip
    return fit.head, {**fit.metrics[key]["val"], "C": fit.C[key]}


def predict(head, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head(features.to(head.linear.weight.device)).argmax(1).cpu()


def probe(features: Dict[str, torch.Tensor], splits, rows: torch.Tensor, Cs, class_weight=None):
    """`fit_probe` on `features` (train, val, test): the test predictions and the val scores."""
    head, val_scores = fit_probe(features, splits, rows, Cs, class_weight=class_weight)
    return predict(head, features["test"]), val_scores


def choose_views(val_score) -> Tuple[Optional[str], dict]:
    """The `VIEW_CHOICES` entry with the best `val_score(views)` (ties: the image as it is) and every score."""
    scores = {views: val_score(views) for views in VIEW_CHOICES}
    best = max(VIEW_CHOICES, key=lambda views: (scores[views], views is None))
    return best, {views_label(views): score for views, score in scores.items()}


def views_label(views: Optional[str]) -> str:
    return views or "upright"


def fitted_probe(features_of, splits, subsets: dict, rows_regime: str, views: Optional[str], Cs, key, pool, fits: dict):
    """`fit_probe` on `features_of(name, images, views)` with the train labels of `rows_regime`, kept in `fits` by
    (regime, views, pool, key) so that no probe is fitted twice."""
    memo = (rows_regime, views, pool, key)
    if memo not in fits:
        rows = subsets[rows_regime]
        features = {
            "train": features_of(f"train/{rows_regime}", splits["train"].images[rows], views),
            "val": features_of("val", splits["val"].images, views),
        }
        fits[memo] = fit_probe(features, splits, rows, Cs, key, pool)
    return fits[memo]


def probe_choosing_views(
    features_of, splits, subsets: dict, regime: str, choice_regime: str, Cs, key, pool, fits: dict
) -> dict:
    """The probe of `regime` on `features_of(name, images, views)` (name `"train/<regime>"` for a regime's train
    images), with the views whose probe fitted on the labels of `choice_regime` has the best val accuracy (ties: val
    macro-F1): the test predictions, the views and the val scores. `fits` keeps every probe fitted on these features
    by (regime, views, pool, key): a regime choosing on its own labels, or on those another regime chose on, fits
    nothing twice."""

    def fitted(rows_regime: str, views: Optional[str]):
        return fitted_probe(features_of, splits, subsets, rows_regime, views, Cs, key, pool, fits)

    def val_score(views):
        metrics = fitted(choice_regime, views)[1]
        return round(metrics["accuracy"], 4), round(metrics["macro_f1"], 4)

    views, view_scores = choose_views(val_score)
    head, val_scores = fitted(regime, views)
    predictions = predict(head, features_of("test", splits["test"].images, views))
    return {"predictions": predictions, "views": views, "views_val_accuracy_macro_f1": view_scores, "val": val_scores}


# ------------------------------------------------------------------------------------------------------------------
# The U-Net features: grid, chosen feature, clustering
# ------------------------------------------------------------------------------------------------------------------


ALL_BLOCKS = "all_blocks"  # the block of a hypercolumn key: every block's pooled feature, concatenated in forward order


def grid_with_hypercolumns(grid: Dict[Tuple[str, str, int], torch.Tensor]) -> Dict[Tuple[str, str, int], torch.Tensor]:
    """The grid and, for each (pool, t) of several blocks, the `(pool, ALL_BLOCKS, t)` hypercolumn of its blocks."""
    out = dict(grid)
    for pool in dict.fromkeys(p for p, _, _ in grid):
        pairs = with_hypercolumns({(block, t): x for (p, block, t), x in grid.items() if p == pool})
        out.update({(pool, ALL_BLOCKS, t): x for (blocks, t), x in pairs.items() if isinstance(blocks, tuple)})
    return out


def cache_name(split: str) -> str:
    """The features cache's name of a split's images: the train split's are the `"all"` regime's rows."""
    return "train/all" if split == "train" else split


class UNetFeatures:
    """Features of the frozen U-Net, keyed `(pool, block, timestep)` (block `ALL_BLOCKS`: the hypercolumn), extracted
    once per split, key and views."""

    def __init__(self, unet, scheduler, budget: Preset, seed: int):
        self.extractor = DiffusionFeatureExtractor(unet, scheduler)
        self.budget, self.seed, self.cache = budget, seed, {}

    def grid(self, name: str, images: torch.Tensor) -> Dict[Tuple[str, str, int], torch.Tensor]:
        """Every block x timestep x pool of the preset, of split `name`."""
        out = {}
        for pool in self.budget.pools:
            features = self.extractor.extract(
                images, self.extractor.block_names, self.budget.timesteps, pool=pool, noise_seed=self.seed,
                batch_size=self.budget.batch_size, progress_bar={"desc": f"U-Net feature grid, {pool} ({name})"},
            )  # fmt: skip
            out.update({(pool, block, t): x for (block, t), x in features.items()})
        return out

    def of(self, name: str, images: torch.Tensor, key: Tuple[str, str, int], views: Optional[str] = None) -> torch.Tensor:
        """The `key` feature of `images` (split `name`) averaged over `views`, cached."""
        if (name, key, views) not in self.cache:
            pool, block, t = key
            blocks = self.extractor.block_names if block == ALL_BLOCKS else block
            features = self.extractor.extract(
                images, feature_blocks(blocks), [t], pool=pool, noise_seed=self.seed, batch_size=self.budget.batch_size,
                views=views, progress_bar={"desc": f"U-Net features {feature_name(key, views)} ({name})"},
            )  # fmt: skip
            self.cache[(name, key, views)] = hypercolumn(features, blocks, t)
        return self.cache[(name, key, views)]

    def at(self, key: Tuple[str, str, int]):
        """`of` at `key`: `(name, images, views) -> features`, as `probe_choosing_views` reads them."""
        return lambda name, images, views: self.of(name, images, key, views)


def hypercolumn_probe(
    unet_features: UNetFeatures, splits, subsets: dict, key: tuple, grid_regime: str, budget: Preset, scorer
) -> dict:
    """With all labels, the probe of every block's feature at `key`'s pooling and timestep, its views chosen on the
    grid subset's labels as the single feature's."""
    column_key = (key[0], ALL_BLOCKS, key[2])
    fit = probe_choosing_views(
        unet_features.at(column_key), splits, subsets, "all", grid_regime, budget.probe_C, column_key[1:],
        column_key[0], fits={},
    )
    return {
        **scorer(fit["predictions"]), "feature": feature_name(column_key, fit["views"]), "val": fit["val"],
        "views_val_accuracy_macro_f1": fit["views_val_accuracy_macro_f1"],
    }  # fmt: skip


def feature_name(key: tuple, views: Optional[str] = None) -> str:
    """`"2x2/down_blocks.1/25"`, with `"+dihedral"` when averaged over views."""
    return "/".join(map(str, key)) + (f"+{views}" if views else "")


def rank_features(grid: Dict[str, dict], splits, grid_rows: torch.Tensor, rows: torch.Tensor, Cs) -> Tuple[list, dict]:
    """Every (pool, block, t), best first by val accuracy (ties: val macro-F1) of probes fitted on the train labels of
    `rows` (a subset of `grid_rows`, whose features `grid["train"]` holds), each at its best C of `Cs` on val; returns
    them and the val accuracy grid."""
    position = torch.searchsorted(grid_rows, rows)
    if not torch.equal(grid_rows[position.clamp(max=len(grid_rows) - 1)], rows):
        raise ValueError("the label subset is not contained in the grid subset")
    train, val = splits["train"], splits["val"]
    scores, table = {}, {}
    for pool in dict.fromkeys(pool for pool, _, _ in grid["train"]):
        pairs = [(block, t) for p, block, t in grid["train"] if p == pool]
        fit = fit_probe_grid(
            {pair: grid["train"][(pool, *pair)][position] for pair in pairs}, train.labels[rows],
            {pair: grid["val"][(pool, *pair)] for pair in pairs}, val.labels, num_classes=train.num_classes,
            pool=pool, C=Cs, progress_bar={"disable": True},
        )  # fmt: skip
        for pair, metrics in fit.metrics.items():
            table[f"{pool}/{pair[0]}@{pair[1]}"] = round(metrics["val"]["accuracy"], 4)
            scores[(pool, *pair)] = (metrics["val"]["accuracy"], metrics["val"]["macro_f1"])
    return sorted(scores, key=lambda key: scores[key], reverse=True), table


def all_labels_feature(features: UNetFeatures, splits, subsets: dict, candidates: Sequence[tuple], Cs, fits: dict):
    """Of `candidates`, (pool, block, t) best first on the grid subset's labels, the one whose upright probe fitted on
    all train labels has the best val accuracy (ties: val macro-F1, then the grid's order); returns it and every
    candidate's val accuracy and macro-F1."""
    scores = {}
    for key in candidates:
        metrics = fitted_probe(features.at(key), splits, subsets, "all", None, Cs, key[1:], key[0], fits)[1]
        scores[key] = (round(metrics["accuracy"], 4), round(metrics["macro_f1"], 4))
    best = max(candidates, key=lambda key: scores[key])
    return best, {feature_name(key): score for key, score in scores.items()}


def clustering(features: UNetFeatures, grid: dict, splits, key: tuple, views: Optional[str], seed: int) -> dict:
    """k-means on the test features: K = the number of classes on the label-chosen feature and views (standardised),
    and the feature, normalisation and K chosen without labels on the grid's (upright) train and val images together
    (no label read), by the rule of the U-Net study (`select_clustering_without_labels`: the most stable (feature,
    normalisation), then K by silhouette)."""
    test, num_classes = splits["test"], splits["test"].num_classes
    unlabeled = {pair: torch.cat([grid["train"][pair], grid["val"][pair]]) for pair in grid["train"]}
    num_images = len(next(iter(unlabeled.values())))
    candidates = [k for k in (num_classes // 4, num_classes // 2, num_classes, 2 * num_classes) if 2 <= k < num_images]
    label_free = select_clustering_without_labels(
        unlabeled, candidates, num_classes, seed=seed, n_init=1, normalizations=NORMALIZATIONS
    )
    chosen = {
        "label_chosen_feature": (key, views, num_classes, "standardize"),
        "label_free_choice": (tuple(label_free["pair"]), None, label_free["num_clusters"], label_free["normalization"]),
    }
    result = {}
    for name, (key_, views_, k, normalization) in chosen.items():
        metrics = kmeans_evaluate(
            features.of("test", test.images, key_, views_), test.labels, num_classes, seed=seed, num_clusters=k,
            normalization=normalization,
        )  # fmt: skip
        result[name] = {
            "feature": feature_name(key_, views_), "num_clusters": k, "normalization": normalization,
            **{m: metrics[m] for m in ("nmi", "ari", "accuracy", "purity")},
        }  # fmt: skip
    result["label_free_selection"] = label_free
    return result


# ------------------------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CNNRun:
    """The settings of one CNN training besides its images."""

    num_classes: int
    steps: int
    batch_size: int
    learning_rate: float
    seed: int
    widths: Tuple[int, ...]

    @classmethod
    def of_regime(cls, args, data: "RunData", regime: str) -> "CNNRun":
        budget, train = args.budget, data.splits["train"]
        steps = budget.cnn_steps_for(len(data.subsets[regime]))
        return cls(train.num_classes, steps, budget.train_batch_size, args.cnn_learning_rate, args.seed, tuple(budget.cnn_widths))

    def model(self, work_dir: str, step: int) -> SupervisedCNN:
        """The CNN saved at `step` of the training in `work_dir`."""
        model = SupervisedCNN(1, self.num_classes, self.widths)
        model.load_state_dict(checkpoint_weights(work_dir, step))
        return model.eval()


def train_cnn(args, data: "RunData", regime: str, sampling: str, work_dir: str) -> dict:
    """A `SupervisedCNN` on the train images of `regime` for its `CNNRun.steps`, its checkpoints in `work_dir`;
    `sampling` "balanced" draws its `steps x batch` training images with the library's class-balanced sampler (with
    replacement), "natural" keeps the natural frequencies. Returns the training's info, the val macro-F1 of its kept
    checkpoint and its wall seconds."""
    start, run, rows = time.perf_counter(), CNNRun.of_regime(args, data, regime), data.subsets[regime]
    train, val = data.splits["train"], data.splits["val"]
    images, labels = train.images[rows], train.labels[rows]
    if sampling == "balanced":
        sampler = class_balanced_sampler(labels, run.num_classes, seed=run.seed)
        draws, epoch = [], 0
        while sum(map(len, draws)) < run.steps * run.batch_size:
            sampler.set_epoch(epoch)
            draws.append(torch.tensor(list(sampler)))
            epoch += 1
        order = torch.cat(draws)
        images, labels = images[order], labels[order]
    model, info = train_supervised_cnn(
        images, labels, val.images, val.labels, run.num_classes, work_dir, max_train_steps=run.steps,
        train_batch_size=run.batch_size, learning_rate=run.learning_rate, seed=run.seed, widths=run.widths,
    )  # fmt: skip
    val_predictions = predict_proba(model, val.images).argmax(1)
    return {
        "val_macro_f1": macro_f1(val.labels, val_predictions, run.num_classes), **info,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def cnn_regime(args, data: "RunData", regime: str, runs: Dict[str, dict], work_dir: str, device):
    """Of the regime's `runs` by sampling (trained by `train_cnn` in `<work_dir>/<sampling>`), the better val macro-F1
    is kept (ties: natural), then the views its probabilities are averaged over, by val macro-F1 too. Returns the
    model, its test predictions and the choices."""
    val, run = data.splits["val"], CNNRun.of_regime(args, data, regime)
    sampling = max(runs, key=lambda s: (runs[s]["val_macro_f1"], s == "natural"))
    model = run.model(f"{work_dir}/{sampling}", runs[sampling]["selected_step"]).to(device)
    views, view_scores = choose_views(
        lambda v: round(macro_f1(val.labels, cnn_probabilities(model, val.images, v).argmax(1), val.num_classes), 4)
    )
    predictions = cnn_probabilities(model, data.splits["test"].images, views).argmax(1)
    kept = ("val_macro_f1", "selected_step", "val_accuracy_by_step")
    return model, predictions, {
        "sampling": sampling, "steps": run.steps, "runs": {s: {k: r[k] for k in kept} for s, r in runs.items()},
        "views": views, "views_val_macro_f1": view_scores, "num_parameters": runs[sampling]["num_parameters"],
    }  # fmt: skip


def mean_over_views(function, images: torch.Tensor, views: Optional[str], batch_size: int) -> torch.Tensor:
    """`function(batch)` averaged over the `views` of each batch of `images`, concatenated (float32, CPU)."""

    def averaged(batch):
        outputs = [function(view).float().cpu() for view in image_views(batch, views)]
        return sum(outputs) / len(outputs)

    return torch.cat([averaged(batch) for batch in images.split(batch_size)])


def cnn_probabilities(model, images: torch.Tensor, views: Optional[str] = None, batch_size: int = 256) -> torch.Tensor:
    return mean_over_views(lambda x: predict_proba(model, x, batch_size), images, views, batch_size)


@torch.no_grad()
def cnn_features(model, images: torch.Tensor, views: Optional[str] = None, batch_size: int = 256) -> torch.Tensor:
    """The CNN's penultimate representation (global average of its last stage), frozen, averaged over `views`."""
    device = next(model.parameters()).device
    return mean_over_views(lambda x: model.features(x.to(device)).mean(dim=(2, 3)), images, views, batch_size)


def train_simclr(args, images: torch.Tensor, work_dir: str):
    budget = args.budget
    torch.manual_seed(args.seed)
    encoder = build_vit_encoder(image_size=budget.image_size, num_channels=1, **budget.vit)
    training = training_arguments(
        work_dir, budget.train_steps, args.simclr_learning_rate, min(100, budget.train_steps // 10), args.seed,
        train_batch_size=budget.train_batch_size,
    )  # fmt: skip
    training = dataclasses.replace(training, mixed_precision=budget.mixed_precision)
    return train_contrastive_encoder(training, images, encoder, method="simclr")


class SimCLRFeatures:
    """The SimCLR encoder's representation of a split, averaged over views, computed once per split and views."""

    def __init__(self, encoder, batch_size: int):
        self.encoder, self.batch_size, self.cache = encoder, batch_size, {}

    @torch.no_grad()
    def of(self, name: str, images: torch.Tensor, views: Optional[str] = None) -> torch.Tensor:
        if (name, views) not in self.cache:
            encode = lambda x: encode_representation(self.encoder, x)  # noqa: E731
            self.cache[(name, views)] = mean_over_views(encode, images, views, self.batch_size)
        return self.cache[(name, views)]


def train_unet(args, splits: dict, work_dir: str):
    """The DDPM U-Net (EMA) trained on the train images of `splits` without labels (for at most `train_minutes`),
    or the one in `--unet_dir` (refused unless trained on images read as these are, and on none of the val and test
    images); kept in `--keep_checkpoint` with their preprocessing contract and fingerprints. Returns the U-Net, its
    scheduler, the final training loss and the optimizer steps trained (both None when loaded)."""
    budget, trained_steps = args.budget, {}

    def train():
        training = training_arguments(
            work_dir, budget.train_steps, args.learning_rate, budget.train_steps // 20, args.seed,
            train_batch_size=budget.train_batch_size, use_ema=True,
        )  # fmt: skip
        training = dataclasses.replace(
            training, mixed_precision=budget.mixed_precision, num_sample_images=0, max_train_minutes=budget.train_minutes
        )
        unet, scheduler, summary = train_ddpm_unet(training, splits["train"].images, preset=budget.unet_preset)
        trained_steps["ddpm"] = summary.global_step
        return unet, scheduler, summary

    return (*trained_or_loaded_ddpm(args, splits, train, CARVING_FLAGS), trained_steps.get("ddpm"))


# ------------------------------------------------------------------------------------------------------------------
# Shift: few-shot on FlowCam
# ------------------------------------------------------------------------------------------------------------------


def few_shot_transfer(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_episodes: int,
    seed: int,
    shot_counts: Sequence[Optional[int]] = SHOTS,
    protocols: Sequence[str] = FEW_SHOT_PROTOCOLS,
    num_folds: int = SHIFT_FOLDS,
) -> dict:
    """Nearest prototype and a linear probe with k = 1, 5, all labelled images per class of each training fold
    (stratified cross-validation, every image predicted once per episode); accuracy and macro-F1 over the pooled
    predictions, mean and std over episodes."""
    from sklearn.model_selection import StratifiedKFold

    y, num_classes = labels.numpy(), int(labels.max()) + 1
    folds = list(StratifiedKFold(num_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    result = {}
    for shots in shot_counts:
        for protocol in protocols:
            episodes = []
            for episode in range(1 if shots is None else num_episodes):
                predictions = np.empty(len(y), dtype=np.int64)
                for train_index, test_index in folds:
                    draw = derived_seed(seed, episode)
                    chosen = train_index[few_shot_indices(y[train_index], shots, draw, num_classes)]
                    predictions[test_index] = classify(protocol, features[chosen], labels[chosen], features[test_index], num_classes)
                metrics = classification_metrics(y, predictions, num_classes=num_classes)
                episodes.append((metrics["accuracy"], metrics["macro_f1"]))
            accuracy, f1 = np.array(episodes).T
            result[f"{protocol}_{shots or 'all'}"] = {
                "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
                "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std()), "num_episodes": len(episodes),
            }  # fmt: skip
    result["mean_accuracy"] = float(np.mean([v["accuracy_mean"] for v in result.values()]))
    return result


def shift_val_scores(val_features: Dict, val_labels: torch.Tensor, num_episodes: int, seed: int) -> dict:
    """How well each of `val_features` (any keys) classifies NDSB val few-shot (nearest prototype, k = 1 and all,
    cross-validated over the val classes with at least 2 images), the protocol the shift is scored by: a feature that
    suits a probe on thousands of labels (a 2x2 spatial layout) need not suit prototypes from a few images. Empty
    when fewer than 2 val classes have 2 images (quick runs)."""
    counts = torch.bincount(val_labels)
    kept = counts[val_labels] >= 2
    if int((counts >= 2).sum()) < 2:
        return {}
    labels = torch.unique(val_labels[kept], return_inverse=True)[1]
    num_folds = min(5, int(counts.max()))
    with warnings.catch_warnings():  # StratifiedKFold: classes with 2 val images cannot be in all 5 folds
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return {
            key: round(few_shot_transfer(
                x[kept], labels, num_episodes, seed, SHIFT_CHOICE_SHOTS, ("prototype",), num_folds
            )["mean_accuracy"], 4)
            for key, x in val_features.items()
        }  # fmt: skip


def choose_shift_feature(val_grid: Dict[tuple, torch.Tensor], val_labels: torch.Tensor, num_episodes: int, seed: int):
    """The (pool, block, t) of the grid with the best `shift_val_scores`, and the scores; `(None, {})` when they
    cannot be computed."""
    scores = shift_val_scores(val_grid, val_labels, num_episodes, seed)
    if not scores:
        return None, {}
    return max(scores, key=scores.get), {feature_name(key): v for key, v in scores.items()}


def choose_shift_views(val_features_of, val_labels: torch.Tensor, num_episodes: int, seed: int):
    """The views whose val features `val_features_of(views)` have the best `shift_val_scores` (upright when they
    cannot be computed), and the scores."""
    scores = shift_val_scores({v: val_features_of(v) for v in VIEW_CHOICES}, val_labels, num_episodes, seed)
    return choose_views(scores.__getitem__) if scores else (None, {})


def classify(protocol: str, train_x, train_y, test_x, num_classes: int) -> np.ndarray:
    if protocol == "prototype":
        return prototype_classify(train_x, train_y, test_x, num_classes, standardize=True)[0]
    key = ("features", 0)
    fit = fit_probe_grid(  # on the CPU: a few shots of 6 classes, too small to gain from a GPU's kernel launches
        {key: train_x}, train_y, {key: train_x}, train_y, num_classes=num_classes, pool=None, progress_bar={"disable": True},
        device="cpu",
    )  # fmt: skip
    with torch.no_grad():
        return fit.head(test_x.to(fit.head.linear.weight.device)).argmax(1).cpu().numpy()


# ------------------------------------------------------------------------------------------------------------------
# The run's parts: each method's arm and each CNN training, side by side in worker processes when asked
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """What every part of the run reads: the NDSB splits, the rows of their class-balanced test subset, the train
    rows of each label regime (`"all"` first) and the shifted (FlowCam) images."""

    splits: Dict[str, LabeledImages]
    balanced: torch.Tensor
    subsets: Dict[str, torch.Tensor]
    shift: LabeledImages

    @property
    def grid_regime(self) -> str:
        """The largest few-label regime: the probe grid is fitted on its labels."""
        return max((r for r in self.subsets if r != "all"), key=lambda r: float(r.rstrip("%")))

    def choice_regime(self, regime: str) -> str:
        """The labels a regime's choices (feature, views) are made with: its own, or the grid's for `"all"`."""
        return regime if regime != "all" else self.grid_regime

    def save(self, path: str) -> None:
        """To a safetensors file (what a worker process reads)."""
        named = {**self.splits, "shift": self.shift}
        tensors = {"balanced": self.balanced, **{f"rows/{r}": rows for r, rows in self.subsets.items()}}
        for name, images in named.items():
            tensors.update({f"{name}/images": images.images, f"{name}/labels": images.labels})
        class_names = {name: images.class_names for name, images in named.items()}
        metadata = {"class_names": json.dumps(class_names), "regimes": json.dumps(list(self.subsets))}
        save_file({key: x.clone() for key, x in tensors.items()}, path, metadata=metadata)

    @classmethod
    def load(cls, path: str, contract: ImagePreprocessing) -> "RunData":
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata()
        tensors, class_names = load_file(path), json.loads(metadata["class_names"])
        named = {
            name: LabeledImages(tensors[f"{name}/images"], tensors[f"{name}/labels"], names, contract)
            for name, names in class_names.items()
        }
        shift = named.pop("shift")
        subsets = {r: tensors[f"rows/{r}"] for r in json.loads(metadata["regimes"])}
        return cls(named, tensors["balanced"], subsets, shift)


def use_one_thread() -> None:
    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # numpy/scipy BLAS and OpenMP (scikit-learn's k-means)


def run_in_worker(part, data_file: str, args, *part_args):
    """`part(args, data, *part_args)` in a worker process, the run's data read from `data_file`."""
    return part(args, RunData.load(data_file, preprocessing(args.budget)), *part_args)


class PartialResults:
    """Each part's result as it finishes, in `<output>.partial.json` (removed when the run's results are written): a
    run stopped by a time cap (the GPU suite's) keeps the parts it finished. Nothing is written for quick runs."""

    def __init__(self, output: Optional[Path]):
        self.path = output.with_suffix(".partial.json") if output else None
        self.finished, self.lock = {}, threading.Lock()

    def track(self, name: str, future: Future) -> Future:
        if self.path is not None:
            future.add_done_callback(lambda done: self._save(name, done))
        return future

    def _save(self, name: str, future: Future) -> None:
        if future.exception() is not None:
            return
        with self.lock:
            self.finished[name] = future.result()
            self.path.write_text(json.dumps({"partial": True, "parts": self.finished}, indent=1, default=str))

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@contextmanager
def part_runner(num_workers: int, data: RunData, work_dir: str):
    """`submit(part, args, *part_args)`, a future of `part(args, data, *part_args)`: run at once in this process
    (`num_workers` 1), or queued to `num_workers` processes of one thread each, which take the parts in submission
    order. On 2 CPU cores two of this run's parts side by side on one thread each ran 1.2-1.4x faster than one after
    the other on two threads (the CNN and the DDPM training, measured alone, 2026-12-03)."""
    if num_workers <= 1:

        def submit(part, args, *part_args):
            future = Future()
            future.set_result(part(args, data, *part_args))
            return future

        yield submit
        return
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    data_file = f"{work_dir}/run_data.safetensors"
    data.save(data_file)
    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=use_one_thread) as pool:
        yield lambda part, args, *part_args: pool.submit(run_in_worker, part, data_file, args, *part_args)


def as_many_steps_as_ddpm(args, unet_arm_future: Optional[Future]):
    """The run's options for SimCLR, which trains as many optimizer steps as the DDPM: the preset's, or under a DDPM
    time cap (`train_minutes`, one worker: the U-Net arm has finished) the steps the DDPM reached; without the U-Net
    arm (`unet_arm_future` None), the preset's."""
    if args.budget.train_minutes is None or unet_arm_future is None:
        return args
    steps = ddpm_steps(unet_arm_future.result(), args.budget)
    return argparse.Namespace(**{**vars(args), "budget": dataclasses.replace(args.budget, train_steps=steps)})


# what the record reads of a U-Net arm in a run without one (`--parts`)
NO_UNET_ARM = {"ddpm_final_loss": None, "ddpm_steps": None, "loaded_unet": None, "flowcam_shift_unet_feature": None}


def ddpm_steps(unet_arm_result: dict, budget: Preset) -> int:
    """The DDPM's optimizer steps: those it trained, or for a U-Net read from `--unet_dir` the preset's."""
    return unet_arm_result["ddpm_steps"] or budget.train_steps


def unet_arm(args, data: RunData, work_dir: str) -> dict:
    """The method: the DDPM U-Net trained without labels, its feature grid, each regime's probe (its pair chosen on
    its own labels within the grid subset; 'all' among the grid subset's best few, refitted on all labels), the
    class-weighted and hypercolumn probes with all labels, k-means and the FlowCam shift."""
    budget, splits, subsets, walls = args.budget, data.splits, data.subsets, {}
    val, scorer, grid_regime = splits["val"], Scorer(splits, data.balanced), data.grid_regime
    with timed(walls, "ddpm_training"):
        unet, scheduler, final_loss, steps_trained = train_unet(args, splits, work_dir)
    features = UNetFeatures(unet.to(args.device), scheduler, budget, args.seed)
    with timed(walls, "grid_extraction"):
        grid_images = splits["train"].images[subsets[grid_regime]]
        grid = {"train": features.grid("train", grid_images), "val": features.grid("val", val.images)}
    regimes, feature_choices, fits = {}, {}, {}  # 'all' reuses the grid subset's choices and fits
    for regime in subsets:
        choice_regime = data.choice_regime(regime)
        with timed(walls, f"unet_probe_{regime}"):
            if choice_regime not in feature_choices:
                feature_choices[choice_regime] = rank_features(
                    grid, splits, subsets[grid_regime], subsets[choice_regime], budget.probe_C
                )
            ranking, val_grid = feature_choices[choice_regime]
            key, regimes[regime] = ranking[0], {}
            if regime == "all":
                key, candidates = all_labels_feature(
                    features, splits, subsets, ranking[: budget.all_labels_candidates], budget.probe_C, fits
                )
                regimes[regime]["unet_all_labels_candidates_val_accuracy_macro_f1"] = candidates
            fit = probe_choosing_views(
                features.at(key), splits, subsets, regime, choice_regime, budget.probe_C, key[1:], key[0], fits
            )
            regimes[regime].update(
                unet_feature=feature_name(key, fit["views"]), unet_val=fit["val"], unet_val_accuracy_grid=val_grid,
                unet_views_val_accuracy_macro_f1=fit["views_val_accuracy_macro_f1"], unet_probe=scorer(fit["predictions"]),
            )  # fmt: skip
        if regime == "all":
            all_labels_choice = (key, fit["views"])
    key, views = all_labels_choice
    with timed(walls, "unet_all_labels_extra_probes"):
        all_features = {n: features.of(cache_name(n), s.images, key, views) for n, s in splits.items()}
        predictions, weighted_val = probe(all_features, splits, subsets["all"], budget.probe_C, class_weight="balanced")
        regimes["all"]["unet_class_weighted_probe"] = {**scorer(predictions), "val": weighted_val}
        if budget.hypercolumn_probe:
            regimes["all"]["unet_hypercolumn_probe"] = hypercolumn_probe(features, splits, subsets, key, grid_regime, budget, scorer)
    with timed(walls, "unet_kmeans"):
        kmeans = clustering(features, grid, splits, key, views, args.seed)
    with timed(walls, f"unet_{args.shift_name}_shift"):
        shift_key, shift_choice = choose_shift_feature(grid_with_hypercolumns(grid["val"]), val.labels, budget.num_episodes, args.seed)
        shift_key = shift_key or key
        shift_views = choose_shift_views(lambda v: features.of("val", val.images, shift_key, v), val.labels, budget.num_episodes, args.seed)
        shift_features = {
            "unet": features.of("shift", data.shift.images, shift_key, shift_views[0]),
            "unet_probe_chosen_feature": features.of("shift", data.shift.images, key, views),
        }
        shift = {m: few_shot_transfer(x, data.shift.labels, budget.num_episodes, args.seed) for m, x in shift_features.items()}
    return {
        "regimes": regimes, "kmeans_test": kmeans, "flowcam_shift": shift, "flowcam_shift_views": {"unet": shift_views},
        "flowcam_shift_unet_feature": {
            "chosen": feature_name(shift_key, shift_views[0]), "probe_chosen": feature_name(key, views),
            "rule": "the grid feature or hypercolumn with the best val few-shot accuracy (nearest prototype, k = 1 and "
            "all, cross-validated over the val classes with at least 2 images), the protocol the shift is scored by, "
            "then its views by the same score (each baseline's views too); no shift label is read; the probe's "
            "choice when fewer than 2 val classes have 2 images",
            "val_prototype_accuracy": shift_choice,
        },
        "ddpm_final_loss": final_loss, "ddpm_steps": steps_trained, "parameters": {"unet_total": count_parameters(unet), "unet_encoder": encoder_parameters(unet)},
        "loaded_unet": loaded_unet_facts(args.unet_dir, unet, RUN_UNET_PRESETS) if args.unet_dir else None,
        "wall_seconds": walls,
    }  # fmt: skip


def simclr_arm(args, data: RunData, work_dir: str) -> dict:
    """The SimCLR ViT trained on the same unlabeled images for as many steps, probed as the U-Net features are
    (views chosen the same way, 'all' on the grid subset's labels), its class-weighted probe, k-means with K = the
    number of classes, and the FlowCam shift."""
    budget, splits, subsets, walls = args.budget, data.splits, data.subsets, {}
    val, test, scorer = splits["val"], splits["test"], Scorer(splits, data.balanced)
    with timed(walls, "simclr_training"):
        features = SimCLRFeatures(train_simclr(args, splits["train"].images, work_dir).to(args.device), budget.batch_size)
    with timed(walls, "simclr_encoding"):
        for name, split in splits.items():
            features.of(cache_name(name), split.images)
    regimes, fits = {}, {}
    for regime in subsets:
        with timed(walls, f"simclr_probe_{regime}"):
            choice_regime = data.choice_regime(regime)
            fit = probe_choosing_views(
                features.of, splits, subsets, regime, choice_regime, budget.probe_C, ("features", 0), None, fits
            )
            regimes[regime] = {"simclr_probe": {
                **scorer(fit["predictions"]), "views": fit["views"], "val": fit["val"],
                "views_val_accuracy_macro_f1": fit["views_val_accuracy_macro_f1"],
            }}  # fmt: skip
    views = regimes["all"]["simclr_probe"]["views"]
    with timed(walls, "simclr_class_weighted_probe"):
        all_features = {n: features.of(cache_name(n), s.images, views) for n, s in splits.items()}
        predictions, weighted_val = probe(all_features, splits, subsets["all"], budget.probe_C, class_weight="balanced")
        regimes["all"]["simclr_class_weighted_probe"] = {**scorer(predictions), "val": weighted_val}
    with timed(walls, "simclr_kmeans"):
        kmeans = kmeans_evaluate(features.of("test", test.images), test.labels, test.num_classes, seed=args.seed)
    with timed(walls, f"simclr_{args.shift_name}_shift"):
        shift_views = choose_shift_views(lambda v: features.of("val", val.images, v), val.labels, budget.num_episodes, args.seed)
        shift_features = features.of("shift", data.shift.images, shift_views[0])
        shift = {"simclr": few_shot_transfer(shift_features, data.shift.labels, budget.num_episodes, args.seed)}
    return {
        "regimes": regimes, "flowcam_shift": shift, "flowcam_shift_views": {"simclr": shift_views},
        "kmeans_test": {"simclr_label_free_k_equals_classes": {m: kmeans[m] for m in ("nmi", "ari", "accuracy", "purity")}},
        "parameters": {"simclr_vit": count_parameters(features.encoder)}, "wall_seconds": walls,
    }  # fmt: skip


def cnn_shift_arm(args, data: RunData, cnn, walls: dict) -> dict:
    """The all-labels CNN's FlowCam shift (its penultimate features, views chosen on val) and size, as an arm's."""
    budget, val, shift = args.budget, data.splits["val"], data.shift
    with timed(walls, f"cnn_{args.shift_name}_shift"):
        episodes = budget.num_episodes
        views = choose_shift_views(lambda v: cnn_features(cnn, val.images, v), val.labels, episodes, args.seed)
        result = few_shot_transfer(cnn_features(cnn, shift.images, views[0]), shift.labels, episodes, args.seed)
    parameters = {"cnn": count_parameters(cnn)}
    return {"flowcam_shift": {"cnn": result}, "flowcam_shift_views": {"cnn": views}, "parameters": parameters}


def raw_pixel_arm(args, data: RunData) -> dict:
    """The floor: a linear probe on raw pixels with all labels (upright), and the pixels' FlowCam shift."""
    budget, splits, walls = args.budget, data.splits, {}
    with timed(walls, "raw_pixel_probe"):
        pixels = {name: split.images.flatten(1) for name, split in splits.items()}
        predictions, pixel_val = probe(pixels, splits, data.subsets["all"], budget.raw_pixel_Cs)
        probe_scores = {**Scorer(splits, data.balanced)(predictions), "val": pixel_val}
    with timed(walls, f"raw_pixel_{args.shift_name}_shift"):
        shift = few_shot_transfer(data.shift.images.flatten(1), data.shift.labels, budget.num_episodes, args.seed)
    return {"regimes": {"all": {"raw_pixel_probe": probe_scores}}, "flowcam_shift": {"raw_pixels": shift}, "wall_seconds": walls}


# ------------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------------


def targets(
    regimes: dict, shift: dict, total_seconds: float, budget_seconds: float, shift_name: str = DEFAULT_SHIFT_NAME
) -> dict:
    """The issue's targets on the long-tailed test: with all labels the probe's macro-F1 >= the CNN's; with 10% (else
    the fewest labels run: QA, `--label_fractions 0.3` had no few-label target) >= the CNN's + 5 points; the probe
    beats SimCLR on accuracy and macro-F1 at every fraction; on FlowCam the U-Net
    features' few-shot accuracy (mean over protocols and k) >= the CNN's and SimCLR's (named after the shifted set,
    `shift_name`); and the wall-clock budget. A comparison is set where both of its methods ran (`--parts`)."""

    def lt(regime, method, metric):
        return 100 * regimes[regime][method]["long_tailed"][metric]

    def probe_minus(rival, regime, metric, target, name):
        if {"unet_probe", rival} <= set(regimes[regime]):
            out[name] = target_entry(lt(regime, "unet_probe", metric) - lt(regime, rival, metric), target)

    out = {}
    probe_minus("cnn", "all", "macro_f1", 0.0, "all_labels_probe_minus_cnn_macro_f1_points")
    fractions = [regime for regime in regimes if regime != "all"]
    if fractions:
        few = "10%" if "10%" in fractions else min(fractions, key=lambda regime: float(regime.rstrip("%")))
        probe_minus("cnn", few, "macro_f1", 5.0, f"{few}_labels_probe_minus_cnn_macro_f1_points")
    for regime in regimes:
        for metric in ("accuracy", "macro_f1"):
            probe_minus("simclr_probe", regime, metric, 0.0, f"{regime}_labels_probe_minus_simclr_{metric}_points")
    for rival in ("cnn", "simclr"):
        if {"unet", rival} <= set(shift):
            out[f"{shift_name}_unet_minus_{rival}_few_shot_accuracy_points"] = target_entry(
                100 * (shift["unet"]["mean_accuracy"] - shift[rival]["mean_accuracy"]), 0.0
            )
    out["wall_seconds_total"] = target_entry(total_seconds, budget_seconds, higher_is_better=False)
    return out  # fmt: skip


def worker_parts(parts: Sequence[str]) -> str:
    """The parts of a run that its worker processes take, as the record names them."""
    names = {"unet": "the U-Net arm", "simclr": "the SimCLR arm", "cnn": "each CNN training",
             "raw_pixels": "the raw-pixel probe"}  # fmt: skip
    named = [names[part] for part in ("unet", "simclr", "cnn", "raw_pixels") if part in parts]
    return ", ".join(named[:-1]) + (" and " if len(named) > 1 else "") + named[-1]


def unlabeled_training(args, steps: int, num_train: int, num_grid: int, grid_regime: str) -> str:
    """The record's sentence on what trained on the unlabeled images, for how long, and on the probe grid's size."""
    budget, loaded = args.budget, "unet" in args.parts and args.unet_dir
    trainers = [name for part, name in (("unet", "the DDPM"), ("simclr", "SimCLR")) if part in args.parts]
    trainers = [name for name in trainers if not (loaded and name == "the DDPM")]
    capped = "the DDPM" in trainers and budget.train_minutes
    capped = f", the DDPM capped at {budget.train_minutes:g} min" if capped else ""
    sentence = (
        f"{' and '.join(trainers)} train{'s' if len(trainers) == 1 else ''} on all {num_train} train images for "
        f"{steps} steps (about {steps * budget.train_batch_size / num_train:.1f} epochs{capped})"
    ) if trainers else "no model trains on the unlabeled images"
    if loaded:
        sentence += " (the DDPM loaded from --unet_dir)"
    elif not trainers:
        sentence += f" (--parts {' '.join(args.parts)})"
    if "unet" in args.parts:
        sentence += (f"; the probe grid is fitted on {num_grid} train images ({grid_regime}) x {len(budget.timesteps)} "
                     f"timesteps x {len(budget.pools)} poolings")  # fmt: skip
    return sentence


def label_efficiency_plot(args, output: Path, regimes: dict, test: LabeledImages) -> Optional[Path]:
    """The label-efficiency PNG of the methods run, named after its results file (seeds never overwrite); None
    without a method scored at every regime (the raw-pixel probe alone)."""
    curves = label_efficiency_curves(regimes, test.num_classes)
    if not curves:
        return None
    plot = _common.figure_dir(args, output) / f"{output.stem}_label_efficiency.png"
    regime_names = [regime for regime in regimes if regime != "all"] + ["100%"]
    title = (f"{args.data_label}, {test.num_classes} classes, {'' if args.quick else 'long-tailed '}test "
             f"({len(test)} images): mean labelled train images per class ({', '.join(regime_names)} of the "
             "labels)")  # fmt: skip
    plot_label_efficiency(curves, str(plot), title=figure_title(title, args.quick))
    return plot


def loaded_unet_budget(loaded: Optional[dict]) -> dict:
    """For a U-Net read from `--unet_dir` (`loaded`: its `_common.loaded_unet_facts`), the budget entries that describe
    it in place of this run's DDPM flags (QA: the record gave the run's U-Net preset, learning rate and time cap for a
    model trained otherwise); nothing for a U-Net trained here. The steps stay: SimCLR trains them."""
    if loaded is None:
        return {}
    return {
        "unet_preset": f"loaded (nearest preset by size: {loaded['nearest_preset']})", "ddpm_learning_rate": None,
        "train_minutes": None, **{k: v for k, v in loaded.items() if k != "nearest_preset"},
    }  # fmt: skip


def label_efficiency_curves(regimes: dict, num_classes: int) -> dict:
    """`plot_label_efficiency`'s curves of the methods run (`--parts`) at every label regime: none for a run of the
    raw-pixel probe alone (all labels only)."""
    methods = {"U-Net features + linear probe": "unet_probe", "supervised CNN": "cnn", "SimCLR ViT + linear probe": "simclr_probe"}
    return {
        label: {
            regime["num_train_labels"] / num_classes: {
                m: regime[key]["long_tailed"][m] for m in ("accuracy", "macro_f1")
            }
            for regime in regimes.values()
        }
        for label, key in methods.items() if key in regimes["all"]
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# Several seeds
# ------------------------------------------------------------------------------------------------------------------

# What differs between runs of one configuration, so `--merge` does not compare it.
RUN_SPECIFIC_BUDGET = (
    "ddpm_final_loss", "ddpm_steps_trained", "unet_loaded_from", "unet_kept_in", "loaded_training_summary"
)


def comparable_budget(record: dict) -> dict:
    return {k: v for k, v in record["figures"]["budget"].items() if k not in RUN_SPECIFIC_BUDGET}


def methods_scored(regime: dict) -> list:
    """The methods of a regime's results with test metrics."""
    return [m for m, result in regime.items() if isinstance(result, dict) and "long_tailed" in result]


def recorded_shift_name(figures: dict) -> str:
    """The shifted set's name in a recorded run's keys (`<name>_shift`; "flowcam" in runs before other shift data was
    named)."""
    return next((key[: -len("_shift")] for key in figures if key.endswith("_shift")), DEFAULT_SHIFT_NAME)


def run_headline(figures: dict) -> dict:
    """What `targets` reads of one run: each method's test metrics per regime, each method's few-shot mean accuracy
    on the shifted set and the total wall time."""
    shift_key = f"{recorded_shift_name(figures)}_shift"
    return {
        "regimes": {
            regime: {m: {split: r[m][split] for split in ("long_tailed", "balanced")} for m in methods_scored(r)}
            for regime, r in figures["regimes"].items()
        },
        shift_key: {m: {"mean_accuracy": v["mean_accuracy"]} for m, v in figures[shift_key].items()},
        "wall_seconds_total": figures["wall_seconds"]["total"],
    }  # fmt: skip


def merge_runs(paths: Sequence[str]) -> dict:
    """Full runs of one preset with other `--seed`s (each its own splits, label subsets, trainings and FlowCam folds)
    as one: every headline figure's mean and standard deviation over the seeds, the targets on the means with each
    seed's value and how many seeds meet them."""
    runs = read_seed_runs(paths, comparable_budget)
    first = next(iter(runs.values()))
    shift_names = {recorded_shift_name(record["figures"]) for record in runs.values()}
    if len(shift_names) != 1:
        raise ValueError(f"--merge: expected runs with one shift data set, got {sorted(shift_names)}")
    shift = shift_names.pop()
    headlines = [run_headline(record["figures"]) for record in runs.values()]
    mean = over_seeds(headlines, np.mean)
    budget_seconds = first["figures"]["targets"]["wall_seconds_total"]["target"]
    merged_targets = targets(mean["regimes"], mean[f"{shift}_shift"], mean["wall_seconds_total"], budget_seconds, shift)
    for name, entry in merged_targets.items():
        per_seed = [record["figures"]["targets"][name] for record in runs.values()]
        entry["std"] = float(np.std([t["value"] for t in per_seed]))
        entry["per_seed"] = [t["value"] for t in per_seed]
        entry["met_on_seeds"] = f"{sum(t['met'] for t in per_seed)} of {len(per_seed)}"
    return {
        "budget": comparable_budget(first),
        "seeds": list(runs),
        "mean": mean,
        "std": over_seeds(headlines, np.std),
        "per_seed": dict(zip(runs, headlines)),
        "targets": merged_targets,
        "merged_from": [
            {"path": Path(r["path"]).name, "command": r["command"], "seed": seed, "date_utc": r["environment"]["date_utc"]}
            for seed, r in runs.items()
        ],
    }


def main():
    args = parse_args()
    if args.merge:
        merged = merge_runs(args.merge)
        report(f"{NAME}_{merged['budget']['preset']}_{len(merged['seeds'])}_seeds", args, setup(args), merged)
        return
    args.device = str(setup(args))
    budget, walls, start = args.budget, {}, time.perf_counter()
    name = NAME if args.quick or args.preset == "cpu" else f"{NAME}_{args.preset}"
    output = _common.results_path(name, args)
    partial = PartialResults(None if args.quick else output)
    with timed(walls, "read_images"):
        splits, balanced, subsets = load_splits(args)
        shift_files, shift_labels, shift_names = list_class_folders(args.shift_data)
        shift = read_images(shift_files, shift_labels, shift_names, preprocessing(budget), f"--shift_data {args.shift_data}")
        check_shift_holds_no_data_image(args, shift, shift_files, splits)
    train, val, test = (splits[name] for name in SPLITS)
    data = RunData(splits, balanced, subsets, shift)
    grid_regime, grid_rows = data.grid_regime, subsets[data.grid_regime]
    regimes = {name: {"num_train_labels": len(rows)} for name, rows in subsets.items()}
    with tempfile.TemporaryDirectory() as work_dir:
        with timed(walls, "parts"), part_runner(budget.workers, data, work_dir) as submit:
            # the longest parts first, so that two workers finish close together
            arms = {}
            if "unet" in args.parts:
                arms["unet"] = partial.track("unet", submit(unet_arm, args, f"{work_dir}/unet"))
            if "simclr" in args.parts:
                simclr_args = as_many_steps_as_ddpm(args, arms.get("unet"))
                arms["simclr"] = partial.track("simclr", submit(simclr_arm, simclr_args, f"{work_dir}/simclr"))
            cnn_trainings = {
                regime: {
                    s: partial.track(f"cnn_{regime}_{s}", submit(train_cnn, args, regime, s, f"{work_dir}/cnn/{regime}/{s}"))
                    for s in CNN_SAMPLINGS
                }
                for regime in (subsets if "cnn" in args.parts else ())
            }  # fmt: skip
            if "raw_pixels" in args.parts:
                arms["raw_pixels"] = partial.track("raw_pixels", submit(raw_pixel_arm, args))
            arms = {name: future.result() for name, future in arms.items()}
            cnn_trainings = {r: {s: f.result() for s, f in runs.items()} for r, runs in cnn_trainings.items()}
        for arm in arms.values():
            for regime, entries in arm.get("regimes", {}).items():
                regimes[regime].update(entries)
            walls.update(arm["wall_seconds"])
        scorer = Scorer(splits, balanced)
        for regime, runs in cnn_trainings.items():
            with timed(walls, f"cnn_{regime}_choices"):
                cnn, predictions, info = cnn_regime(args, data, regime, runs, f"{work_dir}/cnn/{regime}", args.device)
                regimes[regime].update(cnn=scorer(predictions), cnn_training=info)
            walls.update({f"cnn_{regime}_{s}_training": run["wall_seconds"] for s, run in runs.items()})
            if regime == "all":
                arms["cnn"] = cnn_shift_arm(args, data, cnn, walls)
    walls["total"] = round(time.perf_counter() - start, 1)
    arms = {part: arms[part] for part in PARTS if part in arms}  # the record's order, whichever finished first
    unet = arms.get("unet", NO_UNET_ARM)
    shift_results, shift_views, parameters, kmeans_test = (
        {m: value for arm in arms.values() for m, value in arm.get(key, {}).items()}
        for key in ("flowcam_shift", "flowcam_shift_views", "parameters", "kmeans_test")
    )

    plot = label_efficiency_plot(args, output, regimes, test)
    budget_seconds = BUDGET_SECONDS[args.preset] if not args.quick else 60
    train_counts = torch.bincount(train.labels, minlength=train.num_classes)
    figures = {
        "seed": args.seed,
        "dataset": {
            "path": str(args.data_path), "num_classes": train.num_classes, "class_names": train.class_names,
            **{f"num_{n}": len(s) for n, s in splits.items()},
            "num_balanced_test": len(balanced), "balanced_test_per_class": len(balanced) // train.num_classes,
            "train_images_per_class": {"max": int(train_counts.max()), "median": float(train_counts.median()), "min": int(train_counts.min())},
            "tail_classes": f"{len(scorer.tail)} classes with fewer than {TAIL_TRAIN_IMAGES} train images",
            "preprocessing": train.preprocessing.to_dict(), "shift_data": str(args.shift_data), "shift_classes": shift_names,
        },
        "selection": "every choice on val: the (pool, block, t) of each regime by val accuracy of probes fitted on its "
        f"own labels within the grid subset ({grid_regime} of the train labels, {len(grid_rows)} images; the 'all' regime "
        f"the best, fitted upright on all labels, of the {budget.all_labels_candidates} best there), the CNN's "
        "checkpoint by val accuracy and its sampling by val macro-F1, the "
        "label-free k-means feature and normalisation by split-half stability, K by silhouette, on the grid's train "
        "and val images without labels; the views (upright, or averaged over the 8 rotations and mirror images) of "
        "each probe by val accuracy of probes fitted on the regime's labels within the grid subset (the 'all' regime "
        "and the hypercolumn on the grid subset's), of each CNN's probabilities by val macro-F1; the raw-pixel probe "
        "and the label-free k-means stay upright; every probe's inverse regularisation C (grid, U-Net, hypercolumn, SimCLR, "
        f"class-weighted) of {list(budget.probe_C)}, the raw-pixel probe's of {list(budget.raw_pixel_Cs)}, by val "
        "accuracy (ties: macro-F1, then the smaller C), except FlowCam's few-shot probes (no val: C = 1); test is used "
        "only for reporting",
        "budget": {
            "preset": "quick" if args.quick else args.preset, **dataclasses.asdict(budget),
            "ddpm_learning_rate": args.learning_rate, "simclr_learning_rate": args.simclr_learning_rate,
            "cnn_learning_rate": args.cnn_learning_rate, "ddpm_final_loss": unet["ddpm_final_loss"],
            "ddpm_steps_trained": unet["ddpm_steps"],
            "unet_loaded_from": args.unet_dir, "unet_kept_in": args.keep_checkpoint,
            **loaded_unet_budget(unet["loaded_unet"]),
            "unlabeled_training_images": len(train),
            "subsampling": unlabeled_training(args, ddpm_steps(unet, budget), len(train), len(grid_rows), grid_regime),
            "num_threads": torch.get_num_threads(),
            "parts_run": args.parts,
            "parts": "every part in this process" if budget.workers <= 1 else f"{worker_parts(args.parts)} in "
            f"{budget.workers} worker processes of one thread each" + ("; the CNNs' choices and their FlowCam shift "
                                                                      "here afterwards" if "cnn" in args.parts else ""),
        },  # fmt: skip
        "parameters": parameters,
        "regimes": regimes,
        "kmeans_test": kmeans_test,
        f"{args.shift_name}_shift": shift_results,
        f"{args.shift_name}_shift_unet_feature": unet["flowcam_shift_unet_feature"],
        f"{args.shift_name}_shift_views": {
            m: {"views": views_label(v), "val_prototype_accuracy": scores} for m, (v, scores) in shift_views.items()
        },
        **_common.figure_entries(args, label_efficiency_plot=plot),
        "targets": targets(regimes, shift_results, walls["total"], budget_seconds, args.shift_name),
        "wall_seconds": walls,
    }  # fmt: skip
    report(name, args, torch.device(args.device), figures)
    partial.remove()


if __name__ == "__main__":
    main()

"""Frozen DDPM U-Net features vs a supervised CNN on a labelled image dataset, with all and with few train labels.

One run on `--data` (default PneumoniaMNIST; any dataset `load_image_classification_data` reads): (1) train an
unconditional DDPM U-Net (EMA) on the train images, no labels, or load one saved by an earlier run (`--keep_checkpoint
DIR`, then `--unet_dir DIR`); (2) extract every (block, t) feature of train/val/test ONCE; (3) fit the probe grid with
all train labels and with each `--label_fractions` subset (stratified, at least `--min_labels_per_class` images of
every class), each probe at every `--probe_C`, choose the pair and its C on val, classify test through
`UNetFeatureClassifierPipeline`, run k-means on the test split three ways (on the label-chosen pair; on the pair,
normalisation and (given candidates) K chosen without labels on the train images, by split-half stability; on raw
pixels, normalisation chosen the same way), each k-means and its standardisation or whitening fitted on the test images it groups; (4)
train a `SupervisedCNN` of about the U-Net encoder's size on the same labels, checkpoint chosen on val (`--parts`
skips either method). In every regime the selection uses the labels of the whole val split (the label-free k-means
reads none); test is used only for reporting.
Targets: with all labels the probe matches or beats the CNN on test accuracy and AUC; with the smallest label
fraction (default 1%) it beats the CNN by >= 5 points of test accuracy; label-free k-means on the U-Net features
reaches at least raw-pixel k-means' Hungarian accuracy; the whole run takes at most 30 minutes.

    python benchmarks/unet_features_accuracy.py --quick
    python benchmarks/unet_features_accuracy.py      # writes benchmarks/results/unet_features_accuracy.json
    python benchmarks/unet_features_accuracy.py --data my.npz --class_names a b c --label_fractions 0.01 0.1 \\
        --keep_checkpoint /tmp/unet --output /tmp/my.json
"""

import tempfile
import time
from pathlib import Path

import torch

import _common
from _common import (
    add_data_options,
    add_probe_C_option,
    base_parser,
    check_data_options,
    check_timesteps_arg,
    check_unet_size,
    cnn_baseline,
    data_path,
    dataset_name,
    encoder_parameters,
    few_label_subsets,
    figure_title,
    load_benchmark_data,
    loaded_unet_facts,
    reading_options,
    report,
    setup,
    subsample_splits,
    target_entry,
    timed,
    trained_or_loaded_ddpm,
    training_arguments,
)
from diffusion_classifiers.features import POOLS
from diffusion_classifiers.metrics import classification_metrics, resolve_positive_label
from diffusion_classifiers.models import count_parameters
from diffusion_classifiers.plots import plot_label_efficiency
from diffusion_classifiers.training import train_ddpm_unet
from diffusion_classifiers.unet_feature_study import (
    DEFAULT_TIMESTEPS,
    SPLITS,
    UNetFeatureStudy,
    extract_study_features,
    study_from_features,
)

NAME = "unet_features_accuracy"
# CNN widths whose parameter count is close to the U-Net encoder's (conv_in, time embedding, down and mid blocks).
CNN_WIDTHS = {"tiny": (16, 32, 80), "small": (32, 64, 160)}
# --quick (< 60 s on 2 CPU cores): stratified subsets capped at each split's size, fewer steps and timesteps.
QUICK_SIZES = {"train": 200, "val": 100, "test": 100}
QUICK_TIMESTEPS = (50, 200, 400)
PARTS = ("unet_features", "cnn")
METRICS = ("accuracy", "macro_f1", "auc", "balanced_accuracy", "sensitivity", "specificity", "confusion_matrix")


def parse_args():
    parser = base_parser(__doc__)
    add_data_options(
        parser, "../shared/data/medmnist_pneumonia/pneumoniamnist.npz", label_fractions=[0.01],
        checkpoint="examples/unet_features_train.py", parts=PARTS,
    )  # fmt: skip
    parser.add_argument("--image_size", type=int, default=None, help="square side in px; default: the data's (folders 32)")
    parser.add_argument("--unet_preset", default=None, help="default: tiny with --quick, else small")
    parser.add_argument("--max_train_steps", type=int, default=None, help="DDPM steps; default 10 with --quick, else 1000")
    parser.add_argument("--train_batch_size", type=int, default=None, help="DDPM and CNN batch size; default 32 with --quick, else 64")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="DDPM learning rate")
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=None,
        help=f"probed timesteps; default {list(QUICK_TIMESTEPS)} with --quick, else {list(DEFAULT_TIMESTEPS)}",
    )  # fmt: skip
    parser.add_argument(
        "--pool", default="mean", choices=[pool for pool in POOLS if pool], help="spatial pooling of the U-Net features"
    )
    add_probe_C_option(parser)
    parser.add_argument("--cnn_steps", type=int, default=None, help="default 20 with --quick, else 1500")
    parser.add_argument("--cnn_learning_rate", type=float, default=1e-3)
    parser.add_argument("--cnn_widths", type=int, nargs="+", default=None, help="default: matched to the preset")
    parser.add_argument("--cnn_augment", action="store_true", help="random shifts of up to 2 px for the CNN")
    # On a loaded 2-core machine small convolutions run many times slower with 2 threads than with 1.
    parser.set_defaults(num_threads=1)
    args = parser.parse_args()
    check_data_options(parser, args)
    check_timesteps_arg(parser, args.timesteps, args.unet_dir)
    if args.keep_checkpoint and "unet_features" not in args.parts:  # QA: accepted, and nothing was kept
        parser.error(
            "--keep_checkpoint: keeps the diffusion model, which --parts cnn does not train; expected with the "
            "unet_features part, or without --keep_checkpoint"
        )
    if args.unet_dir and "unet_features" not in args.parts:  # QA: accepted, and never read
        parser.error(
            "--unet_dir: reuses a diffusion model, which --parts cnn does not use; expected with the unet_features "
            "part, or without --unet_dir"
        )
    # args.data stays as given (None: the benchmark's own data, whose results keep the benchmark's own name,
    # _common.results_path); the data read is args.data_path
    args.data_path = args.data or str(data_path("medmnist_pneumonia", "pneumoniamnist.npz"))
    args.unet_preset = args.unet_preset or ("tiny" if args.quick else "small")
    if args.image_size is not None and "unet_features" in args.parts and not args.unet_dir:  # a loaded one is built
        check_unet_size(parser, args.unet_preset, args.image_size)
    args.max_train_steps = args.max_train_steps or (10 if args.quick else 1000)
    args.train_batch_size = args.train_batch_size or (32 if args.quick else 64)
    args.timesteps = args.timesteps or list(QUICK_TIMESTEPS if args.quick else DEFAULT_TIMESTEPS)
    args.cnn_steps = args.cnn_steps or (20 if args.quick else 1500)
    args.cnn_widths_given = args.cnn_widths is not None  # else matched to the U-Net, a loaded one's once loaded
    args.cnn_widths = tuple(args.cnn_widths or CNN_WIDTHS[args.unet_preset])
    return args


def load_splits(args) -> dict:
    """The train/val/test splits (official or carved); with --quick a stratified subsample of each."""
    splits = load_benchmark_data(
        args.data_path, args.class_names, args.positive_class, seed=args.seed, image_size=args.image_size,
        **reading_options(args),
    )  # fmt: skip
    return subsample_splits(splits, QUICK_SIZES, args.seed) if args.quick else splits


def train_unet(args, splits: dict, work_dir: str):
    """Unconditional DDPM U-Net with EMA on the train images of `splits` (labels are never passed), or the one saved
    in `--unet_dir` (refused unless trained on images read as these are, and on none of the val and test images); kept
    in `--keep_checkpoint` with the images' preprocessing contract and fingerprints. Returns the U-Net, its scheduler
    and the final training loss (None when loaded)."""

    def train():
        training = training_arguments(
            work_dir, args.max_train_steps, args.learning_rate, args.max_train_steps // 20, args.seed,
            train_batch_size=args.train_batch_size, use_ema=True, num_sample_images=0 if args.quick else 8,
        )  # fmt: skip
        return train_ddpm_unet(training, splits["train"].images, preset=args.unet_preset)

    return trained_or_loaded_ddpm(args, splits, train)


def record_loaded_unet(args, unet) -> dict:
    """What a `--unet_dir` model is (`_common.loaded_unet_facts`), for the record in place of this run's training
    flags, and the CNN widths of the preset whose encoder is nearest the loaded one's in size, unless `--cnn_widths`
    was given (the CNN is meant to be about its size)."""
    facts = loaded_unet_facts(args.unet_dir, unet, CNN_WIDTHS)
    nearest = facts.pop("nearest_preset")
    if not args.cnn_widths_given:
        args.cnn_widths = CNN_WIDTHS[nearest]
    args.unet_preset, args.max_train_steps, args.learning_rate = f"loaded (nearest preset by size: {nearest})", None, None
    return facts


def cnn_figures(args, splits: dict, train_index, work_dir: str, device) -> dict:
    """The CNN trained on the same labelled subset (checkpoint chosen on val), scored on test."""
    train, val, test = (splits[name] for name in SPLITS)
    cnn = cnn_baseline(
        train.subset(train_index), val, test, work_dir, args.cnn_widths, args.cnn_steps, args.train_batch_size,
        args.cnn_learning_rate, args.seed, augment=args.cnn_augment, device=device,
    )  # fmt: skip
    positive_label = resolve_positive_label(args.positive_class, train.class_names, train.num_classes)
    test_metrics = classification_metrics(
        test.labels, cnn.probs.argmax(1), probs=cnn.probs, class_names=train.class_names, positive_label=positive_label
    )
    return {**{f"test_{k}": test_metrics.get(k) for k in METRICS}, **cnn.info}


def probe_figures(study: UNetFeatureStudy) -> dict:
    grid = {f"{block}@{t}": round(m["val"]["accuracy"], 4) for (block, t), m in study.probe.metrics.items()}
    summary, best = study.summary(), study.probe.best_pair
    return {
        **{k: summary[k] for k in ("best_block", "best_timestep", "val_accuracy")},
        "C": study.probe.C[best],
        "val_accuracy_by_C": {C: round(m["accuracy"], 4) for C, m in study.probe.val_by_C[best].items()},
        **{f"test_{k}": study.test_metrics.get(k) for k in METRICS},
        "kmeans_test": study.kmeans_metrics,
        "kmeans_label_free_test": {k: v for k, v in study.kmeans_label_free.items() if k != "selection"},
        "kmeans_label_free_selection": study.kmeans_label_free["selection"],
        "kmeans_raw_pixels_test": {k: v for k, v in study.kmeans_raw_pixels.items() if k != "selection"},
        "kmeans_raw_pixels_selection": study.kmeans_raw_pixels["selection"],
        "val_accuracy_grid": grid,
    }


def targets(regimes: dict, fraction_key: str, total_seconds: float) -> dict:
    """All labels: the probe's test accuracy and AUC at least the CNN's; the smallest label fraction (`fraction_key`,
    which the entry names, `label_regime`, with its `num_train_labels`: QA, with several fractions it did not say
    which; the name stays, as results files and targets_table.py read it): >= 5 points more accuracy than the CNN
    (only when both methods ran); k-means on the U-Net features chosen without labels at
    least as accurate (Hungarian) as on raw pixels (points; k-means reads no labels, so the "all" regime's); the
    whole run within 30 minutes."""
    full, few = regimes["all"], regimes[fraction_key]
    compared = {}
    if "probe" in full:
        label_free, pixels = full["probe"]["kmeans_label_free_test"], full["probe"]["kmeans_raw_pixels_test"]
        compared["label_free_kmeans_vs_raw_pixels_points"] = target_entry(
            100 * (label_free["accuracy"] - pixels["accuracy"]), 0.0
        )
    if "probe" in full and "cnn" in full:
        compared |= {
            "all_labels_probe_test_accuracy": target_entry(full["probe"]["test_accuracy"], full["cnn"]["test_accuracy"]),
            "all_labels_probe_test_auc": target_entry(full["probe"]["test_auc"], full["cnn"]["test_auc"]),
            "few_labels_probe_minus_cnn_accuracy_points": {
                **target_entry(100 * (few["probe"]["test_accuracy"] - few["cnn"]["test_accuracy"]), 5.0),
                "label_regime": fraction_key, "num_train_labels": few["num_train_labels"],
            },
        }
    return {**compared, "wall_seconds_total": target_entry(total_seconds, 30 * 60, higher_is_better=False)}


METHOD_NAMES = {"probe": "frozen U-Net features + linear probe", "cnn": "supervised CNN"}


def label_efficiency_curves(regimes: dict, num_classes: int) -> dict:
    """`{method: {labels per class: {"accuracy", "macro_f1"}}}` on test, for `plots.plot_label_efficiency`."""
    return {
        METHOD_NAMES[key]: {
            regime["num_train_labels"] / num_classes: {
                "accuracy": regime[key]["test_accuracy"], "macro_f1": regime[key]["test_macro_f1"]
            }
            for regime in regimes.values()
        }
        for key in METHOD_NAMES
        if key in regimes["all"]
    }  # fmt: skip


PART_TITLES = {"unet_features": "frozen U-Net features", "cnn": "a supervised CNN"}


def efficiency_title(parts, data_path: str) -> str:
    """The label-efficiency plot's title: the methods of `parts` it draws (QA: "Frozen U-Net features vs a supervised
    CNN" titled a --parts cnn plot of the CNN alone), on the data."""
    drawn = " vs ".join(PART_TITLES[part] for part in PARTS if part in parts)
    return f"{drawn[0].upper()}{drawn[1:]} on {Path(data_path).name}: labels per class"


def run_regimes(args, splits: dict, subsets: dict, device, walls: dict, work_dir: str) -> tuple:
    """Every selected method in every label regime. Returns the regimes' figures, the U-Net (None when only the
    CNN runs), its training facts and the probed blocks."""
    regimes = {regime: {"num_train_labels": len(index)} for regime, index in subsets.items()}
    unet, trained = None, {}
    if "unet_features" in args.parts:
        with timed(walls, "ddpm_training"):
            unet, scheduler, final_loss = train_unet(args, splits, f"{work_dir}/unet")
        trained = {"ddpm_final_loss": final_loss, "loaded_from": args.unet_dir, "kept_in": args.keep_checkpoint}
        if args.unet_dir:
            trained.update(record_loaded_unet(args, unet))
        unet.to(device)
        with timed(walls, "feature_extraction"):
            features = extract_study_features(
                unet, scheduler, splits, timesteps=args.timesteps, pool=args.pool, noise_seed=args.seed, batch_size=64,
                show_progress=False,
            )  # fmt: skip
        trained["blocks"] = list(dict.fromkeys(block for block, _ in features["train"]))
        for regime, index in subsets.items():
            with timed(walls, f"probes_{regime}"):
                study = study_from_features(
                    unet, scheduler, splits, features, index, pool=args.pool, noise_seed=args.seed, batch_size=256,
                    seed=args.seed, positive_class=args.positive_class, probe_kwargs={"C": args.probe_C},
                )  # fmt: skip
            regimes[regime]["probe"] = probe_figures(study)
    if "cnn" in args.parts:
        for regime, index in subsets.items():
            with timed(walls, f"cnn_{regime}"):
                regimes[regime]["cnn"] = cnn_figures(args, splits, index, f"{work_dir}/cnn/{regime}", device)
    return regimes, unet, trained


def main():
    args = parse_args()
    device = setup(args)
    walls = {}
    start = time.perf_counter()
    splits = load_splits(args)
    train = splits["train"]
    subsets = few_label_subsets(
        train.labels, args.label_fractions, args.min_labels_per_class, args.seed, class_names=train.class_names
    )
    with tempfile.TemporaryDirectory() as work_dir:
        regimes, unet, trained = run_regimes(args, splits, subsets, device, walls, work_dir)
    walls["total"] = round(time.perf_counter() - start, 1)
    output = _common.results_path(NAME, args)
    figure_dir = _common.figure_dir(args, output)
    efficiency_plot = figure_dir / f"{output.stem}_label_efficiency.png"  # beside its results file, named after it
    plot_label_efficiency(
        label_efficiency_curves(regimes, train.num_classes), str(efficiency_plot),
        title=figure_title(efficiency_title(args.parts, args.data_path), args.quick),
    )
    parameters = {"cnn": regimes["all"]["cnn"]["num_parameters"]} if "cnn" in args.parts else {}
    if unet is not None:
        parameters.update(unet_total=count_parameters(unet), unet_encoder=encoder_parameters(unet))
    few_regime = min(list(subsets)[1:], key=lambda regime: len(subsets[regime]))
    figures = {
        "dataset": {
            "name": dataset_name(args.data_path), "path": args.data_path, "class_names": train.class_names,
            "positive_class": args.positive_class, **{f"num_{name}": len(splits[name]) for name in SPLITS},
            "preprocessing": train.preprocessing.to_dict(),  # how the images were read (QA: only in the command)
        },
        "selection": "probe pair, its C and the CNN checkpoint chosen on the labels of the whole val split "
        f"({len(splits['val'])} images) in every regime, including the few-label ones; the label-free k-means feature "
        "and normalisation (and the raw pixels' normalisation) by split-half stability on the train images, no labels "
        "read; test is used only for reporting",
        "few_label_regimes": {"fractions": args.label_fractions, "min_labels_per_class": args.min_labels_per_class,
                              "labels_per_class": {r: torch.bincount(train.labels[i], minlength=train.num_classes).tolist()
                                                     for r, i in subsets.items()}},
        "budget": {
            "parts": args.parts, "unet_preset": args.unet_preset, "image_size": train.images.shape[-1],
            "ddpm_steps": args.max_train_steps, "train_batch_size": args.train_batch_size,
            "ddpm_learning_rate": args.learning_rate, "use_ema": None if args.unet_dir else True, **trained,
            "timesteps": args.timesteps,
            "pool": args.pool, "probe_C": args.probe_C,
            "cnn_steps": args.cnn_steps, "cnn_learning_rate": args.cnn_learning_rate, "cnn_widths": list(args.cnn_widths),
            "cnn_augment": args.cnn_augment, "num_threads": torch.get_num_threads(),
        },  # fmt: skip
        "parameters": parameters,
        "regimes": regimes,
        **_common.figure_entries(args, label_efficiency_plot=efficiency_plot),
        "targets": targets(regimes, few_regime, walls["total"]),
        "wall_seconds": walls,
    }
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

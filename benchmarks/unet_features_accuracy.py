"""Frozen DDPM U-Net features vs a supervised CNN on PneumoniaMNIST, with all and with 1% of the train labels.

One run: (1) train an unconditional DDPM U-Net (EMA) on the train images, no labels; (2) extract every (block, t)
feature of train/val/test ONCE; (3) fit the probe grid with all train labels and with a 1% stratified subset,
choose the pair on val, classify test through `UNetFeatureClassifierPipeline`, run k-means on the chosen test
features; (4) train a `SupervisedCNN` of about the U-Net encoder's size on the same labels, checkpoint chosen on
val. In both regimes the selection uses the labels of the whole val split; test is used only for reporting.
Targets: with all labels the probe matches or beats the CNN on test accuracy and AUC; with 1% it beats the CNN
by >= 5 points of test accuracy; the whole run takes at most 30 minutes.

    python benchmarks/unet_features_accuracy.py --quick
    python benchmarks/unet_features_accuracy.py      # writes benchmarks/results/unet_features_accuracy.json
"""

import tempfile
import time
from pathlib import Path

import torch

import _common
from _common import base_parser, cnn_baseline, data_path, report, setup, target_entry, timed, training_arguments
from diffusion_classifiers.data import few_label_indices, load_image_classification_data, stratified_subset_indices
from diffusion_classifiers.metrics import classification_metrics
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
QUICK_SIZES = {"train": 400, "val": 150, "test": 150}
METRICS = ("accuracy", "macro_f1", "auc", "balanced_accuracy", "sensitivity", "specificity", "confusion_matrix")


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="MedMNIST-style .npz; default ../shared/data/medmnist_pneumonia/pneumoniamnist.npz"
    )
    parser.add_argument("--unet_preset", default=None, help="default: tiny with --quick, else small")
    parser.add_argument("--max_train_steps", type=int, default=None, help="DDPM steps; default 40 with --quick, else 1000")
    parser.add_argument("--train_batch_size", type=int, default=64, help="DDPM and CNN batch size")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="DDPM learning rate")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--label_fraction", type=float, default=0.01, help="the few-label regime")
    parser.add_argument("--cnn_steps", type=int, default=None, help="default 60 with --quick, else 1500")
    parser.add_argument("--cnn_learning_rate", type=float, default=1e-3)
    parser.add_argument("--cnn_widths", type=int, nargs="+", default=None, help="default: matched to the preset")
    parser.add_argument("--cnn_augment", action="store_true", help="random shifts of up to 2 px for the CNN")
    # On a loaded 2-core machine small convolutions run many times slower with 2 threads than with 1.
    parser.set_defaults(num_threads=1)
    args = parser.parse_args()
    args.data = args.data or str(data_path("medmnist_pneumonia", "pneumoniamnist.npz"))
    args.unet_preset = args.unet_preset or ("tiny" if args.quick else "small")
    args.max_train_steps = args.max_train_steps or (40 if args.quick else 1000)
    args.cnn_steps = args.cnn_steps or (60 if args.quick else 1500)
    args.cnn_widths = tuple(args.cnn_widths or CNN_WIDTHS[args.unet_preset])
    return args


def load_splits(args) -> dict:
    """The official train/val/test splits; with --quick a stratified subsample of each."""
    splits = load_image_classification_data(args.data)
    if args.quick:
        for name, size in QUICK_SIZES.items():
            splits[name] = splits[name].subset(stratified_subset_indices(splits[name].labels, size, seed=args.seed))
    return splits


def train_unet(args, images: torch.Tensor, work_dir: str):
    """Unconditional DDPM U-Net with EMA on the train images (labels are never passed)."""
    training = training_arguments(
        work_dir, args.max_train_steps, args.learning_rate, args.max_train_steps // 20, args.seed,
        train_batch_size=args.train_batch_size, use_ema=True,
    )  # fmt: skip
    return train_ddpm_unet(training, images, preset=args.unet_preset)


def encoder_parameters(unet) -> int:
    """Parameters of the U-Net's encoder path: conv_in, time embedding, down blocks and mid block."""
    return sum(count_parameters(m) for m in (unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block))


def cnn_figures(args, splits: dict, train_index, work_dir: str, device) -> dict:
    """The CNN trained on the same labelled subset (checkpoint chosen on val), scored on test."""
    train, val, test = (splits[name] for name in SPLITS)
    cnn = cnn_baseline(
        train.subset(train_index), val, test, work_dir, args.cnn_widths, args.cnn_steps, args.train_batch_size,
        args.cnn_learning_rate, args.seed, augment=args.cnn_augment, device=device,
    )  # fmt: skip
    test_metrics = classification_metrics(test.labels, cnn.probs.argmax(1), probs=cnn.probs, class_names=train.class_names)
    return {**{f"test_{k}": test_metrics.get(k) for k in METRICS}, **cnn.info}


def probe_figures(study: UNetFeatureStudy) -> dict:
    grid = {f"{block}@{t}": round(m["val"]["accuracy"], 4) for (block, t), m in study.probe.metrics.items()}
    summary = study.summary()
    return {
        **{k: summary[k] for k in ("best_block", "best_timestep", "val_accuracy")},
        **{f"test_{k}": study.test_metrics.get(k) for k in METRICS},
        "kmeans_test": study.kmeans_metrics,
        "val_accuracy_grid": grid,
    }


def targets(regimes: dict, fraction_key: str, total_seconds: float) -> dict:
    """All labels: the probe's test accuracy and AUC at least the CNN's; few labels: >= 5 points more accuracy than
    the CNN; the whole run within 30 minutes."""
    full, few = regimes["all"], regimes[fraction_key]
    return {
        "all_labels_probe_test_accuracy": target_entry(full["probe"]["test_accuracy"], full["cnn"]["test_accuracy"]),
        "all_labels_probe_test_auc": target_entry(full["probe"]["test_auc"], full["cnn"]["test_auc"]),
        "few_labels_probe_minus_cnn_accuracy_points": target_entry(
            100 * (few["probe"]["test_accuracy"] - few["cnn"]["test_accuracy"]), 5.0
        ),
        "wall_seconds_total": target_entry(total_seconds, 30 * 60, higher_is_better=False),
    }


def label_efficiency_curves(regimes: dict, num_classes: int) -> dict:
    """`{method: {labels per class: {"accuracy", "macro_f1"}}}` on test, for `plots.plot_label_efficiency`."""
    return {
        method: {
            regime["num_train_labels"] / num_classes: {
                "accuracy": regime[key]["test_accuracy"], "macro_f1": regime[key]["test_macro_f1"]
            }
            for regime in regimes.values()
        }
        for method, key in (("frozen U-Net features + linear probe", "probe"), ("supervised CNN", "cnn"))
    }  # fmt: skip


def main():
    args = parse_args()
    device = setup(args)
    walls, regimes = {}, {}
    start = time.perf_counter()
    splits = load_splits(args)
    train = splits["train"]
    few = few_label_indices(train.labels, fraction=args.label_fraction, seed=args.seed)
    subsets = {"all": torch.arange(len(train)), f"{args.label_fraction:.0%}": torch.from_numpy(few)}
    with tempfile.TemporaryDirectory() as work_dir:
        with timed(walls, "ddpm_training"):
            unet, scheduler, summary = train_unet(args, train.images, f"{work_dir}/unet")
        unet.to(device)
        with timed(walls, "feature_extraction"):
            features = extract_study_features(
                unet, scheduler, splits, timesteps=args.timesteps, noise_seed=args.seed, batch_size=64, show_progress=False
            )
        for regime, index in subsets.items():
            with timed(walls, f"probes_{regime}"):
                study = study_from_features(unet, scheduler, splits, features, index, noise_seed=args.seed, batch_size=256, seed=args.seed)
            with timed(walls, f"cnn_{regime}"):
                cnn = cnn_figures(args, splits, index, f"{work_dir}/cnn_{len(index)}", device)
            regimes[regime] = {"num_train_labels": len(index), "probe": probe_figures(study), "cnn": cnn}
    walls["total"] = round(time.perf_counter() - start, 1)
    figure_dir = Path(tempfile.mkdtemp()) if args.quick else Path(args.output or _common.RESULTS_DIR / NAME).parent
    efficiency_plot = figure_dir / f"{NAME}_label_efficiency.png"
    plot_label_efficiency(
        label_efficiency_curves(regimes, train.num_classes), str(efficiency_plot),
        title=f"Frozen U-Net features vs a supervised CNN on {Path(args.data).name}: labels per class",
    )
    cnn_parameters = regimes["all"]["cnn"]["num_parameters"]
    figures = {
        "dataset": {"path": args.data, **{f"num_{name}": len(splits[name]) for name in SPLITS}},
        "selection": f"probe pair and CNN checkpoint chosen on the labels of the whole val split ({len(splits['val'])} "
        "images) in every regime, including the few-label one; test is used only for reporting",
        "budget": {
            "unet_preset": args.unet_preset, "image_size": train.images.shape[-1], "ddpm_steps": args.max_train_steps,
            "train_batch_size": args.train_batch_size, "ddpm_learning_rate": args.learning_rate, "use_ema": True,
            "ddpm_final_loss": summary.final_loss, "timesteps": args.timesteps, "blocks": list(dict.fromkeys(block for block, _ in features["train"])),
            "cnn_steps": args.cnn_steps, "cnn_learning_rate": args.cnn_learning_rate, "cnn_widths": list(args.cnn_widths),
            "cnn_augment": args.cnn_augment, "num_threads": torch.get_num_threads(),
        },  # fmt: skip
        "parameters": {"unet_total": count_parameters(unet), "unet_encoder": encoder_parameters(unet), "cnn": cnn_parameters},
        "regimes": regimes,
        "label_efficiency_plot": str(efficiency_plot) if args.quick else efficiency_plot.name,
        "targets": targets(regimes, list(subsets)[1], walls["total"]),
        "wall_seconds": walls,
    }
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

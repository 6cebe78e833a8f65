"""Batched probe grid vs scikit-learn logistic regression fitted pair by pair, on diffusion features.

Features: scikit-learn's digits (8x8, bilinearly upsampled to 32x32, scaled to [-1, 1]) through a random-init U-Net
of the library's default preset, read by `DiffusionFeatureExtractor` for every (block, timestep) pair. Both methods
see the same train/val/test split and the same train-standardised features, and pick their best pair on val
accuracy. Targets: wall time ratio >= 20x; best-pair val and test accuracy within 0.5 points.

    python benchmarks/bench_probe.py --quick
"""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from _common import base_parser, median_seconds, report, setup
from diffusion_classifiers.features import DiffusionFeatureExtractor
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.probing import fit_probe_grid


def digits_features(args, device):
    digits = load_digits()
    images = torch.tensor(digits.images[: args.num_images], dtype=torch.float32)[:, None] / 16 * 2 - 1
    images = F.interpolate(images, size=32, mode="bilinear", align_corners=False).clamp(-1, 1)
    torch.manual_seed(args.seed)
    unet = UNet2DModel(**unet_config(args.preset, 32, 1)).to(device)
    extractor = DiffusionFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=1000))
    blocks = extractor.block_names[: args.num_blocks]
    features = extractor.extract(images, blocks, args.timesteps, pool=args.pool, noise_seed=args.seed, batch_size=128)
    return features, digits.target[: args.num_images]


def split(features: dict, labels: np.ndarray, seed: int):
    """60/20/20 train/val/test split as [(features, labels)] * 3."""
    order = np.random.default_rng(seed).permutation(len(labels))
    cuts = np.split(order, [int(0.6 * len(order)), int(0.8 * len(order))])
    return [({k: v[idx] for k, v in features.items()}, labels[idx]) for idx in cuts]


def sklearn_grid(train, val, test) -> dict:
    """LogisticRegression per pair on standardised features; best pair on val accuracy (ties: earlier pair)."""
    best = None
    for pair, x_train in train[0].items():
        mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp(min=1e-6)
        standardise = lambda x: ((x - mean) / std).numpy()  # noqa: E731
        clf = LogisticRegression(max_iter=1000).fit(standardise(x_train), train[1])
        val_accuracy = clf.score(standardise(val[0][pair]), val[1])
        if best is None or val_accuracy > best["val_accuracy"]:
            test_accuracy = clf.score(standardise(test[0][pair]), test[1])
            best = {"best_pair": list(pair), "val_accuracy": val_accuracy, "test_accuracy": test_accuracy}
    return best


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="U-Net preset of diffusion_classifiers.models.unet_config")
    parser.add_argument("--pool", default="mean", choices=["mean", "2x2"])
    parser.add_argument("--repeats", type=int, default=None, help="default 1 with --quick, else 3")
    args = parser.parse_args()
    args.num_images = 600 if args.quick else 1797
    args.num_blocks = 4 if args.quick else None  # quick: down blocks + mid block (early stop skips the up path)
    args.timesteps = [10, 100] if args.quick else [10, 50, 100, 250, 500]
    device = setup(args)

    features, labels = digits_features(args, device)
    train, val, test = split(features, labels, args.seed)
    results = {}

    def ours():
        grid = fit_probe_grid(*train, *val, *test, seed=args.seed, device=device)
        best = grid.metrics[grid.best_pair]
        results["batched_probe_grid"] = {
            "best_pair": list(grid.best_pair),
            "val_accuracy": best["val"]["accuracy"],
            "test_accuracy": best["test"]["accuracy"],
        }

    def theirs():
        results["sklearn_per_pair"] = sklearn_grid(train, val, test)

    repeats = args.repeats or (1 if args.quick else 3)
    seconds = median_seconds({"batched_probe_grid": ours, "sklearn_per_pair": theirs}, repeats=repeats)
    a, b = results["batched_probe_grid"], results["sklearn_per_pair"]
    figures = {
        "setting": {
            "preset": args.preset,
            "pool": args.pool,
            "num_pairs": len(features),
            "feature_dims": sorted({v.shape[1] for v in features.values()}),
            "num_train_val_test": [len(train[1]), len(val[1]), len(test[1])],
            "timesteps": args.timesteps,
        },
        "seconds": seconds,
        "speedup": seconds["sklearn_per_pair"] / seconds["batched_probe_grid"],
        "speedup_target": 20.0,
        **results,
        "val_accuracy_gap_points": 100 * (a["val_accuracy"] - b["val_accuracy"]),
        "test_accuracy_gap_points": 100 * (a["test_accuracy"] - b["test_accuracy"]),
        "accuracy_gap_target_points": 0.5,
    }
    figures["speedup_meets_target"] = figures["speedup"] >= 20.0
    gaps = [abs(figures[f"{split}_accuracy_gap_points"]) for split in ("val", "test")]
    figures["accuracy_meets_target"] = max(gaps) <= 0.5
    report("bench_probe", args, device, figures)


if __name__ == "__main__":
    main()

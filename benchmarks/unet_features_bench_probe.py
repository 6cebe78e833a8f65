"""Batched probe grid vs scikit-learn logistic regression fitted pair by pair, on diffusion features.

Both sides fit the same objective (scikit-learn's `LogisticRegression()` defaults: L2 penalty with C=1, lbfgs tol=1e-4)
on the same train-standardised features of every (block, timestep) pair, pick their best pair on val accuracy and
report its val and test accuracy. Each side's timing covers standardisation, fitting and scoring of every pair; feature
extraction is done once beforehand and is not timed. Targets: wall-time ratio >= 20x; best-pair val and test accuracy
within 0.5 points.

Cases (features of a random-init U-Net of the "small" preset, `DiffusionFeatureExtractor`, every block):
  digits          scikit-learn's digits (8x8 upsampled to 32x32), 60/20/20 split, 5 timesteps, pool "mean"
  pneumonia_mean  PneumoniaMNIST at 28x28, official splits (4708/524/624), 6 timesteps, pool "mean"
  pneumonia_2x2   the same images and forward passes, pool "2x2"
  fashion_mnist   Fashion-MNIST at 28x28, 20000 train / 2000 val / 2000 test, 6 timesteps, pool "mean"; off by
                  default, as extracting its features takes ~15 minutes on 2 CPU cores: `--cases ... fashion_mnist`
Each case is timed with `--num_threads` (default 1) on both sides; scikit-learn is also timed, apart, over the pairs in
`--sklearn_jobs` (default 2) joblib processes, against the same single-threaded batched grid: all cores for scikit-learn,
one for us. (Two torch threads are not timed: on a 2-core machine shared with other jobs they ran 2-10x SLOWER than
one.) The default full run takes ~5 minutes on 2 CPU cores, ~4 of them extracting features.

    python benchmarks/unet_features_bench_probe.py --quick
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from joblib import Parallel, delayed
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from _common import base_parser, data_path, median_seconds, report, setup, target_entry
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.features import DiffusionFeatureExtractor, _pool
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.probing import fit_probe_grid

CASES = ["digits", "pneumonia_mean", "pneumonia_2x2", "fashion_mnist"]
SPEEDUP_TARGET, GAP_TARGET = 20.0, 0.5


def extract(extractor, images, blocks, timesteps, pools, seed, chunk=16):
    """{pool: {(block, t): [N, D]}}, from ONE forward per chunk of images: with several pools the whole maps are read
    (pool=None) and pooled with the library's own pooling. 16 images a call (96 samples a forward) run fastest on CPU."""
    if len(pools) == 1:
        return {pools[0]: extractor.extract(images, blocks, timesteps, pool=pools[0], noise_seed=seed, batch_size=chunk)}
    shapes = {b.name: (b.channels, *b.resolution) for b in extractor.blocks}
    parts = {pool: {} for pool in pools}
    for start in range(0, len(images), chunk):
        maps = extractor.extract(images[start : start + chunk], blocks, timesteps, pool=None, noise_seed=seed, batch_size=chunk)
        for (block, t), flat in maps.items():
            activation = flat.view(len(flat), *shapes[block])
            for pool in pools:
                parts[pool].setdefault((block, t), []).append(_pool(activation, pool))
    return {pool: {key: torch.cat(chunks) for key, chunks in parts[pool].items()} for pool in pools}


def digits_splits(args):
    """(images, labels) for train/val/test: 60/20/20 of scikit-learn's digits, upsampled to 32x32 in [-1, 1]."""
    digits = load_digits()
    count = 600 if args.quick else len(digits.target)
    images = torch.tensor(digits.images[:count], dtype=torch.float32)[:, None] / 16 * 2 - 1
    images = F.interpolate(images, size=32, mode="bilinear", align_corners=False).clamp(-1, 1)
    labels = digits.target[:count]
    order = np.random.default_rng(args.seed).permutation(count)
    cuts = np.split(order, [int(0.6 * count), int(0.8 * count)])
    return {name: (images[idx], labels[idx]) for name, idx in zip(("train", "val", "test"), cuts)}


def dataset_splits(args, source, sizes):
    """(images, labels) per split from `load_image_classification_data` at 28x28; `sizes` caps each split (the first
    images of a split, which the loader has already shuffled)."""
    splits = load_image_classification_data(source, image_size=28, seed=args.seed)
    return {name: (s.images[: sizes[name]], s.labels[: sizes[name]].numpy()) for name, s in splits.items()}


def build_cases(args, device):
    """{case: (train, val, test)} with each split a ({pair: features}, labels), plus the settings and extraction time."""
    cases, settings = {}, {}
    groups = []
    if "digits" in args.cases:
        groups.append(("digits", digits_splits(args), 32, [10, 100] if args.quick else [10, 50, 100, 250, 500], ["mean"]))
    pools = [p for p in ("mean", "2x2") if f"pneumonia_{p}" in args.cases]
    if pools:
        sizes = {"train": 600, "val": 150, "test": 150} if args.quick else {"train": None, "val": None, "test": None}
        splits = dataset_splits(args, args.data_dir / "medmnist_pneumonia" / "pneumoniamnist.npz", sizes)
        groups.append(("pneumonia", splits, 28, [10, 100] if args.quick else [10, 25, 50, 100, 200, 400], pools))
    if "fashion_mnist" in args.cases:
        sizes = {"train": 2000, "val": 300, "test": 300} if args.quick else {"train": 20000, "val": 2000, "test": 2000}
        splits = dataset_splits(args, args.data_dir / "fashion_mnist", sizes)
        groups.append(("fashion_mnist", splits, 28, [10, 100] if args.quick else [10, 25, 50, 100, 200, 400], ["mean"]))
    for name, splits, size, timesteps, pools in groups:
        torch.manual_seed(args.seed)
        unet = UNet2DModel(**unet_config(args.preset, size, 1)).to(device)
        extractor = DiffusionFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=1000))
        blocks = extractor.block_names[:4] if args.quick else extractor.block_names  # quick: down + mid (early stop)
        start = time.perf_counter()
        features = {split: extract(extractor, images, blocks, timesteps, pools, args.seed) for split, (images, _) in splits.items()}
        seconds = time.perf_counter() - start
        for pool in pools:
            case = name if name != "pneumonia" else f"pneumonia_{pool}"
            cases[case] = tuple((features[split][pool], splits[split][1]) for split in ("train", "val", "test"))
            settings[case] = {
                "image_size": size,
                "pool": pool,
                "timesteps": timesteps,
                "blocks": blocks,
                "num_pairs": len(features["train"][pool]),
                "feature_dims": sorted({v.shape[1] for v in features["train"][pool].values()}),
                "num_classes": int(max(splits["train"][1]) + 1),
                "num_train_val_test": [len(splits[s][1]) for s in ("train", "val", "test")],
                "extraction_seconds_all_pools_untimed": seconds,
            }
    return cases, settings


def _sklearn_pair(x_train, y_train, x_val, x_test):
    """Standardise with train statistics, fit `LogisticRegression()`, predict val and test."""
    mean, std = x_train.mean(0), x_train.std(0).clip(min=1e-6)
    clf = LogisticRegression(max_iter=1000).fit((x_train - mean) / std, y_train)
    return clf.predict((x_val - mean) / std), clf.predict((x_test - mean) / std), int(clf.n_iter_[0])


def optimum_accuracy(pair, train, val, test) -> dict:
    """Val and test accuracy of the exact optimum of `pair` (scikit-learn in float64 at tol=1e-10; untimed): both
    sides stop at tol=1e-4, a few samples near the boundary may fall either way."""
    x = {name: split[0][tuple(pair)].double().numpy() for name, split in zip(("train", "val", "test"), (train, val, test))}
    mean, std = x["train"].mean(0), x["train"].std(0).clip(min=1e-6)
    clf = LogisticRegression(tol=1e-10, max_iter=100_000).fit((x["train"] - mean) / std, train[1])
    return {name: clf.score((x[name] - mean) / std, split[1]) for name, split in (("val", val), ("test", test))}


def sklearn_grid(train, val, test, n_jobs=1) -> dict:
    """LogisticRegression per pair; best pair on val accuracy (ties: the earlier pair)."""
    pairs = list(train[0])
    arrays = [(train[0][p].numpy(), train[1], val[0][p].numpy(), test[0][p].numpy()) for p in pairs]
    if n_jobs == 1:
        fitted = [_sklearn_pair(*a) for a in arrays]
    else:
        fitted = Parallel(n_jobs=n_jobs)(delayed(_sklearn_pair)(*a) for a in arrays)
    val_accuracy = [float(np.mean(v == val[1])) for v, _, _ in fitted]
    best = int(np.argmax(val_accuracy))
    return {
        "best_pair": list(pairs[best]),
        "val_accuracy": val_accuracy[best],
        "test_accuracy": float(np.mean(fitted[best][1] == test[1])),
        "n_iter_max": max(n for _, _, n in fitted),
        "n_iter_sum": sum(n for _, _, n in fitted),
        "val_predictions": {p: v for p, (v, _, _) in zip(pairs, fitted)},
    }


def ours(train, val, test, device) -> dict:
    grid = fit_probe_grid(*train, *val, *test, device=device)
    best = grid.metrics[grid.best_pair]
    return {
        "best_pair": list(grid.best_pair),
        "val_accuracy": best["val"]["accuracy"],
        "test_accuracy": best["test"]["accuracy"],
        "n_iter_max": max(grid.n_iter.values()),
        "n_iter_sum": sum(grid.n_iter.values()),
        "all_converged": all(grid.converged.values()),
        "grid": grid,
    }


def measure(case, train, val, test, args, device) -> dict:
    results = {}

    def run(name, fn, threads):
        def timed():
            torch.set_num_threads(threads)  # BLAS keeps --num_threads (setup); each joblib worker gets 1 thread
            results[name] = fn()
            torch.set_num_threads(args.num_threads)

        return timed

    repeats = args.repeats or (1 if args.quick else 3)
    seconds = median_seconds(
        {
            "batched_probe_grid": run("ours", lambda: ours(train, val, test, device), args.num_threads),
            "sklearn_per_pair": run("sklearn", lambda: sklearn_grid(train, val, test), args.num_threads),
        },
        repeats=repeats,
    )
    if args.sklearn_jobs > 1:  # timed apart, so that its worker processes do not slow the runs above
        seconds.update(
            median_seconds(
                {
                    f"sklearn_per_pair_{args.sklearn_jobs}_jobs": run(
                        "sklearn_jobs", lambda: sklearn_grid(train, val, test, n_jobs=args.sklearn_jobs), args.num_threads
                    )
                },
                repeats=repeats,
            )
        )
    a, b = results["ours"], results["sklearn"]
    grid = a.pop("grid")
    val_predictions = b.pop("val_predictions")
    # how often the two solutions predict the same val label, pair by pair (they solve the same problem)
    agreement = []
    for pair in grid.heads:
        head = grid.heads[pair]
        with torch.no_grad():
            predictions = head(val[0][pair]).argmax(1).numpy()
        agreement.append(float(np.mean(predictions == val_predictions[pair])))
    for side in (a, b):
        side["best_pair_at_the_optimum"] = optimum_accuracy(side["best_pair"], train, val, test)
    figures = {
        "seconds": seconds,
        "speedup": seconds["sklearn_per_pair"] / seconds["batched_probe_grid"],
        "batched_probe_grid": a,
        "sklearn_per_pair": b,
        "val_accuracy_gap_points": 100 * (a["val_accuracy"] - b["val_accuracy"]),
        "test_accuracy_gap_points": 100 * (a["test_accuracy"] - b["test_accuracy"]),
        "val_prediction_agreement_min_over_pairs": min(agreement),
        "val_prediction_agreement_mean_over_pairs": float(np.mean(agreement)),
    }
    if args.sklearn_jobs > 1:
        figures[f"speedup_vs_sklearn_{args.sklearn_jobs}_jobs"] = (
            seconds[f"sklearn_per_pair_{args.sklearn_jobs}_jobs"] / seconds["batched_probe_grid"]
        )
    print(
        f"{case}: ours {seconds['batched_probe_grid']:.3f} s, sklearn {seconds['sklearn_per_pair']:.3f} s, "
        f"speedup {figures['speedup']:.2f}x; best pair ours {a['best_pair']} val {a['val_accuracy']:.4f} test "
        f"{a['test_accuracy']:.4f}, sklearn {b['best_pair']} val {b['val_accuracy']:.4f} test {b['test_accuracy']:.4f}",
        flush=True,
    )
    return figures


def targets(measured: dict) -> dict:
    """Per case: >= 20x faster, best-pair val and test accuracy within 0.5 points."""
    entries = {}
    for case, f in measured.items():
        entries[f"{case}_speedup"] = target_entry(f["speedup"], SPEEDUP_TARGET)
        for split in ("val", "test"):
            entries[f"{case}_abs_{split}_accuracy_gap_points"] = target_entry(
                abs(f[f"{split}_accuracy_gap_points"]), GAP_TARGET, higher_is_better=False
            )
    return entries


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--preset", default="small", help="U-Net preset of diffusion_classifiers.models.unet_config")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES[:3])
    parser.add_argument(
        "--data_dir", type=Path, default=None, help="holds medmnist_pneumonia/ and fashion_mnist/; default ../shared/data"
    )
    parser.add_argument(
        "--sklearn_jobs", type=int, default=2, help="also time scikit-learn over the pairs in this many processes (1: no)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 1 with --quick, else 3")
    args = parser.parse_args()
    args.data_dir = args.data_dir or data_path()
    args.num_threads = args.num_threads or 1  # both sides are timed single-threaded unless told otherwise
    device = setup(args)

    start = time.perf_counter()
    cases, settings = build_cases(args, device)
    measured = {}
    for case, (train, val, test) in cases.items():
        measured[case] = {"setting": settings[case], **measure(case, train, val, test, args, device)}
        figures = {"cases": measured, "targets": targets(measured), "total_seconds": time.perf_counter() - start}
        figures["cases_not_measured_yet"] = [name for name in cases if name not in measured]
        # written after every case: a run stopped by a time cap (the GPU suite) keeps the cases it finished
        report("unet_features_bench_probe", args, device, figures)


if __name__ == "__main__":
    main()

"""Label-free k-means on U-Net features: which rule picks the feature, and does it beat raw pixels.

For one trained U-Net and a labeled data set, every (block, t) feature of train/val/test is extracted once; then each
rule chooses the feature and its normalisation without labels and k-means clusters the test split, which the labels
only score (Hungarian accuracy). Raw pixels get the same rule beside it. The rules cross the criterion of
`select_clustering_without_labels` (split-half `stability`, the library's default, or the cosine `silhouette` per
normalisation, the rule before 2026-12-01) with the split the choice reads (`train`, the default, or `val`).

To compare the criteria with something other than the test split, the train labels score every candidate's train
k-means; the Spearman correlation between each criterion's train scores and that accuracy says how well it ranks the
candidates (a diagnostic: no choice reads it). Target: the default rule's label-free k-means >= raw pixels'.

    python benchmarks/unet_features_bench_label_free.py --unet_dir outputs/demo/pipeline --data digits --pool 2x2
    python benchmarks/unet_features_bench_label_free.py --unet_dir DIR --data ../shared/data/medmnist_pneumonia/pneumoniamnist.npz
    python benchmarks/unet_features_bench_label_free.py --quick   # a random-init tiny U-Net on 200 digits, < 60 s

`--unet_dir`: any saved pipeline with `unet/` and `scheduler/` (the demo's `pipeline/`, the head-less
`UNetFeatureClassifierPipeline` kept by `unet_features_accuracy.py --keep_checkpoint`, or the `DDPMPipeline` it kept
before 2026-12-04). The data are read at the U-Net's size with the default preprocessing (stretched, no background
normalisation): a U-Net trained on images read otherwise is not checked for here.
"""

import time

import torch
from diffusers import DDPMScheduler, UNet2DModel
from scipy.stats import spearmanr

from _common import (
    DATA_HELP, base_parser, check_timesteps_arg, load_benchmark_data, report, setup, subsample_splits, target_entry,
)
from diffusion_classifiers.features import POOLS
from diffusion_classifiers.models import DEFAULT_TIMESTEPS, unet_config
from diffusion_classifiers.probing import kmeans_evaluate, label_free_kmeans
from diffusion_classifiers.unet_feature_study import extract_study_features


NAME = "unet_features_bench_label_free"
# rule -> (criterion of select_clustering_without_labels, the split its choice reads); the first is the library's
RULES = {
    "stability_on_train": ("stability", "train"),
    "stability_on_val": ("stability", "val"),
    "silhouette_on_train": ("silhouette", "train"),
    "silhouette_on_val": ("silhouette", "val"),
}
DEFAULT_RULE = "stability_on_train"
QUICK_SIZES = {"train": 200, "val": 100, "test": 100}
QUICK_TIMESTEPS = (50, 200)
SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "nmi")


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--unet_dir", default=None, help="a saved pipeline with unet/ and scheduler/ (required unless --quick)")
    parser.add_argument("--data", default="digits", help=DATA_HELP)
    parser.add_argument("--pool", default="mean", choices=[pool for pool in POOLS if pool], help="spatial pooling")
    parser.add_argument("--timesteps", type=int, nargs="+", default=None, help=f"default {list(DEFAULT_TIMESTEPS)}")
    parser.set_defaults(num_threads=1)
    args = parser.parse_args()
    check_timesteps_arg(parser, args.timesteps, args.unet_dir)
    if not args.quick and not args.unet_dir:
        parser.error("--unet_dir: a trained U-Net is required for a full run (only --quick uses a random one)")
    args.timesteps = args.timesteps or list(QUICK_TIMESTEPS if args.quick else DEFAULT_TIMESTEPS)
    return args


def load_unet(args):
    """The trained U-Net and its scheduler, or with --quick a random-init tiny one at 16 px."""
    if args.unet_dir:
        unet = UNet2DModel.from_pretrained(args.unet_dir, subfolder="unet")
        return unet.eval(), DDPMScheduler.from_pretrained(args.unet_dir, subfolder="scheduler")
    torch.manual_seed(args.seed)
    return UNet2DModel(**unet_config("tiny", 16)).eval(), DDPMScheduler(num_train_timesteps=1000)


def rule_figures(features: dict, splits: dict, num_classes: int, seed: int) -> dict:
    """Every rule's choice and test k-means, on the U-Net features and on raw pixels."""
    pixels = {name: {("pixels", 0): split.images.flatten(1)} for name, split in splits.items()}
    figures = {}
    for rule, (criterion, split) in RULES.items():
        scored = {}
        for source, values in (("features", features), ("pixels", pixels)):
            result = label_free_kmeans(
                values[split], values["test"], splits["test"].labels, num_classes, seed, criterion=criterion
            )
            scored[source] = {
                "feature": result["feature"], "normalization": result["normalization"],
                **{score: result[score] for score in SCORES}, "scores": result["selection"]["scores"],
            }  # fmt: skip
        scored["margin_points"] = 100 * (scored["features"]["accuracy"] - scored["pixels"]["accuracy"])
        figures[rule] = scored
    return figures


def criterion_ranking(features: dict, labels, rules: dict, num_classes: int, seed: int) -> dict:
    """Spearman correlation, over every (feature, normalisation) candidate, between each criterion's train scores
    and the candidate's train k-means accuracy (scored with the train labels: a diagnostic, never a choice)."""
    accuracy, ranking = {}, {}
    for normalization, by_key in rules[DEFAULT_RULE]["features"]["scores"].items():
        for key in by_key:
            block, timestep = key.split("/")
            x = features[(block, int(timestep))]
            accuracy[(normalization, key)] = kmeans_evaluate(x, labels, num_classes, seed, normalization=normalization)["accuracy"]
    candidates = sorted(accuracy)
    for rule, (criterion, split) in RULES.items():
        if split == "train":
            scores = rules[rule]["features"]["scores"]
            ranking[criterion] = float(spearmanr([scores[n][k] for n, k in candidates], [accuracy[c] for c in candidates])[0])
    best = max(candidates, key=accuracy.get)
    return {"spearman_with_train_kmeans_accuracy": ranking, "num_candidates": len(candidates),
            "best_train_kmeans_candidate": {"normalization": best[0], "feature": best[1], "accuracy": accuracy[best]}}  # fmt: skip


def main():
    started = time.perf_counter()
    args = parse_args()
    device = setup(args)
    unet, scheduler = load_unet(args)
    size = unet.config.sample_size
    splits = load_benchmark_data(args.data, seed=args.seed, image_size=size)
    if args.quick:
        splits = subsample_splits(splits, QUICK_SIZES, args.seed)
    features = extract_study_features(
        unet.to(device), scheduler, splits, timesteps=args.timesteps, pool=args.pool, noise_seed=args.seed,
        batch_size=64, show_progress=False,
    )  # fmt: skip
    num_classes = splits["train"].num_classes
    rules = rule_figures(features, splits, num_classes, args.seed)
    figures = {
        "data": args.data, "unet_dir": args.unet_dir, "pool": args.pool, "timesteps": args.timesteps,
        "sizes": {name: len(split) for name, split in splits.items()}, "num_classes": num_classes,
        "default_rule": DEFAULT_RULE, "rules": rules,
        "criteria": criterion_ranking(features["train"], splits["train"].labels, rules, num_classes, args.seed),
        "targets": {"label_free_kmeans_vs_raw_pixels_points": target_entry(rules[DEFAULT_RULE]["margin_points"], 0.0)},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

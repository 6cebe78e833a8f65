"""Which RC-DiT recipe gives a representation worth having? Ablations of joint training, chosen on val, 3 seeds.

Every variant trains a ViT encoder and a DiT together (`train_rc_dit`) from the same initial encoder, on the same
unlabeled train images, for the same optimizer steps; only the recipe differs (how r is read out of the encoder
and normalised). Scored on val only (this benchmark chooses the default; test stays for `rc_dit_accuracy.py`):

- the spread of r across images (raw encoder output; relative to its size) and the DiT's denoising error at
  t = 100 with each image's own r, another image's r (shuffled) and the null r (`representation_diagnostics`; a
  variant trained on hidden patches is scored on hidden patches, as it was trained; results recorded before
  2026-12-04 23:00 UTC scored every variant on whole images);
- label-free: k-means with K = number of classes on standardised r, Hungarian accuracy;
- 10-shot: nearest prototype on standardised r, 10 labelled train images per class, mean over 5 draws;
- of each, also balanced accuracy and macro-F1, the figures that count on a binary, imbalanced set
  (`--dataset pneumoniamnist`; Fashion-MNIST by default).

Baselines in the same harness: the same ViT from the same initial weights trained by SimCLR or DINO for the same
optimizer steps, batch and learning rate (`train_contrastive_encoder`, kornia views), read out by the tanh pooler
as before or by the CLS token. Floors: raw pixels and the encoder at its random initialisation (both readouts).
Each figure is given per seed and as mean and standard deviation over the seeds.

    python benchmarks/rc_dit_bench_recipe.py --quick
    python benchmarks/rc_dit_bench_recipe.py --num_threads 1    # writes benchmarks/results/rc_dit_bench_recipe.json
    python benchmarks/rc_dit_bench_recipe.py --num_threads 1 --dataset pneumoniamnist --output \
        benchmarks/results/rc_dit_bench_recipe_pneumoniamnist.json
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    SHARED_IMAGE_DATASETS,
    base_parser,
    data_path,
    load_benchmark_data,
    report,
    setup,
    subsample_splits,
    target_entry,
    training_arguments,
)
from diffusion_classifiers.metrics import classification_metrics
from diffusion_classifiers.models import build_vit_encoder, encode_representation, representation_of
from diffusion_classifiers.probing import few_shot_indices, kmeans_evaluate, prototype_classify
from diffusion_classifiers.training import (
    build_augmentation,
    representation_diagnostics,
    train_contrastive_encoder,
    train_rc_dit,
)


NAME = "rc_dit_bench_recipe"
MEAN_PATCH_BATCH_NORM = {"representation_readout": "mean_patch", "representation_norm": "batch"}
EVERY_IMAGE = {"denoiser_mask_probability": 1.0}
# the default from 2026-12-01 until hidden patches were reconstructed standardised; variants build on it
VARIANT_DEFAULT = {**MEAN_PATCH_BATCH_NORM, "denoiser_mask_ratio": 0.9, **EVERY_IMAGE}
# train_rc_dit's defaults (DEFAULT_RECIPE): the above, each hidden patch reconstructed standardised per patch
NORM_PIX_DEFAULT = {**VARIANT_DEFAULT, "masked_target": "normalized_patches"}
# variant -> train_rc_dit keywords (a variant that names no masking trains unmasked, as every recipe did before it,
# and one that names no masked_target reconstructs hidden patches as pixels);
# "shipped" is the recipe before issue 13
VARIANTS = {
    "shipped": {"representation_readout": "pooler", "representation_norm": "none"},
    "cls": {"representation_readout": "cls", "representation_norm": "none"},
    "pooler_batch_norm": {"representation_readout": "pooler", "representation_norm": "batch"},
    "cls_batch_norm": {"representation_readout": "cls", "representation_norm": "batch"},
    "mean_patch_batch_norm": MEAN_PATCH_BATCH_NORM,
    # on top of cls_batch_norm: the encoder reads a cropped, flipped view (SODA); a 3x encoder learning rate; EMA
    "cls_batch_norm_view": {"representation_readout": "cls", "representation_norm": "batch", "encoder_view": "crop_flip"},
    "cls_batch_norm_encoder_lr_3": {"representation_readout": "cls", "representation_norm": "batch", "encoder_learning_rate_scale": 3.0},
    "cls_batch_norm_ema": {"representation_readout": "cls", "representation_norm": "batch", "use_ema": True},
    # the loss weighted max(1, 1 / SNR): high-noise timesteps count, where r can tell what the image shows
    "cls_batch_norm_truncated_snr": {"representation_readout": "cls", "representation_norm": "batch", "loss_weighting": "truncated_snr"},
    "pooler_batch_norm_truncated_snr": {"representation_readout": "pooler", "representation_norm": "batch", "loss_weighting": "truncated_snr"},
    # on top of the default: where and how strongly r enters the DiT; the min-SNR weighting (gamma 5), which lowers
    # the weight of low noise, where x_t alone suffices; a slower encoder
    "mean_patch_batch_norm_per_block": {**MEAN_PATCH_BATCH_NORM, "representation_injection": "adaln_per_block"},
    "mean_patch_batch_norm_token": {**MEAN_PATCH_BATCH_NORM, "representation_injection": "token"},
    "mean_patch_batch_norm_min_snr": {**MEAN_PATCH_BATCH_NORM, "loss_weighting": "min_snr"},
    "mean_patch_batch_norm_encoder_lr_0.3": {**MEAN_PATCH_BATCH_NORM, "encoder_learning_rate_scale": 0.3},
    # an information asymmetry: 50% to 90% of the DiT's patches hidden in x_t in every image, reconstructed from r
    "mean_patch_batch_norm_masked_0.5": {**MEAN_PATCH_BATCH_NORM, "denoiser_mask_ratio": 0.5, **EVERY_IMAGE},
    "mean_patch_batch_norm_masked_0.75": {**MEAN_PATCH_BATCH_NORM, "denoiser_mask_ratio": 0.75, **EVERY_IMAGE},
    "mean_patch_batch_norm_masked_0.9": VARIANT_DEFAULT,
    # every patch hidden: the DiT a decoder of r alone, never of x_t (0.999 hides all 16 tokens at 16 px; the library
    # refuses 1.0, a DiT that cannot sample): does masking help r by more than an autoencoder's objective?
    "mean_patch_batch_norm_all_hidden": {**MEAN_PATCH_BATCH_NORM, "denoiser_mask_ratio": 0.999, **EVERY_IMAGE},
    # ... on half of the images only: the other half keeps the DiT a denoiser of whole images, as sampling needs
    "mean_patch_batch_norm_masked_0.9_half": {**MEAN_PATCH_BATCH_NORM, "denoiser_mask_ratio": 0.9, "denoiser_mask_probability": 0.5},
    # ... and the encoder reads a SimCLR view (crop, flip, brightness and contrast jitter, blur) while the DiT
    # reconstructs the clean image: what r can carry of brightness and contrast it has to guess (SODA's asymmetry)
    "mean_patch_batch_norm_masked_0.9_half_jitter_view": {**MEAN_PATCH_BATCH_NORM, "denoiser_mask_ratio": 0.9, "denoiser_mask_probability": 0.5, "encoder_view": "jitter"},
    "mean_patch_batch_norm_masked_0.9_jitter_view": {**VARIANT_DEFAULT, "encoder_view": "jitter"},
    # the default (every image masked) with what was tried on unmasked recipes: r in every block's adaLN, EMA
    # weights for evaluation, a 3x encoder learning rate, the loss weighted towards high noise
    "mean_patch_batch_norm_masked_0.9_per_block": {**VARIANT_DEFAULT, "representation_injection": "adaln_per_block"},
    "mean_patch_batch_norm_masked_0.9_ema": {**VARIANT_DEFAULT, "use_ema": True},
    "mean_patch_batch_norm_masked_0.9_encoder_lr_3": {**VARIANT_DEFAULT, "encoder_learning_rate_scale": 3.0},
    "mean_patch_batch_norm_masked_0.9_truncated_snr": {**VARIANT_DEFAULT, "loss_weighting": "truncated_snr"},
    # the DiT never sees the null r (rep_dropout 0.1 by default: a tenth of the training images get the null r, their
    # hidden patches filled in without it)
    "mean_patch_batch_norm_masked_0.9_no_null_r": {**VARIANT_DEFAULT, "rep_dropout": 0.0},
    # the encoder reads a random crop and flip of the image (no intensity jitter), the DiT the image itself
    "mean_patch_batch_norm_masked_0.9_crop_flip_view": {**VARIANT_DEFAULT, "encoder_view": "crop_flip"},
    # a hidden patch reconstructed standardised per patch (MAE's normalised-pixel target): r asked for each patch's
    # pattern rather than its brightness and contrast, what SimCLR's jitter makes its features blind to
    "mean_patch_batch_norm_masked_0.9_norm_pix": NORM_PIX_DEFAULT,
    # on top of it: every patch hidden (the DiT a decoder of r alone); the 3x encoder learning rate
    "mean_patch_batch_norm_all_hidden_norm_pix": {**NORM_PIX_DEFAULT, "denoiser_mask_ratio": 0.999},
    "mean_patch_batch_norm_masked_0.9_norm_pix_encoder_lr_3": {**NORM_PIX_DEFAULT, "encoder_learning_rate_scale": 3.0},
    # the default with fewer or more patches hidden (12 or 15 of the 16 tokens at 16 px; the default hides 14)
    "mean_patch_batch_norm_masked_0.75_norm_pix": {**NORM_PIX_DEFAULT, "denoiser_mask_ratio": 0.75},
    "mean_patch_batch_norm_masked_0.95_norm_pix": {**NORM_PIX_DEFAULT, "denoiser_mask_ratio": 0.95},
    # the default with the encoder reading another view of the image than the one the DiT reconstructs: brightness,
    # contrast and blur only (r made blind to how an image was exposed, as SimCLR's features are), a crop and flip,
    # or both (SimCLR's views)
    "mean_patch_batch_norm_masked_0.9_norm_pix_intensity_view": {**NORM_PIX_DEFAULT, "encoder_view": "intensity"},
    "mean_patch_batch_norm_masked_0.9_norm_pix_crop_flip_view": {**NORM_PIX_DEFAULT, "encoder_view": "crop_flip"},
    "mean_patch_batch_norm_masked_0.9_norm_pix_jitter_view": {**NORM_PIX_DEFAULT, "encoder_view": "jitter"},
}
DEFAULT_RECIPE = "mean_patch_batch_norm_masked_0.9_norm_pix"  # train_rc_dit's defaults
# baseline -> (train_contrastive_encoder method, its objective keywords)
BASELINES = {
    "simclr": ("simclr", {}),
    "simclr_cls": ("simclr", {"readout": "cls"}),
    "dino": ("dino", {}),
    "dino_cls": ("dino", {"readout": "cls"}),
    # BatchNorm in the head's MLP: the only DINO head above the random encoder in the 400-step trials
    "dino_cls_bn": ("dino", {"readout": "cls", "use_bn": True}),
}
# --quick checks that each mechanism runs (readout, norm, masking, view, learning-rate scale, weighting, injection;
# both objectives)
QUICK_VARIANTS = ["shipped", DEFAULT_RECIPE, "cls_batch_norm_view", "cls_batch_norm_encoder_lr_3",
                  "cls_batch_norm_truncated_snr", "mean_patch_batch_norm_token"]  # fmt: skip
QUICK_BASELINES = ["simclr", "dino_cls"]
SHOTS, EPISODES = 10, 5
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
TARGET_METRICS = ("kmeans_accuracy", "prototype_10shot_accuracy")
TARGET_METRICS_BINARY = ("kmeans_balanced_accuracy", "kmeans_macro_f1", "prototype_10shot_balanced_accuracy", "prototype_10shot_macro_f1")
# the augmentation an `encoder_view` variant's encoder reads (`build_augmentation` keywords)
ENCODER_VIEWS = {
    "crop_flip": {"strength": 0.0, "crop_scale": (0.5, 1.0)},
    "jitter": {"strength": 1.0, "crop_scale": (0.5, 1.0)},
    "intensity": {"strength": 1.0, "crop_scale": (1.0, 1.0), "flip_p": 0.0},
}


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument(
        "--variants", nargs="*", default=None, choices=list(VARIANTS),
        help=f"recipes to train; default all, with --quick {QUICK_VARIANTS}",
    )
    parser.add_argument(
        "--baselines", nargs="*", default=None, choices=list(BASELINES),
        help=f"contrastive encoders to train; default all, with --quick {QUICK_BASELINES}",
    )  # fmt: skip
    parser.add_argument(
        "--merge", nargs="+", default=None,
        help="results JSON files of earlier full runs with the same budget: summarise their runs as one, train nothing",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (0 with --quick)")
    parser.add_argument(
        "--dataset", default="fashion_mnist", choices=list(SHARED_IMAGE_DATASETS),
        help="the shared data set; on a binary (imbalanced) one the targets use balanced accuracy and macro-F1",
    )  # fmt: skip
    parser.add_argument("--image_size", type=int, default=16, help="the images resized to this side")
    parser.add_argument("--encoder_patch_size", type=int, default=4, help="the ViT's patch side, for every arm")
    parser.add_argument("--max_train_steps", type=int, default=None, help="default 400 (5 with --quick)")
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--num_train_images", type=int, default=None, help="default 10000 (256 with --quick)")
    parser.add_argument("--num_val_images", type=int, default=None, help="default 2000 (200 with --quick)")
    parser.add_argument("--dit_size", default=None, help="default XS (tiny with --quick)")
    args = parser.parse_args()
    quick = args.quick
    if args.variants is None:
        args.variants = QUICK_VARIANTS if quick else list(VARIANTS)
    if args.baselines is None:
        args.baselines = QUICK_BASELINES if quick else list(BASELINES)
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.max_train_steps = args.max_train_steps or (5 if quick else 400)
    args.num_train_images = args.num_train_images or (256 if quick else 10000)
    args.num_val_images = args.num_val_images or (200 if quick else 2000)
    args.dit_size = args.dit_size or ("tiny" if quick else "XS")
    args.encoder = {"hidden_size": 32, "num_layers": 2, "num_heads": 2} if quick else {"hidden_size": 128, "num_layers": 4, "num_heads": 4}
    return args


def new_encoder(args, seed: int):
    torch.manual_seed(seed)
    return build_vit_encoder(image_size=args.image_size, num_channels=1, patch_size=args.encoder_patch_size, **args.encoder)


def scores(features: dict, splits: dict, seed: int) -> dict:
    """k-means (K = classes, standardised) on val, and 10-shot prototypes from train scored on val: accuracy,
    balanced accuracy and macro-F1 of each."""
    train, val = splits["train"], splits["val"]
    x_train, x_val = (features[name].float().numpy() for name in ("train", "val"))
    y_val = np.asarray(val.labels)
    kmeans = kmeans_evaluate(x_val, val.labels, val.num_classes, seed=seed)
    episodes = []
    for episode in range(EPISODES):
        index = few_shot_indices(train.labels, SHOTS, seed=seed * 100 + episode, num_classes=train.num_classes)
        predicted, _ = prototype_classify(x_train[index], np.asarray(train.labels)[index], x_val, train.num_classes, standardize=True)
        episodes.append(classification_metrics(y_val, predicted, num_classes=val.num_classes))
    return {
        **{f"kmeans_{metric}": float(kmeans[metric]) for metric in METRICS},
        **{f"prototype_10shot_{metric}": float(np.mean([e[metric] for e in episodes])) for metric in METRICS},
    }


@torch.no_grad()
def features_of(function, splits: dict, batch_size: int = 500) -> dict:
    return {name: torch.cat([function(chunk).float().cpu() for chunk in split.images.split(batch_size)]) for name, split in splits.items()}


def run_variant(name: str, args, splits: dict, seed: int) -> dict:
    recipe = {"denoiser_mask_ratio": 0.0, "masked_target": "pixels", **VARIANTS[name]}
    use_ema = recipe.pop("use_ema", False)
    if "encoder_view" in recipe:
        recipe["encoder_view"] = build_augmentation(args.image_size, 1, **ENCODER_VIEWS[recipe["encoder_view"]])
    with tempfile.TemporaryDirectory() as tmp:
        run_args = training_arguments(
            tmp, args.max_train_steps, args.learning_rate, min(100, args.max_train_steps // 10), seed,
            train_batch_size=args.train_batch_size, use_ema=use_ema, num_sample_images=0,
        )  # fmt: skip
        start = time.perf_counter()
        encoder, transformer, scheduler, summary = train_rc_dit(
            run_args, splits["train"].images, new_encoder(args, seed), dit_size=args.dit_size, **recipe
        )
        seconds = time.perf_counter() - start
    result = scores(features_of(lambda x: representation_of(encoder, transformer, x), splits), splits, seed)
    diagnostics = representation_diagnostics(
        encoder, transformer, scheduler, splits["val"].images[:512], seed=seed,
        mask_ratio=recipe["denoiser_mask_ratio"], masked_target=recipe["masked_target"],
    )  # fmt: skip
    return {**result, **diagnostics, "final_loss": summary.final_loss, "train_seconds": round(seconds, 1)}


def baseline_readout(name: str) -> str:
    """How a baseline's representation is read (`encode_representation`): as its head was trained (the pooler unless
    its objective names another readout, the contrastive models' default)."""
    return BASELINES[name][1].get("readout", "pooler")


def run_baseline(name: str, args, splits: dict, seed: int) -> dict:
    method, objective = BASELINES[name]
    with tempfile.TemporaryDirectory() as tmp:
        run_args = training_arguments(
            tmp, args.max_train_steps, args.learning_rate, min(100, args.max_train_steps // 10), seed,
            train_batch_size=args.train_batch_size, num_sample_images=0,
        )  # fmt: skip
        start = time.perf_counter()
        encoder = train_contrastive_encoder(run_args, splits["train"].images, new_encoder(args, seed), method, **objective)
        seconds = time.perf_counter() - start
    result = scores(features_of(lambda x: encode_representation(encoder, x, baseline_readout(name)), splits), splits, seed)
    return {**result, "train_seconds": round(seconds, 1)}


def floors(args, splits: dict, seed: int) -> dict:
    encoder = new_encoder(args, seed).eval()
    return {
        "raw_pixels": scores(features_of(lambda x: x.flatten(1), splits), splits, seed),
        "random_encoder_pooler": scores(features_of(lambda x: encode_representation(encoder, x, "pooler"), splits), splits, seed),
        "random_encoder_cls": scores(features_of(lambda x: encode_representation(encoder, x, "cls"), splits), splits, seed),
    }


def summarise(per_seed: list) -> dict:
    """Mean and spread over the seeds of every figure all of them have (runs merged from before a figure existed
    lack it)."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and k != "seed" and all(k in r for r in per_seed)]
    return {k: {"mean": float(np.mean([r[k] for r in per_seed])), "std": float(np.std([r[k] for r in per_seed]))} for k in keys}


def targets(summary: dict, num_classes: int) -> dict:
    """The issue's targets for the default recipe's r on val, in points (mean over seeds): k-means and 10-shot
    accuracy at least the best contrastive baseline's, the raw pixels' and the random encoder's (where each ran); on
    a binary (imbalanced) set balanced accuracy and macro-F1 instead of accuracy. A run without the default recipe
    (an ablation) scores each of its variants against the same targets, its name before each target's."""
    scored = {DEFAULT_RECIPE: ""} if DEFAULT_RECIPE in summary else {
        name: f"{name}_" for name in summary if name in VARIANTS
    }  # fmt: skip
    references = {"best_contrastive_baseline": [name for name in BASELINES if name in summary],
                  "raw_pixels": ["raw_pixels"], "random_encoder": ["random_encoder_pooler", "random_encoder_cls"]}  # fmt: skip
    entries = {}
    for recipe, prefix in scored.items():
        for reference, names in references.items():
            if not names:
                continue
            for metric in TARGET_METRICS_BINARY if num_classes == 2 else TARGET_METRICS:
                best = max(summary[name][metric]["mean"] for name in names)
                margin = 100 * (summary[recipe][metric]["mean"] - best)
                entries[f"{prefix}{metric}_margin_over_{reference}_points"] = target_entry(round(margin, 2), 0.0)
    return entries


def merged_runs(paths: list, dataset: str) -> tuple[dict, list]:
    """The per-seed results of earlier full runs of this benchmark on `dataset` with the same budget (seeds aside; for a name and
    seed found in several files, the first file's), and their commands, dates and wall times: one long run split
    across processes or machines, by arm or by seed, summarised as one."""
    runs, commands, budget = {}, [], None
    for path in paths:
        record = json.loads(Path(path).read_text())
        figures = record["figures"]
        if figures["budget"]["dataset"] != dataset:
            raise ValueError(f"--merge: {path} ran on {figures['budget']['dataset']}, expected --dataset {dataset}")
        if budget is not None and comparable_budget(figures["budget"]) != budget:
            raise ValueError(f"--merge: {path} has another budget than {paths[0]}: {figures['budget']} vs {budget}")
        budget = comparable_budget(figures["budget"])
        commands.append({"command": record["command"], "date_utc": record["environment"]["date_utc"],
                         "total_wall_seconds": figures["total_wall_seconds"]})  # fmt: skip
        commands.extend(figures.get("merged_from", []))  # the runs an earlier merge was made of
        for name, per_seed in figures["per_seed"].items():
            merged = runs.setdefault(name, [])
            seen = {run["seed"] for run in merged}
            merged.extend(run for run in per_seed if run["seed"] not in seen)
    return runs, commands


def comparable_budget(budget: dict) -> dict:
    """A run's budget without its seeds; runs from before `--encoder_patch_size` used ViT patches of 4."""
    return {**{k: v for k, v in budget.items() if k != "seeds"}, "encoder": {"patch_size": 4, **budget["encoder"]}}


def train_and_score(args, splits: dict) -> dict:
    runs = {name: [] for name in ["raw_pixels", "random_encoder_pooler", "random_encoder_cls", *args.variants, *args.baselines]}
    for seed in args.seeds:
        for name, result in floors(args, splits, seed).items():
            runs[name].append({"seed": seed, **result})
        for name, run in [(n, run_variant) for n in args.variants] + [(n, run_baseline) for n in args.baselines]:
            runs[name].append({"seed": seed, **run(name, args, splits, seed)})
            print(name, seed, {k: round(v, 4) for k, v in runs[name][-1].items() if isinstance(v, float)}, flush=True)
    return runs


def main():
    args = parse_args()
    device = setup(args)
    start = time.perf_counter()
    splits = load_benchmark_data(str(data_path(*SHARED_IMAGE_DATASETS[args.dataset])), image_size=args.image_size, seed=0)
    splits = subsample_splits(splits, {"train": args.num_train_images, "val": args.num_val_images}, 0)
    runs, merged_from = merged_runs(args.merge, args.dataset) if args.merge else (train_and_score(args, splits), [])
    summary = {name: summarise(per_seed) for name, per_seed in runs.items()}
    figures = {
        "budget": {
            "dataset": args.dataset, "image_size": args.image_size, "optimizer_steps": args.max_train_steps,
            "train_batch_size": args.train_batch_size, "learning_rate": args.learning_rate, "dit_size": args.dit_size,
            "encoder": {**args.encoder, "patch_size": args.encoder_patch_size}, "num_train_images": len(splits["train"].labels),
            "num_val_images": len(splits["val"].labels),
            "seeds": sorted({run["seed"] for per_seed in runs.values() for run in per_seed}),
        },
        "default_recipe": DEFAULT_RECIPE,
        "variants": {name: VARIANTS[name] for name in runs if name in VARIANTS},
        "baselines": {name: {"method": BASELINES[name][0], **BASELINES[name][1]} for name in runs if name in BASELINES},
        "summary": summary,
        "targets": targets(summary, splits["train"].num_classes),
        "per_seed": runs,
        "merged_from": merged_from,
        "total_wall_seconds": round(time.perf_counter() - start, 1),
        "device": str(device),
    }  # fmt: skip
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

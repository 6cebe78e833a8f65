"""Feature extraction in bf16 and channels-last vs float32: images/s, feature error, the same chosen (block, t).

A U-Net trained briefly on PneumoniaMNIST (`train_ddpm_unet`, the library's preset) is copied four ways: float32
(the reference), float32 with channels-last weights, bfloat16, bfloat16 channels-last. `DiffusionFeatureExtractor`
runs each copy in its own dtype and layout (it casts the noised input to the U-Net's dtype and returns float32
features), so no option of the extractor is involved. For each variant:

- images/s of extracting every block at every timestep of `DEFAULT_TIMESTEPS` (the study's workload) on the test
  split, the variants timed round-robin so that load from other processes hits each alike;
- the feature error: max over (block, t) of ||f - f_fp32|| / ||f_fp32|| (Frobenius, test split), against a stated
  tolerance. float32 with another layout only reorders sums: 2^-24 per rounding times a few hundred terms is far
  below 1e-4 (the tolerance). bfloat16 keeps 8 significant bits (unit round-off 2^-9 = 2e-3); a block's output
  passes some ten rounded layers whose errors add about in quadrature while GroupNorm renormalises, so about 1e-2 is
  expected and 5e-2 is the tolerance;
- the probe grid (`fit_probe_grid` on train, chosen on val): the chosen (block, t) must be fp32's, and the test
  accuracy of the chosen head is reported beside fp32's.

On CPU bf16 convolutions may run slower than float32: that is measured and reported as it is. The GPU configuration
is the default on CUDA (1,000 training steps of the small preset, 2,000 / 500 / 1,000 train / val / test images);
the CPU run is smaller (60 steps, 300 / 150 / 150 images), so its choice of (block, t) rests on a weak model, and
still slow: bf16 extraction ran at about 1 image/s (6 timesteps) on the project's 2-core CPU, some 30 minutes in all.

    python benchmarks/unet_features_bench_precision.py --quick
    python benchmarks/unet_features_bench_precision.py --num_threads 2   # writes results/unet_features_bench_precision.json
"""

import copy
import tempfile

import torch
from diffusers.utils import logging as diffusers_logging

from _common import base_parser, data_path, load_benchmark_data, median_seconds, report, setup, subsample_splits, target_entry, training_arguments
from diffusion_classifiers.features import DiffusionFeatureExtractor
from diffusion_classifiers.probing import fit_probe_grid
from diffusion_classifiers.training import train_ddpm_unet
from diffusion_classifiers.unet_feature_study import DEFAULT_TIMESTEPS

VARIANTS = {  # name: (dtype, channels_last)
    "fp32": (torch.float32, False),
    "fp32_channels_last": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "bf16_channels_last": (torch.bfloat16, True),
}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # relative Frobenius error of the features (derived above)


def run_sizes(args, device: torch.device) -> dict:
    if args.quick:
        return {"image_size": 16, "preset": "tiny", "train_steps": 5, "splits": {"train": 64, "val": 32, "test": 32}, "timesteps": [100]}
    gpu = device.type == "cuda"
    return {
        "image_size": 28, "preset": "small", "train_steps": 1000 if gpu else 60,
        "splits": {"train": 2000, "val": 500, "test": 1000} if gpu else {"train": 300, "val": 150, "test": 150},
        "timesteps": list(DEFAULT_TIMESTEPS),
    }  # fmt: skip


def variant_of(unet, dtype: torch.dtype, channels_last: bool):
    variant = copy.deepcopy(unet).to(dtype=dtype)
    return variant.to(memory_format=torch.channels_last) if channels_last else variant


def relative_error(features: dict, reference: dict) -> float:
    return max(float((features[key] - reference[key]).norm() / reference[key].norm()) for key in reference)


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--batch_size", type=int, default=None, help="images per extraction call; default 32 quick, 128 else")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; default 1 with --quick, else 3")
    args = parser.parse_args()
    device = setup(args)
    diffusers_logging.set_verbosity_error()  # the copies are cast with `.to(dtype)` on purpose: no warning per copy
    sizes = run_sizes(args, device)
    batch_size = args.batch_size or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)

    splits = load_benchmark_data(str(data_path("medmnist_pneumonia", "pneumoniamnist.npz")), image_size=sizes["image_size"], seed=args.seed)
    splits = subsample_splits(splits, sizes["splits"], args.seed)
    with tempfile.TemporaryDirectory() as output_dir:
        train_args = training_arguments(output_dir, sizes["train_steps"], 5e-4, min(50, sizes["train_steps"] // 5), args.seed)
        train_args.num_sample_images = 0
        unet, scheduler, _ = train_ddpm_unet(train_args, splits["train"].images, preset=sizes["preset"])
    unet = unet.to(device)
    extractors = {name: DiffusionFeatureExtractor(variant_of(unet, *spec), scheduler) for name, spec in VARIANTS.items()}
    blocks = extractors["fp32"].block_names

    def extract(name, split):
        return extractors[name].extract(splits[split].images, blocks, sizes["timesteps"], batch_size=batch_size)

    features = {name: {split: extract(name, split) for split in ("train", "val", "test")} for name in VARIANTS}
    seconds = median_seconds({name: (lambda name=name: extract(name, "test")) for name in VARIANTS}, repeats=repeats)
    num_test = len(splits["test"])

    results, targets = {}, {}
    for name, (dtype, _) in VARIANTS.items():
        grid = fit_probe_grid(
            features[name]["train"], splits["train"].labels, features[name]["val"], splits["val"].labels,
            features[name]["test"], splits["test"].labels, num_classes=splits["train"].num_classes,
        )  # fmt: skip
        error = relative_error(features[name]["test"], features["fp32"]["test"])
        results[name] = {
            "images_per_s": num_test / seconds[name],
            "speedup_over_fp32": seconds["fp32"] / seconds[name],
            "max_relative_feature_error": error,
            "tolerance": TOLERANCE[dtype],
            "chosen_pair": list(grid.best_pair),
            "chosen_val_accuracy": grid.metrics[grid.best_pair]["val"]["accuracy"],
            "chosen_test_accuracy": grid.metrics[grid.best_pair]["test"]["accuracy"],
        }
        print(f"{name}: {results[name]['speedup_over_fp32']:.2f}x fp32, feature error {error:.2e}, chose {grid.best_pair}", flush=True)
    for name in list(VARIANTS)[1:]:
        targets[f"{name}_feature_error"] = target_entry(results[name]["max_relative_feature_error"], results[name]["tolerance"], higher_is_better=False)
        targets[f"{name}_same_chosen_pair"] = target_entry(float(results[name]["chosen_pair"] == results["fp32"]["chosen_pair"]), 1.0)
    figures = {
        "setting": {**sizes, "data": "PneumoniaMNIST", "batch_size": batch_size, "repeats": repeats, "blocks": blocks,
                    "num_classes": splits["train"].num_classes, "split_sizes": {k: len(v) for k, v in splits.items()}},
        "variants": results,
        "targets": targets,
    }  # fmt: skip
    report("unet_features_bench_precision", args, device, figures)


if __name__ == "__main__":
    main()

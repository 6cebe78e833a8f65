"""Generative classification cost: the ELBO with shared noise + class pruning vs the exhaustive protocol.

Both score Fashion-MNIST test images with the same class-conditional U-Net (`train_score_sde_unet`, trained inside the
benchmark on the training split downsampled to 16 px for CPU time) by the denoising error of
`likelihood.denoising_error_scores`, and predict the class with the smallest error:

- exhaustive: every class x every timestep of an even grid of `--exhaustive_timesteps`, with INDEPENDENT noise per
  class (one call per class with its own per-image seeds); NFE = K T.
- pruned: the SAME noise and timesteps for every class (common random numbers) and adaptive pruning (Li et al.
  2023): stage s adds T_s timesteps for the classes still alive, then keeps the best k_s; NFE = sum_s T_s k_{s-1}.

Reported: NFE/image, images/s, test accuracy of both on the same images, and how often they agree.
Target: >= 5x fewer NFE at <= 1 point accuracy loss.

    python benchmarks/score_sde_bench_elbo.py --quick
"""

import json
import tempfile
import time

import numpy as np
import torch

from _common import base_parser, data_path, median_seconds, report, setup, target_entry, training_arguments
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.likelihood import denoising_error_scores
from diffusion_classifiers.training import train_score_sde_unet


def train_model(train, preset: str, steps: int, seed: int, device: torch.device):
    """A class-conditional U-Net trained `steps` steps of 64 images; returns it and the training seconds."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        args = training_arguments(output_dir, steps, 2e-3, min(50, steps // 10), seed)
        unet, _, _ = train_score_sde_unet(args, train.images, train.labels, num_classes=train.num_classes, preset=preset)
    return unet.to(device).eval(), time.perf_counter() - start


def exhaustive_scores(unet, images, num_classes: int, num_timesteps: int, weighting: str, seed: int, batch_size: int):
    """Every class at every timestep, independent noise per class: one call per class, each image with its own seed
    for that class. Returns scores `[N, K]` and NFE per image."""
    columns, nfe = [], 0
    for c in range(num_classes):
        seeds = np.random.SeedSequence(seed, spawn_key=(c,)).generate_state(len(images)).tolist()
        result = denoising_error_scores(unet, images, [c], num_timesteps=num_timesteps, weighting=weighting,
                                        seed=seeds, max_batch_size=batch_size)
        columns.append(result.scores[:, 0])
        nfe = nfe + result.nfe_per_image
    return torch.stack(columns, 1), nfe


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="U-Net preset; default tiny with --quick, else small")
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--train_steps", type=int, default=None, help="default 30 with --quick, else 500")
    parser.add_argument("--num_images", type=int, default=None, help="test images scored; default 10 quick, else 120")
    parser.add_argument("--exhaustive_timesteps", type=int, default=None, help="default 10 quick, else 50")
    parser.add_argument("--pruning", default=None,
                        help='JSON [[T_1, k_1], ...]; default [[2, 3], [3, 1]] quick, else [[5, 3], [15, 1]]')
    parser.add_argument("--weighting", default="uniform", choices=["uniform", "elbo"])
    parser.add_argument("--batch_size", type=int, default=500, help="samples per U-Net call")
    args = parser.parse_args()
    preset = args.preset or ("tiny" if args.quick else "small")
    train_steps = args.train_steps or (30 if args.quick else 500)
    num_images = args.num_images or (10 if args.quick else 120)
    exhaustive_timesteps = args.exhaustive_timesteps or (10 if args.quick else 50)
    pruning = [tuple(stage) for stage in json.loads(args.pruning or ("[[2, 3], [3, 1]]" if args.quick else "[[5, 3], [15, 1]]"))]
    device = setup(args)

    splits = load_image_classification_data(str(data_path("fashion_mnist")), image_size=args.image_size, seed=args.seed)
    unet, train_seconds = train_model(splits["train"], preset, train_steps, args.seed, device)
    test = splits["test"].subset(range(num_images))
    num_classes = test.num_classes

    results = {}

    def exhaustive():
        results["exhaustive"] = exhaustive_scores(unet, test.images, num_classes, exhaustive_timesteps,
                                                  args.weighting, args.seed, args.batch_size)

    def pruned():
        out = denoising_error_scores(unet, test.images, num_classes, num_timesteps=sum(t for t, _ in pruning),
                                     weighting=args.weighting, pruning=pruning, seed=args.seed,
                                     max_batch_size=args.batch_size)
        results["pruned"] = out.scores, out.nfe_per_image

    seconds = median_seconds({"exhaustive": exhaustive, "pruned": pruned}, repeats=1, warmup=0)
    predictions = {name: scores.argmax(1) for name, (scores, _) in results.items()}
    accuracy = {name: float((p == test.labels).float().mean()) for name, p in predictions.items()}
    nfe = {name: float(n.float().mean()) for name, (_, n) in results.items()}
    figures = {
        "setting": {
            "data": f"Fashion-MNIST, {args.image_size} px (bilinear, antialiased from 28 px)",
            "preset": preset, "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "train_steps": train_steps, "train_batch_size": 64, "train_images_seen": 64 * train_steps,
            "train_seconds": train_seconds, "test_images": num_images, "num_classes": num_classes,
            "weighting": args.weighting, "exhaustive_timesteps": exhaustive_timesteps,
            "pruning_stages": pruning, "batch_size": args.batch_size,
        },
        "nfe_per_image": nfe,
        "nfe_reduction": nfe["exhaustive"] / nfe["pruned"],
        "seconds": seconds,
        "images_per_s": {name: num_images / s for name, s in seconds.items()},
        "speedup": seconds["exhaustive"] / seconds["pruned"],
        "accuracy": accuracy,
        "accuracy_loss_points": 100 * (accuracy["exhaustive"] - accuracy["pruned"]),
        "agreement": float((predictions["exhaustive"] == predictions["pruned"]).float().mean()),
        "only_exhaustive_correct": int(((predictions["exhaustive"] == test.labels) & (predictions["pruned"] != test.labels)).sum()),
        "only_pruned_correct": int(((predictions["pruned"] == test.labels) & (predictions["exhaustive"] != test.labels)).sum()),
    }
    figures["targets"] = {  # >= 5x fewer NFE at <= 1 point of accuracy loss
        "nfe_reduction": target_entry(figures["nfe_reduction"], 5),
        "accuracy_loss_points": target_entry(figures["accuracy_loss_points"], 1, higher_is_better=False),
    }
    report("score_sde_bench_elbo", args, device, figures)


if __name__ == "__main__":
    main()

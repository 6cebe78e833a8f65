"""Feature extraction speed: early stop after the requested block, and all timesteps in one forward pass.

(a) `down_blocks.1` with early stop vs the same features from a full forward (target >= 1.5x images/s);
(b) T timesteps in one forward vs a Python loop of one call per timestep (target >= 1.3x), at the same `batch_size`
    (images per call): one forward holds batch_size * T samples, each loop forward batch_size samples.
    - the original measurement: T=5, batch_size 64 (and a variant whose forward holds 64 samples, like the loop's);
    - regimes: batch_size 1, 4, 16 and 64 at T=6. At small batches a forward's cost is mostly per-call overhead,
      which one forward pays once instead of T times; at large batches the T-times larger forward is slower per
      sample on this CPU. Every regime is reported, and `targets` says in which the target is met.
The U-Net is the library's default preset (`models.unet_config("small", 32, 1)`, what `train_ddpm_unet` builds)
with random weights: speed does not depend on the weights.

    python benchmarks/unet_features_bench_extraction.py --quick
"""

import torch
from diffusers import DDPMScheduler, UNet2DModel

from _common import base_parser, median_seconds, report, setup, target_entry
from diffusion_classifiers.features import DiffusionFeatureExtractor
from diffusion_classifiers.models import unet_config

TIMESTEPS = [50, 100, 200, 400, 800]
REGIME_TIMESTEPS = [10, 50, 100, 200, 400, 800]
REGIME_BATCH_SIZES = [1, 4, 16, 64]
EARLY_STOP_TARGET, ONE_FORWARD_TARGET = 1.5, 1.3


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest difference between two feature dicts with the same keys (a check that the speed-up is free)."""
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def one_forward_vs_loop(extractor, images, block, timesteps, batch_size, repeats) -> dict:
    """Images/s of all `timesteps` in one call vs one call per timestep, both at `batch_size` images per call."""
    outputs = {}

    def one_forward():
        outputs["one"] = extractor.extract(images, [block], timesteps, batch_size=batch_size)

    def loop():
        outputs["loop"] = {}
        for t in timesteps:
            outputs["loop"].update(extractor.extract(images, [block], [t], batch_size=batch_size))

    seconds = median_seconds({"timesteps_in_one_forward": one_forward, "loop_over_timesteps": loop}, repeats=repeats)
    speedup = seconds["loop_over_timesteps"] / seconds["timesteps_in_one_forward"]
    return {
        "batch_size": batch_size,
        "num_timesteps": len(timesteps),
        "num_images": len(images),
        "samples_per_forward": {"timesteps_in_one_forward": batch_size * len(timesteps), "loop_over_timesteps": batch_size},
        "images_per_s": {name: len(images) / s for name, s in seconds.items()},
        "speedup": speedup,
        "max_abs_diff": max_abs_diff(outputs["one"], outputs["loop"]),
    }


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--preset", default="small", help="U-Net preset of diffusion_classifiers.models.unet_config")
    parser.add_argument("--block", default="down_blocks.1")
    parser.add_argument("--num_images", type=int, default=None, help="default 32 with --quick, else 512")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="default 2 with --quick, else 7")
    args = parser.parse_args()
    num_images = args.num_images or (32 if args.quick else 512)
    repeats = args.repeats or (2 if args.quick else 7)
    device = setup(args)

    torch.manual_seed(args.seed)
    unet = UNet2DModel(**unet_config(args.preset, 32, 1)).to(device)
    extractor = DiffusionFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=1000))
    images = torch.rand(num_images, 1, 32, 32, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1

    outputs = {}

    def extract(name, timesteps, early_stop=True, batch_size=args.batch_size):
        outputs[name] = extractor.extract(
            images, [args.block], timesteps, batch_size=batch_size, early_stop=early_stop
        )

    def loop_over_timesteps():
        outputs["loop"] = {}
        for t in TIMESTEPS:
            outputs["loop"].update(extractor.extract(images, [args.block], [t], batch_size=args.batch_size))

    seconds = median_seconds(
        {
            "truncated": lambda: extract("truncated", [100]),
            "full_forward": lambda: extract("full_forward", [100], early_stop=False),
            "timesteps_in_one_forward": lambda: extract("batched", TIMESTEPS),
            # batch_size counts images, so the forward above holds T times more samples than each loop forward;
            # this variant holds the forward batch equal to the loop's.
            "timesteps_in_one_forward_equal_forward_batch": lambda: extract(
                "batched_small", TIMESTEPS, batch_size=max(1, args.batch_size // len(TIMESTEPS))
            ),
            "loop_over_timesteps": loop_over_timesteps,
        },
        repeats=repeats,
    )

    # Regimes: enough images for several calls at each batch size (4 calls at 64; quick: 16 images, batch <= 16).
    regimes = []
    for batch_size in REGIME_BATCH_SIZES if not args.quick else REGIME_BATCH_SIZES[:3]:
        count = 16 if args.quick else max(64, 4 * batch_size)
        regime_images = torch.rand(count, 1, 32, 32, generator=torch.Generator().manual_seed(args.seed + 1)) * 2 - 1
        regimes.append(one_forward_vs_loop(extractor, regime_images, args.block, REGIME_TIMESTEPS, batch_size, repeats))
        print(f"batch_size {batch_size}, T={len(REGIME_TIMESTEPS)}: one forward {regimes[-1]['speedup']:.2f}x the loop", flush=True)

    figures = {
        "setting": {
            "preset": args.preset,
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "block": args.block,
            "block_info": next(b for b in extractor.blocks if b.name == args.block).__dict__,
            "num_images": num_images,
            "batch_size": args.batch_size,
            "timesteps": TIMESTEPS,
            "regime_timesteps": REGIME_TIMESTEPS,
            "repeats": repeats,
        },
        "images_per_s": {name: num_images / s for name, s in seconds.items()},
        "early_stop_speedup": seconds["full_forward"] / seconds["truncated"],
        "early_stop_max_abs_diff": max_abs_diff(outputs["truncated"], outputs["full_forward"]),
        "timesteps_in_one_forward_speedup": seconds["loop_over_timesteps"] / seconds["timesteps_in_one_forward"],
        "timesteps_in_one_forward_equal_forward_batch_speedup": (
            seconds["loop_over_timesteps"] / seconds["timesteps_in_one_forward_equal_forward_batch"]
        ),
        "timesteps_max_abs_diff": max(max_abs_diff(outputs[k], outputs["loop"]) for k in ("batched", "batched_small")),
        "timesteps_in_one_forward_regimes": regimes,
    }
    # the one-forward target in the original measurement (batch_size, T=5), then in every regime
    figures["targets"] = {
        "early_stop_speedup": target_entry(figures["early_stop_speedup"], EARLY_STOP_TARGET),
        "timesteps_in_one_forward_speedup": target_entry(figures["timesteps_in_one_forward_speedup"], ONE_FORWARD_TARGET),
        **{
            f"timesteps_in_one_forward_speedup_batch_size_{r['batch_size']}_T_{r['num_timesteps']}": target_entry(
                r["speedup"], ONE_FORWARD_TARGET
            )
            for r in regimes
        },
    }
    report("unet_features_bench_extraction", args, device, figures)


if __name__ == "__main__":
    main()

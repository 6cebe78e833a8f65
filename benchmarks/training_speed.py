"""Training speed: images/s of this library's loop vs a plain fp32 loop, same model, same batch, one run.

The plain loop is written as diffusers' `examples/unconditional_image_generation/train_unconditional.py` trains:
the model in float32 on the device, `torch.optim.AdamW` with its default kernels, a cosine schedule, gradient
clipping, diffusers' `EMAModel` (its default per-parameter updates) and the loss read back every step. The library
loop is `diffusion_classifiers.training.train` as a user runs it: on CUDA with `--mixed_precision bf16` (and
what the loop turns on by itself there: TF32, channels-last U-Nets, fused AdamW, foreach EMA), on CPU with its
defaults (the plain path: each option measured no faster there). Both train with EMA and the same loss object
(`DenoisingLoss`, `RCDiTLoss`), on the same in-memory images.

A step's time is the interval between consecutive calls of the loss (the CUDA queue synchronised at each), so it
counts everything a step does (loading, forward, backward, optimizer, EMA, logging) and nothing of the setup or
the final checkpoint; the first `--warmup_steps` intervals of each run are dropped and the runs alternate
(plain, library, plain, ...) so that load from other processes hits both alike. Models:

- `unet`: the U-Net preset of the U-Net-features method (unconditional `UNet2DModel`);
- `score_sde_unet`: the class-conditional U-Net of the Score-SDE classifier (`num_class_embeds`);
- `rc_dit`: RC-DiT (ViT encoder + DiT trained together), pixel space.

On CPU also each GPU option alone on the plain loop (channels-last, fused AdamW, foreach EMA, bf16 autocast; the
U-Net preset): the measurement behind turning them on only on CUDA.

On CUDA also model FLOP utilisation (MFU) of a DiT-S/2-sized RC-DiT on 64 px RGB images (1,024 tokens) trained
by the library loop: FLOPs of one training step counted by `torch.utils.flop_counter.FlopCounterMode`, times
steps/s, over the card's dense bf16 peak (`--peak_tflops`, default 989: NVIDIA's H100/H200 SXM datasheet figure).
On CPU the MFU is recorded as not measured. `--torch_compile` also times the library loop compiled, in each of
`--torch_compile_modes` ("reduce-overhead" replays CUDA graphs), and the MFU model so; `--mfu_batch_sizes` tries
several batches. Each model's target is met by the fastest library configuration a user can choose by its flags
(named in the target's entry).

    python benchmarks/training_speed.py --quick
    python benchmarks/training_speed.py --num_threads 2      # writes benchmarks/results/training_speed.json
"""

import argparse
import os
import statistics
import tempfile
import time
from functools import partial

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: a bar per run would bury the results

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from _common import base_parser, report, setup, target_entry
from diffusion_classifiers.models import RepresentationConditionedDiTModel, build_vit_encoder, rc_dit_config, unet_config
from diffusion_classifiers.training import DenoisingLoss, RCDiTJointModel, RCDiTLoss, TrainingArguments, train
from diffusion_classifiers.training.arguments import COMPILE_MODES

MODELS = ["unet", "score_sde_unet", "rc_dit"]
NUM_CLASSES = 10
SPEEDUP_TARGET = {"cuda": 1.5, "cpu": 1.0}
MFU_TARGET = 0.35
DATASHEET_PEAK_TFLOPS = 989.0  # dense bf16, NVIDIA H100/H200 SXM datasheet (1,979 with 2:4 sparsity)


# ------------------------------------------------------------------------------------------------------------------
# The models, the data and the loss of each case
# ------------------------------------------------------------------------------------------------------------------


def case_sizes(args, device: torch.device) -> dict:
    """Model sizes: tiny at 16 px with --quick; the library's defaults at 32 px otherwise (RC-DiT XS on CPU, S on
    CUDA, as each would be trained there)."""
    if args.quick:
        return {"image_size": 16, "unet_preset": "tiny", "dit_size": "tiny", "encoder_hidden_size": 32}
    gpu = device.type == "cuda"
    return {"image_size": 32, "unet_preset": "small", "dit_size": "S" if gpu else "XS", "encoder_hidden_size": 192 if gpu else 128}


def build_case(name: str, sizes: dict, seed: int, image_size=None, num_channels: int = 1, dit_size=None, patch_size=None):
    """`(make_model, loss_fn)`: a function building the case's model with the same initial weights at every call,
    and its loss."""
    image_size = image_size or sizes["image_size"]
    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def seeded(build):
        def make():
            torch.manual_seed(seed)
            return build()

        return make

    if name == "unet":
        return seeded(lambda: UNet2DModel(**unet_config(sizes["unet_preset"], image_size, num_channels))), DenoisingLoss(scheduler)
    if name == "score_sde_unet":
        config = unet_config(sizes["unet_preset"], image_size, num_channels, num_class_embeds=NUM_CLASSES)
        return seeded(lambda: UNet2DModel(**config)), DenoisingLoss(scheduler, conditional=True)
    if name == "rc_dit":
        width = sizes["encoder_hidden_size"]

        def build():
            encoder = build_vit_encoder(image_size, num_channels, hidden_size=width, num_layers=4, num_heads=4, patch_size=8 if image_size >= 64 else 4)
            config = rc_dit_config(dit_size or sizes["dit_size"], image_size, num_channels, width, patch_size=patch_size)
            return RCDiTJointModel(encoder, RepresentationConditionedDiTModel(**config))

        return seeded(build), RCDiTLoss(scheduler)
    raise ValueError(f"expected a model in {MODELS}, got {name!r}")


def make_dataset(num_images: int, image_size: int, num_channels: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(num_images, num_channels, image_size, image_size, generator=generator) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    return TensorDataset(images, labels)


class StepClock:
    """Wraps a loss: records the time of every call, after the device has finished the previous step's work."""

    def __init__(self, loss_fn, device: torch.device):
        self.loss_fn, self.device, self.times = loss_fn, device, []

    def __call__(self, model, batch):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return self.loss_fn(model, batch)

    def step_seconds(self, warmup_steps: int) -> list:
        return [b - a for a, b in zip(self.times[warmup_steps:], self.times[warmup_steps + 1 :])]


# ------------------------------------------------------------------------------------------------------------------
# The two loops
# ------------------------------------------------------------------------------------------------------------------


def plain_loop(
    model, dataset, loss_fn, device: torch.device, batch_size: int, steps: int, seed: int,
    channels_last: bool = False, fused_adamw: bool = False, ema_foreach: bool = False, bf16: bool = False,
) -> None:  # fmt: skip
    """`steps` optimizer steps as diffusers' train_unconditional.py makes them (float32, --use_ema); the keyword
    options turn on one speed option of the library loop at a time (`cpu_option_speedups`)."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8, fused=fused_adamw or None
    )
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=min(10, steps), num_training_steps=steps)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75, foreach=ema_foreach)
    ema.to(device)
    if bf16:
        model.forward = torch.autocast(device.type, dtype=torch.bfloat16)(model.forward)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    step = 0
    while step < steps:
        for batch in loader:
            batch = [tensor.to(device) for tensor in batch]
            loss = loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            ema.step(model.parameters())
            loss.detach().item()  # the example logs the loss every step
            step += 1
            if step == steps:
                return


def library_loop(model, dataset, loss_fn, device: torch.device, batch_size: int, steps: int, seed: int, **overrides) -> None:
    """`steps` optimizer steps of `training.train` as a user runs it on `device` (bf16 on CUDA); `overrides` change
    its flags (the GPU ablations)."""
    with tempfile.TemporaryDirectory() as output_dir:
        flags = dict(
            output_dir=output_dir, train_batch_size=batch_size, max_train_steps=steps, learning_rate=1e-4,
            lr_warmup_steps=min(10, steps), checkpointing_steps=steps, use_ema=True, seed=seed, num_sample_images=0,
            mixed_precision="bf16" if device.type == "cuda" else "no",
        )  # fmt: skip
        if overrides.get("torch_compile"):
            # a fresh compiler, as in a user's own process: dynamo's automatic dynamic shapes and recompile limit are
            # shared by every model here (accelerate's autocast wrapper is one code object), so a later run would
            # compile a symbolic batch size, or after 8 bf16 runs silently run eager; this also frees CUDA graphs
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the runs before this one hold no memory it could need
        train(TrainingArguments(**{**flags, **overrides}), model, dataset, loss_fn)


def loops_to_time(args, device: torch.device) -> dict:
    """The plain loop, the library loop, and on CUDA the library loop without one option at a time (what each
    contributes: --ablations, default on CUDA); with --torch_compile also compiled in each of --torch_compile_modes
    (and with --ablations also compiled without bf16)."""
    loops = {"plain_fp32": plain_loop, "library": library_loop}
    if args.ablations:
        loops["library_without_bf16"] = partial(library_loop, mixed_precision="no")
        loops["library_without_channels_last"] = partial(library_loop, channels_last=False)
    for mode in args.torch_compile_modes if args.torch_compile else []:
        name = "library_compiled" + ("" if mode == "default" else f"_{mode}")
        compiled = dict(torch_compile=True, torch_compile_mode=mode)
        loops[name] = partial(library_loop, **compiled)
        if args.ablations:
            loops[f"{name}_without_bf16"] = partial(library_loop, **compiled, mixed_precision="no")
    return loops


def best_library_loop(case: dict) -> tuple:
    """The fastest of the library's configurations a user can choose by its flags (name, speed-up over plain)."""
    return max(case["speedup_over_plain"].items(), key=lambda item: item[1])


CPU_OPTIONS = {  # each GPU option of the library loop, alone, on the plain loop
    "channels_last": {"channels_last": True},
    "fused_adamw": {"fused_adamw": True},
    "ema_foreach": {"ema_foreach": True},
    "bf16_autocast": {"bf16": True},
}


def cpu_option_speedups(sizes, args, device, batch_size) -> dict:
    """Speed-up of each option alone over the plain loop, on the U-Net preset: the measurement behind enabling them
    on CUDA only (the library's CPU path is the plain one)."""
    make_model, loss_fn = build_case("unet", sizes, args.seed)
    dataset = make_dataset(batch_size * (args.steps + 2), sizes["image_size"], 1, args.seed)
    variants = {"plain_fp32": {}, **CPU_OPTIONS}
    seconds = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, options in variants.items():
            clock = StepClock(loss_fn, device)
            plain_loop(make_model(), dataset, clock, device, batch_size, args.steps, args.seed, **options)
            seconds[name] += clock.step_seconds(args.warmup_steps)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    speedups = {name: median["plain_fp32"] / median[name] for name in CPU_OPTIONS}
    print("CPU options alone: " + ", ".join(f"{name} {value:.2f}x" for name, value in speedups.items()), flush=True)
    return {"model": "unet", "batch_size": batch_size, "speedup_over_plain": speedups}


def compare_loops(name, sizes, args, device, batch_size) -> dict:
    make_model, loss_fn = build_case(name, sizes, args.seed)
    dataset = make_dataset(batch_size * (args.steps + 2), sizes["image_size"], 1, args.seed)
    loops = loops_to_time(args, device)
    seconds = {loop_name: [] for loop_name in loops}
    for _ in range(args.repeats):
        for loop_name, run in loops.items():  # round-robin: load from other processes hits every loop alike
            clock = StepClock(loss_fn, device)
            run(make_model(), dataset, clock, device, batch_size, args.steps, args.seed)
            seconds[loop_name] += clock.step_seconds(args.warmup_steps)
    median = {loop_name: statistics.median(values) for loop_name, values in seconds.items()}
    result = {
        "batch_size": batch_size,
        "timed_steps_per_loop": {loop_name: len(values) for loop_name, values in seconds.items()},
        "images_per_s": {loop_name: batch_size / s for loop_name, s in median.items()},
        "speedup_over_plain": {loop_name: median["plain_fp32"] / s for loop_name, s in median.items() if loop_name != "plain_fp32"},
    }
    print(f"{name}: library {result['speedup_over_plain']['library']:.2f}x the plain fp32 loop", flush=True)
    return result


# ------------------------------------------------------------------------------------------------------------------
# Model FLOP utilisation (CUDA)
# ------------------------------------------------------------------------------------------------------------------


def training_step_flops(model, loss_fn, batch) -> int:
    """FLOPs of one training step (forward and backward of the loss), counted by `FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measured_bf16_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """The bf16 matrix-product rate this card reaches (random operands), a measured ceiling beside the datasheet's."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def model_flop_utilisation(args, device: torch.device) -> dict:
    """MFU of a DiT-S/2-sized RC-DiT (hidden 384, 12 blocks, 6 heads, patch 2) on 64 px RGB images trained by the
    library loop (bf16)."""
    sizes = {"image_size": 64, "encoder_hidden_size": 384}
    make_model, loss_fn = build_case("rc_dit", sizes, args.seed, num_channels=3, dit_size="S", patch_size=2)
    compile_modes = [None] + (list(args.torch_compile_modes) if args.torch_compile else [])
    results, flops_per_step = {}, {}
    for batch_size in args.mfu_batch_sizes:
        dataset = make_dataset(batch_size * (args.steps + 2), 64, 3, args.seed)
        batch = [tensor.to(device) for tensor in dataset[:batch_size]]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            flops = flops_per_step[batch_size] = training_step_flops(make_model().to(device), loss_fn, batch)
        for mode in compile_modes:
            clock = StepClock(loss_fn, device)
            compiled = dict(torch_compile=True, torch_compile_mode=mode) if mode else {}
            library_loop(make_model(), dataset, clock, device, batch_size, args.steps, args.seed, **compiled)
            step = statistics.median(clock.step_seconds(args.warmup_steps))
            achieved = flops / step / 1e12
            name = ("eager" if mode is None else "compiled" if mode == "default" else f"compiled_{mode}") + (
                "" if len(args.mfu_batch_sizes) == 1 else f"_batch_{batch_size}"
            )
            results[name] = {
                "batch_size": batch_size, "step_seconds": step, "images_per_s": batch_size / step,
                "achieved_tflops": achieved, "mfu": achieved / args.peak_tflops,
            }  # fmt: skip
    ceiling = measured_bf16_matmul_tflops(device) if device.type == "cuda" else None
    best = max(results.values(), key=lambda r: r["mfu"])
    return {
        "model": "RC-DiT, DiT-S/2 sized (hidden 384, 12 blocks, 6 heads, patch 2) + ViT encoder (384 wide, 4 blocks, patch 8)",
        "input": "64 px RGB pixels, 1024 DiT tokens",
        "batch_size": best["batch_size"],
        "flops_per_step": flops_per_step[best["batch_size"]],
        "peak_tflops_used": args.peak_tflops,
        "peak_source": "NVIDIA H100/H200 SXM datasheet, dense bf16" if args.peak_tflops == DATASHEET_PEAK_TFLOPS else "--peak_tflops",
        "measured_bf16_matmul_tflops": ceiling,
        "runs": results,
        "mfu": best["mfu"],
        "mfu_of_measured_matmul_rate": best["achieved_tflops"] / ceiling if ceiling else None,
    }


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--batch_size", type=int, default=None, help="default 8 with --quick, 16 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="steps per run; default 4 with --quick, 8 on CPU, 30 on CUDA")
    parser.add_argument("--warmup_steps", type=int, default=None, help="first step intervals dropped per run; default 1, 10 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each loop, alternating; default 1 with --quick, else 2")
    parser.add_argument("--torch_compile", action="store_true", help="also time the library loop with --torch_compile")
    parser.add_argument(
        "--ablations", action=argparse.BooleanOptionalAction, default=None,
        help="also time the library loop without bf16 and without channels-last; default: on CUDA only",
    )  # fmt: skip
    parser.add_argument("--mfu", action=argparse.BooleanOptionalAction, default=None, help="measure MFU; default: on CUDA only")
    parser.add_argument("--mfu_batch_sizes", type=int, nargs="+", default=[128], help="batches of the MFU runs; default 128")
    parser.add_argument(
        "--torch_compile_modes", nargs="+", choices=COMPILE_MODES, default=["default"],
        help="with --torch_compile, the torch.compile modes timed; default: default",
    )  # fmt: skip
    parser.add_argument("--peak_tflops", type=float, default=DATASHEET_PEAK_TFLOPS, help="the card's dense bf16 peak")
    args = parser.parse_args()
    device = setup(args)
    gpu = device.type == "cuda"
    args.ablations = gpu if args.ablations is None else args.ablations
    args.mfu = gpu if args.mfu is None else args.mfu
    batch_size = args.batch_size or (8 if args.quick else 64 if gpu else 16)
    args.steps = args.steps or (4 if args.quick else 30 if gpu else 8)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (10 if gpu and not args.quick else 1)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.steps - args.warmup_steps < 2:
        parser.error(f"--steps: expected at least --warmup_steps + 2 = {args.warmup_steps + 2}, got {args.steps}")
    sizes = case_sizes(args, device)

    cases = {name: compare_loops(name, sizes, args, device, batch_size) for name in args.models}
    cpu_options = cpu_option_speedups(sizes, args, device, batch_size) if device.type == "cpu" else None
    target = SPEEDUP_TARGET[device.type if device.type in SPEEDUP_TARGET else "cpu"]
    targets = {}
    for name, case in cases.items():
        loop_name, speedup = best_library_loop(case)
        targets[f"{name}_library_vs_plain_speedup"] = {**target_entry(speedup, target), "loop": loop_name}
    mfu = model_flop_utilisation(args, device) if args.mfu else None
    if gpu:
        targets["rc_dit_s2_mfu"] = target_entry(mfu["mfu"], MFU_TARGET)
    else:  # a CPU MFU (--mfu) is a dry run of the code, not a figure against a GPU's peak
        mfu = mfu or "not measured: MFU is a GPU figure (no CUDA device in this run)"
        targets["rc_dit_s2_mfu"] = {
            "value": None, "target": MFU_TARGET, "met": None, "higher_is_better": True, "note": "not measured on CPU",
        }  # fmt: skip
    figures = {
        "setting": {**sizes, "steps_per_run": args.steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats,
                    "library_mixed_precision": "bf16" if gpu else "no", "ema": True},
        "cases": cases,
        "cpu_options": cpu_options,
        "mfu": mfu,
        "targets": targets,
    }  # fmt: skip
    report("training_speed", args, device, figures)


if __name__ == "__main__":
    main()

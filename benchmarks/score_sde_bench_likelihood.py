"""Exact log-likelihood speed: our batched torch probability-flow ODE vs the published protocol (SciPy RK45).

The reference does what the published Score-SDE classifier code does (score_sde's `likelihood.py`): one class at a
time, the batch of images flattened into one float64 NumPy state that SciPy's `solve_ivp(method="RK45")` integrates
on the CPU, the model called from NumPy at every evaluation (the drift and the divergence by separate model calls,
as there), one Rademacher probe. Ours (`likelihood.probability_flow_log_likelihood`) solves all images x classes as
one torch state on the model's device, with

- "dopri5": our Dormand-Prince at the SAME rtol/atol as the reference,
- "default": the library default, 32 RK4 steps uniform in log-SNR (128 evaluations per class),
- "fast": the exponential multistep predictor-corrector in log-SNR (`solver="dpm3m"`, one evaluation per step),
  its step count chosen on TRAINING images (part "speed", stage "selection": the fewest of `--selection_steps`
  from which on every count's max |delta bits/dim| against our dopri5 at rtol = atol = 1e-5 is within
  `SELECTION_BOUND`, 3/4 of the target: the max over the 4x as many test rows is larger), never on the test images
  reported. "From which on": the error is not monotonic in the steps. A trained U-Net's noise prediction is a
  staircase in its timestep (steps of period 2 pi timesteps, from the highest frequency of its sinusoidal timestep
  embedding; measured on the tiny U-Net, and on one trained at continuous timesteps too), which a grid of 40-60
  nodes samples at a phase that depends on the count: on the model here 40 steps were within 0.0074 and 48 steps
  0.0146 (results/score_sde_bench_likelihood.json), so the fewest count within the bound can be a lucky one.

All integrate the same ODE with the same model, images, class labels and probes, so |delta bits/dim| against the
reference measures solver error only. Targets: fast >= 50x the reference's images/s at max |delta bpd| <= 0.01;
dopri5 >= 10x at <= 0.01.

Parts (`--parts`, default both):

- "speed": a class-conditional U-Net (`models.unet_config("tiny", 16, num_class_embeds=10)`) trained
  `--train_steps` on Fashion-MNIST downsampled to 16 px (0 = random init: speed does not depend on the weights, the
  adaptive solvers' step counts and every solver's error do), the first `--num_images` test images against all 10
  classes. `--model_dir DIR` keeps each trained U-Net in `DIR/<data>_<steps>_steps` (safetensors) and reuses it
  when present (the record then has no training seconds).
- "pneumonia": a class-conditional tiny U-Net trained briefly on PneumoniaMNIST (16 px, class-balanced batches), a
  stratified test subset scored by the default and the fast setting: AUC (of log p(x | pneumonia) - log p(x |
  normal)) and accuracy (argmax) of the resulting classifiers, NFE and images/s.

    python benchmarks/score_sde_bench_likelihood.py --quick
    python benchmarks/score_sde_bench_likelihood.py --num_threads 1 --model_dir /tmp/likelihood_models
"""

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from scipy.integrate import solve_ivp
from sklearn.metrics import roc_auc_score

from _common import base_parser, data_path, median_seconds, report, setup, target_entry, training_arguments
from diffusion_classifiers.data import load_image_classification_data, stratified_subset_indices
from diffusion_classifiers.likelihood import (
    VPSDE,
    as_eps_model,
    bits_per_dim,
    probability_flow_log_likelihood,
)
from diffusion_classifiers.likelihood.probability_flow import _rademacher
from diffusion_classifiers.likelihood.scorer_inputs import image_seeds
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.training import train_score_sde_unet

PARTS = ("speed", "pneumonia")
DEFAULT_SETTING = dict(solver="rk4", num_steps=32, step_spacing="log_snr")
FAST_SOLVER = "dpm3m"
SPEED_TARGET, DELTA_BPD_TARGET, DOPRI5_SPEED_TARGET = 50.0, 0.01, 10.0
SELECTION_BOUND = 0.75 * DELTA_BPD_TARGET

# Full-run defaults, then --quick ones (< 60 s on one idle core).
DEFAULTS = dict(num_images=16, train_steps=1000, rtol=1e-5, num_classes=None, selection_images=4, selection_rtol=1e-5,
                selection_steps=[16, 24, 32, 40, 48, 56, 64, 80],
                pneumonia_train_steps=300, pneumonia_test_images=96)
QUICK = dict(num_images=1, train_steps=0, rtol=1e-2, num_classes=2, selection_images=1, selection_rtol=1e-2,
             selection_steps=[16, 48],
             pneumonia_train_steps=2, pneumonia_test_images=2)


def build_model(train, steps: int, seed: int, device: torch.device, model_dir=None, class_balanced: bool = False):
    """A class-conditional tiny U-Net (16 px) trained `steps` steps on `train` (0: random init), loaded from
    `model_dir` when an earlier run saved it there; returns the model, its scheduler and the training seconds (None
    when loaded)."""
    if model_dir is not None and (Path(model_dir) / "unet").exists():
        unet = UNet2DModel.from_pretrained(Path(model_dir) / "unet")
        return unet.to(device).eval(), DDPMScheduler.from_pretrained(Path(model_dir) / "scheduler"), None
    start = time.perf_counter()
    if steps == 0:
        torch.manual_seed(seed)
        unet, scheduler = UNet2DModel(**unet_config("tiny", 16, 1, train.num_classes)), DDPMScheduler()
    else:
        with tempfile.TemporaryDirectory() as output_dir:
            args = training_arguments(output_dir, steps, 2e-3, min(20, steps), seed, num_sample_images=0)
            unet, scheduler, _ = train_score_sde_unet(args, train.images, train.labels, num_classes=train.num_classes,
                                                      preset="tiny", class_balanced=class_balanced)
    seconds = time.perf_counter() - start
    if model_dir is not None:
        unet.save_pretrained(Path(model_dir) / "unet")
        scheduler.save_pretrained(Path(model_dir) / "scheduler")
    return unet.to(device).eval(), scheduler, seconds


def reference_log_likelihood(eps_fn, sde: VPSDE, images, label: int, probes, rtol: float, atol: float):
    """score_sde's protocol for ONE class: SciPy RK45 on the flattened NumPy state `[x (N D), delta (N)]`.

    Returns `log p(x | label)` `[N]` (float64 NumPy) and the number of ODE evaluations."""
    shape, n = images.shape, len(images)
    labels = torch.full((n,), label, device=images.device)
    z = probes[:, 0].view(shape)

    def drift(x, t):
        return -0.5 * sde.beta(t) * (x - eps_fn(x, t.expand(n), labels) / sde.sigma(t))

    def ode_func(t, y):
        x = torch.from_numpy(y[:-n]).view(shape).to(images)
        t = torch.tensor(t, dtype=images.dtype, device=images.device)
        with torch.no_grad():
            dx = drift(x, t)
        with torch.enable_grad():  # Hutchinson divergence of the drift, a second model call
            x.requires_grad_(True)
            grad = torch.autograd.grad((drift(x, t) * z).sum(), x)[0]
        divergence = (grad * z).flatten(1).sum(1)
        return np.concatenate([dx.detach().cpu().numpy().ravel(), divergence.cpu().numpy()])

    y0 = np.concatenate([images.cpu().numpy().ravel(), np.zeros(n)])
    solution = solve_ivp(ode_func, (sde.t_min, 1.0), y0, method="RK45", rtol=rtol, atol=atol)
    y1 = solution.y[:, -1]
    x1, delta = y1[:-n].reshape(n, -1), y1[-n:]
    prior = -0.5 * ((x1**2).sum(1) + x1.shape[1] * math.log(2 * math.pi))
    return prior + delta, solution.nfev


def abs_delta(bpd: torch.Tensor, reference: torch.Tensor) -> dict:
    diff = (bpd.double() - reference.double()).abs()
    return {"max": float(diff.max()), "mean": float(diff.mean())}


def select_fast_steps(unet, images, num_classes: int, common: dict, bound: float, rtol: float, candidates):
    """The fewest of the `candidates` steps of the fast solver from which on every candidate is within `bound` max
    |delta bits/dim| of our dopri5 at rtol = atol = `rtol` on `images` (training images); the most accurate if the
    most steps are not within it. Returns the steps and the measured table."""
    reference = probability_flow_log_likelihood(unet, images, num_classes, solver="dopri5", rtol=rtol, atol=rtol,
                                                **common).bits_per_dim
    table = {}
    for steps in candidates:
        result = probability_flow_log_likelihood(unet, images, num_classes, solver=FAST_SOLVER, num_steps=steps,
                                                 step_spacing="log_snr", **common)
        table[steps] = abs_delta(result.bits_per_dim, reference) | {"nfe_per_image": int(result.nfe_per_image[0])}
    return settled_steps(table, bound), table


def settled_steps(table: dict, bound: float) -> int:
    """The fewest steps of `table` (`{steps: {"max": max |delta bpd|, ...}}`) from which on every count's max is
    within `bound`; the most accurate count if the most steps are not within it."""
    steps = sorted(table)
    settled = [n for i, n in enumerate(steps) if all(table[m]["max"] <= bound for m in steps[i:])]
    return settled[0] if settled else min(steps, key=lambda n: table[n]["max"])


def speed_part(args, device) -> dict:
    splits = load_image_classification_data(str(data_path("fashion_mnist")), image_size=16, seed=args.seed)
    model_dir = args.model_dir and str(Path(args.model_dir) / f"fashion_mnist_{args.train_steps}_steps")
    unet, scheduler, train_seconds = build_model(splits["train"], args.train_steps, args.seed, device, model_dir)
    sde = VPSDE.from_scheduler(scheduler)
    num_classes = args.num_classes or splits["train"].num_classes
    common = dict(num_probes=1, seed=args.seed, sde=sde, progress_bar={"disable": True})

    # Stage 1, selection on training images (never the test images reported below).
    selection_images = splits["train"].images[: args.selection_images].to(device)
    fast_steps, selection = select_fast_steps(unet, selection_images, num_classes,
                                              common | dict(batch_size=len(selection_images)), SELECTION_BOUND,
                                              args.selection_rtol, args.selection_steps)
    fast_setting = dict(solver=FAST_SOLVER, num_steps=fast_steps, step_spacing="log_snr")

    # Stage 2, the test images: every arm once, round-robin, with the same probes.
    images = splits["test"].images[: args.num_images].to(device)
    eps_fn = as_eps_model(unet, sde)
    probes = _rademacher(image_seeds(args.seed, len(images)), 1, images)  # the probes ours draws for seed=args.seed
    common |= dict(batch_size=len(images))
    results = {}

    def ours(name, **solver_args):
        results[name] = probability_flow_log_likelihood(unet, images, num_classes, **common, **solver_args)

    def reference():
        columns = [reference_log_likelihood(eps_fn, sde, images, c, probes, args.rtol, args.atol)
                   for c in range(num_classes)]
        log_p = torch.from_numpy(np.stack([column for column, _ in columns], 1))
        results["reference"] = log_p, sum(nfev for _, nfev in columns)

    ours("warmup", solver="heun", num_steps=1)
    arms = {
        "reference_scipy_rk45": reference,
        "ours_dopri5": lambda: ours("dopri5", solver="dopri5", rtol=args.rtol, atol=args.atol),
        "ours_default": lambda: ours("default", **DEFAULT_SETTING),
        "ours_fast": lambda: ours("fast", **fast_setting),
    }
    seconds = median_seconds(arms, repeats=1, warmup=0)
    reference_log_p, reference_evaluations = results["reference"]
    reference_bpd = bits_per_dim(reference_log_p, images[0].numel())
    ours_names = ("dopri5", "default", "fast")
    nfe = {"reference_scipy_rk45": reference_evaluations} | {
        f"ours_{name}": int(results[name].nfe_per_image[0]) for name in ours_names
    }
    test_labels = splits["test"].labels[: args.num_images]
    all_classes = num_classes == splits["test"].num_classes  # else the true class may not be scored
    figures = {
        "setting": {
            "model": "unet_config('tiny', 16, num_class_embeds=10)",
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "train_steps": args.train_steps, "train_batch_size": 64, "train_seconds": train_seconds,
            "model_dir": model_dir,
            "data": "Fashion-MNIST test images, 16 px", "num_images": len(images), "num_classes": num_classes,
            "rtol": args.rtol, "atol": args.atol, "num_probes": 1,
            "default_mode": "rk4, 32 steps, log_snr (the library default)",
            "fast_mode": f"{FAST_SOLVER}, {fast_steps} steps, log_snr",
            "reference": "scipy solve_ivp RK45 on CPU NumPy state, one class at a time, images of a class batched, "
                         "drift and divergence by separate model calls (score_sde likelihood.py)",
        },
        "selection": {
            "images": f"the first {len(selection_images)} Fashion-MNIST TRAINING images x {num_classes} classes",
            "reference": f"ours dopri5, rtol = atol = {args.selection_rtol}", "bound_max_abs_delta_bpd": SELECTION_BOUND,
            "abs_delta_bpd_by_steps": selection, "chosen_steps": fast_steps,
        },
        "seconds": seconds,
        "images_per_s": {name: len(images) / s for name, s in seconds.items()},
        "ode_evaluations_per_image": nfe,  # one evaluation = one (image, class) drift + divergence
        "speedup_vs_reference": {name: seconds["reference_scipy_rk45"] / seconds[f"ours_{name}"]
                                 for name in ours_names},
        "speedup_fast_vs_default": seconds["ours_default"] / seconds["ours_fast"],
        "abs_delta_bpd": {name: abs_delta(results[name].bits_per_dim, reference_bpd) for name in ours_names},
        "accuracy_on_these_images": None if not all_classes else {
            "reference_scipy_rk45": float((reference_bpd.argmin(1) == test_labels).double().mean()),
            **{f"ours_{name}": float((results[name].bits_per_dim.argmin(1) == test_labels).double().mean())
               for name in ours_names},
        },
        "mean_bpd_true_class": float(reference_bpd[torch.arange(len(images)), test_labels].mean()) if all_classes
        else None,
    }
    figures["targets"] = {
        "fast_speedup_vs_reference": target_entry(figures["speedup_vs_reference"]["fast"], SPEED_TARGET),
        "fast_max_abs_delta_bpd": target_entry(figures["abs_delta_bpd"]["fast"]["max"], DELTA_BPD_TARGET,
                                               higher_is_better=False),
        "dopri5_speedup_vs_reference": target_entry(figures["speedup_vs_reference"]["dopri5"], DOPRI5_SPEED_TARGET),
        "dopri5_max_abs_delta_bpd": target_entry(figures["abs_delta_bpd"]["dopri5"]["max"], DELTA_BPD_TARGET,
                                                 higher_is_better=False),
    }
    return figures, fast_setting


def pneumonia_part(args, device, fast_setting: dict) -> dict:
    """Default vs fast setting as a PneumoniaMNIST classifier, on a stratified test subset."""
    splits = load_image_classification_data(str(data_path("medmnist_pneumonia", "pneumoniamnist.npz")),
                                            image_size=16, seed=args.seed)
    model_dir = args.model_dir and str(Path(args.model_dir) / f"pneumoniamnist_{args.pneumonia_train_steps}_steps")
    unet, scheduler, train_seconds = build_model(splits["train"], args.pneumonia_train_steps, args.seed, device,
                                                 model_dir, class_balanced=True)
    test = splits["test"]
    index = stratified_subset_indices(test.labels, args.pneumonia_test_images, args.seed)
    images, labels = test.images[index].to(device), test.labels[index]
    common = dict(num_probes=1, seed=args.seed, sde=VPSDE.from_scheduler(scheduler), batch_size=len(images),
                  progress_bar={"disable": True})
    results = {}

    def score(name, setting):
        results[name] = probability_flow_log_likelihood(unet, images, 2, **common, **setting)

    seconds = median_seconds({"default": lambda: score("default", DEFAULT_SETTING),
                              "fast": lambda: score("fast", fast_setting)}, repeats=1, warmup=0)

    def metrics(name):
        log_p = results[name].log_likelihood.double()
        return {
            "auc": float(roc_auc_score(labels.numpy(), (log_p[:, 1] - log_p[:, 0]).numpy())),
            "accuracy": float((log_p.argmax(1) == labels).double().mean()),
            "nfe_per_image": int(results[name].nfe_per_image[0]),
            "images_per_s": len(images) / seconds[name],
            "seconds": seconds[name],
        }

    return {
        "setting": {
            "data": "PneumoniaMNIST (official splits), 16 px; class 1 = pneumonia",
            "model": "unet_config('tiny', 16, num_class_embeds=2), class-balanced batches",
            "train_steps": args.pneumonia_train_steps, "train_seconds": train_seconds, "model_dir": model_dir,
            "test_subset": f"stratified subset of {len(images)} of the {len(test)} test images (seed {args.seed})",
            "default_mode": "rk4, 32 steps, log_snr", "fast_mode": f"{fast_setting['solver']}, "
                                                                   f"{fast_setting['num_steps']} steps, log_snr",
        },
        "default": metrics("default"),
        "fast": metrics("fast"),
        "speedup_fast_vs_default": seconds["default"] / seconds["fast"],
        "abs_delta_bpd_fast_vs_default": abs_delta(results["fast"].bits_per_dim, results["default"].bits_per_dim),
        "same_decisions": float((results["fast"].log_likelihood.argmax(1)
                                 == results["default"].log_likelihood.argmax(1)).double().mean()),
    }


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--num_images", type=int, help="test images of the speed part (default 16; quick 1)")
    parser.add_argument("--train_steps", type=int, help="speed part U-Net steps (default 1000; quick 0 = random init)")
    parser.add_argument("--rtol", type=float, help="both adaptive solvers; default 1e-5 (quick 1e-2)")
    parser.add_argument("--atol", type=float, default=None, help="default: rtol")
    parser.add_argument("--num_classes", type=int, help="classes scored (the first K); default all 10 (quick 2)")
    parser.add_argument("--selection_images", type=int, help="training images the fast steps are chosen on (4)")
    parser.add_argument("--selection_steps", type=int, nargs="+", help="fast-mode step counts tried (16 .. 80)")
    parser.add_argument("--selection_rtol", type=float, help="tolerance of their dopri5 reference (1e-5; quick 1e-2)")
    parser.add_argument("--fast_steps", type=int, default=None,
                        help="fast-mode steps without the selection stage (parts without 'speed'); default 40")
    parser.add_argument("--pneumonia_train_steps", type=int, help="PneumoniaMNIST U-Net steps (default 300)")
    parser.add_argument("--pneumonia_test_images", type=int, help="stratified test subset (default 96)")
    parser.add_argument("--model_dir", default=None, help="keep the trained U-Nets here and reuse them when present")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.atol = args.atol or args.rtol
    device = setup(args)
    figures, fast_setting = {}, dict(solver=FAST_SOLVER, num_steps=args.fast_steps or 40, step_spacing="log_snr")
    if "speed" in args.parts:
        figures, fast_setting = speed_part(args, device)
    if "pneumonia" in args.parts:
        figures["pneumonia"] = pneumonia_part(args, device, fast_setting)
    report("score_sde_bench_likelihood", args, device, figures)


if __name__ == "__main__":
    main()

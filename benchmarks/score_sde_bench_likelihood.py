"""Exact log-likelihood speed: our batched torch probability-flow ODE vs the published protocol (SciPy RK45).

The reference does what the published Score-SDE classifier code does (score_sde's `likelihood.py`): one class at a
time, the batch of images flattened into one float64 NumPy state that SciPy's `solve_ivp(method="RK45")` integrates
on the CPU, the model called from NumPy at every evaluation (the drift and the divergence by separate model calls,
as there), one Rademacher probe. Ours (`likelihood.probability_flow_log_likelihood`) solves images x classes as one
torch state on the model's device: "faithful" = our Dormand-Prince at the SAME rtol/atol, "fast" = fixed-step RK4.
Both integrate the same ODE with the same model, images, class labels and probes, so |delta bits/dim| measures
solver error only. Target: >= 10x images/s at |delta bpd| <= 0.01.

The model is a class-conditional U-Net (`models.unet_config("tiny", 16, num_class_embeds=10)`) trained for
`--train_steps` on Fashion-MNIST downsampled to 16 px (0 = random init; speed does not depend on the weights, the
adaptive solvers' step counts do). Images: the first `--num_images` test images (default 2: the reference
takes ~75 s per image at rtol = atol = 1e-5 on one CPU core), scored against all 10 classes.

    python benchmarks/score_sde_bench_likelihood.py --quick
"""

import math
import tempfile
import time

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from scipy.integrate import solve_ivp

from _common import base_parser, data_path, median_seconds, report, setup, target_entry, training_arguments
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.likelihood import (
    VPSDE,
    _image_seeds,
    _rademacher,
    as_eps_model,
    bits_per_dim,
    probability_flow_log_likelihood,
)
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.training import train_score_sde_unet


def build_model(train, steps: int, seed: int, device: torch.device):
    """A class-conditional tiny U-Net (16 px), trained `steps` steps on `train`; 0: random init."""
    if steps == 0:
        torch.manual_seed(seed)
        return UNet2DModel(**unet_config("tiny", 16, 1, train.num_classes)).to(device).eval(), DDPMScheduler()
    with tempfile.TemporaryDirectory() as output_dir:
        args = training_arguments(output_dir, steps, 2e-3, min(20, steps), seed)
        unet, scheduler, _ = train_score_sde_unet(args, train.images, train.labels, num_classes=train.num_classes,
                                                  preset="tiny")
    return unet.to(device).eval(), scheduler


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


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=None, help="default 1 with --quick, else 2")
    parser.add_argument("--train_steps", type=int, default=None, help="default 0 (random init) with --quick, else 200")
    parser.add_argument("--rtol", type=float, default=None, help="both adaptive solvers; default 1e-2 quick, else 1e-5")
    parser.add_argument("--num_classes", type=int, default=None, help="classes scored (the first K); default 3 with --quick, else all 10")
    parser.add_argument("--atol", type=float, default=None, help="default: rtol")
    parser.add_argument("--fast_steps", type=int, default=32, help="RK4 steps of the fast mode")
    parser.add_argument("--fast_spacing", default="quadratic", choices=["uniform", "quadratic"])
    args = parser.parse_args()
    num_images = args.num_images or (1 if args.quick else 2)
    train_steps = args.train_steps if args.train_steps is not None else (0 if args.quick else 200)
    rtol = args.rtol or (1e-2 if args.quick else 1e-5)
    atol = args.atol or rtol
    device = setup(args)

    splits = load_image_classification_data(str(data_path("fashion_mnist")), image_size=16, seed=args.seed)
    start = time.perf_counter()
    unet, scheduler = build_model(splits["train"], train_steps, args.seed, device)
    train_seconds = time.perf_counter() - start
    sde = VPSDE.from_scheduler(scheduler)
    num_classes = args.num_classes or (3 if args.quick else splits["train"].num_classes)
    images = splits["test"].images[:num_images].to(device)
    eps_fn = as_eps_model(unet, sde)
    probes = _rademacher(_image_seeds(args.seed, num_images), 1, images)  # the probes ours draws for seed=args.seed
    common = dict(num_probes=1, seed=args.seed, batch_size=num_images, sde=sde)

    results = {}

    def ours(name, **solver_args):
        results[name] = probability_flow_log_likelihood(unet, images, num_classes, **common, **solver_args)

    def reference():
        columns = [reference_log_likelihood(eps_fn, sde, images, c, probes, rtol, atol) for c in range(num_classes)]
        log_p = torch.from_numpy(np.stack([column for column, _ in columns], 1))
        results["reference"] = log_p, sum(nfev for _, nfev in columns)

    ours("warmup", solver="heun", num_steps=1)
    seconds = median_seconds(
        {
            "reference_scipy_rk45": reference,
            "ours_dopri5": lambda: ours("dopri5", solver="dopri5", rtol=rtol, atol=atol),
            "ours_fast": lambda: ours("fast", solver="rk4", num_steps=args.fast_steps, step_spacing=args.fast_spacing),
        },
        repeats=1,
        warmup=0,
    )
    reference_log_p, reference_evaluations = results["reference"]
    reference_bpd = bits_per_dim(reference_log_p, images[0].numel())

    def delta_bpd(name):
        diff = (results[name].bits_per_dim.double() - reference_bpd).abs()
        return {"max": float(diff.max()), "mean": float(diff.mean())}

    images_per_s = {name: num_images / s for name, s in seconds.items()}
    figures = {
        "setting": {
            "model": "unet_config('tiny', 16, num_class_embeds=10)", "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "train_steps": train_steps, "train_batch_size": 64, "train_seconds": train_seconds,
            "data": "Fashion-MNIST test images, 16 px", "num_images": num_images, "num_classes": num_classes,
            "rtol": rtol, "atol": atol, "num_probes": 1, "fast_mode": f"rk4, {args.fast_steps} steps, {args.fast_spacing}",
            "reference": "scipy solve_ivp RK45 on CPU NumPy state, one class at a time, images of a class batched, "
                         "drift and divergence by separate model calls (score_sde likelihood.py)",
        },
        "seconds": seconds,
        "images_per_s": images_per_s,
        "speedup_dopri5_vs_reference": seconds["reference_scipy_rk45"] / seconds["ours_dopri5"],
        "speedup_fast_vs_reference": seconds["reference_scipy_rk45"] / seconds["ours_fast"],
        "abs_delta_bpd_dopri5": delta_bpd("dopri5"),
        "abs_delta_bpd_fast": delta_bpd("fast"),
        "ode_evaluations_per_image": {  # one evaluation = one (image, class) drift + divergence
            "reference_scipy_rk45": reference_evaluations,
            "ours_dopri5": int(results["dopri5"].nfe_per_image[0]),
            "ours_fast": int(results["fast"].nfe_per_image[0]),
        },
        "mean_bpd_true_class": float(reference_bpd[torch.arange(num_images), splits["test"].labels[:num_images]].mean()),
    }
    figures["targets"] = {}
    for mode in ("dopri5", "fast"):  # each mode: >= 10x images/s at |delta bits/dim| <= 0.01
        figures["targets"][f"{mode}_speedup_vs_reference"] = target_entry(figures[f"speedup_{mode}_vs_reference"], 10)
        figures["targets"][f"{mode}_max_abs_delta_bpd"] = target_entry(
            figures[f"abs_delta_bpd_{mode}"]["max"], 0.01, higher_is_better=False
        )
    report("score_sde_bench_likelihood", args, device, figures)


if __name__ == "__main__":
    main()

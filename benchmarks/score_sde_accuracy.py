"""Score-SDE generative classifier (one class-conditional U-Net, Bayes' rule) vs a supervised CNN, in one run.

PneumoniaMNIST (official splits): train one class-conditional U-Net (`train_score_sde_unet`, 2 classes, class-balanced
sampling, EMA) on the train split; classify test through `ScoreSDEClassifierPipeline` with
- the ELBO (denoising-error bound, shared noise, binary early stop): the weighting ("uniform" or "elbo") is the one
  with the best AUC on a stratified val subset, and the decision threshold on the log-likelihood ratio (passed to
  the pipeline as class priors) is the one with the best balanced accuracy on that val subset;
- the exact likelihood (probability-flow ODE, fixed-step RK4, Hutchinson): too slow on a CPU for all 624 test
  images, so it scores a fixed stratified test subset, its threshold chosen the same way on a val subset;
and train a `SupervisedCNN` of about the U-Net's parameter count on the same train split (checkpoint chosen on
val, argmax decision). AUC is computed from the log-likelihood ratio (CNN: from its class-1 probability).

Fashion-MNIST: a class-conditional U-Net on a stratified train subset; the ELBO with adaptive class pruning (Li et
al. 2023) on a stratified test subset, all its settings fixed in advance (val is not used); a CNN of about the
same parameter count on the same train subset (checkpoint chosen on a val subset).

Targets: PneumoniaMNIST AUC >= the CNN's (ELBO on all test images; exact likelihood against the CNN on the same
test subset); Fashion-MNIST ELBO accuracy within 3 points of the CNN's. Test data is used only for reporting.

    python benchmarks/score_sde_accuracy.py --quick
    python benchmarks/score_sde_accuracy.py --num_threads 1   # writes benchmarks/results/score_sde_accuracy.json
"""

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from _common import base_parser, cnn_baseline, data_path, report, setup, target_entry, timed, training_arguments
from diffusion_classifiers.data import load_image_classification_data, stratified_subset_indices
from diffusion_classifiers.metrics import classification_metrics
from diffusion_classifiers.models import SupervisedCNN, count_parameters
from diffusion_classifiers.pipelines import ScoreSDEClassifierPipeline
from diffusion_classifiers.training import train_score_sde_unet

NAME = "score_sde_accuracy"
METRICS = ("accuracy", "auc", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "confusion_matrix")
CNN_WIDTH_RATIOS = (1, 2, 5)  # SupervisedCNN stage widths (w, 2w, 5w), w matched to the U-Net's parameter count

# Full-run defaults, then --quick ones (tiny model, 8 px, a few images: < 60 s).
DEFAULTS = dict(
    image_size=16, unet_preset="small", pneumonia_train_steps=800, fashion_train_steps=1000, cnn_steps=1500,
    elbo_val_images=200, likelihood_val_images=80, likelihood_test_images=120, ode_steps=32,
    fashion_train_images=20000, fashion_val_images=2000, fashion_test_images=400, pruning="[[10, 3], [20, 1]]",
    pneumonia_quick_sizes=None,
)  # fmt: skip
QUICK = dict(
    image_size=8, unet_preset="tiny", pneumonia_train_steps=15, fashion_train_steps=15, cnn_steps=15,
    elbo_val_images=30, likelihood_val_images=10, likelihood_test_images=10, ode_steps=4,
    fashion_train_images=300, fashion_val_images=100, fashion_test_images=20, pruning="[[2, 3], [3, 1]]",
    pneumonia_quick_sizes={"train": 300, "val": 60, "test": 40},
)  # fmt: skip


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--pneumonia_data", help="MedMNIST-style .npz; default ../shared/data/medmnist_pneumonia/pneumoniamnist.npz"
    )
    parser.add_argument("--fashion_data", help="Fashion-MNIST IDX folder; default ../shared/data/fashion_mnist")
    parser.add_argument("--image_size", type=int, help="both datasets resized to this (default 16; quick 8)")
    parser.add_argument("--unet_preset", help="default small; quick tiny")
    parser.add_argument("--pneumonia_train_steps", type=int, help="U-Net steps (default 800)")
    parser.add_argument("--fashion_train_steps", type=int, help="U-Net steps (default 1000)")
    parser.add_argument("--train_batch_size", type=int, default=64, help="U-Net and CNN batch size")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="U-Net learning rate")
    parser.add_argument("--label_dropout", type=float, default=0.0,
                        help="fraction of labels replaced by a null class; 0: the classifier never uses it")
    parser.add_argument("--class_balanced", action=argparse.BooleanOptionalAction, default=True,
                        help="PneumoniaMNIST: draw both classes equally often when training the U-Net")
    parser.add_argument("--elbo_timesteps", type=int, default=100, help="PneumoniaMNIST: most ELBO timesteps")
    parser.add_argument("--timesteps_per_check", type=int, default=10)
    parser.add_argument("--early_stop_confidence", type=float, default=0.99)
    parser.add_argument("--weightings", nargs="+", default=["uniform", "elbo"], help="ELBO weightings tried on val")
    parser.add_argument("--elbo_val_images", type=int, help="stratified val subset for the ELBO choices (200)")
    parser.add_argument("--likelihood_val_images", type=int, help="stratified val subset, exact likelihood (80)")
    parser.add_argument("--likelihood_test_images", type=int, help="stratified test subset, exact likelihood (120)")
    parser.add_argument("--ode_steps", type=int, help="RK4 steps, quadratic spacing (default 32)")
    parser.add_argument("--num_probes", type=int, default=1, help="Hutchinson probes per image")
    parser.add_argument("--fashion_train_images", type=int, help="stratified train subset (default 20000)")
    parser.add_argument("--fashion_val_images", type=int, help="stratified val subset, CNN checkpoint (2000)")
    parser.add_argument("--fashion_test_images", type=int, help="stratified test subset (default 400)")
    parser.add_argument("--pruning", help='Fashion-MNIST JSON [[T_1, k_1], ...] (default [[10, 3], [20, 1]])')
    parser.add_argument("--cnn_steps", type=int, help="default 1500")
    parser.add_argument("--cnn_learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=256, help="samples per U-Net call when classifying")
    parser.set_defaults(num_threads=1)  # small convolutions on a loaded 2-core CPU: 1 thread is fastest
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.pruning = [tuple(stage) for stage in json.loads(args.pruning)]
    args.pneumonia_data = args.pneumonia_data or str(data_path("medmnist_pneumonia", "pneumoniamnist.npz"))
    args.fashion_data = args.fashion_data or str(data_path("fashion_mnist"))
    return args


def train_unet(args, train, steps: int, class_balanced: bool, work_dir: str):
    training = training_arguments(
        work_dir, steps, args.learning_rate, steps // 20, args.seed, train_batch_size=args.train_batch_size, use_ema=True
    )
    unet, scheduler, summary = train_score_sde_unet(
        training, train.images, train.labels, preset=args.unet_preset, label_dropout=args.label_dropout,
        num_classes=train.num_classes, class_balanced=class_balanced,
    )  # fmt: skip
    pipe = ScoreSDEClassifierPipeline(unet.eval(), scheduler, class_names=train.class_names)
    return pipe, summary


def cnn_widths(target_parameters: int, in_channels: int, num_classes: int):
    """`(w, 2w, 5w)` with the parameter count closest to `target_parameters`."""
    def size(w):
        return count_parameters(SupervisedCNN(in_channels, num_classes, [r * w for r in CNN_WIDTH_RATIOS]))

    best = min(range(8, 129, 8), key=lambda w: abs(size(w) - target_parameters))
    return tuple(r * best for r in CNN_WIDTH_RATIOS)


def scored(labels, predictions, scores, class_names, seconds=None, nfe=None) -> dict:
    """The report's metrics; `scores` `[N, K]` (binary: column 1 is the ranking score of the AUC)."""
    m = classification_metrics(labels, predictions, probs=scores, class_names=class_names)
    out = {k: m.get(k) for k in METRICS}
    if len(class_names) == 2:
        out["f1_" + class_names[1]] = m["per_class"][class_names[1]]["f1"]
    if nfe is not None:
        out["nfe_per_image"] = round(float(torch.as_tensor(nfe, dtype=torch.float64).mean()), 2)
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
        out["images_per_s"] = round(len(labels) / seconds, 3)
    return {"num_images": len(labels), **out}


def ratio_scores(llr: torch.Tensor) -> torch.Tensor:
    """`[N, 2]` scores whose column 1 is the log-likelihood ratio (the AUC uses column 1 only)."""
    return torch.stack([torch.zeros_like(llr), llr], 1).double()


def choose_threshold(llr: torch.Tensor, labels: torch.Tensor) -> tuple:
    """The threshold `tau` on the log-likelihood ratio with the best balanced accuracy (ties: closest to 0), and the
    priors that make Bayes' rule decide `llr > tau`: `log(p1 / p0) = -tau`."""
    values = np.sort(llr.double().numpy())
    candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1], [0.0]])
    y = labels.numpy()

    def balanced(tau):
        predicted = llr.numpy() > tau
        return 0.5 * (predicted[y == 1].mean() + (~predicted[y == 0]).mean())

    tau = max(candidates, key=lambda tau: (round(balanced(tau), 12), -abs(tau)))
    p1 = float(1 / (1 + np.exp(tau)))
    return float(tau), [1 - p1, p1], float(balanced(tau))


def generative_metrics(out, labels, class_names, seconds) -> dict:
    llr = out.log_likelihood_ratio
    figures = scored(labels, out.label_ids, ratio_scores(llr), class_names, seconds, out.nfe_per_image)
    uniform = classification_metrics(labels, (llr > 0).long(), class_names=class_names)
    figures["at_uniform_prior"] = {k: uniform[k] for k in ("accuracy", "balanced_accuracy")}
    return figures


def auc_of(labels, llr) -> float:
    return classification_metrics(labels, (llr > 0).long(), probs=ratio_scores(llr), num_classes=2)["auc"]


def pneumonia(args, device, work_dir: str) -> dict:
    walls = {}
    splits = load_image_classification_data(args.pneumonia_data, image_size=args.image_size)
    if args.pneumonia_quick_sizes:
        for name, size in args.pneumonia_quick_sizes.items():
            splits[name] = splits[name].subset(stratified_subset_indices(splits[name].labels, size, args.seed))
    train, val, test = splits["train"], splits["val"], splits["test"]
    names = train.class_names
    with timed(walls, "unet_training"):
        pipe, summary = train_unet(args, train, args.pneumonia_train_steps, args.class_balanced, f"{work_dir}/unet_p")
    pipe.to(device)
    elbo_args = dict(method="elbo", num_timesteps=args.elbo_timesteps, early_stop_confidence=args.early_stop_confidence,
                     timesteps_per_check=args.timesteps_per_check, seed=args.seed, batch_size=args.batch_size)

    # ELBO: weighting and threshold (as priors) chosen on a stratified val subset.
    val_elbo = val.subset(stratified_subset_indices(val.labels, args.elbo_val_images, args.seed))
    val_auc = {}
    with timed(walls, "elbo_val_selection"):
        val_outputs = {w: pipe(val_elbo.images, weighting=w, **elbo_args) for w in args.weightings}
    for weighting, out in val_outputs.items():
        val_auc[weighting] = auc_of(val_elbo.labels, out.log_likelihood_ratio)
    weighting = max(args.weightings, key=lambda w: val_auc[w])  # ties: the first listed
    tau, priors, val_balanced = choose_threshold(val_outputs[weighting].log_likelihood_ratio, val_elbo.labels)
    start = time.perf_counter()
    out = pipe(test.images, weighting=weighting, priors=priors, **elbo_args)
    seconds = time.perf_counter() - start
    walls["elbo_test"] = round(seconds, 1)
    elbo = generative_metrics(out, test.labels, names, seconds)
    elbo["selection"] = {
        "val_images": len(val_elbo), "val_auc_by_weighting": val_auc, "weighting": weighting,
        "threshold_on_llr": tau, "priors": priors, "val_balanced_accuracy": val_balanced,
    }  # fmt: skip
    elbo_llr = out.log_likelihood_ratio

    # Exact likelihood on fixed stratified subsets of val (threshold) and test.
    ode_args = dict(method="likelihood", solver="rk4", num_steps=args.ode_steps, step_spacing="quadratic",
                    num_probes=args.num_probes, seed=args.seed, batch_size=args.batch_size)
    val_ode = val.subset(stratified_subset_indices(val.labels, args.likelihood_val_images, args.seed + 1))
    test_ode_index = stratified_subset_indices(test.labels, args.likelihood_test_images, args.seed + 1)
    test_ode = test.subset(test_ode_index)
    with timed(walls, "likelihood_val_selection"):
        val_out = pipe(val_ode.images, **ode_args)
    tau_ode, priors_ode, val_balanced_ode = choose_threshold(val_out.log_likelihood_ratio, val_ode.labels)
    start = time.perf_counter()
    out = pipe(test_ode.images, priors=priors_ode, **ode_args)
    seconds = time.perf_counter() - start
    walls["likelihood_test"] = round(seconds, 1)
    likelihood = generative_metrics(out, test_ode.labels, names, seconds)
    likelihood["mean_bits_per_dim_true_class"] = float(out.bits_per_dim.gather(1, test_ode.labels[:, None]).mean())
    likelihood["selection"] = {
        "val_images": len(val_ode), "val_auc": auc_of(val_ode.labels, val_out.log_likelihood_ratio),
        "threshold_on_llr": tau_ode, "priors": priors_ode, "val_balanced_accuracy": val_balanced_ode,
    }  # fmt: skip

    # Supervised CNN, about the U-Net's parameter count, same train split.
    probs, cnn = cnn_figures(args, pipe, (train, val, test), device, f"{work_dir}/cnn_p", walls)

    index = torch.from_numpy(test_ode_index)
    on_subset = {
        "test_images": len(index),
        "auc": {
            "likelihood": likelihood["auc"],
            "elbo": auc_of(test.labels[index], elbo_llr[index]),
            "cnn": classification_metrics(test.labels[index], probs[index].argmax(1), probs=probs[index])["auc"],
        },
    }
    return {
        "data": f"PneumoniaMNIST, official splits, {args.image_size} px (bilinear, antialiased from 28 px)",
        "num_images": {"train": len(train), "val": len(val), "test": len(test)},
        "class_counts": {name: torch.bincount(s.labels, minlength=2).tolist() for name, s in splits.items()},
        "unet": {
            "preset": args.unet_preset, "parameters": count_parameters(pipe.unet), "train_steps": args.pneumonia_train_steps,
            "train_batch_size": args.train_batch_size, "learning_rate": args.learning_rate, "use_ema": True,
            "label_dropout": args.label_dropout, "class_balanced": args.class_balanced, "final_loss": summary.final_loss,
        },  # fmt: skip
        "elbo_settings": {k: v for k, v in elbo_args.items() if k not in ("method", "batch_size")},
        "likelihood_settings": {
            **{k: v for k, v in ode_args.items() if k not in ("method", "batch_size")},
            "test_subset": f"fixed stratified subset of {len(test_ode)} of the {len(test)} test images "
            f"(stratified_split seed {args.seed + 1}): the exact likelihood is too slow on a CPU for all of them",
        },
        "methods": {"elbo": elbo, "likelihood": likelihood, "cnn": cnn},
        "likelihood_subset_comparison": on_subset,
        "wall_seconds": walls,
    }


def cnn_figures(args, pipe, splits, device, work_dir: str, walls: dict):
    """A `SupervisedCNN` of about the U-Net's parameter count trained on `train` (checkpoint chosen on `val`),
    scored on `test`: its class probabilities and metrics."""
    train, val, test = splits
    widths = cnn_widths(count_parameters(pipe.unet), train.images.shape[1], train.num_classes)
    cnn = cnn_baseline(
        train, val, test, work_dir, widths, args.cnn_steps, args.train_batch_size, args.cnn_learning_rate, args.seed,
        device=device,
    )  # fmt: skip
    walls["cnn_training"] = round(cnn.train_seconds, 1)
    walls["cnn_test"] = round(cnn.test_seconds, 1)
    cnn.info.pop("val_accuracy_by_step")
    metrics = scored(test.labels, cnn.probs.argmax(1), cnn.probs, train.class_names, cnn.test_seconds, nfe=1)
    return cnn.probs, {**metrics, **cnn.info, "widths": widths}


def fashion(args, device, work_dir: str) -> dict:
    walls = {}
    splits = load_image_classification_data(args.fashion_data, image_size=args.image_size, seed=args.seed)
    train, val, test = (
        splits[name].subset(stratified_subset_indices(splits[name].labels, size, args.seed))
        for name, size in (("train", args.fashion_train_images), ("val", args.fashion_val_images),
                           ("test", args.fashion_test_images))
    )  # fmt: skip
    names = train.class_names
    with timed(walls, "unet_training"):
        pipe, summary = train_unet(args, train, args.fashion_train_steps, False, f"{work_dir}/unet_f")
    pipe.to(device)
    num_timesteps = sum(count for count, _ in args.pruning)
    start = time.perf_counter()
    out = pipe(test.images, method="elbo", num_timesteps=num_timesteps, pruning=args.pruning, weighting="uniform",
               seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    walls["elbo_test"] = round(seconds, 1)
    elbo = scored(test.labels, out.label_ids, out.probs, names, seconds, out.nfe_per_image)

    _, cnn = cnn_figures(args, pipe, (train, val, test), device, f"{work_dir}/cnn_f", walls)
    return {
        "data": f"Fashion-MNIST, {args.image_size} px (bilinear, antialiased from 28 px); stratified subsets: "
        f"{len(train)} train, {len(val)} val (CNN checkpoint only), {len(test)} test images",
        "unet": {
            "preset": args.unet_preset, "parameters": count_parameters(pipe.unet), "train_steps": args.fashion_train_steps,
            "train_batch_size": args.train_batch_size, "learning_rate": args.learning_rate, "use_ema": True,
            "label_dropout": args.label_dropout, "class_balanced": False, "final_loss": summary.final_loss,
        },  # fmt: skip
        "elbo_settings": {"weighting": "uniform", "num_timesteps": num_timesteps, "pruning": args.pruning,
                          "seed": args.seed, "chosen": "fixed in advance; val not used"},
        "methods": {"elbo": elbo, "cnn": cnn},
        "wall_seconds": walls,
    }


def targets(results: dict, total_seconds: float) -> dict:
    """PneumoniaMNIST: AUC at least the CNN's (the ELBO on all test images, the exact likelihood on its test
    subset); Fashion-MNIST: ELBO accuracy at most 3 points below the CNN's; the whole run within 30 minutes."""
    pneumonia, fashion_mnist = results["pneumoniamnist"], results["fashion_mnist"]
    on_subset = pneumonia["likelihood_subset_comparison"]["auc"]
    fashion_accuracy = {method: m["accuracy"] for method, m in fashion_mnist["methods"].items()}
    return {
        "pneumoniamnist_elbo_test_auc": target_entry(
            pneumonia["methods"]["elbo"]["auc"], pneumonia["methods"]["cnn"]["auc"]
        ),
        "pneumoniamnist_likelihood_test_subset_auc": target_entry(on_subset["likelihood"], on_subset["cnn"]),
        "fashion_mnist_cnn_minus_elbo_accuracy_points": target_entry(
            100 * (fashion_accuracy["cnn"] - fashion_accuracy["elbo"]), 3.0, higher_is_better=False
        ),
        "wall_seconds_total": target_entry(total_seconds, 30 * 60, higher_is_better=False),
    }


def main():
    args = parse_args()
    device = setup(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        results = {"pneumoniamnist": pneumonia(args, device, work_dir)}
        results["fashion_mnist"] = fashion(args, device, work_dir)
    total = round(time.perf_counter() - start, 1)
    figures = {
        **results,
        "selection": "every choice (ELBO weighting, decision thresholds as priors, CNN checkpoints) is made on val "
        "splits; test images are used only for reporting",
        "targets": targets(results, total),
        "wall_seconds_total": total,
        "budget": {"num_threads": torch.get_num_threads()},
    }
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

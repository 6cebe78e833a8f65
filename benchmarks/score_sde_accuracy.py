"""Score-SDE generative classifier (one class-conditional U-Net, Bayes' rule) vs a supervised CNN, in one run.

Part "data", on `--data` (default PneumoniaMNIST; any dataset `load_image_classification_data` reads, official or
carved splits): train one class-conditional U-Net (`train_score_sde_unet`, EMA) on the train split, or load the
pipeline an earlier run kept (`--keep_checkpoint DIR`, then `--unet_dir DIR`), and train a `SupervisedCNN` of about
the U-Net's parameter count on the same train split (checkpoint chosen on val, argmax decision). A binary dataset
gets the binary protocol, scored for `--positive_class` (default class 1), the U-Net trained with class-balanced
sampling; classify test through `ScoreSDEClassifierPipeline` with
- the ELBO (denoising-error bound, shared noise, binary early stop): the weighting ("uniform" or "elbo") and the
  timestep spacing ("even" in t or "log_snr") are the pair with the best AUC on a stratified val subset, and the
  decision threshold on the log-likelihood ratio (passed to the pipeline as class priors) is the one with the best
  balanced accuracy on that val subset;
- the exact likelihood (probability-flow ODE, fixed-step RK4, Hutchinson): too slow on a CPU for all test images, so
  it scores a fixed stratified test subset, its threshold chosen the same way on a val subset.
AUC is computed from the log-likelihood ratio (CNN: from its positive-class probability). A dataset of more classes
gets the multi-class protocol below, on its own splits.

Part "reference", on `--reference_data` (default Fashion-MNIST), the multi-class protocol: a class-conditional U-Net
on a stratified train subset; the ELBO with adaptive class pruning (Li et al. 2023) on a stratified test subset,
all its settings fixed in advance (val is not used); a CNN of about the same parameter count on the same train
subset (checkpoint chosen on a val subset). Both datasets are read alike: `--image_size` and the reading flags
(`--num_channels`, `--resize_mode`, `--pad_value`, `--normalize_background`, `--transparency_fill`) apply to the
reference data too, so its U-Net and CNN compare on images read as `--data`'s are.

Targets (results keyed by the dataset's file name; the reference part's `<name>_reference` where its name is
`--data`'s too): binary data: AUC >= the CNN's (ELBO on all test images; exact likelihood against the CNN on the same
test subset); multi-class data: ELBO accuracy within 3 points of the CNN's. Test data is used only for reporting.
A model kept with `--keep_checkpoint` saves how its images were read (size, channels, resize mode, padding,
background); `--unet_dir` refuses it, before any training, for data read otherwise, and the record describes a loaded
model by what it is (the preset nearest it in size, its widths, its saved training summary), not by this run's
training flags.

    python benchmarks/score_sde_accuracy.py --quick
    python benchmarks/score_sde_accuracy.py --num_threads 1   # writes benchmarks/results/score_sde_accuracy.json
    python benchmarks/score_sde_accuracy.py --data my.npz --positive_class malignant --parts data \\
        --keep_checkpoint /tmp/score_sde --output /tmp/my.json
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    add_data_options,
    base_parser,
    capped_sizes,
    check_data_options,
    check_reused_model_saw_none_of,
    check_unet_dir,
    cnn_baseline,
    data_path,
    dataset_name,
    keep_trained_model,
    load_benchmark_data,
    loaded_unet_facts,
    reading_options,
    report,
    setup,
    stratified_subset_index,
    subsample_splits,
    target_entry,
    timed,
    training_arguments,
)
from diffusion_classifiers.metrics import classification_metrics, resolve_positive_label
from diffusion_classifiers.models import UNET_PRESETS, SupervisedCNN, count_parameters, unet_config
from diffusion_classifiers.pipelines import ScoreSDEClassifierPipeline
from diffusion_classifiers.training import train_score_sde_unet

NAME = "score_sde_accuracy"
METRICS = ("accuracy", "auc", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "confusion_matrix")
CNN_WIDTH_RATIOS = (1, 2, 5)  # SupervisedCNN stage widths (w, 2w, 5w), w matched to the U-Net's parameter count
PARTS = ("data", "reference")

# Full-run defaults, then --quick ones (tiny model, 8 px, a few images: < 60 s).
DEFAULTS = dict(
    image_size=16, unet_preset="small", train_steps=800, reference_train_steps=1000, cnn_steps=1500, elbo_timesteps=100,
    elbo_val_images=200, likelihood_val_images=80, likelihood_test_images=120, ode_steps=32,
    multiclass_train_images=20000, multiclass_val_images=2000, multiclass_test_images=400, pruning="[[10, 3], [20, 1]]",
    quick_sizes=None,
)  # fmt: skip
QUICK = dict(
    image_size=8, unet_preset="tiny", train_steps=15, reference_train_steps=15, cnn_steps=15, elbo_timesteps=20,
    elbo_val_images=30, likelihood_val_images=10, likelihood_test_images=10, ode_steps=4,
    multiclass_train_images=300, multiclass_val_images=100, multiclass_test_images=20, pruning="[[2, 3], [3, 1]]",
    quick_sizes={"train": 300, "val": 60, "test": 40},  # the binary protocol's splits, capped at their sizes
)  # fmt: skip


def parse_args():
    parser = base_parser(__doc__)
    add_data_options(
        parser, "../shared/data/medmnist_pneumonia/pneumoniamnist.npz", checkpoint="examples/score_sde_train.py",
        parts=PARTS,
    )  # fmt: skip
    parser.add_argument(
        "--reference_data", "--fashion_data",
        help="the reference part's dataset, read as --data is (--image_size, --num_channels, --resize_mode, "
        "--pad_value, --normalize_background, --transparency_fill); results keyed by its name, <name>_reference "
        "where that is --data's name too; default ../shared/data/fashion_mnist",
    )  # fmt: skip
    parser.add_argument("--image_size", type=int, help="both datasets resized to this (default 16; quick 8)")
    parser.add_argument("--unet_preset", help="default small; quick tiny")
    parser.add_argument("--train_steps", "--pneumonia_train_steps", type=int, help="data part: U-Net steps (default 800)")
    parser.add_argument(
        "--reference_train_steps", "--fashion_train_steps", type=int, help="reference part: U-Net steps (default 1000)"
    )
    parser.add_argument("--train_batch_size", type=int, default=64, help="U-Net and CNN batch size")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="U-Net learning rate")
    parser.add_argument("--label_dropout", type=float, default=0.0,
                        help="fraction of labels replaced by a null class; 0: the classifier never uses it")
    parser.add_argument("--class_balanced", action=argparse.BooleanOptionalAction, default=True,
                        help="binary protocol: draw both classes equally often when training the U-Net")
    parser.add_argument("--elbo_timesteps", type=int, help="binary protocol: most ELBO timesteps (100; quick 20)")
    parser.add_argument("--timesteps_per_check", type=int, default=10)
    parser.add_argument("--early_stop_confidence", type=float, default=0.99)
    parser.add_argument("--weightings", nargs="+", default=["uniform", "elbo"], help="ELBO weightings tried on val")
    parser.add_argument(
        "--timestep_spacings", nargs="+", default=["even", "log_snr"],
        help="ELBO timestep spacings tried on val with each weighting (before 2026-12-05: even only)",
    )  # fmt: skip
    parser.add_argument("--elbo_val_images", type=int, help="stratified val subset for the ELBO choices (200)")
    parser.add_argument("--likelihood_val_images", type=int, help="stratified val subset, exact likelihood (80)")
    parser.add_argument("--likelihood_test_images", type=int, help="stratified test subset, exact likelihood (120)")
    parser.add_argument("--ode_steps", type=int, help="RK4 steps, quadratic spacing (default 32)")
    parser.add_argument("--num_probes", type=int, default=1, help="Hutchinson probes per image")
    parser.add_argument("--multiclass_train_images", "--fashion_train_images", type=int,
                        help="multi-class protocol: stratified train subset (default 20000)")
    parser.add_argument("--multiclass_val_images", "--fashion_val_images", type=int,
                        help="multi-class protocol: stratified val subset, CNN checkpoint (2000)")
    parser.add_argument("--multiclass_test_images", "--fashion_test_images", type=int,
                        help="multi-class protocol: stratified test subset (default 400)")
    parser.add_argument("--pruning", help='multi-class protocol: JSON [[T_1, k_1], ...] (default [[10, 3], [20, 1]])')
    parser.add_argument("--cnn_steps", type=int, help="default 1500")
    parser.add_argument("--cnn_learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=256, help="samples per U-Net call when classifying")
    parser.set_defaults(num_threads=1)  # small convolutions on a loaded 2-core CPU: 1 thread is fastest
    args = parser.parse_args()
    check_data_options(parser, args)
    if args.keep_checkpoint and "data" not in args.parts:  # the reference part's model is never kept
        parser.error(
            "--keep_checkpoint: keeps the data part's diffusion model, which --parts reference does not train; "
            "expected with the data part, or without --keep_checkpoint"
        )
    if args.unet_dir and "data" not in args.parts:  # QA (the U-Net benchmark's): accepted, and never read
        parser.error(
            "--unet_dir: reuses the data part's diffusion model, which --parts reference does not use; expected with "
            "the data part, or without --unet_dir"
        )
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.pruning = [tuple(stage) for stage in json.loads(args.pruning)]
    # args.data stays as given (None: the benchmark's own data, whose results keep the benchmark's own name,
    # _common.results_path); the data read is args.data_path
    args.data_path = args.data or str(data_path("medmnist_pneumonia", "pneumoniamnist.npz"))
    args.reference_data = args.reference_data or str(data_path("fashion_mnist"))
    return args


def train_unet(args, splits: dict, steps: int, class_balanced: bool, work_dir: str, reusable: bool = False):
    """A class-conditional U-Net with EMA trained on the train split of `splits`, as a `ScoreSDEClassifierPipeline`
    saved with the train split's preprocessing contract (size, channels, resize mode, padding, background,
    transparency), and its final loss. `reusable` (the data part): the pipeline in `--unet_dir` instead (final loss
    None; refused if trained on a val or test image of `splits`; its reading is checked by `_common.check_unet_dir`
    before any part runs), or the trained one kept in `--keep_checkpoint` with the fingerprints of its training
    images and its training summary."""
    train = splits["train"]
    if reusable and args.unet_dir:
        pipe = load_pipeline(args.unet_dir, train)
        check_reused_model_saw_none_of(args.unet_dir, splits)
        return pipe, None
    training = training_arguments(
        work_dir, steps, args.learning_rate, steps // 20, args.seed, train_batch_size=args.train_batch_size,
        use_ema=True, num_sample_images=0 if args.quick else 8,
    )  # fmt: skip
    unet, scheduler, summary = train_score_sde_unet(
        training, train.images, train.labels, preset=args.unet_preset, label_dropout=args.label_dropout,
        num_classes=train.num_classes, class_balanced=class_balanced,
    )  # fmt: skip
    # QA: the contract was the U-Net's size and channels only, so a model kept from padded images was reused for
    # stretched ones without a word
    pipe = ScoreSDEClassifierPipeline(
        unet.eval(), scheduler, class_names=train.class_names, preprocessing=train.preprocessing
    )
    if reusable and args.keep_checkpoint:
        keep_trained_model(args.keep_checkpoint, pipe, train.images, summary, unlabeled=False, seed=args.seed)
    return pipe, summary.final_loss


def load_pipeline(unet_dir: str, train) -> ScoreSDEClassifierPipeline:
    """The pipeline saved in `unet_dir`, refused unless it was trained for these classes and this image size."""
    try:
        pipe = ScoreSDEClassifierPipeline.from_pretrained(unet_dir)
    except ValueError as error:  # another trainer's folder: an unconditional U-Net, say
        raise ValueError(
            f"--unet_dir: {unet_dir} holds no Score-SDE pipeline (this benchmark's --keep_checkpoint, or "
            f"examples/score_sde_train.py): {error}"
        ) from error
    config = pipe.unet.config
    if pipe.class_names != list(train.class_names) or (config.in_channels, config.sample_size) != (
        train.images.shape[1], train.images.shape[-1]
    ):  # fmt: skip
        raise ValueError(
            f"--unet_dir: {unet_dir} holds a model of classes {pipe.class_names} for {config.in_channels}-channel "
            f"{config.sample_size} px images; the data have classes {list(train.class_names)}, "
            f"{train.images.shape[1]}-channel {train.images.shape[-1]} px images (set --image_size as when it was kept)"
        )
    return pipe


def classify(pipe: ScoreSDEClassifierPipeline, images: torch.Tensor, **kwargs):
    """`pipe(images, **kwargs)` on images this run has read already (the loaders' tensors, as the pipeline's contract
    reads them), which are not read a second time (`reading_preprocessed_images`: the background normalisation is not
    idempotent)."""
    with pipe.reading_preprocessed_images():
        return pipe(images, **kwargs)


def unet_record(args, pipe, steps: int, class_balanced: bool, final_loss, reusable: bool) -> dict:
    """The record of a part's diffusion model: this run's training flags for a model it trained; for one loaded from
    `--unet_dir`, what it is (`_common.loaded_unet_facts`: the preset nearest it in size, its block widths, the
    training summary saved with it) and None for every training flag (QA: this run's --unet_preset, --train_steps,
    --label_dropout, ... were recorded as the loaded model's). `reusable`: the data part (where the loaded and kept
    folders are recorded)."""
    kept = {"loaded_from": args.unet_dir, "kept_in": args.keep_checkpoint} if reusable else {}
    parameters = count_parameters(pipe.unet)
    if reusable and args.unet_dir:
        facts = loaded_unet_facts(args.unet_dir, pipe.unet, presets_at_size(pipe.unet))
        training = ("train_steps", "train_batch_size", "learning_rate", "use_ema", "label_dropout", "class_balanced")
        return {
            "preset": f"loaded (nearest preset by size: {facts.pop('nearest_preset')})", "parameters": parameters,
            **dict.fromkeys(training), "final_loss": final_loss, **facts, **kept,
        }  # fmt: skip
    return {
        "preset": args.unet_preset, "parameters": parameters, "train_steps": steps,
        "train_batch_size": args.train_batch_size, "learning_rate": args.learning_rate, "use_ema": True,
        "label_dropout": args.label_dropout, "class_balanced": class_balanced, "final_loss": final_loss, **kept,
    }  # fmt: skip


def presets_at_size(unet) -> list:
    """The `UNET_PRESETS` that can be built at `unet`'s image size (one deeper than the size allows cannot)."""

    def builds(preset):
        try:
            unet_config(preset, unet.config.sample_size, unet.config.in_channels)
        except ValueError:
            return False
        return True

    return [preset for preset in UNET_PRESETS if builds(preset)]


def cnn_widths(target_parameters: int, in_channels: int, num_classes: int):
    """`(w, 2w, 5w)` with the parameter count closest to `target_parameters`."""
    def size(w):
        return count_parameters(SupervisedCNN(in_channels, num_classes, [r * w for r in CNN_WIDTH_RATIOS]))

    best = min(range(8, 129, 8), key=lambda w: abs(size(w) - target_parameters))
    return tuple(r * best for r in CNN_WIDTH_RATIOS)


def scored(labels, predictions, scores, class_names, seconds=None, nfe=None, positive_label=None) -> dict:
    """The report's metrics; `scores` `[N, K]` (binary: column `positive_label` is the ranking score of the AUC)."""
    m = classification_metrics(labels, predictions, probs=scores, class_names=class_names, positive_label=positive_label)
    out = {k: m.get(k) for k in METRICS}
    if len(class_names) == 2:
        positive = class_names[1 if positive_label is None else positive_label]
        out["f1_" + positive] = m["per_class"][positive]["f1"]
    if nfe is not None:
        out["nfe_per_image"] = round(float(torch.as_tensor(nfe, dtype=torch.float64).mean()), 2)
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
        out["images_per_s"] = round(len(labels) / seconds, 3)
    return {"num_images": len(labels), **out}


def ratio_scores(llr: torch.Tensor, positive: int) -> torch.Tensor:
    """`[N, 2]` scores whose column `positive` is the log-likelihood ratio (the AUC uses that column only)."""
    scores = torch.zeros(len(llr), 2, dtype=torch.float64)
    scores[:, positive] = llr.double()
    return scores


def decide(llr: torch.Tensor, positive: int, tau: float = 0.0) -> torch.Tensor:
    """Class ids: the positive class where `llr > tau`, else the other."""
    return torch.where(llr > tau, positive, 1 - positive)


def choose_threshold(llr: torch.Tensor, labels: torch.Tensor, positive: int) -> tuple:
    """The threshold `tau` on the log-likelihood ratio (positive vs negative) with the best balanced accuracy (ties:
    closest to 0), and the class priors that make Bayes' rule decide `llr > tau`: `log(p_pos / p_neg) = -tau`."""
    values = np.sort(llr.double().numpy())
    candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1], [0.0]])
    y = (labels == positive).numpy()

    def balanced(tau):
        predicted = llr.numpy() > tau
        return 0.5 * (predicted[y].mean() + (~predicted[~y]).mean())

    tau = max(candidates, key=lambda tau: (round(balanced(tau), 12), -abs(tau)))
    p_positive = float(1 / (1 + np.exp(tau)))
    priors = [p_positive, 1 - p_positive] if positive == 0 else [1 - p_positive, p_positive]
    return float(tau), priors, float(balanced(tau))


def generative_metrics(out, labels, class_names, seconds, positive: int) -> dict:
    llr = out.log_likelihood_ratio
    figures = scored(labels, out.label_ids, ratio_scores(llr, positive), class_names, seconds, out.nfe_per_image, positive)
    uniform = classification_metrics(labels, decide(llr, positive), class_names=class_names)
    figures["at_uniform_prior"] = {k: uniform[k] for k in ("accuracy", "balanced_accuracy")}
    return figures


def auc_of(labels, llr, positive: int) -> float:
    return classification_metrics(
        labels, decide(llr, positive), probs=ratio_scores(llr, positive), num_classes=2, positive_label=positive
    )["auc"]


def load_part_data(args, source: str, part: str = "data") -> dict:
    """The splits of a part's dataset, read with this run's `--image_size` and reading flags (the reference part's
    too, so that its U-Net and CNN see images read as `--data`'s; QA: it was read with the defaults, a colour reference
    set stayed colour under `--num_channels 1`); `--class_names` and `--positive_class` name `--data`'s classes."""
    if part == "data":
        return load_benchmark_data(
            source, args.class_names, args.positive_class, seed=args.seed, image_size=args.image_size,
            **reading_options(args),
        )  # fmt: skip
    try:
        return load_benchmark_data(source, seed=args.seed, image_size=args.image_size, **reading_options(args))
    except ValueError as error:  # named as the reference part's, whose data is read as --data's is
        raise ValueError(f"--reference_data {source}, read with this run's reading flags: {error}") from error


def binary_protocol(args, splits: dict, device, work_dir: str) -> dict:
    walls = {}
    if args.quick_sizes:
        splits = subsample_splits(splits, args.quick_sizes, args.seed)
    train, val, test = splits["train"], splits["val"], splits["test"]
    names = train.class_names
    positive = resolve_positive_label(args.positive_class, names, 2)
    # the stratified val and test subsets the ELBO and the exact likelihood score, each checked before any training
    val_elbo = val.subset(stratified_subset_index(val, args.elbo_val_images, args.seed, "--elbo_val_images of val"))
    val_ode = val.subset(
        stratified_subset_index(val, args.likelihood_val_images, args.seed + 1, "--likelihood_val_images of val")
    )
    test_ode_index = stratified_subset_index(
        test, args.likelihood_test_images, args.seed + 1, "--likelihood_test_images of test"
    )
    test_ode = test.subset(test_ode_index)
    with timed(walls, "unet_training"):
        pipe, final_loss = train_unet(args, splits, args.train_steps, args.class_balanced, f"{work_dir}/unet", True)
    pipe.set_positive_class(names[positive])  # log_likelihood_ratio: log p(x | positive) - log p(x | negative)
    pipe.to(device)
    elbo_args = dict(method="elbo", num_timesteps=args.elbo_timesteps, early_stop_confidence=args.early_stop_confidence,
                     timesteps_per_check=args.timesteps_per_check, seed=args.seed, batch_size=args.batch_size)

    # ELBO: weighting, timestep spacing and threshold (as priors) chosen on a stratified val subset.
    candidates = [(w, spacing) for w in args.weightings for spacing in args.timestep_spacings]
    with timed(walls, "elbo_val_selection"):
        val_outputs = {
            (w, spacing): classify(pipe, val_elbo.images, weighting=w, timestep_spacing=spacing, **elbo_args)
            for w, spacing in candidates
        }  # fmt: skip
    val_auc = {pair: auc_of(val_elbo.labels, out.log_likelihood_ratio, positive) for pair, out in val_outputs.items()}
    weighting, spacing = max(candidates, key=lambda pair: val_auc[pair])  # ties: the first listed
    chosen_val = val_outputs[(weighting, spacing)]
    tau, priors, val_balanced = choose_threshold(chosen_val.log_likelihood_ratio, val_elbo.labels, positive)
    start = time.perf_counter()
    out = classify(pipe, test.images, weighting=weighting, timestep_spacing=spacing, priors=priors, **elbo_args)
    seconds = time.perf_counter() - start
    walls["elbo_test"] = round(seconds, 1)
    elbo = generative_metrics(out, test.labels, names, seconds, positive)
    elbo["selection"] = {
        "val_images": len(val_elbo), "weighting": weighting, "timestep_spacing": spacing,
        "val_auc_by_weighting_and_spacing": {f"{w}/{sp}": v for (w, sp), v in val_auc.items()},
        "val_nfe_per_image_by_weighting_and_spacing": {
            f"{w}/{sp}": float(o.nfe_per_image.float().mean()) for (w, sp), o in val_outputs.items()
        },
        "threshold_on_llr": tau, "priors": priors, "val_balanced_accuracy": val_balanced,
    }  # fmt: skip
    elbo_llr = out.log_likelihood_ratio

    # Exact likelihood on fixed stratified subsets of val (threshold) and test.
    ode_args = dict(method="likelihood", solver="rk4", num_steps=args.ode_steps, step_spacing="quadratic",
                    num_probes=args.num_probes, seed=args.seed, batch_size=args.batch_size)
    with timed(walls, "likelihood_val_selection"):
        val_out = classify(pipe, val_ode.images, **ode_args)
    tau_ode, priors_ode, val_balanced_ode = choose_threshold(val_out.log_likelihood_ratio, val_ode.labels, positive)
    start = time.perf_counter()
    out = classify(pipe, test_ode.images, priors=priors_ode, **ode_args)
    seconds = time.perf_counter() - start
    walls["likelihood_test"] = round(seconds, 1)
    likelihood = generative_metrics(out, test_ode.labels, names, seconds, positive)
    likelihood["mean_bits_per_dim_true_class"] = float(out.bits_per_dim.gather(1, test_ode.labels[:, None]).mean())
    likelihood["selection"] = {
        "val_images": len(val_ode), "val_auc": auc_of(val_ode.labels, val_out.log_likelihood_ratio, positive),
        "threshold_on_llr": tau_ode, "priors": priors_ode, "val_balanced_accuracy": val_balanced_ode,
    }  # fmt: skip

    # Supervised CNN, about the U-Net's parameter count, same train split.
    probs, cnn = cnn_figures(args, pipe, (train, val, test), device, f"{work_dir}/cnn", walls, positive)

    index = torch.from_numpy(test_ode_index)
    on_subset = {
        "test_images": len(index),
        "auc": {
            "likelihood": likelihood["auc"],
            "elbo": auc_of(test.labels[index], elbo_llr[index], positive),
            "cnn": classification_metrics(
                test.labels[index], probs[index].argmax(1), probs=probs[index], positive_label=positive
            )["auc"],
        },
    }
    return {
        "data": f"{args.data_path}: {describe_splits(splits)}, read at {train.preprocessing.summary()}",
        "class_names": names,
        "positive_class": names[positive],
        "num_images": {"train": len(train), "val": len(val), "test": len(test)},
        "class_counts": {name: torch.bincount(s.labels, minlength=2).tolist() for name, s in splits.items()},
        "unet": unet_record(args, pipe, args.train_steps, args.class_balanced, final_loss, True),
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


def describe_splits(splits: dict) -> str:
    return ", ".join(f"{len(split)} {name}" for name, split in splits.items()) + " images"


def cnn_figures(args, pipe, splits, device, work_dir: str, walls: dict, positive=None):
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
    metrics = scored(test.labels, cnn.probs.argmax(1), cnn.probs, train.class_names, cnn.test_seconds, 1, positive)
    return cnn.probs, {**metrics, **cnn.info, "widths": widths}


def multiclass_protocol(args, source: str, splits: dict, device, work_dir: str, steps: int, reusable: bool) -> dict:
    walls = {}
    sizes = capped_sizes(splits, {"train": args.multiclass_train_images, "val": args.multiclass_val_images,
                                  "test": args.multiclass_test_images})  # fmt: skip
    train, val, test = (
        split.subset(stratified_subset_index(split, sizes[name], args.seed, f"the {name} split of {source}"))
        for name, split in splits.items()
    )  # fmt: skip
    names = train.class_names
    with timed(walls, "unet_training"):
        subsets = {"train": train, "val": val, "test": test}
        pipe, final_loss = train_unet(args, subsets, steps, False, f"{work_dir}/unet", reusable)
    pipe.to(device)
    num_timesteps = sum(count for count, _ in args.pruning)
    start = time.perf_counter()
    out = classify(pipe, test.images, method="elbo", num_timesteps=num_timesteps, pruning=args.pruning,
                   weighting="uniform", seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    walls["elbo_test"] = round(seconds, 1)
    elbo = scored(test.labels, out.label_ids, out.probs, names, seconds, out.nfe_per_image)

    _, cnn = cnn_figures(args, pipe, (train, val, test), device, f"{work_dir}/cnn", walls)
    return {
        "data": f"{source}: read at {train.preprocessing.summary()}; stratified subsets: "
        f"{len(train)} train, {len(val)} val (CNN checkpoint only), {len(test)} test images",
        "class_names": names,
        "unet": unet_record(args, pipe, steps, False, final_loss, reusable),
        "elbo_settings": {"weighting": "uniform", "num_timesteps": num_timesteps, "pruning": args.pruning,
                          "seed": args.seed, "chosen": "fixed in advance; val not used"},
        "methods": {"elbo": elbo, "cnn": cnn},
        "wall_seconds": walls,
    }


def targets(results: dict, total_seconds: float) -> dict:
    """Binary data: AUC at least the CNN's (the ELBO on all test images, the exact likelihood on its test subset);
    multi-class data: ELBO accuracy at most 3 points below the CNN's; the whole run within 30 minutes."""
    entries = {}
    for name, result in results.items():
        methods = result["methods"]
        if "likelihood" in methods:
            on_subset = result["likelihood_subset_comparison"]["auc"]
            entries[f"{name}_elbo_test_auc"] = target_entry(methods["elbo"]["auc"], methods["cnn"]["auc"])
            entries[f"{name}_likelihood_test_subset_auc"] = target_entry(on_subset["likelihood"], on_subset["cnn"])
        else:
            entries[f"{name}_cnn_minus_elbo_accuracy_points"] = target_entry(
                100 * (methods["cnn"]["accuracy"] - methods["elbo"]["accuracy"]), 3.0, higher_is_better=False
            )
    entries["wall_seconds_total"] = target_entry(total_seconds, 30 * 60, higher_is_better=False)
    return entries


def run_parts(args, device, work_dir: str) -> dict:
    """`{dataset name: figures}` of the parts asked for (the reference part's `<name>_reference` where its dataset's
    name is `--data`'s too; QA: it was then not run at all); every dataset is read (and checked), and a `--unet_dir`
    model's reading checked against `--data`'s, before any training."""
    data = {}
    if "data" in args.parts:
        splits = load_part_data(args, args.data_path)
        if args.unet_dir:
            check_unet_dir(args.unet_dir, splits["train"].preprocessing, class_conditional=True)
        data[dataset_name(args.data_path)] = ("data", args.data_path, splits)
    if "reference" in args.parts:
        reference = load_part_data(args, args.reference_data, "reference")
        name = dataset_name(args.reference_data)
        data[f"{name}_reference" if name in data else name] = ("reference", args.reference_data, reference)
    results = {}
    for name, (part, source, splits) in data.items():
        if part == "data" and splits["train"].num_classes == 2:
            results[name] = binary_protocol(args, splits, device, f"{work_dir}/{part}")
        elif part == "data":
            results[name] = multiclass_protocol(args, source, splits, device, f"{work_dir}/{part}", args.train_steps, True)
        else:
            results[name] = multiclass_protocol(
                args, source, splits, device, f"{work_dir}/{part}", args.reference_train_steps, False
            )
    return results


def main():
    args = parse_args()
    device = setup(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        results = run_parts(args, device, work_dir)
    total = round(time.perf_counter() - start, 1)
    figures = {
        **results,
        "selection": "binary data: the ELBO's weighting and timestep spacing (best AUC) and the ELBO's and the exact "
        "likelihood's decision thresholds (as priors, best balanced accuracy) chosen on stratified val subsets; "
        "multi-class data (the reference part's too): the ELBO's settings fixed in advance, val not used; every "
        "CNN's checkpoint chosen on val (multi-class data: a stratified val subset); test images are used only for "
        "reporting",
        "targets": targets(results, total),
        "wall_seconds_total": total,
        "budget": {"num_threads": torch.get_num_threads(), "parts": args.parts},
    }
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

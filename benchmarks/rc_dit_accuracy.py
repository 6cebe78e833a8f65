"""RC-DiT representation vs contrastive ViT baselines, same architecture, same budget, same protocols.

For each dataset (PneumoniaMNIST and Fashion-MNIST, or the one `--data` names: any dataset
`load_image_classification_data` reads), in one run:

1. RC-DiT: a ViT encoder and a DiT (`train_rc_dit`, its default recipe: r the mean of the final-layernormed patch
   tokens, standardised per dimension; in every image 90% of the DiT's patches of x_t hidden and reconstructed
   from r, each standardised per patch) trained together on the unlabeled train images;
2. baselines (`--baselines`, both by default): the SAME ViT architecture from the SAME initial weights, trained on
   the same images for the same number of optimizer steps, batch size and learning rate with a contrastive (SimCLR)
   and a self-distillation (DINO) objective (`training.train_contrastive_encoder`, kornia augmentations), each with
   the objective `BASELINES` gives it (chosen on val in `rc_dit_bench_recipe`), read out as it was trained;
3. optionally a pretrained encoder (`--pretrained`, a DINOv2 directory, or `facebook/dinov2-small` where the Hub is
   reachable), three arms that all read images through its image processor's size and ImageNet normalisation:
   frozen; adapted on the same unlabeled images for the same steps by DINO (its own objective); and an RC-DiT whose
   encoder starts from it (so the diffusion objective is what is compared);
4. floors: raw pixels and the encoder at its random initialisation (the same initial weights);
5. every feature source scored by `probing.evaluate_protocols`: label-free k-means + Hungarian on test (accuracy,
   macro-F1, NMI, ARI; the space, standardised, L2-normalised or PCA-whitened, chosen per source by the stability of
   its k-means on the unlabeled train features; beside it, the space whose val k-means scores the best macro-F1
   against the val labels, and the label-free k-means run on val), prototypes and k-NN on standardised features
   with n = 1, 5, 10 and all labelled train images per class (5 episodes), and a linear probe on all train labels.
   A binary set is scored for its positive class too (`--positive_class`, with `--data`; default class 1): each
   protocol's sensitivity, specificity and F1 of that class beside the class-averaged figures.
   The RC-DiT's DiT block activations are a second source: the (block, t) pair is chosen by linear-probe accuracy
   on val, then scored like the others.
6. a PNG grid per dataset: test reference images, samples generated from their representations, and the hidden
   patches redrawn from r as in training (what the default recipe's DiT learns; its samples are noise); the PNGs
   are named after the results file (`--output`).

`--merge` summarises full runs of the same budget with other `--seed`s (mean and standard deviation of every
figure, the targets on the means), e.g. runs made in parallel processes.

Selection uses val only; test is for reporting. Targets (`BASELINE_MARGIN_TARGETS`), over the best contrastive
baseline (per metric, the highest of the baselines run): on PneumoniaMNIST (the published margins over DINOv2)
label-free accuracy >= baseline + 6 points and macro-F1 >= baseline + 13 points; on Fashion-MNIST label-free and
10-shot accuracy >= the baseline's; everywhere label-free accuracy >= the floors'.

    python benchmarks/rc_dit_accuracy.py --quick
    python benchmarks/rc_dit_accuracy.py      # writes benchmarks/results/rc_dit_accuracy.json and the PNG grids
    python benchmarks/rc_dit_accuracy.py --quick --data my.npz --class_names a b c
    python benchmarks/rc_dit_accuracy.py --quick --data ich.npz --class_names normal bleed --positive_class bleed
    python benchmarks/rc_dit_accuracy.py --merge seed0.json seed1.json seed2.json --output merged.json
    # after a change to the RC-DiT recipe: retrain only the RC-DiT, the baselines' features from an earlier run
    python benchmarks/rc_dit_accuracy.py --seed 0 --features_dir features_seed0 --output before.json
    python benchmarks/rc_dit_accuracy.py --seed 0 --reuse_baseline_features features_seed0 --output after.json
"""

import argparse
import json
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import _common  # noqa: E402
from _common import (  # noqa: E402
    SHARED_IMAGE_DATASETS,
    add_data_options,
    base_parser,
    check_data_options,
    data_path,
    dataset_name,
    figure_title,
    load_benchmark_data,
    over_seeds,
    read_seed_runs,
    reading_options,
    report,
    setup,
    subsample_splits,
    target_entry,
    timed,
    training_arguments,
)
from rc_dit_bench_recipe import BASELINES as RECIPE_BASELINES  # noqa: E402
from rc_dit_bench_recipe import baseline_readout  # noqa: E402

from diffusion_classifiers.data import stratified_subset_indices  # noqa: E402
from diffusion_classifiers.metrics import BINARY_SCORES, resolve_positive_label  # noqa: E402
from diffusion_classifiers.models import (  # noqa: E402
    RC_DIT_SIZES,
    encode_representation,
    load_pretrained_encoder,
    pretrained_preprocessing,
    representation_of,
)
from diffusion_classifiers.plots import label_efficiency_curve, plot_label_efficiency  # noqa: E402
from diffusion_classifiers.pipelines import (  # noqa: E402
    RepresentationConditionedDiTImageVariationPipeline,
    RepresentationConditionedDiTPipeline,
)
from diffusion_classifiers.probing import evaluate_protocols, fit_probe_grid  # noqa: E402
from diffusion_classifiers.training import (  # noqa: E402
    DEFAULT_MASKED_TARGET,
    RCDiTJointModel,
    TrainingArguments,
    add_encoder_args,
    build_vit_encoder_from_args,
    redraw_hidden_patches,
    to_display_range,
    train_contrastive_encoder,
    train_rc_dit,
)

NAME = "rc_dit_accuracy"
QUICK_SIZES = {"train": 256, "val": 128, "test": 128}  # capped at each split's size
MOST_SHOTS = 10  # the largest few-shot protocol of `evaluate_protocols` (shots 1, 5, 10 and all)
# margins (points) the RC-DiT representation must have over the contrastive baseline: per dataset, headline metric
# -> points (PneumoniaMNIST: the published margins over DINOv2); over the floors, on every dataset
BASELINE_MARGIN_TARGETS = {
    "pneumoniamnist": {"label_free_accuracy": 6.0, "label_free_macro_f1": 13.0},
    "fashion_mnist": {"label_free_accuracy": 0.0, "prototype_10shot_accuracy": 0.0},
}
FLOORS = ("raw_pixels", "random_encoder")
# baseline -> the rc_dit_bench_recipe baseline it is (train_contrastive_encoder method, objective keywords), as chosen
# on val there: SimCLR on the pooler; DINO on the CLS token (k-means 32.1% vs 30.9% for its tanh pooler, 400 steps,
# 3 seeds) with BatchNorm in its head's MLP (44.9% vs 33.5% without, Fashion-MNIST, 28 px, 1,500 steps)
RECIPE_BASELINE_OF = {"simclr": "simclr", "dino": "dino_cls_bn"}
BASELINES = {baseline: RECIPE_BASELINES[recipe] for baseline, recipe in RECIPE_BASELINE_OF.items()}
# the new ViT's sizes where their flags are not given: a full run's, a --quick run's
ENCODER_SIZES = {"encoder_hidden_size": 128, "encoder_num_layers": 4, "encoder_num_heads": 4}
QUICK_ENCODER_SIZES = {"encoder_hidden_size": 32, "encoder_num_layers": 2, "encoder_num_heads": 2}


def parse_args():
    parser = base_parser(__doc__)
    add_data_options(parser, "the --datasets")
    parser.add_argument(
        "--datasets", nargs="+", default=list(SHARED_IMAGE_DATASETS), choices=list(SHARED_IMAGE_DATASETS),
        help=f"the shared data sets run when --data is not given; default {list(SHARED_IMAGE_DATASETS)}",
    )  # fmt: skip
    parser.add_argument(
        "--image_size", type=int, default=None,
        help="square side in px, divisible by --encoder_patch_size and the patch of --dit_size (4 for tiny and XS); "
        "default: the data's (folders 32)",
    )  # fmt: skip
    parser.add_argument("--dit_size", default=None, help="default: tiny with --quick, else XS")
    add_encoder_args(parser)
    parser.add_argument(
        "--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES),
        help=f"contrastive objectives, each trained as a baseline; default {list(BASELINES)}",
    )  # fmt: skip
    parser.add_argument("--max_train_steps", type=int, default=None, help="both methods; default 20 quick, else 1500")
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--max_train_images", type=int, default=10000, help="per dataset (stratified subset)")
    parser.add_argument("--max_eval_images", type=int, default=2000, help="val and test (stratified subsets)")
    parser.add_argument("--dit_timesteps", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--pretrained", default=None, help="a pretrained encoder directory or Hub id, e.g. DINOv2")
    parser.add_argument(
        "--features_dir", default=None,
        help="also write each source's train / val / test features and labels to DIR/<dataset>_<source>.safetensors",
    )  # fmt: skip
    parser.add_argument(
        "--reuse_baseline_features", default=None,
        help="read each baseline's features from DIR/<dataset>_<baseline>.safetensors where that file exists "
        "(--features_dir of a run with the same data, seed, budget and baseline objective, which the file records) "
        "instead of training it again, e.g. after a change to the RC-DiT recipe; the baselines without a file are "
        "trained",
    )  # fmt: skip
    parser.add_argument("--num_samples", type=int, default=8, help="reference images in the PNG grid")
    parser.add_argument("--sample_steps", type=int, default=None, help="denoising steps; default 5 quick, else 100")
    parser.add_argument(
        "--merge", nargs="+", default=None,
        help="results files of full runs with the same budget and other --seed: their mean and spread, train nothing",
    )  # fmt: skip
    parser.set_defaults(num_threads=1, **ENCODER_SIZES)  # what --help shows
    quick_sizes = ", ".join(f"--{flag} {size}" for flag, size in QUICK_ENCODER_SIZES.items())
    parser.epilog = f"--quick: the ViT's sizes not given are {quick_sizes}"
    # argparse sets a default only where the namespace has no value: these stay None unless given, so that --quick
    # keeps the sizes given (QA: it replaced them without a word)
    args = parser.parse_args(namespace=argparse.Namespace(**dict.fromkeys(ENCODER_SIZES)))
    check_data_options(parser, args)
    if args.class_names and not args.data:
        parser.error("--class_names: expected with --data (the shared data sets carry their own names)")
    if args.positive_class and not args.data:
        parser.error("--positive_class: expected with --data (PneumoniaMNIST's positive class is pneumonia)")
    args.dit_size = args.dit_size or ("tiny" if args.quick else "XS")
    check_image_size(parser, args)
    args.max_train_steps = args.max_train_steps or (20 if args.quick else 1500)
    args.sample_steps = args.sample_steps or (5 if args.quick else 100)
    for flag, size in (QUICK_ENCODER_SIZES if args.quick else ENCODER_SIZES).items():
        if getattr(args, flag) is None:
            setattr(args, flag, size)
    return args


def check_image_size(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--image_size`, where given, is tiled by the encoder's patches and the DiT's (its size's), checked before any
    image is read (review: a DiT patch that did not divide it was said after reading, naming a flag this script
    lacks)."""
    if args.image_size is None:
        return
    dit_patch = RC_DIT_SIZES[args.dit_size]["patch_size"] if args.dit_size in RC_DIT_SIZES else 1
    patches = {"--encoder_patch_size": args.encoder_patch_size, f"the patch of --dit_size {args.dit_size}": dit_patch}
    if args.image_size < 1 or any(args.image_size % patch for patch in patches.values()):
        parser.error(
            f"--image_size {args.image_size}: expected a positive multiple of "
            + " and of ".join(f"{name} ({patch})" for name, patch in patches.items())
        )


def load_splits(path: Path, args) -> dict:
    """Stratified subsets of the splits, of about the sizes asked for (a split no larger is kept whole)."""
    splits = load_benchmark_data(
        str(path), args.class_names if args.data else None, args.positive_class, seed=args.seed,
        image_size=args.image_size, **reading_options(args),
    )  # fmt: skip
    sizes = QUICK_SIZES if args.quick else {"train": args.max_train_images, "val": args.max_eval_images,
                                           "test": args.max_eval_images}  # fmt: skip
    splits = subsample_splits(splits, sizes, args.seed)
    check_shots_fit(splits["train"], path)
    return splits


def check_shots_fit(train, path: Path, shots: int = MOST_SHOTS) -> None:
    """Every class has the `shots` train images the largest few-shot protocol labels: checked before any training."""
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    if int(counts.min()) < shots:
        short = int(counts.argmin())
        raise ValueError(
            f"{path}: class {train.class_names[short]!r} has {int(counts[short])} train images; the {shots}-shot "
            f"protocol needs {shots} of every class (more images, or a larger train split)"
        )


def training_args(args, output_dir: str) -> TrainingArguments:
    """One budget for both methods: steps, batch, learning rate, schedule, seed."""
    return training_arguments(
        output_dir, args.max_train_steps, args.learning_rate, min(100, args.max_train_steps // 10), args.seed,
        train_batch_size=args.train_batch_size,
    )  # fmt: skip


@torch.no_grad()
def encode(function, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`function(chunk)` of every chunk of `images`, float32 on the CPU."""
    return torch.cat([function(chunk).float().cpu() for chunk in images.split(batch_size)])


def protocols(features: dict, splits: dict, seed: int, positive_class: Optional[str] = None) -> dict:
    """`evaluate_protocols` on `{split: features}`; a binary task scored for `positive_class` too (default class 1)."""
    train = splits["train"]
    return evaluate_protocols(
        features["train"], train.labels, features["test"], splits["test"].labels, num_classes=train.num_classes,
        val_features=features["val"], val_labels=splits["val"].labels, seed=seed, standardize=True,
        class_names=train.class_names, positive_label=positive_class,
    )  # fmt: skip


def save_features(path: Path, features: dict, splits: dict, objective: Optional[tuple] = None) -> None:
    """`{split}_features` (the source's one feature, float32) and `{split}_labels` of every split, as safetensors;
    a baseline's `objective` (its `BASELINES` entry) in the file's metadata, checked when the file is reused."""
    tensors = {}
    for name, split in splits.items():
        feature = features[name]
        feature = next(iter(feature.values())) if isinstance(feature, dict) else feature
        tensors[f"{name}_features"] = torch.as_tensor(feature).float().contiguous()
        tensors[f"{name}_labels"] = torch.as_tensor(split.labels).long()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=None if objective is None else {"objective": json.dumps(objective)})


def load_features(path: Path, splits: dict, objective: tuple) -> dict:
    """`{split: features}` written by `save_features`, checked against the splits' labels and the baseline's
    `objective` (a file of another objective, or of none recorded, would compare a different baseline)."""
    with safe_open(str(path), "pt") as handle:
        recorded = (handle.metadata() or {}).get("objective")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if recorded is None or json.loads(recorded) != json.loads(json.dumps(objective)):
        holds = "records no objective" if recorded is None else f"holds features of the objective {recorded}"
        raise ValueError(
            f"--reuse_baseline_features: {path} {holds}, expected {json.dumps(objective)} (BASELINES); "
            "delete it to train this baseline again"
        )
    for name, split in splits.items():
        if not torch.equal(tensors.get(f"{name}_labels", torch.empty(0)), torch.as_tensor(split.labels).long()):
            raise ValueError(f"--reuse_baseline_features: {path} holds other {name} images than this run's {name} split")
    return {name: tensors[f"{name}_features"] for name in splits}


def reused_baseline_features(directory: str, name: str, baselines: list, splits: dict) -> dict:
    """`{baseline: {split: features}}` of the baselines whose `--features_dir` file is in `directory`."""
    paths = {baseline: Path(directory) / f"{name}_{baseline}.safetensors" for baseline in baselines}
    found = {baseline: path for baseline, path in paths.items() if path.is_file()}
    if not found:
        expected = ", ".join(str(path) for path in paths.values())
        raise FileNotFoundError(f"--reuse_baseline_features: expected one of {expected} (written by --features_dir)")
    return {baseline: load_features(path, splits, BASELINES[baseline]) for baseline, path in found.items()}


def dit_block_source(pipe, splits: dict, timesteps, seed: int) -> tuple[dict, dict]:
    """DiT block activations: every (block, t) probed, the pair with the best val accuracy kept."""
    features = {name: pipe.dit_features(split.images, timesteps=timesteps, noise_seed=seed) for name, split in splits.items()}
    grid = fit_probe_grid(features["train"], splits["train"].labels, features["val"], splits["val"].labels, pool="mean")
    pair = grid.best_pair
    chosen = {name: {pair: f[pair]} for name, f in features.items()}
    val_accuracy = {f"{b}@{t}": round(m["val"]["accuracy"], 4) for (b, t), m in grid.metrics.items()}
    return chosen, {"chosen_pair": list(pair), "val_accuracy_per_pair": val_accuracy}


def sample_grid(pipe, references: torch.Tensor, num_steps: int, seed: int, path: Path, title: str) -> None:
    """Rows: reference images; samples generated from their representations (guidance 1); what the default recipe
    scores its hidden patches against (each standardised per patch) and, with 90% of the DiT's patches hidden as in
    training, those patches redrawn from r (`redraw_hidden_patches`; the visible 10% shown as the target)."""
    generator = [torch.Generator().manual_seed(seed + i) for i in range(len(references))]
    variation = RepresentationConditionedDiTImageVariationPipeline.from_pipe(pipe)
    samples = variation(references, num_inference_steps=num_steps, generator=generator).images
    target, redrawn, _ = redraw_hidden_patches(
        RCDiTJointModel(pipe.encoder, pipe.transformer), references.to(pipe.device), pipe.scheduler,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    rows = {
        "reference": references / 2 + 0.5, "generated": samples.cpu(),
        "target": to_display_range(target, DEFAULT_MASKED_TARGET).cpu(),
        "redrawn from r": to_display_range(redrawn, DEFAULT_MASKED_TARGET).cpu(),
    }  # fmt: skip
    n = len(references)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.4 * len(rows)), squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        for i in range(n):
            ax = axes[row, i]
            ax.imshow(images[i].clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(textwrap.fill(title, 16 * n), fontsize=9)  # about 16 characters fit over each image
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline(result: dict) -> dict:
    """The figures of the results table (benchmarks/RESULTS.md); on a binary (imbalanced) set the class-balanced ones
    come first, then the positive class's sensitivity, specificity and F1 (the published study's F1 is of the finding,
    haemorrhage). Label-free: k-means in the space chosen without labels, in the standardised space (the only one
    before 2026-12-01) and, beside them, in the space chosen with the val labels; the label-free k-means run on val,
    the split choices are made on."""
    binary = result["num_classes"] == 2
    label_free = ("balanced_accuracy", "macro_f1", "accuracy") if binary else \
        ("accuracy", "macro_f1", "balanced_accuracy")
    standardized = result["label_free_by_normalization"]["standardize"]
    positive = {
        **{f"label_free_{name}": result["label_free"][name] for name in BINARY_SCORES},
        "prototype_10shot_positive_f1": result["prototype"]["10"]["positive_f1_mean"],
        "linear_probe_positive_f1": result["linear_probe"]["positive_f1"],
    } if binary else {}  # fmt: skip
    return {
        **{f"label_free_{name}": result["label_free"][name] for name in label_free},
        **positive,
        **{f"label_free_standardized_{name}": standardized[name] for name in ("accuracy", "macro_f1")},
        **{f"label_chosen_{name}": result["label_chosen"][name] for name in ("accuracy", "macro_f1")},
        **{f"label_free_on_val_{name}": result["label_free_on_val"][name] for name in label_free},
        "prototype_10shot_accuracy": result["prototype"]["10"]["accuracy_mean"],
        "knn_10shot_accuracy": result["knn"]["10"]["accuracy_mean"],
        "linear_probe_accuracy": result["linear_probe"]["accuracy"],
    }


def positive_class_name(train, positive_class: Optional[str]) -> Optional[str]:
    """The class a binary task's sensitivity, specificity and F1 are of (`--positive_class`, default class 1)."""
    label = resolve_positive_label(positive_class, train.class_names, train.num_classes)
    return None if label is None else train.class_names[label]


def train_pretrained_arms(args, train_images: torch.Tensor, tmp: str, walls: dict) -> dict:
    """`source -> features function` of the three arms started from `--pretrained` (see the module docstring)."""
    from transformers import AutoModel

    preprocessing = pretrained_preprocessing(args.pretrained)
    frozen = load_pretrained_encoder(args.pretrained)
    with timed(walls, "train_pretrained_dino"):
        adapted = train_contrastive_encoder(
            training_args(args, tmp + "/pretrained_dino"), train_images, AutoModel.from_pretrained(args.pretrained),
            method="dino", preprocessing=preprocessing,
        )  # fmt: skip
    with timed(walls, "train_rc_dit_from_pretrained"):
        encoder, transformer, _, _ = train_rc_dit(
            training_args(args, tmp + "/pretrained_rc"), train_images, AutoModel.from_pretrained(args.pretrained),
            dit_size=args.dit_size, encoder_preprocessing=preprocessing,
        )  # fmt: skip
    return {
        "pretrained_frozen": frozen.encode,
        "pretrained_dino_adapted": lambda x: encode_representation(adapted, x, preprocessing=preprocessing),
        "rc_dit_from_pretrained": lambda x: representation_of(encoder, transformer, x),
    }


def baseline_features(encoder, baseline: str):
    """The features function of a trained baseline encoder, read out as it was trained (`BASELINES`)."""
    return lambda x: encode_representation(encoder, x, baseline_readout(RECIPE_BASELINE_OF[baseline]))


def run_dataset(name: str, path: Path, args, device, figure_prefix: Path) -> dict:
    walls, details = {}, {}
    splits = load_splits(path, args)
    train_images = splits["train"].images
    random_encoder = build_vit_encoder_from_args(args, train_images).eval().to(device)
    reused = {}
    if args.reuse_baseline_features:  # checked before any training
        reused = reused_baseline_features(args.reuse_baseline_features, name, args.baselines, splits)
        details["features_reused_from"] = {baseline: args.reuse_baseline_features for baseline in reused}
    baselines = {}
    with tempfile.TemporaryDirectory() as tmp:
        with timed(walls, "train_rc_dit"):
            encoder, transformer, scheduler, rc_summary = train_rc_dit(
                training_args(args, tmp + "/rc"), train_images, build_vit_encoder_from_args(args, train_images),
                dit_size=args.dit_size,
            )
        for baseline in (baseline for baseline in args.baselines if baseline not in reused):
            method, objective = BASELINES[baseline]
            with timed(walls, f"train_{baseline}"):
                baselines[baseline] = train_contrastive_encoder(
                    training_args(args, f"{tmp}/{baseline}"), train_images, build_vit_encoder_from_args(args, train_images),
                    method=method, **objective,
                ).to(device)
        pretrained_arms = train_pretrained_arms(args, train_images, tmp, walls) if args.pretrained else {}
    pipe = RepresentationConditionedDiTPipeline(encoder.to(device), transformer.to(device), scheduler)
    pipe.set_progress_bar_config(disable=True)

    sources = {}
    with timed(walls, "evaluate"):
        feature_functions = {
            "rc_dit": lambda x: representation_of(encoder, transformer, x),
            **{baseline: baseline_features(model, baseline) for baseline, model in baselines.items()},
            "raw_pixels": lambda x: x.flatten(1),
            "random_encoder": lambda x: encode_representation(random_encoder, x, transformer.config.representation_readout),
        }

        def encoded(function) -> dict:
            return {s: encode(function, split.images) for s, split in splits.items()}

        def score(source: str, features: dict) -> None:
            sources[source] = protocols(features, splits, args.seed, args.positive_class)
            if args.features_dir:
                save_features(Path(args.features_dir) / f"{name}_{source}.safetensors", features, splits, BASELINES.get(source))

        for source in ["rc_dit", *args.baselines, *FLOORS]:
            score(source, reused[source] if source in reused else encoded(feature_functions[source]))
        dit_features, details["rc_dit_blocks"] = dit_block_source(pipe, splits, args.dit_timesteps, args.seed)
        score("rc_dit_blocks", dit_features)
        for source, function in pretrained_arms.items():
            score(source, encoded(function))
    with timed(walls, "sample_grid"):
        grid_path = figure_prefix.with_name(f"{figure_prefix.name}_samples_{name}.png")
        test = splits["test"]  # every class shown, about in its share (the carved splits are sorted by class)
        shown = stratified_subset_indices(test.labels, args.num_samples, args.seed)[: args.num_samples]
        references = test.images[shown]
        title = figure_title(f"RC-DiT {args.dit_size}, {name}", args.quick)
        sample_grid(pipe, references, args.sample_steps, args.seed, grid_path, title)

    efficiency_path = figure_prefix.with_name(f"{figure_prefix.name}_label_efficiency_{name}.png")
    curves = {source: label_efficiency_curve(result, "prototype") for source, result in sources.items()}
    title = figure_title(f"Prototype classifier on {name}: labels per class", args.quick)
    plot_label_efficiency(curves, str(efficiency_path), title=title)

    headlines = {source: headline(result) for source, result in sources.items()}
    return {
        "path": str(path),
        "preprocessing": splits["train"].preprocessing.to_dict(),  # how the images were read (QA: not recorded)
        "sizes": {s: len(split.labels) for s, split in splits.items()},
        "class_names": splits["train"].class_names,
        "positive_class": positive_class_name(splits["train"], args.positive_class),
        "headline": headlines,
        "margin_points": {
            source: {metric: round(100 * (headlines["rc_dit"][metric] - value), 2) for metric, value in h.items()}
            for source, h in headlines.items() if source != "rc_dit"
        },
        "protocols": sources,
        "details": details,
        "final_training_loss": {"rc_dit": rc_summary.final_loss},
        # beside the results file: its name; a quick run's are removed when it ends: None, with a note
        **_common.figure_entries(args, sample_grid=grid_path, label_efficiency_plot=efficiency_path),
        "wall_seconds": walls,
    }


def targets(results: dict, baselines: list) -> dict:
    """`figures.targets`: the RC-DiT representation's margins over the best contrastive baseline (per metric, the
    smallest margin over `baselines`; `BASELINE_MARGIN_TARGETS`) and, label-free, over the floors (raw pixels, the
    random encoder), in points."""
    entries = {}
    for name, result in results.items():
        margins = result["margin_points"]
        for metric, points in BASELINE_MARGIN_TARGETS.get(name, {}).items():
            margin = min(margins[baseline][metric] for baseline in baselines)
            entries[f"{name}_{metric}_margin_over_best_contrastive_points"] = target_entry(margin, points)
        for floor in FLOORS:
            entries[f"{name}_label_free_accuracy_margin_over_{floor}_points"] = target_entry(
                margins[floor]["label_free_accuracy"], 0.0
            )
    return entries


def run_baselines(record: dict) -> list:
    """The baselines a recorded run compared with (one, `budget.baseline`, before `--baselines`)."""
    budget = record["figures"]["budget"]
    return budget["baselines"] if "baselines" in budget else [budget["baseline"]]


def merge_runs(paths: list) -> dict:
    """Figures of several single-seed runs (same budget, one seed each) as one: per dataset, each source's headline
    per seed and its mean and standard deviation, the margins' means (`margin_points`, what the targets read) and
    standard deviations, and the targets on those means."""
    runs = read_seed_runs(paths, lambda record: record["figures"]["budget"])
    per_dataset = {}
    for seed, record in runs.items():
        for name, result in record["figures"]["datasets"].items():
            per_dataset.setdefault(name, []).append((seed, result))
    datasets = {name: merged_dataset(results) for name, results in per_dataset.items()}
    first = next(iter(runs.values()))
    return {
        "budget": first["figures"]["budget"],
        "seeds": list(runs),
        "datasets": datasets,
        "targets": targets(datasets, run_baselines(first)),
        "merged_from": [{"path": Path(r["path"]).name, "command": r["command"], "seed": seed,
                         "date_utc": r["environment"]["date_utc"], "total_wall_seconds": r["figures"]["total_wall_seconds"]}
                        for seed, r in runs.items()],  # fmt: skip
    }


def merged_dataset(runs: list) -> dict:
    """One dataset's `[(seed, result)]` summarised: `headline` and `margin_points` as means over the seeds."""
    headlines = [result["headline"] for _, result in runs]
    margins = [result["margin_points"] for _, result in runs]
    return {
        "headline": over_seeds(headlines, np.mean, 4), "headline_std": over_seeds(headlines, np.std, 4),
        "margin_points": over_seeds(margins, np.mean, 4), "margin_points_std": over_seeds(margins, np.std, 4),
        "per_seed": {seed: result["headline"] for seed, result in sorted(runs, key=lambda run: run[0])},
    }  # fmt: skip


def main():
    args = parse_args()
    device = setup(args)
    if args.merge:
        report(NAME, args, device, merge_runs(args.merge))
        return
    output = _common.results_path(NAME, args)
    output_dir = _common.figure_dir(args, output)
    output_dir.mkdir(parents=True, exist_ok=True)
    figure_prefix = output_dir / output.stem  # the PNGs are named after their results file
    if args.data:
        paths = {dataset_name(args.data): Path(args.data)}
    else:
        paths = {name: data_path(*SHARED_IMAGE_DATASETS[name]) for name in args.datasets}  # all of them before any training
    start = time.perf_counter()
    results = {name: run_dataset(name, path, args, device, figure_prefix) for name, path in paths.items()}
    figures = {
        "budget": {
            "optimizer_steps": args.max_train_steps, "train_batch_size": args.train_batch_size,
            "learning_rate": args.learning_rate, "dit_size": args.dit_size, "baselines": args.baselines,
            "positive_class": args.positive_class,
            "baseline_objectives": {baseline: BASELINES[baseline] for baseline in args.baselines},
            "encoder": {"hidden_size": args.encoder_hidden_size, "num_layers": args.encoder_num_layers,
                        "num_heads": args.encoder_num_heads, "patch_size": args.encoder_patch_size},
        },
        "seed": args.seed,
        "datasets": results,
        "targets": targets(results, args.baselines),
        "total_wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    report(NAME, args, device, figures)


if __name__ == "__main__":
    main()

"""The frozen-U-Net-feature method end to end: probe every (block, t), choose on val, report on test.

Used by `diffusion-classifiers demo` and `benchmarks/unet_features_accuracy.py`, so both report the same way.
"""

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from diffusers import DDPMScheduler, UNet2DModel

from .data import LabeledImages
from .atomic_files import write_texts_atomically
from .provenance import run_environment
from .confidence_intervals import intervals_of_metrics
from .evaluation import ranked_by_log_odds
from .features import DiffusionFeatureExtractor, block_label, with_hypercolumns
from .operating_points import positive_log_odds
from .metrics import (
    absent_classes_note,
    auc_text,
    average_precision_rows,
    calibration_metrics,
    calibration_rows,
    classification_metrics,
    decision_sentence,
    intervals_note,
    mark_absent_classes,
    metric_row,
    metrics_table_header,
    per_class_table,
    percent,
    positive_class_rows,
    prevalence_note,
    resolve_positive_label,
    selective_rows,
)
from .pipelines import UNetFeatureClassifierPipeline
from .progress_bars import bar_visibility
from .models.unet_presets import DEFAULT_TIMESTEPS
from .probing import ProbeGridResult, fit_probe_grid, kmeans_evaluate, label_free_kmeans
from .probing.protocols import MAX_SELECTION_IMAGES, checked_num_clusters
from .validation import check_seed

__all__ = [
    "DEFAULT_TIMESTEPS",
    "UNetFeatureStudy",
    "check_study_splits",
    "checked_train_index",
    "extract_study_features",
    "labels_in_train_class_ids",
    "render_report",
    "run_unet_feature_study",
    "study_from_features",
    "summary_table",
    "write_study_report",
]

SPLITS = ("train", "val", "test")


@dataclass
class UNetFeatureStudy:
    """What a study produced: the fitted pipeline, the whole probe grid, test / clustering metrics, and the test
    labels and probabilities the test metrics and plots come from. `kmeans_metrics` is k-means on the test features
    of the pair chosen with labels; `kmeans_label_free` on the pair, normalisation and K chosen without labels on the
    train images; `kmeans_raw_pixels` on the test images' pixels, normalisation (and K) chosen the same way on the
    train pixels (both `label_free_kmeans` results). `test_ranking` orders the test images for the ROC and
    precision-recall curves (a binary study's log-odds, as evaluate's; the probabilities where None)."""

    pipeline: UNetFeatureClassifierPipeline
    probe: ProbeGridResult
    test_metrics: dict
    kmeans_metrics: dict
    class_names: List[str]
    test_labels: torch.Tensor
    test_probs: torch.Tensor
    extra: Dict[str, object] = field(default_factory=dict)
    kmeans_label_free: dict = field(default_factory=dict)
    kmeans_raw_pixels: dict = field(default_factory=dict)
    test_ranking: Optional[torch.Tensor] = None

    def summary(self) -> dict:
        best = self.probe.metrics[self.probe.best_pair]
        return {
            "best_block": self.pipeline.head.config.block,  # as the chosen head records it: a list for a hypercolumn
            "best_timestep": self.probe.best_pair[1],
            "probe_C": self.probe.C[self.probe.best_pair],
            "probe_class_weight": self.probe.class_weight,
            "val_accuracy": best["val"]["accuracy"],
            "test_accuracy": self.test_metrics["accuracy"],
            "test_macro_f1": self.test_metrics["macro_f1"],
            "test_balanced_accuracy": self.test_metrics["balanced_accuracy"],
            "test_auc": self.test_metrics.get("auc"),
            "test_average_precision": self.test_metrics.get("average_precision"),
            **{f"test_{k}": self.test_metrics[k] for k in ("positive_class", "sensitivity", "specificity", "positive_f1") if k in self.test_metrics},
            "kmeans_accuracy": self.kmeans_metrics["accuracy"],
            "kmeans_accuracy_by_chance": self.kmeans_metrics["accuracy_by_chance"],
            "kmeans_nmi": self.kmeans_metrics["nmi"],
            "kmeans_ari": self.kmeans_metrics["ari"],
            **_kmeans_summary("kmeans_label_free", self.kmeans_label_free),
            **_kmeans_summary("kmeans_raw_pixels", self.kmeans_raw_pixels),
        }


def _kmeans_summary(prefix: str, result: dict) -> dict:
    if not result:
        return {}
    names = ("accuracy", "accuracy_by_chance", "nmi", "ari", "feature", "normalization", "num_clusters")
    return {f"{prefix}_{name}": result[name] for name in names}


def extract_study_features(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    splits: Dict[str, LabeledImages],
    blocks: Optional[Sequence[str]] = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    pool: str = "mean",
    noise_seed: int = 0,
    batch_size: int = 128,
    show_progress: bool = True,
    num_workers: int = 0,
    max_memory_bytes: Optional[int] = None,
    views: Optional[str] = None,
) -> Dict[str, Dict[tuple, torch.Tensor]]:
    """`{split: {(block, t): Tensor[N, D]}}` for train/val/test; every block when `blocks` is None. The splits may
    be `data.StreamingImages` (read by `num_workers` DataLoader workers); features beyond `max_memory_bytes` go to
    float16 memory maps (see `DiffusionFeatureExtractor.extract`), which `fit_probe_grid` reads; `views="dihedral"`
    averages every feature over the image's 8 rotations and mirror images."""
    _check_splits_present(splits)
    extractor = DiffusionFeatureExtractor(unet, scheduler)
    blocks = list(blocks) if blocks is not None else extractor.block_names
    return {
        name: extractor.extract(
            splits[name].images if isinstance(splits[name], LabeledImages) else splits[name], blocks, timesteps,
            pool=pool, noise_seed=noise_seed, batch_size=batch_size,
            progress_bar={**bar_visibility(show_progress), "desc": f"U-Net features ({name})"},
            num_workers=num_workers, max_memory_bytes=max_memory_bytes, views=views,
        )
        for name in SPLITS
    }


def study_from_features(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    splits: Dict[str, LabeledImages],
    features: Dict[str, Dict[tuple, torch.Tensor]],
    train_index: Optional[torch.Tensor] = None,
    pool: str = "mean",
    noise_seed: int = 0,
    batch_size: int = 128,
    probe_kwargs: Optional[dict] = None,
    seed: int = 0,
    positive_class: Optional[str] = None,
    candidate_num_clusters: Optional[Sequence[int]] = None,
    hypercolumns: bool = False,
    views: Optional[str] = None,
    show_progress: bool = True,
    split_record: Optional[dict] = None,
) -> UNetFeatureStudy:
    """Fit the probe grid on the train features (only rows `train_index` when given: few-label studies; with
    `hypercolumns`, also a probe per timestep on every block's feature concatenated, `features.with_hypercolumns`,
    which with many labels can beat any single block), choose on val, classify the test split through the resulting
    pipeline, and run k-means three ways on the test split: on the standardised features of the pair chosen with
    labels (K = the number of classes), on the feature and normalisation chosen without labels on all the train
    images, and on the raw pixels with the normalisation chosen on the train pixels without labels
    (`label_free_kmeans`; K chosen among `candidate_num_clusters` when given, else the number of classes). Binary
    tasks are scored for `positive_class` (a class name; default class 1), which the pipeline also keeps when it
    supports `set_positive_class`. `views` is how `features` were extracted (`extract_study_features`), recorded in
    the heads so that the pipeline reads new images the same way. `show_progress=False` hides the probe fit's bar
    (unless `probe_kwargs` sets its `progress_bar`) and the test pass's; the returned pipeline keeps its own bar.
    `split_record` (the U-Net's pipeline's `split_record`, when `splits` were carved by its `loader_kwargs`) goes with
    the study's pipeline, the head's train images' fingerprints added, as `diffusion-classifiers probe` saves it:
    `evaluate_classifier` and `pipe.loader_kwargs` then know the images it was trained on."""
    labels = check_study_splits(splits, candidate_num_clusters)
    train, test = splits["train"], splits["test"]
    probed = {name: with_hypercolumns(x) if hypercolumns else x for name, x in features.items()}
    train_features, train_labels = probed["train"], labels["train"]  # as they are: features on disk stay there
    if train_index is not None:
        index = checked_train_index(train_index, len(train))
        train_features, train_labels = {pair: x[index] for pair, x in train_features.items()}, train_labels[index]
    hidden = {} if show_progress else {"progress_bar": bar_visibility(False)}
    probe = fit_probe_grid(
        train_features, train_labels, probed["val"], labels["val"], probed["test"], labels["test"],
        num_classes=train.num_classes, class_names=train.class_names, pool=pool, noise_seed=noise_seed, views=views,
        **{**hidden, **(probe_kwargs or {})},
    )  # fmt: skip
    positive_label = resolve_positive_label(positive_class, train.class_names, train.num_classes)
    pipeline = UNetFeatureClassifierPipeline(
        unet=unet, scheduler=scheduler, head=probe.head, preprocessing=train.preprocessing
    )  # saved with the contract the data were read with: `pipe(...)` and `evaluate` read new images the same way
    if positive_class is not None and hasattr(pipeline, "set_positive_class"):
        pipeline.set_positive_class(positive_class)
    if split_record is not None:
        pipeline.split_record = dict(split_record)
        pipeline.register_fitted_head(probe.head, train.images, chosen_on=splits["val"].images)
    output = _classify(pipeline, test.images, batch_size, show_progress)
    # ranked as evaluate ranks them, by the positive class's log-odds (QA: the average precision differed in its
    # 5th decimal from evaluate's of the same model and split, the float32 probabilities tying some images)
    log_odds = None if positive_label is None else positive_log_odds(output.probs, output.probs, positive_label)
    ranking = ranked_by_log_odds(output.probs, log_odds, positive_label)
    test_metrics = classification_metrics(
        labels["test"], output.label_ids, probs=ranking, num_classes=train.num_classes,
        class_names=train.class_names, positive_label=positive_label,
    )  # fmt: skip
    test_metrics["calibration"] = calibration_metrics(labels["test"], output.probs)
    test_metrics["confidence_intervals"] = intervals_of_metrics(test_metrics, labels["test"], ranking)
    # the warning names the caller of run_unet_feature_study, the documented entry
    mark_absent_classes(test_metrics, labels["test"], train.class_names, "test split", "test split", stacklevel=4)
    kmeans = kmeans_evaluate(probed["test"][probe.best_pair], labels["test"], train.num_classes, seed=seed)
    kmeans.pop("clusters")
    # chosen on every train image: no labels are read, and the more images the steadier the choice
    label_free = label_free_kmeans(
        features["train"], features["test"], labels["test"], train.num_classes, seed, candidate_num_clusters
    )
    pixels = label_free_kmeans(
        {("pixels", 0): train.images.flatten(1)}, {("pixels", 0): test.images.flatten(1)}, labels["test"],
        train.num_classes, seed, candidate_num_clusters,
    )  # fmt: skip
    return UNetFeatureStudy(
        pipeline, probe, test_metrics, kmeans, list(train.class_names), labels["test"], output.probs,
        kmeans_label_free=label_free, kmeans_raw_pixels=pixels, test_ranking=ranking,
    )  # fmt: skip


def _check_splits_present(splits: dict) -> None:
    missing = [name for name in SPLITS if name not in splits or len(splits[name]) == 0]
    if missing:
        raise ValueError(f"expected non-empty splits {SPLITS}, missing or empty: {missing}")


def check_study_splits(
    splits: Dict[str, LabeledImages], candidate_num_clusters: Optional[Sequence[int]] = None
) -> Dict[str, torch.Tensor]:
    """What the study needs of its `splits`, checked before any feature is extracted: train, val and test, none empty,
    train and test in memory ([`LabeledImages`]); at least 2 classes; val and test classes among train's
    (`labels_in_train_class_ids`); and every K of its k-means (each of `candidate_num_clusters`, and the number of
    classes) at most the test images, the number of classes at most half the train images the label-free choice
    scores (split-half stability) and every candidate at most all of them. Returns the splits' labels in train's class
    ids (`labels_in_train_class_ids`)."""
    _check_splits_present(splits)
    train, test = splits["train"], splits["test"]
    streamed = [name for name in ("train", "test") if not isinstance(splits[name], LabeledImages)]
    if streamed:  # the test images go through the pipeline, the train pixels to k-means, from memory
        raise ValueError(
            f"the {' and '.join(streamed)} split{'s' * (len(streamed) > 1)}: expected LabeledImages (images in memory), "
            f"got {type(splits[streamed[0]]).__name__}: the study classifies the test images and clusters the train "
            "pixels in memory; extract_study_features reads streamed splits, then pass in-memory splits (from "
            "load_image_classification_data) to study_from_features"
        )
    if train.num_classes < 2:
        raise ValueError(f"the train split has {train.num_classes} class ({train.class_names}); expected at least 2")
    labels = labels_in_train_class_ids(splits)
    candidates = checked_num_clusters(candidate_num_clusters, train.num_classes)
    num_selected = min(len(train), MAX_SELECTION_IMAGES)  # the train images the label-free choice scores
    selection = f"the {num_selected} train images the label-free choice scores"
    limits = (
        (max(candidates + [train.num_classes]), len(test), f"the {len(test)} test images"),
        (train.num_classes, num_selected // 2, f"half of {selection} (split-half stability)"),
        (max(candidates), num_selected, selection),
    )
    for k, limit, images in limits:
        if k > limit:
            raise ValueError(
                f"k-means of {images}: K={k} clusters (candidate_num_clusters {candidate_num_clusters}, "
                f"{train.num_classes} classes) is more than {limit}; expected K <= {limit}: give larger splits or fewer "
                "clusters"
            )
    return labels


def labels_in_train_class_ids(splits: Dict[str, LabeledImages]) -> Dict[str, torch.Tensor]:
    """`{split: labels}` in the train split's class ids, val's and test's matched to train's by class name (a split
    may have some of train's classes only, or list them in another order); a class train lacks is refused by name."""
    train_names = list(splits["train"].class_names)
    labels = {}
    for name in SPLITS:
        names = list(splits[name].class_names)
        unknown = [c for c in names if c not in train_names]
        if unknown:
            raise ValueError(
                f"the {name} split's classes {unknown} are not among the train split's {train_names}; expected "
                "val and test classes among train's (any order): the probe learns train's classes only"
            )
        train_ids = torch.tensor([train_names.index(c) for c in names], dtype=torch.long)
        labels[name] = train_ids[torch.as_tensor(splits[name].labels, dtype=torch.long)]
    return labels


def checked_train_index(train_index, num_train: int) -> torch.Tensor:
    """`train_index` (the labelled train rows of a few-label study: distinct row numbers in `[0, num_train)`, or a
    boolean mask of `num_train` rows) as a tensor of row numbers, else a `ValueError`: a negative row would count from
    the end and a repeated one weigh its image twice."""
    index = torch.as_tensor(train_index)
    if index.dtype == torch.bool and index.shape == (num_train,):
        index = index.nonzero().flatten()
    if index.ndim != 1 or len(index) == 0 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(
            f"train_index: expected a non-empty 1-D sequence of train row numbers or a boolean mask of {num_train} "
            f"rows, got {index.dtype} of shape {tuple(index.shape)}"
        )
    outside = index[(index < 0) | (index >= num_train)]
    if len(outside):
        raise ValueError(f"train_index: expected row numbers in [0, {num_train - 1}], got {outside[:5].tolist()}")
    if len(index.unique()) != len(index):
        raise ValueError(f"train_index: expected distinct row numbers, got {len(index) - len(index.unique())} repeats")
    return index.long()


def _classify(pipeline: UNetFeatureClassifierPipeline, images: torch.Tensor, batch_size: int, show_progress: bool):
    """`pipeline(images)` of the loaders' preprocessed `images` (read as they are), its bar hidden unless
    `show_progress`; the pipeline's bar setting is restored after."""
    with pipeline.reading_preprocessed_images():
        if show_progress:
            return pipeline(images, batch_size=batch_size)
        with pipeline.progress_bars_off():
            return pipeline(images, batch_size=batch_size)


def run_unet_feature_study(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    splits: Dict[str, LabeledImages],
    blocks: Optional[Sequence[str]] = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    pool: str = "mean",
    noise_seed: int = 0,
    batch_size: int = 128,
    probe_kwargs: Optional[dict] = None,
    seed: int = 0,
    show_progress: bool = True,
    positive_class: Optional[str] = None,
    candidate_num_clusters: Optional[Sequence[int]] = None,
    hypercolumns: bool = False,
    views: Optional[str] = None,
    split_record: Optional[dict] = None,
) -> UNetFeatureStudy:
    """Extract every (block, t) feature of the train/val/test splits (averaged over `views`), then
    `study_from_features` (`split_record`: the U-Net's pipeline's, carried into the study's pipeline);
    `show_progress=False` hides every progress bar of both."""
    check_study_splits(splits, candidate_num_clusters)  # before the features are extracted
    check_seed(seed, "seed")
    check_seed(noise_seed, "noise_seed")
    train = splits["train"]
    resolve_positive_label(positive_class, train.class_names, train.num_classes)
    features = extract_study_features(
        unet, scheduler, splits, blocks, timesteps, pool, noise_seed, batch_size, show_progress, views=views
    )
    return study_from_features(
        unet, scheduler, splits, features, pool=pool, noise_seed=noise_seed, batch_size=batch_size,
        probe_kwargs=probe_kwargs, seed=seed, positive_class=positive_class,
        candidate_num_clusters=candidate_num_clusters, hypercolumns=hypercolumns, views=views,
        show_progress=show_progress, split_record=split_record,
    )  # fmt: skip


def study_report_files() -> tuple:
    """What `write_study_report` writes beside `metrics.json` (matplotlib loads with the plots' names)."""
    from .plots import CLASSIFICATION_FIGURES

    return ("report.md", "probe_heatmap.png", *CLASSIFICATION_FIGURES)


def write_study_report(
    study: UNetFeatureStudy,
    output_dir: str,
    title: str,
    command: str,
    extra: Optional[dict] = None,
    replace_earlier: bool = True,
) -> dict:
    """Write `metrics.json`, `report.md`, `probe_heatmap.png`, `confusion_matrix.png`, `reliability.png` and, for
    binary tasks, `roc_pr.png` (ROC and precision-recall of the positive class) into `output_dir`. An earlier report
    is set aside before the first file is written and the new `metrics.json` written last, after the figures and
    `report.md`: a folder holding a `metrics.json` holds one run's files, and a run that fails keeps the earlier one
    (`replaced_reports.replacing_earlier_report`; `replace_earlier=False` where the caller has set it aside)."""
    from .replaced_reports import replacing_earlier_report

    os.makedirs(output_dir, exist_ok=True)
    with replacing_earlier_report(output_dir, files=study_report_files()) if replace_earlier else nullcontext():
        return _write_study_files(study, output_dir, title, command, extra)


def _write_study_files(
    study: UNetFeatureStudy, output_dir: str, title: str, command: str, extra: Optional[dict]
) -> dict:
    from .plots import plot_classification_figures, plot_probe_heatmap

    val_accuracy = {(block_label(block), t): m["val"]["accuracy"] for (block, t), m in study.probe.metrics.items()}
    best_block, best_timestep = study.probe.best_pair
    plot_probe_heatmap(
        val_accuracy, os.path.join(output_dir, "probe_heatmap.png"), best_pair=(block_label(best_block), best_timestep)
    )
    chosen = f"{block_label(best_block)} @ t={best_timestep}"
    titles = {
        "confusion_matrix": f"Test confusion matrix, {chosen}",
        "reliability": f"Test reliability, {chosen}",
        "roc_pr": f"Test split, {chosen}",
    }
    plot_classification_figures(
        output_dir, study.test_metrics, study.class_names, study.test_labels, study.test_probs, titles,
        study.test_ranking,
    )  # fmt: skip
    metrics = {
        "summary": study.summary(),
        "test": study.test_metrics,
        "kmeans_test": study.kmeans_metrics,
        "kmeans_label_free_test": study.kmeans_label_free,
        "kmeans_raw_pixels_test": study.kmeans_raw_pixels,
        "probe_grid": study.probe.to_table(),
        "command": command,
        **(extra or {}),
        "environment": run_environment(),
    }
    record = json.dumps(metrics, indent=2, default=str)
    report = render_report(study, title, command, extra)
    write_texts_atomically(output_dir, {"report.md": report, "metrics.json": record})  # in order: the marker last
    return metrics


def summary_table(study: UNetFeatureStudy, top: int = 8) -> str:
    """Markdown table of the probe grid in the order the pair is chosen in: val accuracy, then val macro-F1, then val
    log-loss (lower first)."""
    lines = [
        "| block | t | C | val acc | val macro-F1 | val log-loss | test acc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = sorted(
        study.probe.to_table(), key=lambda row: (-row["val_accuracy"], -row["val_macro_f1"], row["val_log_loss"])
    )
    for row in rows[:top]:
        mark = " (chosen)" if row["best"] else ""
        lines.append(
            f"| {block_label(row['block'])}{mark} | {row['timestep']} | {row['C']:g} | {100 * row['val_accuracy']:.2f} | "
            f"{100 * row['val_macro_f1']:.2f} | {row['val_log_loss']:.4f} | "
            f"{100 * row.get('test_accuracy', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def _kmeans_rows(study: UNetFeatureStudy) -> List[str]:
    """The k-means table: label-free choice, raw pixels and the pair chosen with labels, all on the test split."""
    s = study.summary()
    block, timestep = study.probe.best_pair
    lines = [
        "k-means on the test split, clusters matched to classes by the Hungarian algorithm (no labels fit the clusters):",
        "",
        "| k-means on | feature | normalisation | K | Hungarian accuracy | by chance | NMI | ARI |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [
        ("U-Net features, chosen without labels", "kmeans_label_free"),
        ("raw pixels, normalisation chosen without labels", "kmeans_raw_pixels"),
    ]
    for name, prefix in rows:
        if f"{prefix}_accuracy" in s:
            lines.append(
                f"| {name} | {s[f'{prefix}_feature']} | {s[f'{prefix}_normalization']} | {s[f'{prefix}_num_clusters']} | "
                f"{100 * s[f'{prefix}_accuracy']:.2f}% | {100 * s[f'{prefix}_accuracy_by_chance']:.2f}% | "
                f"{s[f'{prefix}_nmi']:.3f} | {s[f'{prefix}_ari']:.3f} |"
            )
    lines.append(
        f"| U-Net features, pair chosen with labels (probe on val) | {block_label(block)}/{timestep} | standardize | "
        f"{len(study.class_names)} | {100 * s['kmeans_accuracy']:.2f}% | {100 * s['kmeans_accuracy_by_chance']:.2f}% | "
        f"{s['kmeans_nmi']:.3f} | {s['kmeans_ari']:.3f} |"
    )
    return lines + [
        "",
        "Without labels, the (feature, normalisation) is the one whose k-means is most stable on the train images "
        "(mean ARI of k-means fitted on random halves); no label is read. By chance: the Hungarian accuracy of random "
        "clusters of the same sizes (with few images per cluster, far above 1 / K).",
    ]


def _decision_lines(test_metrics: dict) -> List[str]:
    """The test split's size; a binary study's sentence on its positive class and decisions (as `evaluate`'s report
    says them, QA), which counts its images; another study's count of images and classes (QA: only the per-class
    supports gave it)."""
    if "positive_class" in test_metrics:
        return [f"Test split: {decision_sentence(test_metrics)}.", ""]
    return [f"Test split: {test_metrics['num_samples']} images of {len(test_metrics['per_class'])} classes.", ""]


def render_report(study: UNetFeatureStudy, title: str, command: str, extra: Optional[dict] = None) -> str:
    s = study.summary()
    auc = auc_text(study.test_metrics)
    intervals = study.test_metrics.get("confidence_intervals")
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"Chosen on validation: **{block_label(s['best_block'])} at t={s['best_timestep']}** (val accuracy "
        f"{100 * s['val_accuracy']:.2f}%).",
        "",
        *_decision_lines(study.test_metrics),
        *absent_classes_note(study.test_metrics, "test split"),
        *prevalence_note(study.test_metrics),
        *metrics_table_header(intervals, first="test metric"),
        metric_row("accuracy", percent(s["test_accuracy"]), intervals, "accuracy"),
        metric_row("macro-F1", percent(s["test_macro_f1"]), intervals, "macro_f1"),
        metric_row("balanced accuracy", percent(s["test_balanced_accuracy"]), intervals, "balanced_accuracy"),
        metric_row("AUC", auc, intervals, "auc"),
        *average_precision_rows(study.test_metrics),
        *([metric_row("positive class", s["test_positive_class"], intervals)] if "test_positive_class" in s else []),
        *positive_class_rows(study.test_metrics),
        *calibration_rows(study.test_metrics["calibration"], intervals),
        *selective_rows(study.test_metrics["calibration"], intervals),
        "",
        *([intervals_note(intervals), ""] if intervals else []),
        "Per class, on test:",
        "",
        *per_class_table(study.test_metrics["per_class"]),
        "",
        *_kmeans_rows(study),
        "",
        "Probe grid (top pairs by validation accuracy; the test column is shown for information, never used to choose):",
        "",
        summary_table(study),
        "",
        "![probe heatmap](probe_heatmap.png) ![confusion matrix](confusion_matrix.png) ![reliability](reliability.png)"
        + (" ![ROC and precision-recall](roc_pr.png)" if "test_positive_class" in s and s["test_auc"] is not None else ""),
    ]
    for key, value in (extra or {}).items():
        lines += ["", f"- {key}: {value}"]
    return "\n".join(lines) + "\n"

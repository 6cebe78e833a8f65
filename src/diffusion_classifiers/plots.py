"""Figures for reports, as PNG files: probe heatmap, confusion matrix, ROC and precision-recall curves, reliability
diagram, label-efficiency curve and training-loss curve.

Curves and matrices are drawn by scikit-learn's displays (`ConfusionMatrixDisplay`, `RocCurveDisplay`,
`PrecisionRecallDisplay`, `CalibrationDisplay`) on figures of their own with an Agg canvas, never through pyplot: the
backend a caller chose (a notebook's inline one) and the figures it has open are left alone. Every figure has a fixed
size in inches and is saved at `DPI` (no tight cropping), so its pixel size is known; titles are wrapped to fit.
matplotlib is imported here only: `import diffusion_classifiers` never loads this module.
"""

import functools
import math
import os
import textwrap
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.artist import setp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from .atomic_files import write_atomically

# scikit-learn (and `metrics`, which imports it) is imported by the figures that use it: a training run's loss curve,
# drawn as its last checkpoint is written, is not kept waiting the 1.5 s scikit-learn takes to import

__all__ = [
    "CLASSIFICATION_FIGURES",
    "DPI",
    "label_efficiency_curve",
    "plot_confusion_matrix",
    "plot_label_efficiency",
    "plot_loss_curve",
    "plot_probe_heatmap",
    "plot_reliability",
    "plot_roc_pr",
    "plot_classification_figures",
]

DPI = 100
# what `plot_classification_figures` may write into a report's folder
CLASSIFICATION_FIGURES = ("confusion_matrix.png", "reliability.png", "roc_pr.png")
CONFUSION_NORMALIZE = ("true", "pred", "all", None)
ANNOTATED_CLASSES = 30  # a confusion matrix of more classes shows colours only


def _wrap(title: str, width: int) -> str:
    return "\n".join(textwrap.wrap(title, width)) or title


def _told_apart(names: Sequence[str]) -> List[str]:
    """Class names as tick labels: each prefixed with its class id when the font lacks a glyph of any of them (QA:
    Japanese names on a machine without a CJK font became identical rows of boxes), so the rows stay told apart and
    follow report.md's order."""
    names = [str(name) for name in names]
    if all(ord(character) in _font_characters() for name in names for character in name):
        return names
    return [f"{class_id}: {name}" for class_id, name in enumerate(names)]


def _font_characters() -> frozenset:
    """The characters of the font matplotlib draws text with (its `font.family` as set now)."""
    from matplotlib.font_manager import FontProperties, findfont

    return _characters_of(findfont(FontProperties()))


@functools.lru_cache(maxsize=None)
def _characters_of(font_path: str) -> frozenset:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_path).get_charmap())


def _subplots(*grid: int, **kwargs) -> tuple:
    """`pyplot.subplots(*grid, **kwargs)` on a figure of its own (an Agg canvas, unknown to pyplot: QA, importing
    this module switched a notebook's backend to Agg, and its own figures stopped showing)."""
    fig = Figure(figsize=kwargs.pop("figsize"), layout=kwargs.pop("layout", None))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig, path: str) -> None:
    """`fig` written whole or not at all (an earlier run's figure stays until the new one is complete)."""
    image_format = os.path.splitext(path)[1].lstrip(".") or None
    write_atomically(path, lambda handle: fig.savefig(handle, dpi=DPI, format=image_format), mode="wb")


def plot_probe_heatmap(
    scores: Dict[Tuple[str, int], float],
    path: str,
    title: str = "Linear-probe validation accuracy",
    best_pair: Tuple[str, int] = None,
) -> None:
    """Blocks (rows, forward order as given) x timesteps (columns) heatmap of `scores[(block, t)]`, in percent; the
    chosen pair framed in red."""
    blocks = list(dict.fromkeys(block for block, _ in scores))
    timesteps = sorted({t for _, t in scores})
    grid = np.full((len(blocks), len(timesteps)), np.nan)
    for (block, t), value in scores.items():
        grid[blocks.index(block), timesteps.index(t)] = value
    label_inches = 0.08 * max(0, max(len(str(block)) for block in blocks) - 14)  # long names (hypercolumns) need room
    figsize = (1.1 * len(timesteps) + 3 + label_inches, 0.5 * len(blocks) + 2)
    fig, ax = _subplots(figsize=figsize, layout="constrained")
    low, high = 100 * np.nanmin(grid), 100 * np.nanmax(grid)
    if low == high:  # one value everywhere: a unit band around it, inside [0, 100]
        low, high = max(0.0, low - 1), min(100.0, high + 1)
    image = ax.imshow(100 * grid, cmap="viridis", aspect="auto", vmin=low, vmax=high)
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_yticks(range(len(blocks)), blocks)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("U-Net block")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            bright = image.norm(100 * value) > 0.6  # viridis turns yellow: dark text there
            ax.text(col, row, f"{100 * value:.1f}", ha="center", va="center", color="k" if bright else "w", fontsize=8)
    if best_pair is not None:
        row, col = blocks.index(best_pair[0]), timesteps.index(best_pair[1])
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(_wrap(title + (" (red: chosen)" if best_pair is not None else ""), 12 * len(timesteps) + 20))
    _save(fig, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str,
    title: str = "Confusion matrix",
    normalize: Optional[str] = "true",
) -> None:
    r"""
    `ConfusionMatrixDisplay` of a count matrix (rows true classes, columns predictions) with a colour bar.

    Args:
        normalize (`str`, *optional*, defaults to `"true"`): what the colours and percentages are normalised over,
            as in scikit-learn: `"true"` (rows: each cell is a recall), `"pred"` (columns), `"all"`, or `None` (raw
            counts). Every cell also shows its count, up to `ANNOTATED_CLASSES` classes (beyond, colours only, the
            names smaller and upright: the 121 plankton classes); the title says which normalisation was used.
    """
    if normalize not in CONFUSION_NORMALIZE:
        raise ValueError(f"normalize: expected one of {CONFUSION_NORMALIZE}, got {normalize!r}")
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape != (len(class_names), len(class_names)):
        k = len(class_names)
        raise ValueError(f"expected a {k} x {k} matrix (one row per class name), got {counts.shape}")
    axis = {"true": 1, "pred": 0, "all": None}.get(normalize)
    shown = counts if normalize is None else counts / np.maximum(counts.sum(axis=axis, keepdims=axis is not None), 1)
    many = len(class_names) > ANNOTATED_CLASSES  # then colours only: numbers in 10,000 cells are unreadable
    size = max(5.0, (0.16 if many else 0.55) * len(class_names) + 3.5)
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = _subplots(figsize=(size + 1, size), layout="constrained")
    display = ConfusionMatrixDisplay(shown, display_labels=_told_apart(class_names))
    rotation = 90 if many else 45 if len(class_names) > 4 else "horizontal"
    display.plot(ax=ax, cmap="Blues", colorbar=True, xticks_rotation=rotation, include_values=not many)
    if rotation == 45:  # each slanted label ends under its column (centred, long class names ran into each other)
        setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    if many:
        ax.tick_params(labelsize=6)
    display.im_.set_clim(0, None if normalize is None else 1)
    # scikit-learn chose each text's colour for the limits before these: white on pale cells, unreadable
    on_dark, on_light = display.im_.cmap(0.0), display.im_.cmap(1.0)
    for (row, col), text in np.ndenumerate(display.text_ if not many else np.empty((0, 0))):
        count = counts[row, col]
        text.set_text(str(count) if normalize is None else f"{count}\n{100 * shown[row, col]:.1f}%")
        text.set_fontsize(8 if len(class_names) > 6 else 10)
        text.set_color(on_dark if display.im_.norm(shown[row, col]) >= 0.5 else on_light)
    over = {"true": "each true class", "pred": "each predicted class", "all": "all samples"}.get(normalize)
    colours = "colours: counts" if normalize is None else f"colours normalised over {over}"
    how = colours if many else "counts" if normalize is None else f"counts, {colours}"
    # over the figure, not the axes: a title wider than the matrix ran into the colour bar and was cut off
    fig.suptitle(_wrap(f"{title} ({how})", int(9 * (size + 1))))
    _save(fig, path)


def plot_roc_pr(
    y_true,
    y_pred,
    positive_scores,
    path: str,
    positive_label: int = 1,
    class_names: Sequence[str] = ("0", "1"),
    title: str = "",
) -> None:
    r"""
    ROC and precision-recall curves of a binary classifier, side by side, each with its operating point.

    Args:
        y_true, y_pred: the true and predicted class ids (0 or 1); `y_pred` gives the operating point (the
            classifier's own decisions: argmax, i.e. threshold 0.5 on the positive probability).
        positive_scores: the score of the positive class per sample (its probability, or a log-likelihood ratio).
        positive_label (`int`, *optional*, defaults to 1): the id of the positive class, which the curves rank.
        class_names: the two class names; the positive one is named in the titles.
    """
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay, precision_score, recall_score

    from .metrics import finite_ranking, float_array

    y_true, y_pred = (np.asarray(v).reshape(-1) for v in (y_true, y_pred))
    scores = finite_ranking(float_array(positive_scores).reshape(-1))
    if not len(y_true) == len(y_pred) == len(scores):
        lengths = f"{len(y_true)}, {len(y_pred)}, {len(scores)}"
        raise ValueError(f"expected y_true, y_pred and positive_scores of one length, got {lengths}")
    if len(np.unique(y_true)) < 2:
        raise ValueError(f"a ROC curve needs both classes in y_true, got only class {y_true[0]}")
    positive = str(class_names[positive_label])
    sensitivity = recall_score(y_true, y_pred, pos_label=positive_label, zero_division=0)
    specificity = recall_score(y_true, y_pred, pos_label=1 - positive_label, zero_division=0)
    precision = precision_score(y_true, y_pred, pos_label=positive_label, zero_division=0)
    fig, (roc_ax, pr_ax) = _subplots(1, 2, figsize=(10, 5), layout="constrained")
    curve = dict(pos_label=positive_label, name="classifier", plot_chance_level=True)
    marker = dict(marker="o", color="C3", markersize=8, linestyle="", clip_on=False)

    roc = RocCurveDisplay.from_predictions(y_true, scores, ax=roc_ax, **curve)
    # 3 decimals, not scikit-learn's 2 (QA: "AP = 1.00" beside a curve that visibly falls to 0.97; AP 0.9967)
    roc.line_.set_label(f"classifier (AUC = {roc.roc_auc:.3f})")
    point = f"operating point (sens. {sensitivity:.2f}, spec. {specificity:.2f})"
    roc_ax.plot(1 - specificity, sensitivity, label=point, **marker)
    roc_ax.set(xlabel="1 - specificity (false positive rate)", ylabel=f"sensitivity (recall of {positive})")
    roc_ax.set_title(_wrap(f"ROC, positive class: {positive}", 45))
    roc_ax.legend(loc="lower right", fontsize=8)

    pr = PrecisionRecallDisplay.from_predictions(y_true, scores, ax=pr_ax, **curve)
    pr.line_.set_label(f"classifier (AP = {pr.average_precision:.3f})")
    handles, labels = pr_ax.get_legend_handles_labels()
    if (y_pred == positive_label).any():
        point = f"operating point (recall {sensitivity:.2f}, precision {precision:.2f})"
        handles.append(pr_ax.plot(sensitivity, precision, **marker)[0])
    else:  # no precision to plot: scikit-learn's 0 drew a point below the curve, as if every call were wrong
        point = f"operating point: nothing called {positive} (precision undefined)"
        handles.append(Line2D([], [], **{**marker, "clip_on": True}))  # the legend's only
    pr_ax.set(xlabel=f"recall of {positive} (sensitivity)", ylabel=f"precision of {positive}")
    pr_ax.set_title(_wrap(f"Precision-recall, positive class: {positive}", 45))
    pr_ax.legend(handles, [*labels, point], loc="lower left", fontsize=8)
    if title:
        fig.suptitle(_wrap(title, 90))
    _save(fig, path)


def plot_classification_figures(
    output_dir: str, metrics: dict, class_names: Sequence[str], y_true, probs, titles: Mapping[str, str],
    ranking_scores=None,
) -> List[str]:  # fmt: skip
    """
    `confusion_matrix.png`, `reliability.png` and, when `metrics` (of `classification_metrics`) name a positive class
    and an AUC, `roc_pr.png` (ranking by `ranking_scores`, default `probs`: scores that do not saturate, as a
    Score-SDE pipeline's `log_odds`) into `output_dir`, each titled by `titles["confusion_matrix"]`,
    `["reliability"]`, `["roc_pr"]`, the operating point marked at the decisions the metrics record (their
    `operating_point`'s threshold, else each image's most probable class). An earlier report's `roc_pr.png` left
    there is removed otherwise, so no curve of another run stays beside these figures. Returns the file names
    written.
    """
    from .metrics import float_array
    from .operating_points import decisions_at, positive_log_odds

    probs = float_array(probs)
    ranking_scores = probs if ranking_scores is None else float_array(ranking_scores)
    confusion, reliability, roc_pr = CLASSIFICATION_FIGURES
    plot_confusion_matrix(
        metrics["confusion_matrix"], class_names, os.path.join(output_dir, confusion), title=titles["confusion_matrix"]
    )  # fmt: skip
    plot_reliability(y_true, probs, os.path.join(output_dir, reliability), title=titles["reliability"])
    written = [confusion, reliability]
    roc_pr_path = os.path.join(output_dir, roc_pr)
    if "positive_class" in metrics and metrics.get("auc") is not None:
        positive_label = list(class_names).index(metrics["positive_class"])
        point = metrics.get("operating_point")
        decisions = probs.argmax(-1)
        if point is not None:
            decisions = decisions_at(positive_log_odds(probs, ranking_scores, positive_label), positive_label, point)
        plot_roc_pr(
            y_true, decisions, ranking_scores[:, positive_label], roc_pr_path,
            positive_label=positive_label, class_names=class_names, title=titles["roc_pr"],
        )  # fmt: skip
        written.append(roc_pr)
    elif os.path.exists(roc_pr_path):
        os.remove(roc_pr_path)
    return written


def plot_reliability(y_true, probs, path: str, num_bins: int = 10, title: str = "Reliability diagram") -> None:
    """Top-class confidence vs accuracy per confidence bin (a `CalibrationDisplay`, the diagonal being perfect
    calibration), the ECE in the title, and the count of samples per bin below; the bins are those of
    `metrics.calibration_metrics`, as in metrics.json."""
    from sklearn.calibration import CalibrationDisplay

    from .metrics import calibration_metrics, float_array

    probs = float_array(probs)
    calibration = calibration_metrics(y_true, probs, num_bins=num_bins)
    filled = [b for b in calibration["bins"] if b["count"]]
    fig, (curve_ax, count_ax) = _subplots(
        2, 1, figsize=(5.5, 7), height_ratios=(3, 1.3), sharex=True, layout="constrained"
    )
    display = CalibrationDisplay(
        prob_true=np.array([b["accuracy"] for b in filled]),
        prob_pred=np.array([b["confidence"] for b in filled]),
        y_prob=probs.max(1),
        estimator_name="classifier",
    )
    display.plot(ax=curve_ax)
    # of the most probable class, whatever the operating point (QA: read as the report's accuracy at its threshold)
    curve_ax.set(xlabel="", ylabel="accuracy of the most probable class", xlim=(0, 1), ylim=(0, 1))
    display.line_.set_clip_on(False)  # a bin at (1, 1), the confident and right ones, shows its whole marker
    curve_ax.set_title(_wrap(f"{title} (ECE {calibration['ece']:.3f}, {len(probs)} samples)", 55))
    curve_ax.legend(loc="upper left", fontsize=8)
    bins = calibration["bins"]
    centres, counts = [(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] for b in bins]
    bars = count_ax.bar(centres, counts, width=0.9 / num_bins, color="C0", alpha=0.7)
    count_ax.bar_label(bars, fontsize=7)
    count_ax.set(xlabel="confidence (the most probable class's probability)", ylabel="samples per bin", xlim=(0, 1))
    count_ax.set_ylim(0, max(counts) * 1.25 + 1)
    count_ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5-sample ticks
    _save(fig, path)


def label_efficiency_curve(protocol_result: dict, protocol: str = "prototype") -> Dict[float, Dict[str, float]]:
    """`{labels per class: {"accuracy", "macro_f1", "accuracy_std", "macro_f1_std"}}` of the few-shot `protocol`
    ("prototype" or "knn") of a `probing.evaluate_protocols` result; "all" becomes the mean train labels per class."""
    if protocol not in ("prototype", "knn"):
        raise ValueError(f"protocol: expected 'prototype' or 'knn', got {protocol!r}")
    all_labels = protocol_result["num_train"] / protocol_result["num_classes"]
    return {
        (all_labels if shots == "all" else float(shots)): {
            "accuracy": entry["accuracy_mean"], "macro_f1": entry["macro_f1_mean"],
            "accuracy_std": entry["accuracy_std"], "macro_f1_std": entry["macro_f1_std"],
        }
        for shots, entry in protocol_result[protocol].items()
    }  # fmt: skip


def _label_count(value: float, _position=None) -> str:
    """A tick of labels per class: whole numbers and large ones plainly ("5", "2354"), others to 3 digits ("1.8",
    "2.01": two regimes near 2 must not both read "2")."""
    return f"{value:.0f}" if value >= 100 or float(value).is_integer() else f"{value:.3g}"


def plot_label_efficiency(
    curves: Mapping[str, Mapping[float, Mapping[str, float]]],
    path: str,
    title: str = "Label efficiency",
) -> None:
    r"""
    Accuracy and macro-F1 (two panels) against labelled samples per class (log scale), one line per method.

    Args:
        curves: `{method name: {labels per class: {"accuracy": a, "macro_f1": f}}}`, e.g. this method and the
            supervised baseline; optional `"accuracy_std"` / `"macro_f1_std"` are drawn as error bars
            (`label_efficiency_curve` makes one from `probing.evaluate_protocols`).
    """
    if not curves or not all(curves.values()):
        raise ValueError(f"expected at least one method with at least one point, got {dict(curves)}")
    fig, axes = _subplots(1, 2, figsize=(10, 4.5), layout="constrained")
    error_bars = False
    for ax, metric, label in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1")):
        for method, points in curves.items():
            x = sorted(points)
            y = [100 * points[n][metric] for n in x]
            err = [100 * points[n].get(f"{metric}_std", 0.0) for n in x]
            ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=method)
            error_bars = error_bars or any(err)
        ax.set_xscale("log")
        # ticks at the measured label counts, written plainly ("5" and "2354", not "5x10^0" or "2.35e+03"; no
        # crowded minor labels)
        ax.set_xticks(sorted({n for points in curves.values() for n in points}))
        ax.xaxis.set_major_formatter(FuncFormatter(_label_count))
        ax.xaxis.set_minor_formatter(NullFormatter())
        # "all" is the train labels' mean per class (QA: "24 per class" was 12 + 35 on PneumoniaMNIST)
        ax.set(xlabel="labelled samples per class (all labels: their mean; log scale)", ylabel=f"test {label} (%)")
        ax.set_title(f"{label} vs labels per class")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    # QA: a reader could not tell a standard deviation from an error or an interval
    fig.suptitle(_wrap(title + (" (error bars: 1 standard deviation over episodes)" if error_bars else ""), 90))
    _save(fig, path)


def _log_minor_tick(value: float, _position=None) -> str:
    """A log axis' minor tick, written where it is 2 or 5 times a power of ten ("0.02", "50"), else left blank."""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:.2g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def plot_loss_curve(steps: Sequence[int], losses: Sequence[float], path: str, title: str = "Training loss") -> None:
    """The loss at every optimizer step and its moving average (a window of ~2% of the steps), on a log y axis (said
    on it) where every loss is positive."""
    steps, losses = np.asarray(steps), np.asarray(losses, dtype=np.float64)
    if len(steps) == 0 or len(steps) != len(losses):
        raise ValueError(
            f"expected one loss per step and at least one, got {len(steps)} steps and {len(losses)} losses"
        )
    fig, ax = _subplots(figsize=(7, 4), layout="constrained")
    window = max(1, len(losses) // 50)
    # faint under its moving average; the only line, drawn plainly (QA: under 100 steps all a reader got was faint)
    faint = dict(alpha=0.35, linewidth=0.8) if window > 1 else dict(linewidth=1.5)
    ax.plot(steps, losses, color="C0", label="loss per step", **faint)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", linewidth=1.8, label=f"moving average ({window} steps)")
    log = bool((losses > 0).all())
    if log:  # said on the axis, its ticks written plainly (QA: "9x10^-1" ticks, the top of the curve unlabelled)
        ax.set_yscale("log")
        if losses.max() < 10 * losses.min():  # within a decade: evenly placed ticks, the top of the curve labelled too
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:  # the decades, and 2 and 5 times them
            ax.yaxis.set_minor_formatter(FuncFormatter(_log_minor_tick))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:.3g}"))
    ax.set(xlabel="optimizer step", ylabel="loss (log scale)" if log else "loss")
    ax.set_title(_wrap(f"{title} (last {losses[-1]:.4g} at step {steps[-1]})", 70))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)

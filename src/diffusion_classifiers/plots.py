"""Figures for reports: probe heatmaps and confusion matrices (matplotlib, Agg backend, PNG files)."""

from typing import Dict, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_confusion_matrix", "plot_probe_heatmap", "plot_reliability"]


def plot_probe_heatmap(
    scores: Dict[Tuple[str, int], float],
    path: str,
    title: str = "Linear-probe validation accuracy",
    best_pair: Tuple[str, int] = None,
) -> None:
    """Blocks (rows, forward order as given) x timesteps (columns) heatmap of `scores[(block, t)]`."""
    blocks = list(dict.fromkeys(block for block, _ in scores))
    timesteps = sorted({t for _, t in scores})
    grid = np.full((len(blocks), len(timesteps)), np.nan)
    for (block, t), value in scores.items():
        grid[blocks.index(block), timesteps.index(t)] = value
    fig, ax = plt.subplots(figsize=(1.1 * len(timesteps) + 3, 0.5 * len(blocks) + 2))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_yticks(range(len(blocks)), blocks)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("U-Net block")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{100 * value:.1f}", ha="center", va="center", color="w", fontsize=8)
    if best_pair is not None:
        row, col = blocks.index(best_pair[0]), timesteps.index(best_pair[1])
        ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str, title: str = "Confusion matrix") -> None:
    """Counts with row-normalised colours; rows are true classes, columns predictions."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 0.5 * len(class_names) + 3
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="w" if normalised[row, col] > 0.5 else "k", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(calibration: dict, path: str, title: str = "Reliability diagram") -> None:
    """Accuracy vs confidence per bin (from `metrics.calibration_metrics`), the diagonal being perfect calibration."""
    bins = [b for b in calibration["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    width = calibration["bins"][0]["upper"] - calibration["bins"][0]["lower"]
    ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C1", label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {calibration['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

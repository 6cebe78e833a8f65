"""Every report figure is written, opens as a PNG of its documented size, and keeps its title inside the image."""

from matplotlib.figure import Figure
import numpy as np
import pytest
from PIL import Image

from diffusion_classifiers.plots import (
    DPI,
    label_efficiency_curve,
    plot_confusion_matrix,
    plot_label_efficiency,
    plot_loss_curve,
    plot_probe_heatmap,
    plot_reliability,
    plot_roc_pr,
)


def opened(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"))


def assert_title_fits(pixels: np.ndarray) -> None:
    """The title is drawn near the top (dark pixels in the top 40 rows) without touching the top, left or right edge
    there (a clipped title reaches the edge it is cut at)."""
    band = pixels[:40]
    assert min(band[0].min(), band[:, 0].min(), band[:, -1].min()) > 200, "the title touches an edge: clipped"
    assert band.min() < 100, "no title near the top"


@pytest.fixture
def binary_case():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 120)
    positive = np.clip(0.5 + 0.3 * (2 * (y_true == 0) - 1) + rng.normal(0, 0.25, 120), 0, 1)  # P(class 0)
    probs = np.stack([positive, 1 - positive], axis=1)
    return y_true, probs


def test_two_class_confusion_matrix_title_fits_and_names_the_normalisation(tmp_path):
    path = tmp_path / "cm.png"
    long_title = "Test confusion matrix, up_blocks.1 @ t=100, PneumoniaMNIST at 28 px"
    plot_confusion_matrix([[50, 3], [7, 40]], ["normal", "pneumonia"], str(path), title=long_title)
    pixels = opened(path)
    assert pixels.shape == (5 * DPI, 6 * DPI)
    assert_title_fits(pixels)
    with pytest.raises(ValueError, match="normalize: expected one of"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], str(path), normalize="rows")
    with pytest.raises(ValueError, match=r"expected a 3 x 3 matrix"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], str(path))


def test_many_class_confusion_matrix_grows_with_the_classes(tmp_path):
    path = tmp_path / "cm10.png"
    plot_confusion_matrix(np.eye(10, dtype=int) * 9 + 1, [f"class {k}" for k in range(10)], str(path), normalize=None)
    size = 0.55 * 10 + 3.5
    assert opened(path).shape == (round(size * DPI), round((size + 1) * DPI))


def test_a_confusion_matrix_of_121_classes_shows_colours_only_at_a_readable_size(tmp_path, monkeypatch):
    """The plankton study's 121 classes: 14,641 annotated cells made a 7,105 px image whose labels ran into each
    other; beyond ANNOTATED_CLASSES the cells are colours only and the names smaller and upright."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plotted = []
    original = ConfusionMatrixDisplay.plot
    monkeypatch.setattr(ConfusionMatrixDisplay, "plot", lambda self, **kw: plotted.append(kw) or original(self, **kw))
    path = tmp_path / "cm121.png"
    plot_confusion_matrix(np.eye(121, dtype=int) * 2, [f"plankton class {k}" for k in range(121)], str(path))
    assert plotted[0]["include_values"] is False and plotted[0]["xticks_rotation"] == 90
    size = 0.16 * 121 + 3.5
    assert opened(path).shape == (round(size * DPI), round((size + 1) * DPI))


def test_roc_and_precision_recall_of_the_positive_class(tmp_path, binary_case):
    y_true, probs = binary_case
    path = tmp_path / "roc_pr.png"
    plot_roc_pr(y_true, probs.argmax(1), probs[:, 0], str(path), positive_label=0, class_names=["malignant", "benign"], title="Test")
    pixels = opened(path)
    assert pixels.shape == (5 * DPI, 10 * DPI)
    assert_title_fits(pixels)
    with pytest.raises(ValueError, match="needs both classes"):
        plot_roc_pr([1, 1], [1, 0], [0.9, 0.2], str(path))


def test_reliability_diagram_with_counts_per_bin(tmp_path, binary_case):
    y_true, probs = binary_case
    path = tmp_path / "reliability.png"
    plot_reliability(y_true, probs, str(path), num_bins=5)
    pixels = opened(path)
    assert pixels.shape == (7 * DPI, round(5.5 * DPI))
    assert_title_fits(pixels)
    plot_reliability([0, 1], [[0.9, 0.1], [0.2, 0.8]], str(path))  # every prediction right: one outcome only
    assert opened(path).shape == (7 * DPI, round(5.5 * DPI))


def test_label_efficiency_from_evaluate_protocols(tmp_path):
    entry = lambda acc: {"accuracy_mean": acc, "accuracy_std": 0.02, "macro_f1_mean": acc - 0.05, "macro_f1_std": 0.03}  # noqa: E731
    protocols = {"num_train": 500, "num_classes": 10, "prototype": {"1": entry(0.4), "10": entry(0.7), "all": entry(0.9)}}
    curve = label_efficiency_curve(protocols)
    assert sorted(curve) == [1.0, 10.0, 50.0]  # "all" = 500 train labels / 10 classes
    assert curve[50.0] == {"accuracy": 0.9, "macro_f1": 0.85, "accuracy_std": 0.02, "macro_f1_std": 0.03}
    baseline = {1.0: {"accuracy": 0.2, "macro_f1": 0.1}, 50.0: {"accuracy": 0.95, "macro_f1": 0.94}}
    path = tmp_path / "label_efficiency.png"
    plot_label_efficiency({"this method (prototypes)": curve, "supervised CNN": baseline}, str(path))
    pixels = opened(path)
    assert pixels.shape == (round(4.5 * DPI), 10 * DPI)
    assert_title_fits(pixels)
    # QA: regimes of 1.80 and 2.01 labels per class both read "2"
    from diffusion_classifiers.plots import _label_count

    assert [_label_count(n) for n in (1.8, 2.01, 5.0, 23.4, 2354.0, 0.5)] == ["1.8", "2.01", "5", "23.4", "2354", "0.5"]
    with pytest.raises(ValueError, match="'prototype' or 'knn'"):
        label_efficiency_curve(protocols, "linear_probe")
    with pytest.raises(ValueError, match="at least one method"):
        plot_label_efficiency({}, str(path))


def test_loss_curve_and_probe_heatmap(tmp_path):
    steps = np.arange(1, 201)
    plot_loss_curve(steps, 1 / np.sqrt(steps), str(tmp_path / "loss.png"))
    assert opened(tmp_path / "loss.png").shape == (4 * DPI, 7 * DPI)
    with pytest.raises(ValueError, match="one loss per step"):
        plot_loss_curve([1, 2], [0.5], str(tmp_path / "loss.png"))
    scores = {(block, t): 0.5 + 0.1 * i for i, (block, t) in enumerate([("down.0", 10), ("down.0", 100), ("mid", 10), ("mid", 100)])}
    plot_probe_heatmap(scores, str(tmp_path / "heatmap.png"), best_pair=("mid", 100))
    pixels = opened(tmp_path / "heatmap.png")
    assert pixels.shape == (round((0.5 * 2 + 2) * DPI), round((1.1 * 2 + 3) * DPI))
    assert_title_fits(pixels)


def test_what_a_reader_reads_on_the_figures(monkeypatch, binary_case):
    """QA (a reader of the figures): the loss curve's log axis was not said and the top of a curve within a decade
    was unlabelled; the legend said "AP = 1.00" of an AP of 0.9967; nothing said what the label-efficiency error bars
    are, nor that "all labels" is a mean per class."""
    from matplotlib.ticker import MaxNLocator
    from sklearn.metrics import average_precision_score

    from diffusion_classifiers import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    steps = np.arange(1, 61)
    plot_loss_curve(steps, 1.24 - 0.011 * steps, "unused")
    (ax,) = drawn[-1].axes
    assert ax.get_ylabel() == "loss (log scale)" and isinstance(ax.yaxis.get_major_locator(), MaxNLocator)
    y_true, probs = binary_case
    plot_roc_pr(y_true, probs.argmax(1), probs[:, 1], "unused", positive_label=1, class_names=["a", "b"])
    roc_ax, pr_ax = drawn[-1].axes
    average_precision = average_precision_score(np.asarray(y_true) == 1, probs[:, 1])
    assert pr_ax.get_legend().get_texts()[0].get_text() == f"classifier (AP = {average_precision:.3f})"
    assert roc_ax.get_legend().get_texts()[0].get_text().startswith("classifier (AUC = 0.")
    curve = {
        1.0: {"accuracy": 0.4, "macro_f1": 0.3, "accuracy_std": 0.1, "macro_f1_std": 0.1},
        23.5: {"accuracy": 0.9, "macro_f1": 0.8},
    }
    plot_label_efficiency({"m": curve}, "unused", title="Label efficiency")
    assert drawn[-1]._suptitle.get_text() == "Label efficiency (error bars: 1 standard deviation over episodes)"
    assert "all labels: their mean" in drawn[-1].axes[0].get_xlabel()
    plot_label_efficiency({"m": {n: {"accuracy": 0.5, "macro_f1": 0.5} for n in (1.0, 10.0)}}, "unused", title="T")
    assert drawn[-1]._suptitle.get_text() == "T"


def test_a_figure_that_fails_mid_write_leaves_the_earlier_one_whole(tmp_path):
    from diffusion_classifiers.plots import _save

    path = tmp_path / "confusion_matrix.png"
    path.write_bytes(b"the earlier run's figure")
    fig = Figure()

    def fail_half_way(handle, **kwargs):
        handle.write(b"\x89PNG half")
        raise OSError("No space left on device")

    fig.savefig = fail_half_way
    with pytest.raises(OSError, match="No space left"):
        _save(fig, str(path))
    assert path.read_bytes() == b"the earlier run's figure" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_drawing_leaves_the_callers_backend_and_figures_alone(tmp_path):
    """QA: importing the plots switched a notebook's backend to Agg, and its own figures stopped showing."""
    import subprocess
    import sys

    script = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; mine = plt.figure(); "
        "from diffusion_classifiers.plots import plot_loss_curve; "
        f"plot_loss_curve([1, 2, 3], [1.0, 0.5, 0.25], {str(tmp_path / 'loss.png')!r}); "
        "print(matplotlib.get_backend(), plt.get_fignums() == [mine.number])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "True"] and (tmp_path / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("num_classes", [13, 121])
def test_a_confusion_matrix_title_stays_clear_of_the_colour_bar_and_says_what_is_shown(monkeypatch, num_classes):
    """QA: on 13 plankton classes with long names the title ran into the colour bar, which cut a word off; beyond
    30 classes it promised counts the cells do not show."""
    import diffusion_classifiers.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    names = [f"hydromedusae haliscera small sideview {i}" for i in range(num_classes)]
    plots.plot_confusion_matrix(np.eye(num_classes, dtype=int), names, "unused.png",
                                title="pipeline on plankton_flowcam_demo (all): confusion matrix")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    title = next(text for text in [fig._suptitle, fig.axes[0].title] if text is not None and text.get_text())
    extent, colour_bar = title.get_window_extent(renderer), fig.axes[1].get_window_extent(renderer)
    assert not extent.overlaps(colour_bar) and fig.bbox.contains(extent.x0, extent.y0)
    assert fig.bbox.contains(extent.x1, extent.y1)
    assert ("counts" in title.get_text()) == (num_classes <= plots.ANNOTATED_CLASSES)


def test_class_names_the_font_cannot_draw_are_told_apart_by_their_ids():
    """QA (session 58, an international lab): on a machine without a CJK font, two Japanese class names became the
    same row of boxes in the confusion matrix; the ticks then carry the class ids (report.md's order)."""
    from diffusion_classifiers.plots import _told_apart

    undrawable = "\U0010fffd"  # a private-use code point: in no font
    assert _told_apart(["normal", "bleed", "détritus"]) == ["normal", "bleed", "détritus"]
    assert _told_apart(["a", f"x{undrawable}", f"y{undrawable}"]) == ["0: a", f"1: x{undrawable}", f"2: y{undrawable}"]

"""Review of the metrics, the evaluation and its figures: each test failed before its fix."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, roc_auc_score

from diffusion_classifiers.metrics import calibration_metrics, classification_metrics


def ovr_auc_by_ranks(y_true: np.ndarray, scores: np.ndarray) -> float:
    """One-vs-rest macro AUC over the classes present, each class's scores replaced by their ranks (ties averaged),
    which numpy computes for infinite scores too."""
    return float(np.mean([roc_auc_score(y_true == k, rankdata(scores[:, k])) for k in np.unique(y_true)]))


def test_infinite_scores_rank_first_or_last_in_the_auc():
    """A Score-SDE class pruned (or of prior 0) has log-odds -inf, the one class left +inf: the AUC was refused
    ("probs row 0 contains NaN or inf") after every image had been scored."""
    y_true = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    scores = np.array([
        [2.0, -math.inf, -1.0], [-math.inf, 0.5, -0.2], [-math.inf, -math.inf, math.inf], [1.0, -0.5, -math.inf],
        [-0.3, math.inf, -math.inf], [-1.0, -2.0, 0.1], [math.inf, -math.inf, -math.inf], [-math.inf, -1.0, 0.3],
    ])  # fmt: skip
    result = classification_metrics(y_true, scores.argmax(1), probs=scores, num_classes=3)
    assert result["auc"] == pytest.approx(ovr_auc_by_ranks(y_true, scores))
    binary = np.array([[0.0, -math.inf], [0.0, 1.0], [0.0, math.inf], [0.0, -2.0]])
    assert classification_metrics([0, 1, 1, 0], [0, 1, 1, 0], probs=binary)["auc"] == 1.0
    with pytest.raises(ValueError, match="probs row 1 contains NaN"):
        classification_metrics([0, 1], [0, 1], probs=[[0.0, 1.0], [math.nan, 0.0]])


def test_a_pruned_multiclass_score_sde_run_is_evaluated(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import ScoreSDEClassifierPipeline
    from diffusion_classifiers.data import LabeledImages
    from diffusion_classifiers.evaluation import evaluate_classifier
    from diffusion_classifiers.models import unet_config

    torch.manual_seed(0)
    pipe = ScoreSDEClassifierPipeline(
        UNet2DModel(**unet_config("tiny", 8, num_class_embeds=3)), DDPMScheduler(), class_names=["a", "b", "c"]
    )
    data = LabeledImages(torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"])
    call = {"num_timesteps": 4, "pruning": [(2, 2), (2, 1)]}
    metrics = evaluate_classifier(pipe, data, tmp_path, pipeline_kwargs=call)
    log_odds = pipe(data.images, input_data_format="channels_first", **call).log_odds.numpy()
    assert np.isinf(log_odds).any()  # the case: pruned classes rank last
    assert metrics["auc"] == pytest.approx(ovr_auc_by_ranks(data.labels.numpy(), log_odds))
    assert (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    "y_true, probs, num_bins, message",
    [
        ([0, 1], [[math.nan, 0.5], [0.2, 0.8]], 10, "probs row 0 contains NaN or inf"),  # was an ECE of NaN
        ([0, 1], [[3.0, -2.0], [1.5, -1.0]], 10, r"probs row 0 = \[3.0, -2.0\] is not probabilities"),  # was 1.25
        ([5, 0], [[0.2, 0.8], [0.6, 0.4]], 10, r"y_true\[0\] = 5 is outside the expected range \[0, 1\]"),
        ([0, 1], [[0.2, 0.8], [0.6, 0.4]], 0, "num_bins: expected an integer >= 1, got 0"),  # was an ECE of 0
        ([0, 1], [[0.2, 0.8], [0.6, 0.4]], -1, "num_bins: expected an integer >= 1, got -1"),
    ],
)
def test_calibration_refuses_what_would_give_a_wrong_ece(y_true, probs, num_bins, message):
    with pytest.raises(ValueError, match=message):
        calibration_metrics(y_true, probs, num_bins=num_bins)


def test_a_float32_softmax_rounding_above_one_is_still_probabilities():
    probs = torch.tensor([[1.0, 0.0], [0.3, 0.7]]).softmax(-1).numpy()
    probs[0] = np.nextafter(np.float32(1.0), np.float32(2.0)), 0.0  # one float32 unit above 1
    assert calibration_metrics([0, 1], probs)["bins"][-1]["count"] == 1


def test_bfloat16_tensors_are_scored_as_their_values():
    """A pipeline run in bfloat16: numpy has no such dtype, and `np.asarray(tensor)` raised a TypeError."""
    probs = torch.tensor([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.9, 0.1]], dtype=torch.bfloat16)
    values = probs.double().numpy()  # the same numbers: the results must be equal, not close
    y_true, y_pred = [1, 0, 0, 1], values.argmax(1)
    assert classification_metrics(y_true, y_pred, probs=probs) == classification_metrics(y_true, y_pred, probs=values)
    assert calibration_metrics(y_true, probs) == calibration_metrics(y_true, values)


def plotted_confusion(monkeypatch, matrix, **kwargs) -> ConfusionMatrixDisplay:
    from diffusion_classifiers import plots

    seen = []
    original = ConfusionMatrixDisplay.plot
    monkeypatch.setattr(ConfusionMatrixDisplay, "plot", lambda self, **kw: seen.append(self) or original(self, **kw))
    monkeypatch.setattr(plots, "_save", lambda fig, path: None)
    plots.plot_confusion_matrix(matrix, [f"class {k}" for k in range(len(matrix))], "unused.png", **kwargs)
    return seen[0]


@pytest.mark.parametrize("normalize", ["true", None])
def test_confusion_matrix_text_contrasts_with_its_cell(monkeypatch, normalize):
    """A weak classifier's recalls (all under 0.5) are pale cells on the 0..1 scale; scikit-learn chose their text
    colour for its own limits (the matrix's min..max), so half of them were written in white on pale blue."""
    matrix = np.array([[30, 25, 45], [40, 35, 25], [30, 30, 40]])
    display = plotted_confusion(monkeypatch, matrix, normalize=normalize)
    on_pale, on_dark = display.im_.cmap(1.0), display.im_.cmap(0.0)
    shown = display.confusion_matrix
    for (row, col), text in np.ndenumerate(display.text_):
        dark = display.im_.norm(shown[row, col]) >= 0.5  # the cell's colour is past the middle of the map
        assert text.get_color() == (on_dark if dark else on_pale), (row, col)


def test_a_precision_recall_operating_point_without_positive_calls_is_not_drawn_at_zero(monkeypatch):
    """Nothing called positive: precision is undefined; scikit-learn's zero_division 0 drew the point at (0, 0),
    below the curve, as if every positive call had been wrong."""
    from diffusion_classifiers import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    y_true, scores = np.array([0, 0, 1, 0, 1, 0]), np.array([0.1, 0.2, 0.4, 0.05, 0.3, 0.35])
    plots.plot_roc_pr(y_true, np.zeros(6, int), scores, "unused.png", class_names=["normal", "bleed"])
    pr_ax = figures[0].axes[1]
    labels = [text.get_text() for text in pr_ax.get_legend().get_texts()]
    assert "operating point: nothing called bleed (precision undefined)" in labels
    assert not any(len(line.get_xdata()) == 1 for line in pr_ax.get_lines())  # no single-point marker


def test_the_shipped_metric_scores_a_batch_of_one_class():
    """All normal scans, all called normal: scikit-learn's accuracy is 1; the metric refused "num_classes >= 2"."""
    from diffusion_classifiers.evaluation import load_metric

    result = load_metric().compute(predictions=[0, 0, 0], references=[0, 0, 0])
    assert result["accuracy"] == accuracy_score([0, 0, 0], [0, 0, 0])
    assert result == {"accuracy": 1.0, "macro_f1": 1.0, "balanced_accuracy": 1.0}


def test_the_per_class_table_shows_no_precision_for_a_class_never_predicted_and_escapes_a_pipe():
    """Reviewed: a class never predicted showed precision 0.00% (scikit-learn's zero_division), which reads as every
    call wrong; a "|" in a class name split the row of evaluate's report."""
    from diffusion_classifiers.metrics import per_class_table

    result = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0], class_names=["normal", "bleed|yes"])
    assert result["per_class"]["bleed|yes"]["predicted"] == 0 and result["per_class"]["normal"]["predicted"] == 4
    rows = per_class_table(result["per_class"])
    assert rows[2] == "| normal | 50.00% | 100.00% | 66.67% | 2 |"
    assert rows[3] == "| bleed\\|yes | n/a | 0.00% | 0.00% | 2 |"
    old = {name: {k: v for k, v in row.items() if k != "predicted"} for name, row in result["per_class"].items()}
    assert per_class_table(old)[3] == "| bleed\\|yes | 0.00% | 0.00% | 0.00% | 2 |"  # a metrics.json of before

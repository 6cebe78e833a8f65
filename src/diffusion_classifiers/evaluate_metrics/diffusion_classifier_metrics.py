"""An `evaluate` metric module shipped with diffusion-classifiers, loaded by path (`evaluate.load(<this file>)`)
because `evaluate.load("accuracy")` needs the Hub. It delegates to `diffusion_classifiers.metrics`."""

import datasets
import evaluate

from diffusion_classifiers.metrics import classification_metrics

_DESCRIPTION = "Accuracy, macro-F1 and balanced accuracy of integer class predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
Returns:
    accuracy, macro_f1, balanced_accuracy (`float`).
"""


class DiffusionClassifierMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        metrics = classification_metrics(references, predictions)
        return {name: metrics[name] for name in ("accuracy", "macro_f1", "balanced_accuracy")}

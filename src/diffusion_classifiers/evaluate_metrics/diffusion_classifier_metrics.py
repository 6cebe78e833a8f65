"""An `evaluate` metric module shipped with diffusion-classifiers, loaded by path (`evaluate.load(<this file>)`, or
`diffusion_classifiers.evaluation.load_metric()`) because `evaluate.load("accuracy")` needs the Hub. It delegates to
`diffusion_classifiers.metrics` (one definition of each metric), so it loads where the package is installed: copied
elsewhere without it, `evaluate` refuses it, naming the package as a missing dependency."""

import datasets
import evaluate
import numpy as np

from diffusion_classifiers.metrics import classification_metrics

_DESCRIPTION = "Accuracy, macro-F1 and balanced accuracy of integer class predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
Returns:
    accuracy, macro_f1, balanced_accuracy (`float`): macro_f1 and balanced_accuracy average over the classes present
    in `references` (a class only predicted counts in neither, unlike scikit-learn's default macro-F1).
"""


class DiffusionClassifierMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    # datasets casts each value to int64, truncating probabilities passed by mistake (0.7 -> 0): checked before
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """evaluate's `add_batch`; `predictions` and `references` must be integer class ids."""
        _check_class_ids("predictions", predictions)
        _check_class_ids("references", references)
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """evaluate's `add`; `prediction` and `reference` must be integer class ids."""
        _check_class_ids("prediction", None if prediction is None else [prediction])
        _check_class_ids("reference", None if reference is None else [reference])
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references):
        # at least 2 classes: a batch of class 0 alone (all normal scans, all predicted so) is scored, not refused
        num_classes = max(2, int(np.max(references)) + 1, int(np.max(predictions)) + 1)
        metrics = classification_metrics(references, predictions, num_classes=num_classes)
        return {name: metrics[name] for name in ("accuracy", "macro_f1", "balanced_accuracy")}


def _check_class_ids(name: str, values) -> None:
    """`values` (a list, array or tensor; None when not given) must be integer class ids."""
    if values is None:
        return
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D list of integer class ids, got shape {array.shape}")
    if array.dtype.kind in "iu":
        return
    bad = [i for i, value in enumerate(array.tolist()) if isinstance(value, bool) or not isinstance(value, int)]
    if bad:
        raise ValueError(
            f"{name}: expected integer class ids, got {array.tolist()[bad[0]]!r} at index {bad[0]} (of type "
            f"{type(array.tolist()[bad[0]]).__name__}); pass the predicted class ids (probs.argmax(-1)), not "
            "probabilities or scores"
        )

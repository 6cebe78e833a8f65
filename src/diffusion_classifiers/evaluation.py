"""Evaluate any classifier of the library on a `datasets` split: metrics.json, confusion matrix, reliability diagram.

Works for the diffusers pipelines and for transformers image-classification models (the exported head); labels
are matched to the model's by name, so a dataset whose ClassLabel order differs is still scored correctly.
"""

import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .data import read_classification_split
from .metrics import calibration_metrics, classification_metrics
from .plots import plot_confusion_matrix, plot_reliability
from .validation import check_writable_dir

__all__ = ["check_evaluation_args", "evaluate_classifier", "image_classification_evaluator", "load_classifier", "load_metric", "map_labels_by_name", "write_evaluation", "METRIC_MODULE"]

METRIC_MODULE = str(Path(__file__).parent / "evaluate_metrics" / "diffusion_classifier_metrics.py")


def load_metric():
    """The package's `evaluate` metric module (accuracy, macro-F1, balanced accuracy), loaded by path: no Hub."""
    import evaluate

    return evaluate.load(METRIC_MODULE)


def image_classification_evaluator():
    """`evaluate.evaluator("image-classification")`, usable with transformers 5.

    evaluate 0.4.6 tests `isinstance(model, transformers.TFPreTrainedModel)`, a class transformers 5 removed with its
    TensorFlow support; a placeholder that nothing is an instance of keeps that test False instead of raising.
    """
    import evaluate
    import transformers

    if not hasattr(transformers, "TFPreTrainedModel"):
        transformers.TFPreTrainedModel = type("TFPreTrainedModel", (), {})
    return evaluate.evaluator("image-classification")


def load_classifier(path: str):
    """A saved diffusers pipeline folder (`model_index.json`) or transformers model folder (`config.json`)."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

        return DiffusionClassifierPipeline.from_pretrained(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        from transformers import CONFIG_MAPPING, AutoModelForImageClassification

        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"{path}/config.json: unknown model_type {model_type!r}; expected 'diffusion-classifier' (import "
                "diffusion_classifiers first) or another transformers image-classification model type"
            )
        return AutoModelForImageClassification.from_pretrained(path, use_safetensors=True)
    raise FileNotFoundError(f"{path}: expected a pipeline folder (model_index.json) or a transformers model (config.json)")


def _predictor(classifier, image_processor=None) -> Tuple[Callable[[list], torch.Tensor], List[str]]:
    """`(images -> probs [N, K], class names)` for a pipeline or a transformers model."""
    from transformers import PreTrainedModel

    if isinstance(classifier, PreTrainedModel):
        from transformers import AutoImageProcessor

        processor = image_processor or AutoImageProcessor.from_pretrained(classifier.name_or_path)
        names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
        classifier.eval()

        def predict(images):
            with torch.no_grad():
                inputs = processor(images, return_tensors="pt").to(classifier.device)
                return classifier(**inputs).logits.float().softmax(-1).cpu()

        return predict, names
    from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

    if not isinstance(classifier, DiffusionClassifierPipeline):
        raise TypeError(f"expected a classifier pipeline or a transformers model, got {type(classifier).__name__}")
    return (lambda images: classifier(images).probs.cpu()), classifier.class_names


def map_labels_by_name(dataset_names: List[str], model_names: List[str]) -> np.ndarray:
    """`mapping[dataset_id] = model_id`, matching class names; a clear error listing both when they differ."""
    if sorted(dataset_names) != sorted(model_names):
        raise ValueError(
            f"the dataset's label names {dataset_names} differ from the model's {model_names}; rename or cast the "
            "dataset's ClassLabel so the same class names appear (their order may differ)"
        )
    return np.array([model_names.index(name) for name in dataset_names])


def check_evaluation_args(output_dir: Optional[str], batch_size: int) -> None:
    """What must hold before a model is loaded or an image classified: a positive `batch_size`, and an `output_dir`
    (when given) that is a writable folder."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if output_dir is not None:
        check_writable_dir(output_dir)


def evaluate_classifier(
    classifier,
    dataset,
    output_dir: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    batch_size: int = 64,
    image_processor=None,
) -> dict:
    """Score `classifier` (pipeline, transformers model or saved folder) on a `datasets.Dataset` with an Image and a
    ClassLabel column. Writes `metrics.json`, `confusion_matrix.png` and `reliability.png` into `output_dir`."""
    check_evaluation_args(output_dir, batch_size)
    if isinstance(classifier, (str, os.PathLike)):
        classifier = load_classifier(str(classifier))
    predict, model_names = _predictor(classifier, image_processor)
    images, dataset_labels, dataset_names = read_classification_split(dataset, image_column, label_column)
    y_true = map_labels_by_name(dataset_names, model_names)[dataset_labels]
    probs = torch.cat([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    metrics = classification_metrics(y_true, probs.argmax(-1), probs=probs, class_names=model_names)
    metrics["calibration"] = calibration_metrics(y_true, probs)
    if output_dir is not None:
        write_evaluation(metrics, model_names, output_dir)
    return metrics


def write_evaluation(metrics: dict, class_names: List[str], output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, os.path.join(output_dir, "confusion_matrix.png"))
    plot_reliability(metrics["calibration"], os.path.join(output_dir, "reliability.png"))

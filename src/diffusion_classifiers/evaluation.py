"""Evaluate any classifier of the library on a `datasets` split: metrics.json, report.md and the plots.

`evaluate_classifier` is the one evaluation entry (the CLI's `diffusion-classifiers evaluate` and
`examples/evaluate.py` call it). It works for the diffusers pipelines and for transformers image-classification
models (the exported head); labels are matched to the model's by name, so a dataset whose ClassLabel order differs
is still scored correctly. Images reach the model through its saved preprocessing contract, the one it was trained
with, so a training run's report and `evaluate` on the same split give the same numbers. Binary tasks are scored for their positive class (the model's saved `positive_class`
unless another is given).
"""

import copy
import csv
import functools
import io
import json
import numbers
import os
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Collection, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from .atomic_files import write_texts_atomically
from .provenance import run_environment
from .confidence_intervals import intervals_of_metrics
from .data import ONE_SET, ImagePreprocessing, LabeledImages, canonical_split_name, load_image_classification_data
from .data.hf_datasets import HF_SPLIT_NAMES, is_saved_dataset
from .data.preprocessing import images_in_their_stated_range, preprocessed_as_input
from .data.readers import check_source_exists
from .data.split_record import (
    ANONYMISED_DICOM_RULE,
    image_fingerprint_variants,
    image_fingerprints,
    read_split_record,
    recorded_fingerprints_partial,
    recorded_selection_fingerprints,
    recorded_train_fingerprints,
)
from .data.streaming import (
    StreamingImages,
    streaming_classification_split,
    streaming_image_classification_data,
)
from .metrics import (
    TRAINING_IMAGE_COPIES_KEY,
    absent_classes_note,
    auc_text,
    average_precision_rows,
    calibration_metrics,
    calibration_rows,
    classification_metrics,
    decision_sentence,
    intervals_note,
    mark_absent_classes,
    met_by_construction,
    metric_row,
    metrics_table_header,
    per_class_table,
    percent,
    positive_class_rows,
    predictive_values_at,
    prevalence_note,
    resolve_positive_label,
    seed_sensitivity_metrics,
    selective_rows,
)
from .operating_points import (
    check_decision_rule,
    decisions_at,
    given_operating_point,
    positive_log_odds,
    threshold_for_sensitivity,
)
from .validation import check_no_pickled_weights, check_positive_integer, check_writable_dir, is_seed, near_miss_note

__all__ = [
    "EVALUATION_SPLITS",
    "METRIC_MODULE",
    "check_dataset_labels",
    "check_evaluation_args",
    "check_evaluation_split",
    "check_prevalence",
    "ranked_by_log_odds",
    "check_head_record",
    "check_read_as_the_model_reads",
    "carved_splits",
    "check_training_overlap",
    "evaluate_classifier",
    "files_of_splits",
    "evaluate_compatible_transformers",
    "load_classifier",
    "recorded_fingerprints_of",
    "load_evaluation_split",
    "load_metric",
    "map_labels_by_name",
    "pipeline_call_settings",
    "predictions_csv",
    "render_evaluation_report",
    "saved_positive_class",
    "saved_preprocessing",
    "write_evaluation",
]

METRIC_MODULE = str(Path(__file__).parent / "evaluate_metrics" / "diffusion_classifier_metrics.py")
# Each scored image's labels and probabilities, beside metrics.json (`predictions_csv`); not predict's default output
# name, predictions.csv, which an evaluation into predict's folder would replace
PREDICTIONS_FILE = "image_predictions.csv"
# The splits `load_evaluation_split` (and `diffusion-classifiers evaluate --split`) reads: one of the data's ("val" and
# "validation" one name), or `ONE_SET` ("all"), every image of the data set as one set (its splits together, none
# carved).
EVALUATION_SPLITS = (*HF_SPLIT_NAMES, ONE_SET)


def load_metric():
    """The package's `evaluate` metric module (accuracy, macro-F1, balanced accuracy), loaded by path: no Hub."""
    import evaluate

    return evaluate.load(METRIC_MODULE)


@contextmanager
def evaluate_compatible_transformers() -> Iterator[None]:
    """Inside this block, `evaluate.evaluator(...).compute(...)` (evaluate 0.4.6) runs with transformers 5.

    evaluate's `compute` tests `isinstance(model, transformers.TFPreTrainedModel)`, a class transformers 5 removed
    with its TensorFlow support. A placeholder that nothing is an instance of keeps that test False; it is removed
    again when the block ends, so nothing outside the block sees it.
    """
    import transformers

    added = "TFPreTrainedModel" not in dir(transformers)
    if added:
        transformers.TFPreTrainedModel = type("TFPreTrainedModel", (), {})
    try:
        yield
    finally:
        if added:
            del transformers.TFPreTrainedModel


def load_classifier(path: str):
    """A saved diffusers pipeline folder (`model_index.json`) or transformers model folder (`config.json`), or a Hub
    repo id of either (its configs and safetensors downloaded, as `hub.download` fetches them)."""
    from .hub import download

    path = download(path)
    if os.path.isfile(os.path.join(path, "model_index.json")):
        from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

        return DiffusionClassifierPipeline.from_pretrained(path)
    from diffusion_classifiers.pipelines.pipeline_utils import pipeline_of_component

    parent = pipeline_of_component(path)
    if parent is not None:
        raise ValueError(
            f"{path}: a component of a diffusers pipeline, not a classifier; pass the pipeline folder {parent}"
        )
    if os.path.isfile(os.path.join(path, "config.json")):
        from transformers import CONFIG_MAPPING, AutoModelForImageClassification

        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"{path}/config.json: unknown model_type {model_type!r}; expected 'diffusion-classifier' (import "
                "diffusion_classifiers first) or another transformers image-classification model type"
            )
        check_no_pickled_weights(path)  # QA: another transformers model's folder of pytorch_model.bin: a traceback
        return AutoModelForImageClassification.from_pretrained(path, use_safetensors=True)
    raise FileNotFoundError(f"{path}: expected a pipeline folder (model_index.json) or a transformers model (config.json)")


# images -> (probs, ranking scores, the binary Score-SDE ratio's standard error or None)
Predictor = Callable[[list], Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]]


# Arguments of a pipeline's `__call__` that do not change what is scored (or are the images themselves).
_NOT_SETTINGS = {"self", "images", "image", "return_dict", "input_data_format", "generator", "batch_size", "output_type"}


def pipeline_call_settings(classifier, pipeline_kwargs: Optional[dict] = None) -> Optional[dict]:
    """The settings a pipeline's `__call__` runs with: its defaults (Score-SDE: `method`, `num_timesteps`, `priors`,
    `seed`, ...) overridden by `pipeline_kwargs`, whose unknown names are refused; None for a transformers model."""
    import inspect

    from transformers import PreTrainedModel

    if isinstance(classifier, PreTrainedModel):
        if pipeline_kwargs:
            raise ValueError(f"pipeline_kwargs: a transformers model takes none, got {sorted(pipeline_kwargs)}")
        return None
    parameters = inspect.signature(classifier.__call__).parameters
    settings = {
        name: p.default for name, p in parameters.items()
        if name not in _NOT_SETTINGS and p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    }  # fmt: skip
    unknown = sorted(set(pipeline_kwargs or {}) - set(settings))
    if unknown:
        raise ValueError(
            f"pipeline_kwargs: unknown {unknown} for {type(classifier).__name__}; expected some of {sorted(settings)}"
        )
    settings.update(pipeline_kwargs or {})
    # what the call would refuse, before any image is read (a pipeline class: its defaults, none to refuse)
    if hasattr(classifier, "check_call_settings") and not isinstance(classifier, type):
        classifier.check_call_settings(settings)
    return json.loads(json.dumps(settings, default=_as_list))  # as metrics.json records them


def _as_list(value) -> list:
    """A tuple, array or tensor setting (priors) as the list JSON holds."""
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _predictor(
    classifier, image_processor=None, pipeline_kwargs: Optional[dict] = None, preprocessed: bool = False,
    in_stated_range: bool = False,
) -> Tuple[Predictor, List[str]]:
    """`(images -> (probs [N, K], ranking scores [N, K], stderr [N] or None, nfe [N] or None), class names)` for a
    pipeline or a transformers model; `images` a list of PIL images or a `[N, C, H, W]` tensor (`preprocessed`: the
    output of the model's own preprocessing, read as it is, `ImagePreprocessing.for_its_output`). The ranking scores
    order the images for ROC curves: a pipeline's `log_odds` when it gives them (Score-SDE: its probs saturate at 0 and
    1), else the probs. `stderr`: a binary Score-SDE pipeline's `log_likelihood_ratio_stderr` (the ELBO's, or the
    likelihood's with `num_probes >= 2`), the standard error of its log-odds. `nfe`: a Score-SDE pipeline's network
    calls per image (`nfe_per_image`). `in_stated_range`: the images are known to be in the contract's range (a
    loader's output that records its reading), so bright ones are not taken for `[0, 1]` arrays
    (`images_in_their_stated_range`)."""
    from transformers import PreTrainedModel

    known_range = images_in_their_stated_range if in_stated_range else nullcontext

    if isinstance(classifier, PreTrainedModel):
        from diffusion_classifiers.modeling_diffusion_classifier import saved_image_processor

        processor = image_processor or saved_image_processor(classifier)
        if preprocessed:
            processor = _reading_its_output(processor)
        names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
        classifier.eval()

        def predict(images):
            with torch.no_grad(), known_range():
                inputs = processor(images, return_tensors="pt", input_data_format=_layout(images)).to(classifier.device)
                probs = classifier(**inputs).logits.float().softmax(-1).cpu()
                return probs, probs, None, None

        return predict, names
    from diffusion_classifiers.pipelines import DiffusionClassifierPipeline

    if not isinstance(classifier, DiffusionClassifierPipeline):
        raise TypeError(f"expected a classifier pipeline or a transformers model, got {type(classifier).__name__}")

    def predict(images):
        with classifier.reading_preprocessed_images() if preprocessed else nullcontext(), known_range():
            output = classifier(images, input_data_format=_layout(images), **(pipeline_kwargs or {}))
        ranking, stderr = getattr(output, "log_odds", None), getattr(output, "log_likelihood_ratio_stderr", None)
        stderr, nfe = None if stderr is None else stderr.cpu(), getattr(output, "nfe_per_image", None)
        return output.probs.cpu(), (output.probs if ranking is None else ranking).cpu(), stderr, nfe

    return predict, classifier.class_names


def network_calls(nfe_per_image: torch.Tensor) -> dict:
    """The network calls a generative classifier made per image: their mean, least and most."""
    nfe = nfe_per_image.double()
    return {"mean": round(float(nfe.mean()), 2), "min": int(nfe.min()), "max": int(nfe.max())}


def _reading_its_output(processor):
    """A copy of a transformers `processor` (this package's, with a `preprocessing` contract) that reads the output
    of its own contract unchanged (`ImagePreprocessing.for_its_output`); another kind of processor as it is."""
    if not isinstance(getattr(processor, "preprocessing", None), dict):
        return processor
    reading = copy.copy(processor)
    reading.preprocessing = ImagePreprocessing.from_dict(processor.preprocessing).for_its_output().to_dict()
    return reading


def _layout(images) -> Optional[str]:
    return "channels_first" if isinstance(images, torch.Tensor) else None


def map_labels_by_name(dataset_names: List[str], model_names: List[str]) -> np.ndarray:
    """`mapping[dataset_id] = model_id`, matching class names: the dataset may name some of the model's classes only
    (`evaluate_classifier` reports the others as `absent_classes`); names the model does not know are refused."""
    check_known_class_names(dataset_names, model_names, "the dataset's label names")
    return np.array([list(model_names).index(name) for name in dataset_names])


def check_known_class_names(names: Sequence[str], model_names: Sequence[str], where: str) -> None:
    """Every name of `names` (the data's classes, `where` says whose) is one of the model's `model_names`, else a
    `ValueError` naming those that are not, and those that differ only in Unicode normalisation, letter case or
    surrounding spaces (`validation.near_miss_note`)."""
    unknown = [name for name in names if name not in model_names]
    if unknown:
        raise ValueError(
            f"{where} {unknown} are not among the model's classes {list(model_names)}"
            f"{near_miss_note(unknown, model_names)}; give the data the model's class names (all or "
            "some of them, in any order): an image folder's class subfolders, a CSV's label column or a datasets "
            "ClassLabel (rename or cast it)"
        )


def check_dataset_labels(labels: np.ndarray, names: Sequence[str], label_column: Optional[str] = None) -> None:
    """Every label of a `datasets.Dataset` split is one of its ClassLabel's ids `0..len(names)-1`, else a `ValueError`
    counting those that are not, naming the first; a ClassLabel stores an image without a label as -1, which would
    otherwise be scored as the last class."""
    outside = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(outside):
        column = label_column or "the ClassLabel column"
        raise ValueError(
            f"{column}: {len(outside)} of {len(labels)} labels are not class ids in [0, {len(names) - 1}] "
            f"({list(names)}), e.g. row {outside[0]}: {labels[outside[0]]} (-1: an image without a label); expected "
            "every image labelled: filter the unlabelled ones out"
        )


def check_head_record(head) -> None:
    """`head` (how a classifier's head was fitted, recorded in `metrics.json` and said in `report.md`) is a dict that
    JSON can hold, with a `"summary"` sentence, else a `ValueError`: checked before any image is scored."""
    try:
        json.dumps(head)
    except (TypeError, ValueError) as error:
        raise ValueError(f"head: expected a dict of JSON values (str, numbers, lists, dicts), got {head!r}: {error}")
    if not isinstance(head, dict) or not isinstance(head.get("summary"), str):
        raise ValueError(f"head: expected a dict with a 'summary' sentence (str), got {head!r}")


def check_evaluation_split(split: str) -> None:
    """`split` is one of `EVALUATION_SPLITS`, else a `ValueError` listing them; cheap, so callers check it before a
    model or an image is read."""
    if split not in EVALUATION_SPLITS:
        raise ValueError(
            f"split: expected one of {list(EVALUATION_SPLITS)} ({ONE_SET!r}: every image of the data set, its "
            f"splits together), got {split!r}"
        )


def check_evaluation_args(output_dir: Optional[str], batch_size: int) -> None:
    """What must hold before a model is loaded or an image classified: a positive `batch_size`, and an `output_dir`
    (when given) that is a writable folder."""
    check_positive_integer(batch_size, "batch_size")
    if output_dir is not None:
        check_writable_dir(output_dir)


def _warn_default_positive_class(class_names: List[str], classifier) -> None:
    """A binary model saved without a positive class is scored for class 1, which for class folders is the later name
    in alphabetical order: say so (QA: folders ich/normal made 'normal' the class whose sensitivity was reported)."""
    from transformers import PreTrainedModel

    setter = "model.config.positive_class = ..." if isinstance(classifier, PreTrainedModel) else "pipe.set_positive_class"
    warnings.warn(
        f"positive_class: not given and not saved with the model: sensitivity, specificity and the ROC take class 1, "
        f"{class_names[1]!r} (class ids follow the data's class order, alphabetical for class folders), not "
        f"{class_names[0]!r}; pass positive_class (--positive_class) to choose, or save one with the model "
        f"({setter})",
        UserWarning,
        stacklevel=3,  # the caller of evaluate_classifier
    )


def saved_positive_class(classifier) -> Optional[str]:
    """The positive class a pipeline (`pipe.positive_class`) or a transformers model (`config.positive_class`) was
    saved with, or None."""
    return getattr(classifier, "positive_class", None) or getattr(getattr(classifier, "config", None), "positive_class", None)


def saved_preprocessing(classifier, image_processor=None) -> ImagePreprocessing:
    """The preprocessing contract a pipeline (`pipe.preprocessing`) or a transformers model (its image processor's
    `preprocessing`, that of `image_processor` when given) was saved with."""
    from transformers import PreTrainedModel

    if isinstance(classifier, PreTrainedModel):
        from diffusion_classifiers.modeling_diffusion_classifier import saved_image_processor

        processor = image_processor or saved_image_processor(classifier)
        return ImagePreprocessing.from_dict(processor.preprocessing)
    return classifier.preprocessing


def load_evaluation_split(
    dataset: str,
    split: str = "test",
    seed: int = 0,
    preprocessing: Optional[ImagePreprocessing] = None,
    streaming: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    class_names: Optional[Sequence[str]] = None,
    with_train: bool = False,
    anonymised_dicom_groups: str = ANONYMISED_DICOM_RULE,
    model_class_names: Optional[Sequence[str]] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
):
    """The `split` of `dataset` (one of `EVALUATION_SPLITS`): a folder saved with `DatasetDict.save_to_disk` gives its
    own split as [`StreamingImages`] read through `preprocessing` when given (checkable against a model's training
    images), else a (memory-mapped) `datasets.Dataset`, and a split it lacks, or a train split val or test is carved
    from, carved as below; what `data.load_image_classification_data` reads (digits, a MedMNIST .npz,
    IDX files, an image folder, ...), whose splits are carved with `val_fraction`, `test_fraction`, `seed`,
    `class_names` and `anonymised_dicom_groups` when the data has none (as the model's were:
    `data.resolve_split_args`), gives its [`LabeledImages`], read at the size, channels and medical reading of
    `preprocessing` (a model's saved contract): the very tensors a model trained on that data was trained and
    reported on, with no round trip through 8-bit images. With `streaming`, an image folder or CSV of paths gives the
    same split as [`StreamingImages`] instead (`data.streaming_image_classification_data`: the same images, decoded
    only when read), for data larger than memory. With `with_train`, `(split, the train split carved alongside it)`
    (a saved `DatasetDict`'s own train split, None without `preprocessing`): the images `check_training_overlap` tells
    duplicates within the data from training images by.

    `split="all"` (`ONE_SET`) gives every image of `dataset` once, as one set: its own splits joined, none carved
    (the loaders' `one_set=True`; the train split returned with `with_train` is None, as every image is the set
    scored). A saved `DatasetDict`'s splits are then
    read as one [`StreamingImages`] through `preprocessing` when given (so that its images, like any other source's,
    can be checked against a model's training fingerprints), else as one `datasets.Dataset`.

    `class_names` (a model's recorded ones) name the label ids of a source that stores ids or labels (digits, `.npz`,
    IDX, CSV). An image folder carries its own (its class subfolders) and a saved `Dataset` / `DatasetDict` its
    ClassLabel: theirs are read instead, checked against `class_names` before any image is decoded (classes the model
    does not know are refused, by name; some of the model's classes only are fine), or against `model_class_names`
    (the model's classes, `hub.class_names_of`) when given. Their order may differ:
    `evaluate_classifier` matches labels to the model's by name, so the scored label ids are the model's whatever the
    data's order, and reports the model's classes the data lacks as `absent_classes`. `image_column` and
    `label_column` name a `datasets` source's columns where it has several (a saved `DatasetDict`'s split is returned
    whole: give them to [`evaluate_classifier`] too)."""
    check_evaluation_split(split)
    if dataset != "digits":
        check_source_exists(dataset, name="dataset")
    if os.path.isfile(os.path.join(dataset, "dataset_dict.json")):
        from datasets import load_from_disk

        saved = load_from_disk(dataset)
        train = None  # its own train split: what tells duplicates within the data from training images
        if split == ONE_SET:
            chosen = _every_saved_image(saved, dataset, preprocessing, image_column, label_column)
        else:
            chosen = _saved_split(saved, split, dataset)
            if chosen is not None and preprocessing is not None:  # read as the model reads: checkable (QA)
                read = functools.partial(_read_through, preprocessing=preprocessing, image_column=image_column,
                                         label_column=label_column)  # fmt: skip
                chosen, train = read(chosen), read(saved["train"], scored=False) if "train" in saved else None
        if chosen is not None:
            return (chosen, train) if with_train else chosen
    own_names = _own_class_names(dataset, image_column, label_column)
    known = model_class_names if model_class_names is not None else class_names
    if own_names is not None and known is not None:  # the data's names stand, checked against the model's
        check_known_class_names(own_names, known, f"{dataset}: its classes")
    class_names = None if own_names is not None else _names_of_label_ids(dataset, class_names)
    contract = preprocessing or ImagePreprocessing()
    load = streaming_image_classification_data if streaming else load_image_classification_data
    splits = load(
        dataset, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, class_names=class_names,
        anonymised_dicom_groups=anonymised_dicom_groups, one_set=split == ONE_SET, image_column=image_column,
        label_column=label_column, **contract.loader_kwargs,
    )  # fmt: skip
    if split == ONE_SET:
        return (splits[ONE_SET], None) if with_train else splits[ONE_SET]
    chosen = splits[canonical_split_name(split)]
    return (chosen, splits["train"]) if with_train else chosen


def _every_saved_image(
    splits, where: str, preprocessing: Optional[ImagePreprocessing], image_column: Optional[str] = None,
    label_column: Optional[str] = None,
):
    """Every split of a saved `DatasetDict` as one set: [`StreamingImages`] read through `preprocessing` (a model's
    contract) when given, else one `datasets.Dataset`."""
    import datasets

    columns = {name: dict(part.features) for name, part in splits.items()}
    if len({repr(features) for features in columns.values()}) > 1:
        raise ValueError(
            f"split {ONE_SET!r}: the splits of the DatasetDict saved in {where} differ in their columns {columns}; "
            "expected the same columns (and class names) in every split, to score them as one set"
        )
    every = datasets.concatenate_datasets(list(splits.values()))
    if preprocessing is None:
        return every
    return _read_through(every, preprocessing, image_column, label_column)


def _read_through(
    split, preprocessing: ImagePreprocessing, image_column=None, label_column=None, scored: bool = True
) -> StreamingImages:
    """A saved `datasets` split read through a model's contract, as [`StreamingImages`]: checkable against the
    model's training images, as every other source's split is; the labels of a split to be `scored` checked first
    (`check_dataset_labels`: an image without a label, -1, would be scored as the last class)."""
    read = StreamingImages(split, image_column=image_column, label_column=label_column, **preprocessing.loader_kwargs)
    if scored:
        check_dataset_labels(read.labels.numpy(), read.class_names, label_column)
    return read


def _names_of_label_ids(dataset: str, recorded: Optional[Sequence[str]]) -> Optional[Sequence[str]]:
    """The names to give the label ids of `dataset` (digits, `.npz`, IDX, CSV): the model's `recorded` ones, which
    name its training data's ids, unless the data names its ids itself (`data.built_in_class_names`) with the same
    classes: the recorded order is then another source's (RC-DiT QA: a head fitted on a CSV of PneumoniaMNIST
    images listing pneumonia first read the .npz's normal images as pneumonia, 19% for 81%), and the data's own names
    stand (labels are matched to the model's by name). Recorded names of other classes rename the ids."""
    from .data.array_files import built_in_class_names

    own = built_in_class_names(dataset)
    if recorded is not None and own is not None and sorted(recorded) == sorted(own):
        return None
    return recorded


def _own_class_names(
    dataset: str, image_column: Optional[str] = None, label_column: Optional[str] = None
) -> Optional[List[str]]:
    """The class names an image folder (its class subfolders, or `splits/classes.txt`) or a saved `datasets` source
    (its ClassLabel) carries, found without decoding an image (`data.own_class_names`); None for a source whose label
    ids `class_names` name (digits, `.npz`, a CSV, IDX files) and for a path that does not exist."""
    from .data.readers import own_class_names

    if not isinstance(dataset, (str, os.PathLike)) or not os.path.exists(dataset) or str(dataset) == "digits":
        return None
    return own_class_names(dataset, image_column, label_column)


def carved_splits(dataset) -> frozenset:
    """The names of the splits of `dataset` (as `load_evaluation_split` takes it) that are carved by the seed and
    fractions, not the data's own, found without reading an image: val and test of digits, of an image folder
    without `splits/*.txt` and of a CSV; val of IDX files with a test set; those a `.npz`, a `splits/` folder or a
    saved `DatasetDict` lacks (QA: one of a train split only was said to carve none, so `probe` did not check the val
    and test it carved from the model's training images); any other source keeps its own: none. Only a carved split
    can hold training images where the data changed (`check_training_overlap`); a split of the data's own is the
    data's word."""
    if not isinstance(dataset, (str, os.PathLike)) or not (str(dataset) == "digits" or os.path.exists(dataset)):
        return frozenset()
    path = Path(dataset)
    if str(dataset) == "digits" or path.suffix.lower() == ".csv":
        return frozenset({"val", "test"})
    if path.suffix.lower() == ".npz":
        with np.load(path) as archive:  # the key names only: no array is read
            return frozenset(name for name in ("val", "test") if f"{name}_images" not in archive.files)
    if (path / "dataset_dict.json").is_file():
        own = {canonical_split_name(name) for name in json.loads((path / "dataset_dict.json").read_text())["splits"]}
        return frozenset(name for name in ("val", "test") if name not in own)
    if not path.is_dir():
        return frozenset()
    if any((path / f"{name}{gz}").is_file() for name in ("train-images-idx3-ubyte",) for gz in ("", ".gz")):
        has_test = any((path / f"t10k-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz"))
        return frozenset({"val"} if has_test else {"val", "test"})
    if (path / "splits" / "train.txt").is_file():
        return frozenset(name for name in ("val", "test") if not (path / "splits" / f"{name}.txt").is_file())
    return frozenset({"val", "test"})


def check_training_overlap(
    dataset,
    train_fingerprints: Collection[str],
    drop: bool = False,
    where: str = "the split",
    num_workers: int = 0,
    train_split=None,
    drop_hint: Optional[str] = "--drop_training_images (drop_training_images=True)",
    changed_split_args: Optional[dict] = None,
    streaming_hint: Optional[str] = "--streaming (streaming=True)",
    whole_data_set: bool = False,
    unlabeled_pool: bool = False,
    paths=None,
    with_kept_positions: bool = False,
    chosen_on: Optional[Collection[str]] = None,
    count_copies_in_train: bool = False,
):
    """`(dataset, number dropped)`: [`LabeledImages`] or [`StreamingImages`] checked, by content
    (`data.split_record.image_fingerprint_variants`), against a model's recorded `train_fingerprints`. Images the
    model was trained on are refused with a `ValueError` (how many of how many; a few file names where known, else
    their positions and `streaming_hint`, the way to read the split with its file names; and `drop_hint`, the way to
    score the rest, where there is one), or left out with `drop`. A [`StreamingImages`] split is read once for this,
    before any image is scored. `changed_split_args` (`data.split_record.changed_split_args`: the carving values
    given that differ from the model's record, `{name: (given, recorded)}`) are named first as the likely cause;
    with `whole_data_set` (`dataset` is every image of a data set, none carved: `ONE_SET`) or `unlabeled_pool`
    (the model was trained on every image of an unlabeled folder, `--unlabeled`), the data itself.

    `dataset` may be a dict of splits by name (`{"val": ..., "test": ...}`, `where` then naming the data they are
    splits of): every split is checked and refused once, naming the count of each; it gives `(dict of the splits,
    dict of the numbers dropped)`. `paths` names the files of [`LabeledImages`] read from files: a callable giving
    the file of the split's image at an index (called for the few images named only; None where the file is not
    known: `files_of_splits`); a dict of them by name with a dict of splits.

    `train_split`, the train split carved from the same data (in memory or streamed), tells duplicates from leaks:
    an image whose fingerprint is also one of its images' is an exact copy of an image the data itself puts in train
    (real data sets hold such duplicates), not one carving moved out of train, and passes. It is fingerprinted only
    where some image matches the record (a streamed train split is then read once).

    `with_kept_positions` adds the positions in `dataset` of the images kept (a dict of them by name with a dict of
    splits); `chosen_on` (the fingerprints of the val images a head was chosen on, `recorded_selection_fingerprints`)
    adds how many of the images kept are among them, counted from the same fingerprints (no second read);
    `count_copies_in_train` adds, last, how many images kept are the model's training images that passed as copies
    of `train_split`'s (QA: scored without a word, the report saying none of the images was a training image)."""
    named = isinstance(dataset, dict)
    splits, paths = (dataset, paths or {}) if named else ({None: dataset}, {None: paths})
    train_fingerprints, in_data, seen, selected, copies = set(train_fingerprints), None, {}, {}, {}
    for name, split in splits.items():
        images = split.images if isinstance(split, LabeledImages) else _tensor_batches(split, 64, num_workers)
        variants = image_fingerprint_variants(images)
        seen[name] = np.array([any(f in train_fingerprints for f in v) for v in variants], dtype=bool)
        selected[name] = np.array([any(f in (chosen_on or ()) for f in v) for v in variants], dtype=bool)
        if seen[name].any() and train_split is not None:
            if in_data is None:  # fingerprinted once, for every split
                batch_size = 1024 if isinstance(train_split, LabeledImages) else 64
                in_data = set(image_fingerprints(_tensor_batches(train_split, batch_size, num_workers)))
            copied = np.array([any(f in in_data for f in v) for v in variants], dtype=bool)
            copies[name], seen[name] = int((seen[name] & copied).sum()), seen[name] & ~copied
    counts = {name: int(found.sum()) for name, found in seen.items()}
    num_seen, num_images = sum(counts.values()), sum(len(found) for found in seen.values())
    if num_seen and not drop:
        counted = " and ".join(f"{counts[name]} of {len(seen[name])} images of the {name} split" for name in splits)
        raise ValueError(
            (f"{counted} of {where}" if named else f"{num_seen} of {num_images} images of {where}")
            + " are images the model was trained on (by content: its data_splits.json train_fingerprints), e.g. "
            + f"{_first_images(splits, seen, paths, streaming_hint)}: "
            + _likely_cause(changed_split_args, whole_data_set, unlabeled_pool)
            + (f", or pass {drop_hint} to score the other {num_images - num_seen} only"
               if drop_hint and num_seen < num_images else "")
        )
    positions = {name: np.flatnonzero(~found) for name, found in seen.items()}
    kept = {name: split.subset(positions[name]) if counts[name] else split for name, split in splits.items()}
    checked = (kept, counts, positions) if named else (kept[None], num_seen, positions[None])
    checked = checked if with_kept_positions else checked[:2]
    if chosen_on is not None:
        among = {name: int(selected[name][positions[name]].sum()) for name in splits}
        checked = (*checked, among if named else among[None])
    if count_copies_in_train:
        copies = {name: copies.get(name, 0) for name in splits}
        checked = (*checked, copies if named else copies[None])
    return checked


def files_of_splits(
    dataset, splits: dict, carving: dict, reading: ImagePreprocessing, one_set: bool = False
) -> Optional[dict]:
    """For splits of an image folder or CSV read into memory (`splits` by name, carved by `carving`, read as `reading`
    reads; with `one_set`, every image as one set), the file of each of their images, by index (`{name: index ->
    path}`), from a listing of the same carving that decodes nothing, made only when a file is asked for (a refusal
    names a few): None for an image where the listing is not the split read, and for data without files. Each
    callable's `located(index)` gives `(file, frame)` (the frame of a multi-frame DICOM file, else None)."""
    if not isinstance(dataset, (str, os.PathLike)) or str(dataset) == "digits" or not os.path.exists(dataset):
        return None
    if Path(dataset).suffix.lower() != ".csv" and (not Path(dataset).is_dir() or is_saved_dataset(Path(dataset))):
        return None

    @functools.lru_cache(maxsize=None)
    def listing() -> dict:
        with warnings.catch_warnings():  # what the data was warned about when it was read
            warnings.simplefilter("ignore")
            # only the files' order matters: any size and channels the listing accepts
            channels = reading.num_channels or (3 if len(reading.medical_or_default.windows) == 3 else 1)
            kwargs = {**reading.loader_kwargs, "num_channels": channels, "image_size": reading.image_size or 8}
            names = None if Path(dataset).is_dir() else carving.get("class_names")  # a folder carries its own
            return streaming_image_classification_data(
                dataset, check_files=False, one_set=one_set, **{**carving, "class_names": names}, **kwargs
            )

    @functools.lru_cache(maxsize=None)
    def files_of(name: str) -> Optional[list]:
        try:
            listed = listing()[canonical_split_name(name)]
        except (ValueError, OSError):  # listed otherwise than the split was read (a file gone since): positions
            return None
        same = len(listed) == len(splits[name]) and listed.labels.equal(splits[name].labels)
        return listed.files_and_frames() if same else None

    def located(name: str, index: int) -> tuple:
        files = files_of(name)
        return (None, None) if files is None else files[index]

    def file_of(name: str, index: int) -> Optional[str]:
        return located(name, index)[0]

    paths = {name: functools.partial(file_of, name) for name in splits}
    for name, path_of in paths.items():
        path_of.located = functools.partial(located, name)
    return paths


def _first_images(splits: dict, seen: dict, paths: dict, streaming_hint: Optional[str]) -> str:
    """The first 5 images `seen` of each split of `splits` that has some (named before them where it has a name):
    their files (a [`StreamingImages`] split, or its `paths`: a callable of the index), else their positions in the
    split and `streaming_hint`, how to read it with its file names."""
    shown, by_position = [], False
    for name, split in splits.items():
        indices = [int(i) for i in np.flatnonzero(seen[name])[:5]]
        if not indices:
            continue
        files = paths.get(name)
        if isinstance(split, StreamingImages):
            files = [split._path(i) for i in indices]
        elif files is not None:
            files = [files(i) for i in indices]
        if files is None or None in files:
            files, by_position = [f"#{i}" for i in indices], True
        more = ", ..." if seen[name].sum() > len(indices) else ""
        shown.append(("" if name is None else f"{name}: ") + ", ".join(files) + more)
    listing = f"; an image folder or CSV read with {streaming_hint} names their files" if streaming_hint else ""
    where = "split" if len(shown) == 1 else "splits"
    return "; ".join(shown) + (f" (positions in the {where}{listing})" if by_position else "")


# Why images the model's own carving did not put in its held-out splits are training images, and what to do: every
# image of a data set (`ONE_SET`) holds some of its training data ("data set"); the data scored by a model trained
# on an unlabeled pool (`--unlabeled`) shares images with the pool ("pool", followed by the way to leave them out of
# the data).
_SHARED_IMAGES_CAUSE = {
    "data set": (
        "the data holds images the model was trained on (its training data, or a set that shares images with it), "
        "and scoring them would overstate the model. Leave them out of the data"
    ),
    "pool": (
        "the data shares these images with the unlabeled pool the model was trained on (--unlabeled), and scoring "
        "them would overstate the model. Remove them from the labelled data (carved splits are then carved anew: "
        "check again), or from the pool and retrain the model on it; to fit a head on labelled pool images, list them "
        "in an image folder's splits/train.txt and labelled images from outside the pool in its splits/val.txt and "
        "splits/test.txt"
    ),
    # every image of a data set checked against a pool model's record, which also holds its head's train images
    "pool data set": (
        "the data holds images the model or its head was trained on (images of the unlabeled pool the model was "
        "trained on, --unlabeled, or the labelled images its head was fitted on), and scoring them would overstate "
        "the model. Leave them out of the data"
    ),
}


def _likely_cause(
    changed_split_args: Optional[dict], whole_data_set: bool = False, unlabeled_pool: bool = False
) -> str:
    """Why the images checked hold training images, and what to do: every image of a data set (`whole_data_set`)
    holding training images (of a model trained on an unlabeled pool, `unlabeled_pool`: the pool's or its head's);
    images shared with the pool (leaving them out of carved data re-carves it); else a carving value given that differs from the model's record
    (named first), else data that differs from the model's."""
    if whole_data_set:
        return _SHARED_IMAGES_CAUSE["pool data set" if unlabeled_pool else "data set"]
    if unlabeled_pool:
        return _SHARED_IMAGES_CAUSE["pool"]
    data_differs = (
        "a folder that grew or lost files, the same images re-exported, or listed in another order: a CSV's rows "
        "reordered, or the classes numbered otherwise (a folder orders its class names as text, a CSV numeric ones as "
        "numbers, a datasets ClassLabel as its list does), as splits are carved by position and label id"
    )
    if changed_split_args:
        given = ", ".join(f"--{name} {value} (recorded: {old})" for name, (value, old) in changed_split_args.items())
        flags = " ".join(f"--{name}" for name in changed_split_args)
        return (
            f"most likely because {given} differs from the carving the model's data_splits.json records: other values "
            f"carve other splits from the same data (else the data differs from the model's: {data_differs}), and "
            f"scoring them would overstate the model. Leave {flags} out to score the model's own held-out images"
        )
    return (
        f"the data differs from the model's ({data_differs}), or was carved with other fractions or seed than the "
        "model's data_splits.json records, so it is not the model's own held-out images, and scoring them would "
        "overstate the model. Use the data the model was trained from, carved as recorded (in Python: "
        "load_image_classification_data(path, **pipe.loader_kwargs)); for a data set's own split holding copies of "
        "images of its own train split, which the command excuses, pass that split too: evaluate_classifier(..., "
        "train_split=splits['train'])"
    )


def _saved_split(splits, split: str, where: str):
    """`split` of a saved `DatasetDict`, 'val' and 'validation' one name (`to_datasets` writes 'validation'); None
    when it has no such split but a train split, from which the loaders carve it (as they did for the model), and for
    a train split from which val or test is carved (QA: scored whole, the carved-out images with it, and reported as
    carved)."""
    own = {canonical_split_name(name) for name in splits}
    if canonical_split_name(split) == "train" and not {"val", "test"} <= own:
        return None
    for name in splits:
        if canonical_split_name(name) == canonical_split_name(split):
            return splits[name]
    if "train" in splits:
        return None
    raise ValueError(f"split {split!r}: the DatasetDict saved in {where} has no such split; it has {sorted(splits)}")


def evaluate_classifier(
    classifier,
    dataset,
    output_dir: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    batch_size: int = 64,
    image_processor=None,
    positive_class: Optional[str] = None,
    title: Optional[str] = None,
    num_workers: int = 0,
    split: Optional[str] = None,
    dataset_name: Optional[str] = None,
    train_fingerprints: Optional[Collection[str]] = None,
    drop_training_images: bool = False,
    pipeline_kwargs: Optional[dict] = None,
    model_sha256: Optional[str] = None,
    train_split=None,
    changed_split_args: Optional[dict] = None,
    unlabeled_pool: bool = False,
    paths=None,
    head: Optional[dict] = None,
    check_training_images: bool = True,
    moved_in: Optional[Dict[str, str]] = None,
    fingerprints_partial: Optional[bool] = None,
    command: Optional[str] = None,
    carving: Optional[dict] = None,
    threshold: Union[float, str, os.PathLike, None] = None,
    target_sensitivity: Optional[float] = None,
    paths_relative_to: Union[str, os.PathLike, None] = None,
    prevalence: Optional[float] = None,
) -> dict:
    r"""
    Score `classifier` on a `datasets.Dataset` with an Image and a ClassLabel column, on [`LabeledImages`] or on
    [`StreamingImages`].

    Every image reaches the model through its saved preprocessing contract: `datasets` images are decoded and
    preprocessed by it; the `[-1, 1]` tensors of [`LabeledImages`] and [`StreamingImages`] (already preprocessed, see
    [`load_evaluation_split`]) are given in the contract's `input_range`, so a contract of the model's size passes
    them through unchanged and the scores are those of the training run's own report. A `datasets.Dataset` and
    [`StreamingImages`] are read batch by batch by a `DataLoader` (decoded on the fly): only one batch of images and
    the predictions are held, whatever the size of the split.

    Args:
        classifier: a classifier pipeline, a transformers image-classification model, or a saved folder of either.
        dataset (`datasets.Dataset` or [`LabeledImages`]): the split to score; its label names must be the model's,
            all or some of them, in any order (the model's classes it lacks are reported as `absent_classes`).
        output_dir (`str`, *optional*): where to write `metrics.json`, `report.md`, `image_predictions.csv`
            (`predictions_csv`: its `path` column filled from `paths`, or from a [`StreamingImages`] split's own
            files), `confusion_matrix.png`, `reliability.png` and, for binary tasks, `roc_pr.png`.
        image_column, label_column (`str`, *optional*): default to the dataset's Image and ClassLabel columns.
        batch_size (`int`, *optional*, defaults to 64): images per forward pass.
        image_processor (*optional*): for a transformers model; defaults to the one saved with it.
        positive_class (`str`, *optional*): binary tasks: the class sensitivity, specificity, positive-class F1,
            ROC and PR refer to; defaults to the model's saved `positive_class`, else class 1.
        title (`str`, *optional*): the report's and the plots' title; defaults to the model's class.
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` worker processes that decode a
            `datasets.Dataset` or [`StreamingImages`].
        split (`str`, *optional*): the name of the split `dataset` is ("test", "val", ..., or "all": every image of
            the data set, `load_evaluation_split(..., "all")`), recorded in `metrics.json` as `"split"`
            (`hub.load_eval_split` reads it, so a model card names the split its numbers come from).
        dataset_name (`str`, *optional*): the dataset as the caller gave it (a path, "digits", ...), recorded in
            `metrics.json` as `"dataset"`.
        train_fingerprints (*optional*): the fingerprints of the model's training images
            (`data.split_record.recorded_train_fingerprints`); default: those `classifier` records (a pipeline's
            `split_record`, a transformers model folder's `data_splits.json`), unless `split` is "train" or
            `check_training_images` is False. [`LabeledImages`] and [`StreamingImages`] holding any of them are
            refused before any image is scored (`check_training_overlap`); `metrics.json` records
            `"training_images_checked"` (False for a `datasets.Dataset`, which is not checked).
        drop_training_images (`bool`, *optional*, defaults to False): with fingerprints to check against, score the
            images the model was not trained on instead of refusing; `metrics.json` records
            `"training_images_dropped"`.
        pipeline_kwargs (`dict`, *optional*): arguments of the pipeline's `__call__` (Score-SDE: `method`,
            `num_timesteps`, `seed`, ...); `metrics.json` records every setting the call ran with as
            `"pipeline_call"` (`pipeline_call_settings`: the defaults where not given).
        model_sha256 (`str`, *optional*): the evaluated model's `hub.model_fingerprint`, recorded in `metrics.json`
            (computed here when `classifier` is a local folder), so `push_to_hub` can refuse another model's metrics.
        train_split (*optional*): with `train_fingerprints`, the train split carved from the same data as `dataset`
            (`load_evaluation_split(..., with_train=True)`): images also in it are duplicates within the data, not
            refused (`check_training_overlap`).
        changed_split_args (`dict`, *optional*): the carving values given that differ from the model's record
            (`data.split_record.changed_split_args`), named first as the likely cause when training images are found.
        unlabeled_pool (`bool`, *optional*, defaults to `False`): the model was trained on an unlabeled pool (its
            record's `"unlabeled"`): training images found are named as images the data shares with the pool.
        paths (*optional*): for [`LabeledImages`] read from files, a callable giving the file of the image at an
            index (`files_of_splits`), named when training images are found.
        head (`dict`, *optional*): how the classifier's head was fitted (`diffusion-classifiers fit-head`: its kind,
            labelled and val images, the C or temperature chosen, and a `"summary"` sentence), recorded in
            `metrics.json` as `"head"` and said in `report.md`.
        check_training_images (`bool`, *optional*, defaults to True): False scores `dataset` without checking it
            against the model's training images (`metrics.json` then records no `"training_images_checked"`; a model
            that records none is scored with `"training_images_checked": false`, said in `report.md`); not with
            `train_fingerprints`.
        moved_in (`Dict[str, str]`, *optional*): `{name: folder}` moved into `output_dir` once the images are scored,
            when its earlier report is removed and before the new files are written (fit-head's new `pipeline/`,
            saved aside first: a failure while scoring keeps the earlier complete result).
        fingerprints_partial (`bool`, *optional*): the training images checked against are a head's only, the
            model's own unknown: those found are refused or dropped, but `"training_images_checked"` stays false;
            default: as the classifier's record says (`train_fingerprints_partial`).
        command (`str`, *optional*): the command that ran the evaluation, recorded in `metrics.json`.
        carving (`dict`, *optional*): the `val_fraction`, `test_fraction` and `seed` that carved `split` from data
            without splits of its own (`data.split_record.resolve_split_args`; other keys are not recorded), recorded
            in `metrics.json` and said in `report.md`: two evaluations of one model on one data set with other seeds
            score other images.
        threshold (`float`, `str` or `os.PathLike`, *optional*): binary tasks: call an image positive where the
            positive class's probability is this or more (default: its most probable class); or the `metrics.json` of
            the evaluation that chose one with `target_sensitivity` (of the same model and positive class), to apply a
            threshold chosen on val unchanged to test. Recorded as `operating_point` (`operating_points`).
        target_sensitivity (`float`, *optional*): binary tasks: choose, on these images, the largest threshold at
            which this fraction of the positive images is called positive (a screening programme's operating point),
            and score at it; not with `threshold`.
        paths_relative_to (`str` or `os.PathLike`, *optional*): the folder `image_predictions.csv` writes the files
            relative to (the data's folder, or its CSV's: `diffusion-classifiers evaluate` passes it), so an image
            keeps its key whatever the working directory, as predict writes it; default: as opened.
        prevalence (`float`, *optional*): binary tasks: the positive class's share of the images where the model
            is to be used (a screening population's), at which `at_prevalence` gives the PPV and NPV this sensitivity
            and specificity have (those of the metrics are at the scored set's own); not with priors.

    Returns:
        `dict`: `metrics.classification_metrics` (with `positive_class` for binary tasks), plus `calibration`; for a
        val split of a U-Net-feature or RC-DiT model, whose head was chosen on one, `head_chosen_on_a_val_split: true`
        (the report says its figures are optimistic where it is that one); for a binary pipeline
        called with `priors`, `at_priors` (`metrics.predictive_values_at`: the PPV and NPV at their prevalence), and
        with `prevalence`, `at_prevalence` (the same at it).
    """
    carving = _carving_record(carving)
    _check_evaluate_call(
        output_dir, batch_size, split, dataset_name, num_workers, head, dataset, train_fingerprints,
        check_training_images,
    )  # fmt: skip
    check_decision_rule(threshold, target_sensitivity)
    folder = classifier if isinstance(classifier, (str, os.PathLike)) else None
    if folder is not None:
        if model_sha256 is None and os.path.isdir(folder):
            from .hub import model_fingerprint

            model_sha256 = model_fingerprint(folder)
        classifier = load_classifier(str(folder))
    # the model's own training split is asked for training accuracy: not checked
    checking = check_training_images and canonical_split_name(split or "") != "train"
    if train_fingerprints is None and checking:
        train_fingerprints = recorded_fingerprints_of(classifier, folder)
    settings = pipeline_call_settings(classifier, pipeline_kwargs)  # unknown names refused before any image is read
    preprocessed = isinstance(dataset, (LabeledImages, StreamingImages))  # the loaders' output, read as it is
    # the loaders' output records how it was read: in its range by construction (tensors wrapped by hand: unknown)
    in_stated_range = preprocessed and getattr(dataset, "preprocessing", None) is not None
    predict, model_names = _predictor(classifier, image_processor, pipeline_kwargs, preprocessed, in_stated_range)
    contract = saved_preprocessing(classifier, image_processor)
    positive_class = positive_class if positive_class is not None else saved_positive_class(classifier)
    positive_label = resolve_positive_label(positive_class, model_names, len(model_names))  # before any image is read
    if positive_class is None and positive_label is not None:
        _warn_default_positive_class(model_names, classifier)
    point = given_operating_point(threshold, target_sensitivity, model_names, positive_label, model_sha256, settings)
    check_prevalence(prevalence, positive_label, settings)
    if preprocessed:
        check_read_as_the_model_reads(dataset, contract)
        # before the images are checked against the training images: data of other classes is not a leak (QA)
        check_known_class_names(dataset.class_names, model_names, "the dataset's label names")
    overlap = dict(
        train_split=train_split, changed_split_args=changed_split_args, unlabeled_pool=unlabeled_pool, paths=paths
    )
    # of another split than val (whose report says it may be the one chosen on), the images a head was chosen on
    chosen_on = None if canonical_split_name(split or "") == "val" else recorded_selection_fingerprints(
        None, record=_split_record_of(classifier, folder)
    )
    dataset, checked, positions = _checked_against_training_images(
        dataset, train_fingerprints, checking, drop_training_images, split, dataset_name, num_workers, chosen_on,
        **overlap,
    )  # fmt: skip
    if fingerprints_partial is None:
        fingerprints_partial = recorded_fingerprints_partial_of(classifier, folder)
    if checked.get("training_images_checked") and fingerprints_partial:
        checked["training_images_checked"] = False  # a head's train images only: the model's own are unknown (QA)
    batches, dataset_labels, dataset_names = _labelled_batches(
        dataset, contract, batch_size, num_workers, image_column, label_column
    )
    y_true = map_labels_by_name(dataset_names, model_names)[dataset_labels]  # before any image is decoded
    if target_sensitivity is not None and not np.any(y_true == positive_label):  # QA: refused after scoring them all
        raise ValueError(f"target_sensitivity: the images to score hold no {model_names[positive_label]!r} image")
    probs, ranking, stderr, nfe = zip(*_predict_with_one_bar(classifier, predict, batches, len(y_true)))
    probs, ranking = torch.cat(probs), torch.cat(ranking)
    log_odds = None if positive_label is None else positive_log_odds(probs, ranking, positive_label)
    ranking = ranked_by_log_odds(ranking, log_odds, positive_label)
    if target_sensitivity is not None:
        point = threshold_for_sensitivity(y_true == positive_label, log_odds, target_sensitivity)
        point |= {"target_sensitivity": target_sensitivity, "chosen_on": split, "dataset": dataset_name}
        point["num_positives"] = int(np.sum(y_true == positive_label))  # how finely the target could be met
    y_pred = probs.argmax(-1).numpy() if point is None else decisions_at(log_odds, positive_label, point)
    metrics = _scored_metrics(
        y_true, y_pred, log_odds, probs, ranking, stderr, nfe, model_names, positive_label, settings, point
    )
    if point is not None and met_by_construction(point, (split, dataset_name)):  # QA: an interval for a fixed figure
        metrics["confidence_intervals"]["sensitivity"] = None
        metrics["confidence_intervals"]["methods"]["sensitivity"] = (
            "none: the threshold was chosen on these very images to meet this sensitivity (met by construction, not "
            "an estimate)"
        )
    metrics.update(checked)
    if positive_label is not None:
        metrics["num_positives"] = int(np.sum(y_true == positive_label))
    recorded = {"model_sha256": model_sha256, "pipeline_call": settings}
    metrics.update({name: value for name, value in recorded.items() if value is not None})
    metrics["preprocessing"] = contract.to_dict()  # how the images were read
    if head is not None:
        metrics["head"] = head
    from .hub import METHOD_TITLES, method_of_classifier

    method = method_of_classifier(classifier)
    if method is not None:
        metrics["method"] = method
    if _selected_on(method, split):
        metrics["head_chosen_on_a_val_split"] = True
    if positive_label is not None and (settings or {}).get("priors") is not None:
        metrics["at_priors"] = predictive_values_at(classifier.prior_list(settings["priors"])[positive_label], metrics)
    if prevalence is not None:
        metrics["at_prevalence"] = predictive_values_at(prevalence, metrics)
    metrics.update({name: value for name, value in (("command", command), ("carving", carving)) if value})
    evaluated = _scored_set(split) if split in (None, ONE_SET) else split
    mark_absent_classes(metrics, y_true, model_names, _scored_set(split), evaluated)
    _mark_eliminated_classes(metrics, probs, settings)
    if output_dir is not None:
        title = title or f"{METHOD_TITLES.get(method, type(classifier).__name__)} evaluation"
        files = _scored_files(dataset, paths, positions, paths_relative_to)
        predictions = predictions_csv(positions, files, y_true, y_pred, probs, model_names, log_odds, positive_label)
        write_evaluation(
            metrics, model_names, output_dir, y_true, probs, title, split=split, dataset_name=dataset_name,
            ranking_scores=ranking, moved_in=moved_in, predictions=predictions,
        )  # fmt: skip
    return metrics


def _scored_files(dataset, paths, positions: np.ndarray, relative_to=None) -> List[tuple]:
    """The file of each image scored (relative to the folder `relative_to`, given) and its frame, 0 but for a frame of
    a multi-frame DICOM file, as predict numbers them (None where not known: data held in arrays, a `datasets.Dataset`,
    an image stored as bytes), from the `paths` of images read into memory by their `positions` in the split, or from
    a [`StreamingImages`] split's own rows."""
    if isinstance(dataset, StreamingImages):
        located = dataset.files_and_frames()
    else:
        locate = getattr(paths, "located", None) or (lambda index: (None if paths is None else paths(index), None))
        located = [locate(int(position)) for position in positions]
    root = None if relative_to is None else os.path.abspath(relative_to)  # QA: keyed by the working directory
    return [
        (_relative_to(file, root), 0 if frame is None else frame) if file else (None, None) for file, frame in located
    ]


def _relative_to(file: str, root: Optional[str]) -> str:
    """`file` relative to the folder `root` (POSIX separators; `../` where it lies outside: a CSV's row `../b/x.png`
    stays that, as predict writes it); as it is without a `root`."""
    if root is None:
        return file
    return Path(os.path.relpath(os.path.abspath(file), root)).as_posix()


def predictions_csv(
    positions, files, y_true, y_pred, probs, class_names: Sequence[str], log_odds=None, positive_label=None
) -> str:
    """`image_predictions.csv` of an evaluation: one row per image scored, with `image` (its position in the split,
    as the split numbers its images before any training image is dropped), `path` and `frame` (its file and its
    frame, 0 but in a multi-frame DICOM file; empty where not known), `true_label` and `label` (the class decided:
    its most probable, or at the operating point), `score` (the decided class's probability), `prob_<class>` for
    every class of the model, and for binary tasks `log_odds_<positive class>` (what the ROC ranks by and an operating
    point compares)."""
    probs = np.asarray(probs, dtype=np.float64)
    columns = ["image", "path", "frame", "true_label", "label", "score", *(f"prob_{name}" for name in class_names)]
    columns += [] if log_odds is None else [f"log_odds_{class_names[positive_label]}"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row, position in enumerate(positions):
        file, frame = files[row]
        cells = [int(position), file or "", "" if frame is None else frame, class_names[y_true[row]]]
        cells += [class_names[y_pred[row]]]
        cells += [float(probs[row, y_pred[row]]), *map(float, probs[row])]
        writer.writerow(cells + ([] if log_odds is None else [float(log_odds[row])]))
    return text.getvalue()


def _selected_on(method: Optional[str], split: Optional[str]) -> bool:
    """Whether `split` is a val split and the head of a model of `method` was chosen on one (`probe` and `demo` choose
    a U-Net-feature model's (block, timestep) pair and C on val, `fit-head` an RC-DiT head's C or temperature): where
    it is that split, its figures are of the images a choice was made on, optimistic (QA: `evaluate --split val` of a
    probe gave 95.99% without a word, test 87.34%)."""
    return canonical_split_name(split or "") == "val" and method in ("unet_features", "rc_dit")


def _mark_eliminated_classes(metrics: dict, probs: torch.Tensor, settings: Optional[dict]) -> None:
    """Where a Score-SDE call pruned classes or stopped early (`pruning`, `early_stop_confidence`), the classes it
    eliminated for an image have probability 0 (a score of -inf): `eliminated_classes` counts the images and says what
    that does to the figures, which the report states (QA: AUC 0.789 where the exhaustive protocol's was 0.950 for the
    same decisions, a log loss of 14.4 from the clipping of probabilities 0, without a word)."""
    call = settings or {}
    if not (call.get("pruning") or call.get("early_stop_confidence") is not None):
        return
    eliminated = int((probs == 0).any(dim=1).sum())
    if eliminated:
        metrics["eliminated_classes"] = {
            "num_images": eliminated,
            "note": "the classes pruned or stopped early have probability 0 and rank last, tied: the AUC is that of "
            "this protocol's ranking (below the exhaustive protocol's), and the ECE, Brier score and log loss are of "
            "hard decisions, not calibrated probabilities; score with no pruning and no early stop for those",
        }


def check_prevalence(prevalence: Optional[float], positive_label: Optional[int], settings: Optional[dict]) -> None:
    """`prevalence` (the PPV and NPV at it) refused before any image is scored: not a fraction in (0, 1), a task
    that is not binary, or with priors, whose prevalence the predictive values are given at already."""
    if prevalence is None:
        return
    if isinstance(prevalence, bool) or not isinstance(prevalence, numbers.Real) or not 0 < prevalence < 1:
        raise ValueError(f"prevalence: expected a fraction of the images in (0, 1), got {prevalence!r}")
    if positive_label is None:
        raise ValueError("prevalence: expected a binary task (the positive class's share of the images)")
    if (settings or {}).get("priors") is not None:
        raise ValueError("prevalence: not with priors, whose prevalence the PPV and NPV are given at (at_priors)")


def _carving_record(carving: Optional[dict]) -> Optional[dict]:
    """The values of `carving` that choose the images of a carved split (its fractions and seed), refused before
    any image is scored when one is missing."""
    if carving is None:
        return None
    names = ["val_fraction", "test_fraction", "seed"]
    values = [carving.get(name) for name in names]
    if not all(isinstance(value, numbers.Real) and not isinstance(value, bool) for value in values) or not (
        0 < values[0] < 1 and 0 < values[1] < 1 and is_seed(values[2])
    ):
        raise ValueError(f"carving: expected numbers for {names} (fractions in (0, 1), a seed), got {carving!r}")
    return {"val_fraction": float(values[0]), "test_fraction": float(values[1]), "seed": int(values[2])}


def _check_evaluate_call(
    output_dir, batch_size, split, dataset_name, num_workers, head, dataset, train_fingerprints, check_training_images
) -> None:
    """`evaluate_classifier`'s arguments, refused before any model is loaded."""
    check_evaluation_args(output_dir, batch_size)
    for name, value in (("split", split), ("dataset_name", dataset_name)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{name}: expected a non-empty string or None, got {value!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers: expected an integer >= 0, got {num_workers!r}")
    if head is not None:
        check_head_record(head)
    _check_one_split(dataset)
    if train_fingerprints is not None and not check_training_images:
        raise ValueError(
            "train_fingerprints: given with check_training_images=False; expected one of them (the fingerprints to "
            "check against, or no check)"
        )


def _checked_against_training_images(
    dataset, train_fingerprints, checking: bool, drop_training_images: bool, split, dataset_name, num_workers,
    chosen_on=None, **overlap,
) -> Tuple[object, dict, np.ndarray]:  # fmt: skip
    """`dataset` less the training images where `drop_training_images` (refused otherwise: `check_training_overlap`),
    what `metrics.json` records of the check (`training_images_checked`, `training_images_dropped`, and with
    `chosen_on`, the fingerprints of the val images the head was chosen on, how many of the images scored are among
    them: `images_the_head_was_chosen_on`) and the positions in `dataset` of the images kept."""
    if train_fingerprints is not None and isinstance(dataset, (LabeledImages, StreamingImages)):
        where = _images_named(split, dataset_name)
        dataset, dropped, positions, *among, copies = check_training_overlap(
            dataset, train_fingerprints, drop_training_images, where, num_workers, whole_data_set=split == ONE_SET,
            with_kept_positions=True, chosen_on=chosen_on, count_copies_in_train=True, **overlap,
        )  # fmt: skip
        if len(dataset) == 0:
            raise ValueError(f"{where}: every image is one the model was trained on; nothing is left to score")
        dropped = {"training_images_dropped": dropped} if drop_training_images else {}
        chosen = {"images_the_head_was_chosen_on": among[0]} if among else {}
        copied = {TRAINING_IMAGE_COPIES_KEY: copies} if copies else {}
        return dataset, {"training_images_checked": True, **dropped, **chosen, **copied}, positions
    if drop_training_images:  # QA: ignored without a word, the report then saying the images were not checked
        why = (
            "a datasets.Dataset is not checked against the model's training images" if train_fingerprints is not None
            else "no training images are checked against" if not checking
            else "the model records no fingerprints of its training images"
        )  # fmt: skip
        raise ValueError(f"drop_training_images: {why}, so none can be dropped; expected it False")
    # a datasets.Dataset (its own split, not carved by the model's record), or a model that records none: said
    every = np.arange(len(dataset))
    if train_fingerprints is not None or checking:
        return dataset, {"training_images_checked": False}, every
    return dataset, {}, every


def _labelled_batches(
    dataset, contract: ImagePreprocessing, batch_size: int, num_workers: int, image_column, label_column
):
    """The batches the predictor reads (tensors in the contract's input range, or lists of PIL images of a `datasets`
    split decoded on the fly), the labels and the label names."""
    if isinstance(dataset, (LabeledImages, StreamingImages)):
        input_range = contract.input_range
        batches = (
            preprocessed_as_input(images, input_range) for images in _tensor_batches(dataset, batch_size, num_workers)
        )
        return batches, dataset.labels.numpy(), dataset.class_names
    images, dataset_labels, dataset_names = streaming_classification_split(dataset, image_column, label_column)
    check_dataset_labels(dataset_labels, dataset_names, label_column)
    batches = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=list)  # PIL lists
    return batches, dataset_labels, dataset_names


def ranked_by_log_odds(ranking: torch.Tensor, log_odds, positive_label: Optional[int]) -> torch.Tensor:
    """A binary task's ranking scores [N, 2] as its decisions and operating points rank the images: the positive
    class's log-odds, their negation the other class's (float64). A pipeline without log-odds ranks by its float32
    probabilities, which saturate near 0 and 1 and tie images the log-odds tell apart (QA: the average precision read
    0.9448 from them, 0.9447 from the `log_odds_<class>` column of image_predictions.csv)."""
    if log_odds is None:
        return ranking
    scores = torch.empty(len(log_odds), 2, dtype=torch.float64)
    scores[:, positive_label] = torch.as_tensor(log_odds, dtype=torch.float64)
    scores[:, 1 - positive_label] = -scores[:, positive_label]
    return scores


def _scored_metrics(
    y_true, y_pred, log_odds, probs, ranking, stderr, nfe, model_names, positive_label, settings, point
) -> dict:
    """`classification_metrics` of the decisions `y_pred` (at the operating `point` where given, by the binary
    `log_odds`), the probabilities' calibration, the network calls per image where counted and, for a binary pipeline
    giving standard errors, the decisions another noise seed could flip."""
    metrics = classification_metrics(
        y_true, y_pred, probs=ranking, class_names=model_names, positive_label=positive_label
    )
    if all(part is not None for part in nfe):  # QA: what a stopping rule saved could not be read from evaluate
        metrics["nfe_per_image"] = network_calls(torch.cat(nfe))
    metrics["calibration"] = calibration_metrics(y_true, probs)
    metrics["confidence_intervals"] = intervals_of_metrics(metrics, y_true, ranking)
    if point is not None:
        metrics["operating_point"] = point
    # binary: either class's log-odds, 0 at the threshold (at an operating point: less its log-odds); not after an
    # early stop, whose standard error reads low
    if all(part is not None for part in stderr) and not (settings or {}).get("early_stop_confidence"):
        margins = ranking[:, 0]
        if point is not None:
            margins = log_odds - point["log_odds"]
        metrics["seed_sensitivity"] = seed_sensitivity_metrics(y_true, y_pred, margins, torch.cat(stderr))
    return metrics


def _check_one_split(dataset) -> None:
    """Refuse, naming what is expected, what is not one split the function scores (QA: the loaders' dict of splits
    was refused as "expected a datasets.Dataset split, got dict")."""
    import datasets

    if isinstance(dataset, (LabeledImages, StreamingImages, datasets.Dataset)):
        return
    given = type(dataset).__name__
    if isinstance(dataset, Mapping):
        given = f"a {given} of splits {sorted(map(str, dataset))}: pass one of them, e.g. splits[\"test\"]"
    raise TypeError(
        "dataset: expected one split, the LabeledImages or StreamingImages of a loader's split or a "
        f"datasets.Dataset, got {given}"
    )


# How a loader read images, which a model's tensors must share with its contract (the range is checked per batch).
_READING_FIELDS = (
    "image_size", "num_channels", "resize_mode", "pad_value", "normalize_background", "transparency_fill",
)  # fmt: skip


def check_read_as_the_model_reads(dataset, contract: ImagePreprocessing) -> None:
    """Refuse loaded images ([`LabeledImages`], [`StreamingImages`]) read otherwise than the model's saved `contract`
    reads images (size, channels, resize mode, padding, background, DICOM windows): they are scored as they are, so
    the metrics would be those of other images than the model is given (QA: a folder read without
    `**pipe.loader_kwargs`, stretched where the model pads, scored 50% for 62.5%), and checked against the model's
    training images by fingerprints they cannot match."""
    read = getattr(dataset, "preprocessing", None)
    if read is None:  # tensors wrapped by hand: nothing says how they were read
        return
    differing = [
        f"{field} {getattr(read, field)!r} (the model's: {getattr(contract, field)!r})"
        for field in _READING_FIELDS
        if getattr(read, field) != getattr(contract, field)
    ]
    windows, saved_windows = read.medical_or_default.windows, contract.medical_or_default.windows
    differing += [f"DICOM windows {list(windows)} (the model's: {list(saved_windows)})"] * (windows != saved_windows)
    if differing:
        raise ValueError(
            f"dataset: read otherwise than the model reads images: {'; '.join(differing)}; expected the model's "
            "reading: load_image_classification_data(path, **pipe.loader_kwargs)"
        )


def recorded_fingerprints_of(classifier, folder: Optional[str] = None) -> Optional[frozenset]:
    """The fingerprints of the training images `classifier` records (`_split_record_of`; none where a head registered
    by hand dropped them); None where none are recorded."""
    return recorded_train_fingerprints(None, record=_split_record_of(classifier, folder))


def recorded_fingerprints_partial_of(classifier, folder: Optional[str] = None) -> bool:
    """Whether the training images `classifier` records are a head's only, over a model that recorded none of its own
    (`data.split_record.recorded_fingerprints_partial`)."""
    return recorded_fingerprints_partial(None, record=_split_record_of(classifier, folder))


def _split_record_of(classifier, folder: Optional[str] = None) -> Optional[dict]:
    """A pipeline's `split_record`, else (a transformers model) the `data_splits.json` of its saved `folder` or
    `name_or_path`; None where there is none."""
    if hasattr(classifier, "split_record"):
        return classifier.split_record
    folder = folder if folder is not None else getattr(classifier, "name_or_path", None)
    return read_split_record(folder) if folder and os.path.isdir(folder) else None


def _images_named(split: Optional[str], dataset_name: Optional[str]) -> str:
    """The images scored, as messages name them: "the test split of digits"; "the data set flowcam" (`ONE_SET`)."""
    if split == ONE_SET:
        return "the data set" + (f" {dataset_name}" if dataset_name else "")
    return f"the {split or 'evaluated'} split" + (f" of {dataset_name}" if dataset_name else "")


def _scored_set(split: Optional[str]) -> str:
    """"data set" for every image of one (`ONE_SET`), else "split"."""
    return "data set" if split == ONE_SET else "split"


def _predict_with_one_bar(classifier, predict: Predictor, batches: Iterable, num_images: int) -> list:
    """`predict` of every batch under one tqdm bar over the images, a pipeline's own bars (one per call) hidden."""
    from tqdm.auto import tqdm

    from .pipelines import DiffusionClassifierPipeline

    quiet = classifier.progress_bars_off() if isinstance(classifier, DiffusionClassifierPipeline) else nullcontext()
    outputs = []
    with quiet, tqdm(total=num_images, desc="evaluate", unit="image") as bar:
        for images in batches:
            outputs.append(predict(images))
            bar.update(len(outputs[-1][0]))
    return outputs


def _tensor_batches(dataset, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    """The `[B, C, H, W]` image batches of [`LabeledImages`] (in memory) or [`StreamingImages`] (a `DataLoader`)."""
    if isinstance(dataset, LabeledImages):
        return iter(dataset.images.split(batch_size))
    return (images for images, _ in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))


def write_evaluation(
    metrics: dict,
    class_names: List[str],
    output_dir: str,
    y_true,
    probs,
    title: str = "Evaluation",
    split: Optional[str] = None,
    dataset_name: Optional[str] = None,
    ranking_scores=None,
    moved_in: Optional[Dict[str, str]] = None,
    predictions: Optional[str] = None,
) -> None:
    """Write `metrics.json`, `report.md`, `confusion_matrix.png`, `reliability.png` and (binary tasks with both
    classes present) `roc_pr.png` for the labels `y_true` and class probabilities `probs` the metrics came from (the
    ROC and PR curves ranking by `ranking_scores`, default `probs`), and `predictions` (the text of
    `predictions_csv`) as `image_predictions.csv`, when given. `metrics.json` records the `split` and the
    dataset (`dataset_name`) the metrics were measured on, when given. An earlier report is set aside before the
    first file is written (then `moved_in`, `{name: a folder written aside}`, is moved in) and the new one written
    last, after the figures and `report.md`: a folder holding a `metrics.json` holds one run's files
    (`replaced_reports.replacing_earlier_report`: a run that fails keeps the earlier complete result)."""
    from .plots import CLASSIFICATION_FIGURES, plot_classification_figures
    from .replaced_reports import replacing_earlier_report

    os.makedirs(output_dir, exist_ok=True)
    measured_on = {key: value for key, value in (("split", split), ("dataset", dataset_name)) if value is not None}
    # what JSON cannot hold fails before a file is written
    record = json.dumps({**measured_on, **metrics, "environment": run_environment()}, indent=2)
    titles = {"confusion_matrix": f"{title}: confusion matrix", "reliability": f"{title}: reliability", "roc_pr": title}
    replaced = ("report.md", PREDICTIONS_FILE, *CLASSIFICATION_FIGURES)
    with replacing_earlier_report(output_dir, moved_in=moved_in, files=replaced):
        plots = plot_classification_figures(output_dir, metrics, class_names, y_true, probs, titles, ranking_scores)
        report = render_evaluation_report(metrics, title, plots, split, dataset_name)
        texts = {"report.md": report, **({PREDICTIONS_FILE: predictions} if predictions is not None else {})}
        write_texts_atomically(output_dir, {**texts, "metrics.json": record})  # in order: the marker last


def render_evaluation_report(
    metrics: dict, title: str, plots: List[str], split: Optional[str] = None, dataset_name: Optional[str] = None
) -> str:
    """Markdown: the headline metrics (for binary tasks the positive class, its count and the decision threshold),
    per-class table, the plots; the images scored counted, as every image of the data set for `split="all"`, and the
    split and data set named where given."""
    auc = auc_text(metrics)
    read = ""  # metrics of earlier versions record no preprocessing
    if "preprocessing" in metrics:
        read = f", read at {ImagePreprocessing.from_dict(metrics['preprocessing']).summary()}"
    scored = _images_scored(metrics, split, dataset_name)
    intervals = metrics.get("confidence_intervals")  # metrics of earlier versions have none

    def row(name: str, value: str, key: Optional[str] = None) -> str:
        return metric_row(name, value, intervals, key)

    first_paragraph = f"{scored}{read}.{_carving_sentence(metrics, split)}"
    lines = [f"# {title}", "", first_paragraph, "", *metrics_table_header(intervals)]
    notes = 4  # paragraphs go between the first one and the table, each followed by a blank line
    if "head" in metrics:
        lines[notes:notes] = [f"Head: {metrics['head']['summary']}.", ""]
    if metrics.get("training_images_checked") is False:
        lines[notes:notes] = [
            "**Not checked against the model's training images** (the model records none, or only its head's, or "
            f"the {_scored_set(split)} is a `datasets` split): the figures may include images it was trained on.",
            "",
        ]
    lines[notes:notes] = absent_classes_note(metrics, _scored_set(split))
    lines[notes:notes] = prevalence_note(metrics)
    if metrics.get("eliminated_classes"):  # QA: a pruned run's AUC and log loss printed without a word
        eliminated = metrics["eliminated_classes"]
        lines[notes:notes] = [f"**For {eliminated['num_images']} images, {eliminated['note']}.**", ""]
    if metrics.get("operating_point"):  # QA: the reliability diagram's accuracy read as the threshold's
        lines[notes:notes] = [
            "The ECE and the reliability diagram are of each image's most probable class, not of the decisions at "
            "the operating point.",
            "",
        ]
    if metrics.get("images_the_head_was_chosen_on"):
        lines[notes:notes] = [
            f"**{metrics['images_the_head_was_chosen_on']} of the images scored are val images the model's head was "
            "chosen on** (by content: its data_splits.json): these figures are optimistic on them; the held-out "
            "test split of the model's own data is not.",
            "",
        ]
    if metrics.get(TRAINING_IMAGE_COPIES_KEY):
        lines[notes:notes] = [
            f"**{metrics[TRAINING_IMAGE_COPIES_KEY]} of the images scored are images the model was trained on**, "
            "copies of images the data's own train split holds too (by content: its data_splits.json; a data set's "
            "duplicates across its splits): these figures are optimistic on them.",
            "",
        ]
    elif metrics.get("images_the_head_was_chosen_on") == 0 and metrics.get("training_images_checked"):
        lines[notes:notes] = [  # QA (an external validation): what a methods section states, said when it holds
            "None of the images scored is one the model was trained on or its head was chosen on (checked by "
            "content against its data_splits.json).",
            "",
        ]
    if metrics.get("head_chosen_on_a_val_split"):
        lines[notes:notes] = [
            "**A val split**: where it is the one the model's head was chosen on (a U-Net-feature model's (block, "
            "timestep) pair and C, an RC-DiT head's C or temperature), these figures are optimistic (a choice made on "
            "the images scored); the test split's are the held-out ones.",
            "",
        ]
    if canonical_split_name(split or "") == "train":  # not checked against the training images: asked for as they are
        lines[notes:notes] = [
            "**A train split, not checked against the model's training images**: where it is the model's own, these "
            "figures are training accuracy, not an estimate on new images.",
            "",
        ]
    lines += [row("accuracy", percent(metrics["accuracy"]), "accuracy")]
    lines += [row("macro-F1", percent(metrics["macro_f1"]), "macro_f1")]
    lines += [row("balanced accuracy", percent(metrics["balanced_accuracy"]), "balanced_accuracy")]
    lines += [row("AUC", auc, "auc"), *average_precision_rows(metrics)]
    lines += calibration_rows(metrics["calibration"], intervals)
    lines += selective_rows(metrics["calibration"], intervals)
    if metrics.get("nfe_per_image"):
        calls = metrics["nfe_per_image"]
        lines += [row("network calls per image", f"{calls['mean']:g} (least {calls['min']}, most {calls['max']})")]
    if "positive_class" in metrics:
        lines[2] = f"{scored}{read}; {decision_sentence(metrics, (split, dataset_name))}."
        lines += positive_class_rows(metrics)
    if metrics.get("pipeline_call"):  # QA: an ELBO report and a likelihood report read alike but for the numbers
        call = ", ".join(f"{name}={value!r}" for name, value in metrics["pipeline_call"].items())
        lines[notes:notes] = [f"Scored by the pipeline called with `{call}`.", ""]
    if "seed_sensitivity" in metrics:
        lines += seed_sensitivity_rows(metrics["seed_sensitivity"], intervals)
    if intervals:
        lines += ["", intervals_note(intervals)]
    lines += ["", *per_class_table(metrics["per_class"])]
    lines += ["", " ".join(f"![{name[:-4].replace('_', ' ')}]({name})" for name in plots)]
    return "\n".join(lines) + "\n"


def _images_scored(metrics: dict, split: Optional[str] = None, dataset_name: Optional[str] = None) -> str:
    """"38 images of the test split of `digits`"; with training images dropped (`training_images_dropped`), "38
    images of the test split of `digits` (the split's 73 less the 35 the model was trained on)"; for `split="all"`,
    "73 images, every image of the data set `digits`" (or "61 images of `digits` (the data set's 73 less ...)")."""
    scored, dropped = metrics["num_samples"], metrics.get("training_images_dropped")
    named = f" `{dataset_name}`" if dataset_name else ""
    if split == ONE_SET and not dropped:
        return f"{scored} images, every image of the data set{named}"
    of_split = f" of the {split} split" if split not in (None, ONE_SET) else ""
    text = f"{scored} images{of_split}" + (f" of{named}" if named else "")
    if dropped:
        owner = "the data set's" if split == ONE_SET else "the split's"
        text += f" ({owner} {scored + dropped} less the {dropped} the model was trained on)"
    return text


def _carving_sentence(metrics: dict, split: Optional[str]) -> str:
    """How a carved split was chosen, where `metrics` records it (the CLI's since 2026-12-07): two evaluations with
    other seeds score other images."""
    carving = metrics.get("carving")
    if not carving or split == ONE_SET:
        return ""
    name, own = split or "scored", f"{split} split" if split else "split"
    return (
        f" Where the data has no {own} of its own, the {name} split is carved with seed {carving['seed']} (val "
        f"fraction {carving['val_fraction']:g}, test fraction {carving['test_fraction']:g}): a share of its images "
        "only. Data the model never saw (another site's) is scored whole with `--split all`, its images checked "
        "against the training images."
    )


def seed_sensitivity_rows(sensitivity: dict, intervals: Optional[dict] = None) -> List[str]:
    """The report's rows of `seed_sensitivity_metrics`: the decisions another noise seed could flip, and the others
    (in a table showing `intervals`, with an empty interval cell)."""
    stderrs = f"{sensitivity['num_stderr']:g} standard errors"
    within = f"decisions another noise seed could flip (within {stderrs} of the threshold)"
    flipped = f"{sensitivity['decisions_within']} ({100 * sensitivity['fraction_within']:.1f}%)"
    return [
        metric_row(within, flipped, intervals),
        metric_row("accuracy of the other decisions", percent(sensitivity["accuracy_beyond"]), intervals),
    ]

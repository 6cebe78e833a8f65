"""Publish classifiers on the Hugging Face Hub and fetch them back: model and dataset cards, push, download.

Cards are Jinja templates in `hub_cards/` (one model card per method, sharing `model_card_base.md`, and a
dataset card); their YAML front matter is `ModelCardData` / `DatasetCardData` with the test results as
`EvalResult`s, so the Hub shows them in the model index. A model card's evaluation also carries the per-class table of
`evaluate`'s report (Markdown only, not in the model index).
"""

import hashlib
import json
import math
import numbers
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import jinja2
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    snapshot_download,
)
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from jinja2 import meta

from .atomic_files import remove_leftovers_of_killed_writers
from .data.labeled_images import ONE_SET
from .validation import PICKLE_SUFFIXES, check_writable_dir, first_and_more

__all__ = [
    "METHODS",
    "METHOD_TITLES",
    "PICKLE_SUFFIXES",
    "TEMPLATES_DIR",
    "HubUploadError",
    "check_publishable_model",
    "check_repo_id",
    "class_names_of",
    "commit_operations",
    "download",
    "download_patterns",
    "features_fingerprint",
    "input_description_of",
    "library_name_of",
    "load_eval_counts",
    "load_eval_grouping",
    "load_eval_head",
    "load_eval_intervals",
    "load_eval_operating_point",
    "load_eval_metrics",
    "load_eval_per_class",
    "load_eval_positive_class",
    "load_eval_seed_sensitivity",
    "load_eval_split",
    "model_fingerprint",
    "method_of",
    "method_of_classifier",
    "pipeline_class_name_of",
    "positive_class_of",
    "push_to_hub",
    "read_metrics_json",
    "render_dataset_card",
    "render_model_card",
    "usage_file_of",
    "write_dry_run",
]

METHODS = ("unet_features", "score_sde", "rc_dit")

# The method of a saved pipeline (model_index.json `_class_name`) and of an exported transformers model (config.json
# `backbone_type`, written by `export_unet_feature_pipeline` / `export_rc_dit_pipeline`).
PIPELINE_METHODS = {
    "UNetFeatureClassifierPipeline": "unet_features",
    "ScoreSDEClassifierPipeline": "score_sde",
    "RepresentationConditionedDiTPipeline": "rc_dit",
    "RepresentationConditionedDiTImageVariationPipeline": "rc_dit",
}
BACKBONE_METHODS = {"unet": "unet_features", "encoder": "rc_dit"}
# How reports title each method (QA: two methods' evaluations of folders named "pipeline" read the same title)
METHOD_TITLES = {
    "unet_features": "Frozen DDPM U-Net features",
    "score_sde": "Score-SDE generative classifier",
    "rc_dit": "Representation-conditioned DiT",
}

# The card templates, shipped inside the package (one model card per method, the shared base, the dataset card).
TEMPLATES_DIR = Path(__file__).parent / "hub_cards"

# metrics.json key -> (model-index metric type, display name)
METRIC_NAMES = {
    "accuracy": ("accuracy", "Accuracy"),
    "macro_f1": ("f1", "Macro F1"),
    "balanced_accuracy": ("balanced_accuracy", "Balanced accuracy"),
    "auc": ("roc_auc", "ROC AUC"),
    "average_precision": ("average_precision", "Average precision (PR AUC)"),
    "sensitivity": ("recall", "Sensitivity"),
    "specificity": ("specificity", "Specificity"),
    "ece": ("ece", "Expected calibration error (10 bins)"),  # from "calibration": how far confidence is from accuracy
    "brier": ("brier_score", "Brier score"),  # from "calibration": how far the probabilities are from the labels
}
# The METRIC_NAMES keys metrics.json records under "calibration"
CALIBRATION_KEYS = ("ece", "brier")
# The model-index `args` of a metric whose type alone is ambiguous (an `f1` could be the positive class's)
METRIC_ARGS = {"macro_f1": {"average": "macro"}}
# The metrics of a binary task's positive class: their names and model-index `args` name it (QA: a card's YAML read
# "Sensitivity" alone, which Hub widgets and leaderboards show without the prose that names the class)
POSITIVE_CLASS_METRICS = ("sensitivity", "specificity", "average_precision")

# What a card calls the groups of an `aggregate` metrics.json, by the column naming them (other columns: "groups").
GROUP_UNITS = {"study_uid": "studies", "series_uid": "series", "patient_id": "patients"}

# A card's per-class table of more classes than this is collapsed (a `<details>` block, which the Hub renders): open,
# the 121 rows of a plankton model would push its usage, limitations and citation far down the page.
PER_CLASS_OPEN_MAX = 20

# What `download` fetches from a Hub repo (fnmatch patterns, `*` crosses folders): configs, safetensors, cards;
# a repo's Python files only when the user trusts its remote code.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.md"]
REMOTE_CODE_PATTERNS = ["*.py"]

# What a model upload sends (`_model_loads_from`): the files a model loads from or is described by, its weights
# (*.safetensors), code (*.py), configs, split record and card. Anything else in the folder (a training run's samples
# and logs, predictions and their `<output>.json` with local paths, feature caches, notes, the user's DICOM or image
# files) is left out, with a warning: QA, a CT model's folder held its patients' predictions, scans and case lists.
MODEL_JSON_NAMES = ("model_index.json", "config.json", "data_splits.json")
MODEL_JSON_ENDINGS = ("_config.json",)  # scheduler_config.json, preprocessor_config.json
# a sharded weights' index, of a variant too: diffusion_pytorch_model.safetensors.index.fp16.json
SHARDED_INDEX = re.compile(r".+\.safetensors\.index(\.[\w-]+)?\.json")
# How many of the files left out a warning names (a folder of scans may hold thousands).
MAX_NAMED_FILES = 10


# Fields the templates may leave empty (they test them with `{% if %}`); every other field they read is required.
MODEL_CARD_OPTIONAL = {
    "dataset_id", "model_description", "class_names", "positive_class", "num_images", "num_positives", "pruning",
    "seed_sensitivity", "call_arguments", "input_description", "num_dropped", "per_class_section", "unlabeled_pool",
    "dataset_citation", "whole_data_set", "grouping_rule", "usage_file", "training_images_unchecked",
    "intervals_section", "eval_data_source", "operating_point", "operating_point_threshold", "operating_point_log_odds",
    "head_summary", "num_selection_images", "num_training_copies",
}  # fmt: skip
DATASET_CARD_OPTIONAL = {"citation"}


class HubUploadError(RuntimeError):
    """An upload to the Hub failed; the local folder was not modified."""


def _template_fields(env: jinja2.Environment, name: str) -> set:
    """The variables template `name` and the templates it extends or includes read from the context."""
    ast = env.parse(env.loader.get_source(env, name)[0])
    fields = set(meta.find_undeclared_variables(ast))
    for parent in meta.find_referenced_templates(ast):
        fields |= _template_fields(env, parent)
    return fields


def _is_missing(value) -> bool:
    """None, or an empty (or blank) string, list or dict."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, tuple, dict)) and len(value) == 0)


def _render(template_path: Union[str, Path], card_data, optional: set, **fields) -> str:
    """Render a card template; fields it reads that are absent or empty (and not `optional`) raise a ValueError
    naming all of them."""
    template_path = Path(template_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([template_path.parent, TEMPLATES_DIR]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    context = {**fields, "card_data": card_data.to_yaml()}
    required = _template_fields(env, template_path.name) - optional
    missing = sorted(name for name in required if _is_missing(context.get(name)))
    if missing:
        raise ValueError(f"cannot render card {template_path.name}: missing required field(s) {', '.join(missing)}")
    return env.get_template(template_path.name).render(**context)


def _metric_type_name_and_args(key: str, positive_class: Optional[str]) -> tuple:
    """A metric's model-index type, name and `args` (`METRIC_NAMES`, `METRIC_ARGS`; other keys as they are), those of
    `POSITIVE_CLASS_METRICS` naming the `positive_class`: `Sensitivity (pneumonia positive)`, `Average precision
    (PR AUC, pneumonia positive)`, `{"pos_label": "pneumonia"}`."""
    metric_type, metric_name = METRIC_NAMES.get(key, (key, key))
    if positive_class is not None and key in POSITIVE_CLASS_METRICS:
        stated = f"{metric_name[:-1]}, " if metric_name.endswith(")") else f"{metric_name} ("
        return metric_type, f"{stated}{positive_class} positive)", {"pos_label": positive_class}
    return metric_type, metric_name, METRIC_ARGS.get(key)


def _eval_results(
    metrics: Dict[str, float], dataset_name: str, dataset_type: str, split: str, positive_class: Optional[str] = None
) -> List[EvalResult]:
    """One `EvalResult` per metric, named by `_metric_type_name_and_args`."""
    results = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"metric {key!r}: expected a finite number, got {value!r}")
        metric_type, metric_name, metric_args = _metric_type_name_and_args(key, positive_class)
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=float(value),
                metric_args=metric_args,
            )
        )
    return results


def _saturated_log_odds(point: Optional[dict]) -> Optional[str]:
    """An operating point's log-odds, where its probability is too near 0 or 1 to decide by (a Score-SDE model's)."""
    from .operating_points import is_saturated

    if point is None or point.get("log_odds") is None or not is_saturated(point):
        return None
    return repr(point["log_odds"])


def _operating_point_text(point: Optional[dict]) -> Optional[str]:
    """How the card states the decision threshold its metrics were measured at; None for the most probable class."""
    if point is None:
        return None
    from .metrics import operating_point_text  # as `per_class_table` below

    if point.get("from"):  # the file's name, not the folder it was on (QA: a local path published in the card)
        point = {**point, "from": Path(point["from"]).name}
    return operating_point_text(point)


def _intervals_section(
    metrics: Dict[str, float], intervals: Optional[dict], positive_class: Optional[str]
) -> Optional[dict]:
    """What a card shows of `metrics.json`'s "confidence_intervals" (`load_eval_intervals`): the level, each metric's
    interval by its card name (empty for a metric without one, such as the ECE) and the sentence on them."""
    if not intervals:
        return None
    from .metrics import interval_level, interval_text, intervals_note  # as `per_class_table` below

    cells = {
        _metric_type_name_and_args(key, positive_class)[1]: interval_text(
            intervals, key if key in intervals else None, False
        )
        for key in metrics
    }
    return {"level": interval_level(intervals), "cells": cells, "note": intervals_note(intervals)}


def _per_class_section(per_class: Optional[Dict[str, dict]]) -> Optional[dict]:
    """What a card shows of `metrics.json`'s "per_class" (`load_eval_per_class`): the rows of `per_class_table` (as
    `evaluate`'s report shows them, in the order recorded), the number of classes and of those without an image in
    the split (support 0), and whether the table is collapsed (more than `PER_CLASS_OPEN_MAX` classes); None without
    per-class metrics (a metrics.json of an earlier version)."""
    from .metrics import per_class_table  # scipy and scikit-learn: not needed to load a model from its card's folder

    if not per_class:
        return None
    keys = {"precision", "recall", "f1", "support"}
    malformed = [name for name, row in per_class.items() if not isinstance(row, dict) or not keys <= row.keys()]
    if malformed:
        raise ValueError(f"per_class: expected {sorted(keys)} for every class, not for {', '.join(malformed)}")
    return {
        "rows": per_class_table(per_class),
        "num_classes": len(per_class),
        "num_without_images": sum(row["support"] == 0 for row in per_class.values()),
        "collapsed": len(per_class) > PER_CLASS_OPEN_MAX,
    }


def _counted_units(grouping: Optional[dict], positive_class: Optional[str]) -> Tuple[str, Optional[str]]:
    """What a card's count of the scored samples names, and how the groups of an `aggregate` metrics.json were scored
    (`load_eval_grouping`; None for images): ("images", None), or ("studies by study_uid of 40 images", "each bleed
    if any of its images' probability of bleed is 0.5 or more (max rule)")."""
    if grouping is None:
        return "images", None
    by, rule = grouping.get("grouped_by"), grouping.get("rule")
    by = [by] if isinstance(by, str) else by
    if not by or not all(isinstance(name, str) for name in by) or rule not in ("max", "mean"):
        raise ValueError(
            f"grouping: expected the 'grouped_by' column(s) and 'rule' ('max' or 'mean') that aggregate records, got "
            f"{grouping!r}"
        )
    units = f"{GROUP_UNITS.get(by[0], 'groups') if len(by) == 1 else 'groups'} by {' + '.join(by)}"
    if grouping.get("num_images"):
        units += f" of {grouping['num_images']} images"
    if rule == "mean" and grouping.get("threshold") is None:
        return units, "each labelled by its images' mean class probabilities (mean rule)"
    if rule == "mean":
        positive = positive_class or "positive"
        threshold = f"{grouping['threshold']:g}"
        return units, f"each {positive} if its images' mean probability of {positive} is {threshold} or more"
    # QA: "if any of its images is" read as the images' own labels, which give a tie at 0.5 to the class listed first
    threshold = f"{grouping['threshold']:g}" if grouping.get("threshold") is not None else "the threshold"
    positive = positive_class or "positive"
    return units, f"each {positive} if any of its images' probability of {positive} is {threshold} or more (max rule)"


def render_model_card(
    method: str,
    *,
    model_name: str,
    dataset_name: str,
    dataset_license: str,
    metrics: Dict[str, float],
    training_command: str,
    evaluation_command: str,
    repo_id: Optional[str] = None,
    dataset_id: Optional[str] = None,
    dataset_split: str = "test",
    license: str = "apache-2.0",
    library_name: str = "diffusers",
    class_names: Optional[List[str]] = None,
    positive_class: Optional[str] = None,
    model_description: Optional[str] = None,
    medical: bool = False,
    template_path: Optional[Union[str, Path]] = None,
    num_images: Optional[int] = None,
    num_positives: Optional[int] = None,
    num_dropped: Optional[int] = None,
    training_images_unchecked: bool = False,
    num_selection_images: Optional[int] = None,
    num_training_copies: Optional[int] = None,
    pruning: bool = False,
    seed_sensitivity: Optional[dict] = None,
    call_arguments: Optional[Dict[str, object]] = None,
    input_description: Optional[str] = None,
    usage_file: Optional[str] = None,
    per_class: Optional[Dict[str, dict]] = None,
    unlabeled_pool: bool = False,
    dataset_citation: Optional[str] = None,
    eval_dataset_name: Optional[str] = None,
    grouping: Optional[dict] = None,
    intervals: Optional[dict] = None,
    eval_data_source: Optional[str] = None,
    operating_point: Optional[dict] = None,
    head_summary: Optional[str] = None,
) -> ModelCard:
    """The model card of a classifier trained with `method` (one of `METHODS`).

    Args:
        model_name: the model-index name; `repo_id` (default `model_name`) is what the usage snippet loads.
        dataset_name, dataset_license: the training / evaluation data and its licence, as shown in the card;
            `dataset_id` (a Hub dataset id, optional) links it and is the model-index dataset type.
        metrics: `{metric: value}` measured on `dataset_split`, e.g. `load_eval_metrics("metrics.json")`.
        training_command, evaluation_command: the exact commands that produced the weights and the metrics.
        class_names: the model's label names, in label-id order (`class_names_of`): the card lists them.
        positive_class: the class the sensitivity and specificity in `metrics` refer to (`load_eval_positive_class`):
            the card names it beside them.
        license: the model's licence (a Hub licence id). `library_name`: "diffusers" for a saved pipeline,
            "transformers" for an exported transformers model (see `library_name_of`); the usage snippet loads it
            with that library (`trust_remote_code=True` runs the code saved with it, or the installed package's).
        medical: add the "not a diagnostic device" warning and the "medical" tag (set it for medical imaging data).
        template_path: a custom Jinja template (default: `hub_cards/model_card_<method>.md`).
        num_images, num_positives: how many images the metrics were measured on, and of them of `positive_class`
            (`load_eval_counts`); the card states them.
        num_dropped: how many images of the split were left out as images the model was trained on (`evaluate
            --drop_training_images`, `load_eval_counts`); the card states them beside `num_images`.
        training_images_unchecked: the images were not checked against the model's training images (`metrics.json`'s
            `"training_images_checked": false`, `load_eval_counts`): the card says so above the figures, as
            `report.md` does.
        num_selection_images, num_training_copies: how many of the images scored are val images the model's head was
            chosen on (`images_the_head_was_chosen_on`) and training images the data's own train split holds too
            (`training_images_also_in_the_data_train_split`), as `load_eval_counts` reads them: the card counts them
            above the figures, as `report.md` does (QA: a card hedged where the report counted 516 of 1,140).
        pruning: the metrics were measured with class pruning (Score-SDE, more than 2 classes); the card says so.
        seed_sensitivity: a binary Score-SDE ELBO's (or likelihood's with several probes) decisions another noise
            seed could flip, as `evaluate` records them (`load_eval_seed_sensitivity`); the card states how many,
            and the accuracy of the others.
        call_arguments: the arguments of the pipeline call the metrics were measured with where they differ from
            its defaults (e.g. `{"num_timesteps": 20}`, from `metrics.json`'s "pipeline_call"): the usage snippet
            passes them and the results name them, so `pipe(images)` scores as the reported numbers were scored.
        input_description: how the model reads its images (`input_description_of`), stated under the usage snippet.
        usage_file: the file the usage snippet gives the model by path where it must read files as in training
            (`usage_file_of`: DICOM, 16-bit); a transformers model is then loaded with `pipeline_class=
            DiffusionClassifierImageClassificationPipeline`, which reads them so (the plain `pipeline()` cannot).
        per_class: the per-class precision, recall, F1 and support of `metrics.json` (`load_eval_per_class`): the
            evaluation shows them as `evaluate`'s report does (`per_class_table`), in a collapsed block for more than
            `PER_CLASS_OPEN_MAX` classes, and says how many classes had no image in the split. Markdown only: the
            model index keeps `metrics`.
        unlabeled_pool: the diffusion model was trained on every image of an unlabeled folder (`--unlabeled`; its
            `data_splits.json` says so: `data.split_record.trained_on_unlabeled_pool`); the card's training data says so.
        dataset_citation: how the data's providers ask to be cited (e.g. a BibTeX entry), shown under the training
            data.
        eval_dataset_name: the data `metrics` were measured on when it is not the training data (an external set
            scored whole, `evaluate --split all`); default `dataset_name`. The results and the model index name it.
        grouping: for metrics of groups of images (`diffusion-classifiers aggregate`: `num_images` counts groups, scans
            say), how they were grouped and scored (`load_eval_grouping`): the card counts "6 studies by study_uid
            of 40 images, each bleed if any of its images' probability of bleed is 0.5 or more (max rule)" instead of
            "6 images".
        intervals: the confidence intervals of `metrics.json` (`load_eval_intervals`): the results table gives each
            metric's beside it, with a sentence on how they were computed and what they leave out.
        eval_data_source: what the scored images were read from as `metrics.json` records it (its `"dataset"`: a
            folder's or file's name), shown beside the split so that a reader sees which data it was carved from.
        operating_point: the decision threshold the metrics were measured at (`load_eval_operating_point`), which
            the card states instead of "exceeds 0.5".
        head_summary: the head the metrics were measured with, where the method offers several (an RC-DiT's prototypes
            or linear head, its labelled images, its C or temperature: `load_eval_head`), stated beside the results.

    Raises `ValueError` naming every required field that is missing or empty.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if not metrics:
        raise ValueError("cannot render a model card: missing required field(s) metrics")
    if positive_class is not None and class_names and positive_class not in class_names:
        raise ValueError(f"positive_class: expected one of the class names {class_names}, got {positive_class!r}")
    external = eval_dataset_name not in (None, dataset_name)
    eval_name = eval_dataset_name if external else dataset_name
    eval_results = _eval_results(
        metrics, eval_name, eval_name if external else dataset_id or dataset_name, dataset_split, positive_class
    )
    counted_units, grouping_rule = _counted_units(grouping, positive_class)
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name=library_name,
        pipeline_tag="image-classification",
        tags=[library_name, "image-classification", "diffusion-classifiers", method] + (["medical"] if medical else []),
        datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({result.metric_type for result in eval_results}),
        eval_results=eval_results,
    )
    text = _render(
        template_path or TEMPLATES_DIR / f"model_card_{method}.md",
        card_data,
        MODEL_CARD_OPTIONAL,
        model_name=model_name,
        model_id=repo_id or model_name,
        library_name=library_name,
        dataset_name=dataset_name,
        eval_dataset_name=eval_name,
        eval_data_source=eval_data_source,
        operating_point=_operating_point_text(operating_point),
        operating_point_threshold=None if operating_point is None else repr(operating_point["threshold"]),
        operating_point_log_odds=_saturated_log_odds(operating_point),
        whole_data_set=dataset_split == ONE_SET,
        # its (block, timestep) was picked on val (`canonical_split_name`'s names for it: not imported, so that the
        # code saved with every model stays as it is)
        chosen_on_eval_split=method == "unet_features" and dataset_split in ("val", "validation"),
        dataset_id=dataset_id,
        dataset_license=dataset_license,
        dataset_split=dataset_split,
        eval_results=eval_results,
        training_command=training_command,
        evaluation_command=evaluation_command,
        class_names=class_names,
        positive_class=positive_class,
        model_description=model_description,
        medical=medical,
        num_images=num_images,
        counted_units=counted_units,
        grouping_rule=grouping_rule,
        num_positives=num_positives,
        num_dropped=num_dropped,
        training_images_unchecked=training_images_unchecked,
        num_selection_images=num_selection_images,
        num_training_copies=num_training_copies,
        pruning=pruning,
        seed_sensitivity=seed_sensitivity,
        call_arguments=", ".join(f"{name}={value!r}" for name, value in (call_arguments or {}).items()),
        input_description=input_description,
        usage_file=usage_file,
        per_class_section=_per_class_section(per_class),
        intervals_section=_intervals_section(metrics, intervals, positive_class),
        unlabeled_pool=unlabeled_pool,
        dataset_citation=(dataset_citation or "").strip() or None,
        head_summary=head_summary,
    )
    return ModelCard(text)


def render_dataset_card(
    *,
    dataset_name: str,
    license: str,
    description: str,
    source: str,
    class_names: List[str],
    splits: Dict[str, int],
    preparation_command: str,
    citation: Optional[str] = None,
    medical: bool = False,
    template_path: Optional[Union[str, Path]] = None,
) -> DatasetCard:
    """The dataset card of an image-classification dataset.

    Args:
        dataset_name: its pretty name. `license`: a Hub licence id (e.g. "cc-by-4.0").
        description: what the images are. `source`: where they come from (URL or reference).
        class_names: the label names, in label-id order. `splits`: `{split: number of images}`.
        preparation_command: the exact command that produced the files. `citation`: BibTeX to cite (optional).
        medical: add the "not for diagnostic use" warning and the "medical" tag (set it for medical imaging data).

    Raises `ValueError` naming every required field that is missing or empty.
    """
    card_data = DatasetCardData(
        pretty_name=dataset_name,
        license=license,
        task_categories=["image-classification"],
        tags=["diffusion-classifiers"] + (["medical"] if medical else []),
    )
    text = _render(
        template_path or TEMPLATES_DIR / "dataset_card.md",
        card_data,
        DATASET_CARD_OPTIONAL,
        dataset_name=dataset_name,
        license=license,
        description=description,
        source=source,
        class_names=class_names,
        splits=splits,
        preparation_command=preparation_command,
        citation=citation,
        medical=medical,
    )
    return DatasetCard(text)


def _read_json(path: Union[str, os.PathLike]) -> Any:
    with open(path) as f:
        return json.load(f)


def read_metrics_json(path: Union[str, os.PathLike]) -> dict:
    """A metrics.json's object; `ValueError` naming the file where it is no JSON object (QA: "Expecting value: line 1
    column 1 (char 0)", naming neither the file nor what was expected)."""
    expected = "expected the metrics.json evaluate or demo wrote"
    try:
        data = _read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); {expected}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON {type(data).__name__}; {expected}")
    return data


def load_eval_metrics(path: Union[str, os.PathLike]) -> Dict[str, float]:
    """The scalar test metrics (`METRIC_NAMES` keys) of a `metrics.json`: the demo's (under "test") or a flat one."""
    data = read_metrics_json(path)
    data = data.get("test", data)
    calibration = data.get("calibration") or {}
    data = {**data, **{key: calibration.get(key) for key in CALIBRATION_KEYS}}  # QA: an over-confident card hid them
    metrics = {key: data[key] for key in METRIC_NAMES if data.get(key) is not None}
    if not metrics:
        raise ValueError(f"{path}: expected metrics {sorted(METRIC_NAMES)} at the top level or under 'test', found none")
    return metrics


def load_eval_operating_point(path: Union[str, os.PathLike]) -> Optional[dict]:
    """The `"operating_point"` of a `metrics.json` (`operating_points`: the decision threshold, and where it was
    chosen; under "test" for the demo's), `None` when it records none (each image given its most probable class)."""
    data = read_metrics_json(path)
    return data.get("test", data).get("operating_point")


def load_eval_positive_class(path: Union[str, os.PathLike]) -> Optional[str]:
    """The class the sensitivity and specificity of a `metrics.json` refer to (its "positive_class", under "test" for
    the demo's); `None` when it records none (not a binary task)."""
    data = read_metrics_json(path)
    return data.get("test", data).get("positive_class")


def load_eval_counts(path: Union[str, os.PathLike]) -> Dict[str, Optional[int]]:
    """`{"num_images", "num_positives", "num_dropped", "training_images_unchecked", "num_selection_images",
    "num_training_copies"}` of a `metrics.json` (under "test" for the demo's): the images its metrics were measured
    on, of them of its positive class (binary tasks; from the per-class support where not recorded), the images of
    the split left out as training images (`evaluate --drop_training_images`; of an `aggregate` metrics.json, the
    groups left out as holding some), whether they were not checked against the model's training images (QA: a card
    said nothing of what `report.md` said), and how many of them are val images the head was chosen on and training
    images the data's train split holds too (each None where not recorded)."""
    from .metrics import TRAINING_IMAGE_COPIES_KEY  # as `per_class_table` below

    data = read_metrics_json(path)
    data = data.get("test", data)
    positives = data.get("num_positives")
    if positives is None and data.get("positive_class") in data.get("per_class", {}):
        positives = data["per_class"][data["positive_class"]].get("support")
    dropped = data.get("training_images_dropped", data.get("groups_left_out_holding_training_images"))
    unchecked = data.get("training_images_checked") is False
    return {
        "num_images": data.get("num_samples"), "num_positives": positives, "num_dropped": dropped,
        "training_images_unchecked": unchecked, "num_selection_images": data.get("images_the_head_was_chosen_on"),
        "num_training_copies": data.get(TRAINING_IMAGE_COPIES_KEY),
    }  # fmt: skip


def load_eval_head(path: Union[str, os.PathLike]) -> Optional[str]:
    """The sentence of a `metrics.json`'s `"head"` (`fit-head`'s: the RC-DiT head its metrics were measured with, its
    labelled images and C or temperature, as `report.md` states it); None where it records none."""
    data = read_metrics_json(path)
    return (data.get("test", data).get("head") or {}).get("summary")


def load_eval_grouping(path: Union[str, os.PathLike]) -> Optional[dict]:
    """How the samples of an `aggregate` metrics.json were grouped and scored: `{"grouped_by", "rule", "threshold",
    "num_images"}` (the column(s) naming the groups, the rule, the max rule's threshold, the images they gather; the
    last two None where not recorded); None for a metrics.json of images (`evaluate`'s, the demo's)."""
    data = read_metrics_json(path)
    data = data.get("test", data)
    if data.get("grouped_by") is None:
        return None
    return {key: data.get(key) for key in ("grouped_by", "rule", "threshold", "num_images")}


def load_eval_per_class(path: Union[str, os.PathLike]) -> Optional[Dict[str, dict]]:
    """The `"per_class"` metrics of a `metrics.json` (`{class name: {"precision", "recall", "f1", "support"}}`, in the
    order it lists them; under "test" for the demo's), `None` when it records none (a file of an earlier version)."""
    data = read_metrics_json(path)
    return data.get("test", data).get("per_class") or None


def load_eval_intervals(path: Union[str, os.PathLike]) -> Optional[dict]:
    """The `"confidence_intervals"` of a `metrics.json` (see `confidence_intervals.classification_intervals`; under
    "test" for the demo's), `None` when it records none (a file of an earlier version)."""
    data = read_metrics_json(path)
    return data.get("test", data).get("confidence_intervals") or None


def load_eval_seed_sensitivity(path: Union[str, os.PathLike]) -> Optional[dict]:
    """The `"seed_sensitivity"` of a `metrics.json` (a binary Score-SDE ELBO's or several-probe likelihood's, see
    `evaluate_classifier`; under "test" for the demo's), `None` when it records none."""
    data = read_metrics_json(path)
    return data.get("test", data).get("seed_sensitivity")


def _hidden_or_checkpoint(relative: Path) -> bool:
    """Whether a path of a model folder is hidden (.git, .cache, ...) or in a training checkpoint (`checkpoint-*/`,
    the state to resume training from): neither part of the model's fingerprint nor of its upload."""
    return any(part.startswith((".", "checkpoint-")) for part in relative.parts)


def _checkpoint_folder(relative: Path) -> Optional[str]:
    """The training checkpoint folder (`checkpoint-*`, not hidden) a file of a model folder lies in, or None."""
    for depth, part in enumerate(relative.parts[:-1]):
        if part.startswith("."):
            return None
        if part.startswith("checkpoint-"):
            return "/".join(relative.parts[: depth + 1])
    return None


def model_fingerprint(local_dir: Union[str, os.PathLike]) -> str:
    """sha256 over a saved model's `model_index.json` / `config.json` files and `*.safetensors` weights (their paths
    and bytes, training checkpoints and hidden folders left out): what `evaluate` records in metrics.json as
    `"model_sha256"`, so a card publishes only the metrics of its own model. Cheap and stable: the same files, loaded
    from a folder or a Hub snapshot, give the same digest (a snapshot of a folder whose configs named the local
    folders they were loaded from, which the upload leaves out, `_published_config`, gives another)."""
    local_dir = Path(local_dir)
    digest = hashlib.sha256()
    files = sorted(
        path for path in local_dir.rglob("*")
        if path.is_file() and (path.suffix == ".safetensors" or path.name in ("model_index.json", "config.json"))
        and not _hidden_or_checkpoint(path.relative_to(local_dir))
    )  # fmt: skip
    if not files:
        raise ValueError(f"{local_dir}: expected a saved model (model_index.json or config.json, safetensors weights)")
    for path in files:
        digest.update(path.relative_to(local_dir).as_posix().encode() + b"\0")
        _hash_file(digest, path)
    return digest.hexdigest()


def features_fingerprint(local_dir: Union[str, os.PathLike]) -> Optional[str]:
    """sha256 of what a saved pipeline's features depend on: each component's safetensors weights and JSON configs but
    the head's (each config without `_name_or_path`, the folder it was loaded from, and the diffusers or transformers
    version that wrote it; any other file by its name only) and the preprocessing its
    `model_index.json` records; None for a folder without one (a transformers model). A head fitted anew on the same
    U-Net (`probe --unet_dir`) keeps its features and this fingerprint, where `model_fingerprint` changes (QA: `cluster
    --assign_to` refused such a model, its U-Net byte for byte the one the grouping was made with)."""
    local_dir = Path(local_dir)
    index_path = local_dir / "model_index.json"
    if not index_path.is_file():
        return None
    index = _read_json(index_path)
    digest = hashlib.sha256(json.dumps(index.get("preprocessing"), sort_keys=True).encode())
    components = sorted(name for name, value in index.items() if isinstance(value, list) and name != "head")
    for name in components:
        for path in sorted((local_dir / name).glob("*")) if (local_dir / name).is_dir() else []:
            digest.update(f"{name}/{path.name}".encode() + b"\0")
            if path.suffix == ".safetensors":
                _hash_file(digest, path)
            elif path.suffix == ".json":
                config = _read_json(path)
                if isinstance(config, dict):  # where it was loaded from, and which library versions wrote it
                    for key in ("_name_or_path", "_diffusers_version", "transformers_version"):
                        config.pop(key, None)
                digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def load_eval_split(path: Union[str, os.PathLike]) -> Optional[str]:
    """The split the metrics of a `metrics.json` were measured on, as it records it: an evaluation's `"split"`
    (`evaluate_classifier(..., split=...)`, `diffusion-classifiers evaluate --split`), "test" for the demo's (its
    metrics under "test"); `None` when it records none."""
    data = read_metrics_json(path)
    if data.get("split") is not None:
        return str(data["split"])
    return "test" if isinstance(data.get("test"), dict) else None


def library_name_of(local_dir: Union[str, os.PathLike]) -> str:
    """"diffusers" for a saved pipeline (model_index.json), "transformers" for a transformers model (config.json)."""
    if (Path(local_dir) / "model_index.json").is_file():
        return "diffusers"
    if (Path(local_dir) / "config.json").is_file():
        return "transformers"
    raise ValueError(f"{local_dir}: expected a saved pipeline (model_index.json) or transformers model (config.json)")


def check_publishable_model(local_dir: Union[str, os.PathLike]) -> None:
    """A folder the published card's snippet loads: a saved pipeline or transformers model carrying its code (saved
    by this version's `save_pretrained`); one saved by an earlier version without it is refused, naming the re-save
    that adds it (the snippet, `trust_remote_code=True`, would fail on it with or without the package)."""
    local_dir = Path(local_dir)
    if library_name_of(local_dir) == "diffusers":
        carries_code = isinstance(_read_json(local_dir / "model_index.json").get("_class_name"), list)
        resave = "DiffusionClassifierPipeline.from_pretrained(folder).save_pretrained(new_folder)"
    else:
        carries_code = "auto_map" in _read_json(local_dir / "config.json")
        resave = ("AutoModelForImageClassification and AutoImageProcessor .from_pretrained(folder), then "
                  ".save_pretrained(new_folder), with diffusion_classifiers imported")  # fmt: skip
    if not carries_code:
        raise ValueError(
            f"{local_dir}: saved by an earlier version, without the code that loads it where the package is not "
            f"installed (its card's usage snippet would fail); save it again with this version first: {resave}"
        )


# How a card says float arrays and tensors are read, by the contract's input_range (QA: [0, 1] arrays were read as
# [-1, 1], brighter, and 27% of a model's decisions changed, while the card said "arrays or tensors").
FLOAT_RANGES = {
    "[-1, 1]": "in [-1, 1] (0 is mid-grey)",
    "[0, 1]": "in [0, 1]",
    "auto": "in [-1, 1] when any value of a call is negative, else in [0, 1]",
}


def input_description_of(local_dir: Union[str, os.PathLike], medical: bool = False) -> Optional[str]:
    """How a saved model reads images, from the preprocessing contract it was saved with (a pipeline's
    `model_index.json`, an export's `preprocessor_config.json`), for its card: size, channels, and for a model of
    DICOM windows or a stated bit depth, trained on DICOM files (`medical.dicom_files`) or of `medical` data (DICOM
    read through each file's own window by default: QA, a mammography model's card said nothing of DICOM, and its
    `pixel_array` scored far from its file), what to give it; None for a folder without a contract."""
    contract = _saved_contract(local_dir)
    if contract is None:
        return None
    text = f"The model reads every image at {contract.summary()}."
    dicom = contract.medical_or_default.dicom_files  # recorded at training: its data held DICOM files
    if not contract.medical_or_default.stated and (medical or dicom):
        # the summary already says "DICOM files through each file's own window" for a model trained on them
        subject = " A file's own window is" if dicom else " DICOM files are read through each file's own window:"
        text += (
            f"{subject} its WindowCenter / WindowWidth and VOILUTFunction, else its VOI LUT Sequence (MONOCHROME1"
            " inverted); 16-bit PNG / TIFF are scaled by each file's maximum, rounded up to whole bits."
        )
    if contract.medical_or_default.reads_dicom_only:  # QA: a CT model of 3 windows refuses 16-bit files and int16
        text += (
            " Give it its DICOM files by path, to be read through these windows as in training: image files are "
            "refused (they have no Hounsfield units to window), and an array of raw pixel values (a DICOM's "
            "`pixel_array`) is not windowed (int16 arrays are refused, others warned about)."
        )
    elif contract.medical_or_default.stated or medical or dicom:
        text += (
            " Give it its DICOM and 16-bit files by path, to be read as in training: an array of raw pixel values (a "
            "DICOM's `pixel_array`) is neither windowed nor scaled by the bit depth."
        )
    if _usage_file(contract, medical) is not None and library_name_of(local_dir) == "transformers":
        text += (  # QA: a CT model of 3 windows had no word of it
            " transformers' plain `pipeline()` reads every file as 8-bit RGB and cannot open DICOM: with "
            "`diffusion-classifiers` installed, pass `pipeline_class=diffusion_classifiers."
            "DiffusionClassifierImageClassificationPipeline`, as above; without it, give the file's path to the image "
            "processor (`AutoImageProcessor.from_pretrained(..., trust_remote_code=True)(path)`), which reads it "
            "as in training (DICOM with pydicom installed), and its `pixel_values` to the model."
        )
    floats = f"Float arrays and tensors are read as values {FLOAT_RANGES[contract.input_range]}"
    return f"{text} {floats}; give 0..255 pictures as uint8 arrays or PIL images."


def usage_file_of(local_dir: Union[str, os.PathLike], medical: bool = False) -> Optional[str]:
    """The file a model card's usage snippet gives the model by path (`render_model_card(usage_file=...)`) where it
    must read files as in training, by the contract it was saved with: `"image.dcm"` for a model of DICOM windows or
    trained on DICOM files, `"image.png"` (a 16-bit file) for one of a stated bit depth or of `medical` data; None
    for another model, or a folder without a contract."""
    contract = _saved_contract(local_dir)
    return None if contract is None else _usage_file(contract, medical)


def _usage_file(contract, medical: bool) -> Optional[str]:
    reading = contract.medical_or_default
    if reading.reads_dicom_only or reading.dicom_files:
        return "image.dcm"
    return "image.png" if reading.stated or medical else None


def _saved_contract(local_dir: Union[str, os.PathLike]):
    """The `ImagePreprocessing` a saved pipeline (`model_index.json`) or export (`preprocessor_config.json`) was
    saved with; None for a folder without one."""
    from .data import ImagePreprocessing

    local_dir = Path(local_dir)
    saved = _read_json(local_dir / "model_index.json") if library_name_of(local_dir) == "diffusers" else (
        _read_json(local_dir / "preprocessor_config.json") if (local_dir / "preprocessor_config.json").is_file() else {}
    )  # fmt: skip
    return ImagePreprocessing.from_dict(saved["preprocessing"]) if "preprocessing" in saved else None


def pipeline_class_name_of(local_dir: Union[str, os.PathLike]) -> Optional[str]:
    """The pipeline class of a saved pipeline folder, by its model_index.json `_class_name` ("Class", or
    ["module", "Class"] when saved with its code)."""
    class_name = _read_json(Path(local_dir) / "model_index.json").get("_class_name")
    return class_name[-1] if isinstance(class_name, list) else class_name


def method_of(local_dir: Union[str, os.PathLike]) -> str:
    """The method (one of `METHODS`) of a saved pipeline, by its model_index.json `_class_name`, or of an exported
    transformers model, by its config.json `backbone_type`."""
    local_dir = Path(local_dir)
    if library_name_of(local_dir) == "diffusers":
        class_name = pipeline_class_name_of(local_dir)
        if class_name not in PIPELINE_METHODS:
            raise ValueError(
                f"{local_dir}/model_index.json: pipeline {class_name!r} is not a classifier of this library; expected "
                f"one of {sorted(PIPELINE_METHODS)}"
            )
        return PIPELINE_METHODS[class_name]
    from .configuration_diffusion_classifier import DiffusionClassifierConfig

    config = _read_json(local_dir / "config.json")
    model_type, backbone_type = config.get("model_type"), config.get("backbone_type")
    if model_type != DiffusionClassifierConfig.model_type or backbone_type not in BACKBONE_METHODS:
        raise ValueError(
            f"{local_dir}/config.json: expected an exported diffusion classifier (model_type "
            f"{DiffusionClassifierConfig.model_type!r}, backbone_type one of {sorted(BACKBONE_METHODS)}), got "
            f"model_type {model_type!r}, backbone_type {backbone_type!r}"
        )
    return BACKBONE_METHODS[backbone_type]


def method_of_classifier(classifier) -> Optional[str]:
    """The method (one of `METHODS`) of a loaded pipeline, by its class, or transformers model, by its config's
    `backbone_type`; None for another classifier."""
    backbone = getattr(getattr(classifier, "config", None), "backbone_type", None)
    return PIPELINE_METHODS.get(type(classifier).__name__) or BACKBONE_METHODS.get(backbone)


def _saved_config(local_dir: Path) -> dict:
    """A saved pipeline's model_index.json or a transformers model's config.json."""
    return _read_json(local_dir / ("model_index.json" if library_name_of(local_dir) == "diffusers" else "config.json"))


def class_names_of(local_dir: Union[str, os.PathLike]) -> Optional[List[str]]:
    """The class names, in label-id order, of a saved classifier: a transformers model's `id2label`, a Score-SDE
    pipeline's `class_names`, another pipeline's head's (label ids as names when it has none, as the pipeline names
    them); `None` for a pipeline without a head (the image-variation pipeline)."""
    local_dir = Path(local_dir)
    config = _saved_config(local_dir)
    if "id2label" in config:
        return [config["id2label"][key] for key in sorted(config["id2label"], key=int)]
    if config.get("class_names"):
        return list(config["class_names"])
    head_config = local_dir / "head" / "config.json"
    if not (isinstance(config.get("head"), list) and config["head"][0] and head_config.is_file()):
        return None
    head = _read_json(head_config)
    return list(head.get("class_names") or [str(i) for i in range(head["num_classes"])])


def positive_class_of(local_dir: Union[str, os.PathLike]) -> Optional[str]:
    """The positive class a saved binary classifier was saved with (`positive_class`), or `None`."""
    return _saved_config(Path(local_dir)).get("positive_class")


def _named(names: List[str]) -> str:
    """`names` joined, the first `MAX_NAMED_FILES` of them and a count of the others."""
    return first_and_more(names, MAX_NAMED_FILES)


def _local_files(local_dir: Path, repo_type: str = "model") -> List[str]:
    """Relative paths of the files in `local_dir` to upload: hidden ones (.git, .cache, ...) left out, and with a
    warning naming them the training checkpoints (`checkpoint-*/`: state to resume training, not the model, and
    left out of its `model_fingerprint` too), pickles (`PICKLE_SUFFIXES`, e.g. the `training_args.bin` of
    transformers' `Trainer`) and, for a model, every file it does not load from (`_model_loads_from`)."""
    relative = [path.relative_to(local_dir) for path in local_dir.rglob("*") if path.is_file()]
    names = sorted(path.as_posix() for path in relative if not _hidden_or_checkpoint(path))
    checkpoints = sorted({folder for folder in map(_checkpoint_folder, relative) if folder is not None})
    if checkpoints:
        warnings.warn(
            f"{local_dir}: not uploading the training checkpoint folder(s) {', '.join(checkpoints)} (the state to "
            "resume training from, not the model)",
            stacklevel=4,  # the caller of push_to_hub / write_dry_run
        )
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        warnings.warn(
            f"{local_dir}: not uploading the pickle file(s) {', '.join(pickles)} (loading a pickle can run arbitrary "
            "code; the model loads from safetensors and JSON only)",
            stacklevel=4,  # the caller of push_to_hub / write_dry_run
        )
    names = [name for name in names if not name.endswith(PICKLE_SUFFIXES)]
    if repo_type != "model":  # a dataset's files are its data
        return names
    others = [name for name in names if not _model_loads_from(name)]
    if others:
        warnings.warn(
            f"{local_dir}: not uploading {len(others)} file(s) the model does not load from: {_named(others)} (a "
            "model upload sends its configs, *.safetensors, *.py, data_splits.json and README.md only; data, "
            "predictions, logs, notes and samples stay local)",
            stacklevel=4,  # the caller of push_to_hub / write_dry_run
        )
    return [name for name in names if _model_loads_from(name)]


def _model_loads_from(name: str) -> bool:
    """Whether the file `name` (relative to a model folder) is one a model loads from or is described by: weights,
    code, configs (`MODEL_JSON_NAMES`, `MODEL_JSON_ENDINGS`; README.md at the top only)."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith((".safetensors", ".py")):
        return True
    if name == "README.md" or base in MODEL_JSON_NAMES or SHARDED_INDEX.fullmatch(base):
        return True
    return base.endswith(MODEL_JSON_ENDINGS)


def _published_file(path: Path) -> Union[str, bytes]:
    """What is uploaded of `path`: a `data_splits.json` without its fingerprints (`_published_split_record`), a
    config without the local folder it was loaded from (`_published_config`), any other file as it is (its path)."""
    from .data.split_record import SPLIT_RECORD_NAME

    if path.name == SPLIT_RECORD_NAME:
        return _published_split_record(path)
    if path.name == "config.json":
        return _published_config(path)
    return str(path)


def _published_config(path: Path) -> Union[str, bytes]:
    """A `config.json` as published: without a `_name_or_path` that names a local folder (diffusers keeps the folder
    a component was loaded from in its saved config: QA, a probe's `unet/config.json` would have published
    "/home/<user>/<project>/unet"; this package's pipelines save none since 2026-12-07); one naming a Hub repository
    is kept, and so is a relative path that does not exist from the current folder (taken for a repository id).
    Unchanged otherwise (its path)."""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return str(path)  # published as it is, as before: not ours to judge
    name = config.get("_name_or_path") if isinstance(config, dict) else None
    if not isinstance(name, str) or not (os.path.isabs(name) or os.path.exists(name) or name.startswith(".")):
        return str(path)
    config.pop("_name_or_path")
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _published_split_record(path: Path) -> bytes:
    """A `data_splits.json` as published: without its `train_fingerprints`, the other keys kept. The fingerprints of
    the training images would let anyone holding an image (a patient's scan) test whether the model was trained on
    it; they stay in the local folder, for `evaluate` and `probe` there."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # it may hold fingerprints: not published unread
        raise ValueError(f"{path} is not valid JSON ({error}); expected a data_splits.json to publish without its "
                         "train_fingerprints") from error
    if isinstance(record, dict):  # the mark of fingerprints of a head's images only goes with them
        for key in ("train_fingerprints", "train_fingerprints_partial", "selection_fingerprints"):
            record.pop(key, None)
    return (json.dumps(record, indent=2) + "\n").encode()


def commit_operations(
    local_dir: Path, card: Optional[Union[ModelCard, DatasetCard]], repo_type: str = "model"
) -> List[CommitOperationAdd]:
    """The files of `local_dir` to upload (`_local_files`), with `card` (sent from memory) replacing its README.md if
    given, each `data_splits.json` sent without its training images' fingerprints and each `config.json` without
    the local folder it was loaded from (`_published_file`)."""
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=_published_file(local_dir / name))
        for name in _local_files(local_dir, repo_type)
        if card is None or name != "README.md"
    ]
    if card is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    return operations


def write_dry_run(
    local_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    *,
    card: Optional[Union[ModelCard, DatasetCard]] = None,
    repo_type: str = "model",
) -> Path:
    """Write to `output_dir` exactly the files `push_to_hub(local_dir, ..., card=card)` would upload, `card` as its
    README.md, without any network. `output_dir` must be new or empty and outside `local_dir`, which is only read.
    The files go into a hidden sibling folder first, renamed to `output_dir` once complete: a dry run stopped halfway
    leaves no `output_dir` that looks like the upload (QA: a killed one left 7 of its files, and the rerun refused
    the folder as not empty)."""
    local_dir, output_dir = Path(local_dir), Path(output_dir)
    if repo_type == "model":
        check_publishable_model(local_dir)
    if output_dir.resolve().is_relative_to(local_dir.resolve()):
        raise ValueError(f"{output_dir}: expected a dry-run folder outside the model folder {local_dir}")
    # an empty folder given stages inside itself (its parent may be read-only: a container's mount), a new one
    # beside where it will be; either is checked first (QA: a read-only folder ended in a traceback of a mkdir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir}: a file; expected a new or empty folder for the dry run")
    existing = output_dir.is_dir()
    prefix = ".dry-run.partial-" if existing else f".{output_dir.resolve().name}.partial-"
    staging = (output_dir.resolve() if existing else output_dir.resolve().parent) / f"{prefix}{os.getpid()}"
    check_writable_dir(staging.parent, "--output_dir" if existing else f"--output_dir {str(output_dir)!r}: its folder")
    remove_leftovers_of_killed_writers(staging.parent, prefix)
    if existing:  # a killed dry run into it before it existed staged beside it (nothing removed from a read-only one)
        remove_leftovers_of_killed_writers(output_dir.resolve().parent, f".{output_dir.resolve().name}.partial-")
    if output_dir.exists() and any(not entry.name.startswith(prefix) for entry in output_dir.iterdir()):
        raise FileExistsError(f"{output_dir}: expected a new or empty folder for the dry run, found files in it")
    shutil.rmtree(staging, ignore_errors=True)  # this pid's: a restarted container's killed dry run
    try:
        for operation in commit_operations(local_dir, card, repo_type):
            target = staging / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(operation.path_or_fileobj, bytes):
                target.write_bytes(operation.path_or_fileobj)
            else:
                shutil.copyfile(operation.path_or_fileobj, target)
        if not output_dir.exists():
            os.replace(staging, output_dir)
        else:  # empty, checked above (perhaps the working folder, which is not replaced): its card moved in last
            for entry in sorted(staging.iterdir(), key=lambda path: path.name == "README.md"):
                os.replace(entry, output_dir / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def push_to_hub(
    local_dir: Union[str, os.PathLike],
    repo_id: str,
    *,
    card: Optional[Union[ModelCard, DatasetCard]] = None,
    token: Optional[str] = None,
    private: bool = False,
    revision: Optional[str] = None,
    commit_message: str = "Upload diffusion classifier",
    repo_type: str = "model",
) -> CommitInfo:
    """Create `repo_id` if needed and upload `local_dir` with `card` as its README.md, in one commit.

    `local_dir` is a saved pipeline or transformers model folder (or, with `repo_type="dataset"`, a dataset
    folder). It is only read: the card goes to the Hub from memory, and a failed upload leaves it unchanged.
    Hidden files, training checkpoints (`checkpoint-*/`) and pickles (`PICKLE_SUFFIXES`, e.g. a `Trainer`'s
    `training_args.bin`) are not uploaded; a warning names the checkpoints and the pickles. `data_splits.json` is
    uploaded without its `train_fingerprints` (a membership test on the training images), its other keys kept.
    `revision` is an existing branch (default: main). `private=True` creates the repo private and refuses an existing
    public one (the Hub keeps a repo's visibility); `private=False` leaves a new repo as the Hub makes it (public, or
    private where its organisation makes new repos private).

    Raises `OfflineModeIsEnabled` when HF_HUB_OFFLINE is set, `HubUploadError` when the upload fails.
    """
    local_dir = Path(local_dir)
    check_repo_id(repo_id)
    if repo_type == "model":
        check_publishable_model(local_dir)  # before anything is sent
    if constants.is_offline_mode():
        raise OfflineModeIsEnabled(f"cannot push {local_dir} to the Hub: HF_HUB_OFFLINE=1 is set; unset it to upload")
    operations = commit_operations(local_dir, card, repo_type)
    api = HfApi(token=token)
    try:
        _create_repo(api, repo_id, private, repo_type)
        return api.create_commit(
            repo_id, operations, commit_message=commit_message, revision=revision, repo_type=repo_type
        )
    except Exception as err:  # HTTP status, connection, or README validation: all mean the upload failed
        raise HubUploadError(
            f"upload of {local_dir} to {api.endpoint}/{repo_id} failed: {err}\n"
            f"The local folder {local_dir} is unchanged."
        ) from err


def check_repo_id(repo_id: str) -> None:
    """Refuse, before any work, a repository id the Hub would refuse (huggingface_hub's `validate_repo_id`: `name` or
    `namespace/name`, of letters, digits, "-", "_" and "."), naming it: QA, `"my org/bad name!!"` went into a dry
    run's card (its title and usage snippet) without a word."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r}: {error}") from None


def _create_repo(api: HfApi, repo_id: str, private: bool, repo_type: str) -> None:
    """Create `repo_id` (private if `private`, else as the Hub makes it: `private=False` would make a repo public
    where its organisation makes new ones private), or keep the one that exists; an existing public repo is refused
    when `private` was asked, since the Hub ignores `private` for a repo that exists."""
    try:
        api.create_repo(repo_id, private=True if private else None, repo_type=repo_type)
        return
    except HfHubHTTPError as error:
        # 409: it exists; 401 / 402 / 403: no right to create it, which it may (as `create_repo(exist_ok=True)`)
        if getattr(error.response, "status_code", None) not in (401, 402, 403, 409):
            raise
        try:
            existing = api.repo_info(repo_id, repo_type=repo_type)
        except HfHubHTTPError:
            raise error from None
    if private and existing.private is not True:
        raise ValueError(
            f"{repo_id} exists and is public, and a private upload was asked (--private): the Hub keeps an existing "
            "repo's visibility; make it private first (its settings page, or HfApi().update_repo_settings(repo_id, "
            "private=True)), or push without --private"
        )


def download_patterns(trust_remote_code: bool = False) -> List[str]:
    """The files `download` fetches from a Hub repo: configs, safetensors weights and cards, plus the repo's Python
    files with `trust_remote_code`. Never pickles (`PICKLE_SUFFIXES`): loading one can run arbitrary code."""
    return DOWNLOAD_PATTERNS + (REMOTE_CODE_PATTERNS if trust_remote_code else [])


def download(
    name_or_path: Union[str, os.PathLike],
    *,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    local_files_only: bool = False,
    trust_remote_code: bool = False,
) -> str:
    """A local folder holding `name_or_path`: the folder itself, or a Hub repo's snapshot in the HF cache
    (`snapshot_download`: files already cached for that revision are not downloaded again).

    From the Hub only the files a pipeline loads are fetched (`download_patterns`): `*.json`, `*.safetensors`,
    `*.md`, and `*.py` only with `trust_remote_code=True`; other files in the repo are never downloaded."""
    if os.path.isdir(name_or_path):
        return str(name_or_path)
    if os.path.isabs(name_or_path) or str(name_or_path).startswith(".") or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"{name_or_path}: no such folder (expected a saved folder or a Hub repo id 'org/name')")
    try:
        return snapshot_download(
            str(name_or_path),
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=download_patterns(trust_remote_code),
        )
    except (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError) as error:  # a mistyped folder, mostly
        local = _local_typo(Path(name_or_path))
        if local is not None:  # QA: offline, a mistyped relative folder was told to go online
            raise FileNotFoundError(f"{name_or_path}: no such folder ({local})") from error
        reason = str(error).strip().splitlines()[0]
        raise FileNotFoundError(
            f"{name_or_path}: no such folder, and no Hub repo of that id could be read ({type(error).__name__}: {reason})"
        ) from error


def _local_typo(path: Path) -> Optional[str]:
    """What the folder `path` names a mistyped neighbour of, when its parent is a folder here: the closest names it
    holds, or that it holds none alike; None when the parent is not a local folder (a Hub id)."""
    import difflib

    if not path.parent.is_dir():
        return None
    names = sorted(entry.name for entry in path.parent.iterdir() if entry.is_dir())
    close = difflib.get_close_matches(path.name, names, n=3)
    return f"{path.parent} holds {', '.join(close)}" if close else f"{path.parent} holds no folder of a name alike"

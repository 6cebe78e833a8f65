"""Classifying batch by batch: [`predict_files`] (resumable, errors listed, shared across accelerate processes) and the
`diffusion-classifiers predict` command ([`add_predict_args`], [`run_predict`]).

Only the standard library is imported at module level (see the package docstring).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, NamedTuple, Optional, Sequence

from ..data.arguments import add_column_args, json_object_arg
from ..progress_bars import bar_visibility
from .inputs import (
    DICOM_ID_COLUMNS,
    FILE_STAMP_COLUMNS,
    WINDOW_NAMES,
    PredictionInput,
    check_input_exists,
    check_labels,
    dicom_ids,
    file_stamp,
    list_inputs,
    parse_windows,
)
from .outputs import (
    ERROR_COLUMNS,
    POSITIVE_CLASS_KEY,
    RATIO_KEY,
    TRAINING_IMAGE_KEY,
    CarriedCells,
    OutputFiles,
    check_output_args,
    columns_of_resumed_run,
    done_paths,
    errors_file_of_resumed_run,
    forget_errors,
    forget_rows,
    listed_errors,
    merge_parts,
    model_moved,
    new_part,
    predicted_nothing,
    prepare_output_files,
    ratio_direction,
    recorded_file_stamps,
    recorded_run_info,
    windows_json,
    write_csv,
)

__all__ = [
    "PredictionSummary",
    "add_predict_args",
    "output_columns",
    "predict_files",
    "read_saved_preprocessing",
    "run_predict",
]

DEFAULT_SEED = 0  # a Score-SDE pipeline's noise seed in predict (`--seed`)


@dataclass
class PredictionSummary:
    r"""
    What [`predict_files`] did.

    Args:
        output (`str`): the predictions file. errors (`str`): the errors file.
        rows (`int`): rows of the output now (one per image or DICOM frame); 0 on processes other than the main one.
        predicted (`int`): inputs classified by this call (all processes); skipped (`int`): inputs done before, those
            predicted and those listed as unreadable (`skipped_unreadable`); `predicted_before` is the first.
        failed (`int`): inputs of this call listed in the errors file, those tried again with `retry_errors`
            (`failed_again`) included; `new_unreadable` is the others.
        processes (`int`): the processes that shared the work.
        unreadable (`int`): rows of the errors file now, those of this call and of earlier runs; 0 on processes other
            than the main one.
        not_in_input (`int`): rows of the output whose path is not among the inputs (an earlier run's, of files
            since removed: kept, after the others); 0 on processes other than the main one.
        retried (`int`): rows of the errors file removed to try their inputs again (`retry_errors`); 0 on processes
            other than the main one.
        replaced (`int`): inputs predicted before whose file has changed since (another size or modification time:
            a file replaced under the same name), their rows removed and predicted again; 0 on processes other than
            the main one.
        skipped_unreadable (`int`): of `skipped`, the inputs an earlier run listed in the errors file (not tried
            again without `retry_errors`); 0 on processes other than the main one.
        failed_again (`int`): of `failed`, the inputs tried again (`retry_errors`) and still unreadable; 0 on
            processes other than the main one.
        refreshed (`int`): rows of an earlier run whose cells of the input (`refreshed_columns`: an input CSV's
            carried columns, `true_label`) were edited since, now the input's; 0 on processes other than the main one.
    """

    output: str
    errors: str
    rows: int
    predicted: int
    skipped: int
    failed: int
    processes: int
    unreadable: int
    not_in_input: int = 0
    retried: int = 0
    replaced: int = 0
    skipped_unreadable: int = 0
    failed_again: int = 0
    refreshed: int = 0
    refreshed_columns: list = field(default_factory=list)

    @property
    def predicted_before(self) -> int:
        """Inputs skipped because an earlier run predicted them (their rows are in the output)."""
        return self.skipped - self.skipped_unreadable

    @property
    def new_unreadable(self) -> int:
        """Inputs of this call listed in the errors file for the first time (not tried again with `retry_errors`)."""
        return self.failed - self.failed_again


def output_columns(
    pipeline: Any, with_true_labels: bool, settings: Optional[dict] = None, with_dicom_ids: bool = False,
    with_files: bool = False, with_training_flag: bool = False,
) -> list[str]:
    """`path, frame, [true_label, [training_image,]] [patient_id, study_uid, series_uid, laterality,
    view_position, sop_instance_uid,] [file_bytes, file_modified,] label, score, prob_<class>...,
    [log_likelihood_ratio, log_likelihood_ratio_stderr]` for
    `pipeline` called with `settings` (`evaluation.pipeline_call_settings`; default: its defaults): the DICOM ids
    (`DICOM_ID_COLUMNS`) when inputs are DICOM files, the size
    and modification time of the file read when inputs are files, the ratio
    for a binary Score-SDE pipeline, its standard error when the call gives one (`method="elbo"`, or the likelihood
    with `num_probes >= 2`); `training_image` with true labels when `with_training_flag` (the model records its
    training images' fingerprints)."""
    from ..evaluation import pipeline_call_settings
    from ..pipelines import ScoreSDEClassifierPipeline

    columns = ["path", "frame"] + (["true_label"] if with_true_labels else [])
    columns += [TRAINING_IMAGE_KEY] if with_true_labels and with_training_flag else []
    columns += list(DICOM_ID_COLUMNS) if with_dicom_ids else []
    columns += list(FILE_STAMP_COLUMNS) if with_files else []
    columns += ["label", "score"]
    columns += [f"prob_{name}" for name in pipeline.class_names]
    if isinstance(pipeline, ScoreSDEClassifierPipeline) and len(pipeline.class_names) == 2:
        columns.append("log_likelihood_ratio")
        settings = settings or pipeline_call_settings(pipeline)
        if settings["method"] == "elbo" or settings["num_probes"] >= 2:
            columns.append("log_likelihood_ratio_stderr")
    return columns


def _carried_columns(inputs: Sequence[PredictionInput], columns: list[str]) -> list[str]:
    """The columns of an input CSV the output carries (`PredictionInput.columns`: a plankton sample, a site), after
    `path` and `frame`; one named as a column predict writes itself (`score`, `prob_<class>`, ...) is refused, except
    a DICOM id column (`patient_id`, the labels CSV's patient-level split column: QA): its cells take the place of
    the ids read from the files' headers (`csv_over_header_ids`)."""
    carried = list(inputs[0].columns) if inputs else []
    clashing = [
        column for column in carried
        if (column in columns and column not in DICOM_ID_COLUMNS) or column.startswith("prob_")
    ]  # fmt: skip
    if clashing:
        raise ValueError(
            f"inputs: CSV or dataset column(s) {clashing} are named as columns predict writes itself; expected other "
            "names for the columns it carries to the output (rename them)"
        )
    return [column for column in carried if column not in columns]


def _refreshed_columns(inputs: Sequence[PredictionInput], carried: list[str], columns: list[str]) -> list[str]:
    """The output's columns whose cells come from the input as it is (not from the images): a CSV's carried columns
    (those the output holds: a resumed run's may lack one added to the input since), its DICOM id columns (a
    `patient_id` corrected in the CSV: QA, kept as it was, `aggregate --by patient_id` then merging two patients) and
    the true labels."""
    ids = [column for column in (inputs[0].columns if inputs else ()) if column in DICOM_ID_COLUMNS]
    return [column for column in [*carried, *ids, "true_label"] if column in columns]


def _carried_cells(item: PredictionInput, columns: list[str]) -> list[Optional[str]]:
    """`item`'s cells of the refreshed `columns` (`_refreshed_columns`), as text ("" for none); None for an empty
    DICOM id cell, which the file's header fills (`csv_over_header_ids`): the row keeps its own."""
    return [
        (item.label or "") if column == "true_label"
        else item.columns.get(column) or None if column in DICOM_ID_COLUMNS
        else item.columns.get(column, "")
        for column in columns
    ]  # fmt: skip


def csv_over_header_ids(csv_values: Mapping[str, str], ids: Mapping[str, Optional[str]]) -> dict:
    """An input CSV's cells, those of a DICOM id column too (the CSV is the user's word on who a file belongs to,
    as for training's patient-level split), except where such a cell is empty: the header's id then stays."""
    return {column: value for column, value in csv_values.items() if value != "" or column not in ids}


def _ratio_direction(pipeline: Any) -> str:
    """`"log p(x | positive) - log p(x | negative)"`, what a binary Score-SDE pipeline's `log_likelihood_ratio` is: a
    rerun by a pipeline whose positive class changed would write the other sign into the same column."""
    positive = pipeline.class_names[pipeline.positive_index()]
    return ratio_direction(positive, next(name for name in pipeline.class_names if name != positive))


def _binary_classes(pipeline: Any, columns: list[str], operating_point: Optional[dict] = None) -> dict:
    """What the sidecar records of a binary pipeline's classes (under "run"): the positive class saved with the model
    (None when it saved none: `aggregate` then takes class 1), or that of the operating point the labels were decided
    at, and, for Score-SDE, which way its ratio column points."""
    if len(pipeline.class_names) != 2:
        return {}
    positive = getattr(pipeline, "positive_class", None)
    positive = positive if operating_point is None else operating_point["positive_class"]
    recorded = {POSITIVE_CLASS_KEY: positive}
    return {**recorded, RATIO_KEY: _ratio_direction(pipeline)} if RATIO_KEY in columns else recorded


def _compared(operating_point: Optional[dict]) -> Optional[dict]:
    """What a rerun must match of an operating point: all but the path it was read from (review: the same file by
    another spelling refused the rerun)."""
    return None if operating_point is None else {k: v for k, v in operating_point.items() if k != "from"}


def prediction_call_kwargs(pipeline: Any, pipeline_kwargs: Optional[dict], seed: int) -> dict:
    """What `predict` calls `pipeline` with: `pipeline_kwargs` and, for Score-SDE, `seed` with `seed_by="content"`
    (each image's noise drawn from the seed and its pixels, so its result does not depend on its batch, process or
    whether the run resumed). The noise seed is `seed`, not a `pipeline_kwargs` entry."""
    from ..pipelines import ScoreSDEClassifierPipeline

    _check_pipeline_kwargs(pipeline_kwargs)
    kwargs = dict(pipeline_kwargs or {})
    if isinstance(pipeline, ScoreSDEClassifierPipeline):
        kwargs.update(seed=seed, seed_by="content")
    return kwargs


def _check_settings_of_unrecorded_run(files: OutputFiles, pipeline: Any, settings: dict, overwrite: bool):
    """An output written before the pipeline call's settings were recorded was scored with the pipeline's defaults
    and, as far as can be told, predict's default seed: refuse to add rows scored otherwise (QA: another `--seed`
    mixed two seeds' rows in one output, which then recorded the new seed for all)."""
    recorded = None if overwrite else recorded_run_info(files)
    if recorded is None or "pipeline_call" in recorded:
        return
    from ..evaluation import pipeline_call_settings

    defaults = pipeline_call_settings(pipeline, prediction_call_kwargs(pipeline, None, DEFAULT_SEED))
    changed = sorted(name for name in settings if settings[name] != defaults.get(name))
    if changed:
        raise ValueError(
            f"{files.output} was written before predict recorded its settings, with the pipeline's defaults and a "
            f"seed it did not record, taken to be the default {DEFAULT_SEED}; refusing to add rows scored with other "
            f"{', '.join(changed)}: rerun without pipeline_kwargs (--pipeline_kwargs) and with --seed {DEFAULT_SEED} "
            "if it was written so, else pass --overwrite (overwrite=True) to replace it"
        )


def _check_pipeline_kwargs(pipeline_kwargs: Optional[dict]) -> None:
    if pipeline_kwargs is not None and not isinstance(pipeline_kwargs, dict):
        raise ValueError(f"pipeline_kwargs: expected a dict (a JSON object), got {pipeline_kwargs!r}")
    given = sorted({"seed", "seed_by"} & set(pipeline_kwargs or {}))
    if given:
        raise ValueError(
            f"pipeline_kwargs: {', '.join(given)} not taken: the noise seed is predict's own (--seed, seed=...), "
            "combined with each image's pixels"
        )


def _classify(pipeline: Any, images: list, call_kwargs: dict, operating_point: Optional[dict] = None) -> dict:
    """The pipeline's output for `images` (as [`read_checked`] gives them, called with `call_kwargs`) as columns; each
    label its most probable class, or at the `operating_point` (its `positive_class` where its log-odds are the point's
    or more), with its score."""
    import torch

    from ..data.preprocessing import images_in_their_stated_range, preprocessed_as_input

    batch = preprocessed_as_input(torch.stack(images), pipeline.preprocessing.input_range)
    with pipeline.reading_preprocessed_images(), images_in_their_stated_range():
        output = pipeline(batch, **call_kwargs)
    if operating_point is None:
        columns = {"label": list(output.labels), "score": output.scores.tolist()}
    else:
        columns = _decided_at(output, pipeline.class_names, operating_point)
    columns.update({f"prob_{name}": output.probs[:, k].tolist() for k, name in enumerate(pipeline.class_names)})
    for name in ("log_likelihood_ratio", "log_likelihood_ratio_stderr"):
        values = getattr(output, name, None)
        if values is not None:
            columns[name] = values.tolist()
    return columns


def _decided_at(output: Any, class_names: Sequence[str], point: dict) -> dict[str, list]:
    """The label and score columns of a binary output at an operating point (`operating_points`): the positive class
    where its log-odds (a Score-SDE pipeline's own, else its probability's) are the point's or more."""
    from ..operating_points import decisions_at, positive_log_odds

    positive = list(class_names).index(point["positive_class"])
    probs = output.probs.detach().cpu().double()
    ranking = getattr(output, "log_odds", None)
    log_odds = positive_log_odds(probs, probs if ranking is None else ranking.detach().cpu(), positive)
    labels = decisions_at(log_odds, positive, point)
    return {"label": [class_names[k] for k in labels], "score": probs[range(len(labels)), labels].tolist()}


def read_checked(item: PredictionInput, pipeline: Any, train_fingerprints: Optional[frozenset] = None) -> tuple:
    """`(images, flags)`: the item's images as the pipeline's preprocessing gives them (`ValueError` / `OSError` where
    it refuses one), read a frame at a time (a long multi-frame DICOM in the memory of one frame, and a batch of
    images in that of their preprocessed tensors: QA, a tomosynthesis volume), to be given to the pipeline inside
    `pipeline.reading_preprocessed_images()`, mapped to its input range by `data.preprocessing.preprocessed_as_input`;
    and whether each is, by content, among `train_fingerprints` (None without them)."""
    from ..data.preprocessing import images_in_their_stated_range
    from ..data.split_record import image_fingerprint_variants

    images, flags, frames = [], [] if train_fingerprints is not None else None, item.read()
    for frame, image in enumerate(frames):
        try:
            with images_in_their_stated_range():
                (preprocessed,) = pipeline.preprocess([_in_stated_range(image, pipeline.preprocessing.input_range)])
        except ValueError as error:
            raise ValueError(f"frame {frame}: {error}" if len(frames) > 1 else str(error)) from error
        images.append(preprocessed)
        if flags is not None:
            (variants,) = image_fingerprint_variants(preprocessed[None])
            flags.append(not train_fingerprints.isdisjoint(variants))
    return images, flags


def _in_stated_range(image: Any, input_range: str) -> Any:
    """A file's image as the pipeline's contract reads it: DICOM / 16-bit frames come as floats in `[0, 1]`, mapped by
    `2 x - 1` (the step the contract itself applies to `[0, 1]` data) for a contract stating `[-1, 1]`, and so does a
    float image file (a PIL image of mode F: its file's values, `[0, 1]` as the loaders and `pipe(path)` read them;
    QA: a float TIFF was read as `[-1, 1]`, washed out, in predict and cluster alone); other PIL images and the other
    ranges unchanged (`"auto"` reads non-negative floats as `[0, 1]`)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image) and image.mode == "F":
        image = np.asarray(image, dtype=np.float32)
    if input_range == "[-1, 1]" and hasattr(image, "dtype") and image.dtype.kind == "f":
        return image * 2.0 - 1.0
    return image


class _BatchWriter:
    """Reads, classifies and commits one batch at a time as part files named by the batch's first input index."""

    def __init__(self, pipeline: Any, files: OutputFiles, columns: list[str], order: dict[str, int], kwargs: dict,
                 train_fingerprints: Optional[frozenset] = None, operating_point: Optional[dict] = None):
        self.pipeline, self.files, self.columns, self.order, self.call_kwargs = pipeline, files, columns, order, kwargs
        self.operating_point = operating_point
        self.train_fingerprints = train_fingerprints if TRAINING_IMAGE_KEY in columns else None
        self.items, self.images, self.errors = [], [], []
        self.failed = 0

    def add(self, item: PredictionInput) -> None:
        stamp = file_stamp(item)  # before reading: a file replaced while it is read is read again next time
        try:
            images, flags = read_checked(item, self.pipeline, self.train_fingerprints)
            ids = dicom_ids(item)
        except (ValueError, OSError) as error:
            self.errors.append([item.path, str(error)])
            self.failed += 1
            return
        self.items.append((item, flags or [None] * len(images), {**ids, **stamp}))
        self.images += images

    def commit(self) -> int:
        """Classify the batch and commit it: the errors part first, so a kill in between only redoes the batch.
        Returns the number of inputs committed (predicted or listed as errors)."""
        if not self.items and not self.errors:
            return 0
        paths = [item.path for item, *_ in self.items] + [path for path, _ in self.errors]
        first = min(self.order[path] for path in paths)
        self.files.parts.mkdir(parents=True, exist_ok=True)
        rows = self._rows() if self.images else []
        if self.errors:
            write_csv(new_part(self.files, "errors", first), ERROR_COLUMNS, self.errors)
        if rows:
            write_csv(new_part(self.files, "rows", first), self.columns, rows)
        self.items, self.images, self.errors = [], [], []
        return len(paths)

    def _rows(self) -> list[list]:
        predicted = _classify(self.pipeline, self.images, self.call_kwargs, self.operating_point)
        rows, position = [], 0
        for item, flags, ids in self.items:
            for frame, flag in enumerate(flags):
                values = {"path": item.path, "frame": frame, "true_label": item.label, TRAINING_IMAGE_KEY: flag, **ids}
                values.update(csv_over_header_ids(item.columns, ids))
                values.update({column: predicted[column][position] for column in predicted})
                rows.append([values[column] for column in self.columns])
                position += 1
        return rows


def predict_files(
    pipeline: Any,
    inputs: Sequence[PredictionInput],
    output_path: str | os.PathLike,
    errors_path: Optional[str | os.PathLike] = None,
    batch_size: int = 64,
    run_info: Optional[dict] = None,
    overwrite: bool = False,
    seed: int = DEFAULT_SEED,
    accelerator: Any = None,
    progress_bar: bool = True,
    pipeline_kwargs: Optional[dict] = None,
    retry_errors: bool = False,
    train_fingerprints: Optional[Collection[str]] = None,
    operating_point: Optional[dict] = None,
) -> PredictionSummary:
    r"""
    Classify `inputs` with `pipeline`, writing one row per image (per frame of a multi-frame DICOM) to `output_path`.

    Columns: `path`, `frame` (0 for single images), an input CSV's other columns (a plankton sample, a site: carried
    for `aggregate` to group by), `true_label` (when the inputs carry labels), `training_image`
    (with true labels and `train_fingerprints`: whether the image is, by content, one the model was trained on, which
    `aggregate` leaves out of its metrics), for DICOM inputs
    `patient_id`, `study_uid` and `series_uid` (from each file's header, to combine slices per scan), `label` (the
    predicted class), `score` (its probability), `prob_<class>` for every class, and for a binary Score-SDE pipeline
    `log_likelihood_ratio` (`log p(x | positive) - log p(x | negative)`) and, with the ELBO,
    `log_likelihood_ratio_stderr` (its Monte-Carlo standard error: a row whose ratio, plus the priors' log-ratio if
    `pipeline_kwargs` gives priors, is within about two of them of 0 could be decided the other way with another
    `seed`). Rows follow the input order; an output written before a column was added keeps its columns when resumed.

    Resumable: the results of finished batches are kept in `<output>.parts/` until the end, when they are merged into
    the output and the errors file; a rerun skips every path already in the output, the errors file or a part.
    `<output>.json` records the model, its classes, the columns, `run_info` (the CLI's: the model folder and the
    sha256 of its files, the windows, the input), a binary model's saved positive class (`aggregate`'s default), the
    binary ratio's direction and every setting of the pipeline call (`"pipeline_call"` in its `"run"`: the seed, and
    the defaults where `pipeline_kwargs` gives none): a rerun that differs is refused unless `overwrite=True`, which
    sets the earlier output, errors file, parts and sidecar aside (`<output>.replaced/`) until its own rows are
    merged, then deletes them. It also records the errors file, which a rerun without
    `errors_path` keeps (an output written before each had its own errors file keeps the shared `errors.csv` beside
    it). While it runs, `<output>.lock` and `<errors>.lock` refuse a second prediction into the same output or errors
    file (a lock left by a process of this host that is gone is taken over). A file that cannot be read or that the
    pipeline's preprocessing refuses is a row `path, reason` of the errors file; `retry_errors=True` tries such files
    again (repaired since), their rows removed first.

    Args:
        pipeline (`DiffusionClassifierPipeline`): a loaded classifier pipeline (on the device it should run on);
            its own progress bars are hidden while it runs (and its setting restored), one bar counts the files.
        inputs (`Sequence[PredictionInput]`): from [`list_inputs`]; their paths must be unique.
        output_path (`str` or `os.PathLike`): a `.csv` or `.parquet` file.
        errors_path (`str` or `os.PathLike`, *optional*): a `.csv` file; default `<output_path>.errors.csv`
            (`out/a.csv.errors.csv`), so outputs in one folder each have their own.
        batch_size (`int`, *optional*, defaults to 64): images per pipeline call and per committed batch (a
            multi-frame file is never split, so a batch may hold more).
        run_info (`dict`, *optional*): JSON-serialisable facts a rerun must match (the CLI records the model folder,
            its `hub.model_fingerprint`, the DICOM windows and the input; where both runs record the fingerprint, the
            folder is not compared: a copy of the model, or its folder at another path, resumes).
        overwrite (`bool`, *optional*, defaults to `False`): replace an output written by another prediction.
        seed (`int`, *optional*, defaults to 0): the Score-SDE pipeline's seed (its draws come from the seed and each
            image's pixels).
        accelerator (`accelerate.Accelerator`, *optional*): split the work across its processes; each must call
            this function with the same arguments. Default: this process alone.
        progress_bar (`bool`, *optional*, defaults to `True`): a tqdm bar over the inputs, on the main process.
        pipeline_kwargs (`dict`, *optional*): arguments of the pipeline's `__call__` (Score-SDE: `method`,
            `num_timesteps`, `weighting`, `priors`, ...; not `seed`), as `evaluate_classifier` takes them: predict with
            the settings a model was evaluated with. Unknown names are refused before any file is read.
        retry_errors (`bool`, *optional*, defaults to `False`): predict again the inputs the errors file lists.
        train_fingerprints (`Collection[str]`, *optional*): the fingerprints of the model's training images
            (`data.split_record.recorded_train_fingerprints` of its folder), for the `training_image` column;
            default: those the pipeline records (its `split_record`, as `evaluate_classifier` reads them), if any.
        operating_point (`dict`, *optional*): a binary pipeline's decision threshold (`operating_points`: its
            `log_odds` and `positive_class`, e.g. chosen on val by `evaluate --target_sensitivity`): `label` is the
            positive class where its log-odds are the point's or more, `score` that label's probability; recorded in
            the sidecar, and an output labelled otherwise is not added to. Default: each image's most probable class.

    Returns:
        [`PredictionSummary`]
    """
    from tqdm.auto import tqdm

    from ..data.image_files import first_frames_noted
    from ..data.sixteen_bit import check_bit_depths
    from ..evaluation import pipeline_call_settings, recorded_fingerprints_of, recorded_fingerprints_partial_of

    files = check_output_args(output_path, errors_path, batch_size)
    check_inputs(inputs, files)
    if train_fingerprints is None:
        train_fingerprints = recorded_fingerprints_of(pipeline)
    if train_fingerprints is not None and recorded_fingerprints_partial_of(pipeline):
        # its training_image column knows a head's training images only: aggregate then claims no check
        run_info = {**(run_info or {}), "training_images_partial": True}
    call_kwargs = prediction_call_kwargs(pipeline, pipeline_kwargs, seed)
    settings = pipeline_call_settings(pipeline, call_kwargs)  # unknown names refused here
    columns = output_columns(
        pipeline, any(item.label is not None for item in inputs), settings,
        with_dicom_ids=any(item.dicom_file is not None for item in inputs),
        with_files=any(item.file is not None for item in inputs), with_training_flag=train_fingerprints is not None,
    )  # fmt: skip
    carried = _carried_columns(inputs, columns)
    columns[2:2] = carried
    check_labels(inputs, pipeline.class_names)
    with _one_prediction_at_a_time(files, accelerator):
        is_main, wait = _process_roles(accelerator)
        if errors_path is None:
            files = errors_file_of_resumed_run(files, overwrite)
        overwrite = overwrite or predicted_nothing(files)  # a record of no rows: this run's settings replace it
        columns = columns_of_resumed_run(files, columns, overwrite, carried)
        _check_settings_of_unrecorded_run(files, pipeline, settings, overwrite)
        # the settings under "run", whose keys a sidecar lacks are not compared: outputs of earlier versions resume
        # (with the pipeline's defaults: `_check_settings_of_unrecorded_run`)
        # the operating point compared as class names are: a sidecar without one labelled each most probable class
        classes = _binary_classes(pipeline, columns, operating_point)
        run = {"run": {**(run_info or {}), **classes, "pipeline_call": settings},
               "class_names": list(pipeline.class_names), "columns": columns,
               "operating_point": _compared(operating_point)}  # fmt: skip
        prepare_output_files(files, run, overwrite, is_main)
        input_paths = {item.path for item in inputs}
        listed = listed_errors(files) & input_paths if is_main else set()
        retried = forget_errors(files, input_paths) if retry_errors and is_main else 0
        replaced = _forget_replaced_files(files, inputs) if is_main and FILE_STAMP_COLUMNS[0] in columns else 0
        wait()
        # listed by the main process alone and sent to the others: a process listing them later would see the parts
        # another one has committed since, and the processes would split different lists (inputs left out)
        talk = progress_bar and is_main  # what the bar cannot show: reading and merging grow with the output
        if talk and files.output.exists():
            _say(f"reading the inputs done in {files.output} ...")
        remaining_indices = _on_main_process(lambda: _remaining_indices(inputs, done_paths(files)), accelerator)
        remaining = [inputs[i] for i in remaining_indices]
        mine = _share(remaining, accelerator)
        order = {item.path: i for i, item in enumerate(inputs)}
        fingerprints = None if train_fingerprints is None else frozenset(train_fingerprints)
        writer = _BatchWriter(pipeline, files, columns, order, call_kwargs, fingerprints, operating_point)
        shown = bar_visibility(progress_bar and is_main)
        # one bar, over the files; one warning for the 16-bit files read at another guessed bit depth than the
        # training images' (`data.sixteen_bit.check_bit_depths`)
        # the bar counts the files committed, not those read: a batch is read fast, then classified at once
        bar = tqdm(total=len(mine), desc="predict", unit="file", **shown)
        with pipeline.progress_bars_off(), check_bit_depths(pipeline.preprocessing.medical, stacklevel=2), \
                first_frames_noted(stacklevel=2), bar:  # the bar closed before either warns
            for item in mine:
                writer.add(item)
                if len(writer.images) >= batch_size:
                    bar.update(writer.commit())
            bar.update(writer.commit())
        failed = _sum_over_processes(writer.failed, accelerator)
        wait()
        if talk:
            _say(f"merging the predictions into {files.output} ...")
        refreshed_columns = _refreshed_columns(inputs, carried, columns)
        cells = {item.path: _carried_cells(item, refreshed_columns) for item in inputs} if is_main else {}
        current = CarriedCells(refreshed_columns, cells)
        predicted_paths, unreadable, refreshed = merge_parts(files, columns, order, current) if is_main else ([], [], 0)
        if is_main:  # merged: the prediction an overwrite replaced is no longer needed
            shutil.rmtree(files.replaced, ignore_errors=True)
        # the errors file lists the inputs tried again only if they failed again: they were removed from it first
        failed_again = len(set(unreadable) & listed) if retry_errors and is_main else 0
        # without retry_errors, the inputs the errors file listed are done: skipped
        skipped_unreadable = 0 if retry_errors else len(listed)
        done = set(predicted_paths) | set(unreadable)  # what the output and the errors file hold once merged
        missing = _on_main_process(lambda: _remaining_indices(inputs, done), accelerator)
        if missing:
            first = ", ".join(repr(inputs[i].path) for i in missing[:5])
            raise RuntimeError(
                f"predict: {len(missing)} of {len(inputs)} inputs are neither in {files.output} nor in {files.errors} "
                f"after every process finished (first: {first}); rerun the same command to predict them (the inputs "
                "done are skipped)"
            )
        return PredictionSummary(
            output=str(files.output), errors=str(files.errors), rows=len(predicted_paths),
            predicted=len(remaining) - failed, skipped=len(inputs) - len(remaining), failed=failed,
            processes=1 if accelerator is None else accelerator.num_processes, unreadable=len(unreadable),
            not_in_input=sum(path not in order for path in predicted_paths), retried=retried, replaced=replaced,
            skipped_unreadable=skipped_unreadable, failed_again=failed_again, refreshed=refreshed,
            refreshed_columns=current.columns if refreshed else [],
        )  # fmt: skip


def _say(text: str) -> None:
    """A status line on stderr, for the steps of a long prediction that no bar counts (QA: up to 30 s unsaid)."""
    print(f"predict: {text}", file=sys.stderr, flush=True)


@contextmanager
def _one_prediction_at_a_time(files: OutputFiles, accelerator: Any) -> Iterator[None]:
    """The main process holds the locks of the output and of the errors file while the prediction runs (another one
    writing into the same output would merge and delete the parts this one is writing; two outputs given one
    `--errors` would each rewrite it without the other's rows); a refusal is raised on every process."""
    from ..run_lock import RunLock, claim_on_main_process

    is_main = accelerator is None or accelerator.is_main_process
    locks = [
        RunLock(str(path.with_name(path.name + ".lock")), f"{flag} {path}", flag, "prediction")
        for path, flag in ((files.output, "--output"), (files.errors, "--errors"))
    ] if is_main else [None, None]  # fmt: skip
    claim_on_main_process(locks[0], accelerator, lambda: locks[1].acquire())
    try:
        yield
    finally:
        for lock in reversed(locks):
            if lock is not None:
                lock.release()


def check_inputs(inputs: Sequence[PredictionInput], files: Optional[OutputFiles] = None) -> None:
    """At least one input, each path once; none listed in a CSV that `files` (the output, the errors file) would
    write over, `overwrite` or not (QA: a refusal advised `--overwrite`, which replaced the user's list of paths by
    predictions)."""
    if not inputs:
        raise ValueError("inputs: expected at least one input, got none")
    lists = {os.path.realpath(csv) for csv in {item.listed_in for item in inputs} if csv is not None}  # one a CSV
    for name, path in (("output", files.output), ("errors file", files.errors)) if files is not None else ():
        if os.path.realpath(path) in lists:
            raise ValueError(f"{name} {path}: it is the CSV listing the inputs; expected another file to write")
    counts = collections.Counter(item.path for item in inputs)
    if len(counts) != len(inputs):  # the first path listed twice (a scan of the list for each was O(N^2): QA)
        duplicate = next(path for path, count in counts.items() if count > 1)
        raise ValueError(f"inputs: path {duplicate!r} appears more than once; expected unique paths")


def _process_roles(accelerator: Any) -> tuple[bool, Callable[[], None]]:
    if accelerator is None:
        return True, lambda: None
    return accelerator.is_main_process, accelerator.wait_for_everyone


def _forget_replaced_files(files: OutputFiles, inputs: Sequence[PredictionInput]) -> int:
    """Remove the rows of the inputs whose file changed since its rows were written (a weekly folder refilled with
    new images under the names of last week's), so they are predicted again; returns how many inputs that is."""
    recorded = recorded_file_stamps(files)
    replaced = {item.path for item in inputs if item.path in recorded and _replaced(item, recorded[item.path])}
    if replaced:
        forget_rows(files, replaced)
    return len(replaced)


def _replaced(item: PredictionInput, recorded: tuple) -> bool:
    """Whether the file of `item` is another than the one its rows were predicted from; not when it cannot be read now
    (moved to an archive, a share not mounted): its rows stay, as those of files removed from a folder do."""
    now = file_stamp(item)
    return now[FILE_STAMP_COLUMNS[0]] is not None and recorded != tuple(now[column] for column in FILE_STAMP_COLUMNS)


def _remaining_indices(inputs: Sequence[PredictionInput], done: set[str]) -> list[int]:
    return [i for i, item in enumerate(inputs) if item.path not in done]


def _on_main_process(compute: Callable[[], Any], accelerator: Any) -> Any:
    """`compute()` on the main process, its value sent to every other process (which waits for it)."""
    if accelerator is None or accelerator.num_processes == 1:
        return compute()
    from accelerate.utils import broadcast_object_list

    value = [compute() if accelerator.is_main_process else None]
    broadcast_object_list(value)
    return value[0]


def _share(items: list, accelerator: Any) -> list:
    """This process's contiguous share of `items` (all of them without an accelerator)."""
    if accelerator is None or accelerator.num_processes == 1:
        return items
    with accelerator.split_between_processes(items) as share:
        return list(share)


def _sum_over_processes(count: int, accelerator: Any) -> int:
    if accelerator is None or accelerator.num_processes == 1:
        return count
    import torch

    return int(accelerator.reduce(torch.tensor([count], device=accelerator.device), reduction="sum").item())


# --------------------------------------------------------------------------------------------------
# The `predict` command
# --------------------------------------------------------------------------------------------------


def add_predict_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `diffusion-classifiers predict` (read by [`run_predict`]); only the standard library is used."""
    from ..operating_points import threshold_argument

    parser.add_argument(
        "--model_dir", required=True,
        help="a saved classifier pipeline (model_index.json), any method: a folder or a Hub repo id 'org/name' (its "
        "configs and safetensors are downloaded; its saved preprocessing, DICOM windows included, applies either way)",
    )  # fmt: skip
    add_input_args(parser)
    parser.add_argument("--output", default="predictions.csv", help="the predictions file, .csv or .parquet")
    parser.add_argument(
        "--errors", default=None,
        help="where unreadable files are listed (path, reason), a .csv; None: OUTPUT.errors.csv beside --output "
        "(a rerun keeps the errors file its output was written with)",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=64, help="images per pipeline call; a killed run loses at most one batch")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED,  # hashed with each image's pixels: any integer seeds the pipeline
        help="Score-SDE pipelines: the seed of their noise, combined with each image's pixels",
    )  # fmt: skip
    parser.add_argument(
        "--pipeline_kwargs", type=json_object_arg, default=None,
        help="arguments of the pipeline call as JSON, as evaluate takes them, e.g. '{\"weighting\": \"uniform\", "
        "\"num_timesteps\": 300}' for Score-SDE (not the seed: --seed); the output's .json records every setting",
    )  # fmt: skip
    parser.add_argument(
        "--positive_class", default=None,
        help="binary: the class a --threshold given as a number decides about, and a Score-SDE model's "
        "log_likelihood_ratio points to, recorded for aggregate (default: the model's saved one, else class 1)",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=threshold_argument, default=None,
        help="binary: label an image with the positive class where its probability is this or more (the model's "
        "saved positive class), or at the operating point an evaluate run's metrics.json records (its positive class; "
        "e.g. chosen on val with --target_sensitivity) (default: each image's most probable class)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an output written by another model or settings instead of refusing")
    parser.add_argument(
        "--retry_errors", action="store_true",
        help="predict again the inputs the errors file lists (files repaired since), their rows removed first",
    )  # fmt: skip
    parser.add_argument("--no_progress_bar", action="store_true", help="no tqdm bar")
    return parser


def run_predict(args: argparse.Namespace) -> PredictionSummary:
    """`diffusion-classifiers predict`: every flag checked and the inputs listed before the model is loaded."""
    from accelerate import Accelerator

    from ..data.split_record import recorded_train_fingerprints
    from ..hub import model_fingerprint
    from ..pipelines import DiffusionClassifierPipeline
    from ..training.launch import check_world_size

    files = check_output_args(args.output, args.errors, args.batch_size)
    _check_pipeline_kwargs(args.pipeline_kwargs)  # its names are checked against the pipeline once it is loaded
    model_dir, windows, medical, inputs = model_and_inputs(args)
    accelerator = Accelerator()
    check_world_size(accelerator)
    with loading_progress_bars(shown=not args.no_progress_bar):
        pipeline = DiffusionClassifierPipeline.from_pretrained(model_dir).to(accelerator.device)
    _set_positive_class(pipeline, args.positive_class)
    model_name = str(Path(args.model_dir).resolve()) if Path(args.model_dir).is_dir() else str(args.model_dir)
    # the input too: file names restart in every folder of an instrument's samples, and a rerun skips the names done
    # (a DatasetDict's rows are named by index in every split: its split too)
    # and the weights: a model retrained in place (same folder) must not add its rows to the earlier model's
    run_info = {"model_dir": model_name, "model_sha256": model_fingerprint(model_dir),
                "windows": windows_json(medical.windows), "input": str(Path(args.input).resolve())}  # fmt: skip
    run_info.update(input_split(args, announce=accelerator.is_main_process))
    moved = None if args.overwrite else model_moved(files, run_info)
    if moved is not None and accelerator.is_main_process:
        print(
            f"note: the model at {model_name} has the same content (model_sha256) as the one {files.output} was "
            f"predicted with, at {moved}: taken as the same model"
        )
    summary = predict_files(
        pipeline, inputs, args.output, args.errors, batch_size=args.batch_size, run_info=run_info,
        overwrite=args.overwrite, seed=args.seed, accelerator=accelerator, progress_bar=not args.no_progress_bar,
        pipeline_kwargs=args.pipeline_kwargs, retry_errors=args.retry_errors,
        train_fingerprints=recorded_train_fingerprints(model_dir),
        operating_point=_operating_point(args, pipeline, run_info["model_sha256"]),
    )  # fmt: skip
    # destroys the process group: left to interpreter exit, gloo's threads can abort a finished process (SIGABRT)
    accelerator.end_training()
    if accelerator.is_main_process:
        print(_summary_line(summary, args.retry_errors))
        _note_ratio_direction(pipeline, summary.output)
        if summary.replaced:
            print(
                f"{summary.replaced} inputs changed since they were predicted (another size or modification time: "
                "files replaced under the same name): their rows were replaced"
            )
        if summary.unreadable and not args.retry_errors:
            print(f"to predict the files of {summary.errors} again (repaired since), rerun with --retry_errors")
        if summary.not_in_input:
            print(
                f"{summary.not_in_input} rows of {summary.output} are of files no longer among the inputs of "
                f"{args.input} (removed or renamed since, or in a folder now skipped, such as a NAS's @eaDir: an "
                "earlier run's rows, kept after the others; --overwrite predicts the input afresh)"
            )
    return summary


def _set_positive_class(pipeline: Any, positive_class: Optional[str]) -> None:
    """`--positive_class`, a binary pipeline's (QA: predict alone of the commands had none)."""
    if positive_class is None:
        return
    names = list(pipeline.class_names)
    if len(names) != 2:
        raise ValueError(f"--positive_class: a binary model's; this one has {len(names)} classes {names}")
    pipeline.set_positive_class(positive_class)


def _operating_point(args: argparse.Namespace, pipeline: Any, model_sha256: str) -> Optional[dict]:
    """`--threshold` as an operating point with its `positive_class`: a probability, of the model's saved positive
    class (else class 1); or an evaluate run's metrics.json, of its own positive class, checked as `evaluate` checks
    it (the same model and pipeline call: `operating_points.read_operating_point`)."""
    from ..evaluation import pipeline_call_settings, saved_positive_class
    from ..metrics import resolve_positive_label
    from ..operating_points import check_decision_rule, given_operating_point, recorded_positive_class

    if args.threshold is None:
        return None
    threshold = args.threshold  # a probability or a file, checked as the flags were parsed
    check_decision_rule(threshold, None)  # and here, for callers building the namespace themselves
    names = list(pipeline.class_names)
    reads_file = isinstance(threshold, (str, os.PathLike))
    positive = recorded_positive_class(threshold, names) if reads_file else saved_positive_class(pipeline)
    if reads_file and args.positive_class not in (None, positive):
        raise ValueError(f"--positive_class {args.positive_class}: {threshold} chose its threshold for {positive}")
    label = resolve_positive_label(positive, names, len(names)) if len(names) == 2 else None
    settings = pipeline_call_settings(pipeline, prediction_call_kwargs(pipeline, args.pipeline_kwargs, args.seed))
    point = given_operating_point(threshold, None, names, label, model_sha256, settings)
    return {**point, "positive_class": names[label]}


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """`--input` and how it is read (`--window`, `--split`, `--image_column`, `--label_column`): the flags
    [`model_and_inputs`] reads,
    shared by `predict` and `cluster`."""
    parser.add_argument(
        "--input", required=True,
        help="an image folder (recursive; PNG/JPEG/TIFF/... and DICOM: .dcm/.dicom/.dic/.ima or any file with the 'DICM' "
        "header), a .csv with a 'path' column (relative to the CSV; a 'label' column is carried as true_label), a saved "
        "datasets folder, or one image file",
    )  # fmt: skip
    parser.add_argument(
        "--window", nargs="+", default=None, metavar="WINDOW",
        help=f"DICOM input: 1 or 3 windows, one channel each, each a name ({', '.join(WINDOW_NAMES)}; 'file' is the "
        "file's own WindowCenter/Width, 'full' its whole stored range) or a pair 'CENTER WIDTH' in the files' modality "
        "values, HU for CT (--window 40 80); overrides the windows saved with the model (None: those; the windows "
        "read through are recorded with the output)",
    )  # fmt: skip
    parser.add_argument("--split", default="test", help="the split to read when --input is a saved DatasetDict")
    add_column_args(parser)  # the label column's names are carried as true_label


def input_split(args: argparse.Namespace, announce: bool = True) -> dict:
    """For the record of a run over a saved datasets folder (`--input`): the `dataset_fingerprint` of the rows read
    (`datasets`' own, which `save_to_disk` keeps and saving other rows changes: QA, a rerun over a split saved again
    with other images carried the earlier rows' predictions to the new rows' ids and labels), and a DatasetDict's
    `{"split": --split}`, said when `announce`; `{}` for other inputs."""
    from ..data.hf_datasets import is_saved_dataset
    from .inputs import saved_split

    source = Path(args.input)
    if not (source.is_dir() and is_saved_dataset(source)):
        return {}
    recorded = {"dataset_fingerprint": saved_split(source, args.split)._fingerprint}
    if (source / "dataset_dict.json").is_file():
        if announce:
            print(f"{args.input}: the {args.split!r} split of a saved DatasetDict (--split chooses another)")
        recorded["split"] = args.split
    return recorded


class ModelInputs(NamedTuple):
    """What [`model_and_inputs`] found: the model's local folder, the `--window` windows (None: not given), the
    DICOM reading the inputs were listed with, and the inputs."""

    model_dir: str
    windows: Optional[tuple]
    medical: Any
    inputs: list[PredictionInput]


def model_and_inputs(args: argparse.Namespace, command: str = "predict") -> ModelInputs:
    """`--model_dir` (a folder or a Hub id, read from its snapshot: the saved windows come from there too) and the
    inputs of `--input`, listed to be read as the model reads (its saved preprocessing, `--window` overriding its
    windows); every flag checked before the model is loaded."""
    from ..hub import download

    windows = parse_windows(args.window) if args.window is not None else None
    check_input_exists(args.input)
    model_dir = download(args.model_dir)
    _check_pipeline_folder(model_dir, args.model_dir, command)
    saved = read_saved_preprocessing(model_dir)
    medical = saved.medical_or_default
    if windows is not None:
        medical = replace(medical, windows=windows)
        medical.check_replaces(saved.medical_or_default, saved.num_channels, "--window", args.model_dir)
        _warn_other_windows(medical, saved.medical_or_default, args.model_dir)
    inputs = list_inputs(
        args.input, split=args.split, image_column=args.image_column, label_column=args.label_column, medical=medical
    )
    check_inputs(inputs)
    if windows is not None and all(item.dicom_file is None for item in inputs):
        warnings.warn(
            f"--window {' '.join(args.window)}: none of the {len(inputs)} inputs is a DICOM file, and windows apply to "
            "DICOM files only: they change nothing here",
            UserWarning,
            stacklevel=2,
        )
    return ModelInputs(model_dir, windows, medical, inputs)


def _summary_line(summary: PredictionSummary, retry_errors: bool) -> str:
    """What `predict` did: rows predicted now and before; the errors file's rows, new, tried again or skipped."""
    accounted = summary.new_unreadable + summary.failed_again + summary.skipped_unreadable
    unreadable = [f"{summary.new_unreadable} new"]
    if retry_errors:
        unreadable.append(f"{summary.failed_again} tried again and still unreadable")
    if summary.skipped_unreadable:
        unreadable.append(f"{summary.skipped_unreadable} listed before, skipped")
    if summary.unreadable > accounted:  # a removed file's, or another output's in a shared errors file
        unreadable.append(f"{summary.unreadable - accounted} of files not in this input")
    line = (
        f"{summary.output}: {summary.rows} rows ({summary.predicted} inputs predicted now on {summary.processes} "
        f"process(es), {summary.predicted_before} predicted before); {summary.unreadable} unreadable "
        f"({', '.join(unreadable)}) -> {summary.errors}"
    )
    if retry_errors:
        now_predicted = summary.retried - summary.failed_again
        line += f"; {summary.retried} earlier errors tried again ({now_predicted} now predicted)"
    if summary.refreshed:
        line += (f"; {summary.refreshed} rows predicted before took the input's {', '.join(summary.refreshed_columns)} "
                 "as it is now (edited since)")  # fmt: skip
    return line


def _note_ratio_direction(pipeline: Any, output: Any) -> None:
    """Which way the binary Score-SDE ratio column points, and how its positive class was chosen."""
    from ..pipelines import ScoreSDEClassifierPipeline

    if not isinstance(pipeline, ScoreSDEClassifierPipeline) or len(pipeline.class_names) != 2:
        return
    chosen = "" if pipeline.positive_class is not None else (
        " (its positive class is class 1 of the model's class names, not set at training: "
        "`pipe.set_positive_class(name)` then `save_pretrained` states it)"
    )  # fmt: skip
    print(f"{output}: log_likelihood_ratio = {_ratio_direction(pipeline)}{chosen}")


@contextmanager
def loading_progress_bars(shown: bool) -> Iterator[None]:
    """diffusers' and transformers' own progress bars (loading a pipeline's components; an RC-DiT's encoder's
    "Loading weights": QA, shown under --no_progress_bar) shown or not while the block runs, their settings restored
    after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    were_shown = [library.is_progress_bar_enabled() for library in libraries]
    if not shown:
        for library in libraries:
            library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_shown in zip(libraries, were_shown):
            (library.enable_progress_bar if was_shown else library.disable_progress_bar)()


def _check_pipeline_folder(model_dir: str, given: str, command: str = "predict") -> None:
    """A component of a pipeline (`unet/`: a diffusers `config.json`, `model_index.json` above it), a diffusers model
    saved alone and a transformers export (`config.json`, no `model_index.json`) are named as such, with where to
    turn."""
    from ..pipelines.pipeline_utils import diffusers_model_class, lone_model_hint, pipeline_of_component

    folder = Path(model_dir)
    parent = pipeline_of_component(folder)
    if parent is not None:
        raise ValueError(
            f"--model_dir {given}: a component of a diffusers pipeline, not one; pass the pipeline folder {parent}"
        )
    if (folder / "model_index.json").is_file():
        return
    if diffusers_model_class(folder):
        raise ValueError(f"--model_dir {given}: {lone_model_hint(folder)}")
    if (folder / "config.json").is_file():
        raise ValueError(
            f"--model_dir {given}: a transformers model folder (config.json); {command} reads a pipeline folder "
            "(model_index.json): the one it was exported from, or classify with transformers' pipeline() and "
            "pipeline_class=DiffusionClassifierImageClassificationPipeline"
        )


def read_saved_preprocessing(model_dir: str | os.PathLike) -> Any:
    """The preprocessing contract saved in a pipeline folder's `model_index.json` (a Hub repo: its snapshot, from
    `hub.download`), read without loading the model; for a folder saved before the contract, the one it loads with."""
    from ..data import ImagePreprocessing
    from ..pipelines.pipeline_utils import LEGACY_PREPROCESSING, read_model_index

    return ImagePreprocessing.from_dict(read_model_index(str(model_dir)).get("preprocessing", LEGACY_PREPROCESSING))


def _warn_other_windows(given: Any, trained: Any, model: str) -> None:
    """`--window` windows other than the model's (presets compared as the windows they name; merely reordered ones
    are warned about by `check_replaces`): the model learnt its classes through its own, and its scores through
    others may not hold (QA: one file read through 'full' instead of its own window went from benign at 0.99 to
    malignant at 1.0)."""
    from ..data.windows import named_windows

    if sorted(map(repr, named_windows(given.windows))) == sorted(map(repr, named_windows(trained.windows))):
        return
    saved = trained.to_dict()["windows"]
    own = " (each file's own)" if saved == ["file"] else ""
    warnings.warn(
        f"--window {given.to_dict()['windows']}: {model} was saved with the windows {saved}{own}; its scores through "
        "other windows may not hold (leave --window out to read files as in training)",
        UserWarning,
        stacklevel=3,
    )

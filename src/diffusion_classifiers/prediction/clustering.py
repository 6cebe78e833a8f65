"""Grouping many unlabeled files without labels: [`cluster_files`] and the `diffusion-classifiers cluster` command
([`add_cluster_args`], [`run_cluster`]).

A trained U-Net (its (block, timestep) features) or an RC-DiT (its representation) gives every image a feature; on a
random sample of the files, the feature, its normalisation and the number of clusters are chosen without labels
(`probing.select_clustering_without_labels`); k-means fitted on (a sample of) the chosen features then groups every
file (`probing.KMeansGrouping`). Written: `clusters.csv` (each image's cluster and its distance to the cluster's
centre), `clusters.errors.csv` (files that could not be read), `metrics.json` (every choice and its scores, the cluster
sizes; with true labels in the input, how well the clusters follow them), `grouping.safetensors` (the fitted
normalisation and centres) and `cluster_examples_<n>.png` (the images nearest each centre, to name the clusters by
eye). [`assign_files`] (`cluster --assign_to`) puts other files into an earlier run's clusters by its grouping.

Only the standard library is imported at module level (see the package docstring).
"""

from __future__ import annotations

import argparse
import json
import numbers
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

from ..progress_bars import bar_visibility
from .inputs import PredictionInput
from .runner import add_input_args, input_split, loading_progress_bars, model_and_inputs, read_checked

__all__ = [
    "CLUSTERS_NAME", "FeatureSource", "GROUPING_NAME", "add_cluster_args", "assign_files", "cluster_files",
    "feature_source", "read_grouping", "run_cluster",
]

CLUSTERS_NAME = "clusters.csv"
# The columns clusters.csv holds whatever the input: an input's columns of these names are refused (QA: a
# clusters.csv given back as input was written with two `cluster` columns, which pandas read as the old ones).
WRITTEN_COLUMNS = ("path", "frame", "true_label", "cluster", "distance")
CLUSTER_ERRORS_NAME = "clusters.errors.csv"
EXAMPLES_NAME = "cluster_examples_{page}.png"
GROUPING_NAME = "grouping.safetensors"  # the fitted k-means and normalisation: `cluster --assign_to` reads it
# Clusters per examples figure (one column each): beyond this the figure's tiles get too small to read.
CLUSTERS_PER_FIGURE = 16
# The features are compared, and K chosen, on a random sample of this many files: every candidate costs k-means fits.
DEFAULT_SELECTION_IMAGES = 2000
# k-means is fitted on at most this many images' features, then groups every image: 10 restarts over hundreds of
# thousands of rows would take hours on a CPU, and the centres of a large random sample barely move.
DEFAULT_FIT_IMAGES = 20000


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `diffusion-classifiers cluster` (read by [`run_cluster`]); only the standard library is used."""
    from ..data.arguments import seed_argument

    parser.add_argument(
        "--model_dir", required=True,
        help="a trained model whose features group the images: a U-Net (the output folder of "
        "examples/unet_features_train.py, or a probe's pipeline/) or an RC-DiT pipeline (its representation); a "
        "folder or a Hub repo id",
    )  # fmt: skip
    add_input_args(parser)
    parser.add_argument(
        "--assign_to", default=None,
        help="the output folder of an earlier cluster run: put the inputs into its clusters (its feature, "
        "normalisation and k-means centres, the same model; nothing chosen or fitted again), e.g. next month's images "
        "into last season's groups; without --num_clusters and the other choices",
    )  # fmt: skip
    parser.add_argument(
        "--num_clusters", type=int, default=None,
        help="K, the number of clusters (required without --assign_to); the features and normalisations are compared "
        "at this K (the number of "
        "classes, when it is known)",
    )  # fmt: skip
    parser.add_argument(
        "--candidate_num_clusters", type=int, nargs="+", default=None,
        help="choose K among these by the silhouette of the chosen features (None: --num_clusters)",
    )  # fmt: skip
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=None,
        help="U-Net: the timesteps whose features are compared (None: the probe's defaults)",
    )  # fmt: skip
    parser.add_argument(
        "--pool", default=None, choices=["mean", "2x2"], help="U-Net: the features' spatial pooling; mean if not given"
    )
    parser.add_argument(
        "--normalizations", nargs="+", default=None,
        help="the spaces k-means may run in, chosen without labels: of standardize, l2, pca_whiten and none (None: "
        "the first three, probing.NORMALIZATIONS)",
    )  # fmt: skip
    parser.add_argument(
        "--selection_images", type=int, default=None,
        help="the features, normalisation and K are chosen on a random sample of this many files (at least 2 x K); "
        f"{DEFAULT_SELECTION_IMAGES} if not given",
    )  # fmt: skip
    parser.add_argument(
        "--fit_images", type=int, default=None,
        help="k-means is fitted on at most this many images (a random sample), then groups them all; "
        f"{DEFAULT_FIT_IMAGES} if not given",
    )  # fmt: skip
    parser.add_argument(
        "--examples_per_cluster", type=int, default=8,
        help="images shown per cluster in cluster_examples_<n>.png (those nearest its centre)",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--seed", type=seed_argument, default=None,
        help="seed of the samples, the feature noise and k-means; 0 if not given",
    )
    parser.add_argument("--output_dir", default="outputs/cluster", help=f"where {CLUSTERS_NAME}, metrics.json, PNGs go")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace an earlier run's files there")
    parser.add_argument("--no_progress_bar", action="store_true", help="no tqdm bar (a log of nohup or cron)")


def run_cluster(args: argparse.Namespace) -> dict:
    """`diffusion-classifiers cluster`: every flag checked and the inputs listed before the model is loaded."""
    from ..pipelines import DiffusionClassifierPipeline
    from ..validation import check_no_earlier_report, check_output_outside_data, typed_command

    _check_assign_flags(args)
    check_no_earlier_report(args.output_dir, args.overwrite_output_dir)
    check_output_outside_data(args.output_dir, args.input, "--input")
    names = ClusterRequest._fields
    request = None if args.assign_to else ClusterRequest(**{name: getattr(args, name) for name in names}).checked(
        flag="--"
    )  # fmt: skip
    if args.assign_to:
        read_grouping(args.assign_to)  # before any model or image is read
    model_dir, _, medical, inputs = model_and_inputs(args, "cluster")
    if request is not None:
        request.checked(len(inputs), "--", f"--input {args.input}")
    _check_inputs_for_output(inputs, args.output_dir)
    with loading_progress_bars(shown=not args.no_progress_bar):
        pipeline = DiffusionClassifierPipeline.from_pretrained(model_dir)
    features = None if args.assign_to else feature_source(
        pipeline, args.timesteps, args.pool, args.batch_size, args.seed, args.model_dir
    )
    from .outputs import windows_json

    # the model's sha256 is `cluster_files`' record of the folder it was loaded from (`_model_record`)
    run_info = {
        "command": typed_command(args), "model_dir": str(args.model_dir),
        "input": str(Path(args.input).resolve()),
        "windows": windows_json(medical.windows),  # those read through: --window's, else the model's
        **input_split(args),  # QA: a DatasetDict's test split was clustered without a word
    }  # fmt: skip
    shared = dict(run_info=run_info, overwrite=args.overwrite_output_dir, progress_bar=not args.no_progress_bar)
    if args.assign_to:
        metrics = assign_files(pipeline, inputs, args.output_dir, args.assign_to, args.examples_per_cluster,
                               args.batch_size, **shared)  # fmt: skip
    else:
        metrics = cluster_files(
            pipeline, inputs, args.output_dir, features=features, seed=args.seed, **shared, **request._asdict()
        )
    print(_summary_line(metrics, args.output_dir))
    return metrics


# The choices a run makes (and `--assign_to` reads from the earlier run), unless given
CHOICE_DEFAULTS = {
    "pool": "mean", "selection_images": DEFAULT_SELECTION_IMAGES, "fit_images": DEFAULT_FIT_IMAGES, "seed": 0
}


def _check_assign_flags(args: argparse.Namespace) -> None:
    """`--num_clusters` without `--assign_to` (the choices not given set to `CHOICE_DEFAULTS`); with it, none of the
    choices it reads from the earlier run (review: `--seed 9 --fit_images 5` were accepted, recorded and unused)."""
    if not args.assign_to:
        if args.num_clusters is None:
            raise ValueError("--num_clusters: expected K, the number of clusters (or --assign_to an earlier run's)")
        for name, value in CHOICE_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        return
    _check_not_the_earlier_folder(args.output_dir, args.assign_to)
    choices = ("num_clusters", "candidate_num_clusters", "normalizations", "timesteps", *CHOICE_DEFAULTS)
    given = [f"--{name}" for name in choices if getattr(args, name) is not None]
    if given:
        raise ValueError(
            f"--assign_to {args.assign_to}: takes the earlier run's feature, normalisation and clusters; expected "
            f"none of {', '.join(given)}"
        )


class ClusterRequest(NamedTuple):
    """What [`cluster_files`] is asked: the K the features are compared at, the K to choose from, the normalisations,
    and the sizes of its samples, figures and batches."""

    num_clusters: int
    candidate_num_clusters: Optional[Sequence[int]] = None
    normalizations: Optional[Sequence[str]] = None
    selection_images: int = DEFAULT_SELECTION_IMAGES
    fit_images: int = DEFAULT_FIT_IMAGES
    examples_per_cluster: int = 8
    batch_size: int = 64

    def checked(self, num_inputs: Optional[int] = None, flag: str = "", input_name: str = "inputs") -> "ClusterRequest":
        """The request with its normalisations resolved (default `probing.NORMALIZATIONS`); a bad value is refused
        naming `flag` + the argument (`"--"` for the command's flags), and with `num_inputs`, too few inputs for K."""
        from ..probing.protocols import NORMALIZATIONS, check_normalization, checked_num_clusters

        normalizations = list(NORMALIZATIONS if self.normalizations is None else self.normalizations)
        for name in normalizations:
            check_normalization(name, f"{flag}normalizations")
        if not normalizations or len(set(normalizations)) != len(normalizations):
            raise ValueError(f"{flag}normalizations: expected distinct names, got {normalizations}")
        for name in ("examples_per_cluster", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag}{name}: expected an integer >= 1, got {getattr(self, name)}")
        is_integer = isinstance(self.num_clusters, numbers.Integral) and not isinstance(self.num_clusters, bool)
        if not is_integer or self.num_clusters < 2:
            raise ValueError(
                f"{flag}num_clusters: expected K >= 2 (one cluster groups nothing), got {self.num_clusters!r}"
            )
        candidates = [int(k) for k in checked_num_clusters(self.candidate_num_clusters, self.num_clusters)]
        if min(candidates) < 2:
            raise ValueError(f"{flag}candidate_num_clusters: expected every K >= 2, got {self.candidate_num_clusters}")
        largest = max(self.num_clusters, *candidates)
        if num_inputs is not None and num_inputs < 2 * largest:
            raise ValueError(
                f"{input_name}: {num_inputs} files, expected at least 2 x K = {2 * largest} to choose the features by "
                "(k-means is fitted on halves of them): ask for fewer clusters or group more files"
            )
        if self.selection_images < 2 * largest:
            raise ValueError(
                f"{flag}selection_images {self.selection_images}: expected at least 2 x K = {2 * largest} (the "
                "features are compared by k-means fitted on halves of the sample): raise it, or ask for fewer clusters"
            )
        if self.fit_images < largest:
            raise ValueError(f"{flag}fit_images {self.fit_images}: expected at least K = {largest} images to fit on")
        # Python ints: a numpy array has no truth value (`candidates or []`), and numpy numbers no JSON
        given = None if self.candidate_num_clusters is None else candidates
        return self._replace(num_clusters=int(self.num_clusters), candidate_num_clusters=given,
                             normalizations=normalizations)  # fmt: skip


class FeatureSource:
    """The features a model groups images by: `candidates(images)` every feature the choice compares, keyed
    (`(block, timestep)` for a U-Net, `("representation",)` for an RC-DiT), and `chosen(images, key)` the one chosen;
    `settings`, what else the features depend on (a U-Net's pooling and noise seed), recorded to extract them again."""

    def __init__(
        self, candidates: Callable[[list], dict], chosen: Callable[[list, tuple], Any], description: str,
        settings: Optional[dict] = None,
    ):  # fmt: skip
        self.candidates, self.chosen, self.description = candidates, chosen, description
        self.settings = settings or {}


def feature_source(
    pipeline: Any, timesteps: Optional[Sequence[int]] = None, pool: str = "mean", batch_size: int = 64,
    seed: int = 0, model_name: Optional[str] = None,
) -> FeatureSource:
    """The [`FeatureSource`] of a U-Net-feature pipeline (every block at `timesteps`, default the probe's, `pool`ed,
    noise drawn with `seed`) or of an RC-DiT (its representation, as `pipe.encode` gives it); another pipeline is
    refused (naming `model_name`, the folder it was loaded from, when given)."""
    from ..features import check_timesteps
    from ..models import DEFAULT_TIMESTEPS
    from ..pipelines import RepresentationConditionedDiTPipeline, UNetFeatureClassifierPipeline

    if isinstance(pipeline, UNetFeatureClassifierPipeline):
        timesteps = check_timesteps(
            list(DEFAULT_TIMESTEPS) if timesteps is None else timesteps, pipeline.scheduler.config.num_train_timesteps
        )
        blocks = pipeline.feature_extractor.block_names

        def extract(images: list, blocks: list, timesteps: list) -> dict:
            return pipeline.extract_features(
                images, blocks=blocks, timesteps=timesteps, pool=pool, noise_seed=seed, batch_size=batch_size
            )

        return FeatureSource(
            lambda images: extract(images, blocks, timesteps),
            lambda images, key: extract(images, [key[0]], [key[1]])[key],
            f"U-Net features ({len(blocks)} blocks x timesteps {timesteps}, {pool} pooled)",
            {"pool": pool, "noise_seed": seed},
        )
    if isinstance(pipeline, RepresentationConditionedDiTPipeline):
        if timesteps is not None:
            raise ValueError("--timesteps: a U-Net's option; an RC-DiT is grouped by its representation (none)")
        encode = lambda images: pipeline.encode(images, batch_size=batch_size)  # noqa: E731
        return FeatureSource(lambda images: {("representation",): encode(images)}, lambda images, key: encode(images),
                             "the RC-DiT's representation")  # fmt: skip
    named = "pipeline" if model_name is None else f"--model_dir {model_name}"
    raise ValueError(
        f"{named}: a {type(pipeline).__name__}, which has no image features to group by; cluster takes a U-Net "
        "(examples/unet_features_train.py) or an RC-DiT (examples/rc_dit_train.py)"
    )


def cluster_files(
    pipeline: Any,
    inputs: Sequence[PredictionInput],
    output_dir: str | os.PathLike,
    num_clusters: int,
    candidate_num_clusters: Optional[Sequence[int]] = None,
    features: Optional[FeatureSource] = None,
    normalizations: Optional[Sequence[str]] = None,
    selection_images: int = DEFAULT_SELECTION_IMAGES,
    fit_images: int = DEFAULT_FIT_IMAGES,
    examples_per_cluster: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    run_info: Optional[dict] = None,
    progress_bar: bool = True,
    overwrite: bool = False,
) -> dict:
    r"""
    Group `inputs` (from [`list_inputs`]) without labels and write the result into `output_dir`.

    1. On a random sample of `selection_images` inputs, the feature (of `features.candidates`; default: every block
       of a U-Net at the probe's timesteps, or an RC-DiT's representation, see [`feature_source`]), its
       normalisation (of `normalizations`, default `probing.NORMALIZATIONS`) and K (of `candidate_num_clusters`,
       else `num_clusters`) are chosen by `probing.select_clustering_without_labels`: the most stable k-means
       partition at `num_clusters`, then K by silhouette; scored on at most `selection_images` of the sample's
       images (a seeded subset when its multi-frame files give more).
    2. The chosen feature of every input is extracted in batches of `batch_size` (a multi-frame DICOM gives one row per
       frame); k-means, with its normalisation, is fitted on a random `fit_images` of them
       (`probing.KMeansGrouping`, `seed`) and groups them all.

    Each written whole: `clusters.csv` (`path`, `frame`, an input CSV's other columns, `true_label` when the inputs
    carry labels, `cluster`, `distance`: to the cluster's centre in the normalised space; rows in input order),
    `clusters.errors.csv` (`path`, `reason` of each file that could not be read), `metrics.json` (`run_info`, the
    choice and its scores, the cluster sizes; with true labels, `with_true_labels`: NMI, ARI, Hungarian accuracy and its
    chance level, purity, on the rows that have one, `num_labelled` of `num_rows`; the labels are read only to score),
    `grouping.safetensors` (`KMeansGrouping.save`: the fitted normalisation and centres, with the feature and the
    model's sha256, which `assign_files` reads) and `cluster_examples_<n>.png` (per cluster, the `examples_per_cluster`
    images nearest its centre, `CLUSTERS_PER_FIGURE` clusters a figure).

    `output_dir` must not hold an earlier run's `metrics.json` unless `overwrite`: the earlier run's files are then set
    aside before any new file is written (moved back if this run fails: `replaced_reports`), and `metrics.json` is
    written last, so a folder with a `metrics.json` holds one run's files. `run_info` (the CLI's: its
    command, the windows) is recorded with the pipeline's folder and the sha256 of its files.

    Returns:
        `dict`: what `metrics.json` holds.

    Raises:
        `ValueError`: a bad argument, or fewer than 2 x K inputs (or readable sampled images), before any feature is
        extracted for the whole input.
    """
    import numpy as np

    from ..atomic_files import write_json_atomically
    from ..data.image_files import first_frames_noted
    from ..replaced_reports import replacing_earlier_report
    from ..validation import check_no_earlier_report, check_seed

    check_no_earlier_report(output_dir, overwrite, "output_dir")
    check_seed(seed, "seed")
    request = ClusterRequest(
        num_clusters, candidate_num_clusters, normalizations, selection_images, fit_images, examples_per_cluster,
        batch_size,
    ).checked(len(inputs))  # fmt: skip
    _check_inputs_for_output(inputs, output_dir)
    features = feature_source(pipeline, batch_size=batch_size, seed=seed) if features is None else features
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with pipeline.progress_bars_off(), first_frames_noted(stacklevel=2):
        selection = _choose_without_labels(pipeline, inputs, features, request, seed, progress_bar)
        key, errors, rows = tuple(selection["pair"]), [], []
        chosen = _extracted(
            pipeline, inputs, batch_size, lambda images: {key: features.chosen(images, key)}, errors, rows,
            progress_bar,
        ).get(key)  # fmt: skip
    _check_enough_read(rows, errors, len(inputs), selection["num_clusters"])
    grouping, fitted_on = _grouping(chosen, rows, selection, fit_images, seed)
    clusters, distances = grouping.assign(chosen)
    # the earlier run's files are set aside, metrics.json goes last: a folder holding one holds one run's files, and a
    # run that fails keeps the earlier one
    pages = [EXAMPLES_NAME.format(page="*")]  # an earlier run's, and as many as this one writes
    written = [CLUSTERS_NAME, CLUSTER_ERRORS_NAME, GROUPING_NAME]
    with replacing_earlier_report(output_dir, files=written, patterns=pages):
        _write_clusters(output_dir, rows, clusters, distances, errors)
        figures = _write_examples(
            output_dir, pipeline, rows, clusters, distances, selection["num_clusters"], examples_per_cluster
        )
        metrics = _cluster_record(pipeline, run_info, features, key, selection, inputs, rows, errors, fitted_on)
        _save_grouping(output_dir / GROUPING_NAME, grouping, key, features, metrics)
        metrics.update({"cluster_sizes": np.bincount(clusters, minlength=selection["num_clusters"]).tolist()})
        _warn_empty_clusters(metrics["cluster_sizes"])
        metrics.update({"seed": seed, "seconds": round(time.time() - started, 1)})
        metrics["files"] = [*written, *figures]
        metrics = _finished_record(metrics, rows, clusters)
        write_json_atomically(output_dir / "metrics.json", metrics, indent=2)
    return metrics


def _finished_record(metrics: dict, rows: list, clusters: Any) -> dict:
    """`metrics` with the clusters' scores against the rows' true labels where some have one and the software and
    date (`provenance.run_environment`), as JSON reads it."""
    from ..provenance import run_environment

    labels = [item.label for item, _ in rows]
    if any(label is not None for label in labels):
        metrics["with_true_labels"] = _scored_against_labels(labels, clusters)
    return _json_safe({**metrics, "environment": run_environment()})


def _save_grouping(path: Path, grouping: Any, key: tuple, features: FeatureSource, model: dict):
    """The fitted grouping (`KMeansGrouping.save`) with what `assign_files` needs to extract the same feature of other
    images and to refuse another model: the feature's key and settings, the sha256 of the model (`_model_record`) and
    of what its features depend on."""
    metadata = {"feature_key": json.dumps(list(key)), "feature_settings": json.dumps(features.settings),
                "features": features.description, "model_sha256": model.get("model_sha256") or "",
                "features_sha256": model.get("features_sha256") or ""}  # fmt: skip
    grouping.save(path, metadata)


def assign_files(
    pipeline: Any,
    inputs: Sequence[PredictionInput],
    output_dir: str | os.PathLike,
    earlier: str | os.PathLike,
    examples_per_cluster: int = 8,
    batch_size: int = 64,
    run_info: Optional[dict] = None,
    progress_bar: bool = True,
    overwrite: bool = False,
) -> dict:
    r"""
    Put `inputs` into the clusters of an `earlier` [`cluster_files`] run (its output folder), as that run grouped its
    own images: the same feature of a model of the same features (refused otherwise, by the sha256 of what they depend
    on, `hub.features_fingerprint`; a warning where either model was not loaded from a local folder), its
    normalisation and k-means centres read from its `grouping.safetensors`; nothing is chosen or fitted again, so
    cluster 3 is the same group next month
    (re-clustering a grown folder renumbers the clusters). Writes `clusters.csv`, `clusters.errors.csv`,
    `cluster_examples_<n>.png` and `metrics.json` (with `assigned_to`), no grouping; `output_dir` must not be
    `earlier`, nor hold an earlier run's `metrics.json` unless `overwrite` (as `cluster_files`).
    """
    import numpy as np

    from ..atomic_files import write_json_atomically
    from ..data.image_files import first_frames_noted
    from ..replaced_reports import replacing_earlier_report
    from ..validation import check_no_earlier_report

    _check_not_the_earlier_folder(output_dir, earlier)
    check_no_earlier_report(output_dir, overwrite, "output_dir")
    grouping, metadata, key, settings = read_grouping(earlier)
    model = _model_record(pipeline)  # the sha256 of every file of the model: hashed once
    _check_same_features(model, metadata, earlier)
    features = feature_source(pipeline, [key[1]] if "pool" in settings else None, settings.get("pool", "mean"),
                              batch_size, settings.get("noise_seed", 0))  # fmt: skip
    _check_inputs_for_output(inputs, output_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started, errors, rows = time.time(), [], []
    with pipeline.progress_bars_off(), first_frames_noted(stacklevel=2):
        chosen = _extracted(pipeline, inputs, batch_size, lambda images: {key: features.chosen(images, key)}, errors,
                            rows, progress_bar).get(key)  # fmt: skip
    _check_enough_read(rows, errors, len(inputs), 1)
    clusters, distances = grouping.assign(chosen)
    pages = [EXAMPLES_NAME.format(page="*")]
    # an earlier run's grouping set aside too: the folder holds this run's files only (review: a later --assign_to it
    # read another run's clusters)
    written = [CLUSTERS_NAME, CLUSTER_ERRORS_NAME, GROUPING_NAME]
    with replacing_earlier_report(output_dir, files=written, patterns=pages):
        _write_clusters(output_dir, rows, clusters, distances, errors)
        figures = _write_examples(output_dir, pipeline, rows, clusters, distances, grouping.num_clusters,
                                  examples_per_cluster)  # fmt: skip
        metrics = {
            **model, **(run_info or {}), "assigned_to": str(Path(earlier).resolve()),
            "features": metadata["features"], "feature": "/".join(map(str, key)),
            "normalization": grouping.normalization, "num_clusters": grouping.num_clusters,
            "num_inputs": len(inputs), "num_images": len(rows), "num_unreadable": len(errors),
            "cluster_sizes": np.bincount(clusters, minlength=grouping.num_clusters).tolist(),
            "seconds": round(time.time() - started, 1), "files": [CLUSTERS_NAME, CLUSTER_ERRORS_NAME, *figures],
        }  # fmt: skip
        metrics = _finished_record(metrics, rows, clusters)
        write_json_atomically(output_dir / "metrics.json", metrics, indent=2)
    return metrics


def read_grouping(earlier: str | os.PathLike) -> tuple:
    """`(grouping, metadata, feature key, feature settings)` of an earlier `cluster` run's output folder (its
    `grouping.safetensors`), refused by name where it has none, or one this version cannot read."""
    from ..probing.protocols import KMeansGrouping

    path = Path(earlier) / GROUPING_NAME
    if not path.is_file():
        assigned = _assigned_to(earlier)
        hint = f"it assigned to {assigned}: give that one" if assigned else "written since 2026-12-07: cluster again"
        raise ValueError(
            f"assign_to {earlier}: expected the output folder of a `cluster` run, holding {GROUPING_NAME} ({hint})"
        )
    grouping, metadata = KMeansGrouping.load(path)
    try:
        return grouping, metadata, tuple(json.loads(metadata["feature_key"])), json.loads(metadata["feature_settings"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: expected the feature key and settings of a cluster run, got {error!r}") from None


def _assigned_to(folder: str | os.PathLike) -> Optional[str]:
    """The run an `--assign_to` output folder assigned its images to (its metrics.json's), else None."""
    try:
        return json.loads((Path(folder) / "metrics.json").read_text()).get("assigned_to")
    except (OSError, ValueError, AttributeError):
        return None


def _check_not_the_earlier_folder(output_dir: str | os.PathLike, earlier: str | os.PathLike) -> None:
    if Path(output_dir).resolve() == Path(earlier).resolve():
        raise ValueError(f"output_dir {output_dir}: the earlier run's own folder (assign_to); expected another")


def _check_same_features(model: dict, metadata: dict, earlier: str | os.PathLike) -> None:
    """Refuse a model whose features differ from those the earlier run grouped: by the sha256 of what they depend on
    (`hub.features_fingerprint`: a head fitted anew on the same U-Net passes), or for a grouping saved before that was
    recorded, of the model's files (`model` is this one's `_model_record`); warn where either was not loaded from a
    local folder (a Hub id, a pipeline built in code): unchecked (review)."""
    key = "features_sha256" if metadata.get("features_sha256") else "model_sha256"
    recorded, loaded = metadata.get(key), model.get(key)
    what = "of what its features depend on" if key == "features_sha256" else "of its files"
    if not recorded or not loaded:
        warnings.warn(
            f"assign_to {earlier}: the model cannot be checked against the one its clusters group "
            f"({'this' if recorded else 'that'} model was not loaded from a local folder): give the same model",
            UserWarning,
            stacklevel=3,
        )
    elif recorded != loaded:
        which = (
            "its feature extractor, preprocessing and scheduler; another head is fine" if key == "features_sha256"
            else "a grouping saved before 2026-12-07 checks every file of the model, its head too: a new cluster "
            "run records what only the features depend on"
        )  # fmt: skip
        raise ValueError(
            f"assign_to {earlier}: its clusters group the features of a model whose sha256 {what} is {recorded}; "
            f"this model's is {loaded}: give the model the earlier run grouped by ({which})"
        )


def _check_inputs_for_output(inputs: Sequence[PredictionInput], output_dir: str | os.PathLike) -> None:
    """Inputs whose columns clusters.csv writes itself (`WRITTEN_COLUMNS`), or files inside `output_dir` (an earlier
    run's figures), are refused before any image is read."""
    clashing = sorted({name for item in inputs for name in item.columns} & set(WRITTEN_COLUMNS))
    if clashing:
        raise ValueError(
            f"inputs: CSV or dataset column(s) {clashing} are named as columns {CLUSTERS_NAME} holds itself "
            f"({list(WRITTEN_COLUMNS)}); expected other names for the columns it carries (rename them)"
        )
    output = os.path.join(os.path.abspath(output_dir), "")  # by name, no file system call per input
    inside = next((item for item in inputs if item.file and os.path.abspath(item.file).startswith(output)), None)
    if inside is not None:
        raise ValueError(
            f"inputs: {inside.file} is inside output_dir {output_dir}; expected inputs outside it (an earlier run's "
            "example figures would be clustered as images)"
        )


def _choose_without_labels(
    pipeline: Any, inputs: Sequence[PredictionInput], features: FeatureSource, request: ClusterRequest, seed: int,
    progress_bar: bool,
) -> dict:
    """`probing.select_clustering_without_labels` on every candidate feature of a seeded random sample of the inputs
    (their unreadable files are met again, and listed, when every input is read), drawn and read in the order of their
    paths (`_by_path`), so the same files listed in another order give the same choice."""
    import warnings

    import numpy as np
    from tqdm.auto import tqdm

    from ..probing.protocols import select_clustering_without_labels

    rows = np.random.default_rng(seed).choice(len(inputs), min(request.selection_images, len(inputs)), replace=False)
    by_path = _by_path(inputs)
    sample, errors = [inputs[by_path[i]] for i in sorted(rows.tolist())], []
    candidates = _extracted(pipeline, sample, request.batch_size, features.candidates, errors, None, progress_bar,
                            "cluster: a sample's features")  # fmt: skip
    largest = max([request.num_clusters, *(request.candidate_num_clusters or [])])
    readable = len(next(iter(candidates.values()))) if candidates else 0
    if readable < 2 * largest:
        first = f" (first: {errors[0][0]}: {errors[0][1]})" if errors else ""
        raise ValueError(
            f"inputs: {readable} images of the {len(sample)} files sampled to choose the features by could be read"
            f"{first}; expected at least 2 x K = {2 * largest}"
        )
    if progress_bar:
        tqdm.write(
            f"cluster: choosing among {len(candidates)} features x {len(request.normalizations)} normalisations by "
            f"the stability of k-means on {readable} images (k-means fits on halves of them)"
        )
    selection = select_clustering_without_labels(
        candidates, request.candidate_num_clusters, request.num_clusters, seed=seed,
        max_images=request.selection_images, normalizations=request.normalizations,
    )  # fmt: skip
    silhouettes = selection["silhouette_by_num_clusters"]
    if len(silhouettes) > 1 and max(silhouettes.values()) <= 0:
        warnings.warn(
            f"candidate_num_clusters: every K has a silhouette <= 0 ({silhouettes}): the clusters overlap at each, and "
            f"the largest silhouette, here of K = {selection['num_clusters']}, is a weak choice; consider giving K",
            UserWarning,
            stacklevel=3,
        )
    return selection


def _check_enough_read(rows: list, errors: list, num_inputs: int, num_clusters: int) -> None:
    """Refuse fewer readable images than clusters: files the sample read may be gone or unreadable by now."""
    if len(rows) < num_clusters:
        first = f" (first unreadable: {errors[0][0]}: {errors[0][1]})" if errors else ""
        raise ValueError(
            f"inputs: {len(rows)} images of the {num_inputs} files could be read{first}; expected at least K = "
            f"{num_clusters} to group"
        )


def _model_record(pipeline: Any) -> dict:
    """The folder the pipeline was loaded from, the sha256 of its files (`hub.model_fingerprint`) and of what its
    features depend on (`hub.features_fingerprint`), so the grouping can be traced to its model; empty for a pipeline
    built in code."""
    from ..hub import features_fingerprint, model_fingerprint

    folder = getattr(pipeline, "name_or_path", None)
    if not folder or not os.path.isdir(folder):
        return {}
    return {"model_dir": str(folder), "model_sha256": model_fingerprint(folder),
            "features_sha256": features_fingerprint(folder)}  # fmt: skip


def _cluster_record(pipeline, run_info, features, key, selection, inputs, rows, errors, fitted_on) -> dict:
    """What `metrics.json` records of a clustering: the model, the run, the features and their choice, the counts."""
    return {
        **_model_record(pipeline),
        **(run_info or {}),
        "features": features.description,
        "feature": "/".join(map(str, key)),
        "normalization": selection["normalization"],
        "num_clusters": selection["num_clusters"],
        "num_inputs": len(inputs),
        "num_images": len(rows),
        "num_unreadable": len(errors),
        "fitted_on_images": fitted_on,
        "selection": selection,
    }


def _by_path(inputs: Sequence[PredictionInput], frames: Optional[Sequence[int]] = None) -> list[int]:
    """The positions of `inputs` (with their `frames`, one row each) in their listing's order: a folder's and a
    dataset's as listed, a CSV's rows in the order of their paths, as a folder lists them (QA: the same 60 files
    listed in a CSV reversed chose another feature and K, ARI 0.41 between the two)."""
    frames = [0] * len(inputs) if frames is None else frames
    if all(item.listed_in is None for item in inputs):
        return list(range(len(inputs)))
    return sorted(range(len(inputs)), key=lambda i: (Path(inputs[i].path).parts, frames[i]))


def _grouping(chosen: Any, rows: list, selection: dict, fit_images: int, seed: int) -> tuple:
    """`(grouping, fitted_on)`: k-means in the chosen normalisation (`probing.KMeansGrouping`), fitted on a seeded
    random `fit_images` of the rows (all when fewer) in the order of their paths."""
    import numpy as np

    from ..probing.protocols import KMeansGrouping

    order = np.asarray(_by_path([item for item, _ in rows], [frame for _, frame in rows]))
    if len(order) > fit_images:  # the indices drawn first: the rows copied are those fitted only
        order = order[np.random.default_rng(seed + 1).choice(len(order), fit_images, replace=False)]
    fitted = chosen[order]
    return KMeansGrouping(selection["num_clusters"], selection["normalization"], seed).fit(fitted), len(fitted)


def _extracted(
    pipeline: Any, inputs: Sequence[PredictionInput], batch_size: int, extract: Callable[[list], dict],
    errors: list, rows: Optional[list], progress_bar: bool, description: str = "cluster",
) -> dict:
    """`extract` over every readable image of `inputs`, batch by batch, as float32 arrays `{key: [N, D]}`; a file
    that cannot be read is appended to `errors` as `[path, reason]`; each image's `(input, frame)` to `rows`."""
    import torch
    from tqdm.auto import tqdm

    from ..data.preprocessing import preprocessed_as_input

    gathered: dict = {}
    with tqdm(total=len(inputs), desc=description, unit="file", **bar_visibility(progress_bar)) as bar:
        for batch_rows, images in _read_in_batches(pipeline, inputs, batch_size, errors, bar):
            with pipeline.reading_preprocessed_images():  # `read_checked`'s images
                features = extract(preprocessed_as_input(torch.stack(images), pipeline.preprocessing.input_range))
            for name, value in features.items():
                gathered.setdefault(name, _GrowingRows(len(inputs))).append(value.detach().float().cpu().numpy())
            if rows is not None:
                rows += batch_rows
    return {name: rows_of_name.array() for name, rows_of_name in gathered.items()}


class _GrowingRows:
    """Rows appended batch by batch into one float32 array, allocated for `capacity` rows and doubled when full. Kept
    as one small array a batch (4 KB of 64 x 16 features), the batches pinned the allocator's heap between the
    decoding's short-lived buffers: a U-Net's features of 149,430 files grew the process by 1,040 MB, 7 KB a file
    (QA; 40,000 files: +436 MB, against +38 MB written into one array)."""

    def __init__(self, capacity: int):
        self.capacity, self.rows, self.size = max(capacity, 1), None, 0

    def append(self, batch: Any) -> None:
        import numpy as np

        if self.rows is None:
            self.rows = np.empty((max(self.capacity, len(batch)), *batch.shape[1:]), dtype=np.float32)
        if self.size + len(batch) > len(self.rows):  # multi-frame files give more rows than files
            grown = np.empty((max(2 * len(self.rows), self.size + len(batch)), *batch.shape[1:]), dtype=np.float32)
            grown[: self.size] = self.rows[: self.size]
            self.rows = grown
        self.rows[self.size : self.size + len(batch)] = batch
        self.size += len(batch)

    def array(self) -> Any:
        return self.rows[: self.size]


def _read_in_batches(
    pipeline: Any, inputs: Sequence[PredictionInput], batch_size: int, errors: list, bar: Any
) -> Iterator[tuple[list, list]]:
    """`(rows, images)` of about `batch_size` images at a time (a multi-frame file is never split), read and checked as
    `predict` reads them; an unreadable file goes to `errors`."""
    rows, images = [], []
    for item in inputs:
        try:
            read, _ = read_checked(item, pipeline)
        except (ValueError, OSError) as error:
            errors.append([item.path, str(error)])
            read = []
        rows += [(item, frame) for frame in range(len(read))]
        images += read
        bar.update(1)
        if len(images) >= batch_size:
            yield rows, images
            rows, images = [], []
    if images:
        yield rows, images


def _write_clusters(output_dir: Path, rows: list, clusters: Any, distances: Any, errors: list) -> None:
    from .outputs import ERROR_COLUMNS, write_csv

    ids = _DicomIdCells(rows)
    carried = [name for name in dict.fromkeys(name for item, _ in rows for name in item.columns) if name not in ids]
    labelled = any(item.label is not None for item, _ in rows)
    columns = ["path", "frame", *ids.columns, *carried, *(["true_label"] if labelled else []), "cluster", "distance"]
    table = (  # row by row as it is written: a list of every row would double a large folder's memory
        [item.path, frame, *ids(item), *(item.columns.get(name) for name in carried),
         *([item.label] if labelled else []), int(cluster), round(float(distance), 6)]
        for (item, frame), cluster, distance in zip(rows, clusters, distances)
    )  # fmt: skip
    write_csv(output_dir / CLUSTERS_NAME, columns, table)
    write_csv(output_dir / CLUSTER_ERRORS_NAME, ERROR_COLUMNS, errors)


class _DicomIdCells:
    """`predict`'s DICOM id columns of `clusters.csv` (a patient, a study, a breast: QA, clusters could not be
    summarised per patient without a join), where any input is a DICOM file: each row's ids from its file's header,
    an input CSV's cell taking the place of the header's (as `predict` does), read once a file; empty where the file
    can no longer be read."""

    def __init__(self, rows: list):
        from .inputs import DICOM_ID_COLUMNS

        dicom = any(item.dicom_file is not None for item, _ in rows)
        self.columns = list(DICOM_ID_COLUMNS) if dicom else []
        self.last: tuple = (None, [])

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __call__(self, item: PredictionInput) -> list:
        from .inputs import dicom_ids
        from .runner import csv_over_header_ids

        if self.columns and self.last[0] is not item:  # a multi-frame file's rows follow one another
            try:
                ids = dicom_ids(item)
            except (ValueError, OSError):
                ids = dict.fromkeys(self.columns)
            ids.update(csv_over_header_ids({k: v for k, v in item.columns.items() if k in ids}, ids))
            self.last = (item, [ids[name] for name in self.columns])
        return self.last[1]


def _write_examples(
    output_dir: Path, pipeline: Any, rows: list, clusters: Any, distances: Any, num_clusters: int, per_cluster: int
) -> list[str]:
    """`cluster_examples_<n>.png`: a column per cluster (titled with its id and size), its `per_cluster` images
    nearest the centre from the top, read again as the model reads them; returns the file names."""
    import numpy as np
    import torch

    from ..atomic_files import write_atomically
    from ..training.monitoring import image_grid

    sizes = np.bincount(clusters, minlength=num_clusters)
    names = []
    for page, first in enumerate(range(0, len(sizes), CLUSTERS_PER_FIGURE)):
        members = [np.flatnonzero(clusters == c) for c in range(first, min(first + CLUSTERS_PER_FIGURE, len(sizes)))]
        nearest = [rows_of[np.argsort(distances[rows_of], kind="stable")[:per_cluster]] for rows_of in members]
        tiles = [[_example_tile(pipeline, *rows[i]) for i in chosen] for chosen in nearest]
        tiles = [[tile for tile in column if tile is not None] for column in tiles]
        shown = [tile for column in tiles for tile in column]
        if not shown:  # every file of these clusters gone since it was grouped
            continue
        blank = torch.ones_like(shown[0])
        grid = torch.stack([
            column[r] if r < len(column) else blank for r in range(per_cluster) for column in tiles
        ])  # row by row: the r-th nearest image of every cluster  # fmt: skip
        titles = [f"{first + c} ({sizes[first + c]})" for c in range(len(tiles))]
        name = EXAMPLES_NAME.format(page=page + 1)
        figure = image_grid(grid, rows=per_cluster, column_titles=titles)
        write_atomically(output_dir / name, lambda handle: figure.save(handle, format="PNG"), mode="wb")
        names.append(name)
    return names


def _example_tile(pipeline: Any, item: PredictionInput, frame: int) -> Any:
    """The image as the model sees it, in [0, 1], one or three channels (the first channel of other counts), with a
    white pixel right and below (the tiles of a grid abut); None for a file that can no longer be read."""
    import torch.nn.functional as F

    try:
        pixels = read_checked(item, pipeline)[0][frame].float()
    except (ValueError, OSError, IndexError):  # changed since it was grouped: its place in the figure left blank
        return None
    pixels = pixels if pixels.shape[0] in (1, 3) else pixels[:1]
    return F.pad((pixels + 1) / 2, (0, 1, 0, 1), value=1.0)


def _scored_against_labels(labels: list, clusters: Any) -> dict:
    """How well the clusters follow the inputs' true labels (read only here, after every choice), on the rows that
    have one (QA: a CSV labelling some of its images was not scored, without a word); `num_labelled` of
    `num_rows`."""
    import numpy as np

    from ..metrics import clustering_metrics

    labelled = [row for row, label in enumerate(labels) if label is not None]
    names = sorted({labels[row] for row in labelled})
    index = {name: i for i, name in enumerate(names)}
    true = [index[labels[row]] for row in labelled]
    scores = clustering_metrics(true, np.asarray(clusters)[labelled], len(names))
    keep = ("nmi", "ari", "accuracy", "accuracy_by_chance", "macro_f1", "purity")
    counts = {"num_labelled": len(labelled), "num_rows": len(labels)}
    return {"num_classes": len(names), **counts, **{name: float(scores[name]) for name in keep}}


def _json_safe(value: Any) -> Any:
    """`value` as JSON reads it back: numpy numbers as Python's, tuples as lists, integer keys as strings."""
    return json.loads(json.dumps(value, default=_plain_number))


def _plain_number(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy (or torch) scalar
        return value.item()
    raise TypeError(f"metrics.json: expected JSON values, got {value!r} ({type(value).__name__})")


def _warn_empty_clusters(sizes: list) -> None:
    """Say so where k-means left clusters empty (QA: a folder of 3 distinct images stored 4 times each, K = 4, read
    "4 clusters (0-4 images each)" after scikit-learn's own warning)."""
    empty = [cluster for cluster, size in enumerate(sizes) if size == 0]
    if empty:
        warnings.warn(
            f"cluster: {len(empty)} of the {len(sizes)} clusters hold no image (clusters {empty}): the images have "
            "fewer distinct features than K (duplicates, or constant images); ask for fewer clusters",
            UserWarning,
            stacklevel=3,
        )


def _labelled_share(scored: dict) -> str:
    """", the 50 of 240 rows labelled" where only some rows carry a true label (a record before 2026-12-07: all)."""
    labelled, rows = scored.get("num_labelled"), scored.get("num_rows")
    return f", the {labelled} of {rows} rows labelled" if labelled is not None and labelled < rows else ""


def _summary_line(metrics: dict, output_dir: str) -> str:
    sizes = metrics["cluster_sizes"]
    line = (
        f"{metrics['num_images']} images of {metrics['num_inputs']} files in {metrics['num_clusters']} clusters "
        f"({min(sizes)}-{max(sizes)} images each) by {metrics['feature']} ({metrics['normalization']}), "
        + (f"the clusters of {metrics['assigned_to']}" if "assigned_to" in metrics else "chosen without labels")
        + f"; {metrics['num_unreadable']} unreadable -> {output_dir}/{CLUSTERS_NAME}, {CLUSTER_ERRORS_NAME}, "
        f"metrics.json, {', '.join(metrics['files'][2:])}"
    )
    scored = metrics.get("with_true_labels")
    if scored:
        line += (
            f"\nagainst the inputs' true labels ({scored['num_classes']} classes{_labelled_share(scored)}): NMI "
            f"{scored['nmi']:.3f}, Hungarian "
            f"accuracy {100 * scored['accuracy']:.1f}% (by chance {100 * scored['accuracy_by_chance']:.1f}%), purity "
            f"{100 * scored['purity']:.1f}%"
        )
    return line

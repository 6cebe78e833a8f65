"""`diffusion-classifiers` console script."""

import argparse
import errno
import functools
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

__all__ = ["main"]

# pool "2x2": on the digits demo's val split it beats the global mean in 36 of 42 (block, t) probes and ties 4 (mean
# val accuracy 96.5% vs 93.5%); it keeps the layout that label-free k-means needs (benchmarks/RESULTS.md, "k-means
# without labels")
DEMO_DEFAULTS = {"image_size": 16, "unet_preset": "small", "max_train_steps": 600, "pool": "2x2"}
# Diffusion steps of the demo's DDPM scheduler: `--timesteps` must lie in [0, DEMO_NUM_TRAIN_TIMESTEPS).
DEMO_NUM_TRAIN_TIMESTEPS = 1000
# The linear probes' inverse regularisation strength when --C is not given: scikit-learn's default.
DEFAULT_C = [1.0]
# The heads fit-head fits on an RC-DiT's representation.
HEAD_KINDS = ("linear_probe", "prototypes")
# The hidden folder, named by the process, a new `pipeline/` is saved whole into before it is moved in
STAGED_PIPELINE_PREFIX = ".pipeline.partial-"
# What probe and evaluate read when --dataset is not given.
DEMO_DATASET_HELP = (
    "scikit-learn's digits, the demo's data, with a note; refused for a model of DICOM windows or a bit depth"
)


COMMANDS = {
    "demo": "train a small DDPM U-Net without labels, probe every (block, timestep), k-means, report",
    "evaluate": "score a saved pipeline or transformers model on a labeled split: metrics.json, report.md, plots",
    "probe": "probe every (block, timestep) of a trained U-Net on a labeled dataset, choose on val, k-means, report: "
    "a fitted classifier pipeline",
    "fit-head": "fit a head on a trained RC-DiT's representation from labelled data (a linear probe, or prototypes "
    "from a few labels per class), chosen on val, scored on test: a classifier pipeline",
    "predict": "classify an image / DICOM folder, a CSV of paths or a datasets folder with a saved pipeline: "
    "predictions.csv or .parquet and its .errors.csv; resumable; accelerate launch splits it across processes",
    "aggregate": "gather predict's rows per scan, series or patient (DICOM ids): positive if any slice is (max rule), "
    "or mean probabilities; with true labels, the metrics per group",
    "cluster": "group an unlabeled image / DICOM folder or CSV of paths by a trained U-Net's or RC-DiT's features, "
    "every choice made without labels: clusters.csv, metrics.json and each cluster's nearest images as PNGs",
    "compare": "compare two models image by image on the same labelled images (two evaluate outputs, or predict "
    "outputs with true labels): each figure's difference with its interval, McNemar's and DeLong's tests",
}


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each optional flag's "(default: X)" unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or re.search(r"\(default|; default|default:", action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(commands=tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The console script's parser, with the flags of `commands` only: a command's flags import the libraries that
    define them (torch among them), so `diffusion-classifiers --help` builds none and answers at once."""
    parser = argparse.ArgumentParser(prog="diffusion-classifiers")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        command = subparsers.add_parser(name, help=help_text, formatter_class=_DefaultsHelpFormatter)
        if name in commands:
            ADD_ARGS[name](command)
    return parser


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    from .data import add_data_args
    from .models import DEFAULT_TIMESTEPS, UNET_PRESETS
    from .training import add_training_args

    add_data_args(parser, image_size=DEMO_DEFAULTS["image_size"])
    parser.add_argument("--unet_preset", default=DEMO_DEFAULTS["unet_preset"], choices=sorted(UNET_PRESETS), help="U-Net size")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS), help="timesteps probed")
    parser.add_argument("--pool", default=DEMO_DEFAULTS["pool"], choices=["mean", "2x2"], help="spatial pooling of the features")
    add_training_args(
        parser,
        output_dir="outputs/demo",
        max_train_steps=DEMO_DEFAULTS["max_train_steps"],
        learning_rate=1e-3,
        lr_warmup_steps=50,
        checkpointing_steps=10_000,
        use_ema=True,
        ema_max_decay=0.999,
    )
    _set_help(parser, "--output_dir", "where report.md, metrics.json and the PNGs go, the U-Net's checkpoints and "
              "training summary in <output_dir>/unet_training/, the classifier in <output_dir>/pipeline/")
    _set_help(parser, "--resume_from_checkpoint", "a checkpoint-N folder of <output_dir>/unet_training/ (or a path), "
              "or 'latest'")
    add_positive_class_arg(parser, saved_model=False)


def _set_help(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    next(action for action in parser._actions if flag in action.option_strings).help = help


def add_positive_class_arg(parser: argparse.ArgumentParser, saved_model: bool = True) -> None:
    """`--positive_class`; `saved_model`: the command reads a model, which may have saved one."""
    default = "the model's saved positive_class, else class 1" if saved_model else "class 1"
    parser.add_argument(
        "--positive_class",
        default=None,
        help="binary tasks: the class name sensitivity, specificity, positive-class F1, ROC and PR refer to "
        f"(e.g. malignant); default: {default}",
    )


def note_default_positive_class(positive_class: Optional[str], class_names: Sequence[str]) -> None:
    """At training time, one line naming the positive class a binary task defaults to (class 1: the later class folder
    in alphabetical order) when `--positive_class` was not given, and the flag to change it."""
    if positive_class is None and len(class_names) == 2:
        print(
            f"note: --positive_class not given: the positive class (of sensitivity, the ROC, the log-likelihood "
            f"ratio) is class 1, {class_names[1]!r}, of {list(class_names)} (the data's class order, alphabetical "
            f"for class folders); pass --positive_class {class_names[0]} to choose the other",
            file=sys.stderr,
        )


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite_output_dir", action="store_true",
        help="replace the report of an earlier run in --output_dir, instead of refusing such a folder",
    )  # fmt: skip


def add_labelled_dataset_args(parser: argparse.ArgumentParser, model: str) -> None:
    """`--dataset`, `--class_names`, `--image_column` and `--label_column` of the labelled data a head is fitted on
    over `model`."""
    from .data.arguments import add_class_names_arg, add_column_args

    parser.add_argument(
        "--dataset", default=None,
        help="labelled data, what data.load_image_classification_data reads ('digits', a MedMNIST .npz, IDX files, an "
        f"image folder, a CSV of path,label, a saved datasets folder); read as {model}'s saved preprocessing says "
        f"(size, channels, DICOM windows, resize mode, background) (default: {DEMO_DATASET_HELP})",
    )  # fmt: skip
    add_class_names_arg(parser)
    add_column_args(parser)


def add_probe_args(parser: argparse.ArgumentParser) -> None:
    from .data.arguments import add_split_args, seed_argument
    from .data.split_record import SPLIT_RECORD_NAME
    from .models import DEFAULT_TIMESTEPS

    parser.add_argument(
        "--unet_dir", required=True,
        help="a trained U-Net: the output folder of examples/unet_features_train.py (a saved pipeline with unet/ and "
        "scheduler/)",
    )  # fmt: skip
    add_labelled_dataset_args(parser, "the U-Net")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS), help="timesteps probed")
    parser.add_argument("--pool", default="mean", choices=["mean", "2x2"], help="spatial pooling of the features")
    parser.add_argument(
        "--hypercolumns", action="store_true",
        help="also probe, at each timestep, every block's feature concatenated (a hypercolumn; with many labels it "
        "can beat any single block); chosen on val like the rest",
    )  # fmt: skip
    parser.add_argument(
        "--views", default=None, choices=["dihedral"],
        help="average every feature over the image's 8 rotations and mirror images (data with no natural orientation: "
        "plankton, cells; 8 times the extraction); saved in the head, so the pipeline classifies new images the same way",
    )  # fmt: skip
    add_linear_probe_args(parser)
    parser.add_argument("--output_dir", default="outputs/probe", help="where report.md, metrics.json, the PNGs and pipeline/ go")
    add_overwrite_arg(parser)
    add_split_args(parser, from_model=True)
    parser.add_argument(
        "--seed", type=seed_argument, default=None,
        help=f"seed of the probes, and of the splits carved when the data has none if the U-Net records no seed of "
        f"its own ({SPLIT_RECORD_NAME}: its seed carves them, so its test images stay its test; a U-Net of an "
        "unlabeled pool carved nothing: --seed carves the labelled data) (default: the split seed, else 0)",
    )  # fmt: skip
    add_positive_class_arg(parser)


def add_linear_probe_args(parser: argparse.ArgumentParser) -> None:
    """`--C` and `--class_weight` of a linear probe (`probing.fit_probe_grid`)."""
    parser.add_argument(
        "--C", type=float, nargs="+", default=None,
        help="inverse regularisation strength of the probes (scikit-learn's C), or several: each probe keeps its best "
        "on val (e.g. --C 0.1 0.3 1 3 10 30 100: the best strength grows with the number of labels); default 1",
    )  # fmt: skip
    parser.add_argument(
        "--class_weight", default=None, choices=["balanced"],
        help="weigh each class's loss by N / (K n_k), as scikit-learn's class_weight='balanced', so rare classes count "
        "as much as common ones (long-tailed data); default: every image counts once",
    )  # fmt: skip




def add_fit_head_args(parser: argparse.ArgumentParser) -> None:
    from .data.arguments import add_split_args, number_in, seed_argument

    parser.add_argument(
        "--model_dir", required=True,
        help="a trained RC-DiT: the output folder of examples/rc_dit_train.py (a saved pipeline with encoder/ and "
        "transformer/), or a Hub repo id 'org/name'",
    )  # fmt: skip
    add_labelled_dataset_args(parser, "the RC-DiT")
    parser.add_argument(
        "--head", default="linear_probe", choices=list(HEAD_KINDS),
        help="linear_probe: logistic regression on r (its strength --C chosen on val); prototypes: one per class, "
        "the mean r of its labelled images, classifying by cosine similarity (suited to a few labels per class; its "
        "softmax temperature fitted on val, so its probabilities are calibrated)",
    )  # fmt: skip
    parser.add_argument(
        "--shots", type=int, default=None,
        help="label only this many train images of each class (drawn with --seed), as a team with few labels would "
        "(the val split, on which the temperature or C is chosen, stays whole); default: every train image",
    )  # fmt: skip
    add_linear_probe_args(parser)
    parser.add_argument("--batch_size", type=number_in("[1, inf)", int), default=64, help="images per encoder call")
    parser.add_argument(
        "--output_dir", default="outputs/fit_head", help="where pipeline/ (the RC-DiT with its head) and the test "
        "split's metrics.json, report.md and plots go",
    )  # fmt: skip
    add_overwrite_arg(parser)
    add_split_args(parser, from_model=True)
    parser.add_argument(
        "--seed", type=seed_argument, default=None,
        help="seed of the --shots drawn; the labelled data is carved with the seed the RC-DiT's data_splits.json "
        "records (its own data's test images stay its test; a model of an unlabeled pool or without a record: its "
        "recorded or the default seed), so the shots of several seeds are scored on one test split (default: the "
        "carving's seed)",
    )  # fmt: skip
    add_positive_class_arg(parser)


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    from .data.arguments import add_column_args, add_split_args, json_object_arg, number_in, seed_argument
    from .operating_points import threshold_argument
    from .data.split_record import SPLIT_RECORD_NAME

    parser.add_argument(
        "--model_dir", required=True,
        help="a saved pipeline (model_index.json) or transformers model (config.json): a folder or a Hub repo id "
        "'org/name' (its configs and safetensors are downloaded)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default=None,
        help="what data.load_image_classification_data reads (with the model's saved preprocessing), or a saved "
        f"DatasetDict folder (default: {DEMO_DATASET_HELP})",
    )  # fmt: skip
    add_column_args(parser)
    parser.add_argument(
        "--split", default="test",
        help="the split scored: train, val (or validation), test, or all: every image of --dataset once, as one set "
        "(its splits together; a folder or CSV without splits whole, nothing carved), each checked against the "
        f"training images the model's {SPLIT_RECORD_NAME} records",
    )  # fmt: skip
    parser.add_argument("--output_dir", default="outputs/evaluation", help="where metrics.json, report.md and the PNGs go")
    add_overwrite_arg(parser)
    parser.add_argument("--batch_size", type=int, default=64, help="images per model call")
    add_split_args(parser, from_model=True)
    parser.add_argument(
        "--seed", type=seed_argument, default=None,
        help=f"seed of the splits carved when the data has none (default: as the model's {SPLIT_RECORD_NAME} "
        "records, else 0; refused with --split all, as are --val_fraction and --test_fraction); not the scoring "
        "noise's (predict's --seed): pass that as --pipeline_kwargs '{\"seed\": N}'",
    )  # fmt: skip
    parser.add_argument(
        "--streaming", action="store_true",
        help="an image folder or CSV of paths larger than memory: decode each image only when its batch is scored "
        "(a saved DatasetDict folder's own split is always read this way)",
    )  # fmt: skip
    parser.add_argument(
        "--dataloader_num_workers", type=number_in("[0, inf)", int), default=0,
        help="DataLoader worker processes that decode the images",
    )  # fmt: skip
    parser.add_argument(
        "--drop_training_images", action="store_true",
        help=f"score only the images the model was not trained on (by content: the train_fingerprints of its "
        f"{SPLIT_RECORD_NAME}) instead of refusing a split that holds some (a folder that grew or was re-exported); "
        "metrics.json records how many were dropped",
    )  # fmt: skip
    parser.add_argument(
        "--pipeline_kwargs", type=json_object_arg, default=None,
        help="arguments of the pipeline call as JSON, e.g. '{\"method\": \"elbo\", \"num_timesteps\": 300, \"seed\": 1}' "
        "for Score-SDE; metrics.json records every setting the call ran with (default: the pipeline's defaults)",
    )  # fmt: skip
    add_positive_class_arg(parser)
    parser.add_argument(
        "--threshold", type=threshold_argument, default=None,
        help="binary: call an image positive where the positive class's probability is this or more; or the "
        "metrics.json of an evaluate run that chose one with --target_sensitivity (on val: applied unchanged here, "
        "to test) (default: each image's most probable class)",
    )  # fmt: skip
    parser.add_argument(
        "--target_sensitivity", type=number_in("(0, 1]", float), default=None,
        help="binary: choose, on the split scored, the largest threshold at which this fraction of its positive "
        "images is called positive, and score at it; metrics.json records it for --threshold of a later run",
    )  # fmt: skip
    parser.add_argument(
        "--prevalence", type=number_in("(0, 1)", float), default=None,
        help="binary: the positive class's share of the images where the model is to be used; the report and "
        "metrics.json (at_prevalence) give the PPV and NPV there (those of the table are the scored set's own)",
    )  # fmt: skip


def _one_run_in_output_dir(name: str) -> Callable:
    """The command `name`, run as one process, alone in its `--output_dir` (a writable folder, locked while it runs:
    a second run into it is refused, naming this one); the folder, if it created it, is removed again when the command
    is refused before writing anything."""

    def wrap(command: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> dict:
            from .run_lock import output_dir_lock
            from .training.launch import check_one_process
            from .validation import check_writable_dir, removed_if_left_empty

            check_one_process(name)  # several processes would each run the whole job into the same files
            with removed_if_left_empty(args.output_dir):
                check_writable_dir(args.output_dir, "--output_dir")
                with output_dir_lock(args.output_dir, name):
                    return command(args)

        return run

    return wrap


@_one_run_in_output_dir("evaluate")
def run_evaluate(args: argparse.Namespace) -> dict:
    from .data import ONE_SET
    from .data.arguments import columns_from_args
    from .evaluation import (
        check_evaluation_args,
        check_evaluation_split,
        check_prevalence,
        evaluate_classifier,
        files_of_splits,
        load_classifier,
        load_evaluation_split,
        pipeline_call_settings,
        saved_positive_class,
        saved_preprocessing,
    )
    from .data.split_record import (
        changed_split_args,
        read_split_record,
        recorded_train_fingerprints,
        resolve_split_args,
        trained_on_unlabeled_pool,
    )
    from .hub import METHOD_TITLES, class_names_of, download, method_of, model_fingerprint
    from .metrics import resolve_positive_label
    from .validation import check_no_earlier_report, check_output_outside_data, check_output_outside_model
    from .validation import typed_command

    check_evaluation_args(None, args.batch_size)  # before the model and the data are loaded (the folder: checked)
    check_output_outside_data(args.output_dir, args.dataset)
    check_output_outside_model(args.output_dir, args.model_dir)
    check_evaluation_split(args.split)
    given = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed}
    whole = args.split == ONE_SET  # every image of the data, none carved
    _check_evaluate_flags(args, given, whole)
    check_no_earlier_report(args.output_dir, args.overwrite_output_dir)
    classifier = load_classifier(args.model_dir)
    contract = saved_preprocessing(classifier)
    folder = download(args.model_dir)
    class_names = class_names_of(folder)
    if args.positive_class is not None and class_names is not None:  # before the data is read
        resolve_positive_label(args.positive_class, class_names, len(class_names))
    fingerprint = model_fingerprint(folder)
    _check_operating_point_flags(args, classifier, class_names, fingerprint)
    args.dataset = _dataset_or_demo_digits(args.dataset, contract, "evaluate", class_names)
    settings = pipeline_call_settings(classifier, args.pipeline_kwargs)  # unknown names refused before reading
    if args.prevalence is not None and class_names is not None:  # before the data is read
        positive = args.positive_class if args.positive_class is not None else saved_positive_class(classifier)
        check_prevalence(args.prevalence, resolve_positive_label(positive, class_names, len(class_names)), settings)
    record = read_split_record(folder)
    # as the model's data was carved, anonymised DICOM grouped by its rule included (with all: its class names only)
    carving = resolve_split_args(folder, record=record, **given)
    # the data's name, not its local path: metrics.json may be published with the model
    dataset_name = os.path.basename(os.path.normpath(args.dataset))
    pool = trained_on_unlabeled_pool(folder, record=record)
    train_fingerprints = None
    if args.split != "train":  # the model's own training split: scoring it is asking for training accuracy
        train_fingerprints = recorded_train_fingerprints(folder, record=record)
        if train_fingerprints is None and _split_is_checked(args.split, args.dataset, pool):
            # --split all carves nothing: no word of a carving that may not be the model's
            no_record = record is None and not whole
            _note_unchecked(args.model_dir, "evaluate", [dataset_name if whole else args.split], no_record)
    if args.drop_training_images and train_fingerprints is None:  # QA: ignored without a word
        why = "the model's own train split is scored as it is" if args.split == "train" else (
            f"{args.model_dir} records no fingerprints of its training images"
        )
        raise ValueError(
            f"--drop_training_images: {why}, so none can be dropped; expected it left out (the report then says its "
            "images were not checked against the training images)"
        )
    # its train split tells duplicates within the data from leaks (none with all: every image is the set scored)
    dataset, train_split = load_evaluation_split(
        args.dataset, args.split, preprocessing=contract, streaming=args.streaming, with_train=True, **carving,
        model_class_names=class_names, **columns_from_args(args),
    )
    # in memory, a refusal names the files of a folder or CSV from a listing of the same carving
    paths = None if args.streaming else files_of_splits(args.dataset, {args.split: dataset}, carving, contract, whole)
    method = METHOD_TITLES[method_of(folder)]  # QA: a U-Net's and an RC-DiT's folders, both "pipeline", read alike
    title = f"{method} ({os.path.basename(os.path.normpath(args.model_dir))}) on {dataset_name} ({args.split})"
    metrics = evaluate_classifier(
        classifier, dataset, args.output_dir, batch_size=args.batch_size, positive_class=args.positive_class, title=title,
        num_workers=args.dataloader_num_workers, split=args.split, dataset_name=dataset_name,
        train_fingerprints=train_fingerprints, drop_training_images=args.drop_training_images,
        pipeline_kwargs=args.pipeline_kwargs, model_sha256=fingerprint,
        train_split=None if pool else train_split, unlabeled_pool=pool,
        changed_split_args=changed_split_args(folder, record=record, **given),
        paths=None if paths is None else paths[args.split], **columns_from_args(args),
        command=typed_command(args), carving=None if whole else carving, threshold=args.threshold,
        target_sensitivity=args.target_sensitivity, paths_relative_to=_data_folder(args.dataset),
        prevalence=args.prevalence,
    )  # fmt: skip
    print(f"wrote metrics.json, report.md, image_predictions.csv and its plots to {args.output_dir}")
    print(json.dumps(_evaluation_headline(metrics)))
    return metrics


def _data_folder(dataset: str) -> Optional[str]:
    """The folder an image folder's or a CSV's files are named relative to in `image_predictions.csv`, as predict names
    them (a saved `datasets` folder's images keep the paths it records)."""
    from .data.hf_datasets import is_saved_dataset

    if os.path.isdir(dataset):
        return None if is_saved_dataset(pathlib.Path(dataset)) else dataset
    return os.path.dirname(os.path.abspath(dataset)) if os.path.isfile(dataset) else None


def _check_evaluate_flags(args: argparse.Namespace, given: dict, whole: bool) -> None:
    """The flags `evaluate` refuses before any work: carving flags with `--split all` (nothing is carved), and
    `--pipeline_kwargs` that are not a JSON object."""
    from .data import ONE_SET

    carving_flags = [f"--{name} {value}" for name, value in given.items() if value is not None]
    if whole and carving_flags:
        noise = " (the scoring noise's seed is --pipeline_kwargs '{\"seed\": N}')" if args.seed is not None else ""
        raise ValueError(
            f"--split {ONE_SET} scores every image of --dataset and carves no split: {' '.join(carving_flags)} "
            f"only choose(s) how splits are carved; leave them out{noise}"
        )
    if args.pipeline_kwargs is not None and not isinstance(args.pipeline_kwargs, dict):
        raise ValueError(f"--pipeline_kwargs: expected a JSON object, got {args.pipeline_kwargs!r}")


def _check_operating_point_flags(args: argparse.Namespace, classifier, class_names, fingerprint: str) -> None:
    """`--threshold` and `--target_sensitivity` refused before the data is read: both, a task that is not binary, a
    metrics.json of another positive class or model (`operating_points.given_operating_point`)."""
    from .evaluation import saved_positive_class
    from .metrics import resolve_positive_label
    from .operating_points import check_decision_rule, given_operating_point

    check_decision_rule(args.threshold, args.target_sensitivity)
    if class_names is None or (args.threshold is None and args.target_sensitivity is None):
        return
    positive = args.positive_class if args.positive_class is not None else saved_positive_class(classifier)
    positive_label = resolve_positive_label(positive, class_names, len(class_names))
    given_operating_point(args.threshold, args.target_sensitivity, class_names, positive_label, fingerprint)


def _split_is_checked(split: str, dataset: str, unlabeled_pool: bool) -> bool:
    """Whether `evaluate` must check `split` of `dataset` against the model's training images, and says so when it
    cannot: a carved split can hold them where the data changed; every image of the data (`ONE_SET`, an external set)
    too. One of the data's own splits is its word about its own train split (whose duplicates in it are excused), but
    not about other data a model or its head was trained on: it is checked too where the model records fingerprints
    (a head fitted on a CSV of PneumoniaMNIST images scored 236 of the .npz test images it was fitted on), without a
    note where it records none."""
    from .data import ONE_SET
    from .evaluation import carved_splits

    name = "val" if split == "validation" else split
    return name == ONE_SET or name in carved_splits(dataset) or (unlabeled_pool and name != "train")


def _evaluation_headline(metrics: dict) -> dict:
    """The line `evaluate` prints: the headline metrics (AUC even when undefined), calibration, and for a binary
    Score-SDE ELBO (likelihood, P probes) the decisions another `--seed` could flip."""
    names = ("accuracy", "macro_f1", "balanced_accuracy", "auc", "positive_class", "sensitivity", "specificity")
    headline = {name: metrics.get(name) for name in names if metrics.get(name) is not None or name == "auc"}
    headline["ece"] = metrics["calibration"]["ece"]
    if "operating_point" in metrics:  # QA: the summary line did not say the threshold it applied
        headline["threshold"] = metrics["operating_point"]["threshold"]
    if "seed_sensitivity" in metrics:
        headline["decisions_within_2_stderr"] = metrics["seed_sensitivity"]["decisions_within"]
    return headline


def check_demo_args(args: argparse.Namespace):
    """Every demo flag checked before the data are read or a step trained; returns the `TrainingArguments`."""
    from .features import check_timesteps
    from .models import unet_config
    from .training import check_run_can_start, training_args_from_namespace
    from .validation import check_no_earlier_report, check_output_outside_data, check_writable_dir

    training_args = training_args_from_namespace(args)  # batch size, steps, learning rate, precision
    check_timesteps(args.timesteps, DEMO_NUM_TRAIN_TIMESTEPS)
    if args.image_size is not None:
        unet_config(args.unet_preset, args.image_size)  # the preset's levels must divide the image size
    check_writable_dir(args.output_dir, "--output_dir")
    check_output_outside_data(args.output_dir, args.dataset)
    # a resumed demo finishes its own report; any other run would replace an earlier one without a word
    check_no_earlier_report(args.output_dir, args.overwrite_output_dir or args.resume_from_checkpoint is not None)
    training_args.output_dir = os.path.join(args.output_dir, "unet_training")
    check_run_can_start(training_args)  # another run's checkpoints, a checkpoint to resume: before the data is read
    return training_args


@_one_run_in_output_dir("demo")
def run_demo(args: argparse.Namespace) -> dict:
    from .data import describe_splits, load_data_from_args
    from .data.split_record import SPLIT_DEFAULTS
    from .metrics import resolve_positive_label
    from .training import train_ddpm_unet
    from .unet_feature_study import run_unet_feature_study

    started = time.time()
    training_args = check_demo_args(args)
    splits = load_data_from_args(args)
    print(describe_splits(splits, args.dataset))
    resolve_positive_label(args.positive_class, splits["train"].class_names, splits["train"].num_classes)  # before training
    note_default_positive_class(args.positive_class, splits["train"].class_names)
    unet, scheduler, summary = train_ddpm_unet(
        training_args, splits["train"].images, preset=args.unet_preset, num_train_timesteps=DEMO_NUM_TRAIN_TIMESTEPS
    )
    if summary.stopped_by_signal:  # QA: a U-Net cut short was probed and reported as the demo's, with no word of it
        print(
            f"demo: training stopped by {summary.stopped_by_signal} at step {summary.global_step}: nothing probed "
            "or reported; the same command with --resume_from_checkpoint latest finishes the training, then the demo"
        )
        return {}
    trained_at = time.time()
    study = run_unet_feature_study(
        unet, scheduler, splits, timesteps=args.timesteps, pool=args.pool, seed=args.seed, positive_class=args.positive_class
    )
    timing = {"train_seconds": round(trained_at - started, 1), "total_seconds": round(time.time() - started, 1)}
    carving = {name: getattr(args, name) for name in SPLIT_DEFAULTS}
    metrics = save_study(study, args, timing, carving, splits["train"].images, splits["val"].images)
    samples = ", samples/" if args.num_sample_images else ""
    print(f"and {args.output_dir}/unet_training/ (loss_curve.png{samples})")
    return metrics


def _probe_carving(
    args: argparse.Namespace, folder: str, record: Optional[dict], seed_carves_pool_data: bool = True
) -> tuple[dict, dict]:
    """`(given, carving)`: the carving flags given to `probe` / `fit-head` and the carving of its data (`record`: the
    model folder's `read_split_record`): the model's test images stay its test, carved with its recorded seed
    (`--seed` then seeds the probes or shots only), unless the model was trained on an unlabeled pool, which carved
    nothing: `--seed` then carves the labelled data too, where `seed_carves_pool_data` (probe), else the recorded seed
    does (fit-head: a few-shot study over `--seed` keeps one test split); an image folder's or a saved dataset's classes
    are its own (the head is trained on them)."""
    from .data.arguments import columns_from_args
    from .data.split_record import resolve_split_args
    from .evaluation import _own_class_names

    pool = record is not None and bool(record.get("unlabeled"))
    split_seed = args.seed if (record is None or pool) and seed_carves_pool_data else None
    given = {
        "val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": split_seed,
        "class_names": args.class_names,
    }  # fmt: skip
    carving = resolve_split_args(folder, record=record, **given)
    if args.class_names is None and _own_class_names(args.dataset, **columns_from_args(args)) is not None:
        carving["class_names"] = None
    return given, carving


def _check_head_splits(
    args: argparse.Namespace, model_dir: str, splits: dict, model_fingerprints, pool: bool, changed: dict,
    carving: dict, contract,
) -> list:
    """Refuse val / test images the model in `model_dir` was trained on (a head is chosen on val and reported on
    test), val and test together, naming files where the data has them; or say they cannot be checked (carved splits
    only: a data set's own are its word about its own train split). The data's own splits are its word about its own
    train split, whose duplicates in them are excused; a model trained on an unlabeled pool may have seen any image:
    then none is (`pool`). `probe` and `fit-head` have no
    flag to drop the images found. `changed`: the carving flags that differ from the model's record
    (`changed_split_args`). Returns the names of the splits checked."""
    from .evaluation import carved_splits, check_training_overlap, files_of_splits

    if model_fingerprints is None:
        carved = ["val", "test"] if pool else [name for name in ("val", "test") if name in carved_splits(args.dataset)]
        if carved:
            _note_unchecked(model_dir, args.command, carved)
        return []
    # a data set's own val and test too, as `evaluate` checks them (QA: fit-head's report said its .npz test split
    # was not checked, evaluate's of the same pipeline that it was), duplicates of its own train split excused
    checked = ["val", "test"]
    check_training_overlap(
        {name: splits[name] for name in checked}, model_fingerprints, where=args.dataset,
        train_split=None if pool else splits["train"], drop_hint=None,
        changed_split_args=changed, streaming_hint=None, unlabeled_pool=pool,
        paths=files_of_splits(args.dataset, {name: splits[name] for name in checked}, carving, contract),
    )  # fmt: skip
    return checked


def save_study(
    study, args: argparse.Namespace, timing: dict, carving: dict, train_images, val_images, train_fingerprints=None,
    unlabeled_pool: bool = False, fingerprints_partial: bool = False, test_checked: Optional[bool] = None,
) -> dict:
    """Save the study's fitted pipeline, with the `carving` of its data, the fingerprints of its `train_images` and
    any other `train_fingerprints`, those of the `val_images` its head was chosen on, and whether its U-Net was
    trained on an unlabeled pool (`data.save_split_record`),
    and its report into `args.output_dir`; print the headline. The pipeline is saved whole in a hidden folder first
    (QA: a probe killed while saving left a `pipeline/` without its split record, which evaluate and predict read),
    then an earlier run's report and `pipeline/` are set aside, the new `pipeline/` moved in and `metrics.json`
    written last (`replaced_reports.replacing_earlier_report`): a folder holding one holds one run's files, and a run
    that fails keeps the earlier one. Its test figures record what `evaluate`'s do of the images scored
    (`test_checked`: whether they were checked against the model's training images, where known)."""
    from .data.split_record import save_split_record
    from .features import block_label
    from .hub import model_fingerprint
    from .replaced_reports import replacing_earlier_report
    from .unet_feature_study import study_report_files, summary_table, write_study_report
    from .validation import typed_command

    study.test_metrics.update(_study_test_record(study, args, test_checked))
    staged = _staged_pipeline_folder(args.output_dir)
    try:
        study.pipeline.save_pretrained(staged)
        save_split_record(
            staged, **carving, train_images=train_images, train_fingerprints=train_fingerprints,
            unlabeled_pool=unlabeled_pool, fingerprints_partial=fingerprints_partial, selection_images=val_images,
        )  # fmt: skip
        identity = {"model_sha256": model_fingerprint(staged)}  # push_to_hub checks it
        title = f"Frozen DDPM U-Net features on {args.dataset}"
        with replacing_earlier_report(args.output_dir, files=study_report_files(), moved_in={"pipeline": staged}):
            metrics = write_study_report(
                study, args.output_dir, title, typed_command(args), extra={**timing, **identity}, replace_earlier=False
            )
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # moved in, or a failed run's
    print(summary_table(study))
    summary = metrics["summary"]
    print(
        f"\nchosen {block_label(summary['best_block'])} @ t={summary['best_timestep']}: test accuracy {100 * summary['test_accuracy']:.2f}%, "
        f"macro-F1 {100 * summary['test_macro_f1']:.2f}%, k-means accuracy {_kmeans_figure(summary, 'kmeans')} "
        f"(NMI {summary['kmeans_nmi']:.3f}); {timing['total_seconds']:.0f} s"
    )
    print(
        f"k-means without labels: {_kmeans_figure(summary, 'kmeans_label_free')} on U-Net features "
        f"({summary['kmeans_label_free_feature']}, {summary['kmeans_label_free_normalization']}), "
        f"{_kmeans_figure(summary, 'kmeans_raw_pixels')} on raw pixels ({summary['kmeans_raw_pixels_normalization']})"
    )
    plots = "probe_heatmap.png, confusion_matrix.png, reliability.png" + (", roc_pr.png" if "test_positive_class" in summary else "")
    print(f"wrote {args.output_dir}/report.md, metrics.json, {plots}, pipeline/")
    return metrics


def _staged_pipeline_folder(output_dir: str) -> str:
    """Where a command saves its new `pipeline/` whole before moving it in: a hidden folder of `output_dir` named by
    this process, those of killed runs removed."""
    from .atomic_files import remove_leftovers_of_killed_writers

    os.makedirs(output_dir, exist_ok=True)
    remove_leftovers_of_killed_writers(output_dir, STAGED_PIPELINE_PREFIX)
    return os.path.join(output_dir, f"{STAGED_PIPELINE_PREFIX}{os.getpid()}")


def _study_test_record(study, args: argparse.Namespace, checked: Optional[bool]) -> dict:
    """What `evaluate`'s metrics.json records of the images scored, for a study's test figures (QA: three methods
    compared side by side, probe's metrics.json alone did not say which split, data or preprocessing it measured)."""
    from .hub import method_of_classifier

    record = {"split": "test", "method": method_of_classifier(study.pipeline)}
    record["preprocessing"] = study.pipeline.preprocessing.to_dict()
    if args.dataset is not None:
        record["dataset"] = os.path.basename(os.path.normpath(args.dataset))
    if "positive_class" in study.test_metrics:
        record["num_positives"] = study.test_metrics["per_class"][study.test_metrics["positive_class"]]["support"]
    if checked is not None:
        record["training_images_checked"] = checked
    return record


def _kmeans_figure(summary: dict, prefix: str) -> str:
    """A k-means Hungarian accuracy with its chance level: with as many clusters as test images per class or more,
    any clustering scores near 100% (121 classes, one test image each: 100% by chance)."""
    accuracy, chance = summary[f"{prefix}_accuracy"], summary[f"{prefix}_accuracy_by_chance"]
    return f"{100 * accuracy:.2f}% (by chance {100 * chance:.2f}%)"


def _check_feature_model(pipe: Any, folder: str) -> None:
    """The U-Net and scheduler a probe extracts features with, refused naming `folder` before any image is read (QA:
    a `UNet2DConditionModel` or a class-conditional U-Net failed only once the data was read, the first in a
    traceback)."""
    from .features import DiffusionFeatureExtractor

    try:
        DiffusionFeatureExtractor(pipe.unet, pipe.scheduler)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--unet_dir {folder}: {error}") from error


@_one_run_in_output_dir("probe")
def run_probe(args: argparse.Namespace) -> dict:
    """A trained U-Net + a labeled dataset -> the probe grid, the chosen (block, t), k-means and a fitted pipeline."""
    from .features import check_timesteps
    from .hub import download
    from .pipelines import UNetFeatureClassifierPipeline
    from .unet_feature_study import run_unet_feature_study
    from .validation import check_no_earlier_report

    started = time.time()
    check_no_earlier_report(args.output_dir, args.overwrite_output_dir)
    args.C = _distinct_C(DEFAULT_C if args.C is None else args.C)
    trained = UNetFeatureClassifierPipeline.from_pretrained(args.unet_dir)
    _check_feature_model(trained, args.unet_dir)
    check_timesteps(args.timesteps, trained.scheduler.config.num_train_timesteps)
    unet_config, contract = trained.unet.config, trained.preprocessing
    args.dataset = _dataset_or_demo_digits(args.dataset, contract, "probe")
    # read as the U-Net was trained: windows, resize mode, background
    reading = {"image_size": unet_config.sample_size, "num_channels": unet_config.in_channels,
               "medical": contract.medical_or_default, **contract.fit}  # fmt: skip
    data = _labelled_data(args, args.unet_dir, download(args.unet_dir), contract, reading, "a probe")
    splits = data.splits
    study = run_unet_feature_study(
        trained.unet, trained.scheduler, splits, timesteps=args.timesteps, pool=args.pool,
        seed=data.carving["seed"] if args.seed is None else args.seed,
        positive_class=args.positive_class, hypercolumns=args.hypercolumns, views=args.views,
        probe_kwargs={"C": args.C, "class_weight": args.class_weight},
    )  # fmt: skip
    timing = {"total_seconds": round(time.time() - started, 1)}
    return save_study(
        study, args, timing, data.carving, splits["train"].images, splits["val"].images, data.model_fingerprints,
        unlabeled_pool=data.pool,
        fingerprints_partial=data.fingerprints_partial,  # QA: the head's alone then read as a complete record
        test_checked="test" in data.checked_splits and not data.fingerprints_partial,
    )


class _LabelledData(NamedTuple):
    """The labelled data a head is fitted on over a saved model: its splits, their carving, the model's training
    fingerprints, whether it was trained on an unlabeled pool and the splits checked against those fingerprints."""

    splits: dict
    carving: dict
    model_fingerprints: Any
    pool: bool
    checked_splits: list
    # the model's training images unknown: it records none, or only an earlier head's (`train_fingerprints_partial`)
    fingerprints_partial: bool


def _labelled_data(
    args: argparse.Namespace, model_dir: str, folder: str, contract, reading: dict, task: str,
    seed_carves_pool_data: bool = True,
) -> _LabelledData:
    """`--dataset` read through `reading` (the loaders' size, channels, windows, fit) and carved as the model in
    `model_dir` (its local `folder`, `hub.download`) records (`_probe_carving`), its data line printed; at least two classes for `task`, val and test
    checked against the model's training images (`_check_head_splits`), and the positive class resolved and noted."""
    from .data import describe_splits, load_image_classification_data
    from .data.arguments import columns_from_args
    from .data.split_record import (
        changed_split_args,
        read_split_record,
        recorded_fingerprints_partial,
        recorded_train_fingerprints,
        trained_on_unlabeled_pool,
    )
    from .metrics import resolve_positive_label
    from .validation import check_output_outside_data, check_two_classes_at_least

    check_output_outside_data(args.output_dir, args.dataset)
    record = read_split_record(folder)
    given, carving = _probe_carving(args, folder, record, seed_carves_pool_data)
    splits = load_image_classification_data(args.dataset, **carving, **reading, **columns_from_args(args))
    print(describe_splits(splits, args.dataset))
    train = splits["train"]
    check_two_classes_at_least(train.class_names, f"--dataset {args.dataset}", task)
    fingerprints = recorded_train_fingerprints(folder, record=record)
    pool = trained_on_unlabeled_pool(folder, record=record)
    changed = changed_split_args(folder, record=record, **given)
    checked = _check_head_splits(args, model_dir, splits, fingerprints, pool, changed, carving, contract)
    resolve_positive_label(args.positive_class, train.class_names, train.num_classes)
    note_default_positive_class(args.positive_class, train.class_names)
    partial = fingerprints is None or recorded_fingerprints_partial(folder, record=record)
    return _LabelledData(splits, carving, fingerprints, pool, checked, partial)


@_one_run_in_output_dir("fit-head")
def run_fit_head(args: argparse.Namespace) -> dict:
    """A trained RC-DiT + labelled data -> a head on its representation (fitted on train, or `--shots` of it per
    class; its strength or temperature chosen on val), the pipeline with it, and its evaluation on test. The pipeline
    is saved aside, and moved in once test is scored, when an earlier run's `metrics.json` and `pipeline/` are
    removed; `metrics.json` is written last (`evaluation.write_evaluation`): a folder holding one holds one run's
    files, and a run that fails before keeps the earlier one whole."""
    from .evaluation import evaluate_classifier
    from .hub import download, model_fingerprint
    from .validation import check_no_earlier_report, typed_command

    check_no_earlier_report(args.output_dir, args.overwrite_output_dir)
    probe_kwargs = _fit_head_probe_kwargs(args)
    folder = download(args.model_dir)
    pipe = _rc_dit_pipeline(folder, args.model_dir)
    args.dataset = _dataset_or_demo_digits(args.dataset, pipe.preprocessing, "fit-head")
    contract = pipe.preprocessing
    data = _labelled_data(
        args, args.model_dir, folder, contract, contract.loader_kwargs, "a head", seed_carves_pool_data=False
    )  # fmt: skip
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    shots_seed = data.carving["seed"] if args.seed is None else args.seed
    labelled = _shots_of(train, args.shots, shots_seed)
    started = time.time()
    chosen = _fit_head(pipe, args.head, labelled, val, train.class_names, args.batch_size, probe_kwargs)
    head = _head_record(args, len(labelled), len(val), shots_seed, chosen)
    print(f"fitted {head['summary']}, in {time.time() - started:.0f} s")
    if args.positive_class is not None:
        pipe.set_positive_class(args.positive_class)
    saved = os.path.join(args.output_dir, "pipeline")
    aside = _staged_pipeline_folder(args.output_dir)  # moved in once test is scored
    try:
        _save_with_carving(pipe, aside, data)
        dataset_name = os.path.basename(os.path.normpath(args.dataset))
        metrics = evaluate_classifier(
            pipe, test, args.output_dir, batch_size=args.batch_size, positive_class=_scored_positive_class(args, train),
            title=f"RC-DiT {args.head} head on {dataset_name} (test)", split="test", dataset_name=dataset_name,
            model_sha256=model_fingerprint(aside), head=head, moved_in={"pipeline": aside},
            # QA: the check `_labelled_data` made was recorded as none (the pipeline's own record is cleared to save
            # it); made again on the test split that passed it
            train_fingerprints=data.model_fingerprints if "test" in data.checked_splits else None,
            train_split=None if data.pool else train, unlabeled_pool=data.pool,
            fingerprints_partial=data.fingerprints_partial, command=typed_command(args), carving=data.carving,
        )  # fmt: skip
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    print(f"test accuracy {100 * metrics['accuracy']:.2f}%, macro-F1 {100 * metrics['macro_f1']:.2f}%")
    print(
        f"wrote {saved}/ (load it with DiffusionClassifierPipeline.from_pretrained) and {args.output_dir}/"
        "metrics.json, report.md, image_predictions.csv and its plots"
    )
    return metrics


def _shots_of(train, shots: Optional[int], seed: int):
    """`train`, or `shots` images of each of its classes drawn with `seed`, as a team with few labels has."""
    import torch

    from .probing import few_shot_indices

    if shots is None:
        return train
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    if shots > counts.min():
        fewest = int(counts.argmin())
        raise ValueError(
            f"--shots {shots}: class {train.class_names[fewest]!r} has {int(counts[fewest])} train images; pass "
            f"--shots {int(counts[fewest])} or fewer, or label more images of it"
        )
    return train.subset(few_shot_indices(train.labels, shots, seed, train.num_classes, train.class_names))


def _fit_head(pipe, head: str, labelled, val, class_names, batch_size: int, probe_kwargs: dict) -> dict:
    """Fit and register the `head` kind on the representations of `labelled`, its temperature or C chosen on `val`;
    returns what was chosen (`{"temperature": t}` or `{"C": c}`)."""
    with pipe.progress_bars_off():
        if head == "prototypes":
            fitted = pipe.fit_prototypes(
                labelled.images, labelled.labels, class_names, batch_size=batch_size, val_images=val.images,
                val_labels=val.labels,
            )  # fmt: skip
            return {"temperature": fitted.config.temperature}
        fit = pipe.fit_linear_probe(
            labelled.images, labelled.labels, val.images, val.labels, class_names, batch_size=batch_size,
            return_fit=True, progress_bar={"disable": True}, **probe_kwargs,  # one fit per C: no bar each
        )  # fmt: skip
        return {"C": fit.C[fit.best_pair]}


def _head_record(args: argparse.Namespace, num_labelled: int, num_val: int, shots_seed: int, chosen: dict) -> dict:
    """How the head was fitted, for metrics.json and the report: its kind, the labelled images (and shots), the val
    images its temperature or C was chosen on, and a summary sentence."""
    from .models.prototype_head import TEMPERATURE_RANGE

    labels = f"{args.shots} per class, drawn with seed {shots_seed}" if args.shots is not None else "every train image"
    if "temperature" in chosen:
        choice = f"softmax temperature {chosen['temperature']:.3g}"
        if chosen["temperature"] >= 0.99 * TEMPERATURE_RANGE[1]:  # the probabilities are then near uniform
            choice += " (the largest tried: the prototypes hardly tell val's classes apart)"
    else:
        choice = f"C = {chosen['C']:g} (of {', '.join(f'{c:g}' for c in args.C)})"
    return {
        "kind": args.head, "labelled_images": num_labelled, "shots": args.shots,
        "shots_seed": shots_seed if args.shots is not None else None, "val_images": num_val, **chosen,
        "summary": f"{args.head} on {num_labelled} labelled images ({labels}); {choice} chosen on {num_val} val images",
    }  # fmt: skip


def _save_with_carving(pipe, saved: str, data: _LabelledData) -> None:
    """Save `pipe` with the record of the labelled data's carving, its train images, the val images its head was chosen
    on and the model's own training images (in place of the record it was loaded with), so evaluate and predict read
    and check it as a probed U-Net."""
    from .data.split_record import save_split_record

    pipe.split_record = None
    pipe.save_pretrained(saved)
    save_split_record(
        saved, **data.carving, train_images=data.splits["train"].images, train_fingerprints=data.model_fingerprints,
        unlabeled_pool=data.pool, fingerprints_partial=data.fingerprints_partial,
        selection_images=data.splits["val"].images,
    )  # fmt: skip


def _scored_positive_class(args: argparse.Namespace, train) -> Optional[str]:
    """The positive class the test split is scored for: `--positive_class`, or a binary task's class 1, already noted
    (`note_default_positive_class`), so that evaluate does not warn of it again."""
    if args.positive_class is None and train.num_classes == 2:
        return train.class_names[1]
    return args.positive_class


def _fit_head_probe_kwargs(args: argparse.Namespace) -> dict:
    """The linear probe's `--C` (its default set in `args.C`) and `--class_weight`, checked; refused for prototypes,
    which take neither."""
    if args.shots is not None and args.shots < 1:
        raise ValueError(f"--shots: expected an integer >= 1 (labelled images per class), got {args.shots}")
    given = [f"--{name}" for name in ("C", "class_weight") if getattr(args, name) is not None]
    if args.head == "prototypes" and given:
        raise ValueError(
            f"{' and '.join(given)}: options of a linear probe; --head prototypes has no regularisation or class "
            "weights (its temperature is fitted on val)"
        )
    args.C = _distinct_C(DEFAULT_C if args.C is None else args.C)
    return {"C": args.C, "class_weight": args.class_weight}


def _distinct_C(C: list) -> list:
    """`--C`'s values, each a positive finite number and given once (QA: `--C 1 1` fitted every probe twice), as
    `--timesteps`' are."""
    from .validation import as_inverse_regularisations

    values = list(as_inverse_regularisations(C, "--C"))
    if len(values) != len(C):
        raise ValueError(f"--C: expected distinct values, got {C}")
    return values


def _rc_dit_pipeline(folder: str, model_dir: str):
    """The `RepresentationConditionedDiTPipeline` saved in `folder`; another kind of model is refused, naming what
    gives it a head."""
    from .pipelines import DiffusionClassifierPipeline, RepresentationConditionedDiTPipeline, ScoreSDEClassifierPipeline

    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ValueError(f"--model_dir {model_dir}: expected a saved RC-DiT pipeline (model_index.json), found none")
    pipe = DiffusionClassifierPipeline.from_pretrained(folder)
    if isinstance(pipe, RepresentationConditionedDiTPipeline):
        return pipe
    if isinstance(pipe, ScoreSDEClassifierPipeline):
        advice = "it classifies by its class-conditional likelihoods and needs no head: evaluate or predict with it"
    else:
        advice = f"fit its head {pipe.how_to_fit_a_head}"
    raise ValueError(f"--model_dir {model_dir}: a {type(pipe).__name__}, not an RC-DiT; {advice}")


def _dataset_or_demo_digits(
    dataset: Optional[str], contract: Any, command: str, class_names: Optional[Sequence[str]] = None
) -> str:
    """`--dataset`, or the demo's digits when it is not given: refused for a model reading DICOM through windows, or
    16-bit files at a bit depth, chosen for it (QA: a CT model was probed on digits for 83 s without a word), and for
    a model whose `class_names` are not the digits' '0'..'9' (QA: a benign / malignant model failed on digit label 2
    after reading them); else noted."""
    if dataset is not None:
        return dataset
    if contract is not None and contract.medical_or_default.stated:  # windows or a bit depth chosen for its data
        raise ValueError(
            f"--dataset: not given, and the model reads medical images ({contract.summary()}); give {command} its "
            "data with --dataset (the default, scikit-learn's digits, is the demo's)"
        )
    if class_names is not None and sorted(class_names) != sorted(str(digit) for digit in range(10)):
        raise ValueError(
            f"--dataset: not given, and the model's classes {list(class_names)} are not the digits' '0'..'9'; give "
            f"{command} its data with --dataset (the default, scikit-learn's digits, is the demo's)"
        )
    print(f"note: --dataset not given: {command} on scikit-learn's digits, the demo's data", file=sys.stderr)
    return "digits"


def _note_unchecked(model_dir: str, command: str, split_names: list, no_record: bool = False) -> None:
    """Say that `command` cannot check its carved splits against a model that records no training fingerprints, and,
    for one with no split record at all (`no_record`), that its carving may not be the model's."""
    from .data.split_record import SPLIT_RECORD_NAME

    if no_record:
        print(
            f"note: {model_dir} has no {SPLIT_RECORD_NAME} (saved in Python, by an earlier version, or a transformers "
            "export of a pipeline not loaded from its folder): the data is carved by --seed, --val_fraction and "
            "--test_fraction as given or by default, which may not be how the model's data was carved, so its "
            f"{' and '.join(split_names)} images may include images it was trained on, and {command} cannot check",
            file=sys.stderr,
        )
        return
    print(
        f"note: {model_dir} records no fingerprints of its training images (saved by an earlier version, given a head "
        f"or saved in Python without them, or trained with --streaming --no_verify_images): {command} cannot check "
        f"that the {' and '.join(split_names)} images are none it was trained on",
        file=sys.stderr,
    )


def main(argv=None) -> None:
    """The `diffusion-classifiers` command. From a shell (`argv` None) its errors end it as `run_from_shell` says (a
    refused input, an output in use, storage that refused a write: one line); called with `argv`, it raises."""
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = [arg for arg in argv if arg in COMMANDS][:1]  # the first word naming a command (options have dashes)
    args = build_parser(chosen).parse_args(argv)
    args.command_line = "diffusion-classifiers " + shlex.join(argv)  # as typed, for the records of its outputs
    if not from_shell:
        RUN[args.command](args)
        return
    run_from_shell(f"diffusion-classifiers {args.command}", lambda: RUN[args.command](args))


def run_from_shell(name: str, run: Callable[[], Any]) -> None:
    """`run()` as a shell command `name` (the CLI's, the example scripts'): an input refused by name (`ValueError`,
    `FileNotFoundError`, `FileExistsError`), an output another run holds (`RunInUseError`) or storage that refused a
    write (a full disk, a read-only folder) prints `name: error: ...` and exits with status 1, without Python's
    traceback (`DIFFUSION_CLASSIFIERS_TRACEBACK=1` keeps it); Ctrl-C, with status 130. A training run that SIGTERM
    or Ctrl-C stopped exits with status 143 or 130 once its model is saved (under `accelerate launch --multi_gpu`,
    torch elastic makes it 1)."""
    from .run_lock import RunInUseError  # the standard library only

    try:
        with _warnings_as_lines(name):
            run()
    except Exception as error:
        refused = isinstance(error, (ValueError, FileNotFoundError, FileExistsError, RunInUseError))
        if _lost_its_peer(error) and not os.environ.get("DIFFUSION_CLASSIFIERS_TRACEBACK"):
            sys.exit(f"{name}: error: stopped, another process of this run failed (see its output above, or the "
                     "launcher's exit code where it was killed)")
        if os.environ.get("DIFFUSION_CLASSIFIERS_TRACEBACK") or not (refused or _storage_refused(error)):
            raise
        written = _safetensors_file_of(error)
        if written:
            where = f" (writing {written})"
        elif refused or getattr(error, "filename", None):
            where = ""
        else:
            where = " (DIFFUSION_CLASSIFIERS_TRACEBACK=1 shows where)"
        sys.exit(f"{name}: error: {error}{where}")
    except KeyboardInterrupt:  # QA: a training script's Ctrl-C printed a traceback of the loop's innards
        if os.environ.get("DIFFUSION_CLASSIFIERS_TRACEBACK"):
            raise
        trained = "diffusion_classifiers.training.loop" in sys.modules
        resume = (  # QA: said alike before the first checkpoint, when there was none to continue from
            "; the checkpoints saved so far are kept: --resume_from_checkpoint latest continues from the last one "
            "(with none saved yet, run the command again)" if trained else ""
        )  # fmt: skip
        print(f"\n{name}: interrupted{resume}", file=sys.stderr)
        sys.exit(130)
    _exit_as_stopped_training()


# The machine's storage refused a write (QA: a full disk ended `predict` in two tracebacks naming no file): one line,
# Python's own, which names the error and the file where it knows it. safetensors reports it in its own error, with
# the OS's message; torch's checkpoint writer does not say why ("unexpected pos"): that one keeps its traceback.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _lost_its_peer(error: Exception) -> bool:
    """The error of a process of a distributed run whose peer ended (it failed, and said why): its collective call
    found the connection closed (QA: 40 lines of gloo traceback after the peer's one-line error)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not isinstance(error, RuntimeError):
        return False
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and isinstance(error, getattr(distributed, "DistNetworkError", ())):
        return True
    return re.search(r"Connection (closed|reset) by peer|remote worker crashing", str(error)) is not None


def _storage_refused(error: Exception) -> bool:
    if isinstance(error, OSError):
        return error.errno in _STORAGE_ERRORS
    return type(error).__name__ == "SafetensorError" and any(
        os.strerror(code) in str(error) for code in _STORAGE_ERRORS
    )


def _safetensors_file_of(error: Exception) -> Optional[str]:
    """The file safetensors' `save_file` was writing when it raised `error` (its own error names none: QA, a full disk
    read "Error while serializing: I/O error: File too large"), from the writer's frame; None otherwise."""
    import traceback

    if type(error).__name__ != "SafetensorError":
        return None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "save_file" and "safetensors" in frame.f_code.co_filename:
            return str(frame.f_locals.get("filename"))
    return None


def _exit_as_stopped_training() -> None:
    """A training run that SIGTERM or Ctrl-C stopped saved what it had, and the command then ends with the status of a
    process that signal terminated (128 + 15, 128 + 2), so that a shell's `&&` or a job scheduler does not take the
    run for finished."""
    if "diffusion_classifiers.training.stop_signal" not in sys.modules:
        return  # the command trained nothing
    from .training.stop_signal import pop_signal_that_stopped_training

    stopped_by = pop_signal_that_stopped_training()
    if stopped_by is not None:
        sys.exit(128 + signal.Signals[stopped_by].value)


@contextmanager
def _warnings_as_lines(name: str) -> Iterator[None]:
    """Warnings printed as `name: warning: ...`, as errors are, not with the source file and line of the library code
    that issued them (QA: every CLI warning ended in a line of this package's code); kept as they are with
    `DIFFUSION_CLASSIFIERS_TRACEBACK=1`."""
    if os.environ.get("DIFFUSION_CLASSIFIERS_TRACEBACK"):
        yield
        return
    shown = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"{name}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = shown


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    from .prediction import add_predict_args as add_args

    add_args(parser)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping a job), raised where the process is, as Ctrl-C is: its locks are released and its
    line said (QA: a SIGTERM ended predict without a word, its locks left behind)."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def stop(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(stop: KeyboardInterrupt) -> tuple:
    """How a stop is named and the exit status it gives: Ctrl-C 130, SIGTERM 143 (128 + its number)."""
    return ("stopped by SIGTERM", 128 + signal.SIGTERM) if isinstance(stop, _Terminated) else ("interrupted", 130)


def run_predict(args: argparse.Namespace) -> None:
    """`predict`; on Ctrl-C or SIGTERM, one line instead of a traceback, and exit status 130 or 143: the batches
    committed so far stay in OUTPUT.parts/, and the same command resumes after them (with `--overwrite` too: the
    prediction it replaces stays aside until its rows are merged,
    `prediction.outputs.continues_a_killed_replacement`)."""
    from .prediction import run_predict as run

    try:
        with _sigterm_as_interrupt():
            run(args)
    except KeyboardInterrupt as stop:
        how, status = _stopped(stop)
        print(f"\ndiffusion-classifiers predict: {how}; {_committed_batches(args.output)}", file=sys.stderr)
        sys.exit(status)
    except OSError as error:  # QA: a full disk's bare errno line, without a word of what was kept
        if os.environ.get("DIFFUSION_CLASSIFIERS_TRACEBACK") or not _storage_refused(error):
            raise
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # review: not a permission's
        kept = _committed_batches(args.output, "make room on the disk (or in the quota), then " if full else "")
        sys.exit(f"diffusion-classifiers predict: error: {error}; {kept}")


def _committed_batches(output: str, first: str = "") -> str:
    """What a stopped predict kept and how to go on: `first`, what to do before the rerun."""
    parts = pathlib.Path(f"{output}.parts")  # QA: named before its first batch, when it held none
    committed = len(list(parts.glob("*.csv")))  # batches of rows, or of unreadable files only
    if committed:
        return f"the batches committed so far are kept ({committed} in {parts}/): {first}rerun the same command to " \
            "resume after them"
    return f"no batch was committed yet: {first}rerun the same command to start again"


def add_aggregate_args(parser: argparse.ArgumentParser) -> None:
    from .prediction.aggregate import add_aggregate_args as add_args

    add_args(parser)


def run_aggregate(args: argparse.Namespace) -> Optional[dict]:
    from .prediction.aggregate import run_aggregate as run

    return run(args)


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    from .prediction.clustering import add_cluster_args as add_args

    add_args(parser)


@_one_run_in_output_dir("cluster")
def run_cluster(args: argparse.Namespace) -> dict:
    """`cluster`; on Ctrl-C or SIGTERM, one line instead of a traceback, and exit status 130 or 143."""
    from .prediction.clustering import run_cluster as run

    try:
        with _sigterm_as_interrupt():
            return run(args)
    except KeyboardInterrupt as stop:
        how, status = _stopped(stop)
        print(
            f"\ndiffusion-classifiers cluster: {how}; {args.output_dir} holds no report of this run (a folder "
            "holding a metrics.json holds one complete run's files): rerun the command, with --overwrite_output_dir "
            "if an earlier run's files are there",
            file=sys.stderr,
        )
        sys.exit(status)


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    from .prediction.comparison import add_compare_args as add_args

    add_args(parser)


def run_compare(args: argparse.Namespace) -> dict:
    from .prediction.comparison import run_compare as run

    return run(args)


ADD_ARGS = {
    "demo": add_demo_args, "evaluate": add_evaluate_args, "probe": add_probe_args, "fit-head": add_fit_head_args,
    "predict": add_predict_args, "aggregate": add_aggregate_args, "cluster": add_cluster_args,
    "compare": add_compare_args,
}  # fmt: skip
RUN = {
    "demo": run_demo, "evaluate": run_evaluate, "probe": run_probe, "fit-head": run_fit_head, "predict": run_predict,
    "aggregate": run_aggregate, "cluster": run_cluster, "compare": run_compare,
}  # fmt: skip


if __name__ == "__main__":
    main()

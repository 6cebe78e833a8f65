#!/usr/bin/env python
r"""Publish a saved classifier (a pipeline or a transformers model folder) on the Hub, with its model card.

    python examples/push_to_hub.py --model_dir outputs/pneumonia-probe/pipeline --repo_id my-org/unet-pneumonia \
        --metrics_json outputs/pneumonia-probe/metrics.json \
        --dataset_name PneumoniaMNIST --dataset_license "CC BY 4.0" \
        --training_command "accelerate launch examples/unet_features_train.py ...; diffusion-classifiers probe ..." \
        --evaluation_command "diffusion-classifiers probe --unet_dir outputs/unet-pneumonia ..."

The card is the one of the folder's method (read from its model_index.json or config.json), lists the model's
class names, and carries the metrics of `--metrics_json` (the demo's or an evaluation's `metrics.json`, or the
`<name>.metrics.json` of `diffusion-classifiers aggregate`, whose counts the card names as the groups they are) as
model-index results, under the split that file records (`--dataset_split` for a file that records none). The model
folder is only read; a failed upload leaves it unchanged. Its `data_splits.json` is uploaded without the training
images' fingerprints (`train_fingerprints`: anyone holding a scan could test whether the model was trained on it).
`--dry_run` writes the folder as it would be uploaded (with its card as README.md) to `--output_dir` instead, without
any network.
"""

import argparse
import os
import re
import sys
import warnings
from typing import Optional

from huggingface_hub.errors import OfflineModeIsEnabled

from diffusion_classifiers import pipelines
from diffusion_classifiers.data import ONE_SET, canonical_split_name
from diffusion_classifiers.data.split_record import trained_on_unlabeled_pool
from diffusion_classifiers.evaluation import pipeline_call_settings
from diffusion_classifiers.hub import (
    METHODS,
    HubUploadError,
    check_repo_id,
    class_names_of,
    input_description_of,
    library_name_of,
    load_eval_counts,
    load_eval_grouping,
    load_eval_head,
    load_eval_intervals,
    load_eval_metrics,
    load_eval_operating_point,
    load_eval_per_class,
    load_eval_positive_class,
    load_eval_seed_sensitivity,
    load_eval_split,
    method_of,
    model_fingerprint,
    pipeline_class_name_of,
    positive_class_of,
    push_to_hub,
    read_metrics_json,
    render_model_card,
    usage_file_of,
    write_dry_run,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a saved pipeline or transformers model folder")
    parser.add_argument("--repo_id", required=True, help="the Hub repository, e.g. my-org/unet-pneumonia")
    parser.add_argument(
        "--method", default=None, choices=METHODS,
        help="the folder's method (default: read from its model_index.json or config.json); one it contradicts is "
        "refused",
    )  # fmt: skip
    parser.add_argument("--metrics_json", required=True, help="metrics.json written by the demo or an evaluation")
    parser.add_argument(
        "--dataset_name", required=True, help="the training data's name as the card shows it, e.g. PneumoniaMNIST"
    )
    parser.add_argument("--dataset_license", required=True, help="the training data's licence, e.g. 'CC BY 4.0'")
    parser.add_argument("--training_command", required=True, help="the exact command that trained the model")
    parser.add_argument("--evaluation_command", required=True, help="the exact command that wrote --metrics_json")
    parser.add_argument(
        "--dataset_split", default=None,
        help="the split --metrics_json was measured on (default: the split it records: an evaluation's 'split', "
        "'test' for the demo's); required for a metrics.json that records none; one it contradicts is refused",
    )  # fmt: skip
    parser.add_argument("--dataset_id", default=None, help="the dataset's Hub id, if it has one")
    parser.add_argument(
        "--eval_dataset_name", default=None,
        help="the data --metrics_json was measured on, when it is not the training data (an external set scored with "
        "evaluate --split all); default: --dataset_name, or for a --split all evaluation the data set its "
        "metrics.json names",
    )  # fmt: skip
    parser.add_argument(
        "--dataset_citation", default=None,
        help="how the data's providers ask to be cited, shown under the card's training data: the text (e.g. a "
        "BibTeX entry) or a file holding it (default: none)",
    )  # fmt: skip
    parser.add_argument("--model_name", default=None, help="the model-index name (default: the repository name)")
    parser.add_argument(
        "--license", default=None,
        help="the model's licence (a Hub licence id; default: apache-2.0, unless --dataset_license is non-commercial, "
        "share-alike or no-derivatives, which must be stated): choose one the training data's licence allows",
    )  # fmt: skip
    parser.add_argument("--medical", action=argparse.BooleanOptionalAction, default=False,
                        help="medical imaging data: add the 'not a diagnostic device' warning and tag (default: off)")
    parser.add_argument("--dry_run", action="store_true",
                        help="write the folder and card that would be uploaded to --output_dir; upload nothing")
    parser.add_argument("--output_dir", default=None,
                        help="where --dry_run writes (a new or empty folder; default: <model_dir>-dry-run)")
    parser.add_argument("--private", action="store_true",
                        help="create the repository as private; an existing public one is refused (default: the Hub's "
                        "default visibility)")
    parser.add_argument("--token", default=None, help="a Hub token (default: the saved login or HF_TOKEN)")
    parser.add_argument("--revision", default=None, help="an existing branch to commit to (default: main)")
    args = parser.parse_args(argv)
    try:
        check_repo_id(args.repo_id)  # before the card is rendered with it, dry run or not
    except ValueError as error:
        parser.error(f"--repo_id: {error}")
    return args


def dataset_citation(given):
    """`--dataset_citation`: the text of the file it names, else itself."""
    if given is not None and os.path.isfile(given):
        with open(given, encoding="utf-8") as f:
            return f.read()
    return given


def main(argv=None):
    args = parse_args(argv)
    try:
        publish(args)
    except (HubUploadError, OfflineModeIsEnabled) as error:
        # One line: the failure, not a traceback (the model folder is unchanged).
        sys.exit(f"push_to_hub.py: {' '.join(str(error).split())}")
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"push_to_hub.py: {error}")


def publish(args):
    check_metrics_are_the_models(args.metrics_json, args.model_dir)
    class_names = class_names_of(args.model_dir)
    recorded = read_metrics_json(args.metrics_json)
    pruning = (recorded.get("pipeline_call") or {}).get("pruning") is not None and len(class_names or []) > 2
    split = dataset_split(args.metrics_json, args.dataset_split)
    check_held_out_operating_point(args.metrics_json)
    card = render_model_card(
        method(args.model_dir, args.method),
        **load_eval_counts(args.metrics_json),
        grouping=load_eval_grouping(args.metrics_json),
        pruning=pruning,
        seed_sensitivity=load_eval_seed_sensitivity(args.metrics_json),
        call_arguments=call_arguments(recorded.get("pipeline_call"), args.model_dir),
        model_name=args.model_name or args.repo_id.split("/")[-1],
        repo_id=args.repo_id,
        dataset_name=args.dataset_name,
        dataset_id=args.dataset_id,
        dataset_split=split,
        eval_dataset_name=eval_dataset_name(args, recorded, split),
        eval_data_source=recorded.get("dataset") if split != ONE_SET else None,
        operating_point=load_eval_operating_point(args.metrics_json),
        head_summary=load_eval_head(args.metrics_json),
        dataset_license=args.dataset_license,
        metrics=load_eval_metrics(args.metrics_json),
        per_class=load_eval_per_class(args.metrics_json),
        intervals=load_eval_intervals(args.metrics_json),
        training_command=args.training_command,
        evaluation_command=args.evaluation_command,
        class_names=class_names,
        positive_class=load_eval_positive_class(args.metrics_json) or positive_class_of(args.model_dir),
        license=model_license(args.license, args.dataset_license),
        library_name=library_name_of(args.model_dir),
        medical=args.medical,
        input_description=input_description_of(args.model_dir, medical=args.medical),
        usage_file=usage_file_of(args.model_dir, medical=args.medical),
        unlabeled_pool=trained_on_unlabeled_pool(args.model_dir),
        dataset_citation=dataset_citation(args.dataset_citation),
    )
    if args.dry_run:
        output_dir = args.output_dir or f"{args.model_dir.rstrip('/')}-dry-run"
        write_dry_run(args.model_dir, output_dir, card=card)
        print(f"dry run: wrote what would be pushed to {args.repo_id} to {output_dir} (nothing uploaded)")
        return
    info = push_to_hub(
        args.model_dir, args.repo_id, card=card, token=args.token, private=args.private, revision=args.revision
    )
    print(f"pushed {args.model_dir} to {info.commit_url}")


def model_license(license: Optional[str], dataset_license: str) -> str:
    """`--license`, else apache-2.0; not given, a training-data licence with terms the weights may inherit
    (non-commercial, share-alike, no-derivatives: CC BY-NC-SA 4.0) is refused, so the choice is the user's."""
    if license is not None:
        return license
    terms = {"nc": "non-commercial", "sa": "share-alike", "nd": "no-derivatives"}
    found = [terms[token] for token in re.split(r"[\s_-]+", dataset_license.lower()) if token in terms]
    if found:
        raise ValueError(
            f"--license: not given, and --dataset_license {dataset_license!r} is {', '.join(found)}: the default "
            "apache-2.0 may not be what it allows for a model trained on it; state the model's licence (--license)"
        )
    return "apache-2.0"


def check_metrics_are_the_models(metrics_json: str, model_dir: str) -> None:
    """The metrics of `metrics_json` were measured on the model in `model_dir`: the `model_sha256` that `evaluate`
    recorded (or `aggregate` carried over from its predictions' sidecar) must be the folder's
    (`hub.model_fingerprint`); a metrics.json without one (of an earlier version, or aggregated from predictions
    without their sidecar) is published with a warning."""
    recorded = read_metrics_json(metrics_json).get("model_sha256")
    if recorded is None:
        warnings.warn(
            f"{metrics_json} does not record which model it was measured on (written by an earlier version, or "
            f"aggregated from predictions without their .json sidecar): check that its metrics are those of "
            f"{model_dir}",
            UserWarning,
            stacklevel=2,
        )
        return
    actual = model_fingerprint(model_dir)
    if recorded != actual:
        raise ValueError(
            f"{metrics_json} was measured on another model (model_sha256 {recorded[:12]}...) than {model_dir} "
            f"({actual[:12]}...): its metrics would be published on the wrong model's card; evaluate {model_dir} and "
            "pass that metrics.json"
        )


def call_arguments(pipeline_call: Optional[dict], model_dir: str) -> Optional[dict]:
    """The settings of the pipeline call the metrics were measured with (`metrics.json`'s "pipeline_call") that
    differ from the defaults of the folder's pipeline class: what the card's snippet passes to score as they were."""
    if not pipeline_call or library_name_of(model_dir) != "diffusers":
        return None
    pipeline_class = getattr(pipelines, pipeline_class_name_of(model_dir) or "", None)
    if pipeline_class is None:
        return None
    defaults = pipeline_call_settings(pipeline_class)
    return {name: value for name, value in pipeline_call.items() if name in defaults and value != defaults[name]}


def method(model_dir: str, given: Optional[str]) -> str:
    """The card's method: the folder's (`hub.method_of`); a given --method must be the same."""
    inferred = method_of(model_dir)
    if given is not None and given != inferred:
        raise ValueError(
            f"--method {given!r} contradicts {model_dir}, a {inferred!r} model (by its model_index.json or "
            "config.json); leave --method out to use the folder's"
        )
    return inferred


def eval_dataset_name(args, recorded: dict, split: str) -> str:
    """The data the card's results name: `--eval_dataset_name`; else, for metrics of every image of a data set
    (`evaluate --split all`, or `aggregate` of predictions of a folder or CSV: an external set, not a split of the
    training data, refused unless its images were checked against the training images), the one `metrics.json`
    names; else `--dataset_name`."""
    if split == ONE_SET and recorded.get("training_images_checked") is not True:
        raise ValueError(
            f"{args.metrics_json} scores every image of a data set (evaluate --split all, or aggregate of predictions "
            "of a folder or CSV), but could not check them against the model's training images (its metrics.json "
            "does not record that they were: a model that records none, or predictions without predict's "
            "training_image column): such figures may include them; evaluate or predict with a model that records "
            "its training images' fingerprints, or a held-out split"
        )
    if args.eval_dataset_name is not None:
        return args.eval_dataset_name
    if split == ONE_SET:
        if not recorded.get("dataset"):
            raise ValueError(
                f"{args.metrics_json} scores every image of a data set (evaluate --split all, or aggregate of "
                "predictions of a folder or CSV), not the training data, and does not name it; pass "
                "--eval_dataset_name"
            )
        return recorded["dataset"]
    return args.dataset_name


def check_held_out_operating_point(metrics_json: str) -> None:
    """Refuse metrics measured at a threshold chosen on the very images they score (`evaluate --target_sensitivity`
    without `--threshold` from another run): their sensitivity meets the target by construction (QA: a card published
    test sensitivity 0.90 at a threshold chosen on test)."""
    point = load_eval_operating_point(metrics_json)
    if point is None or point.get("target_sensitivity") is None:
        return
    measured = read_metrics_json(metrics_json)
    measured = measured.get("test", measured)
    chosen = (point.get("chosen_on"), point.get("dataset"))  # review: applied by --threshold to the split it came from
    if not point.get("from") or (chosen[0] is not None and chosen == (measured.get("split"), measured.get("dataset"))):
        raise ValueError(
            f"{metrics_json}: its threshold was chosen on the images it scores, for a sensitivity of at least "
            f"{point['target_sensitivity']}: its figures meet the target by construction; choose it on val and pass "
            "the metrics.json of `evaluate --threshold <val metrics.json>` on test"
        )


def dataset_split(metrics_json: str, given: Optional[str]) -> str:
    """The split the card names: the one `metrics_json` records, else `given` (--dataset_split); they must agree, and
    the train split is refused (the model was fitted on it)."""
    recorded = load_eval_split(metrics_json)
    if recorded is None and given is None:
        raise ValueError(
            f"{metrics_json} does not record the split its metrics were measured on; pass --dataset_split (e.g. test)"
        )
    if recorded is not None and given is not None and canonical_split_name(given) != canonical_split_name(recorded):
        raise ValueError(
            f"--dataset_split {given!r} contradicts {metrics_json}, whose metrics were measured on the {recorded!r} "
            "split; leave --dataset_split out to use the recorded one"
        )
    split = given or recorded
    if canonical_split_name(split) == "train":  # the images the model (its head, its U-Net) was fitted on
        raise ValueError(
            f"{metrics_json}: its metrics were measured on the train split, the images the model was fitted on: a card "
            "must carry held-out figures; evaluate the test (or val) split and pass that metrics.json"
        )
    return split


if __name__ == "__main__":
    main()

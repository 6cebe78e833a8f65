#!/usr/bin/env python
r"""Train a class-conditional score model (VP-SDE, epsilon prediction) on labeled images; save a
`ScoreSDEClassifierPipeline` whose `model_index.json` carries the class names.

    accelerate launch examples/score_sde_train.py --dataset ../shared/data/medmnist_pneumonia/pneumoniamnist.npz \
        --output_dir outputs/score-sde-pneumonia --max_train_steps 20000 --use_ema --class_balanced

`--label_dropout p` (default 0.1) replaces that fraction of labels by a null class (id K), so the same U-Net also
learns the unconditional score; the classifier never scores the null class. The val split carved from data
without splits of its own (`--val_fraction`) is not trained on: it is kept for choosing how to score, e.g.
`diffusion-classifiers evaluate --split val --pipeline_kwargs '{"weighting": "elbo", "timestep_spacing": "log_snr"}'`
against the defaults, before the test split is read. Data larger than memory (an image or
DICOM folder, a CSV of paths, a saved datasets folder): `--streaming --num_channels 1 --dataloader_num_workers 4`.
On a CPU-only machine, real
multi-process DDP needs: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1
--mixed_precision no --dynamo_backend no examples/score_sde_train.py ...
"""

import argparse

from accelerate import PartialState

from diffusion_classifiers.cli import add_positive_class_arg, note_default_positive_class, run_from_shell
from diffusion_classifiers.data import (
    add_data_args,
    reading_from_args,
    training_data_from_args,
)
from diffusion_classifiers.data.arguments import number_in
from diffusion_classifiers.metrics import resolve_positive_label
from diffusion_classifiers.pipelines import ScoreSDEClassifierPipeline
from diffusion_classifiers.training import (
    add_diffusion_args,
    add_training_args,
    check_run_can_start,
    save_trained_pipeline,
    score_sde_objective,
    train_score_sde_unet,
    training_args_from_namespace,
)
from diffusion_classifiers.validation import check_two_classes_at_least


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, streaming=True)
    add_diffusion_args(parser)
    parser.add_argument(
        "--label_dropout",
        type=number_in("[0, 1)"),
        default=0.1,
        help="Fraction of labels replaced by the null class, for the unconditional score (default: %(default)s).",
    )
    parser.add_argument(
        "--class_balanced", action="store_true", help="Draw every class equally often (default: %(default)s)."
    )
    add_positive_class_arg(parser, saved_model=False)
    add_training_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    training_args = training_args_from_namespace(args)
    reading = reading_from_args(args)
    objective = score_sde_objective(args.label_dropout, args.class_balanced, args.num_train_timesteps, reading)
    check_run_can_start(training_args, objective)  # before the data is read
    train = training_data_from_args(args)["train"]
    check_two_classes_at_least(train.class_names, f"--dataset {args.dataset}", "a class-conditional score model")
    resolve_positive_label(args.positive_class, train.class_names, train.num_classes)  # before training
    if PartialState().is_main_process:
        note_default_positive_class(args.positive_class, train.class_names)
    images, labels = (train, None) if args.streaming else (train.images, train.labels)  # a dataset carries its labels
    unet, scheduler, _ = train_score_sde_unet(
        training_args, images, labels, num_classes=train.num_classes, preset=args.unet_preset,
        num_train_timesteps=args.num_train_timesteps, label_dropout=args.label_dropout,
        class_balanced=args.class_balanced, class_names=train.class_names, reading=reading,
    )
    if PartialState().is_main_process:
        pipeline = ScoreSDEClassifierPipeline(
            unet=unet, scheduler=scheduler, class_names=train.class_names, preprocessing=train.preprocessing
        )
        pipeline.set_positive_class(args.positive_class)  # the log-likelihood ratio's numerator, saved
        save_trained_pipeline(pipeline, args, train)  # with data_splits.json, for probe and evaluate
        print(f"saved the pipeline to {args.output_dir} (load it with DiffusionClassifierPipeline.from_pretrained)")


if __name__ == "__main__":
    run_from_shell("score_sde_train.py", main)  # a refused input: one line, no traceback

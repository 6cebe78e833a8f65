#!/usr/bin/env python
r"""Train an unconditional DDPM U-Net on unlabeled images; save a `UNetFeatureClassifierPipeline` (no head yet).

    accelerate launch examples/unet_features_train.py --dataset ../shared/data/medmnist_pneumonia/pneumoniamnist.npz \
        --output_dir outputs/unet-pneumonia --max_train_steps 5000 --use_ema

An image folder (DICOM included), a CSV of paths or a saved datasets folder larger than memory: add `--streaming
--num_channels 1 --dataloader_num_workers 4` (images decoded only when a batch needs them, by worker processes).

On a CPU-only machine, real multi-process DDP needs: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no examples/unet_features_train.py ...
"""

import argparse

from accelerate import PartialState

from diffusion_classifiers.cli import run_from_shell
from diffusion_classifiers.data import (
    add_data_args,
    reading_from_args,
    training_data_from_args,
)
from diffusion_classifiers.pipelines import UNetFeatureClassifierPipeline
from diffusion_classifiers.training import (
    add_diffusion_args,
    add_training_args,
    check_run_can_start,
    ddpm_objective,
    save_trained_pipeline,
    train_ddpm_unet,
    training_args_from_namespace,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, streaming=True, unlabeled=True)
    add_diffusion_args(parser)
    add_training_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    training_args = training_args_from_namespace(args)
    reading = reading_from_args(args)
    check_run_can_start(training_args, ddpm_objective(args.num_train_timesteps, reading))  # before the data is read
    train = training_data_from_args(args)["train"]
    unet, scheduler, _ = train_ddpm_unet(
        training_args, train if args.streaming else train.images, preset=args.unet_preset,
        num_train_timesteps=args.num_train_timesteps, reading=reading,
    )  # fmt: skip
    if PartialState().is_main_process:
        pipeline = UNetFeatureClassifierPipeline(unet=unet, scheduler=scheduler, preprocessing=train.preprocessing)
        save_trained_pipeline(pipeline, args, train)  # with data_splits.json, for probe and evaluate
        print(f"saved the pipeline to {args.output_dir} (load it with DiffusionClassifierPipeline.from_pretrained)")


if __name__ == "__main__":
    run_from_shell("unet_features_train.py", main)  # a refused input: one line, no traceback

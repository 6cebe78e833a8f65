#!/usr/bin/env python
r"""Train the RC-DiT's ViT encoder alone with a contrastive (SimCLR) or self-distillation (DINO) objective on the
same unlabeled images, for the same number of optimizer steps: the baseline of the RC-DiT representation. Saves the
encoder with `save_pretrained` to `--output_dir` (load it with `transformers.AutoModel.from_pretrained`); its
`config.representation_readout` says how r was read out of it in training (`--readout`): with "cls" or "mean_patch"
the saved ViT's pooler is its untrained initialisation, and its `pooler_output` not the trained representation.

With `--encoder_name_or_path` (a DINOv2 folder with its preprocessor_config.json) the encoder reads the images
exactly as `rc_dit_train.py`'s does: the same 1- or 3-channel data, made RGB, resized to the processor's crop size and
normalised by its mean and std (`encoder_preprocessing_from_args`); its image processor is saved beside it.

    accelerate launch examples/rc_dit_train_contrastive_baseline.py --dataset ../shared/data/medmnist_pneumonia/pneumoniamnist.npz \
        --output_dir outputs/simclr-pneumonia --method simclr --encoder_hidden_size 192 --max_train_steps 20000

On a CPU-only machine, real multi-process DDP needs: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no examples/rc_dit_train_contrastive_baseline.py ...
"""

import argparse

from accelerate import PartialState
from transformers import AutoImageProcessor

from diffusion_classifiers.cli import run_from_shell
from diffusion_classifiers.data import add_data_args, training_data_from_args
from diffusion_classifiers.data.arguments import number_in
from diffusion_classifiers.models.encoders import REPRESENTATION_READOUTS
from diffusion_classifiers.training import (
    METHODS,
    add_encoder_args,
    add_training_args,
    build_vit_encoder_from_args,
    check_run_can_start,
    encoder_preprocessing_from_args,
    save_model_whole,
    train_contrastive_encoder,
    training_args_from_namespace,
)
from diffusion_classifiers.training.arguments import check_encoder_args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, unlabeled=True)
    parser.add_argument(
        "--method", default="simclr", choices=METHODS, help="The label-free objective (default: %(default)s)."
    )
    add_encoder_args(parser)
    parser.add_argument(
        "--augmentation_strength",
        type=number_in("[0, inf)"),
        default=1.0,
        help="Scales colour jitter and blur; 0 keeps only crop and flip (default: %(default)s).",
    )
    parser.add_argument(
        "--min_crop_scale", type=number_in("(0, 1]"), default=0.25,
        help="Smallest random-crop area fraction (default: %(default)s).",
    )
    parser.add_argument(
        "--flip_p", type=number_in("[0, 1]"), default=0.5,
        help="Horizontal flip probability, 0 for digits (default: %(default)s).",
    )
    parser.add_argument(
        "--temperature", type=number_in("(0, inf)"), default=0.2,
        help="SimCLR: NT-Xent temperature (default: %(default)s).",
    )
    parser.add_argument(
        "--projection_dim", type=number_in("[1, inf)", int), default=128,
        help="SimCLR: projection head output size (default: %(default)s).",
    )
    parser.add_argument(
        "--dino_out_dim", type=number_in("[1, inf)", int), default=4096,
        help="DINO: head output size (prototypes) (default: %(default)s).",
    )
    parser.add_argument(
        "--teacher_temperature", type=number_in("(0, inf)"), default=0.04,
        help="DINO: teacher temperature (default: %(default)s).",
    )
    parser.add_argument(
        "--student_temperature", type=number_in("(0, inf)"), default=0.1,
        help="DINO: student temperature (default: %(default)s).",
    )
    parser.add_argument(
        "--teacher_momentum",
        type=number_in("[0, 1]"),
        default=0.996,
        help="DINO: initial teacher EMA momentum, cosine schedule to 1 (default: %(default)s).",
    )
    parser.add_argument(
        "--num_local_views", type=number_in("[0, inf)", int), default=0,
        help="DINO: multi-crop local views per image (default: %(default)s).",
    )
    parser.add_argument(
        "--readout", default=None, choices=REPRESENTATION_READOUTS,
        help="How r is read out of the ViT (default: the benchmarks' baselines', chosen on val there: the pooler for "
        "SimCLR, the CLS token for DINO).",
    )
    parser.add_argument(
        "--dino_head_batch_norm", action=argparse.BooleanOptionalAction, default=True,
        help="DINO: BatchNorm in the head's MLP, the only DINO head that beat the random encoder in the recipe "
        "benchmark (default: %(default)s).",
    )
    parser.add_argument(
        "--save_student",
        action="store_true",
        help="DINO: save the student's encoder, not the teacher's (default: %(default)s).",
    )
    add_training_args(parser)
    return parser.parse_args(argv)


def objective_kwargs(args) -> dict:
    readout = args.readout or ("pooler" if args.method == "simclr" else "cls")
    common = dict(
        strength=args.augmentation_strength, crop_scale=(args.min_crop_scale, 1.0), flip_p=args.flip_p, readout=readout
    )
    if args.method == "simclr":
        return dict(common, temperature=args.temperature, projection_dim=args.projection_dim)
    return dict(
        common,
        use_bn=args.dino_head_batch_norm,
        out_dim=args.dino_out_dim,
        teacher_temperature=args.teacher_temperature,
        student_temperature=args.student_temperature,
        teacher_momentum=args.teacher_momentum,
        num_local_views=args.num_local_views,
        return_teacher=not args.save_student,
    )


def main(argv=None):
    args = parse_args(argv)
    training_args = training_args_from_namespace(args)
    check_run_can_start(training_args)  # before the data is read
    check_encoder_args(args)
    images = training_data_from_args(args)["train"].images
    encoder = build_vit_encoder_from_args(args, images)  # seeded: the same initial encoder as rc_dit_train.py
    # a pretrained encoder's input prepared as rc_dit_train.py prepares it (its processor's size, mean and std)
    preprocessing = encoder_preprocessing_from_args(args)
    encoder = train_contrastive_encoder(
        training_args, images, encoder, method=args.method, preprocessing=preprocessing, **objective_kwargs(args)
    )
    if PartialState().is_main_process:
        def save(folder: str) -> None:
            encoder.save_pretrained(folder)
            if preprocessing is not None:  # whoever loads the encoder reads the images through the same processor
                AutoImageProcessor.from_pretrained(args.encoder_name_or_path).save_pretrained(folder)

        save_model_whole(args.output_dir, save)
        readout = encoder.config.representation_readout
        print(
            f"saved the encoder to {args.output_dir} (load it with transformers.AutoModel.from_pretrained; read r "
            f"out of it as trained, readout={readout!r}, its config.representation_readout, which "
            "encode_representation(encoder, images) reads by default)"
        )


if __name__ == "__main__":
    run_from_shell("rc_dit_train_contrastive_baseline.py", main)  # a refused input: one line, no traceback

#!/usr/bin/env python
r"""Train a ViT encoder and a representation-conditioned DiT together on unlabeled images; save a
`RepresentationConditionedDiTPipeline` (no head yet: fit one on `pipe.encode` features).

    accelerate launch examples/rc_dit_train.py --dataset ../shared/data/medmnist_pneumonia/pneumoniamnist.npz \
        --output_dir outputs/rc-dit-pneumonia --dit_size S --encoder_hidden_size 192 --max_train_steps 20000 --use_ema

Data larger than memory (an image or DICOM folder, a CSV of paths, a saved datasets folder): `--streaming
--num_channels 1 --dataloader_num_workers 4`. On a CPU-only machine, real multi-process DDP needs:
ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no
--dynamo_backend no examples/rc_dit_train.py ...
"""

import argparse
import logging
import os
from typing import Optional

from accelerate import PartialState
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from diffusion_classifiers.cli import run_from_shell
from diffusion_classifiers.data import (
    add_data_args,
    reading_from_args,
    training_data_from_args,
)
from diffusion_classifiers.data.arguments import number_in
from diffusion_classifiers.models import (
    RC_DIT_SIZES,
    REPRESENTATION_INJECTIONS,
    REPRESENTATION_NORMS,
    REPRESENTATION_READOUTS,
)
from diffusion_classifiers.pipelines import RepresentationConditionedDiTPipeline
from diffusion_classifiers.training import (
    DEFAULT_DENOISER_MASK_RATIO,
    DEFAULT_MASKED_TARGET,
    LOSS_WEIGHTINGS,
    MASKED_TARGETS,
    add_diffusion_args,
    add_encoder_args,
    add_training_args,
    build_vit_encoder_from_args,
    check_run_can_start,
    encoder_preprocessing_from_args,
    rc_dit_objective,
    save_trained_pipeline,
    train_rc_dit,
    training_args_from_namespace,
)
from diffusion_classifiers.training.arguments import check_encoder_args
from diffusion_classifiers.validation import check_no_pickled_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser, streaming=True, unlabeled=True)
    parser.add_argument(
        "--dit_size", default="S", choices=sorted(RC_DIT_SIZES), help="DiT width and depth (default: %(default)s)."
    )
    parser.add_argument(
        "--patch_size", type=number_in("[1, inf)", int), default=None,
        help="DiT patch size (default: %(default)s, the DiT size's).",
    )
    parser.add_argument(
        "--rep_dropout",
        type=number_in("[0, 1]"),
        default=0.1,
        help="Probability of the null representation in training, for guidance (default: %(default)s).",
    )
    add_encoder_args(parser)
    parser.add_argument(
        "--representation_readout",
        default="mean_patch",
        choices=REPRESENTATION_READOUTS,
        help="How r is read out of the encoder: the mean of its final-layernormed patch tokens, their CLS token or "
        "the tanh pooler (default: %(default)s).",
    )
    parser.add_argument(
        "--representation_norm",
        default="batch",
        choices=REPRESENTATION_NORMS,
        help="Standardise r per dimension across the batch before it conditions the DiT, which keeps it from "
        "collapsing (default: %(default)s).",
    )
    parser.add_argument(
        "--representation_injection",
        default="adaln",
        choices=REPRESENTATION_INJECTIONS,
        help="Where r enters the DiT: one projection into every block's adaLN modulation, one projection per block, "
        "or one more token the patch tokens attend to (default: %(default)s).",
    )
    parser.add_argument(
        "--encoder_learning_rate_scale",
        type=number_in("(0, inf)"),
        default=1.0,
        help="The encoder's learning rate over the DiT's --learning_rate (default: %(default)s).",
    )
    parser.add_argument(
        "--loss_weighting",
        default="epsilon",
        choices=LOSS_WEIGHTINGS,
        help="Weighting of the loss over timesteps: the noise loss, Min-SNR-5, or max(1, 1/SNR), which makes the "
        "high-noise timesteps count (default: %(default)s).",
    )
    parser.add_argument(
        "--denoiser_mask_ratio",
        type=number_in("[0, 1)"),
        default=DEFAULT_DENOISER_MASK_RATIO,
        help="Fraction of the DiT's patches hidden in x_t and reconstructed from r, which makes the denoiser rely on "
        "r; 0 trains a plain conditional denoiser (default: %(default)s).",
    )
    parser.add_argument(
        "--denoiser_mask_probability",
        type=number_in("(0, 1]"),
        default=1.0,
        help="Share of the images that are masked; the others train the DiT as the whole-image denoiser that "
        "sampling needs; 0.5 keeps a DiT that generates, at the cost of a worse r (default: %(default)s).",
    )
    parser.add_argument(
        "--masked_target",
        default=DEFAULT_MASKED_TARGET,
        choices=MASKED_TARGETS,
        help="What a hidden patch is reconstructed as: its content standardised per patch, which gives the better r, "
        "or its pixels (default: %(default)s).",
    )
    parser.add_argument(
        "--freeze_encoder",
        action="store_true",
        help="Keep the encoder fixed: train only the DiT (default: %(default)s).",
    )
    add_diffusion_args(parser, unet_preset=False)
    parser.add_argument(
        "--vae",
        default=None,
        help="An AutoencoderKL directory or Hub id: train in its latent space (default: %(default)s, pixel space).",
    )
    parser.add_argument(
        "--vae_subfolder",
        default=None,
        help='Subfolder of --vae holding the AutoencoderKL, e.g. "vae" for a Stable Diffusion repository '
        "(default: %(default)s).",
    )
    add_training_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _show_representation_diagnostics()
    training_args = training_args_from_namespace(args)
    reading = reading_from_args(args)
    objective = rc_dit_objective(
        args.num_train_timesteps, args.freeze_encoder, args.loss_weighting, args.denoiser_mask_ratio,
        args.denoiser_mask_probability, args.masked_target, reading,
    )  # fmt: skip
    check_run_can_start(training_args, objective)  # before the data is read
    check_encoder_args(args)
    vae = load_vae(args.vae, args.vae_subfolder)
    train = training_data_from_args(args)["train"]
    images = train if args.streaming else train.images
    encoder = build_vit_encoder_from_args(args, images)
    encoder, transformer, scheduler, _ = train_rc_dit(
        training_args,
        images,
        encoder,
        dit_size=args.dit_size,
        patch_size=args.patch_size,
        rep_dropout=args.rep_dropout,
        num_train_timesteps=args.num_train_timesteps,
        freeze_encoder=args.freeze_encoder,
        vae=vae,
        representation_readout=args.representation_readout,
        representation_norm=args.representation_norm,
        representation_injection=args.representation_injection,
        encoder_learning_rate_scale=args.encoder_learning_rate_scale,
        loss_weighting=args.loss_weighting,
        denoiser_mask_ratio=args.denoiser_mask_ratio,
        denoiser_mask_probability=args.denoiser_mask_probability,
        masked_target=args.masked_target,
        encoder_preprocessing=encoder_preprocessing_from_args(args),
        reading=reading,
    )
    if PartialState().is_main_process:
        pipe = RepresentationConditionedDiTPipeline(encoder, transformer, scheduler, vae=vae, preprocessing=train.preprocessing)
        save_trained_pipeline(pipe, args, train)  # with data_splits.json, for probe and evaluate
        print(f"saved the pipeline to {args.output_dir} (load it with DiffusionClassifierPipeline.from_pretrained)")


def load_vae(vae: Optional[str], subfolder: Optional[str]) -> Optional[AutoencoderKL]:
    """The `--vae` (in its `--vae_subfolder`), or None for pixel space; one that cannot be loaded is refused by name
    before the data is read."""
    if vae is None:
        if subfolder is not None:
            raise ValueError(f"--vae_subfolder {subfolder}: a subfolder of --vae, which was not given; pass --vae")
        return None
    check_no_pickled_weights(os.path.join(vae, subfolder or ""), "diffusion_pytorch_model.safetensors")
    try:
        return AutoencoderKL.from_pretrained(vae, subfolder=subfolder, use_safetensors=True)
    except OSError as error:  # no such folder or Hub repository, or no AutoencoderKL in it
        raise ValueError(f"--vae {vae}: cannot load an AutoencoderKL: {' '.join(str(error).split())}") from error


class _ProgressBarSafeHandler(logging.Handler):
    """Log lines printed above the training's progress bar, not appended to it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


def _show_representation_diagnostics() -> None:
    """At every checkpoint, the spread of r and the denoising error with own, shuffled and null r on the console."""
    handler = _ProgressBarSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    diagnostics = logging.getLogger("diffusion_classifiers.training.rc_dit_diagnostics")
    if not diagnostics.handlers:
        diagnostics.addHandler(handler)
    diagnostics.setLevel(logging.INFO)


if __name__ == "__main__":
    run_from_shell("rc_dit_train.py", main)  # a refused input: one line, no traceback

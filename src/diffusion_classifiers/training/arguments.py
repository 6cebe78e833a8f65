"""Training arguments and the command-line flags of the example scripts.

`TrainingArguments` holds the flags of the one training loop, named as in diffusers' `examples/*/train_*.py`;
`add_training_args` turns each field into a `--flag` whose help shows its default. `add_encoder_args` and
`build_vit_encoder_from_args` are the encoder flags the RC-DiT and contrastive trainers share.
"""

import argparse
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Optional

from ..data.arguments import number_in
from ..models.unet_presets import UNET_PRESETS

__all__ = [
    "TrainingArguments",
    "add_diffusion_args",
    "add_encoder_args",
    "add_training_args",
    "build_vit_encoder_from_args",
    "check_encoder_args",
    "encoder_preprocessing_from_args",
    "training_args_from_namespace",
]

# diffusers' `SchedulerType` values (tests/test_training.py checks they agree), written out so that the flags, and a
# script's `--help`, need neither diffusers nor torch
SCHEDULER_NAMES = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "piecewise_constant",
)  # fmt: skip

# `torch.compile`'s modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs

# the mixed precisions the loop trains in (accelerate's "fp8" needs libraries and GPUs it was never tested with)
MIXED_PRECISIONS = ("no", "fp16", "bf16")

# the length of a run given neither `--max_train_steps` nor `--num_epochs`
DEFAULT_MAX_TRAIN_STEPS = 1000
# where `add_training_args(parser, max_train_steps=N)` keeps N: `--max_train_steps` itself defaults to None, so that
# `--num_epochs` given alone is not met by a default step count (argparse cannot tell a default from a given value)
_DEFAULT_STEPS_DEST = "_default_max_train_steps"


def _none_or_positive(value: Optional[int]) -> bool:
    return value is None or value >= 1


def _finite_at_least(value: float, low: float, above: bool = False) -> bool:
    """`value` is a finite number >= `low` (> `low` with `above`): NaN and inf fail, which comparisons alone let
    through (QA: `--ema_power nan` trained and saved a model of NaN weights over a good one)."""
    return math.isfinite(value) and (value > low if above else value >= low)


def _flag(default, help: str):
    """A dataclass field whose `help` becomes the help of its `--flag`."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainingArguments:
    """Training flags, named as in diffusers' example scripts; each field's `help` says what it does."""

    output_dir: str = field(metadata={"help": "Where checkpoints, the training summary and the trained model go."})
    train_batch_size: int = _flag(64, "Batch size per process for the training dataloader.")
    max_train_steps: Optional[int] = _flag(
        None,
        f"Total optimizer steps; give it or `--num_epochs`, not both; with neither, {DEFAULT_MAX_TRAIN_STEPS} steps.",
    )
    num_epochs: Optional[int] = _flag(
        None, "Epochs to train (passes over the training data); give it or `--max_train_steps`, not both."
    )
    learning_rate: float = _flag(2e-4, "Peak learning rate of AdamW, after warmup.")
    lr_scheduler: str = _flag(
        "cosine", 'Learning-rate schedule after warmup, a diffusers `get_scheduler` name ("cosine", "constant", ...).'
    )
    lr_warmup_steps: int = _flag(100, "Optimizer steps of linear learning-rate warmup.")
    adam_beta1: float = _flag(0.9, "AdamW beta1.")
    adam_beta2: float = _flag(0.999, "AdamW beta2.")
    adam_weight_decay: float = _flag(1e-4, "AdamW weight decay.")
    adam_epsilon: float = _flag(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _flag(1.0, "Gradients are clipped to this norm.")
    gradient_accumulation_steps: int = _flag(1, "Batches accumulated per optimizer step.")
    mixed_precision: Optional[str] = _flag(
        None,
        'Mixed precision: "no", "fp16" (GPUs only) or "bf16" (autocast of the model\'s forward; "bf16" is the fast '
        "choice on GPUs). Not given (None), the run trains in the precision of `accelerate launch --mixed_precision` "
        "or `accelerate config` (the ACCELERATE_MIXED_PRECISION variable the launcher sets), else \"no\"; given, it "
        "overrides the launcher's, with a warning when the two differ. The precision used is recorded in each "
        "checkpoint's training_run.json, and a resume in another one is refused.",
    )
    allow_tf32: bool = _flag(
        True, "Let float32 matmuls and convolutions use TF32 tensor cores on CUDA (Ampere and newer; ignored elsewhere)."
    )
    channels_last: bool = _flag(
        True, "Keep convolutional models' weights channels-last (NHWC) on CUDA, for cuDNN's fastest kernels (ignored elsewhere)."
    )
    torch_compile: bool = _flag(
        False, "Compile the model with `torch.compile` (inductor); the first steps are slower while it compiles."
    )
    torch_compile_mode: str = _flag(
        "default",
        f"The `torch.compile` mode of --torch_compile, one of {list(COMPILE_MODES)}: \"reduce-overhead\" replays CUDA "
        "graphs, for small models whose steps wait on kernel launches (not measured yet).",
    )
    max_train_minutes: Optional[float] = _flag(
        None,
        "A wall-clock budget: when it runs out the loop stops after the current optimizer step, writes a final "
        "checkpoint and returns the model, as at the last step (resume later with `--resume_from_checkpoint latest`).",
    )
    fit_lr_schedule_to_budget: bool = _flag(
        True,
        "With --max_train_minutes, run the learning-rate schedule after its warmup on whichever is further along, the "
        "steps or the clock, so that a run the budget cuts short still ends its schedule (a cosine decay reaches zero "
        "at the deadline); a resumed run spreads the rest of the schedule over its own budget.",
    )
    use_ema: bool = _flag(False, "Keep an exponential moving average of the weights and return it.")
    ema_max_decay: float = _flag(0.9999, "The EMA decay's upper bound.")
    ema_inv_gamma: float = _flag(1.0, "EMA warmup: inverse multiplicative factor of the decay schedule.")
    ema_power: float = _flag(0.75, "EMA warmup: exponential factor of the decay schedule.")
    checkpointing_steps: int = _flag(500, "Save a `checkpoint-N` folder (accelerate state) every this many steps.")
    checkpoints_total_limit: Optional[int] = _flag(None, "Keep only this many newest checkpoints; None keeps all.")
    resume_from_checkpoint: Optional[str] = _flag(
        None, 'Resume from a `checkpoint-N` folder (a path, or a name in `--output_dir`), or "latest".'
    )
    overwrite_output_dir: bool = _flag(
        False,
        "Train into an `--output_dir` that holds another run's checkpoints or model: its `checkpoint-N` folders and "
        "sample grids are set aside in `.replaced_checkpoints/`, deleted when this run runs to its end (not when "
        "SIGTERM stops it: until a resumed run ends) and moved back if it fails before its first checkpoint; its other "
        "files are replaced as this run writes them. Without it (or "
        "`--resume_from_checkpoint`) such a folder is refused; an empty or new one is always fine.",
    )
    seed: int = _flag(0, "Seed of the initial weights, the data order, noise and timesteps.")
    report_to: Optional[str] = _flag(None, 'An accelerate tracker to log to ("tensorboard", "wandb", ...).')
    dataloader_num_workers: int = _flag(
        0,
        "Worker processes of the training dataloader, kept alive across epochs; 0 loads in the main process. Workers "
        "decode and preprocess streamed images in parallel; they never change which examples are drawn.",
    )
    dataloader_pin_memory: bool = _flag(
        True, "Copy batches to page-locked memory for faster transfer to a CUDA device (ignored on other devices)."
    )
    num_sample_images: int = _flag(
        8,
        "Images the diffusion trainers (DDPM U-Net, Score-SDE, RC-DiT) generate at every checkpoint and at the end, "
        "saved as `samples/step_N.png` (seeded with `--seed`; Score-SDE: a column per class; RC-DiT: reference images "
        "above their variations); 0 turns it off.",
    )
    sample_inference_steps: int = _flag(25, "Denoising steps of those samples (the training scheduler, strided).")

    def __post_init__(self):
        from ..validation import is_seed  # imports torch: not when the scripts' flags are built for --help

        positive_or_none = "None or a positive integer"
        expectations = [
            ("train_batch_size", "a positive integer", self.train_batch_size >= 1),
            ("gradient_accumulation_steps", "a positive integer", self.gradient_accumulation_steps >= 1),
            ("learning_rate", "a positive finite number", _finite_at_least(self.learning_rate, 0, above=True)),
            ("adam_beta1", "a number in [0, 1)", 0 <= self.adam_beta1 < 1),
            ("adam_beta2", "a number in [0, 1)", 0 <= self.adam_beta2 < 1),
            ("adam_weight_decay", "a finite number >= 0", _finite_at_least(self.adam_weight_decay, 0)),
            ("adam_epsilon", "a finite number >= 0", _finite_at_least(self.adam_epsilon, 0)),
            ("lr_warmup_steps", "0 or more", self.lr_warmup_steps >= 0),
            ("lr_scheduler", f"one of {list(SCHEDULER_NAMES)}", self.lr_scheduler in SCHEDULER_NAMES),
            ("max_grad_norm", "a positive number", self.max_grad_norm > 0),
            ("mixed_precision", 'None, "no", "fp16" or "bf16"', self.mixed_precision in (None, *MIXED_PRECISIONS)),
            ("torch_compile_mode", f"one of {list(COMPILE_MODES)}", self.torch_compile_mode in COMPILE_MODES),
            ("max_train_minutes", "None or a positive number", self.max_train_minutes is None or self.max_train_minutes > 0),
            ("ema_max_decay", "a number in [0, 1]", 0 <= self.ema_max_decay <= 1),
            ("ema_inv_gamma", "a positive finite number", _finite_at_least(self.ema_inv_gamma, 0, above=True)),
            ("ema_power", "a positive finite number", _finite_at_least(self.ema_power, 0, above=True)),
            ("seed", "an integer in 0..4294967295", is_seed(self.seed)),
            ("checkpointing_steps", "a positive integer", self.checkpointing_steps >= 1),
            ("checkpoints_total_limit", positive_or_none, _none_or_positive(self.checkpoints_total_limit)),
            ("max_train_steps", positive_or_none, _none_or_positive(self.max_train_steps)),
            ("num_epochs", positive_or_none, _none_or_positive(self.num_epochs)),
            ("dataloader_num_workers", "0 or more", self.dataloader_num_workers >= 0),
            ("num_sample_images", "0 or more", self.num_sample_images >= 0),
            ("sample_inference_steps", "a positive integer", self.sample_inference_steps >= 1),
        ]
        for name, expected, ok in expectations:
            if not ok:
                raise ValueError(f"expected --{name} to be {expected}, got {getattr(self, name)!r}")
        if self.max_train_steps is not None and self.num_epochs is not None:
            raise ValueError(
                f"expected --max_train_steps or --num_epochs, not both: got --max_train_steps {self.max_train_steps} and "
                f"--num_epochs {self.num_epochs}; give the one that sets the run's length"
            )
        if self.max_train_steps is None and self.num_epochs is None:
            self.max_train_steps = DEFAULT_MAX_TRAIN_STEPS
        if self.max_train_steps is not None and self.lr_warmup_steps >= self.max_train_steps:
            warnings.warn(
                f"--lr_warmup_steps {self.lr_warmup_steps} >= --max_train_steps {self.max_train_steps}: the learning rate "
                f"never reaches --learning_rate {self.learning_rate:g} (it ends near "
                f"{self.learning_rate * self.max_train_steps / max(self.lr_warmup_steps, 1):.2g}); lower --lr_warmup_steps",
                UserWarning,
                stacklevel=3,
            )
        _check_tracker_installed(self.report_to)
        if self.replays_cuda_graphs and self.gradient_accumulation_steps > 1:
            # the gradients live in graph memory that the next micro-batch overwrites (pytorch#169545)
            raise ValueError(
                f"expected --gradient_accumulation_steps 1 with --torch_compile_mode {self.torch_compile_mode} "
                f"(CUDA graphs), got {self.gradient_accumulation_steps}: use another mode or a larger --train_batch_size"
            )

    @property
    def replays_cuda_graphs(self) -> bool:
        """Whether `--torch_compile` compiles in a mode that replays CUDA graphs."""
        return self.torch_compile and self.torch_compile_mode in CUDA_GRAPH_COMPILE_MODES


def _check_tracker_installed(report_to: Optional[str]) -> None:
    """accelerate leaves out a named tracker whose package is missing without a word: the run would log nowhere."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if report_to is None or report_to == "all" or report_to not in LoggerType.list():
        return  # accelerate itself refuses a name it does not know
    installed = [str(tracker) for tracker in get_available_trackers()]
    if report_to not in installed:
        raise ValueError(
            f"--report_to {report_to}: its package is not installed, so nothing would be logged; install it "
            f"(pip install {report_to}) or choose an installed tracker ({installed or 'none installed'})"
        )


def _flag_type(annotation) -> type:
    for caster in (bool, int, float):
        if annotation is caster or annotation == Optional[caster]:
            return caster
    return str


def add_training_args(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    """Add every `TrainingArguments` field as a `--flag`; `defaults` overrides the dataclass defaults. A default
    `max_train_steps` is the length of a run given neither `--max_train_steps` nor `--num_epochs` (the flag itself
    defaults to None, so that `--num_epochs` given alone sets the length)."""
    for arg in fields(TrainingArguments):
        flag, kind, help = f"--{arg.name}", _flag_type(arg.type), arg.metadata["help"]
        if arg.name == "output_dir" and "output_dir" not in defaults:
            parser.add_argument(flag, type=str, required=True, help=help)
            continue
        if arg.name == "max_train_steps":
            steps = defaults.get("max_train_steps") or DEFAULT_MAX_TRAIN_STEPS
            parser.set_defaults(**{_DEFAULT_STEPS_DEST: steps})
            help = (
                "Total optimizer steps; give it or `--num_epochs`, not both (default: "
                f"{steps} when `--num_epochs` is not given)."
            )
            parser.add_argument(flag, type=kind, default=None, help=help)
            continue
        default = defaults.get(arg.name, arg.default)
        help = help.rstrip(".") + " (default: %(default)s)."
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        else:
            parser.add_argument(flag, type=kind, default=default, help=help)
    return parser


def training_args_from_namespace(namespace: argparse.Namespace) -> TrainingArguments:
    """The `TrainingArguments` of parsed flags (the other flags are ignored)."""
    names = {arg.name for arg in fields(TrainingArguments)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    if values.get("max_train_steps") is None and values.get("num_epochs") is None:
        values["max_train_steps"] = getattr(namespace, _DEFAULT_STEPS_DEST, None)  # None: DEFAULT_MAX_TRAIN_STEPS
    return TrainingArguments(**values)


# ------------------------------------------------------------------------------------------------------------------
# The diffusion model of the U-Net, Score-SDE and RC-DiT trainers
# ------------------------------------------------------------------------------------------------------------------


def add_diffusion_args(parser: argparse.ArgumentParser, unet_preset: bool = True) -> argparse.ArgumentParser:
    """`--num_train_timesteps`, and `--unet_preset` for the U-Net trainers."""
    if unet_preset:
        parser.add_argument(
            "--unet_preset", default="small", choices=sorted(UNET_PRESETS), help="U-Net size (default: %(default)s)."
        )
    parser.add_argument(
        "--num_train_timesteps", type=number_in("[1, inf)", int), default=1000,
        help="Diffusion steps of the scheduler (default: %(default)s).",
    )
    return parser


# ------------------------------------------------------------------------------------------------------------------
# The encoder of the RC-DiT and contrastive trainers
# ------------------------------------------------------------------------------------------------------------------


def add_encoder_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The encoder flags shared by the RC-DiT and contrastive trainers (same architecture, same budget)."""
    parser.add_argument(
        "--encoder_name_or_path",
        default=None,
        help="A pretrained transformers vision model (ViTModel, Dinov2Model) directory or Hub id to start from "
        "(default: %(default)s, a new ViT of the sizes below).",
    )
    positive_int = number_in("[1, inf)", int)
    parser.add_argument(
        "--encoder_hidden_size",
        type=positive_int,
        default=192,
        help="Width of a new ViT encoder, the size of its representation (default: %(default)s).",
    )
    parser.add_argument(
        "--encoder_num_layers", type=positive_int, default=6, help="Blocks of a new ViT encoder (default: %(default)s)."
    )
    parser.add_argument(
        "--encoder_num_heads",
        type=positive_int,
        default=3,
        help="Attention heads of a new ViT encoder; must divide its width (default: %(default)s).",
    )
    parser.add_argument(
        "--encoder_patch_size",
        type=positive_int,
        default=4,
        help="Patch side of a new ViT encoder; must divide the image size (default: %(default)s).",
    )
    return parser


# the transformers vision models `--encoder_name_or_path` may hold: their `model_type` and name
SUPPORTED_ENCODER_TYPES = {"vit": "ViT", "dinov2": "DINOv2", "dinov2_with_registers": "DINOv2 with registers"}


def _check_pretrained_encoder_type(path_or_hub_id: str):
    """The `AutoConfig` of `--encoder_name_or_path`, refused unless it is a ViT, DINOv2 or DINOv2-with-registers model
    (the encoders whose tokens and pooler `models.encode_representation` reads)."""
    from transformers import AutoConfig

    from ..models.encoders import ENCODER_WEIGHTS
    from ..validation import check_no_pickled_weights

    check_no_pickled_weights(path_or_hub_id, ENCODER_WEIGHTS)  # QA: a folder of pytorch_model.bin trained
    try:
        config = AutoConfig.from_pretrained(path_or_hub_id)
    except OSError as error:  # no such folder or Hub repository, or no config.json in it
        raise ValueError(f"--encoder_name_or_path {path_or_hub_id}: cannot read a model config: {error}") from error
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ENCODER_TYPES:
        supported = ", ".join(f"{name} ({key!r})" for key, name in SUPPORTED_ENCODER_TYPES.items())
        raise ValueError(
            f"--encoder_name_or_path {path_or_hub_id}: a {model_type!r} model ({type(config).__name__}), not an image "
            f"encoder this trainer supports; expected one of {supported}"
        )
    return config


def check_encoder_args(args: argparse.Namespace) -> None:
    """The encoder flags of `add_encoder_args`, refused before the data is read: `--encoder_name_or_path` must name a
    supported encoder that can be read (`build_vit_encoder_from_args` then checks it against the data), and a new
    ViT's `--encoder_num_heads` must divide its `--encoder_hidden_size`; a new ViT's sizes given beside
    `--encoder_name_or_path`, which keeps the pretrained model's, are warned about."""
    if args.encoder_name_or_path:
        _check_pretrained_encoder_type(args.encoder_name_or_path)
        _warn_unused_new_vit_sizes(args)
    elif args.encoder_hidden_size % args.encoder_num_heads:
        raise ValueError(
            f"--encoder_num_heads {args.encoder_num_heads} does not divide --encoder_hidden_size "
            f"{args.encoder_hidden_size}: each attention head takes an equal share of the width; choose a divisor"
        )


NEW_VIT_SIZES = ("encoder_hidden_size", "encoder_num_layers", "encoder_num_heads", "encoder_patch_size")


def _warn_unused_new_vit_sizes(args: argparse.Namespace) -> None:
    defaults = add_encoder_args(argparse.ArgumentParser())
    changed = [
        f"--{name} {getattr(args, name)}" for name in NEW_VIT_SIZES if getattr(args, name) != defaults.get_default(name)
    ]
    if changed:
        warnings.warn(
            f"{', '.join(changed)}: the sizes of a new ViT, unused: --encoder_name_or_path "
            f"{args.encoder_name_or_path} keeps the pretrained model's own sizes",
            stacklevel=3,
        )


def build_vit_encoder_from_args(args: argparse.Namespace, images):
    """The encoder the flags of `add_encoder_args` ask for, for training images `[N, C, H, H]` (a tensor, or a
    dataset of `(image [C, H, H], ...)` items): loaded with `AutoModel` from `--encoder_name_or_path`, else a new
    `build_vit_encoder` whose initial weights are seeded with `args.seed` (so the RC-DiT and contrastive trainers
    start from the same one).

    A pretrained encoder must be a ViT, DINOv2 or DINOv2 with registers (`SUPPORTED_ENCODER_TYPES`). With its image
    processor (`preprocessor_config.json`, `encoder_preprocessing_from_args`) it reads images of any size and 1 or 3
    channels, made RGB, resized whole to that processor's crop size (no centre crop) and normalised by its mean and
    std (`models.pretrained_pixel_values`); without one it reads them as they are, so it
    must take the data's channels and size (`image_size`). Everything is checked here, before any training step."""
    import torch
    from transformers import AutoModel

    from ..models.encoders import build_vit_encoder

    shape = tuple(images.shape) if isinstance(images, torch.Tensor) else (len(images), *images[0][0].shape)
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f"expected square training images, got shape {shape}: pass --image_size")
    image_size, num_channels = shape[-1], shape[1]
    if args.encoder_name_or_path:
        path = args.encoder_name_or_path
        config = _check_pretrained_encoder_type(path)
        if encoder_preprocessing_from_args(args) is None:
            _check_reads_data_as_it_is(path, config, num_channels, image_size)
        try:
            return AutoModel.from_pretrained(path, use_safetensors=True)
        except OSError as error:  # a Hub repo without safetensors weights, mostly
            raise ValueError(f"--encoder_name_or_path {path}: cannot load its safetensors weights: {error}") from error
    torch.manual_seed(args.seed)
    return build_vit_encoder(
        image_size,
        num_channels,
        hidden_size=args.encoder_hidden_size,
        num_layers=args.encoder_num_layers,
        num_heads=args.encoder_num_heads,
        patch_size=args.encoder_patch_size,
    )


def _check_reads_data_as_it_is(path: str, config, num_channels: int, image_size: int) -> None:
    """An encoder without an image processor reads the images as they are: it must take their channels and size
    (else the run would fail at its save, after every step, or the encoder would be fed what it never read)."""
    from ..models.encoders import PROCESSOR_FILE

    encoder_size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    problems, flags = [], []
    if config.num_channels != num_channels:
        problems.append(f"reads {config.num_channels}-channel images, the data has {num_channels}")
        flags.append(f"--num_channels {config.num_channels}")
    if encoder_size not in (image_size, (image_size, image_size)):
        problems.append(f"reads {encoder_size} px images, the data has {image_size} px")
        flags.append(f"--image_size {encoder_size}")
    if problems:
        raise ValueError(
            f"encoder {path!r} has no {PROCESSOR_FILE} (its image processor), so it would read the images as they are, "
            f"but it {'; it '.join(problems)}: pass {' '.join(flags)}, or add the image processor of the model it "
            f"was trained from to the folder (AutoImageProcessor.from_pretrained(<that model>).save_pretrained({path!r}))"
        )


def encoder_preprocessing_from_args(args: argparse.Namespace):
    """`models.pretrained_preprocessing` of `--encoder_name_or_path` when it has an image processor (DINOv2 and
    other pretrained models: their input size and ImageNet mean and std), else `None` (a new ViT, or a model saved
    without one, such as a contrastive baseline's encoder, reads the images as they are). A folder's
    `preprocessor_config.json` that cannot be read is an error, not `None`."""
    if not args.encoder_name_or_path:
        return None
    import os

    from ..models.encoders import PROCESSOR_FILE, pretrained_preprocessing

    path = args.encoder_name_or_path
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, PROCESSOR_FILE)):
            return None
        try:
            return pretrained_preprocessing(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"--encoder_name_or_path {path}: cannot read its {PROCESSOR_FILE}: {error}") from error
    try:
        return pretrained_preprocessing(path)
    except OSError:  # a Hub repository without preprocessor_config.json
        return None

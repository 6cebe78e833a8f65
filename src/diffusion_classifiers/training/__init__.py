"""Training: the one accelerate loop and its arguments, and one file per trainer.

- `loop.py`: `train` (distributed data loading, AdamW + schedule, accumulation, mixed precision, EMA, checkpoints,
  resume), `TrainingSummary`.
- `arguments.py`: `TrainingArguments` and the `--flags` of the example scripts.
- `checkpoints.py`: `checkpoint-N` folders (atomic saves, EMA as safetensors + JSON, checked before loading).
- `output_dir.py`: one run per `--output_dir` (a lock file; `--overwrite_output_dir`).
- `sampling.py`: `EpochSeededSampler`, data order as a function of (seed, epoch).
- `denoising.py`: `DenoisingLoss`, the epsilon-prediction objective of the diffusion trainers.
- `unet.py`: `train_ddpm_unet`, the unconditional DDPM U-Net of the U-Net-features method.
- `score_sde.py`: `train_score_sde_unet`, the class-conditional U-Net of the Score-SDE classifier.
- `rc_dit.py`: `train_rc_dit`, the ViT encoder and representation-conditioned DiT trained together.
- `contrastive.py`: `train_contrastive_encoder`, the SimCLR / DINO baselines of the RC-DiT encoder.
- `supervised.py`: `train_supervised_cnn`, the supervised CNN baseline.
"""

from .arguments import (
    TrainingArguments,
    add_diffusion_args,
    add_encoder_args,
    add_training_args,
    build_vit_encoder_from_args,
    training_args_from_namespace,
)
from .contrastive import (
    METHODS,
    DINOHead,
    DINOLoss,
    DINOModel,
    ImageAugmentation,
    SimCLRLoss,
    SimCLRModel,
    build_augmentation,
    cosine_teacher_momentum,
    nt_xent_loss,
    train_contrastive_encoder,
)
from .denoising import DenoisingLoss, check_training_images
from .launch import check_world_size
from .loop import (
    LossFunction,
    TrainingSummary,
    find_latest_checkpoint,
    optimizer_steps_per_epoch,
    total_optimizer_steps,
    train,
)
from .output_dir import OutputDirInUseError
from .rc_dit import RCDiTJointModel, RCDiTLoss, train_rc_dit
from .sampling import EpochSeededSampler
from .score_sde import class_balanced_sampler, train_score_sde_unet
from .supervised import SupervisedLoss, predict_proba, train_supervised_cnn
from .unet import train_ddpm_unet

__all__ = [
    # the loop and its arguments
    "EpochSeededSampler",
    "LossFunction",
    "OutputDirInUseError",
    "TrainingArguments",
    "TrainingSummary",
    "add_diffusion_args",
    "add_encoder_args",
    "add_training_args",
    "build_vit_encoder_from_args",
    "check_world_size",
    "find_latest_checkpoint",
    "optimizer_steps_per_epoch",
    "total_optimizer_steps",
    "train",
    "training_args_from_namespace",
    # diffusion trainers
    "DenoisingLoss",
    "RCDiTJointModel",
    "RCDiTLoss",
    "check_training_images",
    "class_balanced_sampler",
    "train_ddpm_unet",
    "train_rc_dit",
    "train_score_sde_unet",
    # baselines
    "METHODS",
    "DINOHead",
    "DINOLoss",
    "DINOModel",
    "ImageAugmentation",
    "SimCLRLoss",
    "SimCLRModel",
    "SupervisedLoss",
    "build_augmentation",
    "cosine_teacher_momentum",
    "nt_xent_loss",
    "predict_proba",
    "train_contrastive_encoder",
    "train_supervised_cnn",
]

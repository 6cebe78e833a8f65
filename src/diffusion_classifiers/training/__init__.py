"""Training: the one accelerate loop and its arguments, and one file per trainer.

- `loop.py`: `train` (distributed data loading, AdamW + schedule, accumulation, mixed precision, EMA, checkpoints,
  resume), `TrainingSummary`.
- `arguments.py`: `TrainingArguments` and the `--flags` of the example scripts.
- `checkpoints.py`: `checkpoint-N` folders (atomic saves, EMA as safetensors + JSON, checked before loading).
- `time_budget.py`: `--max_train_minutes`, and the learning-rate schedule fitted to it.
- `stop_signal.py`: SIGTERM or Ctrl-C stops a run after its step with a final checkpoint, as the time budget does.
- `output_dir.py`: one run per `--output_dir` (a lock file; `--overwrite_output_dir`).
- `sampling.py`: `EpochSeededSampler`, data order as a function of (seed, epoch).
- `denoising.py`: `DenoisingLoss`, the epsilon-prediction objective of the diffusion trainers.
- `unet.py`: `train_ddpm_unet`, the unconditional DDPM U-Net of the U-Net-features method.
- `score_sde.py`: `train_score_sde_unet`, the class-conditional U-Net of the Score-SDE classifier.
- `rc_dit.py`: `train_rc_dit`, the ViT encoder and representation-conditioned DiT trained together.
- `rc_dit_diagnostics.py`: the spread of r and the own-vs-shuffled denoising gap, logged while training.
- `contrastive.py`: `train_contrastive_encoder`, the SimCLR / DINO baselines of the RC-DiT encoder.
- `dino_diagnostics.py`: how much DINO's targets depend on the image, logged while training.
- `supervised.py`: `train_supervised_cnn`, the supervised CNN baseline (`checkpoint_weights` reads a kept step).
"""

from ..lazy_exports import lazy_exports

# public name -> the module that defines it, imported on first use
_EXPORTS = {
    # the loop and its arguments
    "EpochSeededSampler": "sampling",
    "LossFunction": "loop",
    "OutputDirInUseError": "output_dir",
    "save_model_whole": "output_dir",
    "save_trained_pipeline": "output_dir",
    "TrainingArguments": "arguments",
    "TrainingSummary": "loop",
    "add_diffusion_args": "arguments",
    "add_encoder_args": "arguments",
    "add_training_args": "arguments",
    "build_vit_encoder_from_args": "arguments",
    "encoder_preprocessing_from_args": "arguments",
    "check_run_can_start": "loop",
    "check_world_size": "launch",
    "find_latest_checkpoint": "loop",
    "optimizer_steps_per_epoch": "loop",
    "total_optimizer_steps": "loop",
    "train": "loop",
    "training_args_from_namespace": "arguments",
    # diffusion trainers
    "DenoisingLoss": "denoising",
    "LOSS_WEIGHTINGS": "denoising",
    "DEFAULT_DENOISER_MASK_RATIO": "rc_dit",
    "DEFAULT_MASKED_TARGET": "rc_dit",
    "MASKED_TARGETS": "patch_masks",
    "RCDiTJointModel": "rc_dit",
    "RCDiTLoss": "rc_dit",
    "redraw_hidden_patches": "rc_dit",
    "to_display_range": "rc_dit",
    "check_training_images": "denoising",
    "class_balanced_sampler": "score_sde",
    "train_ddpm_unet": "unet",
    "ddpm_objective": "unet",
    "rc_dit_objective": "rc_dit",
    "score_sde_objective": "score_sde",
    "train_rc_dit": "rc_dit",
    "rc_dit_monitor": "rc_dit_diagnostics",
    "recompute_representation_statistics": "rc_dit_diagnostics",
    "representation_diagnostics": "rc_dit_diagnostics",
    "train_score_sde_unet": "score_sde",
    # baselines
    "METHODS": "contrastive",
    "DINOHead": "contrastive",
    "DINOLoss": "contrastive",
    "DINOModel": "contrastive",
    "ImageAugmentation": "contrastive",
    "SimCLRLoss": "contrastive",
    "SimCLRModel": "contrastive",
    "SupervisedLoss": "supervised",
    "build_augmentation": "contrastive",
    "checkpoint_weights": "supervised",
    "cosine_teacher_momentum": "contrastive",
    "dino_monitor": "dino_diagnostics",
    "dino_target_diagnostics": "dino_diagnostics",
    "nt_xent_loss": "contrastive",
    "predict_proba": "supervised",
    "train_contrastive_encoder": "contrastive",
    "train_supervised_cnn": "supervised",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Classify with a linear head on a frozen DDPM U-Net feature (a block, or several concatenated, at one timestep)."""

from typing import Any, Dict, Optional, Sequence

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers.data import ImagePreprocessing
from diffusion_classifiers.features import DiffusionFeatureExtractor, feature_blocks, hypercolumn
from diffusion_classifiers.models import LinearProbeHead

from .pipeline_utils import DiffusionClassifierPipeline

__all__ = ["UNetFeatureClassifierPipeline"]


class UNetFeatureClassifierPipeline(DiffusionClassifierPipeline):
    """Noise an image to timestep t, run the frozen U-Net, pool the activation of block b, apply a linear head.

    Images (file paths, PIL, arrays or tensors) go through `preprocess`, which applies the saved `preprocessing`
    contract (`diffusion_classifiers.data.preprocess_images`): by default resized to the U-Net's `sample_size`,
    converted to its channel count, float inputs read as `[-1, 1]`. The noise comes from the seed recorded in the
    head, so predictions are deterministic and match the features the head was fitted on.

    Args:
        unet: the frozen, unconditional `UNet2DModel` trained on unlabeled images.
        scheduler: the `DDPMScheduler` it was trained with (defines the noising at timestep t).
        head: a fitted `LinearProbeHead` (optional: a pipeline without one can still `extract_features`).
        positive_class: for a binary task, the class name its metrics refer to (see `set_positive_class`); saved
            in `model_index.json`.
        preprocessing: the saved [`ImagePreprocessing`] contract (a dict in `model_index.json`): how `preprocess` reads
            every input (float range, size, resampling, channels, DICOM windows); default `default_preprocessing()`,
            missing keys too (see `set_preprocessing`).
    """

    how_to_fit_a_head = (
        "with `diffusion-classifiers probe --unet_dir DIR` (it writes OUTPUT_DIR/pipeline/, this U-Net with a "
        "head), or in Python with `diffusion_classifiers.probing.fit_probe_grid` and "
        "`pipe.register_fitted_head(result.head, train_images)` (where the pipeline records the images it was "
        "trained on, which `evaluate` checks, the head's join them)"
    )

    model_cpu_offload_seq = "unet->head"
    _optional_components = ["head"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        head: Optional[LinearProbeHead] = None,
        positive_class: Optional[str] = None,
        preprocessing: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, head=head)
        self.set_positive_class(positive_class)
        self.set_preprocessing(preprocessing)

    @property
    def feature_extractor(self) -> DiffusionFeatureExtractor:
        return DiffusionFeatureExtractor(self.unet, self.scheduler)

    def default_preprocessing(self) -> ImagePreprocessing:
        """The U-Net's `sample_size` and `in_channels`, float inputs in `[-1, 1]`."""
        return ImagePreprocessing(self.unet.config.sample_size, self.unet.config.in_channels)

    def extract_features(
        self,
        images,
        blocks: Sequence[str],
        timesteps: Sequence[int],
        pool: Optional[str] = "mean",
        noise_seed: int = 0,
        num_noise_draws: int = 1,
        batch_size: int = 64,
        input_data_format: Optional[str] = None,
        views: Optional[str] = None,
    ) -> dict:
        """`{(block, t): Tensor[N, D]}` for every requested pair; see `DiffusionFeatureExtractor.extract` (`views`:
        `"dihedral"` averages each feature over the image's 8 rotations and mirror images).
        `input_data_format` is the layout of 3-D / 4-D arrays and tensors (see `preprocess_images`). The progress
        bar follows `set_progress_bar_config`."""
        return self.feature_extractor.extract(
            self.preprocess(images, input_data_format),
            blocks=blocks,
            timesteps=timesteps,
            pool=pool,
            noise_seed=noise_seed,
            num_noise_draws=num_noise_draws,
            batch_size=batch_size,
            progress_bar=self.progress_bar_config,
            views=views,
        )

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 64, return_dict: bool = True, input_data_format: Optional[str] = None):
        r"""
        Classify `images` (one or a list of file paths, PIL images, arrays or tensors) with the head's (block,
        timestep) feature; a head over several blocks reads their features concatenated (`features.hypercolumn`), a
        head with `views` their average over the image's views (`diffusion_classifiers.views`).

        Args:
            images: the images to classify.
            batch_size (`int`, *optional*, defaults to 64): images per U-Net forward pass.
            return_dict (`bool`, *optional*, defaults to `True`): return a `ClassifierPipelineOutput`, else a tuple.
            input_data_format (`str`, *optional*): `"channels_first"` or `"channels_last"`, the layout of 3-D and
                4-D arrays and tensors; `None` infers it when unambiguous (see `preprocess_images`).

        Examples:

        ```py
        >>> from diffusion_classifiers import DiffusionClassifierPipeline

        >>> pipe = DiffusionClassifierPipeline.from_pretrained("path/to/unet_feature_pipeline")
        >>> out = pipe(images, batch_size=32)
        >>> out.labels, out.scores
        ```

        Returns:
            `ClassifierPipelineOutput` (`labels`, `label_ids`, `scores`, `probs`), or a tuple when
            `return_dict=False`.
        """
        if self.head is None:
            raise ValueError(f"this pipeline has no `head`: fit one {self.how_to_fit_a_head}")
        config = self.head.config
        features = self.extract_features(
            images,
            blocks=feature_blocks(config.block),
            timesteps=[config.timestep],
            pool=config.pool,
            noise_seed=config.noise_seed,
            num_noise_draws=config.num_noise_draws,
            batch_size=batch_size,
            input_data_format=input_data_format,
            views=config.views,
        )
        logits = self.head(hypercolumn(features, config.block, config.timestep).to(self.head.device))
        self.maybe_free_model_hooks()
        return self.build_output(logits, self.class_names, return_dict)

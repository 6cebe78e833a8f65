"""The classifier pipelines (diffusers `DiffusionPipeline` subclasses), shipped as diffusion_classifiers.pipelines."""

from .pipeline_unet_features import UNetFeatureClassifierPipeline
from .pipeline_utils import ClassifierPipelineOutput, DiffusionClassifierPipeline

__all__ = ["ClassifierPipelineOutput", "DiffusionClassifierPipeline", "UNetFeatureClassifierPipeline"]

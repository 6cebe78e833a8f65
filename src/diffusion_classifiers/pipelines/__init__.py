"""The classifier pipelines (diffusers `DiffusionPipeline` subclasses), shipped as diffusion_classifiers.pipelines."""

from .pipeline_score_sde import ScoreSDEClassifierOutput, ScoreSDEClassifierPipeline
from .pipeline_rc_dit import RepresentationConditionedDiTPipeline
from .pipeline_unet_features import UNetFeatureClassifierPipeline
from .pipeline_utils import ClassifierPipelineOutput, DiffusionClassifierPipeline

__all__ = [
    "ClassifierPipelineOutput",
    "DiffusionClassifierPipeline",
    "RepresentationConditionedDiTPipeline",
    "ScoreSDEClassifierOutput",
    "ScoreSDEClassifierPipeline",
    "UNetFeatureClassifierPipeline",
]

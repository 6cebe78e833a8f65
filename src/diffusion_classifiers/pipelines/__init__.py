"""The diffusers pipelines of the library: three classifiers and an image-variation generator. They orchestrate:
features, likelihoods and models come from the modules below them."""

from .pipeline_rc_dit import RepresentationConditionedDiTPipeline
from .pipeline_rc_dit_image_variation import RepresentationConditionedDiTImageVariationPipeline
from .pipeline_score_sde import ScoreSDEClassifierOutput, ScoreSDEClassifierPipeline
from .pipeline_unet_features import UNetFeatureClassifierPipeline
from .pipeline_utils import ClassifierPipelineOutput, DiffusionClassifierPipeline

__all__ = [
    "ClassifierPipelineOutput",
    "DiffusionClassifierPipeline",
    "RepresentationConditionedDiTImageVariationPipeline",
    "RepresentationConditionedDiTPipeline",
    "ScoreSDEClassifierOutput",
    "ScoreSDEClassifierPipeline",
    "UNetFeatureClassifierPipeline",
]

"""diffusion-classifiers: diffusion models as image classifiers."""

__version__ = "0.1.0"

# Every module that defines a saved component is imported eagerly: diffusers 0.42 resolves
# ["diffusion_classifiers.<module>", "<Class>"] in model_index.json only for modules already imported.
from .models import LinearProbeHead, PrototypeHead, RepresentationConditionedDiTModel  # noqa: E402
from .pipelines import DiffusionClassifierPipeline, UNetFeatureClassifierPipeline  # noqa: E402
from .pipelines import RepresentationConditionedDiTPipeline  # noqa: E402
from .pipelines import ScoreSDEClassifierPipeline  # noqa: E402
from .configuration_diffusion_classifier import DiffusionClassifierConfig  # noqa: E402
from .image_processing_diffusion_classifier import DiffusionClassifierImageProcessor  # noqa: E402
from .modeling_diffusion_classifier import (  # noqa: E402
    DiffusionFeaturesForImageClassification,
    export_unet_feature_pipeline,
)


def _register_with_transformers_auto_classes() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    AutoConfig.register(DiffusionClassifierConfig.model_type, DiffusionClassifierConfig, exist_ok=True)
    AutoModelForImageClassification.register(DiffusionClassifierConfig, DiffusionFeaturesForImageClassification, exist_ok=True)
    AutoImageProcessor.register(DiffusionClassifierConfig, slow_image_processor_class=DiffusionClassifierImageProcessor, exist_ok=True)


_register_with_transformers_auto_classes()

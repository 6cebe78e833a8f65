"""diffusion-classifiers: diffusion models as image classifiers."""

__version__ = "0.1.0"

# Every module that defines a saved component is imported eagerly: diffusers 0.42 resolves
# ["diffusion_classifiers.<module>", "<Class>"] in model_index.json only for modules already imported.
from .models import LinearProbeHead  # noqa: E402
from .pipelines import DiffusionClassifierPipeline, UNetFeatureClassifierPipeline  # noqa: E402

"""diffusion-classifiers: diffusion models as image classifiers.

Everything a user calls is importable from here, and loads on first use: `import diffusion_classifiers` imports
no torch, diffusers or transformers, so the `diffusion-classifiers` command answers `--help` at once. The
transformers Auto classes still find this package's model without `trust_remote_code`: its classes register
themselves when transformers' Auto modules load (`transformers_registration.py`).
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .lazy_exports import lazy_exports
from .transformers_registration import register_when_transformers_loads

# public name -> the module that defines it, imported on first use
_EXPORTS = {
    # pipelines and their outputs
    "DiffusionClassifierPipeline": "pipelines",
    "UNetFeatureClassifierPipeline": "pipelines",
    "ScoreSDEClassifierPipeline": "pipelines",
    "RepresentationConditionedDiTPipeline": "pipelines",
    "RepresentationConditionedDiTImageVariationPipeline": "pipelines",
    "ClassifierPipelineOutput": "pipelines",
    "ScoreSDEClassifierOutput": "pipelines",
    # the transformers image-classification model, its config and image processor, exports
    "DiffusionClassifierConfig": "configuration_diffusion_classifier",
    "DiffusionClassifierImageProcessor": "image_processing_diffusion_classifier",
    "DiffusionFeaturesForImageClassification": "modeling_diffusion_classifier",
    "DiffusionClassifierImageClassificationPipeline": "transformers_pipeline",
    "export_unet_feature_pipeline": "modeling_diffusion_classifier",
    "export_rc_dit_pipeline": "modeling_diffusion_classifier",
    # models: components, sizes and builders
    "LinearProbeHead": "models",
    "PrototypeHead": "models",
    "RepresentationConditionedDiTModel": "models",
    "UNET_PRESETS": "models",
    "unet_config": "models",
    "RC_DIT_SIZES": "models",
    "rc_dit_config": "models",
    "fit_prototypes": "models",
    "build_vit_encoder": "models",
    "load_pretrained_encoder": "models",
    "SupervisedCNN": "models",
    # data: reading, preprocessing, splits
    "LabeledImages": "data",
    "load_image_classification_data": "data",
    "preprocess_images": "data",
    "ImagePreprocessing": "data",
    "read_classification_split": "data",
    "to_datasets": "data",
    "stratified_split": "data",
    "stratified_subset_indices": "data",
    "few_label_indices": "data",
    "long_tailed_indices": "data",
    "stratified_group_split": "data",
    # medical images: DICOM, windows, 16-bit files
    "DicomImage": "data",
    "MedicalPreprocessing": "data",
    "VoiTable": "data",
    "WINDOW_PRESETS": "data",
    "Window": "data",
    "read_16bit_image": "data",
    "read_dicom": "data",
    "read_dicom_folder": "data",
    "window_channels": "data",
    # features, probing and evaluation protocols
    "DiffusionFeatureExtractor": "features",
    "DiTFeatureExtractor": "features",
    "hypercolumn": "features",
    "ProbeGridResult": "probing",
    "fit_probe_grid": "probing",
    "kmeans_clusters": "probing",
    "kmeans_evaluate": "probing",
    "evaluate_protocols": "probing",
    "few_shot_indices": "probing",
    "prototype_classify": "probing",
    "knn_classify": "probing",
    # likelihood
    "VPSDE": "likelihood",
    "probability_flow_log_likelihood": "likelihood",
    "denoising_error_scores": "likelihood",
    "DenoisingScoreResult": "likelihood",
    "replay_stopping_rule": "likelihood",
    "rank_timestep_strata": "likelihood",
    # trainers
    "TrainingArguments": "training",
    "TrainingSummary": "training",
    "train": "training",
    "train_ddpm_unet": "training",
    "train_score_sde_unet": "training",
    "train_rc_dit": "training",
    "train_contrastive_encoder": "training",
    "train_supervised_cnn": "training",
    # studies, evaluation, metrics, Hub
    "UNetFeatureStudy": "unet_feature_study",
    "run_unet_feature_study": "unet_feature_study",
    "evaluate_classifier": "evaluation",
    "predict_files": "prediction",
    "classification_metrics": "metrics",
    "clustering_metrics": "metrics",
    "push_to_hub": "hub",
    "render_model_card": "hub",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

register_when_transformers_loads()

if TYPE_CHECKING:  # static analysers and IDEs see the lazy names
    from .configuration_diffusion_classifier import DiffusionClassifierConfig  # noqa: F401
    from .image_processing_diffusion_classifier import DiffusionClassifierImageProcessor  # noqa: F401
    from .transformers_pipeline import DiffusionClassifierImageClassificationPipeline  # noqa: F401
    from .modeling_diffusion_classifier import *  # noqa: F401,F403
    from .models import *  # noqa: F401,F403
    from .pipelines import *  # noqa: F401,F403
    from .data import *  # noqa: F401,F403
    from .features import *  # noqa: F401,F403
    from .likelihood import *  # noqa: F401,F403
    from .metrics import classification_metrics, clustering_metrics  # noqa: F401
    from .probing import *  # noqa: F401,F403
    from .training import *  # noqa: F401,F403

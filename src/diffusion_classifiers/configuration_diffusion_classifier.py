"""transformers configuration of the diffusion-feature image classifier."""

import warnings
from typing import List, Optional, Union

from transformers import PretrainedConfig

from .views import check_views

__all__ = ["BACKBONE_TYPES", "DiffusionClassifierConfig"]

# "unet": a diffusers `UNet2DModel` read at one block and timestep; "encoder": the RC-DiT encoder (a transformers
# vision model, `ViTModel` or `Dinov2Model`) whose representation r is the feature.
BACKBONE_TYPES = ("unet", "encoder")


class DiffusionClassifierConfig(PretrainedConfig):
    r"""
    Configuration of [`DiffusionFeaturesForImageClassification`]: a frozen diffusion backbone, the feature read from
    it, and a linear head. `id2label` / `label2id` travel here as for every transformers classifier.

    Args:
        backbone_type (`str`): `"unet"`, a diffusers `UNet2DModel` read at `feature_block` / `feature_timestep`, or
            `"encoder"`, the RC-DiT's transformers encoder whose representation r (`encode_representation`) is the
            feature.
        backbone_config (`dict`): the backbone's config (`UNet2DModel.config`, or the encoder's `config.to_dict()`).
        scheduler_config (`dict`): the `DDPMScheduler` config that defines the noising at `feature_timestep` (U-Net).
        feature_block (`str` or `list`), feature_timestep (`int`), feature_pool (`"mean"`, `"2x2"` or `None`): the
            U-Net feature; a list of blocks is their features concatenated in that order (`features.hypercolumn`).
        noise_seed (`int`), num_noise_draws (`int`): the fixed noise the U-Net feature is computed with.
        feature_views (`str`, *optional*): `"dihedral"`: the U-Net feature is averaged over the image's 8 rotations
            and mirror images (`diffusion_classifiers.views`); `None`: the image as it is.
        feature_size (`int`): the pooled feature's dimension (the linear head's input).
        freeze_backbone (`bool`): keep the backbone's parameters out of training (`requires_grad=False` when the
            model is built or loaded; `model.backbone.requires_grad_(True)` then unfreezes it, as
            `from_pretrained(..., freeze_backbone=False)` does).
        positive_class (`str`, *optional*): for a binary task, the class (an `id2label` name) its metrics refer to.
        representation_readout (`str`, *optional*, defaults to `"pooler"`): how the encoder's r is read out
            (`encode_representation`; the RC-DiT transformer's `representation_readout`). Its
            `representation_norm` is folded into the feature standardisation (`feature_mean`, `feature_std`).
        encoder_preprocessing (`dict`, *optional*): the RC-DiT transformer's `encoder_preprocessing` (a pretrained
            encoder's image size, mean and std).
        input_shape (`list`, *optional*): `[C, H, W]` of `pixel_values` when it is not the backbone's own: an encoder
            with `encoder_preprocessing` reads the images its RC-DiT pipeline reads and resizes them itself.
    """

    model_type = "diffusion-classifier"

    def __init__(
        self,
        backbone_type: str = "unet",
        backbone_config: Optional[dict] = None,
        scheduler_config: Optional[dict] = None,
        feature_block: Union[str, List[str]] = "mid_block",
        feature_timestep: int = 0,
        feature_pool: Optional[str] = "mean",
        noise_seed: int = 0,
        num_noise_draws: int = 1,
        feature_size: int = 1,
        freeze_backbone: bool = True,
        positive_class: Optional[str] = None,
        representation_readout: str = "pooler",
        encoder_preprocessing: Optional[dict] = None,
        input_shape: Optional[list] = None,
        feature_views: Optional[str] = None,
        **kwargs,
    ):
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"expected backbone_type in {BACKBONE_TYPES}, got {backbone_type!r}")
        check_views(feature_views)
        self.backbone_type = backbone_type
        self.backbone_config = dict(backbone_config or {})
        self.scheduler_config = dict(scheduler_config or {})
        self.feature_block = feature_block
        self.feature_timestep = feature_timestep
        self.feature_pool = feature_pool
        self.noise_seed = noise_seed
        self.num_noise_draws = num_noise_draws
        self.feature_views = feature_views
        self.feature_size = feature_size
        self.freeze_backbone = freeze_backbone
        self.representation_readout = representation_readout
        self.encoder_preprocessing = encoder_preprocessing
        self.input_shape = None if input_shape is None else list(input_shape)
        super().__init__(**kwargs)
        self.positive_class = self._checked_positive_class(positive_class)

    def _checked_positive_class(self, positive_class: Optional[str]) -> Optional[str]:
        if positive_class is not None and positive_class not in self.id2label.values():
            labels = list(self.id2label.values())
            raise ValueError(f"positive_class: expected one of the labels {labels}, got {positive_class!r}")
        return positive_class

    def drop_stale_positive_class(self) -> None:
        """Set `positive_class` to None, with a warning naming it, when it is no longer one of the labels (after
        `id2label` or `num_labels` changed)."""
        if self.positive_class is not None and self.positive_class not in self.id2label.values():
            warnings.warn(
                f"positive_class {self.positive_class!r} is not one of the labels {list(self.id2label.values())}: "
                "dropped (set to None); set config.positive_class to one of them for a binary task"
            )
            self.positive_class = None

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' `from_dict`, with `positive_class` checked against the labels that the overrides in `kwargs`
        (`num_labels`, `id2label`) leave: a saved one that is no longer a label is dropped with a warning, one passed
        in `kwargs` must be a label."""
        config_dict = dict(config_dict)
        saved = config_dict.pop("positive_class", None)
        given = "positive_class" in kwargs
        positive_class = kwargs.pop("positive_class", None)
        loaded = super().from_dict(config_dict, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if "id2label" in kwargs and "label2id" not in kwargs:  # else the saved names would stay in label2id
            config.label2id = {name: int(i) for i, name in config.id2label.items()}
        if given:
            config.positive_class = config._checked_positive_class(positive_class)
        else:
            config.positive_class = saved
            config.drop_stale_positive_class()
        return loaded

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        # labels renamed on the loaded config (`config.id2label = ...`) must not leave a stale positive class behind
        self.drop_stale_positive_class()
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

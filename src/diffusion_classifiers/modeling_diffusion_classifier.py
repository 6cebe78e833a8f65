"""transformers `PreTrainedModel` head over frozen diffusion features, for `pipeline()`, `Trainer` and `evaluate`."""

import os
import warnings
from typing import Optional, Union

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_diffusion_classifier import DiffusionClassifierConfig
from .features import DiffusionFeatureExtractor, feature_blocks, hypercolumn, make_noise
from .image_processing_diffusion_classifier import DiffusionClassifierImageProcessor
from .models.encoders import encode_representation, representation_size
from .remote_code import (
    entry_module_name,
    make_weights_readable_as_umask_allows,
    transformers_copies_no_code,
    write_remote_code,
)
from .validation import check_no_pickled_weights

__all__ = [
    "DiffusionClassifierPreTrainedModel",
    "DiffusionFeaturesForImageClassification",
    "export_rc_dit_pipeline",
    "export_unet_feature_pipeline",
    "saved_image_processor",
]


class DiffusionClassifierPreTrainedModel(PreTrainedModel):
    config_class = DiffusionClassifierConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module):
        # The backbone keeps its library's own initialisation (and is normally loaded from a checkpoint); the head
        # starts at zero, also when transformers re-initialises the classifier alone (a new label set put on with
        # `ignore_mismatched_sizes=True` reaches here with the `nn.Linear` only: it kept uninitialised memory, logits
        # near 1e29)
        if module is getattr(self, "classifier", None):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, DiffusionFeaturesForImageClassification):
            nn.init.zeros_(module.classifier.weight)
            nn.init.zeros_(module.classifier.bias)
            module.feature_mean.zero_()
            module.feature_std.fill_(1.0)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, plus `auto_map` and the code that
        `AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` needs without this package
        (`remote_code.write_remote_code`; a model loaded from that code, without this package, saves a copy of it)."""
        if push_to_hub:  # transformers would upload only the files its own save writes, not the code
            raise ValueError("push_to_hub=True: call `model.push_to_hub(repo_id)`, which uploads the code too")
        classes = {
            "AutoConfig": type(self.config),
            "AutoModelForImageClassification": type(self),
            "AutoImageProcessor": DiffusionClassifierImageProcessor,
        }
        self.config.auto_map = {auto: f"{entry_module_name(cls)}.{cls.__name__}" for auto, cls in classes.items()}
        with transformers_copies_no_code(list(classes.values())):
            saved = super().save_pretrained(save_directory, **kwargs)
        # loaded from the code saved with a model (no package installed): that code is copied again
        write_remote_code(save_directory, list(classes.values()), allow_bundled=True)
        _write_loaded_carving(self, save_directory)
        make_weights_readable_as_umask_allows([save_directory])
        return saved


def _build_backbone(config: DiffusionClassifierConfig) -> nn.Module:
    if config.backbone_type == "unet":
        return UNet2DModel(**config.backbone_config)
    backbone_config = dict(config.backbone_config)
    # in the dtype the model is built in (`from_pretrained(..., dtype=...)` sets it): from_config takes its config's
    # float32 otherwise (QA: a bfloat16 export ran its ViT in float32 and said model.dtype float32)
    backbone = AutoConfig.for_model(backbone_config.pop("model_type"), **backbone_config)
    return AutoModel.from_config(backbone, dtype=torch.get_default_dtype())


class DiffusionFeaturesForImageClassification(DiffusionClassifierPreTrainedModel):
    r"""
    Classify `pixel_values` (in [-1, 1]) with a linear head over a frozen diffusion feature, standardised with the
    training statistics. The feature (`config.backbone_type`):

    - `"unet"`: noise the images to `feature_timestep` with the fixed noise of `noise_seed`, run the U-Net up to
      `feature_block` and pool (averaged over `feature_views`), as [`UNetFeatureClassifierPipeline`] does;
    - `"encoder"`: the RC-DiT encoder's representation r (`encode_representation`), as
      [`RepresentationConditionedDiTPipeline`] does.

    Returns an `ImageClassifierOutput` (`loss` when `labels` are given; `hidden_states` = the pooled feature).
    """

    loaded_split_record: Optional[dict] = None  # the data_splits.json of the local folder it was loaded from
    loaded_from: Optional[str] = None  # that folder's real path

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, from safetensors only: `use_safetensors=False` and a folder that holds
        pickled weights (`pytorch_model.bin`) without safetensors are refused, never unpickled."""
        if kwargs.setdefault("use_safetensors", True) is not True:
            raise ValueError(
                f"use_safetensors: expected True, got {kwargs['use_safetensors']!r}; weights load from safetensors "
                "only (a pickle can run code)"
            )
        _check_no_pickles_only(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        if not kwargs.get("ignore_mismatched_sizes", False):  # else transformers initialises a new head
            _check_saved_labels(pretrained_model_name_or_path)
        saved_labels = _saved_label_names(pretrained_model_name_or_path, kwargs)  # the Auto classes pass a config
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.loaded_split_record, model.loaded_from = _loaded_split_record(
            pretrained_model_name_or_path, kwargs.get("subfolder", "")
        )
        # transformers' loading sets `requires_grad` on every parameter: a frozen backbone would count as trainable
        model.backbone.requires_grad_(not model.config.freeze_backbone)
        _warn_kept_head_renamed(saved_labels, model)
        return model

    def reset_classifier(self) -> None:
        """Start the head afresh, at zero (the backbone and its feature statistics stay): for a new label set of as
        many classes as the saved one, whose head transformers keeps under the new `id2label` names."""
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def __init__(self, config: DiffusionClassifierConfig):
        super().__init__(config)
        self.backbone = _build_backbone(config)
        self.register_buffer("feature_mean", torch.zeros(config.feature_size))
        self.register_buffer("feature_std", torch.ones(config.feature_size))
        self.classifier = nn.Linear(config.feature_size, config.num_labels)
        self.backbone.requires_grad_(not config.freeze_backbone)
        self.post_init()

    @property
    def extractor(self) -> DiffusionFeatureExtractor:
        # Built on demand: the scheduler holds plain tensors, which must not be created on the meta device
        # transformers uses while loading.
        scheduler = DDPMScheduler.from_config(self.config.scheduler_config)
        return DiffusionFeatureExtractor(self.backbone, scheduler)

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of `pixel_values`: `config.input_shape`, else the backbone's channels and size."""
        if self.config.input_shape is not None:
            return tuple(self.config.input_shape)
        backbone = self.backbone.config
        if self.config.backbone_type == "unet":
            return (backbone.in_channels, backbone.sample_size, backbone.sample_size)
        return (backbone.num_channels, backbone.image_size, backbone.image_size)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        config = self.config
        # A frozen backbone runs without autograd: no activations are kept. Frozen is what its parameters say, so that
        # `model.backbone.requires_grad_(True)` unfreezes it (QA: the config's flag overrode them, and it stayed fixed)
        backbone_trains = any(parameter.requires_grad for parameter in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trains):
            if config.backbone_type == "encoder":
                return encode_representation(
                    self.backbone, pixel_values, config.representation_readout, config.encoder_preprocessing
                )
            noise = make_noise(config.num_noise_draws, pixel_values.shape[1:], config.noise_seed)
            block, timestep = config.feature_block, config.feature_timestep
            blocks = feature_blocks(block)
            features = self.extractor.features_for_batch(
                pixel_values, blocks, [timestep], config.feature_pool, noise, views=config.feature_views
            )
            return hypercolumn(features, block, timestep)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[ImageClassifierOutput, tuple]:
        expected = self.input_shape
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"expected pixel_values of shape [N, {', '.join(map(str, expected))}], got {tuple(pixel_values.shape)}")
        features = self.features(pixel_values)
        logits = self.classifier((features.to(self.classifier.weight.dtype) - self.feature_mean) / self.feature_std)
        loss = None
        if labels is not None:
            if labels.min() < 0 or labels.max() >= self.config.num_labels:
                raise ValueError(f"expected labels in 0..{self.config.num_labels - 1}, got {labels.tolist()}")
            loss = nn.functional.cross_entropy(logits, labels.to(logits.device))
        hidden_states = (features,) if output_hidden_states else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


def _check_no_pickles_only(path, subfolder: str = "") -> None:
    """Fail before loading when a local folder holds pickled weights and no safetensors."""
    check_no_pickled_weights(os.path.join(str(path), subfolder))


def _check_saved_labels(path) -> None:
    """Fail before loading when a local folder's saved `config.json` (not the overrides passed to `from_pretrained`)
    has an `id2label` that does not match its saved classifier's outputs."""
    weights = os.path.join(str(path), "model.safetensors")
    if not os.path.isfile(weights):
        return  # a Hub id or sharded weights: transformers' own size check applies
    from safetensors import safe_open

    config = DiffusionClassifierConfig.from_pretrained(path)
    with safe_open(weights, framework="pt") as f:
        outputs = f.get_slice("classifier.weight").get_shape()[0] if "classifier.weight" in f.keys() else config.num_labels
    if outputs != config.num_labels:
        raise ValueError(
            f"{path}: config.json's id2label has {config.num_labels} labels {list(config.id2label.values())} but the "
            f"saved classifier has {outputs} outputs; expected one label per output"
        )


def _saved_label_names(path, kwargs: dict) -> Optional[list]:
    """The label names a saved model's `config.json` records, in label-id order; None where it cannot be read."""
    names = ("subfolder", "revision", "token", "cache_dir", "local_files_only")  # where from_pretrained reads it
    where = {name: kwargs[name] for name in names if name in kwargs}
    try:
        config = DiffusionClassifierConfig.from_pretrained(path, **where)
    except (OSError, ValueError):
        return None
    return [config.id2label[i] for i in sorted(config.id2label)]


def _warn_kept_head_renamed(saved_labels: Optional[list], model: PreTrainedModel) -> None:
    """transformers keeps a head of the saved size under a new `id2label`: say so when the names changed (QA: a new
    label set of the same size started from the old head's weights, its first loss 0.013 instead of ln 2)."""
    names = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    if saved_labels is None or len(saved_labels) != len(names) or saved_labels == names:
        return
    warnings.warn(
        f"id2label {names}: the saved head's {len(names)} outputs, trained as {saved_labels}, are kept under these "
        "names (transformers starts a new head only when the number of labels changes); for a new label set, start "
        "the head at zero with `model.reset_classifier()`",
        UserWarning,
        stacklevel=3,
    )


def saved_image_processor(model: PreTrainedModel):
    """The image processor saved beside `model` (`AutoImageProcessor` on the folder it was loaded from); a clear error
    for a model that was not loaded from a folder (`name_or_path` empty), such as the one an export returns."""
    if not model.name_or_path:
        raise ValueError(
            f"image_processor: expected one for this {type(model).__name__}, which was not loaded from a folder "
            "(empty name_or_path), so no saved processor can be found; pass the processor that was built with it "
            "(export_unet_feature_pipeline and export_rc_dit_pipeline return (model, image_processor))"
        )
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model.name_or_path)


def _export(pipeline, backbone: nn.Module, input_shape: tuple, save_directory, feature_affine=None, **config_kwargs):
    """The transformers model (and image processor) of `pipeline`'s fitted linear `head` over `backbone`'s feature,
    reading images of `input_shape` (C, H), saved to `save_directory` when given. `feature_affine = (shift, scale)`:
    the head reads (feature - shift) / scale, folded into the saved standardisation. Returns `(model, image_processor)`."""
    head = pipeline.head
    if head is None:
        raise ValueError("the pipeline has no fitted `head` to export")
    if not hasattr(head, "linear"):
        raise ValueError(
            f"expected a fitted LinearProbeHead to export as a linear layer, got {type(head).__name__}; fit one first "
            "(an RC-DiT pipeline: pipe.fit_linear_probe(images, labels, val_images, val_labels))"
        )
    config = DiffusionClassifierConfig(
        feature_size=head.config.in_features,
        id2label=head.id2label,
        label2id={name: i for i, name in head.id2label.items()},
        positive_class=getattr(pipeline, "positive_class", None),
        input_shape=[input_shape[0], input_shape[-1], input_shape[-1]],
        **config_kwargs,
    )
    model = DiffusionFeaturesForImageClassification(config)
    model.backbone.load_state_dict(backbone.state_dict())
    model.classifier.load_state_dict(head.linear.state_dict())
    shift, scale = feature_affine or (0.0, 1.0)
    model.feature_mean.copy_(shift + scale * head.feature_mean)
    model.feature_std.copy_(scale * head.feature_std)
    model.eval()
    processor = DiffusionClassifierImageProcessor(
        image_size=input_shape[-1], num_channels=input_shape[0], preprocessing=pipeline.preprocessing.to_dict()
    )
    if save_directory is not None:
        model.save_pretrained(save_directory)
        processor.save_pretrained(save_directory)
        _copy_split_record(pipeline, save_directory)
    return model, processor


def _copy_split_record(pipeline, save_directory) -> None:
    """The split record (`data_splits.json`) of `pipeline` (`split_record`: of the folder it was loaded from, as its
    head's registration left it), written beside its export, so that `evaluate` on the export carves the model's own
    test split and checks it against the training images (without it, it carved by the default seed: 76% accuracy for
    the pipeline's 44% on a probe carved with another seed)."""
    from .data.split_record import write_split_record

    if getattr(pipeline, "split_record", None) is not None:
        write_split_record(save_directory, pipeline.split_record)


def _loaded_split_record(folder, subfolder: str = "") -> tuple:
    """`(record, folder)`: the `data_splits.json` of the local model folder a model is loaded from (None for a Hub
    id: evaluate reads none there either), and that folder's real path; a record that cannot be read is left out,
    with a warning (evaluate names it where it reads it)."""
    from .data.split_record import read_split_record

    folder = os.path.join(str(folder), subfolder or "")
    if not os.path.isdir(folder):
        return None, None
    try:
        return read_split_record(folder), os.path.realpath(folder)
    except ValueError as error:
        warnings.warn(f"{error}: the model is loaded without it", UserWarning, stacklevel=3)
        return None, os.path.realpath(folder)


def _write_loaded_carving(model, save_directory) -> None:
    """A loaded model saved into another folder takes the split record of the folder it was loaded from without its
    training images' fingerprints: how its data was carved, so that `evaluate` carves the model's own test split
    (QA: `Trainer.save_model` of a fine-tuned export dropped the record, and evaluate carved by the default seed), but
    no fingerprint, which a model saved again may not have been trained on alone (a fine-tune) and which an upload of
    the folder (`push_to_hub`, a `Trainer`'s) must not carry: evaluate then says the images are not checked."""
    from .data.split_record import write_split_record

    record, source = getattr(model, "loaded_split_record", None), getattr(model, "loaded_from", None)
    if record is not None and source != os.path.realpath(save_directory):
        write_split_record(save_directory, record, fingerprints=False)


def _published_config(config: dict) -> dict:
    """A backbone's config as the export saves it: without `_name_or_path`, the local folder it was loaded from (as
    the pipelines' `save_config` leaves it out of `model_index.json`)."""
    return {key: value for key, value in config.items() if key != "_name_or_path"}


def _check_exportable(pipeline, components: tuple, expected: str) -> None:
    """Refuse a pipeline of another method (by its components: this module sits below the pipelines)."""
    if not all(hasattr(pipeline, name) for name in components):
        no_export = " (it classifies by likelihoods, not by a head over features)" if hasattr(pipeline, "sde") else ""
        raise TypeError(
            f"expected a {expected}, got {type(pipeline).__name__}{no_export}: export_unet_feature_pipeline exports "
            "U-Net-feature pipelines, export_rc_dit_pipeline RC-DiT ones; Score-SDE pipelines have no transformers "
            "export"
        )


def export_unet_feature_pipeline(pipeline, save_directory: Optional[Union[str, os.PathLike]] = None):
    """Turn a fitted `UNetFeatureClassifierPipeline` into a transformers model (and image processor) that gives
    identical predictions; saved to `save_directory` when given. Returns `(model, image_processor)`."""
    _check_exportable(pipeline, ("unet", "head"), "UNetFeatureClassifierPipeline")
    unet, head_config = pipeline.unet, getattr(pipeline.head, "config", None)
    if head_config is None:
        raise ValueError("the pipeline has no fitted `head` to export")
    return _export(
        pipeline,
        unet,
        (unet.config.in_channels, unet.config.sample_size),
        save_directory,
        backbone_type="unet",
        backbone_config=_published_config(dict(unet.config)),
        scheduler_config=dict(pipeline.scheduler.config),
        feature_block=head_config.block,
        feature_timestep=head_config.timestep,
        feature_pool=head_config.pool,
        noise_seed=head_config.noise_seed,
        num_noise_draws=head_config.num_noise_draws,
        feature_views=head_config.views,
    )


def export_rc_dit_pipeline(pipeline, save_directory: Optional[Union[str, os.PathLike]] = None):
    """Turn a `RepresentationConditionedDiTPipeline` with a fitted `LinearProbeHead` into a transformers model (and
    image processor) over its encoder's representation r, with the pipeline's predictions; saved to
    `save_directory` when given. Returns `(model, image_processor)`."""
    _check_exportable(pipeline, ("encoder", "transformer", "head"), "RepresentationConditionedDiTPipeline")
    encoder, transformer = pipeline.encoder, pipeline.transformer
    if representation_size(encoder) != getattr(getattr(pipeline.head, "config", None), "in_features", None):
        raise ValueError("expected a fitted head over the encoder's representation (pipeline.head.in_features = D)")
    contract = pipeline.preprocessing  # the size and channels the pipeline reads (`default_preprocessing`)
    return _export(
        pipeline,
        encoder,
        (contract.num_channels, contract.image_size),
        save_directory,
        feature_affine=_representation_affine(transformer),
        backbone_type="encoder",
        backbone_config=_published_config(encoder.config.to_dict()),
        representation_readout=transformer.config.representation_readout,
        encoder_preprocessing=transformer.config.encoder_preprocessing,
    )


def _representation_affine(transformer) -> Optional[tuple]:
    """(shift, scale) of the transformer's eval-mode `representation_norm` ((r - shift) / scale), `None` for none."""
    norm = transformer.representation_normalizer
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return None
    return norm.running_mean.float().cpu(), (norm.running_var.float().cpu() + norm.eps).sqrt()

"""Classify with the representation of a ViT trained jointly with a DiT denoiser."""

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from diffusers import AutoencoderKL, DDPMScheduler

from diffusion_classifiers.data import ImagePreprocessing
from diffusion_classifiers.features import DiTFeatureExtractor, dit_block_name
from diffusion_classifiers.models import (
    LinearProbeHead,
    PrototypeHead,
    RepresentationConditionedDiTModel,
    check_encoder_matches,
    fit_prototypes,
    input_image_size_and_channels,
    representation_of,
)
from diffusion_classifiers.probing.probe_grid import ProbeGridResult, fit_probe_grid
from diffusion_classifiers.validation import check_positive_integer

from .pipeline_utils import DiffusionClassifierPipeline

__all__ = ["REPRESENTATION_FEATURE", "RepresentationConditionedDiTPipeline", "dit_block_name"]

# The feature key of the representation for `probing.fit_probe_grid`; a head fitted on it records
# block="encoder", timestep=0 (the representation is read from the clean image: no noise, no timestep).
REPRESENTATION_FEATURE = ("encoder", 0)


class RepresentationConditionedDiTPipeline(DiffusionClassifierPipeline):
    r"""
    A ViT encoder trained together with a representation-conditioned DiT; its representation r classifies images.

    - `encode(images)`: r, the encoder's representation as the transformer is conditioned on it
      (`representation_of`: the transformer's readout and normalisation), `[N, D]`.
    - `__call__(images)`: classify with `head` over r: a `LinearProbeHead` or a `PrototypeHead`.
      - linear probe: `pipe.fit_linear_probe(train_images, train_labels, val_images, val_labels, class_names)`
        registers a `LinearProbeHead` (`probing.fit_probe_grid` on `{REPRESENTATION_FEATURE: r}`; its
        `block`/`timestep` config fields are "encoder"/0), the head `export_rc_dit_pipeline` exports.
      - prototypes (few-shot): `pipe.fit_prototypes(labelled_images, labels, class_names)` registers a
        `PrototypeHead` (cosine similarity to the class means of r).
      Label-free and few-shot evaluation (`probing.evaluate_protocols`) use `encode` directly.
    - `dit_features(images, timesteps)`: pooled DiT block activations of noised images ([`DiTFeatureExtractor`]), a
      second feature source in the `(block, timestep) -> [N, D]` form of the U-Net features.

    Generation from reference images is [`RepresentationConditionedDiTImageVariationPipeline`], built from the same
    components: `RepresentationConditionedDiTImageVariationPipeline.from_pipe(pipe)`.

    Images (file paths, PIL, arrays or tensors) go through `preprocess`: the saved `preprocessing` contract
    (`diffusion_classifiers.data.preprocess_images`), by default resized to the encoder's `image_size`, float inputs
    read as `[-1, 1]`. With a `vae` the transformer works on its latents; the encoder always reads the images.
    Use the models in eval mode, as `from_pretrained` and `training.train` return them (`dit_features` switches to eval
    mode itself).

    Args:
        encoder: a transformers vision model (`ViTModel`, `Dinov2Model`) whose `hidden_size` is the transformer's
            `representation_dim` and whose `num_channels` is its `in_channels`.
        transformer: the `RepresentationConditionedDiTModel` trained with the encoder.
        scheduler: the `DDPMScheduler` it was trained with (a `DDIMScheduler` made from its config also samples).
        vae: optional frozen `AutoencoderKL` when the transformer was trained in its latent space
            (`train_rc_dit(vae=...)`); its `latent_channels` are then the transformer's `in_channels`.
        head: optional fitted `LinearProbeHead` or `PrototypeHead` over r.
        positive_class: for a binary task, the class name its metrics refer to (see `set_positive_class`); saved
            in `model_index.json`.
        preprocessing: the saved [`ImagePreprocessing`] contract (a dict in `model_index.json`): how `preprocess` reads
            every input (float range, size, resampling, channels, DICOM windows); default `default_preprocessing()`,
            missing keys too (see `set_preprocessing`).
    """

    how_to_fit_a_head = (
        "with `diffusion-classifiers fit-head --model_dir DIR --dataset DATA` (a linear probe; `--head prototypes "
        "--shots K` for K labelled images per class), or in Python: `pipe.fit_prototypes(images, labels, "
        "class_names=...)` or `pipe.fit_linear_probe(images, labels, val_images, val_labels, class_names=...)`, then "
        "`pipe.save_pretrained(DIR)`"
    )

    model_cpu_offload_seq = "encoder->transformer->vae->head"
    _optional_components = ["vae", "head"]

    def __init__(
        self,
        encoder,
        transformer: RepresentationConditionedDiTModel,
        scheduler: DDPMScheduler,
        vae: Optional[AutoencoderKL] = None,
        head: Optional[Union[LinearProbeHead, PrototypeHead]] = None,
        positive_class: Optional[str] = None,
        preprocessing: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        check_encoder_matches(encoder, transformer, vae)
        self.register_modules(encoder=encoder, transformer=transformer, scheduler=scheduler, vae=vae, head=head)
        self.set_positive_class(positive_class)
        self.set_preprocessing(preprocessing)

    @property
    def dit_feature_extractor(self) -> DiTFeatureExtractor:
        return DiTFeatureExtractor(self.transformer, self.scheduler, self.encoder, self.vae)

    def default_preprocessing(self) -> ImagePreprocessing:
        """The size and channels the models read (`models.input_image_size_and_channels`: the encoder's, or for a
        pretrained encoder with `encoder_preprocessing` the DiT's), float inputs in `[-1, 1]`."""
        return ImagePreprocessing(*input_image_size_and_channels(self.encoder, self.transformer, self.vae))

    def to_transformer_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Clean images `[N, C, H, W]` in [-1, 1] -> the transformer's x0: the VAE latents (posterior mode), else
        the images resized to its `sample_size` ([`DiTFeatureExtractor.to_transformer_space`])."""
        return self.dit_feature_extractor.to_transformer_space(pixels)

    def encode(self, images, batch_size: int = 64, input_data_format: Optional[str] = None) -> torch.Tensor:
        """The representation r of `images` (one or a list of file paths, PIL images, arrays or tensors): float32
        `[N, D]`, CPU. `input_data_format` is the layout of 3-D / 4-D arrays and tensors (see `preprocess_images`)."""
        return self._represent(self.preprocess(images, input_data_format), batch_size)

    @torch.no_grad()
    def _represent(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """`encode` of preprocessed `pixels`, without autograd (QA: fitting a head kept every batch's graph, 7.8 GB
        and 8x the time on PneumoniaMNIST's train split)."""
        check_positive_integer(batch_size, "batch_size")
        representations = []
        with self.progress_bar(total=len(pixels)) as progress_bar:
            for chunk in pixels.split(batch_size):
                representations.append(representation_of(self.encoder, self.transformer, chunk).float().cpu())
                progress_bar.update(len(chunk))
        return torch.cat(representations)

    def fit_prototypes(
        self,
        images,
        labels,
        class_names: Optional[Sequence[str]] = None,
        temperature: float = 0.1,
        standardize: bool = False,
        batch_size: int = 64,
        input_data_format: Optional[str] = None,
        val_images=None,
        val_labels=None,
    ) -> PrototypeHead:
        """Fit a `PrototypeHead` on the representations of labelled `images` (e.g. a few per class), register it as
        this pipeline's `head` and return it. `labels`: integer class ids; `class_names` fixes the number of classes
        (else the largest label + 1), and every class needs at least one image. With labelled `val_images` (others
        than `images`) the softmax temperature is fitted on them, so the probabilities are calibrated; without, it is
        `temperature`, whose probabilities are not (see `models.fit_prototypes`)."""
        labelled = [images] + ([] if val_images is None else [val_images])
        pixels = [self.preprocess(x, input_data_format) for x in labelled]
        _check_one_label_per_image(pixels, [labels, val_labels])
        head = fit_prototypes(
            self._represent(pixels[0], batch_size), labels, class_names=class_names, temperature=temperature,
            standardize=standardize, block=REPRESENTATION_FEATURE[0], timestep=REPRESENTATION_FEATURE[1],
            val_features=self._represent(pixels[1], batch_size) if len(pixels) > 1 else None, val_labels=val_labels,
        )  # fmt: skip
        self.register_fitted_head(head.to(self.encoder.device), *pixels)  # their fingerprints join the record
        return head

    def fit_linear_probe(
        self,
        images,
        labels,
        val_images,
        val_labels,
        class_names: Optional[Sequence[str]] = None,
        batch_size: int = 64,
        input_data_format: Optional[str] = None,
        return_fit: bool = False,
        **probe_kwargs,
    ) -> Union[LinearProbeHead, ProbeGridResult]:
        """Fit a linear probe (scikit-learn's logistic regression, `probing.fit_probe_grid`) on the representations
        of labelled `images`; register it as this pipeline's `head` and return it, or with `return_fit=True` the whole
        `ProbeGridResult` (the `C` kept, every strength's val scores). `probe_kwargs`: `C`, `class_weight`,
        `early_stopping`, ... of `fit_probe_grid`: given several strengths (`C=[...]`) or `early_stopping=True`, the
        strength and the iterate kept are chosen on the labelled `val_images` (by default one strength, C = 1, fitted
        to convergence). The progress bar follows `set_progress_bar_config` unless `progress_bar` is given."""
        pixels, val_pixels = (self.preprocess(x, input_data_format) for x in (images, val_images))
        _check_one_label_per_image([pixels, val_pixels], [labels, val_labels])
        result = fit_probe_grid(
            {REPRESENTATION_FEATURE: self._represent(pixels, batch_size)}, labels,
            {REPRESENTATION_FEATURE: self._represent(val_pixels, batch_size)}, val_labels, class_names=class_names,
            **{"progress_bar": self.progress_bar_config, **probe_kwargs, "pool": None},  # r is a vector: no pooling
        )  # fmt: skip
        self.register_fitted_head(result.head.to(self.encoder.device), pixels, val_pixels)
        return result if return_fit else result.head

    def dit_features(
        self,
        images,
        timesteps: Sequence[int] = (100,),
        block_indices: Optional[Sequence[int]] = None,
        noise_seed: int = 0,
        representation: str = "encoder",
        pool: Optional[str] = "mean",
        batch_size: int = 64,
        input_data_format: Optional[str] = None,
        num_workers: int = 0,
        max_memory_bytes: Optional[int] = None,
        feature_dir: Optional[str] = None,
    ) -> Dict[Tuple[str, int], torch.Tensor]:
        r"""
        Pooled activations of DiT blocks on noised `images` (one or a list of file paths, PIL images, arrays or
        tensors, or a torch `Dataset` of images already preprocessed to the encoder's size, e.g. a
        `data.StreamingImages` larger than memory), keyed like the U-Net features: `{(dit_block_name(i), t): float32
        CPU tensor [N, D]}` (float16 memory maps beyond `max_memory_bytes`), e.g. `("transformer_blocks.3", 100)`.
        The arguments are those of [`DiTFeatureExtractor.extract`], and `input_data_format` that of
        `preprocess_images`. The progress bar follows `set_progress_bar_config`.
        """
        streamed = isinstance(images, torch.utils.data.Dataset)  # read batch by batch by the extractor's DataLoader
        return self.dit_feature_extractor.extract(
            images if streamed else self.preprocess(images, input_data_format),
            timesteps=timesteps,
            block_indices=block_indices,
            noise_seed=noise_seed,
            representation=representation,
            pool=pool,
            batch_size=batch_size,
            progress_bar=self.progress_bar_config,
            num_workers=num_workers,
            max_memory_bytes=max_memory_bytes,
            feature_dir=feature_dir,
        )

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 64, return_dict: bool = True, input_data_format: Optional[str] = None):
        r"""
        Classify `images` (one or a list of file paths, PIL images, arrays or tensors) with the fitted head over r.

        Args:
            images: the images to classify.
            batch_size (`int`, *optional*, defaults to 64): images per encoder forward pass.
            return_dict (`bool`, *optional*, defaults to `True`): return a `ClassifierPipelineOutput`, else a tuple.
            input_data_format (`str`, *optional*): `"channels_first"` or `"channels_last"`, the layout of 3-D and
                4-D arrays and tensors; `None` infers it when unambiguous (see `preprocess_images`).

        Examples:

        ```py
        >>> from diffusion_classifiers import DiffusionClassifierPipeline

        >>> pipe = DiffusionClassifierPipeline.from_pretrained("path/to/rc_dit_pipeline")
        >>> pipe.fit_prototypes(few_labelled_images, labels, class_names=["benign", "malignant"])  # or a saved head
        >>> out = pipe(images)
        >>> out.labels, out.probs
        ```

        Returns:
            `ClassifierPipelineOutput` (`labels`, `label_ids`, `scores`, `probs`), or a tuple when
            `return_dict=False`.
        """
        if self.head is None:
            raise ValueError(
                "this pipeline has no `head`: fit one first, with `pipe.fit_prototypes(images, labels)` or "
                "`pipe.fit_linear_probe(images, labels, val_images, val_labels)`"
            )
        if self.head.config.block != REPRESENTATION_FEATURE[0]:
            raise ValueError(f"expected a head fitted on block {REPRESENTATION_FEATURE[0]!r}, got {self.head.config.block!r}")
        features = self.encode(images, batch_size=batch_size, input_data_format=input_data_format)
        logits = self.head(features.to(self.head.device))
        self.maybe_free_model_hooks()
        return self.build_output(logits, self.class_names, return_dict)


def _check_one_label_per_image(pixels: list, labels: list) -> None:
    """`images` and `labels` (then `val_images` and `val_labels`) of a head's fit pair up, checked before any is
    encoded (QA: a count that differed was said of "features" after encoding them)."""
    for prefix, batch, given in zip(("", "val_"), pixels, labels):
        if given is not None and len(batch) != len(given):
            raise ValueError(
                f"{prefix}images and {prefix}labels: expected one label per image, got {len(batch)} images and "
                f"{len(given)} labels"
            )

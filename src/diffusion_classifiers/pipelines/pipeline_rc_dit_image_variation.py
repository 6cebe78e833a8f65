"""Generate images from reference images with a representation-conditioned DiT: image variations."""

from typing import Any, Dict, List, Optional, Union

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from diffusion_classifiers.data import ImagePreprocessing
from diffusion_classifiers.models import (
    RepresentationConditionedDiTModel,
    check_encoder_matches,
    decode_latents,
    input_image_size_and_channels,
    representation_of,
)

from .pipeline_utils import (
    DiffusionClassifierPipeline,
    ProgressBarsMixin,
    SavedPreprocessingMixin,
    SavedWithCodeMixin,
    installed_index,
    keep_legacy_preprocessing,
    local_snapshot,
    read_model_index,
)

__all__ = ["RepresentationConditionedDiTImageVariationPipeline"]

OUTPUT_TYPES = ("pt", "np", "pil")


class RepresentationConditionedDiTImageVariationPipeline(
    ProgressBarsMixin, SavedWithCodeMixin, SavedPreprocessingMixin, DiffusionPipeline
):
    r"""
    Sample images conditioned on the representation r of reference images, with classifier-free guidance.

    The components are those of a [`RepresentationConditionedDiTPipeline`] less its classification head, so a
    classifier pipeline lends them without copying any weights:
    `RepresentationConditionedDiTImageVariationPipeline.from_pipe(classifier_pipe)`. `from_pretrained` also loads
    straight from a folder saved by the classifier pipeline (its `head` is not loaded). Either way the classifier's
    saved `preprocessing` comes along, so reference images (file paths, DICOM included, PIL, arrays or tensors) are
    read as the classifier reads them.

    Args:
        encoder: the transformers vision model (`ViTModel`, `Dinov2Model`) that computes r of the references.
        transformer ([`RepresentationConditionedDiTModel`]): the denoiser conditioned on r.
        scheduler ([`DDPMScheduler`]): the scheduler it was trained with, or another one made from its config
            (`DDIMScheduler.from_config(pipe.scheduler.config)`) for fewer steps.
        vae ([`AutoencoderKL`], *optional*): when the transformer works in the VAE's latent space; samples are
            decoded with it.
        preprocessing: the saved [`ImagePreprocessing`] contract (a dict in `model_index.json`): how `preprocess`
            reads the reference images; default `default_preprocessing()`, missing keys too (see
            `set_preprocessing`). A folder saved without one (before the contract) reads float inputs as it did then
            (`input_range="auto"`).
    """

    model_cpu_offload_seq = "encoder->transformer->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        encoder,
        transformer: RepresentationConditionedDiTModel,
        scheduler: DDPMScheduler,
        vae: Optional[AutoencoderKL] = None,
        preprocessing: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        check_encoder_matches(encoder, transformer, vae)
        self.register_modules(encoder=encoder, transformer=transformer, scheduler=scheduler, vae=vae)
        self.set_preprocessing(preprocessing)

    def default_preprocessing(self) -> ImagePreprocessing:
        """The size and channels the models read (`models.input_image_size_and_channels`: the encoder's, or for a
        pretrained encoder with `encoder_preprocessing` the DiT's), float inputs in `[-1, 1]`."""
        return ImagePreprocessing(*input_image_size_and_channels(self.encoder, self.transformer, self.vae))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = local_snapshot(pretrained_model_name_or_path, kwargs)
        index = installed_index(read_model_index(path))
        keep_legacy_preprocessing(index, kwargs, {cls.__name__, *DiffusionClassifierPipeline._registry})
        cls.safetensors_only(path, index, kwargs)
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        # a classifier's folder: its head and settings are left out, else diffusers warns of a faulty model_index.json
        if config.get("_class_name") != cls.__name__:
            known = set().union(*cls._get_signature_keys(cls))
            for name in [name for name in config if not name.startswith("_") and name not in known]:
                config.pop(name)
        return loaded

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """The pipeline on `pipeline`'s encoder, transformer, scheduler and vae (shared, not copied), in their dtype,
        with its progress-bar settings."""
        # diffusers casts the new pipeline to `dtype`, float32 by default: the shared models of a half-precision
        # classifier pipeline would change dtype under it.
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = pipeline.transformer.dtype
        variation = super().from_pipe(pipeline, **kwargs)
        variation.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        return variation

    def check_inputs(
        self, reference_images, guidance_scale, num_inference_steps, output_type, generator, input_data_format=None
    ):
        """Validate the arguments; return the reference images as `[N, C, H, W]`, read by `self.preprocessing`."""
        if not guidance_scale >= 0:
            raise ValueError(f"expected guidance_scale >= 0, got {guidance_scale}")
        if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
            raise ValueError(f"expected num_inference_steps >= 1, got {num_inference_steps}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"expected output_type 'pt', 'np' or 'pil', got {output_type!r}")
        references = self.preprocess(reference_images, input_data_format)
        if isinstance(generator, list) and len(generator) != len(references):
            raise ValueError(f"expected one generator per reference image ({len(references)}), got {len(generator)}")
        return references

    @torch.no_grad()
    def __call__(
        self,
        reference_images,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pt",
        return_dict: bool = True,
        input_data_format: Optional[str] = None,
    ):
        r"""
        Sample one image per reference image, conditioned on its representation.

        The noise prediction is `eps_uncond + guidance_scale * (eps_cond - eps_uncond)`, `eps_uncond` with the null
        representation: 1 is plain conditional sampling, 0 unconditional, > 1 stronger guidance.

        Args:
            reference_images (`str`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a `list` of them):
                one or more reference images (file paths too), read by the saved `preprocessing` contract (float
                values in its `input_range`, `[-1, 1]` by default; converted to the encoder's size and channels).
            guidance_scale (`float`, *optional*, defaults to 1.0):
                the classifier-free guidance scale, >= 0.
            num_inference_steps (`int`, *optional*, defaults to 50):
                denoising steps of the scheduler, >= 1.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                one generator, or one per reference image, for reproducible samples.
            output_type (`str`, *optional*, defaults to `"pt"`):
                `"pt"` (float tensor `[N, C, H, W]` in [0, 1]), `"np"` (`[N, H, W, C]` in [0, 1]) or `"pil"`.
            return_dict (`bool`, *optional*, defaults to `True`):
                return an [`~pipelines.ImagePipelineOutput`] instead of a plain tuple.
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"`, the layout of 3-D and 4-D arrays and tensors; `None` infers
                it when unambiguous (see `preprocess_images`).

        Examples:

        ```py
        >>> import torch
        >>> from diffusion_classifiers import DiffusionClassifierPipeline
        >>> from diffusion_classifiers.pipelines import RepresentationConditionedDiTImageVariationPipeline

        >>> classifier = DiffusionClassifierPipeline.from_pretrained("path/to/rc_dit_pipeline")
        >>> pipe = RepresentationConditionedDiTImageVariationPipeline.from_pipe(classifier)  # shares the weights
        >>> generator = torch.Generator().manual_seed(0)
        >>> images = pipe(reference_images, guidance_scale=2.0, num_inference_steps=50, generator=generator).images
        ```

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, or a tuple `(images,)` when
            `return_dict=False`.
        """
        references = self.check_inputs(
            reference_images, guidance_scale, num_inference_steps, output_type, generator, input_data_format
        )
        batch_size = len(references)
        device, dtype = self._execution_device, self.transformer.dtype
        do_classifier_free_guidance = guidance_scale not in (0, 1)

        # encode the references; the null representation conditions the unconditional branch
        representations = representation_of(self.encoder, self.transformer, references).to(device, dtype)
        null = self.transformer.null_representation[None].expand(batch_size, -1)
        if guidance_scale == 0:
            representations = null
        elif do_classifier_free_guidance:
            representations = torch.cat([representations, null])

        # sample the initial noise
        config = self.transformer.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        sample = sample * self.scheduler.init_noise_sigma

        # set step values
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([sample] * 2) if do_classifier_free_guidance else sample
            model_input = self.scheduler.scale_model_input(model_input, t)

            # predict noise model_output
            noise_pred = self.transformer(model_input, t, representations).sample

            # perform guidance
            if do_classifier_free_guidance:
                noise_pred_cond, noise_pred_uncond = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)

            # compute previous image: x_t -> x_t-1
            sample = self.scheduler.step(noise_pred, t, sample, generator=generator).prev_sample

        # decode the latents (with a vae) and map [-1, 1] -> [0, 1]
        if self.vae is not None:
            sample = decode_latents(self.vae, sample)
        images = (sample.float() / 2 + 0.5).clamp(0, 1).cpu()
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

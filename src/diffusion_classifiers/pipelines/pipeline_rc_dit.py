"""Classify with the representation of a ViT trained jointly with a DiT denoiser; generate from references."""

import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from diffusion_classifiers.data import preprocess_images
from diffusion_classifiers.features import make_noise
from diffusion_classifiers.models import LinearProbeHead, PrototypeHead, fit_prototypes
from diffusion_classifiers.models.rc_dit import (
    RepresentationConditionedDiTModel,
    check_encoder_matches,
    decode_latents,
    encode_latents,
    encode_representation,
)

from .pipeline_utils import DiffusionClassifierPipeline

# The feature key of the representation for `probing.fit_probe_grid`; a head fitted on it records
# block="encoder", timestep=0 (the representation is read from the clean image: no noise, no timestep).
REPRESENTATION_FEATURE = ("encoder", 0)


def dit_block_name(index: int) -> str:
    """The block name of DiT block `index` in the feature keys of `dit_features`."""
    return f"transformer_blocks.{index}"


class RepresentationConditionedDiTPipeline(DiffusionClassifierPipeline):
    r"""
    A ViT encoder trained together with a representation-conditioned DiT; its representation r classifies images.

    - `encode(images)`: r, the encoder's representation (`encode_representation`), `[N, D]`.
    - `__call__(images)`: classify with `head` over r: a `LinearProbeHead` or a `PrototypeHead`.
      - linear probe: `probing.fit_probe_grid({REPRESENTATION_FEATURE: pipe.encode(train_images)}, train_labels,
        {REPRESENTATION_FEATURE: pipe.encode(val_images)}, val_labels, class_names=..., pool=None)` and
        `pipe.register_modules(head=result.head)`; its `block`/`timestep` config fields are then "encoder"/0 and
        `pool`, `noise_seed`, `num_noise_draws` are unused.
      - prototypes (few-shot): `pipe.fit_prototypes(labelled_images, labels, class_names)` registers a
        `PrototypeHead` (cosine similarity to the class means of r).
      Label-free and few-shot evaluation (`probing.evaluate_protocols`) use `encode` directly.
    - `dit_features(images, timesteps)`: pooled DiT block activations of noised images, a second feature source in
      the `(block, timestep) -> [N, D]` form of the U-Net features.
    - `generate(reference_images)`: sample images with the scheduler, conditioned on the references' r, with
      classifier-free guidance.

    Images (PIL, arrays or tensors) go through `diffusion_classifiers.data.preprocess_images`, resized to the
    encoder's `image_size`. With a `vae` the transformer works on its latents (the mode of the posterior for
    features, decoded for `generate`); the encoder always reads the images. Use the models in eval mode (as `from_pretrained` and `training.train` return them): in
    train mode the transformer drops representations with probability `rep_dropout`.

    Args:
        encoder: a transformers vision model (`ViTModel`, `Dinov2Model`) whose `hidden_size` is the transformer's
            `representation_dim` and whose `num_channels` is its `in_channels`.
        transformer: the `RepresentationConditionedDiTModel` trained with the encoder.
        scheduler: the `DDPMScheduler` it was trained with (a `DDIMScheduler` made from its config also samples).
        vae: optional frozen `AutoencoderKL` when the transformer was trained in its latent space
            (`train_rc_dit(vae=...)`); its `latent_channels` are then the transformer's `in_channels`.
        head: optional fitted `LinearProbeHead` or `PrototypeHead` over r.
    """

    model_cpu_offload_seq = "encoder->transformer->vae->head"
    _optional_components = ["vae", "head"]

    def __init__(
        self,
        encoder,
        transformer: RepresentationConditionedDiTModel,
        scheduler: DDPMScheduler,
        vae: Optional[AutoencoderKL] = None,
        head: Optional[Union[LinearProbeHead, PrototypeHead]] = None,
    ):
        super().__init__()
        check_encoder_matches(encoder, transformer, vae)
        self.register_modules(encoder=encoder, transformer=transformer, scheduler=scheduler, vae=vae, head=head)

    @property
    def class_names(self) -> List[str]:
        if self.head is None:
            raise ValueError("this pipeline has no `head`, so no classes yet")
        return self.class_names_from(self.head.config.num_classes, self.head.config.class_names)

    def preprocess(self, images) -> torch.Tensor:
        config = self.encoder.config
        return preprocess_images(images, image_size=config.image_size, num_channels=config.num_channels)

    def to_transformer_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Clean images `[N, C, H, W]` in [-1, 1] -> the transformer's x0: the VAE latents (posterior mode), else
        the images resized to its `sample_size`."""
        if self.vae is not None:
            return encode_latents(self.vae, pixels, sample=False)
        size = self.transformer.config.sample_size
        if tuple(pixels.shape[-2:]) == (size, size):
            return pixels
        return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def encode(self, images, batch_size: int = 64) -> torch.Tensor:
        """The representation r of `images` (one or a list of PIL images, arrays or tensors): float32 `[N, D]`, CPU."""
        pixels = self.preprocess(images)
        return torch.cat(
            [encode_representation(self.encoder, chunk).float().cpu() for chunk in pixels.split(batch_size)]
        )

    def fit_prototypes(
        self,
        images,
        labels,
        class_names: Optional[Sequence[str]] = None,
        temperature: float = 0.1,
        standardize: bool = False,
        batch_size: int = 64,
    ) -> PrototypeHead:
        """Fit a `PrototypeHead` on the representations of labelled `images` (e.g. a few per class), register it as
        this pipeline's `head` and return it. `labels`: integer class ids; `class_names` fixes the number of classes
        (else the largest label + 1), and every class needs at least one image."""
        features = self.encode(images, batch_size=batch_size)
        head = fit_prototypes(
            features, labels, class_names=class_names, temperature=temperature, standardize=standardize,
            block=REPRESENTATION_FEATURE[0], timestep=REPRESENTATION_FEATURE[1],
        )  # fmt: skip
        self.register_modules(head=head.to(self.encoder.device))
        return head

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 64, return_dict: bool = True):
        """Classify `images` with the fitted head (linear probe or prototypes). Returns a `ClassifierPipelineOutput`
        (`labels`, `label_ids`, `scores`, `probs`), or a tuple when `return_dict=False`."""
        if self.head is None:
            raise ValueError(
                "this pipeline has no `head`: fit one with `pipe.fit_prototypes(images, labels)`, or fit a linear "
                "probe on `encode` features (diffusion_classifiers.probing.fit_probe_grid) and register it with "
                "`pipe.register_modules(head=...)` first"
            )
        if self.head.config.block != REPRESENTATION_FEATURE[0]:
            raise ValueError(f"expected a head fitted on block {REPRESENTATION_FEATURE[0]!r}, got {self.head.config.block!r}")
        features = self.encode(images, batch_size=batch_size)
        logits = self.head(features.to(self.head.device))
        return self.build_output(logits, self.class_names, return_dict)

    @torch.no_grad()
    def dit_features(
        self,
        images,
        timesteps: Sequence[int] = (100,),
        block_indices: Optional[Sequence[int]] = None,
        noise_seed: int = 0,
        representation: str = "encoder",
        pool: Optional[str] = "mean",
        batch_size: int = 64,
    ) -> Dict[Tuple[str, int], torch.Tensor]:
        r"""
        Pooled activations of DiT blocks on noised images, keyed like the U-Net features of
        `DiffusionFeatureExtractor.extract`, so `probing.fit_probe_grid` and `probing.evaluate_protocols` take them.

        Each image x0 is noised to `x_t = scheduler.add_noise(x0, eps, t)` with one noise `eps` from
        `features.make_noise(1, ..., noise_seed)`: the same for every image and every timestep, so a feature depends
        only on its image and the seed, not on batching.

        Args:
            images: one or a list of PIL images, arrays or tensors (as for `encode`; then mapped to the transformer's
                input by `to_transformer_space`).
            timesteps: training timesteps in `[0, num_train_timesteps)`.
            block_indices: the blocks to read (default all); only blocks up to the deepest one are run.
            noise_seed: seed of the noise.
            representation: "encoder" conditions the DiT on the image's own r; "null" on the null representation.
            pool: "mean" over the patch tokens (`[N, hidden_size]`) or `None` (all tokens, flattened).

        Returns:
            `{(dit_block_name(i), t): float32 CPU tensor [N, D]}`, e.g. `("transformer_blocks.3", 100)`.
        """
        config = self.transformer.config
        timesteps = self._check_timesteps(timesteps)
        block_indices = self._check_block_indices(block_indices)
        if representation not in ("encoder", "null"):
            raise ValueError(f"expected representation 'encoder' or 'null', got {representation!r}")
        if pool not in ("mean", None):
            raise ValueError(f"expected pool 'mean' or None, got {pool!r}")
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        pixels = self.preprocess(images)
        noise = make_noise(1, (config.in_channels, config.sample_size, config.sample_size), noise_seed)
        device, dtype = self.transformer.device, self.transformer.dtype
        chunks = {(dit_block_name(i), t): [] for t in timesteps for i in block_indices}
        for chunk in pixels.split(batch_size):
            r = encode_representation(self.encoder, chunk) if representation == "encoder" else None
            x0 = self.to_transformer_space(chunk).to(device=device, dtype=torch.float32)
            eps = noise.to(device).expand_as(x0)
            for t in timesteps:
                x_t = self.scheduler.add_noise(x0, eps, torch.full((len(x0),), t, dtype=torch.long, device=device))
                states = self.transformer.block_hidden_states(x_t.to(dtype), t, r, num_blocks=max(block_indices) + 1)
                for i in block_indices:
                    pooled = states[i].mean(dim=1) if pool == "mean" else states[i].flatten(1)
                    chunks[(dit_block_name(i), t)].append(pooled.float().cpu())
        return {key: torch.cat(parts) for key, parts in chunks.items()}

    def _check_timesteps(self, timesteps) -> List[int]:
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        timesteps = [timesteps] if isinstance(timesteps, numbers.Integral) else list(timesteps)
        bad = [t for t in timesteps if not isinstance(t, numbers.Integral) or not 0 <= t < num_train_timesteps]
        if not timesteps or bad:
            raise ValueError(
                f"expected timesteps as integers in [0, {num_train_timesteps}) (the scheduler's num_train_timesteps), "
                f"got {timesteps}"
            )
        return [int(t) for t in timesteps]

    def _check_block_indices(self, block_indices) -> List[int]:
        num_layers = self.transformer.config.num_layers
        if block_indices is None:
            return list(range(num_layers))
        block_indices = list(block_indices)
        bad = [i for i in block_indices if not isinstance(i, numbers.Integral) or not 0 <= i < num_layers]
        if not block_indices or bad:
            raise ValueError(
                f"expected block_indices in [0, {num_layers}) (the transformer's num_layers), got {block_indices}"
            )
        return [int(i) for i in block_indices]

    @torch.no_grad()
    def generate(
        self,
        reference_images,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        r"""
        Sample one image per reference image, conditioned on its representation.

        The noise prediction is `eps_uncond + guidance_scale * (eps_cond - eps_uncond)`, `eps_uncond` with the null
        representation: 1 is plain conditional sampling, 0 unconditional, > 1 stronger guidance.

        Args:
            reference_images: one or a list of PIL images, arrays or tensors, with the encoder's channel count.
            guidance_scale: >= 0.
            num_inference_steps: >= 1 denoising steps of the scheduler.
            generator: a `torch.Generator` or one per reference image, for reproducible samples.
            output_type: "pt" (float tensor `[N, C, H, W]` in [0, 1]), "np" (`[N, H, W, C]` in [0, 1]) or "pil".

        Returns:
            `ImagePipelineOutput` with `.images`, or a tuple `(images,)` when `return_dict=False`.
        """
        if not guidance_scale >= 0:
            raise ValueError(f"expected guidance_scale >= 0, got {guidance_scale}")
        if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
            raise ValueError(f"expected num_inference_steps >= 1, got {num_inference_steps}")
        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"expected output_type 'pt', 'np' or 'pil', got {output_type!r}")
        config = self.transformer.config
        references = preprocess_images(reference_images, image_size=self.encoder.config.image_size)
        num_channels = self.encoder.config.num_channels
        if references.shape[1] != num_channels:
            raise ValueError(
                f"expected reference images with {num_channels} channel(s) (the encoder's num_channels), "
                f"got {references.shape[1]}"
            )
        batch_size = references.shape[0]
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"expected one generator per reference image ({batch_size}), got {len(generator)}")

        device, dtype = self.transformer.device, self.transformer.dtype
        representation = encode_representation(self.encoder, references).to(device, dtype)
        null = self.transformer.null_representation[None].expand(batch_size, -1)
        if guidance_scale == 1:
            representations = representation
        elif guidance_scale == 0:
            representations = null
        else:
            representations = torch.cat([representation, null])

        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = sample if representations.shape[0] == batch_size else torch.cat([sample, sample])
            model_input = self.scheduler.scale_model_input(model_input, t)
            eps = self.transformer(model_input, t, representations).sample
            if representations.shape[0] != batch_size:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            sample = self.scheduler.step(eps, t, sample, generator=generator).prev_sample

        if self.vae is not None:
            sample = decode_latents(self.vae, sample)
        images = (sample.float() / 2 + 0.5).clamp(0, 1).cpu()
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

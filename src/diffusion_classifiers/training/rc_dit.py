"""Train a representation-conditioned DiT: a ViT encoder and a `RepresentationConditionedDiTModel` together.

`RCDiTJointModel` holds both as one module (one optimizer, DDP, EMA and checkpoints for both); `RCDiTLoss` is the
epsilon loss with the clean image's representation as the condition; `train_rc_dit` builds the DiT and runs them
under `training.train`, in pixel space or in the latent space of a frozen `AutoencoderKL`.
"""

from typing import Optional

import torch
from diffusers import DDPMScheduler
from torch import nn

from ..models.encoders import freeze_unused_pooler, representation_size
from ..models.rc_dit import RepresentationConditionedDiTModel, check_encoder_matches, rc_dit_config, representation_of
from ..models.vae_latents import encode_latents, vae_scale_factor
from ..pipelines.pipeline_rc_dit_image_variation import RepresentationConditionedDiTImageVariationPipeline
from .arguments import TrainingArguments
from .denoising import DenoisingLoss
from .loop import TrainingSummary, train
from .monitoring import SampleGridFunction, global_random_states_kept, image_grid
from .patch_masks import MASKED_TARGETS, hide_patches, random_patch_mask, standardize_patches
from .rc_dit_diagnostics import rc_dit_monitor, recompute_representation_statistics
from .unet import TrainingImages, first_image, images_at, training_dataset

__all__ = [
    "DEFAULT_DENOISER_MASK_RATIO",
    "DEFAULT_MASKED_TARGET",
    "RCDiTJointModel",
    "RCDiTLoss",
    "rc_dit_objective",
    "rc_dit_sample_grid",
    "redraw_hidden_patches",
    "to_display_range",
    "train_rc_dit",
]

# `train_rc_dit`'s recipe (why: its docstring)
DEFAULT_DENOISER_MASK_RATIO = 0.9
DEFAULT_MASKED_TARGET = "normalized_patches"


class RCDiTJointModel(nn.Module):
    """Encoder + transformer as one module, so one optimizer (and DDP, EMA, checkpoints) trains both.

    `forward(noisy, timesteps, clean)` encodes the clean images to r and predicts the noise of `noisy` given r.
    `freeze_encoder=True` keeps the encoder fixed (no gradients, eval mode): only the DiT learns. With a `vae`
    (latent space; only checked here, `RCDiTLoss(vae=...)` makes the latents) `noisy` are noised latents.
    When the transformer reads r out of the tokens (`representation_readout` "cls" or "mean_patch"), a ViT's
    unused pooler is frozen (`models.encoders.freeze_unused_pooler`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        transformer: RepresentationConditionedDiTModel,
        freeze_encoder: bool = False,
        vae=None,
        encoder_learning_rate_scale: float = 1.0,
    ):
        super().__init__()
        if encoder_learning_rate_scale <= 0:
            raise ValueError(f"expected a positive encoder_learning_rate_scale, got {encoder_learning_rate_scale}")
        self.encoder_learning_rate_scale = encoder_learning_rate_scale
        check_encoder_matches(encoder, transformer, vae)  # the vae is not a submodule: frozen, kept by the loss
        freeze_unused_pooler(encoder, transformer.config.representation_readout)
        self.encoder = encoder
        self.transformer = transformer
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def parameter_groups(self, learning_rate: float) -> list:
        """The optimizer's groups (`training.build_optimizer`): the encoder at `encoder_learning_rate_scale` times
        the learning rate, the transformer at the learning rate; one group of every parameter when the scale is 1
        (as before the scale existed, so older checkpoints resume)."""
        if self.encoder_learning_rate_scale == 1.0:
            return [{"params": list(self.parameters()), "lr": learning_rate}]
        encoder_lr = learning_rate * self.encoder_learning_rate_scale
        return [
            {"params": list(self.transformer.parameters()), "lr": learning_rate},
            {"params": list(self.encoder.parameters()), "lr": encoder_lr},
        ]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            representation = representation_of(self.encoder, self.transformer, clean)  # (N, D), normalised
        return self.transformer(noisy, timesteps, representation).sample


class RCDiTLoss(DenoisingLoss):
    """Epsilon-prediction loss of an `RCDiTJointModel` for `training.train`: batches are `(images,)` or
    `(images, labels)` (labels ignored); images in [-1, 1]. The transformer's `rep_dropout` applies in train mode.
    With a frozen `vae` the noise is added to the images' latents; the encoder still reads the clean images.
    With an `encoder_view` (an augmentation such as `build_augmentation(...)`) the encoder reads another view of
    each image than the one the denoiser reconstructs, as SODA does: r must carry what survives the view change.
    With `denoiser_mask_ratio > 0` that fraction of the `mask_patch_size` patches (the DiT's tokens) of each image
    (rounded to whole patches: 14 of 16 for 0.9, QA), or of a `denoiser_mask_probability` share of the images, is
    zeroed in x_t and the model's output there is compared with the clean image instead of the noise, as an MAE
    decoder's is: the noise of a hidden patch cannot
    be predicted, its content only from r. The unmasked images keep the denoiser sampling-ready. With
    `masked_target="normalized_patches"` a hidden patch's target is its clean content standardised per patch (MAE's
    normalised-pixel loss), so r is asked for each patch's pattern, not its brightness and contrast."""

    def __init__(
        self,
        scheduler: DDPMScheduler,
        vae=None,
        encoder_view: Optional[nn.Module] = None,
        loss_weighting: str = "epsilon",
        denoiser_mask_ratio: float = 0.0,
        mask_patch_size: int = 1,
        denoiser_mask_probability: float = 1.0,
        masked_target: str = "pixels",
    ):
        super().__init__(scheduler, loss_weighting=loss_weighting)
        if masked_target not in MASKED_TARGETS:
            raise ValueError(f"expected masked_target in {MASKED_TARGETS}, got {masked_target!r}")
        if not 0.0 <= denoiser_mask_ratio < 1.0:
            raise ValueError(f"expected denoiser_mask_ratio in [0, 1), got {denoiser_mask_ratio}")
        if not 0.0 < denoiser_mask_probability <= 1.0:
            raise ValueError(f"expected denoiser_mask_probability in (0, 1], got {denoiser_mask_probability}")
        self.vae = vae
        self.encoder_view = encoder_view
        self.denoiser_mask_ratio = denoiser_mask_ratio
        self.mask_patch_size = mask_patch_size
        self.denoiser_mask_probability = denoiser_mask_probability
        self.masked_target = masked_target

    def clean_sample(self, batch: tuple) -> torch.Tensor:
        if self.vae is None:
            return batch[0]
        return encode_latents(self.vae.to(batch[0].device), batch[0])

    def denoiser_input_and_target(self, noisy: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor) -> tuple:
        if self.denoiser_mask_ratio == 0:
            return super().denoiser_input_and_target(noisy, noise, clean)
        hidden = random_patch_mask(noisy.shape, self.mask_patch_size, self.denoiser_mask_ratio, noisy.device)
        masked_images = torch.rand(noisy.shape[0], 1, 1, 1, device=noisy.device) < self.denoiser_mask_probability
        hidden &= masked_images
        return (*hide_patches(noisy, noise, clean, hidden, self.masked_target, self.mask_patch_size), ~hidden)

    def predict_noise(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, batch: tuple) -> torch.Tensor:
        images = batch[0] if self.encoder_view is None else self.encoder_view(batch[0])
        return model(noisy, timesteps, images)  # conditioned on the clean image's representation


@torch.no_grad()
def redraw_hidden_patches(
    model: RCDiTJointModel,
    images: torch.Tensor,
    scheduler: DDPMScheduler,
    mask_ratio: float = DEFAULT_DENOISER_MASK_RATIO,
    masked_target: str = DEFAULT_MASKED_TARGET,
    timestep: int = 0,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a pixel-space DiT trained to redraw hidden patches from r (`RCDiTLoss` with `denoiser_mask_ratio > 0`,
    `train_rc_dit`'s default) draws for `images` ([-1, 1], `[N, C, H, W]`): `mask_ratio` of each image's patches (the
    DiT's tokens) hidden in x_t at `timestep`, as in training, the encoder reading the whole image. Returns
    `(target, redrawn, hidden)`: the images as the loss scores them (standardised per patch for
    `"normalized_patches"`), the same with every hidden patch replaced by the DiT's prediction, and the boolean mask
    `[N, 1, H, W]` of the hidden pixels. Call it on the model in eval mode (no null r, running statistics)."""
    if masked_target not in MASKED_TARGETS:
        raise ValueError(f"expected masked_target in {MASKED_TARGETS}, got {masked_target!r}")
    if not 0 < mask_ratio <= 1:
        raise ValueError(f"expected mask_ratio in (0, 1], got {mask_ratio}")
    config = model.transformer.config
    if images.ndim != 4 or images.shape[1] != config.in_channels:
        raise ValueError(f"expected images [N, {config.in_channels}, H, W] (a pixel-space DiT), got {tuple(images.shape)}")
    hidden = random_patch_mask(images.shape, config.patch_size, mask_ratio, images.device, generator)
    noise = torch.randn(images.shape, generator=generator).to(images)
    timesteps = torch.full((len(images),), timestep, dtype=torch.long, device=images.device)
    noisy = scheduler.add_noise(images, noise, timesteps).masked_fill(hidden, 0.0)
    prediction = model(noisy, timesteps, images)
    target = standardize_patches(images, config.patch_size) if masked_target == "normalized_patches" else images
    return target, torch.where(hidden, prediction, target), hidden


def to_display_range(images: torch.Tensor, masked_target: str) -> torch.Tensor:
    """`redraw_hidden_patches` outputs in [0, 1] for a grid: pixels from [-1, 1]; standardised patches from +-2.5
    standard deviations."""
    scale = 5.0 if masked_target == "normalized_patches" else 2.0
    return (images / scale + 0.5).clamp(0, 1)


def rc_dit_sample_grid(
    images: TrainingImages,
    scheduler: DDPMScheduler,
    vae=None,
    num_images: int = 8,
    num_inference_steps: int = 25,
    seed: int = 0,
    mask_ratio: float = 0.0,
    masked_target: str = "pixels",
) -> SampleGridFunction:
    """`joint model -> grid`: `num_images` of `images` ([-1, 1], a tensor or a training dataset; drawn with `seed`)
    in the top row, the variation of each below it, sampled by `RepresentationConditionedDiTImageVariationPipeline`
    with `num_inference_steps` strided ancestral steps of a copy of `scheduler`; the same references and noise at
    every call. For a DiT trained with hidden patches (`mask_ratio > 0`, pixel space) two more rows: the target the
    hidden patches are scored against (standardised per patch for `"normalized_patches"`) and the patches redrawn
    from r (`redraw_hidden_patches`), what such a DiT learns when its samples are noise."""
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_images]
    references = images_at(images, index).float().cpu()  # [-1, 1], the input range the pipeline's default contract states
    sampling_scheduler = DDPMScheduler.from_config(scheduler.config)
    redraw = mask_ratio > 0 and vae is None

    def sample_grid(model: RCDiTJointModel):
        pipe = RepresentationConditionedDiTImageVariationPipeline(model.encoder, model.transformer, sampling_scheduler, vae)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(seed)
        variations = pipe(references, num_inference_steps=num_inference_steps, generator=generator).images  # (N, C, H, W)
        rows = [(references + 1) / 2, variations.cpu()]  # both in [0, 1]
        if redraw:
            device = next(model.parameters()).device
            target, redrawn, _ = redraw_hidden_patches(
                model, references.to(device), scheduler, mask_ratio, masked_target, generator=generator
            )  # fmt: skip
            rows += [to_display_range(target, masked_target).cpu(), to_display_range(redrawn, masked_target).cpu()]
        return image_grid(torch.cat(rows), rows=len(rows))

    return sample_grid


def rc_dit_objective(
    num_train_timesteps: int = 1000,
    freeze_encoder: bool = False,
    loss_weighting: str = "epsilon",
    denoiser_mask_ratio: float = DEFAULT_DENOISER_MASK_RATIO,
    denoiser_mask_probability: float = 1.0,
    masked_target: str = DEFAULT_MASKED_TARGET,
    reading: Optional[dict] = None,
) -> dict:
    """What `train_rc_dit`'s own flags make of the loss, for the run record (`training.train`'s `objective`; the DiT's
    sizes and conditioning are in its config, the encoder's learning rate scale in the record already): a resume with
    another value is refused naming the flag, before the data is read when a script passes it to
    `check_run_can_start`; `reading` (`data.reading_from_args`: how the images were read) joins them."""
    return {
        "num_train_timesteps": int(num_train_timesteps),
        "freeze_encoder": bool(freeze_encoder),
        "loss_weighting": str(loss_weighting),
        "denoiser_mask_ratio": float(denoiser_mask_ratio),
        "denoiser_mask_probability": float(denoiser_mask_probability),
        "masked_target": str(masked_target),
        **(reading or {}),
    }


def _check_patch_size(patch_size: int, sample_size: int, where: str, default_of: Optional[str]) -> None:
    """The DiT's patches must tile its input (`sample_size` px: `where` says how it follows from the images)."""
    if patch_size >= 1 and sample_size % patch_size == 0:
        return
    divisors = [str(d) for d in range(1, sample_size + 1) if sample_size % d == 0]
    choices = divisors[0] if len(divisors) == 1 else f"{', '.join(divisors[:-1])} or {divisors[-1]}"
    flag = f"--patch_size {patch_size}" + ("" if default_of is None else f" (the default of --dit_size {default_of})")
    raise ValueError(
        f"{flag} does not divide the DiT's input of {sample_size} px ({where}); use --patch_size {choices}"
    )


@global_random_states_kept()
def train_rc_dit(
    args: TrainingArguments,
    images: TrainingImages,
    encoder: nn.Module,
    dit_size: str = "S",
    patch_size: Optional[int] = None,
    rep_dropout: float = 0.1,
    num_train_timesteps: int = 1000,
    freeze_encoder: bool = False,
    vae=None,
    representation_readout: str = "mean_patch",
    representation_norm: str = "batch",
    encoder_view: Optional[nn.Module] = None,
    encoder_learning_rate_scale: float = 1.0,
    loss_weighting: str = "epsilon",
    encoder_preprocessing: Optional[dict] = None,
    representation_injection: str = "adaln",
    denoiser_mask_ratio: float = DEFAULT_DENOISER_MASK_RATIO,
    denoiser_mask_probability: float = 1.0,
    masked_target: str = DEFAULT_MASKED_TARGET,
    reading: Optional[dict] = None,
) -> tuple[nn.Module, RepresentationConditionedDiTModel, DDPMScheduler, TrainingSummary]:
    r"""
    Train `encoder` and a new `RepresentationConditionedDiTModel` of `dit_size` together on unlabeled images
    (epsilon loss, `training.train`: accelerate, EMA, checkpoints, resume).

    Pixel space by default; with a `vae` the DiT denoises its latents, `H / vae_scale_factor(vae)` on a side, while
    the encoder reads the images. At every checkpoint and at the end, `args.num_sample_images` training images,
    their variations and (pixel space, hidden patches) the hidden patches redrawn from r go to `samples/step_N.png`
    in `args.output_dir` (`rc_dit_sample_grid`), beside `loss_curve.png`.

    Args:
        args (`TrainingArguments`): the loop's flags; `args.seed` also seeds the transformer's initial weights.
        images (`torch.Tensor` or `torch.utils.data.Dataset`): square training images `[N, C, H, H]` in [-1, 1], or
            a dataset of `(image [C, H, H], ...)` items such as `data.StreamingImages` (data larger than memory,
            decoded by `args.dataloader_num_workers` worker processes).
        encoder (`nn.Module`): a transformers vision encoder (e.g. `models.build_vit_encoder`) reading C channels.
        dit_size (`str`, *optional*, defaults to `"S"`): a `models.RC_DIT_SIZES` size.
        patch_size (`int`, *optional*): the DiT's patch size; defaults to the size's.
        rep_dropout (`float`, *optional*, defaults to 0.1): probability of the null representation in training.
        num_train_timesteps (`int`, *optional*, defaults to 1000): diffusion steps of the scheduler.
        freeze_encoder (`bool`, *optional*, defaults to `False`): keep the encoder fixed, train only the DiT.
        vae (`AutoencoderKL`, *optional*): a diffusers VAE, kept frozen, whose latent space the DiT works in.
        representation_readout (`str`, *optional*, defaults to `"mean_patch"`): how r is read out of the encoder
            (`models.encode_representation`): the mean of its final-layernormed patch tokens by default.
        representation_norm (`str`, *optional*, defaults to `"batch"`): `"batch"` standardises r per dimension
            across the batch before it conditions the DiT; its running statistics are recomputed at the end over
            the training images with the returned (EMA) weights (`recompute_representation_statistics`).
        encoder_view (`nn.Module`, *optional*): an augmentation the encoder's images go through in training
            (`RCDiTLoss`), e.g. `build_augmentation(size, channels, strength=0)`: random crop and flip.
        encoder_learning_rate_scale (`float`, *optional*, defaults to 1.0): the encoder's learning rate over the
            DiT's (`args.learning_rate`).
        loss_weighting (`str`, *optional*, defaults to `"epsilon"`): the weighting of the loss over timesteps
            (`DenoisingLoss`): `"epsilon"`, `"min_snr"` (gamma 5) or `"truncated_snr"`; with masking they weight the
            visible patches' noise errors, a hidden patch's error against the clean image weighs 1.
        encoder_preprocessing (`dict`, *optional*): for a pretrained encoder, `models.pretrained_preprocessing` of
            it: its inputs made RGB, resized whole to the processor's crop size (no centre crop) and normalised by
            its mean and std (ImageNet's for DINOv2; `models.pretrained_pixel_values`).
        representation_injection (`str`, *optional*, defaults to `"adaln"`): where r enters the DiT
            (`RepresentationConditionedDiTModel`): one projection into every block's adaLN, one per block, or a token.
        denoiser_mask_ratio (`float`, *optional*, defaults to 0.9): the fraction of the DiT's patches hidden from it
            in x_t and reconstructed from r (`RCDiTLoss`), an information asymmetry that makes the denoiser rely on r;
            0 trains a plain conditional denoiser.
        denoiser_mask_probability (`float`, *optional*, defaults to 1.0): the share of the images that are masked;
            the others train the DiT as the whole-image denoiser that sampling needs (0.5 for a DiT that generates).
        masked_target (`str`, *optional*, defaults to `"normalized_patches"`): what a hidden patch is
            reconstructed as (`RCDiTLoss`): its clean content standardised per patch, or its `"pixels"`.
        reading (`dict`, *optional*): how the images were read, `{flag name: value}` (`data.reading_from_args`),
            recorded with every checkpoint: a resume reading them otherwise is refused naming the flag.

    Why these defaults (`benchmarks/rc_dit_bench_recipe.py`: Fashion-MNIST at 16 px, 400 steps, val, 3 seeds): with
    the tanh pooler and no normalisation r collapses (relative spread 0.015) and the denoiser's error is the same
    with the image's own r, another image's or none; standardised per dimension, r keeps its spread and the error
    is lower with the own r (0.237 vs 0.286 shuffled at t = 100). At 400 steps the mean of the patch tokens and the
    CLS token, both standardised, are within the spread over seeds (k-means / 10-shot 38.0% / 41.1% and 40.5% /
    40.2%); at 1,500 steps (one seed) the mean of the patch tokens is clearly ahead (50.6% / 53.1% vs 39.3% / 50.5%).
    An augmented view for the encoder, a 3x encoder learning rate and the truncated SNR weighting were worse.
    Hiding 90% of the DiT's patches of x_t in every image, to be reconstructed from r, gives the best r (k-means /
    10-shot 53.9% / 59.3% vs 38.0% / 41.1% unmasked; ratio 0.5: 50.9% / 55.9%, 0.75: 52.2% / 58.2%), also on
    PneumoniaMNIST (16 px, 400 steps, val, 3 seeds: k-means balanced accuracy / macro-F1 66.2% / 61.9% vs 57.6% /
    53.7% masking half of the images and 57.5% / 54.1% unmasked; 10-shot balanced accuracy 80.5% vs 66.6% and
    60.2%). The price is the DiT as a generator: its error at t = 100 rises from 0.24 to 0.56 and its samples turn
    to patchy noise; hiding every patch does about as well for r (53.7% / 59.3%), so what r gains is what a decoder
    needs to redraw the image from r alone. `denoiser_mask_probability=0.5` keeps the other half of the images
    whole: the DiT stays a denoiser (error 0.27) and samples, and r is worse (50.4% / 52.4%). An encoder reading a
    SimCLR view (crop, flip, brightness and contrast jitter, blur) was worse with either probability.
    Reconstructing each hidden patch standardised per patch (MAE's normalised-pixel target) rather than as pixels
    asks r for the patches' patterns, not their brightness and contrast, the nuisance SimCLR's jitter removes: on
    PneumoniaMNIST k-means balanced accuracy / macro-F1 82.0% / 77.7% vs 66.2% / 61.9% (SimCLR 71.5% / 59.9%),
    10-shot balanced accuracy 84.7% vs 80.5%; on Fashion-MNIST k-means 53.1% vs 53.9% (within the seeds' spread),
    10-shot 63.9% vs 59.3% (SimCLR 62.2%). With these targets (1,500 steps, 3 seeds) an `encoder_view` of
    brightness, contrast and blur, of crop and flip, or of both lowers 10-shot accuracy on both sets and moves label-free
    grouping up or down with the seed, so the encoder reads the image itself.

    Returns:
        The trained encoder and transformer (EMA weights when `args.use_ema`, eval mode), the scheduler and the
        `TrainingSummary`.
    """
    dataset = training_dataset(images)
    in_channels, _, image_size = first_image(dataset).shape
    sample_size, where = image_size, f"{image_size} px images"
    if vae is not None:
        factor = vae_scale_factor(vae)
        if vae.config.in_channels != in_channels:
            raise ValueError(
                f"the vae (--vae) reads {vae.config.in_channels}-channel images (its in_channels), the training images "
                f"are {in_channels}-channel: pass --num_channels {vae.config.in_channels}, or a VAE of "
                f"{in_channels} input channels"
            )
        if sample_size % factor:
            raise ValueError(f"expected an image size divisible by the vae's scale factor {factor}, got {sample_size}")
        sample_size, in_channels = sample_size // factor, vae.config.latent_channels
        where = f"{image_size} px images / the VAE's factor {factor}"
        vae.requires_grad_(False).eval()
    torch.manual_seed(args.seed)
    config = rc_dit_config(dit_size, sample_size, in_channels, representation_size(encoder), patch_size=patch_size)
    _check_patch_size(config["patch_size"], sample_size, where, dit_size if patch_size is None else None)
    transformer = RepresentationConditionedDiTModel(
        **config, rep_dropout=rep_dropout, representation_readout=representation_readout,
        representation_norm=representation_norm, encoder_preprocessing=encoder_preprocessing,
        representation_injection=representation_injection,
    )  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    model = RCDiTJointModel(
        encoder, transformer, freeze_encoder=freeze_encoder, vae=vae, encoder_learning_rate_scale=encoder_learning_rate_scale
    )
    grid = None
    if args.num_sample_images:
        grid = rc_dit_sample_grid(
            dataset, scheduler, vae, args.num_sample_images, args.sample_inference_steps, args.seed,
            mask_ratio=denoiser_mask_ratio, masked_target=masked_target,
        )  # fmt: skip
    loss = RCDiTLoss(
        scheduler, vae=vae, encoder_view=encoder_view, loss_weighting=loss_weighting,
        denoiser_mask_ratio=denoiser_mask_ratio, mask_patch_size=config["patch_size"],
        denoiser_mask_probability=denoiser_mask_probability, masked_target=masked_target,
    )  # fmt: skip
    monitor = rc_dit_monitor(
        dataset, scheduler, vae, seed=args.seed, mask_ratio=denoiser_mask_ratio, masked_target=masked_target
    )
    objective = rc_dit_objective(
        num_train_timesteps, freeze_encoder, loss_weighting, denoiser_mask_ratio, denoiser_mask_probability,
        masked_target, reading,
    )  # fmt: skip
    model, accelerator, summary = train(
        args, model, dataset, loss, sample_grid=grid, monitor=monitor, objective=objective
    )
    recompute_representation_statistics(model.encoder, model.transformer, dataset, device=accelerator.device)
    return model.encoder, model.transformer, scheduler, summary

"""Representation-conditioned DiT: a DiT denoiser conditioned (adaLN-Zero) on an image encoder's representation.

A ViT encodes the clean image x0 to a vector r; the DiT denoises x_t given t and r with c = t_emb + proj(r), the
way DiT takes a class label, but continuous. Encoder and denoiser are trained together with the epsilon loss on
unlabeled images (`RCDiTJointModel` + `RCDiTLoss` under `diffusion_classifiers.training.train`), so the encoder
learns what the denoiser needs. After training, r is the image representation used for classification.
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn
from torch.utils.data import TensorDataset

from ..training import DenoisingLoss, TrainingArguments, TrainingSummary, train

RC_DIT_SIZES = {
    # name: hidden_size, num_layers, num_heads, default patch_size (DiT-S and DiT-B widths and depths)
    "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "patch_size": 4},
    "XS": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "patch_size": 4},  # for CPU-sized runs
    "S": {"hidden_size": 384, "num_layers": 12, "num_heads": 6, "patch_size": 2},
    "B": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "patch_size": 2},
}


def rc_dit_config(
    size: str = "S",
    sample_size: int = 32,
    in_channels: int = 1,
    representation_dim: int = 384,
    patch_size: Optional[int] = None,
    **overrides,
) -> dict:
    """`RepresentationConditionedDiTModel` kwargs for a named size ("tiny" for tests, "S", "B")."""
    if size not in RC_DIT_SIZES:
        raise ValueError(f"expected an RC-DiT size in {sorted(RC_DIT_SIZES)}, got {size!r}")
    config = dict(RC_DIT_SIZES[size], sample_size=sample_size, in_channels=in_channels, representation_dim=representation_dim)
    if patch_size is not None:
        config["patch_size"] = patch_size
    config.update(overrides)
    return config


class DiTBlock(nn.Module):
    """One DiT block with adaLN-Zero conditioning on a continuous embedding `emb` [N, hidden_size].

    diffusers' `BasicTransformerBlock(norm_type="ada_norm_zero")` builds its own timestep + class-label embedding
    and cannot take a precomputed continuous one, so the block is assembled from diffusers' `AdaLayerNormZero`
    (called with `emb=`), `Attention` and `FeedForward`.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = AdaLayerNormZero(hidden_size)  # shift/scale/gate for attention and MLP, from emb
        self.attn = Attention(
            query_dim=hidden_size, heads=num_heads, dim_head=hidden_size // num_heads, bias=True, out_bias=True
        )
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(hidden_size, inner_dim=int(hidden_size * mlp_ratio), activation_fn="gelu-approximate")

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=emb)
        hidden_states = hidden_states + gate_msa[:, None] * self.attn(normed)
        normed = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return hidden_states + gate_mlp[:, None] * self.ff(normed)


@dataclass
class RCDiTModelOutput(Transformer2DModelOutput):
    """`sample`: the predicted noise `[N, C, H, W]`; `hidden_states`: with `output_hidden_states=True`, the output
    tokens `[N, num_patches, hidden_size]` of each transformer block, `hidden_states[i]` that of `blocks[i]`."""

    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None


class RepresentationConditionedDiTModel(ModelMixin, ConfigMixin):
    r"""
    A DiT that predicts the noise epsilon of `sample` at `timestep`, conditioned on a representation. `sample` is an
    image (pixel space, the default for small images) or a VAE latent (see `train_rc_dit(vae=...)`).

    The conditioning is `c = TimestepEmbedding(Timesteps(t)) + Linear(r)`, fed to every block through adaLN-Zero
    and to the final layer through `AdaLayerNormContinuous`. All modulation layers and the output projection start
    at zero, so the initial model predicts 0 everywhere. A learned `null_representation` stands in for r when
    `representation=None`, and replaces each sample's r with probability `rep_dropout` in training mode (drawn from
    the global torch RNG), so the same model also learns the unconditional prediction: classifier-free guidance and
    unconditional sampling work.

    Args:
        sample_size: image height and width (square images).
        in_channels: image channels (the output has the same).
        patch_size: side of the square patches; must divide `sample_size`.
        hidden_size, num_layers, num_heads, mlp_ratio: transformer width, depth, heads and MLP expansion.
        representation_dim: the size D of the representation r (the encoder's hidden size).
        rep_dropout: probability of replacing r with the null representation in training mode.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 1,
        patch_size: int = 2,
        hidden_size: int = 384,
        num_layers: int = 12,
        num_heads: int = 6,
        representation_dim: int = 384,
        rep_dropout: float = 0.1,
        mlp_ratio: float = 4.0,
        timestep_channels: int = 256,
    ):
        super().__init__()
        if patch_size < 1 or sample_size % patch_size:
            raise ValueError(f"expected a patch_size that divides sample_size={sample_size}, got patch_size={patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"expected hidden_size divisible by num_heads, got {hidden_size} and {num_heads}")
        if representation_dim < 1:
            raise ValueError(f"expected representation_dim >= 1, got {representation_dim}")
        if not 0.0 <= rep_dropout <= 1.0:
            raise ValueError(f"expected rep_dropout in [0, 1], got {rep_dropout}")

        self.patch_embed = PatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size, in_channels=in_channels, embed_dim=hidden_size
        )
        self.time_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(timestep_channels, hidden_size)
        self.representation_proj = nn.Linear(representation_dim, hidden_size)
        self.null_representation = nn.Parameter(torch.zeros(representation_dim))
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        # DiT's init: xavier linears, normal(0.02) embedding MLP, and adaLN-Zero (modulations and output at zero).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        for linear in (self.time_embedding.linear_1, self.time_embedding.linear_2):
            nn.init.normal_(linear.weight, std=0.02)
        for layer in [block.norm1.linear for block in self.blocks] + [self.norm_out.linear, self.proj_out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def check_representation(self, representation: torch.Tensor, batch_size: int) -> None:
        dim = self.config.representation_dim
        if representation.ndim != 2 or representation.shape[1] != dim or representation.shape[0] not in (1, batch_size):
            raise ValueError(
                f"expected a representation of shape [{batch_size}, {dim}] (representation_dim={dim}), "
                f"got {tuple(representation.shape)}"
            )

    def condition(self, timestep: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
        """The conditioning c = t_emb + proj(r), [N, hidden_size]."""
        t_emb = self.time_embedding(self.time_proj(timestep).to(self.dtype))
        return t_emb + self.representation_proj(representation.to(self.dtype))

    def _embed(self, sample, timestep, representation) -> Tuple[torch.Tensor, torch.Tensor]:
        """Check the inputs; return the patch tokens `[N, num_patches, hidden_size]` and the conditioning c."""
        config = self.config
        expected = (config.in_channels, config.sample_size, config.sample_size)
        if sample.ndim != 4 or tuple(sample.shape[1:]) != expected:
            raise ValueError(f"expected a sample of shape [N, {', '.join(map(str, expected))}], got {tuple(sample.shape)}")
        batch_size = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        elif timestep.shape != (batch_size,):
            raise ValueError(f"expected one timestep or {batch_size}, got shape {tuple(timestep.shape)}")

        null = self.null_representation[None].expand(batch_size, -1)
        if representation is None:
            representation = null
        else:
            self.check_representation(representation, batch_size)
            representation = representation.to(null.dtype).expand(batch_size, -1)
            if self.training and config.rep_dropout > 0:
                drop = torch.rand(batch_size, device=sample.device) < config.rep_dropout
                representation = torch.where(drop[:, None], null, representation)
        return self.patch_embed(sample.to(self.dtype)), self.condition(timestep, representation)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        representation: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
    ):
        r"""
        Args:
            sample: noisy images `[N, in_channels, sample_size, sample_size]`.
            timestep: one timestep for the batch, or one per sample `[N]`.
            representation: `[N, representation_dim]` (or `[1, D]`, broadcast); `None` uses the null representation.
            output_hidden_states: also return the output tokens of every transformer block.

        Returns:
            `RCDiTModelOutput` (a `Transformer2DModelOutput`) whose `.sample` is the predicted noise, shaped like
            `sample`, and `.hidden_states` the blocks' outputs if asked; a tuple `(sample,)` or
            `(sample, hidden_states)` when `return_dict=False`.
        """
        hidden_states, emb = self._embed(sample, timestep, representation)
        all_hidden_states = []
        for block in self.blocks:
            hidden_states = block(hidden_states, emb)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        hidden_states = self.proj_out(self.norm_out(hidden_states, emb))
        output = self.unpatchify(hidden_states)
        all_hidden_states = tuple(all_hidden_states) if output_hidden_states else None
        if not return_dict:
            return (output,) if all_hidden_states is None else (output, all_hidden_states)
        return RCDiTModelOutput(sample=output, hidden_states=all_hidden_states)

    def block_hidden_states(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        representation: Optional[torch.Tensor] = None,
        num_blocks: Optional[int] = None,
    ) -> Tuple[torch.Tensor, ...]:
        """The output tokens `[N, num_patches, hidden_size]` of the first `num_blocks` blocks (default all), as in
        `forward(..., output_hidden_states=True).hidden_states`, without running the later blocks or the output layer."""
        num_layers = self.config.num_layers
        num_blocks = num_layers if num_blocks is None else num_blocks
        if not 1 <= num_blocks <= num_layers:
            raise ValueError(f"expected num_blocks in [1, {num_layers}] (num_layers), got {num_blocks}")
        hidden_states, emb = self._embed(sample, timestep, representation)
        outputs = []
        for block in self.blocks[:num_blocks]:
            hidden_states = block(hidden_states, emb)
            outputs.append(hidden_states)
        return tuple(outputs)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, (H/p)(W/p), p*p*C] -> [N, C, H, W]."""
        p, c, grid = self.config.patch_size, self.config.in_channels, self.config.sample_size // self.config.patch_size
        tokens = tokens.reshape(tokens.shape[0], grid, grid, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", tokens).reshape(tokens.shape[0], c, grid * p, grid * p)


# ------------------------------------------------------------------------------------------------------------------
# The encoder (a transformers vision model) and joint training
# ------------------------------------------------------------------------------------------------------------------


def build_vit_encoder(
    image_size: int = 32,
    num_channels: int = 1,
    hidden_size: int = 192,
    num_layers: int = 6,
    num_heads: int = 3,
    patch_size: int = 4,
    mlp_ratio: float = 4.0,
):
    """A randomly initialised transformers `ViTModel`; its `pooler_output` (tanh(Linear(CLS token))) is r."""
    from transformers import ViTConfig, ViTModel

    if image_size % patch_size:
        raise ValueError(f"expected an encoder patch_size that divides image_size={image_size}, got {patch_size}")
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=int(hidden_size * mlp_ratio),
    )
    return ViTModel(config)


def add_encoder_args(parser):
    """The encoder flags shared by the RC-DiT and contrastive trainers (same architecture, same budget)."""
    parser.add_argument(
        "--encoder_name_or_path",
        default=None,
        help="a pretrained transformers vision model (ViTModel, Dinov2Model) directory or Hub id; default: a new ViT",
    )
    parser.add_argument("--encoder_hidden_size", type=int, default=192)
    parser.add_argument("--encoder_num_layers", type=int, default=6)
    parser.add_argument("--encoder_num_heads", type=int, default=3)
    parser.add_argument("--encoder_patch_size", type=int, default=4)
    return parser


def build_vit_encoder_from_args(args, images: torch.Tensor):
    """The encoder the flags of `add_encoder_args` ask for, for training images `[N, C, H, H]`: loaded with
    `AutoModel` from `--encoder_name_or_path` (it must read C-channel images), else a new `build_vit_encoder` whose
    initial weights are seeded with `args.seed` (so the RC-DiT and contrastive trainers start from the same one)."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square training images, got shape {tuple(images.shape)}: pass --image_size")
    image_size, num_channels = images.shape[-1], images.shape[1]
    if getattr(args, "encoder_name_or_path", None):
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(args.encoder_name_or_path)
        if encoder.config.num_channels != num_channels:
            raise ValueError(
                f"encoder {args.encoder_name_or_path!r} reads {encoder.config.num_channels}-channel images, the data "
                f"has {num_channels}: pass --num_channels {encoder.config.num_channels}"
            )
        return encoder
    torch.manual_seed(args.seed)
    return build_vit_encoder(
        image_size,
        num_channels,
        hidden_size=args.encoder_hidden_size,
        num_layers=args.encoder_num_layers,
        num_heads=args.encoder_num_heads,
        patch_size=args.encoder_patch_size,
    )


def encode_representation(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """r = the encoder's `pooler_output` [N, D] for images [N, C, H, W] in [-1, 1]: for transformers' `ViTModel`
    tanh(Linear(CLS token)), for `Dinov2Model` the final-layernormed CLS token; for a model built without a pooler,
    the final-layernormed CLS token. Images of another size than the encoder's `image_size` are resized (bilinear,
    antialiased). Every encoder parameter takes part, so DDP needs no `find_unused_parameters`.
    """
    config = encoder.config
    if images.ndim != 4 or images.shape[1] != config.num_channels:
        raise ValueError(f"expected images [N, {config.num_channels}, H, W] for the encoder, got {tuple(images.shape)}")
    size = config.image_size
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pixel_values = images.to(device=encoder.device, dtype=encoder.dtype)
    outputs = encoder(pixel_values=pixel_values)
    pooled = getattr(outputs, "pooler_output", None)
    return outputs.last_hidden_state[:, 0] if pooled is None else pooled


def representation_size(encoder: nn.Module) -> int:
    """The size D of `encode_representation`'s output: the pooler's output size, else the hidden size."""
    return getattr(encoder.config, "pooler_output_size", None) or encoder.config.hidden_size


def check_encoder_matches(encoder: nn.Module, transformer: RepresentationConditionedDiTModel, vae=None) -> None:
    """The encoder must output r of the transformer's `representation_dim` and read its images' channels; with a
    `vae` (latent space) the transformer denoises the VAE's latents and the encoder reads the VAE's input images."""
    hidden, expected = representation_size(encoder), transformer.config.representation_dim
    if hidden != expected:
        raise ValueError(
            f"encoder hidden size {hidden} (the size of its representation) does not match the transformer's "
            f"representation_dim {expected}: build the transformer with representation_dim={hidden} or use an "
            f"encoder of hidden size {expected}"
        )
    channels, in_channels = encoder.config.num_channels, transformer.config.in_channels
    if vae is None and channels != in_channels:
        raise ValueError(f"encoder num_channels {channels} does not match the transformer's in_channels {in_channels}")
    if vae is not None:
        if vae.config.latent_channels != in_channels:
            raise ValueError(
                f"vae latent_channels {vae.config.latent_channels} does not match the transformer's in_channels "
                f"{in_channels}"
            )
        if vae.config.in_channels != channels:
            raise ValueError(f"encoder num_channels {channels} does not match the vae's in_channels {vae.config.in_channels}")


# ------------------------------------------------------------------------------------------------------------------
# Optional latent space: a frozen diffusers `AutoencoderKL`
# ------------------------------------------------------------------------------------------------------------------


def vae_scale_factor(vae) -> int:
    """How many times smaller than the image a latent is on each side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
    """Scaled latents of images `[N, C, H, W]` in [-1, 1]: a draw from the VAE's posterior (`sample=True`, training)
    or its mode (deterministic features), times `scaling_factor`."""
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.sample() if sample else posterior.mode()
    return latents * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents (the inverse of `encode_latents`)."""
    return vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor).sample


class RCDiTJointModel(nn.Module):
    """Encoder + transformer as one module, so one optimizer (and DDP, EMA, checkpoints) trains both.

    `forward(noisy, timesteps, clean)` encodes the clean images to r and predicts the noise of `noisy` given r.
    `freeze_encoder=True` keeps the encoder fixed (no gradients, eval mode): only the DiT learns. With a `vae`
    (latent space; only checked here, `RCDiTLoss(vae=...)` makes the latents) `noisy` are noised latents.
    """

    def __init__(
        self, encoder: nn.Module, transformer: RepresentationConditionedDiTModel, freeze_encoder: bool = False, vae=None
    ):
        super().__init__()
        check_encoder_matches(encoder, transformer, vae)  # the vae is not a submodule: frozen, kept by the loss
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

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            representation = encode_representation(self.encoder, clean)
        return self.transformer(noisy, timesteps, representation).sample


class RCDiTLoss(DenoisingLoss):
    """Epsilon-prediction loss of an `RCDiTJointModel` for `training.train`: batches are `(images,)` or
    `(images, labels)` (labels ignored); images in [-1, 1]. The transformer's `rep_dropout` applies in train mode.
    With a frozen `vae` the noise is added to the images' latents; the encoder still reads the clean images."""

    def __init__(self, scheduler: DDPMScheduler, vae=None):
        super().__init__(scheduler)
        self.vae = vae

    def clean_sample(self, batch: tuple) -> torch.Tensor:
        if self.vae is None:
            return batch[0]
        return encode_latents(self.vae.to(batch[0].device), batch[0])

    def predict_noise(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, batch: tuple) -> torch.Tensor:
        return model(noisy, timesteps, batch[0])  # conditioned on the clean image's representation


def train_rc_dit(
    args: TrainingArguments,
    images: torch.Tensor,
    encoder: nn.Module,
    dit_size: str = "S",
    patch_size: Optional[int] = None,
    rep_dropout: float = 0.1,
    num_train_timesteps: int = 1000,
    freeze_encoder: bool = False,
    vae=None,
) -> tuple[nn.Module, RepresentationConditionedDiTModel, DDPMScheduler, TrainingSummary]:
    """Train `encoder` and a new `RepresentationConditionedDiTModel` of `dit_size` together on unlabeled square
    images `[N, C, H, H]` in [-1, 1] (epsilon loss, `training.train`: accelerate, EMA, checkpoints, resume).

    Pixel space by default; with a `vae` (a diffusers `AutoencoderKL`, kept frozen) the DiT denoises its latents,
    `H / vae_scale_factor(vae)` on a side, while the encoder reads the images. The transformer's initial weights
    are seeded with `args.seed`. Returns the trained encoder and transformer (EMA weights when `use_ema`, eval
    mode), the scheduler and the training summary.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square training images [N, C, H, H], got shape {tuple(images.shape)}")
    sample_size, in_channels = images.shape[-1], images.shape[1]
    if vae is not None:
        factor = vae_scale_factor(vae)
        if sample_size % factor:
            raise ValueError(f"expected an image size divisible by the vae's scale factor {factor}, got {sample_size}")
        sample_size, in_channels = sample_size // factor, vae.config.latent_channels
        vae.requires_grad_(False).eval()
    torch.manual_seed(args.seed)
    config = rc_dit_config(dit_size, sample_size, in_channels, representation_size(encoder), patch_size=patch_size)
    transformer = RepresentationConditionedDiTModel(**config, rep_dropout=rep_dropout)
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    model = RCDiTJointModel(encoder, transformer, freeze_encoder=freeze_encoder, vae=vae)
    model, _, summary = train(args, model, TensorDataset(images), RCDiTLoss(scheduler, vae=vae))
    return model.encoder, model.transformer, scheduler, summary

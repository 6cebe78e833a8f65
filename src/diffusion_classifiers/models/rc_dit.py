"""Representation-conditioned DiT: a DiT denoiser conditioned (adaLN-Zero) on an image encoder's representation.

A ViT encodes the clean image x0 to a vector r (`models.encoders.encode_representation`); the DiT denoises x_t given
t and r with c = t_emb + proj(r), the way DiT takes a class label, but continuous. Encoder and denoiser are trained
together with the epsilon loss on unlabeled images (`training.train_rc_dit`), so the encoder learns what the
denoiser needs. After training, r is the image representation used for classification.

Saved pipelines record this module path (`diffusion_classifiers.models.rc_dit`) and the class name
`RepresentationConditionedDiTModel`: both stay importable.
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn

from .encoders import REPRESENTATION_READOUTS, encode_representation, representation_size
from .vae_latents import vae_scale_factor

__all__ = [
    "RC_DIT_SIZES",
    "REPRESENTATION_INJECTIONS",
    "REPRESENTATION_NORMS",
    "DiTBlock",
    "RCDiTModelOutput",
    "RepresentationConditionedDiTModel",
    "check_encoder_matches",
    "input_image_size_and_channels",
    "rc_dit_config",
    "representation_of",
]

REPRESENTATION_NORMS = ("none", "batch")
REPRESENTATION_INJECTIONS = ("adaln", "adaln_per_block", "token")

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
    image (pixel space, the default for small images) or a VAE latent (see `training.train_rc_dit(vae=...)`).

    The conditioning is `c = TimestepEmbedding(Timesteps(t)) + Linear(r)`, fed to every block through adaLN-Zero
    and to the final layer through `AdaLayerNormContinuous`. All modulation layers and the output projection start
    at zero, so the initial model predicts 0 everywhere. A learned `null_representation` stands in for r when
    `representation=None`, and replaces each sample's r with probability `rep_dropout` in training mode (drawn from
    the global torch RNG), so the same model also learns the unconditional prediction: classifier-free guidance and
    unconditional sampling work.

    Args:
        sample_size (`int`, *optional*, defaults to 32): image height and width (square images).
        in_channels (`int`, *optional*, defaults to 1): image channels (the output has the same).
        patch_size (`int`, *optional*, defaults to 2): side of the square patches; must divide `sample_size`.
        hidden_size (`int`, *optional*, defaults to 384): transformer width.
        num_layers (`int`, *optional*, defaults to 12): transformer blocks.
        num_heads (`int`, *optional*, defaults to 6): attention heads; must divide `hidden_size`.
        representation_dim (`int`, *optional*, defaults to 384): the size D of the representation r (the encoder's
            hidden size).
        rep_dropout (`float`, *optional*, defaults to 0.1): probability of replacing r with the null representation
            in training mode.
        mlp_ratio (`float`, *optional*, defaults to 4.0): MLP width over `hidden_size`.
        timestep_channels (`int`, *optional*, defaults to 256): size of the sinusoidal timestep features.
        representation_readout (`str`, *optional*, defaults to `"pooler"`): how r is read out of the encoder
            (`models.encoders.encode_representation`): `"pooler"`, `"cls"` or `"mean_patch"`.
        representation_norm (`str`, *optional*, defaults to `"none"`): `"batch"` standardises each dimension of r
            across the batch (`BatchNorm1d` without affine parameters; running statistics in eval mode) before the
            projection, which keeps r from collapsing to one constant vector in joint training; `"none"` leaves r
            as it is. Applied by `normalize_representation` (`representation_of`), not by `forward`: the
            representation `forward` takes is the normalised one.
        encoder_preprocessing (`dict`, *optional*): how the encoder's input is prepared, for an encoder started
            from a pretrained model (`models.pretrained_preprocessing`: its image processor's size, mean and std):
            grayscale made RGB, the whole image resized to that size (no centre crop) and normalised by that mean
            and std (`models.pretrained_pixel_values`), as the frozen baseline reads them; `None`: images as they
            are.
        representation_injection (`str`, *optional*, defaults to `"adaln"`): where r enters the denoiser.
            `"adaln"`: c = t_emb + proj(r) modulates every block and the output layer; `"adaln_per_block"`: each
            block and the output layer get their own projection, c_i = t_emb + proj_i(r); `"token"`: proj(r) is
            one more token the patch tokens attend to, and the modulation is t_emb alone.
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
        representation_readout: str = "pooler",
        representation_norm: str = "none",
        encoder_preprocessing: Optional[dict] = None,
        representation_injection: str = "adaln",
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
        if representation_readout not in REPRESENTATION_READOUTS:
            raise ValueError(f"expected representation_readout in {REPRESENTATION_READOUTS}, got {representation_readout!r}")
        if representation_norm not in REPRESENTATION_NORMS:
            raise ValueError(f"expected representation_norm in {REPRESENTATION_NORMS}, got {representation_norm!r}")
        if representation_injection not in REPRESENTATION_INJECTIONS:
            raise ValueError(
                f"expected representation_injection in {REPRESENTATION_INJECTIONS}, got {representation_injection!r}"
            )

        self.patch_embed = PatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size, in_channels=in_channels, embed_dim=hidden_size
        )
        self.time_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(timestep_channels, hidden_size)
        self.representation_normalizer = (
            nn.BatchNorm1d(representation_dim, affine=False) if representation_norm == "batch" else nn.Identity()
        )
        # "adaln": into every c; "adaln_per_block": into the output layer's c; "token": the representation token
        self.representation_proj = nn.Linear(representation_dim, hidden_size)
        if representation_injection == "adaln_per_block":
            self.block_representation_projs = nn.ModuleList(
                [nn.Linear(representation_dim, hidden_size) for _ in range(num_layers)]
            )
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
        dim, rows = self.config.representation_dim, representation.shape[0]
        # two comparisons, not `in (1, batch_size)`: torch.compile traces them with a symbolic batch size
        if representation.ndim != 2 or representation.shape[1] != dim or (rows != 1 and rows != batch_size):
            raise ValueError(
                f"expected a representation of shape [{batch_size}, {dim}] (representation_dim={dim}), "
                f"got {tuple(representation.shape)}"
            )

    def normalize_representation(self, representation: torch.Tensor) -> torch.Tensor:
        """The encoder's r `[N, D]` as the denoiser sees it (`representation_norm`): per-dimension standardised
        with the batch's statistics in train mode, with the running ones in eval mode; unchanged with `"none"`."""
        return self.representation_normalizer(representation.to(self.dtype))

    def condition(self, timestep: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
        """The output layer's conditioning `[N, hidden_size]`: t_emb + proj(r), or t_emb alone when r enters as a
        token. With `representation_injection="adaln"` every block's as well."""
        return self.block_conditions(timestep, representation)[-1]

    def block_conditions(self, timestep: torch.Tensor, representation: torch.Tensor) -> list:
        """The conditioning `[N, hidden_size]` of each block (`representation_injection`), then the output layer's."""
        t_emb = self.time_embedding(self.time_proj(timestep).to(self.dtype))
        r = representation.to(self.dtype)
        injection = self.config.representation_injection
        output_condition = t_emb if injection == "token" else t_emb + self.representation_proj(r)
        if injection != "adaln_per_block":
            return [output_condition] * (self.config.num_layers + 1)
        return [t_emb + projection(r) for projection in self.block_representation_projs] + [output_condition]

    def _embed(self, sample, timestep, representation) -> Tuple[torch.Tensor, list]:
        """Check the inputs; return the input tokens `[N, num_patches (+ 1 with the representation token),
        hidden_size]` and the `block_conditions`."""
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
        tokens = self.patch_embed(sample.to(self.dtype))
        if self.config.representation_injection == "token":
            token = self.representation_proj(representation.to(self.dtype))[:, None]
            tokens = torch.cat([tokens, token], dim=1)
        return tokens, self.block_conditions(timestep, representation)

    def _patch_tokens(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The patch tokens of a block's output, without the representation token."""
        if self.config.representation_injection == "token":
            return hidden_states[:, :-1]
        return hidden_states

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
            sample (`torch.Tensor`): noisy images `[N, in_channels, sample_size, sample_size]`.
            timestep (`torch.Tensor`, `float` or `int`): one timestep for the batch, or one per sample `[N]`.
            representation (`torch.Tensor`, *optional*): `[N, representation_dim]` (or `[1, D]`, broadcast); `None`
                uses the null representation.
            return_dict (`bool`, *optional*, defaults to `True`): return an `RCDiTModelOutput` instead of a tuple.
            output_hidden_states (`bool`, *optional*, defaults to `False`): also return the output tokens of every
                transformer block.

        Returns:
            `RCDiTModelOutput` (a `Transformer2DModelOutput`) whose `.sample` is the predicted noise, shaped like
            `sample`, and `.hidden_states` the blocks' outputs if asked; a tuple `(sample,)` or
            `(sample, hidden_states)` when `return_dict=False`.
        """
        hidden_states, conditions = self._embed(sample, timestep, representation)
        all_hidden_states = []
        for block, emb in zip(self.blocks, conditions):
            hidden_states = block(hidden_states, emb)
            if output_hidden_states:
                all_hidden_states.append(self._patch_tokens(hidden_states))
        hidden_states = self.proj_out(self.norm_out(self._patch_tokens(hidden_states), conditions[-1]))
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
        hidden_states, conditions = self._embed(sample, timestep, representation)
        outputs = []
        for block, emb in zip(self.blocks[:num_blocks], conditions):
            hidden_states = block(hidden_states, emb)
            outputs.append(self._patch_tokens(hidden_states))
        return tuple(outputs)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, (H/p)(W/p), p*p*C] -> [N, C, H, W]."""
        p, c, grid = self.config.patch_size, self.config.in_channels, self.config.sample_size // self.config.patch_size
        tokens = tokens.reshape(tokens.shape[0], grid, grid, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", tokens).reshape(tokens.shape[0], c, grid * p, grid * p)


# ------------------------------------------------------------------------------------------------------------------
# Checks across components
# ------------------------------------------------------------------------------------------------------------------


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
    # with encoder_preprocessing, images of 1 or 3 channels are made what the encoder reads
    reads_as_they_are = transformer.config.encoder_preprocessing is None
    if vae is None and reads_as_they_are and channels != in_channels:
        raise ValueError(f"encoder num_channels {channels} does not match the transformer's in_channels {in_channels}")
    if vae is not None:
        if vae.config.latent_channels != in_channels:
            raise ValueError(
                f"vae latent_channels {vae.config.latent_channels} does not match the transformer's in_channels "
                f"{in_channels}"
            )
        if reads_as_they_are and vae.config.in_channels != channels:
            raise ValueError(f"encoder num_channels {channels} does not match the vae's in_channels {vae.config.in_channels}")


def input_image_size_and_channels(encoder: nn.Module, transformer: RepresentationConditionedDiTModel, vae=None) -> tuple:
    """(image_size, num_channels) of the images an RC-DiT's pipelines read: the encoder's own; for an encoder with
    `encoder_preprocessing` (it resizes, converts and normalises what it is given, `models.pretrained_pixel_values`)
    those the DiT works on, `sample_size` x `in_channels`, or through the `vae` its input images."""
    if transformer.config.encoder_preprocessing is None:
        return encoder.config.image_size, encoder.config.num_channels
    if vae is None:
        return transformer.config.sample_size, transformer.config.in_channels
    return transformer.config.sample_size * vae_scale_factor(vae), vae.config.in_channels


def representation_of(
    encoder: nn.Module, transformer: RepresentationConditionedDiTModel, images: torch.Tensor
) -> torch.Tensor:
    """r `[N, D]` of images `[N, C, H, W]` in [-1, 1] exactly as the transformer is conditioned on it: read out of
    the encoder by its `representation_readout`, then `normalize_representation`. The one way to get an RC-DiT's
    representation (training, pipelines, features, the transformers export)."""
    config = transformer.config
    raw = encode_representation(encoder, images, config.representation_readout, config.encoder_preprocessing)
    return transformer.normalize_representation(raw)

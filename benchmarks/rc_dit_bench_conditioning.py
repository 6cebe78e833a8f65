"""The cost of representation conditioning: training images/s of RC-DiT vs an unconditional DiT of the same size.

Three variants train on the same batches with the same optimizer (AdamW), round-robin so that load from other
processes hits each alike; one training step = `RCDiTLoss` forward, backward and optimizer step:

- `rc_dit`: the ViT encoder and the DiT trained together (the encoder gets gradients through the conditioning);
- `rc_dit_frozen_encoder`: the same, encoder frozen (forward only);
- `unconditional`: the same DiT alone, always given its learned null representation (no encoder).

Reported: median seconds per step, training images/s, and the slowdown of each conditioned variant relative to
the unconditional DiT.

    python benchmarks/rc_dit_bench_conditioning.py --quick
    python benchmarks/rc_dit_bench_conditioning.py --num_threads 1     # writes benchmarks/results/rc_dit_bench_conditioning.json
"""

import torch
from diffusers import DDPMScheduler
from torch import nn

from _common import base_parser, median_seconds, report, setup
from diffusion_classifiers.models import (
    RepresentationConditionedDiTModel,
    build_vit_encoder,
    count_parameters,
    rc_dit_config,
)
from diffusion_classifiers.training import RCDiTJointModel, RCDiTLoss


class UnconditionalDiT(nn.Module):
    """The transformer alone, given its null representation for every image: an unconditional DiT of the same size
    (the representation projection still runs, on one constant vector)."""

    def __init__(self, transformer: RepresentationConditionedDiTModel):
        super().__init__()
        self.transformer = transformer

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        null = self.transformer.null_representation[None].expand(noisy.shape[0], -1)
        return self.transformer(noisy, timesteps, null).sample


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--num_channels", type=int, default=1)
    parser.add_argument("--dit_size", default=None, help="default: tiny with --quick, else XS")
    parser.add_argument("--encoder_hidden_size", type=int, default=None, help="default: the DiT's hidden size")
    parser.add_argument("--encoder_num_layers", type=int, default=4)
    parser.add_argument("--encoder_num_heads", type=int, default=4)
    parser.add_argument("--encoder_patch_size", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=None, help="default 16 with --quick, else 64")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; default 3 with --quick, else 10")
    args = parser.parse_args()
    args.dit_size = args.dit_size or ("tiny" if args.quick else "XS")
    args.batch_size = args.batch_size or (16 if args.quick else 64)
    args.repeats = args.repeats or (3 if args.quick else 10)
    return args


def build_variants(args, device: torch.device) -> dict:
    """The three models, each with its own copy of the same initial transformer weights."""
    config = rc_dit_config(args.dit_size, args.image_size, args.num_channels)
    hidden_size = args.encoder_hidden_size or config["hidden_size"]
    config["representation_dim"] = hidden_size

    def transformer():
        torch.manual_seed(args.seed)
        return RepresentationConditionedDiTModel(**config)

    def encoder():
        torch.manual_seed(args.seed)
        return build_vit_encoder(
            args.image_size,
            args.num_channels,
            hidden_size=hidden_size,
            num_layers=args.encoder_num_layers,
            num_heads=args.encoder_num_heads,
            patch_size=args.encoder_patch_size,
        )

    variants = {
        "rc_dit": RCDiTJointModel(encoder(), transformer()),
        "rc_dit_frozen_encoder": RCDiTJointModel(encoder(), transformer(), freeze_encoder=True),
        "unconditional": UnconditionalDiT(transformer()),
    }
    return {name: model.to(device).train() for name, model in variants.items()}


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: RCDiTLoss, batch: tuple):
    def step():
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main():
    args = parse_args()
    device = setup(args)
    variants = build_variants(args, device)
    loss_fn = RCDiTLoss(DDPMScheduler(num_train_timesteps=1000))
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch_size, args.num_channels, args.image_size, args.image_size, generator=generator)
    batch = (images.mul(2).sub(1).to(device),)
    steps = {}
    for name, model in variants.items():
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        steps[name] = training_step(model, optimizer, loss_fn, batch)
    seconds = median_seconds(steps, repeats=args.repeats, warmup=1)
    baseline = seconds["unconditional"]
    figures = {
        "dit_size": args.dit_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "parameters": {name: count_parameters(model) for name, model in variants.items()},
        "seconds_per_step": {name: round(s, 4) for name, s in seconds.items()},
        "train_images_per_second": {name: round(args.batch_size / s, 1) for name, s in seconds.items()},
        "slowdown_vs_unconditional": {name: round(s / baseline, 2) for name, s in seconds.items()},
        "targets": {},  # none: the cost of the conditioning is measured, not held to a bound
    }
    report("rc_dit_bench_conditioning", args, device, figures)


if __name__ == "__main__":
    main()

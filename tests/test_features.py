import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers.features import BlockInfo, DiffusionFeatureExtractor, block_label, with_hypercolumns
from diffusion_classifiers.views import image_views

NUM_TRAIN_TIMESTEPS = 100
# Two forwards of the same U-Net that differ only in batching (images x draws x timesteps vs one at a time, another
# batch size) or in the CPU kernel sum in another order. Each output of a layer is a sum of K <= 32 channels * 9
# taps = 288 products, whose float32 round-off is ~ sqrt(K) * 2^-24 of the activation scale; over the ~20
# convolutions on a path these add up to ~ sqrt(20 * 288) * 2^-24 * max|activation| = 1.3e-5 at max|activation| =
# 2.8 (absolute: it follows the scale of the layer, not of each entry). Measured 1e-6; a wrong block, timestep or
# noise draw moves features by 1e-3 or more.
FEATURE_ATOL = 5e-5


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        dropout=0.5,  # makes a forward in train mode non-deterministic: features must not depend on it
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )


@pytest.fixture(scope="module")
def extractor(unet):
    return DiffusionFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS))


@pytest.fixture(scope="module")
def images():
    return torch.rand(7, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _reference_activations(unet, scheduler, images, timestep, noise):
    """Native-resolution activations from an independent hooking strategy: the input of each block's resampler,
    else the block's output, one forward per timestep with a scalar timestep."""
    captured, handles = {}, []

    def save(name, take):
        return lambda module, args, *output: captured.__setitem__(name, take(args, output))

    for prefix, blocks, resamplers in (("down_blocks", unet.down_blocks, "downsamplers"), ("up_blocks", unet.up_blocks, "upsamplers")):
        for i, block in enumerate(blocks):
            if getattr(block, resamplers) is not None:
                handles.append(getattr(block, resamplers)[0].register_forward_pre_hook(save(f"{prefix}.{i}", lambda a, o: a[0])))
            else:
                first = (lambda a, o: o[0][0]) if prefix == "down_blocks" else (lambda a, o: o[0])
                handles.append(block.register_forward_hook(save(f"{prefix}.{i}", first)))
    handles.append(unet.mid_block.register_forward_hook(save("mid_block", lambda a, o: o[0])))
    x_t = scheduler.add_noise(images, noise.expand_as(images), torch.full((len(images),), timestep))
    with torch.no_grad():
        unet(x_t, timestep)
    for handle in handles:
        handle.remove()
    return captured


def test_blocks_lists_every_block_in_forward_order(extractor):
    assert extractor.block_names == [
        "down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"
    ]  # fmt: skip
    assert extractor.blocks[1] == BlockInfo("down_blocks.1", (8, 8), 16)
    assert extractor.blocks[3] == BlockInfo("mid_block", (4, 4), 16)
    assert extractor.blocks[6] == BlockInfo("up_blocks.2", (16, 16), 8)
    table = extractor.describe_blocks()
    assert "down_blocks.1" in table and "8x8" in table and "down_blocks.1" in repr(extractor)


@pytest.mark.numerics
def test_features_equal_reference_activations_for_every_block_and_timestep(unet, extractor, images):
    timesteps, draws, seed = [3, 40, 99], 2, 5
    unet.train()
    features = extractor.extract(images, extractor.block_names, timesteps, pool=None, noise_seed=seed, num_noise_draws=draws)
    assert unet.training, "extract must restore the unet's train/eval mode"
    unet.eval()
    noise = torch.randn((draws, 1, 16, 16), generator=torch.Generator().manual_seed(seed))
    for t in timesteps:
        per_draw = [_reference_activations(unet, extractor.scheduler, images, t, eps) for eps in noise]
        for info in extractor.blocks:
            expected = sum(activations[info.name] for activations in per_draw) / draws
            assert expected.shape[1:] == (info.channels, *info.resolution)
            got = features[(info.name, t)]
            assert got.dtype == torch.float32 and got.device.type == "cpu"
            torch.testing.assert_close(got, expected.flatten(1), atol=FEATURE_ATOL, rtol=0)


@pytest.mark.numerics
def test_pooling_modes(extractor, images):
    maps = extractor.extract(images, ["down_blocks.0"], [10], pool=None)[("down_blocks.0", 10)].view(7, 8, 16, 16)
    mean = extractor.extract(images, ["down_blocks.0"], [10], pool="mean")[("down_blocks.0", 10)]
    grid = extractor.extract(images, ["down_blocks.0"], [10], pool="2x2")[("down_blocks.0", 10)]
    assert mean.shape == (7, 8) and grid.shape == (7, 32)
    # Means of 256 (mean) and 64 (2x2) values of |x| <= 2.2 from the same maps, in two summation orders: round-off
    # <= 256 * 2^-24 * 2.2 = 3.4e-5 in the worst case, ~16 * 2^-24 * 2.2 = 2e-6 typically.
    torch.testing.assert_close(mean, maps.mean(dim=(2, 3)), atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(grid, F.adaptive_avg_pool2d(maps, 2).flatten(1), atol=FEATURE_ATOL, rtol=0)


@pytest.mark.numerics
def test_early_stop_skips_the_rest_and_matches_full_forward(unet, extractor, images):
    calls = []
    handle = unet.mid_block.register_forward_hook(lambda *args: calls.append(1))
    try:
        truncated = extractor.extract(images, ["down_blocks.1", "down_blocks.0"], [5, 60], pool=None)
        assert calls == [], "the forward should stop after down_blocks.1"
        full = extractor.extract(images, ["down_blocks.1", "down_blocks.0"], [5, 60], pool=None, early_stop=False)
        assert calls, "early_stop=False runs the whole U-Net"
    finally:
        handle.remove()
    assert truncated.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(truncated[key], full[key], atol=FEATURE_ATOL, rtol=0)


@pytest.mark.numerics
def test_noise_is_seeded_and_independent_of_batching(extractor, images):
    kwargs = dict(blocks=["mid_block", "up_blocks.1"], timesteps=[20, 70])
    reference = extractor.extract(images, noise_seed=3, batch_size=64, **kwargs)
    again = extractor.extract(images, noise_seed=3, batch_size=64, **kwargs)
    small_batches = extractor.extract(images, noise_seed=3, batch_size=3, **kwargs)
    subset = extractor.extract(images[2:5], noise_seed=3, **kwargs)
    other_seed = extractor.extract(images, noise_seed=4, batch_size=64, **kwargs)
    for key in reference:
        assert torch.equal(reference[key], again[key])
        torch.testing.assert_close(small_batches[key], reference[key], atol=FEATURE_ATOL, rtol=0)
        torch.testing.assert_close(subset[key], reference[key][2:5], atol=FEATURE_ATOL, rtol=0)
        assert (other_seed[key] - reference[key]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(blocks=["down_blocks.9"]), "unknown block 'down_blocks.9'; expected one of \\['down_blocks.0'"),
        (dict(timesteps=[100]), "timestep 100 is invalid: expected an integer in \\[0, 100\\)"),
        (dict(timesteps=[-1]), "timestep -1 is invalid"),
        (dict(timesteps=[2.5]), "timestep 2.5 is invalid"),
        (dict(timesteps=[4, 4]), "expected distinct"),
        (dict(pool="max"), "unknown pool 'max'"),
        (dict(num_noise_draws=0), "num_noise_draws"),
        (dict(images=torch.zeros(1, 16, 16)), "expected images of shape \\[N, 1, 16, 16\\]"),
        (dict(images=torch.zeros(2, 3, 16, 16)), "expected 1 channels, got 3"),
        (dict(images=torch.zeros(2, 1, 32, 32)), "expected images of spatial size \\(16, 16\\)"),
        (dict(images=torch.zeros(4, 1, 16, 16).index_fill_(0, torch.tensor([2]), float("nan"))), "image 2 contains NaN"),
        (dict(images=torch.zeros(4, 1, 16, 16).index_fill_(0, torch.tensor([3]), 255.0)), "image 3 has values in \\[255, 255\\]; expected images scaled to \\[-1, 1\\]"),
    ],
)
def test_bad_input_fails_before_any_forward(unet, extractor, images, kwargs, message):
    calls = []
    handle = unet.register_forward_pre_hook(lambda *args: calls.append(1))
    request = dict(images=images, blocks=["mid_block"], timesteps=[10], **{})
    request.update(kwargs)
    try:
        with pytest.raises(ValueError, match=message):
            extractor.extract(**request)
    finally:
        handle.remove()
    assert calls == []


def test_hypercolumns_join_every_block_of_a_timestep_in_order_and_need_features_in_memory(tmp_path):
    features = {("down_blocks.0", 10): torch.zeros(2, 3), ("mid_block", 10): torch.ones(2, 4), ("mid_block", 50): torch.ones(2, 4)}
    columns = with_hypercolumns(features)
    blocks = ("down_blocks.0", "mid_block")
    assert set(columns) == set(features) | {(blocks, 10)}  # t = 50 has one block: no hypercolumn
    assert torch.equal(columns[(blocks, 10)], torch.cat([features[("down_blocks.0", 10)], features[("mid_block", 10)]], 1))
    assert block_label(blocks) == "2 blocks: down_blocks.0 .. mid_block" and block_label("mid_block") == "mid_block"
    on_disk = np.memmap(tmp_path / "f.bin", dtype=np.float16, mode="w+", shape=(2, 3))
    with pytest.raises(ValueError, match="hypercolumns concatenate features in memory"):
        with_hypercolumns({**features, ("up_blocks.0", 10): on_disk})


def test_dihedral_views_average_the_eight_turned_images_and_make_features_invariant_to_turning(extractor, images):
    kwargs = dict(blocks=["down_blocks.1", "mid_block"], timesteps=[20, 70], pool="2x2", noise_seed=3)
    averaged = extractor.extract(images, views="dihedral", **kwargs)
    views = image_views(images, "dihedral")
    upright = [extractor.extract(view, **kwargs) for view in views]
    assert len(views) == 8 and len({tuple(v.flatten().tolist()) for v in views}) == 8  # 8 distinct views
    for turned in (images.rot90(1, dims=(2, 3)), images.flip(2), images.rot90(3, dims=(2, 3)).flip(3)):
        again = extractor.extract(turned, views="dihedral", **kwargs)
        for key in averaged:
            # The same eight views (bit for bit, in another order): each forward is the same; only the float32 mean
            # of 8 terms is summed in another order, which moves it by at most 2 * 7 * 2^-24 * max|term|.
            bound = 14 * 2.0**-24 * max(float(u[key].abs().max()) for u in upright)
            torch.testing.assert_close(again[key], averaged[key], atol=bound, rtol=0)
    for key in averaged:
        # a batch of views against views one at a time: batching only, as in test_noise_is_seeded_...
        torch.testing.assert_close(averaged[key], sum(u[key] for u in upright) / 8, atol=FEATURE_ATOL, rtol=0)
        assert (averaged[key] - upright[0][key]).abs().max() > 1e-3  # the views change the feature


def test_unknown_views_and_dihedral_views_of_non_square_images_are_refused(unet, extractor, images):
    with pytest.raises(ValueError, match=r"unknown views 'rotations'; expected one of \(None, 'dihedral'\)"):
        extractor.extract(images, ["mid_block"], [10], views="rotations")
    wide = DiffusionFeatureExtractor(UNet2DModel(**{**unet.config, "sample_size": (16, 8)}), extractor.scheduler)
    with pytest.raises(ValueError, match=r"views 'dihedral' rotates images by 90 degrees: expected square images, got size \(16, 8\)"):
        wide.extract(images[..., :8], ["mid_block"], [10], views="dihedral")


def _bars_of(call, monkeypatch) -> tuple:
    """`(desc, disable)` of every tqdm bar that `call()` creates, as the caller asked for it (the suite's
    TQDM_DISABLE=1 hides every bar not asked for with disable=False, so what is shown cannot be read from the output),
    and what `call()` returned."""
    import tqdm

    bars, init = [], tqdm.std.tqdm.__init__

    def spy(self, *args, **kwargs):
        bars.append((kwargs.get("desc"), kwargs.get("disable", False)))
        init(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(tqdm.std.tqdm, "__init__", spy)
        result = call()
    return bars, result


def test_a_study_without_progress_shows_no_bar(unet, monkeypatch):
    from diffusion_classifiers.data import LabeledImages
    from diffusion_classifiers.unet_feature_study import run_unet_feature_study

    generator = torch.Generator().manual_seed(0)
    splits = {
        name: LabeledImages(torch.rand(n, 1, 16, 16, generator=generator) * 2 - 1, torch.arange(n) % 2, ["a", "b"])
        for name, n in (("train", 12), ("val", 6), ("test", 6))
    }
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)

    def study(show_progress, probe_kwargs=None):
        return lambda: run_unet_feature_study(
            unet, scheduler, splits, ["mid_block"], [10], show_progress=show_progress, probe_kwargs=probe_kwargs
        )

    shown, _ = _bars_of(study(True), monkeypatch)
    titles = [desc for desc, _ in shown]
    # the three splits' extraction, the probe fit, the test pass through the pipeline ("U-Net features")
    assert {"U-Net features (train)", "Fitting probes"} <= set(titles) and titles.count("U-Net features") == 1
    hidden, result = _bars_of(study(False), monkeypatch)
    assert len(hidden) == len(shown) and all(disable for _, disable in hidden), hidden
    assert result.pipeline.progress_bar_config == {}  # the pipeline handed back shows its bars, as tqdm's defaults say
    own_bar, _ = _bars_of(study(False, {"progress_bar": {}}), monkeypatch)  # probe_kwargs' own progress_bar wins
    assert [disable for desc, disable in own_bar if desc == "Fitting probes"] == [False]


def test_extractions_from_several_threads_on_one_unet_equal_sequential_ones(extractor, images):
    """QA (an inference service): calls from a ThreadPoolExecutor on one pipeline raised KeyError 'down_blocks.1' (a
    thread's hook stopped another's forward) and could read each other's activations."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = extractor.block_names
    requests = [images[i : i + 1] for i in range(len(images))] * 3

    def extract(batch):
        return extractor.extract(batch, blocks[:2], [10, 50], progress_bar={"disable": True})

    sequential = [extract(batch) for batch in requests]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(extract, requests))
    for alone, together in zip(sequential, concurrent):
        for key in alone:
            torch.testing.assert_close(together[key], alone[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["DDIMScheduler", "PNDMScheduler"])
def test_schedulers_that_noise_as_ddpm_are_taken(unet, name):
    import diffusers

    DiffusionFeatureExtractor(unet, getattr(diffusers, name)(num_train_timesteps=NUM_TRAIN_TIMESTEPS))


def test_a_scheduler_that_noises_otherwise_than_training_is_refused(unet):
    """QA (session 58, a user of their own diffusers models): an Euler scheduler saved for sampling adds sigma_t eps
    to an unscaled x_0 (x_t std 3.5 at t = 500 vs DDPM's 0.97): its features were taken from images no U-Net saw."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    for scheduler in (EulerDiscreteScheduler, DPMSolverMultistepScheduler):  # DPM-Solver's: 1.0 at t = 999, not 0.006
        with pytest.raises(ValueError, match=rf"scheduler: {scheduler.__name__} does not noise images as the model"):
            DiffusionFeatureExtractor(unet, scheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS))


def test_a_class_conditional_or_sizeless_unet_is_refused_by_name():
    """QA (session 58): both failed only once the data was read, on diffusers' "class_labels should be provided" and
    a bare TypeError of `_as_hw(None)`."""
    small = dict(block_out_channels=(8, 8), down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                 layers_per_block=1, norm_num_groups=4)  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    with pytest.raises(ValueError, match=r"unet: class-conditional \(num_class_embeds=3, .*expected an unconditional"):
        DiffusionFeatureExtractor(UNet2DModel(sample_size=8, num_class_embeds=3, **small), scheduler)
    with pytest.raises(ValueError, match="unet: its config states no sample_size; expected the size it was trained"):
        DiffusionFeatureExtractor(UNet2DModel(sample_size=None, **small), scheduler)

"""QA (session 59, a plankton lab using the frozen features in its own scikit-learn workflow): a head fitted on
features extracted with another noise seed recorded the default one, and its pipeline read new images otherwise; the
head refused the arrays (the extractor's own float16 memory maps among them) that `fit_probe_grid` accepts; `blocks`
or `timesteps` of None failed on "'NoneType' object is not iterable"."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.features import FeatureGrid, with_hypercolumns
from diffusion_classifiers.models import unet_config
from diffusion_classifiers.probing import fit_probe_grid

BLOCKS, TIMESTEP = ["down_blocks.1", "mid_block"], 100
SETTINGS = {"noise_seed": 7, "num_noise_draws": 2, "pool": "2x2"}
QUIET = {"disable": True}


@pytest.fixture(scope="module")
def digits():
    splits = load_image_classification_data("digits", image_size=16, seed=0)
    return {name: splits[name].subset(np.arange(80)) for name in ("train", "val", "test")}


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 16)), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _features(pipe, split, **settings):
    return pipe.extract_features(split.images, BLOCKS, [TIMESTEP], **{**SETTINGS, **settings})


def test_a_head_fitted_on_extracted_features_records_how_they_were_made(pipe, digits):
    train, val, test = (_features(pipe, digits[name]) for name in ("train", "val", "test"))
    assert isinstance(train, FeatureGrid) and train.settings == {**SETTINGS, "views": None}
    probe = fit_probe_grid(train, digits["train"].labels, val, digits["val"].labels, progress_bar=QUIET)
    assert {name: probe.head.config[name] for name in SETTINGS} == SETTINGS
    pipe.register_modules(head=probe.head)
    try:
        from_pipeline = pipe(digits["test"].images).probs
    finally:
        pipe.register_modules(head=None)
    from_features = probe.head(test[probe.best_pair]).softmax(-1)
    torch.testing.assert_close(from_pipeline, from_features, atol=1e-5, rtol=0)  # the same features, float32
    assert with_hypercolumns(train).settings == train.settings


def test_settings_contradicting_the_features_or_differing_between_splits_are_refused(pipe, digits):
    train, val = _features(pipe, digits["train"]), _features(pipe, digits["val"])
    labels = digits["train"].labels, digits["val"].labels
    with pytest.raises(ValueError, match=r"noise_seed=3: the features were extracted with noise_seed=7"):
        fit_probe_grid(train, labels[0], val, labels[1], noise_seed=3, progress_bar=QUIET)
    other_seed = _features(pipe, digits["val"], noise_seed=8)
    with pytest.raises(ValueError, match=r"val_features: extracted with .*'noise_seed': 8.* train_features with"):
        fit_probe_grid(train, labels[0], other_seed, labels[1], progress_bar=QUIET)
    plain = {key: value.clone() for key, value in train.items()}, {key: value.clone() for key, value in val.items()}
    probe = fit_probe_grid(*plain[:1], labels[0], plain[1], labels[1], noise_seed=5, progress_bar=QUIET)
    assert probe.head.config.noise_seed == 5  # plain dicts: the arguments, as before


def test_the_head_reads_arrays_and_float16_memory_maps(pipe, digits, tmp_path):
    features = _features(pipe, digits["train"])
    probe = fit_probe_grid(features, digits["train"].labels, features, digits["train"].labels, progress_bar=QUIET)
    matrix = features[probe.best_pair]
    on_disk = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=tuple(matrix.shape))
    on_disk[:] = matrix.numpy()
    expected = probe.head(matrix)
    torch.testing.assert_close(probe.head(matrix.numpy()), expected, atol=0, rtol=0)
    torch.testing.assert_close(probe.head(on_disk), probe.head(torch.from_numpy(np.asarray(on_disk, np.float32))))
    with pytest.raises(ValueError, match=r"expected features of shape \[N, \d+\], got \(3, 1\)"):
        probe.head(np.zeros((3, 1)))


def test_blocks_or_timesteps_of_none_are_refused_naming_what_is_expected(pipe, digits):
    images = digits["train"].images[:2]
    with pytest.raises(ValueError, match=r"blocks: expected a block's name or a list of them, from \['down_blocks.0'"):
        pipe.extract_features(images, None, [10])
    with pytest.raises(ValueError, match=r"timesteps: expected an integer or a list of them in \[0, 1000\), got None"):
        pipe.extract_features(images, BLOCKS, None)


def test_blocks_given_as_any_iterable_of_names_are_read_and_features_cached_with_torch_save_keep_their_settings(
    pipe, digits, tmp_path
):
    """Review: the None check refused an array, a dict's keys and a generator, which earlier versions read; and a
    `FeatureGrid`, a dict subclass, did not load with `torch.load`'s default `weights_only=True`."""
    images = digits["train"].images[:4]
    as_list = pipe.extract_features(images, BLOCKS, [TIMESTEP])
    for blocks in (np.array(BLOCKS), dict.fromkeys(BLOCKS).keys(), (name for name in BLOCKS)):
        assert list(pipe.extract_features(images, blocks, [TIMESTEP])) == list(as_list)
    features = _features(pipe, digits["train"])
    torch.save(features, tmp_path / "features.pt")
    loaded = torch.load(tmp_path / "features.pt")
    assert isinstance(loaded, FeatureGrid) and loaded.settings == features.settings
    assert all(torch.equal(loaded[key], features[key]) for key in features)

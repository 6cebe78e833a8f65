"""Streaming at scale: datasets decoded on the fly equal the in-memory tensors, trainers and the feature extractor
give the same numbers on either, features beyond a memory budget go to float16 memory maps that the probe grid
reads, and bad data is refused naming the file."""

import csv

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion_classifiers.data import load_image_classification_data, to_datasets
from diffusion_classifiers.data.streaming import StreamingImages, streaming_image_classification_data
from diffusion_classifiers.features import DiffusionFeatureExtractor
from diffusion_classifiers.probing import fit_probe_grid
from diffusion_classifiers.training import TrainingArguments, train_ddpm_unet, train_score_sde_unet

SIZE = 16


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 8 JPEGs of different sizes, colour and grey mixed."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat"):
        (root / name).mkdir()
        for i in range(8):
            shape = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
            pixels = rng.integers(0, 256, (*shape, 3) if i % 2 else shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")
    return root


def _all_images(dataset: StreamingImages) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.mark.parametrize("num_channels", [1, 3])
def test_streamed_splits_equal_the_in_memory_ones_exactly(image_folder, num_channels):
    streamed = streaming_image_classification_data(image_folder, num_channels=num_channels, image_size=SIZE, seed=3)
    loaded = load_image_classification_data(image_folder, image_size=SIZE, num_channels=num_channels, seed=3)
    for split in ("train", "val", "test"):
        assert torch.equal(_all_images(streamed[split]), loaded[split].images)
        assert torch.equal(streamed[split].labels, loaded[split].labels)
        assert streamed[split].class_names == loaded[split].class_names == ["ant", "bee", "cat"]
        batch = streamed[split].__getitems__(list(range(len(streamed[split]))))  # the DataLoader's batched read
        assert torch.equal(torch.stack([image for image, _ in batch]), loaded[split].images)


def test_csv_and_datasets_sources_stream_the_same_images(image_folder, tmp_path):
    rows = [(f"{path.parent.name}/{path.name}", path.parent.name) for path in sorted(image_folder.glob("*/*.jpg"))]
    with open(image_folder / "images.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    streamed = streaming_image_classification_data(image_folder / "images.csv", num_channels=3, image_size=SIZE)
    loaded = load_image_classification_data(image_folder / "images.csv", image_size=SIZE, num_channels=3)
    assert torch.equal(_all_images(streamed["train"]), loaded["train"].images)

    saved = tmp_path / "saved"
    to_datasets(loaded).save_to_disk(str(saved))  # PNG bytes in memory-mapped Arrow
    from_disk = streaming_image_classification_data(saved, num_channels=3, image_size=SIZE)
    import datasets

    in_memory = load_image_classification_data(datasets.load_from_disk(str(saved)), image_size=SIZE, num_channels=3)
    for split in ("train", "val", "test"):
        assert torch.equal(_all_images(from_disk[split]), in_memory[split].images)
        assert torch.equal(from_disk[split].labels, in_memory[split].labels)


def test_dataloader_workers_read_the_same_batches(image_folder):
    train = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"]
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(train, batch_size=5, num_workers=workers)
        batches[workers] = [torch.cat([images.flatten(1), labels[:, None]], 1) for images, labels in loader]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2], strict=True))


def _args(tmp_path, name, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / name), train_batch_size=4, max_train_steps=2, learning_rate=1e-3,
        lr_warmup_steps=1, checkpointing_steps=2, num_sample_images=0,
    )  # fmt: skip
    return TrainingArguments(**{**defaults, **overrides})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_trainers_on_a_streamed_dataset_equal_the_tensor_runs_bitwise(image_folder, tmp_path):
    streamed = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"]
    loaded = load_image_classification_data(image_folder, image_size=SIZE, num_channels=1)["train"]

    unet_stream, _, summary_stream = train_ddpm_unet(_args(tmp_path, "u1"), streamed, preset="tiny")
    unet_tensor, _, summary_tensor = train_ddpm_unet(_args(tmp_path, "u2"), loaded.images, preset="tiny")
    assert summary_stream.final_loss == summary_tensor.final_loss
    assert _same_weights(unet_stream, unet_tensor)

    sde_stream = train_score_sde_unet(_args(tmp_path, "s1"), streamed, preset="tiny", class_balanced=True)
    sde_tensor = train_score_sde_unet(_args(tmp_path, "s2"), loaded.images, loaded.labels, preset="tiny", class_balanced=True)
    assert sde_stream[2].final_loss == sde_tensor[2].final_loss
    assert _same_weights(sde_stream[0], sde_tensor[0])
    with pytest.raises(ValueError, match="labels: expected None with a training dataset"):
        train_score_sde_unet(_args(tmp_path, "s3"), streamed, loaded.labels, preset="tiny")


def test_rc_dit_trains_on_a_streamed_dataset_as_on_the_tensor(image_folder, tmp_path):
    from diffusion_classifiers.models import build_vit_encoder
    from diffusion_classifiers.training import train_rc_dit

    streamed = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"]
    loaded = load_image_classification_data(image_folder, image_size=SIZE, num_channels=1)["train"]
    runs = []
    for name, images in (("r1", streamed), ("r2", loaded.images)):
        torch.manual_seed(0)
        encoder = build_vit_encoder(SIZE, 1, 24, num_layers=1, num_heads=2, patch_size=4)
        runs.append(train_rc_dit(_args(tmp_path, name, num_sample_images=2, sample_inference_steps=1), images, encoder, "tiny"))
    assert runs[0][3].final_loss == runs[1][3].final_loss
    assert _same_weights(runs[0][1], runs[1][1])


@pytest.mark.slow
def test_two_dataloader_workers_train_bitwise_like_none(image_folder, tmp_path):
    streamed = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"]
    unet0, _, summary0 = train_ddpm_unet(_args(tmp_path, "w0", max_train_steps=4), streamed, preset="tiny")
    unet2, _, summary2 = train_ddpm_unet(
        _args(tmp_path, "w2", max_train_steps=4, dataloader_num_workers=2), streamed, preset="tiny"
    )
    assert summary0.final_loss == summary2.final_loss
    assert _same_weights(unet0, unet2)


# ------------------------------------------------------------------------------------------------------------------
# Features: a DataLoader, and float16 memory maps beyond a memory budget
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    return DiffusionFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=100))


BLOCKS, TIMESTEPS = ["down_blocks.1", "mid_block"], [10, 50]


def test_extraction_from_a_dataset_equals_the_tensor_path(image_folder, extractor):
    streamed = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"]
    images = _all_images(streamed)
    from_tensor = extractor.extract(images, BLOCKS, TIMESTEPS, batch_size=4)
    from_dataset = extractor.extract(streamed, BLOCKS, TIMESTEPS, batch_size=4)
    assert from_tensor.keys() == from_dataset.keys()
    assert all(torch.equal(from_tensor[key], from_dataset[key]) for key in from_tensor)


def test_study_features_of_streamed_splits_go_to_disk_and_equal_the_in_memory_ones(image_folder, extractor):
    from diffusion_classifiers.unet_feature_study import extract_study_features

    streamed = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)
    loaded = load_image_classification_data(image_folder, image_size=SIZE, num_channels=1)
    kwargs = dict(blocks=BLOCKS, timesteps=TIMESTEPS, batch_size=4, show_progress=False)
    on_disk = extract_study_features(extractor.unet, extractor.scheduler, streamed, max_memory_bytes=0, **kwargs)
    in_memory = extract_study_features(extractor.unet, extractor.scheduler, loaded, **kwargs)
    for split, features in in_memory.items():
        for key, value in features.items():
            assert isinstance(on_disk[split][key], np.memmap)
            assert np.array_equal(on_disk[split][key], value.numpy().astype(np.float16))


def test_features_beyond_the_memory_budget_go_to_float16_memory_maps(image_folder, extractor, tmp_path):
    images = _all_images(streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"])
    in_memory = extractor.extract(images, BLOCKS, TIMESTEPS, batch_size=4)
    num_bytes = 4 * len(images) * sum(value.shape[1] for value in in_memory.values())
    assert all(isinstance(v, torch.Tensor) for v in extractor.extract(images, BLOCKS, TIMESTEPS, max_memory_bytes=num_bytes).values())
    on_disk = extractor.extract(images, BLOCKS, TIMESTEPS, batch_size=4, max_memory_bytes=num_bytes - 1, feature_dir=tmp_path)
    assert len(list(tmp_path.glob("*.float16"))) == len(on_disk) == 4
    for key, value in on_disk.items():
        assert isinstance(value, np.memmap) and value.dtype == np.float16 and value.shape == in_memory[key].shape
        # float16 rounds to nearest: a relative error of at most 2^-11 for normal values (|x| >= 2^-14), and at most
        # half the subnormal spacing, 2^-25, below; the stored values are exactly the float32 ones rounded.
        assert np.array_equal(value, in_memory[key].numpy().astype(np.float16))
        assert torch.all((torch.from_numpy(np.asarray(value, np.float32)) - in_memory[key]).abs()
                         <= torch.maximum(in_memory[key].abs() * 2**-11, torch.tensor(2.0**-25)))
    temporary = extractor.extract(images, BLOCKS, TIMESTEPS, max_memory_bytes=0)  # unlinked files, alive while mapped
    assert np.array_equal(temporary[("mid_block", 10)], on_disk[("mid_block", 10)])


def test_probe_grid_on_memory_maps_equals_the_same_values_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centres = rng.normal(size=(3, 6)) * 2
    raw = {("mid_block", 10): centres[labels] + rng.normal(size=(300, 6)), ("down_blocks.0", 10): rng.normal(size=(300, 4))}
    splits = [slice(0, 200), slice(200, 250), slice(250, 300)]
    maps, tensors = [], []
    for part, rows in enumerate(splits):
        maps.append({})
        for i, (key, values) in enumerate(raw.items()):
            path = tmp_path / f"{part}_{i}.float16"
            array = np.memmap(path, dtype=np.float16, mode="w+", shape=values[rows].shape)
            array[:] = values[rows]
            maps[-1][key] = array
        tensors.append({key: torch.from_numpy(np.asarray(value, np.float32)) for key, value in maps[-1].items()})
    labels = [labels[rows] for rows in splits]
    kwargs = dict(num_classes=3, progress_bar={"disable": True})
    from_disk = fit_probe_grid(maps[0], labels[0], maps[1], labels[1], maps[2], labels[2], **kwargs)
    from_memory = fit_probe_grid(tensors[0], labels[0], tensors[1], labels[1], tensors[2], labels[2], **kwargs)
    # The same float16 values, copied exactly into the same float32 working copy: the same iterates, bit for bit.
    # (Against float32 features the inputs differ by the 2^-11 relative rounding of float16 instead.)
    assert from_disk.metrics == from_memory.metrics and from_disk.best_pair == from_memory.best_pair == ("mid_block", 10)
    for key in raw:
        assert torch.equal(from_disk.heads[key].linear.weight, from_memory.heads[key].linear.weight)
    maps[0][("mid_block", 10)][7, 2] = np.inf
    with pytest.raises(ValueError, match=r"pair \('mid_block', 10\): train features.*row 7"):
        fit_probe_grid(maps[0], labels[0], maps[1], labels[1], **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# Bad data is refused before any decoding, naming the folder or file
# ------------------------------------------------------------------------------------------------------------------


def test_empty_folder_and_unreadable_file_are_refused_by_name(image_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        streaming_image_classification_data(tmp_path / "empty", num_channels=1)
    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8)).save(broken / name / f"{i}.png")
    (broken / "b" / "9.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot decode image file .*b/9\.png"):
        streaming_image_classification_data(broken, num_channels=1)
    unchecked = streaming_image_classification_data(broken, num_channels=1, check_files=False, test_fraction=0.4)
    with pytest.raises(ValueError, match=r"cannot decode image file .*b/9\.png"):
        [unchecked[split][i] for split in ("train", "val", "test") for i in range(len(unchecked[split]))]
    with pytest.raises(ValueError, match="num_channels: expected 1 or 3"):
        streaming_image_classification_data(image_folder, num_channels=None)

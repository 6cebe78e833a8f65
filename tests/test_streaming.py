"""Streaming at scale: datasets decoded on the fly equal the in-memory tensors, trainers and the feature extractor
give the same numbers on either, features beyond a memory budget go to float16 memory maps that the probe grid
reads, and bad data is refused naming the file."""

import csv
import re
from pathlib import Path

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
    by_folder = load_image_classification_data(saved, image_size=SIZE, num_channels=3)  # the folder, not streamed
    for split in ("train", "val", "test"):
        assert torch.equal(_all_images(from_disk[split]), in_memory[split].images)
        assert torch.equal(from_disk[split].labels, in_memory[split].labels)
        assert torch.equal(by_folder[split].images, in_memory[split].images)
        assert torch.equal(by_folder[split].labels, in_memory[split].labels)


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


def test_training_with_workers_leaves_none_behind_and_exits_without_a_traceback(image_folder, tmp_path):
    """QA: the README's streaming example (2 DataLoader workers) succeeded, then printed "DataLoader worker (pid N) is
    killed by signal: Terminated" at exit: the persistent workers outlived training until multiprocessing's teardown
    terminated them. They are shut down when training ends, the resumed epoch's loader's once its epoch is done."""
    import subprocess
    import textwrap

    from .conftest import PYTHON, python_subprocess_env

    script = textwrap.dedent(f"""
        import multiprocessing
        from diffusion_classifiers.data.streaming import streaming_image_classification_data
        from diffusion_classifiers.training import TrainingArguments, train_ddpm_unet

        streamed = streaming_image_classification_data({str(image_folder)!r}, num_channels=1, image_size={SIZE})
        for steps, resume in ((3, None), (5, "latest")):  # resumed mid-epoch: a loader that skips the batches done
            args = TrainingArguments(
                output_dir={str(tmp_path / "run")!r}, train_batch_size=4, max_train_steps=steps, lr_warmup_steps=1,
                checkpointing_steps=3, num_sample_images=0, dataloader_num_workers=2, resume_from_checkpoint=resume,
            )
            train_ddpm_unet(args, streamed["train"], preset="tiny")
            print("workers left:", len(multiprocessing.active_children()))
    """)
    run = subprocess.run([PYTHON, "-c", script], env=python_subprocess_env(), capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("workers left: 0") == 2, run.stdout
    assert "killed by signal" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]


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
    # the study probes the train features where they are (indexing a memmap with every row copied it into memory)
    import diffusion_classifiers.unet_feature_study as study_module

    probed, fit = [], study_module.fit_probe_grid
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_module, "fit_probe_grid", lambda train, *a, **k: probed.append(train) or fit(train, *a, **k))
        study_module.study_from_features(extractor.unet, extractor.scheduler, loaded, on_disk, show_progress=False)
    assert all(isinstance(x, np.memmap) for x in probed[0].values())


def test_features_beyond_the_memory_budget_go_to_float16_memory_maps(image_folder, extractor, tmp_path):
    images = _all_images(streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"])
    in_memory = extractor.extract(images, BLOCKS, TIMESTEPS, batch_size=4)
    num_bytes = 4 * len(images) * sum(value.shape[1] for value in in_memory.values())
    assert all(isinstance(v, torch.Tensor) for v in extractor.extract(images, BLOCKS, TIMESTEPS, max_memory_bytes=num_bytes).values())
    on_disk = extractor.extract(images, BLOCKS, TIMESTEPS, batch_size=4, max_memory_bytes=num_bytes - 1, feature_dir=tmp_path)
    assert len(list(tmp_path.glob("diffusion-features-*/*.float16"))) == len(on_disk) == 4
    # one feature_dir for two extractions (a study's val and test): the second writes beside the first, not over it
    written = {key: np.array(value) for key, value in on_disk.items()}
    other = extractor.extract(images[:3], BLOCKS, TIMESTEPS, max_memory_bytes=0, feature_dir=tmp_path)
    assert all(np.array_equal(on_disk[key], value) for key, value in written.items())
    assert len(list(tmp_path.glob("diffusion-features-*/*.float16"))) == 8 and len(other[BLOCKS[0], TIMESTEPS[0]]) == 3
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=r"feature_dir '.*a-file': expected a writable folder"):
        extractor.extract(images, BLOCKS, TIMESTEPS, max_memory_bytes=0, feature_dir=tmp_path / "a-file")
    for key, value in on_disk.items():
        assert isinstance(value, np.memmap) and value.dtype == np.float16 and value.shape == in_memory[key].shape
        # float16 rounds to nearest: a relative error of at most 2^-11 for normal values (|x| >= 2^-14), and at most
        # half the subnormal spacing, 2^-25, below; the stored values are exactly the float32 ones rounded.
        assert np.array_equal(value, in_memory[key].numpy().astype(np.float16))
        assert torch.all((torch.from_numpy(np.asarray(value, np.float32)) - in_memory[key]).abs()
                         <= torch.maximum(in_memory[key].abs() * 2**-11, torch.tensor(2.0**-25)))
    temporary = extractor.extract(images, BLOCKS, TIMESTEPS, max_memory_bytes=0)  # unlinked files, alive while mapped
    assert np.array_equal(temporary[("mid_block", 10)], on_disk[("mid_block", 10)])


def _probe_objective(head, features: torch.Tensor, labels: np.ndarray, l2: float, mean, std, class_weight=None):
    """A 3-class head's objective (mean cross-entropy + l2 / 2 ||W||^2, the one `fit_probe_grid` minimises; with
    `class_weight`, the class-weighted mean), in float64, as a function of its weights re-expressed on the features
    standardised with `mean` and `std`: (theta, f)."""
    scale = std / head.feature_std.double()  # (x - m1) / s1 = (x - m) / s * s / s1 + (m - m1) / s1
    weight = head.linear.weight.double() * scale
    bias = head.linear.bias.double() + head.linear.weight.double() @ ((mean - head.feature_mean.double()) / head.feature_std.double())
    x = (features.double() - mean) / std
    y = torch.as_tensor(labels)
    class_weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float64)

    def objective(theta):
        w, b = theta[: weight.numel()].view_as(weight), theta[weight.numel() :]
        return torch.nn.functional.cross_entropy(x @ w.T + b, y, weight=class_weight) + 0.5 * l2 * w.square().sum()

    return torch.cat([weight.flatten(), bias]), objective


def test_probe_grid_on_memory_maps_of_unequal_widths_fits_heads_that_stop_apart(tmp_path):
    # blocks have other widths (8, 20, 33 channels); when a head stops, the others leave the batch as a subset of
    # the features on disk, which must keep the grid's widest width (it once took the subset's: a shape error)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    splits = {"train": slice(0, 180), "val": slice(180, 240)}
    features = {name: {} for name in splits}
    for width in (8, 20, 33):
        values = rng.normal(size=(240, width)) + labels[:, None] * rng.normal(size=width) * (width / 20)
        for name, rows in splits.items():
            shape = values[rows].shape
            array = np.memmap(tmp_path / f"{name}_{width}.float16", dtype=np.float16, mode="w+", shape=shape)
            array[:] = values[rows]
            features[name][("block", width)] = array
    grid = fit_probe_grid(features["train"], labels[:180], features["val"], labels[180:], C=10.0, tol=1e-6,
                          device="cpu", progress_bar={"disable": True})  # fmt: skip
    assert len(set(grid.n_iter.values())) > 1 and all(grid.converged.values())


@pytest.mark.parametrize("class_weight", [None, [1.0, 3.0, 0.5]])
def test_probe_grid_on_memory_maps_reaches_the_in_memory_optimum_chunk_by_chunk(tmp_path, monkeypatch, class_weight):
    import diffusion_classifiers.probing.probe_grid as probe_grid

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
    # chunks of 7 samples: the train split (200) is read in 29 chunks, the last one shorter
    monkeypatch.setattr(probe_grid, "_CHUNK_BYTES", 4 * len(raw) * 6 * 7)
    C, tol, kwargs = 0.05, 1e-5, dict(num_classes=3, class_weight=class_weight, progress_bar={"disable": True})
    from_disk = fit_probe_grid(maps[0], labels[0], maps[1], labels[1], maps[2], labels[2], C=C, tol=tol, **kwargs)
    from_memory = fit_probe_grid(tensors[0], labels[0], tensors[1], labels[1], tensors[2], labels[2], C=C, tol=tol, **kwargs)
    assert from_disk.best_pair == from_memory.best_pair == ("mid_block", 10)
    assert all(from_disk.converged.values()) and all(from_memory.converged.values())

    # Both heads minimise the same strictly convex objective (up to float32 summation order and the float64 vs float32
    # standardisation statistics). Written on the in-memory head's standardisation, with mu the smallest curvature of
    # that objective (its Hessian's eigenvalue, off the softmax's flat direction: every bias shifted alike),
    # strong convexity bounds their distance by (|grad at one| + |grad at the other|) / mu; 1.1 covers the change of
    # the Hessian between the two points, which are far closer than its scale.
    head, other = from_memory.heads[("mid_block", 10)], from_disk.heads[("mid_block", 10)]
    mean, std = head.feature_mean.double(), head.feature_std.double()
    weight_sum = len(labels[0]) if class_weight is None else np.asarray(class_weight)[labels[0]].sum()
    l2 = 1 / (C * weight_sum)  # the penalty is 1 / (2 C) of the train samples' weights, as scikit-learn's
    features = tensors[0][("mid_block", 10)]
    theta, objective = _probe_objective(head, features, labels[0], l2, mean, std, class_weight)
    theta_disk, _ = _probe_objective(other, features, labels[0], l2, mean, std, class_weight)
    gradient = [torch.autograd.functional.jacobian(objective, t).norm() for t in (theta, theta_disk)]
    hessian = torch.autograd.functional.hessian(objective, theta)
    flat = torch.cat([torch.zeros(18, dtype=torch.float64), torch.full((3,), 3**-0.5, dtype=torch.float64)])
    projector = torch.eye(21, dtype=torch.float64) - torch.outer(flat, flat)
    curvatures = torch.linalg.eigvalsh(projector @ hessian @ projector)
    mu = curvatures[curvatures > 1e-9].min()
    distance = (projector @ (theta - theta_disk)).norm()
    # and it is this objective's optimum (class weights included): each of the 21 gradient entries within tol plus the
    # float32 round-off of a mean over 200 samples (worst case 200 * 2^-24 = 1.2e-5); measured 1.6e-5 for the norm
    assert max(gradient) <= 21**0.5 * (tol + 200 * 2**-24)
    assert distance <= 1.1 * (gradient[0] + gradient[1]) / mu
    assert distance > 0  # the chunked sums are another computation (float64 statistics, other summation order)

    maps[0][("mid_block", 10)][7, 2] = np.inf
    with pytest.raises(ValueError, match=r"pair \('mid_block', 10\): train features.*row 7"):
        fit_probe_grid(maps[0], labels[0], maps[1], labels[1], **kwargs)


def test_dit_features_of_a_streamed_dataset_equal_the_tensor_path(image_folder, tmp_path):
    from diffusers import DDPMScheduler as Scheduler

    from diffusion_classifiers import RepresentationConditionedDiTPipeline
    from diffusion_classifiers.models import RepresentationConditionedDiTModel, build_vit_encoder, rc_dit_config

    torch.manual_seed(0)
    encoder = build_vit_encoder(SIZE, 1, 24, num_layers=1, num_heads=2, patch_size=4).eval()
    transformer = RepresentationConditionedDiTModel(**rc_dit_config("tiny", SIZE, 1, 24, hidden_size=16, num_layers=2))
    with torch.no_grad():  # away from the zero init, so the blocks' outputs depend on the image and its r
        for parameter in transformer.parameters():
            parameter.normal_(0, 0.2)
    pipe = RepresentationConditionedDiTPipeline(encoder, transformer.eval(), Scheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    streamed = streaming_image_classification_data(image_folder, num_channels=1, image_size=SIZE)["train"]
    images = _all_images(streamed)
    kwargs = dict(timesteps=[10, 50], block_indices=[1, 0], batch_size=4, progress_bar={"disable": True})
    extractor = pipe.dit_feature_extractor
    from_tensor = extractor.extract(images, **kwargs)
    from_dataset = extractor.extract(streamed, **kwargs)
    assert list(from_tensor) == list(from_dataset)
    assert all(torch.equal(from_tensor[key], from_dataset[key]) for key in from_tensor)
    assert not torch.equal(from_tensor[("transformer_blocks.0", 10)][0], from_tensor[("transformer_blocks.0", 10)][1])
    on_disk = pipe.dit_features(streamed, timesteps=[10, 50], block_indices=[1, 0], batch_size=4, max_memory_bytes=0)
    for key, value in from_tensor.items():  # the pipeline passes a dataset through; float16 maps beyond the budget
        assert isinstance(on_disk[key], np.memmap) and np.array_equal(on_disk[key], value.numpy().astype(np.float16))
    with pytest.raises(ValueError, match=r"expected 1 channels, got 3"):
        extractor.extract(streaming_image_classification_data(image_folder, num_channels=3, image_size=SIZE)["train"], [10])


@pytest.fixture(scope="module")
def unet_pipeline(extractor):
    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.models import LinearProbeHead

    torch.manual_seed(1)
    head = LinearProbeHead(16, 3, class_names=["ant", "bee", "cat"], block="mid_block", timestep=10)
    with torch.no_grad():  # random weights: scores that differ from image to image
        head.linear.weight.normal_(0, 3)
    pipe = UNetFeatureClassifierPipeline(unet=extractor.unet, scheduler=extractor.scheduler, head=head)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_evaluating_a_streamed_folder_equals_the_in_memory_evaluation(image_folder, unet_pipeline, tmp_path):
    from diffusion_classifiers.cli import main
    from diffusion_classifiers.evaluation import evaluate_classifier, load_evaluation_split

    contract = unet_pipeline.preprocessing
    in_memory = load_evaluation_split(str(image_folder), "test", preprocessing=contract)
    streamed = load_evaluation_split(str(image_folder), "test", preprocessing=contract, streaming=True)
    assert isinstance(streamed, StreamingImages) and len(streamed) == len(in_memory)
    expected = evaluate_classifier(unet_pipeline, in_memory, batch_size=2)
    assert 0 < expected["calibration"]["ece"]
    assert evaluate_classifier(unet_pipeline, streamed, batch_size=2) == expected
    assert evaluate_classifier(unet_pipeline, streamed, batch_size=2, num_workers=2) == expected

    unet_pipeline.save_pretrained(tmp_path / "pipeline")
    main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--dataset", str(image_folder), "--streaming",
          "--output_dir", str(tmp_path / "report"), "--batch_size", "3"])  # fmt: skip
    import json

    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert written["accuracy"] == expected["accuracy"] and written["calibration"] == expected["calibration"]


def test_evaluating_a_datasets_split_decodes_batch_by_batch_as_the_pipeline_would(
    image_folder, unet_pipeline, monkeypatch
):
    from diffusion_classifiers.confidence_intervals import intervals_of_metrics
    from diffusion_classifiers.data.streaming import DecodedImages
    from diffusion_classifiers.evaluation import evaluate_classifier
    from diffusion_classifiers.metrics import calibration_metrics, classification_metrics

    test = to_datasets(load_image_classification_data(image_folder, image_size=SIZE, num_channels=1))["train"]
    # the reference: the decoded images in the same batches of 5 (other batch sizes may take other float32
    # convolution kernels, whose round-off would move the calibration error in its 8th digit)
    decoded = [row["image"] for row in test]
    probs = torch.cat([unet_pipeline(decoded[i : i + 5]).probs for i in range(0, len(decoded), 5)])
    labels = np.asarray(test["label"])
    expected = classification_metrics(labels, probs.argmax(-1), probs=probs, class_names=["ant", "bee", "cat"])
    expected["calibration"] = calibration_metrics(labels, probs)
    expected["confidence_intervals"] = intervals_of_metrics(expected, labels, probs)
    expected["pipeline_call"] = {}  # the pipeline called with its defaults
    expected["preprocessing"] = unet_pipeline.preprocessing.to_dict()  # how its images were read
    expected["training_images_checked"] = False  # a pipeline built in code records no training images
    expected["method"] = "unet_features"

    reads = []
    read = DecodedImages.__getitem__
    monkeypatch.setattr(DecodedImages, "__getitem__", lambda self, index: reads.append(index) or read(self, index))
    batch_sizes, call = [], type(unet_pipeline).__call__
    monkeypatch.setattr(
        type(unet_pipeline), "__call__", lambda pipe, images, **kw: batch_sizes.append(len(images)) or call(pipe, images, **kw)
    )
    assert evaluate_classifier(unet_pipeline, test, batch_size=5) == expected
    assert reads == list(range(len(test)))  # each image decoded once, in order, when its batch was scored
    assert batch_sizes == [5] * (len(test) // 5) + [len(test) % 5] * (len(test) % 5 > 0)


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


def _image_folder_of_two_classes(root):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_verify_names_every_image_damaged_past_its_header_before_any_training(tmp_path):
    import runpy

    from .conftest import REPO_ROOT

    root = _image_folder_of_two_classes(tmp_path / "data")
    fractions = {"val_fraction": 0.2, "test_fraction": 0.2}
    splits = streaming_image_classification_data(root, num_channels=1, image_size=8, **fractions)
    damaged = sorted(row["path"] for row in splits["train"].dataset[splits["train"].image_column])[::4][:2]
    for path in damaged:  # cut short after the header, which PIL still recognises
        Path(path).write_bytes(Path(path).read_bytes()[:60])
    splits = streaming_image_classification_data(root, num_channels=1, image_size=8, **fractions)  # headers pass
    for num_workers in (0, 2):
        failures = splits["train"].unreadable_images(num_workers=num_workers, progress_bar=False)
        assert sorted(path for path, _ in failures) == damaged
        assert all(reason.startswith(f"cannot decode image file {path}") for path, reason in failures)
    with pytest.raises(ValueError, match=rf"2 of {len(splits['train'])} images cannot be read \(cannot decode image file "):
        splits["train"].verify(progress_bar=False)
    splits["val"].verify(progress_bar=False)

    example = runpy.run_path(str(REPO_ROOT / "examples" / "unet_features_train.py"), run_name="example")
    flags = ["--dataset", str(root), "--streaming", "--num_channels", "1", "--image_size", "8", "--unet_preset", "tiny",
             "--output_dir", str(tmp_path / "out"), "--max_train_steps", "1", "--num_sample_images", "0",
             "--val_fraction", "0.2", "--test_fraction", "0.2"]  # fmt: skip
    total = sum(len(part) for part in splits.values())
    with pytest.raises(ValueError, match=rf"2 of {total} images cannot be read"):
        example["main"](flags)
    assert not (tmp_path / "out").exists()  # refused before training began
    with pytest.raises(ValueError, match="cannot decode image file"):  # unchecked: found when its batch is read
        example["main"](flags + ["--no_verify_images"])


def test_a_row_without_an_image_is_named_as_such_when_streamed(tmp_path):
    """QA: a datasets row whose Image is None stopped streaming with "AttributeError: 'NoneType' object has no
    attribute 'get'", naming no image; the in-memory reader names its row."""
    import datasets

    pictures = [Image.fromarray(np.full((8, 8), 40 * i, np.uint8)) for i in range(6)] + [None]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = datasets.Dataset.from_dict({"image": pictures, "label": [i % 2 for i in range(7)]}, features=features)
    datasets.DatasetDict({"train": rows, "test": rows.select(range(4))}).save_to_disk(str(tmp_path / "data"))
    train = streaming_image_classification_data(tmp_path / "data", num_channels=1, image_size=8)["train"]
    missing = [(path, reason) for path, reason in train.unreadable_images(progress_bar=False)]
    assert len(missing) == 1 and missing[0][1] == "an image row has no image (None)"
    # named by its row in the saved split, not its position in the carved one (session 52's note)
    assert missing[0][0] == "split 'train' row 6 (no image)"
    with pytest.raises(ValueError, match=r"1 of \d images cannot be read \(split 'train' row 6 \(no image\): an "):
        train.verify(progress_bar=False)


def test_training_refuses_a_test_image_damaged_past_its_header_and_names_every_unreadable_file(tmp_path):
    """QA: only the train split was read before training, so a truncated JPEG carved into test failed at probe time;
    deleting it re-carved every split (training images into test, uncatchable for a streamed run). And the header
    check stopped at the first bad file: every one is named at once now."""
    import runpy

    from .conftest import REPO_ROOT

    root = _image_folder_of_two_classes(tmp_path / "data")
    fractions = {"val_fraction": 0.2, "test_fraction": 0.2}
    splits = streaming_image_classification_data(root, num_channels=1, image_size=8, **fractions)
    victim = splits["test"]._path(0)
    Path(victim).write_bytes(Path(victim).read_bytes()[:60])  # the header still reads
    example = runpy.run_path(str(REPO_ROOT / "examples" / "unet_features_train.py"), run_name="example")
    flags = ["--dataset", str(root), "--streaming", "--num_channels", "1", "--image_size", "8", "--unet_preset", "tiny",
             "--output_dir", str(tmp_path / "out"), "--max_train_steps", "1", "--num_sample_images", "0",
             "--val_fraction", "0.2", "--test_fraction", "0.2"]  # fmt: skip
    with pytest.raises(ValueError, match=rf"1 of 12 images cannot be read \(cannot decode image file {re.escape(victim)}"):
        example["main"](flags)
    assert not (tmp_path / "out").exists()
    for name in ("a/1.png", "b/2.png", "b/4.png"):
        (root / name).write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"3 of 12 image files cannot be read: cannot decode image file .*a/1\.png.*"
                                         r"b/2\.png.*b/4\.png"):  # fmt: skip
        streaming_image_classification_data(root, num_channels=1, image_size=8, **fractions)


def test_verifying_names_the_files_refused_when_listed_with_those_that_fail_to_decode(tmp_path):
    """QA: a file PIL cannot open was refused when the folder was listed, and a file damaged past its header only by
    the next run, which read every image: when every image is read, one message names both, labeled or unlabeled;
    without the reading (--no_verify_images) the listing still refuses what it finds, before any training."""
    import argparse

    from diffusion_classifiers.data import add_data_args, streaming_data_from_args

    root = _image_folder_of_two_classes(tmp_path / "data")
    (root / "a" / "junk.png").write_bytes(b"not an image")
    cut = root / "b" / "3.png"
    cut.write_bytes(cut.read_bytes()[:60])  # the header still reads
    parser = add_data_args(argparse.ArgumentParser(), streaming=True, unlabeled=True)
    parser.add_argument("--seed", type=int, default=0)
    flags = ["--dataset", str(root), "--num_channels", "1", "--image_size", "8"]
    both = (r"^2 of 13 images cannot be read \(cannot decode image file .*a/junk\.png: .*; "
            r"cannot decode image file .*b/3\.png")
    for unlabeled in ([], ["--unlabeled"]):
        with pytest.raises(ValueError, match=both):
            streaming_data_from_args(parser.parse_args(flags + unlabeled))
        with pytest.raises(ValueError, match=r"^cannot decode image file .*a/junk\.png"):  # one file: its own error
            streaming_data_from_args(parser.parse_args(flags + unlabeled + ["--no_verify_images"]))
    # the files refused when listed are left out of splits carved as if they could be read
    unreadable = []
    splits = streaming_image_classification_data(root, 1, 8, unreadable=unreadable)
    assert [path for path, _ in unreadable] == [str(root / "a" / "junk.png")]
    (root / "a" / "junk.png").write_bytes((root / "a" / "0.png").read_bytes())
    readable = streaming_image_classification_data(root, 1, 8)
    for name in splits:
        assert [splits[name]._path(i) for i in range(len(splits[name]))] == [
            readable[name]._path(i) for i in range(len(readable[name])) if "junk" not in readable[name]._path(i)
        ]


@pytest.mark.parametrize("script", ["unet_features_train.py", "score_sde_train.py", "rc_dit_train.py"])
def test_scripts_refuse_a_wrong_output_dir_or_checkpoint_before_reading_every_image(tmp_path, script):
    import runpy

    from .conftest import REPO_ROOT

    root = _image_folder_of_two_classes(tmp_path / "data")
    unreadable = root / "a" / "0.png"
    unreadable.write_bytes(unreadable.read_bytes()[:60])  # the image check would refuse this, after reading them all
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model_index.json").write_text("{}")
    example = runpy.run_path(str(REPO_ROOT / "examples" / script), run_name="example")
    flags = ["--dataset", str(root), "--streaming", "--num_channels", "1", "--image_size", "8",
             "--max_train_steps", "1", "--val_fraction", "0.2", "--test_fraction", "0.2"]  # fmt: skip
    reads = []
    original = StreamingImages.read_every_image
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StreamingImages, "read_every_image", lambda *a, **k: reads.append(1) or original(*a, **k))
        with pytest.raises(FileExistsError, match="already holds another run's model_index.json"):
            example["main"](flags + ["--output_dir", str(taken)])
        with pytest.raises(FileNotFoundError, match="no checkpoint folder 'checkpoint-7'"):
            example["main"](flags + ["--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", "checkpoint-7"])
        assert reads == []
        with pytest.raises(ValueError, match="images cannot be read"):  # the flags are right: then the images
            example["main"](flags + ["--output_dir", str(tmp_path / "new")])
    assert reads
    assert (taken / "model_index.json").read_text() == "{}"


def test_an_unlabeled_folder_at_any_depth_is_read_whole_for_label_free_training(tmp_path):
    """A pool of unlabeled images, flat or in dated subfolders, was refused ("expected class subfolders"); put in one
    class folder, it lost 30% to val and test, which the U-Net trainer never reads. `--unlabeled` reads it whole."""
    import runpy

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.cli import main
    from diffusion_classifiers.data.split_record import (
        changed_split_args,
        image_fingerprints,
        read_split_record,
        recorded_train_fingerprints,
        resolve_split_args,
        trained_on_unlabeled_pool,
    )

    from .conftest import REPO_ROOT

    root = tmp_path / "pool"
    for index, name in enumerate(["a.png", "2026-01/b.png", "2026-01/deep/c.png", ".hidden/d.png"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (12, 10), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"image folder .*pool: skipped 1 of its files, neither images nor DICOM"):
        in_memory = load_image_classification_data(str(root), image_size=8, unlabeled=True)
    assert set(in_memory) == {"train"} and len(in_memory["train"]) == 3  # the hidden folder's image skipped
    with pytest.warns(UserWarning, match="skipped 1 of its files"):
        streamed = streaming_image_classification_data(root, num_channels=1, image_size=8, unlabeled=True)["train"]
    torch.testing.assert_close(torch.stack([streamed[i][0] for i in range(3)]), in_memory["train"].images, rtol=0, atol=0)
    (tmp_path / "list.csv").write_text("path,label\npool/a.png,x\n")
    for source in ("digits", str(tmp_path / "list.csv")):
        with pytest.raises(ValueError, match=r"unlabeled: expected an image folder"):
            load_image_classification_data(source, unlabeled=True)
        with pytest.raises(ValueError, match=r"unlabeled: expected an image folder"):
            streaming_image_classification_data(source, num_channels=1, unlabeled=True)
    with pytest.raises(ValueError, match=r"image folder .*empty: no image or DICOM files found"):
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        load_image_classification_data(str(tmp_path / "empty"), unlabeled=True)
    # fractions would carve nothing from a pool trained on whole: refused before any file is listed, not ignored
    carving = r"unlabeled: every image of the folder is trained on .*: val_fraction 0.3 only choose\(s\) how splits"
    with pytest.raises(ValueError, match=carving):
        load_image_classification_data(str(tmp_path / "no_such_folder"), unlabeled=True, val_fraction=0.3)
    with pytest.raises(ValueError, match=carving):
        streaming_image_classification_data(root, num_channels=1, unlabeled=True, val_fraction=0.3)

    example = runpy.run_path(str(REPO_ROOT / "examples" / "unet_features_train.py"), run_name="example")
    flags = ["--dataset", str(root), "--unlabeled", "--image_size", "8", "--unet_preset", "tiny", "--max_train_steps", "1",
             "--num_sample_images", "0"]  # fmt: skip
    for streaming in ([], ["--streaming", "--num_channels", "1"]):
        output_dir = tmp_path / f"unet{len(streaming)}"
        example["main"](flags + streaming + ["--output_dir", str(output_dir)])
        assert recorded_train_fingerprints(output_dir) == set(image_fingerprints(in_memory["train"].images))
    # QA: its record claimed a carving (0.1 / 0.2) that never happened, and a probe's --val_fraction was warned about
    assert read_split_record(output_dir)["unlabeled"] is True
    assert changed_split_args(output_dir, val_fraction=0.25) == {}
    carving = resolve_split_args(output_dir, val_fraction=0.25)
    assert (carving["val_fraction"], carving["test_fraction"]) == (0.25, 0.2)
    UNetFeatureClassifierPipeline.from_pretrained(output_dir).save_pretrained(tmp_path / "re_saved")
    assert read_split_record(tmp_path / "re_saved") == read_split_record(output_dir)
    # QA (plankton lab): the probe's pipeline, the one published, did not say its U-Net saw an unlabeled pool, and
    # --seed did not carve the labelled data (the pool's record carved nothing)
    labelled = _image_folder_of_two_classes(tmp_path / "labelled")
    main(["probe", "--unet_dir", str(output_dir), "--dataset", str(labelled), "--timesteps", "20", "--C", "1",
          "--seed", "3", "--val_fraction", "0.2", "--test_fraction", "0.2", "--output_dir", str(tmp_path / "probe")])
    probed = read_split_record(tmp_path / "probe" / "pipeline")
    assert probed["unlabeled_pool"] is True and "unlabeled" not in probed and probed["seed"] == 3
    assert trained_on_unlabeled_pool(tmp_path / "probe" / "pipeline") and not trained_on_unlabeled_pool(labelled)


def test_a_streamed_resume_that_reads_the_files_otherwise_is_refused_naming_how(tmp_path):
    """QA: resuming on other images, or the same read through other windows or another resize mode, trained on
    silently; a streamed run names how its files were read."""
    import runpy

    from .conftest import REPO_ROOT

    root = _image_folder_of_two_classes(tmp_path / "data")
    example = runpy.run_path(str(REPO_ROOT / "examples" / "unet_features_train.py"), run_name="example")
    flags = ["--dataset", str(root), "--streaming", "--num_channels", "1", "--image_size", "8", "--unet_preset", "tiny",
             "--num_sample_images", "0", "--checkpointing_steps", "1", "--output_dir", str(tmp_path / "out"),
             "--val_fraction", "0.2", "--test_fraction", "0.2"]  # fmt: skip
    example["main"](flags + ["--max_train_steps", "1"])
    resume = flags + ["--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    # refused before the data is read, naming the flag (the scripts record how images are read)
    with pytest.raises(ValueError, match=r"differs from the one that wrote it in --normalize_background False -> "
                                         r"True"):  # fmt: skip
        example["main"](resume + ["--normalize_background"])
    example["main"](resume)  # read as before: it resumes


def test_a_ctrl_c_while_the_readers_fork_is_raised_once_they_have():
    """QA (session 58, Ctrl-C): pressed as "Reading every image" appeared with 2 DataLoader workers, it ran Python's
    handler in logging's at-fork callback, where CPython ignores exceptions, and training went on to the end."""
    import os
    import signal

    from diffusion_classifiers.data.streaming import _ctrl_c_after_fork

    # the handler a Python process starts with: a test run earlier in this worker may have left SIGINT ignored (then
    # nothing is held or raised, rightly), and this test failed where pytest-xdist put it after such a test
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_after_fork():
                os.kill(os.getpid(), signal.SIGINT)  # as during the fork: held, not raised here
                reached.append("the rest of the block")
        assert reached == ["the rest of the block"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with _ctrl_c_after_fork():  # none pressed: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_iterable_dataset_is_refused_by_name():
    """QA (session 58, a datasets user): `load_dataset(..., streaming=True)` gave an IterableDatasetDict that failed on
    `len()`, and an IterableDataset was read as a dict of splits (its first row's keys)."""
    import datasets

    from diffusion_classifiers.data import streaming_image_classification_data

    rows = datasets.Dataset.from_dict({"image": [np.zeros((8, 8), dtype=np.uint8)] * 4, "label": [0, 1, 0, 1]})
    for source in (rows.to_iterable_dataset(), datasets.IterableDatasetDict({"train": rows.to_iterable_dataset()})):
        with pytest.raises(ValueError, match=r"expected a path or a datasets.Dataset/DatasetDict, got .*Iterable"):
            streaming_image_classification_data(source, image_size=8, num_channels=1)


class _HandlerSeen(torch.utils.data.Dataset):
    """What `read_every_image`'s workers see of the Ctrl-C handler, as its rows (`(index, None, fingerprint)`)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return 4

    def __getitem__(self, index):
        import signal

        return index, None, str(signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def test_the_readers_workers_keep_pythons_own_ctrl_c_handler(monkeypatch):
    """Third read (session 58): forked while the Ctrl-C was held, a worker kept the holding handler for its life."""
    import datasets

    from diffusion_classifiers.data import StreamingImages, streaming

    rows = datasets.Dataset.from_dict({"image": [np.zeros((8, 8), dtype=np.uint8)] * 4, "label": [0, 1, 0, 1]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(names=["a", "b"])}))
    monkeypatch.setattr(streaming, "_ReadOnce", _HandlerSeen)
    images = StreamingImages(rows, image_size=8, num_channels=1)
    assert images.read_every_image(num_workers=1, progress_bar=False)[1] == ["True"] * 4

"""benchmarks/plankton_accuracy.py's choices: the U-Net feature for the shift chosen on val by the shift's own
few-shot protocol, the CNN's step budget per label regime, the hypercolumn features, the presets, the probes
fitted once however many regimes choose on the same labels and runs of several seeds merged. No training."""

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers.data import LabeledImages
from diffusion_classifiers.models import unet_config

from .conftest import REPO_ROOT, shared_data

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import gpu_carry_plankton  # noqa: E402
import plankton_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


def test_the_shift_feature_is_the_one_whose_val_classes_prototypes_separate():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(6)
    labels = torch.cat([labels, torch.tensor([4])])  # a class with one val image cannot be cross-validated
    noise = torch.randn(len(labels), 4, generator=generator)
    separable = noise * 0.1 + torch.nn.functional.one_hot(labels, 5)[:, :4].float()  # a class per dimension
    grid = {("mean", "mid_block", 25): noise, ("2x2", "mid_block", 25): separable}
    key, scores = plankton_accuracy.choose_shift_feature(grid, labels, num_episodes=2, seed=0)
    assert key == ("2x2", "mid_block", 25)
    assert scores["2x2/mid_block/25"] == 1.0 and scores["mean/mid_block/25"] < 0.6


def test_no_shift_feature_is_chosen_when_no_two_val_classes_have_two_images():
    grid = {("mean", "mid_block", 25): torch.randn(4, 3)}
    labels = torch.tensor([0, 0, 1, 2])
    assert plankton_accuracy.choose_shift_feature(grid, labels, num_episodes=1, seed=0) == (None, {})


def test_packed_images_read_as_the_png_files_they_replace(tmp_path):
    """The GPU suite reads NDSB packed (`gpu_carry_plankton.py pack`) instead of writing and decoding 30,000 PNGs:
    the images, labels and class names must be those the PNG class folders would give."""
    from PIL import Image

    flowcam = shared_data("plankton_flowcam_demo", "images")
    gpu_carry_plankton.pack(16, flowcam, tmp_path / "carry")
    images, labels, names = plankton_accuracy.list_images(tmp_path / "carry" / gpu_carry_plankton.PACKED, 5)
    for row, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "png" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{row:04d}.png")
    files, file_labels, file_names = plankton_accuracy.list_images(tmp_path / "png")
    contract = plankton_accuracy.preprocessing(dataclasses.replace(plankton_accuracy.PRESETS["gpu"], image_size=16))
    packed = plankton_accuracy.read_images(images, labels, names, contract)
    decoded = plankton_accuracy.read_images(files, file_labels, file_names, contract)
    assert torch.equal(packed.images, decoded.images) and torch.equal(packed.labels, decoded.labels)
    assert packed.class_names == decoded.class_names == sorted(p.name for p in flowcam.iterdir() if p.is_dir())
    assert len(packed) == 5 * len(names)  # at most 5 a class, evenly spaced, as from the folders


def image_folder(root, counts: dict) -> Path:
    """`counts[name]` small PNGs in each class folder `root/<name>` (dark squares on white)."""
    from PIL import Image

    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (12, 10), 255).save(root / name / f"{i:03d}.png")
    return root


def library_listing(root):
    """What the library's training loader reads of a folder (every split pooled), as sorted (file, class name) pairs."""
    from diffusion_classifiers.data import streaming_image_classification_data

    splits = streaming_image_classification_data(root, num_channels=1, image_size=8, check_files=False)
    return sorted(
        (row["image"]["path"], split.class_names[row["label"]]) for split in splits.values() for row in split.dataset
    )


def benchmark_listing(root):
    files, labels, names = plankton_accuracy.list_class_folders(root)
    assert list(labels) == sorted(labels)  # class by class, as evenly_spaced_per_class reads them
    return sorted((str(f), names[label]) for f, label in zip(files, labels))


def test_the_benchmark_reads_the_image_folder_the_library_reads(tmp_path):
    """The QA's trees: a macOS AppleDouble `._x.jpg` crashed the run (the library skips dot-files), images in a
    nested folder were silently dropped (the library refuses them), and the FlowCam demo's root (`images/` +
    `splits/`, which the library reads) was refused."""
    junk = image_folder(tmp_path / "junk", {"a": 3, "b": 2})
    (junk / "a" / "._000.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (junk / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (junk / "b" / "notes.txt").write_text("not an image")
    assert benchmark_listing(junk) == library_listing(junk)
    assert len(benchmark_listing(junk)) == 5

    nested = image_folder(tmp_path / "nested", {"a": 3, "b": 2})
    image_folder(nested / "a", {"2024-06": 2})
    with pytest.raises(ValueError, match=r"class folder .*nested/a contains the folder '2024-06'; expected image files"):
        plankton_accuracy.list_class_folders(nested)

    flowcam = shared_data("plankton_flowcam_demo")
    listed = benchmark_listing(flowcam)
    assert listed == library_listing(flowcam) and len(listed) == 105  # every split's images, pooled
    files, labels, names = plankton_accuracy.list_class_folders(flowcam, images_per_class=2)
    assert names == (flowcam / "splits" / "classes.txt").read_text().split()
    assert list(labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # class by class, at most 2 of each


def test_two_regimes_of_the_same_images_are_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    """With one image of each class at least, 1% and 2% of 6 images a class are both that one image."""
    root = image_folder(tmp_path / "data", {"a": 6, "b": 6})
    budget = dataclasses.replace(plankton_accuracy.PRESETS["quick"], images_per_class=None)
    args = types.SimpleNamespace(
        data_path=root, budget=budget, val_fraction=0.2, test_fraction=0.3, seed=0, label_fractions=[0.02, 0.01]
    )  # fmt: skip
    monkeypatch.setattr(plankton_accuracy, "read_images", lambda *args: pytest.fail("decoded"))
    with pytest.raises(ValueError, match=r"the '2%' regime selects the same 2 train labels as the '1%' regime; .*"
                       r"other's\): give --label_fractions"):  # fmt: skip
        plankton_accuracy.load_splits(args)


def test_a_reused_unet_trained_on_images_read_otherwise_is_refused_before_any_image_is_read(tmp_path, monkeypatch, capsys):
    """The QA's case: a U-Net trained with black padding and no background normalisation, reused for this run's
    white-padded, background-normalised images."""
    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.data import ImagePreprocessing

    unet = UNet2DModel(**unet_config("tiny", 16))
    black = ImagePreprocessing(16, 1, resize_mode="pad", pad_value=-1.0)
    UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), preprocessing=black).save_pretrained(tmp_path / "u")
    data, shift = image_folder(tmp_path / "data", {"a": 1}), image_folder(tmp_path / "shift", {"a": 1})
    argv = ["plankton_accuracy.py", "--quick", "--data", str(data), "--shift_data", str(shift), "--unet_dir", str(tmp_path / "u")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        plankton_accuracy.parse_args()
    assert "pad_value -1.0 (this run: 1.0); normalize_background False (this run: True)" in capsys.readouterr().err


def test_the_cnn_trains_for_its_epochs_but_never_fewer_than_its_minimum_steps():
    cpu = plankton_accuracy.PRESETS["cpu"]
    assert cpu.cnn_steps_for(21_824) == 6_820  # 20 passes over all labels, batch 64
    assert cpu.cnn_steps_for(258) == cpu.cnn_steps == 1_400  # 1% of the labels: 81 steps would be too few


def test_the_one_hour_preset_is_the_cpu_run_with_fewer_strengths_parts_side_by_side_and_no_hypercolumn_probe():
    cpu, hour = plankton_accuracy.PRESETS["cpu"], plankton_accuracy.PRESETS["cpu_1h"]
    assert cpu.hypercolumn_probe and not hour.hypercolumn_probe
    assert set(hour.probe_C) < set(cpu.probe_C)
    assert (min(hour.probe_C), max(hour.probe_C)) == (min(cpu.probe_C), max(cpu.probe_C))  # the same range, coarser
    assert cpu.raw_pixel_Cs == cpu.probe_C and max(hour.raw_pixel_Cs) <= min(hour.probe_C)
    assert (cpu.workers, hour.workers) == (1, 2)
    unchanged = dict(probe_C=cpu.probe_C, hypercolumn_probe=True, raw_pixel_probe_C=None, workers=1)
    assert dataclasses.replace(hour, **unchanged) == cpu
    assert plankton_accuracy.BUDGET_SECONDS["cpu_1h"] == 60 * 60


def test_under_a_ddpm_time_cap_simclr_trains_the_steps_the_ddpm_reached(monkeypatch, capsys):
    from concurrent.futures import Future

    gpu = plankton_accuracy.PRESETS["gpu"]
    assert gpu.train_minutes and gpu.workers == 1
    args = types.SimpleNamespace(budget=gpu, seed=0)
    arm = Future()
    arm.set_result({"ddpm_steps": 1234})
    assert plankton_accuracy.as_many_steps_as_ddpm(args, arm).budget.train_steps == 1234
    assert args.budget.train_steps == gpu.train_steps  # the U-Net arm's options are left as they were
    loaded = Future()
    loaded.set_result({"ddpm_steps": None})  # a U-Net read from --unet_dir: the preset's steps
    assert plankton_accuracy.as_many_steps_as_ddpm(args, loaded).budget.train_steps == gpu.train_steps
    uncapped = types.SimpleNamespace(budget=plankton_accuracy.PRESETS["cpu_1h"])
    assert plankton_accuracy.as_many_steps_as_ddpm(uncapped, arm) is uncapped  # no cap: the preset's steps, no wait

    monkeypatch.setattr(sys, "argv", ["plankton_accuracy.py", "--preset", "gpu", "--workers", "2"])
    with pytest.raises(SystemExit):
        plankton_accuracy.parse_args()
    assert "--train_minutes: expected a positive number with one worker" in capsys.readouterr().err


def tiny_run_data() -> "plankton_accuracy.RunData":
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 3
    images = (labels[:, None, None, None].float() - 1) * 0.5 + 0.2 * torch.randn(24, 1, 8, 8, generator=generator)
    split = LabeledImages(images.clamp(-1, 1), labels, ["a", "b", "c"])
    subsets = {"all": torch.arange(24), "5%": torch.arange(0, 24, 4), "50%": torch.arange(0, 24, 2)}
    return plankton_accuracy.RunData({"train": split, "val": split, "test": split}, torch.arange(0, 24, 3), subsets, split)


def test_each_finished_part_is_kept_in_a_partial_record_until_the_results_are_written(tmp_path):
    from concurrent.futures import Future

    partial = plankton_accuracy.PartialResults(tmp_path / "plankton_accuracy_gpu.json")
    done, failed, pending = Future(), Future(), Future()
    done.set_result({"regimes": {"all": {"accuracy": 0.5}}, "feature": ("2x2", "up_blocks.1", 25)})
    failed.set_exception(RuntimeError("a part that failed"))
    for name, future in {"unet": done, "simclr": failed, "raw_pixels": pending}.items():
        partial.track(name, future)
    record = json.loads((tmp_path / "plankton_accuracy_gpu.partial.json").read_text())
    assert record == {"partial": True, "parts": {"unet": {"regimes": {"all": {"accuracy": 0.5}}, "feature": ["2x2", "up_blocks.1", 25]}}}
    pending.set_result({"wall_seconds": {"raw_pixel_probe": 1.0}})  # a worker's part, finished later
    assert list(json.loads(partial.path.read_text())["parts"]) == ["unet", "raw_pixels"]
    partial.remove()
    assert not partial.path.exists()
    plankton_accuracy.PartialResults(None).track("unet", done)  # quick runs write nothing
    assert list(tmp_path.iterdir()) == []


def test_the_run_data_a_worker_reads_is_the_run_data_saved(tmp_path):
    data, path = tiny_run_data(), str(tmp_path / "run_data.safetensors")
    data.save(path)
    loaded = plankton_accuracy.RunData.load(path, contract=None)
    assert list(loaded.subsets) == ["all", "5%", "50%"] and loaded.grid_regime == data.grid_regime == "50%"
    assert all(torch.equal(loaded.subsets[r], rows) for r, rows in data.subsets.items())
    assert torch.equal(loaded.balanced, data.balanced)
    for name, images in {**data.splits, "shift": data.shift}.items():
        read = loaded.shift if name == "shift" else loaded.splits[name]
        assert torch.equal(read.images, images.images) and torch.equal(read.labels, images.labels)
        assert read.class_names == images.class_names


def test_cnns_trained_side_by_side_in_worker_processes_are_the_ones_trained_in_this_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # the workers import the benchmark
    data = tiny_run_data()
    budget = dataclasses.replace(plankton_accuracy.PRESETS["quick"], cnn_steps=3, train_batch_size=8, cnn_widths=(4, 8))
    args = types.SimpleNamespace(budget=budget, cnn_learning_rate=1e-2, seed=0, device="cpu")
    threads, chosen = torch.get_num_threads(), {}
    torch.set_num_threads(1)  # as each worker: the same sums in the same order
    try:
        for workers in (1, 2):
            work_dir = str(tmp_path / f"workers_{workers}")
            with plankton_accuracy.part_runner(workers, data, work_dir) as submit:
                futures = {s: submit(plankton_accuracy.train_cnn, args, "all", s, f"{work_dir}/{s}") for s in ("natural", "balanced")}
                runs = {s: future.result() for s, future in futures.items()}
            _, predictions, info = plankton_accuracy.cnn_regime(args, data, "all", runs, work_dir, "cpu")
            chosen[workers] = predictions, info
    finally:
        torch.set_num_threads(threads)
    (in_process, info), (side_by_side, worker_info) = chosen[1], chosen[2]
    assert torch.equal(in_process, side_by_side)
    assert worker_info == info and set(info["runs"]) == {"natural", "balanced"}


def test_a_hypercolumn_is_every_blocks_feature_at_one_pooling_and_timestep_in_forward_order():
    grid = {
        ("2x2", "down_blocks.0", 25): torch.full((3, 4), 0.0),
        ("2x2", "mid_block", 25): torch.full((3, 8), 1.0),
        ("2x2", "mid_block", 100): torch.full((3, 8), 2.0),
        ("mean", "mid_block", 25): torch.full((3, 2), 3.0),
    }
    columns = plankton_accuracy.grid_with_hypercolumns(grid)
    all_blocks = plankton_accuracy.ALL_BLOCKS
    assert set(columns) - set(grid) == {("2x2", all_blocks, 25)}  # one block is no hypercolumn
    expected = torch.cat([grid[("2x2", "down_blocks.0", 25)], grid[("2x2", "mid_block", 25)]], 1)
    assert torch.equal(columns[("2x2", all_blocks, 25)], expected)


def test_the_hypercolumn_of_images_is_the_concatenation_of_their_block_features():
    torch.manual_seed(0)
    unet, scheduler = UNet2DModel(**unet_config("tiny", 8)).eval(), DDPMScheduler()
    budget = plankton_accuracy.PRESETS["quick"]
    features = plankton_accuracy.UNetFeatures(unet, scheduler, budget, seed=0)
    images = torch.rand(3, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size) * 2 - 1
    column = features.of("val", images, ("2x2", plankton_accuracy.ALL_BLOCKS, 50))
    blocks = features.extractor.block_names
    expected = torch.cat([features.of("val", images, ("2x2", block, 50)) for block in blocks], 1)
    torch.testing.assert_close(column, expected)


def test_the_hypercolumn_probe_reads_every_block_at_the_chosen_pooling_and_timestep_and_chooses_its_views():
    torch.manual_seed(0)
    unet, scheduler = UNet2DModel(**unet_config("tiny", 8)).eval(), DDPMScheduler()
    budget = plankton_accuracy.PRESETS["quick"]
    features = plankton_accuracy.UNetFeatures(unet, scheduler, budget, seed=0)
    labels = torch.arange(12) % 3
    images = torch.rand(12, 1, 8, 8) * 0.2 + labels[:, None, None, None] * 0.5 - 0.6
    split = types.SimpleNamespace(images=images, labels=labels, num_classes=3, class_names=["a", "b", "c"])
    splits, rows = {"train": split, "val": split, "test": split}, torch.arange(12)
    scorer = lambda predictions: {"num_predictions": len(predictions)}  # noqa: E731
    result = plankton_accuracy.hypercolumn_probe(
        features, splits, {"10%": rows, "all": rows}, ("mean", "mid_block", 50), "10%", budget, scorer
    )
    assert result["num_predictions"] == 12 and result["feature"].startswith("mean/all_blocks/50")
    assert set(result["views_val_accuracy_macro_f1"]) == {"upright", "dihedral"} and result["val"]["C"] == 1.0


def test_views_are_chosen_by_their_val_score_and_a_tie_keeps_the_image_as_it_is():
    assert plankton_accuracy.choose_views({None: 0.5, "dihedral": 0.6}.get) == ("dihedral", {"upright": 0.5, "dihedral": 0.6})
    assert plankton_accuracy.choose_views({None: (0.5, 0.2), "dihedral": (0.5, 0.2)}.get)[0] is None


def test_a_function_averaged_over_views_is_the_mean_over_the_eight_turned_batches():
    images = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 3, 3)
    corner = lambda x: x[:, :, 0, 0]  # noqa: E731: the 8 views put each of the 4 corners there twice
    averaged = plankton_accuracy.mean_over_views(corner, images, "dihedral", batch_size=1)
    torch.testing.assert_close(averaged, images[:, :, ::2, ::2].flatten(1).mean(1, keepdim=True))
    assert torch.equal(plankton_accuracy.mean_over_views(corner, images, None, batch_size=1), corner(images))


def test_a_regime_choosing_on_labels_already_probed_fits_nothing_twice(monkeypatch):
    generator = torch.Generator().manual_seed(0)

    def split(size):
        labels = torch.arange(size) % 3
        images = labels[:, None].float() + 0.1 * torch.randn(size, 4, generator=generator)
        return types.SimpleNamespace(images=images, labels=labels, num_classes=3, class_names=["a", "b", "c"])

    splits = {"train": split(30), "val": split(12), "test": split(12)}
    subsets = {"10%": torch.arange(12), "all": torch.arange(30)}
    fitted = []
    fit_probe = plankton_accuracy.fit_probe

    def counted_fit_probe(features, splits, rows, *args, **kwargs):
        fitted.append(len(rows))
        return fit_probe(features, splits, rows, *args, **kwargs)

    monkeypatch.setattr(plankton_accuracy, "fit_probe", counted_fit_probe)
    features_of = lambda name, images, views: images if views is None else images.flip(1)  # noqa: E731
    fits = {}
    for regime in ("10%", "all"):  # 'all' chooses its views on the 10% labels, as the 10% regime does
        result = plankton_accuracy.probe_choosing_views(
            features_of, splits, subsets, regime, "10%", [1.0], ("f", 0), None, fits
        )
        assert result["predictions"].shape == (12,)
    assert sorted(fitted) == [12, 12, 30]  # each view on the 10% labels, then the chosen one on all labels


class KeyedFeatures:
    """Features by (pool, block, t) as `UNetFeatures.at` gives them: the images themselves at blocks named
    "informative", noise of their shape elsewhere."""

    def at(self, key):
        def features_of(name, images, views):
            noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(len(images)))
            return images if key[1] == "informative" else noise

        return features_of


def test_with_all_labels_the_pair_is_the_best_on_val_of_the_grids_best_few_refitted_on_all_labels():
    generator = torch.Generator().manual_seed(0)

    def split(size):
        labels = torch.arange(size) % 3
        images = labels[:, None].float() + 0.1 * torch.randn(size, 4, generator=generator)
        return types.SimpleNamespace(images=images, labels=labels, num_classes=3, class_names=["a", "b", "c"])

    splits, subsets, fits = {"train": split(30), "val": split(30), "test": split(12)}, {"all": torch.arange(30)}, {}
    grid_favourite, runner_up = ("mean", "noise", 25), ("2x2", "informative", 100)
    key, scores = plankton_accuracy.all_labels_feature(KeyedFeatures(), splits, subsets, [grid_favourite, runner_up], [1.0], fits)
    assert key == runner_up and list(scores) == ["mean/noise/25", "2x2/informative/100"]
    assert scores["2x2/informative/100"] == (1.0, 1.0) and scores["mean/noise/25"][0] < 0.7
    assert set(fits) == {("all", None, "mean", ("noise", 25)), ("all", None, "2x2", ("informative", 100))}
    tied = ("mean", "informative", 25)
    assert plankton_accuracy.all_labels_feature(KeyedFeatures(), splits, subsets, [tied, runner_up], [1.0], fits)[0] == tied


def recorded_run(path, seed: int, unet_f1: float, flowcam_unet: float, preset: str = "cpu_1h") -> str:
    """A results file as a full run writes it, with every figure `--merge` reads."""
    metrics = lambda value: {"accuracy": value, "macro_f1": value, "balanced_accuracy": value, "tail_macro_f1": value}  # noqa: E731
    scores = lambda value: {"long_tailed": metrics(value), "balanced": metrics(value)}  # noqa: E731
    regimes = {
        regime: {"num_train_labels": 10, "unet_feature": "mean/mid_block/25", "unet_probe": scores(unet_f1),
                 "simclr_probe": scores(0.3), "cnn": scores(0.4)}
        for regime in ("all", "10%", "1%")
    }  # fmt: skip
    shift = {method: {"mean_accuracy": accuracy} for method, accuracy in [("unet", flowcam_unet), ("cnn", 0.6), ("simclr", 0.5)]}
    figures = {
        "budget": {"preset": preset, "train_steps": 350, "ddpm_final_loss": 0.04 + seed},
        "regimes": regimes, "flowcam_shift": shift, "wall_seconds": {"total": 1000.0 + seed},
        "targets": plankton_accuracy.targets(regimes, shift, 1000.0 + seed, 3600.0),
    }  # fmt: skip
    record = {"command": f"python plankton_accuracy.py --seed {seed}", "environment": {"date_utc": "now"}, "figures": figures}
    path.write_text(json.dumps(record))
    return str(path)


def test_runs_of_several_seeds_merge_into_means_and_spreads_with_the_targets_on_the_means(tmp_path):
    paths = [recorded_run(tmp_path / "a.json", 0, 0.5, 0.7), recorded_run(tmp_path / "b.json", 1, 0.44, 0.5)]
    merged = plankton_accuracy.merge_runs(paths)
    assert merged["seeds"] == [0, 1]
    assert merged["mean"]["regimes"]["all"]["unet_probe"]["long_tailed"]["macro_f1"] == pytest.approx(0.47)
    assert merged["std"]["flowcam_shift"]["unet"]["mean_accuracy"] == pytest.approx(0.1)
    all_labels = merged["targets"]["all_labels_probe_minus_cnn_macro_f1_points"]
    assert all_labels["value"] == pytest.approx(7.0) and all_labels["per_seed"] == pytest.approx([10.0, 4.0])
    assert all_labels["met"] and all_labels["met_on_seeds"] == "2 of 2"
    flowcam = merged["targets"]["flowcam_unet_minus_cnn_few_shot_accuracy_points"]  # +10 and -10: met on one seed
    assert flowcam["value"] == pytest.approx(0.0, abs=1e-9) and flowcam["met_on_seeds"] == "1 of 2"
    assert "ddpm_final_loss" not in merged["budget"]


def test_runs_of_another_preset_or_of_one_seed_twice_are_refused(tmp_path):
    first = recorded_run(tmp_path / "a.json", 0, 0.5, 0.7)
    with pytest.raises(ValueError, match="one budget"):
        plankton_accuracy.merge_runs([first, recorded_run(tmp_path / "b.json", 1, 0.5, 0.7, preset="cpu")])
    with pytest.raises(ValueError, match="one run per seed"):
        plankton_accuracy.merge_runs([first, recorded_run(tmp_path / "c.json", 0, 0.4, 0.7)])

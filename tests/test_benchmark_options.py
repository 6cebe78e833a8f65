"""The accuracy benchmarks' shared data options (benchmarks/_common.py): quick sizing that adapts to small splits,
few-label regimes with at least k images of every class, class names and the positive class. No training."""

import argparse
import json
import sys

import numpy as np
import pytest
import torch

from diffusion_classifiers.data import ImagePreprocessing, LabeledImages, few_label_indices

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import _common  # noqa: E402
import targets_table  # noqa: E402
import unet_features_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


def labeled(counts, size: int = 4) -> LabeledImages:
    """`counts[c]` images of class c (class-valued pixels), so a subset's images still match its labels."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = (labels.float() / len(counts))[:, None, None, None].expand(-1, 1, size, size).contiguous()
    return LabeledImages(images, labels, [f"class_{c}" for c in range(len(counts))])


def write_npz(path, counts=(30, 10), names=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)[:, None]
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return str(path)


def parse(argv, **options):
    parser = _common.add_data_options(_common.base_parser("test"), "default.npz", **options)
    args = parser.parse_args(argv)
    _common.check_data_options(parser, args)
    return args


# --------------------------------------------------------------------------------------------------
# Quick sizing
# --------------------------------------------------------------------------------------------------


def test_quick_sizes_are_capped_at_a_small_split():
    # The case: a val split of 78 images and a quick size of 150 (a fraction of 150 / 78 = 1.923).
    splits = {"train": labeled([300, 100]), "val": labeled([60, 18]), "test": labeled([5, 3])}
    sizes = {"train": 200, "val": 150, "test": 150}
    assert _common.capped_sizes(splits, sizes) == {"train": 200, "val": 78, "test": 8}
    subsets = _common.subsample_splits(splits, sizes, seed=0)
    assert len(subsets["val"]) == 78 and len(subsets["test"]) == 8  # a small split is kept whole
    assert torch.equal(subsets["val"].labels, splits["val"].labels)
    # The large split is a stratified subset of the size asked: 3:1 classes, 150 + 50 images.
    assert torch.bincount(subsets["train"].labels).tolist() == [150, 50]
    assert torch.equal(subsets["train"].images[:, 0, 0, 0] * 2, subsets["train"].labels.float())


def test_subsample_splits_is_seeded_and_leaves_unnamed_splits():
    splits = {"train": labeled([300, 100]), "val": labeled([60, 18])}
    first, second = (_common.subsample_splits(splits, {"train": 40}, seed=3) for _ in range(2))
    assert torch.equal(first["train"].labels, second["train"].labels)
    assert first["val"] is splits["val"]


# --------------------------------------------------------------------------------------------------
# Few-label regimes
# --------------------------------------------------------------------------------------------------


def test_one_percent_keeps_at_least_k_images_of_every_class():
    labels = torch.cat([torch.zeros(3000), torch.ones(150), torch.full((3,), 2)]).long()
    # QA: a regime holding all of a class's images was not said
    with pytest.warns(UserWarning, match=r"--min_labels_per_class 5: class\(es\) \{'c': 3\} have no more train images "
                                         r"than that, so the '1%', '10%' regime\(s\) take all of them"):
        subsets = _common.few_label_subsets(labels, [0.01, 0.1], min_per_class=5, seed=0, class_names=["a", "b", "c"])
    assert list(subsets) == ["all", "1%", "10%"]
    counts = {regime: torch.bincount(labels[index], minlength=3).tolist() for regime, index in subsets.items()}
    # 1%: round(30) = 30, round(1.5) = 2 -> raised to 5, the 3-image class whole; 10%: 300, 15, 3.
    assert counts == {"all": [3000, 150, 3], "1%": [30, 5, 3], "10%": [300, 15, 3]}
    assert set(subsets["1%"].tolist()) <= set(subsets["10%"].tolist())  # one seed: the regimes are nested


def test_fraction_names_keep_their_digits():
    labels = torch.arange(1000) % 2
    assert list(_common.few_label_subsets(labels, [0.005, 0.25], 1, seed=0)) == ["all", "0.5%", "25%"]


def test_regimes_selecting_the_same_images_are_refused_naming_them_the_labels_and_the_flag():
    """Two fractions lifted to the --min_labels_per_class floor select the same images (the run crashed after all
    the U-Net work when their CNNs shared a folder); a floor above every class's size turns a few-label regime into
    all the labels (reported as a few-label result). Both are refused before any training."""
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([30, 20, 3]))
    with pytest.raises(ValueError) as error:
        _common.few_label_subsets(labels, [0.01, 0.02], min_per_class=5, seed=0)
    assert str(error.value) == (
        "--label_fractions [0.01, 0.02]: the '2%' regime selects the same 13 train labels as the '1%' regime; expected "
        "each regime to select other images (its results would repeat the other's): lower --min_labels_per_class "
        "(now 5: every class keeps at least that many) or give --label_fractions that select other numbers of images"
    )
    with pytest.raises(ValueError, match=r"the '1%' regime selects the same 53 train labels as the 'all' regime; .*"
                       r"lower --min_labels_per_class \(now 50"):  # fmt: skip
        _common.few_label_subsets(labels, [0.01], min_per_class=50, seed=0)
    with pytest.raises(ValueError, match=r"the '10%' regime selects the same \d+ train labels as the '10%' regime"):
        _common.few_label_subsets(labels, [0.1, 0.1], min_per_class=1, seed=0)
    with pytest.raises(ValueError, match=r"other's\): give --label_fractions"):  # a fixed floor: no flag to lower
        _common.few_label_subsets(labels, [0.01, 0.02], min_per_class=1, seed=0, min_per_class_flag=None)


def test_the_unet_features_benchmark_refuses_regimes_of_the_same_images_before_any_training(monkeypatch):
    """The QA's command: `--quick --data digits --label_fractions 0.01 0.02` (both at the floor of 5 a class)."""
    argv = ["unet_features_accuracy.py", "--quick", "--data", "digits", "--label_fractions", "0.01", "0.02"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(unet_features_accuracy, "run_regimes", lambda *args: pytest.fail("trained"))
    with pytest.raises(ValueError, match="the '2%' regime selects the same 50 train labels as the '1%' regime"):
        unet_features_accuracy.main()


def test_each_regimes_cnn_trains_in_its_own_folder_named_by_the_regime(monkeypatch):
    """Two regimes of one size (other images) shared the folder `cnn_<size>`: the second CNN refused it."""
    folders = []
    record = lambda args, splits, index, work_dir, device: folders.append(work_dir)  # noqa: E731
    monkeypatch.setattr(unet_features_accuracy, "cnn_figures", record)
    subsets = {"all": torch.arange(8), "1%": torch.tensor([0, 1]), "2%": torch.tensor([2, 3])}
    args = argparse.Namespace(parts=["cnn"])
    unet_features_accuracy.run_regimes(args, {}, subsets, "cpu", {}, "/work")
    assert folders == ["/work/cnn/all", "/work/cnn/1%", "/work/cnn/2%"]


def test_few_label_indices_min_per_class():
    labels = np.repeat([0, 1], [1000, 40])
    index = few_label_indices(labels, fraction=0.01, seed=1, min_per_class=8)
    assert np.bincount(labels[index]).tolist() == [10, 8]
    # Without min_per_class the rare class gets round(0.4) -> 1 image (the regression the issue reported).
    assert np.bincount(labels[few_label_indices(labels, fraction=0.01, seed=1)]).tolist() == [10, 1]
    with pytest.raises(ValueError, match="min_per_class: expected an integer >= 1, got 0"):
        few_label_indices(labels, fraction=0.01, min_per_class=0)


# --------------------------------------------------------------------------------------------------
# Options: data, class names, positive class, fractions, checkpoints, parts
# --------------------------------------------------------------------------------------------------


def test_options_parse(tmp_path):
    path = write_npz(tmp_path / "my_data.npz")
    args = parse(
        ["--data", path, "--class_names", "benign", "malignant", "--positive_class", "malignant",
         "--label_fractions", "0.01", "0.1", "--min_labels_per_class", "3", "--keep_checkpoint", str(tmp_path / "k"),
         "--parts", "b"],
        label_fractions=[0.01], checkpoint="examples/unet_features_train.py", parts=("a", "b"),
    )  # fmt: skip
    assert (args.class_names, args.positive_class) == (["benign", "malignant"], "malignant")
    assert (args.label_fractions, args.min_labels_per_class, args.parts) == ([0.01, 0.1], 3, ["b"])
    defaults = parse([], label_fractions=[0.01], checkpoint="examples/unet_features_train.py", parts=("a", "b"))
    assert (defaults.label_fractions, defaults.min_labels_per_class) == ([0.01], _common.MIN_LABELS_PER_CLASS)
    assert (defaults.parts, defaults.unet_dir, defaults.keep_checkpoint) == (["a", "b"], None, None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--label_fractions", "0.1", "1.5"], "--label_fractions: expected numbers strictly between 0 and 1, got 1.5"),
        (["--min_labels_per_class", "0"], "--min_labels_per_class: expected an integer >= 1, got 0"),
        (["--unet_dir", "{tmp}"], "--unet_dir: expected a folder saved by --keep_checkpoint"),
        (["--data", "{tmp}/missing.npz"], "--data: {tmp}/missing.npz does not exist"),
        (["--parts", "c"], "--parts: invalid choice: 'c'"),
    ],
)
def test_bad_options_are_refused_naming_the_flag(tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    with pytest.raises(SystemExit):
        parse(argv, label_fractions=[0.01], checkpoint="examples/unet_features_train.py", parts=("a", "b"))
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def tiny_unet(**config):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), **config,
    )  # fmt: skip


def summary_of(final_loss: float):
    """The training summary a benchmark's `train()` gives `trained_or_loaded_ddpm` with the U-Net and scheduler."""
    from diffusion_classifiers.training import TrainingSummary

    return TrainingSummary(10, resumed_from_step=0, num_processes=1, samples_per_process=[640], final_loss=final_loss)


def splits_read_as(contract: ImagePreprocessing, seed: int = 0) -> dict:
    """Train, val and test splits of 6 random images each, read as `contract` reads them."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(18, contract.num_channels, contract.image_size, contract.image_size, generator=generator) * 2 - 1
    return {
        name: LabeledImages(images[6 * i : 6 * i + 6], torch.tensor([0, 1] * 3), ["a", "b"], preprocessing=contract)
        for i, name in enumerate(("train", "val", "test"))
    }


def test_a_kept_diffusion_model_is_reloaded_instead_of_trained_and_refused_for_other_images(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    from diffusion_classifiers import UNetFeatureClassifierPipeline

    unet, folder = tiny_unet(), str(tmp_path / "kept")
    contract = ImagePreprocessing(8, 1)
    splits = splits_read_as(contract)
    keep = argparse.Namespace(keep_checkpoint=folder, unet_dir=None, seed=0)
    scheduler = DDPMScheduler(num_train_timesteps=10)
    trained = _common.trained_or_loaded_ddpm(keep, splits, lambda: (unet, scheduler, summary_of(0.5)))
    assert trained[2] == 0.5
    reuse = argparse.Namespace(keep_checkpoint=None, unet_dir=folder)
    loaded, scheduler, final_loss = _common.trained_or_loaded_ddpm(reuse, splits, lambda: pytest.fail("trained again"))
    assert final_loss is None and scheduler.config.num_train_timesteps == 10
    for name, tensor in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match=r"--unet_dir: .*kept holds a U-Net trained on images read otherwise .*: "
                       r"num_channels 1 \(this run: 3\); expected the same preprocessing"):  # fmt: skip
        _common.trained_or_loaded_ddpm(reuse, splits_read_as(ImagePreprocessing(8, 3)), lambda: pytest.fail("trained"))
    # what examples/unet_features_train.py saves (a classifier pipeline without a head) is read the same way
    trainer_saved = UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10), preprocessing=contract)
    trainer_saved.save_pretrained(tmp_path / "trained")
    reuse.unet_dir = str(tmp_path / "trained")
    loaded, scheduler, _ = _common.trained_or_loaded_ddpm(reuse, splits, lambda: pytest.fail("trained again"))
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in unet.state_dict().items())
    conditional = tiny_unet(num_class_embeds=2)  # what the Score-SDE trainer saves
    UNetFeatureClassifierPipeline(unet=conditional, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "sde")
    reuse.unet_dir = str(tmp_path / "sde")
    with pytest.raises(ValueError, match="sde holds a class-conditional U-Net"):
        _common.trained_or_loaded_ddpm(reuse, splits, lambda: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"trained holds an unconditional DDPM U-Net; expected a class-conditional"):
        _common.check_unet_dir(str(tmp_path / "trained"), contract, class_conditional=True)  # Score-SDE's reuse
    # a DDPMPipeline (what --keep_checkpoint kept before), as a v0.1.0 trainer's folder, records no contract: the
    # one its pipeline loads with is assumed (the U-Net's size and channels, stretched, black padding), with a warning
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "ddpm")
    reuse.unet_dir = str(tmp_path / "ddpm")
    with pytest.warns(UserWarning, match=r"ddpm records no preprocessing contract \(saved before contracts were\)"):
        loaded, _, _ = _common.trained_or_loaded_ddpm(reuse, splits, lambda: pytest.fail("trained again"))
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in unet.state_dict().items())
    with pytest.raises(ValueError, match=r"ddpm holds a U-Net trained on images read otherwise .*: pad_value -1.0 \(this run: 1.0\)"):
        with pytest.warns(UserWarning, match="records no preprocessing contract"):
            _common.trained_or_loaded_ddpm(reuse, splits_read_as(ImagePreprocessing(8, 1, pad_value=1.0)), lambda: pytest.fail("trained"))
    v010 = REPO_ROOT / "tests" / "fixtures" / "v0.1.0" / "unet_features"  # a v0.1.0 trainer's folder
    with pytest.warns(UserWarning, match="records no preprocessing contract"):
        _common.check_unet_dir(str(v010), ImagePreprocessing(**_v010_size_and_channels(v010)))


def test_a_reused_model_trained_on_the_runs_val_or_test_images_is_refused(tmp_path):
    """QA: a U-Net trained on every image of a folder, reused with --unet_dir, scored its own test images (every
    target "met"); a kept model now records its training images, and a reuse is refused if it saw val or test."""
    from diffusers import DDPMScheduler

    contract = ImagePreprocessing(8, 1)
    splits, folder = splits_read_as(contract), str(tmp_path / "kept")
    leaky = {**splits, "train": LabeledImages(torch.cat([splits["train"].images, splits["test"].images[:2]]),
                                              torch.tensor([0, 1] * 4), ["a", "b"], preprocessing=contract)}
    keep = argparse.Namespace(keep_checkpoint=folder, unet_dir=None, seed=0)
    scheduler = DDPMScheduler(num_train_timesteps=10)
    _common.trained_or_loaded_ddpm(keep, leaky, lambda: (tiny_unet(), scheduler, summary_of(0.5)))
    reuse = argparse.Namespace(keep_checkpoint=None, unet_dir=folder)
    with pytest.raises(ValueError, match=r"2 of 6 images of the test split of this run's data .* are images the model"):
        _common.trained_or_loaded_ddpm(reuse, splits, lambda: pytest.fail("trained"))
    _common.trained_or_loaded_ddpm(reuse, splits_read_as(contract, seed=1), lambda: pytest.fail("trained"))  # others


def _v010_size_and_channels(folder):
    config = json.loads((folder / "unet" / "config.json").read_text())
    return {"image_size": config["sample_size"], "num_channels": config["in_channels"]}


def test_a_reused_unet_trained_on_images_read_otherwise_is_refused_naming_each_field(tmp_path):
    """The QA's case: a U-Net trained on black-padded images without background normalisation, reused for images
    padded white with the background normalised (the plankton contract), was accepted: only size and channels were
    compared."""
    from diffusers import DDPMScheduler

    from diffusion_classifiers import UNetFeatureClassifierPipeline

    black = ImagePreprocessing(8, 1, resize_mode="pad", pad_value=-1.0)
    scheduler = DDPMScheduler(num_train_timesteps=10)
    UNetFeatureClassifierPipeline(unet=tiny_unet(), scheduler=scheduler, preprocessing=black).save_pretrained(tmp_path / "black")
    white = ImagePreprocessing(8, 1, resize_mode="pad", pad_value=1.0, normalize_background=True)
    with pytest.raises(ValueError) as error:
        _common.check_unet_dir(str(tmp_path / "black"), white)
    message = str(error.value)
    assert "pad_value -1.0 (this run: 1.0); normalize_background False (this run: True)" in message
    differences = message.split("reads them: ")[1].split("; expected")[0]
    assert "resize_mode" not in differences and "image_size" not in differences
    stretched = ImagePreprocessing(16, 3)  # every field but the background differs
    with pytest.raises(ValueError, match=r"image_size 8 \(this run: 16\); num_channels 1 \(this run: 3\); "
                       r"resize_mode 'pad' \(this run: 'stretch'\)"):  # fmt: skip
        _common.check_unet_dir(str(tmp_path / "black"), stretched)
    _common.check_unet_dir(str(tmp_path / "black"), ImagePreprocessing(8, 1, resize_mode="pad"))  # the same: accepted


def test_the_plankton_benchmark_refuses_a_folder_without_a_kept_model(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import plankton_accuracy
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["plankton_accuracy.py", "--unet_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        plankton_accuracy.parse_args()
    needed = "model_index.json, unet/config.json, scheduler/scheduler_config.json"
    expected = f"--unet_dir: expected a folder saved by --keep_checkpoint or the U-Net trainer (with {needed}), got {tmp_path}"
    assert expected in capsys.readouterr().err


def test_keep_checkpoint_without_the_part_that_trains_the_diffusion_model_is_refused(tmp_path, capsys, monkeypatch):
    """QA: `--parts cnn --keep_checkpoint DIR` was accepted and kept nothing (no diffusion model is trained)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import score_sde_accuracy
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    kept = str(tmp_path / "kept")
    for module, parts, message in [
        (unet_features_accuracy, "cnn", "--keep_checkpoint: keeps the diffusion model, which --parts cnn does not"),
        (score_sde_accuracy, "reference", "which --parts reference does not train"),
    ]:
        monkeypatch.setattr(sys, "argv", ["benchmark.py", "--parts", parts, "--keep_checkpoint", kept])
        with pytest.raises(SystemExit):
            module.parse_args()
        assert message in capsys.readouterr().err
    data = write_npz(tmp_path / "my_data.npz")
    argv = ["benchmark.py", "--data", data, "--parts", "unet_features", "--keep_checkpoint", kept]
    monkeypatch.setattr(sys, "argv", argv)
    assert unet_features_accuracy.parse_args().keep_checkpoint == kept


def test_a_loaded_unet_is_recorded_by_its_own_facts_and_the_preset_nearest_it_in_size(tmp_path):
    """QA: a run reusing a U-Net (`--unet_dir`) recorded this run's preset and steps as if they described it."""
    unet = tiny_unet()
    assert _common.loaded_unet_facts(str(tmp_path), unet, ["tiny", "small"]) == {
        "nearest_preset": "tiny", "loaded_block_out_channels": [8, 8], "loaded_training_summary": None,
    }  # fmt: skip
    (tmp_path / "training_summary.json").write_text(json.dumps({"global_step": 7}))
    assert _common.loaded_unet_facts(str(tmp_path), unet, ["small"])["loaded_training_summary"] == {"global_step": 7}


def test_quick_figures_are_marked_as_not_a_result():
    assert _common.figure_title("Label efficiency", quick=False) == "Label efficiency"
    assert _common.figure_title("Label efficiency", quick=True) == f"{_common.QUICK_FIGURE_MARK} Label efficiency"


def test_probe_C_defaults_to_the_shared_grid_and_refuses_a_bad_strength(capsys):
    def parse_probe_C(argv):
        parser = _common.add_data_options(_common.base_parser("test"), "default.npz")
        _common.add_probe_C_option(parser)
        args = parser.parse_args(argv)
        _common.check_data_options(parser, args)
        return args.probe_C

    assert parse_probe_C([]) == list(_common.PROBE_C)
    assert parse_probe_C(["--probe_C", "0.5", "2"]) == [0.5, 2.0]
    with pytest.raises(SystemExit):
        parse_probe_C(["--probe_C", "1", "0"])
    expected = "non-empty sequence of numbers with 0 < C < inf, got --probe_C=[1.0, 0.0]"
    assert f"expected --probe_C as a number or a {expected}" in capsys.readouterr().err


def test_load_benchmark_data_names_classes_and_checks_the_positive_class(tmp_path):
    path = write_npz(tmp_path / "my_data.npz")
    splits = _common.load_benchmark_data(path, ["benign", "malignant"], "benign")
    assert splits["train"].class_names == ["benign", "malignant"]
    assert torch.bincount(splits["test"].labels).tolist() == [30, 10]
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['benign', 'malignant'\]"):
        _common.load_benchmark_data(path, ["benign", "malignant"], "tumour")
    three = write_npz(tmp_path / "three.npz", counts=(10, 10, 10))
    with pytest.raises(ValueError, match="positive_class: expected a binary task, got 3 classes"):
        _common.load_benchmark_data(three, positive_class="1")


def test_results_are_keyed_by_the_dataset_name():
    assert _common.dataset_name("../shared/data/medmnist_pneumonia/pneumoniamnist.npz") == "pneumoniamnist"
    assert _common.dataset_name("/data/fashion_mnist") == "fashion_mnist"
    assert _common.dataset_name("/tmp/Blood-MNIST.v2.npz") == "blood_mnist"
    # QA: a full run on one's own --data replaced the benchmark's recorded result file
    own = argparse.Namespace(output=None, data="/tmp/plank6")
    expected = _common.RESULTS_DIR / "unet_features_accuracy_plank6.json"
    assert _common.results_path("unet_features_accuracy", own) == expected
    recorded = argparse.Namespace(output=None, data=None)
    assert _common.results_path("unet_features_accuracy", recorded) == _common.RESULTS_DIR / "unet_features_accuracy.json"


def test_a_kept_model_folder_is_checked_before_training(tmp_path, capsys):
    # QA: --keep_checkpoint replaced a Score-SDE model without a word, and a path under a file failed after training
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    (tmp_path / "labels.csv").write_text("path,label\n")
    for folder, message in [
        (tmp_path / "model", "exists and is not an empty folder; expected a new or empty one"),
        (tmp_path / "labels.csv" / "sub", "cannot be created"),
    ]:
        with pytest.raises(SystemExit):
            parse(["--keep_checkpoint", str(folder)], checkpoint=True)
        error = capsys.readouterr().err
        assert f"--keep_checkpoint: {folder}" in error and message in error
    assert parse(["--keep_checkpoint", str(tmp_path / "new")], checkpoint=True).keep_checkpoint == str(tmp_path / "new")


def test_a_full_run_checks_its_results_folder_before_any_work(tmp_path):
    """The results JSON and the figures beside it are written last: the folder of --output is created, or refused,
    when the run starts."""
    args = _common.base_parser("test").parse_args(["--output", str(tmp_path / "new" / "run.json")])
    _common.setup(args)
    assert (tmp_path / "new").is_dir()
    (tmp_path / "a-file").write_text("not a folder")
    args = _common.base_parser("test").parse_args(["--output", str(tmp_path / "a-file" / "run.json")])
    with pytest.raises(ValueError, match=r"--output .*a-file/run\.json: its folder cannot be created, .*a-file is a file"):
        _common.setup(args)
    (tmp_path / "results").mkdir()  # a folder given for the file: the run would fail when it writes its JSON
    args = _common.base_parser("test").parse_args(["--output", str(tmp_path / "results")])
    with pytest.raises(ValueError, match=r"--output .*results: expected a file, it is a folder"):
        _common.setup(args)


def test_the_environment_names_the_cpu_and_the_kernels_torch_runs():
    """Float results of a CPU run depend on the instruction set torch's kernels use: every record names it."""
    env = _common.environment(torch.device("cpu"))
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["cpu_model"], str) and env["cpu_model"]


def test_the_readme_targets_table_is_the_results_files():
    """The README's headline targets are copied from `benchmarks/results/` by a script, never by hand."""
    assert targets_table.main(["--check"]) == 0


def test_a_target_whose_met_contradicts_its_direction_is_refused():
    with pytest.raises(ValueError, match=r"x.json: target 'probe_error' records met=True for 0.5 against 0.1"):
        targets_table.check_direction("x", "probe_error", {"value": 0.5, "target": 0.1, "met": True})
    targets_table.check_direction("x", "probe_accuracy", {"value": 0.5, "target": 0.1, "met": True})
    # a target that records its direction is read by it, not by its name
    targets_table.check_direction("x", "probe_error", {"value": 0.5, "target": 0.1, "met": True, "higher_is_better": True})
    assert _common.target_entry(2.0, 3.0, higher_is_better=False) == {
        "value": 2.0, "target": 3.0, "met": True, "higher_is_better": False,
    }  # fmt: skip
    # QA: an AUC undefined on a test split without a class failed the run after its training
    assert _common.target_entry(None, 0.9) == {"value": None, "target": 0.9, "met": False, "higher_is_better": True}


def test_a_kept_model_stopped_while_saving_leaves_no_model_for_unet_dir(tmp_path):
    """QA (session 58, Ctrl-C): a benchmark killed after `model_index.json` was written, before the training images'
    fingerprints, left a folder `--unet_dir` reused without the check they allow; the model's marker now comes last."""
    from diffusers import DDPMScheduler

    from diffusion_classifiers import UNetFeatureClassifierPipeline

    def stopped(folder):
        pipe = UNetFeatureClassifierPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=10))
        pipe.save_pretrained(folder)
        raise KeyboardInterrupt  # before its data_splits.json

    with pytest.raises(KeyboardInterrupt):
        _common.keep_model(str(tmp_path / "kept"), stopped)
    assert list((tmp_path / "kept").iterdir()) == []  # no model_index.json beside part of a model

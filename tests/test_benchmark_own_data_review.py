"""The accuracy benchmarks pointed at one's own data, second review (QA): a plankton shift set too small for its
cross-validated few-shot protocol, or a copy of --data, is refused before any training; the label-efficiency title
names what is drawn; a kept U-Net keeps its training summary; the default results name tells data folders of one
name apart; the errors name the script's own flags. No training."""

import argparse
import sys

import numpy as np
import pytest
import torch

from .conftest import REPO_ROOT
from .test_benchmarks_own_data import write_npz

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import _common  # noqa: E402
import plankton_accuracy  # noqa: E402
import unet_features_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


def image_folder(root, counts: dict, shade: int = 0):
    """`counts[name]` small bright-field PNGs in each class folder `root/<name>` (a dark square on white, placed and
    shaded by its index, so no two images are alike)."""
    from PIL import Image

    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            image = Image.new("L", (12, 12), 255)
            image.paste(40 + 10 * c + shade, (i % 6, i // 6, i % 6 + 5, i // 6 + 5))
            image.save(root / name / f"{i:03d}.png")
    return root


def plankton_args(monkeypatch, *words):
    monkeypatch.setattr(sys, "argv", ["plankton_accuracy.py", *map(str, words)])
    return plankton_accuracy.parse_args()


# --------------------------------------------------------------------------------------------------
# 1. A shift set too small for the few-shot protocol is refused before any training
# --------------------------------------------------------------------------------------------------


def test_the_images_a_shift_class_needs_are_those_the_few_shot_protocol_takes():
    """5 folds and 5 shots: a class of 7 images leaves 5 in each fold's training part, one of 6 leaves 4."""
    assert plankton_accuracy.shift_images_needed() == 7
    generator = torch.Generator().manual_seed(0)
    for per_class, fits in ((7, True), (6, False)):
        labels = torch.arange(3).repeat_interleave(per_class)
        features = torch.randn(len(labels), 4, generator=generator) + 3 * labels[:, None]
        if fits:
            plankton_accuracy.few_shot_transfer(features, labels, 1, 0, protocols=("prototype",))
        else:
            with pytest.raises(ValueError, match="fewer than shots_per_class=5"):
                plankton_accuracy.few_shot_transfer(features, labels, 1, 0, protocols=("prototype",))


def test_a_shift_class_with_too_few_images_is_refused_in_parse_args_naming_it(tmp_path, monkeypatch, capsys):
    """QA: 3 or 5 FlowCam images a class failed in scikit-learn or the few-shot draw after the whole run."""
    data = image_folder(tmp_path / "data", {"a": 8, "b": 8})
    shift = image_folder(tmp_path / "shift", {"x": 7, "y": 5, "z": 3}, shade=5)
    with pytest.raises(SystemExit):
        plankton_args(monkeypatch, "--quick", "--data", data, "--shift_data", shift)
    error = capsys.readouterr().err
    assert f"--shift_data: {shift} has class(es) with too few images: {{'y': 5, 'z': 3}}; expected at least 7" in error
    assert "'x'" not in error
    shift_ok = image_folder(tmp_path / "shift_ok", {"x": 7, "y": 9}, shade=5)
    assert plankton_args(monkeypatch, "--quick", "--data", data, "--shift_data", shift_ok).shift_data == shift_ok


def test_the_shift_requirement_is_in_the_help(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        plankton_args(monkeypatch, "--help")
    assert "every class needs at least 7 images" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------------------------------
# 2. A copy of the shift set given as --data is refused by content before any training
# --------------------------------------------------------------------------------------------------


def test_a_copy_of_the_shift_set_given_as_data_is_refused_before_any_training(tmp_path, monkeypatch):
    """QA: a byte-identical copy of the FlowCam demo as --data passed (only the paths were compared), and the
    "shift" targets were measured on the models' own training images."""
    import shutil

    shift = image_folder(tmp_path / "shift", {"x": 7, "y": 7})
    copy = tmp_path / "copy"
    shutil.copytree(shift, copy)
    monkeypatch.setattr(plankton_accuracy, "part_runner", lambda *args: pytest.fail("trained"))
    plankton_args(monkeypatch, "--quick", "--data", copy, "--shift_data", shift)  # accepted by path: other folders
    with pytest.raises(ValueError, match=rf"--shift_data {shift}: 14 of its 14 images are images of --data {copy} "
                       r"\(by content, as read\), e.g. .*shift/x/000.png"):  # fmt: skip
        plankton_accuracy.main()
    other = image_folder(tmp_path / "other", {"x": 7, "y": 7}, shade=5)  # other images: the run goes on to train
    plankton_args(monkeypatch, "--quick", "--data", other, "--shift_data", shift)
    with pytest.raises(pytest.fail.Exception, match="trained"):
        plankton_accuracy.main()


# --------------------------------------------------------------------------------------------------
# 3. The label-efficiency plot is titled by what it draws
# --------------------------------------------------------------------------------------------------


def fake_regimes(args, splits, subsets, device, walls, work_dir):
    """`run_regimes` without training: every part's figures at chance."""
    scores = {"test_accuracy": 0.5, "test_macro_f1": 0.5, "test_auc": 0.5, "num_parameters": 10}
    probe = {**scores, "kmeans_label_free_test": {"accuracy": 0.5}, "kmeans_raw_pixels_test": {"accuracy": 0.5}}
    methods = {"probe": probe} if "unet_features" in args.parts else {}
    methods.update({"cnn": scores} if "cnn" in args.parts else {})
    return {r: {"num_train_labels": len(index), **methods} for r, index in subsets.items()}, None, {}


@pytest.mark.parametrize(
    "parts, title",
    [
        (["cnn"], "A supervised CNN on chest.npz: labels per class"),
        (["unet_features"], "Frozen U-Net features on chest.npz: labels per class"),
        (["unet_features", "cnn"], "Frozen U-Net features vs a supervised CNN on chest.npz: labels per class"),
    ],
)
def test_the_label_efficiency_plot_is_titled_by_the_methods_it_draws(parts, title, tmp_path, monkeypatch, capsys):
    """QA: a --parts cnn plot, of the CNN alone, was titled "Frozen U-Net features vs a supervised CNN on ..."."""
    data = write_npz(tmp_path / "chest.npz")
    drawn = {}
    monkeypatch.setattr(unet_features_accuracy, "run_regimes", fake_regimes)
    plot = lambda curves, path, title: drawn.update(title=title)  # noqa: E731
    monkeypatch.setattr(unet_features_accuracy, "plot_label_efficiency", plot)
    argv = ["unet_features_accuracy.py", "--data", data, "--parts", *parts, "--output", str(tmp_path / "out.json")]
    monkeypatch.setattr(sys, "argv", argv)
    unet_features_accuracy.main()
    assert drawn["title"] == title


# --------------------------------------------------------------------------------------------------
# 4. A kept U-Net keeps its training summary, which a reuse records
# --------------------------------------------------------------------------------------------------


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def read_8px_grey(seed: int = 0) -> dict:
    """Train, val and test splits of 6 random 8 px grey images each, read as the plankton benchmark's contract reads
    them (white padding, background normalised)."""
    from diffusion_classifiers.data import LabeledImages

    budget = plankton_accuracy.dataclasses.replace(plankton_accuracy.PRESETS["quick"], image_size=8)
    contract = plankton_accuracy.preprocessing(budget)
    images = torch.rand(18, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return {
        name: LabeledImages(images[6 * i : 6 * i + 6], torch.tensor([0, 1] * 3), ["a", "b"], preprocessing=contract)
        for i, name in enumerate(("train", "val", "test"))
    }


@pytest.mark.parametrize("module", [unet_features_accuracy, plankton_accuracy])
def test_a_kept_unet_keeps_its_training_summary_which_a_reuse_records(module, tmp_path, monkeypatch):
    """QA: unet_features_accuracy and plankton_accuracy --keep_checkpoint saved no training_summary.json (as
    score_sde_accuracy does), so a --unet_dir rerun recorded loaded_training_summary None."""
    from diffusers import DDPMScheduler

    from diffusion_classifiers.training import TrainingSummary

    summary = TrainingSummary(7, 0, 1, [224], final_loss=0.25, max_train_steps=7)
    unet = tiny_unet()
    monkeypatch.setattr(module, "train_ddpm_unet", lambda *args, **kwargs: (unet, DDPMScheduler(), summary))
    splits, kept = read_8px_grey(), tmp_path / "kept"
    args = argparse.Namespace(
        keep_checkpoint=str(kept), unet_dir=None, seed=0, quick=True, learning_rate=1e-3, max_train_steps=7,
        train_batch_size=32, unet_preset="tiny", budget=plankton_accuracy.PRESETS["quick"],
    )  # fmt: skip
    trained = module.train_unet(args, splits, str(tmp_path / "work"))
    assert trained[2] == 0.25 and (module is unet_features_accuracy or trained[3] == 7)
    facts = _common.loaded_unet_facts(str(kept), unet, ["tiny"])
    assert facts["loaded_training_summary"]["global_step"] == 7
    assert facts["loaded_training_summary"]["final_loss"] == 0.25


# --------------------------------------------------------------------------------------------------
# 5. The default results name tells data folders of one generic name apart
# --------------------------------------------------------------------------------------------------


def test_data_folders_of_one_generic_name_write_results_files_of_their_own(monkeypatch, capsys):
    """QA: /lab/siteA/train and /lab/siteB/train both wrote plankton_accuracy_train.json, the second replacing the
    first; the --output help named only results/<benchmark>.json."""
    def path(data: str) -> str:
        return _common.results_path("plankton_accuracy", argparse.Namespace(output=None, data=data)).name

    assert path("/lab/siteA/train") == "plankton_accuracy_sitea_train.json"
    assert path("/lab/siteB/train") == "plankton_accuracy_siteb_train.json"
    assert path("/lab/northsea/images") == "plankton_accuracy_northsea_images.json"
    assert path("/lab/siteA/data.npz") == "plankton_accuracy_sitea_data.json"
    assert path("/lab/northsea") == "plankton_accuracy_northsea.json"  # a name of its own stays as it was
    assert path("/lab/my_data.npz") == "plankton_accuracy_my_data.json"
    with pytest.raises(SystemExit):
        plankton_args(monkeypatch, "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default results/<benchmark>.json, with --data results/<benchmark>_<data name>.json" in help_text
    assert "after its parent folder's name where it is a generic one" in help_text


# --------------------------------------------------------------------------------------------------
# 6. Errors as argparse's, naming the script's own flags and what was capped
# --------------------------------------------------------------------------------------------------


def test_an_image_size_the_unet_cannot_take_is_an_argparse_error_in_both_scripts(tmp_path, monkeypatch, capsys):
    """QA: unet_features_accuracy --image_size 10 gave a traceback (from unet_config) where plankton_accuracy gave a
    one-line argparse error."""
    data = write_npz(tmp_path / "chest.npz")
    monkeypatch.setattr(sys, "argv", ["unet_features_accuracy.py", "--quick", "--data", data, "--image_size", "10"])
    with pytest.raises(SystemExit):
        unet_features_accuracy.parse_args()
    unet_error = capsys.readouterr().err.strip().splitlines()[-1]
    folder = image_folder(tmp_path / "data", {"a": 8, "b": 8})
    with pytest.raises(SystemExit):
        plankton_args(monkeypatch, "--quick", "--data", folder, "--shift_data", folder, "--image_size", "10")
    plankton_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert unet_error.startswith("unet_features_accuracy.py: error: --image_size / --unet_preset: ")
    assert unet_error.split("error: ")[1] == plankton_error.split("error: ")[1]
    monkeypatch.setattr(sys, "argv", ["unet_features_accuracy.py", "--quick", "--data", data, "--image_size", "10",
                                      "--parts", "cnn"])  # fmt: skip
    assert unet_features_accuracy.parse_args().image_size == 10  # no U-Net: any size the CNN takes


def test_the_plankton_unet_dir_errors_name_the_flags_plankton_has(tmp_path, monkeypatch, capsys):
    """QA: a --unet_dir read otherwise was to be rerun with --resize_mode / --pad_value / --num_channels, and a
    leaky one was blamed on --unlabeled: flags plankton_accuracy does not have."""
    from diffusers import DDPMScheduler

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.data import ImagePreprocessing

    data = image_folder(tmp_path / "data", {"a": 8, "b": 8})
    shift = image_folder(tmp_path / "shift", {"x": 7, "y": 7}, shade=5)
    for name, contract in {"black": ImagePreprocessing(8, 1, resize_mode="pad"), "big": None}.items():
        budget = plankton_accuracy.dataclasses.replace(plankton_accuracy.PRESETS["quick"], image_size=8)
        contract = contract or plankton_accuracy.preprocessing(budget)
        pipe = UNetFeatureClassifierPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(), preprocessing=contract)
        pipe.save_pretrained(tmp_path / name)
        with pytest.raises(SystemExit):
            plankton_args(monkeypatch, "--quick", "--data", data, "--shift_data", shift, "--unet_dir", tmp_path / name)
        error = capsys.readouterr().err
        assert "--resize_mode" not in error and "--pad_value" not in error and "--num_channels" not in error
        if name == "black":  # another padding and background: no plankton flag reads them so
            assert "this benchmark has no flag to read images with another pad_value or normalize_background" in error
        else:  # only the size differs (8 px, --quick's 16)
            assert "image_size 8 (this run: 16); expected the same preprocessing: run with the options it was kept " \
                "with (--image_size), or train a U-Net" in " ".join(error.split())
    # a kept U-Net trained on images this run puts in val and test
    splits, kept = read_8px_grey(), tmp_path / "kept"
    leaky = {**splits, "train": splits["test"]}
    args = argparse.Namespace(keep_checkpoint=str(kept), unet_dir=None, seed=0)
    _common.trained_or_loaded_ddpm(args, leaky, lambda: (tiny_unet(), DDPMScheduler(), summary_of()))
    reuse = argparse.Namespace(keep_checkpoint=None, unet_dir=str(kept), seed=0)
    with pytest.raises(ValueError) as error:
        _common.trained_or_loaded_ddpm(reuse, splits, lambda: pytest.fail("trained"), plankton_accuracy.CARVING_FLAGS)
    message = str(error.value)
    assert "--unlabeled" not in message
    assert message.startswith(f"0 of 6 images of the val split and 6 of 6 images of the test split of this run's data "
                              f"(--unet_dir {kept}) are images the model was trained on")  # fmt: skip
    assert "rerun with the --data, --seed, --val_fraction, --test_fraction and --quick it was kept with" in message


def summary_of(final_loss: float = 0.5):
    from diffusion_classifiers.training import TrainingSummary

    return TrainingSummary(10, 0, 1, [640], final_loss=final_loss)


def test_quick_label_fractions_selecting_the_same_images_say_quick_caps_each_class(tmp_path):
    """QA: --quick --label_fractions 0.1 0.3 on 25-40 images a class was refused ("selects the same 8 train labels")
    without saying that --quick reads at most 8 images of each class."""
    root = image_folder(tmp_path / "data", {"a": 25, "b": 30, "c": 35})
    args = argparse.Namespace(
        data_path=root, budget=plankton_accuracy.PRESETS["quick"], val_fraction=0.1, test_fraction=0.2, seed=0,
        label_fractions=[0.1, 0.3],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"the '30%' regime selects the same .* --quick reads at most 8 images of each "
                       r"class of --data, which leaves 4 train images a class here"):  # fmt: skip
        plankton_accuracy.load_splits(args)


def test_the_few_label_target_says_which_fraction_it_compares():
    """QA: with several --label_fractions, few_labels_probe_minus_cnn_accuracy_points did not say which it used (the
    name stays: results files, the README's table and targets_table.py read it)."""
    scores = {"test_accuracy": 0.6, "test_auc": 0.6}
    probe = {**scores, "kmeans_label_free_test": {"accuracy": 0.5}, "kmeans_raw_pixels_test": {"accuracy": 0.5}}
    regimes = {
        regime: {"num_train_labels": n, "probe": probe, "cnn": {**scores, "test_accuracy": 0.5}}
        for regime, n in (("all", 100), ("1%", 10), ("10%", 20))
    }
    entry = unet_features_accuracy.targets(regimes, "1%", 60.0)["few_labels_probe_minus_cnn_accuracy_points"]
    assert entry["label_regime"] == "1%" and entry["num_train_labels"] == 10
    assert entry["value"] == pytest.approx(10.0) and entry["target"] == 5.0 and entry["met"] is True

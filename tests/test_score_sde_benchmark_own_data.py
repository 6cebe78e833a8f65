"""The Score-SDE accuracy benchmark (benchmarks/score_sde_accuracy.py) on one's own data (QA): a kept model saves how
its images were read and a reuse read otherwise is refused before any training, naming each difference; a loaded model
is recorded by what it is, not by this run's training flags; a reference set named as `--data` runs under its own key;
the reference set is read with the run's reading flags and the record says how each set was read. The U-Net training
is replaced by a tiny untrained class-conditional U-Net; what is scored is scored for real, at tiny sizes."""

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from diffusion_classifiers.data import LabeledImages
from diffusion_classifiers.training.loop import TrainingSummary

from .conftest import REPO_ROOT
from .test_benchmarks_own_data import shared_data_root  # noqa: F401 (a fixture)

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import _common  # noqa: E402
import score_sde_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))

# an untrained model's scores do not settle: the ELBO's early stop says so, which is not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore:early_stop_confidence")

PAD_WHITE = ["--resize_mode", "pad", "--pad_value", "1", "--normalize_background"]
# the binary protocol at its smallest: one ELBO setting, few timesteps, ODE steps and CNN steps
TINY = [
    "--quick", "--image_size", "8", "--weightings", "uniform", "--timestep_spacings", "even", "--elbo_timesteps", "4",
    "--timesteps_per_check", "2", "--elbo_val_images", "8", "--likelihood_val_images", "4",
    "--likelihood_test_images", "4", "--ode_steps", "2", "--cnn_steps", "2", "--pruning", "[[1, 2], [1, 1]]",
    "--multiclass_test_images", "6", "--batch_size", "64",
]  # fmt: skip


def bright_images(rng, labels, height: int, width: int, colour: bool = False, dark: bool = False) -> np.ndarray:
    """uint8 images `[N, H, W]` (`colour`: `[N, H, W, 3]`, tinted): a dark bar whose length is the class on a light
    field (`dark`: a light bar on a black field), plus a little noise."""
    images = np.full((len(labels), height, width), 20 if dark else 230, dtype=np.int16)
    for i, label in enumerate(labels):
        images[i, height // 3 : 2 * height // 3, 1 : 3 + 3 * int(label)] = 230 if dark else 30
    images = images + rng.integers(-10, 10, images.shape)
    if colour:
        images = np.stack([images, images * 0.9, images * 0.8], axis=-1)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_npz(path, counts=(8, 8), height: int = 8, width: int = 14) -> str:
    """A MedMNIST-style .npz of elongated bright-field grey images, train/val/test of `counts[c]` images of class c."""
    rng = np.random.default_rng(len(counts))
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)
        arrays[f"{split}_images"] = bright_images(rng, labels, height, width)
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return str(path)


def write_folder(root, classes=("a", "b", "c"), per_class: int = 10, colour: bool = True, dark: bool = False) -> str:
    """An image folder (<root>/<class>/<image>.png) of elongated 10x18 images, colour unless said."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(bright_images(rng, [c] * per_class, 10, 18, colour=colour, dark=dark)):
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return str(root)


def tiny_unet(num_classes: int, size: int = 8, channels: int = 1):
    from diffusers import UNet2DModel

    from diffusion_classifiers.models import unet_config

    torch.manual_seed(0)
    return UNet2DModel(**unet_config("tiny", size, channels, num_class_embeds=num_classes))


def fake_trainer(training, images, labels, preset, label_dropout, num_classes, class_balanced):
    """`train_score_sde_unet` without training: an untrained tiny U-Net for the images' size and channels."""
    from diffusers import DDPMScheduler

    unet = tiny_unet(num_classes, images.shape[-1], images.shape[1])
    summary = TrainingSummary(global_step=3, resumed_from_step=0, num_processes=1, samples_per_process=[6],
                              final_loss=0.5)  # fmt: skip
    return unet, DDPMScheduler(num_train_timesteps=100), summary


def never(what):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran")

    return fail


def parse(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["score_sde_accuracy.py", *argv])
    return score_sde_accuracy.parse_args()


def keep_model(tmp_path, data, monkeypatch, reading=()) -> str:
    """A model kept by the data part (`--keep_checkpoint`) of a run reading `data` with the flags `reading`."""
    kept = str(tmp_path / "kept")
    args = parse([*TINY, "--data", data, "--parts", "data", "--keep_checkpoint", kept, *reading], monkeypatch)
    splits = score_sde_accuracy.load_part_data(args, args.data_path)
    monkeypatch.setattr(score_sde_accuracy, "train_score_sde_unet", fake_trainer)
    score_sde_accuracy.train_unet(args, splits, 3, True, str(tmp_path / "work"), reusable=True)
    return kept


def run_main(argv, monkeypatch) -> dict:
    """`score_sde_accuracy.main()` of `argv`: the record's figures."""
    records = []
    monkeypatch.setattr(sys, "argv", ["score_sde_accuracy.py", *argv])
    monkeypatch.setattr(score_sde_accuracy, "report", lambda name, args, device, figures: records.append(figures))
    score_sde_accuracy.main()
    return records[0]


def fake_protocols(monkeypatch) -> list:
    """Replace both protocols by stubs that note `(part, source, splits)`; returns the notes."""
    calls = []

    def binary(args, splits, device, work_dir):
        calls.append(("data", args.data_path, splits))
        return {"part": "data"}

    def multiclass(args, source, splits, device, work_dir, steps, reusable):
        calls.append(("data" if reusable else "reference", source, splits))
        return {"part": "data" if reusable else "reference", "source": source}

    monkeypatch.setattr(score_sde_accuracy, "binary_protocol", binary)
    monkeypatch.setattr(score_sde_accuracy, "multiclass_protocol", multiclass)
    return calls


# --------------------------------------------------------------------------------------------------
# D2. A kept model saves how its images were read; a reuse read otherwise is refused before any training
# --------------------------------------------------------------------------------------------------


def test_a_kept_model_saves_how_its_images_were_read_and_scores_them_read_once(tmp_path, monkeypatch):
    """QA: a model kept with `--resize_mode pad --pad_value 1 --normalize_background` saved
    `{'image_size': 8, 'num_channels': 1, ...}` only: no resize mode, padding or background."""
    data = write_npz(tmp_path / "data" / "my_data.npz")
    kept = keep_model(tmp_path, data, monkeypatch, PAD_WHITE)
    saved = json.loads((tmp_path / "kept" / "model_index.json").read_text())["preprocessing"]
    assert (saved["image_size"], saved["num_channels"]) == (8, 1)
    assert (saved["resize_mode"], saved["pad_value"], saved["normalize_background"]) == ("pad", 1.0, True)
    summary = json.loads((tmp_path / "kept" / "training_summary.json").read_text())
    assert (summary["global_step"], summary["final_loss"]) == (3, 0.5)
    # the kept model's tensors (read once by the loader) are scored as they are, not background-normalised again:
    # the same figures as the pipeline without the contract, which reads them unchanged
    pipe = score_sde_accuracy.ScoreSDEClassifierPipeline.from_pretrained(kept)
    plain = score_sde_accuracy.ScoreSDEClassifierPipeline(pipe.unet, pipe.scheduler, class_names=pipe.class_names)
    args = parse([*TINY, "--data", data, *PAD_WHITE], monkeypatch)
    images = score_sde_accuracy.load_part_data(args, data)["test"].images[:4]
    elbo = dict(method="elbo", num_timesteps=2, seed=0)
    assert torch.equal(score_sde_accuracy.classify(pipe, images, **elbo).probs, plain(images, **elbo).probs)
    # and by the pipeline itself: its own tensors are not normalised a second time (since 2026-12-07)
    assert torch.equal(pipe(images, **elbo).probs, plain(images, **elbo).probs)


def test_a_reused_model_read_otherwise_is_refused_before_any_training_naming_each_difference(tmp_path, monkeypatch):
    """QA: a model kept with the default reading, reused with `--resize_mode pad --pad_value 1
    --normalize_background`, was accepted (rc 0) and its ELBO AUC fell from 0.93 to 0.60, though `--unet_dir`'s help
    says it is refused unless its saved preprocessing is this run's."""
    data = write_npz(tmp_path / "data" / "my_data.npz")
    kept = keep_model(tmp_path, data, monkeypatch)
    for name in ("train_score_sde_unet", "binary_protocol", "multiclass_protocol", "cnn_baseline"):
        monkeypatch.setattr(score_sde_accuracy, name, never(name))
    argv = [*TINY, "--data", data, "--parts", "data", "--unet_dir", kept, *PAD_WHITE]
    with pytest.raises(ValueError) as error:
        run_main(argv, monkeypatch)
    message = str(error.value)
    assert f"--unet_dir: {kept} holds a U-Net trained on images read otherwise than this run reads them: " in message
    assert "resize_mode 'stretch' (this run: 'pad'); pad_value -1.0 (this run: 1.0); normalize_background False " \
        "(this run: True); expected the same preprocessing" in message  # fmt: skip
    differences = message.split("reads them: ")[1].split("; expected")[0]
    assert "image_size" not in differences and "num_channels" not in differences  # the same: not named
    with pytest.raises(ValueError, match=r"image_size 8 \(this run: 16\)"):  # another size: named too
        run_main([*argv[:-len(PAD_WHITE)], "--image_size", "16"], monkeypatch)
    # read as it was kept: accepted, and the data part runs
    calls = fake_protocols(monkeypatch)
    args = parse([*TINY, "--data", data, "--parts", "data", "--unet_dir", kept], monkeypatch)
    assert list(score_sde_accuracy.run_parts(args, torch.device("cpu"), str(tmp_path / "work"))) == ["my_data"]
    assert [part for part, _, _ in calls] == ["data"]


# --------------------------------------------------------------------------------------------------
# D3. A loaded model is recorded by what it is, not by this run's training flags
# --------------------------------------------------------------------------------------------------


def test_a_loaded_model_is_recorded_by_what_it_is_not_by_this_runs_training_flags(tmp_path, monkeypatch):
    """QA: with `--unet_dir`, the record gave `{'preset': 'small', 'parameters': 270801, 'train_steps': 999, ...}`:
    this run's flags beside the tiny loaded model's parameter count."""
    data = write_npz(tmp_path / "data" / "my_data.npz")
    kept = keep_model(tmp_path, data, monkeypatch)
    monkeypatch.setattr(score_sde_accuracy, "train_score_sde_unet", never("U-Net training"))
    flags = ["--unet_preset", "small", "--train_steps", "999", "--label_dropout", "0.2", "--no-class_balanced"]
    figures = run_main([*TINY, "--data", data, "--parts", "data", "--unet_dir", kept, *flags], monkeypatch)
    unet = figures["my_data"]["unet"]
    assert unet["preset"] == "loaded (nearest preset by size: tiny)"
    assert unet["parameters"] == sum(p.numel() for p in tiny_unet(2).parameters())
    training = ("train_steps", "train_batch_size", "learning_rate", "use_ema", "label_dropout", "class_balanced")
    assert {key: unet[key] for key in training} == dict.fromkeys(training)
    assert unet["final_loss"] is None
    assert unet["loaded_block_out_channels"] == [16, 32, 32]
    assert unet["loaded_training_summary"]["global_step"] == 3  # what the kept model's training did
    assert (unet["loaded_from"], unet["kept_in"]) == (kept, None)
    assert set(figures["my_data"]["methods"]) == {"elbo", "likelihood", "cnn"}  # the loaded model was scored


# --------------------------------------------------------------------------------------------------
# D4. A reference set with the name of --data's runs under its own key
# --------------------------------------------------------------------------------------------------


def test_a_reference_set_named_as_the_data_runs_under_its_own_key(tmp_path, monkeypatch):
    """QA: `--data A/myplankton --reference_data B/myplankton` recorded one data set (the reference part was silently
    not run), though the record's budget said parts ['data', 'reference']."""
    data = write_npz(tmp_path / "a" / "my_data.npz")
    reference = write_npz(tmp_path / "b" / "my_data.npz", counts=(6, 6, 6))
    calls = fake_protocols(monkeypatch)
    args = parse([*TINY, "--data", data, "--reference_data", reference], monkeypatch)
    results = score_sde_accuracy.run_parts(args, torch.device("cpu"), str(tmp_path / "work"))
    assert list(results) == ["my_data", "my_data_reference"]
    assert results["my_data_reference"] == {"part": "reference", "source": reference}
    assert [(part, source) for part, source, _ in calls] == [("data", data), ("reference", reference)]
    assert calls[1][2]["train"].num_classes == 3
    methods = {"methods": {"elbo": {"accuracy": 0.5}, "cnn": {"accuracy": 0.6}}}
    targets = score_sde_accuracy.targets({"my_data_reference": methods}, 1.0)
    assert "my_data_reference_cnn_minus_elbo_accuracy_points" in targets


def test_the_default_runs_keep_their_results_keys(shared_data_root, tmp_path, monkeypatch):
    """The keys targets_table.py and the recorded results/score_sde_accuracy*.json use stay."""
    images = torch.zeros(4, 1, 8, 8)
    split = LabeledImages(images, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    splits = dict.fromkeys(("train", "val", "test"), split)
    monkeypatch.setattr(score_sde_accuracy, "load_benchmark_data", lambda *args, **kwargs: splits)
    fake_protocols(monkeypatch)
    args = parse(["--quick"], monkeypatch)
    results = score_sde_accuracy.run_parts(args, torch.device("cpu"), str(tmp_path))
    assert list(results) == ["pneumoniamnist", "fashion_mnist"]


# --------------------------------------------------------------------------------------------------
# D5. The reference set is read with the run's reading flags; the record says how each set was read
# --------------------------------------------------------------------------------------------------


def test_the_reference_set_is_read_with_the_runs_reading_flags(tmp_path, monkeypatch):
    """QA: with `--num_channels 1`, a colour reference set was read in colour (a 3-channel reference model) and the
    library warned to "state the channels ... (the scripts' --num_channels 1)", which was passed; nor were the resize
    mode, padding or background applied to it."""
    data = write_npz(tmp_path / "data" / "my_data.npz")
    reference = write_folder(tmp_path / "colour_scope")
    calls = fake_protocols(monkeypatch)
    args = parse([*TINY, "--data", data, "--reference_data", reference, "--num_channels", "1", *PAD_WHITE], monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*state the channels.*")
        score_sde_accuracy.run_parts(args, torch.device("cpu"), str(tmp_path / "work"))
    (_, _, data_splits), (part, _, reference_splits) = calls
    assert part == "reference" and reference_splits["train"].images.shape[1:] == (1, 8, 8)
    assert reference_splits["train"].preprocessing == data_splits["train"].preprocessing
    fit = {"resize_mode": "pad", "pad_value": 1.0, "normalize_background": True}
    assert reference_splits["train"].preprocessing.fit == fit


def test_a_reference_set_the_reading_flags_cannot_read_is_refused_before_training(tmp_path, monkeypatch):
    """A dark-field reference set with `--normalize_background` (for --data's bright-field images): refused, naming
    --reference_data and that it is read with this run's flags, before either part trains."""
    data = write_npz(tmp_path / "data" / "my_data.npz")
    dark = write_folder(tmp_path / "dark_scope", colour=False, dark=True)
    for name in ("train_score_sde_unet", "binary_protocol", "multiclass_protocol"):
        monkeypatch.setattr(score_sde_accuracy, name, never(name))
    args = parse([*TINY, "--data", data, "--reference_data", dark, *PAD_WHITE], monkeypatch)
    with pytest.raises(ValueError, match=rf"--reference_data {dark}, read with this run's reading flags: .*background"):
        score_sde_accuracy.run_parts(args, torch.device("cpu"), str(tmp_path / "work"))


def test_the_record_says_how_each_dataset_was_read(tmp_path, monkeypatch):
    """QA: the record's `data` read "8 px (bilinear, antialiased)" whatever the reading flags."""
    data = write_npz(tmp_path / "data" / "my_data.npz")
    reference = write_folder(tmp_path / "colour_scope")
    monkeypatch.setattr(score_sde_accuracy, "train_score_sde_unet", fake_trainer)
    argv = [*TINY, "--data", data, "--reference_data", reference, "--num_channels", "1", *PAD_WHITE]
    figures = run_main(argv, monkeypatch)
    read = "read at 8 px (pad, fill 1.0), 1 channel, background normalised to white"
    assert figures["my_data"]["data"].endswith(f", {read}")
    assert figures["colour_scope"]["data"].startswith(f"{reference}: {read}; stratified subsets: ")
    assert figures["colour_scope"]["unet"]["parameters"] == sum(p.numel() for p in tiny_unet(3).parameters())
    assert figures["budget"]["parts"] == ["data", "reference"]


def test_a_subset_that_would_lose_a_class_is_refused_before_any_training(tmp_path, monkeypatch):
    """Review: val and test holding 1 image of a class passed the load's check; the stratified val subset the ELBO
    chooses on dropped it, and the run failed after training (max over val AUCs that were all None)."""
    data = write_npz(tmp_path / "data" / "rare.npz", counts=(30, 1))
    monkeypatch.setattr(score_sde_accuracy, "train_score_sde_unet", never("training"))
    argv = [arg for arg in TINY if arg != "--quick"]  # no quick subset: the protocol's own
    with pytest.raises(ValueError, match=r"--elbo_val_images of val: its stratified subset of 8 of 31 images has no "
                                         r"image of class\(es\) \['1'\] \(images there: \{'1': 1\}\)"):
        run_main([*argv, "--data", data, "--parts", "data"], monkeypatch)

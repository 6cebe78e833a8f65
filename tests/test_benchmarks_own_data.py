"""The accuracy benchmarks pointed at one's own data (QA): the default run keeps the benchmark's own results name, a
quick run's record names no removed figure, the plankton shift is named after its data, dark-field plankton is
refused up front, class names without a train image are refused, the record ties a result to its code, and a flag
the run would ignore is refused. No training."""

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusion_classifiers
from diffusion_classifiers.data import LabeledImages

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import _common  # noqa: E402
import plankton_accuracy  # noqa: E402
import rc_dit_accuracy  # noqa: E402
import score_sde_accuracy  # noqa: E402
import unet_features_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


def write_npz(path, counts=(12, 12), size: int = 8) -> str:
    """A MedMNIST-style .npz with train/val/test splits of `counts[c]` images of class c."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)[:, None]
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def shared_data_root(tmp_path, monkeypatch):
    """A stand-in for ../shared/data holding the default data sets' paths (no images are read)."""
    root = tmp_path / "shared_data"
    (root / "medmnist_pneumonia").mkdir(parents=True)
    (root / "medmnist_pneumonia" / "pneumoniamnist.npz").write_bytes(b"")
    (root / "fashion_mnist").mkdir()
    monkeypatch.setattr(_common, "DATA_ROOT", root)
    return root


# --------------------------------------------------------------------------------------------------
# 1. The default data keeps the benchmark's own results name
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [unet_features_accuracy, score_sde_accuracy, rc_dit_accuracy])
def test_a_full_run_on_the_default_data_writes_the_benchmarks_own_results_file(module, shared_data_root, tmp_path, monkeypatch):
    """QA: a run without --data wrote results/<name>_pneumoniamnist.json, not the results/<name>.json that the
    README, the docstrings and targets_table.py read."""
    monkeypatch.setattr(sys, "argv", [f"{module.NAME}.py"])
    args = module.parse_args()
    assert _common.results_path(module.NAME, args) == _common.RESULTS_DIR / f"{module.NAME}.json"
    if module is not rc_dit_accuracy:  # the default data is still what is read and recorded
        assert args.data_path == str(shared_data_root / "medmnist_pneumonia" / "pneumoniamnist.npz")
    data = write_npz(tmp_path / "my_data.npz")
    monkeypatch.setattr(sys, "argv", [f"{module.NAME}.py", "--data", data])
    args = module.parse_args()
    assert _common.results_path(module.NAME, args) == _common.RESULTS_DIR / f"{module.NAME}_my_data.json"


# --------------------------------------------------------------------------------------------------
# 2. A quick run's record names no figure that is removed when it ends
# --------------------------------------------------------------------------------------------------


def test_figure_entries_of_a_quick_run_are_none_with_a_note(tmp_path):
    full = argparse.Namespace(quick=False)
    assert _common.figure_entries(full, plot=tmp_path / "run_plot.png") == {"plot": "run_plot.png"}
    quick = argparse.Namespace(quick=True)
    entries = _common.figure_entries(quick, plot=tmp_path / "a.png", grid=tmp_path / "b.png")
    assert entries == {"plot": None, "grid": None, "figures_kept": _common.QUICK_FIGURES_NOTE}


def fake_regimes(args, splits, subsets, device, walls, work_dir):
    """`run_regimes` of the CNN part without training: every regime scores 0.5."""
    scores = {"test_accuracy": 0.5, "test_macro_f1": 0.5, "num_parameters": 10}
    return {regime: {"num_train_labels": len(index), "cnn": scores} for regime, index in subsets.items()}, None, {}


def run_unet_features_main(argv, monkeypatch) -> dict:
    """`unet_features_accuracy.main()` of `argv`, its training replaced by `fake_regimes`: the record's figures."""
    records = []
    monkeypatch.setattr(sys, "argv", ["unet_features_accuracy.py", *argv])
    monkeypatch.setattr(unet_features_accuracy, "run_regimes", fake_regimes)
    monkeypatch.setattr(unet_features_accuracy, "report", lambda name, args, device, figures: records.append(figures))
    unet_features_accuracy.main()
    return records[0]


def test_a_quick_run_records_no_path_into_its_removed_temporary_folder(tmp_path, monkeypatch):
    """QA: a quick run's JSON named /tmp/benchmark-quick-xxxx/..._label_efficiency.png, a folder removed at exit."""
    data = write_npz(tmp_path / "my_data.npz", counts=(40, 40))
    argv = ["--quick", "--data", data, "--parts", "cnn", "--label_fractions", "0.2", "--resize_mode", "pad"]
    figures = run_unet_features_main(argv, monkeypatch)
    assert figures["label_efficiency_plot"] is None
    assert figures["dataset"]["preprocessing"]["resize_mode"] == "pad"  # QA: how the images were read, recorded
    assert figures["figures_kept"] == _common.QUICK_FIGURES_NOTE
    # the per-class counts of every regime list every class
    assert figures["few_label_regimes"]["labels_per_class"]["20%"] == [8, 8]


# --------------------------------------------------------------------------------------------------
# 3. The plankton shift is named after its data; the record names --data's classes
# --------------------------------------------------------------------------------------------------


def plankton_folder(root, classes=("copepod", "diatom"), per_class: int = 6, dark: bool = False, top: int = 4):
    """An image folder of 12x12 PNGs: a dark organism on a light field, or (`dark`) a light one on a black field,
    from row `top`."""
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.full((12, 12), 20 if dark else 235, dtype=np.uint8)
            image[top : top + 4, 3 + c : 9] = 230 if dark else 30
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return root


def test_the_shift_is_named_after_its_data_and_flowcam_by_default(tmp_path, monkeypatch):
    """QA: `--shift_data OTHER` named its targets and record keys flowcam_... whatever the shift data were."""
    assert plankton_accuracy.shift_name(None) == "flowcam"
    default = _common.DATA_ROOT / "plankton_flowcam_demo" / "images"
    assert plankton_accuracy.shift_name(str(default)) == "flowcam"
    assert plankton_accuracy.shift_name(".gpu_plankton/flowcam") == "flowcam"  # the GPU suite's copy of it
    assert plankton_accuracy.shift_name(str(tmp_path / "My-Scope")) == "my_scope"
    assert plankton_accuracy.shift_name(str(tmp_path / "my_scope" / "images")) == "my_scope"
    data = plankton_folder(tmp_path / "ndsb_like")
    shift = plankton_folder(tmp_path / "my_scope", classes=("a", "b"), per_class=7)  # the shift needs 7 a class
    monkeypatch.setattr(sys, "argv", ["plankton_accuracy.py", "--quick", "--data", str(data), "--shift_data", str(shift)])
    assert plankton_accuracy.parse_args().shift_name == "my_scope"


def plankton_record(path, seed: int, shift_name: str) -> str:
    metrics = {"accuracy": 0.5, "macro_f1": 0.5, "balanced_accuracy": 0.5, "tail_macro_f1": 0.5}
    scores = {"long_tailed": metrics, "balanced": metrics}
    regimes = {r: {"num_train_labels": 10, "unet_probe": scores, "simclr_probe": scores, "cnn": scores} for r in ("all", "10%")}
    shift = {method: {"mean_accuracy": 0.5 + 0.1 * seed} for method in ("unet", "cnn", "simclr")}
    figures = {
        "budget": {"preset": "cpu"}, "regimes": regimes, f"{shift_name}_shift": shift, "wall_seconds": {"total": 10.0},
        "targets": plankton_accuracy.targets(regimes, shift, 10.0, 3600.0, shift_name),
    }  # fmt: skip
    record = {"command": f"python plankton_accuracy.py --seed {seed}", "environment": {"date_utc": "now"}, "figures": figures}
    path.write_text(json.dumps(record))
    return str(path)


def test_the_shift_targets_and_merged_runs_carry_the_shift_data_name(tmp_path):
    paths = [plankton_record(tmp_path / f"{seed}.json", seed, "my_scope") for seed in (0, 1)]
    merged = plankton_accuracy.merge_runs(paths)
    assert "my_scope_unet_minus_cnn_few_shot_accuracy_points" in merged["targets"]
    assert not any(name.startswith("flowcam") for name in merged["targets"])
    assert "my_scope_shift" in merged["mean"]
    with pytest.raises(ValueError, match="one shift data set"):
        plankton_accuracy.merge_runs([paths[0], plankton_record(tmp_path / "2.json", 2, "flowcam")])
    # the recorded runs' names stay: targets named flowcam_... by default
    defaults = plankton_accuracy.targets(json.loads((tmp_path / "0.json").read_text())["figures"]["regimes"],
                                         {m: {"mean_accuracy": 0.5} for m in ("unet", "cnn", "simclr")}, 1.0, 2.0)
    assert "flowcam_unet_minus_simclr_few_shot_accuracy_points" in defaults


@pytest.mark.parametrize("fractions, few", [(("1%", "10%"), "10%"), (("30%", "5%"), "5%"), ((), None)])
def test_the_plankton_few_label_target_takes_10_percent_else_the_fewest_labels_run(fractions, few):
    """QA: `--label_fractions 0.3` had no few-label CNN target (only a regime named "10%" had one)."""
    metrics = {"accuracy": 0.5, "macro_f1": 0.5, "balanced_accuracy": 0.5, "tail_macro_f1": 0.5}
    scores = {"long_tailed": metrics, "balanced": metrics}
    regimes = {regime: {"unet_probe": scores, "simclr_probe": scores, "cnn": scores} for regime in ("all", *fractions)}
    shift = {method: {"mean_accuracy": 0.5} for method in ("unet", "cnn", "simclr")}
    chosen = [name for name in plankton_accuracy.targets(regimes, shift, 1.0, 2.0) if "labels_probe_minus_cnn" in name]
    assert chosen == ["all_labels_probe_minus_cnn_macro_f1_points"] + ([f"{few}_labels_probe_minus_cnn_macro_f1_points"]
                                                                        if few else [])  # fmt: skip


def test_the_plankton_record_names_the_classes_of_its_data():
    """The dataset block of a plankton record names --data's classes (QA: it gave their number only)."""
    main = inspect.getsource(plankton_accuracy.main)
    assert '"class_names": train.class_names' in main


# --------------------------------------------------------------------------------------------------
# 4. Dark-field images are refused by the plankton benchmark, naming what it is for
# --------------------------------------------------------------------------------------------------


def test_dark_field_plankton_is_refused_as_not_what_the_benchmark_reads(tmp_path, capsys, monkeypatch):
    """QA: dark-background data failed with the library's "leave normalize_background off", a flag the plankton
    benchmark does not have."""
    contract = plankton_accuracy.preprocessing(plankton_accuracy.PRESETS["quick"])
    files, labels, names = plankton_accuracy.list_class_folders(plankton_folder(tmp_path / "dark", dark=True))
    with pytest.raises(ValueError, match=r"--data /x: a dark-background image: .*bright-field grey plankton") as error:
        plankton_accuracy.read_images(files, labels, names, contract, "--data /x")
    assert "leave normalize_background off" not in str(error.value)
    bright = plankton_accuracy.list_class_folders(plankton_folder(tmp_path / "bright"))
    assert len(plankton_accuracy.read_images(*bright, contract)) == 12
    monkeypatch.setattr(sys, "argv", ["plankton_accuracy.py", "--help"])
    with pytest.raises(SystemExit):
        plankton_accuracy.parse_args()
    assert "bright-field grey plankton images" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------------------------------
# 5. Class names without a train image are refused before training
# --------------------------------------------------------------------------------------------------


def test_class_names_of_classes_with_no_train_image_are_refused(tmp_path):
    data = write_npz(tmp_path / "my_data.npz")
    with pytest.raises(ValueError, match=r"the train split has no image of class \['bag'\].*--class_names names 3"):
        _common.load_benchmark_data(data, ["tshirt", "trouser", "bag"])
    assert _common.load_benchmark_data(data, ["tshirt", "trouser"])["train"].class_names == ["tshirt", "trouser"]


def test_a_class_without_a_val_or_test_image_is_refused_before_training(tmp_path):
    """QA: a rare class of 1 image left the carved val and test splits without it; unet_features_accuracy trained
    for its whole budget, then failed on the test AUC, undefined for a split without a class."""
    from PIL import Image

    for name, count in (("common", 30), ("rare", 1)):
        (tmp_path / "mine" / name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.full((8, 8), 8 * index, dtype=np.uint8)).save(tmp_path / "mine" / name / f"{index}.png")
    with pytest.raises(ValueError, match=r"mine: the val split has no image of class \['rare'\] \(images in all "
                                         r"splits: \{'rare': 1\}\); expected every class in val and test"):
        _common.load_benchmark_data(str(tmp_path / "mine"), image_size=8)
    # review: 1 image of a class in val passed, then a --quick or capped subset of val dropped it
    splits = _common.load_benchmark_data(write_npz(tmp_path / "rare.npz", counts=(100, 1)))
    assert len(_common.subsample_splits(splits, {"val": 101}, seed=0)["val"]) == 101  # all of it: nothing lost
    with pytest.raises(ValueError, match=r"the val split: its stratified subset of 60 of 101 images has no image of "
                                         r"class\(es\) \['1'\] \(images there: \{'1': 1\}\)"):
        _common.subsample_splits(splits, {"val": 60}, seed=0)


def test_rc_dit_accuracy_reads_its_data_at_the_image_size_asked_for(tmp_path, monkeypatch, capsys):
    """QA: the README lists --image_size among the reading flags rc_dit_accuracy takes; it had none."""
    data = write_npz(tmp_path / "my_data.npz", counts=(12, 12), size=28)
    monkeypatch.setattr(sys, "argv", ["rc_dit_accuracy.py", "--quick", "--data", data, "--image_size", "16"])
    args = rc_dit_accuracy.parse_args()
    assert rc_dit_accuracy.load_splits(Path(data), args)["train"].images.shape[-2:] == (16, 16)
    recorded = inspect.getsource(rc_dit_accuracy.run_dataset)  # what run_dataset records without training
    assert '"path": str(path)' in recorded and '"preprocessing": splits["train"].preprocessing.to_dict()' in recorded
    monkeypatch.setattr(sys, "argv", ["rc_dit_accuracy.py", "--quick", "--data", data, "--image_size", "30"])
    with pytest.raises(SystemExit):
        rc_dit_accuracy.parse_args()
    assert "--image_size 30: expected a positive multiple of --encoder_patch_size (4) and of" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["rc_dit_accuracy.py", "--quick", "--data", data, "--image_size", "30",
                                      "--encoder_patch_size", "2"])  # fmt: skip
    with pytest.raises(SystemExit):  # review: the DiT's patch was checked only once the images were read
        rc_dit_accuracy.parse_args()
    assert "of the patch of --dit_size tiny (4)" in capsys.readouterr().err


def test_the_unet_features_benchmark_refuses_an_unlearnable_class_before_training(tmp_path, monkeypatch):
    """QA: accepted with a warning; the record's labels_per_class then listed 2 counts for 3 class names."""
    data = write_npz(tmp_path / "my_data.npz", counts=(40, 40))
    argv = ["--quick", "--data", data, "--parts", "cnn", "--label_fractions", "0.2", "--class_names", "a", "b", "c"]
    with pytest.raises(ValueError, match=r"no image of class \['c'\]"):
        run_unet_features_main(argv, monkeypatch)


# --------------------------------------------------------------------------------------------------
# 6. The record ties a result to its code
# --------------------------------------------------------------------------------------------------


def test_the_environment_names_the_library_version_and_the_git_commit(tmp_path):
    env = _common.environment(torch.device("cpu"))
    assert env["versions"]["diffusion_classifiers"] == diffusion_classifiers.__version__
    code = env["code"]
    if (REPO_ROOT / ".git").exists():
        assert len(code["git_commit"]) == 40 and isinstance(code["git_dirty"], bool)
    assert _common.code_state(tmp_path) == {"git_commit": None, "git_dirty": None}  # no git work tree


def test_the_record_names_the_code_checked_out_when_the_run_began(monkeypatch):
    """QA (a reproducibility audit): a run of hours recorded the commit checked out when it ended, one made while it
    ran; the record names the code and time of its start, and another commit at its end beside them."""
    states = iter([{"git_commit": "a" * 40, "git_dirty": False}, {"git_commit": "b" * 40, "git_dirty": True}])
    monkeypatch.setattr(_common, "code_state", lambda: next(states))
    monkeypatch.setattr(_common, "_RUN_START", {})
    started = _common.run_start()
    with pytest.warns(UserWarning, match=r"another commit was checked out while the benchmark ran"):
        env = _common.environment(torch.device("cpu"))
    assert env["code"] == started["code"] == {"git_commit": "a" * 40, "git_dirty": False}
    assert env["started_utc"] == started["started_utc"] <= env["date_utc"]
    assert env["code_changed_during_run"] == {"git_commit": "b" * 40, "git_dirty": True}


# --------------------------------------------------------------------------------------------------
# 7. A flag the run would ignore is refused
# --------------------------------------------------------------------------------------------------


def test_unet_dir_without_the_part_that_uses_it_is_refused(tmp_path, capsys, monkeypatch):
    """QA: `--parts cnn --unet_dir DIR` was accepted and DIR never read (--keep_checkpoint was refused)."""
    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        (tmp_path / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / name).write_text("{}")
    data = write_npz(tmp_path / "my_data.npz")
    for module, parts in [(unet_features_accuracy, "cnn"), (score_sde_accuracy, "reference")]:
        monkeypatch.setattr(sys, "argv", ["benchmark.py", "--data", data, "--parts", parts, "--unet_dir", str(tmp_path / "model")])
        with pytest.raises(SystemExit):
            module.parse_args()
        error = capsys.readouterr().err
        assert "--unet_dir: reuses" in error and f"--parts {parts} does not use" in error


@pytest.mark.parametrize("flag, value", [("--keep_checkpoint", "{tmp}/new_folder"), ("--unet_dir", "{tmp}/model"),
                                         ("--train_minutes", "1"), ("--timesteps", "10")])  # fmt: skip
def test_plankton_flags_of_the_unet_part_are_refused_without_it(flag, value, tmp_path, capsys, monkeypatch):
    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        (tmp_path / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / name).write_text("{}")
    data = plankton_folder(tmp_path / "data")
    shift = plankton_folder(tmp_path / "shift", classes=("a", "b"), per_class=7)
    argv = ["plankton_accuracy.py", "--quick", "--data", str(data), "--shift_data", str(shift), "--parts", "cnn",
            "raw_pixels", flag, value.format(tmp=tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        plankton_accuracy.parse_args()
    assert f"{flag}: for the U-Net part, which --parts cnn raw_pixels does not run" in capsys.readouterr().err


def test_a_plankton_run_of_some_parts_scores_those_methods_and_sets_their_targets(tmp_path, monkeypatch, capsys):
    """Issue 12's item 8, parts selectable in every accuracy benchmark: plankton_accuracy ran all four methods."""
    data = plankton_folder(tmp_path / "data", classes=("copepod", "diatom", "radiolarian"), per_class=10)
    shift = plankton_folder(tmp_path / "flowcam", classes=("a", "b"), per_class=7, top=1)  # other images than --data's
    argv = ["plankton_accuracy.py", "--quick", "--data", str(data), "--shift_data", str(shift), "--parts", "raw_pixels"]
    monkeypatch.setattr(sys, "argv", argv)
    plankton_accuracy.main()
    figures = json.loads(capsys.readouterr().out)["figures"]
    assert [m for m in figures["regimes"]["all"] if m != "num_train_labels"] == ["raw_pixel_probe"]
    assert list(figures["regimes"]["10%"]) == ["num_train_labels"]
    assert list(figures["flowcam_shift"]) == ["raw_pixels"] and figures["parameters"] == {}
    assert list(figures["targets"]) == ["wall_seconds_total"]  # no comparison has both of its methods
    assert figures["budget"]["parts_run"] == ["raw_pixels"]
    assert figures["budget"]["subsampling"] == "no model trains on the unlabeled images (--parts raw_pixels)"


def test_plankton_targets_compare_two_methods_only_where_both_ran():
    scores = {"long_tailed": {"accuracy": 0.6, "macro_f1": 0.5}}
    regimes = {r: {"num_train_labels": 10, "unet_probe": scores, "cnn": scores} for r in ("all", "10%")}
    shift = {"unet": {"mean_accuracy": 0.5}, "cnn": {"mean_accuracy": 0.4}, "raw_pixels": {"mean_accuracy": 0.3}}
    names = set(plankton_accuracy.targets(regimes, shift, 1.0, 2.0))
    assert names == {"all_labels_probe_minus_cnn_macro_f1_points", "10%_labels_probe_minus_cnn_macro_f1_points",
                     "flowcam_unet_minus_cnn_few_shot_accuracy_points", "wall_seconds_total"}  # fmt: skip


def test_a_plankton_run_of_some_parts_records_what_trained_and_draws_a_curve_only_of_methods_at_every_regime(
    tmp_path, monkeypatch
):  # fmt: skip
    """Review: with --unet_dir and no SimCLR the record said no model was loaded or probed; the gpu preset's own DDPM
    cap refused two workers for a run without the DDPM; --parts in another order was another budget to --merge."""
    import types

    budget = plankton_accuracy.PRESETS["cpu"]
    args = types.SimpleNamespace(budget=budget, parts=["unet", "cnn"], unet_dir="/models/u")
    assert plankton_accuracy.unlabeled_training(args, 350, 100, 10, "10%") == (
        "no model trains on the unlabeled images (the DDPM loaded from --unet_dir); the probe grid is fitted on 10 "
        "train images (10%) x 3 timesteps x 2 poolings"
    )
    args = types.SimpleNamespace(budget=budget, parts=["cnn", "raw_pixels"], unet_dir=None)
    assert plankton_accuracy.unlabeled_training(args, 350, 100, 10, "10%") == (
        "no model trains on the unlabeled images (--parts cnn raw_pixels)"
    )
    assert plankton_accuracy.worker_parts(["cnn", "raw_pixels"]) == "each CNN training and the raw-pixel probe"
    scores = {"long_tailed": {"accuracy": 0.5, "macro_f1": 0.5}}
    regimes = {"10%": {"num_train_labels": 3}, "all": {"num_train_labels": 30, "raw_pixel_probe": scores}}
    test = LabeledImages(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    full_run = types.SimpleNamespace(quick=False, data_label="data")
    assert plankton_accuracy.label_efficiency_plot(full_run, tmp_path / "r.json", regimes, test) is None
    assert not list(tmp_path.iterdir())
    data = plankton_folder(tmp_path / "data")
    shift = plankton_folder(tmp_path / "flowcam", classes=("a", "b"), per_class=7, top=1)
    argv = ["plankton_accuracy.py", "--preset", "gpu", "--workers", "2", "--data", str(data), "--shift_data",
            str(shift), "--parts", "simclr", "cnn"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert plankton_accuracy.parse_args().parts == ["cnn", "simclr"]  # PARTS' order


def test_rc_dit_accuracy_scores_the_positive_class_of_a_binary_data_set(tmp_path, monkeypatch, capsys):
    """Session 62 left it out: rc_dit_accuracy had no --positive_class; the head-CT study's F1 is the finding's."""
    monkeypatch.setattr(sys, "argv", ["rc_dit_accuracy.py", "--quick", "--positive_class", "pneumonia"])
    with pytest.raises(SystemExit):
        rc_dit_accuracy.parse_args()
    assert "--positive_class: expected with --data" in capsys.readouterr().err
    data = write_npz(tmp_path / "ich.npz", counts=(12, 12), size=16)
    argv = ["rc_dit_accuracy.py", "--quick", "--data", data, "--class_names", "normal", "bleed"]
    monkeypatch.setattr(sys, "argv", [*argv, "--positive_class", "haemorrhage"])
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['normal', 'bleed'\]"):
        rc_dit_accuracy.load_splits(Path(data), rc_dit_accuracy.parse_args())  # before any training
    monkeypatch.setattr(sys, "argv", [*argv, "--positive_class", "normal"])
    args = rc_dit_accuracy.parse_args()
    splits = rc_dit_accuracy.load_splits(Path(data), args)
    assert rc_dit_accuracy.positive_class_name(splits["train"], args.positive_class) == "normal"
    features = {name: split.images.flatten(1) for name, split in splits.items()}
    result = rc_dit_accuracy.protocols(features, splits, seed=0, positive_class=args.positive_class)
    assert result["settings"]["positive_label"] == 0
    figures = rc_dit_accuracy.headline(result)
    assert figures["label_free_sensitivity"] == result["label_free"]["sensitivity"]
    assert figures["prototype_10shot_positive_f1"] == result["prototype"]["10"]["positive_f1_mean"]
    assert figures["linear_probe_positive_f1"] == result["linear_probe"]["positive_f1"]

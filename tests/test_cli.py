import argparse
import json
import re
import shlex
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_classifiers import DiffusionClassifierPipeline
from diffusion_classifiers.cli import build_parser, main
from diffusion_classifiers.hub import model_fingerprint


def test_demo_writes_report_metrics_plots_and_a_loadable_pipeline(tmp_path, capsys):
    main([
        "demo", "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny", "--max_train_steps", "6",
        "--lr_warmup_steps", "1", "--timesteps", "10", "100", "--val_fraction", "0.15", "--test_fraction", "0.25",
        "--seed", "3",
    ])  # fmt: skip
    for name in ("report.md", "metrics.json", "probe_heatmap.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["probe_grid"]) == 7 * 2  # every block x every timestep
    assert metrics["model_sha256"] == model_fingerprint(tmp_path / "pipeline")  # push_to_hub checks the card's model
    summary = metrics["summary"]
    assert (summary["best_block"], summary["best_timestep"]) in {(r["block"], r["timestep"]) for r in metrics["probe_grid"]}
    assert 0.0 <= summary["kmeans_nmi"] <= 1.0 and summary["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    pipe = DiffusionClassifierPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert pipe.class_names == [str(i) for i in range(10)]
    assert pipe.head.config.pool == "2x2"  # the demo's default, chosen on its val split
    printed = capsys.readouterr().out
    assert "chosen" in printed and "| block |" in printed
    sizes = re.search(r"data: digits: train (\d+), val (\d+), test (\d+)", printed).groups()
    num_train, num_val, num_test = map(int, sizes)
    # saved with the model: probe and evaluate carve the same splits (their test the demo's test)
    carving = {"val_fraction": 0.15, "test_fraction": 0.25, "seed": 3, "class_names": None,
               "anonymised_dicom_groups": "study_or_series"}  # fmt: skip
    recorded = json.loads((tmp_path / "pipeline" / "data_splits.json").read_text())
    assert len(recorded.pop("train_fingerprints").split()) == num_train  # its train images too
    assert len(recorded.pop("selection_fingerprints").split()) == num_val and recorded == carving  # and val's
    for name in ("kmeans_label_free_test", "kmeans_raw_pixels_test"):  # chosen on every train image, without labels
        assert metrics[name]["selection"]["num_images"] == num_train and metrics[name]["selection"]["criterion"] == "stability"
    for name in ("reliability.png", "unet_training/loss_curve.png", "unet_training/samples/step_6.png"):
        assert Image.open(tmp_path / name).size[0] > 0, name
    report = (tmp_path / "report.md").read_text()
    assert "![reliability](reliability.png)" in report
    assert f"Test split: {num_test} images of 10 classes." in report  # QA (a clinician): per-class supports only
    per_class = metrics["test"]["per_class"]["3"]  # the per-class table, as evaluate's report has it
    assert f"| 3 | {100 * per_class['precision']:.2f}% | {100 * per_class['recall']:.2f}% |" in report
    low, high = metrics["test"]["confidence_intervals"]["accuracy"]  # the test figures' intervals, as evaluate's
    assert f"| accuracy | {100 * summary['test_accuracy']:.2f}% | {100 * low:.2f}% to {100 * high:.2f}% |" in report

    # `probe`: the demo's U-Net probed again, at other timesteps, into its own folder
    probe_dir = tmp_path / "probe"
    with pytest.raises(ValueError, match=r"timestep 1000 is invalid: expected an integer in \[0, 1000\)"):
        main(["probe", "--unet_dir", str(tmp_path / "pipeline"), "--output_dir", str(probe_dir), "--timesteps", "1000"])
    with pytest.raises(ValueError, match=r"expected --C as a number .* 0 < C < inf, got --C=\[1.0, 0.0\]"):
        main(["probe", "--unet_dir", str(tmp_path / "pipeline"), "--output_dir", str(probe_dir), "--C", "1", "0"])
    capsys.readouterr()
    main(["probe", "--unet_dir", str(tmp_path / "pipeline"), "--output_dir", str(probe_dir), "--timesteps", "50", "--C", "0.01", "1"])
    assert "note: --dataset not given: probe on scikit-learn's digits, the demo's data" in capsys.readouterr().err
    probed = json.loads((probe_dir / "metrics.json").read_text())
    probe_record = json.loads((probe_dir / "pipeline" / "data_splits.json").read_text())
    assert len(probe_record.pop("train_fingerprints").split()) == num_train
    assert len(probe_record.pop("selection_fingerprints").split()) == num_val and probe_record == carving
    assert probed["test"]["num_samples"] == metrics["test"]["num_samples"] == num_test
    with pytest.raises(ValueError, match=r"probe' holds an earlier report \(metrics.json\); .* --overwrite_output_dir"):
        main(["probe", "--unet_dir", str(tmp_path / "pipeline"), "--output_dir", str(probe_dir)])
    (tmp_path / "one_class" / "copepod").mkdir(parents=True)  # a folder of one class: refused once read, not after extraction
    for i in range(10):
        Image.fromarray(np.full((8, 8), 25 * i, dtype=np.uint8)).save(tmp_path / "one_class" / "copepod" / f"{i}.png")
    with pytest.raises(ValueError, match=r"one_class: 1 class \['copepod'\]; a probe needs 2 classes or more"):
        main(["probe", "--unet_dir", str(tmp_path / "pipeline"), "--dataset", str(tmp_path / "one_class"),
              "--output_dir", str(tmp_path / "probe_one_class")])  # fmt: skip
    assert {r["timestep"] for r in probed["probe_grid"]} == {50} and len(probed["probe_grid"]) == 7
    assert {r["C"] for r in probed["probe_grid"]} <= {0.01, 1.0} and probed["summary"]["probe_C"] in {0.01, 1.0}
    assert probed["summary"]["probe_class_weight"] is None
    assert DiffusionClassifierPipeline.from_pretrained(str(probe_dir / "pipeline")).head.config.timestep == 50
    # with --hypercolumns, one more probe: every block's feature concatenated, under a short name in the report;
    # with --views, every feature averaged over the image's 8 rotations and mirror images, recorded in the head
    column_dir = tmp_path / "probe_hypercolumns"
    main(["probe", "--unet_dir", str(tmp_path / "pipeline"), "--output_dir", str(column_dir), "--timesteps", "50", "--hypercolumns", "--views", "dihedral",
          "--class_weight", "balanced"])
    assert DiffusionClassifierPipeline.from_pretrained(str(column_dir / "pipeline")).head.config.views == "dihedral"
    column_metrics = json.loads((column_dir / "metrics.json").read_text())
    rows, class_weight = column_metrics["probe_grid"], column_metrics["summary"]["probe_class_weight"]
    # the digits' classes are nearly balanced (about 1 / 10 of the train images each): weights N / (10 n_k) near 1
    assert len(class_weight) == 10 and 0.8 < min(class_weight) < max(class_weight) < 1.2
    assert len(rows) == 8 and [r["block"] for r in rows if isinstance(r["block"], list)] == [[r["block"] for r in rows[:7]]]
    assert "| 7 blocks: down_blocks.0 .. up_blocks.2" in (column_dir / "report.md").read_text()
    assert Image.open(column_dir / "probe_heatmap.png").size[0] > 0
    capsys.readouterr()

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "roc_pr.png").write_bytes(b"an earlier binary report's")  # not this 10-class report's
    main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--dataset", "digits", "--output_dir", str(tmp_path / "eval")])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert printed["accuracy"] == written["accuracy"] and "positive_class" not in written  # 10 classes: none
    # the demo's test split, carved as recorded (seed 3): its pipeline scores there as the demo's report says
    assert written["num_samples"] == num_test and written["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert written["images_the_head_was_chosen_on"] == 0  # test holds none of the val images the head was chosen on
    assert "None of the images scored is one the model was trained on or its head was chosen on" in " ".join(
        (tmp_path / "eval" / "report.md").read_text().split())  # fmt: skip
    # QA (another site): every image of the data scored (its train images dropped) held the val images the head was
    # chosen on, without a word
    main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--dataset", "digits", "--split", "all",
          "--drop_training_images", "--output_dir", str(tmp_path / "eval_all")])  # fmt: skip
    every = json.loads((tmp_path / "eval_all" / "metrics.json").read_text())
    assert every["images_the_head_was_chosen_on"] == num_val and every["num_samples"] == num_val + num_test
    assert f"**{num_val} of the images scored are val images the model's head was chosen on**" in " ".join(
        (tmp_path / "eval_all" / "report.md").read_text().split())  # fmt: skip
    with pytest.warns(UserWarning, match=r"data_splits.json\); --test_fraction 0.2 carve\(s\) other splits"):
        main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--output_dir", str(tmp_path / "eval_other"),
              "--test_fraction", "0.2"])  # fmt: skip
    assert json.loads((tmp_path / "eval_other" / "metrics.json").read_text())["num_samples"] < num_test
    # QA: two reports of other carvings looked alike; each records and says its carving and its command
    carved = {"val_fraction": carving["val_fraction"], "test_fraction": carving["test_fraction"], "seed": 3}
    assert written["carving"] == carved and json.loads((tmp_path / "eval_other" / "metrics.json").read_text())[
        "carving"] == {**carved, "test_fraction": 0.2}
    typed = ["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--dataset", "digits",
             "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert written["command"] == "diffusion-classifiers " + shlex.join(typed)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"the test split is carved with seed 3 (val fraction {carving['val_fraction']:g}, test fraction" in report
    # QA (another site): 8 of an external folder's 39 images scored, the other 31 lost without a word
    assert "Data the model never saw (another site's) is scored whole with `--split all`" in " ".join(report.split())
    written_files = {p.name for p in (tmp_path / "eval").iterdir()}
    assert written_files == {"metrics.json", "report.md", "image_predictions.csv", "confusion_matrix.png", "reliability.png"}
    with pytest.raises(ValueError, match="eval' holds an earlier report"):
        main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--output_dir", str(tmp_path / "eval")])
    with pytest.raises(ValueError, match="positive_class: expected a binary task, got 10 classes"):
        main(["evaluate", "--model_dir", str(tmp_path / "pipeline"), "--output_dir", str(tmp_path / "eval"), "--positive_class", "3",
              "--overwrite_output_dir"])


def test_every_flag_of_every_command_has_help_text():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = {name: [a.option_strings[0] for a in command._actions if a.option_strings and not a.help]
              for name, command in commands.items()}
    assert not any(silent.values()), silent


def test_from_a_shell_a_refused_input_is_one_line_without_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["diffusion-classifiers", "predict", "--model_dir", str(tmp_path / "m"),
                                      "--input", str(tmp_path / "missing")])  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == f"diffusion-classifiers predict: error: input {tmp_path / 'missing'}: not found; " \
        "expected an image folder, a .csv file of paths, a saved datasets folder or an image / DICOM file"
    monkeypatch.setenv("DIFFUSION_CLASSIFIERS_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="missing: not found"):
        main()


@pytest.mark.parametrize("command", ["probe", "evaluate"])
def test_a_dicom_model_without_dataset_is_refused_not_run_on_the_demo_digits(tmp_path, command):
    # QA: probe on a CT model without --dataset ran 83 s on digits and wrote a 10-class pipeline with the CT windows
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import UNetFeatureClassifierPipeline
    from diffusion_classifiers.models import LinearProbeHead, unet_config

    medical = {"windows": ["brain", "subdural", "bone"]}
    head = LinearProbeHead(16, 2, class_names=["healthy", "bleed"], block="mid_block", timestep=50)
    UNetFeatureClassifierPipeline(
        unet=UNet2DModel(**unet_config("tiny", 8, in_channels=3)), scheduler=DDPMScheduler(), head=head,
        preprocessing={"medical": medical},
    ).save_pretrained(tmp_path / "ct")
    flag = "--unet_dir" if command == "probe" else "--model_dir"
    with pytest.raises(ValueError, match=r"--dataset: not given, and the model reads medical images \(8 px "
                                         r"\(stretch\), 3 channels, DICOM windows \['brain', 'subdural', 'bone'\]\); "
                                         r"give \w+ its data with --dataset"):  # fmt: skip
        main([command, flag, str(tmp_path / "ct"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("command", ["probe", "evaluate", "fit-head"])
def test_probe_and_evaluate_on_several_processes_are_refused_before_any_work(tmp_path, monkeypatch, command):
    """Started by `accelerate launch --num_processes 2`, every process would run the whole job into the same files."""
    model_flag = "--unet_dir" if command == "probe" else "--model_dir"
    argv = ["diffusion-classifiers", command, model_flag, str(tmp_path / "none"), "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun (accelerate launch --multi_gpu) tells each process
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == (
        f"diffusion-classifiers {command}: error: {command} runs as one process, but accelerate launch started 2: "
        f"each would run the whole job and write the same files; run it as one process (python / "
        f"diffusion-classifiers {command} ..., or accelerate launch --num_processes 1); predict is the command that "
        "splits its work across processes"
    )
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as exited:  # one process: the missing model is what is refused
        main()
    assert "none" in str(exited.value.code) and "one process" not in str(exited.value.code)
    monkeypatch.delenv("WORLD_SIZE")  # the simple launcher asked for 2 (--num_processes 2 without --multi_gpu) runs one
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setattr("diffusion_classifiers.training.launch._parent_command_line",
                        lambda: ["accelerate", "launch", "--num_processes", "2", "-m", "diffusion_classifiers.cli"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert "none" in str(exited.value.code) and "one process" not in str(exited.value.code)


def test_examples_evaluate_refuses_an_input_in_one_line_as_the_command_does(tmp_path, monkeypatch):
    import runpy

    from .conftest import REPO_ROOT

    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--model_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "examples" / "evaluate.py"), run_name="__main__")
    assert str(exited.value.code).startswith(f"diffusion-classifiers evaluate: error: {tmp_path / 'none'}: no such folder")


@pytest.mark.parametrize("script", ["unet_features_train.py", "score_sde_train.py", "rc_dit_train.py"])
def test_the_training_scripts_refuse_an_input_in_one_line_from_a_shell(tmp_path, monkeypatch, script):
    import runpy

    from .conftest import REPO_ROOT

    missing = tmp_path / "missing.npz"
    monkeypatch.setattr(sys, "argv", [script, "--dataset", str(missing), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "examples" / script), run_name="__main__")
    assert str(exited.value.code).startswith(f"{script}: error: source: {str(missing)!r} does not exist")


def test_evaluate_without_dataset_refuses_a_model_of_other_classes_than_the_digits(tmp_path):
    """QA: a benign / malignant model was evaluated on the digits by default and failed on label 2 after reading
    them."""
    from .conftest import REPO_ROOT

    model = REPO_ROOT / "tests" / "fixtures" / "v0.1.0" / "score_sde"  # classes zero, one, two
    with pytest.raises(ValueError, match=r"--dataset: not given, and the model's classes \['zero', 'one', 'two'\] are "
                                         r"not the digits' '0'..'9'; give evaluate its data with --dataset"):  # fmt: skip
        main(["evaluate", "--model_dir", str(model), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_bad_flag_before_reading_the_data(tmp_path, monkeypatch, capsys):
    """QA: `--pipeline_kwargs "{method: 'likelihood'}"` said "invalid loads value"; a wrong --positive_class was
    refused only after every image was decoded."""
    from diffusers import DDPMScheduler

    import diffusion_classifiers.evaluation
    from diffusion_classifiers import ScoreSDEClassifierPipeline

    from .test_readme import small_unet

    model = tmp_path / "model"
    pipe = ScoreSDEClassifierPipeline(small_unet(8, 3), DDPMScheduler(), class_names=["benign", "malignant"])
    pipe.save_pretrained(model)
    monkeypatch.setattr(diffusion_classifiers.evaluation, "load_evaluation_split", pytest.fail)
    argv = ["evaluate", "--model_dir", str(model), "--dataset", "digits", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        main(argv + ["--pipeline_kwargs", "{method: 'likelihood'}"])
    err = capsys.readouterr().err
    assert "argument --pipeline_kwargs: \"{method: 'likelihood'}\" is not valid JSON (Expecting property name" in err
    assert """expected a JSON object, e.g. '{"method": "likelihood"}'""" in err
    with pytest.raises(SystemExit):
        main(argv + ["--pipeline_kwargs", "[1]"])
    assert "--pipeline_kwargs: expected a JSON object" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"positive_class: expected one of the class names \['benign', 'malignant'\], "
                                         r"got 'cancer'"):  # fmt: skip
        main(argv + ["--positive_class", "cancer"])
    assert not (tmp_path / "out").exists()


def test_a_defaulted_positive_class_is_noted_at_training_time(capsys):
    """QA: folders cancer/ and normal/ made 'normal' the positive class without a word."""
    from diffusion_classifiers.cli import note_default_positive_class

    note_default_positive_class(None, ["cancer", "normal"])
    assert capsys.readouterr().err == (
        "note: --positive_class not given: the positive class (of sensitivity, the ROC, the log-likelihood ratio) is "
        "class 1, 'normal', of ['cancer', 'normal'] (the data's class order, alphabetical for class folders); pass "
        "--positive_class cancer to choose the other\n"
    )
    for given, names in (("cancer", ["cancer", "normal"]), (None, ["a", "b", "c"])):
        note_default_positive_class(given, names)
        assert capsys.readouterr().err == ""


def test_a_shell_command_prints_warnings_as_one_line_each():
    """QA: every warning of a command ended in the source line of this package that issued it."""
    import subprocess

    from .conftest import PYTHON, python_subprocess_env

    code = ("import warnings; from diffusion_classifiers.cli import run_from_shell; "
            "run_from_shell('tool', lambda: warnings.warn('look here', UserWarning))")  # fmt: skip
    shell = subprocess.run([PYTHON, "-c", code], env=python_subprocess_env(), capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0 and shell.stderr == "tool: warning: look here\n"
    kept = python_subprocess_env() | {"DIFFUSION_CLASSIFIERS_TRACEBACK": "1"}  # the source line, for developers
    traced = subprocess.run([PYTHON, "-c", code], env=kept, capture_output=True, text=True, timeout=120)
    assert "UserWarning: look here" in traced.stderr and "tool: warning" not in traced.stderr


def _saved_rc_dit(folder):
    from .test_rc_dit import tiny_pipeline

    tiny_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("head, flags", [("prototypes", ["--shots", "5"]), ("linear_probe", ["--C", "0.1", "10"])])
def test_fit_head_gives_an_rc_dit_a_head_chosen_on_val_that_evaluate_scores_alike(tmp_path, capsys, head, flags):
    """An RC-DiT had no command to fit a head (only Python): fit-head reads labelled data as the model's saved
    preprocessing says, fits the head (on --shots per class), saves the pipeline with the data's carving and its
    train images' fingerprints, and scores test as `evaluate` then does on the saved pipeline."""
    from diffusion_classifiers.models import LinearProbeHead, PrototypeHead

    model, out = _saved_rc_dit(tmp_path / "rc"), tmp_path / "head"
    main(["fit-head", "--model_dir", model, "--dataset", "digits", "--head", head, *flags, "--seed", "2",
          "--test_fraction", "0.3", "--output_dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert ("on 50 labelled images (5 per class, drawn with seed 2)" if head == "prototypes" else "(every train image)"
            ) in printed
    pipe = DiffusionClassifierPipeline.from_pretrained(str(out / "pipeline"))
    assert isinstance(pipe.head, PrototypeHead if head == "prototypes" else LinearProbeHead)
    assert pipe.class_names == [str(i) for i in range(10)]
    record = json.loads((out / "pipeline" / "data_splits.json").read_text())
    # how the labelled data was carved: --seed draws the shots only, the carving seed is the model's (none: 0)
    assert (record["test_fraction"], record["seed"]) == (0.3, 0)
    fitted = json.loads((out / "metrics.json").read_text())
    assert fitted["split"] == "test" and fitted["model_sha256"] == model_fingerprint(out / "pipeline")
    recorded = fitted["head"]  # QA: the C kept, the temperature, the labels used were nowhere but the title
    assert recorded["kind"] == head and recorded["val_images"] > 0
    assert (recorded["temperature"] > 0) if head == "prototypes" else recorded["C"] in (0.1, 10)
    assert f"Head: {recorded['summary']}." in (out / "report.md").read_text()
    main(["evaluate", "--model_dir", str(out / "pipeline"), "--dataset", "digits", "--output_dir", str(tmp_path / "e")])
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())  # the record carves the same test split
    assert (evaluated["num_samples"], evaluated["accuracy"]) == (fitted["num_samples"], fitted["accuracy"])
    assert evaluated["accuracy"] > 0.15  # 10 classes: chance is 0.1


def test_fit_head_records_the_check_of_test_against_the_model_training_images(tmp_path):
    """QA: fit-head checked val and test against the images a head-CT RC-DiT was trained on, then recorded
    `training_images_checked: false` and a report saying "Not checked" (the pipeline's own record is cleared to save
    it with the head's); a model that records none is still said to be unchecked."""
    from diffusion_classifiers.data import load_image_classification_data
    from diffusion_classifiers.data.split_record import save_split_record

    recorded, unrecorded = _saved_rc_dit(tmp_path / "recorded"), _saved_rc_dit(tmp_path / "unrecorded")
    pipe = DiffusionClassifierPipeline.from_pretrained(recorded)
    trained_on = load_image_classification_data("digits", **pipe.loader_kwargs)["train"]
    save_split_record(recorded, val_fraction=0.1, test_fraction=0.2, seed=0, train_images=trained_on.images)
    for model, checked in ((recorded, True), (unrecorded, False)):
        out = tmp_path / f"head_{checked}"
        main(["fit-head", "--model_dir", model, "--dataset", "digits", "--head", "prototypes", "--shots", "2",
              "--output_dir", str(out)])  # fmt: skip
        assert json.loads((out / "metrics.json").read_text())["training_images_checked"] is checked
        assert ("Not checked against the model's training images" in (out / "report.md").read_text()) is not checked


def test_fit_head_checks_a_data_sets_own_test_split_as_evaluate_does(tmp_path):
    """QA (session 59, three methods side by side): on a .npz with its own splits, fit-head's report said its test
    images were "Not checked against the model's training images" where evaluate of the same pipeline checked them."""
    from sklearn.datasets import load_digits

    from diffusion_classifiers.data import load_image_classification_data
    from diffusion_classifiers.data.split_record import save_split_record

    digits = load_digits()
    images, labels = (digits.images * 15).astype(np.uint8), digits.target
    parts = {"train": slice(0, 300), "val": slice(300, 400), "test": slice(400, 500)}
    arrays = {f"{name}_images": images[rows] for name, rows in parts.items()}
    np.savez(tmp_path / "own.npz", **arrays, **{f"{name}_labels": labels[rows] for name, rows in parts.items()})
    model = _saved_rc_dit(tmp_path / "rc")
    pipe = DiffusionClassifierPipeline.from_pretrained(model)
    trained_on = load_image_classification_data(str(tmp_path / "own.npz"), **pipe.loader_kwargs)["train"]
    save_split_record(model, val_fraction=0.1, test_fraction=0.2, seed=0, train_images=trained_on.images)
    out = tmp_path / "head"
    main(["fit-head", "--model_dir", model, "--dataset", str(tmp_path / "own.npz"), "--head", "prototypes",
          "--shots", "2", "--output_dir", str(out)])  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["training_images_checked"] is True
    assert "Not checked against the model's training images" not in (out / "report.md").read_text()


def test_fit_head_refuses_other_models_and_bad_flags_before_writing(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_classifiers import ScoreSDEClassifierPipeline, UNetFeatureClassifierPipeline
    from diffusion_classifiers.models import unet_config

    UNetFeatureClassifierPipeline(UNet2DModel(**unet_config("tiny", 8)), DDPMScheduler()).save_pretrained(tmp_path / "u")
    ScoreSDEClassifierPipeline(
        UNet2DModel(**unet_config("tiny", 8, num_class_embeds=2)), DDPMScheduler(), class_names=["a", "b"]
    ).save_pretrained(tmp_path / "s")
    model, out = _saved_rc_dit(tmp_path / "rc"), str(tmp_path / "out")
    refusals = {
        (str(tmp_path / "u"),): r"a UNetFeatureClassifierPipeline, not an RC-DiT; fit its head with `diffusion-classifiers probe",
        (str(tmp_path / "s"),): r"a ScoreSDEClassifierPipeline, not an RC-DiT; it classifies by its class-conditional "
        r"likelihoods and needs no head",
        (model, "--head", "prototypes", "--C", "3"): r"--C: options of a linear probe; --head prototypes has no",
        (model, "--shots", "0"): r"--shots: expected an integer >= 1",
        (model, "--shots", "200"): r"--shots 200: class '\d' has 1\d\d train images; pass --shots 1\d\d or fewer, or "
        r"label more images of it",
    }  # fmt: skip
    for (model_dir, *flags), message in refusals.items():
        with pytest.raises(ValueError, match=message):
            main(["fit-head", "--model_dir", model_dir, "--dataset", "digits", *flags, "--output_dir", out])
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["evaluate", "probe", "fit-head"])
def test_a_second_run_into_the_same_output_dir_is_refused_naming_the_first(tmp_path, command):
    """QA: two evaluate (or probe) runs into one --output_dir both said they wrote their report; one report was left,
    of one of them. The folder is locked while a run writes into it, as training's and predict's outputs are."""
    import os
    import socket

    from diffusion_classifiers.run_lock import COMMAND_LOCK_NAME, RunInUseError

    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-12-05T20:00:00+00:00"}  # alive
    (out / COMMAND_LOCK_NAME).write_text(json.dumps(holder))
    model_flag = "--unet_dir" if command == "probe" else "--model_dir"
    with pytest.raises(RunInUseError, match=rf"--output_dir {re.escape(str(out))} is in use by another {command} run "
                                            rf"\(pid {os.getppid()} on host"):  # fmt: skip
        main([command, model_flag, str(tmp_path / "none"), "--output_dir", str(out)])
    assert sorted(path.name for path in out.iterdir()) == [COMMAND_LOCK_NAME]  # the other run's lock, untouched
    (out / COMMAND_LOCK_NAME).unlink()
    with pytest.raises((ValueError, FileNotFoundError), match="none"):  # free: the missing model is what is refused
        main([command, model_flag, str(tmp_path / "none"), "--output_dir", str(out)])
    assert list(out.iterdir()) == []  # its own lock released


def test_evaluate_classifier_records_a_command_and_carving_and_refuses_a_carving_without_its_numbers(tmp_path):
    """Second read: a free `run` dict let a caller overwrite the metrics; a carving without its seed failed after
    scoring, leaving a half-written folder."""
    from diffusion_classifiers.data import load_image_classification_data
    from diffusion_classifiers.evaluation import evaluate_classifier

    main(["demo", "--output_dir", str(tmp_path / "demo"), "--unet_preset", "tiny", "--max_train_steps", "2",
          "--timesteps", "10", "--num_sample_images", "0", "--image_size", "8"])  # fmt: skip
    pipe = DiffusionClassifierPipeline.from_pretrained(str(tmp_path / "demo" / "pipeline"))
    test = load_image_classification_data("digits", **pipe.loader_kwargs)["test"]
    with pytest.raises(ValueError, match=r"carving: expected numbers for \['val_fraction', 'test_fraction', 'seed'\]"):
        evaluate_classifier(pipe, test, str(tmp_path / "eval"), carving={"seed": 1})
    assert not (tmp_path / "eval").exists()
    carving = {**pipe.split_record, "anonymised_dicom_groups": "study_or_series"}
    metrics = evaluate_classifier(pipe, test, str(tmp_path / "eval"), split="test", command="mine", carving=carving)
    expected = {name: pipe.split_record[name] for name in ("val_fraction", "test_fraction", "seed")}
    assert metrics["carving"] == expected and metrics["command"] == "mine"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["carving"] == expected


def test_a_command_run_from_python_records_its_process_s_command(monkeypatch):
    """Second read: `run_cluster(args)` with a namespace of its own failed on a missing `command_line`."""
    from diffusion_classifiers.validation import typed_command

    monkeypatch.setattr(sys, "argv", ["my_script.py", "--k", "5"])
    assert typed_command(argparse.Namespace()) == "my_script.py --k 5"
    typed = argparse.Namespace(command_line="diffusion-classifiers cluster")
    assert typed_command(typed) == "diffusion-classifiers cluster"


def test_probe_refuses_a_scheduler_that_noises_otherwise_before_reading_any_image(tmp_path):
    """QA (session 58, a user of their own diffusers models): a pipeline saved with an Euler scheduler was probed on
    features of images no U-Net saw in training; the model is now refused before the (here missing) data is read."""
    from diffusers import EulerDiscreteScheduler

    from diffusion_classifiers import UNetFeatureClassifierPipeline

    from .test_readme import small_unet

    pipe = UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=EulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path / "m")
    argv = ["probe", "--unet_dir", str(tmp_path / "m"), "--dataset", str(tmp_path / "missing"), "--output_dir",
            str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ValueError, match=r"--unet_dir .*m: scheduler: EulerDiscreteScheduler does not noise images"):
        main(argv)

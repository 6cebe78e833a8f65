"""A plankton lab's second season: resuming last season's training with the images read otherwise is refused naming
the flag (a `--normalize_background` left out changed no sampled pixel mean of white-field plankton images, and the
resumed model was saved reading them otherwise)."""

import importlib.util

import pytest

from .conftest import REPO_ROOT, shared_data


def unet_script():
    path = REPO_ROOT / "examples" / "unet_features_train.py"
    spec = importlib.util.spec_from_file_location("unet_features_train", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_resume_reading_the_images_otherwise_is_refused_naming_the_flag(tmp_path, monkeypatch):
    script = unet_script()
    argv = ["--dataset", str(shared_data("plankton_flowcam_demo")), "--output_dir", str(tmp_path / "unet"),
            "--image_size", "8", "--num_channels", "1", "--unet_preset", "tiny", "--train_batch_size", "16",
            "--lr_warmup_steps", "0", "--checkpointing_steps", "1", "--num_sample_images", "0", "--resize_mode", "pad",
            "--pad_value", "1"]  # fmt: skip
    script.main(argv + ["--max_train_steps", "1", "--normalize_background"])
    resumed = argv + ["--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    monkeypatch.setattr(script, "training_data_from_args", pytest.fail)  # refused before the data is read
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-1: .*--normalize_background True -> False"):
        script.main(resumed)
    with pytest.raises(ValueError, match=r"--pad_value 1.0 -> 0.5"):
        script.main(resumed + ["--normalize_background", "--pad_value", "0.5"])


def test_predict_carries_an_input_csvs_other_columns_for_aggregate(tmp_path, capsys):
    """QA: `predict --input week2.csv` (path,sample) dropped the sample column, so `aggregate --by sample` found none;
    a column named as one predict writes is refused; an output written before is resumed with its own columns."""
    import csv
    import json

    from diffusion_classifiers.cli import main

    from .test_predict import read_rows, write_images

    model = _tiny_model(tmp_path)
    write_images(tmp_path, ["a.png", "b.png", "c.png"], seed=7)
    with open(tmp_path / "week.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "sample"], ["a.png", "s1"], ["b.png", "s1"], ["c.png", "007"]])
    argv = ["predict", "--model_dir", str(model), "--input", str(tmp_path / "week.csv")]
    main(argv + ["--output", str(tmp_path / "p.parquet")])
    main(argv + ["--output", str(tmp_path / "p.csv")])
    rows = read_rows(tmp_path / "p.csv")
    assert list(rows[0])[:3] == ["path", "frame", "sample"] and [row["sample"] for row in rows] == ["s1", "s1", "007"]
    for output in ("p.csv", "p.parquet"):
        main(["aggregate", "--predictions", str(tmp_path / output), "--by", "sample", "--rule", "mean"])
    samples = read_rows(tmp_path / "p.mean_by_sample.csv")
    assert [row["num_images"] for row in samples] == ["2", "1"]
    assert [int(row["count_cat"]) + int(row["count_dog"]) for row in samples] == [2, 1]  # each sample's census
    assert read_rows(tmp_path / "p.parquet.mean_by_sample.csv") == read_rows(tmp_path / "p.mean_by_sample.csv")
    with open(tmp_path / "bad.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "score"], ["a.png", "1"]])
    refused = r"inputs: CSV or dataset column\(s\) \['score'\] are named as columns predict writes"
    with pytest.raises(ValueError, match=refused):
        main(["predict", "--model_dir", str(model), "--input", str(tmp_path / "bad.csv"), "--output",
              str(tmp_path / "bad_out.csv")])  # fmt: skip
    # an output of the version that dropped the column resumes with its columns
    old_columns = [column for column in rows[0] if column != "sample"]
    with open(tmp_path / "p.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[:2])
    sidecar = tmp_path / "p.csv.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "columns": old_columns}))
    main(argv + ["--output", str(tmp_path / "p.csv")])
    assert list(read_rows(tmp_path / "p.csv")[0]) == old_columns and len(read_rows(tmp_path / "p.csv")) == 3


def _tiny_model(tmp_path):
    import torch
    from diffusers import DDPMScheduler

    from diffusion_classifiers import LinearProbeHead, UNetFeatureClassifierPipeline

    from .test_readme import small_unet

    torch.manual_seed(0)
    head = LinearProbeHead(in_features=16, num_classes=2, block="mid_block", timestep=10, class_names=["cat", "dog"])
    UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=DDPMScheduler(), head=head).save_pretrained(
        tmp_path / "model"
    )
    return tmp_path / "model"

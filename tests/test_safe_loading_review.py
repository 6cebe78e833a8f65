"""QA (session 60, a hospital's security reviewer): "only safe formats are loaded, never pickles", and bad input
refused by name before any work, on the paths the earlier reviews had not walked."""


import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification

import diffusion_classifiers.data
from diffusion_classifiers.cli import main
from diffusion_classifiers.models import build_vit_encoder, load_pretrained_encoder

from .test_bad_inputs import too_late
from .test_cli_review import example


def pickled_only(folder, weights: str, pickle_name: str) -> None:
    """`folder`'s safetensors weights `weights` replaced by the same tensors pickled (`torch.save`) as `pickle_name`."""
    torch.save(load_file(folder / weights), folder / pickle_name)
    (folder / weights).unlink()


def test_a_pretrained_encoder_or_vae_of_pickled_weights_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """rc_dit_train.py trained on a ViT folder holding only pytorch_model.bin and on an AutoencoderKL saved with
    safe_serialization=False: read by torch.load (whose weights_only was all that stood between a crafted file and
    running its code), with a 20-line traceback after the data was read for a crafted one."""
    build_vit_encoder(8, 1, 16, num_layers=1, num_heads=2, patch_size=4).save_pretrained(tmp_path / "vit")
    pickled_only(tmp_path / "vit", "model.safetensors", "pytorch_model.bin")
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=2, norm_num_groups=4,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    monkeypatch.setattr(diffusion_classifiers.data, "training_data_from_args", too_late)
    train = example("rc_dit_train.py")["main"]
    for flags, pickle in (
        (["--encoder_name_or_path", str(tmp_path / "vit")], tmp_path / "vit" / "pytorch_model.bin"),
        (["--vae", str(tmp_path / "vae")], tmp_path / "vae" / "diffusion_pytorch_model.bin"),
    ):
        with pytest.raises(ValueError, match=rf"^{pickle}: pickled weights are refused \(loading a pickle can run"):
            train(["--dataset", "digits", "--image_size", "8", "--output_dir", str(tmp_path / "out"), *flags])
    with pytest.raises(ValueError, match=r"vit/pytorch_model.bin: pickled weights are refused"):
        load_pretrained_encoder(str(tmp_path / "vit"))


def test_another_transformers_classifier_of_pickled_weights_is_refused_by_name(tmp_path):
    """`evaluate --model_dir` on a ViT classifier's folder of pytorch_model.bin was safe (never unpickled) but ended in
    transformers' 12-frame "no file named model.safetensors" traceback."""
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=10,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    pickled_only(tmp_path / "vit", "model.safetensors", "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"vit/pytorch_model.bin: pickled weights are refused"):
        main(["evaluate", "--model_dir", str(tmp_path / "vit"), "--dataset", "digits", "--output_dir", str(tmp_path / "e")])
    assert not (tmp_path / "e" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "vit").iterdir()) == ["config.json", "pytorch_model.bin"]  # untouched


def test_a_linked_checkpoint_is_unlinked_when_pruned_and_the_run_ends_with_its_model(tmp_path):
    """A `checkpoint-1` linked to an archived run's, resumed with --checkpoints_total_limit 1: pruning it called
    `shutil.rmtree` on the link, which refused it after training (the final model never saved), and every later run
    in the folder failed on the `checkpoint-1.partial` link left behind. The archive is kept either way."""
    from .test_training_infra_review import args_for, dataset, linear, train

    loss = lambda model, batch: model(batch[0]).pow(2).mean()  # noqa: E731
    archive = tmp_path / "archive"
    train(args_for(archive, max_train_steps=1, checkpointing_steps=1), linear(), dataset(), loss)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-1").symlink_to(archive / "checkpoint-1", target_is_directory=True)
    resumed = args_for(
        run, max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=1, resume_from_checkpoint="latest"
    )
    _, _, summary = train(resumed, linear(), dataset(), loss)
    assert (summary.resumed_from_step, summary.global_step) == (1, 3)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3"]
    assert (archive / "checkpoint-1").is_dir() and any((archive / "checkpoint-1").iterdir())
    (run / "checkpoint-2.partial").symlink_to(archive / "checkpoint-1", target_is_directory=True)  # a kill's leftover
    train(args_for(run, max_train_steps=4, checkpointing_steps=1, resume_from_checkpoint="latest"), linear(), dataset(), loss)
    assert not (run / "checkpoint-2.partial").exists() and any((archive / "checkpoint-1").iterdir())


def test_a_csv_path_holding_a_nul_byte_is_an_errors_row_not_the_end_of_the_run(tmp_path):
    """`predict` stopped the whole run with "error: embedded null byte", naming no file or line."""
    import numpy as np
    from PIL import Image

    from .test_ecosystem_loading import pipelines

    pipelines()["unet_features"].save_pretrained(tmp_path / "model")
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "list.csv").write_text("path\nok.png\nbad\0name.png\n")
    main(["predict", "--model_dir", str(tmp_path / "model"), "--input", str(tmp_path / "list.csv"),
          "--output", str(tmp_path / "out.csv")])  # fmt: skip
    rows = (tmp_path / "out.csv").read_text().splitlines()
    errors = (tmp_path / "out.csv.errors.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("ok.png,")  # as the CSV names it
    assert len(errors) == 2 and errors[1].startswith("bad\0name.png,file not found")


def test_a_deflated_dicom_that_inflates_past_any_image_within_the_pixel_limit_is_refused(tmp_path, monkeypatch):
    """A 1.4 MB Deflated Explicit VR file holding a 1.2 GB private element, its pixels of an ordinary size, passed the
    pixel-count check and was inflated whole (predict's memory 0.6 -> 3.0 GB), then predicted as a normal image."""
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from diffusion_classifiers.data import read_dicom

    source = get_testdata_file("CT_small.dcm")  # 128 x 128, 2 bytes a pixel
    if source is None:
        pytest.skip("CT_small.dcm not found: install pydicom-data (the [test] extra)")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128)  # the limit on inflating: 147,456 bytes
    dataset = pydicom.dcmread(source)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    expected = read_dicom(source).values
    assert np.array_equal(read_dicom(tmp_path / "deflated.dcm").values, expected)  # an ordinary deflated file reads
    dataset.add_new(0x00111010, "OB", b"\0" * 200_000)
    dataset.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    assert (tmp_path / "bomb.dcm").stat().st_size < 40_000  # the premise: small on disk
    with pytest.raises(ValueError, match=r"bomb.dcm: its deflated data set inflates to over 147456 bytes"):
        read_dicom(tmp_path / "bomb.dcm")


def test_a_class_name_holding_a_newline_is_refused_before_any_image_is_read(tmp_path):
    """A CSV label `"evil\\n---\\nlicense: mit ..."` trained a model whose card's label list became a heading and whose
    per-class table broke across lines."""
    from PIL import Image

    from diffusion_classifiers.data import load_image_classification_data

    for i in range(8):
        Image.fromarray(np.full((8, 8), 30 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    rows = "".join(f'{i}.png,"{"evil" + chr(10) + "---" if i % 2 else "plain"}"\n' for i in range(8))
    (tmp_path / "labels.csv").write_text("path,label\n" + rows)
    with pytest.raises(ValueError, match=r"labels.csv: class name 'evil\\n---' holds the control character\(s\) '\\n'"):
        load_image_classification_data(str(tmp_path / "labels.csv"), image_size=8)


def test_crafted_pickles_are_named_as_refused_not_as_damaged_files(tmp_path):
    """A crafted optimizer.bin in a checkpoint was reported as "damaged or truncated (UnpicklingError: Weights only
    load failed)", an object array in an .npz as "(truncated or corrupt?)": refusals of unsafe content, said as such."""
    from diffusion_classifiers.data import load_image_classification_data

    from .test_resume import Poison, tiny_run

    tiny_run(tmp_path / "run")
    canary = tmp_path / "canary"
    torch.save(Poison(canary), tmp_path / "run" / "checkpoint-2" / "optimizer.bin")
    with pytest.raises(ValueError, match=r"checkpoint-2: its optimizer\.bin holds objects other than tensors \(refused unread"):
        tiny_run(tmp_path / "run", max_train_steps=4, resume_from_checkpoint="latest")
    np.savez(tmp_path / "objects.npz", train_images=np.array([Poison(canary)], dtype=object), train_labels=np.zeros(1))
    with pytest.raises(ValueError, match=r"objects.npz: holds pickled Python objects \(an object array\), refused unread"):
        load_image_classification_data(str(tmp_path / "objects.npz"), image_size=8)
    assert not canary.exists()


def test_an_output_folder_inside_the_data_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    """A trainer's `--output_dir imgds/run` was accepted: its checkpoints and sample PNGs went into the data folder,
    where the next run on it read them (the cluster command alone refused it)."""
    from PIL import Image

    for name in ("ant", "bee"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    monkeypatch.setattr(diffusion_classifiers.data, "load_data_from_args", too_late)
    inside = str(tmp_path / "data" / "run")
    with pytest.raises(ValueError, match=rf"--output_dir {inside}: inside the input folder .*data \(--dataset\)"):
        example("unet_features_train.py")["main"](["--dataset", str(tmp_path / "data"), "--output_dir", inside])
    with pytest.raises(ValueError, match=r"inside the input folder"):
        main(["evaluate", "--model_dir", str(tmp_path / "none"), "--dataset", str(tmp_path / "data"),
              "--output_dir", str(tmp_path / "data")])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ant", "bee"]


def test_a_deflated_dicom_without_its_preamble_is_checked_too(tmp_path, monkeypatch):
    """Second read: the same bomb without its 128-byte preamble and "DICM" was read as a bare data set, which
    pydicom's force=True inflated whole before any check."""
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from diffusion_classifiers.data import read_dicom

    source = get_testdata_file("CT_small.dcm")
    if source is None:
        pytest.skip("CT_small.dcm not found: install pydicom-data (the [test] extra)")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128)
    dataset = pydicom.dcmread(source)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset.add_new(0x00111010, "OB", b"\0" * 200_000)
    dataset.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    (tmp_path / "bare.dcm").write_bytes((tmp_path / "bomb.dcm").read_bytes()[132:])
    with pytest.raises(ValueError, match=r"bare.dcm: its deflated data set inflates to over 147456 bytes"):
        read_dicom(tmp_path / "bare.dcm")

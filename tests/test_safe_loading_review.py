"""QA (session 60, a hospital's security reviewer): "only safe formats are loaded, never pickles", and bad input
refused by name before any work, on the paths the earlier reviews had not walked."""


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

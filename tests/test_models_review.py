"""The pretrained-encoder path read against the model's own image processor, and the models' input checks."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifiers.models import (
    encode_latents,
    encode_representation,
    load_pretrained_encoder,
    pretrained_preprocessing,
    unet_config,
)

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_dinov2(folder, num_channels=3, processor=None):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4, image_size=16,
        intermediate_size=64, num_channels=num_channels,
    )  # fmt: skip
    Dinov2Model(config).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return str(folder)


def save_vit(folder):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4, image_size=16,
                       intermediate_size=64)  # fmt: skip
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)  # resamples bilinearly, as ViT's
    return str(folder)


def uint8_images(count, size, channels=3, seed=0):
    shape = (count, size, size, channels) if channels == 3 else (count, size, size)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def as_library_images(arrays):
    """uint8 [N, H, W(, 3)] -> [N, C, H, W] in [-1, 1], as the library reads 8-bit images."""
    x = torch.from_numpy(arrays).float() / 127.5 - 1
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


def processor_cls_tokens(folder, arrays):
    """The CLS tokens of the model fed by its own `AutoImageProcessor` (PIL images)."""
    from transformers import AutoImageProcessor, AutoModel

    processor, model = AutoImageProcessor.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        inputs = processor([Image.fromarray(a) for a in arrays], return_tensors="pt")
        return model(**inputs).last_hidden_state[:, 0]


def test_a_processor_that_does_not_centre_crop_feeds_the_model_its_resize_size(tmp_path):
    """`do_center_crop=False`: the processor feeds its `size` (8 px); its unused default crop_size (224) was taken
    (CLS tokens up to 0.7 from the processor's, now 0.007)."""
    from transformers import BitImageProcessor

    processor = BitImageProcessor(size={"shortest_edge": 8}, do_center_crop=False)
    folder = save_dinov2(tmp_path / "dino", processor=processor)
    assert pretrained_preprocessing(folder)["image_size"] == [8, 8]
    arrays = uint8_images(3, 16)
    features = load_pretrained_encoder(folder).encode(as_library_images(arrays))
    torch.testing.assert_close(features, processor_cls_tokens(folder, arrays), atol=2e-2, rtol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_a_dinov2_folder_is_read_as_its_processor_reads_rgb_and_grey_images(tmp_path, channels):
    from transformers import BitImageProcessor

    processor = BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)  # fmt: skip
    folder = save_dinov2(tmp_path / "dino", processor=processor)
    assert "resample" not in pretrained_preprocessing(folder)  # bicubic, as saved pipelines have always been read
    arrays = uint8_images(3, 16, channels)
    features = load_pretrained_encoder(folder).encode(as_library_images(arrays))
    torch.testing.assert_close(features, processor_cls_tokens(folder, arrays), atol=1e-5, rtol=0)


def test_a_vit_checkpoint_is_resized_bilinearly_as_its_processor_does(tmp_path):
    """ViT's processor resamples bilinearly; a bicubic resize of 32 px images to 16 px moved these CLS tokens up to
    0.06 (pixels up to 0.09 of the range) from what the processor gives, a bilinear one 0.005."""
    from transformers import ViTModel

    folder = save_vit(tmp_path / "vit")
    preprocessing = pretrained_preprocessing(folder)
    assert preprocessing["resample"] == "bilinear"
    arrays = uint8_images(3, 32)
    images = as_library_images(arrays)
    features = load_pretrained_encoder(folder).encode(images)
    torch.testing.assert_close(features, processor_cls_tokens(folder, arrays), atol=2e-2, rtol=0)
    # the RC-DiT's encoder reads it the same way through its saved encoder_preprocessing
    with torch.no_grad():
        readout = encode_representation(ViTModel.from_pretrained(folder).eval(), images, "cls", preprocessing)
    torch.testing.assert_close(readout, features, atol=1e-5, rtol=0)


def test_load_pretrained_encoder_names_a_folder_without_its_processor(tmp_path):
    folder = save_dinov2(tmp_path / "dino")
    expected = rf"pretrained encoder '{re.escape(folder)}' has no preprocessor_config.json \(its image processor\)"
    with pytest.raises(FileNotFoundError, match=expected):
        load_pretrained_encoder(folder)


def test_a_one_channel_pretrained_encoder_reads_grey_images_as_the_rc_dit_encoder_does(tmp_path):
    """A 1-channel model with a processor: `encode_representation` fed it one channel, `load_pretrained_encoder` 3."""
    from transformers import BitImageProcessor, Dinov2Model

    processor = BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    folder = save_dinov2(tmp_path / "dino", num_channels=1, processor=processor)
    images = as_library_images(uint8_images(2, 16, channels=1))
    features = load_pretrained_encoder(folder).encode(images)
    with torch.no_grad():
        expected = encode_representation(Dinov2Model.from_pretrained(folder).eval(), images, "cls",
                                         pretrained_preprocessing(folder))  # fmt: skip
    torch.testing.assert_close(features, expected)


def test_a_vit_encoder_configured_with_a_height_and_width_reads_images():
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, patch_size=4, image_size=(16, 16),
                       num_channels=1, intermediate_size=32)  # fmt: skip
    encoder = ViTModel(config).eval()
    with torch.no_grad():
        assert encode_representation(encoder, torch.zeros(2, 1, 8, 8), "cls").shape == (2, 16)


def test_unet_config_takes_a_numpy_integer_size():
    """A size read from an array's shape or a numpy computation is an integer, not a refused one."""
    assert unet_config("tiny", np.int64(28)) == unet_config("tiny", 28)
    with pytest.raises(ValueError, match="expected sample_size divisible by 8 for preset 'base', got 28"):
        unet_config("base", np.int64(28))


def test_encode_latents_refuses_images_the_vae_cannot_tile():
    """A 15 px image gave 7 px latents that decode to 14 px, silently."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=2, norm_num_groups=4, sample_size=16,
    ).eval()  # fmt: skip
    assert encode_latents(vae, torch.zeros(1, 1, 16, 16), sample=False).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"H and W multiples of the VAE's scale factor 2, got \(1, 1, 15, 15\)"):
        encode_latents(vae, torch.zeros(1, 1, 15, 15))

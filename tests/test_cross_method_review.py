"""QA (session 59, a methods researcher running the three methods side by side): `evaluate` titled each report with
the model folder's name, so a U-Net's and an RC-DiT's folders, both `pipeline`, read alike, and metrics.json did not
say which method it measured."""

import json

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.cli import main
from diffusion_classifiers.data import load_image_classification_data
from diffusion_classifiers.models import LinearProbeHead, unet_config

from .test_rc_dit import tiny_pipeline


def test_evaluate_names_the_method_in_its_title_and_metrics(tmp_path):
    torch.manual_seed(0)
    head = LinearProbeHead(in_features=32, num_classes=10, block="mid_block", timestep=10)
    unet = UNet2DModel(**unet_config("tiny", 16))
    UNetFeatureClassifierPipeline(unet=unet, scheduler=DDPMScheduler(), head=head).save_pretrained(
        tmp_path / "unet" / "pipeline"
    )
    rc_dit = tiny_pipeline()
    train = load_image_classification_data("digits", **rc_dit.loader_kwargs)["train"]
    rc_dit.fit_prototypes(train.images[:50], train.labels[:50], class_names=train.class_names)
    rc_dit.save_pretrained(tmp_path / "rc_dit" / "pipeline")
    titles = {}
    for method, label in (("unet", "Frozen DDPM U-Net features"), ("rc_dit", "Representation-conditioned DiT")):
        out = tmp_path / f"eval_{method}"
        main(["evaluate", "--model_dir", str(tmp_path / method / "pipeline"), "--dataset", "digits",
              "--output_dir", str(out)])  # fmt: skip
        titles[method] = (out / "report.md").read_text().splitlines()[0]
        assert titles[method] == f"# {label} (pipeline) on digits (test)"
        recorded = json.loads((out / "metrics.json").read_text())
        assert recorded["method"] == {"unet": "unet_features", "rc_dit": "rc_dit"}[method]
    assert titles["unet"] != titles["rc_dit"]

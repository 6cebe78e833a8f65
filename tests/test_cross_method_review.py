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


def test_probes_test_figures_record_what_evaluates_do(tmp_path):
    """probe's metrics.json did not say which split, data, preprocessing or method it measured, nor whether its test
    images were checked against the U-Net's training images, as evaluate's and fit-head's do."""
    import numpy as np
    from sklearn.datasets import load_digits

    from diffusion_classifiers.data.split_record import save_split_record

    from .conftest import digit_folder

    # a folder `digits` of 80 digits 0 and 1, recorded by its name: what is recorded does not depend on the data, and
    # all 1797 digits made the probe take twice as long
    data = tmp_path / "digits"
    digit_folder(data, np.flatnonzero(load_digits().target <= 1)[:80])
    torch.manual_seed(0)
    unet_dir = tmp_path / "unet"
    pipe = UNetFeatureClassifierPipeline(unet=UNet2DModel(**unet_config("tiny", 8)), scheduler=DDPMScheduler())
    pipe.save_pretrained(unet_dir)
    trained_on = load_image_classification_data(str(data), **pipe.loader_kwargs)["train"]
    save_split_record(unet_dir, val_fraction=0.1, test_fraction=0.2, seed=0, train_images=trained_on.images)
    main(["probe", "--unet_dir", str(unet_dir), "--dataset", str(data), "--timesteps", "20", "--C", "1",
          "--output_dir", str(tmp_path / "probe")])  # fmt: skip
    test = json.loads((tmp_path / "probe" / "metrics.json").read_text())["test"]
    assert (test["split"], test["dataset"], test["method"]) == ("test", "digits", "unet_features")
    probed = UNetFeatureClassifierPipeline.from_pretrained(tmp_path / "probe" / "pipeline")
    assert test["training_images_checked"] is True and test["preprocessing"] == probed.preprocessing.to_dict()

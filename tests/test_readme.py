"""Every Python block of README.md runs as written, in a folder laid out as the README assumes.

The folder holds tiny saved pipelines where the README's commands would have written trained ones
(`outputs/...`), a small stratified excerpt of PneumoniaMNIST and the CQ500 DICOM sample at `../shared/data/...`;
each block then runs alone, in a fresh namespace, with the folder as working directory. A README snippet that
stops running fails here.
"""

import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_classifiers import (
    RepresentationConditionedDiTPipeline,
    ScoreSDEClassifierPipeline,
    UNetFeatureClassifierPipeline,
)
from diffusion_classifiers.data import stratified_subset_indices
from diffusion_classifiers.models import (
    LinearProbeHead,
    RepresentationConditionedDiTModel,
    build_vit_encoder,
    rc_dit_config,
    unet_config,
)

from .conftest import REPO_ROOT, shared_data

PNEUMONIA = ("medmnist_pneumonia", "pneumoniamnist.npz")
DICOM_SAMPLE = "cq500_dicom_sample"
IMAGES_PER_SPLIT = {"train": 40, "val": 16, "test": 16}


def readme_python_blocks() -> list:
    text = (REPO_ROOT / "README.md").read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 2
        blocks.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return blocks


def small_unet(sample_size: int, num_class_embeds=None) -> UNet2DModel:
    torch.manual_seed(0)
    config = unet_config("tiny", sample_size, num_class_embeds=num_class_embeds)
    config.update(block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=4)
    return UNet2DModel(**config)


def write_pneumonia_excerpt(path) -> None:
    data = np.load(shared_data(*PNEUMONIA))
    excerpt = {}
    for split, size in IMAGES_PER_SPLIT.items():
        labels = data[f"{split}_labels"]
        keep = stratified_subset_indices(labels.ravel(), size, seed=0)
        excerpt[f"{split}_images"], excerpt[f"{split}_labels"] = data[f"{split}_images"][keep], labels[keep]
    path.parent.mkdir(parents=True)
    np.savez(path, **excerpt)


def save_readme_models(outputs) -> None:
    head = LinearProbeHead(16, 10, class_names=[str(i) for i in range(10)], block="mid_block", timestep=50)
    UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=DDPMScheduler(), head=head).save_pretrained(
        outputs / "demo" / "pipeline"
    )
    UNetFeatureClassifierPipeline(unet=small_unet(28), scheduler=DDPMScheduler()).save_pretrained(outputs / "unet-pneumonia")
    UNetFeatureClassifierPipeline(unet=small_unet(16), scheduler=DDPMScheduler()).save_pretrained(outputs / "unet-plankton")
    ScoreSDEClassifierPipeline(
        small_unet(8, num_class_embeds=3), DDPMScheduler(), class_names=["normal", "pneumonia"]
    ).save_pretrained(outputs / "score-sde-pneumonia")
    torch.manual_seed(0)
    encoder = build_vit_encoder(28, 1, 24, num_layers=1, num_heads=2, patch_size=7)
    transformer = RepresentationConditionedDiTModel(**rc_dit_config("tiny", 28, 1, 24, hidden_size=16, num_layers=1, patch_size=7))
    RepresentationConditionedDiTPipeline(encoder=encoder, transformer=transformer, scheduler=DDPMScheduler()).save_pretrained(
        outputs / "rc-dit-pneumonia"
    )


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    write_pneumonia_excerpt(root / "shared" / "data" / PNEUMONIA[0] / PNEUMONIA[1])
    for folder in (DICOM_SAMPLE, "plankton_flowcam_demo"):
        (root / "shared" / "data" / folder).symlink_to(shared_data(folder), target_is_directory=True)
    save_readme_models(root / "project" / "outputs")
    return root / "project"


def test_the_readme_has_python_blocks():
    assert len(readme_python_blocks()) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("block", readme_python_blocks())
def test_readme_block_runs_as_written(block, readme_folder, monkeypatch):
    monkeypatch.chdir(readme_folder)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})

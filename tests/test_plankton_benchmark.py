"""benchmarks/plankton_accuracy.py's choices: the U-Net feature for the shift chosen on val by the shift's own
few-shot protocol, and the CNN's step budget per label regime. No training."""

import sys

import torch

from .conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import plankton_accuracy  # noqa: E402

sys.path.remove(str(REPO_ROOT / "benchmarks"))


def test_the_shift_feature_is_the_one_whose_val_classes_prototypes_separate():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(6)
    labels = torch.cat([labels, torch.tensor([4])])  # a class with one val image cannot be cross-validated
    noise = torch.randn(len(labels), 4, generator=generator)
    separable = noise * 0.1 + torch.nn.functional.one_hot(labels, 5)[:, :4].float()  # a class per dimension
    grid = {("mean", "mid_block", 25): noise, ("2x2", "mid_block", 25): separable}
    key, scores = plankton_accuracy.choose_shift_feature(grid, labels, num_episodes=2, seed=0)
    assert key == ("2x2", "mid_block", 25)
    assert scores["2x2/mid_block/25"] == 1.0 and scores["mean/mid_block/25"] < 0.6


def test_no_shift_feature_is_chosen_when_no_two_val_classes_have_two_images():
    grid = {("mean", "mid_block", 25): torch.randn(4, 3)}
    labels = torch.tensor([0, 0, 1, 2])
    assert plankton_accuracy.choose_shift_feature(grid, labels, num_episodes=1, seed=0) == (None, {})


def test_the_cnn_trains_for_its_epochs_but_never_fewer_than_its_minimum_steps():
    cpu = plankton_accuracy.PRESETS["cpu"]
    assert cpu.cnn_steps_for(21_824) == 6_820  # 20 passes over all labels, batch 64
    assert cpu.cnn_steps_for(258) == cpu.cnn_steps == 1_400  # 1% of the labels: 81 steps would be too few

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from diffusion_classifiers.models import SupervisedCNN, count_parameters
from diffusion_classifiers.training import predict_proba, train_supervised_cnn


@pytest.fixture(scope="module")
def digits():
    """scikit-learn digits at 8x8 in [-1, 1], split 1000 train / 300 val / the rest test."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8 - 1
    labels = torch.tensor(data.target)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    train, val, test = order[:1000], order[1000:1300], order[1300:]
    return (images[train], labels[train]), (images[val], labels[val]), (images[test], labels[test])


def _train(digits, tmp_path, **kwargs):
    (x, y), (xv, yv), _ = digits
    options = dict(max_train_steps=150, train_batch_size=64, learning_rate=3e-3, seed=0, widths=(16, 32))
    options.update(kwargs)
    return train_supervised_cnn(x, y, xv, yv, 10, str(tmp_path), **options)


def test_learns_digits_and_selects_on_val(digits, tmp_path):
    model, info = _train(digits, tmp_path)
    test_images, test_labels = digits[2]
    probs = predict_proba(model, test_images, batch_size=100)
    assert probs.shape == (len(test_labels), 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(test_labels)))
    assert (probs.argmax(1) == test_labels).float().mean() > 0.9
    assert sorted(info["val_accuracy_by_step"]) == [30, 60, 90, 120, 150]
    assert info["val_accuracy_by_step"][info["selected_step"]] == max(info["val_accuracy_by_step"].values())
    # the loaded weights are the selected checkpoint's: recomputing val accuracy gives the recorded figure
    val_images, val_labels = digits[1]
    val_accuracy = (predict_proba(model, val_images).argmax(1) == val_labels).double().mean().item()
    assert val_accuracy == info["val_accuracy_by_step"][info["selected_step"]]
    assert info["num_parameters"] == count_parameters(model)


def test_same_seed_same_model(digits, tmp_path):
    first, _ = _train(digits, tmp_path / "a", max_train_steps=20, augment=True, num_checkpoints=2)
    second, _ = _train(digits, tmp_path / "b", max_train_steps=20, augment=True, num_checkpoints=2)
    third, _ = _train(digits, tmp_path / "c", max_train_steps=20, augment=True, num_checkpoints=2, seed=1)
    images = digits[2][0][:50]
    torch.testing.assert_close(predict_proba(first, images), predict_proba(second, images), rtol=0, atol=0)
    assert not torch.allclose(predict_proba(first, images), predict_proba(third, images))


def test_shapes_and_parameter_count():
    model = SupervisedCNN(in_channels=3, num_classes=4, widths=(8, 16, 24))
    assert model(torch.randn(5, 3, 28, 28)).shape == (5, 4)
    convs = (3 * 8 + 8 * 8) * 9 + 8 * 2 + (8 * 16 + 16 * 16) * 9 + 16 * 2 + (16 * 24 + 24 * 24) * 9 + 24 * 2
    norms = 2 * 2 * (8 + 16 + 24)
    assert count_parameters(model) == convs + norms + 24 * 4 + 4
    with pytest.raises(ValueError, match="num_classes >= 2"):
        SupervisedCNN(num_classes=1)


def test_rejects_labels_outside_range(tmp_path):
    images, labels = torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"^labels\[2\] = 2 is outside the expected range \[0, 1\]"):
        train_supervised_cnn(images, labels, images, labels.clamp(max=1), 2, str(tmp_path), max_train_steps=1)
    with pytest.raises(ValueError, match=r"^val_labels\[0\] = -1 is outside"):
        train_supervised_cnn(images, labels, images, labels - 1, 3, str(tmp_path), max_train_steps=1)
    with pytest.raises(ValueError, match="one label per image in val_labels"):
        train_supervised_cnn(images, labels, images, labels[:4], 3, str(tmp_path), max_train_steps=1)
    with pytest.raises(ValueError, match="val_images: image 1 contains NaN or inf"):
        bad = images.clone()
        bad[1, 0, 3, 3] = float("nan")
        train_supervised_cnn(images, labels, bad, labels, 3, str(tmp_path), max_train_steps=1)
    assert not any(tmp_path.iterdir())  # fails before training writes anything

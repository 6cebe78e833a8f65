"""Review of the evaluation protocols on frozen features (`probing/protocols.py`, `probing/probe_grid.py`): constant
features in the label-free choice, the statistics few-shot standardisation is fitted on, columns constant on the
labelled or train split, and the probe grid's memory when it scores many pairs, classes and images."""

import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from diffusion_classifiers.metrics import classification_metrics
from diffusion_classifiers.probing import (
    clustering_stability,
    evaluate_protocols,
    few_shot_indices,
    fit_probe_grid,
    knn_classify,
    prototype_classify,
    select_clustering_without_labels,
)
from diffusion_classifiers.probing.probe_grid import _head_scores
from diffusion_classifiers.validation import derived_seed


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits in [0, 1], shuffled once; pixel 0 is 0 in every image."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order] / 16).astype(np.float32), y[order]


@pytest.fixture(scope="module")
def sparse_three_classes(digits):
    """ReLU features of the digits 0, 1, 2 (about half the entries exactly 0, as U-Net / ViT activations), cut into
    300 train and 237 test images."""
    x, y = digits
    x, y = x[y < 3], y[y < 3]
    weights = np.random.default_rng(0).normal(size=(64, 256))
    features = np.maximum((x - x.mean(0)) @ weights, 0).astype(np.float32)
    return features[:300], y[:300], features[300:], y[300:]


def _with_a_column_constant_on(features: np.ndarray, constant_rows: slice, value: float = 0.1) -> np.ndarray:
    """`features` with column 0 (0 in every digit) set to `value` on `constant_rows` and to noise around it elsewhere:
    a column the fit sees as constant, which new images move."""
    changed = features.copy()
    changed[:, 0] = value + 0.05 * np.random.default_rng(1).normal(size=len(features))
    changed[constant_rows, 0] = value
    return changed


# ---------------------------------------------------------------------------------------------------------------
# Label-free choice: constant features are not the "most stable"
# ---------------------------------------------------------------------------------------------------------------


def test_constant_features_score_chance_stability_and_are_never_chosen(digits):
    # k-means on a constant feature (a dead channel) finds one cluster from either half, and the ARI of two
    # one-cluster labelings is 1: it outranked every real feature (0.59 here), then the silhouette of its single
    # cluster raised "Number of labels is 1". Also when a feature has fewer distinct rows than K.
    x = digits[0][:600]
    dead, two_rows = np.zeros_like(x), np.repeat(x[:2], 300, axis=0)
    assert clustering_stability(dead, 10) == 0.0 and clustering_stability(two_rows, 10) == 0.0
    assert 0.3 < clustering_stability(x, 10) < 1.0
    features = {("dead", 0): dead, ("digits", 0): x, ("two_rows", 0): two_rows}
    for criterion in ("stability", "silhouette"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn: fewer distinct points than clusters
            choice = select_clustering_without_labels(features, [2, 10], 10, criterion=criterion)
        assert choice["pair"] == ["digits", 0], criterion


# ---------------------------------------------------------------------------------------------------------------
# Few-shot standardisation: the whole train split's statistics, summed in float64
# ---------------------------------------------------------------------------------------------------------------


def _standardised_with(reference: np.ndarray, *features: np.ndarray):
    mean, std = reference.astype(np.float64).mean(0), np.maximum(reference.astype(np.float64).std(0), 1e-6)
    return [((x - mean) / std).astype(np.float32) for x in features]


def test_few_shot_episodes_standardise_with_the_whole_train_split(sparse_three_classes):
    # With `standardize=True`, each 1-shot episode standardised with its own 3 labelled samples: columns where the 3
    # happen to agree get a std near 0 and outweigh the rest, and 1-shot accuracy fell from 0.80 (raw) to 0.62 (10
    # episodes). The train split's features (no label) give every column a std from 300 images: 0.81.
    x_train, y_train, x_test, y_test = sparse_three_classes
    result = evaluate_protocols(
        x_train, y_train, x_test, y_test, 3, shots=(1,), num_episodes=4, standardize=True, linear_probe=False,
        kmeans_normalizations=("standardize",), progress_bar={"disable": True},
    )  # fmt: skip
    shots, queries = _standardised_with(x_train, x_train, x_test)
    for episode, (prototype, knn) in enumerate(
        zip(result["prototype"]["1"]["accuracy_per_episode"], result["knn"]["1"]["accuracy_per_episode"])
    ):
        index = few_shot_indices(y_train, 1, seed=derived_seed(0, episode))
        expected_prototype = np.mean(prototype_classify(shots[index], y_train[index], queries, 3)[0] == y_test)
        expected_knn = np.mean(knn_classify(shots[index], y_train[index], queries, 1, 3)[0] == y_test)
        # float32 vs float64 standardisation may flip a test image on a near-tie of two cosines: at most one
        assert prototype == pytest.approx(expected_prototype, abs=1.01 / len(y_test))
        assert knn == pytest.approx(expected_knn, abs=1.01 / len(y_test))
    raw = evaluate_protocols(
        x_train, y_train, x_test, y_test, 3, shots=(1,), num_episodes=4, linear_probe=False,
        kmeans_normalizations=("standardize",), progress_bar={"disable": True},
    )  # fmt: skip
    # standardising is not worse than the raw features by more than a few of the 237 images (it was 18 points)
    assert result["prototype"]["1"]["accuracy_mean"] > raw["prototype"]["1"]["accuracy_mean"] - 0.03


def test_a_column_constant_on_the_labelled_set_is_ignored_by_prototypes_and_knn(digits):
    # The labelled set's mean of a constant 0.1 column, summed in float32, missed 0.1 by ~1e-8; the std clamped at
    # 1e-6 made the column ~0.01 in every labelled sample and ~5e4 in a test image moved by 0.05: it outweighed all
    # other columns, and accuracy fell from 0.94 to 0.17 (k-NN) and 0.88 to 0.16 (prototypes). Standardised exactly,
    # the column is 0 in every labelled sample and prototype, so it scales all of a test image's cosines alike.
    x, y = digits
    changed = _with_a_column_constant_on(x, slice(0, 1000))
    train, test = slice(0, 1000), slice(1000, None)
    for classify in (prototype_classify, lambda *a, **k: knn_classify(*a, k=10, **k)):
        plain = classify(x[train], y[train], x[test], num_classes=10, standardize=True)[0]
        moved = classify(changed[train], y[train], changed[test], num_classes=10, standardize=True)[0]
        assert np.mean(plain == y[test]) > 0.85
        # the test image's norm changes, its cosines are rescaled alike: at most a near-tie flips, one image at most
        assert np.sum(plain != moved) <= 1


def test_a_saved_prototype_head_ignores_a_column_constant_on_its_labelled_set(digits):
    # fit_prototypes(standardize=True), whose head a pipeline saves, had the same float32 mean: digits accuracy
    # 0.862 -> 0.205 with a column constant at 0.1 on the labelled images (review); now the head of plain digits'
    from diffusion_classifiers.models import fit_prototypes

    x, y = digits
    train, test = slice(0, 1000), slice(1000, None)
    changed = _with_a_column_constant_on(x, train)
    plain = fit_prototypes(x[train], y[train], num_classes=10, standardize=True)
    moved = fit_prototypes(changed[train], y[train], num_classes=10, standardize=True)
    with torch.no_grad():
        predictions = [head.similarities(torch.as_tensor(f[test])).argmax(1) for head, f in ((plain, x), (moved, changed))]
    assert np.mean(predictions[0].numpy() == y[test]) > 0.8 and int((predictions[0] != predictions[1]).sum()) <= 1


# ---------------------------------------------------------------------------------------------------------------
# The probe grid
# ---------------------------------------------------------------------------------------------------------------


def test_the_probe_grid_gives_no_weight_to_a_column_constant_on_train(digits):
    # The grid's float32 train mean of a constant 0.1 column missed it by a rounding error: standardised by the clamped
    # std the column became a constant ~0.01, which took a weight (8e-4) like a second bias, and val / test values
    # moved by 0.05 became ~5e4: val accuracy 0.95 -> 0.32. Centred exactly, the column is 0 on train, keeps weight 0,
    # and the fit is that of the digits whose pixel 0 is 0 everywhere, to the last bit.
    x, y = digits
    train, val, test = slice(0, 600), slice(600, 900), slice(900, 1200)
    changed = _with_a_column_constant_on(x, train)
    key, options = ("f", 0), dict(pool=None, device="cpu", progress_bar={"disable": True})
    fits = [
        fit_probe_grid({key: f[train]}, y[train], {key: f[val]}, y[val], {key: f[test]}, y[test], **options)
        for f in (x, changed)
    ]
    assert fits[1].metrics == fits[0].metrics and fits[0].metrics[key]["val"]["accuracy"] > 0.9
    assert torch.equal(fits[1].head.linear.weight, fits[0].head.linear.weight)
    assert float(fits[1].head.linear.weight[:, 0].abs().max()) == 0.0


def test_the_grid_scores_equal_classification_metrics_with_absent_and_unpredicted_classes():
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.choice([0, 1, 3, 4], size=50))  # class 2 absent from the labels
    pred = torch.as_tensor(rng.choice([0, 1, 2, 4], size=(3, 50)))  # class 3 never predicted
    scores = _head_scores(pred, torch.zeros(3, dtype=torch.float64), y, 5)
    for row, head in zip(pred, scores):
        reference = classification_metrics(y.numpy(), row.numpy(), num_classes=5)
        for name in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert head[name] == pytest.approx(reference[name], abs=1e-12), name


def _peak_memory_mib() -> float:
    """This process's resident-memory high-water mark (Linux: VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def _reset_peak_memory() -> None:
    """Set the high-water mark to the current resident memory (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the memory high-water mark of /proc")
def test_scoring_the_grid_does_not_build_one_hot_matrices_of_every_pair_image_and_class():
    # 40 pairs, 121 classes, 8,000 val images: one-hot [P, N, K] float64 matrices are 310 MB each, and the scoring
    # peaked 600 MiB above its inputs (2.4 GB at 32,000 test images). Counting per class needs [P, N] and [P, K]
    # tensors: the predictions themselves are 2.5 MB.
    num_pairs, num_images, num_classes = 40, 8000, 121
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, num_classes, (num_pairs, num_images), generator=generator)
    y = torch.randint(0, num_classes, (num_images,), generator=generator)
    _reset_peak_memory()
    before = _peak_memory_mib()
    _head_scores(pred, torch.zeros(num_pairs, dtype=torch.float64), y, num_classes)
    assert _peak_memory_mib() - before < 64  # one one-hot matrix alone would be 295 MiB

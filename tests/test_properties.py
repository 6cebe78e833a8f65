"""Property-based tests (hypothesis): preprocessing, splits, metrics and the batched probe on many generated inputs.

The "ci" profile of conftest.py makes the draws deterministic (derandomize, no example database); each test caps its
own number of examples so the file runs in well under a minute on 2 CPU cores.
"""

import itertools
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from diffusion_classifiers.data import (
    few_label_indices,
    long_tailed_indices,
    preprocess_images,
    stratified_split,
    stratified_subset_indices,
)
from diffusion_classifiers.metrics import classification_metrics, clustering_metrics
from diffusion_classifiers.probing import fit_probe_grid

# ------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------------------------

# Sides >= 5 (never 1 or 3), so that no layout is ambiguous even where it is inferred.
SIDES = st.integers(5, 12)
# float32 mappings of [0, 255] to [-1, 1] round at most 3 times on values of magnitude <= 1 (scale, shift, cast).
UNIT_ROUNDING = 3 * 2.0**-24


@st.composite
def uint8_images(draw, batch=None):
    """A uint8 channels-last image [H, W, C] (or batch [N, H, W, C]), C in {1, 3}, with at least one pixel < 128
    (so the same image mapped to [-1, 1] has a negative value and reads as signed)."""
    shape = (draw(SIDES), draw(SIDES), draw(st.sampled_from([1, 3])))
    if batch is not None:
        shape = (draw(batch),) + shape
    image = draw(arrays(np.uint8, shape, elements=st.integers(0, 255)))
    image.reshape(-1, shape[-1])[0] = draw(st.integers(0, 127))
    return image


def canonical(image_hwc: np.ndarray) -> torch.Tensor:
    """The documented mapping, in float64: uint8 [N, H, W, C] or [H, W, C] -> [N, C, H, W] in [-1, 1]."""
    batch = image_hwc if image_hwc.ndim == 4 else image_hwc[None]
    return torch.from_numpy(batch).permute(0, 3, 1, 2).double() / 127.5 - 1


def as_pil(image_hwc: np.ndarray) -> Image.Image:
    return Image.fromarray(image_hwc[..., 0], "L") if image_hwc.shape[-1] == 1 else Image.fromarray(image_hwc, "RGB")


@pytest.mark.numerics
@settings(max_examples=40)
@given(uint8_images())
def test_every_form_of_an_image_gives_its_canonical_tensor(image):
    chw = torch.from_numpy(image).permute(2, 0, 1)
    # uint8 in any container and layout takes the same float32 path: bit-identical.
    uint8_forms = {
        "numpy HWC": preprocess_images(image, input_data_format="channels_last"),
        "numpy HWC, layout inferred": preprocess_images(image),
        "numpy CHW": preprocess_images(np.ascontiguousarray(chw.numpy()), input_data_format="channels_first"),
        "PIL": preprocess_images(as_pil(image)),
        "tensor CHW": preprocess_images(chw, input_data_format="channels_first"),
        "tensor CHW, layout inferred": preprocess_images(chw),
    }
    reference = uint8_forms["numpy HWC"]
    assert reference.dtype == torch.float32 and reference.shape == (1, image.shape[2], *image.shape[:2])
    for name, tensor in uint8_forms.items():
        assert torch.equal(tensor, reference), name
    # Float forms, [0, 1] and [-1, 1], round differently: equal to the canonical values up to float32 rounding.
    float_forms = {
        "float [0, 1]": preprocess_images(chw.float() / 255, input_data_format="channels_first"),
        "float [-1, 1]": preprocess_images(chw.double() / 127.5 - 1, input_data_format="channels_first"),
        "numpy float [0, 1]": preprocess_images((image / 255).astype(np.float32), input_data_format="channels_last"),
    }
    for name, tensor in {"uint8": reference, **float_forms}.items():
        torch.testing.assert_close(tensor.double(), canonical(image), atol=UNIT_ROUNDING, rtol=0, msg=name)


@settings(max_examples=25)
@given(uint8_images(batch=st.integers(1, 4)), st.none() | st.tuples(SIDES, SIDES))
def test_a_list_of_images_equals_the_batch(batch, image_size):
    nchw = torch.from_numpy(batch).permute(0, 3, 1, 2)
    run = lambda images, **kw: preprocess_images(images, image_size=image_size, **kw)  # noqa: E731
    reference = run(batch, input_data_format="channels_last")
    n, height, width, channels = batch.shape
    assert reference.shape == (n, channels, *(image_size or (height, width)))
    assert reference.min() >= -1 and reference.max() <= 1
    forms = {
        "list of numpy HWC": run(list(batch), input_data_format="channels_last"),
        "list of PIL": run([as_pil(image) for image in batch]),
        "tensor NCHW": run(nchw, input_data_format="channels_first"),
        "list of tensors CHW": run(list(nchw), input_data_format="channels_first"),
        "list of 1-image batches": run([image[None] for image in batch], input_data_format="channels_last"),
    }
    for name, tensor in forms.items():  # each image is scaled and resized on its own: the same numbers
        assert torch.equal(tensor, reference), name
    # A list may mix sizes once a common size is asked for; each image comes out as it would alone.
    if image_size is not None and n > 1:
        mixed = [batch[0], batch[1, :-1, 1:]]
        out = run(mixed, input_data_format="channels_last")
        for i, image in enumerate(mixed):
            assert torch.equal(out[i : i + 1], run(image, input_data_format="channels_last"))


@pytest.mark.numerics
@settings(max_examples=25)
@given(uint8_images(batch=st.integers(1, 3)))
def test_channel_conversion_is_repetition_or_luma(batch):
    images = preprocess_images(batch, input_data_format="channels_last")
    grey_to_rgb = preprocess_images(batch, num_channels=3, input_data_format="channels_last")
    rgb_to_grey = preprocess_images(batch, num_channels=1, input_data_format="channels_last")
    if images.shape[1] == 1:
        assert torch.equal(grey_to_rgb, images.repeat(1, 3, 1, 1)) and torch.equal(rgb_to_grey, images)
    else:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
        expected = (images.double() * luma[:, None, None]).sum(1, keepdim=True)
        # a 3-term weighted sum of values in [-1, 1] (weights summing to 1): float32 round-off <= 3 * 2^-24
        torch.testing.assert_close(rgb_to_grey.double(), expected, atol=3 * 2.0**-24, rtol=0)
        assert torch.equal(grey_to_rgb, images)


# ------------------------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------------------------

LABELS = st.lists(st.integers(0, 5), min_size=1, max_size=80).map(np.array)
SEEDS = st.integers(0, 2**32 - 1)


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def is_sorted_unique_index(index: np.ndarray, n: int) -> bool:
    return index.dtype == np.int64 and np.array_equal(index, np.unique(index)) and (len(index) == 0 or index[-1] < n)


def per_class(labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.bincount(labels[index], minlength=labels.max() + 1)


@settings(max_examples=60)
@given(LABELS, st.floats(0.01, 0.99), SEEDS)
def test_stratified_split_partitions_every_class_as_documented(labels, fraction, seed):
    kept, split = stratified_split(labels, fraction, seed)
    assert is_sorted_unique_index(kept, len(labels)) and is_sorted_unique_index(split, len(labels))
    assert len(np.intersect1d(kept, split)) == 0 and len(kept) + len(split) == len(labels)
    sizes = np.bincount(labels)
    expected = [min(max(round_half_up(fraction * n), 1), n - 1) if n >= 2 else 0 for n in sizes]
    assert per_class(labels, split).tolist() == expected
    assert (per_class(labels, kept)[sizes > 0] >= 1).all()  # every class present stays in `kept`
    again = stratified_split(torch.as_tensor(labels), fraction, seed)  # same seed, same split; tensors as arrays
    assert np.array_equal(again[0], kept) and np.array_equal(again[1], split)


@settings(max_examples=60)
@given(LABELS, st.integers(1, 100), SEEDS)
def test_stratified_subset_is_the_split_part_or_everything(labels, size, seed):
    subset = stratified_subset_indices(labels, size, seed)
    assert is_sorted_unique_index(subset, len(labels))
    assert np.array_equal(subset, stratified_subset_indices(list(labels), size, seed))
    if size >= len(labels):
        assert np.array_equal(subset, np.arange(len(labels)))
    else:
        assert np.array_equal(subset, stratified_split(labels, size / len(labels), seed)[1])
        sizes = np.bincount(labels)
        assert ((per_class(labels, subset) >= 1) == (sizes >= 2)).all()  # classes of 2 or more are covered


@settings(max_examples=60)
@given(LABELS, st.integers(1, 20), st.integers(1, 20), SEEDS)
def test_few_label_subsets_are_per_class_and_nested(labels, n_small, n_large, seed):
    n_small, n_large = sorted((n_small, n_large))
    small, large = (few_label_indices(labels, n_per_class=n, seed=seed) for n in (n_small, n_large))
    sizes = np.bincount(labels)
    for index, n in ((small, n_small), (large, n_large)):
        assert is_sorted_unique_index(index, len(labels))
        assert per_class(labels, index).tolist() == np.minimum(sizes, n).tolist()  # every present class covered
    assert np.isin(small, large).all()  # for one seed a smaller subset lies inside a larger one
    assert np.array_equal(small, few_label_indices(labels, n_per_class=n_small, seed=seed))


@settings(max_examples=60)
@given(LABELS, st.floats(0.01, 1.0), SEEDS)
def test_few_label_fraction_keeps_at_least_one_of_each_class(labels, fraction, seed):
    index = few_label_indices(labels, fraction=fraction, seed=seed)
    sizes = np.bincount(labels)
    expected = [min(max(1, round_half_up(fraction * n)), n) for n in sizes]
    assert is_sorted_unique_index(index, len(labels)) and per_class(labels, index).tolist() == expected
    assert np.array_equal(index, few_label_indices(labels, fraction=fraction, seed=seed))


@settings(max_examples=60)
@given(LABELS, st.floats(1.0, 100.0), SEEDS)
def test_long_tailed_subset_follows_the_exponential_profile(labels, imbalance_ratio, seed):
    index = long_tailed_indices(labels, imbalance_ratio, seed)
    assert is_sorted_unique_index(index, len(labels))
    sizes = np.bincount(labels)
    num_classes, n_max = len(sizes), sizes.max()
    counts = per_class(labels, index)
    for c, (n, kept) in enumerate(zip(sizes, counts)):
        target = n_max * imbalance_ratio ** (-c / (num_classes - 1)) if num_classes > 1 else n_max
        # floor of the target, capped at the class size (a target within 1e-9 of an integer may round either way)
        assert min(n, np.floor(target - 1e-9)) <= kept <= min(n, np.floor(target + 1e-9)), (c, n, target)
    assert counts[0] == sizes[0]  # class 0 is the head: kept whole
    assert np.array_equal(index, long_tailed_indices(labels, imbalance_ratio, seed))


# ------------------------------------------------------------------------------------------------------------------
# Metrics against scikit-learn
# ------------------------------------------------------------------------------------------------------------------


@st.composite
def predictions(draw):
    """(y_true, y_pred, probs, K): K in 2..4 classes, N in 1..40 samples, probabilities with rows summing to 1."""
    num_classes = draw(st.integers(2, 4))
    n = draw(st.integers(1, 40))
    labels = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n).map(np.array)
    scores = draw(arrays(np.float64, (n, num_classes), elements=st.floats(0.01, 1.0)))
    return draw(labels), draw(labels), scores / scores.sum(1, keepdims=True), num_classes


@settings(max_examples=60)
@given(predictions())
def test_classification_metrics_equal_scikit_learn(data):
    y_true, y_pred, probs, num_classes = data
    result = classification_metrics(y_true, y_pred, probs, num_classes=num_classes)
    labels = list(range(num_classes))
    with warnings.catch_warnings():  # sklearn warns about classes absent from y_true / y_pred; the values stand
        warnings.simplefilter("ignore")
        assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
        present = np.unique(y_true)  # the classes the data holds (a class only predicted counts in none)
        assert result["macro_f1"] == pytest.approx(
            skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        )
        assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
        for name, score in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
            expected = score(y_true, y_pred, labels=labels, average=None, zero_division=0)
            assert [result["per_class"][str(k)][name] for k in labels] == pytest.approx(expected.tolist()), name
    support = [result["per_class"][str(k)]["support"] for k in labels]
    assert support == np.bincount(y_true, minlength=num_classes).tolist()
    assert result["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    present = np.unique(y_true)
    if len(present) < 2:
        assert result["auc"] is None and "only class" in result["auc_unavailable_reason"]
    elif num_classes == 2:
        assert result["auc"] == pytest.approx(skm.roc_auc_score(y_true, probs[:, 1]))
    elif len(present) == num_classes:
        assert result["auc"] == pytest.approx(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    else:  # one-vs-rest over the classes present (scikit-learn's "ovr" needs them all)
        expected = np.mean([skm.roc_auc_score(y_true == k, probs[:, k]) for k in present])
        assert result["auc"] == pytest.approx(expected)
    if num_classes == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recall = skm.recall_score(y_true, y_pred, labels=[0, 1], average=None, zero_division=0)
        # a class without images has no recall: None, where scikit-learn's zero_division gives 0
        expected = [None if support[k] == 0 else pytest.approx(recall[k]) for k in (1, 0)]
        assert [result["sensitivity"], result["specificity"]] == expected


def best_matching_accuracy(y_true: np.ndarray, clusters: np.ndarray, num_classes: int) -> float:
    """Brute force: the largest fraction of samples a one-to-one cluster -> class map gets right."""
    size = max(clusters.max() + 1, num_classes)
    best = 0
    for assignment in itertools.permutations(range(size)):  # cluster c -> class assignment[c] (if < num_classes)
        mapped = np.array(assignment)[clusters]
        best = max(best, int(np.sum(mapped == y_true)))
    return best / len(y_true)


@settings(max_examples=60)
@given(st.integers(2, 4).flatmap(lambda k: st.tuples(
    st.just(k),
    st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, 4)), min_size=1, max_size=40),
)))  # fmt: skip
def test_clustering_metrics_equal_scikit_learn_and_brute_force(data):
    num_classes, pairs = data
    y_true, clusters = (np.array(column) for column in zip(*pairs))
    result = clustering_metrics(y_true, clusters, num_classes)
    assert result["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y_true, clusters))
    assert result["ari"] == pytest.approx(skm.adjusted_rand_score(y_true, clusters))
    assert result["accuracy"] == pytest.approx(best_matching_accuracy(y_true, clusters, num_classes))
    contingency = skm.cluster.contingency_matrix(y_true, clusters)  # [classes present, clusters present]
    assert result["purity"] == pytest.approx(contingency.max(axis=0).sum() / len(y_true))
    mapping = np.array(result["cluster_to_class"])
    matched = mapping[mapping >= 0]
    assert len(set(matched.tolist())) == len(matched)  # one-to-one
    assert result["macro_f1"] == pytest.approx(
        skm.f1_score(y_true, mapping[clusters], labels=np.unique(y_true), average="macro", zero_division=0)
    )


# ------------------------------------------------------------------------------------------------------------------
# The batched probe against heads fitted alone
# ------------------------------------------------------------------------------------------------------------------


@st.composite
def probe_problems(draw):
    """A few (block, timestep) pairs of Gaussian-class features of different widths, their labels, and C."""
    rng = np.random.default_rng(draw(SEEDS))
    num_classes, n = draw(st.integers(2, 3)), draw(st.integers(30, 80))
    labels = np.arange(n) % num_classes  # every class, at least 10 samples each
    rng.shuffle(labels)
    features = {}
    for p in range(draw(st.integers(2, 3))):
        dim = draw(st.integers(1, 6))
        centers = rng.normal(size=(num_classes, dim)) * draw(st.sampled_from([0.0, 0.5, 2.0]))
        x = centers[labels] + rng.normal(size=(n, dim)) * rng.uniform(0.5, 3.0, size=dim) + rng.normal(size=dim)
        features[(f"block.{p}", 10 * p)] = torch.tensor(x, dtype=torch.float32)
    return features, labels, draw(st.sampled_from([0.1, 1.0, 10.0]))


@pytest.mark.numerics
@settings(max_examples=25)
@given(probe_problems())
def test_batched_probe_equals_heads_fitted_alone(problem):
    features, labels, C = problem
    kwargs = dict(C=C, tol=1e-5, device="cpu")
    grid = fit_probe_grid(features, labels, features, labels, **kwargs)
    n = len(labels)
    # As in tests/test_probing.py: the same L-BFGS iterations, so the weights differ by float32 round-off of the
    # gradient (~ sqrt(N) * 2^-24) amplified by 1 / lambda_min <= C N: atol = 4 sqrt(N) 2^-24 C N.
    atol = 4 * np.sqrt(n) * 2.0**-24 * C * n
    for pair in features:
        alone = fit_probe_grid({pair: features[pair]}, labels, {pair: features[pair]}, labels, **kwargs)
        assert (alone.n_iter[pair], alone.converged[pair]) == (grid.n_iter[pair], grid.converged[pair]), pair
        for name, tensor in alone.heads[pair].state_dict().items():
            torch.testing.assert_close(grid.heads[pair].state_dict()[name], tensor, atol=atol, rtol=0, msg=name)

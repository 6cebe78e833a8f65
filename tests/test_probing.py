import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss

from diffusion_classifiers.models import LinearProbeHead, PrototypeHead, fit_prototypes
from diffusion_classifiers.probing import (
    NORMALIZATIONS,
    ProbeGridResult,
    clustering_stability,
    evaluate_protocols,
    few_shot_indices,
    fit_probe_grid,
    kmeans_clusters,
    kmeans_evaluate,
    knn_classify,
    label_free_kmeans,
    normalize_features,
    prototype_classify,
    select_clustering_without_labels,
)
from diffusion_classifiers.probing.probe_grid import (
    _HISTORY,
    _Batch,
    _append_pair,
    _empty_history,
    _inverse_hessian_times,
)
from diffusion_classifiers.probing import protocols
from diffusion_classifiers.probing.protocols import _selection_rows
from diffusion_classifiers.validation import derived_seed


def _splits(features: dict, labels: np.ndarray, bounds=(0.5, 0.75)):
    """(train, val, test) tuples of (features dict, labels) cut at the given fractions."""
    cut = [0, int(bounds[0] * len(labels)), int(bounds[1] * len(labels)), len(labels)]
    return [({k: v[a:b] for k, v in features.items()}, labels[a:b]) for a, b in zip(cut, cut[1:])]


@pytest.fixture(scope="module")
def blob_grid():
    """An informative pair (overlapping blobs), a pure-noise pair and a weak pair (2 informative columns among noise),
    all of different widths so that padding is exercised; the heads converge after different numbers of iterations."""
    x, y = make_blobs(400, n_features=12, centers=3, cluster_std=4.0, random_state=0)
    rng = np.random.default_rng(0)
    features = {
        ("down_blocks.1", 10): torch.tensor(x, dtype=torch.float32),
        ("mid_block", 10): torch.tensor(rng.normal(size=(400, 5)), dtype=torch.float32),
        ("mid_block", 50): torch.tensor(np.concatenate([x[:, :2], rng.normal(size=(400, 18)) * 3 + 1], axis=1), dtype=torch.float32),
    }
    return _splits(features, y)


def _alone(pair, *arguments):
    """The arguments of fit_probe_grid restricted to one pair."""
    return [{pair: a[pair]} if isinstance(a, dict) else a for a in arguments]


# Weights of the batched and the lone fit of a head: both run the same L-BFGS steps, but the batched products sum
# over zero-padded features and the CPU kernel (default / AVX2 / AVX-512) picks the summation order, so the float32
# round-off differs. A gradient entry is a mean over N = 200 train samples of residual * standardised feature (both of
# rms <= 1): its round-off is ~ sqrt(N) * 2^-24 = 8.4e-7 (a random walk; worst case N * 2^-24 = 1.2e-5). L-BFGS turns a
# gradient error dg into a parameter error dg / lambda_min, and lambda_min >= l2 = 1 / (C N) = 5e-4 is nearly reached
# here (the blobs leave a direction of almost no data curvature: 5.7e-4 measured), so the weights agree to
# 8.4e-7 * C * N = 1.7e-3 (absolute: the bound does not scale with the weight). Measured: 3e-5 with the default and AVX2
# kernels, 1.4e-4 with AVX-512. A batching bug (a padded column with weight, a shared step) moves them by 1e-2 or more,
# and changes the iteration counts, which must be equal.
BATCHED_EQUALS_ALONE_ATOL = 2e-3


@pytest.mark.numerics
@pytest.mark.parametrize("early_stopping", [False, True])
def test_batched_grid_equals_heads_fitted_alone(blob_grid, early_stopping):
    # Each head has its own L-BFGS state, line search and stopping test, and leaves the batch when it stops, so the
    # batch must reproduce every head fitted alone: the same iterations and, up to float32 round-off, the same weights.
    (train, y_train), (val, y_val), (test, y_test) = blob_grid
    kwargs = dict(C=10.0, tol=1e-5, early_stopping=early_stopping, patience=3, device="cpu")
    grid = fit_probe_grid(train, y_train, val, y_val, test, y_test, **kwargs)
    assert len(set(grid.n_iter.values())) > 1, "heads should stop at different iterations for this test to bite"
    if early_stopping:
        assert any(grid.kept_iter[p] < grid.n_iter[p] for p in train), "some head should keep an earlier iterate"
    else:
        assert all(grid.converged.values()) and grid.kept_iter == grid.n_iter
    for pair in train:
        alone = fit_probe_grid(*_alone(pair, train, y_train, val, y_val, test, y_test), **kwargs)
        assert (alone.n_iter[pair], alone.kept_iter[pair]) == (grid.n_iter[pair], grid.kept_iter[pair]), pair
        for name, tensor in alone.heads[pair].state_dict().items():
            got = grid.heads[pair].state_dict()[name]
            torch.testing.assert_close(got, tensor, atol=BATCHED_EQUALS_ALONE_ATOL, rtol=0, msg=f"{pair} {name}")
        bound = _log_loss_bound(alone.heads[pair], grid.heads[pair], [train[pair], val[pair], test[pair]])
        for split, scores in grid.metrics[pair].items():
            lone = dict(alone.metrics[pair][split])
            assert abs(lone.pop("log_loss") - scores["log_loss"]) <= bound, (pair, split)
            assert lone == pytest.approx({name: value for name, value in scores.items() if name != "log_loss"})


def _log_loss_bound(head_a, head_b, feature_splits) -> float:
    """How far the mean log-loss of two heads that differ only by round-off can differ: cross-entropy changes by at
    most 2 max_k |dz_k| for logit changes dz (its gradient in the logits, p - onehot, has L1 norm <= 2), and
    |dz_k| <= ||w_k||_1 max |dx| + ||dw_k||_1 max |x| + |db_k|, x the features as each head standardises them."""
    features = torch.cat(feature_splits)
    x_a, x_b = ((features - h.feature_mean) / h.feature_std for h in (head_a, head_b))
    weight_a, weight_b = head_a.linear.weight, head_b.linear.weight
    logit_change = (
        weight_a.abs().sum(dim=1) * (x_a - x_b).abs().max()
        + (weight_a - weight_b).abs().sum(dim=1) * x_b.abs().max()
        + (head_a.linear.bias - head_b.linear.bias).abs()
    )
    return float(2 * logit_change.max())


def _standardised(x: torch.Tensor) -> np.ndarray:
    return ((x - x.mean(0)) / x.std(0, unbiased=False)).double().numpy()


@pytest.mark.numerics
@pytest.mark.parametrize("num_classes", [3, 2])
def test_heads_reach_the_optimum_of_scikit_learn_logistic_regression(num_classes):
    # The same objective as LogisticRegression(C=C) on the train-standardised features: multinomial for 3 classes,
    # binomial (one logit) for 2. scikit-learn is run to a far tighter tol in float64, so it stands for the optimum;
    # ours stops at tol=1e-6 on every gradient entry. With the penalty l2 = 1 / (C N) = 1 / 150 the objective is
    # l2-strongly convex, so the parameters are within |gradient|_2 / l2 <= sqrt(21 params) * 1e-6 * 150 = 6.9e-4 of the
    # optimum, plus the float32 round-off of the gradient, sqrt(N) * 2^-24 / l2 = 1.6e-4: atol 1e-3 (measured 3e-5).
    # The probabilities then move by at most 1/2 * max |logit change| <= 1/2 * 8.5e-4 * sqrt(1 + max|z|^2) = 2.1e-3
    # (max |z| = 4.8 for these standardised features): atol 3e-3 (measured 1.4e-5). C 10% off moves the weights by 5e-2.
    x, y = make_blobs(300, n_features=6, centers=num_classes, cluster_std=3.0, random_state=2)
    x = torch.tensor(x, dtype=torch.float32)
    features, C = {("mid_block", 10): x}, 0.5
    result = fit_probe_grid(features, y, features, y, C=C, tol=1e-6, device="cpu")
    assert result.converged[("mid_block", 10)]
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(_standardised(x), y)
    head = result.heads[("mid_block", 10)]
    weight, bias = head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()
    if num_classes == 2:  # the head saves the binomial logit z as [-z/2, z/2]
        np.testing.assert_allclose(weight[0], -weight[1])
        weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
    np.testing.assert_allclose(weight, reference.coef_, atol=1e-3, rtol=0)
    np.testing.assert_allclose(bias, reference.intercept_, atol=1e-3, rtol=0)
    with torch.no_grad():
        probs = torch.softmax(head(x), dim=1).double().numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(_standardised(x)), atol=3e-3, rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("num_classes", [3, 2])
def test_balanced_class_weights_reach_scikit_learn_balanced_optimum(num_classes):
    # LogisticRegression(class_weight="balanced") on long-tailed blobs: each sample's loss is times N / (K n_k) and the
    # penalty ||W||^2 / (2 C S), S the weights' sum (N here). The bound of the unweighted test holds with the gradient's
    # round-off times the largest weight (300 / (K * 30) <= 5): 6.9e-4 + 5 * 1.6e-4 = 1.5e-3, atol 2e-3. Unweighted,
    # the biases are off by more than 0.1 (0.45 and 0.70 measured; weighted 3e-6): the test tells the weighting apart.
    sizes = [200, 70, 30] if num_classes == 3 else [270, 30]
    x, y = make_blobs(sizes, n_features=6, cluster_std=3.0, random_state=2)
    x = torch.tensor(x, dtype=torch.float32)
    features, C, pair = {("mid_block", 10): x}, 0.5, ("mid_block", 10)
    reference = LogisticRegression(C=C, class_weight="balanced", tol=1e-12, max_iter=10_000).fit(_standardised(x), y)
    for class_weight in ("balanced", len(y) / (num_classes * np.bincount(y))):
        result = fit_probe_grid(features, y, features, y, C=C, class_weight=class_weight, tol=1e-6, device="cpu")
        assert result.converged[pair]
        weight, bias = _binomial_or_multinomial(result.heads[pair], num_classes)
        np.testing.assert_allclose(weight, reference.coef_, atol=2e-3, rtol=0)
        np.testing.assert_allclose(bias, reference.intercept_, atol=2e-3, rtol=0)
    unweighted = fit_probe_grid(features, y, features, y, C=C, tol=1e-6, device="cpu").heads[pair]
    assert np.abs(_binomial_or_multinomial(unweighted, num_classes)[1] - reference.intercept_).max() > 0.1


def _binomial_or_multinomial(head, num_classes):
    """A head's weight and bias as scikit-learn's coef_ and intercept_ (the binomial logit z saved as [-z/2, z/2])."""
    weight, bias = head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()
    if num_classes == 2:
        np.testing.assert_allclose(weight[0], -weight[1])
        return weight[1:] - weight[:1], bias[1:] - bias[:1]
    return weight, bias


@pytest.mark.parametrize(
    "class_weight, message",
    [
        ("equal", 'expected None, "balanced" or one weight per class, got \'equal\''),
        ([1.0, 2.0], "expected 3 finite weights >= 0, one per class, got \\[1.0, 2.0\\]"),
        ([1.0, -1.0, 1.0], "expected 3 finite weights >= 0"),
        ([0.0, 0.0, 0.0], "every train sample has weight 0"),
    ],
)
def test_bad_class_weight_is_refused_before_fitting(blob_grid, class_weight, message):
    (train, y_train), (val, y_val), _ = blob_grid
    with pytest.raises(ValueError, match=f"class_weight: {message}"):
        fit_probe_grid(train, y_train, val, y_val, class_weight=class_weight, max_iter=1, device="cpu")


def test_the_penalty_follows_C(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    pair = ("down_blocks.1", 10)
    norms = [
        fit_probe_grid(*_alone(pair, train, y_train, val, y_val), C=C, device="cpu").heads[pair].linear.weight.norm()
        for C in (0.01, 1.0)
    ]
    assert norms[0] < 0.5 * norms[1]


def test_several_C_each_head_keeps_its_best_on_val(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    Cs = (0.001, 0.03, 1.0)
    alone = {C: fit_probe_grid(train, y_train, val, y_val, C=C, device="cpu") for C in Cs}
    chosen = fit_probe_grid(train, y_train, val, y_val, C=list(Cs), device="cpu")
    for pair in train:
        val_key = lambda C: (alone[C].metrics[pair]["val"]["accuracy"], alone[C].metrics[pair]["val"]["macro_f1"], -C)  # noqa: E731
        assert chosen.C[pair] == max(Cs, key=val_key)
        assert chosen.val_by_C[pair] == {C: alone[C].metrics[pair]["val"] for C in Cs}
        kept = alone[chosen.C[pair]]
        # each C is solved as its own batch of the same heads: the very same computation
        assert torch.equal(chosen.heads[pair].linear.weight, kept.heads[pair].linear.weight)
        assert chosen.metrics[pair] == kept.metrics[pair] and chosen.n_iter[pair] == kept.n_iter[pair]
    # the blobs are separated at C = 0.03 and 1 alike (the tie keeps the stronger penalty); the weak pair needs C = 1
    # (val accuracy 0.68 against 0.63 at C = 0.03: 5 of 100 images)
    assert chosen.C[("down_blocks.1", 10)] == 0.03 and chosen.C[("mid_block", 50)] == 1.0
    assert [row["C"] for row in chosen.to_table()] == [chosen.C[p] for p in train]
    assert fit_probe_grid(train, y_train, val, y_val, C=np.array(Cs), device="cpu").C == chosen.C  # any 1-D array


def test_the_compact_inverse_hessian_is_the_bfgs_update_of_the_last_kept_pairs():
    # The solver's direction uses the compact form of the L-BFGS inverse Hessian over the last _HISTORY pairs, kept in
    # slots written in turn; the textbook builds the same H by BFGS updates of gamma I with each of those pairs that
    # is kept, oldest first. In float64 the two agree to round-off (R and Y^T Y here have condition numbers under 50,
    # so 1e-16 * 50 per operation): rtol 1e-9. 13 pairs are written, so the slots wrap; a pair left out must not count.
    generator = torch.Generator().manual_seed(0)
    num_heads, num_pairs, size = 3, 13, 16
    factor = torch.randn(num_heads, size, size, generator=generator, dtype=torch.float64)
    hessian = factor @ factor.transpose(1, 2) + size * torch.eye(size, dtype=torch.float64)
    s = torch.randn(num_heads, num_pairs, size, generator=generator, dtype=torch.float64)
    y = s @ hessian  # y_i = A s_i: every pair has s.y > 0
    curved = torch.rand(num_heads, num_pairs, generator=generator) > 0.3
    grad = torch.randn(num_heads, size, generator=generator, dtype=torch.float64)
    history = {name: value.double() if value.is_floating_point() else value
               for name, value in _empty_history(num_heads, size, "cpu").items()}  # fmt: skip
    batch = _Batch(**history, gamma=torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64))
    torch.testing.assert_close(_inverse_hessian_times(grad, batch, num_pairs=0), batch.gamma[:, None] * grad)
    for number in range(num_pairs):
        s_i, y_i = s[:, number], y[:, number]
        _append_pair(batch, number, s_i, y_i, (s_i * y_i).sum(dim=1), curved[:, number])
    for head in range(num_heads):
        inverse = batch.gamma[head] * torch.eye(size, dtype=torch.float64)
        for pair in range(num_pairs - _HISTORY, num_pairs):
            if curved[head, pair]:
                s_i, y_i = s[head, pair], y[head, pair]
                rho, step = 1 / (s_i @ y_i), torch.eye(size, dtype=torch.float64)
                inverse = (step - rho * torch.outer(s_i, y_i)) @ inverse @ (step - rho * torch.outer(y_i, s_i))
                inverse += rho * torch.outer(s_i, s_i)
        got = _inverse_hessian_times(grad, batch, num_pairs=num_pairs)[head]
        torch.testing.assert_close(got, inverse @ grad[head], rtol=1e-9, atol=0)


def test_max_iter_warns_naming_the_unconverged_heads(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    with pytest.warns(UserWarning, match=r"3 of 3 probes reached max_iter=2 before tol=0.0001: \[\('down_blocks.1', 10\)"):
        short = fit_probe_grid(train, y_train, val, y_val, max_iter=2, device="cpu")
    assert set(short.n_iter.values()) == {2} and not any(short.converged.values())
    # with several C every strength's unsolved heads are named, kept or not: their val scores chose the C
    with pytest.warns(UserWarning, match=r"6 of 6 probes reached max_iter=2 .*: \[\('down_blocks.1', 10\) at C=0.01, "):
        fit_probe_grid(train, y_train, val, y_val, C=[0.01, 1.0], max_iter=2, device="cpu")


def test_digits_reach_high_accuracy_and_the_informative_pair_wins():
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    x, y = torch.tensor(digits.data[order], dtype=torch.float32), digits.target[order]
    features = {
        ("down_blocks.0", 100): torch.tensor(rng.normal(size=x.shape), dtype=torch.float32),
        ("mid_block", 25): x,
        ("up_blocks.1", 25): torch.tensor(rng.normal(size=(len(y), 16)), dtype=torch.float32),
    }
    (train, y_train), (val, y_val), (test, y_test) = _splits(features, y, bounds=(0.6, 0.8))
    names = [f"digit {k}" for k in range(10)]
    result = fit_probe_grid(train, y_train, val, y_val, test, y_test, class_names=names, pool="2x2", noise_seed=4)
    assert isinstance(result, ProbeGridResult)
    assert result.best_pair == ("mid_block", 25)
    assert result.metrics[result.best_pair]["test"]["accuracy"] > 0.9
    assert result.metrics[("down_blocks.0", 100)]["val"]["accuracy"] < 0.3

    head = result.head
    assert isinstance(head, LinearProbeHead)
    assert (head.config.block, head.config.timestep, head.config.in_features) == ("mid_block", 25, 64)
    assert (head.config.pool, head.config.noise_seed, head.config.class_names) == ("2x2", 4, names)
    torch.testing.assert_close(head.feature_mean, train[("mid_block", 25)].mean(0))
    # The saved head alone (standardisation included) reproduces the reported test scores.
    with torch.no_grad():
        predictions = head(test[("mid_block", 25)]).argmax(1).numpy()
    assert np.mean(predictions == y_test) == pytest.approx(result.metrics[result.best_pair]["test"]["accuracy"])
    assert f1_score(y_test, predictions, average="macro") == pytest.approx(result.metrics[result.best_pair]["test"]["macro_f1"])
    assert balanced_accuracy_score(y_test, predictions) == pytest.approx(
        result.metrics[result.best_pair]["test"]["balanced_accuracy"])

    table = result.to_table(sort_by="val_accuracy")
    assert table[0]["block"] == "mid_block" and table[0]["best"] and not table[1]["best"]
    assert {"train_accuracy", "val_macro_f1", "test_accuracy", "n_iter", "converged", "kept_iter"} <= set(table[0])


def test_ties_go_to_the_earlier_pair_in_the_grid(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    x_train, x_val = train[("down_blocks.1", 10)], val[("down_blocks.1", 10)]
    for keys in ([("b", 1), ("a", 2)], [("a", 2), ("b", 1)]):
        result = fit_probe_grid({k: x_train for k in keys}, y_train, {k: x_val for k in keys}, y_val)
        assert result.best_pair == keys[0]


def test_pairs_tied_on_val_accuracy_and_macro_f1_are_told_apart_by_val_log_loss():
    # QA: 12 of 21 pairs at 100% on 8 val images; the first in grid order, kept, was the worst on test
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    sign = np.where(y == 1, 1.0, -1.0)
    near = sign * rng.uniform(0.5, 3.0, 40)  # separable, small margins
    far = sign * rng.uniform(2.5, 3.0, 40)  # separable, large margins
    features = {("down_blocks.0", 10): torch.tensor(near[:, None]), ("mid_block", 10): torch.tensor(far[:, None])}
    result = fit_probe_grid(features, y, features, y)
    val = {pair: result.metrics[pair]["val"] for pair in features}
    assert all(v["accuracy"] == v["macro_f1"] == 1.0 for v in val.values())
    assert val[("mid_block", 10)]["log_loss"] < val[("down_blocks.0", 10)]["log_loss"]
    assert result.best_pair == ("mid_block", 10)


def test_the_grid_s_macro_f1_is_over_the_classes_the_labels_hold_as_the_reports():
    from diffusion_classifiers.metrics import classification_metrics
    from diffusion_classifiers.probing.probe_grid import _head_scores

    y, pred = torch.tensor([0, 0, 1, 1]), torch.tensor([[0, 2, 1, 1]])  # class 2 only predicted (a wrong guess)
    (scores,) = _head_scores(pred, torch.zeros(1), y, 3)
    reported = classification_metrics(y.numpy(), pred[0].numpy(), num_classes=3)
    assert scores["macro_f1"] == pytest.approx(reported["macro_f1"]) == pytest.approx((2 / 3 + 1) / 2)


def test_macro_f1_ignores_classes_absent_from_labels_and_predictions():
    # Class 2 exists (num_classes=3) but never appears: macro-F1 and balanced accuracy average classes 0 and 1, as
    # sklearn does.
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 1])
    result = fit_probe_grid({("mid_block", 1): x}, y, {("mid_block", 1): x}, y, num_classes=3)
    val = result.metrics[("mid_block", 1)]["val"]
    assert {name: val[name] for name in ("accuracy", "macro_f1", "balanced_accuracy")} == {
        "accuracy": 1.0, "macro_f1": 1.0, "balanced_accuracy": 1.0
    }
    logits = result.head(x).detach().double()  # the log-loss, as scikit-learn computes it from the probabilities
    # float32 log_softmax: x - max - log(sum exp(x - max)), each step within an ulp of the largest logit (2^-24 of
    # it, relative): 4 steps, bounded by twice that each
    float32_log_softmax = 8 * 2.0**-24 * float(logits.abs().max())
    expected = log_loss(y, logits.softmax(1).numpy(), labels=[0, 1, 2])
    assert val["log_loss"] == pytest.approx(expected, rel=0, abs=float32_log_softmax)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(val_features={("mid_block", 10): a["val_features"][("mid_block", 10)]}), "missing \\[\\('down_blocks.1', 10\\)"),
        (lambda a: a.update(train_labels=a["train_labels"][:-1]), "expected pair \\('down_blocks.1', 10\\): train features of shape \\[199, D\\], one row per label, got \\(200, 12\\)"),
        (lambda a: a.update(val_labels=np.where(np.arange(100) == 7, 5, a["val_labels"])), "val_labels\\[7\\] = 5 is outside the expected range \\[0, 2\\]"),
        (lambda a: a["test_features"][("mid_block", 10)].__setitem__((4, 0), float("nan")), "pair \\('mid_block', 10\\): test features row 4 contains NaN"),
        (lambda a: a.update(test_labels=None), "test_features and test_labels together"),
        (lambda a: a.update(val_features={k: v[:, :3] for k, v in a["val_features"].items()}), "val features have 3 columns, train features have 12"),
        (lambda a: a.update(C=0.0), "expected C as a number or a non-empty sequence of numbers with 0 < C < inf, got C=0.0"),
        (lambda a: a.update(C=[1.0, float("inf")]), "0 < C < inf, got C=\\[1.0, inf\\]"),
        (lambda a: a.update(C=[]), "non-empty sequence .* got C=\\[\\]"),
        (lambda a: a.update(tol=-1.0), "expected tol > 0, max_iter >= 1 and patience >= 0, got tol=-1.0"),
    ],
)
def test_bad_input_names_the_pair(blob_grid, change, message):
    (train, y_train), (val, y_val), (test, y_test) = blob_grid
    arguments = dict(
        train_features=dict(train), train_labels=y_train, val_features=dict(val), val_labels=y_val,
        test_features={k: v.clone() for k, v in test.items()}, test_labels=y_test, num_classes=3,
    )  # fmt: skip
    change(arguments)
    with pytest.raises(ValueError, match=message):
        fit_probe_grid(**arguments)


def test_kmeans_evaluate_recovers_separated_blobs_and_is_seeded():
    x, y = make_blobs(300, n_features=6, centers=4, cluster_std=0.5, random_state=1)
    result = kmeans_evaluate(torch.tensor(x), y, num_classes=4, seed=0)
    assert result["accuracy"] == pytest.approx(1.0) and result["nmi"] == pytest.approx(1.0)
    assert result["clusters"].shape == (300,)
    assert np.array_equal(kmeans_evaluate(x, y, 4, seed=0)["clusters"], result["clusters"])
    with pytest.raises(ValueError, match="features row 3 contains NaN"):
        kmeans_evaluate(np.where(np.arange(300)[:, None] == 3, np.nan, x), y, 4)
    # the same groups without labels (unlabeled images)
    assert np.array_equal(kmeans_clusters(x, 4, seed=0), result["clusters"])
    with pytest.raises(ValueError, match="number of clusters K: expected an integer >= 1, got 0"):
        kmeans_clusters(x, 0)


# ---------------------------------------------------------------------------------------------------------------
# k-means: the normalisation chosen without labels
# ---------------------------------------------------------------------------------------------------------------


def _directional_classes(seed: int = 0, per_class: int = 60):
    """3 classes that differ only in direction; each image's norm is random over about two orders of magnitude, so
    L2-normalised k-means separates the classes and standardised or whitened k-means splits by norm instead."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    directions = np.eye(6)[:3] + 0.3
    norms = np.exp(rng.normal(0.0, 1.0, size=len(labels)))
    return norms[:, None] * (directions[labels] + 0.05 * rng.normal(size=(len(labels), 6))), labels


@pytest.mark.parametrize("normalization", [*NORMALIZATIONS, "none"])
def test_each_normalization_gives_its_space_and_separates_blobs(normalization):
    x, y = make_blobs(300, n_features=6, centers=4, cluster_std=0.5, random_state=1)
    x = x + 20.0  # off-centre: L2 rows then still point to their blob
    z = normalize_features(torch.tensor(x), normalization)
    if normalization == "standardize":
        np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
        np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-12)
    elif normalization == "l2":
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-12)
    elif normalization == "pca_whiten":  # decorrelated, unit variance (ddof=1, as scikit-learn's PCA)
        np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(z.shape[1]), atol=1e-10)
    else:
        np.testing.assert_array_equal(z, x)
    assert kmeans_evaluate(x, y, num_classes=4, normalization=normalization)["accuracy"] == pytest.approx(1.0)


def test_an_unknown_normalization_is_refused_with_the_allowed_names():
    x, y = make_blobs(40, n_features=3, centers=2, random_state=0)
    message = r"normalization: expected one of 'standardize', 'l2', 'pca_whiten', 'none', got 'whiten'"
    with pytest.raises(ValueError, match=message):
        kmeans_evaluate(x, y, 2, normalization="whiten")
    with pytest.raises(ValueError, match=message):
        select_clustering_without_labels({("a", 0): x}, [2], 2, normalizations=["l2", "whiten"])
    with pytest.raises(ValueError, match=message):
        normalize_features(x, "whiten")


def test_stability_is_one_for_separated_blobs_and_needs_k_at_most_half_the_images():
    x, _ = make_blobs(100, n_features=4, centers=3, cluster_std=0.2, random_state=0)
    assert clustering_stability(x, 3, seed=0) == pytest.approx(1.0)  # every half finds the same 3 blobs
    with pytest.raises(ValueError, match=r"K=51 is larger than the number of images \(50\)"):
        clustering_stability(x, 51)


def test_the_normalization_is_chosen_by_stability_and_reaches_the_classes():
    x, y = _directional_classes()
    choice = select_clustering_without_labels({("direction", 0): x}, [3], 3, normalizations=NORMALIZATIONS)
    assert choice["normalization"] == "l2" and choice["by_normalization"]["l2"]["stability"] == pytest.approx(1.0)
    assert set(choice["by_normalization"]) == set(NORMALIZATIONS)
    assert kmeans_evaluate(x, y, 3, normalization=choice["normalization"])["accuracy"] == pytest.approx(1.0)
    assert kmeans_evaluate(x, y, 3)["accuracy"] < 0.9  # standardised, the norm splits the images instead


def test_every_feature_and_normalization_is_ranked_by_stability_and_the_most_stable_wins():
    x, _ = _directional_classes()
    noise = np.random.default_rng(1).normal(size=x.shape)
    choice = select_clustering_without_labels({("direction", 0): x, ("noise", 0): noise}, [3], 3, normalizations=NORMALIZATIONS)
    scores = {(key, name): score for name, by_key in choice["scores"].items() for key, score in by_key.items()}
    assert len(scores) == 2 * len(NORMALIZATIONS) and choice["criterion"] == "stability"
    assert max(scores, key=scores.get) == ("direction/0", "l2") == ("/".join(map(str, choice["pair"])), choice["normalization"])
    for name, best in choice["by_normalization"].items():  # each normalisation's best pair, with its own score
        assert best["stability"] == max(choice["scores"][name].values())


def test_the_silhouette_rule_is_still_there_and_an_unknown_criterion_is_refused():
    x, _ = _directional_classes()
    choice = select_clustering_without_labels({("direction", 0): x}, [3], 3, normalizations=NORMALIZATIONS, criterion="silhouette")
    assert choice["normalization"] == "l2" and set(choice["by_normalization"]["l2"]) == {"pair", "silhouette", "stability"}
    with pytest.raises(ValueError, match=r"criterion: expected one of 'stability', 'silhouette', got 'ari'"):
        select_clustering_without_labels({("direction", 0): x}, [3], 3, criterion="ari")


def test_a_large_split_is_scored_on_a_seeded_subsample_of_the_same_rows_for_every_feature():
    x, _ = make_blobs(400, n_features=4, centers=3, cluster_std=0.3, random_state=0)
    features = {("a", 0): x, ("a", 1): x[:, ::-1].copy()}
    choice = select_clustering_without_labels(features, [3], 3, max_images=100)
    assert choice["num_images"] == 100 and choice == select_clustering_without_labels(features, [3], 3, max_images=100)
    index = np.arange(400.0)[:, None]  # each row names its image: the subsample must take the same images everywhere
    drawn = _selection_rows({("a", 0): index, ("b", 0): 2 * index}, 100, seed=0)
    assert np.array_equal(drawn[("b", 0)], 2 * drawn[("a", 0)]) and len(np.unique(drawn[("a", 0)])) == 100
    assert select_clustering_without_labels(features, [3], 3, max_images=None)["num_images"] == 400
    with pytest.raises(ValueError, match=r"max_images: expected an integer >= 2 or None, got 1"):
        select_clustering_without_labels(features, [3], 3, max_images=1)
    with pytest.raises(ValueError, match=r"the same number of images \(rows\), got \[300, 400\]"):
        select_clustering_without_labels({("a", 0): x, ("b", 0): x[:300]}, [3], 3)


def test_k_is_chosen_among_exactly_the_candidates_given():
    x, y = make_blobs(300, n_features=8, centers=10, cluster_std=0.6, random_state=0)
    features = {("x", 0): x}
    choice = select_clustering_without_labels(features, [3, 4, 5], 10)  # 10 blobs: K = 10 would win were it scored
    assert choice["num_clusters"] in (3, 4, 5) and set(choice["silhouette_by_num_clusters"]) == {3, 4, 5}
    assert label_free_kmeans(features, features, y, 10, candidate_num_clusters=[3, 4, 5])["num_clusters"] in (3, 4, 5)
    assert list(select_clustering_without_labels(features, None, 10)["silhouette_by_num_clusters"]) == [10]
    assert label_free_kmeans(features, features, y, 10)["num_clusters"] == 10
    for bad in ([], [2.5], [0, 3], 3, "3"):
        with pytest.raises(ValueError, match=r"candidate_num_clusters: expected None \(K = 10\) or a non-empty seq"):
            select_clustering_without_labels(features, bad, 10)


def test_the_label_free_kmeans_choice_does_not_depend_on_the_labels():
    x, y = _directional_classes()
    noise = np.random.default_rng(1).normal(size=x.shape)
    val = {("direction", 10): x[::2], ("noise", 10): noise[::2]}
    test = {("direction", 10): x[1::2], ("noise", 10): noise[1::2]}
    result = label_free_kmeans(val, test, y[1::2], num_classes=3)
    permuted = label_free_kmeans(val, test, np.random.default_rng(0).permutation(y[1::2]), num_classes=3)
    assert (result["feature"], result["normalization"], result["num_clusters"]) == ("direction/10", "l2", 3)
    assert permuted["selection"] == result["selection"] and result["accuracy"] == pytest.approx(1.0)
    assert permuted["accuracy"] < 0.6  # the labels only score: permuted, they no longer match the clusters
    by_silhouette = label_free_kmeans(val, test, y[1::2], num_classes=3, criterion="silhouette")
    assert by_silhouette["selection"]["criterion"] == "silhouette" and by_silhouette["feature"] == "direction/10"


# ---------------------------------------------------------------------------------------------------------------
# Few-shot protocols and evaluate_protocols
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separable():
    """4 well-separated classes, centred so that cosine similarity separates them too."""
    x, y = make_blobs(360, n_features=8, centers=4, cluster_std=0.3, random_state=3)
    x = x - x.mean(0)
    return torch.tensor(x[:240], dtype=torch.float32), y[:240], torch.tensor(x[240:], dtype=torch.float32), y[240:]


def test_evaluate_protocols_on_separable_data_is_perfect_and_json_serialisable(separable):
    x_train, y_train, x_test, y_test = separable
    result = evaluate_protocols(
        {("encoder", 0): x_train}, y_train, {("encoder", 0): x_test}, y_test, val_features=x_train[:40],
        val_labels=y_train[:40], shots=(1, 5, "all"), num_episodes=3,
    )  # fmt: skip
    assert json.loads(json.dumps(result)) == result
    assert result["feature"] == ["encoder", 0] and (result["num_classes"], result["feature_dim"]) == (4, 8)
    assert result["label_free"]["accuracy"] == 1.0 and result["label_free"]["nmi"] == pytest.approx(1.0)
    scores = {"accuracy", "macro_f1", "balanced_accuracy", "nmi", "ari", "purity"}
    assert set(result["label_free"]) == scores | {"normalization", "stability"}
    assert set(result["label_free"]["stability"]) == set(result["label_free_by_normalization"]) == set(NORMALIZATIONS)
    assert all(set(metrics) == scores for metrics in result["label_free_by_normalization"].values())
    for protocol in ("prototype", "knn"):
        assert list(result[protocol]) == ["1", "5", "all"]
        for name, summary in result[protocol].items():
            assert summary["num_episodes"] == (1 if name == "all" else 3)
            assert len(summary["accuracy_per_episode"]) == summary["num_episodes"]
            assert summary["accuracy_mean"] == 1.0 and summary["macro_f1_mean"] == 1.0 and summary["accuracy_std"] == 0.0
            assert summary["balanced_accuracy_mean"] == 1.0
    assert [result["knn"][n]["k"] for n in ("1", "5", "all")] == [1, 5, 10]
    probe = result["linear_probe"]
    assert probe["accuracy"] == 1.0 and probe["macro_f1"] == 1.0 and probe["val_accuracy"] == 1.0
    assert probe["balanced_accuracy"] == 1.0 and probe["val_balanced_accuracy"] == 1.0


def test_evaluate_protocols_chooses_the_kmeans_space_on_the_train_features_without_labels():
    # Two informative dimensions among 20 of noise: the split is stable in some spaces and not in others (whitening
    # lifts the noise to the signal's scale), so the choice has something to choose.
    x, y = make_blobs(400, n_features=2, centers=[[0, 0], [3, 3]], cluster_std=0.6, random_state=1)
    x = np.hstack([x, np.random.default_rng(0).normal(0, 1, (400, 20))])
    train, test = (torch.tensor(x[:300]), y[:300]), (torch.tensor(x[300:]), y[300:])
    options = {"shots": (1,), "num_episodes": 1, "linear_probe": False}
    result = evaluate_protocols(*train, *test, **options)
    chosen = result["label_free"]["normalization"]
    stability = result["label_free"]["stability"]
    assert chosen == max(stability, key=stability.get) and min(stability.values()) < 0.5 < stability[chosen]
    assert stability[chosen] == pytest.approx(clustering_stability(normalize_features(x[:300], chosen), 2, n_init=3))
    expected = kmeans_evaluate(x[300:], y[300:], 2, normalization=chosen)
    assert result["label_free"]["accuracy"] == expected["accuracy"] == result["label_free_by_normalization"][chosen]["accuracy"]
    shuffled = evaluate_protocols(train[0], np.random.default_rng(1).permutation(train[1]), *test, **options)
    assert shuffled["label_free"] == result["label_free"]
    fixed = evaluate_protocols(*train, *test, kmeans_normalizations=("standardize",), **options)
    assert fixed["label_free"]["normalization"] == "standardize"
    assert fixed["label_free"]["accuracy"] == kmeans_evaluate(x[300:], y[300:], 2)["accuracy"]
    with pytest.raises(ValueError, match="kmeans_normalizations: expected a sequence of names"):
        evaluate_protocols(*train, *test, kmeans_normalizations="l2", **options)


def test_evaluate_protocols_reports_the_kmeans_space_chosen_with_val_labels_beside_the_label_free_one():
    def blobs(n, seed):
        x, y = make_blobs(n, n_features=2, centers=[[0, 0], [3, 3]], cluster_std=0.6, random_state=seed)
        return np.hstack([x, np.random.default_rng(seed).normal(0, 1, (n, 20))]), y

    train, val, test = blobs(300, 1), blobs(200, 2), blobs(100, 3)
    options = {"shots": (1,), "num_episodes": 1, "linear_probe": False}
    result = evaluate_protocols(*train, *test, val_features=val[0], val_labels=val[1], **options)
    chosen = result["label_chosen"]
    val_macro_f1 = {name: kmeans_evaluate(*val, 2, normalization=name)["macro_f1"] for name in NORMALIZATIONS}
    assert chosen["val_macro_f1"] == val_macro_f1 and min(val_macro_f1.values()) < max(val_macro_f1.values())
    assert chosen["normalization"] == max(val_macro_f1, key=val_macro_f1.get)
    by_normalization = result["label_free_by_normalization"][chosen["normalization"]]
    assert {k: chosen[k] for k in by_normalization} == by_normalization
    assert result["label_free"] == evaluate_protocols(*train, *test, **options)["label_free"]  # reads no val
    assert "label_chosen" not in evaluate_protocols(*train, *test, **options)
    on_val = result["label_free_on_val"]
    assert on_val["normalization"] == result["label_free"]["normalization"]
    expected = kmeans_evaluate(*val, 2, normalization=on_val["normalization"])
    assert {k: on_val[k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "nmi")} == {
        k: expected[k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "nmi")
    }
    with pytest.raises(ValueError, match="val_labels"):
        evaluate_protocols(*train, *test, val_features=val[0], val_labels=val[1] + 5, num_classes=2, **options)
    with pytest.raises(ValueError, match="val_features have 3 columns, train_features have 22"):
        evaluate_protocols(*train, *test, val_features=val[0][:, :3], val_labels=val[1], **options)


def test_without_val_the_linear_probe_refuses_a_C_grid_and_early_stopping_and_reports_its_C(separable, monkeypatch):
    x_train, y_train, x_test, y_test = separable
    options = {"shots": (1,), "num_episodes": 1, "kmeans_normalizations": ("standardize",)}
    single = evaluate_protocols(x_train, y_train, x_test, y_test, probe_kwargs={"C": [0.5, 0.5]}, **options)
    assert single["linear_probe"]["C"] == 0.5 and "val_accuracy" not in single["linear_probe"]
    key, val = ("features", 0), (x_test[:40], y_test[:40])
    chosen = evaluate_protocols(
        x_train, y_train, x_test, y_test, val_features=val[0], val_labels=val[1],
        probe_kwargs={"C": np.array([1e-4, 1.0]), "early_stopping": True}, **options,
    )["linear_probe"]  # fmt: skip
    fit = fit_probe_grid({key: x_train}, y_train, {key: val[0]}, val[1], C=[1e-4, 1.0], early_stopping=True, pool=None)
    assert chosen["C"] == fit.C[key] and chosen["val_accuracy"] == fit.metrics[key]["val"]["accuracy"]
    monkeypatch.setattr(protocols, "_label_free", lambda *args: pytest.fail("k-means ran before the refusal"))
    refused = [
        ({"C": [0.1, 10.0]}, r"probe_kwargs\['C'\]: expected a single C without val_features, got \[0.1, 10.0\]"),
        ({"C": np.logspace(-1, 1, 3)}, r"a single C without val_features, got array\(\[ 0.1,  1. , 10. \]\)"),
        ({"early_stopping": True}, r"probe_kwargs\['early_stopping'\]: expected False without val_features"),
    ]
    for probe_kwargs, message in refused:
        with pytest.raises(ValueError, match=message + ".*pass val_features and val_labels"):
            evaluate_protocols(x_train, y_train, x_test, y_test, probe_kwargs=probe_kwargs, **options)


def test_evaluate_protocols_averages_over_episodes():
    # Overlapping classes: 1-shot accuracy varies with the labelled sample drawn, and the summary is its mean / std.
    x, y = make_blobs(300, n_features=4, centers=3, cluster_std=4.0, random_state=0)
    x = x - x.mean(0)
    result = evaluate_protocols(x[:200], y[:200], x[200:], y[200:], shots=(1,), num_episodes=4, seed=7, linear_probe=False)
    per_episode = result["prototype"]["1"]["accuracy_per_episode"]
    assert len(set(per_episode)) > 1 and "linear_probe" not in result
    assert result["prototype"]["1"]["accuracy_mean"] == pytest.approx(np.mean(per_episode))
    assert result["prototype"]["1"]["accuracy_std"] == pytest.approx(np.std(per_episode))
    for episode, accuracy in enumerate(per_episode):  # episode e labels few_shot_indices(..., derived_seed(seed, e))
        index = few_shot_indices(y[:200], 1, seed=derived_seed(7, episode))
        predictions, _ = prototype_classify(x[index], y[index], x[200:], num_classes=3)
        assert accuracy == pytest.approx(np.mean(predictions == y[200:]))
    assert derived_seed(7, 0) == 7  # `fit-head --seed 7` labels episode 0's images


def test_runs_of_other_seeds_share_no_episode():
    """QA (a methods review): episode e of seed s was seed s + e's, so seeds 0, 1 and 2 shared 4 of their 5 episodes
    and a spread over seeds read too narrow."""
    seeds = [derived_seed(seed, episode) for seed in range(3) for episode in range(5)]
    assert len(set(seeds)) == 15


def test_few_shot_indices_draw_n_per_class_deterministically():
    y = np.repeat(np.arange(3), [5, 8, 20])
    index = few_shot_indices(y, 4, seed=1)
    assert np.array_equal(np.bincount(y[index]), [4, 4, 4]) and len(set(index)) == 12
    assert np.array_equal(index, np.sort(index))
    assert np.array_equal(index, few_shot_indices(y, 4, seed=1))
    assert not np.array_equal(index, few_shot_indices(y, 4, seed=2))
    assert np.array_equal(few_shot_indices(y, None), np.arange(len(y)))
    assert np.array_equal(few_shot_indices(y, "all"), np.arange(len(y)))
    with pytest.raises(ValueError, match="class 0 has 5 labelled samples, fewer than shots_per_class=6"):
        few_shot_indices(y, 6)
    with pytest.raises(ValueError, match="class 3 has 0 labelled samples"):
        few_shot_indices(y, 1, num_classes=4)
    for bad in (0, -1, 1.5, "few"):
        with pytest.raises(ValueError, match="shots_per_class as an integer >= 1, None or 'all'"):
            few_shot_indices(y, bad)


def test_evaluate_protocols_refuses_shots_a_class_lacks_before_any_work(monkeypatch):
    from diffusion_classifiers.probing import protocols

    def no_work(*args, **kwargs):
        raise AssertionError("k-means ran before the shots were checked")

    monkeypatch.setattr(protocols, "_label_free", no_work)
    x, y = make_blobs(60, n_features=4, centers=3, random_state=0)
    keep = np.concatenate([np.flatnonzero(y == 0)[:4], np.flatnonzero(y != 0)])  # class 0: 4 labelled samples
    train, test = (x[keep[:-12]], y[keep[:-12]]), (x[keep[-12:]], y[keep[-12:]])
    assert np.bincount(train[1]).min() == 4 and np.bincount(train[1]).argmin() == 0
    names = ["haemorrhage", "ischaemia", "normal"]
    with pytest.raises(ValueError, match=r"shots=\(1, 5, 10, None\): 5-shot and 10-shot episodes need that many labelled "
                                         r"train samples in every class, but class 'haemorrhage' has 4; pass "
                                         r"shots=\(1, None\) \(integers up to 4 fit"):
        evaluate_protocols(*train, *test, class_names=names)
    with pytest.raises(ValueError, match=r"but class 0 has 4 \(pass class_names=train.class_names to name the "
                                         r"classes\); pass shots=\(1, 'all'\)"):
        evaluate_protocols(*train, *test, shots=(1, 5, "all"))
    with pytest.raises(ValueError, match=r"shots=\(6,\).*pass shots=\(4,\)"):
        evaluate_protocols(*train, *test, shots=(6,))
    with pytest.raises(ValueError, match=r"train_labels: class 'haemorrhage' has 0 labelled samples; expected every "
                                         r"one of the 3 classes in the train split"):
        evaluate_protocols(train[0][train[1] != 0], train[1][train[1] != 0], *test, shots=(1,), class_names=names)
    with pytest.raises(ValueError, match=r"expected 3 class_names, got 2"):
        evaluate_protocols(*train, *test, num_classes=3, shots=(1,), class_names=names[:2])
    monkeypatch.undo()
    fitting = evaluate_protocols(*train, *test, shots=(1, 4, None), num_episodes=1, linear_probe=False, class_names=names)
    assert list(fitting["prototype"]) == ["1", "4", "all"]


def test_one_shot_knn_is_brute_force_nearest_neighbour():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(5, 6)), rng.normal(size=(40, 6))
    labels = np.array([0, 1, 2, 3, 4])
    predictions, scores = knn_classify(train, labels, test, k=1)
    cosine = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (train / np.linalg.norm(train, axis=1, keepdims=True)).T
    assert np.array_equal(predictions, labels[cosine.argmax(1)])
    assert np.array_equal(scores, np.eye(5)[predictions])


def test_knn_majority_vote_and_tie_break():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.2, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 2])
    test = torch.tensor([[1.0, 0.05], [0.7, 0.75]])
    predictions, scores = knn_classify(train, labels, test, k=3, num_classes=3)
    assert predictions.tolist() == [0, 1]  # 2 votes of 3
    np.testing.assert_allclose(scores[0], [2 / 3, 1 / 3, 0.0])
    # k = 2 on a point closer to class 1's two samples than to class 0's: a 1-1 tie goes to the more similar voter.
    predictions, _ = knn_classify(train[[0, 3]], np.array([0, 1]), torch.tensor([[0.3, 1.0]]), k=5)
    assert predictions.tolist() == [1]


@pytest.mark.numerics
def test_prototype_head_equals_a_hand_computation():
    # Cosines of unit 2-vectors: each result is off by a few 2^-24 = 6e-8 in absolute terms (not relative to the
    # cosine, one of which is 0.07 here), within assert_close's float32 atol (1e-5) and the atol 1e-6 below.
    features = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, -1.0]])
    labels = [0, 0, 1, 1]
    head = fit_prototypes(features, labels, class_names=["a", "b"], temperature=0.5)
    unit = features / features.norm(dim=1, keepdim=True)
    prototypes = torch.stack([unit[:2].mean(0), unit[2:].mean(0)])
    prototypes = prototypes / prototypes.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head.prototypes, prototypes)
    query = torch.tensor([[2.0, 1.0], [-1.0, 3.0]])
    expected = (query / query.norm(dim=1, keepdim=True)) @ prototypes.T / 0.5
    torch.testing.assert_close(head(query), expected)
    assert isinstance(head, PrototypeHead) and head.id2label == {0: "a", 1: "b"}
    predictions, scores = prototype_classify(features, labels, query)
    np.testing.assert_allclose(scores, expected.numpy() * 0.5, rtol=0, atol=1e-6)
    assert predictions.tolist() == expected.argmax(1).tolist()

    standardised = fit_prototypes(features, labels, standardize=True)
    torch.testing.assert_close(standardised.feature_mean, features.mean(0))
    z = (query - features.mean(0)) / features.std(0, unbiased=False)
    torch.testing.assert_close(standardised.similarities(query), F.normalize(z, dim=1) @ standardised.prototypes.T)


def test_prototype_temperature_fitted_on_val_minimises_its_log_loss():
    # QA: the fixed temperature 0.1 put every test image of a weak few-shot head above 0.9 confidence (ECE 0.33)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    features = torch.eye(2)[labels] + 0.8 * torch.randn(200, 2, generator=generator)  # overlapping: errors on val
    head = fit_prototypes(features[:100], labels[:100], val_features=features[100:], val_labels=labels[100:])
    fitted = head.config.temperature

    def val_log_loss(temperature):
        return float(F.cross_entropy(head.similarities(features[100:]) / temperature, labels[100:]))

    assert val_log_loss(fitted) <= min(val_log_loss(fitted * 0.9), val_log_loss(fitted * 1.1), val_log_loss(0.1))
    default = fit_prototypes(features[:100], labels[:100])
    assert default.config.temperature == 0.1 and fitted != 0.1
    assert torch.equal(head(features[100:]).argmax(1), default(features[100:]).argmax(1))  # the same decisions
    with pytest.raises(ValueError, match="val_features and val_labels: expected both or neither"):
        fit_prototypes(features[:100], labels[:100], val_features=features[100:])
    # review: val images all classified right name no temperature (the log-loss falls towards 0): the given one stays
    separated = torch.eye(2)[labels] * 5 + 0.1 * torch.randn(200, 2, generator=generator)
    with pytest.warns(UserWarning, match=r"classifies all 100 labelled images correctly.* kept 0.2"):
        kept = fit_prototypes(separated[:100], labels[:100], temperature=0.2, val_features=separated[100:],
                              val_labels=labels[100:])  # fmt: skip
    assert kept.config.temperature == 0.2


def test_prototype_head_rejects_bad_input():
    with pytest.raises(ValueError, match="class 2 has no labelled sample"):
        fit_prototypes(torch.ones(3, 2), [0, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"features of shape \[3, D\], one row per label, got \(2, 2\)"):
        fit_prototypes(torch.ones(2, 2), [0, 1, 1])
    with pytest.raises(ValueError, match="temperature > 0"):
        PrototypeHead(2, 2, temperature=0.0)
    with pytest.raises(ValueError, match=r"expected features of shape \[N, 2\], got \(4, 3\)"):
        fit_prototypes(torch.eye(2), [0, 1])(torch.ones(4, 3))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(train_labels=a["train_labels"][:-1]), r"train_features of shape \[239, D\], one row per label, got \(240, 8\)"),
        (lambda a: a.update(test_labels=a["test_labels"][:-1]), r"test_features of shape \[119, D\]"),
        (lambda a: a.update(test_features=a["test_features"][:, :3]), "test_features have 3 columns, train_features have 8"),
        (lambda a: a.update(shots=(0,)), "shots_per_class as an integer >= 1, None or 'all', got 0"),
        (lambda a: a.update(shots=(1, 1)), "distinct shots"),
        (lambda a: a.update(shots=(70,)), r"shots=\(70,\): 70-shot episodes need that many labelled train samples"),
        (lambda a: a.update(num_episodes=0), "num_episodes as an integer >= 1, got 0"),
        (lambda a: a.update(val_labels=np.zeros(3, dtype=int)), "val_features and val_labels together"),
        (lambda a: a.update(train_features={("a", 1): a["train_features"], ("b", 2): a["train_features"]}), r"one \(block, timestep\) pair, got 2"),
        (lambda a: a["test_features"].__setitem__((5, 1), float("nan")), "test_features row 5 contains NaN"),
    ],
)
def test_evaluate_protocols_rejects_bad_input(separable, change, message):
    x_train, y_train, x_test, y_test = separable
    arguments = dict(train_features=x_train, train_labels=y_train, test_features=x_test.clone(), test_labels=y_test)
    change(arguments)
    with pytest.raises(ValueError, match=message):
        evaluate_protocols(**arguments)


def test_the_label_free_choice_reads_only_the_rows_it_subsamples():
    """Review: the label-free choice made every train feature float64 before taking its `max_images` rows: float16
    memory maps of 4 x 40,000 x 256 peaked at 316 MiB (10 MiB now). A feature read whole fails this test."""
    from diffusion_classifiers.probing.protocols import select_clustering_without_labels

    class RowsOnly:
        def __init__(self, values):
            self.values = values

        def __len__(self):
            return len(self.values)

        def __getitem__(self, rows):
            return self.values[rows]

        def __array__(self, *args, **kwargs):
            raise AssertionError("read whole")

    rng = np.random.default_rng(0)
    features = {("mid_block", t): RowsOnly(rng.normal(size=(400, 8)).astype(np.float16)) for t in (10, 100)}
    chosen = select_clustering_without_labels(features, None, 3, max_images=60, n_init=1, num_resamples=2)
    assert tuple(chosen["pair"]) in features and chosen["num_images"] == 60


def test_the_best_pair_treats_val_log_losses_a_float_rounding_apart_as_tied():
    """On an AMD EPYC with AVX-512 the same features at two places of the batched fit gave losses ~1e-7 apart, and
    the later pair won the tie; a loss that is not a number loses to any other."""
    from diffusion_classifiers.probing.probe_grid import _best_on_val

    def scores(*losses):
        return [{"accuracy": 0.9, "macro_f1": 0.8, "log_loss": loss} for loss in losses]

    assert _best_on_val(scores(0.3, 0.3 * (1 - 1e-7))) == 0
    assert _best_on_val(scores(0.3, 0.29)) == 1
    assert _best_on_val(scores(float("nan"), 0.5)) == 1
    assert _best_on_val(scores(float("nan"), float("nan"))) == 0


def test_k_values_the_label_free_choice_cannot_score_are_refused_by_name():
    """QA (an ecologist, Python): K = 1 or K = the number of images raised scikit-learn's "Number of labels is 1";
    a default K over half the images was said to exceed "the number of images (5)", the stability's half."""
    x, _ = make_blobs(10, n_features=4, centers=2, cluster_std=0.3, random_state=0)
    features = {("x", 0): x}
    with pytest.raises(ValueError, match=r"^number of clusters K=1: expected 2 <= K <= 9 on 10 images"):
        select_clustering_without_labels(features, [1, 3], 3)
    with pytest.raises(ValueError, match=r"^number of clusters K=10: expected 2 <= K <= 9 on 10 images"):
        select_clustering_without_labels(features, [2, 10], 2)
    with pytest.raises(ValueError, match=r"^default_num_clusters K=6: expected K <= 5 on 10 images \(the stability"):
        select_clustering_without_labels(features, [2, 3], 6)
    assert select_clustering_without_labels(features, [2, 6], 6, criterion="silhouette")["num_clusters"] in (2, 6)


def test_the_number_of_classes_is_read_from_train_and_val_labels_not_test():
    """QA (a methods review): the number of classes was read from the test labels too, so a class test alone held
    gave every head one more output, and other weights and val losses, from data passed to be scored only."""
    features = {("mid_block", 10): torch.randn(60, 4, generator=torch.Generator().manual_seed(0))}
    y = np.arange(60) % 3
    test_labels = y.copy()
    test_labels[0] = 3  # a class neither train nor val holds
    kwargs = dict(C=1.0, tol=1e-5, device="cpu", progress_bar={"disable": True})
    with pytest.raises(ValueError, match=r"test_labels: class 3 is held by no train or val label, so no head can "):
        fit_probe_grid(features, y, features, y, features, test_labels, **kwargs)
    scored = fit_probe_grid(features, y, features, y, features, y, **kwargs)
    alone = fit_probe_grid(features, y, features, y, **kwargs)
    for name, tensor in alone.heads[("mid_block", 10)].state_dict().items():
        assert torch.equal(scored.heads[("mid_block", 10)].state_dict()[name], tensor)
    wider = fit_probe_grid(features, y, features, y, features, test_labels, num_classes=4, **kwargs)
    assert wider.heads[("mid_block", 10)].config.num_classes == 4  # asked for: scored

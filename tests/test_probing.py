import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from diffusion_classifiers.models import LinearProbeHead
from diffusion_classifiers.probing import ProbeGridResult, fit_probe_grid, kmeans_evaluate


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
            torch.testing.assert_close(grid.heads[pair].state_dict()[name], tensor, atol=1e-4, rtol=1e-4, msg=f"{pair} {name}")  # float32 round-off, compounded over iterations
        for split, scores in grid.metrics[pair].items():
            assert alone.metrics[pair][split] == pytest.approx(scores)


def _standardised(x: torch.Tensor) -> np.ndarray:
    return ((x - x.mean(0)) / x.std(0, unbiased=False)).double().numpy()


@pytest.mark.parametrize("num_classes", [3, 2])
def test_heads_reach_the_optimum_of_scikit_learn_logistic_regression(num_classes):
    # The same objective as LogisticRegression(C=C) on the train-standardised features: multinomial for 3 classes,
    # binomial (one logit) for 2. scikit-learn is run to a far tighter tol in float64, so it stands for the optimum;
    # ours stops at tol=1e-6 on every gradient entry. With the penalty l2 = 1 / (C N) the objective is l2-strongly
    # convex, so the weights are within |gradient|_2 / l2 <= sqrt(#params) * 1e-6 * C * N ~ 1e-3 of the optimum (3e-5
    # in practice); C 10% off would move them by 5e-2.
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
    np.testing.assert_allclose(weight, reference.coef_, atol=2e-4)
    np.testing.assert_allclose(bias, reference.intercept_, atol=2e-4)
    with torch.no_grad():
        probs = torch.softmax(head(x), dim=1).double().numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(_standardised(x)), atol=1e-4)


def test_the_penalty_follows_C(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    pair = ("down_blocks.1", 10)
    norms = [
        fit_probe_grid(*_alone(pair, train, y_train, val, y_val), C=C, device="cpu").heads[pair].linear.weight.norm()
        for C in (0.01, 1.0)
    ]
    assert norms[0] < 0.5 * norms[1]


def test_max_iter_warns_naming_the_unconverged_heads(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    with pytest.warns(UserWarning, match=r"3 of 3 probes reached max_iter=2 before tol=0.0001: \[\('down_blocks.1', 10\)"):
        short = fit_probe_grid(train, y_train, val, y_val, max_iter=2, device="cpu")
    assert set(short.n_iter.values()) == {2} and not any(short.converged.values())


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

    table = result.to_table(sort_by="val_accuracy")
    assert table[0]["block"] == "mid_block" and table[0]["best"] and not table[1]["best"]
    assert {"train_accuracy", "val_macro_f1", "test_accuracy", "n_iter", "converged", "kept_iter"} <= set(table[0])


def test_ties_go_to_the_earlier_pair_in_the_grid(blob_grid):
    (train, y_train), (val, y_val), _ = blob_grid
    x_train, x_val = train[("down_blocks.1", 10)], val[("down_blocks.1", 10)]
    for keys in ([("b", 1), ("a", 2)], [("a", 2), ("b", 1)]):
        result = fit_probe_grid({k: x_train for k in keys}, y_train, {k: x_val for k in keys}, y_val)
        assert result.best_pair == keys[0]


def test_macro_f1_ignores_classes_absent_from_labels_and_predictions():
    # Class 2 exists (num_classes=3) but never appears: macro-F1 averages classes 0 and 1, as sklearn does.
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 1])
    result = fit_probe_grid({("mid_block", 1): x}, y, {("mid_block", 1): x}, y, num_classes=3)
    assert result.metrics[("mid_block", 1)]["val"] == {"accuracy": 1.0, "macro_f1": 1.0}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(val_features={("mid_block", 10): a["val_features"][("mid_block", 10)]}), "missing \\[\\('down_blocks.1', 10\\)"),
        (lambda a: a.update(train_labels=a["train_labels"][:-1]), "pair \\('down_blocks.1', 10\\): expected train features of shape \\[199, D\\]"),
        (lambda a: a.update(val_labels=np.where(np.arange(100) == 7, 5, a["val_labels"])), "val_labels\\[7\\] = 5 is outside the expected range \\[0, 2\\]"),
        (lambda a: a["test_features"][("mid_block", 10)].__setitem__((4, 0), float("nan")), "pair \\('mid_block', 10\\): test features row 4 contains NaN"),
        (lambda a: a.update(test_labels=None), "test_features and test_labels together"),
        (lambda a: a.update(val_features={k: v[:, :3] for k, v in a["val_features"].items()}), "val features have 3 columns, train features have 12"),
        (lambda a: a.update(C=0.0), "expected 0 < C < inf, tol > 0, max_iter >= 1 and patience >= 0, got C=0.0"),
        (lambda a: a.update(tol=-1.0), "got C=1.0, tol=-1.0"),
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

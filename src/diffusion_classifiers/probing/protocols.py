"""The evaluation protocols every method is scored with: label-free k-means, few-shot prototypes and k-NN, a linear
probe, and [`evaluate_protocols`], which runs them all on one feature source."""

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from tqdm.auto import tqdm

from ..metrics import BINARY_SCORES, binary_scores, classification_metrics, clustering_metrics, resolve_positive_label
from ..models.linear_probe_head import column_mean_and_std
from ..models.prototype_head import fit_prototypes
from ..validation import (
    as_feature_matrix,
    as_inverse_regularisations,
    as_labels,
    check_finite_rows,
    check_label_range,
    derived_seed,
    resolve_num_classes,
)
from .probe_grid import fit_probe_grid

__all__ = [
    "KMeansGrouping",
    "NORMALIZATIONS",
    "MAX_SELECTION_IMAGES",
    "PCA_WHITEN_VARIANCE",
    "SELECTION_CRITERIA",
    "Shots",
    "check_normalization",
    "checked_num_clusters",
    "clustering_stability",
    "evaluate_protocols",
    "few_shot_indices",
    "fit_normalizer",
    "kmeans_clusters",
    "kmeans_evaluate",
    "knn_classify",
    "label_free_kmeans",
    "normalize_features",
    "prototype_classify",
    "select_clustering_without_labels",
]

Shots = Union[int, str, None]


# ------------------------------------------------------------------------------------------------------------------
# Label-free: k-means + Hungarian matching
# ------------------------------------------------------------------------------------------------------------------


# The normalisations the label-free choice picks from; k-means also takes "none" (the raw features, standardize=False).
NORMALIZATIONS = ("standardize", "l2", "pca_whiten")
# PCA whitening keeps the leading components that carry this fraction of the variance: whitening the near-zero-variance
# tail (constant border pixels, dead channels) would blow numerical noise up to unit variance. It keeps at least 2:
# in one dimension every cosine is +-1, so the cosine silhouette that compares features would be 1 for any 2-way split.
PCA_WHITEN_VARIANCE = 0.95
# How `select_clustering_without_labels` ranks its candidates.
SELECTION_CRITERIA = ("stability", "silhouette")
# The label-free choice scores at most this many images (a seeded subsample): every candidate costs
# `2 x num_resamples` k-means fits and the silhouette grows with the square of the images.
MAX_SELECTION_IMAGES = 5000
# `KMeansGrouping.assign` brings this many rows at a time into float64 and the normalised space: a whole folder's
# features at once would take two float64 copies of them (GBs at hundreds of thousands of images).
ASSIGN_CHUNK_ROWS = 8192
# The silhouette's pairwise distances are computed in chunks of this many MiB (scikit-learn's `working_memory`, 1 GiB
# by default: 0.5-1 GB more peak memory at 5,000 images); the score is the same.
SILHOUETTE_WORKING_MEMORY_MIB = 64


def normalize_features(features, normalization: str = "standardize") -> np.ndarray:
    r"""
    The features in the space k-means runs in, fitted on these features alone (no labels): `"standardize"`
    (scikit-learn's `StandardScaler`: zero mean, unit variance per column), `"l2"` (`Normalizer`: each row scaled to
    unit L2 norm), `"pca_whiten"` (`PCA(whiten=True)` keeping the leading components that carry `PCA_WHITEN_VARIANCE`
    of the variance, at least 2 when there are: decorrelated, unit variance) or `"none"`.

    Raises:
        `ValueError`: an unknown `normalization` (the message lists the allowed ones), or features that are not `[N, D]`.
    """
    check_normalization(normalization)
    return _normalized(_checked_clustering_features(features), normalization)


def _normalized(x: np.ndarray, normalization: str) -> np.ndarray:
    """[`normalize_features`] of features and a normalisation already checked."""
    if normalization == "standardize":
        return StandardScaler().fit_transform(x)
    if normalization == "l2":
        return Normalizer().fit_transform(x)
    if normalization == "pca_whiten":
        return _pca_whiten(x)
    return x


def _pca_whiten(x: np.ndarray) -> np.ndarray:
    return PCA(n_components=_whitened_components(x), whiten=True, svd_solver="full").fit_transform(x)


def _whitened_components(x: np.ndarray) -> int:
    explained = PCA(svd_solver="full").fit(x).explained_variance_ratio_
    keep = int(np.searchsorted(np.cumsum(explained), PCA_WHITEN_VARIANCE)) + 1
    return min(max(keep, 2), len(explained))


def fit_normalizer(features, normalization: str = "standardize"):
    """The scikit-learn transformer of [`normalize_features`]' `normalization`, fitted on `features` `[N, D]`, to
    bring other images' features into the same space (`.transform`): k-means fitted on some images then groups
    others (`probing.KMeansGrouping`)."""
    check_normalization(normalization)
    x = _checked_clustering_features(features)
    if normalization == "standardize":
        return StandardScaler().fit(x)
    if normalization == "l2":
        return Normalizer().fit(x)
    if normalization == "pca_whiten":
        return PCA(n_components=_whitened_components(x), whiten=True, svd_solver="full").fit(x)
    return FunctionTransformer().fit(x)


def check_normalization(normalization, name: str = "normalization") -> None:
    """Refuse a normalisation that is not one of `NORMALIZATIONS` or `"none"`, naming `name`."""
    allowed = (*NORMALIZATIONS, "none")
    if normalization not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {normalization!r}")


def kmeans_evaluate(
    features,
    labels,
    num_classes: int,
    seed: int = 0,
    standardize: bool = True,
    num_clusters: Optional[int] = None,
    normalization: Optional[str] = None,
    positive_label: Optional[int] = None,
) -> dict:
    r"""
    Label-free grouping: k-means with `num_clusters` clusters (default `num_classes`; `n_init=10`,
    `random_state=seed`) on the features, scored with [`~metrics.clustering_metrics`] (NMI, ARI, Hungarian-matched
    accuracy and macro-F1, purity; with more clusters than classes the unmatched clusters count as errors).

    Args:
        normalization (`str`, *optional*): the space k-means runs in, see [`normalize_features`] (e.g. the one
            [`select_clustering_without_labels`] chose); default `"standardize"`, or `"none"` when `standardize=False`.
        positive_label (`int`, *optional*): two classes: the class whose sensitivity, specificity and F1 are scored
            (default class 1, see [`~metrics.clustering_metrics`]).

    Returns:
        `dict` of the metrics plus `clusters`, the `np.ndarray` cluster id of each sample.

    Raises:
        `ValueError`: more clusters than images, an unknown normalisation, or features that are not `[N, D]` with one
        row per label.
    """
    normalization = _resolve_normalization(normalization, standardize)
    x, y = _checked_clustering_features(features), as_labels(labels, "labels")
    if len(x) != len(y):
        raise ValueError(f"expected features [N, D] with one row per label, got {x.shape} for {len(y)} labels")
    num_clusters = num_classes if num_clusters is None else num_clusters
    _check_num_clusters(num_clusters, len(x))
    clusters = _kmeans(x, num_clusters, seed, normalization)
    return {**clustering_metrics(y, clusters, num_classes, positive_label), "clusters": clusters}


def kmeans_clusters(features, num_clusters: int, seed: int = 0, normalization: str = "standardize") -> np.ndarray:
    """The k-means cluster id of each image (`[N]`, ids `0..num_clusters-1`), no labels needed: k-means with
    `n_init=10`, `random_state=seed` on `features` `[N, D]` after `normalization` (see [`normalize_features`]), as
    [`kmeans_evaluate`] runs it. To group unlabeled images: their features at the (block, t) and normalisation
    [`select_clustering_without_labels`] chose, e.g. `kmeans_clusters(features[pair], k, normalization=norm)`.

    Raises:
        `ValueError`: more clusters than images, an unknown normalisation, or features that are not `[N, D]`.
    """
    check_normalization(normalization)
    x = _checked_clustering_features(features)
    _check_num_clusters(num_clusters, len(x))
    return _kmeans(x, num_clusters, seed, normalization)


class KMeansGrouping:
    r"""
    k-means fitted on the features of some images that groups any others, as a lab groups a folder too large to fit
    at once: the normalisation (see [`normalize_features`]) and k-means (`n_init=10`, `random_state=seed`, as
    [`kmeans_clusters`]) are fitted on `fit`'s features; `assign` puts each row of other features in the space of
    the nearest centre, `ASSIGN_CHUNK_ROWS` rows at a time. Fitted on every image, `assign` gives the clusters
    [`kmeans_clusters`] gives, up to round-off: `"pca_whiten"` brings rows into its space by `transform`, which
    differs from the `fit_transform` [`kmeans_clusters`] clusters in the last bits, so a row as near to two centres
    as that may go to the other one.

    Example:

    ```py
    >>> grouping = KMeansGrouping(num_clusters=121, normalization="pca_whiten").fit(features[sample])
    >>> clusters, distances = grouping.assign(features)
    ```
    """

    def __init__(self, num_clusters: int, normalization: str = "standardize", seed: int = 0):
        check_normalization(normalization)
        _check_num_clusters(num_clusters, num_clusters)
        self.num_clusters, self.normalization, self.seed = int(num_clusters), normalization, seed

    def fit(self, features) -> "KMeansGrouping":
        """Fit the normalisation and k-means on `features` `[N, D]` (N >= `num_clusters`); returns `self`."""
        x = _checked_clustering_features(features)
        _check_num_clusters(self.num_clusters, len(x))
        self.num_features, self.normalizer = x.shape[1], fit_normalizer(x, self.normalization)
        self.kmeans = KMeans(n_clusters=self.num_clusters, n_init=10, random_state=self.seed)
        self.kmeans.fit(self.normalizer.transform(x))
        return self

    def save(self, path: Union[str, os.PathLike], metadata: Optional[Dict[str, str]] = None) -> None:
        """The fitted grouping as safetensors (float64): the centres and the normalisation's fitted values, which
        `KMeansGrouping.load` reads back to assign other images to the same clusters; `metadata` (strings) beside
        them, e.g. which feature it groups."""
        from safetensors.numpy import save

        from ..atomic_files import write_atomically

        if not hasattr(self, "kmeans"):
            raise ValueError("KMeansGrouping.save: fit it first (`grouping.fit(features)`)")
        tensors = {"centres": self.kmeans.cluster_centers_}
        tensors |= {name: getattr(self.normalizer, name) for name in _NORMALIZER_FITTED.get(self.normalization, ())}
        settings = {"normalization": self.normalization, "num_clusters": str(self.num_clusters),
                    "num_features": str(self.num_features), "seed": str(self.seed)}  # fmt: skip
        data = save({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()},
                    metadata={**(metadata or {}), **settings})  # fmt: skip
        write_atomically(path, lambda handle: handle.write(data), mode="wb")  # whole or not at all

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> Tuple["KMeansGrouping", Dict[str, str]]:
        """`(grouping, metadata)` of a `save`d grouping: it assigns images as the saved one did (scikit-learn's
        transforms given back their fitted values; distances equal to the last bits). A file this method did not
        write is refused, naming it."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as file:
                metadata, tensors = file.metadata() or {}, {name: file.get_tensor(name) for name in file.keys()}
            grouping = cls(int(metadata["num_clusters"]), metadata["normalization"], int(metadata["seed"]))
            grouping.num_features = int(metadata["num_features"])
            grouping.normalizer = _fitted_normalizer(grouping.normalization, grouping.num_features, tensors)
            centres = tensors["centres"]
        except (SafetensorError, KeyError, ValueError, OSError) as error:
            raise ValueError(f"{path}: expected a grouping KMeansGrouping.save wrote, could not read it: {error!r}") \
                from None
        width = _centres_width(grouping.normalization, grouping.num_features, tensors)
        if centres.shape != (grouping.num_clusters, width):
            raise ValueError(f"{path}: centres of shape {centres.shape}; expected [{grouping.num_clusters}, its width]")
        grouping.kmeans = KMeans(n_clusters=grouping.num_clusters, n_init=10, random_state=grouping.seed)
        grouping.kmeans.cluster_centers_, grouping.kmeans.n_features_in_ = centres, centres.shape[1]
        return grouping, metadata

    def assign(self, features) -> Tuple[np.ndarray, np.ndarray]:
        """`(clusters, distances)`: each row's nearest centre `[N]` and its Euclidean distance to it `[N]`, in the
        normalised space (a large distance: an image unlike its cluster's others, worth a look). `features` (an
        array, tensor or memory map) is read `ASSIGN_CHUNK_ROWS` rows at a time."""
        if not hasattr(self, "kmeans"):
            raise ValueError("KMeansGrouping.assign: fit it first (`grouping.fit(features)`)")
        shape = list(np.shape(features))
        if len(shape) != 2 or shape[1] != self.num_features:
            raise ValueError(f"features: expected [N, {self.num_features}], as fitted, got {shape}")
        clusters, distances = [np.empty(0, dtype=np.intp)], [np.empty(0)]
        for start in range(0, shape[0], ASSIGN_CHUNK_ROWS):
            chunk = features[start : start + ASSIGN_CHUNK_ROWS]
            x = np.asarray(chunk.detach().cpu() if hasattr(chunk, "detach") else chunk, dtype=np.float64)
            check_finite_rows(x, "features", start=start)
            to_centres = self.kmeans.transform(self.normalizer.transform(x))
            clusters.append(to_centres.argmin(1))
            distances.append(to_centres[np.arange(len(x)), clusters[-1]])
        return np.concatenate(clusters), np.concatenate(distances)


# What `KMeansGrouping.save` keeps of each normalisation's fitted scikit-learn transformer (l2 and none fit nothing)
_NORMALIZER_FITTED = {"standardize": ("mean_", "scale_"), "pca_whiten": ("mean_", "components_", "explained_variance_")}


def _centres_width(normalization: str, num_features: int, tensors: Dict[str, np.ndarray]) -> int:
    """The width of the normalised features a saved grouping's centres live in: its PCA's components, else the
    features'."""
    return len(tensors["components_"]) if normalization == "pca_whiten" else num_features


def _fitted_normalizer(normalization: str, num_features: int, tensors: Dict[str, np.ndarray]):
    """The transformer of `fit_normalizer` given back the fitted values a `KMeansGrouping.save` kept."""
    if normalization == "standardize":
        normalizer = StandardScaler()
        normalizer.var_, normalizer.n_samples_seen_ = tensors["scale_"] ** 2, 0
    elif normalization == "pca_whiten":
        normalizer = PCA(n_components=len(tensors["components_"]), whiten=True)
        normalizer.n_components_ = len(tensors["components_"])
    else:
        normalizer = Normalizer() if normalization == "l2" else FunctionTransformer()
    for name in _NORMALIZER_FITTED.get(normalization, ()):
        setattr(normalizer, name, tensors[name])
    normalizer.n_features_in_ = num_features
    return normalizer


def _kmeans(x: np.ndarray, num_clusters: int, seed: int, normalization: str) -> np.ndarray:
    """[`kmeans_clusters`] of features and arguments already checked."""
    kmeans = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
    return kmeans.fit_predict(_normalized(x, normalization))


def _resolve_normalization(normalization: Optional[str], standardize: bool) -> str:
    normalization = ("standardize" if standardize else "none") if normalization is None else normalization
    check_normalization(normalization)
    return normalization


def clustering_stability(features, num_clusters: int, seed: int = 0, num_resamples: int = 5, n_init: int = 3) -> float:
    r"""
    How reproducible the k-means partition of these features is, without labels: `num_resamples` times, split the
    images at random into two halves, fit k-means (`num_clusters`, `n_init`) on each half, let both fits label every
    image, and score the agreement of the two labelings with the adjusted Rand index; returns the mean ARI (1: the
    same partition from either half, about 0: unrelated partitions). Split-half stability, after Lange et al.,
    "Stability-based validation of clustering solutions" (Neural Computation, 2004).

    The ARI compares two partitions of the same images, not distances, so the score does not depend on the space the
    clusters were found in: unlike the silhouette, it can compare normalisations. A resample where either fit cannot
    form `num_clusters` clusters (a half with fewer distinct feature rows: constant or nearly constant features, e.g. a
    dead channel) scores 0, chance level: the ARI of two one-cluster labelings is 1, which would rank such features
    the most stable of all.

    Raises:
        `ValueError`: features that are not `[N, D]`, or `num_clusters` larger than half the images.
    """
    from sklearn.metrics import adjusted_rand_score

    x = _checked_clustering_features(features)
    _check_num_clusters(num_clusters, len(x) // 2)
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
        raise ValueError(f"num_resamples: expected an integer >= 1, got {num_resamples!r}")
    rng = np.random.default_rng(seed)
    scores = []
    for resample in range(num_resamples):
        order = rng.permutation(len(x))
        halves = order[: len(x) // 2], order[len(x) // 2 :]
        labelings = [
            KMeans(n_clusters=num_clusters, n_init=n_init, random_state=derived_seed(seed, resample))
            .fit(x[half]).predict(x)
            for half in halves
        ]
        partitioned = all(_num_distinct(labels) == num_clusters for labels in labelings)
        scores.append(adjusted_rand_score(*labelings) if partitioned else 0.0)
    return float(np.mean(scores))


def _num_distinct(clusters: np.ndarray) -> int:
    return len(np.unique(clusters))


def select_clustering_without_labels(
    features: Dict[tuple, object],
    candidate_num_clusters: Optional[Sequence[int]],
    default_num_clusters: int,
    seed: int = 0,
    standardize: bool = True,
    n_init: int = 3,
    normalizations: Optional[Sequence[str]] = None,
    num_resamples: int = 5,
    criterion: str = "stability",
    max_images: Optional[int] = MAX_SELECTION_IMAGES,
) -> dict:
    r"""
    Choose the feature, the normalisation and the number of clusters K of k-means without labels.

    With `criterion="stability"` (the default), every (feature, normalisation) candidate is scored by
    [`clustering_stability`] at `default_num_clusters` (mean ARI between k-means fitted on random halves) and the most
    stable one is chosen. The ARI compares partitions of the same images, so it is one scale for every feature and
    every normalisation (the silhouette is not: whitening lifts low-variance directions to unit variance and lowers it
    mechanically). With `criterion="silhouette"` (the rule before 2026-12-01), in each normalisation the feature with
    the best cosine silhouette (scikit-learn's `silhouette_score`) is chosen, then the normalisation whose chosen
    feature is most stable. Stability is the default because it ranks candidates closer to how well their clusters
    follow the classes: on the U-Net study's train split, with its labels used only to compare the rules, Spearman
    0.70 vs 0.39 for the silhouette over 126 candidates on digits, and the least inverted on PneumoniaMNIST, where
    every criterion ranks them the wrong way (-0.25 vs -0.68; benchmarks/RESULTS.md, "k-means without labels").

    Last, on the chosen feature and normalisation, the K in `candidate_num_clusters` with the best silhouette (one
    space, so comparable across K; stability is not used for K because it favours the coarsest split).

    Args:
        features: `key -> [N, D]` features of one split, keyed e.g. `(block, timestep)` as
            `DiffusionFeatureExtractor.extract` returns them; no labels are read. The more images the steadier the
            choice: `unet_feature_study` passes the (unlabeled) train split.
        candidate_num_clusters: the K to choose from, exactly these, each 2 <= K <= N - 1 (a silhouette's range);
            `None`: `default_num_clusters`, which the stability criterion also needs at most N // 2 (its halves).
        default_num_clusters: the K the (feature, normalisation) candidates are compared at (the number of classes
            when it is known), whether or not it is among `candidate_num_clusters`.
        n_init: k-means restarts per fit (`random_state=seed`).
        normalizations: the normalisations to choose from (of `"standardize"`, `"l2"`, `"pca_whiten"`, `"none"`);
            default: only `"standardize"` (or `"none"` when `standardize=False`), as before normalisations were chosen.
        num_resamples: split-half resamples of each stability score.
        criterion: `"stability"` or `"silhouette"`, see above.
        max_images: score a random subset of at most this many images (the same rows for every candidate, drawn with
            `seed`), so a large folder costs no more than this; `None` scores every image.

    Returns:
        `dict` with `pair` (the chosen key, as a list), `normalization`, `num_clusters`, `criterion`, `num_images` (the
        images scored), `scores` (normalisation -> key joined by "/", e.g. `"mid_block/100"` -> its score by
        `criterion` at `default_num_clusters`), `silhouette_by_num_clusters` (K -> score on the chosen key; -1 where
        k-means cannot form K clusters: fewer distinct rows, e.g. constant features) and
        `by_normalization` (normalisation -> its best `pair` and that pair's `stability`, with its `silhouette` under
        the silhouette criterion).
    """
    import sklearn
    from sklearn.metrics import silhouette_score

    if not features:
        raise ValueError("expected features as a non-empty dict (block, timestep) -> [N, D]")
    if criterion not in SELECTION_CRITERIA:
        raise ValueError(f"criterion: expected one of {', '.join(map(repr, SELECTION_CRITERIA))}, got {criterion!r}")
    normalizations = [_resolve_normalization(None, standardize)] if normalizations is None else list(normalizations)
    if not normalizations or len(set(normalizations)) != len(normalizations):
        raise ValueError(f"normalizations: expected a non-empty list of distinct names, got {normalizations}")
    for name in normalizations:
        check_normalization(name)
    candidates = checked_num_clusters(candidate_num_clusters, default_num_clusters)
    # the rows first, then float64: the features may be float16 memory maps larger than memory
    chosen = _selection_rows(features, max_images, seed)
    checked = {pair: _checked_clustering_features(value) for pair, value in chosen.items()}
    num_images = len(next(iter(checked.values())))
    _check_selectable_num_clusters(candidates, default_num_clusters, num_images, criterion)

    def silhouette(x: np.ndarray, k: int) -> float:
        clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
        if _num_distinct(clusters) < k:  # fewer distinct rows than K (constant features): the worst score
            return -1.0
        with sklearn.config_context(working_memory=SILHOUETTE_WORKING_MEMORY_MIB):  # the same score, in chunks
            return float(silhouette_score(x, clusters, metric="cosine"))

    def stability(x: np.ndarray) -> float:
        return clustering_stability(x, int(default_num_clusters), seed, num_resamples, n_init)

    score = stability if criterion == "stability" else lambda x: silhouette(x, int(default_num_clusters))
    by_normalization, spaces, scores = {}, {}, {}
    for name in normalizations:
        by_pair = {pair: score(normalize_features(x, name)) for pair, x in checked.items()}
        best_pair = max(by_pair, key=by_pair.get)
        spaces[name], scores[name] = normalize_features(checked[best_pair], name), by_pair
        by_normalization[name] = {"pair": list(best_pair), criterion: by_pair[best_pair]}
        if criterion == "silhouette" and len(normalizations) > 1:  # silhouettes of different spaces do not compare
            by_normalization[name]["stability"] = stability(spaces[name])
    chosen = max(normalizations, key=lambda name: by_normalization[name].get("stability", 0.0))
    best_pair, x = tuple(by_normalization[chosen]["pair"]), spaces[chosen]
    reuse = criterion == "silhouette"  # the chosen pair's silhouette at the default K is already its score
    by_k = {k: scores[chosen][best_pair] if reuse and k == default_num_clusters else silhouette(x, k) for k in candidates}
    named_scores = {name: {"/".join(map(str, key)): value for key, value in by_key.items()} for name, by_key in scores.items()}
    return {
        "pair": list(best_pair),
        "normalization": chosen,
        "num_clusters": max(by_k, key=by_k.get),
        "criterion": criterion,
        "num_images": num_images,
        "scores": named_scores,
        "silhouette_by_num_clusters": by_k,
        "by_normalization": by_normalization,
    }


def label_free_kmeans(
    selection_features: Dict[tuple, object],
    test_features: Dict[tuple, object],
    test_labels,
    num_classes: int,
    seed: int = 0,
    candidate_num_clusters: Optional[Sequence[int]] = None,
    criterion: str = "stability",
    normalizations: Sequence[str] = NORMALIZATIONS,
    positive_label: Optional[int] = None,
) -> dict:
    """k-means on the test split with every choice made on `selection_features` (another split, e.g. the unlabeled
    train images) without labels: the feature key, the normalisation (of `normalizations`) and K (one of exactly
    `candidate_num_clusters` when given, else `num_classes`) by [`select_clustering_without_labels`] with
    `criterion`; the test labels only score the result (two classes: also for `positive_label`, see
    [`kmeans_evaluate`]). Returns the clustering metrics with `feature` (the key joined
    by "/"), `normalization`, `num_clusters` and `selection` (the scores it chose by)."""
    selection = select_clustering_without_labels(
        selection_features, candidate_num_clusters, num_classes, seed=seed,
        normalizations=normalizations, criterion=criterion,
    )  # fmt: skip
    key = tuple(selection["pair"])
    metrics = kmeans_evaluate(
        test_features[key], test_labels, num_classes, seed=seed, num_clusters=selection["num_clusters"],
        normalization=selection["normalization"], positive_label=positive_label,
    )  # fmt: skip
    metrics.pop("clusters")
    chosen = {name: selection[name] for name in ("normalization", "num_clusters")}
    return {**metrics, "feature": "/".join(map(str, key)), **chosen, "selection": selection}


def checked_num_clusters(candidates: Optional[Sequence[int]], default_num_clusters: int) -> List[int]:
    """The K to choose from: exactly `candidates` (sorted, repeats dropped), or `[default_num_clusters]` when `None`."""
    if candidates is None:
        return [default_num_clusters]
    is_sequence = isinstance(candidates, Sequence) or (isinstance(candidates, np.ndarray) and candidates.ndim == 1)
    integers = is_sequence and not isinstance(candidates, str) and all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in candidates
    )
    if not integers or len(candidates) == 0:
        raise ValueError(
            f"candidate_num_clusters: expected None (K = {default_num_clusters}) or a non-empty sequence of integers "
            f"K >= 1, got {candidates!r}"
        )
    return sorted({int(k) for k in candidates})


def _selection_rows(features: Dict[tuple, np.ndarray], max_images: Optional[int], seed: int) -> Dict[tuple, np.ndarray]:
    """The same rows of every feature: all of them, or a seeded random `max_images` when there are more."""
    sizes = {len(x) for x in features.values()}
    if len(sizes) != 1:
        raise ValueError(f"expected every feature with the same number of images (rows), got {sorted(sizes)}")
    (num_images,) = sizes
    valid = isinstance(max_images, (int, np.integer)) and not isinstance(max_images, bool) and max_images >= 2
    if max_images is not None and not valid:
        raise ValueError(f"max_images: expected an integer >= 2 or None, got {max_images!r}")
    if max_images is None or num_images <= max_images:
        return features
    rows = np.sort(np.random.default_rng(seed).choice(num_images, max_images, replace=False))
    return {pair: x[rows] for pair, x in features.items()}


def _checked_clustering_features(features) -> np.ndarray:
    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected features [N, D], got shape {x.shape}")
    check_finite_rows(x, "features")
    return x


def _check_selectable_num_clusters(candidates: List[int], default: int, num_images: int, criterion: str) -> None:
    """The K `select_clustering_without_labels` can score on `num_images` images: a silhouette needs 2 <= K <= N - 1
    (one cluster, or one an image, has no between-cluster distance), the split-half stability K <= N // 2 (QA:
    scikit-learn's "Number of labels is 1", and a count of images that was the half's)."""
    for k in {*candidates, default}:
        _check_num_clusters(k, num_images)
        if not 2 <= k <= num_images - 1:
            raise ValueError(
                f"number of clusters K={k}: expected 2 <= K <= {num_images - 1} on {num_images} images (the "
                "silhouette that chooses K needs two clusters at least and one with two images)"
            )
    if criterion == "stability" and default > num_images // 2:
        raise ValueError(
            f"default_num_clusters K={default}: expected K <= {num_images // 2} on {num_images} images (the stability "
            f"that chooses the feature clusters halves of {num_images // 2} images)"
        )


def _check_num_clusters(num_clusters: int, num_images: int) -> None:
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < 1:
        raise ValueError(f"number of clusters K: expected an integer >= 1, got {num_clusters!r}")
    if num_clusters > num_images:
        raise ValueError(
            f"number of clusters K={num_clusters} is larger than the number of images ({num_images}); expected "
            f"K <= {num_images}: cluster more images or ask for fewer clusters"
        )


# ------------------------------------------------------------------------------------------------------------------
# Few-shot protocols: labelled subsets, prototypes and k-NN
# ------------------------------------------------------------------------------------------------------------------


def _shots_name(shots: Shots) -> str:
    """ "all" for None / "all", else the count as a string (the JSON key of `evaluate_protocols`)."""
    if shots is None or shots == "all":
        return "all"
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"expected shots_per_class as an integer >= 1, None or 'all', got {shots!r}")
    return str(int(shots))


def few_shot_indices(
    labels, shots_per_class: Shots, seed: int = 0, num_classes: Optional[int] = None, class_names=None
) -> np.ndarray:
    r"""
    The indices of a labelled subset with `shots_per_class` samples of every class, drawn without replacement.

    Args:
        labels (`np.ndarray`, `torch.Tensor` or `list`): the integer labels of the split to draw from (the train split).
        shots_per_class (`int`, `"all"` or `None`): n >= 1, or `None` / `"all"` for every sample.
        seed (`int`, *optional*, defaults to 0): the draw is a function of `(labels, shots_per_class, seed)` only.
        num_classes (`int`, *optional*): the classes `0 .. num_classes - 1` must all be present; default: the largest
            label + 1.
        class_names (`Sequence[str]`, *optional*): the classes' names, by which a class short of samples is named.

    Returns:
        `np.ndarray`: sorted, `n * num_classes` indices (all indices for `"all"`).
    """
    y = as_labels(labels, "labels")
    name = _shots_name(shots_per_class)
    if name == "all":
        return np.arange(len(y))
    num_classes = resolve_num_classes(num_classes, None, y)
    check_label_range(y, "labels", num_classes)
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < shots_per_class:
        fewest = int(counts.argmin())
        raise ValueError(
            f"class {_class_label(fewest, class_names)} has {counts[fewest]} labelled samples, fewer than "
            f"shots_per_class={shots_per_class} (up to {counts[fewest]} fit)"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == k), int(shots_per_class), replace=False) for k in range(num_classes)]
    return np.sort(np.concatenate(chosen))


def _check_shots_fit(
    shots: Sequence[Shots], names: List[str], y_train: np.ndarray, num_classes: int, class_names=None
) -> None:
    """Every class has a labelled train sample, and as many as each count of `shots`: checked before any protocol
    runs, naming the classes short of them (by `class_names` when given) and the `shots` that fit."""
    counts = np.bincount(y_train, minlength=num_classes)
    fewest = int(counts.min())
    too_many = [int(n) for n, name in zip(shots, names) if name != "all" and int(n) > fewest]
    if fewest > 0 and not too_many:
        return
    short = np.flatnonzero(counts < (1 if fewest == 0 else max(too_many)))
    listed = _and([f"class {_class_label(k, class_names)} has {counts[k]}" for k in short[:5]])
    listed += f" (and {len(short) - 5} more classes)" if len(short) > 5 else ""
    naming = "" if class_names is not None else " (pass class_names=train.class_names to name the classes)"
    if fewest == 0:
        raise ValueError(
            f"train_labels: {listed} labelled samples{naming}; expected every one of the {num_classes} classes in "
            "the train split: prototypes, k-NN and the linear probe need a labelled sample of each"
        )
    fitting = [n if name == "all" else int(n) for n, name in zip(shots, names) if name == "all" or int(n) <= fewest]
    given = tuple(n if name == "all" else int(n) for n, name in zip(shots, names))
    raise ValueError(
        f"shots={given}: {_and([f'{n}-shot' for n in too_many])} episodes need that many labelled train samples in "
        f"every class, but {listed}{naming}; pass shots={tuple(fitting or [fewest])} (integers up to {fewest} fit, "
        "None is the whole train split), or label more train images"
    )


def _class_label(k: int, class_names) -> str:
    return repr(str(class_names[k])) if class_names is not None else str(int(k))


def _and(items: List[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _check_pair(train_features, train_labels, test_features, num_classes, num_test: Optional[int] = None):
    """Validated float32 train / test matrices, train labels and the number of classes."""
    y = as_labels(train_labels, "train_labels")
    x = as_feature_matrix(train_features, "train_features", len(y))
    test = as_feature_matrix(test_features, "test_features", num_test)
    if test.shape[1] != x.shape[1]:
        raise ValueError(f"test_features have {test.shape[1]} columns, train_features have {x.shape[1]}")
    num_classes = resolve_num_classes(num_classes, None, y)
    check_label_range(y, "train_labels", num_classes)
    return x, y, test, num_classes


def _standardized(reference: torch.Tensor, *features: torch.Tensor) -> List[torch.Tensor]:
    """`features` standardised with the column mean and std of `reference` (`models.column_mean_and_std`, as
    `fit_prototypes` and the linear probe standardise)."""
    mean, std = column_mean_and_std(reference)
    return [(x - mean) / std for x in features]


def prototype_classify(
    train_features, train_labels, test_features, num_classes: Optional[int] = None, standardize: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    r"""
    Nearest-prototype classification: each class's prototype is the L2-normalised mean of its L2-normalised labelled
    features (standardised first with the labelled set's mean and std if `standardize`, see [`knn_classify`]); a test
    feature goes to the prototype of highest cosine similarity. The same computation as [`~models.PrototypeHead`].

    Returns:
        predictions `[N_test]` and per-class scores `[N_test, K]` (the cosine similarities), as numpy arrays.
    """
    x, y, test, num_classes = _check_pair(train_features, train_labels, test_features, num_classes)
    if standardize:
        x, test = _standardized(x, x, test)
    head = fit_prototypes(x, y, num_classes=num_classes)
    with torch.no_grad():
        scores = head.similarities(test)
    return scores.argmax(dim=1).numpy(), scores.numpy()


def knn_classify(
    train_features,
    train_labels,
    test_features,
    k: int = 10,
    num_classes: Optional[int] = None,
    standardize: bool = False,
    chunk_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    r"""
    k-nearest-neighbour classification by cosine similarity (optionally after standardising with the labelled set's
    mean and std, std clamped at 1e-6), majority vote of the `min(k, N_train)` most similar labelled samples. A tie in
    votes goes to the tied class with the larger summed similarity of its voters. A few shots per class are too few to
    estimate a mean and std per column: standardise the features beforehand with those of the whole (unlabeled)
    split, as [`evaluate_protocols`] does.

    Returns:
        predictions `[N_test]` and per-class scores `[N_test, K]`, the fraction of the neighbours voting for each class.
    """
    x, y, test, num_classes = _check_pair(train_features, train_labels, test_features, num_classes)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"expected k as an integer >= 1, got {k!r}")
    k = min(int(k), len(x))
    if standardize:
        x, test = _standardized(x, x, test)
    x, test, y_t = F.normalize(x, dim=1), F.normalize(test, dim=1), torch.as_tensor(y)
    votes, similarity_sums = [], []
    for chunk in test.split(chunk_size):
        similarity, neighbours = (chunk @ x.T).topk(k, dim=1)
        one_hot = F.one_hot(y_t[neighbours], num_classes).float()  # [n, k, K]
        votes.append(one_hot.sum(dim=1))
        similarity_sums.append((one_hot * similarity[:, :, None]).sum(dim=1))
    votes, similarity_sums = torch.cat(votes), torch.cat(similarity_sums)
    # A vote outweighs any difference of summed similarities (each in [-k, k]).
    predictions = (votes + similarity_sums / (2 * k + 1)).argmax(dim=1)
    return predictions.numpy(), (votes / k).numpy()


# ------------------------------------------------------------------------------------------------------------------
# The shared evaluation entry point
# ------------------------------------------------------------------------------------------------------------------


SCORES = ("accuracy", "macro_f1", "balanced_accuracy")


def _scores(y_true, y_pred, num_classes, positive_label: Optional[int]) -> Dict[str, Optional[float]]:
    """`SCORES` and, of two classes, `metrics.BINARY_SCORES` for `positive_label`."""
    result = classification_metrics(y_true, y_pred, num_classes=num_classes)
    binary = binary_scores(y_true, y_pred, positive_label) if num_classes == 2 else {}
    return {**{name: result[name] for name in SCORES}, **binary}


def _summarise(episodes: List[Dict[str, Optional[float]]]) -> dict:
    """Mean, (population) std and the values over episodes of each score; None where an episode's is undefined (a
    sensitivity on a test split without a positive image)."""
    summary = {"num_episodes": len(episodes)}
    for name in episodes[0]:
        values = [e[name] for e in episodes]
        defined = None not in values
        summary[f"{name}_mean"] = float(np.mean(values)) if defined else None
        summary[f"{name}_std"] = float(np.std(values)) if defined else None
        summary[f"{name}_per_episode"] = values
    return summary


def _single_feature(features, name: str):
    """A plain [N, D] matrix from a tensor/array or a one-pair `(block, timestep) -> [N, D]` dict, and the pair."""
    if not isinstance(features, dict):
        return features, None
    if len(features) != 1:
        raise ValueError(
            f"expected {name} as an [N, D] tensor or a dict with one (block, timestep) pair, got {len(features)} pairs "
            f"{list(features)}: call evaluate_protocols once per pair"
        )
    (pair, value), = features.items()
    return value, pair


def evaluate_protocols(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: Optional[int] = None,
    val_features=None,
    val_labels=None,
    shots: Sequence[Shots] = (1, 5, 10, None),
    num_episodes: int = 5,
    seed: int = 0,
    knn_k: int = 10,
    standardize: bool = False,
    kmeans_normalizations: Sequence[str] = NORMALIZATIONS,
    linear_probe: bool = True,
    probe_kwargs: Optional[dict] = None,
    progress_bar: Optional[dict] = None,
    class_names: Optional[Sequence[str]] = None,
    positive_label: Optional[int] = None,
) -> dict:
    r"""
    Score one feature source with every protocol, the same way for every method (U-Net features, the RC-DiT
    representation, a contrastive ViT, DINOv2).

    - `label_free`: k-means with `num_classes` clusters on the test features (seeded with `seed`), in the space of
      `kmeans_normalizations` whose k-means partition of the unlabeled train features is the most stable
      ([`label_free_kmeans`]: no label is read to choose it, as in the U-Net study); Hungarian-matched `accuracy`,
      `macro_f1` and `balanced_accuracy`, `nmi`, `ari`, `purity`, the chosen `normalization` and every candidate's
      `stability`. `label_free_by_normalization` scores the test k-means in every candidate space, for comparison
      (e.g. `"standardize"`, the only space before 2026-12-01).
    - `label_chosen` (with val): the test k-means in the space of `kmeans_normalizations` whose k-means on the val
      features scores the best Hungarian-matched macro-F1 against the val labels, the figure beside the label-free
      one (its choice reads labels; the test labels still only score it); `val_macro_f1` holds every space's.
    - `label_free_on_val` (with val): the label-free k-means run on the val features instead, in the same space: the
      same method on the split choices are made on, to set beside the test figure (a large gap says the test split
      differs from val).
    - `prototype` and `knn`, for each n in `shots`: `num_episodes` episodes, episode e labelling
      `few_shot_indices(train_labels, n, derived_seed(seed, e))` (`seed` itself for e = 0); [`prototype_classify`]
      and [`knn_classify`] with
      `k = min(knn_k, n)` neighbours (1-NN for n = 1; `knn_k` for "all") are scored on the whole test split. The
      "all" case uses every train sample in a single episode. Reported: mean and (population) std over episodes of
      accuracy, macro-F1 and balanced accuracy, and the per-episode values.
    - `linear_probe` (unless `linear_probe=False`): [`fit_probe_grid`] on all train labels with `probe_kwargs`
      (e.g. `C`), scored on the test split and on val if given; `C` is the strength kept. Several `C` (the best on
      val is kept) and `early_stopping` need val: without it they are refused, as they would be chosen on train.

    Args:
        train_features, test_features, val_features: `[N, D]` tensors or arrays, or dicts with a single
            `(block, timestep)` pair (as `DiffusionFeatureExtractor.extract` or the RC-DiT pipeline's `dit_features`
            return); the pair is recorded as `feature`.
        train_labels, test_labels, val_labels: integer labels in `[0, num_classes)`.
        num_classes: defaults to `len(class_names)`, else the largest train or test label + 1.
        shots: labelled samples per class: integers >= 1, and `None` or "all" for the whole train split. Every
            class of the train split must hold at least the largest integer: checked before any protocol runs, a
            count some class lacks is refused, naming that class and the `shots` that fit (e.g. `(1, None)`).
        num_episodes: >= 1 draws of each few-shot labelled set.
        standardize: prototypes and k-NN standardise the features before the cosine, with the mean and std of the
            whole train split (its features only, no label; at 1 shot of 3 classes, the 3 labelled samples' own
            statistics cost 18 points of accuracy on sparse features).
        kmeans_normalizations: the spaces the label-free k-means chooses from (of `NORMALIZATIONS` and `"none"`);
            `("standardize",)` fixes the space.
        progress_bar: `tqdm` arguments for the bar over the protocols' steps (k-means, each episode, the linear
            probe, whose own bar over iterations it also sets unless `probe_kwargs` does); `{"disable": True}` hides
            both.
        class_names: the names of the classes `0 .. K-1` (e.g. `train.class_names`), used to name a class in the
            messages; default: its label id.
        positive_label: two classes only: the id of the positive class (the finding; `metrics.resolve_positive_label`
            turns a name into it), default class 1. Every protocol's figures of a binary task (k-means, episodes,
            linear probe) also hold its `sensitivity`, `specificity` and `positive_f1`; `settings` records it.

    Returns:
        a JSON-serialisable `dict`:

        ```
        {"feature": ["encoder", 0] or None, "num_classes": K, "feature_dim": D, "num_train": ..., "num_test": ...,
         "settings": {"shots": ["1", "5", "10", "all"], "num_episodes": 5, "seed": 0, "knn_k": 10, ...},
         "label_free": {"accuracy", "macro_f1", "balanced_accuracy", "nmi", "ari", "purity", "normalization",
                        "stability": {"standardize": ..., "l2": ..., "pca_whiten": ...}},
         "label_free_by_normalization": {"standardize": {"accuracy", "macro_f1", ...}, ...},
         "label_chosen": {"accuracy", ..., "normalization", "val_macro_f1": {"standardize": ..., ...}},  # with val
         "label_free_on_val": {"accuracy", ..., "normalization"},  # with val
         "prototype": {"1": {"num_episodes": 5, "accuracy_mean", "accuracy_std", "accuracy_per_episode": [...],
                             "macro_f1_mean", ..., "balanced_accuracy_mean", ...}, ..., "all": {...}},
         "knn": {"1": {..., "k": 1}, ...},
         "linear_probe": {"accuracy", "macro_f1", "balanced_accuracy", "val_accuracy", "val_macro_f1",
                          "val_balanced_accuracy", "C", "converged", "n_iter"}}
        ```
    """
    train_features, pair = _single_feature(train_features, "train_features")
    test_features, _ = _single_feature(test_features, "test_features")
    if (val_features is None) != (val_labels is None):
        raise ValueError("expected val_features and val_labels together, got only one of them")
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, (int, np.integer)) or num_episodes < 1:
        raise ValueError(f"expected num_episodes as an integer >= 1, got {num_episodes!r}")
    names = [_shots_name(n) for n in shots]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"expected a non-empty list of distinct shots, got {list(shots)}")
    y_train, y_test = as_labels(train_labels, "train_labels"), as_labels(test_labels, "test_labels")
    num_classes = resolve_num_classes(num_classes, class_names, y_train, y_test)
    positive_label = resolve_positive_label(positive_label, class_names, num_classes)
    check_label_range(y_test, "test_labels", num_classes)
    x_train, y_train, x_test, _ = _check_pair(train_features, y_train, test_features, num_classes, len(y_test))
    _check_shots_fit(shots, names, y_train, num_classes, class_names)
    if linear_probe and val_features is None:
        _check_probe_without_val(probe_kwargs or {})

    num_steps = 1 + sum(1 if name == "all" else num_episodes for name in names) + bool(linear_probe)
    bar = tqdm(**{"total": num_steps, "desc": "Evaluation protocols", "unit": "step", **(progress_bar or {})})
    bar.set_postfix(protocol="k-means")
    val = None if val_features is None else _checked_val(val_features, val_labels, x_train.shape[1], num_classes)
    label_free = _label_free(x_train, x_test, y_test, num_classes, seed, kmeans_normalizations, val, positive_label)
    bar.update(1)
    result = {
        "feature": list(pair) if pair is not None else None,
        "num_classes": num_classes, "feature_dim": x_train.shape[1], "num_train": len(y_train), "num_test": len(y_test),
        "settings": {
            "shots": names, "num_episodes": num_episodes, "seed": seed, "knn_k": knn_k, "standardize": standardize,
            "kmeans_normalizations": list(kmeans_normalizations), "positive_label": positive_label,
        },
        **label_free,
        "prototype": {},
        "knn": {},
    }  # fmt: skip
    # the whole train split's statistics, its features only: a few shots per class are too few to estimate them
    x_shots, x_queries = _standardized(x_train, x_train, x_test) if standardize else (x_train, x_test)
    for n, name in zip(shots, names):
        episodes = {"prototype": [], "knn": []}
        k = knn_k if name == "all" else min(knn_k, int(n))
        bar.set_postfix(protocol=f"few-shot ({name})")
        for episode in range(1 if name == "all" else num_episodes):
            shots_of_each = None if name == "all" else int(n)
            index = few_shot_indices(y_train, shots_of_each, derived_seed(seed, episode), num_classes)
            x, y = x_shots[index], y_train[index]
            predictions = prototype_classify(x, y, x_queries, num_classes)[0]
            episodes["prototype"].append(_scores(y_test, predictions, num_classes, positive_label))
            predictions = knn_classify(x, y, x_queries, k, num_classes)[0]
            episodes["knn"].append(_scores(y_test, predictions, num_classes, positive_label))
            bar.update(1)
        result["prototype"][name] = _summarise(episodes["prototype"])
        result["knn"][name] = {**_summarise(episodes["knn"]), "k": min(k, len(y_train))}
    if linear_probe:
        bar.set_postfix(protocol="linear probe")
        probe_kwargs = {"progress_bar": {**(progress_bar or {}), "leave": False}, **(probe_kwargs or {})}
        result["linear_probe"] = _linear_probe(
            x_train, y_train, x_test, y_test, val, num_classes, probe_kwargs, positive_label
        )
        bar.update(1)
    bar.close()
    return result


def _label_free(
    x_train, x_test, y_test, num_classes: int, seed: int, normalizations: Sequence[str], val=None,
    positive_label: Optional[int] = None,
) -> dict:  # fmt: skip
    """`label_free` (the space chosen without labels on the train features), `label_free_by_normalization` and,
    given `val = (features, labels)`, `label_chosen` (the space whose val k-means scores the best macro-F1) and
    `label_free_on_val` (the label-free k-means on val); two classes scored for `positive_label` too."""
    if isinstance(normalizations, str):
        raise ValueError(f"kmeans_normalizations: expected a sequence of names, e.g. ('standardize',), got {normalizations!r}")
    key = ("features", 0)
    chosen = label_free_kmeans(
        {key: x_train}, {key: x_test}, y_test, num_classes, seed=seed, normalizations=normalizations,
        positive_label=positive_label,
    )  # fmt: skip
    names = (*SCORES, *(BINARY_SCORES if num_classes == 2 else ()), "nmi", "ari", "purity")
    stability = {name: scores[chosen["feature"]] for name, scores in chosen["selection"]["scores"].items()}
    by_normalization = {}
    for name in normalizations:
        metrics = chosen if name == chosen["normalization"] else kmeans_evaluate(
            x_test, y_test, num_classes, seed=seed, normalization=name, positive_label=positive_label
        )
        by_normalization[name] = {k: metrics[k] for k in names}
    result = {
        "label_free": {**by_normalization[chosen["normalization"]], "normalization": chosen["normalization"],
                       "stability": stability},
        "label_free_by_normalization": by_normalization,
    }  # fmt: skip
    if val is not None:
        x_val, y_val = val
        on_val = {
            name: kmeans_evaluate(
                x_val, y_val, num_classes, seed=seed, normalization=name, positive_label=positive_label
            )
            for name in normalizations
        }
        val_macro_f1 = {name: metrics["macro_f1"] for name, metrics in on_val.items()}
        best = max(normalizations, key=val_macro_f1.get)  # the first of equals, in the order given
        result["label_chosen"] = {**by_normalization[best], "normalization": best, "val_macro_f1": val_macro_f1}
        result["label_free_on_val"] = {
            **{k: on_val[chosen["normalization"]][k] for k in names}, "normalization": chosen["normalization"]
        }
    return result


def _checked_val(val_features, val_labels, num_columns: int, num_classes: int):
    """Validated val features (one per label, as many columns as the train features) and labels."""
    y = as_labels(val_labels, "val_labels")
    check_label_range(y, "val_labels", num_classes)
    x = as_feature_matrix(_single_feature(val_features, "val_features")[0], "val_features", len(y))
    if x.shape[1] != num_columns:
        raise ValueError(f"val_features have {x.shape[1]} columns, train_features have {num_columns}")
    return x, y


def _check_probe_without_val(probe_kwargs: dict) -> None:
    """Without val, `_linear_probe` hands `fit_probe_grid` the train split as val: it would choose among several C, or
    stop early, on the data it fits."""
    if "C" in probe_kwargs and len(as_inverse_regularisations(probe_kwargs["C"], "probe_kwargs['C']")) > 1:
        raise ValueError(
            f"probe_kwargs['C']: expected a single C without val_features, got {probe_kwargs['C']!r}: several would be "
            "chosen on the train split; pass val_features and val_labels to choose C on val, or a single C"
        )
    early_stopping = probe_kwargs.get("early_stopping")
    if early_stopping:
        raise ValueError(
            f"probe_kwargs['early_stopping']: expected False without val_features, got {early_stopping!r}: it would "
            "stop on the train loss; pass val_features and val_labels to stop on the val loss, or leave it off"
        )


def _linear_probe(x_train, y_train, x_test, y_test, val, num_classes, probe_kwargs, positive_label=None) -> dict:
    """`fit_probe_grid` on one feature; val (`(features, labels)`, or `None`: the train split fills the argument, with
    one C and no early stopping, see `_check_probe_without_val`) selects the C, stops early and is scored; two classes
    for `positive_label` too, from the kept head's predictions."""
    key = ("features", 0)
    x_val, y_val = (x_train, y_train) if val is None else val
    fit = fit_probe_grid(
        {key: x_train}, y_train, {key: x_val}, y_val, {key: x_test}, y_test, num_classes=num_classes, pool=None,
        **(probe_kwargs or {}),
    )  # fmt: skip
    scored = {"test": (x_test, y_test), **({} if val is None else {"val": val})}
    metrics = {split: dict(fit.metrics[key][split]) for split in scored}
    if num_classes == 2:
        with torch.no_grad():
            for split, (x, y) in scored.items():
                metrics[split].update(binary_scores(y, fit.heads[key](x).argmax(1).numpy(), positive_label))
    out = dict(metrics["test"])
    if val is not None:
        out.update({f"val_{name}": value for name, value in metrics["val"].items()})
    return {**out, "C": fit.C[key], "converged": bool(fit.converged[key]), "n_iter": int(fit.n_iter[key])}

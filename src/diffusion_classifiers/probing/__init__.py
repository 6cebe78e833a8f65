"""Evaluation of image features.

- [`fit_probe_grid`] (`probe_grid.py`): the batched L-BFGS probe solver over (block, timestep) pairs.
- [`evaluate_protocols`] and its parts (`protocols.py`): k-means + Hungarian matching, few-shot prototypes and
  k-NN, and the linear probe, the one protocol every method is scored with.
"""

from .probe_grid import FeatureKey, ProbeGridResult, fit_probe_grid
from .protocols import (
    NORMALIZATIONS,
    KMeansGrouping,
    Shots,
    clustering_stability,
    evaluate_protocols,
    few_shot_indices,
    fit_normalizer,
    kmeans_clusters,
    kmeans_evaluate,
    knn_classify,
    label_free_kmeans,
    normalize_features,
    prototype_classify,
    select_clustering_without_labels,
)

__all__ = [
    "FeatureKey",
    "KMeansGrouping",
    "NORMALIZATIONS",
    "ProbeGridResult",
    "Shots",
    "clustering_stability",
    "evaluate_protocols",
    "few_shot_indices",
    "fit_normalizer",
    "fit_probe_grid",
    "kmeans_clusters",
    "kmeans_evaluate",
    "knn_classify",
    "label_free_kmeans",
    "normalize_features",
    "prototype_classify",
    "select_clustering_without_labels",
]

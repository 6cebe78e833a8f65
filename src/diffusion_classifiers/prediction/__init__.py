"""Predict with a saved classifier pipeline over many files: `predictions.csv` / `.parquet`, `<output>.errors.csv`.

- `inputs.py`: what to classify. [`list_inputs`] turns an image folder (recursive; DICOM included), a CSV of paths or a
  saved `datasets` folder into [`PredictionInput`]s, each read only when its batch is classified; [`parse_windows`]
  reads the `--window` flag.
- `outputs.py`: where the results go. The output table, its `.json` sidecar (what a rerun must match), the committed
  batch parts and the errors file, each written atomically, and their merge in input order.
- `runner.py`: [`predict_files`] classifies the inputs batch by batch. Each batch is committed as its own small part
  file (written to a temporary name, then renamed), so a killed run loses at most the batch it was classifying; a rerun
  reads what the output, the parts and the errors file already hold and classifies only the rest. With accelerate
  (`accelerate launch --num_processes N`) every process classifies its share of what is left and writes its own
  parts; the main process merges them into one output in input order. A file that cannot be read becomes a row of
  the errors file (path, reason; default `<output>.errors.csv`) and the run goes on; a failing model call stops the
  run (that is not the data's fault).
  [`add_predict_args`] and [`run_predict`] are the `diffusion-classifiers predict` command (a local folder or a Hub
  id: its saved preprocessing, DICOM windows included, applies either way).
- `clustering.py`: [`cluster_files`] groups the inputs without labels by a trained U-Net's or RC-DiT's features (the
  feature, its normalisation and K chosen without labels on a sample, k-means fitted on a sample then grouping every
  file): `clusters.csv`, `metrics.json`, the fitted grouping and each cluster's nearest images as PNGs;
  [`assign_files`] puts other inputs into an earlier run's clusters; [`add_cluster_args`] and [`run_cluster`] are the
  `diffusion-classifiers cluster` command.
- `aggregate.py`: predict's rows gathered per scan, series or patient (`diffusion-classifiers aggregate`).
- `comparison.py`: [`compare_predictions`] compares two models image by image on the same labelled images (two
  evaluate outputs, or predict outputs with true labels), with paired tests (`diffusion-classifiers compare`).

Only the standard library is imported at module level, so building the `predict` parser (`add_predict_args`) stays
fast; the heavy imports happen when a prediction runs.
"""

from .clustering import FeatureSource, add_cluster_args, assign_files, cluster_files, feature_source, run_cluster
from .inputs import WINDOW_NAMES, PredictionInput, check_labels, list_inputs, parse_windows
from .outputs import OUTPUT_SUFFIXES, check_output_args
from .runner import (
    PredictionSummary,
    add_predict_args,
    output_columns,
    predict_files,
    read_saved_preprocessing,
    run_predict,
)

__all__ = [
    "OUTPUT_SUFFIXES",
    "FeatureSource",
    "WINDOW_NAMES",
    "PredictionInput",
    "PredictionSummary",
    "add_cluster_args",
    "assign_files",
    "add_predict_args",
    "check_labels",
    "check_output_args",
    "cluster_files",
    "feature_source",
    "list_inputs",
    "output_columns",
    "parse_windows",
    "predict_files",
    "read_saved_preprocessing",
    "run_cluster",
    "run_predict",
]

#!/usr/bin/env python
"""Evaluate a saved classifier (diffusers pipeline or transformers model folder) on a labeled split.

    python examples/evaluate.py --model_dir outputs/demo/pipeline --dataset digits --split test --output_dir outputs/eval
    python examples/evaluate.py --model_dir outputs/pneumonia-hf --dataset ../shared/data/medmnist_pneumonia/pneumoniamnist.npz

`--dataset` takes what `diffusion_classifiers.data.load_image_classification_data` reads (digits, a MedMNIST .npz,
IDX files, an image folder), converted to a `datasets.Dataset`, or a folder saved with `DatasetDict.save_to_disk`.
Writes metrics.json, confusion_matrix.png and reliability.png.
"""

import argparse
import json
import os

from diffusion_classifiers.data import load_image_classification_data, to_datasets
from diffusion_classifiers.evaluation import check_evaluation_args, evaluate_classifier, load_classifier


def load_split(dataset: str, split: str, seed: int):
    if os.path.isfile(os.path.join(dataset, "dataset_dict.json")):
        from datasets import load_from_disk

        return load_from_disk(dataset)[split]
    splits = load_image_classification_data(dataset, seed=seed)
    return to_datasets({split: splits["val" if split == "validation" else split]})["validation" if split == "val" else split]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--split", default="test", choices=["train", "val", "validation", "test"])
    parser.add_argument("--output_dir", default="outputs/evaluation")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split carved from train when the data has none")
    args = parser.parse_args(argv)
    check_evaluation_args(args.output_dir, args.batch_size)  # before the model and the data are loaded
    return args


def main(argv=None):
    args = parse_args(argv)
    classifier = load_classifier(args.model_dir)
    metrics = evaluate_classifier(classifier, load_split(args.dataset, args.split, args.seed), args.output_dir, batch_size=args.batch_size)
    print(json.dumps({k: metrics[k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "auc")} | {"ece": metrics["calibration"]["ece"]}))


if __name__ == "__main__":
    main()

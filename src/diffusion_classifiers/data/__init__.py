"""Files and datasets in, tensors out.

- [`preprocess_images`] (`preprocessing.py`): the one preprocessing contract, shared by training and inference.
- [`load_image_classification_data`] and the readers (`readers.py`): digits, `.npz`, IDX, image folders, `datasets`,
  into [`LabeledImages`] (images, integer labels and class names, validated together).
- [`stratified_split`], [`stratified_subset_indices`], [`long_tailed_indices`], [`few_label_indices`]
  (`splits.py`): seeded subsets.
"""

from .preprocessing import preprocess_images
from .readers import (
    DEFAULT_DIGITS_SIZE,
    DEFAULT_FOLDER_SIZE,
    FASHION_MNIST_CLASSES,
    IMAGE_EXTENSIONS,
    LabeledImages,
    PNEUMONIAMNIST_CLASSES,
    SPLITS,
    add_data_args,
    load_data_from_args,
    load_image_classification_data,
    read_classification_split,
    read_idx,
    to_datasets,
)
from .splits import few_label_indices, long_tailed_indices, stratified_split, stratified_subset_indices

__all__ = [
    "DEFAULT_DIGITS_SIZE",
    "DEFAULT_FOLDER_SIZE",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "PNEUMONIAMNIST_CLASSES",
    "SPLITS",
    "LabeledImages",
    "add_data_args",
    "few_label_indices",
    "load_data_from_args",
    "load_image_classification_data",
    "long_tailed_indices",
    "preprocess_images",
    "read_classification_split",
    "read_idx",
    "stratified_split",
    "stratified_subset_indices",
    "to_datasets",
]

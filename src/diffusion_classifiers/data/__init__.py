"""Files and datasets in, tensors out.

- [`ImagePreprocessing`], [`preprocess_images`] (`preprocessing.py`): the one preprocessing contract, saved with every
  model and shared by training and inference.
- [`load_image_classification_data`] and the readers (`readers.py`): digits, `.npz`, IDX, image folders, CSV files of
  paths, `datasets`, into [`LabeledImages`] (images, integer labels and class names, validated together).
- [`read_dicom`], [`Window`], [`window_channels`], [`read_16bit_image`], [`MedicalPreprocessing`] (`dicom.py`):
  DICOM to Hounsfield units to windowed channels, 16-bit PNG / TIFF at their bit depth (pydicom is optional).
- [`StreamingImages`], [`streaming_image_classification_data`] (`streaming.py`): the same data larger than memory,
  files listed in a `datasets.Dataset` and decoded on the fly (in `DataLoader` workers) through the same preprocessing.
- [`stratified_split`], [`stratified_group_split`], [`stratified_subset_indices`], [`long_tailed_indices`],
  [`few_label_indices`] (`splits.py`): seeded subsets.
"""

from .dicom import (
    DICOM_EXTENSIONS,
    WINDOW_PRESETS,
    DicomImage,
    MedicalPreprocessing,
    Window,
    read_16bit_image,
    read_dicom,
    read_dicom_folder,
    window_channels,
)
from .preprocessing import ImagePreprocessing, preprocess_images
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
from .splits import (
    few_label_indices,
    long_tailed_indices,
    stratified_group_split,
    stratified_split,
    stratified_subset_indices,
)
from .streaming import StreamingImages, streaming_data_from_args, streaming_image_classification_data

__all__ = [
    "DEFAULT_DIGITS_SIZE",
    "DEFAULT_FOLDER_SIZE",
    "DICOM_EXTENSIONS",
    "DicomImage",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImagePreprocessing",
    "PNEUMONIAMNIST_CLASSES",
    "SPLITS",
    "StreamingImages",
    "LabeledImages",
    "MedicalPreprocessing",
    "WINDOW_PRESETS",
    "Window",
    "add_data_args",
    "few_label_indices",
    "load_data_from_args",
    "load_image_classification_data",
    "long_tailed_indices",
    "preprocess_images",
    "read_16bit_image",
    "read_classification_split",
    "read_dicom",
    "read_dicom_folder",
    "read_idx",
    "stratified_group_split",
    "stratified_split",
    "stratified_subset_indices",
    "streaming_data_from_args",
    "streaming_image_classification_data",
    "to_datasets",
    "window_channels",
]

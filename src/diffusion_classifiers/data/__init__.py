"""Files and datasets in, tensors out.

- [`ImagePreprocessing`], [`preprocess_images`] (`preprocessing.py`): the one preprocessing contract, saved with every
  model and shared by training and inference.
- [`load_image_classification_data`] (`readers.py`) and the readers it calls (`array_files.py`: digits, `.npz`, IDX;
  `image_listing.py` and `file_decoding.py`: image folders and CSV files of paths; `hf_datasets.py`: `datasets`), into
  [`LabeledImages`] (`labeled_images.py`: images, integer labels and class names, validated together).
- [`read_dicom`], [`window_channels`], [`MedicalPreprocessing`] (`dicom.py`): DICOM to Hounsfield units to windowed
  channels, through [`Window`]s and a file's [`VoiTable`] (`windows.py`), and 16-bit PNG / TIFF at their bit depth
  ([`read_16bit_image`], `sixteen_bit.py`) (pydicom is optional);
  [`is_dicom_file`] tells DICOM files by extension (`.dcm`, `.dicom`, `.dic`, `.ima`), or by their 'DICM' header;
  [`check_decoders`] refuses, before any is read, DICOM files whose compression needs a plugin not installed.
- [`StreamingImages`], [`streaming_image_classification_data`] (`streaming.py`): the same data larger than memory,
  files listed in a `datasets.Dataset` and decoded on the fly (in `DataLoader` workers) through the same preprocessing.
- [`stratified_split`], [`stratified_group_split`], [`stratified_subset_indices`], [`long_tailed_indices`],
  [`few_label_indices`] (`splits.py`): seeded subsets.
- [`save_split_record`], [`read_split_record`] (`split_record.py`): how a model's data was carved, saved beside the
  model, so `probe` and `evaluate` carve the same splits.
"""

from ..lazy_exports import lazy_exports

# public name -> the module that defines it, imported on first use
_EXPORTS = {
    "DEFAULT_DIGITS_SIZE": "array_files",
    "DEFAULT_FOLDER_SIZE": "readers",
    "DICOM_EXTENSIONS": "dicom",
    "DicomImage": "dicom",
    "FASHION_MNIST_CLASSES": "array_files",
    "IMAGE_EXTENSIONS": "image_files",
    "ImagePreprocessing": "preprocessing",
    "PNEUMONIAMNIST_CLASSES": "array_files",
    "ONE_SET": "labeled_images",
    "SPLITS": "labeled_images",
    "SPLIT_RECORD_NAME": "split_record",
    "StreamingImages": "streaming",
    "LabeledImages": "labeled_images",
    "MedicalPreprocessing": "dicom",
    "VoiTable": "windows",
    "WINDOW_PRESETS": "windows",
    "Window": "windows",
    "add_data_args": "arguments",
    "add_split_args": "arguments",
    "canonical_split_name": "hf_datasets",
    "check_decoders": "dicom",
    "describe_splits": "readers",
    "few_label_indices": "splits",
    "is_dicom_file": "dicom",
    "list_image_folder": "image_listing",
    "list_unlabeled_folder": "image_listing",
    "load_data_from_args": "readers",
    "reading_from_args": "readers",
    "load_image_classification_data": "readers",
    "long_tailed_indices": "splits",
    "preprocess_images": "preprocessing",
    "read_16bit_image": "sixteen_bit",
    "read_classification_split": "hf_datasets",
    "read_split_record": "split_record",
    "read_dicom": "dicom",
    "read_dicom_folder": "dicom",
    "read_idx": "array_files",
    "resolve_split_args": "split_record",
    "save_split_record": "split_record",
    "save_training_split_record": "streaming",
    "scale_16bit_image": "sixteen_bit",
    "stratified_group_split": "splits",
    "stratified_split": "splits",
    "stratified_subset_indices": "splits",
    "stratified_train_val_test_split": "splits",
    "streaming_data_from_args": "streaming",
    "streaming_image_classification_data": "streaming",
    "to_datasets": "readers",
    "training_data_from_args": "streaming",
    "window_channels": "dicom",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

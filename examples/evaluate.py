#!/usr/bin/env python
"""Evaluate a saved classifier (diffusers pipeline or transformers model folder) on a labeled split.

    python examples/evaluate.py --model_dir outputs/demo/pipeline --dataset digits --split test --output_dir outputs/eval
    python examples/evaluate.py --model_dir outputs/pneumonia/pipeline \\
        --dataset ../shared/data/medmnist_pneumonia/pneumoniamnist.npz --positive_class pneumonia

The same as `diffusion-classifiers evaluate ...` (`diffusion_classifiers.evaluate_classifier` underneath).
`--dataset` takes what `diffusion_classifiers.data.load_image_classification_data` reads (digits, a MedMNIST .npz,
IDX files, an image folder), read with the model's saved preprocessing (its size, channels and DICOM windows), so the
scores on the demo's split are the demo report's own; or a folder saved with `DatasetDict.save_to_disk`, whose images
the model's preprocessing reads. Writes metrics.json, report.md,
confusion_matrix.png, reliability.png and, for binary tasks, roc_pr.png; prints the headline metrics as JSON.
"""

import sys

from diffusion_classifiers.cli import main

if __name__ == "__main__":
    sys.argv.insert(1, "evaluate")
    main()  # as from a shell: an input refused by name is one line, without Python's traceback

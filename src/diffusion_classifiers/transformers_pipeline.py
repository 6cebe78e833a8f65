"""transformers' image-classification pipeline, reading files as this package's models were trained on them.

`pipeline("image-classification", ...)` opens every path and PIL image with `load_image`, which converts it to 8-bit
RGB before the model's image processor sees it: a 16-bit PNG / TIFF is clipped (every value above 255 white) and a
DICOM file is not an image to PIL. [`DiffusionClassifierImageClassificationPipeline`] hands local files and 16-bit /
float PIL images to the image processor as they are: files are read through the model's saved preprocessing (DICOM
windows, bit depth), exactly as `pipe(paths)` and `diffusion-classifiers predict` do; a 16-bit PIL image keeps its
16 bits, read as `pipe(...)` reads it (as its file, or from [0, 65535] by a model saved before 2026-12-06); a PIL
image with transparency keeps it, for the contract's `transparency_fill` (`load_image` drops alpha).
"""

import os

from PIL import Image
from transformers import ImageClassificationPipeline

from .data.preprocessing import _PIL_ALPHA_MODES
from .data.sixteen_bit import _PIL_16BIT_MODES

__all__ = ["DiffusionClassifierImageClassificationPipeline"]

# PIL modes that `load_image`'s conversion to 8-bit RGB would clip or rescale
_WIDE_MODES = _PIL_16BIT_MODES | {"F"}


class DiffusionClassifierImageClassificationPipeline(ImageClassificationPipeline):
    """
    `transformers.ImageClassificationPipeline` whose inputs keep their bit depth: pass it as `pipeline_class`.

    ```py
    >>> from transformers import pipeline
    >>> from diffusion_classifiers import DiffusionClassifierImageClassificationPipeline

    >>> classify = pipeline("image-classification", model="path/to/export",
    ...                     pipeline_class=DiffusionClassifierImageClassificationPipeline)
    >>> classify(["scan/CT000010.dcm", "xray_16bit.png"])
    ```

    Local file paths (DICOM included), PIL images of modes I, I;16 and F and PIL images with transparency go to the
    image processor unconverted; URLs, base64 strings and other 8-bit PIL images are read by `load_image` as usual.
    A DICOM file of several frames is refused (one image per input): `diffusion-classifiers predict` writes one row
    per frame.
    """

    def preprocess(self, image, timeout=None):
        if not _keeps_its_depth(image):
            return super().preprocess(image, timeout=timeout)
        model_inputs = self.image_processor(images=image, return_tensors="pt")
        if len(model_inputs["pixel_values"]) != 1:
            raise ValueError(
                f"{image}: {len(model_inputs['pixel_values'])} frames; expected one image per input (a multi-frame "
                "DICOM file: `diffusion-classifiers predict` classifies each frame)"
            )
        return model_inputs.to(self.dtype)


def _keeps_its_depth(image) -> bool:
    """Whether `image` goes to the image processor as it is: what `load_image`'s 8-bit RGB would change (16-bit and
    float modes, transparency, which the contract's `transparency_fill` may composite: second read), and files."""
    if isinstance(image, Image.Image):
        return image.mode in _WIDE_MODES or image.mode in _PIL_ALPHA_MODES or "transparency" in image.info
    return isinstance(image, (str, os.PathLike)) and os.path.isfile(image)

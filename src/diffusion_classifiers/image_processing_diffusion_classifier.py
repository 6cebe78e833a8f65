"""transformers image processor: the library's one preprocessing path behind transformers' PIL backend."""

import json
import os
from typing import Any, Dict, Optional

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME

from .atomic_files import write_json_atomically
from .data.preprocessing import ImagePreprocessing, preprocess_images
from .remote_code import entry_module_name, transformers_copies_no_code, write_remote_code

__all__ = ["DiffusionClassifierImageProcessor"]


class DiffusionClassifierImageProcessor(PilBackend):
    r"""
    Apply the saved preprocessing contract ([`diffusion_classifiers.data.ImagePreprocessing`]: float range, size,
    resampling, channels, DICOM windows) with [`diffusion_classifiers.data.preprocess_images`], exactly as the
    diffusers pipeline it was exported from does.

    Args:
        image_size (`int`): the backbone's `sample_size`.
        num_channels (`int`): the backbone's `in_channels` (1 or 3).
        preprocessing (`dict`, *optional*): the pipeline's `preprocessing` contract (`ImagePreprocessing.to_dict()`),
            saved in `preprocessor_config.json`; its size and channels must be `image_size` and `num_channels`.
            Default: those two with float inputs read by the rule of processors saved without a contract
            (`input_range="auto"`).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self, image_size: int = 32, num_channels: int = 1, preprocessing: Optional[Dict[str, Any]] = None, **kwargs
    ):
        super().__init__(**kwargs)
        if preprocessing is None:
            contract = ImagePreprocessing(image_size, num_channels, input_range="auto")
        else:
            contract = ImagePreprocessing.from_dict(preprocessing)
        if (contract.image_size, contract.num_channels) != (ImagePreprocessing(image_size).image_size, num_channels):
            raise ValueError(
                f"preprocessing: image_size {contract.image_size!r} and num_channels {contract.num_channels!r} differ "
                f"from the processor's image_size {image_size!r} and num_channels {num_channels!r}; expected the same"
            )
        self.image_size = image_size
        self.num_channels = num_channels
        self.preprocessing = contract.to_dict()

    @classmethod
    def from_dict(cls, image_processor_dict: Dict[str, Any], **kwargs):
        """transformers' `from_dict` (what `from_pretrained` builds the processor with), refusing the keyword arguments
        it would set over the saved contract (QA: `from_pretrained(..., size=...)` or `image_size=64` were set on the
        processor, which went on reading at the contract's size; saved, its folder no longer loaded)."""
        saved = cls(**image_processor_dict)
        # what transformers would apply: its image keyword arguments and the processor's attributes (others, e.g. a
        # pipeline's `dtype`, it returns unused)
        applied = sorted(name for name in kwargs if name in cls.valid_kwargs.__annotations__ or hasattr(saved, name))
        if applied:
            raise ValueError(
                f"{cls.__name__}: keyword arguments {applied} not taken; the saved preprocessing contract fixes the "
                "size, channels and value range the model was trained with, so expected none"
            )
        return super().from_dict(image_processor_dict, **kwargs)

    def to_dict(self) -> dict:
        # No `image_processor_type`: `AutoImageProcessor` then finds this class through the model's config.json
        # (its registered config class, or `auto_map` with `trust_remote_code=True`). With the type named here
        # transformers would also guess a "DiffusionClassifierVideoProcessor" and ask whether to run remote code
        # for it, even with this package imported.
        output = super().to_dict()
        output.pop("image_processor_type", None)
        return output

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, plus the code that loading it with `trust_remote_code=True` needs without
        this package (`remote_code.write_remote_code`): `AutoImageProcessor` finds the class through the model's
        `config.json` (see `DiffusionClassifierPreTrainedModel.save_pretrained`, which saves the model first) or, in
        a folder without one (the processor saved alone), through its `image_processor_type` (this package imported)
        or `auto_map` (`trust_remote_code=True`) written then (QA: such a folder did not load). Beside a model's
        `config.json` it writes neither: transformers would then read the processor's own and ask to run remote code
        even with this package imported."""
        if push_to_hub:  # transformers would upload only the files its own save writes, not the code
            raise ValueError("push_to_hub=True: call `processor.push_to_hub(repo_id)`, which uploads the code too")
        with transformers_copies_no_code([type(self)]):
            saved = super().save_pretrained(save_directory, **kwargs)
        write_remote_code(save_directory, [type(self)], allow_bundled=True)
        if os.path.exists(os.path.join(save_directory, CONFIG_NAME)):
            return saved
        config_file = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        with open(config_file, encoding="utf-8") as saved_config:
            config = json.load(saved_config)
        named = {  # the class by name (with this package imported) and by its saved code (trust_remote_code=True)
            "image_processor_type": type(self).__name__,
            "auto_map": {"AutoImageProcessor": f"{entry_module_name(type(self))}.{type(self).__name__}"},
        }
        write_json_atomically(config_file, {**config, **named}, indent=2, sort_keys=True)
        return saved

    def preprocess(
        self, images, return_tensors: Optional[str] = "pt", input_data_format: Optional[str] = None, **kwargs
    ) -> BatchFeature:
        """`pixel_values` `[N, C, H, W]` of `images` (file paths, PIL images, arrays or tensors, one or a list) by the
        saved `preprocessing` contract. `input_data_format` (`"channels_first"`, `"channels_last"` or a
        `ChannelDimension`) is the layout of 3-D and 4-D arrays and tensors; `None` infers it when unambiguous and
        refuses the rest (see `preprocess_images`). Other keyword arguments (`size`, `do_resize`, ...) are refused:
        the contract fixes the size, channels and value range the model was trained with."""
        if kwargs:
            raise ValueError(
                f"{type(self).__name__}: unsupported keyword arguments {sorted(kwargs)}; the saved preprocessing "
                f"contract fixes size ({self.image_size}), channels ({self.num_channels}) and value range, so "
                "expected only images, return_tensors and input_data_format"
            )
        pixel_values = preprocess_images(images, input_data_format=input_data_format, preprocessing=self.preprocessing)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

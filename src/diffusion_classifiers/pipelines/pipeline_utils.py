"""What every classifier pipeline shares: the output type, class names, and `from_pretrained` dispatch."""

import json
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Dict, Iterator, List, Optional, Set, Tuple, Type, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.distributed_utils import is_torch_dist_rank_zero
from tqdm.auto import tqdm

from diffusion_classifiers.data import ImagePreprocessing, preprocess_images
from diffusion_classifiers.data.split_record import (
    image_fingerprints,
    read_split_record,
    resolve_split_args,
    write_split_record,
)
from diffusion_classifiers.hub import commit_operations, download
from diffusion_classifiers.models import LinearProbeHead, PrototypeHead, RepresentationConditionedDiTModel
from diffusion_classifiers.remote_code import (
    entry_module_name,
    make_weights_readable_as_umask_allows,
    package_module,
    write_remote_code,
)
from diffusion_classifiers.validation import check_no_pickled_weights

__all__ = [
    "LEGACY_PREPROCESSING",
    "ClassifierPipelineOutput",
    "DiffusionClassifierPipeline",
    "ProgressBarsMixin",
    "SavedPreprocessingMixin",
    "SavedWithCodeMixin",
    "diffusers_model_class",
    "installed_index",
    "keep_legacy_preprocessing",
    "local_snapshot",
    "lone_model_hint",
    "pipeline_of_component",
    "read_model_index",
]

# The contract of a pipeline saved before the preprocessing was saved with it: the float range guessed (once per call).
LEGACY_PREPROCESSING = {"input_range": "auto"}
# The pipelines (by id) reading their own preprocessing's output in this thread (`reading_preprocessed_images`)
_READING_PREPROCESSED: ContextVar[frozenset] = ContextVar("reading_preprocessed_images", default=frozenset())


@dataclass
class ClassifierPipelineOutput(BaseOutput):
    """`labels`: class names; `label_ids`: their indices [N]; `scores`: probability of the predicted class [N];
    `probs`: class probabilities [N, K]."""

    labels: List[str]
    label_ids: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor


def local_snapshot(pretrained_model_name_or_path, kwargs: dict) -> str:
    """A local folder for `from_pretrained`: the path itself, or the downloaded snapshot of a Hub id. Pops the Hub
    arguments (`cache_dir`, `revision`, `token`, `local_files_only`) from `kwargs`; `trust_remote_code` (default
    False) is read and left for diffusers: only with it does the snapshot include the repo's `.py` files."""
    # diffusers 0.42 refuses Hub repos whose custom components have no .py file in the repo, so a Hub id is
    # downloaded first (huggingface_hub cache, revision, token) and loaded from the local snapshot. Only configs,
    # safetensors and cards are fetched (`hub.download_patterns`), never pickles.
    hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    trust_remote_code = kwargs.get("trust_remote_code", False)
    return download(pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs)


def _is_training_folder(path: str) -> bool:
    """Whether `path` holds a training run's own files (its summary or checkpoints)."""
    names = os.listdir(path) if os.path.isdir(path) else []
    return "training_summary.json" in names or any(re.fullmatch(r"checkpoint-\d+", name) for name in names)


def _saved_beside(path: str) -> Optional[str]:
    """The pipeline folder saved beside a training run's folder, as `demo` and `probe` save theirs
    (`<output>/unet_training/` and `<output>/pipeline/`); None where there is none."""
    beside = os.path.join(os.path.dirname(os.path.normpath(path)), "pipeline")
    return beside if os.path.isfile(os.path.join(beside, "model_index.json")) else None


def read_model_index(path: str) -> dict:
    """The `model_index.json` of a saved pipeline folder; a clear error when it is missing (naming the pipeline folder
    when `path` is one of its components) or not JSON."""
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_file):
        parent = pipeline_of_component(path)
        if parent:
            hint = f" ({path} is a component of the pipeline {parent}: pass that folder)"
        elif os.path.isfile(os.path.join(path, "config.json")):  # QA: an export was said to be no pipeline, only
            hint = f" ({lone_model_hint(path)})"
        elif _is_training_folder(path) and _saved_beside(path):  # QA: the demo's training folder, said killed
            hint = f" ({path} holds the training run of the model saved in {_saved_beside(path)}: pass that folder)"
        elif _is_training_folder(path):  # QA: a trainer killed while saving its model was only said to lack one
            hint = (
                f" ({path} holds a training run without its model: it was stopped or killed before saving it; rerun "
                "its command with --resume_from_checkpoint latest, which saves it)"
            )
        else:
            hint = ""
        raise FileNotFoundError(f"{index_file} not found; expected a pipeline folder written by save_pretrained{hint}")
    try:
        with open(index_file) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{index_file} is not valid JSON: {error}") from error


def diffusers_model_class(path: Union[str, os.PathLike]) -> Optional[str]:
    """The diffusers model class a folder's `config.json` names (`_class_name`: a `unet.save_pretrained` folder); None
    for a transformers model's or an unreadable one."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config.get("_class_name") if isinstance(config, dict) else None


def lone_model_hint(path: Union[str, os.PathLike]) -> str:
    """What a folder holding one model's `config.json` and no `model_index.json` is, and where to turn (QA: a
    `unet.save_pretrained` folder was called a transformers model)."""
    name = diffusers_model_class(path)
    if name:
        return (
            f"{path} holds a diffusers {name} saved alone (config.json, no model_index.json): save it in a pipeline "
            f"with the scheduler it was trained with, e.g. UNetFeatureClassifierPipeline(unet={name}.from_pretrained("
            "folder), scheduler=DDPMScheduler(...)).save_pretrained(new_folder)"
        )
    return (
        f"{path} holds a transformers model, config.json: load it with transformers' AutoModelForImageClassification "
        "or pipeline('image-classification'); diffusion-classifiers evaluate takes either"
    )


# a weights file of one variant (`save_pretrained(variant="fp16")`), not sharded
_VARIANT_WEIGHTS = re.compile(r"^(?:diffusion_pytorch_model|model)\.(?P<variant>[^.]+)\.safetensors$")
_PLAIN_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def saved_variant(path: str, index: dict) -> Optional[str]:
    """The variant (`"fp16"`) every component's weights in `path` were saved under, when they were saved so alone:
    the folder then loads without naming it (QA: the CLI, which names none, failed on diffusers' "no file named
    diffusion_pytorch_model.safetensors"); None otherwise."""
    variants = set()
    for name, entry in index.items():
        folder = os.path.join(path, name)
        if name.startswith("_") or not isinstance(entry, list) or None in entry or not os.path.isdir(folder):
            continue
        files = os.listdir(folder)
        if any(file in _PLAIN_WEIGHTS for file in files):
            return None
        variants |= {match["variant"] for file in files if (match := _VARIANT_WEIGHTS.match(file))}
    return variants.pop() if len(variants) == 1 else None


def pipeline_of_component(path: Union[str, os.PathLike]) -> Optional[str]:
    """The pipeline folder that holds `path` when `path` is one of its diffusers components (`unet/`, `scheduler/`,
    ...: a `config.json` or `scheduler_config.json` with diffusers' `_class_name` or `_diffusers_version`, and a
    `model_index.json` in the folder above), else None: the folder to name to a user who passed the component."""
    folder = Path(os.path.normpath(path))
    parent = folder.parent if folder.parent != Path(".") else folder.resolve().parent
    if (folder / "model_index.json").is_file() or not (parent / "model_index.json").is_file():
        return None
    configs = [folder / name for name in ("config.json", "scheduler_config.json") if (folder / name).is_file()]
    if not configs:
        return None
    try:
        saved = json.loads(configs[0].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return str(parent) if isinstance(saved, dict) and {"_class_name", "_diffusers_version"} & set(saved) else None


# The package's classes that pipelines save as diffusers custom components (in `model_index.json`).
_COMPONENT_CLASSES = {cls.__name__: cls for cls in (LinearProbeHead, PrototypeHead, RepresentationConditionedDiTModel)}


def installed_index(index: dict) -> dict:
    """`index` (a `model_index.json`) with the custom-code entries `save_pretrained` writes read as this package's
    classes: `["pipeline_rc_dit", "RepresentationConditionedDiTPipeline"]` -> `"RepresentationConditionedDiTPipeline"`,
    `["linear_probe_head", "LinearProbeHead"]` -> `["diffusion_classifiers.models.linear_probe_head",
    "LinearProbeHead"]`. Entries of earlier versions (a plain `_class_name`, full module paths) stay as they are."""
    index = dict(index)
    if isinstance(index.get("_class_name"), list):
        index["_class_name"] = index["_class_name"][-1]
    for name, entry in index.items():
        if isinstance(entry, list) and len(entry) == 2 and entry[1] in _COMPONENT_CLASSES:
            cls = _COMPONENT_CLASSES[entry[1]]
            if entry[0] == entry_module_name(cls):
                index[name] = [cls.__module__, cls.__name__]
    return index


class SavedWithCodeMixin:
    """Saves a pipeline with its code, for diffusers' custom-pipeline loading, and reads such folders back with the
    installed classes.

    `save_pretrained` writes `model_index.json` in diffusers' custom-code form (`"_class_name": ["pipeline_rc_dit",
    "RepresentationConditionedDiTPipeline"]`, `"head": ["linear_probe_head", "LinearProbeHead"]`) with the code beside
    it (`remote_code.write_remote_code`), so `diffusers.DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)` loads it with or without this package installed. This class's own `from_pretrained` reads
    those entries as the installed classes (`installed_index`): no code from the folder runs, and with
    `safetensors_only` no pickle is read.
    """

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs):
        """diffusers' `save_pretrained`, in safetensors only: `safe_serialization=False` is refused before anything is
        written (QA: it wrote pickled `.bin` weights, which this class's `from_pretrained` then refused to read)."""
        if safe_serialization is not True:
            raise ValueError(
                f"safe_serialization: expected True, got {safe_serialization!r}; this pipeline is saved and loaded in "
                "safetensors only (pickled weights can run code when read, and from_pretrained refuses them)"
            )
        return super().save_pretrained(save_directory, safe_serialization=True, **kwargs)

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs):
        # diffusers' save_pretrained calls this after saving every component and before any upload.
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        index_file = os.path.join(save_directory, "model_index.json")
        index = read_model_index(save_directory)
        components = {  # "_head" and the like: components `from_pipe` left unused, recorded but not saved
            name: type(getattr(self, name))
            for name, entry in index.items()
            if not name.startswith("_") and isinstance(entry, list) and None not in entry
            and _is_package_class(type(getattr(self, name)))
        }
        index.update({name: [entry_module_name(cls), cls.__name__] for name, cls in components.items()})
        index["_class_name"] = [entry_module_name(type(self)), type(self).__name__]
        index.pop("_name_or_path", None)  # where it was loaded from: a local path, not for a published folder
        # a pipeline loaded from its saved code without this package saves a copy of that code
        write_remote_code(save_directory, [type(self)], components, allow_bundled=True)
        with open(index_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        folders = [name for name, entry in index.items() if isinstance(entry, list) and not name.startswith("_")]
        for name in folders:
            _drop_loaded_from(os.path.join(save_directory, name, "config.json"))
        make_weights_readable_as_umask_allows([os.path.join(save_directory, name) for name in folders])

    @classmethod
    def load_config(cls, *args, **kwargs):
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config.update(installed_index(config))
        return loaded

    @classmethod
    def safetensors_only(cls, path: str, index: dict, kwargs: dict) -> None:
        """Make `from_pretrained(path, **kwargs)` read safetensors only: `use_safetensors` other than True is refused,
        every component is checked first (`check_saved_components`), and `kwargs` get `use_safetensors=True`, so
        diffusers never falls back to a pickle; and the `variant` the weights were saved under alone, when `kwargs`
        name none ([`saved_variant`])."""
        if kwargs.pop("use_safetensors", True) is not True:
            raise ValueError(
                "use_safetensors: expected True; weights load from safetensors only (a pickle can run code)"
            )
        cls.check_saved_components(path, index, passed=set(kwargs))
        kwargs["use_safetensors"] = True
        if kwargs.get("variant") is None and (variant := saved_variant(path, index)) is not None:
            kwargs["variant"] = variant

    @classmethod
    def check_saved_components(cls, path: str, index: dict, passed: Set[str] = frozenset()) -> None:
        """Every component of this pipeline that `index` (its `model_index.json`) names has its folder in `path` with
        the files `save_pretrained` writes (`check_component_files`), and no folder holds pickled weights without
        safetensors; components `passed` to `from_pretrained` are not read."""
        components, _ = cls._get_signature_keys(cls)
        for name in sorted(set(components) - set(passed)):
            entry = index.get(name)
            if entry is None and name not in cls._optional_components:
                raise ValueError(f"{path}/model_index.json: no {name!r} component; {cls.__name__} needs one")
            if not isinstance(entry, list) or None in entry:  # an optional component saved as None
                continue
            folder = os.path.join(path, name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"{folder}: folder not found; model_index.json names component {name!r} ({entry[-1]}), so "
                    "the pipeline folder must hold it"
                )
            check_no_pickled_weights(
                folder,
                f"{name}/*.safetensors (save with save_pretrained and its default safe_serialization=True, which "
                "writes them)",
            )
            check_component_files(folder, name, entry, os.path.join(path, "model_index.json"))


def _is_package_class(cls: type) -> bool:
    """A class of this package, installed or loaded from the code saved with a model (`remote_code`)."""
    try:
        package_module(cls)
    except ValueError:
        return False
    return True


class SavedPreprocessingMixin:
    """The preprocessing contract a pipeline saves in `model_index.json` (its `preprocessing` config) and applies to
    every image input: the classifiers and the image-variation pipeline share it. A subclass's `__init__` takes
    `preprocessing: Optional[Dict[str, Any]] = None` and calls `set_preprocessing(preprocessing)`; its
    `from_pretrained` calls `keep_legacy_preprocessing` so folders saved before the contract keep their behaviour."""

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """How images become the model's input (value range, size, resampling, channels, DICOM windows and bit
        depth): saved in `model_index.json`, applied by `preprocess` to every input of `__call__`."""
        return ImagePreprocessing.from_dict(self.config["preprocessing"])

    def default_preprocessing(self) -> ImagePreprocessing:
        """The contract when none is given: the model's input size and channels, float inputs in `[-1, 1]`."""
        raise NotImplementedError

    def set_preprocessing(self, preprocessing: Optional[Union[ImagePreprocessing, Dict[str, Any]]] = None) -> None:
        """Set the preprocessing contract (`save_pretrained` then saves it): an [`ImagePreprocessing`], or a dict of
        the keys to change (`{"input_range": "[0, 1]"}` keeps the DICOM windows, size and everything else set, and
        `{"medical": {"bits_stored": 12}}` the windows; when the pipeline is built, the missing keys take
        `default_preprocessing()`'s values), or None for the default.
        Its size and channels must be the model's, and its DICOM windows fit those set before (see
        `MedicalPreprocessing.check_replaces`; None, the reset, is not checked)."""
        default = self.default_preprocessing()
        if preprocessing is None:
            contract = default
        elif isinstance(preprocessing, ImagePreprocessing):
            contract = preprocessing
        else:
            current = (self.preprocessing if "preprocessing" in self.config else default).to_dict()
            changes = dict(preprocessing)
            if isinstance(changes.get("medical"), dict) and current["medical"] is not None:  # its keys, one level down
                changes["medical"] = {**current["medical"], **changes["medical"]}
            contract = ImagePreprocessing.from_dict({**current, **changes})
        for field in ("image_size", "num_channels"):
            if getattr(contract, field) != getattr(default, field):
                raise ValueError(
                    f"preprocessing: {field} {getattr(contract, field)!r} differs from the model's "
                    f"{getattr(default, field)!r}; expected the size and channels the model reads"
                )
        if preprocessing is not None and "preprocessing" in self.config:  # the windows it was trained with, or set
            contract.medical_or_default.check_replaces(
                self.preprocessing.medical_or_default, default.num_channels, "preprocessing", "the model"
            )
        self.register_to_config(preprocessing=contract.to_dict())

    def preprocess(self, images, input_data_format: Optional[str] = None) -> torch.Tensor:
        """`images` (file paths, PIL images, arrays or tensors, one or a list) as the model reads them: float32
        `[N, C, H, W]` in `[-1, 1]` by `self.preprocessing` (see `data.preprocess_images`); inside
        `reading_preprocessed_images()` by `self.preprocessing.for_its_output()`."""
        contract = self.preprocessing
        if id(self) in _READING_PREPROCESSED.get():
            contract = contract.for_its_output()
        return preprocess_images(images, input_data_format=input_data_format, preprocessing=contract)

    @contextmanager
    def reading_preprocessed_images(self) -> Iterator["SavedPreprocessingMixin"]:
        """A block in which the images given to the pipeline are the output of its own preprocessing (the loaders'
        `LabeledImages` / `StreamingImages` tensors, read with `preprocessing.loader_kwargs`): they are read
        unchanged, not normalised a second time (review: with `normalize_background`, a study's and `evaluate`'s
        test images were normalised twice and scored 78.75% where the same head on the files scored 80.0%). It holds
        for the calling thread only: another thread calling the same pipeline meanwhile reads its images as usual (QA:
        a service scoring requests while evaluating on the same object skipped their background normalisation)."""
        token = _READING_PREPROCESSED.set(_READING_PREPROCESSED.get() | {id(self)})
        try:
            yield self
        finally:
            _READING_PREPROCESSED.reset(token)


def keep_legacy_preprocessing(index: dict, kwargs: dict, package_pipelines: Collection[str]) -> None:
    """A folder of one of this package's `package_pipelines` whose `model_index.json` has no `preprocessing` (saved
    before the contract was) loads with `LEGACY_PREPROCESSING`, its old behaviour, unless `kwargs` (of
    `from_pretrained`) pass one. Another library's folder (a diffusers `DDPMPipeline`'s) loads with the class's own
    default (QA: it was read as this package's legacy folder, its float inputs' range guessed without a word)."""
    if "preprocessing" not in index and index.get("_class_name") in package_pipelines:
        kwargs.setdefault("preprocessing", LEGACY_PREPROCESSING)


_READ_RECORDS = ContextVar("read_records", default=True)  # off while `from_pipe` builds a pipeline of another's parts


class SplitRecordMixin:
    """The `data_splits.json` of the folder a pipeline was loaded from (`split_record`: how the model's data was
    carved and which images it was trained on), written again by `save_pretrained`, so `evaluate` and `probe` still
    know the images a re-saved pipeline was trained on. A head fitted by one of the pipeline's `fit_*` methods adds
    its images (`register_fitted_head`); a head registered otherwise, on images unknown, drops the fingerprints, so
    `evaluate` says it cannot check instead of checking against the wrong images. diffusers' uploads (`push_to_hub`,
    `save_pretrained(push_to_hub=True)`) send what `hub.push_to_hub` sends: the record without its fingerprints,
    pickles and training checkpoints left out."""

    split_record: Optional[dict] = None  # `data.read_split_record` of the folder it was loaded from

    def register_to_config(self, **kwargs):
        """diffusers' `DiffusionPipeline.from_pretrained` of a local folder (the model card's route, this package's
        code bundled in the folder) records the folder last: its record is read then (QA: a pipeline loaded that way
        and saved again lost its `data_splits.json`, and `evaluate` scored its training images unchecked). A Hub id's
        record is not among the files diffusers downloads: `DiffusionClassifierPipeline.from_pretrained` reads it."""
        super().register_to_config(**kwargs)
        loaded_from = kwargs.get("_name_or_path")
        if self.split_record is None and _READ_RECORDS.get() and loaded_from and os.path.isdir(loaded_from):
            self.split_record = read_split_record(loaded_from)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """The record of `pipeline` as it is now (a head fitted since, or registered on images unknown), not its
        folder's: diffusers records that folder in the new pipeline too (review); a `head` passed drops the
        fingerprints, as `register_modules` does."""
        token = _READ_RECORDS.set(False)
        try:
            new = super().from_pipe(pipeline, **kwargs)
        finally:
            _READ_RECORDS.reset(token)
        new.split_record = getattr(pipeline, "split_record", None)
        if "head" in kwargs:
            new.register_modules(head=new.head)
        return new

    def register_modules(self, **kwargs):
        super().register_modules(**kwargs)
        if "head" in kwargs and (self.split_record or {}).get("train_fingerprints") is not None:
            dropped = ("train_fingerprints", "train_fingerprints_partial", "selection_fingerprints")
            self.split_record = {key: value for key, value in self.split_record.items() if key not in dropped}

    def register_fitted_head(
        self, head: torch.nn.Module, *fitted_on: torch.Tensor, chosen_on: Optional[torch.Tensor] = None
    ) -> None:
        """Register `head`, fitted (and chosen or calibrated) on the preprocessed images `fitted_on`: their
        fingerprints join those the record holds; those of `chosen_on`, val images it was chosen on only (a probe's
        (block, timestep) and C), join its `selection_fingerprints`, which `evaluate` counts among other splits."""
        previous = self.split_record
        self.register_modules(head=head)
        if previous is not None and previous.get("train_fingerprints") is not None:
            fingerprints = set(previous["train_fingerprints"].split())
            for images in fitted_on:
                fingerprints |= set(image_fingerprints(images))
            self.split_record = {**previous, "train_fingerprints": " ".join(sorted(fingerprints))}
            if chosen_on is not None:
                selected = set((previous.get("selection_fingerprints") or "").split())
                selected |= set(image_fingerprints(chosen_on))
                self.split_record["selection_fingerprints"] = " ".join(sorted(selected))

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs):
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        if self.split_record is not None:
            write_split_record(save_directory, self.split_record)

    def _upload_folder(self, working_dir, repo_id, token=None, commit_message=None, create_pr=False, subfolder=None):
        from huggingface_hub import CommitOperationAdd, HfApi

        operations = [
            CommitOperationAdd(path_in_repo=f"{subfolder}/{op.path_in_repo}" if subfolder else op.path_in_repo,
                               path_or_fileobj=op.path_or_fileobj)
            for op in commit_operations(Path(working_dir), card=None)
        ]  # fmt: skip
        message = commit_message or f"Upload {type(self).__name__}"
        return HfApi(token=token).create_commit(repo_id, operations, commit_message=message, create_pr=create_pr)


def _drop_loaded_from(config_path: str) -> None:
    """A component's saved config without `_name_or_path`, the folder diffusers loaded it from, as `model_index.json`
    is saved (QA: a probe's `unet/config.json` named "/tmp/.../unet", and its upload would publish the folder)."""
    if not os.path.isfile(config_path):
        return
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def component_files(entry: List[str]) -> Tuple[str, Optional[str]]:
    """The config and weights files `save_pretrained` writes for a component saved as `entry` (`[library, class]` in
    `model_index.json`): a scheduler writes its config only; a transformers model `config.json` and
    `model.safetensors`; a diffusers model (this package's heads included) `config.json` and
    `diffusion_pytorch_model.safetensors`."""
    library, class_name = entry[0], entry[-1]
    if class_name.endswith("Scheduler"):
        return "scheduler_config.json", None
    if str(library).split(".")[0] == "transformers":
        return "config.json", "model.safetensors"
    return "config.json", "diffusion_pytorch_model.safetensors"


def check_component_files(folder: str, name: str, entry: List[str], index_file: str) -> None:
    """`folder` (component `name` of the pipeline whose `model_index.json` is `index_file`) holds its config and, for a
    model, safetensors weights: under any name (a variant such as `.fp16`, or shards with their
    `*.safetensors.index.json`), since diffusers and transformers pick the file. Else a `FileNotFoundError` that
    names the missing file, before diffusers or transformers fail on it with a traceback; and a config that is no
    JSON object or a safetensors file whose header does not cover it (cut short in a copy) is a `ValueError` naming
    it (QA: tracebacks through diffusers)."""
    config_name, weights_name = component_files(entry)
    if not os.path.isfile(os.path.join(folder, config_name)):
        missing, needs = config_name, "its config"
    elif weights_name and not any(f.endswith((".safetensors", ".safetensors.index.json")) for f in os.listdir(folder)):
        missing, needs = weights_name, "its weights (a *.safetensors file, or shards with their index)"
    else:
        _check_readable_component(folder, config_name, entry)
        return
    raise FileNotFoundError(
        f"{os.path.join(folder, missing)}: not found; component {name!r} ({entry[-1]}) of {index_file} needs "
        f"{needs}; re-save the pipeline with save_pretrained or copy the whole folder"
    )


def _check_readable_component(folder: str, config_name: str, entry: List[str]) -> None:
    """The component's config parses as a JSON object holding every argument its class requires, and each of its
    safetensors files' header covers the file (its tensors not read)."""
    from safetensors import SafetensorError, safe_open

    again = "re-save the pipeline with save_pretrained or copy the whole folder again"
    config = os.path.join(folder, config_name)
    try:
        with open(config, encoding="utf-8") as handle:
            parsed = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config}: not valid JSON ({error}); expected the component's config: {again}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{config}: a JSON {type(parsed).__name__}; expected the component's config: {again}")
    missing = [name for name in _required_arguments(entry) if name not in parsed]
    if missing:  # QA: diffusers' TypeError "__init__() missing 2 required positional arguments"
        raise ValueError(f"{config}: no {', '.join(map(repr, missing))}, which {entry[-1]} requires: {again}")
    for file in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        try:
            with safe_open(os.path.join(folder, file), "pt"):
                pass
        except SafetensorError as error:
            raise ValueError(
                f"{os.path.join(folder, file)}: not a readable safetensors file ({error}; cut short in a copy?): "
                f"{again}"
            ) from None


def _required_arguments(entry: List[str]) -> List[str]:
    """The arguments without a default of the `__init__` of a diffusers or this package's component class saved as
    `entry` (none for other libraries' classes, whose configs hold their defaults, or a class not found: diffusers
    names it)."""
    import importlib
    import inspect

    library, class_name = entry[0], entry[-1]
    if not isinstance(library, str) or library.split(".")[0] not in ("diffusers", "diffusion_classifiers"):
        return []
    try:
        component_class = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError, TypeError):
        return []
    parameters = list(inspect.signature(component_class.__init__).parameters.values())[1:]
    return [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _is_unet_and_scheduler(index: dict) -> bool:
    """A diffusers pipeline of a `UNet2DModel` and a scheduler alone (`DDPMPipeline`, `DDIMPipeline`), not one of this
    package's: a `UNetFeatureClassifierPipeline` without a head (its features, `cluster`, a probe)."""
    components = {name for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list)}
    unet = index.get("unet")
    return components == {"unet", "scheduler"} and isinstance(unet, list) and unet[-1] == "UNet2DModel"


class ProgressBarsMixin:
    """A pipeline's bars as `set_progress_bar_config` sets them, with diffusers' default (bars on the main process
    only), and `TQDM_DISABLE=1` honoured: diffusers' own `progress_bar` passes `disable=False` on the main process,
    which overrides it (QA: the RC-DiT and image-variation pipelines drew bars in jobs that asked for none)."""

    @property
    def progress_bar_config(self) -> dict:
        """The tqdm arguments of `set_progress_bar_config`, with diffusers' default (bars on the main process only):
        passed down to the library functions a pipeline calls, so one setting governs the whole call. On the main
        process `disable` is left to tqdm unless set: `TQDM_DISABLE=1` then hides the bars (QA: an explicit False
        overrode it)."""
        config = dict(getattr(self, "_progress_bar_config", {}))
        if not is_torch_dist_rank_zero():
            config.setdefault("disable", True)
        return config

    @contextmanager
    def progress_bars_off(self) -> Iterator["ProgressBarsMixin"]:
        """Hide the pipeline's own bars while a caller shows one bar over many calls; the setting is restored after."""
        config = dict(getattr(self, "_progress_bar_config", {}))
        self.set_progress_bar_config(**{**config, "disable": True})
        try:
            yield self
        finally:
            self.set_progress_bar_config(**config)

    def progress_bar(self, iterable=None, total=None):
        """diffusers' `DiffusionPipeline.progress_bar`, its tqdm arguments those of `progress_bar_config`."""
        if iterable is not None:
            return tqdm(iterable, **self.progress_bar_config)
        if total is not None:
            return tqdm(total=total, **self.progress_bar_config)
        raise ValueError("Either `total` or `iterable` has to be defined.")


class DiffusionClassifierPipeline(
    ProgressBarsMixin, SplitRecordMixin, SavedWithCodeMixin, SavedPreprocessingMixin, DiffusionPipeline
):
    """Base class of the classifier pipelines and the one entry point to load any of them.

    `DiffusionClassifierPipeline.from_pretrained(path_or_hub_id)` reads `_class_name` in `model_index.json`
    and returns the concrete pipeline registered under that name. Before diffusers reads a weight, every component
    that `model_index.json` names must have its folder, and weights load from safetensors only: a pickled
    `.bin` / `.pt` / `.pkl` is refused, never unpickled.
    """

    _registry: Dict[str, Type["DiffusionClassifierPipeline"]] = {}
    # what fits a head, said when a pipeline without one is asked for its classes (each method's pipeline says its own)
    how_to_fit_a_head = (
        "and register it as the pipeline's `head` with the images it was fitted on "
        "(`pipe.register_fitted_head(head, train_images)`)"
    )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        DiffusionClassifierPipeline._registry[cls.__name__] = cls

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = local_snapshot(pretrained_model_name_or_path, kwargs)
        index = installed_index(read_model_index(path))
        if cls is DiffusionClassifierPipeline:
            class_name = index.get("_class_name")
            if class_name not in cls._registry and _is_unet_and_scheduler(index):  # QA: cluster refused a DDPMPipeline
                class_name = "UNetFeatureClassifierPipeline"
            if class_name not in cls._registry:
                raise ValueError(
                    f"{pretrained_model_name_or_path}: model_index.json names pipeline {class_name!r}; expected one "
                    f"of {sorted(cls._registry)}"
                )
            return cls._registry[class_name].from_pretrained(path, **kwargs)
        cls._check_saved_class(index.get("_class_name"), pretrained_model_name_or_path)
        keep_legacy_preprocessing(index, kwargs, cls._registry)
        cls.safetensors_only(path, index, kwargs)
        return super().from_pretrained(path, **kwargs)  # its record read as diffusers records the folder

    @classmethod
    def _check_saved_class(cls, class_name: Optional[str], where: Any) -> None:
        """A folder of another of this library's pipelines is refused by name: diffusers would load the components
        the two share and fail later, deep in a computation (a class-conditional Score-SDE U-Net asked for
        unconditional features)."""
        saved = cls._registry.get(class_name)
        if saved is not None and not issubclass(saved, cls):
            raise ValueError(
                f"{where}: model_index.json names pipeline {class_name}, not a {cls.__name__}; load it with "
                f"{class_name}.from_pretrained or DiffusionClassifierPipeline.from_pretrained (which reads the name)"
            )

    @property
    def class_names(self) -> List[str]:
        """The names of the classes this pipeline predicts, index = label id: those of its fitted `head`."""
        head = getattr(self, "head", None)
        if head is None:
            saved_in = f" {self.name_or_path}" if getattr(self, "name_or_path", None) else ""
            raise ValueError(
                f"the {type(self).__name__}{saved_in} has no `head`, so no classes yet: fit one "
                f"{self.how_to_fit_a_head}"
            )
        return self.class_names_from(head.config.num_classes, head.config.class_names)

    @staticmethod
    def class_names_from(num_classes: int, class_names: Optional[List[str]]) -> List[str]:
        return list(class_names) if class_names else [str(i) for i in range(num_classes)]

    @property
    def loader_kwargs(self) -> Dict[str, Any]:
        """The keywords `load_image_classification_data` and `streaming_image_classification_data` take to read and
        carve data as the model's training run did: `preprocessing.loader_kwargs` (size, channels, DICOM reading,
        fit) and the carving of `split_record` (`val_fraction`, `test_fraction`, `seed`, `class_names`, how anonymised
        DICOM files are grouped: `data.split_record.resolve_split_args`, as `evaluate` carves). So
        `load_image_classification_data(path, **pipe.loader_kwargs)["test"]` is the test split of the model's
        training run on the same data, none of its training images; a pipeline without a record (built in code,
        saved by an earlier version) gets the training scripts' defaults (`SPLIT_DEFAULTS`)."""
        carving = resolve_split_args(self.name_or_path, record=self.split_record)
        return {**self.preprocessing.loader_kwargs, **carving}

    @property
    def positive_class(self) -> Optional[str]:
        """The class that sensitivity, specificity, positive-class F1, ROC curves and the log-likelihood ratio of a
        binary task refer to; `None` when unset (saved in `model_index.json` by `save_pretrained`)."""
        return self.config.get("positive_class")

    def set_positive_class(self, name: Optional[str]) -> None:
        """Name the positive class (one of `class_names`; `None` unsets it); `save_pretrained` then saves it."""
        if name is not None and str(name) not in self.class_names:
            raise ValueError(f"positive_class: expected one of the class names {self.class_names}, got {name!r}")
        self.register_to_config(positive_class=None if name is None else str(name))

    @staticmethod
    def build_output(logits: torch.Tensor, class_names: List[str], return_dict: bool = True):
        probs = logits.float().softmax(dim=-1)
        scores, label_ids = probs.max(dim=-1)
        labels = [class_names[i] for i in label_ids.tolist()]
        if not return_dict:
            return (labels, label_ids, scores, probs)
        return ClassifierPipelineOutput(labels=labels, label_ids=label_ids, scores=scores, probs=probs)

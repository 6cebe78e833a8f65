"""What every classifier pipeline shares: the output type, class names, and `from_pretrained` dispatch."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Type

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from diffusion_classifiers.hub import download

__all__ = ["ClassifierPipelineOutput", "DiffusionClassifierPipeline", "local_snapshot"]


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
    arguments (`cache_dir`, `revision`, `token`, `local_files_only`) from `kwargs`."""
    # diffusers 0.42 refuses Hub repos whose custom components have no .py file in the repo, so a Hub id is
    # downloaded first (huggingface_hub cache, revision, token) and loaded from the local snapshot.
    hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    return download(pretrained_model_name_or_path, **hub_kwargs)


class DiffusionClassifierPipeline(DiffusionPipeline):
    """Base class of the classifier pipelines and the one entry point to load any of them.

    `DiffusionClassifierPipeline.from_pretrained(path_or_hub_id)` reads `_class_name` in `model_index.json`
    and returns the concrete pipeline registered under that name.
    """

    _registry: Dict[str, Type["DiffusionClassifierPipeline"]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        DiffusionClassifierPipeline._registry[cls.__name__] = cls

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = local_snapshot(pretrained_model_name_or_path, kwargs)
        if cls is not DiffusionClassifierPipeline:
            return super().from_pretrained(path, **kwargs)
        class_name = cls.load_config(path).get("_class_name")
        if class_name not in cls._registry:
            raise ValueError(
                f"{pretrained_model_name_or_path}: model_index.json names pipeline {class_name!r}; expected one of "
                f"{sorted(cls._registry)}"
            )
        return cls._registry[class_name].from_pretrained(path, **kwargs)

    @property
    def class_names(self) -> List[str]:
        """The names of the classes this pipeline predicts, index = label id: those of its fitted `head`."""
        head = getattr(self, "head", None)
        if head is None:
            raise ValueError("this pipeline has no `head`, so no classes yet")
        return self.class_names_from(head.config.num_classes, head.config.class_names)

    @staticmethod
    def class_names_from(num_classes: int, class_names: Optional[List[str]]) -> List[str]:
        return list(class_names) if class_names else [str(i) for i in range(num_classes)]

    @staticmethod
    def build_output(logits: torch.Tensor, class_names: List[str], return_dict: bool = True):
        probs = logits.float().softmax(dim=-1)
        scores, label_ids = probs.max(dim=-1)
        labels = [class_names[i] for i in label_ids.tolist()]
        if not return_dict:
            return (labels, label_ids, scores, probs)
        return ClassifierPipelineOutput(labels=labels, label_ids=label_ids, scores=scores, probs=probs)

"""The seeds' real workload: pretrained ``google/vit-base-patch16-224`` fine-tuned on the hub's ``beans``.

Loading goes through the Hugging Face Hub; when it is unreachable and the files are not in
the local cache, the cases skip before any rank starts. The same code loads a local model
directory and a local dataset directory (which is how the harness tests exercise it).
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from parabench.cases.requirements import Requirements
from parabench.workloads.base import Batch, Workload

MODEL_ID = "google/vit-base-patch16-224"
DATASET_ID = "beans"


def _is_local(path: str) -> bool:
    return os.path.isdir(path)


@functools.lru_cache(maxsize=None)
def hub_unavailable(model_id: str = MODEL_ID, dataset_id: str = DATASET_ID) -> str | None:
    """None when the model and dataset can be loaded, else why not (a skip reason).

    Each of the two may be a local directory (loaded as is) or a hub id (cached, or downloaded).
    """
    from huggingface_hub import constants, try_to_load_from_cache

    from_hub = [name for name in (model_id, dataset_id) if not _is_local(name)]
    if not from_hub:
        return None
    model_cached = _is_local(model_id) or isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    wanted = " and ".join(f"'{name}'" for name in from_hub)
    if constants.HF_HUB_OFFLINE:
        # A cached dataset cannot be checked cheaply: load_dataset names it if it is missing.
        return None if model_cached else f"needs {wanted} in the Hugging Face cache (HF_HUB_OFFLINE is set)"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as error:
        if model_cached and _is_local(dataset_id):
            return None
        return (f"needs {wanted} from the Hugging Face Hub, which is unreachable ({host}: {error}); "
                f"run once with network access, or point HF_HOME at a cache that has them")
    return None


def beans_requirements(model_id: str, dataset_id: str) -> Requirements:
    return Requirements(packages=("transformers", "datasets", "PIL"),
                        probes=(functools.partial(hub_unavailable, model_id, dataset_id),))


class VitBeans(Workload):
    """ViT fine-tuning with the image processor's resize and normalisation, images processed per batch."""

    name = "vit-beans"
    default_global_batch = 8
    block_types = ("ViTLayer",)

    def __init__(self, model_id: str = MODEL_ID, dataset_id: str = DATASET_ID, split: str = "train") -> None:
        self.model_id, self.dataset_id, self.split = model_id, dataset_id, split
        self.requires = beans_requirements(model_id, dataset_id)
        self._dataset = None
        self._processor = None

    @property
    def dataset(self):
        if self._dataset is None:
            import datasets

            self._dataset = datasets.load_dataset(self.dataset_id, split=self.split)
        return self._dataset

    @property
    def processor(self):
        if self._processor is None:
            from transformers import AutoImageProcessor

            self._processor = AutoImageProcessor.from_pretrained(self.model_id)
        return self._processor

    @property
    def labels(self) -> list[str]:
        return self.dataset.features["labels"].names

    def build_model(self) -> torch.nn.Module:
        from transformers import ViTForImageClassification

        labels = self.labels
        # The pretrained head has 1000 ImageNet classes: a new 3-class head replaces it.
        return ViTForImageClassification.from_pretrained(
            self.model_id, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def num_examples(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> Batch:
        rows = self.dataset[indices.tolist()]
        images = [image.convert("RGB") for image in rows["image"]]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.as_tensor(rows["labels"], dtype=torch.long)}

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])

    def accuracy(self, model: torch.nn.Module, batch: Batch) -> float:
        with torch.no_grad():
            logits = model(pixel_values=batch["pixel_values"]).logits
        return (logits.argmax(-1) == batch["labels"]).float().mean().item()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "dataset": self.dataset_id, "split": self.split,
                "dataset_fingerprint": self.dataset._fingerprint}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None, "_processor": None}

"""What a workload is: a model builder, a dataset, a batch collator and a loss."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any

import torch

from parabench.cases.requirements import Requirements

Batch = dict[str, torch.Tensor]


class Workload(ABC):
    """A model and its data. Subclasses are registered in ``parabench.workloads``.

    Every rank builds the same model from the same seed and sees the same global batch
    at every step; each rank then takes its own slice (see ``parabench.runtime.train``).
    """

    name: str
    default_global_batch: int = 16
    requires: Requirements = Requirements()
    # Names of the transformer blocks that strategies wrap or shard one by one (FSDP units).
    block_types: tuple[str, ...] = ()

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (the caller seeds the RNG). Dropout must be off."""

    @abstractmethod
    def num_examples(self) -> int: ...

    @abstractmethod
    def batch(self, indices: torch.Tensor) -> Batch:
        """The examples at ``indices`` as model inputs."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean loss over the batch, so that the mean of equal shards' losses is the global loss."""

    def enable_checkpointing(self, model: torch.nn.Module) -> None:
        """Activation checkpointing: recompute each block's activations in backward (non-reentrant)."""
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ValueError(f"{self.name}: its model has no activation checkpointing; "
                             f"use the option with a transformers workload (gpt2-text, vit-digits)")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # Pipeline schedules that run the model and its loss apart (ColossalAI's ``execute_pipeline``).
    def model_inputs(self, batch: Batch) -> Batch:
        """``batch`` as the keyword arguments of the model's forward."""
        raise ValueError(f"{self.name} does not split its loss from its forward; use a workload that does (gpt2-text)")

    def loss_of_outputs(self, outputs: Any, inputs: Batch) -> torch.Tensor:
        """The mean loss from the model's ``outputs`` on ``inputs`` (as ``model_inputs`` made them)."""
        raise ValueError(f"{self.name} does not split its loss from its forward")

    # Pipeline parallelism (DeepSpeed's PipelineModule): the model as a sequence of layers.
    def pipeline_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """``model`` as layers applied in order to ``pipeline_io``'s inputs, ending in the logits."""
        raise ValueError(f"{self.name} does not define pipeline layers; use a workload that does (mlp-digits)")

    def pipeline_io(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs of the first layer, labels for ``pipeline_loss``)."""
        raise ValueError(f"{self.name} does not define pipeline inputs")

    def pipeline_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{self.name} does not define a pipeline loss")

    # Tensor parallelism (torch's ``parallelize_module``): which linear layers split by column and by row.
    def tensor_parallel(self, model: torch.nn.Module, mesh) -> None:
        """Shard ``model`` in place over the 1-D device ``mesh`` with this workload's column/row plan."""
        raise ValueError(f"{self.name} does not define a tensor-parallel plan; use a workload that does "
                         f"(mlp-digits, vit-digits, gpt2-text)")

    def accuracy(self, model: torch.nn.Module, batch: Batch) -> float | None:
        """Fraction of correct predictions, for workloads that classify; None otherwise."""
        return None

    def describe(self) -> dict[str, Any]:
        """Model configuration and data identity; recorded in every result."""
        return {}

    def fingerprint(self) -> str:
        """A hash of data and model configuration: results with different fingerprints are not comparable."""
        blob = json.dumps(self.describe(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def concatenated(batches: list[Batch]) -> Batch:
    """Micro-batches as one batch, in order (a strategy that splits a step its own way, e.g. a pipeline's chunks)."""
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def step_indices(step: int, global_batch: int, num_examples: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: a fresh shuffle per epoch, the last partial batch dropped.

    A pure function of its arguments, so every rank and the one-process reference agree.
    """
    steps_per_epoch = num_examples // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"global batch {global_batch} is larger than the dataset ({num_examples} examples)")
    epoch, position = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator)
    return order[position * global_batch:(position + 1) * global_batch]


def tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class TensorWorkload(Workload):
    """A workload whose whole dataset fits in memory as tensors (loaded once per process)."""

    def __init__(self) -> None:
        self._tensors: Batch | None = None

    @abstractmethod
    def load_tensors(self) -> Batch:
        """The whole dataset as tensors with a common first dimension."""

    @property
    def tensors(self) -> Batch:
        if self._tensors is None:
            self._tensors = self.load_tensors()
        return self._tensors

    def num_examples(self) -> int:
        return len(next(iter(self.tensors.values())))

    def batch(self, indices: torch.Tensor) -> Batch:
        return {key: value[indices] for key, value in self.tensors.items()}

    def data_digest(self) -> str:
        return tensor_digest(*(self.tensors[k] for k in sorted(self.tensors)))

    def __getstate__(self) -> dict:
        # Workload instances cross process boundaries by name only, but keep pickling cheap anyway.
        return {**self.__dict__, "_tensors": None}

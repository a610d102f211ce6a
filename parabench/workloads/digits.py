"""scikit-learn's digits (1797 real 8×8 images, shipped with the package) through ``datasets``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from parabench.cases.requirements import Requirements
from parabench.workloads.base import Batch, TensorWorkload


def digits_dataset():
    """The digits as a ``datasets.Dataset`` with columns ``pixels`` (64 floats in [0, 1]) and ``label``."""
    import datasets
    from sklearn.datasets import load_digits

    raw = load_digits()
    return datasets.Dataset.from_dict({"pixels": (raw.data / 16.0).astype("float32"), "label": raw.target})


class _DigitsWorkload(TensorWorkload):
    default_global_batch = 32
    requires = Requirements(packages=("sklearn", "datasets"))

    def load_tensors(self) -> Batch:
        table = digits_dataset().with_format("torch")[:]
        return {"pixels": table["pixels"].float(), "label": table["label"].long()}

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["label"])

    # Pipelines: the pixels go into the first stage, the labels to the last stage's loss.
    def pipeline_io(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["pixels"], batch["label"]

    def pipeline_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels)

    def accuracy(self, model: torch.nn.Module, batch: Batch) -> float:
        with torch.no_grad():
            return (self.logits(model, batch).argmax(-1) == batch["label"]).float().mean().item()

    def logits(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"data": self.data_digest(), "model": self.model_config()}

    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError


class MlpDigits(_DigitsWorkload):
    """A two-layer perceptron on the flattened digits."""

    name = "mlp-digits"
    hidden = 256

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, self.hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(self.hidden, self.hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(self.hidden, 10))

    def logits(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch["pixels"])

    def model_config(self) -> dict[str, Any]:
        return {"type": "mlp", "layers": [64, self.hidden, self.hidden, 10]}

    def pipeline_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model)

    def tensor_parallel(self, model: torch.nn.Module, mesh) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        # The hidden layer's units split across ranks; the 10-way output stays whole.
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


class _VitEmbeddings(torch.nn.Module):
    def __init__(self, embeddings: torch.nn.Module, image) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.image = image  # the workload's flat pixels → the model's image

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embeddings(self.image(pixels))


class _VitLayer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden)[0]


class _VitHead(torch.nn.Module):
    def __init__(self, layernorm: torch.nn.Module, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.layernorm, self.classifier = layernorm, classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layernorm(hidden)[:, 0, :])  # the [CLS] token, as the model does


class VitDigits(_DigitsWorkload):
    """A small ViT (transformers, built from a config) on the 8×8 digits, patch size 2."""

    name = "vit-digits"
    requires = _DigitsWorkload.requires + Requirements(packages=("transformers",))
    block_types = ("ViTLayer",)

    def config(self):
        from transformers import ViTConfig

        return ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, num_labels=10,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def build_model(self) -> torch.nn.Module:
        from transformers import ViTForImageClassification

        return ViTForImageClassification(self.config())

    def logits(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return model(pixel_values=self.image(batch["pixels"])).logits

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        """The flat 8×8 pixels as the model's image (a batch of 1-channel 8×8 images)."""
        return pixels.view(-1, 1, 8, 8)

    def model_inputs(self, batch: Batch) -> Batch:
        return {"pixel_values": self.image(batch["pixels"]), "labels": batch["label"]}

    def loss_of_outputs(self, outputs: Any, inputs: Batch) -> torch.Tensor:
        return outputs.loss  # the model's cross-entropy over its logits and ``labels``

    def pipeline_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """Embeddings, each encoder layer, then the final norm and classifier: the model's own forward."""
        vit = model.vit
        return [_VitEmbeddings(vit.embeddings, self.image), *(_VitLayer(layer) for layer in vit.encoder.layer),
                _VitHead(vit.layernorm, model.classifier)]

    def tensor_parallel(self, model: torch.nn.Module, mesh) -> None:
        """Megatron's split: attention heads and the MLP's hidden units by column, their outputs by row."""
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        heads = model.config.num_attention_heads
        if heads % mesh.size():
            raise ValueError(f"{self.name}: {heads} attention heads do not split over {mesh.size()} ranks")
        plan = {"attention.attention.query": ColwiseParallel(), "attention.attention.key": ColwiseParallel(),
                "attention.attention.value": ColwiseParallel(), "attention.output.dense": RowwiseParallel(),
                "intermediate.dense": ColwiseParallel(), "output.dense": RowwiseParallel()}
        for layer in model.vit.encoder.layer:
            parallelize_module(layer, mesh, plan)
            attention = layer.attention.attention  # its reshapes read the local head count
            attention.num_attention_heads //= mesh.size()
            attention.all_head_size //= mesh.size()

    def model_config(self) -> dict[str, Any]:
        config = self.config().to_dict()
        config.pop("transformers_version", None)  # a version bump alone does not change the data or model
        return config


class VitBaseDigits(VitDigits):
    """ViT-Base/16 at 224 px, ``ViTConfig``'s defaults (the seeds' model, 85.8 M parameters, built from its config:
    nothing is downloaded), on the same digits, each 8×8 image scaled up to 224×224 and given 3 channels when the
    batch enters the model (held so, the 1797 images would take 1.1 GB). The full profile and GPUs."""

    name = "vit-base-digits"
    default_global_batch = 8

    def config(self):
        from transformers import ViTConfig

        return ViTConfig(num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config().image_size
        return F.interpolate(pixels.view(-1, 1, 8, 8), size=(size, size), mode="nearest").expand(-1, 3, -1, -1)

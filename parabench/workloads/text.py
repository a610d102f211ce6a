"""GPT-2 from a small config on text that ships with Python itself (no download)."""

from __future__ import annotations

import os
import sysconfig
from typing import Any

import torch

from parabench.cases.requirements import Requirements
from parabench.workloads.base import Batch, TensorWorkload

# Plain-text files present in every CPython installation's standard library.
STDLIB_FILES = ("LICENSE.txt", "textwrap.py", "difflib.py")


def stdlib_corpus() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = [os.path.join(stdlib, name) for name in STDLIB_FILES]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"gpt2-text's corpus files are missing from this Python: {missing}")
    return paths


def byte_blocks(files: list[str], block_size: int):
    """``datasets`` pipeline: text files → UTF-8 bytes as token ids → contiguous blocks of ``block_size``."""
    import datasets

    lines = datasets.load_dataset("text", data_files=files, split="train", keep_in_memory=True)

    def encode(batch):
        return {"ids": [list(line.encode("utf-8")) + [10] for line in batch["text"]]}

    def group(batch):
        flat = [token for ids in batch["ids"] for token in ids]
        usable = len(flat) // block_size * block_size
        return {"input_ids": [flat[i:i + block_size] for i in range(0, usable, block_size)]}

    ids = lines.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True)
    # One map batch over the whole corpus, so no tokens are lost at batch boundaries.
    return ids.map(group, batched=True, batch_size=len(ids), remove_columns=["ids"], keep_in_memory=True)


class Gpt2Text(TensorWorkload):
    """Byte-level GPT-2 language modelling (vocabulary 256) on standard-library text."""

    name = "gpt2-text"
    default_global_batch = 16
    block_size = 64
    requires = Requirements(packages=("transformers", "datasets"))
    block_types = ("GPT2Block",)

    def config(self):
        from transformers import GPT2Config

        return GPT2Config(vocab_size=256, n_positions=self.block_size, n_embd=128, n_layer=2, n_head=4,
                          bos_token_id=10, eos_token_id=10,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

    def build_model(self) -> torch.nn.Module:
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel(self.config())

    def load_tensors(self) -> Batch:
        blocks = byte_blocks(stdlib_corpus(), self.block_size).with_format("torch")[:]
        return {"input_ids": blocks["input_ids"].long()}

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    def model_inputs(self, batch: Batch) -> Batch:
        # ColossalAI's shardformer GPT-2 forward reads the attention mask's length: pass the full mask.
        ids = batch["input_ids"]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def loss_of_outputs(self, outputs: Any, inputs: Batch) -> torch.Tensor:
        return outputs.loss  # the model shifts the labels itself

    def tensor_parallel(self, model: torch.nn.Module, mesh) -> None:
        """Megatron's split of each block: q/k/v heads and the MLP's hidden units by column, their outputs by row.

        GPT-2's projections are ``Conv1D`` (weights stored in→out) and q/k/v one fused projection, which
        torch's column/row styles cannot split by head; each becomes ``nn.Linear`` first (the same weights,
        transposed), q/k/v three of them, so that a rank's columns are whole heads of each.
        """
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        heads = model.config.n_head
        if heads % mesh.size():
            raise ValueError(f"{self.name}: {heads} attention heads do not split over {mesh.size()} ranks")
        plan = {"attn.c_attn.q": ColwiseParallel(), "attn.c_attn.k": ColwiseParallel(),
                "attn.c_attn.v": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
                "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()}
        for block in model.transformer.h:
            attention, mlp = block.attn, block.mlp
            attention.c_attn = _SplitQKV(attention.c_attn, attention.split_size)
            attention.c_proj, mlp.c_fc, mlp.c_proj = (_as_linear(m) for m in (attention.c_proj, mlp.c_fc, mlp.c_proj))
            parallelize_module(block, mesh, plan)
            attention.split_size //= mesh.size()  # its split of the q/k/v output reads the local width
            attention.num_heads //= mesh.size()

    def describe(self) -> dict[str, Any]:
        config = self.config().to_dict()
        config.pop("transformers_version", None)
        return {"data": self.data_digest(), "files": STDLIB_FILES, "model": config}


def _as_linear(conv1d: torch.nn.Module) -> torch.nn.Linear:
    """transformers' ``Conv1D`` (``x @ W + b``, W stored in→out) as the ``nn.Linear`` with the same weights."""
    fan_in, fan_out = conv1d.weight.shape
    linear = torch.nn.Linear(fan_in, fan_out, device=conv1d.weight.device, dtype=conv1d.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.t())
        linear.bias.copy_(conv1d.bias)
    return linear


class Gpt2Text3M(Gpt2Text):
    """The same corpus and tokens on a wider, deeper GPT-2 (n_embd 256, 4 layers: 3.2 M parameters), the second
    model size of the scaling module on a CPU."""

    name = "gpt2-text-3m"

    def config(self):
        config = super().config()
        config.n_embd, config.n_layer = 256, 4
        return config


class Gpt2Text124M(Gpt2Text):
    """GPT-2 small: ``GPT2Config``'s defaults (124 M parameters with its 50,257-token vocabulary, of which the
    byte corpus uses the first 256), on this corpus in blocks of 64 tokens; dropout off, as in every workload here
    (ranks and the one-process reference must draw the same numbers). The full profile and GPUs."""

    name = "gpt2-124m-text"

    def config(self):
        from transformers import GPT2Config

        return GPT2Config(bos_token_id=10, eos_token_id=10, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class _SplitQKV(torch.nn.Module):
    """GPT-2's fused q/k/v ``Conv1D`` as three ``nn.Linear``, outputs concatenated as the fused one's are."""

    def __init__(self, fused: torch.nn.Module, width: int) -> None:
        super().__init__()
        for index, name in enumerate("qkv"):
            part = _as_linear(fused)
            with torch.no_grad():
                part.weight = torch.nn.Parameter(part.weight[index * width:(index + 1) * width].clone())
                part.bias = torch.nn.Parameter(part.bias[index * width:(index + 1) * width].clone())
            part.out_features = width
            setattr(self, name, part)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(hidden), self.k(hidden), self.v(hidden)], dim=-1)

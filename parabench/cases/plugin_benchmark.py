"""ColossalAI's ViT plugin benchmark as this suite's cases: each published plugin as a strategy, precision and options.

The published benchmark (ColossalAI's ViT fine-tuning example, ``google/vit-base-patch16-224`` on ``beans``) runs
ViT-Base/16 under five booster plugins at a batch of 8 and of 32 per GPU, on 4 GPUs, with ColossalAI's HybridAdam,
and reports throughput and the maximum memory per GPU (its figures: ``parabench/report/published.toml``). Here each
plugin is a case of ``vit-base-digits``: the same architecture (``ViTConfig``'s defaults, random initialisation, as
the published benchmark builds it from its config), trained on scikit-learn's digits scaled up to 224 × 224 with 3
channels (nothing is downloaded; the published timing loop feeds random 224 × 224 images). On CUDA the cases run
on 4 ranks in the published precisions; on a CPU machine on 2 ranks, in bf16 where the published runs fp16 (the
booster's fp16 is torch's CUDA AMP), with few measured steps: what compares there is memory and state, not speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from parabench.cases.case import Case

WORKLOAD = "vit-base-digits"
OPTIMIZER = "hybrid-adam"              # the benchmark's optimizer under every plugin
BATCHES_PER_RANK = (8, 32)             # examples per data-parallel rank and step (the published "batch size per GPU")
WORLD_SIZES = {"cuda": 4, "cpu": 2}    # the published 4 GPUs; 2 ranks share a 2-core machine's cores
# (warm-up, measured) steps. On a 2-core CPU machine a ViT-Base step at 224 px takes 2-10 s (bf16 and fp32, 8 and 32
# examples per rank), and every case runs two untimed steps after its measured ones (costs, then the profiled peak):
# the ten cases take minutes. What compares there is the state, measured after the steps, and the peak.
STEPS = {"cuda": (2, 20), "cpu": (1, 2)}


@dataclass(frozen=True)
class Plugin:
    """One of the benchmark's plugins as a strategy of this suite, by device (``cuda``, ``cpu``)."""

    name: str                                   # as the benchmark names it
    strategy: str
    precisions: Mapping[str, str]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    differs: Mapping[str, str] = field(default_factory=dict)  # how it differs from the published configuration

    def case(self, device: str, batch_per_rank: int) -> Case:
        """The case of this plugin at ``batch_per_rank`` examples per data-parallel rank on ``device``."""
        options = dict(self.options.get(device, {}))
        world_size = WORLD_SIZES[device]
        model_parallel = int(options.get("tp", 1)) * int(options.get("pp", 1))
        if options.get("pp", 1) > 1:
            options["chunks"] = batch_per_rank  # micro-batches of one example, as published (microbatch_size=1)
        warmup, steps = STEPS[device]
        return Case(self.strategy, OPTIMIZER, WORKLOAD, world_size, self.precisions[device],
                    global_batch=batch_per_rank * (world_size // model_parallel), warmup_steps=warmup, steps=steps,
                    options=options)


HALF = {"cuda": "fp16", "cpu": "bf16"}
PLUGINS = (
    Plugin("torch_ddp", "colossalai-torch-ddp", {"cuda": "fp32", "cpu": "fp32"}),
    Plugin("torch_ddp_fp16", "colossalai-torch-ddp", HALF, differs={"cpu": "bf16 under autocast"}),
    Plugin("low_level_zero", "colossalai-lowlevelzero1", HALF, differs={"cpu": "bf16"}),
    # The published Gemini offloads all optimizer state to the CPU; a CPU machine has no device memory to offload
    # from (parabench.strategies.colossalai_booster.ColossalAIGemini.requirements).
    Plugin("gemini", "colossalai-gemini", HALF, {"cuda": {"offload_optim": 1.0}},
           differs={"cuda": "memory not pinned",
                    "cpu": "bf16; nothing offloaded (published: all optimizer state offloaded to the CPU)"}),
    # Published: tensor parallel 2 × pipeline 2 on 4 GPUs; 2 ranks hold one tensor-parallel pair.
    Plugin("hybrid_parallel", "colossalai-hybrid", HALF, {"cuda": {"tp": 2, "pp": 2}, "cpu": {"tp": 2}},
           differs={"cuda": "shardformer's fused kernels (enable_all_optimization) off",
                    "cpu": "bf16; tensor parallel 2 without a pipeline (published: tp 2 × pp 2); shardformer's fused "
                           "kernels off"}),
)


@dataclass(frozen=True)
class Point:
    """A case of the benchmark and what it stands for: its plugin and batch per data-parallel rank."""

    plugin: str
    batch_per_rank: int
    case: Case


def points(device: str) -> list[Point]:
    """Every plugin at every batch, as ``device`` runs them."""
    return [Point(plugin.name, batch, plugin.case(device, batch)) for batch in BATCHES_PER_RANK for plugin in PLUGINS]


def point_of(case: Case) -> Point:
    """The plugin and batch a case of this benchmark stands for."""
    for device in WORLD_SIZES:
        for point in points(device):
            if point.case == case:
                return point
    raise ValueError(f"{case.id} is not a case of the plugin benchmark (parabench/cases/plugin_benchmark.py)")

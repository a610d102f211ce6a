"""What the formulas say a rank holds: parameters, gradients, optimizer state and master weights, from Ψ.

The ZeRO paper's model-state accounting (Rajbhandari et al., 2020, §3 and §5): with Ψ parameters, N
data-parallel ranks, ``c`` bytes per compute-dtype value, an fp32 master copy (4 bytes) where a strategy keeps
one, and K fp32 optimizer values per parameter (Adam: 2), a rank holds

    params c·Ψ (÷N when sharded), grads c·Ψ (÷N), master 4·Ψ (÷N), optimizer 4·K·Ψ (÷N)

Which of the four each strategy shards (``FAMILIES``) is what distinguishes DDP, ZeRO-1/2/3, FSDP, OSS and the
others. ``expected_state`` gives it in the shape of the measured ``state_bytes``; the measurement beside it
shows where a framework holds more or less (whole-tensor partitions, padding to a multiple of N, flat bucket
buffers, per-parameter ``step`` scalars). Strategies whose share of Ψ is not Ψ/N of the whole model (tensor and
pipeline parallel) and optimizers whose state is not K values per parameter (Adafactor's factored moments) have
no formula here: None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# fp32 values per parameter of the optimizer's state (not counting per-tensor scalars such as Adam's ``step``);
# the suite's "sgd" has momentum 0.9 (parabench/optimizers.py): one buffer a parameter
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "lamb": 2, "sgd": 1, "sgd-momentum": 1, "lars": 1,
                    "hybrid-adam": 2, "cpu-adam": 2, "ds-cpuadam": 2}


@dataclass(frozen=True)
class Family:
    """Which model states a strategy shards over its N data-parallel ranks, and whether it keeps an fp32 master
    (``"always"``, ``"mixed"``: only when computing in 16 bits, or ``"never"``)."""

    params: bool
    grads: bool
    optimizer: bool
    master: str
    source: str
    # False where the framework releases its gradients after the optimizer step, so that between steps (where
    # ``state_bytes`` is measured) it holds none: DeepSpeed ZeRO-0/1/2 and LowLevelZero (measured: 0 bytes)
    grads_between_steps: bool = True
    # False where a 16-bit run keeps fp32 weights between steps and casts copies for compute only (FSDP's
    # MixedPrecision: the sharded flat parameters stay fp32, the 16-bit ones are gathered per use and freed), so
    # params and grads are 4 bytes and the fp32 weights are the master
    weights_16bit: bool = True


_DDP = Family(False, False, False, "mixed", "DDP: every rank holds everything")
_OSS = Family(False, False, True, "mixed", "optimizer state sharded (ZeRO-1 without a master copy)")
_FSDP = Family(True, True, True, "mixed", "full shard: parameters, gradients and optimizer state ÷ N")
FAMILIES: dict[str, Family] = {
    "single": Family(False, False, False, "never", "one process"),
    "single-master": Family(False, False, False, "always", "one process with fp32 masters"),
    "torch-ddp": _DDP, "torch-ddp-amp": Family(False, False, False, "never", "DDP under autocast: fp32 weights"),
    "colossalai-torch-ddp": _DDP,
    "deepspeed-zero0": Family(False, False, False, "mixed", "ZeRO-0: DDP", grads_between_steps=False),
    "torch-zero": _OSS, "fairscale-oss": _OSS,
    "fairscale-sdp": Family(False, True, True, "mixed", "OSS + each gradient reduced to its owner (ZeRO-2)"),
    # ZeRO-1/2 keep an fp32 copy of their partition even in fp32; ZeRO-3 in fp32 updates its partitions in place
    # where they are on its own device (on CPU, DeepSpeed 0.19.8 keeps a copy: a finding, not counted yet)
    "deepspeed-zero1": Family(False, False, True, "always", "ZeRO-1: optimizer state and fp32 master ÷ N",
                              grads_between_steps=False),
    "deepspeed-zero2": Family(False, True, True, "always", "ZeRO-2: + gradients ÷ N", grads_between_steps=False),
    "deepspeed-zero3": Family(True, True, True, "mixed", "ZeRO-3: + parameters ÷ N"),
    "colossalai-lowlevelzero1": Family(False, False, True, "always", "LowLevelZero stage 1 (ZeRO-1)",
                                       grads_between_steps=False),
    "colossalai-lowlevelzero2": Family(False, True, True, "always", "LowLevelZero stage 2 (ZeRO-2)",
                                       grads_between_steps=False),
    "colossalai-gemini": Family(True, True, True, "always", "Gemini: chunks sharded (ZeRO-3), gradients "
                                                            "reuse the parameter chunks"),
    "torch-fsdp": _FSDP, "torch-fsdp1": _FSDP, "fairscale-fsdp": _FSDP,
    "colossalai-torch-fsdp": Family(True, True, True, "never", "FSDP with MixedPrecision: fp32 shards, 16-bit "
                                                              "compute copies", weights_16bit=False),
}


def optimizer_states(optimizer: str) -> int | None:
    """K of an optimizer name (``adamw``, ``sgd-momentum``…), None where its state is not K values a parameter."""
    return OPTIMIZER_STATES.get(optimizer)


def expected_state(strategy: str, optimizer: str, precision: str, parameters: int | None, shards: int,
                   options: dict[str, Any] | None = None, between_steps: bool = True,
                   master_weights: bool | None = None) -> dict[str, int] | None:
    """The formula's bytes per rank (params, grads, optimizer, master, total), or None without a formula.

    ``between_steps``: what a rank holds between optimizer steps (where ``state_bytes`` is measured), without the
    gradients a framework releases after its step; False: the paper's model states during the step.
    ``master_weights``: the strategy's ``Strategy.master_weights`` (None: the registered strategy's). False in
    bf16/fp16 means autocast: the weights and their gradients stay fp32 (4 bytes) and there is no master copy;
    True: 16-bit weights, with the fp32 master the family keeps."""
    if master_weights is None:
        master_weights = master_weights_of(strategy)
    family, k = FAMILIES.get(strategy), optimizer_states(optimizer)
    options = options or {}
    if family is None or k is None or not parameters or precision not in PRECISION_BYTES or options.get("offload"):
        return None
    c = PRECISION_BYTES[precision]
    if c < 4 and (master_weights is False or not family.weights_16bit):
        c, master = 4, False  # autocast, or fp32 shards cast for compute: fp32 weights computed in 16 bits
    else:
        master = family.master == "always" or (family.master == "mixed" and c < 4)
    share = lambda sharded: parameters / shards if sharded else parameters  # noqa: E731
    if (strategy == "colossalai-gemini" and master) or (between_steps and not family.grads_between_steps):
        grads = 0  # Gemini writes them into the compute chunks (reuse_fp16_chunk); others release them
    else:
        grads = c * share(family.grads)
    expected = {"params": c * share(family.params), "grads": grads,
                "optimizer": 4 * k * share(family.optimizer), "master": 4 * share(family.optimizer) if master else 0}
    expected = {name: round(value) for name, value in expected.items()}
    expected["total"] = sum(expected.values())
    return expected


def master_weights_of(strategy: str) -> bool:
    """``Strategy.master_weights`` of a registered strategy (16-bit weights with fp32 masters, or autocast); True
    for a name not registered (the family's own accounting)."""
    from parabench.strategies import STRATEGIES

    return STRATEGIES.get(strategy).master_weights if strategy in STRATEGIES else True


def expected_for(info: dict[str, Any]) -> dict[str, int] | None:
    """The formula as it stands for a stored result's ``extra_info`` (its case and Ψ), or None without one."""
    case = info.get("case") or {}
    if not info.get("parameters") or "strategy" not in case:
        return None
    return expected_state(case["strategy"], case["optimizer"], case["precision"], info["parameters"],
                          case["world_size"], case.get("options") or {})


def split_deviations(strategy: str, measured: dict[str, int],
                     expected: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    """The categories beyond 1 % of the formula, as (explained by ``EXPLAINED`` for ``strategy``, unexplained)."""
    off = deviations(measured, expected)
    known = EXPLAINED.get(strategy, {})
    return ({name: change for name, change in off.items() if name in known},
            {name: change for name, change in off.items() if name not in known})


def unexplained(strategy: str, measured: dict[str, int], expected: dict[str, int]) -> dict[str, float]:
    """The categories beyond 1 % of the formula that ``EXPLAINED`` does not explain for ``strategy``: findings."""
    return split_deviations(strategy, measured, expected)[1]


# Deviations beyond 1 % of the formula that are explained: strategy → category → why (measured on gpt2-text, fp32,
# 2 ranks). Any other deviation is a finding (``deviations`` lists it; the report shows it).
EXPLAINED = {
    "torch-zero": {"optimizer": "ZeroRedundancyOptimizer assigns whole parameters to ranks, so the shards are "
                                "uneven (+1.1 % on the larger for gpt2-text; +54 % for mlp-digits, whose 256 × 256 "
                                "hidden weight is 77 % of its parameters and one rank's alone)",
                   "total": "the optimizer's uneven shards (mlp-digits +18 %)"},
    # FSDP2 shards each parameter on dim 0, padded to a multiple of N: vit-digits' [CLS] token (1 × 1 × 64) and
    # position embeddings (1 × 17 × 64) have dim 0 = 1, so each rank holds a padded copy of both, 576 elements over
    # Ψ/N = 34,597 (+1.7 %, in params, grads and Adam's moments); gpt2-text's dims divide evenly
    "torch-fsdp": {"params": "each parameter's dim 0 padded to a multiple of N: a dim 0 of 1 (ViT's [CLS] token and "
                             "position embeddings) is held whole by every rank (vit-digits +1.7 %)",
                   "grads": "the padded parameters' gradients", "optimizer": "Adam's moments of the padded shards",
                   "total": "per-parameter padding"},
    "fairscale-oss": {"optimizer": "OSS assigns whole parameters to ranks (greedy by size): the larger shard holds "
                                   "+5.6 %", "total": "the optimizer's uneven shards"},
    "fairscale-sdp": {"optimizer": "as OSS (whole-parameter shards, +5.6 %)",
                      "grads": "ShardedDDP holds every gradient between steps (4Ψ, not 4Ψ/N): the gradients it "
                               "reduced to other ranks are not released here; with reduce_buffer_size 0 it holds its "
                               "own whole-parameter shard's (+5.6 %)", "total": "the gradients it keeps"},
    # Measured with HybridAdam in bf16 on 2 ranks: gpt2-text's Ψ 437,760 in 3 chunks of 173,056 elements (519,168,
    # +18.6 %), vit-digits' 69,194 in 73,728 (+6.5 %).
    "colossalai-gemini": {
        "params": "parameters live in chunks padded to the chunk size (gpt2-text +18.6 %, vit-digits +6.5 %); a rank "
                  "holds its shard of every chunk, padding included",
        "master": "the fp32 master shards follow the padded chunks",
        "optimizer": "HybridAdam's state covers the real parameters of the rank's chunk shards only: the rank whose "
                     "shards hold the chunks' padding holds that much less, the other that much more",
        "total": "the chunk padding"},
    "fairscale-fsdp": {"grads": "the reduce-scatter bucket (fairscale's flat buffer, bucket_cap_mb) is held as a "
                                "gradient buffer: 13.1 MB beside 0.9 MB of gradient shards",
                       "total": "the reduce-scatter bucket"},
}


def deepspeed_estimate(strategy: str, parameters: int, largest_layer: int, shards: int) -> int | None:
    """DeepSpeed's own estimate of a rank's model-state bytes (``estimate_zero2/3_model_states_mem_needs``,
    no offload; it assumes fp16 parameters and fp32 Adam), or None for other strategies."""
    try:
        if strategy in ("deepspeed-zero1", "deepspeed-zero2"):
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            return int(estimate_zero2_model_states_mem_needs(parameters, num_gpus_per_node=shards, cpu_offload=False,
                                                             additional_buffer_factor=1.0)[1])
        if strategy == "deepspeed-zero3":
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            return int(estimate_zero3_model_states_mem_needs(parameters, largest_layer, num_gpus_per_node=shards,
                                                             cpu_offload=False, cpu_offload_params=False,
                                                             additional_buffer_factor=1.0)[1])
    except ImportError:
        return None
    return None


def deviations(measured: dict[str, int], expected: dict[str, int], rtol: float = 0.01) -> dict[str, float]:
    """The categories where the measurement is off the formula by more than ``rtol`` (relative to the formula's
    total where the formula expects nothing), as measured / expected − 1."""
    out = {}
    for name in ("params", "grads", "optimizer", "master", "total"):
        want, got = expected[name], measured.get(name, 0)
        scale = want or expected["total"]
        if abs(got - want) > rtol * scale:
            out[name] = (got / want - 1) if want else got / scale
    return out

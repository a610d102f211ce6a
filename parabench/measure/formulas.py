"""What a rank holds: the ZeRO paper's model states from Ψ, and the terms each framework's layout adds to them.

The ZeRO paper's model-state accounting (Rajbhandari et al., 2020, §3 and §5): with Ψ parameters, N
data-parallel ranks, ``c`` bytes per compute-dtype value, an fp32 master copy (4 bytes) where a strategy keeps
one, and K fp32 optimizer values per parameter (Adam: 2), a rank holds

    params c·Ψ (÷N when sharded), grads c·Ψ (÷N), master 4·Ψ (÷N), optimizer 4·K·Ψ (÷N)

Which of the four each strategy shards (``FAMILIES``) is what distinguishes DDP, ZeRO-1/2/3, FSDP, OSS and the
others (``paper_state``). The frameworks do not hold exactly Ψ/N: they assign whole tensors to ranks, pad shards
and chunks, keep bucket buffers and copies. ``predicted_state`` computes those terms per rank from the model's
parameter shapes (``parabench.measure.layouts``, which reproduces each framework's rule) and the framework's
configuration; ``expected_state`` is the part Ψ alone gives (the paper and fp32 ZeRO-3's partition copy). What
remains beyond 1 % of a prediction is a finding (``findings``): recorded in the run's result and the report.
Per-tensor scalars (Adam's 4-byte ``step``) are left out: 0.003 % of gpt2-text's state at N = 4 (measured).
Strategies whose share of Ψ is not Ψ/N of the whole model (tensor and pipeline parallel) and optimizers whose
state is not K values per parameter (Adafactor's factored moments) have no formula here: None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# fp32 values per parameter of the optimizer's state (not counting per-tensor scalars such as Adam's ``step``);
# the suite's "sgd" has momentum 0.9 (parabench/cases/optimizers.py): one buffer a parameter
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
    # True where the framework copies its fp32 partitions for the optimizer even in fp32 (4Ψ/N more, as master)
    fp32_copy: bool = False
    # True where DistributedDataParallel wraps the model: its reducer keeps one flat bucket buffer per bucket,
    # as large as the gradients in their dtype (cΨ, ``buffers``), beside the gradients themselves
    ddp_buckets: bool = False


_DDP = Family(False, False, False, "mixed", "DDP: every rank holds everything", ddp_buckets=True)
_OSS = Family(False, False, True, "mixed", "optimizer state sharded (ZeRO-1 without a master copy)", ddp_buckets=True)
_FSDP = Family(True, True, True, "mixed", "full shard: parameters, gradients and optimizer state ÷ N")
FAMILIES: dict[str, Family] = {
    "single": Family(False, False, False, "never", "one process"),
    "single-master": Family(False, False, False, "always", "one process with fp32 masters"),
    "torch-ddp": _DDP, "torch-ddp-amp": Family(False, False, False, "never", "DDP under autocast: fp32 weights",
                                                      ddp_buckets=True),
    "colossalai-torch-ddp": _DDP,
    "deepspeed-zero0": Family(False, False, False, "mixed", "ZeRO-0: DDP", grads_between_steps=False),
    "torch-zero": _OSS, "fairscale-oss": _OSS,
    "fairscale-sdp": Family(False, True, True, "mixed", "OSS + each gradient reduced to its owner (ZeRO-2)"),
    # ZeRO-1/2 keep an fp32 copy of their partition even in fp32. ZeRO-3 (DeepSpeed 0.19.8's
    # _create_fp32_partitions) means to step fp32 partitions in place where they are on its device, but compares
    # the partition's torch.device with the accelerator's device name, a str (torch.device("cpu") == "cpu" is
    # False): it copies them in every non-offloaded case, 4Ψ/N of its own storage (counted as master)
    "deepspeed-zero1": Family(False, False, True, "always", "ZeRO-1: optimizer state and fp32 master ÷ N",
                              grads_between_steps=False),
    "deepspeed-zero2": Family(False, True, True, "always", "ZeRO-2: + gradients ÷ N", grads_between_steps=False),
    "deepspeed-zero3": Family(True, True, True, "mixed", "ZeRO-3: + parameters ÷ N", fp32_copy=True),
    "colossalai-lowlevelzero1": Family(False, False, True, "always", "LowLevelZero stage 1 (ZeRO-1)",
                                       grads_between_steps=False),
    "colossalai-lowlevelzero2": Family(False, True, True, "always", "LowLevelZero stage 2 (ZeRO-2)",
                                       grads_between_steps=False),
    "colossalai-gemini": Family(True, True, True, "always", "Gemini: chunks sharded (ZeRO-3), gradients "
                                                            "reuse the parameter chunks"),
    "torch-fsdp": _FSDP, "torch-fsdp1": _FSDP, "fairscale-fsdp": _FSDP,
    "torch-fsdp-mp": Family(True, True, True, "never", "FSDP2 with MixedPrecisionPolicy: fp32 shards, 16-bit "
                                                       "compute copies", weights_16bit=False),
    "colossalai-torch-fsdp": Family(True, True, True, "never", "FSDP with MixedPrecision: fp32 shards, 16-bit "
                                                              "compute copies", weights_16bit=False),
}


def optimizer_states(optimizer: str) -> int | None:
    """K of an optimizer name (``adamw``, ``sgd-momentum``…), None where its state is not K values a parameter.

    An optimizer a package registered declares its K itself (``OptimizerSpec.states``)."""
    if optimizer in OPTIMIZER_STATES:
        return OPTIMIZER_STATES[optimizer]
    from parabench.cases.optimizers import OPTIMIZERS

    return OPTIMIZERS.get(optimizer).states if optimizer in OPTIMIZERS else None


def formula_of(strategy: str) -> str | None:
    """The name whose formula ``strategy``'s model states follow (a key of ``FAMILIES``), or None: its own name, or
    the one a registered strategy declares (``Strategy.formula``: a package's DDP wrapper follows "torch-ddp").

    A declared name the formulas do not know is an error, raised where the strategy's cases are made."""
    from parabench.strategies import STRATEGIES

    declared = STRATEGIES.get(strategy).formula if strategy in STRATEGIES else None
    if declared is None:
        return strategy if strategy in FAMILIES else None
    if declared not in FAMILIES:
        where = STRATEGIES.origin(strategy)
        raise ValueError(f"strategy {strategy!r}{f' ({where})' if where else ''} declares formula {declared!r}, "
                         f"which has none; known: {', '.join(sorted(FAMILIES))}")
    return declared


def paper_state(strategy: str, optimizer: str, precision: str, parameters: int | None, shards: int,
                options: dict[str, Any] | None = None, between_steps: bool = True,
                master_weights: bool | None = None) -> dict[str, int] | None:
    """The ZeRO paper's bytes per rank (params, grads, optimizer, master, total), or None without a formula.

    ``between_steps``: what a rank holds between optimizer steps (where ``state_bytes`` is measured), without the
    gradients a framework releases after its step; False: the paper's model states during the step.
    ``master_weights``: the strategy's ``Strategy.master_weights`` (None: the registered strategy's). False in
    bf16/fp16 means autocast: the weights and their gradients stay fp32 (4 bytes) and there is no master copy;
    True: 16-bit weights, with the fp32 master the family keeps."""
    if master_weights is None:
        master_weights = master_weights_of(strategy)
    strategy = formula_of(strategy)
    family, k = FAMILIES.get(strategy), optimizer_states(optimizer)
    options = options or {}
    if family is None or k is None or not parameters or precision not in PRECISION_BYTES or options.get("offload"):
        return None
    c, master = _bytes_and_master(family, precision, master_weights)
    share = lambda sharded: parameters / shards if sharded else parameters  # noqa: E731
    grads = c * share(family.grads) if _grads_held(strategy, family, master, between_steps) else 0
    expected = {"params": c * share(family.params), "grads": grads,
                "optimizer": 4 * k * share(family.optimizer), "master": 4 * share(family.optimizer) if master else 0,
                "buffers": 0}  # the paper counts model states only
    expected = {name: round(value) for name, value in expected.items()}
    expected["total"] = sum(expected.values())
    return expected


def _bytes_and_master(family: Family, precision: str, master_weights: bool) -> tuple[int, bool]:
    """(bytes per weight as held, whether an fp32 master is kept)."""
    c = PRECISION_BYTES[precision]
    if c < 4 and (master_weights is False or not family.weights_16bit):
        return 4, False  # autocast, or fp32 shards cast for compute: fp32 weights computed in 16 bits
    return c, family.master == "always" or (family.master == "mixed" and c < 4)


def _grads_held(strategy: str, family: Family, master: bool, between_steps: bool) -> bool:
    # Gemini writes them into the compute chunks (reuse_fp16_chunk); others release them after their step
    return not ((strategy == "colossalai-gemini" and master) or (between_steps and not family.grads_between_steps))


def expected_state(strategy: str, optimizer: str, precision: str, parameters: int | None, shards: int,
                   options: dict[str, Any] | None = None, between_steps: bool = True,
                   master_weights: bool | None = None) -> dict[str, int] | None:
    """The bytes per rank that Ψ alone predicts: the paper's (``paper_state``), fp32 ZeRO-3's partition copy
    (4Ψ/N) and DDP's reducer buckets (cΨ); None without a formula. Same for every rank; ``predicted_state`` adds the terms that need shapes."""
    predictions = predicted_state(strategy, optimizer, precision, parameters, shards, options,
                                  between_steps=between_steps, master_weights=master_weights)
    return None if predictions is None else predictions[0].expected


def master_weights_of(strategy: str) -> bool:
    """``Strategy.master_weights`` of a registered strategy (16-bit weights with fp32 masters, or autocast); True
    for a name not registered (the family's own accounting)."""
    from parabench.strategies import STRATEGIES

    return STRATEGIES.get(strategy).master_weights if strategy in STRATEGIES else True


CATEGORIES = ("params", "grads", "optimizer", "master", "buffers")


@dataclass(frozen=True)
class Prediction:
    """One rank's state by the formulas: the paper's bytes, the computed terms (category → (what, bytes the
    category holds by it)), and the expected bytes (the paper's, each category a term names replaced by it)."""

    paper: dict[str, int]
    terms: dict[str, tuple[str, int]]

    @property
    def expected(self) -> dict[str, int]:
        out = {name: self.terms[name][1] if name in self.terms else self.paper[name] for name in CATEGORIES}
        out["total"] = sum(out.values())
        return out


@dataclass(frozen=True)
class Setting:
    """What a layout rule needs of the case: bytes per weight as held (``c``), K, whether a master is kept and
    gradients are held between steps, N, this rank, the case's options."""

    c: int
    k: int
    master: bool
    grads: bool
    shards: int
    rank: int
    options: dict[str, Any]


Terms = dict[str, tuple[str, int]]


def predicted_state(strategy: str, optimizer: str, precision: str, parameters: int | None, shards: int,
                    options: dict[str, Any] | None = None, workload: str | None = None, between_steps: bool = True,
                    master_weights: bool | None = None) -> list[Prediction] | None:
    """Each rank's prediction: the paper's bytes and the terms of the framework's layout, computed from
    ``workload``'s parameter shapes (``parabench.measure.layouts.model_parameters``); None without a formula.

    Without the shapes (no workload, a hub model, or a model whose Ψ is not the recorded one: it changed since
    the result was stored) only the terms Ψ alone gives are computed."""
    if master_weights is None:
        master_weights = master_weights_of(strategy)
    paper = paper_state(strategy, optimizer, precision, parameters, shards, options, between_steps, master_weights)
    if paper is None:
        return None
    from parabench.measure.layouts import model_parameters

    strategy = formula_of(strategy)
    family, options = FAMILIES[strategy], dict(options or {})
    layout = model_parameters(workload) if workload else None
    if layout is not None and sum(p.numel for p in layout) != parameters:
        layout = None
    c, master = _bytes_and_master(family, precision, master_weights)
    held = _grads_held(strategy, family, master, between_steps)
    rule = LAYOUT_RULES.get(strategy)
    out = []
    for rank in range(shards):
        setting = Setting(c, optimizer_states(optimizer), master, held, shards, rank, options)
        terms = rule(layout, setting) if rule and layout else {}
        if family.fp32_copy and not master and "master" not in terms:
            # fp32 ZeRO-3's partition copy from Ψ alone (with the shapes, its rule counts the padded partitions)
            terms["master"] = (_FP32_COPY, round(4 * parameters / shards))
        if family.ddp_buckets:
            terms["buffers"] = (_DDP_BUCKETS, c * parameters)
        out.append(Prediction(paper, terms))
    return out


_FP32_COPY = "fp32 ZeRO-3 copies its fp32 partitions (4Ψ/N)"
_DDP_BUCKETS = "DDP's reducer buckets: a flat buffer of every gradient in its dtype (cΨ)"


def _whole_tensor(owners_of, what: str):
    """Optimizer state of the whole parameters a rank owns (``owners_of``: the framework's assignment)."""

    def rule(layout, s: Setting) -> Terms:
        sizes = [p.numel for p in layout]
        owned = sum(size for size, owner in zip(sizes, owners_of(sizes, s.shards)) if owner == s.rank)
        return {"optimizer": (what, 4 * s.k * owned)}

    return rule


def _zero_redundancy(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import zero_redundancy_owners

    return _whole_tensor(zero_redundancy_owners, "whole parameters, largest first to the emptiest rank "
                                                 "(ZeroRedundancyOptimizer)")(layout, s)


def _oss(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import oss_owners

    return _whole_tensor(oss_owners, "whole parameters, in order to the emptiest rank (OSS)")(layout, s)


# fairscale ShardedDataParallel's default reduce_buffer_size (elements)
SDP_REDUCE_BUFFER = 2**23


def _sharded_ddp(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import oss_owners, sdp_bucket_elements

    terms = _oss(layout, s)
    sizes = [p.numel for p in layout]
    buffer = int(s.options.get("buffer", SDP_REDUCE_BUFFER))
    bucketed, own = sdp_bucket_elements(sizes, oss_owners(sizes, s.shards), s.shards, s.rank, buffer)
    if s.grads:
        what = (f"reduce buckets of every destination rank ({bucketed:,} elements) and this rank's own unbucketed "
                f"gradients" if bucketed else "this rank's own gradients (whole parameters)")
        terms["grads"] = (what, s.c * (bucketed + own))
    return terms


def _dim0(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import dim0_shard_elements

    padded, real = (sum(x) for x in zip(*(dim0_shard_elements(p.shape, s.shards, s.rank) for p in layout)))
    what = "each parameter's dim 0 padded to a multiple of N"
    terms = {"params": (what, s.c * padded), "optimizer": (what + " (the state covers the real rows)",
                                                           4 * s.k * real)}
    if s.grads:
        terms["grads"] = (what, s.c * padded)
    if s.master:
        terms["master"] = (what + " (the real rows)", 4 * real)
    return terms


def _units(layout) -> list[int]:
    """Elements of each FSDP unit (the workload's blocks, then the root), blocks in order, root last."""
    sizes: dict[str, int] = {}
    for p in layout:
        sizes[p.unit] = sizes.get(p.unit, 0) + p.numel
    root = sizes.pop("", None)
    return list(sizes.values()) + ([root] if root is not None else [])


def _flat_units(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import flat_shard_elements

    shard = sum(flat_shard_elements(n, s.shards) for n in _units(layout))
    what = "one flat parameter per wrapped unit, padded to a multiple of N"
    terms = {"params": (what, s.c * shard), "optimizer": (what, 4 * s.k * shard)}
    if s.grads:
        terms["grads"] = (what, s.c * shard)
    return terms


# fairscale FullyShardedDataParallel's default bucket_cap_mb (the adapter keeps it)
FAIRSCALE_BUCKET_CAP_MB = 25


def _fairscale_fsdp(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import fairscale_bucket_output_elements, flat_shard_elements

    terms = _flat_units(layout, s)
    if s.grads and s.shards > 1:
        # gradients are reduced as backward reaches each unit: the blocks last to first, the root at the end
        units = _units(layout)
        order = [flat_shard_elements(n, s.shards) for n in units[-2::-1] + units[-1:]] if len(units) > 1 else \
            [flat_shard_elements(units[0], s.shards)]
        held = fairscale_bucket_output_elements(order, s.shards, s.c, FAIRSCALE_BUCKET_CAP_MB)
        terms["grads"] = (f"the reduce-scatter bucket's output shards ({FAIRSCALE_BUCKET_CAP_MB} MiB / N each) "
                          "that the gradient shards are views of", s.c * held)
    return terms


def _gemini(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import gemini_chunk_size, gemini_chunks, gemini_rank_elements
    from parabench.strategies.colossalai_booster import gemini_chunk_search

    sizes = [p.numel for p in layout]
    search = gemini_chunk_search(sum(sizes))
    chunk_size, gathered = gemini_chunk_size(sizes, s.shards, search["min_chunk_size_m"], search["search_range_m"])
    chunks = gemini_chunks(sizes, chunk_size, 1 if gathered else s.shards)
    held, real = gemini_rank_elements(chunks, 1 if gathered else s.shards, 0 if gathered else s.rank)
    what = f"{len(chunks)} chunk(s) of {chunk_size:,} elements, a rank holding its shard of each, padding included"
    terms = {"params": (what, s.c * held), "optimizer": ("the real parameters in this rank's chunk shards",
                                                         4 * s.k * real)}
    if s.master:
        terms["master"] = ("fp32 chunks paired with the compute chunks: " + what, 4 * held)
    if s.grads:
        terms["grads"] = (what, s.c * held)
    return terms


def _zero3(layout, s: Setting) -> Terms:
    from parabench.measure.layouts import flat_shard_elements

    shard = sum(flat_shard_elements(p.numel, s.shards) for p in layout)
    what = "each parameter's partition padded to a multiple of N"
    terms = {"params": (what, s.c * shard), "optimizer": (what, 4 * s.k * shard),
             "master": (what if s.master else _FP32_COPY + ", " + what, 4 * shard)}
    if s.grads:
        terms["grads"] = (what, s.c * shard)
    return terms


# Strategy → its layout's rule (strategies not here hold the paper's Ψ/N: DDP, ZeRO-1/2 and LowLevelZero, whose
# flat partitions' alignment padding is a few elements)
LAYOUT_RULES = {"torch-zero": _zero_redundancy, "fairscale-oss": _oss, "fairscale-sdp": _sharded_ddp,
                "torch-fsdp": _dim0, "torch-fsdp-mp": _dim0, "torch-fsdp1": _flat_units, "fairscale-fsdp": _fairscale_fsdp,
                "colossalai-gemini": _gemini, "deepspeed-zero3": _zero3}


def expected_for(info: dict[str, Any]) -> list[dict[str, int]] | None:
    """Each rank's expected bytes for a stored result's ``extra_info`` (its case and Ψ), computed terms included,
    or None without a formula."""
    predictions = predicted_for(info)
    return None if predictions is None else [p.expected for p in predictions]


def predicted_for(info: dict[str, Any]) -> list[Prediction] | None:
    """Each rank's prediction (the paper's bytes, the computed terms, their sum) for a stored result's
    ``extra_info``, or None without a formula.

    A result stored by an older version of ``state_bytes`` (its ``measures``) is predicted as that version
    measured: without the terms for what it did not count yet (``UNCOUNTED_BEFORE``), which fall back to the
    paper's value of their category."""
    case = info.get("case") or {}
    if not info.get("parameters") or "strategy" not in case:
        return None
    predictions = predicted_state(case["strategy"], case["optimizer"], case["precision"], info["parameters"],
                                  case["world_size"], case.get("options") or {}, workload=case.get("workload"))
    version = (info.get("measures") or {}).get("state_bytes", 1)
    uncounted = {term for since, terms in UNCOUNTED_BEFORE.items() if version < since for term in terms}
    if predictions is None or not uncounted:
        return predictions
    return [Prediction(p.paper, {category: (what, held) for category, (what, held) in p.terms.items()
                                 if not what.startswith(tuple(uncounted))}) for p in predictions]


# The computed terms (by their description) that ``state_bytes`` counts since a version of its measurement
# (``parabench.measure.memory.MEASURES``): 2 the fp32 ZeRO-3 partition copy, 3 DDP's reducer buckets
UNCOUNTED_BEFORE = {2: (_FP32_COPY,), 3: (_DDP_BUCKETS,)}


def findings(strategy: str, measured: list[dict[str, int]], predictions: list[Prediction]) -> dict[str, float]:
    """The categories off the prediction (computed terms included) by more than 1 % on some rank, each with its
    largest deviation (measured / expected − 1): what no computed term explains."""
    found: dict[str, float] = {}
    for held, prediction in zip(measured, predictions):
        for name, change in deviations(held, prediction.expected).items():
            found[name] = max(found.get(name, 0.0), change, key=abs)
    return found


# The ZeRO paper's communication volume per step (§7), in DDP's all-reduce (2(N−1)/N × the fp32 gradients, 4Ψ):
# ZeRO-1/2 move the same, ZeRO-3 and full sharding 1.5× (the parameters gathered for forward and for backward).
# The strategies the report draws it for:
PAPER_COMM_FACTOR = {"torch-ddp": 1.0, "deepspeed-zero3": 1.5, "torch-fsdp": 1.5}


def paper_bus_bytes(strategy: str, parameters: int, world_size: int) -> float | None:
    """Bus bytes per step the ZeRO paper expects of ``strategy`` on ``world_size`` ranks, or None if not drawn."""
    factor = PAPER_COMM_FACTOR.get(strategy)
    if factor is None:
        return None
    return factor * 2 * (world_size - 1) / world_size * 4 * parameters


def deviations(measured: dict[str, int], expected: dict[str, int], rtol: float = 0.01) -> dict[str, float]:
    """The categories where the measurement is off the formula by more than ``rtol`` (relative to the formula's
    total where the formula expects nothing), as measured / expected − 1."""
    out = {}
    for name in (*CATEGORIES, "total"):
        want, got = expected.get(name, 0), measured.get(name, 0)
        scale = want or expected["total"]
        if abs(got - want) > rtol * scale:
            out[name] = (got / want - 1) if want else got / scale
    return out

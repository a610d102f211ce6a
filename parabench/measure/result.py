"""What a case produced: each rank's measurements, and their merge into one case result."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from parabench.cases.case import Case

# The layout of ``CaseResult.extra_info`` as stored; bump it when a stored key changes meaning.
RESULT_FORMAT = 1


def high_water_bytes(state_total: int, peak_allocated: int | None) -> int:
    """One rank's high-water mark: the state it holds plus the step's rise above what it starts with (the peak,
    on CPU and CUDA alike), which no earlier case in the same rank moves."""
    return state_total + (peak_allocated or 0)


@dataclass(frozen=True)
class RankResult:
    """One rank's measurements of one case."""

    rank: int
    global_batch: int                 # examples per optimizer step, all replicas together
    losses: list[float]               # global (averaged over replicas) loss of every step, warm-up included
    step_seconds: list[float]         # this rank's wall time of each measured step
    setup_seconds: float              # model build, wrapping and optimizer construction
    state_bytes: dict[str, int]       # params, grads, optimizer, master, total
    # One extra step's rise above what it starts with. CPU: the profiler's replay; CUDA: the allocator's counts.
    peak_allocated_bytes: int | None
    cuda_max_reserved_bytes: int | None
    rss_bytes: dict[str, int]
    workload: dict[str, Any]          # what the data and model were (see Workload.describe)
    fingerprint: str
    calibration_seconds: float = 0.0  # the fixed compute step on this rank just before the case
    patches: tuple[str, ...] = ()     # upstream workarounds in force in this rank (parabench.upstream.patches)
    # One step's collectives ({name: calls, bytes, bus_bytes, group_sizes}) and matmul FLOPs (parabench.measure.costs);
    # None where no step was counted (an A/B session's timing-only rounds).
    comm: dict[str, dict[str, Any]] | None = None
    flops: int | None = None
    parameters: int | None = None     # Ψ: the model's parameter count before any sharding (tied weights once)
    largest_layer: int | None = None  # the most parameters one module holds itself (DeepSpeed's ZeRO-3 estimate)
    tokens: int | None = None         # tokens this rank trains on in one step (text workloads), else None
    # CUDA: the most allocated during the peak's step in all, what the rank held before it included (information
    # only: it moves with what earlier cases in the rank left allocated); None on CPU.
    cuda_max_allocated_bytes: int | None = None


@dataclass(frozen=True)
class CaseResult:
    """A case's result as the controller sees it: per-step times of the slowest rank, memory per rank."""

    case: Case
    ranks: list[RankResult]
    environment: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0         # controller-side, from sending the case to the last rank's answer

    @property
    def losses(self) -> list[float]:
        return self.ranks[0].losses

    @property
    def step_seconds(self) -> list[float]:
        """Per measured step, the slowest rank's time: a step is done when every rank is."""
        return [max(times) for times in zip(*(r.step_seconds for r in self.ranks))]

    @property
    def calibration_seconds(self) -> float:
        """The slowest rank's calibration step, as the step time is the slowest rank's."""
        return max(r.calibration_seconds for r in self.ranks)

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    def max_state_bytes(self, category: str = "total") -> int:
        """The largest rank's state bytes in ``category`` (params, grads, optimizer, master, total)."""
        return max(r.state_bytes[category] for r in self.ranks)

    @property
    def max_peak_allocated_bytes(self) -> int:
        return max(r.peak_allocated_bytes or 0 for r in self.ranks)

    @property
    def max_high_water_bytes(self) -> int:
        """The largest rank's high-water mark (see ``high_water_bytes``)."""
        return max(high_water_bytes(r.state_bytes["total"], r.peak_allocated_bytes) for r in self.ranks)

    @property
    def global_batch(self) -> int:
        return self.ranks[0].global_batch

    @property
    def samples_per_second(self) -> float:
        return self.global_batch / self.median_step_seconds

    @property
    def fixed_cost_seconds(self) -> float:
        """Controller wall time not spent in training steps: dispatch, setup, measurement, teardown."""
        steps = sum(self.step_seconds) * (self.case.total_steps / self.case.steps)
        return self.wall_seconds - steps

    def extra_info(self) -> dict[str, Any]:
        """Everything the gate and reports read, in the keys they expect (stored by pytest-benchmark)."""
        from parabench.measure.memory import MEASURES

        return {
            "case": self.case.to_dict(),
            "loss": self.losses,
            "step_seconds": self.step_seconds,
            "step_seconds_per_rank": [r.step_seconds for r in self.ranks],
            "samples_per_second": self.samples_per_second,
            "global_batch": self.global_batch,
            "state_bytes": [r.state_bytes for r in self.ranks],
            "peak_allocated_bytes": [r.peak_allocated_bytes for r in self.ranks],
            "measures": dict(MEASURES),
            "cuda_max_reserved_bytes": [r.cuda_max_reserved_bytes for r in self.ranks],
            **({"cuda_max_allocated_bytes": [r.cuda_max_allocated_bytes for r in self.ranks]}
               if any(r.cuda_max_allocated_bytes is not None for r in self.ranks) else {}),
            "rss_bytes": [r.rss_bytes for r in self.ranks],
            "setup_seconds": max(r.setup_seconds for r in self.ranks),
            "wall_seconds": self.wall_seconds,
            "fixed_cost_seconds": self.fixed_cost_seconds,
            "workload": self.ranks[0].workload,
            "fingerprint": self.ranks[0].fingerprint,
            "calibration_seconds": self.calibration_seconds,
            "calibration_seconds_per_rank": [r.calibration_seconds for r in self.ranks],
            "patches": sorted({name for r in self.ranks for name in r.patches}),
            **({"comm": [r.comm for r in self.ranks], "flops": [r.flops for r in self.ranks]}
               if all(r.comm is not None for r in self.ranks) else {}),
            **self.cost_expectations(),
            **self.environment,
        }

    def cost_expectations(self) -> dict[str, Any]:
        """Ψ, and what the formulas expect beside what was measured (``parabench.measure.formulas``)."""
        from parabench.measure.estimator import deepspeed_estimate
        from parabench.measure.formulas import findings, predicted_state

        first = self.ranks[0]
        if first.parameters is None:
            return {}
        case = self.case
        out: dict[str, Any] = {"parameters": first.parameters}
        predictions = predicted_state(case.strategy, case.optimizer, case.precision, first.parameters,
                                      case.world_size, dict(case.options), workload=case.workload)
        if predictions is not None:
            out["state_bytes_expected"] = [p.expected for p in predictions]
            # beyond 1 % of the formula with its computed terms on some rank: a finding
            found = findings(case.strategy, [r.state_bytes for r in self.ranks], predictions)
            if found:
                out["state_formula_findings"] = found
        estimate = deepspeed_estimate(case.strategy, first.parameters, first.largest_layer or 0, case.world_size)
        if estimate is not None and not case.option("offload"):
            out["deepspeed_estimate_bytes"] = estimate
        if first.tokens:
            # ≈ 6 FLOPs per parameter and token (2 forward, 4 backward); 8 where checkpointing recomputes the forward
            out["flops_expected"] = [(8 if case.option("ckpt") else 6) * first.parameters * r.tokens
                                     for r in self.ranks]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case.to_dict(), "ranks": [asdict(r) for r in self.ranks],
                "environment": self.environment, "wall_seconds": self.wall_seconds}

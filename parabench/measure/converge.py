"""Time to converge: train a case on a training split until its held-out accuracy reaches a target.

The seeds' "epochs to converge" per strategy. Accuracy is measured on examples the case never trains
on (``holdout_split``), every ``eval_every`` steps; the count is the number of optimizer steps until
the first evaluation at or above the target, and the seconds are the timed training steps up to it
(evaluation not included). Every rank takes part; the verdict is the same on every rank.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from parabench.cases.case import Case
from parabench.strategies import RankContext

EVAL_BATCH = 128


@dataclass(frozen=True)
class Target:
    accuracy: float = 0.9      # fraction of held-out examples classified correctly
    eval_every: int = 10       # optimizer steps between evaluations
    max_steps: int = 600       # give up (and report "not reached") after this many steps
    holdout: float = 0.2       # fraction of the dataset held out for evaluation

    def __post_init__(self) -> None:
        if not 0 < self.accuracy <= 1 or not 0 < self.holdout < 1:
            raise ValueError(f"need 0 < accuracy ≤ 1 and 0 < holdout < 1, got {self.accuracy}, {self.holdout}")
        if self.eval_every < 1 or self.max_steps < self.eval_every:
            raise ValueError(f"need 1 ≤ eval_every ≤ max_steps, got {self.eval_every}, {self.max_steps}")


@dataclass(frozen=True)
class ConvergeRankResult:
    rank: int
    steps: int | None                  # optimizer steps to the target; None: not reached in max_steps
    step_seconds: list[float]          # this rank's time of every training step run
    evaluations: list[tuple[int, float]]  # (steps done, held-out accuracy)
    losses: list[float]
    global_batch: int
    train_examples: int


@dataclass(frozen=True)
class ConvergeResult:
    case: Case
    target: Target
    ranks: list[ConvergeRankResult]
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int | None:
        return self.ranks[0].steps

    @property
    def step_seconds(self) -> list[float]:
        """Per step, the slowest rank's time."""
        return [max(times) for times in zip(*(r.step_seconds for r in self.ranks))]

    @property
    def seconds(self) -> float | None:
        """Training seconds to the target: the sum of the slowest rank's step times."""
        return None if self.steps is None else sum(self.step_seconds[:self.steps])

    @property
    def epochs(self) -> float | None:
        first = self.ranks[0]
        return None if self.steps is None else self.steps * first.global_batch / first.train_examples

    @property
    def final_accuracy(self) -> float:
        return self.ranks[0].evaluations[-1][1]

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    def extra_info(self) -> dict[str, Any]:
        return {"converge": {"case": self.case.to_dict(), "target": asdict(self.target), "steps": self.steps,
                             "epochs": self.epochs, "seconds": self.seconds,
                             "evaluations": self.ranks[0].evaluations, "loss": self.ranks[0].losses,
                             "global_batch": self.ranks[0].global_batch,
                             "train_examples": self.ranks[0].train_examples},
                **self.environment}


def holdout_split(num_examples: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices): a fixed shuffle, the last ``fraction`` held out."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(num_examples * fraction))
    return order[:-held], order[-held:]


def run_to_target(context: RankContext, case: Case, target: Target) -> ConvergeRankResult:
    """Train ``case`` until the held-out accuracy reaches ``target``. Collective: every rank calls it."""
    from parabench.measure.timing import StepTimer
    from parabench.runtime.train import build
    from parabench.workloads import WORKLOADS

    train, held_out = holdout_split(WORKLOADS.get(case.workload).num_examples(), target.holdout)
    strategy, workload, data = build(context, case, examples=train)
    timer = StepTimer(context.device)
    losses: list[float] = []
    seconds: list[float] = []
    evaluations: list[tuple[int, float]] = []
    reached = None
    try:
        for step in range(target.max_steps):
            batches = data.micro_batches(step)
            loss, elapsed = timer.time(lambda: strategy.train_step(batches, workload.loss))
            losses.append(strategy.global_loss(loss))
            seconds.append(elapsed)
            context.report_progress(step + 1, target.max_steps)
            if (step + 1) % target.eval_every == 0:
                accuracy = _accuracy(strategy, workload, held_out, context)
                evaluations.append((step + 1, accuracy))
                if accuracy >= target.accuracy:
                    reached = step + 1
                    break
        return ConvergeRankResult(rank=context.rank, steps=reached, step_seconds=seconds, evaluations=evaluations,
                                  losses=losses, global_batch=data.global_batch, train_examples=len(train))
    finally:
        strategy.teardown()


def _accuracy(strategy, workload, held_out: torch.Tensor, context: RankContext) -> float:
    """Held-out accuracy: each data-parallel replica counts its share, the counts are summed over ranks.

    Ranks that hold the same replica (tensor parallel) count the same examples, and ranks without the
    model's output (pipeline stages before the last) count none, so the sum's ratio is the accuracy.
    """
    replica, replicas = strategy.data_parallel()
    counts = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for part in torch.split(torch.tensor_split(held_out, replicas)[replica], EVAL_BATCH):
            batch = {key: value.to(context.device) for key, value in workload.batch(part).items()}
            correct, total = strategy.count_correct(workload, batch)
            counts += torch.tensor([correct, total], dtype=torch.float64)
    if context.world_size > 1:
        counts = counts.to(context.device)
        dist.all_reduce(counts)
    return (counts[0] / counts[1]).item()

"""Runs one case inside one rank: build, train for warm-up + measured steps, measure, release."""

from __future__ import annotations

import time

import torch

from parabench.cases.case import Case, shard_bounds, split_batch
from parabench.cases.optimizers import OPTIMIZERS
from parabench.gate import inject
from parabench.gate.inject import Perturbation
from parabench.measure.calibration import calibration_seconds
from parabench.measure.costs import step_costs
from parabench.measure.memory import cuda_step_peak_bytes, ddp_buckets, profiled_peak_bytes, rss_bytes, state_bytes
from parabench.measure.result import RankResult
from parabench.measure.timing import StepTimer
from parabench.measure.trace import TraceRequest, record_trace
from parabench.strategies import STRATEGIES, RankContext, Strategy
from parabench.strategies.precision import disable_tf32
from parabench.upstream.patches import in_force as patches_in_force
from parabench.workloads import WORKLOADS, Batch, Workload, step_indices


class CaseData:
    """This rank's micro-batches at each step: its slice of the global batch, split for accumulation."""

    def __init__(self, workload: Workload, case: Case, replica: int, replicas: int, device: torch.device,
                 examples: torch.Tensor | None = None):
        self.workload, self.case, self.device = workload, case, device
        self.global_batch = case.global_batch or workload.default_global_batch
        self.micro_batch = split_batch(self.global_batch, replicas, case.grad_accum)
        self.bounds = shard_bounds(self.global_batch, replica, replicas)
        self.examples = examples  # None: the whole dataset; else the indices to train on (a split)
        self.num_examples = workload.num_examples() if examples is None else len(examples)

    def micro_batches(self, step: int) -> list[Batch]:
        indices = step_indices(step, self.global_batch, self.num_examples, self.case.seed)
        if self.examples is not None:
            indices = self.examples[indices]
        mine = indices[self.bounds[0]:self.bounds[1]]
        return [self._to_device(self.workload.batch(mine[i * self.micro_batch:(i + 1) * self.micro_batch]))
                for i in range(self.case.grad_accum)]

    def _to_device(self, batch: Batch) -> Batch:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}


def build(context: RankContext, case: Case,
          examples: torch.Tensor | None = None) -> tuple[Strategy, Workload, CaseData]:
    """The case's strategy set up on this rank, its workload, and its data (``examples``: a training split)."""
    disable_tf32(context.device)  # fp32 parity compares full-fp32 arithmetic on both sides
    workload = WORKLOADS.get(case.workload)
    strategy = STRATEGIES.get(case.strategy)(context, case.precision, dict(case.options))
    data = CaseData(workload, case, *strategy.data_parallel(), device=context.device, examples=examples)
    strategy.set_batching(data.micro_batch, case.grad_accum)
    torch.manual_seed(case.seed)  # every rank builds the same initial model
    model = workload.build_model()
    strategy.parameter_count = sum(p.numel() for p in model.parameters())  # Ψ, tied weights once (the formulas')
    strategy.largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    strategy.setup(model, OPTIMIZERS.get(case.optimizer).for_accumulation(case.grad_accum), workload)
    return strategy, workload, data


def run_case(context: RankContext, case: Case, perturbation: Perturbation | None = None,
             trace: TraceRequest | None = None, memory: bool = True) -> RankResult:
    """Train ``case`` on this rank and measure it. Collective: every rank of the pool calls it.

    ``perturbation`` (self-test only) makes the case slower, bigger or wrong on purpose. ``trace``: after
    every measurement, profile that many more steps and write this rank's Chrome trace (``--profile``).
    ``memory=False``: a run for its step times only (an A/B session's later rounds): the two extra steps that
    measure the peak and count the costs are left out (``peak_allocated_bytes`` None), which makes a gpt2-text
    run on CPU about a third shorter.
    """
    calibration = calibration_seconds(context.device)  # the machine's speed right now, on these ranks
    started = time.perf_counter()
    strategy, workload, data = build(context, case)
    if perturbation:
        perturbation.prepare(strategy.stepping_optimizer(), strategy.data_parallel()[1])
    setup_seconds = time.perf_counter() - started
    cuda = context.device.type == "cuda"
    timer = StepTimer(context.device)
    losses: list[float] = []
    step_seconds: list[float] = []
    held: list[torch.Tensor] = []  # a memory perturbation's ballast
    try:
        for step in range(case.total_steps):
            if cuda and step == case.warmup_steps:
                torch.cuda.reset_peak_memory_stats(context.device)  # the measured steps' reserved peak
            batches = data.micro_batches(step)  # loading is not part of the step's time
            inject.before_step(case, context.rank, context.world_size, step)
            train = lambda: strategy.train_step(batches, workload.loss)  # noqa: E731
            if perturbation:
                train = perturbation.timed(perturbation.communicating(train), timer.synchronize)
            local_loss, seconds = timer.time(train)
            losses.append(strategy.global_loss(local_loss))
            if step >= case.warmup_steps:
                step_seconds.append(seconds)
            context.report_progress(step + 1, case.total_steps)
        tensors = {category: list(held_tensors) for category, held_tensors in strategy.state_tensors().items()}
        tensors["buffers"] = tensors.get("buffers", []) + ddp_buckets(getattr(strategy, "model", None))
        state = state_bytes(tensors)
        if perturbation and perturbation.grows_memory:
            held.append(perturbation.ballast(state["total"], context.device))
            state = state_bytes({**tensors, "optimizer": tensors.get("optimizer", []) + held[-1:]})
        extra = data.micro_batches(case.total_steps)
        step = lambda: strategy.train_step(extra, workload.loss)  # noqa: E731
        if perturbation:
            step = perturbation.communicating(step)
        comm = flops = high_water = None
        if cuda:
            reserved = torch.cuda.max_memory_reserved(context.device)
            if not memory:
                peak = None
            else:
                # One more step, untimed: its rise above what it starts with, as on CPU, so that what earlier cases
                # left allocated in this rank does not move it; then one that counts collectives and FLOPs.
                peak, high_water = cuda_step_peak_bytes(step, context.device)
                if perturbation and perturbation.grows_memory:
                    unperturbed = peak
                    peak, high_water = cuda_step_peak_bytes(
                        lambda: _holding(perturbation.ballast(unperturbed, context.device), step), context.device)
                comm, flops = step_costs(step, context.device)
        elif not memory:
            peak = reserved = None
        else:
            # Two more steps, profiled and untimed; their losses are not part of the curve. The first
            # profiled step of a case peaked up to 9 % higher than every later one; the second is steady.
            # The first counts the step's collectives and FLOPs (parabench.measure.costs), the second measures the peak.
            comm, flops = step_costs(step, context.device)
            peak = profiled_peak_bytes(step)
            if perturbation and perturbation.grows_memory:
                unperturbed = peak
                peak = profiled_peak_bytes(lambda: _holding(perturbation.ballast(unperturbed, context.device), step))
            reserved = None
        if perturbation:
            peak = perturbation.recorded_peak(peak)
        result = RankResult(rank=context.rank, global_batch=data.global_batch, losses=losses,
                            step_seconds=step_seconds, setup_seconds=setup_seconds, state_bytes=state,
                            peak_allocated_bytes=peak, cuda_max_reserved_bytes=reserved,
                            cuda_max_allocated_bytes=high_water, rss_bytes=rss_bytes(),
                            workload=workload.describe(), fingerprint=workload.fingerprint(),
                            calibration_seconds=calibration, patches=patches_in_force(), comm=comm, flops=flops,
                            parameters=strategy.parameter_count, largest_layer=strategy.largest_layer,
                            tokens=sum(b["input_ids"].numel() for b in extra) if "input_ids" in extra[0] else None)
        if trace:
            # Last, so that nothing measured above (resident memory included) sees these steps. Every rank
            # runs as many (pipeline stages step together), on data that follows the memory steps'.
            traced = [data.micro_batches(case.total_steps + 2 + i) for i in range(trace.steps)]
            record_trace(trace, context.rank, context.device, lambda i: strategy.train_step(traced[i], workload.loss))
        return result
    finally:
        # Dropping the references frees most of it; the worker runs the (slow, ~0.25 s) cycle collection
        # before it answers, so that it never overlaps the next task of another pool (parabench.runtime.worker.serve).
        held.clear()
        strategy.teardown()


def _holding(ballast: torch.Tensor, step):
    """Run ``step`` while ``ballast`` is held (the profiled step's extra peak under a memory perturbation)."""
    out = step()
    del ballast
    return out

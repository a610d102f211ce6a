"""ColossalAI strategies' option checks, the distributed optimizers' twins, patches and the step table's inputs."""

from __future__ import annotations

import pytest

from parabench.cases.case import Case
from parabench.cases.matrix import cases, reference_of
from parabench.cases.optimizer_step import StepBench, parse_shape
from parabench.strategies import STRATEGIES
from parabench.upstream.patches import Patch, in_force


@pytest.mark.parametrize("strategy, options, message", [
    ("colossalai-gemini", {"placement": "dynamic"}, "placement is 'static' or 'auto'"),
    ("colossalai-gemini", {"shard": 1.5}, "fraction from 0 to 1"),
    ("colossalai-gemini", {"placement": "auto", "offload_optim": 0.5}, "static-placement fraction"),
    ("colossalai-hybrid", {"zero": 3}, "zero is 0, 1 or 2"),
    ("colossalai-hybrid", {"tp": 0}, "tensor-parallel size"),
    ("colossalai-lowlevelzero2", {"offload_param": True}, "unknown option"),
    ("colossalai-torch-ddp", {"tp": 2}, "unknown option"),
])
def test_bad_options_fail_at_collection_naming_the_fix(strategy, options, message):
    with pytest.raises(ValueError, match=message):
        cases([strategy], ["adamw"], ["gpt2-text"], options=options)


def test_hybrid_needs_a_world_size_its_model_parallel_size_divides():
    needs = STRATEGIES.get("colossalai-hybrid").requirements("fp32", {"tp": 2, "pp": 2})
    assert needs.world_size_multiple_of == 4


def test_hybrid_data_parallel_rank_follows_the_plugins_mesh():
    import torch

    from parabench.strategies.base import RankContext

    ranks = []
    for rank in range(4):
        context = RankContext(rank, 4, rank, torch.device("cpu"), "gloo")
        ranks.append(STRATEGIES.get("colossalai-hybrid")(context, "fp32", {"tp": 2}).data_parallel())
    assert ranks == [(0, 2), (0, 2), (1, 2), (1, 2)]  # (dp, pp, tp) mesh: tp innermost


def test_a_distributed_optimizer_is_checked_against_its_one_process_twin():
    case = Case("colossalai-hybrid", "dist-adafactor", "gpt2-text", 2, options={"tp": 2})
    assert reference_of(case) == Case("single", "colossalai-adafactor", "gpt2-text", 1)
    plain = Case("colossalai-torch-ddp", "lamb", "gpt2-text", 2)
    assert reference_of(plain) == plain.reference()


def test_a_patch_applies_once_and_is_recorded():
    calls = []
    patch = Patch("test-only-patch", "upstream does X", "when upstream stops", lambda: calls.append(1))
    patch.ensure()
    patch.ensure()
    assert calls == [1]
    assert "test-only-patch" in in_force()


@pytest.mark.parametrize("strategy, plugin", [("colossalai-lowlevelzero1", "LowLevelZeroPlugin"),
                                              ("colossalai-lowlevelzero2", "LowLevelZeroPlugin"),
                                              ("colossalai-gemini", "GeminiPlugin"),
                                              ("colossalai-hybrid", "HybridParallelPlugin")])
def test_fp16_plugins_hold_their_loss_scale_at_the_references(strategy, plugin, monkeypatch):
    import colossalai.booster.plugin
    import torch

    from parabench.cases.matrix import reference_of
    from parabench.strategies.base import RankContext
    from parabench.strategies.precision import FP16_LOSS_SCALE, StaticGradScaler

    built = {}
    monkeypatch.setattr(colossalai.booster.plugin, plugin, lambda **kwargs: built.update(kwargs))
    cuda = RankContext(0, 2, 0, torch.device("cuda", 0), "nccl")
    STRATEGIES.get(strategy)(cuda, "fp16", {}).plugin(torch.nn.Linear(4, 4), None)
    # Pinned: the scaler's minimum and maximum at its initial scale, so no overflow or growth moves it.
    assert (built["initial_scale"], built["min_scale"], built["max_scale"]) == (FP16_LOSS_SCALE,) * 3
    reference = reference_of(Case(strategy, "hybrid-adam", "gpt2-text", 2, precision="fp16"))
    scaler = STRATEGIES.get(reference.strategy)(RankContext(0, 1, 0, torch.device("cuda", 0), "nccl"),
                                                "fp16").autocast.scaler
    assert isinstance(scaler, StaticGradScaler) and scaler.static_scale == FP16_LOSS_SCALE
    built.clear()
    STRATEGIES.get(strategy)(cuda, "bf16", {}).plugin(torch.nn.Linear(4, 4), None)
    assert not {"initial_scale", "min_scale", "max_scale"} & set(built)  # bf16 does not scale: the plugin's defaults


def test_fp16_under_the_boosters_torch_amp_holds_the_references_scale():
    from types import SimpleNamespace

    from parabench.strategies.colossalai_booster import hold_loss_scale
    from parabench.strategies.precision import FP16_LOSS_SCALE, StaticGradScaler

    amp_optimizer = SimpleNamespace(scaler=object())  # as the booster's TorchAMPOptimizer holds its GradScaler
    hold_loss_scale(amp_optimizer)
    assert isinstance(amp_optimizer.scaler, StaticGradScaler) and amp_optimizer.scaler.static_scale == FP16_LOSS_SCALE


@pytest.mark.parametrize("text", ["4096", "0x8", "axb", "4096x"])
def test_weight_shape_must_read_out_by_in(text):
    with pytest.raises(ValueError, match="OUTxIN"):
        parse_shape(text)


def test_step_table_rows_must_split_evenly():
    assert parse_shape("1024x512") == (1024, 512)
    StepBench("row", 6, 8, "fp32", 4)  # rows split the input features: 8 / 4
    with pytest.raises(ValueError, match="divisible by the world size"):
        StepBench("col", 6, 8, "fp32", 4)


# --------------------------------------------------------------------------- Gemini on CPU

_GEMINI_CHUNK = """
import os, sys, tempfile
import torch, torch.distributed as dist
from colossalai.zero.gemini.chunk.chunk import Chunk
original = (Chunk.__dict__["device_type"], Chunk.close_chunk, Chunk.shard_move)
cuda = sys.argv[1] == "cuda"  # the case's device
torch.cuda.is_available = lambda: True  # on a host with a CUDA device (a CPU case: --bench-device=cpu)
from parabench.upstream.colossalai_cpu import ensure_cpu_patches
from parabench.upstream.patches import in_force
ensure_cpu_patches(torch.device(sys.argv[1]))
now = (Chunk.__dict__["device_type"], Chunk.close_chunk, Chunk.shard_move)
print("patched", [a is not b for a, b in zip(original, now)])
print("in force", sorted(p for p in in_force() if "gemini" in p))
if not cuda:
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tempfile.mkdtemp(), "rdv"), rank=0,
                            world_size=1)
    chunk = Chunk(8, dist.group.WORLD, torch.bfloat16, init_device=torch.device("cpu"))
    print("filling", chunk.device_type)
    chunk.append_tensor(torch.ones(6, dtype=torch.bfloat16))
    chunk.close_chunk()
    print("closed", chunk.device_type, chunk.cuda_shard is not None, chunk.cpu_shard is None)
    chunk.shard_move(torch.device("cpu"))  # an offload request: host memory to host memory, nothing moves
    print("after a move to the CPU", chunk.device_type, chunk.cuda_shard is not None)
"""


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_gemini_cpu_patches_apply_to_a_cpu_case_only_on_a_host_with_cuda_too(device, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "chunk.py"
    script.write_text(_GEMINI_CHUNK)
    result = subprocess.run([sys.executable, str(script), device], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1],
                            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    if device == "cuda":  # inert: Gemini's chunk code is upstream's
        assert "patched [False, False, False]" in out and "in force []" in out, out
        return
    assert "patched [True, True, True]" in out, out
    assert "in force ['colossalai-gemini-chunk-device-type', 'colossalai-gemini-shard-placement']" in out, out
    # Filling, closed and after an offload request, the chunk is resident for compute under the name Gemini tests.
    assert "filling cuda" in out and "closed cuda True True" in out and "after a move to the CPU cuda True" in out, out


def test_gemini_on_cpu_skips_only_what_needs_cuda():
    from parabench.cases.matrix import skip_reason
    from parabench.cases.requirements import Machine

    cpu = Machine(cuda_devices=0, max_cpu_world_size=4)
    gemini = [case for case in cases(["colossalai-gemini"], ["hybrid-adam"], ["gpt2-text"], precisions=["bf16"])]
    assert skip_reason(gemini[0], cpu) is None or "compiler" in skip_reason(gemini[0], cpu)
    auto = cases(["colossalai-gemini"], ["hybrid-adam"], ["gpt2-text"], precisions=["bf16"],
                 options={"placement": "auto"})[0]
    assert "torch.cuda.synchronize()" in skip_reason(auto, cpu)
    offload = cases(["colossalai-gemini"], ["hybrid-adam"], ["gpt2-text"], precisions=["bf16"],
                    options={"offload_optim": 0.5})[0]
    assert "offload_optim: offloading moves chunks" in skip_reason(offload, cpu)
    nothing_offloaded = cases(["colossalai-gemini"], ["hybrid-adam"], ["gpt2-text"], precisions=["bf16"],
                              options={"offload_optim": 0.0, "shard": 0.5})[0]
    assert skip_reason(nothing_offloaded, cpu) == skip_reason(gemini[0], cpu)
    assert skip_reason(auto, Machine(cuda_devices=2, max_cpu_world_size=4)) in (None, skip_reason(gemini[0], cpu))


def test_a_colossalai_optimizer_applies_the_patches_of_its_parameters_device():
    import torch

    from parabench.cases.optimizers import device_of

    weight, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    assert device_of([weight, bias]) == torch.device("cpu")
    assert device_of([{"params": [torch.ones(1, device="meta")]}, {"params": [bias]}]) == torch.device("meta")
    assert device_of([{"params": torch.ones(1, device="meta")}]) == torch.device("meta")


def test_gemini_chunks_are_scaled_to_the_model():
    from parabench.strategies.colossalai_booster import gemini_chunk_search

    assert gemini_chunk_search(437_760) == {"min_chunk_size_m": 437_760 / 4 / 2**20,
                                            "search_range_m": 437_760 / 4 / 2**20}
    assert gemini_chunk_search(124_000_000)["min_chunk_size_m"] == pytest.approx(29.56, abs=0.01)
    assert gemini_chunk_search(1_000_000_000) == {"min_chunk_size_m": 32.0, "search_range_m": 32.0}

"""The report command: what it renders from stored runs, and what it does with missing, corrupt or partial ones."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.__main__ import main
from parabench.report import document, figures, tables
from parabench.report.runs import ReportError, load, newest, resolve

REPO = Path(__file__).resolve().parents[1]
HARDWARE = {"cpu": "Test CPU", "cpu_capability": "AVX2", "cpu_count": 2, "device": "cpu"}
VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu"}


def case_benchmark(strategy: str, world_size: int = 2, batch: int = 32, group: str = "vit_digits",
                   step_ms: float = 10.0, peak: int = 1_000_000, losses=None, test: str = "test_train") -> dict:
    """A stored benchmark as ``run_case`` records it (the keys the report and the gate read)."""
    case = {"strategy": strategy, "optimizer": "adamw", "workload": "vit-digits", "world_size": world_size,
            "precision": "fp32", "global_batch": batch if group == "batch_size_sweep" else None, "grad_accum": 1,
            "warmup_steps": 2, "steps": 20, "seed": 0, "options": {}}
    parts = [strategy, "adamw", "vit_digits", f"w{world_size}", "fp32"] + ([f"b{batch}"] if case["global_batch"] else [])
    case["id"] = "-".join(parts)
    steps = [step_ms / 1e3 * (1 + 0.01 * (i % 3)) for i in range(20)]
    losses = losses or [2.3 - 0.01 * i for i in range(22)]
    info = {"case": case, "loss": losses, "step_seconds": steps, "global_batch": batch,
            "samples_per_second": batch / statistics.median(steps),
            "state_bytes": [{"params": 100, "grads": 100, "optimizer": 200, "master": 0, "total": 400_000}] * world_size,
            "peak_allocated_bytes": [peak] * world_size, "cuda_max_reserved_bytes": [None] * world_size,
            "rss_bytes": [{"rss": 1, "max_rss": 1}] * world_size, "calibration_seconds": 0.004,
            "fingerprint": "f", "format": 1, "world_size": world_size, "device": "cpu", "backend": "gloo",
            "threads_per_rank": 1, "pinned": True, "versions": VERSIONS, "hardware": HARDWARE, "injected": None}
    name = f"{test}[{case['id']}]"
    return {"name": name, "fullname": f"bench/test_x.py::{name}", "group": group, "extra_info": info}


def write_run(path: Path, benchmarks: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"datetime": "2026-11-21T10:00:00", "benchmarks": benchmarks}))
    return path


@pytest.fixture
def sweep_run(tmp_path) -> Path:
    benchmarks = [case_benchmark(strategy, 1 if strategy == "single" else 2, batch, "batch_size_sweep",
                                 step_ms=batch / (2.0 if strategy == "single" else 3.0))
                  for strategy in ("single", "torch-ddp") for batch in (8, 32, 128)]
    benchmarks += [case_benchmark(s, 1 if s == "single" else 2) for s in ("single", "torch-ddp", "torch-fsdp")]
    return write_run(tmp_path / "store" / "machine" / "0001_sweep.json", benchmarks)


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_a_run_renders_tables_csv_and_figures(sweep_run, tmp_path):
    out = tmp_path / "out"
    assert main(["report", str(sweep_run), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    for figure in ("batch_sweep_throughput.png", "batch_sweep_memory.png", "memory_strategies_vit_digits.png",
                   "loss_strategies_vit_digits.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({figure})" in markdown
    assert "machine: Test CPU, AVX2 (2 CPUs) · cpu/gloo" in markdown
    # Throughput per strategy × batch: the batch over the median step, per cell.
    rows = {row["case"]: row for row in read_csv(out / "batch_sweep_throughput.csv")}
    assert set(rows) == {"single-adamw-vit_digits-w1-fp32", "torch-ddp-adamw-vit_digits-w2-fp32"}
    median = statistics.median([128 / 3.0 / 1e3 * (1 + 0.01 * (i % 3)) for i in range(20)])
    assert float(rows["torch-ddp-adamw-vit_digits-w2-fp32"]["global batch 128"]) == pytest.approx(128 / median)
    # Speed-up over one process on the same batch, in the strategy table.
    strategies = {row["strategy"]: row for row in read_csv(out / "strategies_vit_digits.csv")}
    assert float(strategies["single-w1"]["× single"]) == pytest.approx(1.0)
    assert set(strategies) == {"single-w1", "torch-ddp-w2", "torch-fsdp-w2"}
    # Time for N steps sums the first N measured steps.
    every = {row["case"]: row for row in read_csv(out / "cases.csv")}
    steps = [8 / 2.0 / 1e3 * (1 + 0.01 * (i % 3)) for i in range(20)]
    assert float(every["single-adamw-vit_digits-w1-fp32-b8"]["time for 20 steps (s)"]) == pytest.approx(sum(steps))


def test_the_newest_stored_run_renders(tmp_path):
    run = load(newest(REPO / "baselines"))
    out = document.render(run, tmp_path / "report", steps=20)
    assert "(2 CPUs)" in (out / "report.md").read_text() and list(out.glob("*.csv"))
    # and the newest whole-profile run (a newer one may hold a few re-recorded cases) with its strategy tables
    from parabench.gate.baselines import discover

    whole = [r for r in discover(REPO / "baselines") if len(r.benchmarks) >= 100][-1]
    out = document.render(load(whole.path), tmp_path / "whole", steps=20)
    assert "## Strategies on" in (out / "report.md").read_text()
    assert list(out.glob("*.png")) and list(out.glob("*.csv"))


def test_two_runs_are_compared_with_the_gates_verdicts(sweep_run, tmp_path):
    now = json.loads(sweep_run.read_text())
    fatter = next(b for b in now["benchmarks"] if b["name"] == "test_train[torch-fsdp-adamw-vit_digits-w2-fp32]")
    fatter["extra_info"]["peak_allocated_bytes"] = [2_000_000, 2_000_000]
    later = write_run(sweep_run.with_name("0002_fatter.json"), now["benchmarks"])
    out = tmp_path / "compared"
    assert main(["report", str(sweep_run), str(later), "--out", str(out),
                 "--policy", str(REPO / "baselines" / "policy.toml")]) == 0
    markdown = (out / "report.md").read_text()
    assert "1 case(s) REGRESSED" in markdown
    rows = {row["case"]: row for row in read_csv(out / "baseline_vs_now.csv")}
    assert rows["test_train[torch-fsdp-adamw-vit_digits-w2-fp32]"]["verdict"] == "regressed"
    assert "peak_allocated_bytes" in rows["test_train[torch-fsdp-adamw-vit_digits-w2-fp32]"]["why (worst metric)"]
    # One stored run says nothing of its own spread: under the committed policy (min_runs = 2) time is unjudged.
    assert rows["test_train[torch-ddp-adamw-vit_digits-w2-fp32]"]["verdict"] == "unjudged"
    assert (out / "comparison.png").exists() and (out / "gate_rows.csv").exists()
    one_run = tmp_path / "policy-one-run.toml"
    one_run.write_text((REPO / "baselines" / "policy.toml").read_text().replace("min_runs = 2", "min_runs = 1"))
    slower = json.loads(sweep_run.read_text())
    for bench in slower["benchmarks"]:
        bench["extra_info"]["step_seconds"] = [2 * s for s in bench["extra_info"]["step_seconds"]]
    later = write_run(sweep_run.with_name("0003_slower.json"), slower["benchmarks"])
    for time, verdict in (("judge", "regressed"), ("report", "unchanged")):
        out = tmp_path / f"slower-{time}"
        assert main(["report", "1", "3", "--storage", str(sweep_run.parents[1]), "--out", str(out),
                     "--time", time, "--policy", str(one_run)]) == 0
        rows = {row["case"]: row for row in read_csv(out / "baseline_vs_now.csv")}
        assert rows["test_train[torch-ddp-adamw-vit_digits-w2-fp32]"]["verdict"] == verdict
        assert rows["test_train[torch-ddp-adamw-vit_digits-w2-fp32]"]["Δ step"] == "1.0"


def test_runs_are_found_by_number_or_name(sweep_run):
    storage = sweep_run.parents[1]
    assert resolve("1", storage) == resolve("0001", storage) == resolve("sweep", storage) == sweep_run
    with pytest.raises(ReportError, match=r"RUN '9'.*no stored run.*0001_sweep\.json"):
        resolve("9", storage)


def test_a_missing_run_file_is_named_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "0042_gone.json"), "--out", str(out)]) == 2
    assert "0042_gone.json: no such file" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, says", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: text.replace('"loss"', '"loss_renamed"'), "lacks loss"),
    (lambda text: '{"benchmarks": []}', "holds no parabench result"),
])
def test_a_corrupt_run_is_named_and_the_old_report_survives(sweep_run, tmp_path, capsys, damage, says):
    out = tmp_path / "out"
    assert main(["report", str(sweep_run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = sweep_run.with_name("0002_broken.json")
    broken.write_text(damage(sweep_run.read_text()))
    assert main(["report", str(broken), "--out", str(out), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert "0002_broken.json" in error and says in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]


def test_a_failure_while_rendering_leaves_no_half_report(sweep_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["report", str(sweep_run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(figures, "loss_curves", full_disk)
    with pytest.raises(OSError, match="No space left"):
        main(["report", str(sweep_run), "--out", str(out), "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]  # no staging directory left


def test_an_existing_report_is_replaced_only_when_asked(sweep_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["report", str(sweep_run), "--out", str(out)]) == 2
    assert "exists and is not replaced; pass --overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"


@settings(max_examples=50, deadline=None)
@given(steps=st.integers(1, 400), batch=st.integers(1, 64), examples=st.integers(1, 2000))
def test_epochs_split_the_steps_in_order(steps, batch, examples):
    converge = {"loss": [float(i) for i in range(steps)], "train_examples": examples, "global_batch": batch,
                "evaluations": [[s, s / steps] for s in range(10, steps + 1, 10)]}
    epochs = tables.per_epoch(converge)
    numbers = [e for e, _, _ in epochs]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    if batch <= examples:  # every epoch has a step that starts in it, up to the last step's
        assert numbers == list(range(1, (steps - 1) * batch // examples + 2))
    first = min(steps, -(-examples // batch))  # the steps that start in epoch 1
    assert epochs[0][1] == pytest.approx(statistics.fmean(range(first)))
    assert [loss for _, loss, _ in epochs] == sorted(loss for _, loss, _ in epochs)  # the losses rise with the step


def test_the_seeds_plugin_table_takes_each_plugin_in_its_precision(tmp_path):
    def plugin(strategy, precision, options=None, steps=20):
        bench = case_benchmark(strategy, group="colossalai")
        case = bench["extra_info"]["case"]
        case.update(precision=precision, options=options or {}, steps=steps)
        case["id"] = f"{strategy}-adamw-vit_digits-w2-{precision}" + "".join(f"-{k}{v}" for k, v in (options or {}).items())
        bench["extra_info"]["step_seconds"] = bench["extra_info"]["step_seconds"][:1] * steps
        bench["name"] = f"test_train[{case['id']}]"
        return bench

    benchmarks = [case_benchmark("single", 1), plugin("colossalai-torch-ddp", "fp32"),
                  plugin("colossalai-torch-ddp", "bf16"), plugin("colossalai-lowlevelzero2", "bf16"),
                  plugin("colossalai-lowlevelzero2", "fp32"), plugin("colossalai-gemini", "bf16"),
                  plugin("colossalai-gemini", "bf16", {"shard": 0.5}), plugin("colossalai-hybrid", "fp32", {"tp": 2})]
    run = load(write_run(tmp_path / "store" / "machine" / "0001_seeds.json", benchmarks))
    chosen = [(label, record.id) for label, record in tables.seed_plugins(run)]
    assert chosen == [("torch_ddp (fp32)", "colossalai-torch-ddp-adamw-vit_digits-w2-fp32"),
                      ("torch_ddp with mixed precision (bf16)", "colossalai-torch-ddp-adamw-vit_digits-w2-bf16"),
                      ("low_level_zero (bf16)", "colossalai-lowlevelzero2-adamw-vit_digits-w2-bf16"),
                      ("gemini (bf16)", "colossalai-gemini-adamw-vit_digits-w2-bf16"),
                      ("hybrid_parallel (fp32)", "colossalai-hybrid-adamw-vit_digits-w2-fp32-tp2")]
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "store" / "machine" / "0001_seeds.json"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## The seeds' ColossalAI plugins" in text and "| gemini (bf16)" in text and "not in this run" not in text


def test_the_scaling_module_gets_its_table_and_figure(tmp_path):
    psi = 1000
    benchmarks = []
    for strategy, sharded in (("torch-ddp", False), ("deepspeed-zero3", True)):
        for n in (1, 2, 4):
            bench = case_benchmark(strategy, n, test="test_scaling")
            per_rank = 16 * psi // (n if sharded else 1)
            bench["extra_info"] |= {
                "parameters": psi,
                "state_bytes": [{"params": 0, "grads": 0, "optimizer": 0, "master": 0, "total": per_rank}] * n,
                "state_bytes_expected": [{"params": 0, "grads": 0, "optimizer": 0, "master": 0, "total": per_rank}] * n,
                "comm": [{"all_reduce": {"calls": 1, "bytes": 4 * psi, "bus_bytes": 2 * (n - 1) * 4 * psi // n,
                                         "group_sizes": [n]}}] * n,
                "flops": [6 * psi * 64 // n] * n}
            benchmarks.append(bench)
    run = write_run(tmp_path / "store" / "m" / "0001_scaling.json", benchmarks)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    rows = read_csv(tmp_path / "out" / "scaling.csv")
    assert [(r["strategy"], r["N"]) for r in rows] == [("deepspeed-zero3", "1"), ("deepspeed-zero3", "2"),
                                                      ("deepspeed-zero3", "4"), ("torch-ddp", "1"),
                                                      ("torch-ddp", "2"), ("torch-ddp", "4")]
    assert {r["state × N (MB)"] for r in rows[:3]} == {str(16 * psi)}  # sharded: flat over N
    assert [r["state × N (MB)"] for r in rows[3:]] == [str(16 * psi * n) for n in (1, 2, 4)]
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 10_000
    assert "## Model size × world size" in (tmp_path / "out" / "report.md").read_text()


def test_the_costs_table_gives_each_deviation_from_the_papers_formula_its_computed_term_or_names_a_finding(tmp_path):
    psi, n = 69_194, 2  # vit-digits' Ψ: the terms are computed from its parameters' shapes
    held = {"torch-ddp": [(4 * psi, 4 * psi, 8 * psi, 0)] * n,  # as the paper's formula: no note
            # FSDP2 as its dim-0 padding predicts ([CLS] token and position embeddings: dim 0 = 1, padded on rank 1)
            "torch-fsdp": [(140_692, 140_692, 281_384, 0), (140_692, 140_692, 272_168, 0)],
            # Adam's state 30 % beyond ZeRO-3's layout: a finding
            "deepspeed-zero3": [(4 * psi // n, 4 * psi // n, 8 * psi // n * 13 // 10, 4 * psi // n)] * n}
    benchmarks = []
    for strategy, ranks in held.items():
        bench = case_benchmark(strategy, n)
        states = [{"params": params, "grads": grads, "optimizer": optimizer, "master": master,
                   "total": params + grads + optimizer + master} for params, grads, optimizer, master in ranks]
        bench["extra_info"] |= {"parameters": psi, "state_bytes": states, "flops": [6 * psi * 64] * n,
                                "comm": [{"all_reduce": {"calls": 1, "bytes": 4 * psi, "bus_bytes": 4 * psi,
                                                         "group_sizes": [n]}}] * n}
        benchmarks.append(bench)
    run = write_run(tmp_path / "store" / "m" / "0001_costs.json", benchmarks)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "- torch-fsdp params +1.7% of the paper's formula; computed term: each parameter's dim 0 padded to a " \
        "multiple of N; after it +0.0%" in text
    finding = "finding (beyond 1 % of the formula with its computed terms, parabench/measure/formulas.py): "
    assert finding + "deepspeed-zero3-adamw-vit_digits-w2-fp32 optimizer +30.0%" in text
    assert "torch-ddp params" not in text and finding + "torch-ddp" not in text and finding + "torch-fsdp" not in text

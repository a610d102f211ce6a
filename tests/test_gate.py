"""The gate's data side: policy file, machine keys, stored runs and the comparison of two runs."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from parabench.gate.baselines import BaselineError, atomic_write, discover, load_run
from parabench.gate.judge import compare
from parabench.gate.keys import machine_key, slug
from parabench.gate.policy import PolicyError, load_policy
from parabench.gate.verdict import Verdict
from parabench.measure.result import RESULT_FORMAT

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "baselines" / "policy.toml")
CASE_ID = "torch-ddp-adamw-gpt2_text-w2-fp32"


def info(step_ms: float = 40.0, state: int = 4_000_000, peak: int = 10_000_000, losses=None, cpu="AMD EPYC",
         isa="AVX512", torch_version="2.13.0+cpu", calibration: float = 0.004, seed: int = 0, **extra) -> dict:
    rng = random.Random(seed)
    return {"format": RESULT_FORMAT,
            "case": {"id": CASE_ID, "precision": "fp32", "world_size": 2, "warmup_steps": 2, "steps": 20},
            "loss": losses or [5.5 - 0.1 * i for i in range(22)],
            "step_seconds": [step_ms / 1e3 * (1 + rng.uniform(-0.03, 0.03)) for _ in range(20)],
            "state_bytes": [{"total": state}, {"total": state}], "peak_allocated_bytes": [peak, peak],
            "cuda_max_reserved_bytes": [None, None], "rss_bytes": [{"max_rss": 9e8}, {"max_rss": 9e8}],
            "calibration_seconds": calibration, "world_size": 2, "device": "cpu", "threads_per_rank": 1,
            "versions": {"python": "3.11.7", "torch": torch_version, "pytest-benchmark": "5.2.3"},
            "hardware": {"cpu": cpu, "cpu_capability": isa, "cpu_count": 2, "device": "cpu"}, "fingerprint": "abc", "injected": None,
            **extra}


def bench(extra_info: dict, name: str = f"test_train[{CASE_ID}]") -> dict:
    return {"name": name, "fullname": f"bench/test_x.py::{name}", "stats": {}, "extra_info": extra_info}


def store(tmp_path: Path, *benches: dict, name: str = "0001_base.json", when: str = "2026-11-01T00:00:00") -> Path:
    path = tmp_path / "Linux-CPython-3.11-64bit" / name
    atomic_write(path, json.dumps({"datetime": when, "benchmarks": list(benches)}).encode())
    return path


def store_twice(tmp_path: Path, *benches: dict) -> None:
    """Two stored runs of the same benchmarks: time is judged against two runs at least (policy min_runs)."""
    store(tmp_path, *benches, name="0001_first.json", when="2026-10-01T00:00:00")
    store(tmp_path, *benches, name="0002_second.json", when="2026-10-02T00:00:00")


def verdicts(report) -> dict[str, Verdict]:
    return {row.metric.split(" (")[0]: row.verdict for row in report.rows}


# --------------------------------------------------------------------------- comparing

def test_an_unchanged_run_is_unchanged_in_every_metric(tmp_path):
    store_twice(tmp_path, bench(info(seed=1)))
    report = compare([bench(info(seed=2))], discover(tmp_path), POLICY)
    assert not report.regressions
    assert verdicts(report) == {"step time": Verdict.UNCHANGED, "state_bytes": Verdict.UNCHANGED,
                                "peak_allocated_bytes": Verdict.UNCHANGED, "rss_bytes": Verdict.INFO,
                                "loss curve": Verdict.UNCHANGED}


@pytest.mark.parametrize("change, metric", [
    (dict(step_ms=52.0), "step time"),
    (dict(state=4_040_000), "state_bytes"),
    (dict(peak=10_100_000), "peak_allocated_bytes"),
    (dict(losses=[5.5 - 0.1 * i for i in range(3)] + [5.5 - 0.099 * i for i in range(3, 22)]), "loss curve"),
])
def test_each_kind_of_regression_is_flagged_in_its_metric(tmp_path, change, metric):
    store_twice(tmp_path, bench(info(seed=1)))
    report = compare([bench(info(seed=2, **change))], discover(tmp_path), POLICY)
    assert [row.metric.split(" (")[0] for row in report.regressions] == [metric]
    if metric == "loss curve":
        assert "diverged at step 3" in report.regressions[0].detail


def test_the_time_basis_decides_whether_machine_drift_counts(tmp_path):
    # The whole machine 30 % slower, the calibration step too.
    store_twice(tmp_path, bench(info(seed=1)))
    now = [bench(info(step_ms=52.0, calibration=0.0052, seed=2))]
    normalized = load_policy(write_policy(tmp_path, 'format = 1\n[time]\nbasis = { cpu = "normalized" }\n'))
    for policy, verdict in ((POLICY, Verdict.REGRESSED), (normalized, Verdict.UNCHANGED)):
        row = next(r for r in compare(now, discover(tmp_path), policy).rows if r.metric.startswith("step time"))
        assert row.verdict is verdict and "machine +30.0%" in row.detail


def time_row(report):
    return next(r for r in report.rows if r.metric.startswith("step time"))


def test_a_noisy_history_raises_the_time_threshold_and_the_row_says_so(tmp_path):
    for i, step_ms in enumerate([40.0, 43.2]):  # stored medians 8 % apart: threshold 1.5 × 8 % = 12 % ≤ max 15 %
        store(tmp_path, bench(info(step_ms=step_ms, seed=i)), name=f"000{i}_r.json", when=f"2026-0{i + 1}-01")
    near = time_row(compare([bench(info(step_ms=46.0, seed=9))], discover(tmp_path), POLICY))
    assert near.verdict is Verdict.UNCHANGED
    assert re.search(r"threshold 1[0-4]% \(policy 8%; 1.5 × the stored runs' spread\)", near.detail), near.detail
    assert re.search(r"medians spread [5-9]\.\d%", near.detail), near.detail
    far = time_row(compare([bench(info(step_ms=52.0, seed=9))], discover(tmp_path), POLICY))
    assert far.verdict is Verdict.REGRESSED and re.search(r"threshold 1[0-4]%", far.detail)


def test_every_judged_time_row_prints_its_threshold(tmp_path):
    store_twice(tmp_path, bench(info(seed=1)))
    assert "threshold 8%" in time_row(compare([bench(info(seed=2))], discover(tmp_path), POLICY)).detail


def test_stored_runs_that_spread_beyond_the_bound_leave_time_unjudged_and_the_gate_fails(tmp_path):
    for i, step_ms in enumerate([40.0, 48.0]):  # medians 20 % apart: 30 % would be needed, the bound is 15 %
        store(tmp_path, bench(info(step_ms=step_ms, seed=i)), name=f"000{i}_r.json", when=f"2026-0{i + 1}-01")
    report = compare([bench(info(step_ms=50.0, seed=9))], discover(tmp_path), POLICY)
    row = time_row(report)
    assert row.verdict is Verdict.UNJUDGED and row.reason == "time-spread" and report.failed
    assert re.search(r"spread (1[7-9]|2[0-3])\.\d%, so the threshold would be \d\d%, above the policy's "
                     r"max_threshold 15%", row.detail), row.detail
    assert "--bench-ab" in row.detail and "--bench-gate-allow=time-spread" in "\n".join(report.unjudged_lines())
    excused = compare([bench(info(step_ms=50.0, seed=9))], discover(tmp_path), POLICY, allowed=["time-spread"])
    assert not excused.failed and excused.excused() == {"time-spread": 1}
    assert "opt-outs used: --bench-gate-allow=time-spread (1 excused)" in excused.unjudged_lines()
    reported = compare([bench(info(step_ms=50.0, seed=9))], discover(tmp_path), POLICY, judge_time=False)
    assert time_row(reported).verdict is Verdict.INFO and not reported.failed
    # the opt-out is said where the log ends, with what it let through
    assert ("opt-outs used: --bench-gate-time=report (1 step-time rows not judged, 1 of them regressed or unjudged "
            "by the policy)") in reported.unjudged_lines()
    # Slower than even the wide threshold the spread sets: a regression, whatever the bound.
    much = time_row(compare([bench(info(step_ms=180.0, seed=9))], discover(tmp_path), POLICY))
    assert much.verdict is Verdict.REGRESSED and "beyond even the wide threshold" in much.detail



def test_the_time_baseline_pools_the_newest_runs_of_the_same_key(tmp_path):
    for i, step_ms in enumerate([10.0, 40.0, 40.5, 39.5]):  # the oldest is beyond history = 3
        store(tmp_path, bench(info(step_ms=step_ms, seed=i)), name=f"000{i}_r.json", when=f"2026-0{i + 1}-01")
    row = next(r for r in compare([bench(info(seed=9))], discover(tmp_path), POLICY).rows
               if r.metric.startswith("step time"))
    assert row.verdict is Verdict.UNCHANGED and "baseline: 3 stored run(s)" in row.detail


def test_time_can_be_reported_without_being_judged(tmp_path):
    store_twice(tmp_path, bench(info(seed=1)))
    report = compare([bench(info(step_ms=80.0, seed=2))], discover(tmp_path), POLICY, judge_time=False)
    row = next(r for r in report.rows if r.metric.startswith("step time"))
    assert row.verdict is Verdict.INFO and row.detail.startswith("reported, not judged: by the policy regressed")
    assert not report.regressions


def test_another_machine_key_is_not_comparable_and_says_what_differs(tmp_path):
    store(tmp_path, bench(info(cpu="Intel Xeon", torch_version="2.12.0+cpu")))
    report = compare([bench(info(step_ms=80.0))], discover(tmp_path), POLICY)
    (row,) = report.rows
    assert row.verdict is Verdict.NOT_COMPARABLE and not report.regressions
    assert "hardware: Intel Xeon, AVX512 (2 CPUs) (stored) vs AMD EPYC, AVX512 (2 CPUs) (now)" in row.detail
    assert "torch 2.12.0+cpu vs 2.13.0+cpu" in row.detail


def test_a_host_with_another_kernel_instruction_set_is_not_comparable(tmp_path):
    """Hosts that all call themselves "AMD EPYC" but run torch's AVX2 kernels instead of AVX-512 ones."""
    store(tmp_path, bench(info(losses=[5.5 - 0.1 * i for i in range(22)])))
    report = compare([bench(info(isa="AVX2", losses=[5.5 - 0.1 * i + 1e-7 for i in range(22)]))],
                     discover(tmp_path), POLICY)
    (row,) = report.rows
    assert row.verdict is Verdict.NOT_COMPARABLE and not report.regressions
    assert "AMD EPYC, AVX512 (2 CPUs) (stored) vs AMD EPYC, AVX2 (2 CPUs) (now)" in row.detail


def test_a_gate_that_judged_nothing_says_so_in_its_summary_and_why(tmp_path):
    store(tmp_path, bench(info()))
    report = compare([bench(info(isa="AVX2"))], discover(tmp_path), POLICY)
    assert report.summary().startswith("parabench gate: NOTHING GATED (1 not comparable")
    assert report.ungated().startswith("NOTHING WAS GATED: no case of this run had a baseline of this machine key: "
                                       "1 not comparable (most often stored under another machine key: hardware: "
                                       "AMD EPYC, AVX512 (2 CPUs) (stored) vs AMD EPYC, AVX2 (2 CPUs) (now))")
    assert "--bench-record" in report.ungated() and report.ungated() in report.to_markdown()
    assert json.loads(report.to_json())["gated_cases"] == 0


def test_a_partly_gated_run_counts_what_was_judged(tmp_path):
    store_twice(tmp_path, bench(info()))
    other = f"test_train[{CASE_ID.replace('adamw', 'sgd')}]"
    report = compare([bench(info()), bench(info(), name=other)], discover(tmp_path), POLICY)
    assert report.summary().startswith("parabench gate: no regression")
    assert report.ungated().startswith("only 1 of 2 cases were gated: 1 without any stored baseline")
    store(tmp_path, bench(info(), name=other), name="0002_more.json", when="2026-11-02T00:00:00")
    assert compare([bench(info()), bench(info(), name=other)], discover(tmp_path), POLICY).ungated() is None


def test_a_baseline_with_forced_kernels_is_judged_on_everything_but_time(tmp_path):
    """AVX2 kernels forced on an AVX-512 host give an AVX2 host's loss bits, not its speed."""
    forced = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    hardware = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cpu_count": 2, "device": "cpu"}
    store_twice(tmp_path, bench(info(isa="AVX2", hardware={**hardware, "kernels_forced": forced})))
    report = compare([bench(info(step_ms=80.0, state=5_000_000, hardware=hardware))], discover(tmp_path), POLICY)
    time, state = report.rows[0], next(r for r in report.rows if r.metric == "state_bytes")
    assert time.verdict is Verdict.INFO and "ATEN_CPU_CAPABILITY=avx2" in time.detail and "the CPU's own" in time.detail
    assert state.verdict is Verdict.REGRESSED
    same = compare([bench(info(step_ms=80.0, hardware={**hardware, "kernels_forced": forced}))], discover(tmp_path),
                   POLICY)
    assert same.rows[0].verdict is Verdict.REGRESSED  # forced on both sides: the same host's kernels, judged


def test_the_newest_baseline_of_the_same_key_is_used(tmp_path):
    store(tmp_path, bench(info(state=3_000_000)), name="0001_old.json", when="2026-01-01T00:00:00")
    store(tmp_path, bench(info(step_ms=40.0, seed=1)), name="0002_new.json", when="2026-02-01T00:00:00")
    store(tmp_path, bench(info(step_ms=10.0, cpu="Other")), name="0003_other.json", when="2026-03-01T00:00:00")
    report = compare([bench(info(seed=2))], discover(tmp_path), POLICY)
    assert not report.regressions and {r.source for r in report.rows} == {str(tmp_path / "Linux-CPython-3.11-64bit"
                                                                              / "0002_new.json")}


def test_new_and_missing_cases_are_reported_with_how_to_record(tmp_path):
    store(tmp_path, bench(info(), name="test_train[gone]"))
    report = compare([bench(info())], discover(tmp_path), POLICY, expected=["test_train[gone]", f"test_train[{CASE_ID}]"])
    assert {r.name: r.verdict for r in report.rows} == {f"test_train[{CASE_ID}]": Verdict.NEW,
                                                        "test_train[gone]": Verdict.MISSING}
    assert any("--bench-record" in note for note in report.notes)


def test_reports_render_as_json_and_markdown(tmp_path):
    store(tmp_path, bench(info(seed=1)))
    report = compare([bench(info(state=5_000_000, seed=2))], discover(tmp_path), POLICY)
    data = json.loads(report.to_json())
    assert data["regressed"] and data["counts"] == {"regressed": 1}
    assert "### Regressions" in report.to_markdown() and "state_bytes" in report.to_markdown()
    assert "REGRESSED" in report.summary()


# --------------------------------------------------------------------------- keys

def test_keys_ignore_python_patch_releases_and_listed_packages():
    a = machine_key(info(), ignore_packages=["pytest-benchmark"])
    b = machine_key(info(versions={"python": "3.11.9", "torch": "2.13.0+cpu", "pytest-benchmark": "9"}),
                    ignore_packages=["pytest-benchmark"])
    assert a == b and a["versions"] == {"python": "3.11", "torch": "2.13.0+cpu"}


def test_slugs_name_the_machine_class():
    assert slug(info()) == "cpu-amd_epyc-avx512-2cpus"
    assert slug({"hardware": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1}}) == "cuda-nvidia_h100_80gb_hbm3-x1"


# --------------------------------------------------------------------------- stored files

def test_a_corrupt_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "m" / "0001_x.json"
    path.parent.mkdir()
    path.write_text('{"benchmarks": [')
    with pytest.raises(BaselineError, match=r"0001_x\.json: not valid JSON \(line 1"):
        discover(tmp_path)


@pytest.mark.parametrize("content, message", [
    ({"no": "benchmarks"}, "not a pytest-benchmark run"),
    ({"benchmarks": [bench({**info(), "format": 99})]}, "result format 99"),
    ({"benchmarks": [bench(info(injected="slowdown=0.15"))]}, "bench-inject=slowdown=0.15"),
])
def test_unknown_formats_and_perturbed_runs_are_refused(tmp_path, content, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(content))
    with pytest.raises(BaselineError, match=message):
        load_run(path)


def test_atomic_writes_never_replace_unless_asked_and_leave_no_debris(tmp_path):
    path = tmp_path / "a" / "result.json"
    atomic_write(path, b"first")
    with pytest.raises(FileExistsError, match="is not replaced"):
        atomic_write(path, b"second")
    assert path.read_bytes() == b"first"
    atomic_write(path, b"third", overwrite=True)
    assert path.read_bytes() == b"third" and os.listdir(path.parent) == ["result.json"]


# --------------------------------------------------------------------------- policy

def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_overrides_apply_to_matching_cases_only(tmp_path):
    policy = load_policy(write_policy(tmp_path, 'format = 1\n[time]\nthreshold = 0.1\n'
                                                '[[override]]\ncases = "torch-fsdp1-*"\ntime = { threshold = 0.2 }\n'))
    assert policy.rules("torch-fsdp1-sgd-x", "cpu").time.threshold == 0.2
    assert policy.rules("torch-ddp-sgd-x", "cpu").time.threshold == 0.1


@pytest.mark.parametrize("text, message", [
    ("format = 1\n[time]\ntreshold = 0.1\n", "unknown key time.treshold; known here: alpha, basis"),
    ("format = 2\n", "policy format 2 is not known"),
    ("format = 1\n[time]\nbasis = 'fast'\n", "[time] basis = 'fast': takes one of 'absolute', 'normalized'"),
    ("format = 1\n[time]\nthreshold = 3\n", "[time] threshold = 3: takes a number ≥ 0 and < 1"),
    ('format = 1\n[time]\nthreshold = "eight"\n', "[time] threshold = 'eight': takes a number ≥ 0 and < 1 (a fraction"),
    ("format = 1\n[time]\nhistory = 2.5\n", "[time] history = 2.5: takes a whole number ≥ 1"),
    ("format = 1\n[time]\nalpha = true\n", "[time] alpha = True: takes a number > 0 and < 1"),
    ("format = 1\n[time]\nbasis = { cpu = 'fast' }\n", "[time] basis = {'cpu': 'fast'}: takes one of 'absolute'"),
    ("format = 1\n[memory]\npeak_allocated_bytes = { rtol = '1%' }\n",
     "[memory.peak_allocated_bytes] rtol = '1%': takes a number ≥ 0"),
    ("format = 1\n[loss.cpu]\nexact = 'yes'\n", "[loss.cpu] exact = 'yes': takes true or false"),
    ("format = 1\n[cost]\ncomm = { rtol = 'exact' }\n", "[cost.comm] rtol = 'exact': takes a number ≥ 0"),
    ("format = 1\n[cost]\nbytes = { rtol = 0 }\n", "unknown key cost.bytes; known here: comm, flops"),
    ("format = 1\n[key]\nfields = 'device'\n", "[key] fields = 'device': takes a list of strings"),
    ("format = 1\n[[override]]\ncases = 3\n", "[override[0]] cases = 3: takes a case-id pattern"),
    ("format = 1\n[[override]]\ncases = 'x'\nmemory = { state_bytes = { atol = -1 } }\n",
     "[override[0].memory.state_bytes] atol = -1: takes a whole number ≥ 0 (bytes)"),
    ("format = 1\n[[override]]\ntime = { threshold = 0.2 }\n", "override[0] needs cases"),
    ("format = [1\n", "not valid TOML"),
])
def test_a_malformed_policy_names_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(PolicyError, match=re.escape(message)) as error:
        load_policy(write_policy(tmp_path, text))
    assert "policy.toml" in str(error.value)


def test_the_committed_policy_loads():
    rules = POLICY.rules(CASE_ID, "cpu")
    assert rules.loss.exact and rules.memory["rss_bytes"].informational


def test_a_run_saved_while_another_session_takes_its_number_gets_the_next(tmp_path, monkeypatch):
    import logging

    from parabench.gate.baselines import atomic_storage_class

    storage_class = atomic_storage_class()
    storage = storage_class(tmp_path, logging.getLogger("test"), "machine")
    taken = storage.get("0001_mine.json")
    taken.write_text("{}")  # another session's run of the same name, saved after this one counted the files
    counts = iter(["0001"])
    real = storage_class._next_num
    monkeypatch.setattr(storage_class, "_next_num", property(lambda self: next(counts, None) or real.fget(self)))
    storage.save({"benchmarks": []}, "mine")
    assert taken.read_text() == "{}"
    assert json.loads(storage.get("0002_mine.json").read_text()) == {"benchmarks": []}


def test_a_peak_is_judged_against_the_span_of_the_stored_runs(tmp_path):
    # Stored runs of unchanged code whose peak took two values (1.00 and 1.28 MB, as LowLevelZero-2's did).
    for i, peak in enumerate([1_280_000, 1_000_000]):
        store(tmp_path, bench(info(peak=peak, seed=i)), name=f"000{i}_r.json", when=f"2026-0{i + 1}-01")

    def peak_row(peak: int):
        report = compare([bench(info(peak=peak, seed=9))], discover(tmp_path), POLICY)
        return next(r for r in report.rows if r.metric == "peak_allocated_bytes")

    inside = peak_row(1_280_000)  # the older run's value: within the span, though 28 % above the newest
    assert inside.verdict is Verdict.UNCHANGED and "2 stored runs spanned" in inside.detail
    above = peak_row(1_290_000)  # above the highest stored value, and the lowest by more than the 0.2 % tolerance
    assert above.verdict is Verdict.REGRESSED and above.baseline == "1.000 MB" and "over the lowest" in above.detail
    below = peak_row(990_000)
    assert below.verdict is Verdict.IMPROVED and below.baseline == "1.000 MB"


def test_a_peak_tolerance_is_counted_from_the_lowest_stored_run_not_on_top_of_the_span():
    from parabench.gate.policy import BytesRule
    from parabench.gate.verdict import judge_bytes_range

    # ZeRO-3 with accumulation: runs of unchanged code took 12.465 or 14.216 MB, and 15 % is allowed. +30 % on
    # the lower value (16.204 MB) was within 15 % of the higher one, and passed.
    stored, rule = [12_464_692, 14_215_732], BytesRule(rtol=0.15)
    assert judge_bytes_range(stored, round(12_464_692 * 1.30), rule).verdict is Verdict.REGRESSED
    assert judge_bytes_range(stored, 14_215_732, rule).verdict is Verdict.UNCHANGED  # the span itself
    assert judge_bytes_range(stored, round(12_464_692 * 1.14), rule).verdict is Verdict.UNCHANGED
    assert judge_bytes_range(stored, round(12_464_692 * 0.80), rule).verdict is Verdict.IMPROVED


def test_regressions_are_repeated_in_the_last_lines(tmp_path):
    store(tmp_path, bench(info(seed=1)))
    report = compare([bench(info(state=4_040_000, seed=2))], discover(tmp_path), POLICY)
    assert report.regression_lines() == [f"REGRESSED test_train[{CASE_ID}] state_bytes: 4.000 MB -> 4.040 MB "
                                         "(+1.0%; tolerance 0.10%; worst of 2 ranks: rank 0)"]


def test_a_baseline_of_other_library_versions_is_compared_naming_them(tmp_path):
    store_twice(tmp_path, bench(info(seed=1, torch_version="2.12.0+cpu")))
    shifted = [5.5 - 0.1 * i for i in range(5)] + [5.5 - 0.1 * i + 2e-3 for i in range(5, 22)]
    report = compare([bench(info(step_ms=52.0, losses=shifted, seed=2))], discover(tmp_path), POLICY)
    rows = {row.metric.split(" (")[0]: row for row in report.rows}
    assert all("versions differ (torch 2.12.0+cpu → 2.13.0+cpu)" in row.detail for row in rows.values())
    assert rows["step time"].verdict is Verdict.REGRESSED  # did the upgrade make it slower: judged
    assert rows["state_bytes"].verdict is Verdict.UNCHANGED
    curve = rows["loss curve"]  # other versions may round otherwise: shown with where and how much, not judged
    assert curve.verdict is Verdict.INFO and "diverged at step 5" in curve.detail and "max |Δ| 2.00e-03" in curve.detail
    assert any(note.startswith("compared across library versions (torch 2.12.0+cpu → 2.13.0+cpu, stored → now): "
                               "1 case(s)") for note in report.notes)
    equal = load_policy(write_policy(tmp_path, 'format = 1\n[key]\nversions = "equal"\n'))
    (row,) = compare([bench(info(seed=2))], discover(tmp_path), equal).rows
    assert row.verdict is Verdict.NOT_COMPARABLE and "torch 2.12.0+cpu vs 2.13.0+cpu" in row.detail


def test_runs_of_this_runs_versions_are_preferred(tmp_path):
    store(tmp_path, bench(info(seed=1, state=3_000_000)), name="0001_same.json", when="2026-01-01T00:00:00")
    store(tmp_path, bench(info(seed=2, torch_version="2.12.0+cpu")), name="0002_older_torch.json",
          when="2026-02-01T00:00:00")
    report = compare([bench(info(seed=3, state=3_000_000))], discover(tmp_path), POLICY)
    assert not report.regressions and not report.notes
    assert {row.source for row in report.rows} == {str(tmp_path / "Linux-CPython-3.11-64bit" / "0001_same.json")}


def test_the_ab_table_is_checked_and_builds_the_paired_rule(tmp_path):
    assert POLICY.ab_rule().rounds >= 2 and 0 < POLICY.ab_rule().alpha < 1
    with pytest.raises(PolicyError, match=re.escape("[ab] rounds = 1: takes a whole number ≥ 2")):
        load_policy(write_policy(tmp_path, "format = 1\n[ab]\nrounds = 1\n"))
    with pytest.raises(PolicyError, match=re.escape("unknown key ab.round; known here: alpha, rounds, threshold")):
        load_policy(write_policy(tmp_path, "format = 1\n[ab]\nround = 8\n"))


# --------------------------------------------------------------------------- failing closed

HERE = ("cpu", "AMD EPYC, AVX512 (2 CPUs)")


def test_a_store_without_a_baseline_of_this_key_fails_unless_excused(tmp_path):
    report = compare([bench(info())], [], POLICY, machine=HERE)
    assert report.nothing_gated and report.failed and "NOTHING GATED" in report.summary()
    assert any("--bench-gate-allow=nothing-gated" in line for line in report.unjudged_lines())
    excused = compare([bench(info())], [], POLICY, machine=HERE, allowed=["nothing-gated"])
    assert not excused.failed and excused.excused() == {"nothing-gated": 1}
    assert "excused: --bench-gate-allow=nothing-gated" in excused.summary()


def test_an_empty_selection_is_nothing_gated(tmp_path):
    store(tmp_path, bench(info()))
    assert compare([], discover(tmp_path), POLICY, machine=HERE).failed


def test_a_case_skipped_for_a_missing_package_with_a_baseline_here_is_unjudged(tmp_path):
    store_twice(tmp_path, bench(info()), bench(info(), name="test_train[deepspeed-zero3-adamw-gpt2_text-w2-fp32]"))
    skipped = {"test_train[deepspeed-zero3-adamw-gpt2_text-w2-fp32]": "deepspeed-zero3 needs the package 'deepspeed'"}
    report = compare([bench(info())], discover(tmp_path), POLICY, machine=HERE, skipped=skipped)
    row = next(r for r in report.rows if r.verdict is Verdict.UNJUDGED)
    assert row.reason == "skipped" and "needs the package 'deepspeed'" in row.detail and report.failed
    assert "1 case(s) UNJUDGED" in report.summary() and not report.regressions
    assert not compare([bench(info())], discover(tmp_path), POLICY, machine=HERE, skipped=skipped,
                       allowed=["skipped"]).failed


def test_a_skip_without_a_baseline_on_this_machine_is_not_held_against_the_run(tmp_path):
    store_twice(tmp_path, bench(info()), bench(info(isa="AVX2"), name="test_train[gpu-only]"))
    report = compare([bench(info())], discover(tmp_path), POLICY, machine=HERE,
                     skipped={"test_train[gpu-only]": "needs a CUDA device"})
    assert not report.failed and all(r.verdict is not Verdict.UNJUDGED for r in report.rows)


def test_a_missing_case_with_a_baseline_here_fails(tmp_path):
    store_twice(tmp_path, bench(info()), bench(info(), name="test_train[gone]"))
    report = compare([bench(info())], discover(tmp_path), POLICY, expected=["test_train[gone]", f"test_train[{CASE_ID}]"],
                     machine=HERE)
    assert [r.reason for r in report.unjudged] == ["missing"] and report.failed
    assert not compare([bench(info())], discover(tmp_path), POLICY, machine=HERE, allowed=["missing"],
                       expected=["test_train[gone]", f"test_train[{CASE_ID}]"]).failed


def test_a_baseline_here_under_other_settings_fails_as_not_comparable(tmp_path):
    store_twice(tmp_path, bench(info()), bench(info(), name="test_train[other]"))
    shorter = info(case={"id": CASE_ID, "precision": "fp32", "world_size": 2, "warmup_steps": 2, "steps": 5})
    report = compare([bench(info(), name="test_train[other]"), bench(shorter)], discover(tmp_path), POLICY,
                     machine=HERE)
    (row,) = report.unjudged
    assert row.verdict is Verdict.NOT_COMPARABLE and row.reason == "not-comparable" and "steps" in row.detail
    assert report.failed


def test_a_metric_the_baseline_has_and_this_run_lacks_is_unjudged(tmp_path):
    comm = [{"all_reduce": {"calls": 1, "bytes": 8, "bus_bytes": 8, "group_sizes": [2]}}] * 2
    store_twice(tmp_path, bench(info(comm=comm, flops=[100, 100], parity={"max_abs_difference": 0.0, "first_divergence": None,
                                                                    "reference": "single", "atol": 1e-5, "rtol": 0})))
    lacking = info(peak=None)
    lacking["peak_allocated_bytes"] = []
    report = compare([bench(lacking)], discover(tmp_path), POLICY, machine=HERE)
    assert {r.metric: r.reason for r in report.unjudged} == {
        "peak_allocated_bytes": "metric-missing", "comm bus bytes": "metric-missing", "flops": "metric-missing",
        "parity": "metric-missing"}
    assert report.failed and not report.regressions


def test_costs_are_judged_against_the_newest_run_that_counted_them(tmp_path):
    def comm(calls):
        return [{"all_reduce": {"calls": calls, "bytes": 8 * calls, "bus_bytes": 8 * calls, "group_sizes": [2]}}] * 2

    store(tmp_path, bench(info(comm=comm(1), flops=[100, 100])), name="0001_counted.json", when="2026-01-01")
    store(tmp_path, bench(info(seed=3)), name="0002_uncounted.json", when="2026-02-01")
    report = compare([bench(info(comm=comm(2), flops=[100, 100]))], discover(tmp_path), POLICY, machine=HERE)
    rows = {r.metric: r for r in report.rows}
    assert rows["comm bus bytes"].verdict is Verdict.REGRESSED and "0001_counted.json" in rows["comm bus bytes"].detail
    assert rows["flops"].verdict is Verdict.UNCHANGED


def test_a_baseline_without_counts_says_so_in_its_row(tmp_path):
    store(tmp_path, bench(info()))
    report = compare([bench(info(flops=[100, 100]))], discover(tmp_path), POLICY, machine=HERE)
    row = next(r for r in report.rows if r.metric == "flops")
    assert row.verdict is Verdict.INFO and "none of the 1 stored run(s) of this key counted it" in row.detail


def test_an_unknown_opt_out_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown --bench-gate-allow reason.*known: nothing-gated, missing"):
        compare([], [], POLICY, allowed=["everything"])


def test_a_metric_measured_another_way_in_the_baseline_is_not_compared_but_unjudged(tmp_path):
    store_twice(tmp_path, bench(info(peak=5_000_000)))  # stored before results said how they measured (version 1)
    now = info(peak=10_000_000, state=4_000_000, measures={"peak_allocated_bytes": 2, "state_bytes": 1})
    report = compare([bench(now)], discover(tmp_path), POLICY, machine=HERE)
    rows = {r.metric: r for r in report.rows}
    assert rows["peak_allocated_bytes"].verdict is Verdict.UNJUDGED and rows["peak_allocated_bytes"].reason == "remeasured"
    assert "version 1, now 2" in rows["peak_allocated_bytes"].detail and not report.regressions
    assert rows["state_bytes"].verdict is Verdict.UNCHANGED and report.failed
    assert not compare([bench(now)], discover(tmp_path), POLICY, machine=HERE, allowed=["remeasured"]).failed


def test_the_peak_range_pools_only_runs_measured_the_same_way(tmp_path):
    versions = {"peak_allocated_bytes": 2, "state_bytes": 2}
    store(tmp_path, bench(info(peak=20_000_000)), name="0001_old.json", when="2026-01-01")
    store(tmp_path, bench(info(peak=10_000_000, measures=versions)), name="0002_new.json", when="2026-02-01")
    report = compare([bench(info(peak=15_000_000, measures=versions))], discover(tmp_path), POLICY, machine=HERE)
    peak = next(r for r in report.rows if r.metric == "peak_allocated_bytes")
    assert peak.verdict is Verdict.REGRESSED  # not within the 10-20 MB span the old run would have opened


def test_peaks_are_compared_highest_to_highest_since_which_rank_peaks_highest_can_change(tmp_path):
    swapped = info()
    store_twice(tmp_path, bench(info(peak_allocated_bytes=[14_216_000, 12_465_000])))
    swapped["peak_allocated_bytes"] = [12_465_000, 14_216_000]
    row = next(r for r in compare([bench(swapped)], discover(tmp_path), POLICY).rows
               if r.metric == "peak_allocated_bytes")
    assert row.verdict is Verdict.UNCHANGED and "highest of 2 ranks' peaks" in row.detail
    both = info()
    both["peak_allocated_bytes"] = [14_216_000, 14_216_000]  # the second rank now peaks as high as the first
    row = next(r for r in compare([bench(both)], discover(tmp_path), POLICY).rows
               if r.metric == "peak_allocated_bytes")
    assert row.verdict is Verdict.REGRESSED and "2nd highest" in row.detail


def test_a_package_the_stored_run_did_not_record_is_not_a_version_change():
    from parabench.gate.judge import version_changes

    # Runs stored before versions were recorded by distribution name have no scikit-learn entry: their loss
    # curves must stay judged, not become "compared across versions".
    assert version_changes({"torch": "2.13.0"}, {"torch": "2.13.0", "scikit-learn": "1.9.1"}) == ""
    assert version_changes({"scikit-learn": "1.8.0"}, {"scikit-learn": "1.9.1"}) == "scikit-learn 1.8.0 → 1.9.1"
    assert version_changes({"deepspeed": "0.19.8"}, {}) == "deepspeed 0.19.8 → absent"

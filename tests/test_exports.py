"""CI outputs: the benchmark-tracker exports, the job summary and the JUnit properties.

The two export formats are checked against the formats' own published examples and schemas (below, as data), by
one checker for both the example and what parabench writes, so a checker too loose or too strict for the published
example fails here too. The exports are built from a stored run (fast); one subprocess session runs a real case
with every output on, from the command line.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from parabench.gate.baselines import load_run
from parabench.gate.exports import (
    EXPORTERS,
    ExportError,
    bencher,
    benchmark_action,
    headline,
    headlines,
    parse_exports,
    write_exports,
)
from parabench.gate.report import GateReport, Row
from parabench.gate.step_summary import STEP_SUMMARY_LIMIT, append_step_summary
from parabench.gate.verdict import Verdict

REPO = Path(__file__).resolve().parents[1]

# --- the formats, as their projects publish them -------------------------------------------------------------------

# github-action-benchmark (benchmark-action/github-action-benchmark), test/data/extract/customSmallerIsBetter_output.txt:
# the input its `customSmallerIsBetter` tool reads.
BENCHMARK_ACTION_EXAMPLE = json.loads("""
[
    {
        "name": "My Custom Smaller Is Better Benchmark - CPU Load",
        "unit": "Percent",
        "value": 50,
        "range": "5%",
        "extra": "My Optional Information for the tooltip"
    },
    {
        "name": "My Custom Smaller Is Better Benchmark - Memory Used",
        "unit": "Megabytes",
        "value": 100
    }
]
""")
# The same project's src/extract.ts: `interface BenchmarkResult { name: string; value: number; range?: string;
# unit: string; extra?: string; }`, a list of them per file, and a file with none is an error ("No benchmark result
# was found"). As a schema:
BENCHMARK_ACTION_SCHEMA = {
    "type": "array", "minItems": 1,
    "items": {"type": "object", "required": ["name", "unit", "value"],
              "properties": {"name": {"type": "string"}, "value": {"type": "number"}, "unit": {"type": "string"},
                             "range": {"type": "string"}, "extra": {"type": "string"}}},
}

# Bencher (bencherdev/bencher), the Bencher Metric Format reference (docs, "Bencher Metric Format (BMF)"): its example
# and its JSON schema (https://bencher.dev/bmf.json).
BMF_EXAMPLE = json.loads("""
{
    "benchmark_name": {
        "latency": {"value": 88.0, "lower_value": 87.42, "upper_value": 88.88},
        "throughput": {"value": 5.55, "lower_value": 3.14, "upper_value": 6.30}
    },
    "/bin/sh -c ./my_build_script.sh": {"build-time": {"value": 87.0}},
    "my_binary": {"file-size": {"value": 42.0}}
}
""")
BMF_SCHEMA = json.loads("""
{
    "$id": "https://bencher.dev/bmf.json",
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "patternProperties": {
        ".+": {
            "type": "object",
            "patternProperties": {
                ".+": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "number"},
                        "lower_value": {"type": "number"},
                        "upper_value": {"type": "number"}
                    },
                    "required": ["value"]
                }
            }
        }
    }
}
""")
# The same reference: a benchmark name is at most 1024 characters, a measure's slug or name at most 64.
BMF_NAME_MAX, BMF_MEASURE_MAX = 1024, 64


def problems(instance, schema: dict, where: str = "$") -> list[str]:
    """What in ``instance`` breaks ``schema``: the part of JSON schema (draft 7) the two schemas above use."""
    kinds = {"object": dict, "array": list, "string": str, "number": (int, float)}
    kind = schema.get("type")
    if kind and (not isinstance(instance, kinds[kind]) or isinstance(instance, bool)):
        return [f"{where}: {type(instance).__name__}, not {kind}"]
    found = []
    if isinstance(instance, dict):
        found += [f"{where}: lacks {key!r}" for key in schema.get("required", []) if key not in instance]
        for key, value in instance.items():
            if key in schema.get("properties", {}):
                found += problems(value, schema["properties"][key], f"{where}.{key}")
            for pattern, sub in schema.get("patternProperties", {}).items():
                if re.search(pattern, key):
                    found += problems(value, sub, f"{where}[{key!r}]")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            found.append(f"{where}: {len(instance)} items, fewer than {schema['minItems']}")
        for i, item in enumerate(instance):
            found += problems(item, schema.get("items", {}), f"{where}[{i}]")
    return found


def check_benchmark_action(data) -> None:
    assert problems(data, BENCHMARK_ACTION_SCHEMA) == []
    names = [entry["name"] for entry in data]
    assert len(names) == len(set(names)), "the action keys its charts by name"


def check_bencher(data) -> None:
    assert problems(data, BMF_SCHEMA) == []
    for name, measures in data.items():
        assert len(name) <= BMF_NAME_MAX and all(len(slug) <= BMF_MEASURE_MAX for slug in measures)
        for metric in measures.values():
            if "lower_value" in metric:
                assert metric["lower_value"] <= metric["value"] <= metric["upper_value"]


def test_the_checker_takes_the_published_examples_and_refuses_what_they_would():
    check_benchmark_action(BENCHMARK_ACTION_EXAMPLE)
    check_bencher(BMF_EXAMPLE)
    assert problems([{"name": "x", "unit": "s", "value": "50"}], BENCHMARK_ACTION_SCHEMA)  # a string value
    assert problems([{"name": "x", "value": 50}], BENCHMARK_ACTION_SCHEMA)                 # no unit
    assert problems([], BENCHMARK_ACTION_SCHEMA)                                            # nothing found
    assert problems({"b": {"latency": {"lower_value": 1.0}}}, BMF_SCHEMA)                  # no value
    assert problems({"b": {"latency": {"value": True}}}, BMF_SCHEMA)
    assert problems([{"b": {}}], BMF_SCHEMA)


def test_the_checker_agrees_with_jsonschema_where_it_is_installed():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(BENCHMARK_ACTION_EXAMPLE, BENCHMARK_ACTION_SCHEMA)
    jsonschema.validate(BMF_EXAMPLE, BMF_SCHEMA)
    ours = stored_benchmarks()
    jsonschema.validate(benchmark_action(headlines(ours)), BENCHMARK_ACTION_SCHEMA)
    jsonschema.validate(bencher(headlines(ours)), BMF_SCHEMA)


# --- the exports of a stored run -----------------------------------------------------------------------------------

def stored_run():
    """The newest committed run (pytest-benchmark's JSON under baselines/)."""
    newest = max(REPO.glob("baselines/*/*.json"), key=lambda path: path.name)
    return json.loads(newest.read_text()), load_run(newest)


def stored_benchmarks() -> tuple[dict, ...]:
    return stored_run()[1].benchmarks


def expected_numbers(bench: dict) -> dict:
    """A case's headline numbers worked out here from its stored result, independently of the exporter."""
    info = bench["extra_info"]
    return {"median": statistics.median(info["step_seconds"]), "min": min(info["step_seconds"]),
            "max": max(info["step_seconds"]), "peak": max(p for p in info["peak_allocated_bytes"] if p is not None),
            "state": max(rank["total"] for rank in info["state_bytes"]),
            "bus": max(sum(c["bus_bytes"] for c in rank.values()) for rank in info["comm"]),
            "flops": max(info["flops"]), "loss": info["loss"][-1]}


def test_both_exports_of_a_stored_run_match_their_formats_and_its_numbers():
    raw, run = stored_run()
    cases = [b for b in raw["benchmarks"] if "case" in b["extra_info"]]
    action, bmf = benchmark_action(headlines(run.benchmarks)), bencher(headlines(run.benchmarks))
    check_benchmark_action(action)
    check_bencher(bmf)
    assert len(action) == 5 * len(cases) and len(bmf) == len(cases)
    by_name = {entry["name"]: entry for entry in action}
    ddp = next(b for b in cases if "torch-ddp-adamw-mlp_digits-w2-fp32" in b["name"])
    want = expected_numbers(ddp)
    name = ddp["name"]
    # The step time is pytest-benchmark's own median of the same steps.
    assert by_name[f"{name} - step time"]["value"] == pytest.approx(ddp["stats"]["median"], rel=1e-12)
    assert by_name[f"{name} - step time"] == {
        "name": f"{name} - step time", "unit": "s", "value": want["median"],
        "range": f"± {max(want['median'] - want['min'], want['max'] - want['median']):.6g}",
        "extra": f"median of {len(ddp['extra_info']['step_seconds'])} measured steps (the slowest rank's); "
                 f"min {want['min']:.6g} s, max {want['max']:.6g} s"}
    for measure, unit, key in (("peak", "bytes", "peak"), ("state", "bytes", "state"),
                               ("bus bytes per step", "bytes", "bus"), ("FLOPs per step", "FLOPs", "flops")):
        assert (by_name[f"{name} - {measure}"]["unit"], by_name[f"{name} - {measure}"]["value"]) == (unit, want[key])
    assert want["bus"] > 0 and want["flops"] > 0  # a two-rank DDP step all-reduces and multiplies
    assert bmf[name] == {
        "latency": {"value": want["median"] * 1e9, "lower_value": want["min"] * 1e9, "upper_value": want["max"] * 1e9},
        "peak-bytes": {"value": want["peak"]}, "state-bytes": {"value": want["state"]},
        "bus-bytes": {"value": want["bus"]}, "flops": {"value": want["flops"]}}


def test_a_measure_a_result_lacks_is_left_out_not_written_as_zero():
    bench = next(b for b in stored_benchmarks() if "mlp_digits" in b["name"])
    info = {k: v for k, v in bench["extra_info"].items() if k not in ("comm", "flops")}
    info["peak_allocated_bytes"] = [None] * len(info["peak_allocated_bytes"])
    found = headline({"name": "t[x]", "extra_info": info})
    assert (found.bus_bytes, found.flops, found.peak_bytes) == (None, None, None)
    assert [e["name"] for e in benchmark_action([found])] == ["t[x] - step time", "t[x] - state"]
    assert set(bencher([found])["t[x]"]) == {"latency", "state-bytes"}
    assert set(found.properties()) == {"median_step_seconds", "state_bytes", "final_loss"}
    # Not a case (an optimizer-step table), or no step times: nothing to export.
    assert headline({"name": "o", "extra_info": {"steps": 3}}) is None
    assert headline({"name": "t", "extra_info": {**info, "step_seconds": []}}) is None


def test_two_benchmarks_with_one_name_are_told_apart_by_their_full_names():
    bench = next(b for b in stored_benchmarks() if "mlp_digits" in b["name"])
    twins = [{**bench, "fullname": f"bench/test_{i}.py::{bench['name']}"} for i in "ab"]
    assert [h.name for h in headlines(twins)] == [t["fullname"] for t in twins]
    check_benchmark_action(benchmark_action(headlines(twins)))


def test_export_specs_parse_repeated_and_comma_separated_and_a_bad_one_names_the_formats():
    assert parse_exports(["benchmark-action:out/a.json,bencher:out/b.json", " bencher:c.json "]) == [
        ("benchmark-action", "out/a.json"), ("bencher", "out/b.json"), ("bencher", "c.json")]
    assert parse_exports(["benchmark-action:C:/x/a.json"]) == [("benchmark-action", "C:/x/a.json")]
    for bad in ("foo:x", "bencher", "bencher:", "x.json"):
        with pytest.raises(ExportError, match=r"FORMAT:FILE.*benchmark-action.*bencher"):
            parse_exports([bad])
    with pytest.raises(ExportError, match="more than once"):
        parse_exports(["bencher:a.json", "benchmark-action:a.json"])
    assert set(EXPORTERS) == {"benchmark-action", "bencher"}


def test_exports_are_written_whole_over_an_older_file(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text("old")
    written = write_exports([("benchmark-action", "out/a.json"), ("bencher", "b.json")], stored_benchmarks(),
                            root=tmp_path)
    assert [(form, path.name) for form, path, _ in written] == [("benchmark-action", "a.json"), ("bencher", "b.json")]
    check_benchmark_action(json.loads((tmp_path / "out" / "a.json").read_text()))
    check_bencher(json.loads((tmp_path / "b.json").read_text()))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.json", "b.json"]  # no temporary left


# --- the job summary -----------------------------------------------------------------------------------------------

def report(unchanged: int = 3, regressed: int = 1) -> GateReport:
    rows = [Row(f"test_train[case-{i}]", "state bytes", Verdict.UNCHANGED, "1.0 MB", "1.0 MB", 0.0, "exact")
            for i in range(unchanged)]
    rows += [Row(f"test_train[slow-{i}]", "step time", Verdict.REGRESSED, "10.0 ms", "13.0 ms", 0.3, "p=0.001")
             for i in range(regressed)]
    rows.append(Row("test_train[gone]", "case", Verdict.MISSING, "stored", "", None, "no result", reason="missing"))
    return GateReport(rows=rows, notes=["a note"])


def test_the_report_is_appended_after_what_the_summary_held(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    path.write_text("# an earlier step\n\nits table")  # no newline at its end
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
    writes = []
    real_write = os.write
    monkeypatch.setattr("parabench.gate.step_summary.os.write",
                        lambda fd, data: writes.append(len(data)) or real_write(fd, data))
    line = append_step_summary(report(), "reports/gate.md")
    text = path.read_text()
    assert text == "# an earlier step\n\nits table\n\n" + report().to_markdown()
    assert len(writes) == 1 and "the report appended" in line
    assert "## parabench gate: 1 case(s) REGRESSED, 1 case(s) UNJUDGED" in text and "Every case and metric" in text


def test_a_failed_session_says_so_above_a_green_table(tmp_path):
    path = tmp_path / "summary.md"
    green = GateReport(rows=[Row("test_train[a]", "state_bytes", Verdict.UNCHANGED, "1 MB", "1 MB", 0.0, "")])
    append_step_summary(green, "reports/gate.md", path, outcome="pytest: exit 1 (3 passed, 1 failed): the session "
                                                                 "FAILED, whatever the table says")
    text = path.read_text()
    assert text.startswith("**pytest: exit 1 (3 passed, 1 failed): the session FAILED") and "no regression" in text


def test_a_bar_in_a_cell_does_not_split_the_markdown_tables():
    rows = [Row("test_train[a]", "parity", Verdict.REGRESSED, "max |Δ| 2.38e-07", "max |Δ| 1.00e-03", None, "x")]
    markdown = GateReport(rows=rows).to_markdown()
    tables = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(tables) == 6 and "max \\|Δ\\| 2.38e-07" in markdown
    assert {len(re.findall(r"(?<!\\)\|", line)) - 1 for line in tables[:3]} == {6}  # case … why: 6 cells
    assert {len(re.findall(r"(?<!\\)\|", line)) - 1 for line in tables[3:]} == {7}  # and the verdict


def test_no_summary_file_named_no_summary_written(monkeypatch, tmp_path):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary(report(), "reports/gate.md") is None
    assert list(tmp_path.iterdir()) == []


def test_a_report_over_the_limit_goes_in_short_and_says_where_the_whole_one_is(tmp_path):
    path = tmp_path / "summary.md"
    path.write_bytes(b"x" * (STEP_SUMMARY_LIMIT - 64 * 1024) + b"\n")
    big = report(unchanged=3000, regressed=2)
    assert len(big.to_markdown().encode()) > 64 * 1024
    line = append_step_summary(big, "reports/gate.md", path)
    added = path.read_bytes()[STEP_SUMMARY_LIMIT - 64 * 1024 + 2:].decode()  # after the blank line
    assert path.stat().st_size <= STEP_SUMMARY_LIMIT and "short report" in line
    assert added == big.to_markdown(full_report="reports/gate.md")
    assert added.startswith(f"## {big.summary()}")
    for kept in ("### Not judged", "UNJUDGED test_train[gone] case", "### Regressions", "test_train[slow-1]",
                 "The full report, every case and metric: `reports/gate.md`"):
        assert kept in added
    assert "test_train[case-0]" not in added and "Every case and metric</summary>" not in added


def test_even_the_short_report_is_cut_by_lines_to_the_room_left(tmp_path):
    path = tmp_path / "summary.md"
    room = 2000
    path.write_bytes(b"y" * (STEP_SUMMARY_LIMIT - room - 1) + b"\n")
    many = report(unchanged=0, regressed=400)
    append_step_summary(many, "reports/gate.md", path)
    assert STEP_SUMMARY_LIMIT - 200 < path.stat().st_size <= STEP_SUMMARY_LIMIT
    added = path.read_bytes()[STEP_SUMMARY_LIMIT - room + 1:].decode()  # after the blank line
    assert added.startswith(f"## {many.summary()}")
    assert added.endswith("… cut to fit GitHub's 1 MiB step summary; the full report: `reports/gate.md`.\n")
    assert all(line == many.to_markdown(full_report="x").splitlines()[i] for i, line in
               enumerate(added.splitlines()[:-2]))  # whole lines, in order


def test_a_full_summary_is_left_as_it_is_and_the_session_is_told(tmp_path):
    path = tmp_path / "summary.md"
    path.write_bytes(b"z" * (STEP_SUMMARY_LIMIT - 10))
    line = append_step_summary(report(), "reports/gate.md", path)
    assert path.read_bytes() == b"z" * (STEP_SUMMARY_LIMIT - 10)
    assert "NOT written" in line and "reports/gate.md" in line


# --- the options from the command line -----------------------------------------------------------------------------

def pytest_run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_a_bad_export_is_a_usage_error_naming_the_formats():
    result = pytest_run("bench/test_torch_strategies.py", "--collect-only", "-q", "--bench-export=foo:x.json")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "--bench-export=foo:x.json: unknown format 'foo'" in result.stderr
    assert "benchmark-action (github-action-benchmark's customSmallerIsBetter JSON)" in result.stderr
    assert "bencher (Bencher Metric Format (BMF) JSON)" in result.stderr


def test_a_session_without_a_case_result_writes_no_export_and_says_so(tmp_path):
    result = pytest_run("bench/test_torch_strategies.py", "-k", "no_such_case", "-p", "no:cacheprovider",
                        f"--bench-export=bencher:{tmp_path / 'bmf.json'}")
    assert result.returncode == 5, result.stdout + result.stderr  # nothing ran: pytest's own status stays
    assert "exports NOT written: this session produced no case result" in result.stdout
    assert not (tmp_path / "bmf.json").exists()


CASE = "torch-ddp-adamw-mlp_digits-w2-fp32"


def test_one_case_from_the_command_line_writes_every_ci_output(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# an earlier step\n")
    result = pytest_run(
        "bench/test_torch_strategies.py", "-k", f"test_train and {CASE}",
        f"--benchmark-storage=file://{tmp_path / 'store'}", f"--benchmark-json={tmp_path / 'run.json'}",
        "--bench-gate", "--bench-gate-allow=nothing-gated", f"--bench-report={tmp_path / 'reports'}",
        f"--bench-export=benchmark-action:{tmp_path / 'action.json'},bencher:{tmp_path / 'bmf.json'}",
        f"--junitxml={tmp_path / 'junit.xml'}", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout and "incompatible with junit_family" not in result.stdout
    [bench] = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    want = expected_numbers(bench)

    action = json.loads((tmp_path / "action.json").read_text())
    check_benchmark_action(action)
    assert {e["name"]: e["value"] for e in action} == {
        f"{bench['name']} - step time": want["median"], f"{bench['name']} - peak": want["peak"],
        f"{bench['name']} - state": want["state"], f"{bench['name']} - bus bytes per step": want["bus"],
        f"{bench['name']} - FLOPs per step": want["flops"]}
    assert want["median"] == pytest.approx(bench["stats"]["median"], rel=1e-12)
    bmf = json.loads((tmp_path / "bmf.json").read_text())
    check_bencher(bmf)
    assert bmf[bench["name"]]["latency"]["value"] == pytest.approx(want["median"] * 1e9, rel=1e-12)
    assert bmf[bench["name"]]["bus-bytes"]["value"] == want["bus"]

    [case] = ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert float(properties["median_step_seconds"]) == pytest.approx(want["median"], rel=1e-12)
    assert {key: int(properties[key]) for key in ("peak_bytes", "state_bytes", "bus_bytes_per_step",
                                                  "flops_per_step")} == {
        "peak_bytes": want["peak"], "state_bytes": want["state"], "bus_bytes_per_step": want["bus"],
        "flops_per_step": want["flops"]}
    assert float(properties["final_loss"]) == pytest.approx(want["loss"], rel=1e-12)
    assert "parity_max_abs_difference" in properties  # what the case's parity check records, beside them

    gate_md = (tmp_path / "reports" / "gate.md").read_text()
    # The session's own outcome above the report: the table alone cannot say that a test failed.
    assert summary.read_text() == "# an earlier step\n\n**pytest: exit 0 (1 passed)**\n\n" + gate_md
    assert "NOTHING GATED (excused: --bench-gate-allow=nothing-gated)" in gate_md and CASE in gate_md
    for line in ("parabench: CI outputs", f"job summary: the report appended to {summary}",
                 f"export benchmark-action: {tmp_path / 'action.json'} (5 entries)",
                 f"export bencher: {tmp_path / 'bmf.json'} (1 cases)"):
        assert line in result.stdout


# --- the documented workflow ---------------------------------------------------------------------------------------

WORKFLOW = REPO / "docs" / "examples" / "github-workflow.yml"


def workflow_commands() -> list[str]:
    data = yaml.safe_load(WORKFLOW.read_text())
    return [step["run"] for job in data["jobs"].values() for step in job["steps"] if "run" in step]


def test_the_documented_workflow_parses_and_runs_the_gate_on_main_and_an_ab_on_pull_requests():
    data = yaml.safe_load(WORKFLOW.read_text())
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"push", "pull_request", "workflow_dispatch"} and triggers["push"]["branches"] == ["main"]
    commands = " ".join(workflow_commands())
    assert "--bench-gate " in commands and "--bench-ab=origin/${{ github.base_ref }}" in commands
    uses = [step.get("uses", "") for job in data["jobs"].values() for step in job["steps"]]
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    assert any(u.startswith("benchmark-action/github-action-benchmark@") for u in uses)
    assert any(u.startswith("bencherdev/bencher@") for u in uses)
    # What the trackers read is what the exports wrote.
    exported = {path for command in workflow_commands() for value in re.findall(r"--bench-export=(\S+)", command)
                for _, path in parse_exports([value])}
    action = [step["with"] for job in data["jobs"].values() for step in job["steps"]
              if step.get("uses", "").startswith("benchmark-action/")]
    assert action and all(w["tool"] == "customSmallerIsBetter" and w["output-file-path"] in exported for w in action)
    bencher_files = {f for c in workflow_commands() if c.lstrip().startswith("bencher run")
                     for f in re.findall(r"--file (\S+)", c)}
    assert bencher_files and bencher_files <= exported
    assert all("--adapter json" in c for c in workflow_commands() if c.lstrip().startswith("bencher run"))


def test_the_documented_workflow_names_only_options_that_exist():
    result = pytest_run("bench/", "--help", timeout=300)
    assert result.returncode == 0, result.stderr
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))
    used = {option for command in workflow_commands() if "pytest" in command
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command.split("pytest", 1)[1])}
    assert used and used - known == set()
    assert {"--bench-export", "--bench-gate", "--bench-ab", "--junit-xml"} <= used


def test_the_ci_page_shows_the_workflow_file_as_it_is():
    page = (REPO / "docs" / "ci.md").read_text()
    shown = re.search(r"```yaml\n(.*?)```", page, re.S).group(1)
    assert shown == WORKFLOW.read_text()

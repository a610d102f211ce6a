"""pytest plugin of the GPU check (``-p parabench.gpucheck.record``): what it selected, and each test as it ends.

With ``PARABENCH_GPUCHECK_DIR`` set, the session writes there ``selection.json`` once collection is done (every
selected test: node id, case, skip reason) and appends to ``outcomes.jsonl`` one line per test when its teardown
ends (outcome, message, median step, peak, CUDA high-water, FLOPs). Lines are written as tests end, so a session
stopped at the check's time limit still tells what ran.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

DIRECTORY_VARIABLE = "PARABENCH_GPUCHECK_DIR"
SELECTION_FILE = "selection.json"
OUTCOMES_FILE = "outcomes.jsonl"
_STATE = pytest.StashKey[dict]()


def _directory() -> Path | None:
    value = os.environ.get(DIRECTORY_VARIABLE)
    return Path(value) if value else None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    from fixtures.collection import case_of

    directory = _directory()
    if directory is None:
        return
    rows = []
    for item in session.items:
        case = case_of(item)
        skip = item.get_closest_marker("skip")
        rows.append({"nodeid": item.nodeid, "case": case.to_dict() if case else None,
                     "skip": (skip.kwargs.get("reason") or (skip.args[0] if skip.args else "")) if skip else None})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SELECTION_FILE).write_text(json.dumps(rows, indent=1), encoding="utf-8")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    directory = _directory()
    if directory is None:
        return report
    state = item.config.stash[_STATE].setdefault(item.nodeid, {"nodeid": item.nodeid, "outcome": "passed"})
    if report.when == "call":
        benchmark = item.funcargs.get("benchmark") if hasattr(item, "funcargs") else None
        state.update(measurements(getattr(benchmark, "extra_info", None) or {}))
    if report.skipped:
        state["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        state["message"] = _message(report)
    elif report.failed:
        state["outcome"] = "failed" if report.when == "call" else "error"
        state["message"] = _message(report)
    elif report.when == "call" and hasattr(report, "wasxfail"):
        state["outcome"] = "xpassed"
    state[f"{report.when}_seconds"] = round(report.duration, 3)
    if report.when == "teardown":
        with open(directory / OUTCOMES_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps(item.config.stash[_STATE].pop(item.nodeid)) + "\n")
    return report


def measurements(info: dict) -> dict:
    """The numbers the summary shows, from a case's ``benchmark.extra_info`` (``CaseResult.extra_info``)."""
    def largest(key: str) -> int | None:
        values = [v for v in info.get(key) or [] if v is not None]
        return max(values) if values else None

    steps = info.get("step_seconds") or []
    return {"device": info.get("device"), "median_step_seconds": statistics.median(steps) if steps else None,
            "peak_allocated_bytes": largest("peak_allocated_bytes"),
            "cuda_max_allocated_bytes": largest("cuda_max_allocated_bytes"), "flops": largest("flops"),
            "state_bytes": max((s.get("total", 0) for s in info.get("state_bytes") or []), default=None)}


def _message(report: pytest.TestReport) -> str:
    """The skip reason or the failure's first lines."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or report.longreprtext or getattr(report, "wasxfail", "")
    return "\n".join(str(text).strip().splitlines()[:6])

"""A -k/-m selection never runs nothing in silence: what it matches that the profile leaves out is named with the
--bench-profile that runs it, and the optimizer-step table is selectable by the optimizer's name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "bench/", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def collected(*args: str) -> tuple[list[str], list[str]]:
    """(node ids, parabench's lines) of ``pytest bench/ --collect-only -q ARGS``."""
    result = bench("--collect-only", "-q", *args)
    assert result.returncode in (0, 5), f"collecting bench/ failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    return ([line.strip() for line in lines if line.startswith("bench/") and "::" in line],
            [line for line in lines if line.startswith("parabench: ") and "matches" in line])


STEP_ROWS = [f"bench/test_dist_adafactor.py::test_step[{layout}-{precision}-w{ranks}]"
             for layout in ("full", "col", "row") for precision in ("fp32", "fp16", "bf16") for ranks in (2, 4)]


def test_the_step_table_is_selected_by_the_optimizers_name():
    dist, _ = collected("--bench-profile=full", "-k", "dist-adafactor")
    assert sorted(n for n in dist if "::test_step[" in n) == sorted(n for n in STEP_ROWS if "[full-" not in n)
    assert "bench/test_colossalai.py::test_train[colossalai-hybrid-dist-adafactor-gpt2_text-w2-fp32-tp2]" in dist
    every, _ = collected("--bench-profile=full", "-k", "adafactor")
    assert sorted(n for n in every if "::test_step[" in n) == sorted(STEP_ROWS)
    adafactor, _ = collected("--bench-profile=full", "-k", "colossalai-adafactor and test_step")
    assert sorted(adafactor) == sorted(n for n in STEP_ROWS if "[full-" in n)


def test_the_stored_runs_of_the_step_table_name_cases_the_optimizers_name_selects():
    """The rows keep their ids: every stored result of one (pytest-benchmark's name and fullname, and the session's
    test_seconds that --collect-only's estimate reads) is a case its optimizer's name selects, by the same node id."""
    import json

    from parabench.gate.baselines import discover

    runs = discover(REPO / "baselines")
    stored = {bench["fullname"] for run in runs for bench in run.others if "::test_step[" in bench["fullname"]}
    stored |= {nodeid for path in (REPO / "baselines").glob("**/*.json")
               for nodeid in json.loads(path.read_text()).get("parabench", {}).get("test_seconds", {})
               if "::test_step[" in nodeid}
    assert stored, "no stored run of bench/test_dist_adafactor.py under baselines/"
    assert stored <= set(STEP_ROWS)
    # (-k adafactor matched every row before, by the module's name; the optimizers' names did not.)
    for optimizer, rows in (("dist-adafactor", {n for n in stored if "[full-" not in n}),
                            ("colossalai-adafactor", {n for n in stored if "[full-" in n})):
        selected, _ = collected("--bench-profile=full", "-k", optimizer)
        assert rows and not rows - set(selected), f"stored rows -k {optimizer} leaves out: {rows - set(selected)}"


@pytest.mark.parametrize("args,line", [
    # In default: the w2 rows run; the w4 rows and the training cases of DistributedAdaFactor are full's.
    (["-k", "dist-adafactor"], "parabench: -k 'dist-adafactor' matches 15 cases: profile default runs 6 and leaves "
                               "out 9; --bench-profile=full runs every one (all 15)"),
    (["-k", "hybrid-dist-adafactor"], "parabench: -k 'hybrid-dist-adafactor' matches 2 cases that profile default "
                                      "leaves out; --bench-profile=full runs them (all 2)"),
    (["-m", "harness"], "parabench: -m 'harness' matches 1 case that profile default leaves out; "
                        "--bench-profile=full runs it"),
    # gpu's selection and full both run every one-device case: the smaller is named.
    (["-k", "test_one_device and fp16", "--bench-profile=ci"],
     "parabench: -k 'test_one_device and fp16' matches 8 cases that profile ci leaves out; --bench-profile=gpu runs "
     "them (all 8)"),
])
def test_a_selection_the_profile_leaves_out_names_the_profile_that_runs_it(args, line):
    _, lines = collected(*args)
    assert lines == [line]


def test_a_selection_that_matches_nothing_says_so_and_names_no_profile():
    nodeids, lines = collected("-k", "no_such_case_anywhere")
    assert not nodeids
    assert lines == ["parabench: -k 'no_such_case_anywhere' matches no test of this collection, in any profile"]


def test_a_session_that_runs_nothing_ends_with_the_note_and_exits_5():
    result = bench("-k", "hybrid-dist-adafactor")
    assert result.returncode == 5, f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
    note = ("parabench: -k 'hybrid-dist-adafactor' matches 2 cases that profile default leaves out; "
            "--bench-profile=full runs them (all 2)")
    last = [line for line in result.stdout.splitlines() if line.strip()][-2:]
    assert last[0] == note and "deselected" in last[1], result.stdout[-3000:]


def test_a_selection_the_profile_runs_whole_adds_no_note():
    nodeids, lines = collected("-k", "torch-ddp-adamw-gpt2_text-w2")
    assert nodeids and not lines

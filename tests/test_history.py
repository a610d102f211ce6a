"""The history site (``python -m parabench history``): change points, its numbers' origin, bad input, atomic
replacement, and its pages loaded in headless Chromium."""

from __future__ import annotations

import copy
import html
import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("plotly", reason="the report extra is not installed: pip install -e '.[report]' with the lock")
pytest.importorskip("ruptures", reason="the report extra is not installed: pip install -e '.[report]' with the lock")

from parabench.__main__ import main
from parabench.gate.policy import load_policy
from parabench.history import site as history_site
from parabench.history.changes import MIN_STEP, REPEAT_SIGMA, repeat_spread, series_changes, step_changes
from parabench.history.series import build_series, commit_tags, read_runs

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO / "baselines"
POLICY = BASELINES / "policy.toml"
SOURCE = next((BASELINES / "Linux-CPython-3.11-64bit").glob("0030_*.json"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CASES = ("torch-ddp-adamw-vit_digits-w2-fp32", "deepspeed-zero3-adamw-vit_digits-w2-bf16")


def write_store(root: Path, runs: int = 4, plant=None) -> Path:
    """``runs`` copies of committed run 0030 cut to two cases, each its own commit, an hour apart; ``plant(i,
    benchmarks)`` alters run i's."""
    data = json.loads(SOURCE.read_text(encoding="utf-8"))
    keep = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("case", {}).get("id") in CASES]
    assert len(keep) == len(CASES), f"{SOURCE.name} no longer holds {CASES}"
    folder = root / "Linux-CPython-3.11-64bit"
    folder.mkdir(parents=True)
    for i in range(runs):
        run = copy.deepcopy(data)
        run["benchmarks"] = copy.deepcopy(keep)
        run["datetime"] = f"2026-12-05T0{i}:30:00+00:00"
        run["commit_info"] = {**run["commit_info"], "id": str(i + 1) * 40, "time": f"2026-12-05T0{i}:00:00+00:00",
                              "dirty": False}
        if plant:
            plant(i, run["benchmarks"])
        (folder / f"{i + 1:04d}_synthetic.json").write_text(json.dumps(run), encoding="utf-8")
    return root


def planted_master(i: int, benchmarks: list) -> None:
    """From run 3 on, the bf16 ZeRO-3 case counts a master copy of 1000 more bytes on each rank."""
    if i >= 2:
        for bench in benchmarks:
            if bench["extra_info"]["case"]["precision"] == "bf16":
                for rank in bench["extra_info"]["state_bytes"]:
                    rank["master"] += 1000
                    rank["total"] += 1000


def changes_of(store: Path):
    series = build_series(read_runs(store), load_policy(POLICY))
    return series, [c for s in series for c in series_changes(s)]


# Change points.

def test_a_planted_change_of_an_exact_metric_is_listed_between_the_right_commits(tmp_path):
    series, found = changes_of(write_store(tmp_path, plant=planted_master))
    assert len(series) == 2
    exact = [c for c in found if not c.metric.startswith("step time")]
    assert [(c.metric, c.series.case_id) for c in exact] == [("state bytes", "deepspeed-zero3-adamw-vit_digits-w2-bf16")]
    change = exact[0]
    assert (change.before.run.commit, change.after.run.commit) == ("2" * 40, "3" * 40)
    assert change.detail == "rank 0: master 138,388 → 139,388; rank 1: master 138,388 → 139,388"
    assert change.change == pytest.approx(1000 / (change.before.info["state_bytes"][0]["total"]))


def test_a_planted_30_percent_step_time_step_is_detected(tmp_path):
    def slower(i, benchmarks):
        wobble = (1.0, 1.02, 0.98, 1.01, 1.0, 0.99, 1.02, 0.98)[i]
        for bench in benchmarks:
            factor = wobble * (1.3 if i >= 4 and bench["extra_info"]["case"]["precision"] == "fp32" else 1.0)
            bench["extra_info"]["step_seconds"] = [t * factor for t in bench["extra_info"]["step_seconds"]]

    _, found = changes_of(write_store(tmp_path, runs=8, plant=slower))
    steps = [c for c in found if c.metric.startswith("step time")]
    assert [(c.series.case_id, c.before.run.number, c.after.run.number) for c in steps] == [
        ("torch-ddp-adamw-vit_digits-w2-fp32", "0004", "0005")]
    assert steps[0].change == pytest.approx(0.3, abs=0.03)
    # The detector alone, on medians: the same step at the same place.
    assert [i for i, _ in step_changes([1.0, 1.02, 0.98, 1.01, 1.3, 1.33, 1.27, 1.31])] == [4]


def test_unchanged_runs_give_no_step_time_change_point(tmp_path):
    _, found = changes_of(write_store(tmp_path, runs=6))
    assert not found  # identical copies: nothing moves at all
    # Recordings of one commit in one session (runs 0028-0030), each case's three medians twice over.
    runs = [r for r in read_runs(BASELINES) if r.number in ("0028", "0029", "0030")]
    medians: dict[str, list[float]] = {}
    for run in runs:
        for bench in run.stored.benchmarks:
            times = sorted(bench["extra_info"]["step_seconds"])
            medians.setdefault(bench["name"], []).append(times[len(times) // 2])
    flagged = [name for name, values in medians.items() if step_changes(values + values)]
    assert not flagged, f"steps found in unchanged code: {flagged}"


def test_the_step_rule_numbers_are_those_the_committed_repeats_give():
    spread = repeat_spread(read_runs(BASELINES))
    assert spread["cases"] == 284
    assert round(spread["sigma"], 3) == REPEAT_SIGMA
    assert round(spread["min_step"], 2) == MIN_STEP


def test_git_tags_are_read_for_each_commit(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one")
    git("tag", "v1")
    head = git("rev-parse", "HEAD").strip()
    assert commit_tags([head, "0" * 40], tmp_path) == {head: ("v1",)}


# Bad input and replacing a site.

def test_no_stored_run_is_an_error_naming_the_fix(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["history", "--storage", str(tmp_path / "empty"), "--out", str(tmp_path / "site")]) == 2
    error = capsys.readouterr().err
    assert "no stored run" in error and "--bench-record" in error
    assert not (tmp_path / "site").exists()


def test_a_malformed_run_is_an_error_naming_the_file(tmp_path, capsys):
    store = write_store(tmp_path / "store", runs=2)
    bad = store / "Linux-CPython-3.11-64bit" / "0003_broken.json"
    bad.write_text('{"benchmarks": [', encoding="utf-8")
    assert main(["history", "--storage", str(store), "--out", str(tmp_path / "site")]) == 2
    error = capsys.readouterr().err
    assert "0003_broken.json: not valid JSON" in error and "delete it" in error


def test_a_folder_that_is_not_a_site_is_not_replaced(tmp_path, capsys):
    store = write_store(tmp_path / "store", runs=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["history", "--storage", str(store), "--out", str(tmp_path / "mine")]) == 2
    assert "is not a history site" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_failed_build_leaves_the_previous_site_whole(tmp_path, monkeypatch):
    store = write_store(tmp_path / "store", runs=2)
    out = tmp_path / "site"
    assert main(["history", "--storage", str(store), "--out", str(out)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(root, *args, **kwargs):
        (root / "index.html").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(history_site, "write_pages", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        history_site.build(store, out, POLICY)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "store"]  # no temporary folder left behind


# In a browser.

class Plots(html.parser.HTMLParser):
    """Each Plotly div of a dumped DOM, and whether an SVG Plotly drew (class main-svg) lies inside it."""

    def __init__(self):
        super().__init__()
        self.stack: list[str | None] = []
        self.drawn: dict[str, bool] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        ident = attrs.get("id") if tag == "div" and "plotly-graph-div" in classes else None
        if ident:
            self.drawn[ident] = False
        if "main-svg" in classes:
            for open_plot in self.stack:
                if open_plot:
                    self.drawn[open_plot] = True
        if tag not in ("br", "img", "meta", "link", "input", "hr", "path", "rect", "line", "circle", "stop"):
            self.stack.append(ident)

    def handle_endtag(self, tag):
        if tag not in ("br", "img", "meta", "link", "input", "hr", "path", "rect", "line", "circle", "stop") \
                and self.stack:
            self.stack.pop()


def page_errors(dom: str) -> list[str]:
    """What the page's error recorder wrote on <html data-page-errors="[...]">: every script error and failed load."""
    start = dom.index("<html")
    tag = dom[start:dom.index(">", start) + 1]
    found = re.search(r'data-page-errors="([^"]*)"', tag)
    return json.loads(html.unescape(found[1])) if found else []


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], check=False, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed, so the site's pages are not checked in a "
                                             "browser: apt-get install -y chromium (.ci/run does, as root)")
def test_the_site_renders_in_a_browser_without_script_errors(tmp_path):
    store = write_store(tmp_path / "store", runs=4, plant=planted_master)
    out = tmp_path / "site"
    assert main(["history", "--storage", str(store), "--out", str(out)]) == 0
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    pages = [out / "index.html", out / "regressions.html", *sorted((out / "cases").rglob("*.html"))]
    assert len(pages) == 4
    regressions = (out / "regressions.html").read_text(encoding="utf-8")
    assert "deepspeed-zero3-adamw-vit_digits-w2-bf16" in regressions and "master 138,388 → 139,388" in regressions
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert 'src="http' not in text and 'href="http' not in text  # nothing is fetched from the network
        done = chromium("--dump-dom", page.as_uri())
        dom = done.stdout
        assert "</html>" in dom, f"{page}: chromium dumped no DOM: {done.stderr[-2000:]}"
        assert not page_errors(dom), f"{page}: the page's scripts failed: {page_errors(dom)}"
        plots = Plots()
        plots.feed(dom)
        if page.parent.parent.name == "cases":
            assert len(plots.drawn) == 7 and all(plots.drawn.values()), f"{page}: plots not drawn: {plots.drawn}"
        shot = tmp_path / "screenshots" / f"{page.stem}.png"
        shot.parent.mkdir(exist_ok=True)
        taken = chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
        assert shot.is_file() and shot.stat().st_size > 10_000, f"{page}: no screenshot: {taken.stderr[-2000:]}"
        print(f"screenshot: {shot}")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium (.ci/run does, "
                                             "as root)")
def test_a_page_whose_script_fails_is_caught(tmp_path):
    # The check above would see a broken page: the recorder marks the DOM (here, Plotly's file is missing).
    store = write_store(tmp_path / "store", runs=2)
    out = tmp_path / "site"
    assert main(["history", "--storage", str(store), "--out", str(out)]) == 0
    (out / "plotly.min.js").unlink()
    page = next((out / "cases").rglob("*.html"))
    dom = chromium("--dump-dom", page.as_uri()).stdout
    errors = page_errors(dom)
    assert any("plotly.min.js" in e for e in errors) and any("Plotly is not defined" in e for e in errors), errors

"""The history site's pages: an index of cases with their latest verdicts, a page per series with Plotly charts of
each metric over runs, and the Regressions page listing every change point.

Files only: Plotly's JavaScript is written once beside the pages (``plotly.min.js``, referenced by a relative path),
so the site opens from disk with no network. The site is built in a temporary folder beside ``--out`` and swapped
in whole: a failed build leaves the previous site as it was.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parabench.gate.baselines import publish_folder
from parabench.gate.judge import compare
from parabench.gate.policy import Policy, PolicyError, load_policy
from parabench.gate.report import Row
from parabench.gate.verdict import Verdict
from parabench.history.changes import REPEATS, STEP_RULE, ChangePoint, StepRule, series_changes
from parabench.history.series import (
    EXACT_METRICS,
    HistoryError,
    Point,
    Run,
    Series,
    build_series,
    read_runs,
    step_summary,
)

MARKER = ".parabench-history"  # names a folder this command wrote, so --out never replaces anything else
PLOTLY_JS = "plotly.min.js"
# The worst verdict among a case's rows is its verdict on the index.
SEVERITY = (Verdict.REGRESSED, Verdict.MISSING, Verdict.UNJUDGED, Verdict.NOT_COMPARABLE, Verdict.IMPROVED,
            Verdict.NEW, Verdict.UNCHANGED, Verdict.INFO)

# Records every script error and failed resource load of the page on <html data-page-errors="[...]">, so a page
# opened headless (tests/test_history.py) or by a person (the banner) shows what went wrong.
ERROR_RECORDER = """<script>
window.pageErrors = [];
window.addEventListener("error", function (event) {
  var what = event.message || ("failed to load " + ((event.target && (event.target.src || event.target.href)) || "?"));
  window.pageErrors.push(String(what));
  document.documentElement.setAttribute("data-page-errors", JSON.stringify(window.pageErrors));
}, true);
</script>"""
ERROR_BANNER = """<script>
if (window.pageErrors.length) {
  var banner = document.createElement("pre");
  banner.className = "page-errors";
  banner.textContent = "This page's scripts failed: " + window.pageErrors.join("\\n");
  document.body.insertBefore(banner, document.body.firstChild);
}
</script>"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.v-regressed, .v-missing { background: #fbd5d5; }
.v-unjudged, .v-not-comparable { background: #fdf0c8; }
.v-improved { background: #d7f3dc; }
.same { color: #777; }
.note { color: #555; max-width: 60em; }
.chart { height: 340px; margin-bottom: 1em; }
.page-errors { background: #fbd5d5; padding: 0.5em; }
code { background: #f5f5f5; }
"""


@dataclass
class Site:
    """What was built: counts for the command's summary line, and the change points."""

    out: Path
    runs: list[Run]
    series: list[Series]
    changes: list[ChangePoint]
    pages: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def machine_kinds(self) -> int:
        return len({s.kind for s in self.series})

    @property
    def machine_keys(self) -> int:
        return len({json.dumps(s.key, sort_keys=True, default=str) for s in self.series})

    @property
    def cases(self) -> int:
        return len({s.case_id for s in self.series})

    def summary(self) -> str:
        return (f"{len(self.runs)} runs, {self.machine_kinds} machine kinds, {self.machine_keys} machine keys, "
                f"{self.cases} cases ({len(self.series)} case × key series), {len(self.changes)} change points; "
                f"{self.pages} pages in {self.seconds:.1f} s")


def build(storage: str | Path, out: str | Path, policy_path: str | Path, command: str = "",
          judge_time: bool = False, rule: StepRule = STEP_RULE) -> Site:
    """Read every stored run under ``storage`` and write the site to ``out`` (replaced whole, or not at all)."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not (out / MARKER).is_file():
        raise HistoryError(f"{out} exists and is not a history site (it has no {MARKER}); choose another --out, or "
                           f"remove it first")
    runs = read_runs(storage)
    try:
        policy = load_policy(policy_path)
    except PolicyError as error:
        raise HistoryError(f"{error} (the history judges each case's newest run as the gate would; give the "
                           f"policy with --policy)") from None
    series = build_series(runs, policy)
    changes = {id(s): series_changes(s, rule) for s in series}
    verdicts = latest_verdicts(runs, series, policy, judge_time)
    site = Site(out, runs, series, [c for s in series for c in changes[id(s)]])
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        write_pages(building, site, changes, verdicts, rule, command, judge_time)
        site.seconds = time.perf_counter() - started
        (building / MARKER).write_text(f"written by: {command or 'python -m parabench history'}\n"
                                       f"{site.summary()}\n", encoding="utf-8")
        publish_folder(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return site


def latest_verdicts(runs: Sequence[Run], series: Sequence[Series], policy: Policy,
                    judge_time: bool = False) -> dict[int, list[Row]]:
    """The gate's rows for each series' newest run, judged against every run stored before it (in commit order) as
    ``parabench.gate.judge.compare`` judges a session: the newest run of the same key for memory, costs, loss and
    parity; the policy's pooled history for step time (reported, not judged, unless ``judge_time``, as CI does)."""
    position = {run.path: i for i, run in enumerate(runs)}
    by_run: dict[str, list[Series]] = {}
    for s in series:
        by_run.setdefault(s.points[-1].run.path, []).append(s)
    out: dict[int, list[Row]] = {}
    for path, mine in by_run.items():
        index = position[path]
        names = {s.name for s in mine}
        now = [b for b in runs[index].stored.benchmarks if b["name"] in names]
        report = compare(now, [run.stored for run in runs[:index]], policy, judge_time=judge_time)
        rows: dict[str, list[Row]] = {}
        for row in report.rows:
            rows.setdefault(row.name, []).append(row)
        for s in mine:
            out[id(s)] = rows.get(s.name, [])
    return out


def worst(rows: Iterable[Row]) -> Verdict | None:
    found = {row.verdict for row in rows}
    return next((v for v in SEVERITY if v in found), None)


# Pages.

def write_pages(root: Path, site: Site, changes: Mapping[int, list[ChangePoint]], verdicts: Mapping[int, list[Row]],
                rule: StepRule, command: str, judge_time: bool) -> None:
    import plotly.offline

    (root / PLOTLY_JS).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    (root / "style.css").write_text(STYLE, encoding="utf-8")
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    footer = (f"<p class=note>Built {built} from {len(site.runs)} stored runs"
              + (f" by <code>{esc(command)}</code>" if command else "") + ".</p>")
    for s in site.series:
        page = root / s.page
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(series_page(s, changes[id(s)], verdicts.get(id(s), []), judge_time, footer), encoding="utf-8")
        site.pages += 1
    (root / "index.html").write_text(index_page(site, changes, verdicts, judge_time, footer), encoding="utf-8")
    (root / "regressions.html").write_text(regressions_page(site, rule, footer), encoding="utf-8")
    site.pages += 2


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def document(title: str, body: str, depth: int, charts: bool) -> str:
    up = "../" * depth
    scripts = f'<script src="{up}{PLOTLY_JS}"></script>' if charts else ""
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f'<link rel=stylesheet href="{up}style.css">{ERROR_RECORDER}{scripts}</head>\n<body>\n'
            f'<p><a href="{up}index.html">Cases</a> · <a href="{up}regressions.html">Regressions</a></p>\n'
            f"{body}\n{ERROR_BANNER}\n</body></html>\n")


def verdict_class(verdict: Verdict | None) -> str:
    return f"v-{verdict.value.replace(' ', '-')}" if verdict else ""


def family_of(strategy: str) -> str:
    """The strategy's framework family (torch, deepspeed, colossalai, fairscale), as its registry names it."""
    from parabench.strategies import STRATEGIES

    try:
        return STRATEGIES.get(strategy).family
    except (KeyError, ValueError, LookupError):
        return strategy.split("-", 1)[0]


def index_page(site: Site, changes: Mapping[int, list[ChangePoint]], verdicts: Mapping[int, list[Row]],
               judge_time: bool, footer: str) -> str:
    counts = Counter(c.metric for c in site.changes)
    parts = [f"<h1>Stored runs: history</h1><p>{esc(site.summary().split(';')[0])}. "
             f'<a href="regressions.html">Regressions</a>: {len(site.changes)} change points ('
             + ", ".join(f"{esc(m)} {n}" for m, n in sorted(counts.items())) + ").</p>",
             "<p class=note>Each row is one case under one machine key (the gate's key: "
             "<code>parabench.gate.keys.machine_key</code> with the policy's fields; library versions are named "
             "where they change, not keyed, as the gate compares across them). The verdict is the gate's "
             "(<code>parabench.gate.judge.compare</code>) for the case's newest run against every run stored before "
             "it in commit order: the newest run of the same key for memory, costs, loss and parity, the policy's "
             "pooled history for step time, which is "
             + ("judged" if judge_time else "reported, not judged (as CI's gate does; --time judge judges it)")
             + ". A case whose newest run is its first is <em>new</em>.</p>"]
    families: dict[tuple, dict[str, dict[str, list[Series]]]] = {}
    for s in site.series:
        families.setdefault(s.kind, {}).setdefault(family_of(s.strategy), {}).setdefault(s.strategy, []).append(s)
    for kind in sorted(families, key=str):
        total = sum(len(x) for f in families[kind].values() for x in f.values())
        parts.append(f"<h2>{esc(kind[0])}: {esc(kind[1])} ({total} series)</h2>")
        for family in sorted(families[kind]):
            parts.append(f"<h3>{esc(family)}</h3>")
            for strategy in sorted(families[kind][family]):
                parts.append(f"<h4>{esc(strategy)}</h4><table><tr><th>case</th><th>runs</th><th>newest run</th>"
                             "<th>latest verdict</th><th>change points (exact / step time)</th></tr>")
                for s in sorted(families[kind][family][strategy], key=lambda s: (s.case_id, s.name)):
                    rows = verdicts.get(id(s), [])
                    verdict = worst(rows)
                    tally = Counter(r.verdict.value for r in rows)
                    mine = changes[id(s)]
                    timed = sum(c.metric.startswith("step time") for c in mine)
                    test = s.name.split("[", 1)[0]
                    parts.append(
                        f'<tr><td><a href="{esc(s.page)}">{esc(s.case_id)}</a> <span class=same>{esc(test)}'
                        f"</span></td><td class=num>{len(s.points)}</td><td>{esc(s.points[-1].run.label)}</td>"
                        f'<td class="{verdict_class(verdict)}">{esc(verdict.value if verdict else "—")}'
                        + (f" <span class=same>({esc(', '.join(f'{n} {v}' for v, n in sorted(tally.items())))})"
                           "</span>" if rows else "")
                        + f"</td><td class=num>{len(mine) - timed} / {timed}</td></tr>")
                parts.append("</table>")
    parts.append(footer)
    return document("parabench history", "\n".join(parts), 0, charts=False)


def run_cell(point: Point) -> str:
    run = point.run
    return (f"{esc(run.label)}<br><span class=same>{esc(run.datetime[:16].replace('T', ' '))}"
            + (f"; tag {esc(', '.join(run.tags))}" if run.tags else "") + "</span>")


def change_rows(found: Sequence[ChangePoint], with_case: bool) -> str:
    head = ("<table><tr>" + ("<th>machine</th><th>case</th>" if with_case else "")
            + "<th>metric</th><th>between</th><th>and</th><th>before</th><th>after</th><th>change</th>"
              "<th>what moved</th><th>what else differed</th></tr>")
    rows = []
    for c in found:
        case = (f"<td>{esc(c.series.kind[1])}</td><td><a href=\"{esc(c.series.page)}\">{esc(c.series.case_id)}</a>"
                "</td>" if with_case else "")
        change = f"{c.change:+.2%}" if c.change is not None else "—"
        same = " class=same" if c.before.run.commit and c.before.run.commit == c.after.run.commit else ""
        rows.append(f"<tr{same}>{case}<td>{esc(c.metric)}</td><td>{run_cell(c.before)}</td><td>{run_cell(c.after)}</td>"
                    f"<td class=num>{esc(c.old)}</td><td class=num>{esc(c.new)}</td><td class=num>{change}</td>"
                    f"<td>{esc(c.detail)}</td><td>{esc(c.context)}</td></tr>")
    return head + "\n".join(rows) + "</table>"


def rule_text(rule: StepRule) -> str:
    repeats = ", ".join("–".join((g[0], g[-1])) for g in REPEATS)
    return (
        "<ul><li><b>Exact metrics</b> (state bytes and peak bytes per rank, bus bytes and FLOPs per step per rank, "
        "final loss, parity gap = the parity check's max_abs_difference): any difference between two consecutive "
        "runs of a series is a change point, where both runs recorded the metric. Rows between two recordings of the "
        "same commit are greyed: a metric that moves there is not deterministic on that host.</li>"
        f"<li><b>Step time</b>: {esc(rule.describe())}. The floor σ = {rule.sigma:g} is the median over cases of the standard "
        "deviation of ln(median step time) across three recordings of one commit, and the minimum step "
        f"{rule.min_step:.0%} is the median over those cases of the three medians' relative range (max/min − 1): "
        f"runs {esc(repeats)} of the committed baselines (commit 5ec3fc88, recorded 2026-12-05 on a 2-CPU Intel Xeon "
        "host, AVX-512 and AVX2 kernels, CI profile), 284 cases. The change point lies between the last run of one "
        "segment and the first of the next; before/after are those two runs' medians, the change the ratio of the "
        "segments' geometric means.</li></ul>")


def regressions_page(site: Site, rule: StepRule, footer: str) -> str:
    by_metric: dict[str, list[ChangePoint]] = {}
    for c in site.changes:
        by_metric.setdefault(c.metric, []).append(c)
    summary = [("<table><tr><th>metric</th><th>change points</th><th>between different commits</th>"
                "<th>between recordings of one commit</th></tr>")]
    for metric, found in sorted(by_metric.items()):
        same = sum(1 for c in found if c.before.run.commit and c.before.run.commit == c.after.run.commit)
        summary.append(f"<tr><td>{esc(metric)}</td><td class=num>{len(found)}</td><td class=num>{len(found) - same}"
                       f"</td><td class=num>{same}</td></tr>")
    summary.append("</table>")
    ordered = sorted(site.changes, key=lambda c: (c.after.run.order, str(c.series.kind), c.series.case_id, c.metric))
    body = ("<h1>Regressions: every change point</h1>" + rule_text(rule) + "".join(summary)
            + "<p class=note>Oldest first, by the later run's place in commit order.</p>"
            + change_rows(ordered, with_case=True) + footer)
    return document("parabench history: regressions", body, 0, charts=False)


# One series' page: a chart per metric, its change points, the latest verdict's rows and the runs.

def hover(point: Point) -> str:
    run = point.run
    versions = ", ".join(f"{k} {v}" for k, v in sorted(point.info.get("versions", {}).items()))
    return "<br>".join([f"commit {run.commit or 'not recorded'}{' (uncommitted changes)' if run.dirty else ''}",
                        f"commit date {run.commit_time or '?'}; recorded {run.datetime[:19]}",
                        *([f"tags: {', '.join(run.tags)}"] if run.tags else []), wrap(versions)])


def wrap(text: str, width: int = 70) -> str:
    lines, line = [], ""
    for word in text.split(", "):
        if line and len(line) + len(word) > width:
            lines.append(line + ",")
            line = word
        else:
            line = f"{line}, {word}" if line else word
    return "<br>".join(lines + [line])


def figure(series: Series, title: str, unit: str, traces: list[dict], steps: Sequence[ChangePoint]) -> dict:
    labels = [p.run.label for p in series.points]
    shapes, annotations = [], []
    for i, point in enumerate(series.points):
        if point.run.tags:
            shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": i, "x1": i, "y0": 0, "y1": 1,
                           "line": {"color": "#2a7", "width": 1}})
            annotations.append({"xref": "x", "yref": "paper", "x": i, "y": 1, "yanchor": "bottom",
                                "text": "tag " + ", ".join(point.run.tags), "showarrow": False,
                                "font": {"color": "#2a7", "size": 10}})
    for c in steps:
        i = series.points.index(c.after)
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": i - 0.5, "x1": i - 0.5, "y0": 0, "y1": 1,
                       "line": {"color": "#c33", "width": 1, "dash": "dot"}})
    return {"data": traces, "layout": {
        "title": {"text": title}, "margin": {"l": 70, "r": 20, "t": 50, "b": 90},
        "xaxis": {"type": "category", "categoryorder": "array", "categoryarray": labels, "tickangle": -30},
        "yaxis": {"title": {"text": unit}, "exponentformat": "SI" if unit in ("bytes", "FLOP") else "e",
                  "rangemode": "tozero" if unit in ("bytes", "FLOP") else "normal"},
        "shapes": shapes, "annotations": annotations, "hovermode": "closest",
        "legend": {"orientation": "h", "y": -0.35}}}


def line(series: Series, name: str, values: Sequence[float | None], **extra: Any) -> dict:
    return {"type": "scatter", "mode": "lines+markers", "name": name,
            "x": [p.run.label for p in series.points], "y": list(values),
            "customdata": [hover(p) for p in series.points],
            "hovertemplate": "%{x}<br>" + name + ": %{y}<br>%{customdata}<extra></extra>", **extra}


def per_rank_traces(series: Series, read) -> list[dict]:
    values = [read(p.info) for p in series.points]
    ranks = max((len(v) for v in values if v), default=0)
    return [line(series, f"rank {r}", [v[r] if v and r < len(v) else None for v in values]) for r in range(ranks)]


def series_figures(series: Series, found: Sequence[ChangePoint]) -> list[tuple[str, dict | None]]:
    """(div id, figure or None where no run recorded the metric) per chart, in page order."""
    steps = [c for c in found if c.metric.startswith("step time")]
    summaries = [step_summary(p.info) for p in series.points]
    figures: list[tuple[str, dict | None]] = []
    if any(summaries):
        ms = [{k: v * 1e3 for k, v in s.items() if k != "steps"} if s else None for s in summaries]
        median = [m["median"] if m else None for m in ms]
        band = [
            line(series, "max step", [m["max"] if m else None for m in ms], line={"width": 0}, marker={"size": 1},
                 showlegend=False),
            line(series, "min–max of the measured steps", [m["min"] if m else None for m in ms], line={"width": 0},
                 marker={"size": 1}, fill="tonexty", fillcolor="rgba(31,119,180,0.12)"),
            line(series, "median (bars: quartiles)", median, error_y={
                "type": "data", "symmetric": False,
                "array": [m["q3"] - m["median"] if m else None for m in ms],
                "arrayminus": [m["median"] - m["q1"] if m else None for m in ms]})]
        figures.append(("step-time", figure(series, "Step time: median, quartiles and range of the measured steps",
                                            "ms", band, steps)))
    else:
        figures.append(("step-time", None))
    exact = {m.name: m for m in EXACT_METRICS}
    for ident, metric, title, unit in (
            ("peak", "peak bytes", "Peak bytes per rank (one step's rise)", "bytes"),
            ("state", "state bytes", "State bytes per rank (params, grads, optimizer, master, buffers)", "bytes"),
            ("bus", "bus bytes per step", "Bus bytes per step per rank (all collectives)", "bytes"),
            ("flops", "FLOPs per step", "Matmul FLOPs per step per rank", "FLOP")):
        traces = per_rank_traces(series, exact[metric].read)
        mine = [c for c in found if c.metric == metric]
        figures.append((ident, figure(series, title, unit, traces, mine) if traces and any(
            v is not None for t in traces for v in t["y"]) else None))
    for ident, metric, title in (("loss", "final loss", "Final loss (last measured step)"),
                                 ("parity", "parity gap", "Parity gap: max |difference| from the one-process run")):
        values = [exact[metric].read(p.info) for p in series.points]
        mine = [c for c in found if c.metric == metric]
        figures.append((ident, figure(series, title, "", [line(series, metric, values)], mine)
                        if any(v is not None for v in values) else None))
    return figures


def series_page(series: Series, found: Sequence[ChangePoint], rows: Sequence[Row], judge_time: bool,
                footer: str) -> str:
    import plotly.io

    key = ", ".join(f"{k} = {v}" for k, v in series.key.items() if k not in ("device", "hardware"))
    parts = [(f"<h1>{esc(series.case_id)}</h1><p><b>{esc(series.kind_label)}</b> · <code>{esc(series.name)}</code>"
              f"<br><span class=same>machine key: {esc(key)}</span></p>")]
    for ident, fig in series_figures(series, found):
        if fig is None:
            parts.append(f"<p class=note>{esc(ident)}: not recorded by any run of this series.</p>")
            continue
        chart = plotly.io.to_html(fig, include_plotlyjs=False, full_html=False, validate=False, div_id=f"chart-{ident}",
                                  default_height="340px", config={"displaylogo": False, "responsive": True})
        parts.append(f"<div class=chart>{chart}</div>")
    parts.append(f"<h2>Change points ({len(found)})</h2>")
    parts.append(change_rows(found, with_case=False) if found else "<p>None.</p>")
    verdict = worst(rows)
    parts.append(f"<h2>Latest verdict: {esc(verdict.value if verdict else '—')}</h2><p class=note>The gate's rows for "
                 f"{esc(series.points[-1].run.label)} against the runs stored before it (step time "
                 + ("judged" if judge_time else "reported, not judged") + ").</p>")
    if rows:
        parts.append("<table><tr><th>metric</th><th>verdict</th><th>baseline</th><th>now</th><th>change</th>"
                     "<th>detail</th></tr>")
        for row in rows:
            change = f"{row.change:+.2%}" if row.change is not None else ""
            parts.append(f'<tr><td>{esc(row.metric)}</td><td class="{verdict_class(row.verdict)}">'
                         f"{esc(row.verdict.value)}</td><td>{esc(row.baseline)}</td><td>{esc(row.now)}</td>"
                         f"<td class=num>{change}</td><td>{esc(row.detail)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>file</th><th>commit</th><th>recorded</th><th>tags</th>"
                 "<th>versions</th></tr>")
    for p in series.points:
        run = p.run
        parts.append(f"<tr><td>{esc(run.label)}</td><td>{esc(Path(run.path).name)}</td><td><code>{esc(run.commit)}"
                     f"</code>{' (uncommitted changes)' if run.dirty else ''}</td><td>{esc(run.datetime[:19])}</td>"
                     f"<td>{esc(', '.join(run.tags))}</td><td>"
                     + esc(", ".join(f"{k} {v}" for k, v in sorted(p.info.get("versions", {}).items())))
                     + "</td></tr>")
    parts.append("</table>" + footer)
    return document(f"{series.case_id} — {series.kind_label}", "\n".join(parts), series.page.count("/"), charts=True)

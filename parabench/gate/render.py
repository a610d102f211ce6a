"""The gate's report rendered: the summary line, the lines a CI log ends with, a table, JSON and Markdown.

``Rendering`` is what ``parabench.gate.report.GateReport`` shows of its rows; it decides nothing (which rows fail
the gate is the report's), so the same rows read the same in a terminal, a JSON file and a pull request.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from parabench.gate.baselines import RECORD_HINT, atomic_write
from parabench.gate.verdict import TIME_REPORTED, UNJUDGED_REASONS, Verdict

REPORT_FORMAT = 2


class Rendering:
    """The rendering half of ``GateReport`` (its ``rows``, ``labels``, ``notes``, ``sides``, ``injected`` and the
    decisions ``regressions``, ``unjudged``, ``nothing_gated``, ``failed``, ``excused()``, ``counts()``)."""

    def summary(self) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items()) or "no cases"
        parts = []
        if self.regressions:
            parts.append(f"{len({r.name for r in self.regressions})} case(s) REGRESSED")
        if self.unjudged:
            parts.append(f"{len({r.name for r in self.unjudged})} case(s) UNJUDGED")
        if not self.judged_cases():
            parts.append("NOTHING GATED" + ("" if self.nothing_gated else " (excused: --bench-gate-allow=nothing-gated)"))
        verdict = ", ".join(parts) or "no regression"
        return f"parabench gate: {verdict} ({counts}; cases by their worst metric)"

    def unjudged_lines(self) -> list[str]:
        """One line per unjudged row and what to do, then the opt-outs used, for the end of a CI log."""
        lines = [f"UNJUDGED {r.name} {r.metric}: {r.detail} [--bench-gate-allow={r.reason} excuses it]"
                 for r in self.unjudged]
        if self.nothing_gated:
            lines.append(f"UNJUDGED: nothing was gated ({UNJUDGED_REASONS['nothing-gated']}) "
                         f"[--bench-gate-allow=nothing-gated excuses it]")
        used = [f"--bench-gate-allow={reason} ({count} excused)" for reason, count in sorted(self.excused().items())]
        reported = [r for r in self.rows if r.verdict is Verdict.INFO and r.metric.startswith("step time")
                    and r.detail.startswith(TIME_REPORTED)]
        if reported:
            failing = sum(1 for r in reported if not r.detail.startswith(f"{TIME_REPORTED}: by the policy unchanged"))
            used.append(f"--bench-gate-time=report ({len(reported)} step-time rows not judged, {failing} of them "
                        f"regressed or unjudged by the policy)")
        if used:
            lines.append("opt-outs used: " + ", ".join(used))
        return lines

    def ungated(self) -> str | None:
        """Why nothing, or only part of the run, was judged; None when every case was.

        A gate that compared nothing must say so where a CI log ends, not pass in silence.
        """
        cases = {r.name for r in self.rows}
        judged = self.judged_cases()
        if not cases or judged == cases:
            return None
        others = [r for r in self.rows if r.verdict is Verdict.NOT_COMPARABLE and r.name not in judged]
        new = {r.name for r in self.rows if r.verdict is Verdict.NEW}
        why = []
        if others:
            (detail, _), = Counter(row.detail for row in others).most_common(1)
            why.append(f"{len(others)} not comparable (most often {detail})")
        if new:
            why.append(f"{len(new)} without any stored baseline")
        head = ("NOTHING WAS GATED: no case of this run had a baseline of this machine key"
                if not judged else f"only {len(judged)} of {len(cases)} cases were gated")
        return f"{head}: {'; '.join(why) or 'see the table'}. {RECORD_HINT}"

    def regression_lines(self) -> list[str]:
        """One line per regressed metric, for the end of a log that is read from its tail."""
        return [f"REGRESSED {r.name} {r.metric}: {r.baseline} -> {r.now} ({percent(r.change) or 'changed'}; {r.detail})"
                for r in self.regressions]

    def table_rows(self, everything: bool = False) -> list[list[str]]:
        shown = [r for r in self.rows if everything or r.verdict is not Verdict.INFO]
        return [[r.name, r.metric, r.baseline, r.now, percent(r.change), r.verdict.value, r.detail] for r in shown]

    @property
    def headers(self) -> list[str]:
        return ["case", "metric", *self.labels, "change", "verdict", "why"]

    def table(self, everything: bool = False) -> str:
        from tabulate import tabulate

        return tabulate(self.table_rows(everything), headers=self.headers, tablefmt="simple", disable_numparse=True)

    def to_json(self) -> str:
        return json.dumps({"format": REPORT_FORMAT, "summary": self.summary(), "regressed": bool(self.regressions),
                           "failed": self.failed, "unjudged": len(self.unjudged), "excused": self.excused(),
                           "gated_cases": len(self.judged_cases()), "ungated": self.ungated(),
                           "injected": self.injected, "counts": self.counts(), "notes": self.notes,
                           "columns": list(self.labels), **({"sides": self.sides} if self.sides else {}),
                           "rows": [{**asdict(r), "verdict": r.verdict.value} for r in self.rows]}, indent=2)

    def to_markdown(self, full_report: str | None = None) -> str:
        """The report in Markdown (``gate.md``). With ``full_report`` (where it is written), the short form for where
        room is scarce (a CI job summary): the same summary, notes, unjudged and regressed rows, and instead of the
        table of every case and metric a line saying where it is."""
        from tabulate import tabulate

        lines = [f"## {self.summary()}", ""]
        if self.injected:
            lines += [f"**Perturbation injected on purpose (self-test): `{self.injected}`**", ""]
        for side, about in (self.sides or {}).items():
            lines.append(f"- **{side}**: " + "; ".join(f"{k} {v}" for k, v in about.items() if k != "versions"))
        lines += [f"- {note}" for note in self.notes] + ([""] if self.notes or self.sides else [])
        if self.ungated():
            lines += [f"**{self.ungated()}**", ""]
        if self.unjudged or self.nothing_gated or self.excused():
            lines += ["### Not judged", ""] + [f"- {line}" for line in self.unjudged_lines()] + [""]
        if self.regressions:
            lines += ["### Regressions", "", tabulate(cells([[r.name, r.metric, r.baseline, r.now, percent(r.change),
                                                              r.detail] for r in self.regressions]),
                                                      headers=["case", "metric", *self.labels, "change", "why"],
                                                      tablefmt="github", disable_numparse=True), ""]
        if full_report is not None:
            return "\n".join(lines + [f"The full report, every case and metric: `{full_report}`.", ""])
        lines += ["<details><summary>Every case and metric</summary>", "",
                  tabulate(cells(self.table_rows()), headers=self.headers, tablefmt="github", disable_numparse=True),
                  "", "</details>", ""]
        return "\n".join(lines)

    def write(self, directory: Path) -> None:
        """``gate.json`` and ``gate.md`` in ``directory``, each written whole or not at all."""
        atomic_write(directory / "gate.json", self.to_json().encode(), overwrite=True)
        atomic_write(directory / "gate.md", self.to_markdown().encode(), overwrite=True)


def cells(rows: list[list[str]]) -> list[list[str]]:
    """Rows for a Markdown table: a ``|`` in a cell (``max |Δ|``) escaped, so that it does not end the cell."""
    return [[str(cell).replace("|", "\\|") for cell in row] for row in rows]


def percent(change: float | None) -> str:
    return "" if change is None else f"{change:+.1%}"

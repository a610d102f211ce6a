"""The gate's report: one row per case and metric, and what the rows decide (regressed, unjudged, failed).

``parabench.gate.judge`` fills it; ``parabench.gate.render`` shows it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from parabench.gate.render import Rendering
from parabench.gate.verdict import Judgement, Verdict


@dataclass(frozen=True)
class Row:
    name: str          # the benchmark's name: test function and case id
    metric: str
    verdict: Verdict
    baseline: str = ""
    now: str = ""
    change: float | None = None
    detail: str = ""
    source: str = ""   # the stored file the baseline came from
    reason: str = ""   # why it was not judged (a key of UNJUDGED_REASONS), where it should have been

    @classmethod
    def of(cls, name: str, metric: str, judgement: Judgement, source: str = "", reason: str = "") -> "Row":
        return cls(name, metric, judgement.verdict, judgement.baseline, judgement.now, judgement.change,
                   judgement.detail, source, reason)


@dataclass
class GateReport(Rendering):
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    injected: str | None = None
    # What the two columns hold: a stored baseline and this run, or an A/B session's base and head sides.
    labels: tuple[str, str] = ("baseline", "now")
    sides: dict[str, Any] | None = None  # A/B: each side's interpreter, tree and versions (``parabench.ab.paired``)
    allowed: frozenset[str] = frozenset()  # the UNJUDGED_REASONS this run excuses (--bench-gate-allow)

    @property
    def regressions(self) -> list[Row]:
        return [row for row in self.rows if row.verdict is Verdict.REGRESSED]

    @property
    def unjudged(self) -> list[Row]:
        """Rows that should have been judged and were not, and are not excused: each fails the gate."""
        return [row for row in self.rows if row.reason and row.reason not in self.allowed]

    @property
    def nothing_gated(self) -> bool:
        """No case was judged at all (an empty selection, an empty store, a new host kind), and it is not excused."""
        return not self.judged_cases() and "nothing-gated" not in self.allowed

    @property
    def failed(self) -> bool:
        """The gate says no: a regression, something unjudged that is not excused, or nothing judged."""
        return bool(self.regressions or self.unjudged or self.nothing_gated)

    def excused(self) -> dict[str, int]:
        """The opt-outs this run used: reason → how many rows it excused (``nothing-gated``: 1 when it applied)."""
        used = Counter(row.reason for row in self.rows if row.reason and row.reason in self.allowed)
        if "nothing-gated" in self.allowed and not self.judged_cases():
            used["nothing-gated"] += 1
        return dict(used)

    def counts(self) -> dict[str, int]:
        """Cases by their worst verdict (regressed > unjudged > not comparable > missing > new > improved >
        unchanged)."""
        order = [Verdict.REGRESSED, Verdict.UNJUDGED, Verdict.NOT_COMPARABLE, Verdict.MISSING, Verdict.NEW,
                 Verdict.IMPROVED, Verdict.UNCHANGED]
        worst: dict[str, int] = {}
        for row in self.rows:
            if row.verdict in order:
                worst[row.name] = min(worst.get(row.name, len(order)), order.index(row.verdict))
        return {v.value: sum(1 for w in worst.values() if w == i) for i, v in enumerate(order)
                if any(w == i for w in worst.values())}

    def judged_cases(self) -> set[str]:
        """The cases at least one of whose metrics was judged against a baseline (not only reported)."""
        return {r.name for r in self.rows if r.verdict in (Verdict.REGRESSED, Verdict.IMPROVED, Verdict.UNCHANGED)}

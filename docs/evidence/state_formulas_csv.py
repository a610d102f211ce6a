"""Per case, rank and category: the state measured, the formula with its computed terms, and the paper's alone.

Reads pytest-benchmark JSON files (``--benchmark-json``) and writes one CSV row per case, rank and category of
every case that has a formula (``parabench.measure.formulas.predicted_for``). Usage (from the repository root):

    python3 docs/evidence/state_formulas_csv.py OUT.csv RUN.json [RUN.json …]
"""

from __future__ import annotations

import csv
import json
import sys

from parabench.measure.formulas import predicted_for

CATEGORIES = ("params", "grads", "optimizer", "master", "buffers", "total")


def rows(paths: list[str]):
    seen = set()
    for path in paths:
        for bench in json.load(open(path))["benchmarks"]:
            info = bench["extra_info"]
            case = info.get("case", {}).get("id")
            predictions = predicted_for(info) if info.get("state_bytes") else None
            if predictions is None or (bench["name"]) in seen:
                continue
            seen.add(bench["name"])
            for rank, (measured, prediction) in enumerate(zip(info["state_bytes"], predictions)):
                for category in CATEGORIES:
                    got, want = measured[category], prediction.expected[category]
                    yield {"test": bench["name"].split("[")[0], "case": case, "rank": rank, "category": category,
                           "measured": got, "formula": want, "paper": prediction.paper[category],
                           "measured/formula-1": f"{got / want - 1:+.5f}" if want else ("0" if not got else "inf"),
                           "term": prediction.terms.get(category, ("", 0))[0]}


def main(out: str, paths: list[str]) -> None:
    found = list(rows(paths))
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(found[0]))
        writer.writeheader()
        writer.writerows(found)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

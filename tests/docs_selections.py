"""A pytest plugin for tests/test_docs.py: after collection, how many of the collected cases each ``-k`` expression
selects, by pytest's own matching (``KeywordMatcher`` and ``Expression``, as ``-k`` itself applies them).

One collection per profile answers every example, where one ``pytest --collect-only -k EXPR`` each would start
pytest once per example. Asked through the environment: PARABENCH_DOCS_SELECTIONS (a JSON list of [path, expression])
in, PARABENCH_DOCS_COUNTS (a file: a JSON list of counts, or of an error message per expression) out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _pytest.mark import KeywordMatcher
from _pytest.mark.expression import Expression


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = json.loads(os.environ["PARABENCH_DOCS_SELECTIONS"])
    counts: list[int | str] = []
    for path, expression in wanted:
        try:
            compiled = Expression.compile(expression)
        except Exception as error:  # a SyntaxError since pytest 8.4, its own ParseError before
            counts.append(f"not a -k expression: {error}")
            continue
        items = [item for item in session.items if path.rstrip("/") == "bench" or item.nodeid.startswith(path)]
        counts.append(sum(1 for item in items if compiled.evaluate(KeywordMatcher.from_item(item))))
    Path(os.environ["PARABENCH_DOCS_COUNTS"]).write_text(json.dumps(counts), encoding="utf-8")

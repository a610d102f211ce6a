"""The gate's report in a GitHub Actions job summary: appended to the file ``$GITHUB_STEP_SUMMARY`` names.

GitHub takes at most 1 MiB of summary per step (more, and the step's summary is dropped with an error), and other
tools of the same step may have written to the file first. So the report goes in whole where it fits; otherwise its
short form (the summary line, the notes, what was not judged and what regressed, and where the full report is),
cut by whole lines to the room left where even that is too long; after a blank line where the file already holds
something. The text is appended in one write, so a reader
never sees half of it and what was in the file stays as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

STEP_SUMMARY_LIMIT = 1024 * 1024  # bytes per step, GitHub's limit
ENVIRONMENT = "GITHUB_STEP_SUMMARY"


class Renders(Protocol):
    def to_markdown(self, full_report: str | None = None) -> str: ...


def fit(text: str, room: int, full_report: str) -> str:
    """``text`` if its UTF-8 fits in ``room`` bytes; else its first lines that fit with a last line saying it was cut
    and where the full report is; "" if not even the first line and that one fit."""
    if len(text.encode()) <= room:
        return text
    tail = f"\n… cut to fit GitHub's 1 MiB step summary; the full report: `{full_report}`.\n"
    kept: list[str] = []
    used = len(tail.encode())
    for line in text.splitlines():
        size = len(line.encode()) + 1
        if used + size > room:
            break
        kept.append(line)
        used += size
    return "\n".join(kept) + "\n" + tail if kept else ""


def summary_text(report: Renders, room: int, full_report: str) -> tuple[str, bool]:
    """What of ``report`` goes into a summary with ``room`` bytes left: whole, short, or cut ("" for nothing); and
    whether it is the whole report."""
    whole = report.to_markdown()
    if len(whole.encode()) <= room:
        return whole, True
    return fit(report.to_markdown(full_report=full_report), room, full_report), False


def append_step_summary(report: Renders, full_report: str, path: str | Path | None = None,
                        outcome: str | None = None) -> str | None:
    """Append ``report`` to the job summary (``path``, else ``$GITHUB_STEP_SUMMARY``); None where there is none,
    else a line saying what was appended, for the session's last lines."""
    path = path if path is not None else os.environ.get(ENVIRONMENT)
    if not path:
        return None
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    except OSError as error:
        return f"job summary NOT written: {path}: {error.strerror}"
    lead = b""
    if size:  # a blank line first, so that what the file ends with (a table, a list) ends before the report
        with open(path, "rb") as f:
            f.seek(size - 1)
            lead = b"\n" if f.read(1) == b"\n" else b"\n\n"
    # The tests' own outcome first: a report can say "no regression" of a session whose tests failed.
    head = f"**{outcome}**\n\n".encode() if outcome else b""
    room = STEP_SUMMARY_LIMIT - size - len(lead) - len(head)
    text, whole = summary_text(report, room, full_report)
    if not text:
        return (f"job summary NOT written: {path} already holds {size} bytes of GitHub's {STEP_SUMMARY_LIMIT} per "
                f"step; the report is {full_report}")
    data = lead + head + text.encode()
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(handle, data)  # one write: appended whole (a regular file takes it all)
    finally:
        os.close(handle)
    return (f"job summary: {'the report' if whole else 'the short report (the whole one is over the 1 MiB limit)'} "
            f"appended to {path} ({written} bytes)")

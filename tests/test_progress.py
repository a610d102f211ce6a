"""Live progress: the status text, its place on pytest's terminal line, and the status file."""

from __future__ import annotations

import io
import re

from _pytest._io import TerminalWriter
from hypothesis import given
from hypothesis import strategies as st

from fixtures.progress import (
    FileProgress,
    Progress,
    RunningTest,
    TerminalProgress,
    status_line,
    step_text,
    terminal_status,
)

CASE_ID = "torch-ddp-adamw-mlp_digits-w2-fp32"


def render(output: str) -> list[str]:
    """What a terminal shows for ``output``: text, newlines, CR, cursor-forward, erase-to-end; colours dropped."""
    lines, column = [""], 0
    for token in re.findall(r"\x1b\[(\d*)([A-Za-z])|(\r)|(\n)|([^\x1b\r\n])", output):
        count, command, cr, newline, char = token
        line = lines[-1]
        if newline:
            lines.append("")
            column = 0
        elif cr:
            column = 0
        elif command == "C":
            column += int(count or 1)
        elif command == "K":
            lines[-1] = line[:column]
        elif char:
            line = line.ljust(column)
            lines[-1] = line[:column] + char + line[column + 1:]
            column += 1
    return lines


def test_step_text_says_the_step_of_how_many_and_the_seconds():
    assert step_text(12, 42, 8.34) == "step 12/42, 8.3 s"
    assert step_text(0, 0, 1.25) == "starting, 1.2 s"  # before rank 0 has reported a step
    assert status_line(CASE_ID, 12, 42, 8.34, 17, 230) == f"{CASE_ID}: step 12/42, 8.3 s (test 17 of 230)"


def test_terminal_status_shows_the_case_id_only_when_asked_and_shortens_it_first():
    assert terminal_status(12, 42, 8.3, 80) == "  [step 12/42, 8.3 s]"
    assert terminal_status(12, 42, 8.3, 80, CASE_ID) == f"  [{CASE_ID} step 12/42, 8.3 s]"
    short = terminal_status(12, 42, 8.3, 40, CASE_ID)
    assert short == "  [torch-ddp-adamw... step 12/42, 8.3 s]" and len(short) == 40
    assert terminal_status(12, 42, 8.3, 25, CASE_ID) == "  [step 12/42, 8.3 s]"  # no room for a useful id
    assert terminal_status(12, 42, 8.3, 10, CASE_ID) == "  [step 12"
    assert terminal_status(12, 42, 8.3, 0, CASE_ID) == ""


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.floats(0, 1e6), st.integers(-5, 300),
       st.one_of(st.none(), st.text(min_size=1)))
def test_terminal_status_never_exceeds_its_columns(done, total, elapsed_s, columns, case_id):
    assert len(terminal_status(done, total, elapsed_s, columns, case_id)) <= max(columns, 0)


def terminal(width: int = 120) -> tuple[TerminalWriter, io.StringIO]:
    output = io.StringIO()
    writer = TerminalWriter(output)
    writer.fullwidth, writer.hasmarkup = width, True
    return writer, output


def test_the_status_rides_at_the_line_end_and_leaves_pytests_line_as_it_was():
    writer, output = terminal()
    writer.write("bench/test_torch_strategies.py ")
    writer.write("..", green=True)
    pytest_line = "bench/test_torch_strategies.py .."
    display = TerminalProgress(writer, capture=None, verbose=False)
    with display.watch(CASE_ID) as on_wait:
        on_wait(3, 42, 1.04)
        assert render(output.getvalue()) == [f"{pytest_line}  [{CASE_ID} step 3/42, 1.0 s]"]
        display.show(CASE_ID, 12, 42, 8.34)  # the next update replaces the status, whatever its length
        assert render(output.getvalue()) == [f"{pytest_line}  [{CASE_ID} step 12/42, 8.3 s]"]
    assert render(output.getvalue()) == [pytest_line]
    assert writer.width_of_current_line == len(pytest_line)  # pytest still knows where its line ends
    writer.write(".", green=True)
    writer.line()
    assert render(output.getvalue()) == [pytest_line + ".", ""]
    assert "\x1b[32m" in output.getvalue()  # pytest's colours were not rewritten away


def test_the_status_is_cut_to_the_terminal_and_left_out_where_the_line_fills_it():
    writer, output = terminal(width=50)
    writer.write("bench/test_torch_strategies.py::test_train[x] ")  # 46 columns
    display = TerminalProgress(writer, capture=None, verbose=True, test=RunningTest(1, 1, "test_train[x]"))
    with display.watch("x") as on_wait:
        on_wait(3, 42, 1.0)
        assert render(output.getvalue())[0] == "bench/test_torch_strategies.py::test_train[x]   ["
    assert render(output.getvalue()) == ["bench/test_torch_strategies.py::test_train[x] "]

    writer, output = terminal(width=10)
    writer.write("0123456789")  # fills its row: where the cursor is depends on the terminal
    with TerminalProgress(writer, capture=None, verbose=True).watch(CASE_ID) as on_wait:
        on_wait(3, 42, 1.0)
    assert output.getvalue() == "0123456789"


def test_the_status_file_holds_one_line_and_goes_at_the_end(tmp_path):
    path = tmp_path / "reports" / "progress.txt"
    display = FileProgress(path, RunningTest(17, 230, f"test_train[{CASE_ID}]"))
    with display.watch(CASE_ID) as on_wait:
        on_wait(12, 42, 8.34)
    assert path.read_text() == f"{CASE_ID}: step 12/42, 8.3 s (test 17 of 230)\n"
    display.close()
    assert not path.exists()
    display.close()  # twice is harmless


def test_verbose_mode_names_only_a_case_that_is_not_the_tests_own():
    test = RunningTest(1, 1, f"test_train[{CASE_ID}]")
    for case_id, status in [(CASE_ID, "  [step 3/42, 1.0 s]"),  # the test's own case
                            ("single-adamw-mlp_digits-w1-fp32",  # its reference, computed for it
                             "  [single-adamw-mlp_digits-w1-fp32 step 3/42, 1.0 s]")]:
        writer, output = terminal()
        with TerminalProgress(writer, capture=None, verbose=True, test=test).watch(case_id) as on_wait:
            on_wait(3, 42, 1.0)
            assert render(output.getvalue()) == [status]


def test_a_display_that_cannot_write_stops_instead_of_failing_the_case(tmp_path):
    (tmp_path / "reports").write_text("a file where the directory should be")
    display = FileProgress(tmp_path / "reports" / "progress.txt", RunningTest(1, 1, CASE_ID))
    with display.watch(CASE_ID) as on_wait:
        on_wait(1, 2, 0.5)
        on_wait(2, 2, 3.0)


def test_off_asks_the_pool_for_no_callback():
    with Progress().watch(CASE_ID) as on_wait:
        assert on_wait is None

"""The command lines the documentation shows, checked against the code.

README.md, CONTRIBUTING.md and the pages under docs/ name options, case selections and subcommands; each is held to
what the code offers: every ``--bench-*`` and ``--benchmark-*`` option exists in ``pytest bench/ --help``, every
``pytest bench/ -k EXPR`` example selects at least one case (in the profile it names, the default one otherwise),
every ``python -m parabench SUBCOMMAND`` exists, and the docs build in MkDocs' strict mode (a broken link or a page
missing from nav fails it). docs/evidence/ is left out of the ``-k`` check: its files record the commands that made
them, as they were run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EVIDENCE = DOCS / "evidence"


def documents() -> list[Path]:
    """Every Markdown file the project's documentation consists of."""
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]


def name(path: Path) -> str:
    return str(path.relative_to(REPO))


OPTION = re.compile(r"--bench(?:mark)?-[a-z0-9]+(?:-[a-z0-9]+)*")
# `pytest bench/…` up to the end of the command: a closing backtick, a comment, `&&`, `|` or the line's end.
PYTEST_COMMAND = re.compile(r"pytest\s+(bench/[^\s`]*)([^`\n#|&]*)")
SELECTION = re.compile(r"""(?:^|\s)-k\s+(?:"([^"]*)"|'([^']*)'|(\S+))""")
PROFILE = re.compile(r"--bench-profile[= ]([a-z0-9-]+)")
# -k EXPR, -k NAME, -k …, -k "$VARIABLE": a placeholder, not an example
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*|.*….*|\$\{?[A-Za-z_]+\}?")
# Pages whose selections name a package's cases, which exist only with that package installed: tests/test_plugins.py
# installs the example package and selects its cases with the page's -k example_mlp.
NEEDS_A_PACKAGE = {"docs/plugins.md"}
SUBCOMMAND = re.compile(r"python3? -m parabench\s+([a-z][a-z-]*)")
MODULE_COMMAND = re.compile(r"python3? -m (parabench(?:\.[a-z_]+)+)")


@dataclass(frozen=True)
class Selection:
    """One ``pytest bench/… -k EXPR`` example, where the docs show it."""

    path: str  # bench/ or a module under it
    expression: str
    profile: str | None
    where: str


def unknown_options(text: str, known: set[str]) -> list[str]:
    """The ``--bench-*`` / ``--benchmark-*`` options ``text`` names that are not in ``known``."""
    return sorted(set(OPTION.findall(text)) - known)


def selections(text: str, where: str) -> list[Selection]:
    """The ``pytest bench/ -k EXPR`` examples in ``text`` (placeholders such as ``-k EXPR`` left out)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for command in PYTEST_COMMAND.finditer(line):
            arguments = command.group(2)
            selection = SELECTION.search(arguments)
            if not selection:
                continue
            expression = next(group for group in selection.groups() if group is not None)
            if PLACEHOLDER.fullmatch(expression):
                continue
            profile = PROFILE.search(arguments)
            found.append(Selection(command.group(1), expression, profile[1] if profile else None,
                                   f"{where}:{number}"))
    return found


def unmatched(found: list[Selection], tmp_path: Path) -> list[tuple[Selection, str]]:
    """The selections that select no case, each with why: one ``pytest bench/ --collect-only -q`` per profile, in
    which ``tests/docs_selections.py`` applies every expression to the collected cases as ``-k`` would."""
    out = []
    for profile in sorted({s.profile for s in found}, key=str):
        asked = [s for s in found if s.profile == profile]
        counts = tmp_path / f"counts-{profile or 'default'}.json"
        env = {**os.environ, "PARABENCH_DOCS_SELECTIONS": json.dumps([[s.path, s.expression] for s in asked]),
               "PARABENCH_DOCS_COUNTS": str(counts)}
        command = [sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q", "-p", "no:cacheprovider",
                   "-p", "tests.docs_selections", *([f"--bench-profile={profile}"] if profile else [])]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and counts.exists(), (
            f"{' '.join(command[2:])} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        for selection, count in zip(asked, json.loads(counts.read_text(encoding="utf-8"))):
            if count == 0:
                out.append((selection, f"selects no case in the {profile or 'default'} profile"))
            elif isinstance(count, str):
                out.append((selection, count))
    return out


def unknown_subcommands(text: str, known: set[str]) -> list[str]:
    return sorted(set(SUBCOMMAND.findall(text)) - known)


def unrunnable_modules(text: str) -> list[str]:
    """The ``python -m parabench.MODULE`` commands of ``text`` that do not run: no such module, or no ``__main__``."""
    import importlib.util

    missing = []
    for module in sorted(set(MODULE_COMMAND.findall(text))):
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None and spec.submodule_search_locations is not None:  # a package runs its __main__
            spec = importlib.util.find_spec(module + ".__main__")
        if spec is None or spec.origin is None or "__main__" not in Path(spec.origin).read_text(encoding="utf-8"):
            missing.append(module)
    return missing


def run(command: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bench_options() -> set[str]:
    """The options ``pytest bench/ --help`` lists (asked once per session)."""
    done = run([sys.executable, "-m", "pytest", "bench/", "--help", "-p", "no:cacheprovider"])
    assert done.returncode == 0, f"pytest bench/ --help failed:\n{done.stdout}\n{done.stderr}"
    options = set(OPTION.findall(done.stdout))
    assert "--bench-gate" in options and "--benchmark-compare" in options, done.stdout[-2000:]
    return options


@pytest.fixture(scope="module")
def subcommands() -> set[str]:
    done = run([sys.executable, "-m", "parabench", "--help"])
    assert done.returncode == 0, done.stderr
    listed = re.search(r"\{([a-z,-]+)\}", done.stdout)
    assert listed, f"python -m parabench --help lists no subcommands:\n{done.stdout}"
    return set(listed[1].split(","))


def all_selections() -> list[Selection]:
    found = []
    for path in documents():
        if EVIDENCE in path.parents:
            continue
        if name(path) not in NEEDS_A_PACKAGE:
            found.extend(selections(path.read_text(encoding="utf-8"), name(path)))
    return found


SELECTIONS = all_selections()


def test_the_docs_show_selections_to_check():
    assert len(SELECTIONS) >= 5, [s.where for s in SELECTIONS]


@pytest.mark.parametrize("document", documents(), ids=name)
def test_every_option_the_docs_name_exists(document, bench_options):
    unknown = unknown_options(document.read_text(encoding="utf-8"), bench_options)
    assert not unknown, (f"{name(document)} names {', '.join(unknown)}, which pytest bench/ --help does not list: "
                         f"correct the page, or add the option (fixtures/options.py)")


def test_every_selection_the_docs_show_selects_a_case(tmp_path):
    failed = unmatched(SELECTIONS, tmp_path)
    assert not failed, "; ".join(
        f"{s.where}: pytest {s.path} -k {s.expression!r}"
        f"{' --bench-profile=' + s.profile if s.profile else ''} {why}" for s, why in failed) + (
        ": correct the example, or name the profile it needs (--bench-profile=full)")


@pytest.mark.parametrize("document", documents(), ids=name)
def test_every_parabench_subcommand_the_docs_name_exists(document, subcommands):
    unknown = unknown_subcommands(document.read_text(encoding="utf-8"), subcommands)
    assert not unknown, (f"{name(document)} names python -m parabench {', '.join(unknown)}; "
                         f"python -m parabench --help knows {', '.join(sorted(subcommands))}")


@pytest.mark.parametrize("document", documents(), ids=name)
def test_every_module_command_the_docs_name_runs(document):
    broken = unrunnable_modules(document.read_text(encoding="utf-8"))
    assert not broken, (f"{name(document)} names python -m {', '.join(broken)}, which does not run as a command "
                        f"(no such module, or it has no __main__): correct the page, or keep the command's module")


def test_a_module_command_that_does_not_run_is_named():
    assert unrunnable_modules("python -m parabench.selftest --ab; python -m parabench.gpucheck; "
                              "python3 -m parabench.relative x.json; python -m parabench.nonesuch; "
                              "python -m parabench.gate.verdict") == ["parabench.gate.verdict", "parabench.nonesuch"]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root)


def test_the_docs_build_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: python3 -m pip install -c constraints.txt "
                                         "-c requirements-lock.txt -e '.[docs]'")
    done = build(REPO, tmp_path / "site")
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"


# The checks themselves, on planted errors: each must be able to fail.

def test_an_option_that_does_not_exist_is_named(bench_options):
    assert unknown_options("run `pytest bench/ --bench-gate --bench-no-such-option`", bench_options) == [
        "--bench-no-such-option"]


def test_a_selection_that_selects_nothing_is_named(tmp_path):
    text = ("    pytest bench/ -k no_such_strategy_anywhere  # a comment\n"
            "    pytest bench/test_fairscale.py -k deepspeed\n"
            "    pytest bench/ -k 'torch-ddp and not'\n"
            "    pytest bench/ -k fsdp\n")
    found = selections(text, "x")
    assert [s.expression for s in found] == ["no_such_strategy_anywhere", "deepspeed", "torch-ddp and not", "fsdp"]
    failed = unmatched(found, tmp_path)
    assert [(s.where, why.split(":")[0]) for s, why in failed] == [
        ("x:1", "selects no case in the default profile"), ("x:2", "selects no case in the default profile"),
        ("x:3", "not a -k expression")]


def test_selections_are_read_as_the_docs_write_them():
    text = ('`pytest bench/ -k "torch-zero and adamw"`, `pytest bench/test_fairscale.py -k \'sdp\'`, '
            '`pytest bench/ -k EXPR --bench-gate`\n'
            'python3 -m pytest bench/ -k deepspeed --benchmark-json=ds.json && python3 -m pytest bench/ -k x')
    assert [(s.path, s.expression, s.profile) for s in selections(text, "x")] == [
        ("bench/", "torch-zero and adamw", None), ("bench/test_fairscale.py", "sdp", None),
        ("bench/", "deepspeed", None), ("bench/", "x", None)]


def test_a_subcommand_that_does_not_exist_is_named(subcommands):
    assert unknown_subcommands("python -m parabench report 7; python3 -m parabench nonesuch; "
                               "python -m parabench.gpucheck", subcommands) == ["nonesuch"]


def test_a_broken_link_fails_the_strict_build(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: python3 -m pip install -c constraints.txt "
                                         "-c requirements-lock.txt -e '.[docs]'")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](no-such-page.md)\n", encoding="utf-8")
    done = build(tmp_path, tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stdout + done.stderr

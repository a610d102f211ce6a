"""--bench-ab=PACKAGE==VERSION: the overlay environment (parabench.ab.overlay), made from wheels built here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parabench.ab import overlay
from parabench.ab.side import BaseError, resolve

REPO = Path(__file__).resolve().parents[1]


def test_package_pins_are_told_apart_from_interpreters_and_revisions():
    assert overlay.parse("HEAD~1") is None and overlay.parse("/opt/venv/bin/python") is None
    assert [str(p) for p in overlay.parse("transformers==4.51.3, DeepSpeed==0.19.7")] == [
        "DeepSpeed==0.19.7", "transformers==4.51.3"]
    with pytest.raises(overlay.OverlayError, match=r"'deepspeed>=0.19' is not PACKAGE==VERSION"):
        overlay.parse("torch==2.13.0,deepspeed>=0.19")
    with pytest.raises(overlay.OverlayError, match="named twice"):
        overlay.parse("deepspeed==0.19.7,DeepSpeed==0.19.8")


def test_the_project_pins_are_kept_except_the_named_packages(tmp_path):
    pins = overlay.parse("deep_speed==1.0")
    (tmp_path / "lock.txt").write_text("Deep-Speed==0.19.8\n    # via x\ntorch==2.13.0\ndeepspeedx==1\n")
    assert overlay._pins_without(tmp_path / "lock.txt", pins) == "    # via x\ntorch==2.13.0\ndeepspeedx==1\n"


def wheel(tmp_path: Path, name: str, version: str) -> None:
    """A wheel of module ``name`` whose ``VERSION`` is ``version``, into tmp_path/wheels."""
    source = tmp_path / f"src-{name}-{version}"
    (source / name).mkdir(parents=True)
    (source / name / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (source / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "{version}"
        [tool.setuptools]
        packages = ["{name}"]
    """))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "wheels")], check=True, capture_output=True)


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip finds packages only in tmp_path/wheels; overlays are cached under tmp_path/cache."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("PARABENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def run(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_an_overlay_holds_the_named_version_in_front_of_this_environment_and_is_made_once(local_index):
    # tabulate is one of this environment's packages: the overlay's version must shadow it, and torch (not named)
    # must still come from this environment.
    wheel(local_index, "tabulate", "0.0.1")
    made = resolve("tabulate==0.0.1", REPO)
    assert made.overlay and "made in" in made.overlay and made.revision is None
    python = Path(made.python)
    assert run(python, "import tabulate; print(tabulate.VERSION)") == "0.0.1"
    import torch

    assert run(python, "import torch; print(torch.__version__)") == torch.__version__
    assert run(python, "import sys; print(sys.prefix)") == str(python.parent.parent)
    again = resolve("tabulate==0.0.1", REPO)
    assert again.python == made.python and "reused" in again.overlay
    assert len(list((local_index / "cache" / "ab-overlays").iterdir())) == 1  # nothing half-built left beside it


def test_a_version_that_cannot_install_is_a_usage_error_naming_it_and_pips_reason(local_index):
    (local_index / "wheels").mkdir()
    with pytest.raises(BaseError, match=r"nosuchpkg==1\.0 cannot be installed over this environment: .*No matching "
                                        r"distribution found for nosuchpkg==1\.0; nothing was run"):
        resolve("nosuchpkg==1.0", REPO)
    assert not any((local_index / "cache" / "ab-overlays").iterdir())  # the failed build left nothing


def test_a_revision_like_spec_with_one_equals_sign_says_how_to_name_a_version():
    with pytest.raises(BaseError, match="a package's version is PACKAGE==VERSION"):
        resolve("deepspeed=0.19.7", REPO)


def session_with_base(pins, base_versions):
    """An A/B session whose base side (a stand-in) answered ready with ``base_versions``."""
    from types import SimpleNamespace

    from fixtures.ab import ABSession
    from parabench.ab.side import BaseSpec

    spec = BaseSpec(text=",".join(f"{n}=={v}" for n, v in pins), python="/overlay/bin/python", revision=None,
                    overlay="an overlay", pins=pins)
    ab = ABSession(config=None, spec=spec, rule=None, policy=None)
    ab.side = SimpleNamespace(ready={"versions": base_versions}, close=lambda: None)
    return ab


def test_a_base_side_that_does_not_run_the_pinned_version_stops_the_session():
    ab = session_with_base((("tabulate", "0.0.1"),), {"tabulate": "0.9.0"})
    with pytest.raises(pytest.UsageError, match=r"the base side imports tabulate 0\.9\.0 \(pinned 0\.0\.1\)"):
        ab.check_pins()
    assert ab.side is None  # closed: nothing runs


def test_a_pin_equal_to_heads_own_version_is_said_to_be_an_a_a_session():
    import importlib.metadata

    mine = importlib.metadata.version("tabulate")
    ab = session_with_base((("tabulate", mine),), {"tabulate": mine})
    ab.check_pins()
    assert ab.warnings == [f"--bench-ab=tabulate=={mine}: head runs tabulate=={mine} too: for that package this is an "
                           f"A/A session"]
    ab = session_with_base((("tabulate", "0.0.1"),), {"tabulate": "0.0.1"})
    ab.check_pins()
    assert ab.warnings == []

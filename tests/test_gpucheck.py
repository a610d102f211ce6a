"""The one-GPU check's wiring, without a GPU: its selection, the wheels it carries, its record and its verdict."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from parabench.cases.case import Case
from parabench.cases.matrix import case_packages, skip_reason
from parabench.cases.requirements import Machine
from parabench.gpucheck import record, summary, wheels
from parabench.gpucheck.families import FAMILIES, PRECISIONS, family_of
from parabench.gpucheck.summary import Step

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> list[dict]:
    """What ``python -m parabench.gpucheck --dry-run`` selects: its collection, as its record plugin writes it."""
    directory = tmp_path_factory.mktemp("gpucheck")
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q", "--bench-profile=gpu", "--bench-device=cpu",
         "-p", "parabench.gpucheck.record", "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
        timeout=300, env={**os.environ, record.DIRECTORY_VARIABLE: str(directory)})
    assert collected.returncode == 0, (f"collecting the gpu profile failed:\n{collected.stdout[-3000:]}"
                                       f"{collected.stderr[-3000:]}")
    return json.loads((directory / record.SELECTION_FILE).read_text())


def cases_of(selection: list[dict]) -> list[Case]:
    return [Case(**{k: v for k, v in s["case"].items() if k != "id"}) for s in selection if s["case"]]


def test_the_gpu_profile_selects_every_family_in_bf16_and_fp16_on_one_rank(selection):
    found = cases_of(selection)
    covered = {(family_of(case.to_dict()), case.precision) for case in found}
    missing = [f"{f.label} {p}" for f in FAMILIES for p in PRECISIONS if (f.label, p) not in covered]
    assert not missing, f"the gpu profile selects no case of: {', '.join(missing)}"
    assert all(case.world_size == 1 for case in found), [c.id for c in found if c.world_size != 1]
    # Only the check's module and the scaling module's one-rank points, nothing of the 2-rank matrix.
    assert {s["nodeid"].split("::")[0] for s in selection} == {"bench/test_one_device.py", "bench/test_scaling.py"}


def test_on_one_cuda_device_every_selected_case_runs(selection):
    one_gpu = Machine(cuda_devices=1, max_cpu_world_size=4)
    reasons = {case.id: skip_reason(case, one_gpu) for case in cases_of(selection)}
    assert not {k: v for k, v in reasons.items() if v}, reasons


def test_on_the_cpu_only_what_needs_cuda_skips(selection):
    """The dry run's half: fp16 and Gemini's auto placement skip for CUDA, every bf16 case without it runs."""
    for selected in selection:
        case = selected["case"]
        needs_cuda = case["precision"] == "fp16" or case["options"].get("placement") == "auto"
        if needs_cuda:
            assert selected["skip"] and "needs a CUDA device" in selected["skip"], selected
        else:
            assert selected["skip"] is None, selected


def test_the_carried_wheels_cover_what_the_selected_cases_import(selection):
    needed = {name for case in cases_of(selection) for name in case_packages(case)}
    uncovered = sorted(n for n in needed if wheels.provides(n) is None and n not in wheels.ON_THE_MACHINE)
    assert not uncovered, f"imports of the selected cases neither carried nor expected on the GPU machine: {uncovered}"
    carried = {n for n in needed if wheels.provides(n)}
    # The frameworks the families stand for travel as wheels: the GPU machine has none of them.
    assert {"deepspeed", "colossalai", "datasets"} <= carried, carried


def test_every_carried_wheel_is_pinned_and_the_frameworks_at_the_locked_versions():
    versions = wheels.pinned_versions()
    requirements = {w.name: wheels.requirement(w, versions) for w in wheels.WHEELS}
    assert requirements["deepspeed"] == "deepspeed==0.19.8" and requirements["colossalai"] == "colossalai==0.5.0"
    assert requirements["fairscale"] == "fairscale==0.4.13" and requirements["datasets"].startswith("datasets==")
    with pytest.raises(ValueError, match="no pinned version"):
        wheels.requirement(wheels.Wheel("not-a-pinned-package", "nobody"), versions)


def test_a_wheel_slimmed_of_its_native_libraries_is_pure_python_and_installs(tmp_path):
    path = tmp_path / "demo-1.0-py3-none-manylinux_2_24_x86_64.whl"
    files = {"demo/__init__.py": b"VALUE = 1\n", "demo/libdemo_cuda.so": b"\x7fELF" + b"0" * 4096,
             "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             "demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
                                         b"Tag: py3-none-manylinux_2_24_x86_64\n"}
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("demo-1.0.dist-info/RECORD", "")
    slimmed = wheels.slim(path)
    assert slimmed.name == "demo-1.0-py3-none-any.whl" and not path.exists()
    with zipfile.ZipFile(slimmed) as wheel:
        names = wheel.namelist()
        assert "demo/libdemo_cuda.so" not in names and "demo/__init__.py" in names
        text = wheel.read("demo-1.0.dist-info/WHEEL").decode()
        assert "Root-Is-Purelib: true" in text and "Tag: py3-none-any" in text and "manylinux" not in text
        for line in wheel.read("demo-1.0.dist-info/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if digest:
                data = wheel.read(name)
                hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert digest == "sha256=" + hashed
                assert int(size) == len(data)
    assert not wheels.installed_already([slimmed], tmp_path / "site")
    done = wheels.install([slimmed], tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "demo" / "__init__.py").exists()
    # A second run keeps the same wheels' installation (its ops' sources untouched); other wheels reinstall.
    assert wheels.installed_already([slimmed], tmp_path / "site")
    with zipfile.ZipFile(slimmed, "a") as wheel:
        wheel.writestr("demo/extra.py", "")
    assert not wheels.installed_already([slimmed], tmp_path / "site")


def test_the_record_plugin_writes_each_outcome_as_its_test_ends(tmp_path):
    (tmp_path / "test_demo.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_broken(): assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='needs a CUDA device')\n"
        "def test_skipped(): pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "test_demo.py", "-p", "parabench.gpucheck.record", "-q",
                           "-p", "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, record.DIRECTORY_VARIABLE: str(tmp_path / "out"),
                               "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stdout + done.stderr
    selected = json.loads((tmp_path / "out" / record.SELECTION_FILE).read_text())
    assert [s["nodeid"] for s in selected] == ["test_demo.py::test_ok", "test_demo.py::test_broken",
                                               "test_demo.py::test_skipped"]
    lines = [json.loads(line) for line in (tmp_path / "out" / record.OUTCOMES_FILE).read_text().splitlines()]
    outcomes = {line["nodeid"].split("::")[1]: line for line in lines}
    assert {name: line["outcome"] for name, line in outcomes.items()} == {
        "test_ok": "passed", "test_broken": "failed", "test_skipped": "skipped"}
    assert "one is not two" in outcomes["test_broken"]["message"]
    assert outcomes["test_skipped"]["message"] == "needs a CUDA device"


def write_run(directory: Path, outcomes: dict[str, dict]) -> None:
    """A run's record: every family's cases selected in both precisions, with ``outcomes`` by case id."""
    selection, lines = [], []
    for family in FAMILIES:
        for precision in PRECISIONS:
            case = Case(family.strategies[0], "adamw", "gpt2-text", 1, precision, options=dict(family.options))
            nodeid = f"bench/test_one_device.py::test_train[{case.id}]"
            selection.append({"nodeid": nodeid, "case": case.to_dict(), "skip": None})
            outcome = outcomes.get(case.id, {"outcome": "passed", "median_step_seconds": 0.004,
                                             "peak_allocated_bytes": 3 * summary.MIB,
                                             "cuda_max_allocated_bytes": 9 * summary.MIB})
            if outcome is not None:
                lines.append(json.dumps({"nodeid": nodeid, **outcome}))
    (directory / record.SELECTION_FILE).write_text(json.dumps(selection))
    (directory / record.OUTCOMES_FILE).write_text("\n".join(lines) + "\n")


def test_the_verdict_passes_only_when_every_family_passed_on_cuda(tmp_path):
    write_run(tmp_path, {})
    found = summary.rows(tmp_path, "cuda")
    text, passed = summary.render([Step("fork start-up", True, 1.0)], found, "cuda", 100.0)
    assert passed and not summary.uncovered(found)
    assert "4.00" in text and "3.00" in text and "9.00" in text  # median step ms, peak rise and high-water MiB
    text, passed = summary.render([Step("kernel colossalai-fused-optim", False, 9.0, "failed")], found, "cuda", 1.0)
    assert not passed and "FAILED kernel colossalai-fused-optim" in text


def test_a_failed_skipped_or_unrun_case_fails_the_check_on_cuda(tmp_path):
    zero3 = "deepspeed-zero3-adamw-gpt2_text-w1-fp16"
    gemini = "colossalai-gemini-adamw-gpt2_text-w1-bf16-placementauto"
    ddp = "torch-ddp-amp-adamw-gpt2_text-w1-bf16"
    write_run(tmp_path, {zero3: {"outcome": "failed", "message": "loss left the reference at step 3"},
                         gemini: {"outcome": "skipped", "message": "colossalai-gemini needs a CUDA device"},
                         ddp: None})
    found = {row.test: row for row in summary.rows(tmp_path, "cuda")}
    assert not found[f"test_train[{zero3}]"].ok and "step 3" in found[f"test_train[{zero3}]"].note
    assert not found[f"test_train[{gemini}]"].ok
    assert found[f"test_train[{ddp}]"].outcome == "not run" and not found[f"test_train[{ddp}]"].ok
    assert "time limit" in found[f"test_train[{ddp}]"].note
    # A test left out of the run (its kernel did not build) says why.
    why = {f"bench/test_one_device.py::test_train[{ddp}]": "not run: the kernel adamw loads did not build"}
    left_out = {row.test: row for row in summary.rows(tmp_path, "cuda", not_run=why)}
    assert left_out[f"test_train[{ddp}]"].note == why[f"bench/test_one_device.py::test_train[{ddp}]"]
    assert set(summary.uncovered(list(found.values()))) == {
        "DeepSpeed ZeRO-3 fp16", "ColossalAI Gemini (auto placement) bf16", "torch DDP bf16"}
    text, passed = summary.render([], list(found.values()), "cuda", 1.0)
    assert not passed and "FAILED (failed)" in text and "FAILED (not run)" in text
    # The dry run's half: a skip for CUDA is what the CPU is expected to do; a failure still fails it.
    on_cpu = {row.test: row for row in summary.rows(tmp_path, "cpu")}
    assert on_cpu[f"test_train[{gemini}]"].ok and not on_cpu[f"test_train[{zero3}]"].ok


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_cuda_device_the_check_says_so_and_fails(tmp_path):
    done = subprocess.run([sys.executable, "-m", "parabench.gpucheck", "--no-wheels", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA device" in done.stdout and "--dry-run" in done.stdout
    assert "no CUDA device" in (tmp_path / "gpucheck.log").read_text()


def test_the_fork_servers_imports_leave_cuda_untouched_and_a_fork_computes():
    done = subprocess.run([sys.executable, "-m", "parabench.gpucheck.forkcheck", "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leave CUDA uninitialised" in done.stdout and "a forked child computed on cpu" in done.stdout

"""The GPU check's steps in order, within one time limit: wheels, selection, packages, fork start-up, kernels, cases."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from parabench.gpucheck import record, summary, wheels
from parabench.gpucheck.summary import Step

REPO = wheels.REPO
PROFILE = "gpu"                # bench/profiles.toml's selection
TIME_LIMIT_S = 480.0           # the whole check, wheels to summary
KERNELS_LIMIT_S = 240.0        # building the CUDA kernels, all at once
CASE_TIMEOUT_S = 180.0         # --bench-timeout: one case on its ranks
SUMMARY_RESERVE_S = 15.0       # kept back from pytest's share for stopping it and writing the summary
# What one run writes under --out (cleared first; nothing else there is touched).
# The installed wheels (site/) stay while they are the same wheels: see wheels.installed_already.
OUTPUTS = ("gpucheck.log", "summary.txt", "summary.json", "benchmark.json", "junit.xml", record.SELECTION_FILE,
           record.OUTCOMES_FILE, "reports")


class Log:
    """Prints a line and keeps it in the run's log file."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8", buffering=1)

    def __call__(self, text: str = "", echo: bool = True) -> None:
        self.file.write(text + "\n")
        if echo:
            print(text, flush=True)


def run_logged(log: Log, command: list[str], env: dict[str, str], timeout_s: float,
               echo: bool = True) -> tuple[int | None, float]:
    """Run ``command`` in the repository, its output into the log as it comes: (exit code or None if it ran out
    of time, seconds). Past ``timeout_s`` its process group gets SIGTERM (pytest then reports and closes its
    ranks), and SIGKILL 20 s later."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)
    pump = threading.Thread(target=lambda: [log(line.rstrip("\n"), echo) for line in process.stdout], daemon=True)
    pump.start()
    try:
        code = process.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        log(f"gpucheck: stopping {' '.join(command[2:4])} at its time limit ({timeout_s:.0f} s)")
        _signal(process, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()
        code = None
    pump.join(timeout=5)
    return code, time.monotonic() - started


def _signal(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def prepare(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def environment_lines(device: str) -> list[str]:
    import platform

    import torch

    lines = [f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} (CUDA build "
             f"{torch.version.cuda or 'none'}), device {device}"]
    if device == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), nvcc: "
                     f"{shutil.which('nvcc') or 'not on PATH'}")
    return lines


def no_cuda_message() -> str | None:
    """Why this machine cannot run the check on CUDA, or None if it can."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count():
        return None
    return (f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) sees no GPU. "
            f"This check needs one NVIDIA GPU; `python -m parabench.gpucheck --dry-run` runs its CPU half here.")


def install_wheels(log: Log, folder: Path, site: Path, env: dict[str, str]) -> Step:
    started = time.monotonic()
    if not folder.is_dir() or not list(folder.glob("*.whl")):
        return Step("wheels", False, 0.0, f"no wheels in {folder} (make them with python -m parabench.gpucheck "
                                          f"--build-wheels {folder})")
    chosen, kept = wheels.to_install(folder)
    log(f"gpucheck: wheels from {folder}:")
    for line in wheels.describe(sorted(folder.glob("*.whl"))):
        log(line)
    for path, version in kept:
        log(f"  kept this machine's {wheels.wheel_name(path)} {version} (not installing {path.name})")
    again = wheels.installed_already(chosen, site)
    if not again:
        done = wheels.install(chosen, site)
        if done.returncode:
            return Step("wheels", False, time.monotonic() - started,
                        "pip install failed: " + " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:]))
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return Step("wheels", True, time.monotonic() - started,
                f"{len(chosen)} {'there from the last run' if again else 'installed'} in {site}, "
                f"{len(kept)} kept from this machine")


def pytest_command(out: Path, device: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "bench/", f"--bench-profile={PROFILE}", f"--bench-device={device}",
            "-p", f"{record.__name__}", "-p", "no:cacheprovider", f"--bench-report={out / 'reports'}", *extra]


def collect(log: Log, out: Path, device: str, env: dict[str, str], extra: list[str]) -> tuple[Step, list[dict]]:
    code, seconds = run_logged(log, pytest_command(out, device, ["--collect-only", "-q", *extra]), env, 180,
                               echo=False)
    path = out / record.SELECTION_FILE
    if code != 0 or not path.exists():
        return Step("selection", False, seconds, f"collection failed (exit {code}; see the log)"), []
    selection = json.loads(path.read_text(encoding="utf-8"))
    skipped = sum(1 for s in selection if s["skip"])
    return Step("selection", bool(selection), seconds, f"{len(selection)} tests of profile {PROFILE}"
                + (f", {skipped} skipping here" if skipped else "")), selection


def check_packages(selection: list[dict]) -> Step:
    """Every package the selected cases and the harness import is importable; the carried ones at their pins."""
    from parabench.cases.case import Case
    from parabench.cases.matrix import case_packages

    started = time.monotonic()
    needed = set(wheels.ON_THE_MACHINE)
    for selected in selection:
        if selected["case"]:
            fields = {k: v for k, v in selected["case"].items() if k != "id"}
            needed.update(case_packages(Case(**fields)))
    missing = sorted(name for name in needed if importlib.util.find_spec(name) is None)
    pins = wheels.pinned_versions()
    off_pin = [f"{w.name} {wheels.installed(w.name)} (pinned {pins.get(wheels.normalise(w.name))})"
               for w in wheels.WHEELS if w.always and wheels.installed(w.name) is not None
               and wheels.installed(w.name) != pins.get(wheels.normalise(w.name))]
    detail = (f"missing: {', '.join(missing)} (the carried ones: python -m parabench.gpucheck --build-wheels "
              f"gpucheck-wheels where pip reaches an index, then copy that folder here); " if missing else "") + (
        f"not at their pins: {', '.join(off_pin)}; " if off_pin else "") + f"{len(needed)} imports checked"
    return Step("packages", not missing, time.monotonic() - started, detail)


def build_kernels(log: Log, device: str, env: dict[str, str], limit_s: float) -> tuple[list[Step], set[str]]:
    """``python -m parabench.kernels --device DEVICE NAME`` for every installed kernel, all at once: a step each,
    and the optimizers whose kernel did not build."""
    from parabench.kernels import KERNELS, installed

    kernels = [k for k in KERNELS[device] if installed(k)]
    started = time.monotonic()
    processes = {k: subprocess.Popen([sys.executable, "-m", "parabench.kernels", "--device", device, k.name],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", start_new_session=True) for k in kernels}
    steps, broken = [], set()
    for kernel, process in processes.items():
        try:
            output, _ = process.communicate(timeout=max(1.0, limit_s - (time.monotonic() - started)))
            code = process.returncode
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            output, _ = process.communicate()
            code = None
        log(f"--- python -m parabench.kernels --device {device} {kernel.name} (exit {code})", echo=False)
        log(output.rstrip(), echo=False)
        last = (output.strip().splitlines() or [""])[-1][:200]
        if code != 0:
            broken.update(kernel.optimizers)
            last = (f"not built within {limit_s:.0f} s" if code is None else f"failed: {last}") + \
                   f"; cases with {', '.join(kernel.optimizers)} are not run"
        steps.append(Step(f"kernel {kernel.name}", code == 0, time.monotonic() - started, last))
    return steps, broken


def main_check(out: Path, wheel_folder: Path | None, device: str, time_limit_s: float, extra: list[str]) -> int:
    started = time.monotonic()
    deadline = started + time_limit_s
    out = out.resolve()
    prepare(out)
    log = Log(out / "gpucheck.log")
    if device == "cuda":
        reason = no_cuda_message()
        if reason:
            log(f"gpucheck: {reason}")
            return 2
    for line in environment_lines(device):
        log(f"gpucheck: {line}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", record.DIRECTORY_VARIABLE: str(out)}
    steps: list[Step] = []

    def step(done: Step) -> Step:
        steps.append(done)
        log(f"gpucheck: {'ok' if done.ok else 'FAILED'} {done.name} ({done.seconds:.1f} s) {done.detail}")
        return done

    if wheel_folder is not None:
        step(install_wheels(log, wheel_folder, out / "site", env))
    selected, selection = collect(log, out, device, env, extra)
    step(selected)
    if not selection:
        return _finish(out, steps, [], device, started)
    step(check_packages(selection))
    code, seconds = run_logged(log, [sys.executable, "-m", "parabench.gpucheck.forkcheck", "--device", device], env,
                               120)
    step(Step("fork start-up", code == 0, seconds, "see the lines 'forkcheck:' above" if code else
              "the fork server's imports leave CUDA untouched; a fork of it computes"))
    kernel_steps, broken = build_kernels(log, device, env, min(KERNELS_LIMIT_S, deadline - time.monotonic() - 60))
    for done in kernel_steps:
        step(done)
    not_run = {s["nodeid"]: f"not run: the kernel {s['case']['optimizer']} loads did not build (see the log)"
               for s in selection if s["case"] and s["case"]["optimizer"] in broken}
    deselect = [arg for nodeid in not_run for arg in ("--deselect", nodeid)]
    command = pytest_command(out, device, ["-v", "-rfEs", f"--junitxml={out / 'junit.xml'}",
                                           f"--benchmark-json={out / 'benchmark.json'}",
                                           f"--bench-timeout={CASE_TIMEOUT_S:.0f}", *deselect, *extra])
    log(f"gpucheck: {' '.join(command[1:])}")
    code, seconds = run_logged(log, command, env, deadline - time.monotonic() - SUMMARY_RESERVE_S)
    step(Step("cases", code in (0, 1), seconds, "stopped at the time limit" if code is None else
              f"pytest exit {code}" + ("" if code in (0, 1) else " (not a test failure: see the log)")))
    return _finish(out, steps, summary.rows(out, device, selection, not_run), device, started)


def _finish(out: Path, steps: list[Step], found: list, device: str, started: float) -> int:
    passed = summary.write(out, steps, found, device, time.monotonic() - started)
    print(f"gpucheck: results, log and summary in {out}", flush=True)
    return 0 if passed else 1


def main_build(folder: Path, python_version: str, log: Callable[[str], None] = print) -> int:
    try:
        made = wheels.build(folder.resolve(), python_version, log)
    except (RuntimeError, ValueError) as error:
        log(f"gpucheck: {error}")
        return 1
    log(f"gpucheck: {len(made)} wheels in {folder}:")
    for line in wheels.describe(made):
        log(line)
    return 0

"""The base side of an A/B session: a process of the base environment, in the base tree, that runs cases.

Started by ``parabench.ab.side.BaseSide`` as ``BASE_PYTHON -c <bootstrap>`` with the base tree first on
``sys.path`` and as the working directory, so that ``import parabench`` — and every rank it forks — loads the
base's code with the base's packages. This file is executed there as a script: it uses only the standard
library and the long-standing parts of the base's ``parabench`` (``Case``, ``PoolManager``, ``train.run_case``,
``env``, ``matrix``), so a base revision older than the A/B support still runs.

The protocol is one JSON object per line on two inherited file descriptors (the process's stdout and stderr
carry the frameworks' logs, never a message):

    ready   ← {"python", "executable", "tree", "parabench", "versions", "hardware"} or {"error"}
    check   → {"cases": [case dicts]}            ← {"problems": {id: why}, "unknown": {id: why}}
    run     → {"case", "perturbation", "timeout_s", "memory", "fresh"} ← {"result"} | {"skip"} | {"failure"}
    close   → {}                                 (the server closes its pools and exits)
"""

import json
import os
import sys
import time
import traceback


def _module(name):
    """``parabench.<package>.<module>``, or where the base tree is of the layout before the subpackages,
    ``parabench.<module>``: a base revision of either layout runs under this server. The layout is read from the
    base tree's files, not from a failed import: an editable install of another checkout can answer an import the
    base tree cannot (its finder maps ``parabench.*`` to that checkout)."""
    import importlib

    import parabench

    parts = name.split(".")
    if len(parts) > 2 and not os.path.isdir(os.path.join(os.path.dirname(parabench.__file__), parts[1])):
        name = "parabench." + parts[-1]
    return importlib.import_module(name)


def _answer(out, message) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _case(data):
    Case = _module("parabench.cases.case").Case

    fields = dict(data)
    wanted = fields.pop("id", None)
    case = Case(**fields)
    if wanted is not None and case.id != wanted:
        raise ValueError(f"the base renders this case as {case.id!r}, not {wanted!r}")
    return case


def _unknown(case) -> str | None:
    """Why the base tree does not know ``case`` (a strategy, optimizer or workload added since), or None."""
    OPTIMIZERS = _module("parabench.cases.optimizers").OPTIMIZERS
    from parabench.strategies import STRATEGIES
    from parabench.workloads import WORKLOADS

    for kind, registry, name in (("strategy", STRATEGIES, case.strategy), ("optimizer", OPTIMIZERS, case.optimizer),
                                 ("workload", WORKLOADS, case.workload)):
        try:
            registry.get(name)
        except (KeyError, ValueError, LookupError):
            return f"the base has no {kind} {name!r}"
    return None


def _missing_packages(case) -> list[str]:
    import importlib.util

    case_packages = _module("parabench.cases.matrix").case_packages

    missing = []
    for name in case_packages(case):  # import names (sklearn, not scikit-learn)
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def serve(requests, out, device: str, backend: str, threads: int, pin: bool, rank_memory) -> None:
    PoolManager = _module("parabench.runtime.pool").PoolManager

    manager = PoolManager(device_type=device, backend=backend, threads=threads, pin=pin, rank_memory=rank_memory)
    try:
        for line in requests:
            request = json.loads(line)
            if request["op"] == "close":
                break
            try:
                _answer(out, handle(request, manager, device, backend, threads))
            except Exception as error:  # the request fails, the server goes on (a broken pool is rebuilt)
                _answer(out, {"failure": f"the base side's server raised {type(error).__name__}: {error}\n"
                                         f"{traceback.format_exc()}"})
    finally:
        manager.close()


def handle(request: dict, manager, device: str, backend: str, threads: int) -> dict:
    """One request's answer (see the module's docstring)."""
    from dataclasses import asdict

    case_packages = _module("parabench.cases.matrix").case_packages
    hardware = _module("parabench.runtime.env").hardware
    versions = _module("parabench.runtime.env").versions
    RankFailure = _module("parabench.runtime.pool").RankFailure
    RankSkip = _module("parabench.runtime.pool").RankSkip
    run_case = _module("parabench.runtime.train").run_case
    from parabench.strategies import STRATEGIES

    op = request["op"]
    if op == "check":
        problems, unknown = {}, {}
        for data in request["cases"]:
            try:
                case = _case(data)
            except (TypeError, ValueError) as error:
                unknown[data["id"]] = str(error)
                continue
            why = _unknown(case)
            if why:
                unknown[data["id"]] = why
                continue
            missing = _missing_packages(case)
            if missing:
                problems[data["id"]] = f"needs {', '.join(missing)}, not installed on the base side"
        return {"problems": problems, "unknown": unknown}
    if op != "run":
        return {"error": f"unknown request {op!r}"}
    case = _case(request["case"])
    perturbation = None
    if request.get("perturbation"):
        Perturbation = _module("parabench.gate.inject").Perturbation

        perturbation = Perturbation.parse(request["perturbation"])
    pool = manager.get(case.world_size, STRATEGIES.get(case.strategy).family)
    started = time.perf_counter()
    import inspect

    # A timing-only run where the base's run_case can leave the peak out (older trees measure it always).
    light = not request.get("memory", True) and "memory" in inspect.signature(run_case).parameters
    try:
        ranks = pool.run(run_case, case, perturbation, None, *((False,) if light else ()),
                         timeout_s=request["timeout_s"])
    except RankSkip as skip:
        return {"skip": str(skip)}
    except RankFailure as failure:
        return {"failure": str(failure)}
    wall = time.perf_counter() - started
    if request.get("fresh"):
        pool.close()  # the next run forks new ranks (the manager replaces a closed pool)
    environment = {"world_size": case.world_size, "device": device, "backend": backend, "threads_per_rank": threads,
                   "pinned": manager.pinned(case.world_size), "versions": versions(case_packages(case)),
                   "hardware": hardware(device), "injected": str(perturbation) if perturbation else None}
    return {"result": {"case": case.to_dict(), "ranks": [asdict(r) for r in ranks], "environment": environment,
                       "wall_seconds": wall}}


def main(requests_fd: int, answers_fd: int, settings: dict) -> None:
    out = os.fdopen(answers_fd, "w")
    requests = os.fdopen(requests_fd, "r")
    try:
        import parabench

        # What every rank of this side imports (its pools' fork server preloads it): a framework that does not
        # import in this environment is a usage error now, not a failure of the first case.
        _module("parabench.runtime.rank_imports")
        hardware = _module("parabench.runtime.env").hardware
        versions = _module("parabench.runtime.env").versions
        for name, needed in (("parabench.runtime.pool", "PoolManager"), ("parabench.runtime.train", "run_case")):
            getattr(_module(name), needed)  # fails early on a tree without it

        tree = os.path.realpath(settings["tree"])
        found = os.path.realpath(os.path.dirname(os.path.dirname(parabench.__file__)))
        if found != tree:
            raise RuntimeError(f"the base interpreter imports parabench from {found}, not from the base tree {tree}")
        _answer(out, {"python": sys.version.split()[0], "executable": sys.executable, "tree": tree,
                      "parabench": parabench.__file__, "versions": versions(tuple(settings.get("packages", ()))),
                      "hardware": hardware(settings["device"])})
    except BaseException as error:  # the head side turns this into a usage error naming the fix
        _answer(out, {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
        return
    RankMemoryLimit = _module("parabench.runtime.pool").RankMemoryLimit

    # A head from before limits per world size sends only the one number it gave every pool.
    rank_memory = (RankMemoryLimit(**settings["rank_memory"]) if "rank_memory" in settings
                   else RankMemoryLimit(per_rank_bytes=settings.get("memory_limit_bytes")))
    serve(requests, out, settings["device"], settings["backend"], settings["threads"], settings["pin"], rank_memory)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]))

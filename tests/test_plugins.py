"""Packages that register their own workloads, strategies, optimizers and cases through parabench's entry points
(docs/plugins.md): the registries' checks with fake entry points, and the example package in tests/plugin_example,
installed into a temporary environment, collected, run, recorded and gated as a user would."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import parabench.cases.optimizers as optimizers_module
import parabench.strategies as strategies_module
from parabench.cases.case import Case
from parabench.cases.optimizers import OPTIMIZERS, OptimizerSpec, accept_optimizer
from parabench.cases.plugins import checked
from parabench.cases.registry import PluginError, Registry
from parabench.measure.formulas import formula_of, optimizer_states, paper_state
from parabench.strategies import STRATEGIES, Strategy, accept_strategy
from parabench.strategies.torch_native import TorchDDP
from parabench.workloads import WORKLOADS, Workload, accept_workload
from parabench.workloads.base import TensorWorkload

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).resolve().parent / "plugin_example"


# --------------------------------------------------------------------------- fake entry points

class FakeEntryPoint:
    """What ``importlib.metadata.entry_points`` gives: a name, a value, a group, a distribution and ``load``."""

    def __init__(self, group: str, name: str, target: object, dist: str = "acme-bench") -> None:
        self.group, self.name, self.target = group, name, target
        self.value = f"acme_bench.plugin:{getattr(target, '__name__', name)}"
        self.dist = SimpleNamespace(name=dist)

    def load(self) -> object:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


@pytest.fixture
def declare(monkeypatch):
    """Installs fake entry points: ``declare(group, name, target, dist=...)``; returns the list they go to."""
    declared: list[FakeEntryPoint] = []
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep for ep in declared if ep.group == group])

    def add(group: str, name: str, target: object, dist: str = "acme-bench") -> None:
        declared.append(FakeEntryPoint(group, name, target, dist))

    return add


def workloads_registry() -> Registry:
    """A workload registry as ``parabench.workloads`` makes it, with one built-in."""
    registry = Registry("workload", "parabench.workloads", accept_workload)
    registry.add("mlp-digits", WORKLOADS.get("mlp-digits"))
    return registry


def strategies_registry() -> Registry:
    registry = Registry("strategy", "parabench.strategies", accept_strategy)
    for name in ("single", "torch-ddp"):
        registry.add(name, STRATEGIES.get(name))
    return registry


class Points(TensorWorkload):
    name = "acme-points"

    def load_tensors(self):
        return {"x": torch.zeros(8, 2)}

    def build_model(self):
        return torch.nn.Linear(2, 1)

    def loss(self, model, batch):
        return model(batch["x"]).mean()


class AcmeDDP(TorchDDP):
    name = "acme-ddp"
    family = "acme"
    formula = "torch-ddp"


# --------------------------------------------------------------------------- registration

@pytest.mark.parametrize("target", [Points, Points()], ids=["class", "instance"])
def test_a_package_registers_a_workload_class_or_instance_after_the_built_ins(declare, target):
    declare("parabench.workloads", "acme-points", target)
    registry = workloads_registry()
    assert isinstance(registry.get("acme-points"), Points)
    assert registry.names() == ["mlp-digits", "acme-points"]
    assert registry.plugins() == ["acme-points"] and registry.origin("mlp-digits") is None
    assert "distribution 'acme-bench', entry point acme-points = acme_bench.plugin:" in registry.origin("acme-points")


def test_a_name_a_built_in_has_is_an_error_naming_the_package(declare):
    declare("parabench.workloads", "mlp-digits", Points)
    with pytest.raises(PluginError, match=r"distribution 'acme-bench', entry point mlp-digits = acme_bench\.plugin:"
                                          r"Points \(group parabench\.workloads\): workload 'mlp-digits' is a "
                                          r"built-in workload's name"):
        workloads_registry().get("mlp-digits")


def test_a_name_that_reads_as_a_built_ins_in_a_case_id_is_an_error(declare):
    declare("parabench.workloads", "mlp_digits", Points)  # the case ids of mlp-digits read mlp_digits
    with pytest.raises(PluginError, match=r"workload 'mlp_digits' is a built-in workload's name \('mlp-digits' in a "
                                          r"case id\)"):
        workloads_registry().get("mlp_digits")


def test_two_packages_with_one_name_is_an_error_naming_both(declare):
    declare("parabench.strategies", "acme-ddp", AcmeDDP, dist="acme-bench")
    declare("parabench.strategies", "acme-ddp", AcmeDDP, dist="other-bench")
    with pytest.raises(PluginError) as info:
        strategies_registry().names()
    assert "'acme-bench'" in str(info.value) and "'other-bench'" in str(info.value), info.value


class NoModel(TensorWorkload):  # no build_model, no loss
    name = "acme-broken"

    def load_tensors(self):
        return {}


class NotAWorkload:
    name = "acme-duck"

    def build_model(self):
        return torch.nn.Linear(2, 1)


class NoSetup(Strategy):  # no family, no setup
    name = "acme-nosetup"


@pytest.mark.parametrize("group, name, target, message", [
    ("parabench.workloads", "acme-broken", NoModel,
     "entry point acme-broken = acme_bench.plugin:NoModel (group parabench.workloads): workload class NoModel lacks "
     "build_model, loss (a Workload needs name, build_model, num_examples, batch, loss)"),
    ("parabench.workloads", "acme-duck", NotAWorkload,
     "not a parabench.workloads.Workload subclass or instance; it lacks num_examples, batch, loss"),
    ("parabench.workloads", "acme-other", Points, "names workload 'acme-points'; the entry point's name must be"),
    ("parabench.strategies", "acme-nosetup", NoSetup,
     "(group parabench.strategies): strategy class NoSetup lacks family, setup (a Strategy needs name, family, setup)"),
    ("parabench.strategies", "acme-ddp", object(), "which is not a class; name a parabench.strategies.Strategy "
                                                   "subclass"),
    ("parabench.strategies", "acme-points", Points, "names Points, which is not a parabench.strategies.Strategy "
                                                    "subclass; it lacks family, setup"),
    ("parabench.optimizers", "acme-sgd", torch.optim.SGD,
     "(group parabench.optimizers): names <class 'torch.optim.sgd.SGD'>, which is not a "
     "parabench.cases.optimizers.OptimizerSpec"),
    ("parabench.optimizers", "acme-sgd", OptimizerSpec("acme-sgd", torch.optim.SGD, twin="nope"),
     "its twin 'nope' is not a built-in optimizer"),
    ("parabench.workloads", "acme-gone", ModuleNotFoundError("No module named 'acme_bench'"),
     "acme-gone = acme_bench.plugin:acme-gone (group parabench.workloads): does not import: ModuleNotFoundError"),
], ids=["workload-without-build_model-and-loss", "not-a-workload", "workload-named-otherwise",
        "strategy-without-family-and-setup", "strategy-not-a-class", "not-a-strategy", "optimizer-not-a-spec",
        "optimizer-with-unknown-twin", "does-not-import"])
def test_what_a_registry_cannot_take_is_an_error_naming_the_package_and_what_is_missing(declare, group, name,
                                                                                         target, message):
    declare(group, name, target)
    registry = {"parabench.workloads": workloads_registry, "parabench.strategies": strategies_registry,
                "parabench.optimizers": lambda: Registry("optimizer", group, accept_optimizer)}[group]()
    with pytest.raises(PluginError) as info:
        registry.get("anything")
    assert str(info.value).startswith("distribution 'acme-bench', entry point "), info.value
    assert message in str(info.value), info.value
    # Nothing of the package is half-registered: the next look-up raises the same error.
    with pytest.raises(PluginError):
        registry.names()


def test_a_package_optimizer_spec_is_taken_as_declared(declare):
    spec = OptimizerSpec("acme-rmsprop", torch.optim.RMSprop, {"lr": 1e-3}, states=1)
    declare("parabench.optimizers", "acme-rmsprop", spec)
    registry = Registry("optimizer", "parabench.optimizers", accept_optimizer)
    assert registry.get("acme-rmsprop") is spec


def test_the_formulas_follow_what_a_package_strategy_and_optimizer_declare(declare, monkeypatch):
    declare("parabench.strategies", "acme-ddp", AcmeDDP)
    declare("parabench.optimizers", "acme-rmsprop", OptimizerSpec("acme-rmsprop", torch.optim.RMSprop, states=1))
    optimizers = Registry("optimizer", "parabench.optimizers", accept_optimizer)
    optimizers.add("sgd", OPTIMIZERS.get("sgd"))
    monkeypatch.setattr(strategies_module, "STRATEGIES", strategies_registry())
    monkeypatch.setattr(optimizers_module, "OPTIMIZERS", optimizers)
    assert formula_of("acme-ddp") == "torch-ddp" and formula_of("torch-ddp") == "torch-ddp"
    assert optimizer_states("acme-rmsprop") == 1
    assert paper_state("acme-ddp", "acme-rmsprop", "fp32", 1000, 2) == paper_state("torch-ddp", "sgd", "fp32", 1000, 2)


def test_a_strategy_without_a_formula_has_none_and_an_unknown_one_is_an_error(declare, monkeypatch):
    class Plain(TorchDDP):
        name, family = "acme-plain", "acme"

    class Wrong(TorchDDP):
        name, family, formula = "acme-wrong", "acme", "torch-dpp"

    declare("parabench.strategies", "acme-plain", Plain)
    declare("parabench.strategies", "acme-wrong", Wrong)
    monkeypatch.setattr(strategies_module, "STRATEGIES", strategies_registry())
    assert formula_of("acme-plain") is None and paper_state("acme-plain", "sgd", "fp32", 1000, 2) is None
    with pytest.raises(ValueError, match=r"strategy 'acme-wrong' \(distribution 'acme-bench', .*declares formula "
                                         r"'torch-dpp', which has none; known: .*torch-ddp"):
        formula_of("acme-wrong")


def test_declared_cases_must_be_cases_of_registered_names():
    good = Case("torch-ddp", "sgd", "mlp-digits", 2)
    assert checked(good) == [good] and checked([good, good]) == [good, good]
    with pytest.raises(PluginError, match="is not a parabench.cases.case.Case"):
        checked([good, "torch-ddp-sgd"])
    with pytest.raises(LookupError, match="unknown workload 'acme-none'"):
        checked([Case("torch-ddp", "sgd", "acme-none", 2)])


def test_the_workload_and_strategy_members_are_the_abstract_ones():
    assert {"build_model", "batch", "loss", "num_examples"} <= Workload.__abstractmethods__
    assert Strategy.__abstractmethods__ == {"setup"}


# --------------------------------------------------------------------------- the example package, end to end

@pytest.fixture(scope="module")
def example_python(tmp_path_factory) -> Path:
    """A virtual environment over this interpreter (its torch, its packages) with the example package installed.

    No pip of its own (``--without-pip``): this interpreter's pip and setuptools, seen through the system site-packages,
    build it (the venv's bundled setuptools would lack bdist_wheel). parabench itself comes from this checkout: the
    sessions below run in it."""
    root = tmp_path_factory.mktemp("example-env")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root / "venv"], check=True)
    source = shutil.copytree(EXAMPLE, root / "source")  # its build files stay out of the checkout
    python = root / "venv" / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return python


def session(python: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def ids_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.stdout.splitlines() if "::" in line and "[" in line]


def test_the_example_package_cases_are_collected_by_name(example_python):
    probe = subprocess.run([example_python, "-c", "import parabench, torch; print(parabench.__file__, torch.__version__)"],
                           cwd=REPO, capture_output=True, text=True)
    assert probe.stdout.split() == [str(REPO / "parabench" / "__init__.py"), torch.__version__], probe

    result = session(example_python, "bench/", "-k", "example_mlp", "--collect-only", "-q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = ids_of(result)
    assert all("example_mlp" in i for i in found)
    # The matrix PyTorch's strategies get on a workload, the package's strategy and optimizer on it, and its cases.
    assert {"single-sgd-example_mlp-w1-fp32", "torch-ddp-sgd-example_mlp-w2-fp32", "torch-fsdp-adamw-example_mlp-w2-fp32",
            "example-ddp-sgd-example_mlp-w2-fp32", "torch-ddp-example-rmsprop-example_mlp-w2-fp32",
            "torch-ddp-sgd-example_mlp-w2-fp32-ga2"} <= set(found), found
    assert all(line.startswith("bench/test_plugins.py::test_plugin[") for line in result.stdout.splitlines()
               if "::" in line)
    # The package's strategy family is a mark that selects it, as torch or deepspeed do.
    marked = session(example_python, "bench/", "-m", "example", "--collect-only", "-q")
    assert marked.returncode == 0, marked.stdout[-3000:] + marked.stderr[-3000:]
    assert ids_of(marked) and all(i.startswith("example-ddp-") for i in ids_of(marked)), ids_of(marked)


def test_the_example_package_cases_pass_parity_and_gate_unchanged_against_their_record(example_python, tmp_path):
    selection = ["bench/", "-k", "(single-sgd-example_mlp-w1-fp32 or torch-ddp-sgd-example_mlp-w2-fp32 or "
                                 "example-ddp-example-rmsprop-example_mlp-w2-fp32) and not ga2",
                 f"--benchmark-storage=file://{tmp_path / 'baselines'}"]
    record = session(example_python, *selection, "--bench-record")
    assert record.returncode == 0 and "3 passed" in record.stdout, record.stdout[-4000:] + record.stderr[-3000:]
    [stored] = (tmp_path / "baselines").glob("*/0001_*.json")
    runs = {b["extra_info"]["case"]["strategy"]: b["extra_info"] for b in json.loads(stored.read_text())["benchmarks"]}
    assert set(runs) == {"single", "torch-ddp", "example-ddp"}
    # The package's strategy declares DDP's formula and its optimizer one state a parameter: both are checked.
    assert runs["example-ddp"]["state_bytes_expected"] and "state_formula_findings" not in runs["example-ddp"]

    # One stored run does not judge step time (the policy wants two): excused, as tox -e record's three would not need.
    gate = session(example_python, *selection, "--bench-gate", f"--bench-report={tmp_path}",
                   "--bench-gate-allow=time-spread")
    assert gate.returncode == 0 and "3 passed" in gate.stdout, gate.stdout[-4000:] + gate.stderr[-3000:]
    assert "parabench: baseline vs now" in gate.stdout
    rows = json.loads((tmp_path / "gate.json").read_text())["rows"]
    judged = [row for row in rows if not row["metric"].startswith("step time") and row["verdict"] != "info"]
    assert {row["name"] for row in judged} == {f"test_plugin[{i}]" for i in (
        "single-sgd-example_mlp-w1-fp32", "torch-ddp-sgd-example_mlp-w2-fp32",
        "example-ddp-example-rmsprop-example_mlp-w2-fp32")}, rows
    assert all(row["verdict"] == "unchanged" for row in judged), rows
    assert {"parity", "state_bytes", "loss curve"} <= {row["metric"] for row in judged}
    print(gate.stdout[gate.stdout.index("parabench: baseline vs now"):])  # the gate's table (pytest -rP shows it)

"""The compiled optimizers (``parabench.kernels``): which a selection needs, and the command that builds them."""

from __future__ import annotations

import pytest

from parabench import kernels
from parabench.kernels import KERNELS, Kernel, main, needed_by
from parabench.optimizers import OPTIMIZERS


def test_every_kernel_names_optimizers_of_the_registry():
    for kernel in KERNELS:
        assert kernel.optimizers and all(OPTIMIZERS.get(name) for name in kernel.optimizers)


def test_a_selection_needs_the_kernels_of_its_optimizers_that_are_not_built(monkeypatch):
    monkeypatch.setattr(kernels, "built", lambda kernel: kernel.name == "colossalai-cpu-adam")
    monkeypatch.setattr(kernels, "installed", lambda kernel: True)
    assert [k.name for k in needed_by({"ds-cpuadam", "adamw"})] == ["deepspeed-cpu-adam"]
    assert needed_by({"hybrid-adam", "sgd"}) == []  # built already
    assert needed_by({"adamw"}) == []
    monkeypatch.setattr(kernels, "installed", lambda kernel: False)
    assert needed_by({"ds-cpuadam"}) == []  # its cases skip, naming the install


def test_the_command_refuses_an_unknown_kernel_and_skips_what_is_not_installed(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["deepspeed-gpu-adam"])
    assert "unknown kernel 'deepspeed-gpu-adam'; known: deepspeed-cpu-adam, colossalai-cpu-adam" in capsys.readouterr().err
    calls = []
    fake = Kernel("fake", "a fake op", "no-such-package", ("adamw",), lambda: None, lambda: calls.append(1))
    monkeypatch.setattr(kernels, "KERNELS", (fake,))
    assert main([]) == 0 and calls == []
    assert "fake: no-such-package is not installed; nothing to build" in capsys.readouterr().out


def test_the_command_reports_a_build_that_failed(monkeypatch, capsys, tmp_path):
    def fails():
        raise RuntimeError("no compiler")

    fake = Kernel("fake", "a fake op", "pytest", ("adamw",), lambda: tmp_path / "fake.so", fails)
    monkeypatch.setattr(kernels, "KERNELS", (fake,))
    assert main(["fake"]) == 1
    assert "fake: a fake op did not build: RuntimeError: no compiler" in capsys.readouterr().err
    ok = Kernel("fake", "a fake op", "pytest", ("adamw",), lambda: tmp_path / "fake.so", lambda: None)
    monkeypatch.setattr(kernels, "KERNELS", (ok,))
    assert main(["fake"]) == 0
    assert f"fake: a fake op built in " in capsys.readouterr().out

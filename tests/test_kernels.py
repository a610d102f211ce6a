"""The compiled optimizers (``parabench.kernels``): which a selection needs on its device, and the command that builds
them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parabench import kernels
from parabench.cases.optimizers import OPTIMIZERS
from parabench.kernels import CPU_KERNELS, CUDA_KERNELS, KERNELS, Kernel, main, needed_by
from parabench.runtime import env


def test_every_kernel_names_optimizers_of_the_registry():
    for kernel in CPU_KERNELS + CUDA_KERNELS:
        assert kernel.optimizers and all(OPTIMIZERS.get(name) for name in kernel.optimizers)


def test_a_selection_needs_the_kernels_of_its_optimizers_that_are_not_built(monkeypatch):
    monkeypatch.setattr(kernels, "built", lambda kernel: kernel.name == "colossalai-cpu-adam")
    monkeypatch.setattr(kernels, "installed", lambda kernel: True)
    assert [k.name for k in needed_by({"ds-cpuadam", "adamw"}, "cpu")] == ["deepspeed-cpu-adam"]
    assert needed_by({"hybrid-adam", "sgd"}, "cpu") == []  # built already
    assert needed_by({"adamw"}, "cpu") == []
    assert needed_by({"ds-fusedadam"}, "cpu") == []  # a CUDA kernel: its cases skip on CPU
    monkeypatch.setattr(kernels, "installed", lambda kernel: False)
    assert needed_by({"ds-cpuadam"}, "cpu") == []  # its cases skip, naming the install


def test_a_cuda_selection_needs_the_cuda_kernels_its_optimizers_load(monkeypatch):
    monkeypatch.setattr(kernels, "built", lambda kernel: False)
    monkeypatch.setattr(kernels, "installed", lambda kernel: True)
    assert [k.name for k in needed_by({"hybrid-adam"}, "cuda")] == ["colossalai-cpu-adam-x86", "colossalai-fused-optim"]
    assert [k.name for k in needed_by({"ds-fusedadam", "ds-cpuadam"}, "cuda")] == ["deepspeed-cpu-adam",
                                                                                    "deepspeed-fused-adam"]
    assert "colossalai-cpu-adam" not in {k.name for k in needed_by({"hybrid-adam", "cpu-adam"}, "cuda")}


def test_on_a_cuda_device_the_command_builds_the_cuda_kernels_and_reports_the_files_they_load(monkeypatch, capsys,
                                                                                               tmp_path):
    monkeypatch.setattr(env, "cuda_device_count", lambda: 1)  # a CUDA device, as --device=auto sees it
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # where torch's loader would build DeepSpeed's ops
    monkeypatch.setattr(kernels, "installed", lambda kernel: True)
    built = []
    monkeypatch.setitem(KERNELS, "cuda", tuple(replace(k, build=lambda k=k: built.append(k.name))  # built: recorded
                                               for k in KERNELS["cuda"]))
    assert main([]) == 0
    assert built == ["deepspeed-cpu-adam", "deepspeed-fused-adam", "colossalai-cpu-adam-x86", "colossalai-fused-optim"]
    out = capsys.readouterr().out
    for name, file in (("deepspeed-cpu-adam", "cpu_adam.so"), ("deepspeed-fused-adam", "fused_adam.so"),
                       ("colossalai-cpu-adam-x86", "cpu_adam_x86.so"),
                       ("colossalai-fused-optim", "fused_optim_cuda.so")):
        line = next(line for line in out.splitlines() if line.startswith(f"{name}: "))
        assert line.endswith(f"{file})"), line
    assert "cpu_adam_arm.so" not in out and "colossalai-cpu-adam:" not in out  # the CPU kernel is not looked for
    with pytest.raises(SystemExit):
        main(["colossalai-cpu-adam"])
    assert ("unknown kernel 'colossalai-cpu-adam'; known: deepspeed-cpu-adam, deepspeed-fused-adam, "
            "colossalai-cpu-adam-x86, colossalai-fused-optim") in capsys.readouterr().err


def test_a_session_builds_its_devices_kernels_by_name(monkeypatch):
    runs = []
    monkeypatch.setattr(kernels.subprocess, "run", lambda command, **_: runs.append(command) or
                        type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})())
    kernels.build_in_subprocess(CUDA_KERNELS[1], "cuda")
    assert runs[-1][1:] == ["-m", "parabench.kernels", "--device", "cuda", "deepspeed-fused-adam"]


def test_the_command_refuses_an_unknown_kernel_and_skips_what_is_not_installed(monkeypatch, capsys):
    monkeypatch.setattr(env, "cuda_device_count", lambda: 0)  # a CPU machine
    with pytest.raises(SystemExit):
        main(["deepspeed-gpu-adam"])
    assert "unknown kernel 'deepspeed-gpu-adam'; known: deepspeed-cpu-adam, colossalai-cpu-adam" in capsys.readouterr().err
    calls = []
    fake = Kernel("fake", "a fake op", "no-such-package", ("adamw",), lambda: None, lambda: calls.append(1))
    monkeypatch.setitem(KERNELS, "cpu", (fake,))
    assert main([]) == 0 and calls == []
    assert "fake: no-such-package is not installed; nothing to build" in capsys.readouterr().out


def test_the_command_reports_a_build_that_failed(monkeypatch, capsys, tmp_path):
    def fails():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(env, "cuda_device_count", lambda: 0)
    fake = Kernel("fake", "a fake op", "pytest", ("adamw",), lambda: tmp_path / "fake.so", fails)
    monkeypatch.setitem(KERNELS, "cpu", (fake,))
    assert main(["fake"]) == 1
    assert "fake: a fake op did not build: RuntimeError: no compiler" in capsys.readouterr().err
    ok = Kernel("fake", "a fake op", "pytest", ("adamw",), lambda: tmp_path / "fake.so", lambda: None)
    monkeypatch.setitem(KERNELS, "cpu", (ok,))
    assert main(["fake"]) == 0
    assert "fake: a fake op built in " in capsys.readouterr().out

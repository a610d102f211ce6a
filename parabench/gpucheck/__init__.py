"""The one-GPU check: every framework family on one rank in bf16 and fp16, run as-is on one CUDA machine.

``python -m parabench.gpucheck`` (``tox -e gpu-check``) installs the carried wheels (``--wheels``, default
``gpucheck-wheels/``) into its output folder, checks the ranks' fork start-up, builds the CUDA kernels, then runs
``pytest bench/ --bench-profile=gpu --bench-device=cuda`` within its time limit and writes under ``--out``
(default ``gpucheck-out/``) the log, pytest's JSON and junit XML, and a summary that says per case whether it
passed, with its median step and peak. ``--dry-run`` runs the same on the CPU (the cases that can: fp16 and
Gemini's auto placement skip); ``--build-wheels DIR`` makes the wheel folder (``parabench.gpucheck.wheels``).

Modules: ``check`` (the steps), ``wheels`` (what is carried), ``families`` (what must be covered), ``record``
(the pytest plugin that writes each test's outcome as it ends), ``summary`` (the verdict), ``forkcheck``.
"""

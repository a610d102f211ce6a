"""Registers parabench's pytest layer; everything else lives in ``fixtures/`` and ``parabench/``."""

pytest_plugins = ["fixtures.options", "fixtures.launcher", "fixtures.known", "fixtures.collection", "fixtures.budget",
                  "fixtures.kernels", "fixtures.pools", "fixtures.progress", "fixtures.cases", "fixtures.parity",
                  "fixtures.relative", "fixtures.converge", "fixtures.optimizer_steps", "fixtures.sweeps", "fixtures.tables",
                  "fixtures.gate", "fixtures.ab", "fixtures.report", "fixtures.ci"]

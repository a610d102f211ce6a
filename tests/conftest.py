"""The harness's tests may run under pytest-xdist (``pytest tests/ -n 2``, as CI does).

Many of them start pytest sessions of their own in subprocesses, which inherit the environment; a child
that sees an xdist worker's variables takes itself for one, and pytest-benchmark then turns itself off
there (nothing recorded, saved or compared). The children are plain sessions: they do not get them.
"""

import os

for _name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
    del os.environ[_name]

"""``python -m parabench.selftest``: how often the gate is right on this machine (``parabench.gate.selftest``)."""

import sys

from parabench.gate.selftest import main

if __name__ == "__main__":
    sys.exit(main())

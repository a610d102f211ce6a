"""``python -m parabench.relative RUN.json``: each case against its same-run peer (``parabench.measure.relative``)."""

import sys

from parabench.measure.relative import main

if __name__ == "__main__":
    sys.exit(main())

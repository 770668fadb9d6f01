"""``python -m benchmarks [--quick] [--only NAME[,NAME]] [--output PATH]``."""

from __future__ import annotations

import sys

from benchmarks._runner import main

if __name__ == "__main__":
    sys.exit(main())

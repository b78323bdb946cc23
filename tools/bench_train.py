#!/usr/bin/env python
"""``adaptive-lm-bench-train``: adaptive_lm_ds/commands/bench_train.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.bench_train())

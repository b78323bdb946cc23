#!/usr/bin/env python
"""``adaptive-lm-bench-generate``: adaptive_lm_ds/commands/bench_generate.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.bench_generate())

#!/usr/bin/env python
"""``adaptive-lm-bench-data``: adaptive_lm_ds/commands/bench_data.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.bench_data())

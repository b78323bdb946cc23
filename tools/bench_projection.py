#!/usr/bin/env python
"""``adaptive-lm-bench-projection``: adaptive_lm_ds/commands/bench_projection.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.bench_projection())

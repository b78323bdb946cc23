#!/usr/bin/env python
"""``adaptive-lm-bench-softmax``: adaptive_lm_ds/commands/bench_adaptive_softmax.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.bench_softmax())

#!/usr/bin/env python
"""``adaptive-lm-bench-vs-fairseq``: adaptive_lm_ds/commands/bench_vs_fairseq.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.bench_vs_fairseq())

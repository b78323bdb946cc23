#!/usr/bin/env python
"""``adaptive-lm-eval``: adaptive_lm_ds/commands/eval_lm.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.eval_lm())

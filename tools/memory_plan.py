#!/usr/bin/env python
"""``adaptive-lm-memory-plan``: adaptive_lm_ds/commands/memory_plan.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.memory_plan())

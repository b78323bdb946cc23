#!/usr/bin/env python
"""``adaptive-lm-model-summary``: adaptive_lm_ds/commands/model_summary.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.model_summary())

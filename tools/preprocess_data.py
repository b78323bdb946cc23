#!/usr/bin/env python
"""``adaptive-lm-preprocess``: adaptive_lm_ds/commands/preprocess_data.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.preprocess())

#!/usr/bin/env python
"""``adaptive-lm-generate``: adaptive_lm_ds/commands/generate.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.generate())

#!/usr/bin/env python
"""``adaptive-lm-export``: adaptive_lm_ds/commands/export_checkpoint.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.export())

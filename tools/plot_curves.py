#!/usr/bin/env python
"""``adaptive-lm-plot-curves``: adaptive_lm_ds/commands/plot_curves.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.plot_curves())

#!/usr/bin/env python
"""``adaptive-lm-synthetic-corpus``: adaptive_lm_ds/commands/make_synthetic_corpus.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.synthetic_corpus())

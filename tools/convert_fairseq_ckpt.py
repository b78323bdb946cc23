#!/usr/bin/env python
"""``adaptive-lm-convert``: adaptive_lm_ds/commands/convert_fairseq_ckpt.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.convert())

#!/usr/bin/env python
"""``adaptive-lm-train-gbw`` = ``adaptive-lm-train --recipe gbw`` (``deepspeed launchers/train_gbw.py``)."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.train_gbw())

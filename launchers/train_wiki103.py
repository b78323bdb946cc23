#!/usr/bin/env python
"""``adaptive-lm-train-wiki103`` = ``adaptive-lm-train --recipe wiki103`` (``deepspeed launchers/train_wiki103.py``)."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.train_wiki103())

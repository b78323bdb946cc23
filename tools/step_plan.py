#!/usr/bin/env python
"""``adaptive-lm-step-plan``: adaptive_lm_ds/commands/step_plan.py."""

import sys

from adaptive_lm_ds import cli

if __name__ == "__main__":
    sys.exit(cli.step_plan())

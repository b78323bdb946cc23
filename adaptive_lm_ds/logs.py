"""The one logging configuration of every program: fairseq's line format, on stdout.

fairseq's programs call ``logging.basicConfig`` first (``fairseq_cli/train.py``), so every line reads
``2026-12-05 23:18:13 | INFO | fairseq_cli.train | message``; :func:`configure` does the same for ours
(``cli.start_up``), and the library logs through loggers under ``adaptive_lm_ds``. ``LOGLEVEL`` sets
the level, as in fairseq. Only rank 0 logs training progress; the other ranks' loggers are the same
but the callers stay silent there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TextIO

FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# the part FORMAT puts before the message: "2026-12-05 23:18:13 | INFO | adaptive_lm_ds.train | "
PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| [A-Z]+ \| [\w.]+ \| ")


def configure(stream: TextIO | None = None) -> None:
    """fairseq's ``logging.basicConfig``: :data:`FORMAT` on ``stream`` (stdout), our loggers at ``LOGLEVEL`` (INFO).

    Other libraries' loggers stay at WARNING unless ``LOGLEVEL`` is set (megatron-core and the C compiler
    probes of DeepSpeed's op builder log INFO chatter on every rank). Like ``basicConfig``, it leaves a
    root logger that already has handlers alone (a program configures it once, first; a test harness's
    capture stays in place)."""
    level = os.environ.get("LOGLEVEL", "").upper()
    logging.basicConfig(
        format=FORMAT,
        datefmt=DATE_FORMAT,
        level=level or logging.WARNING,
        stream=stream if stream is not None else sys.stdout,
    )
    logging.getLogger("adaptive_lm_ds").setLevel(level or logging.INFO)


def message(line: str) -> str:
    """A logged line without its time, level and logger name (what the code passed to the logger)."""
    return PREFIX.sub("", line)

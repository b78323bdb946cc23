"""The one argparse set-up every entry point uses (training launchers and tools).

* ``allow_abbrev=False``: argparse's prefix matching silently turned fairseq's ``--save-interval 1``
  (epochs) into ``--save-interval-updates 1``; only exact flags are accepted.
* ``--local_rank`` / ``--local-rank`` accepted and hidden: ``deepspeed`` passes ``--local_rank=N`` to
  every rank, ``torchrun`` sets ``LOCAL_RANK`` instead; the value is not used (the environment is).
"""

from __future__ import annotations

import argparse
from typing import Any


def parser(description: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """``argparse.ArgumentParser`` without abbreviations (``RawDescriptionHelpFormatter`` by default)."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(description=description, allow_abbrev=False, **kwargs)


def rank_parser(description: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """:func:`parser` for a program that may run on several ranks: takes either launcher's ``--local_rank``."""
    p = parser(description, **kwargs)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p

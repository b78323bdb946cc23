"""fairseq command lines on the evaluation and preprocessing programs: accepted, ignored, or refused in one line.

``adaptive-lm-eval`` takes ``fairseq-eval-lm``'s command line and ``adaptive-lm-preprocess``
``fairseq-preprocess``'s (``--only-source``) verbatim. Each fairseq flag is one of:

* a flag of the program with fairseq's name and meaning (declared by the program);
* :func:`accept_without_effect`: flags that change nothing in the numbers or files (logging, loader
  workers, ``--cpu`` where everything already runs on the CPU) are taken and ignored;
* :func:`refuse`: a fairseq flag the program does not implement stops it before anything runs, with one
  line naming the flag and what to do instead.

:func:`one_line_errors` makes every argparse error (an unknown flag, a bad value) one line too, instead
of the usage text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping


class _Refused(argparse.Action):
    def __init__(self, *args, instead: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.instead = instead

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"{parser.prog}: error: fairseq's {option_string} is not supported here: {self.instead}\n")


def refuse(parser: argparse.ArgumentParser, flags: Mapping[str, str]) -> None:
    """``flags``: fairseq flag -> what to use instead (one line each, printed when the flag is given)."""
    for flag, instead in flags.items():
        parser.add_argument(flag, nargs="?", action=_Refused, instead=instead, help=argparse.SUPPRESS)


def accept_without_effect(parser: argparse.ArgumentParser, switches: tuple[str, ...], valued: tuple[str, ...]) -> None:
    """fairseq flags that change nothing here: ``switches`` take no value, ``valued`` take one."""
    group = parser.add_argument_group("fairseq flags taken without effect")
    for flag in switches:
        group.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in valued:
        group.add_argument(flag, help=argparse.SUPPRESS)


def one_line_errors(parser: argparse.ArgumentParser, hint: str) -> argparse.ArgumentParser:
    """argparse errors as one line ``PROG: error: MESSAGE (HINT)``, exit 2, no usage text."""

    def error(message: str):
        print(f"{parser.prog}: error: {message} ({hint})", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser

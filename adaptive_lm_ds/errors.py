"""The one base class of the errors a user can fix.

Every error whose message names the problem and what to do derives from :class:`UserError`, so the
programs need one clause in one place (:func:`adaptive_lm_ds.cli.run`: ``PROGRAM: error: MESSAGE``,
exit code 2) instead of a hand-kept list where a forgotten class becomes a traceback. Classes keep their old second base
(``ValueError``, ``RuntimeError``, ``FileNotFoundError``) so callers catching that still do.
Programming errors (a wrong call, an uninitialised process group) do not derive from it: they
should show their traceback.

On several ranks the boundary prints rank 0's error, and a non-zero rank's own error too (prefixed
``[rank N]``): a file unreadable on one rank alone must not end the job in silence. An error every rank
is known to raise identically says so (:attr:`UserError.same_on_every_rank`) and is printed once, by
rank 0: a decision shared by :func:`adaptive_lm_ds.checkpoint.agreement.decided_on_rank0` marks its
error with :func:`raised_on_every_rank`, and a class whose errors follow from the command line and the
world size alone (the same on every rank) sets the attribute to ``True`` for all its instances.
"""

from __future__ import annotations

from typing import TypeVar


class UserError(Exception):
    """Bad input, a bad setting or a fault the user can act on; the message is one line that says what to change."""

    same_on_every_rank: bool = False
    """Every rank of the job raises this same error, so rank 0's line is the only one printed. False by
    default: an error no rank shares must still be printed by the rank that raised it."""


E = TypeVar("E", bound=UserError)


def raised_on_every_rank(error: E) -> E:
    """Mark ``error`` as one every rank raises identically (its line is printed once, by rank 0); returns it."""
    error.same_on_every_rank = True
    return error

"""The one base class of the errors a user can fix.

Every error whose message names the problem and what to do derives from :class:`UserError`, so the
programs need one clause in one place (:func:`adaptive_lm_ds.cli.run`: ``PROGRAM: error: MESSAGE``,
exit code 2) instead of a hand-kept list where a forgotten class becomes a traceback. Classes keep their old second base
(``ValueError``, ``RuntimeError``, ``FileNotFoundError``) so callers catching that still do.
Programming errors (a wrong call, an uninitialised process group) do not derive from it: they
should show their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a bad setting or a fault the user can act on; the message is one line that says what to change."""

"""The one exception type for bad data input (files, dictionaries, options).

Every message names the problem and what to do; CLIs turn it into a one-line error and exit 1.
"""

from adaptive_lm_ds.errors import UserError


class DataError(UserError, ValueError):
    """Bad data input: a missing/malformed file, an inconsistent index, an invalid option."""

"""The one exception type for bad data input (files, dictionaries, options).

Every message names the problem and what to do; CLIs turn it into a one-line error and exit 1.
"""


class DataError(ValueError):
    """Bad data input: a missing/malformed file, an inconsistent index, an invalid option."""

"""The one error type of the checkpoint package: its message is the single line the user sees."""

from adaptive_lm_ds.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint (or save dir) that is missing, incomplete, damaged, unsafe, locked or does not fit this run."""

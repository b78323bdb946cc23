"""Test utilities shipped with the package: the multi-rank CPU harness."""

from adaptive_lm_ds.testing.distributed import (
    RankFailure,
    RankTimeout,
    free_port,
    run_on_ranks,
    run_script,
)

__all__ = ["RankFailure", "RankTimeout", "free_port", "run_on_ranks", "run_script"]

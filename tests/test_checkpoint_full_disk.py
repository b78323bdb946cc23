"""A full disk during a save: every rank stops with one line naming the disk and the last good checkpoint.

The disk cannot be filled for real here (no tmpfs of our own), so ``torch.save`` -- what DeepSpeed's
and our writers call -- raises what it raises on a full disk, on *one* rank only, from the second
save on: Python's ``OSError(ENOSPC)`` or torch's own ``RuntimeError`` from its zip writer.
"""

import errno
import os

import pytest

from adaptive_lm_ds.testing import run_on_ranks

from .checkpoint_runs import train_args

TORCH_FULL_DISK = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed"
)


def train_until_the_disk_fills(argv: list[str], failing_rank: int, kind: str) -> str | None:
    """Rank-side: train with ``torch.save`` failing on ``failing_rank`` once update 2 is reached; the error."""
    import torch
    import torch.distributed as dist

    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.trainer import Trainer

    trainer = Trainer(config_from_args(build_parser("test").parse_args(argv)))
    real_save = torch.save

    def full_disk(*args, **kwargs):
        if dist.get_rank() == failing_rank and trainer.num_updates >= 2:
            if kind == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise RuntimeError(TORCH_FULL_DISK)
        return real_save(*args, **kwargs)

    torch.save = full_disk
    try:
        trainer.run()
        error = None
    except Exception as e:  # noqa: BLE001 - the test reads it
        error = f"{type(e).__name__}: {e}"
    parallel.destroy_parallel()
    return error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "what"), [("oserror", "no space left on device"), ("torch", "file write failed")], ids=["ENOSPC", "torch"]
)
def test_a_full_disk_on_one_rank_stops_every_rank_with_one_line(tiny_run_setup, tmp_path, kind, what):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    argv = [str(a) for a in train_args(data, init, save, 4, "--tensor-model-parallel-size", "2")]
    errors = run_on_ranks(train_until_the_disk_fills, nprocs=2, argv=argv, failing_rank=1, kind=kind)
    assert errors[0] == errors[1] and errors[0].startswith("CheckpointError: cannot write checkpoint")
    message = errors[0]
    assert "\n" not in message and f"{what} on rank 1)" in message
    assert (
        f"{save / 'checkpoint_2'} (" in message and f"the last good checkpoint is {save / 'checkpoint_1'};" in message
    )
    assert " disk /" in message
    assert (save / "latest").read_text().strip() == "checkpoint_1"  # untouched
    assert not (save / "checkpoint_2").exists()  # the partial save, ours, is gone
    assert not (save / ".lock").exists()

"""Rank 0 decides: the resume tag, its verification, the commit and pruning; every rank learns the same answer.

Two ranks share one save dir holding checkpoint_4 (intact) and checkpoint_8 (a flipped byte). Rank 1 never
hashes a file, both resume from checkpoint_4, an explicit --restore-file checkpoint_8 is the same one line on
both, and a pruning failure on rank 0 reaches rank 1 instead of leaving it in a barrier.
"""

import os

from adaptive_lm_ds import checkpoint as ckpt
from adaptive_lm_ds.testing import run_on_ranks

from .test_checkpoint_files import _fake_save


def decide_on_ranks(save_dir: str) -> dict:
    """Rank-side: what each rank learns from the checkpoint decisions (and how many files it hashed)."""
    from pathlib import Path

    import torch.distributed as dist

    from adaptive_lm_ds.checkpoint import folders, integrity

    save, rank, hashed = Path(save_dir), dist.get_rank(), []
    real_sha = integrity.sha256_of
    integrity.sha256_of = lambda path, *a, **k: (hashed.append(str(path)), real_sha(path, *a, **k))[1]
    out = {"resume": ckpt.resolve_restore(save, "checkpoint_last"), "hashed": len(hashed)}
    try:
        ckpt.resolve_restore(save, "checkpoint_8")
    except ckpt.CheckpointError as e:
        out["explicit"] = str(e)
    if rank == 0:
        _fake_save(save, 9)

        def no_permission(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        folders.shutil.rmtree = no_permission
    try:
        ckpt.commit_checkpoint(save, "checkpoint_9", keep_last_n=1)
    except ckpt.CheckpointError as e:
        out["prune"] = str(e)
    return out


def test_rank0_decides_verifies_and_shares_every_outcome(tmp_path):
    for updates in (4, 8):
        ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, updates), keep_last_n=-1)
    (tmp_path / "checkpoint_8" / "mp_rank_00_model_states.pt").write_bytes(b"y")  # same size, other bytes
    rank0, rank1 = run_on_ranks(decide_on_ranks, nprocs=2, timeout=120, save_dir=str(tmp_path))
    assert rank0["resume"] == rank1["resume"] == (tmp_path, "checkpoint_4")
    assert rank0["hashed"] > 0 and rank1["hashed"] == 0  # only rank 0 reads the files
    assert rank0["explicit"] == rank1["explicit"] and "mp_rank_00_model_states.pt is damaged" in rank0["explicit"]
    assert rank0["prune"] == rank1["prune"] and "pruning older checkpoints failed (PermissionError" in rank0["prune"]
    assert (tmp_path / "latest").read_text() == "checkpoint_9\n" and os.path.isdir(tmp_path / "checkpoint_4")

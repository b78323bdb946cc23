"""Checkpoint folders: `latest` moves only to complete checkpoints; pruning; --restore-file resolution."""

import pytest

from adaptive_lm_ds import checkpoint as ckpt


def _fake_save(root, updates):
    tag = ckpt.tag_for(updates)
    (root / tag).mkdir(parents=True)
    (root / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    return tag


def test_latest_points_only_at_committed_checkpoints(tmp_path):
    assert ckpt.read_latest(tmp_path) is None
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 4), keep_last_n=-1)
    _fake_save(tmp_path, 8)  # a save killed before its commit: no marker, latest untouched
    assert ckpt.read_latest(tmp_path) == "checkpoint_4"
    assert ckpt.resolve_restore(tmp_path, "checkpoint_last") == (tmp_path, "checkpoint_4")


def test_latest_naming_an_incomplete_checkpoint_is_an_error(tmp_path):
    _fake_save(tmp_path, 4)
    (tmp_path / "latest").write_text("checkpoint_4\n")
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.read_latest(tmp_path)


def test_keep_last_n_prunes_the_oldest(tmp_path):
    for updates in (2, 4, 6, 8):
        ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, updates), keep_last_n=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoint_6", "checkpoint_8"]
    assert ckpt.read_latest(tmp_path) == "checkpoint_8"


def test_restore_file_by_tag_or_path(tmp_path):
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 4), keep_last_n=-1)
    assert ckpt.resolve_restore(tmp_path / "other", str(tmp_path / "checkpoint_4")) == (tmp_path, "checkpoint_4")
    assert ckpt.resolve_restore(tmp_path, "checkpoint_4") == (tmp_path, "checkpoint_4")
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_restore(tmp_path, "checkpoint_5")

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


def test_resume_from_latest_skips_a_damaged_newest_checkpoint(tmp_path, capsys):
    for updates in (4, 8):
        ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, updates), keep_last_n=-1)
    (tmp_path / "checkpoint_8" / "mp_rank_00_model_states.pt").write_bytes(b"y")  # same size, other bytes
    assert ckpt.resolve_restore(tmp_path, "checkpoint_last") == (tmp_path, "checkpoint_4")
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and "checkpoint_8/mp_rank_00_model_states.pt is damaged" in warnings[0]
    assert "resuming from checkpoint_4, the newest intact checkpoint, instead of checkpoint_8" in warnings[1]


def test_no_intact_checkpoint_is_an_error_naming_the_damage(tmp_path):
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 4), keep_last_n=-1)
    (tmp_path / "checkpoint_4" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint .*mp_rank_00_model_states.pt is missing"):
        ckpt.resolve_restore(tmp_path, "checkpoint_last")


def test_a_checkpoint_without_checksums_loads_with_a_warning(tmp_path, capsys):
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 4), keep_last_n=-1)
    (tmp_path / "checkpoint_4" / ckpt.MANIFEST).unlink()  # as saved before checksums existed
    assert ckpt.resolve_restore(tmp_path, "checkpoint_last") == (tmp_path, "checkpoint_4")
    assert "are not verified" in capsys.readouterr().err


def test_the_record_round_trips_and_garbage_is_one_error(tmp_path):
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.parallel import ParallelDims

    record = ckpt.CheckpointRecord.build(
        get_preset("tiny", vocab_size=100), ParallelDims(tp=2, pp=1, dp=1), num_updates=3, data=None,
        precision="bf16", zero_stage=1, run_config={"run": {"seed": 1}},
    )  # fmt: skip
    (tmp_path / ckpt.STATE_FILE).write_text(record.to_json())
    assert ckpt.read_record(tmp_path).to_json() == record.to_json()
    assert ckpt.read_record(tmp_path).model_config() == get_preset("tiny", vocab_size=100)
    (tmp_path / ckpt.STATE_FILE).write_text('{"num_updates": 3}')
    with pytest.raises(ckpt.CheckpointError, match="is unreadable"):
        ckpt.read_record(tmp_path)

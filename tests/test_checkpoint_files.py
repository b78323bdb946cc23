"""Checkpoint folders: `latest` moves only to complete checkpoints; pruning; rollbacks; --restore-file
resolution; verification that the verified files cannot switch off; the record's fields."""

import json
import logging
import os

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


def test_resume_from_latest_skips_a_damaged_newest_checkpoint(tmp_path, caplog):
    for updates in (4, 8):
        ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, updates), keep_last_n=-1)
    (tmp_path / "checkpoint_8" / "mp_rank_00_model_states.pt").write_bytes(b"y")  # same size, other bytes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adaptive_lm_ds"):
        assert ckpt.resolve_restore(tmp_path, "checkpoint_last") == (tmp_path, "checkpoint_4")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "checkpoint_8/mp_rank_00_model_states.pt is damaged" in warnings[0]
    assert "resuming from checkpoint_4, the newest intact checkpoint, instead of checkpoint_8" in warnings[1]


def test_no_intact_checkpoint_is_an_error_naming_the_damage(tmp_path):
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 4), keep_last_n=-1)
    (tmp_path / "checkpoint_4" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint .*mp_rank_00_model_states.pt is missing"):
        ckpt.resolve_restore(tmp_path, "checkpoint_last")


def _committed(tmp_path, updates=4):
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, updates), keep_last_n=-1)
    return tmp_path / ckpt.tag_for(updates)


def test_a_checkpoint_without_a_manifest_is_damaged(tmp_path):
    (_committed(tmp_path) / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.MANIFEST} is missing: .* counts as damaged"):
        ckpt.resolve_restore(tmp_path, "checkpoint_4")


def test_an_empty_manifest_is_damaged(tmp_path):
    (_committed(tmp_path) / ckpt.MANIFEST).write_text("")
    with pytest.raises(ckpt.CheckpointError, match="lists no files"):
        ckpt.resolve_restore(tmp_path, "checkpoint_4")


def test_a_file_the_manifest_does_not_list_is_damaged(tmp_path):
    tag = _committed(tmp_path)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"planted after the save")
    with pytest.raises(ckpt.CheckpointError, match="optim_states.pt is not listed in"):
        ckpt.resolve_restore(tmp_path, "checkpoint_4")


def test_a_manifest_naming_a_file_outside_the_tag_is_damaged(tmp_path):
    tag = _committed(tmp_path)
    outside = tmp_path / "x"
    outside.write_bytes(b"x")
    digest = ckpt.integrity.sha256_of(outside)
    (tag / ckpt.MANIFEST).write_text(f"{digest}  ../x\n")  # matches the file it points at
    with pytest.raises(ckpt.CheckpointError, match=r"lists '\.\./x', a name outside"):
        ckpt.resolve_restore(tmp_path, "checkpoint_4")


def test_a_rollback_moves_the_newer_checkpoints_aside_and_deletes_nothing(tmp_path):
    for updates in (4, 5, 6):
        _committed(tmp_path, updates)
    before = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    moved = ckpt.move_newer_aside(tmp_path, resumed_at=4)  # --restore-file checkpoint_4
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoint_5", "checkpoint_6"]
    assert ckpt.complete_tags(tmp_path) == ["checkpoint_4"] and ckpt.read_latest(tmp_path) == "checkpoint_4"
    after = {p.relative_to(moved).as_posix(): p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    assert after == {k: v for k, v in before.items() if k.startswith(("checkpoint_5/", "checkpoint_6/"))}
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 5), keep_last_n=3)  # the new run's 5
    assert ckpt.complete_tags(tmp_path) == ["checkpoint_5", "checkpoint_4"]  # the one resumed from is kept


def test_pruning_never_deletes_older_checkpoints_for_a_newer_one_it_did_not_write(tmp_path):
    for updates in (4, 6):  # 6: a checkpoint of another line of the run (not moved aside)
        _committed(tmp_path, updates)
    ckpt.commit_checkpoint(tmp_path, _fake_save(tmp_path, 5), keep_last_n=2)
    assert ckpt.complete_tags(tmp_path) == ["checkpoint_6", "checkpoint_5", "checkpoint_4"]


def test_a_complete_checkpoint_is_never_overwritten(tmp_path):
    tag = _committed(tmp_path, 5)
    before = (tag / ckpt.MANIFEST).read_bytes()
    record = _record(num_updates=5)
    with pytest.raises(ckpt.CheckpointError, match="is a complete checkpoint this run did not write; refusing"):
        ckpt.save_checkpoint(object(), tmp_path, record)  # refused before the engine is touched
    assert (tag / ckpt.MANIFEST).read_bytes() == before


def _crash_commit_at(save_dir, tag, replace_number):
    """Commit ``tag`` in a forked child killed (``os._exit``) just before its ``replace_number``-th rename."""
    pid = os.fork()
    if pid == 0:  # the child: no exception handling, no cleanup, as a killed process
        real, calls = os.replace, []

        def dying_replace(src, dst):
            calls.append(dst)
            if len(calls) == replace_number:
                os._exit(9)
            real(src, dst)

        os.replace = dying_replace
        ckpt.commit_checkpoint(save_dir, tag, keep_last_n=-1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("step", [1, 2, 3], ids=["before-manifest", "before-complete", "before-latest"])
def test_a_kill_between_the_commit_renames_loses_nothing_and_accepts_nothing_half_done(tmp_path, step):
    _committed(tmp_path, 4)
    assert _crash_commit_at(tmp_path, _fake_save(tmp_path, 8), step) == 9
    assert ckpt.resolve_restore(tmp_path, "checkpoint_last") == (tmp_path, "checkpoint_4")
    if step < 3:  # killed before .complete: checkpoint_8 is not a checkpoint
        assert ckpt.complete_tags(tmp_path) == ["checkpoint_4"]
    else:  # complete and intact, `latest` still names checkpoint_4
        ckpt.resolve_restore(tmp_path, "checkpoint_8")


def test_every_file_and_folder_is_fsynced_before_the_rename_that_publishes_it(tmp_path, monkeypatch):
    tag = _fake_save(tmp_path, 4)
    (tmp_path / tag / "rng_rank0.pt").write_bytes(b"r")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(a), str(b))), real_replace(a, b))[1])
    ckpt.commit_checkpoint(tmp_path, tag, keep_last_n=-1)
    synced = lambda upto: {e[1] for e in events[:upto] if e[0] == "fsync"}  # noqa: E731
    renames = [(i, e[1], e[2]) for i, e in enumerate(events) if e[0] == "rename"]
    assert [os.path.basename(dst) for _, _, dst in renames] == [ckpt.MANIFEST, ckpt.COMPLETE, ckpt.LATEST]
    first = renames[0][0]
    files = {str(p) for p in (tmp_path / tag).iterdir() if p.name not in (ckpt.MANIFEST, ckpt.COMPLETE)}
    assert files <= synced(first) and str(tmp_path / tag) in synced(first)  # the data before the manifest
    for index, src, dst in renames:  # each temp file before its rename, its folder right after
        assert src in synced(index)
        following = [e for e in events[index + 1 :] if e[0] == "fsync"]
        assert following and following[0][1] == os.path.dirname(dst)


def _record(**fields):
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.parallel import ParallelDims

    values = dict(num_updates=3, data=None, precision="bf16", zero_stage=1, run_config={"run": {"seed": 1}})
    values.update(fields)
    return ckpt.CheckpointRecord.build(get_preset("tiny", vocab_size=100), ParallelDims(tp=2, pp=1, dp=1), **values)


@pytest.mark.parametrize(
    ("field", "value"),
    [("layout", "tp1"), ("model", []), ("num_updates", "3"), ("zero_stage", 7), ("precision", "fp8"),
     ("data", 5), ("optimizer_fresh", "no")],
)  # fmt: skip
def test_a_record_field_of_the_wrong_type_is_one_line_naming_file_and_field(tmp_path, field, value):
    raw = json.loads(_record().to_json())
    raw[field] = value
    (tmp_path / ckpt.STATE_FILE).write_text(json.dumps(raw))
    with pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.STATE_FILE}: field '{field}' must be") as error:
        ckpt.read_record(tmp_path)
    assert "\n" not in str(error.value)


def test_a_record_with_a_missing_field_or_an_impossible_model_is_refused(tmp_path):
    raw = json.loads(_record().to_json())
    (tmp_path / ckpt.STATE_FILE).write_text(json.dumps({**raw, "model": {**raw["model"], "embed_dim": -1}}))
    with pytest.raises(ckpt.CheckpointError, match="field 'model' is not a valid model config"):
        ckpt.read_record(tmp_path)
    del raw["layout"]
    (tmp_path / ckpt.STATE_FILE).write_text(json.dumps(raw))
    with pytest.raises(ckpt.CheckpointError, match="field 'layout' is missing"):
        ckpt.read_record(tmp_path)


def test_the_record_round_trips_and_garbage_is_one_error(tmp_path):
    from adaptive_lm_ds.config import get_preset

    record = _record()
    (tmp_path / ckpt.STATE_FILE).write_text(record.to_json())
    assert ckpt.read_record(tmp_path).to_json() == record.to_json()
    assert ckpt.read_record(tmp_path).model_config() == get_preset("tiny", vocab_size=100)
    (tmp_path / ckpt.STATE_FILE).write_text('{"num_updates": 3')
    with pytest.raises(ckpt.CheckpointError, match="is unreadable"):
        ckpt.read_record(tmp_path)

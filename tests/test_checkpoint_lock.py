"""One run per --save-dir: a lease its owner renews; liveness never rests on a PID from another namespace."""

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from adaptive_lm_ds.checkpoint import CheckpointError, SaveDirLock, commit_checkpoint, save_checkpoint
from adaptive_lm_ds.checkpoint.lock import LOCK, LockOwner, boot_id, pid_namespace, process_start, read_owner

from .checkpoint_runs import run_single, train_args
from .test_checkpoint_files import _record


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(save_dir, **fields) -> LockOwner:
    """A lock as another run would have written it: this host and namespace, a fresh lease, unless ``fields``."""
    owner = replace(LockOwner.me(lease_s=60.0), **{"pid": _dead_pid(), "process_start": "1", **fields})
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / LOCK).write_text(json.dumps(asdict(owner)))
    return owner


def test_the_lock_records_host_boot_namespace_and_lease_and_is_released(tmp_path):
    lock = SaveDirLock(tmp_path).acquire()
    owner = read_owner(tmp_path)
    assert (owner.host, owner.pid) == (socket.gethostname(), os.getpid()) and owner.started.endswith("Z")
    assert (owner.boot_id, owner.pid_namespace, owner.process_start) == (
        boot_id(),
        pid_namespace(),
        process_start(os.getpid()),
    )
    assert owner.renewed <= time.time() < owner.expires()
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_second_run_on_a_live_lock_is_refused_naming_the_owner(tmp_path):
    SaveDirLock(tmp_path).acquire()
    with pytest.raises(
        CheckpointError, match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()}"
    ):
        SaveDirLock(tmp_path).acquire()


def test_a_live_lease_from_another_pid_namespace_is_not_taken_over(tmp_path):
    """Another container on this host (same host name and kernel): its PID means nothing here."""
    other = _write_lock(tmp_path, pid_namespace="pid:[4026530000]")
    with pytest.raises(CheckpointError, match=rf"pid {other.pid}.*its lease runs until .*delete {tmp_path / LOCK}"):
        SaveDirLock(tmp_path).acquire()
    assert read_owner(tmp_path) == other


def test_a_dead_owner_in_this_pid_namespace_is_taken_over_before_its_lease_ends(tmp_path):
    other = _write_lock(tmp_path)
    lock = SaveDirLock(tmp_path).acquire()
    assert lock.took_over == other and lock.took_over_because == "its process has exited"
    assert read_owner(tmp_path).pid == os.getpid()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path):
    other = _write_lock(tmp_path, pid=os.getpid())  # alive, but a process that started at another time
    assert SaveDirLock(tmp_path).acquire().took_over == other


def test_an_expired_lease_is_taken_over_whoever_holds_the_pid(tmp_path):
    stale = time.time() - 120
    other = _write_lock(tmp_path, host="some-other-node", pid=os.getpid(), process_start=process_start(os.getpid()),
                        renewed=stale)  # fmt: skip
    lock = SaveDirLock(tmp_path).acquire()
    assert lock.took_over == other and lock.took_over_because.startswith("its lease expired at")


def test_a_lock_without_a_lease_is_refused_with_what_to_do(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"host": "some-other-node", "pid": 1, "started": "2026-01-01T00:00:00Z"}))
    with pytest.raises(CheckpointError, match=rf"without a lease .*if that run is gone, delete {tmp_path / LOCK}"):
        SaveDirLock(tmp_path).acquire()


def test_the_owner_renews_its_lease(tmp_path):
    lock = SaveDirLock(tmp_path, lease_s=0.4).acquire()
    first = read_owner(tmp_path).renewed
    time.sleep(1.0)  # two and a half leases: without renewal it would have expired
    assert read_owner(tmp_path).renewed > first and read_owner(tmp_path).expires() > time.time()
    with pytest.raises(CheckpointError, match="in use by another run"):
        SaveDirLock(tmp_path).acquire()
    lock.release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = SaveDirLock(tmp_path).acquire()
    other = _write_lock(tmp_path, host="some-other-node")  # someone replaced it (deleted ours by hand and started)
    lock.release()
    assert read_owner(tmp_path) == other


def test_a_run_whose_lock_was_taken_over_neither_saves_nor_prunes(tmp_path):
    lock = SaveDirLock(tmp_path).acquire()
    tag = tmp_path / "checkpoint_3"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    _write_lock(tmp_path, host="some-other-node")
    with pytest.raises(CheckpointError, match="no longer holds .* stopping without writing"):
        lock.check_owned()
    with pytest.raises(CheckpointError, match="no longer holds"):
        commit_checkpoint(tmp_path, tag.name, keep_last_n=0, still_owner=lock.check_owned)
    assert sorted(p.name for p in tag.iterdir()) == ["mp_rank_00_model_states.pt"]  # no manifest, no marker
    with pytest.raises(CheckpointError, match="no longer holds"):
        save_checkpoint(object(), tmp_path, _record(num_updates=4), still_owner=lock.check_owned)  # before the engine


@pytest.mark.slow
def test_training_on_a_locked_save_dir_stops_with_one_line(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    SaveDirLock(save).acquire()  # this test process holds it
    result = run_single(train_args(data, init, save, 2))
    assert result.returncode == 2
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0] and "in use by another run" in errors[0]
    assert not list(save.glob("checkpoint_*")) and read_owner(save).pid == os.getpid()  # untouched


@pytest.mark.slow
def test_training_takes_over_a_dead_runs_lock_with_a_warning(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    dead = _write_lock(save).pid
    result = run_single(train_args(data, init, save, 1))
    assert result.returncode == 0, result.output[-3000:]
    warning = f"took over {save / LOCK} from a run that is gone (host {socket.gethostname()}, pid {dead}"
    assert f"| WARNING | adaptive_lm_ds.checkpoint | {warning}" in result.output
    assert "its process has exited)" in result.output
    assert not (save / LOCK).exists()  # released at the end


def write_layout_on_rank(consolidated: str, save_dir: str) -> str:
    """Rank-side: adaptive-lm-write-layout's work at TP1; the error line, if any."""
    from adaptive_lm_ds.formats.layout_checkpoint import write_layout_checkpoint

    try:
        return write_layout_checkpoint(consolidated, save_dir, tp=1, pp=1)
    except CheckpointError as e:
        return f"error: {e}"


@pytest.mark.slow
def test_the_layout_writer_takes_the_lock_too(tiny_run_setup, tmp_path):
    from adaptive_lm_ds.testing import run_on_ranks

    _, init = tiny_run_setup
    save = tmp_path / "save"
    SaveDirLock(save).acquire()
    (result,) = run_on_ranks(write_layout_on_rank, nprocs=1, consolidated=str(init), save_dir=str(save))
    assert result.startswith("error: --save-dir") and f"pid {os.getpid()}" in result
    assert not list(save.glob("checkpoint_*"))

"""One run per --save-dir: a second run is refused in one line; a dead owner's lock is taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from adaptive_lm_ds.checkpoint import CheckpointError, SaveDirLock
from adaptive_lm_ds.checkpoint.lock import LOCK, read_owner

from .checkpoint_runs import run_single, train_args


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(save_dir, host, pid):
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / LOCK).write_text(json.dumps({"host": host, "pid": pid, "started": "2026-01-01T00:00:00Z"}))


def test_the_lock_records_host_pid_and_start_and_is_released(tmp_path):
    lock = SaveDirLock(tmp_path).acquire()
    owner = read_owner(tmp_path)
    assert (owner.host, owner.pid) == (socket.gethostname(), os.getpid()) and owner.started.endswith("Z")
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_second_run_on_a_live_lock_is_refused_naming_the_owner(tmp_path):
    SaveDirLock(tmp_path).acquire()
    with pytest.raises(
        CheckpointError, match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()}"
    ):
        SaveDirLock(tmp_path).acquire()


def test_a_dead_owner_on_this_host_is_taken_over(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, socket.gethostname(), dead)
    lock = SaveDirLock(tmp_path).acquire()
    assert lock.took_over.pid == dead
    assert read_owner(tmp_path).pid == os.getpid()


def test_an_owner_on_another_host_is_refused_with_what_to_do(tmp_path):
    _write_lock(tmp_path, "some-other-node", _dead_pid())
    with pytest.raises(
        CheckpointError, match=rf"if that run on host some-other-node is gone, delete {tmp_path / LOCK}"
    ):
        SaveDirLock(tmp_path).acquire()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = SaveDirLock(tmp_path).acquire()
    _write_lock(tmp_path, "some-other-node", 1)  # someone replaced it (e.g. deleted ours by hand and started)
    lock.release()
    assert read_owner(tmp_path).host == "some-other-node"


@pytest.mark.slow
def test_training_on_a_locked_save_dir_stops_with_one_line(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    _write_lock(save, socket.gethostname(), os.getpid())  # this test process: alive
    result = run_single(train_args(data, init, save, 2))
    assert result.returncode == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0] and "in use by another run" in errors[0]
    assert not list(save.glob("checkpoint_*")) and read_owner(save).pid == os.getpid()  # untouched


@pytest.mark.slow
def test_training_takes_over_a_dead_runs_lock_with_a_warning(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    dead = _dead_pid()
    _write_lock(save, socket.gethostname(), dead)
    result = run_single(train_args(data, init, save, 1))
    assert result.returncode == 0, result.output[-3000:]
    assert f"| warning: took over {save / LOCK} from a run that is gone (host {socket.gethostname()}, pid {dead}" in (
        result.output
    )
    assert not (save / LOCK).exists()  # released at the end

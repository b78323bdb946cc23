"""DeepSpeed's CPU runtime: its op is built in this venv (not ~/.cache), a stale build lock is a one-line
error instead of a hang, and no run leaves its 69 MB/rank buffers in /dev/shm, however it ends."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from adaptive_lm_ds import ds_runtime
from adaptive_lm_ds.testing import run_on_ranks
from adaptive_lm_ds.testing.distributed import (
    _descendants,
    _kill_tree,
    free_port,
    launch,
    launcher_argv,
    rank_env,
)
from tests.oracle import REPO


def _start_deepspeed_comm() -> dict:
    """Rank-side: start DeepSpeed's communication as training does (the harness's worker already did, through
    ``parallel.init_process_group``; this call then only wraps the group) and report what it used."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.ops.op_builder.builder import OpBuilder

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    op = OpBuilder._loaded_ops.get(ds_runtime.SHM_OP)
    buffer = ds_runtime.shm_buffer_path(dist.get_rank())
    return {
        "extensions_dir": os.environ.get(ds_runtime.ENV),
        "ours": str(ds_runtime.extensions_dir()),
        "op_file": getattr(op, "__file__", None),
        "buffer": str(buffer),
        "buffer_made": str(buffer) in Path("/proc/self/maps").read_text(),  # mapped (its name may be gone already)
    }


@pytest.fixture(scope="module")
def deepspeed_launch(tmp_path_factory):
    """Two ranks under the deepspeed launcher (which sets LOCAL_SIZE, so DeepSpeed uses /dev/shm),
    with HOME pointing at an empty folder: nothing may need ~/.cache."""
    home = tmp_path_factory.mktemp("home")
    results = run_on_ranks(_start_deepspeed_comm, nprocs=2, launcher="deepspeed", env={"HOME": str(home)})
    return home, results


def test_the_shm_op_is_built_and_loaded_in_this_venv_not_the_home_cache(deepspeed_launch):
    home, results = deepspeed_launch
    venv = Path(sys.prefix).resolve()
    for r in results:
        assert r["extensions_dir"] == r["ours"] and Path(r["ours"]).is_relative_to(venv / "torch_extensions")
        assert r["op_file"] is not None and r["op_file"].startswith(r["ours"] + "/")
    assert not (home / ".cache").exists()


def test_no_shm_buffer_outlives_a_multi_rank_test(deepspeed_launch):
    _, results = deepspeed_launch
    assert all(r["buffer_made"] for r in results)  # DeepSpeed did make them (the check below is not vacuous)
    assert [r["buffer"] for r in results if Path(r["buffer"]).exists()] == []


def test_a_killed_training_run_leaves_no_shm_buffer(tiny_run_setup):
    """SIGKILL every process mid-run (no handler can run): the buffers were mapped but their names are gone."""
    data, _ = tiny_run_setup
    port = free_port()
    argv = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(port),
            "launchers/train_wiki103.py", "--data", str(data), "--preset", "tiny", "--no-save",
            "--tokens-per-sample", "32", "--max-tokens", "128", "--update-freq", "1", "--max-update", "100000",
            "--deepspeed_config", "ds_configs/zero1.json"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env=rank_env(), cwd=REPO, start_new_session=True,
    )  # fmt: skip
    timer = threading.Timer(300, _kill_tree, [proc])
    timer.start()
    mapped, lines = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "| layout TP1 x PP1 x DP2" in line:  # set-up done on every rank: buffers exist and are mapped
                for pid in _descendants(proc.pid):
                    try:
                        mapped += [m for m in Path(f"/proc/{pid}/maps").read_text().splitlines() if f"_{port}_" in m]
                    except OSError:
                        pass
                break
    finally:
        timer.cancel()
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _kill_tree(proc)
    assert mapped, "".join(lines)[-3000:]
    assert all(m.endswith("(deleted)") for m in mapped), mapped  # used, and already unlinked
    assert [p for p in (ds_runtime.shm_buffer_path(r, "127.0.0.1", port) for r in range(2)) if p.exists()] == []


@pytest.mark.parametrize("ending", ["normal end", "user error"])
def test_a_training_run_under_the_deepspeed_launcher_leaves_no_shm_buffer(ending, tiny_run_setup, tmp_path):
    """Launched without the harness's own clean-up: the ranks themselves must leave nothing behind."""
    data, _ = tiny_run_setup
    if ending == "user error":  # fails after DeepSpeed's start: a block longer than the model's positions
        flags = ["--tokens-per-sample", "2048", "--max-tokens", "2048"]
    else:
        flags = ["--tokens-per-sample", "32", "--max-tokens", "128"]
    port = free_port()
    argv = launcher_argv("deepspeed", 2, port) + [
        "launchers/train_wiki103.py", "--data", str(data), "--preset", "tiny", "--no-save", "--max-update", "2",
        "--update-freq", "1", "--deepspeed_config", "ds_configs/zero1.json", *flags,
    ]  # fmt: skip
    result = launch(argv, timeout=300, env=rank_env())
    assert (result.returncode == 0) == (ending == "normal end"), result.output[-3000:]
    assert "built successfully" in result.output  # DeepSpeed's shm op was up on the ranks
    assert [p for p in (ds_runtime.shm_buffer_path(r, "127.0.0.1", port) for r in range(2)) if p.exists()] == []


@pytest.fixture
def stale_lock(tmp_path, monkeypatch):
    """An extensions folder holding the lock a build killed half-way leaves behind."""
    monkeypatch.setenv(ds_runtime.OVERRIDE, str(tmp_path / "ext"))
    lock = tmp_path / "ext" / ds_runtime.SHM_OP / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    return lock


def test_a_stale_build_lock_stops_training_with_one_line(stale_lock, tiny_run_setup):
    data, _ = tiny_run_setup
    env = {**rank_env(), ds_runtime.OVERRIDE: os.environ[ds_runtime.OVERRIDE], "MASTER_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "launchers/train_wiki103.py", "--data", str(data), "--preset", "tiny", "--no-save",
         "--tokens-per-sample", "32", "--max-tokens", "128", "--max-update", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,  # a hang fails here
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line or line.startswith("Traceback")]
    assert len(errors) == 1 and f"rm {stale_lock}" in errors[0], proc.stderr[-2000:]
    assert stale_lock.exists()  # named, not deleted: it is the user's to remove


def test_a_lock_released_within_the_grace_period_is_not_called_stale(stale_lock):
    threading.Timer(0.3, stale_lock.unlink).start()  # another process finishing its (quick) load
    ds_runtime.check_stale_lock(grace_s=10)
    assert not stale_lock.exists()

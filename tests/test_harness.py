"""The multi-rank harness: results per rank, the failing rank's traceback, timeouts, no orphans."""

import os
import time

import pytest
import torch
import torch.distributed as dist

from adaptive_lm_ds.testing import RankFailure, RankTimeout, run_on_ranks, run_script


def _all_reduce_rank(scale):
    t = torch.tensor([float(dist.get_rank() + 1)]) * scale
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t.item()}


def _raise_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("boom from rank one")
    dist.barrier()
    return "unreachable"


def _hang_and_record_pid(pid_dir):
    with open(os.path.join(pid_dir, f"{dist.get_rank()}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_every_rank_returns_its_result(launcher):
    results = run_on_ranks(_all_reduce_rank, nprocs=2, launcher=launcher, scale=2.0)
    # 2 * (1 + 2) = 6 on every rank, computed by a real gloo all-reduce.
    assert results == [{"rank": r, "world": 2, "sum": 6.0} for r in range(2)]


def test_failing_rank_is_named_with_its_traceback():
    with pytest.raises(RankFailure) as info:
        run_on_ranks(_raise_on_rank_one, nprocs=2, timeout=120)
    assert info.value.rank == 1
    assert "ValueError: boom from rank one" in str(info.value)


def test_hanging_rank_times_out_and_leaves_no_process(tmp_path):
    start = time.monotonic()
    with pytest.raises(RankTimeout):
        run_on_ranks(_hang_and_record_pid, nprocs=2, timeout=15, pid_dir=str(tmp_path))
    assert time.monotonic() - start < 45
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2
    time.sleep(1)  # let init reap the killed ranks
    assert [pid for pid in pids if _is_running(pid)] == []


def _is_running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its new parent to reap it


def test_local_function_is_rejected_before_launch():
    def local():
        return 1

    with pytest.raises(ValueError, match="module level"):
        run_on_ranks(local, nprocs=2)


def test_run_script_reports_failure_with_output(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    with pytest.raises(RankFailure, match="about to fail"):
        run_script(script, nprocs=2, timeout=120)


def test_run_script_runs_a_script_on_every_rank(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("import os\nprint('hello from', os.environ['RANK'])\n")
    out = run_script(script, nprocs=2, timeout=120).output
    assert "hello from 0" in out and "hello from 1" in out

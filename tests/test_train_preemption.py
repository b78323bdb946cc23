"""Preemption: SIGTERM / SIGINT finish the update, save and exit with one line; a second signal skips the save."""

import os
import signal
import time

import pytest

from adaptive_lm_ds import logs
from adaptive_lm_ds.checkpoint import integrity, read_latest
from adaptive_lm_ds.testing.distributed import run_script_signalled
from adaptive_lm_ds.training.signals import SAME_REQUEST_S, StopRequests

from .checkpoint_runs import LAUNCHER, run_single, train_args


def _stopped_update(output: str, name: str) -> int:
    lines = [line for line in output.splitlines() if logs.message(line).startswith(f"stopped by {name} after update ")]
    assert len(lines) == 1, output[-3000:]
    return int(lines[0].split("after update ")[1].split(";")[0])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_a_single_process_saves_and_exits_cleanly(tiny_run_setup, tmp_path, sig):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    args = train_args(data, init, save, 10_000, "--save-interval-updates", "0")  # no periodic saves
    result = run_script_signalled(LAUNCHER, args, '"update": 2,', sig, launcher=None, timeout=300)
    assert result.returncode == 128 + sig, result.output[-3000:]
    stopped = _stopped_update(result.output, sig.name)
    assert stopped >= 2
    assert read_latest(save) == f"checkpoint_{stopped}"
    integrity.verify(save / f"checkpoint_{stopped}")  # raises on any damage
    assert "Traceback" not in result.output and "KeyboardInterrupt" not in result.output
    resumed = run_single(train_args(data, init, save, stopped + 1))
    assert resumed.returncode == 0 and f"resumed from checkpoint_{stopped} at update {stopped}" in resumed.output


@pytest.mark.slow
def test_sigterm_through_torchrun_stops_every_rank_at_the_same_update(tiny_run_setup, tmp_path):
    data, init = tiny_run_setup
    save = tmp_path / "save"
    args = train_args(data, init, save, 10_000, "--save-interval-updates", "0", "--tensor-model-parallel-size", "2")
    result = run_script_signalled(LAUNCHER, args, '"update": 2,', signal.SIGTERM, nprocs=2, timeout=300)
    stopped = _stopped_update(result.output, "SIGTERM")
    tag = save / f"checkpoint_{stopped}"
    assert read_latest(save) == tag.name
    integrity.verify(tag)  # raises on any damage
    assert {p.name for p in tag.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}  # both ranks saved it


def test_a_second_signal_never_stops_one_rank_alone_it_asks_every_rank_to_skip_the_save(capfd):
    with StopRequests() as requests:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs in the main thread at the next bytecode
        assert requests.received == signal.SIGTERM and not requests.urgent
        os.kill(os.getpid(), signal.SIGINT)  # the launcher forwarding the same request: ignored
        time.sleep(0.05)
        assert not requests.urgent
        time.sleep(SAME_REQUEST_S)
        os.kill(os.getpid(), signal.SIGTERM)  # no SystemExit here: a rank leaving alone strands the others
        time.sleep(0.5)
        assert requests.urgent  # agreed on by every rank at the stop point (Trainer._stop_for_signal)
    err = capfd.readouterr().err
    assert "finishing this update, saving" in err and "every rank stops after this update without saving" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_under_no_save_the_first_signal_promises_no_save(capfd):
    with StopRequests(saves=False) as requests:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert requests.received == signal.SIGTERM
    err = capfd.readouterr().err
    assert "finishing this update, then exiting (--no-save: nothing is saved)" in err and "saving," not in err

"""Checkpoints against hostile files and damage: weights-only loads everywhere, checksums, fallback.

One tiny single-process run saves ``checkpoint_1`` and ``checkpoint_2``; each test damages a copy the
way an attacker or a bad disk would and checks resume, export and eval. A malicious pickle would
create a marker file: the tests prove it never ran (and, as a control, that it does run when
unpickled the unsafe way).
"""

import pickle
import shutil

import pytest
import torch

from adaptive_lm_ds.checkpoint import CheckpointError, integrity, load_file, resolve_restore
from adaptive_lm_ds.formats.export import consolidate_checkpoint
from tests.oracle import REPO

from .checkpoint_runs import MODEL, OPTIM, run_single, train_args

EVAL = REPO / "tools" / "eval_lm.py"


@pytest.fixture
def save(trained_checkpoint, tmp_path):
    copy = tmp_path / "save"
    shutil.copytree(trained_checkpoint, copy)
    return copy


class Touch:
    """Unpickling this creates ``path``: the proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(path, position, marker):
    """Add a payload to a genuine file and re-hash the folder: an attacker who can write the folder can also
    rewrite its checksums."""
    state = load_file(path)
    if position == "module":
        state["module"]["evil"] = Touch(marker)
    elif position == "optimizer":
        state["optimizer_state_dict"]["evil"] = Touch(marker)
    else:  # client state (any extra key of the model states file) and the RNG file
        state["evil"] = Touch(marker)
    torch.save(state, path)
    integrity.write_manifest(path.parent)


POSITIONS = [(MODEL, "module"), (MODEL, "client"), (OPTIM, "optimizer"), ("rng_rank0.pt", "rng")]


def test_the_payload_runs_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"x": Touch(marker)}))  # what an unsafe torch.load does to the same bytes
    assert marker.exists()  # the control: the tests below would see it


@pytest.mark.slow
@pytest.mark.parametrize(("filename", "position"), POSITIONS, ids=[p for _, p in POSITIONS])
def test_resume_refuses_a_malicious_pickle_in_any_file(tiny_run_setup, save, tmp_path, filename, position):
    marker = tmp_path / "ran"
    plant(save / "checkpoint_2" / filename, position, marker)
    data, init = tiny_run_setup
    result = run_single(train_args(data, init, save, 3))
    assert result.returncode == 2, result.output[-3000:]
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "not on the allowlist" in errors[0] and filename in errors[0]
    assert "Traceback" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize(("filename", "position"), POSITIONS[:2], ids=[p for _, p in POSITIONS[:2]])
def test_export_refuses_a_malicious_pickle(save, tmp_path, filename, position):
    marker = tmp_path / "ran"
    plant(save / "checkpoint_2" / filename, position, marker)
    with pytest.raises(CheckpointError, match="not on the allowlist"):
        consolidate_checkpoint(save)
    assert not marker.exists()


def flip_bytes(path):
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.slow
@pytest.mark.parametrize("damage", [flip_bytes, truncate], ids=["flipped", "truncated"])
def test_resume_from_latest_falls_back_to_the_newest_intact_checkpoint(tiny_run_setup, save, damage):
    damage(save / "checkpoint_2" / MODEL)
    data, init = tiny_run_setup
    result = run_single(train_args(data, init, save, 3))
    assert result.returncode == 0, result.output[-3000:]
    warnings = [
        line for line in result.output.splitlines() if "| WARNING | " in line and "skipping checkpoint_2" in line
    ]
    assert len(warnings) == 1 and MODEL in warnings[0]
    assert "resumed from checkpoint_1 at update 1" in result.output
    assert (save / "latest").read_text().strip() == "checkpoint_3"


def test_an_explicit_damaged_restore_file_is_refused_naming_the_file(save):
    flip_bytes(save / "checkpoint_2" / OPTIM)
    with pytest.raises(CheckpointError, match=rf"{OPTIM} is damaged"):
        resolve_restore(save, "checkpoint_2")


def test_export_of_flipped_bytes_is_refused_naming_the_file(save, tmp_path):
    flip_bytes(save / "checkpoint_2" / MODEL)
    with pytest.raises(CheckpointError, match=rf"{MODEL} is damaged"):
        consolidate_checkpoint(save)
    result = run_single(
        ["--checkpoint", save, "--output", tmp_path / "out"], script=REPO / "tools" / "export_checkpoint.py"
    )
    assert result.returncode != 0 and f"{MODEL} is damaged" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "model.safetensors").exists()


def test_eval_of_flipped_bytes_is_one_line_not_a_traceback(tiny_run_setup, save):
    flip_bytes(save / "checkpoint_2" / MODEL)
    data, _ = tiny_run_setup
    result = run_single(["--path", save, "--data", data, "--max-samples", "4"], script=EVAL)
    assert result.returncode != 0
    assert f"{MODEL} is damaged" in result.output
    assert "Traceback" not in result.output and "OverflowError" not in result.output


def test_a_flipped_byte_with_an_emptied_manifest_is_refused(save):
    flip_bytes(save / "checkpoint_2" / MODEL)
    (save / "checkpoint_2" / integrity.MANIFEST).write_text("")
    with pytest.raises(CheckpointError, match="lists no files"):
        resolve_restore(save, "checkpoint_2")
    with pytest.raises(CheckpointError, match="lists no files"):
        consolidate_checkpoint(save / "checkpoint_2")


@pytest.mark.slow
def test_a_rollback_keeps_the_abandoned_checkpoints_byte_for_byte(tiny_run_setup, save):
    """--restore-file checkpoint_1 in a save dir holding checkpoint_2: the new run saves its own checkpoint_2."""
    old = {p.relative_to(save).as_posix(): p.read_bytes() for p in (save / "checkpoint_2").rglob("*") if p.is_file()}
    data, init = tiny_run_setup
    result = run_single(train_args(data, init, save, 2, "--restore-file", save / "checkpoint_1", "--lr", "0.5"))
    assert result.returncode == 0, result.output[-3000:]
    (moved,) = (save / "abandoned").iterdir()
    warning = [line for line in result.output.splitlines() if "newer than update 1 (checkpoint_2)" in line]
    assert len(warning) == 1 and str(moved) in warning[0]
    kept = {p.relative_to(moved).as_posix(): p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    assert kept == old  # the abandoned run's checkpoint_2, untouched
    assert (save / "latest").read_text().strip() == "checkpoint_2" and resolve_restore(save, "checkpoint_2")
    assert (save / "checkpoint_2" / MODEL).read_bytes() != old[f"checkpoint_2/{MODEL}"]  # lr 0.5: other weights

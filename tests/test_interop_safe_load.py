"""Checkpoints are loaded with torch's weights-only unpickler plus an explicit allowlist."""

import argparse
import os

import numpy as np
import pytest
import torch

from adaptive_lm_ds.interop import UnsafeCheckpointError, safe_load


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


class CustomPayload:
    def __init__(self):
        self.value = 1


def test_namespace_args_and_numpy_scalars_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"args": argparse.Namespace(decoder_layers=2), "best_loss": np.float64(3.5), "w": torch.ones(2)}, path)
    loaded = safe_load(path)
    assert loaded["args"].decoder_layers == 2 and loaded["best_loss"] == 3.5 and torch.equal(loaded["w"], torch.ones(2))


def test_a_function_global_is_refused_by_name(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"system"):
        safe_load(path)


def test_a_custom_class_is_refused_by_name(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"extra": CustomPayload()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"CustomPayload"):
        safe_load(path)


def test_allowlist_does_not_leak_into_global_torch_state(tmp_path):
    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(a=1)}, path)
    safe_load(path)
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)


def test_garbage_and_missing_files_are_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UnsafeCheckpointError, match="bad.pt"):
        safe_load(bad)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        safe_load(tmp_path / "absent.pt")

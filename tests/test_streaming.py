"""Tensors one at a time: the streaming safetensors writer and the lazy state dict."""

import torch
from safetensors.torch import load_file

from adaptive_lm_ds.formats.streaming import LazyTensors, read_safetensors, write_safetensors


def test_streamed_file_is_what_safetensors_reads(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"b.weight": torch.randn(3, 5, generator=g), "a": torch.randn(7, generator=g), "c": torch.zeros(())}
    write_safetensors(str(tmp_path / "m.safetensors"), tensors, {"format": "x"})
    back, lazy = load_file(str(tmp_path / "m.safetensors")), read_safetensors(str(tmp_path / "m.safetensors"))
    assert back.keys() == tensors.keys() == set(lazy)
    for name, tensor in tensors.items():
        assert torch.equal(back[name], tensor) and torch.equal(lazy[name], tensor)


def test_lazy_tensors_make_a_value_only_when_asked():
    made = []

    def read(name):
        made.append(name)
        return torch.full((2,), float(len(name)))

    lazy = LazyTensors({"x": (2,), "yy": (2,)}, read)
    assert sorted(lazy) == ["x", "yy"] and len(lazy) == 2 and "x" in lazy
    assert made == []
    assert torch.equal(lazy["yy"], torch.full((2,), 2.0)) and made == ["yy"]


def test_writer_streams_a_lazy_mapping_from_shapes(tmp_path):
    lazy = LazyTensors({"w": (4, 3)}, lambda name: torch.arange(12.0).view(4, 3).to(torch.bfloat16))
    write_safetensors(str(tmp_path / "m.safetensors"), lazy, {})
    assert torch.equal(load_file(str(tmp_path / "m.safetensors"))["w"], torch.arange(12.0).view(4, 3))

"""Tensors one at a time: a lazy name -> tensor mapping and a streaming safetensors writer.

A consolidated gbw_huge is 1026M fp32 parameters (4.1 GB). Export and evaluation used to hold it
whole, and more than once (the assembled dict, its fp32 ``contiguous`` copy, safetensors' serialised
bytes; then every rank of an evaluation read the whole file), which took a process past 10 GB
(BENCHMARKS.md, "Memory at real shapes"). Here a state dict is a :class:`LazyTensors`: each value is
made when it is asked for (read from the safetensors file, or concatenated from the TP
shards) and dropped by the caller after use; :func:`write_safetensors` writes the header from the
shapes alone and then each tensor's bytes, so at most one tensor is materialised at a time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from safetensors import safe_open

# safetensors' dtype names for what a consolidated model holds
_DTYPES = {torch.float32: ("F32", 4)}
_NUMPY = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}


class LazyTensors(Mapping):
    """``name -> tensor`` whose values are made by ``read(name)`` on access; ``shapes`` names them.

    ``read_slice(name, dim, start, length)``, when given, makes only that slice of a value (a TP rank's rows of
    a vocabulary table without the whole table); :meth:`narrow` falls back to reading the whole value.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        read: Callable[[str], torch.Tensor],
        read_slice: Callable[[str, int, int, int], torch.Tensor] | None = None,
    ):
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self._read = read
        self._read_slice = read_slice

    def narrow(self, name: str, dim: int, start: int, length: int) -> torch.Tensor:
        """``self[name].narrow(dim, start, length)``, made without the whole value where the source allows."""
        if name not in self.shapes:
            raise KeyError(name)
        if self._read_slice is None:
            return self._read(name).narrow(dim, start, length)
        return self._read_slice(name, dim, start, length)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        return self._read(name)

    def __contains__(self, name: object) -> bool:  # Mapping's default would make the value
        return name in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def shape_of(tensors: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    """A value's shape without making it when ``tensors`` is lazy."""
    return tensors.shapes[name] if isinstance(tensors, LazyTensors) else tuple(tensors[name].shape)


def write_safetensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``tensors`` as fp32 into a safetensors file, one tensor in memory at a time (names sorted)."""
    names = sorted(tensors)
    dtype, size = _DTYPES[torch.float32]
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in names:
        shape = shape_of(tensors, name)
        nbytes = size * int(torch.Size(shape).numel())
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name in names:
            tensor = tensors[name].detach().to(torch.float32).contiguous()
            if tuple(tensor.shape) != tuple(header[name]["shape"]):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} differs from {header[name]['shape']}")
            f.write(memoryview(tensor.numpy().reshape(-1)).cast("B"))
            del tensor


def read_safetensors(path: str) -> LazyTensors:
    """A safetensors file as a :class:`LazyTensors`: each tensor read from the file when asked for.

    safetensors validates the file (header, offsets, size) as it opens it. The values are then read with
    plain file reads, not through safetensors' memory map: the mapped pages a read touches would count
    in the process's RSS (a 4.1 GB file became 4.1 GB of RSS while a model loaded from it).
    """
    with safe_open(path, framework="pt", device="cpu") as handle:
        keys = list(handle.keys())
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    entries = {k: header[k] for k in keys}

    def read(name: str) -> torch.Tensor:
        entry = entries[name]
        if entry["dtype"] not in _NUMPY:  # not what this project writes: let safetensors read it
            with safe_open(path, framework="pt", device="cpu") as handle:
                return handle.get_tensor(name)
        start, end = entry["data_offsets"]
        dtype = np.dtype(_NUMPY[entry["dtype"]]).newbyteorder("<")
        values = np.fromfile(path, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        return torch.from_numpy(values.astype(values.dtype.newbyteorder("="), copy=False)).view(entry["shape"])

    return LazyTensors({k: tuple(v["shape"]) for k, v in entries.items()}, read)

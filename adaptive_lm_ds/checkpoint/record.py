"""The checkpoint record: what a training checkpoint *is*, stored once as ``TAG/trainer_state.json``.

Everything a resume, an offline export or an eval needs besides the tensors: the model config, the
layout it was saved under, the data position, precision and ZeRO stage, and the resolved run config
(every flag, as nanoGPT keeps its config). DeepSpeed's own files carry no copy of it (no client
state), so there is one place to read and one to write.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptive_lm_ds.checkpoint.errors import CheckpointError
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.parallel import ParallelDims

STATE_FILE = "trainer_state.json"


@dataclass
class CheckpointRecord:
    num_updates: int
    model: dict[str, Any]  # dataclasses.asdict(ModelConfig)
    layout: dict[str, int]  # ParallelDims.to_record(): tp, pp, dp
    data: dict[str, Any] | None  # LMBatchIterator.state_dict(); None: start the data from the beginning
    precision: str  # fp32 | bf16 | fp16
    zero_stage: int
    optimizer_fresh: bool = False  # a converted model: resuming starts optimizer and schedule anew
    converted_from: str | None = None
    run_config: dict[str, Any] | None = field(default=None)  # dataclasses.asdict(TrainConfig)

    @classmethod
    def build(cls, model: ModelConfig, dims: ParallelDims, **fields: Any) -> CheckpointRecord:
        return cls(model=dataclasses.asdict(model), layout=dims.to_record(), **fields)

    def model_config(self) -> ModelConfig:
        from adaptive_lm_ds.formats.consolidated import model_config_from_dict

        return model_config_from_dict(self.model)

    @property
    def dims(self) -> ParallelDims:
        """The layout the checkpoint was saved under (sizes only)."""
        return ParallelDims.from_record(self.layout)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"


PRECISIONS = ("fp32", "bf16", "fp16")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _is_int(value) and value > 0


def _optional(check):
    return lambda v: v is None or check(v)


# field -> (what it must be, the check); the record's one schema. Fields a checksum-matching manifest vouches
# for can still be wrong (an older writer, a hand edit with the checksum updated): nothing is used unchecked.
_FIELDS: dict[str, tuple[str, Any]] = {
    "num_updates": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "model": ("an object of model config fields", lambda v: isinstance(v, dict)),
    "layout": (
        'an object {"tp", "pp", "dp"} of integers >= 1',
        lambda v: isinstance(v, dict) and sorted(v) == ["dp", "pp", "tp"] and all(_positive(x) for x in v.values()),
    ),
    "data": ("an object or null", _optional(lambda v: isinstance(v, dict))),
    "precision": (f"one of {', '.join(PRECISIONS)}", lambda v: v in PRECISIONS),
    "zero_stage": ("an integer 0..3", lambda v: _is_int(v) and 0 <= v <= 3),
    "optimizer_fresh": ("true or false", lambda v: isinstance(v, bool)),
    "converted_from": ("a string or null", _optional(lambda v: isinstance(v, str))),
    "run_config": ("an object or null", _optional(lambda v: isinstance(v, dict))),
}
_REQUIRED = [f.name for f in dataclasses.fields(CheckpointRecord) if f.default is dataclasses.MISSING]


def read_record(tag_dir: str | Path) -> CheckpointRecord:
    """The record of a tag folder, every field checked; anything wrong is one CheckpointError naming the
    file and the field."""
    path = Path(tag_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e}); the checkpoint is corrupt") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object; the checkpoint is corrupt")
    for name in _REQUIRED:
        if name not in raw:
            raise CheckpointError(f"{path}: field {name!r} is missing; the checkpoint is corrupt")
    for name, (what, ok) in _FIELDS.items():
        if name in raw and not ok(raw[name]):
            raise CheckpointError(
                f"{path}: field {name!r} must be {what}, not {json.dumps(raw[name])[:60]}; the checkpoint is corrupt"
            )
    record = CheckpointRecord(**{k: v for k, v in raw.items() if k in _FIELDS})
    try:
        record.model_config().validate()
    except (UserError, TypeError, ValueError) as e:
        message = f"{path}: field 'model' is not a valid model config ({e}); the checkpoint is corrupt"
        raise CheckpointError(message) from None
    return record

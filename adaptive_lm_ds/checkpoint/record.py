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


def read_record(tag_dir: str | Path) -> CheckpointRecord:
    """The record of a tag folder; a missing, unparsable or incomplete record is a CheckpointError."""
    path = Path(tag_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(CheckpointRecord)}
        return CheckpointRecord(**{k: v for k, v in raw.items() if k in known})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e}); the checkpoint is corrupt") from None

#!/usr/bin/env python
"""Export a training checkpoint of any TP x PP x DP layout to one consolidated model folder.

    python tools/export_checkpoint.py --checkpoint checkpoints/ --output model/   # the latest one
    python tools/export_checkpoint.py --checkpoint checkpoints/checkpoint_4000 --output model/

One process, no launcher, no GPU: the layout is read from the checkpoint's trainer_state.json. The
folder (model.safetensors + config.json + dict.txt) evaluates with tools/eval_lm.py, converts to
fairseq with tools/convert_fairseq_ckpt.py --to-fairseq, and starts training in any other layout
with --init-from.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from adaptive_lm_ds.checkpoint import CheckpointError  # noqa: E402
from adaptive_lm_ds.consolidated import ConsolidatedFormatError, save_consolidated  # noqa: E402
from adaptive_lm_ds.training.export import consolidate_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a --save-dir (its latest checkpoint) or one tag folder")
    parser.add_argument("--output", required=True, help="consolidated model folder to write (replaced atomically)")
    args = parser.parse_args(argv)
    try:
        cfg, state, dictionary = consolidate_checkpoint(args.checkpoint)
        save_consolidated(args.output, cfg, state, dictionary)
    except (CheckpointError, ConsolidatedFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    params = sum(t.numel() for t in state.values())
    print(f"exported {params:,} parameters ({cfg.num_layers} layers, vocab {cfg.vocab_size}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

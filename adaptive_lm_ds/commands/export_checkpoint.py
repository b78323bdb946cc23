"""Export a training checkpoint of any TP x PP x DP layout to one consolidated model folder.

    adaptive-lm-export --checkpoint checkpoints/ --output model/   # the latest one
    adaptive-lm-export --checkpoint checkpoints/checkpoint_4000 --output model/

One process, no launcher, no GPU: the layout is read from the checkpoint's trainer_state.json. The
folder (model.safetensors + config.json + dict.txt) evaluates with adaptive-lm-eval, converts to
fairseq with adaptive-lm-convert --to-fairseq, and starts training in any other layout
with --init-from.

An existing --output is replaced only when it is empty or a previous export (--force for any other
folder), and never when it holds the checkpoint read.
"""

from __future__ import annotations

from adaptive_lm_ds import cli
from adaptive_lm_ds.formats.consolidated import check_model_output, save_consolidated
from adaptive_lm_ds.formats.export import consolidate_checkpoint

WRITER = "export_checkpoint"


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a --save-dir (its latest checkpoint) or one tag folder")
    parser.add_argument("--output", required=True, help="consolidated model folder to write (replaced atomically)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output that is not an export")
    args = parser.parse_args(argv)
    policy = dict(writer=WRITER, force=args.force, inputs=[args.checkpoint])
    check_model_output(args.output, **policy)  # before the slow part: fail fast
    cfg, state, dictionary = consolidate_checkpoint(args.checkpoint)
    save_consolidated(args.output, cfg, state, dictionary, **policy)
    params = sum(t.numel() for t in state.values())
    print(f"exported {params:,} parameters ({cfg.num_layers} layers, vocab {cfg.vocab_size}) to {args.output}")
    return 0

"""fairseq-train command lines on our launchers: the positional data dir, and the fairseq flags we do not take.

Every flag of ours that fairseq also has keeps fairseq's name and meaning (training/config.py). A
fairseq flag with no counterpart here stops the run before anything starts, with one line naming what
to use instead — never silently ignored, never abbreviated into another flag (argparse's prefix
matching is off: adaptive_lm_ds/cli.py).
"""

from __future__ import annotations

import argparse

from adaptive_lm_ds.commands.fairseq_compat import refuse

# fairseq-train flag -> what to use here (the message after "is not supported here: ")
UNSUPPORTED = {
    "--save-interval": "checkpoints are counted in updates: use --save-interval-updates N",
    "--validate-interval": "validation is counted in updates: use --validate-interval-updates N",
    "--max-epoch": "training length is counted in updates: use --max-update N",
    "--keep-last-epochs": "use --keep-interval-updates N (epoch checkpoints are not written)",
    "--no-epoch-checkpoints": "checkpoints are written per update only (--save-interval-updates); drop the flag",
    "--finetune-from-model": "use --init-from MODEL_DIR (a consolidated folder, adaptive-lm-convert)",
    "--reset-lr-scheduler": "use --reset-optimizer (resets the optimizer and the lr schedule together)",
    "--reset-meters": "meters are not checkpointed here; drop the flag",
    "--fp16": "precision comes from the DeepSpeed JSON: --deepspeed_config ds_configs/zero1_fp16.json",
    "--bf16": "precision comes from the DeepSpeed JSON: --deepspeed_config ds_configs/zero1_bf16.json",
    "--memory-efficient-fp16": "precision comes from the DeepSpeed JSON (--deepspeed_config)",
    "--cpu": "set DS_ACCELERATOR=cpu in the environment",
    "--distributed-world-size": "the launcher sets the world: deepspeed --num_gpus N / torchrun --nproc_per_node N",
    "--distributed-port": "the launcher sets it: deepspeed --master_port P / torchrun --master_port P",
    "--max-tokens-valid": "validation uses the training micro batch (--max-tokens / --batch-size)",
    "--batch-size-valid": "validation uses the training micro batch (--max-tokens / --batch-size)",
    "--sentence-avg": "the loss is normalised per token, as fairseq's default; drop the flag",
    "--user-dir": "this trainer has no plug-ins; drop the flag",
    "--best-checkpoint-metric": "no best checkpoint is kept; drop the flag",
    "--patience": "no early stopping; use --max-update or --stop-time-hours",
    "--zero-sharding": "ZeRO comes from the DeepSpeed JSON: --deepspeed_config ds_configs/zero1.json",
    "--checkpoint-activations": "use --checkpoint-activations (this trainer's own flag of the same name)",
    "--decoder-layerdrop": "layer drop is not implemented",
    "--character-embeddings": "character embeddings are not implemented",
    "--layernorm-embedding": "an embedding layer norm is not implemented",
    "--no-token-positional-embeddings": "models without positions are not implemented",
    "--quant-noise-pq": "quantization noise is not implemented",
}
# checkpoint_activations is also one of ours: never shadow a real flag of ours.
UNSUPPORTED.pop("--checkpoint-activations")


def add_fairseq_compat(parser: argparse.ArgumentParser) -> None:
    """The positional data dir (``fairseq-train DATA ...``) and the refusals of :data:`UNSUPPORTED`."""
    parser.add_argument("data_positional", nargs="?", default=None, metavar="DATA", help="same as --data")
    refuse(parser, UNSUPPORTED)

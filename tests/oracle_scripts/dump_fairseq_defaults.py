"""Run with the fairseq oracle's python: print the cfg fairseq-train builds for the LM recipe, as JSON.

    cd adaptive_lm_ds/interop && ../../.fairseq-oracle/bin/python ../../tests/oracle_scripts/dump_fairseq_defaults.py \
        fairseq_defaults.json

``cfg``: every section of ``checkpoint["cfg"]`` except ``model`` for the paper's choices (task
language_modeling, criterion adaptive_loss, optimizer nag, lr-scheduler cosine, ddp-backend legacy_ddp)
with fairseq's defaults otherwise; ``models``: ``cfg["model"]`` for every ``transformer_lm*`` arch with no
model flag given. The committed JSON is that output; tests/test_oracle_fairseq_cfg.py reruns this and
compares, so a drift from the oracle shows.
"""

import json
import sys

from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_REGISTRY
from omegaconf import OmegaConf

COMMON = ["DATA", "--task", "language_modeling", "--criterion", "adaptive_loss", "--optimizer", "nag",
          "--lr-scheduler", "cosine", "--ddp-backend", "legacy_ddp"]  # fmt: skip


def cfg_for(arch: str) -> dict:
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [*COMMON, "--arch", arch])
    return OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True)


archs = sorted(
    a
    for a, m in ARCH_MODEL_REGISTRY.items()
    if a.startswith("transformer_lm") and m.__name__ == "TransformerLanguageModel"
)
base = cfg_for("transformer_lm")
base.pop("model")
out = {"command": " ".join(["fairseq-train", *COMMON, "--arch", "ARCH"]), "cfg": base,
       "models": {arch: cfg_for(arch)["model"] for arch in archs}}  # fmt: skip
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)  # fairseq's own key order (the order it writes sections in)
    f.write("\n")

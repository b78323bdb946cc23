"""Initial loss of a freshly initialised model, ours and fairseq's (tests/oracle_scripts/init_loss.py).

One fixed batch for both sides: log-uniform word ids (Zipf-like, as text: most targets in the head band),
drawn from a fixed generator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.interop.fairseq_cfg import fairseq_model_args
from adaptive_lm_ds.model import AdaptiveLM

from .oracle import SCRIPTS, FairseqOracle


def zipf_batch(vocab_size: int, batch: int = 2, length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, targets)`` ``[batch, length]``: ids ``exp(U(0, log V))`` clamped to ``[4, V)``."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.exp(torch.rand(batch, length + 1, generator=gen) * math.log(vocab_size)).long()
    ids = ids.clamp(4, vocab_size - 1)
    return ids[:, :-1], ids[:, 1:]


@torch.no_grad()
def our_initial_nll(cfg: ModelConfig, seeds: list[int], tokens: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Mean NLL (nats) of ``targets`` under our model freshly built with each ``--seed`` (eval mode)."""
    out = []
    for seed in seeds:
        with parallel.single_process(seed=seed):
            model = AdaptiveLM(cfg).eval()
            out.append(-model.target_log_probs(tokens, targets).mean().item())
    return out


def fairseq_initial_nll(
    oracle: FairseqOracle, cfg: ModelConfig, seeds: list[int], tokens: torch.Tensor, targets: torch.Tensor, work: Path
) -> list[float]:
    """The same for fairseq's ``build_model`` of the same architecture (``fairseq_model_args(cfg)``)."""
    request = {"model": fairseq_model_args(cfg), "vocab_size": cfg.vocab_size, "seeds": seeds,
               "tokens": tokens.tolist(), "targets": targets.tolist()}  # fmt: skip
    (work / "request.json").write_text(json.dumps(request))
    oracle.run("python", SCRIPTS / "init_loss.py", work / "request.json", work / "out.json")
    return json.loads((work / "out.json").read_text())["nll"]

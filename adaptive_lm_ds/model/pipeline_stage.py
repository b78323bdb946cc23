"""Evaluation's pipeline stage: this rank's stage of ``AdaptiveLM``, hidden states sent between stages.

Training pipelines go through DeepSpeed's engine (training/pipeline.py); evaluation needs only a forward
pass with per-token log-probabilities. Both start from the same stage of the model,
``AdaptiveLM(cfg, stage=s, num_stages=n)`` (model/lm.py): the parts the stage does not own removed,
one-piece parameter names kept, so a one-piece state dict loads as it is (tied copies on the last
stage: docs/model.md, "Tying"). Between consecutive stages a blocking send/recv of ``[B, T, d]``; one
broadcast of the ``[B, T]`` result from the last stage, so every rank returns the same numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.model.lm import AdaptiveLM, output_log_probs
from adaptive_lm_ds.model.transformer import attention_mask


class PipelineStageLM(AdaptiveLM):
    """This rank's stage (from :func:`parallel.current`); ``target_log_probs`` is collective over the pipeline."""

    def __init__(self, cfg: ModelConfig):
        dims = parallel.current()
        super().__init__(cfg, dims.tp_group, stage=dims.pp_rank, num_stages=dims.pp)
        self.dims = dims

    def _exchange(self, x: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        """Receive the previous stage's hidden states (``x`` is None) or send ours to the next stage."""
        if x is None:
            like = next(self.parameters())
            x = torch.empty(*shape, self.cfg.embed_dim, dtype=like.dtype, device=like.device)
            dist.recv(x, src=self.dims.pp_prev_rank)
            return x
        dist.send(x.contiguous(), dst=self.dims.pp_next_rank)
        return x

    @torch.no_grad()
    def target_log_probs(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        softmax_batch: int | None = None,
    ) -> torch.Tensor:
        """``[B, T]`` fp32 exact ``log p(target)``, equal on every rank of the pipeline."""
        mask = attention_mask(segment_ids)
        first, last = self.embed is not None, self.output is not None
        x = self.embed(tokens, segment_ids) if first else self._exchange(None, tuple(tokens.shape))
        for layer in self.layers:
            x = layer(x, mask)
        result = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
        if last:
            if self.final_norm is not None:
                x = self.final_norm(x)
            result = output_log_probs(self.output, x, targets, softmax_batch).float()
        else:
            self._exchange(x, tuple(tokens.shape))
        dist.broadcast(result, src=self.dims.pp_last_rank, group=self.dims.pp_group)
        return result

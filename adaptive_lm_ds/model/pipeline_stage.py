"""One pipeline stage of ``AdaptiveLM`` for evaluation: the same parts, hidden states sent between stages.

Training pipelines go through DeepSpeed's ``PipelineModule`` (training/pipeline.py). Evaluation needs
only a forward pass with per-token log-probabilities, so a stage here is the slice of the one-piece
model it owns — the embedding on the first stage, blocks ``layers.{i}`` for its share, the final norm
and the adaptive softmax on the last — under the one-piece parameter names (a consolidated state dict
loads as it is), with a blocking send/recv of ``[B, T, d]`` between consecutive stages and one
broadcast of the ``[B, T]`` result from the last stage, so every rank returns the same numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.layers.adaptive_softmax import VocabParallelAdaptiveSoftmax
from adaptive_lm_ds.model.lm import LMEmbedding, pipeline_stage_layers
from adaptive_lm_ds.model.transformer import TransformerBlock, attention_mask


class PipelineStageLM(nn.Module):
    """This rank's stage; ``target_log_probs`` is collective over the pipeline group."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.dims = parallel.current()
        self.tp_group = self.dims.tp_group
        self.stage, self.num_stages = self.dims.pp_rank, self.dims.pp
        self.first, self.last = self.stage == 0, self.stage == self.num_stages - 1
        self.embed = LMEmbedding(cfg, self.tp_group) if self.first else None
        blocks = pipeline_stage_layers(cfg.num_layers, self.num_stages)[self.stage]
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg, self.tp_group, index=i) for i in blocks})
        self.final_norm = None
        self.output = None
        if self.last:
            if cfg.final_norm:
                self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
            self.output = VocabParallelAdaptiveSoftmax(cfg, self.tp_group)  # tied copies: filled by load_into

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
        self, tokens: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, T]`` fp32 exact ``log p(target)``, equal on every rank of the pipeline."""
        mask = attention_mask(segment_ids)
        x = self.embed(tokens, segment_ids) if self.first else self._exchange(None, tuple(tokens.shape))
        for layer in self.layers.values():
            x = layer(x, mask)
        result = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
        if self.last:
            if self.final_norm is not None:
                x = self.final_norm(x)
            result = self.output.target_log_probs(x, targets).float()
        else:
            self._exchange(x, tuple(tokens.shape))
        dist.broadcast(result, src=self.dims.pp_last_rank, group=self.dims.pp_group)
        return result

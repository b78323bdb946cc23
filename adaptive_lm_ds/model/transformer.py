"""Pre-norm transformer decoder block on megatron-core's tensor-parallel linears (fairseq semantics).

fairseq's ``TransformerDecoderLayer`` with ``decoder_normalize_before``::

    x = x + dropout(out_proj(attn(ln_1(x))))        # attention dropout on the probabilities
    x = x + dropout(fc2(act_dropout(act(fc1(ln_2(x))))))

``q/k/v_proj`` and ``fc1`` are ``ColumnParallelLinear`` (each TP rank: ``num_heads / tp`` heads, ``ffn / tp``
hidden units); ``out_proj`` and ``fc2`` are ``RowParallelLinear`` (one all-reduce each). q, k, v are three
layers, not one fused matrix, so fairseq's ``self_attn.{q,k,v}_proj`` map one to one (parameters, names,
TP shards and checkpoints); their input enters through one ``copy_to_tensor_model_parallel_region``
(identity forward, one all-reduce of the summed input gradient backward), not one all-reduce each:
Megatron's minimum of two all-reduces of ``[B, T, d]`` per block forward and two backward.

The blocks drive the linears' maths themselves (:func:`column_forward`, :func:`row_forward`): q, k and v
are one GEMM against this rank's three weights concatenated at compute time (``[3 d / tp, d]``, cheap;
autograd through ``cat`` splits the gradients), and every bias is inside its GEMM (``addmm``) rather than a
separate pass over the output, except a row-parallel one at TP > 1 (added after the all-reduce, as
megatron-core does). Under ZeRO-3 a partitioned weight is gathered only in its own module's forward, so
there each linear runs megatron-core's forward.

Dropout on sharded activations (attention probabilities, FFN hidden) runs on the TP rank's own RNG
stream; dropout on the replicated residual stream on the default generator, equal on every TP rank.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from torch import nn

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.layers import seeded_init
from adaptive_lm_ds.layers.dropout import dropout, residual_dropout_add
from adaptive_lm_ds.model.causal_attention import block_causal_attention


def megatron_config(tp_size: int, meta: bool) -> ModelParallelConfig:
    """CPU-initialised fp32 linears: every rank builds the full matrix from its keyed stream, keeps its part."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tp_size,
        use_cpu_initialization=True,
        perform_initialization=not meta,
        gradient_accumulation_fusion=False,
        params_dtype=torch.float32,
    )


def attention_mask(segment_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, T]`` (True = may attend): causal and within the same segment; None = causal only."""
    if segment_ids is None:
        return None
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)
    return (causal & same).unsqueeze(1)


def _sharded_rng(active: bool):
    """This TP rank's RNG stream when dropout is active on sharded activations (else nothing)."""
    return parallel.model_parallel_rng() if active else contextlib.nullcontext()


def column_linear(size_in: int, size_out: int, mp_config, tp_group, key: str, init_method) -> ColumnParallelLinear:
    """Output features split over TP, bias included, output left sharded.

    Weight by ``init_method`` (a ``seeded_init`` full-matrix init); bias ``nn.Linear``'s default
    U(+-1/sqrt(size_in)) from stream ``{key}.bias``, this rank's slice (fairseq's q/k/v and fc1 keep it).
    The caller all-reduces the input's gradient itself (``copy_to_tensor_model_parallel_region``: once for
    q, k and v).
    """
    linear = ColumnParallelLinear(
        size_in,
        size_out,
        config=mp_config,
        init_method=init_method,
        bias=True,
        gather_output=False,
        tp_group=tp_group,
        disable_grad_reduce=True,
    )
    start = tp_group.rank() * (size_out // tp_group.size())
    seeded_init.linear_bias(linear.bias, size_in, start, size_out, f"{key}.bias")
    return linear


def row_linear(
    size_in: int, size_out: int, mp_config, tp_group, key: str, init_method, zero_bias: bool = False
) -> RowParallelLinear:
    """Input features split over TP; one all-reduce, then the (replicated) bias.

    Weight by ``init_method``; bias ``nn.Linear``'s default from stream ``{key}.bias`` (fairseq's fc2),
    or zero (``zero_bias``: fairseq's attention ``out_proj``).
    """
    linear = RowParallelLinear(
        size_in,
        size_out,
        config=mp_config,
        init_method=init_method,
        bias=True,
        input_is_parallel=True,
        skip_bias_add=False,
        tp_group=tp_group,
    )
    if not zero_bias:
        seeded_init.linear_bias(linear.bias, size_in, 0, size_out, f"{key}.bias")
    return linear


def _partitioned(param: torch.Tensor) -> bool:
    """A ZeRO-3 partitioned parameter: DeepSpeed gathers it only inside its own module's forward."""
    return hasattr(param, "ds_status")


def column_forward(x: torch.Tensor, *linears: ColumnParallelLinear) -> torch.Tensor:
    """``x [..., d]`` (already in the TP region) through ``linears`` as one GEMM, biases inside it.

    Returns ``[..., sum of the linears' local outputs]``, their outputs side by side in the given order:
    ``addmm`` of ``x`` against the weights concatenated at compute time (``[sum out / tp, d]``).
    """
    if _partitioned(linears[0].weight):
        return torch.cat([linear(x)[0] for linear in linears], dim=-1)
    if len(linears) == 1:
        return F.linear(x, linears[0].weight, linears[0].bias)
    weight = torch.cat([linear.weight for linear in linears])
    return F.linear(x, weight, torch.cat([linear.bias for linear in linears]))


def row_forward(x: torch.Tensor, linear: RowParallelLinear) -> torch.Tensor:
    """``x [..., in / tp] -> [..., out]``: the local GEMM, one all-reduce over TP, then the replicated bias.

    At TP 1 the all-reduce is the identity and the bias goes inside the GEMM (``addmm``).
    """
    if _partitioned(linear.weight):
        return linear(x)[0]
    if linear.tp_group.size() == 1:
        return F.linear(x, linear.weight, linear.bias)
    partial = F.linear(x, linear.weight)
    return reduce_from_tensor_model_parallel_region(partial, group=linear.tp_group) + linear.bias


@dataclass
class KVCache:
    """One layer's keys and values of the positions decoded so far, for incremental decoding.

    ``key``/``value`` are ``[B, local_heads, capacity, head_dim]`` buffers of which the first ``length``
    positions are filled; capacity doubles when full, so appending one position costs one position.
    """

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    length: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` ``[B, H, t, hd]`` after the cached positions; return all ``[B, H, length + t, hd]``."""
        end = self.length + k.shape[2]
        if self.key is None or end > self.key.shape[2]:
            capacity = max(2 * end, 16)
            grown = [k.new_empty(*k.shape[:2], capacity, k.shape[3]) for _ in range(2)]
            if self.key is not None:
                grown[0][:, :, : self.length] = self.key[:, :, : self.length]
                grown[1][:, :, : self.length] = self.value[:, :, : self.length]
            self.key, self.value = grown
        self.key[:, :, self.length : end] = k
        self.value[:, :, self.length : end] = v
        self.length = end
        return self.key[:, :, :end], self.value[:, :, :end]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (finished sequences leave the batch)."""
        if self.key is not None:
            self.key, self.value = self.key.index_select(0, rows), self.value.index_select(0, rows)


def _cached_causal_mask(new: int, past: int, device) -> torch.Tensor | None:
    """``[new, past + new]`` True = may attend, for ``new`` queries after ``past`` cached positions.

    None where SDPA's own ``is_causal`` is right (nothing cached) or nothing needs masking (one query).
    """
    if past == 0 or new == 1:
        return None
    return torch.ones(new, past + new, dtype=torch.bool, device=device).tril(past)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, tp_group, mp_config: ModelParallelConfig, key: str):
        super().__init__()
        d = cfg.embed_dim
        self.local_heads = cfg.num_heads // tp_group.size()
        self.head_dim = cfg.head_dim
        self.dropout = cfg.attention_dropout
        gain = 1 / math.sqrt(2)  # fairseq's init when q, k, v have the same dim

        def qkv(name: str) -> ColumnParallelLinear:
            init = seeded_init.xavier_uniform(name, gain)
            return column_linear(d, d, mp_config, tp_group, name, init)

        self.q_proj, self.k_proj, self.v_proj = (qkv(f"{key}.{n}_proj") for n in "qkv")
        out = f"{key}.out_proj"
        self.out_proj = row_linear(d, d, mp_config, tp_group, out, seeded_init.xavier_uniform(out), zero_bias=True)
        self.tp_group = tp_group

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        """``x [B, t, d]``; with ``cache`` the ``t`` positions follow the cached ones (causal over all)."""
        batch, length, _ = x.shape
        x = copy_to_tensor_model_parallel_region(x, group=self.tp_group)  # one all-reduce of dx for q, k and v

        qkv = column_forward(x, self.q_proj, self.k_proj, self.v_proj)  # [B, t, 3 * local_heads * head_dim]
        q, k, v = qkv.view(batch, length, 3, self.local_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        causal = mask is None
        if cache is not None:
            if mask is not None:
                raise ValueError("incremental decoding takes no segment mask (one sequence per row)")
            past = cache.length
            k, v = cache.append(k, v)
            mask = _cached_causal_mask(length, past, x.device)
            causal = past == 0 and length > 1
        p = self.dropout if self.training else 0.0
        with _sharded_rng(p > 0.0):
            if p > 0.0 and causal and cache is None:  # SDPA's dropout path is dense: skip the upper triangle
                out = block_causal_attention(q, k, v, p)
            else:  # no dropout: SDPA's causal flash kernel already skips it
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, length, self.local_heads * self.head_dim)
        return row_forward(out, self.out_proj)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig, tp_group, mp_config: ModelParallelConfig, key: str):
        super().__init__()
        # fairseq's FFN keeps nn.Linear's own init (weights and biases U(+-1/sqrt(fan_in))), not xavier
        fc1, fc2 = f"{key}.fc1", f"{key}.fc2"
        d, ffn = cfg.embed_dim, cfg.ffn_dim
        self.fc1 = column_linear(d, ffn, mp_config, tp_group, fc1, seeded_init.linear_default(fc1))
        self.fc2 = row_linear(ffn, d, mp_config, tp_group, fc2, seeded_init.linear_default(fc2))
        self.activation = F.relu if cfg.activation_fn == "relu" else F.gelu
        self.activation_dropout = cfg.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_tensor_model_parallel_region(x, group=self.fc1.tp_group)  # all-reduce of dx backward
        hidden = self.activation(column_forward(x, self.fc1))
        p = self.activation_dropout if self.training else 0.0
        with _sharded_rng(p > 0.0):
            hidden = dropout(hidden, p, self.training)
        return row_forward(hidden, self.fc2)


class TransformerBlock(nn.Module):
    """``[B, T, d] -> [B, T, d]``; ``mask`` from :func:`attention_mask` (None: plain causal).

    ``cache`` (:class:`KVCache`, decoding): the ``T`` positions come after those it holds, and are added to it.
    """

    def __init__(self, cfg: ModelConfig, tp_group, mp_config: ModelParallelConfig | None = None, *, index: int):
        """``index``: the block's position in the model; it keys the initial weights (``seeded_init``)."""
        super().__init__()
        mp_config = mp_config or megatron_config(tp_group.size(), meta=False)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.self_attn = SelfAttention(cfg, tp_group, mp_config, f"layers.{index}.self_attn")
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg, tp_group, mp_config, f"layers.{index}.ffn")
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        x = residual_dropout_add(
            x, self.self_attn(self.self_attn_layer_norm(x), mask, cache), self.dropout, self.training
        )
        return residual_dropout_add(x, self.ffn(self.final_layer_norm(x)), self.dropout, self.training)

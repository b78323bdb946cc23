"""An independent fairseq ``transformer_lm`` forward pass on a fairseq state dict (tests only).

Written from fairseq's semantics (TransformerDecoder with decoder_normalize_before, AdaptiveInput,
AdaptiveSoftmax, SinusoidalPositionalEmbedding, LearnedPositionalEmbedding) in plain float64 torch; it
reads fairseq's own key names and never touches adaptive_lm_ds, so it checks the converter's mapping
and the model's maths together. Also builds random checkpoints in fairseq's layout.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

PAD = 1


def _sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    table = torch.cat(
        [torch.sin(positions.double()[..., None] * freq), torch.cos(positions.double()[..., None] * freq)], -1
    )
    return table.masked_fill(positions.eq(PAD)[..., None], 0.0)


def _bands(sizes: list[int]) -> list[tuple[int, int]]:
    edges = [0]
    for s in sizes:
        edges.append(edges[-1] + s)
    return list(zip(edges[:-1], edges[1:]))


def _embed(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    if "decoder.embed_tokens.weight" in sd:
        return F.embedding(tokens, sd["decoder.embed_tokens.weight"])
    i, out = 0, 0.0
    tables = []
    while f"decoder.embed_tokens.embeddings.{i}.0.weight" in sd:
        tables.append(
            (sd[f"decoder.embed_tokens.embeddings.{i}.0.weight"], sd[f"decoder.embed_tokens.embeddings.{i}.1.weight"])
        )
        i += 1
    for (start, end), (table, proj) in zip(_bands([t.shape[0] for t, _ in tables]), tables):
        mask = (tokens >= start) & (tokens < end)
        vec = F.embedding((tokens - start).clamp(0, end - start - 1), table) @ proj.T
        out = out + vec * mask[..., None]
    return out


def _attention(sd: dict, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    if p + "in_proj_weight" in sd:
        w, bias = sd[p + "in_proj_weight"], sd[p + "in_proj_bias"]
        q, k, v = (x @ w[i * d : (i + 1) * d].T + bias[i * d : (i + 1) * d] for i in range(3))
    else:
        q, k, v = (x @ sd[f"{p}{n}_proj.weight"].T + sd[f"{p}{n}_proj.bias"] for n in "qkv")
    q = q * (d // heads) ** -0.5

    def split(z):
        return z.view(b, t, heads, d // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, t, d)
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def _norm(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], 1e-5)


def _output(sd: dict, h: torch.Tensor) -> torch.Tensor:
    s = "decoder.adaptive_softmax."
    if s + "head.weight" not in sd and s + "head.word_proj.weight" not in sd:
        return (h @ sd["decoder.output_projection.weight"].T).log_softmax(-1)
    tails = []
    while f"{s}tail.{len(tails)}.2.weight" in sd:
        tails.append(len(tails))
    if s + "head.weight" in sd:
        head = h @ sd[s + "head.weight"].T
    else:
        head = torch.cat([h @ sd[s + "head.word_proj.weight"].T, h @ sd[s + "head.class_proj.weight"].T], -1)
    head = head.log_softmax(-1)
    n0 = head.shape[-1] - len(tails)
    parts = [head[..., :n0]]
    for i in tails:
        proj = sd[f"{s}tail.{i}.0.weight"]
        z = h @ (proj if proj.shape[0] == h.shape[-1] else proj.T)  # tied proj [d, d_i] is applied transposed
        parts.append((z @ sd[f"{s}tail.{i}.2.weight"].T).log_softmax(-1) + head[..., n0 + i : n0 + i + 1])
    return torch.cat(parts, -1)


def reference_log_probs(sd: dict, args: dict, tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` float64 log-probabilities of a fairseq pre-norm transformer_lm (dropout off)."""
    sd = {k: v.double() for k, v in sd.items()}
    d = args["decoder_embed_dim"]
    x = _embed(sd, tokens) * (1.0 if args.get("no_scale_embedding") else math.sqrt(d))
    positions = torch.cumsum(tokens.ne(PAD).long(), 1) * tokens.ne(PAD).long() + PAD
    if args.get("decoder_learned_pos"):
        x = x + F.embedding(positions, sd["decoder.embed_positions.weight"])
    else:
        x = x + _sinusoidal(positions, d)
    for layer in range(args["decoder_layers"]):
        p = f"decoder.layers.{layer}."
        x = x + _attention(
            sd, p + "self_attn.", _norm(sd, p + "self_attn_layer_norm.", x), args["decoder_attention_heads"]
        )
        h = _norm(sd, p + "final_layer_norm.", x) @ sd[p + "fc1.weight"].T + sd[p + "fc1.bias"]
        h = F.gelu(h) if args.get("activation_fn") == "gelu" else F.relu(h)
        x = x + h @ sd[p + "fc2.weight"].T + sd[p + "fc2.bias"]
    if "decoder.layer_norm.weight" in sd:
        x = _norm(sd, "decoder.layer_norm.", x)
    return _output(sd, x)


# --------------------------------------------------------------------------- checkpoints in fairseq's layout


def make_fairseq_checkpoint(
    *,
    vocab: int = 120,
    d: int = 32,
    ffn: int = 48,
    layers: int = 2,
    heads: int = 4,
    cutoffs: tuple[int, ...] = (20, 60),
    factor: float = 4.0,
    adaptive_input: bool = True,
    adaptive_softmax: bool = True,
    tie_weights: bool = True,
    tie_proj: bool = True,
    learned_pos: bool = False,
    final_norm: bool = False,
    activation: str = "relu",
    legacy_in_proj: bool = False,
    as_namespace: bool = False,
    max_positions: int = 64,
    no_scale: bool = False,
    seed: int = 0,
) -> dict:
    """A random checkpoint with the keys, shapes, ties and config fairseq writes for these options."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    edges = (0, *cutoffs, vocab)
    sizes = [b - a for a, b in zip(edges, edges[1:])]
    dims = [int(d // factor**i) for i in range(len(sizes))]
    sd = OrderedDict([("decoder.version", torch.tensor([3.0]))])
    if adaptive_input:
        sd["decoder.embed_tokens._float_tensor"] = torch.zeros(1)
        for i, (n, di) in enumerate(zip(sizes, dims)):
            sd[f"decoder.embed_tokens.embeddings.{i}.0.weight"] = rand(n, di)
            sd[f"decoder.embed_tokens.embeddings.{i}.1.weight"] = rand(d, di)
    else:
        sd["decoder.embed_tokens.weight"] = rand(vocab, d)
    if learned_pos:
        sd["decoder.embed_positions.weight"] = rand(max_positions + PAD + 1, d)
    for layer in range(layers):
        p = f"decoder.layers.{layer}."
        if legacy_in_proj:
            sd[p + "self_attn.in_proj_weight"], sd[p + "self_attn.in_proj_bias"] = rand(3 * d, d), rand(3 * d)
        names = ["out_proj"] if legacy_in_proj else ["k_proj", "v_proj", "q_proj", "out_proj"]
        for n in names:
            sd[f"{p}self_attn.{n}.weight"], sd[f"{p}self_attn.{n}.bias"] = rand(d, d), rand(d)
        for n in ("self_attn_layer_norm", "final_layer_norm"):
            sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"] = 1 + rand(d), rand(d)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = rand(ffn, d), rand(ffn)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = rand(d, ffn), rand(d)
    if final_norm:
        sd["decoder.layer_norm.weight"], sd["decoder.layer_norm.bias"] = 1 + rand(d), rand(d)
    s = "decoder.adaptive_softmax."
    if adaptive_softmax:
        sd[s + "version"] = torch.tensor([1])
        emb = "decoder.embed_tokens.embeddings."
        if tie_weights:
            sd[s + "head._float_tensor"] = torch.zeros(1)
            sd[s + "head.word_proj.weight"] = sd[emb + "0.0.weight"]
            sd[s + "head.class_proj.weight"] = rand(len(sizes) - 1, d)
        else:
            sd[s + "head.weight"] = rand(sizes[0] + len(sizes) - 1, d)
        for i in range(len(sizes) - 1):
            sd[f"{s}tail.{i}.0.weight"] = sd[f"{emb}{i + 1}.1.weight"] if tie_proj else rand(dims[i + 1], d)
            sd[f"{s}tail.{i}.2.weight"] = (
                sd[f"{emb}{i + 1}.0.weight"] if tie_weights else rand(sizes[i + 1], dims[i + 1])
            )
    else:
        sd["decoder.output_projection.weight"] = rand(vocab, d)
    cut = ",".join(map(str, cutoffs))
    args = {
        "_name": "transformer_lm",
        "decoder_embed_dim": d,
        "decoder_input_dim": d,
        "decoder_output_dim": d,
        "decoder_ffn_embed_dim": ffn,
        "decoder_layers": layers,
        "decoder_attention_heads": heads,
        "decoder_normalize_before": True,
        "no_decoder_final_norm": not final_norm,
        "activation_fn": activation,
        "dropout": 0.1,
        "decoder_learned_pos": learned_pos,
        "no_scale_embedding": no_scale,
        "adaptive_input": adaptive_input,
        "adaptive_input_cutoff": cut if adaptive_input else None,
        "adaptive_input_factor": factor,
        "adaptive_softmax_cutoff": cut if adaptive_softmax else None,
        "adaptive_softmax_factor": factor,
        "tie_adaptive_weights": tie_weights and adaptive_softmax,
        "tie_adaptive_proj": tie_proj and adaptive_softmax,
        "max_target_positions": max_positions,
        "tokens_per_sample": max_positions,
    }
    if as_namespace:
        return {"args": argparse.Namespace(arch=args.pop("_name"), **args), "model": sd}
    return {"args": None, "cfg": {"model": args}, "model": sd}

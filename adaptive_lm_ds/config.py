"""Typed model configuration and the named presets (tiny, wiki103, gbw_large, gbw_huge).

Field names follow fairseq's ``transformer_lm`` arguments where one exists (``adaptive_input_cutoffs`` is
fairseq's ``adaptive_input_cutoff`` as a tuple, ``final_norm`` is ``not no_decoder_final_norm``), so the
fairseq checkpoint converter maps one to one. Every fairseq LM is pre-norm; so is this model.

A *band* is a contiguous id range ``[start, end)`` of the vocabulary. Input band ``i`` has dimension
``int(embed_dim // factor**i)``; adaptive-softmax tail ``i`` (= band ``i + 1``) projects to
``int(embed_dim // factor**(i + 1))``, which is the same number, so tied tables line up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adaptive_lm_ds.errors import UserError


class ConfigError(UserError, ValueError):
    """A model configuration that cannot be built; the message says what to change."""

    same_on_every_rank = True  # follows from the flags alone: every rank raises it, rank 0 prints it


ACTIVATIONS = ("relu", "gelu")  # the FFN activations the model implements

# Regularisation, not shape: a run may resume or fine-tune a checkpoint with other values (as fairseq allows).
DROPOUT_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "adaptive_softmax_dropout")


@dataclass(frozen=True)
class Band:
    """Vocabulary ids ``[start, end)`` embedded (or predicted) with ``dim`` features."""

    start: int
    end: int
    dim: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embed_dim: int = 512
    ffn_dim: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    activation_fn: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    learned_pos: bool = False
    max_positions: int = 512
    no_scale_embedding: bool = False
    final_norm: bool = False
    padding_idx: int = 1
    layer_norm_eps: float = 1e-5
    adaptive_input: bool = True
    adaptive_input_cutoffs: tuple[int, ...] = ()
    adaptive_input_factor: float = 4.0
    adaptive_softmax: bool = True
    adaptive_softmax_cutoffs: tuple[int, ...] = ()
    adaptive_softmax_factor: float = 4.0
    adaptive_softmax_dropout: float = 0.0
    tie_adaptive_weights: bool = False
    tie_adaptive_proj: bool = False
    share_input_output_embed: bool = False

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- derived shapes
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def embed_scale(self) -> float:
        return 1.0 if self.no_scale_embedding else self.embed_dim**0.5

    def input_bands(self) -> list[Band]:
        """Bands of the token embedding; one full-width band when ``adaptive_input`` is off."""
        if not self.adaptive_input:
            return [Band(0, self.vocab_size, self.embed_dim)]
        return _bands(self.adaptive_input_cutoffs, self.vocab_size, self.embed_dim, self.adaptive_input_factor)

    def output_bands(self) -> list[Band]:
        """Band 0 is the softmax head's words; band ``i >= 1`` is tail cluster ``i - 1``."""
        if not self.adaptive_softmax:
            return [Band(0, self.vocab_size, self.embed_dim)]
        return _bands(self.adaptive_softmax_cutoffs, self.vocab_size, self.embed_dim, self.adaptive_softmax_factor)

    @property
    def ties_tables(self) -> bool:
        """The output layer reads the input tables (adaptive tying or a shared full embedding)."""
        return self.tie_adaptive_weights or self.share_input_output_embed

    # ----------------------------------------------------------------- validation
    def validate(self, tp_size: int = 1) -> ModelConfig:
        """Raise :class:`ConfigError` naming the first problem; return ``self`` when buildable."""
        if self.vocab_size <= self.padding_idx + 1:
            _fail(f"vocab_size={self.vocab_size} is too small: it must exceed padding_idx + 1")
        for name in ("embed_dim", "ffn_dim", "num_layers", "num_heads", "max_positions"):
            if getattr(self, name) <= 0:
                _fail(f"{name}={getattr(self, name)} must be positive")
        if self.embed_dim % self.num_heads:
            _fail(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if tp_size < 1:
            _fail(f"tensor-parallel size {tp_size} must be >= 1")
        if self.num_heads % tp_size:
            _fail(
                f"num_heads={self.num_heads} is not divisible by the tensor-parallel size {tp_size}; "
                "choose a TP size that divides the number of heads"
            )
        if self.ffn_dim % tp_size:
            _fail(
                f"ffn_dim={self.ffn_dim} is not divisible by the tensor-parallel size {tp_size}; "
                "choose a TP size that divides the FFN dimension"
            )
        if self.activation_fn not in ACTIVATIONS:
            _fail(f"activation_fn={self.activation_fn!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        for name in DROPOUT_FIELDS:
            if not 0.0 <= getattr(self, name) < 1.0:
                _fail(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.adaptive_input:
            _check_bands("adaptive_input", self.adaptive_input_cutoffs, self.adaptive_input_factor, self)
        if self.adaptive_softmax:
            _check_bands("adaptive_softmax", self.adaptive_softmax_cutoffs, self.adaptive_softmax_factor, self)
        self._check_tying()
        return self

    def _check_tying(self) -> None:
        if self.tie_adaptive_proj and not self.tie_adaptive_weights:
            _fail("tie_adaptive_proj needs tie_adaptive_weights (the tail projections belong to the input bands)")
        if self.tie_adaptive_weights:
            if not (self.adaptive_input and self.adaptive_softmax):
                _fail("tie_adaptive_weights needs adaptive_input and adaptive_softmax both on")
            if self.input_bands() != self.output_bands():
                _fail(
                    "tie_adaptive_weights needs identical adaptive_input/adaptive_softmax cutoffs and factors, "
                    f"got {self.adaptive_input_cutoffs}/{self.adaptive_input_factor} vs "
                    f"{self.adaptive_softmax_cutoffs}/{self.adaptive_softmax_factor}"
                )
        if self.share_input_output_embed and (self.adaptive_input or self.adaptive_softmax):
            _fail(
                "share_input_output_embed ties a full embedding to a full softmax; "
                "with adaptive input/softmax use tie_adaptive_weights instead"
            )


def _bands(cutoffs: tuple[int, ...], vocab_size: int, dim: int, factor: float) -> list[Band]:
    edges = [c for c in cutoffs if c != vocab_size] + [vocab_size]  # fairseq appends V when absent
    starts = [0, *edges[:-1]]
    return [Band(s, e, int(dim // factor**i)) for i, (s, e) in enumerate(zip(starts, edges))]


def _check_bands(name: str, cutoffs: tuple[int, ...], factor: float, cfg: ModelConfig) -> None:
    cut = list(cutoffs)
    if any(b <= a for a, b in zip(cut, cut[1:])):
        _fail(f"{name}_cutoffs={tuple(cut)} must be strictly increasing")
    if cut and cut[0] <= 0:
        _fail(f"{name}_cutoffs={tuple(cut)} must be positive")
    if cut and cut[-1] > cfg.vocab_size:  # strictly increasing, so only the last may equal V
        _fail(
            f"{name}_cutoffs={tuple(cut)} must lie below vocab_size={cfg.vocab_size}; "
            "the last band runs to the end of the vocabulary automatically"
        )
    if len(cut) > 0 and factor <= 1:
        _fail(f"{name}_factor={factor} must be > 1 (each band is factor times narrower than the previous)")
    bands = _bands(cutoffs, cfg.vocab_size, cfg.embed_dim, factor)
    for i, band in enumerate(bands):
        if band.dim <= 0:
            _fail(
                f"{name} band {i} [{band.start}, {band.end}) gets dimension embed_dim // {factor}**{i} = 0; "
                "use fewer cutoffs, a smaller factor or a larger embed_dim"
            )


def _fail(message: str) -> None:
    raise ConfigError(message)


# ===================================================================== presets


def default_cutoffs(vocab_size: int) -> tuple[int, ...]:
    """Two cutoffs at 10% and 40% of the vocabulary (wiki103's 20K/60K of 268K, scaled): 3 bands."""
    if vocab_size < 16:
        raise ConfigError(f"vocab_size={vocab_size} is too small for adaptive bands; use at least 16 types")
    first = max(4, vocab_size // 10)
    second = max(first + 1, (vocab_size * 2) // 5)
    return (first, second) if second < vocab_size else (first,)


def tiny(vocab_size: int = 1000, **overrides: Any) -> ModelConfig:
    """The fairseq-wiki103-tiny fixture's shape (d 64, FFN 128, 4 heads, 2 layers, tied), dropout off."""
    cutoffs = overrides.pop("cutoffs", None) or default_cutoffs(vocab_size)
    base = ModelConfig(
        vocab_size=vocab_size,
        embed_dim=64,
        ffn_dim=128,
        num_layers=2,
        num_heads=4,
        dropout=0.0,
        max_positions=1024,
        adaptive_input_cutoffs=cutoffs,
        adaptive_softmax_cutoffs=cutoffs,
        tie_adaptive_weights=True,
        tie_adaptive_proj=True,
    )
    return base.replace(**overrides)


def wiki103(vocab_size: int = 267_744, **overrides: Any) -> ModelConfig:
    """fairseq ``transformer_lm_wiki103`` (Baevski & Auli 2019): 247M parameters at V = 267,744."""
    base = ModelConfig(
        vocab_size=vocab_size,
        embed_dim=1024,
        ffn_dim=4096,
        num_layers=16,
        num_heads=8,
        dropout=0.3,
        attention_dropout=0.1,
        activation_dropout=0.1,
        max_positions=3072,
        adaptive_input_cutoffs=(20_000, 60_000),
        adaptive_softmax_cutoffs=(20_000, 60_000),
        adaptive_softmax_dropout=0.2,
        tie_adaptive_weights=True,
        tie_adaptive_proj=True,
    )
    return base.replace(**overrides)


def _gbw(vocab_size: int, ffn_dim: int, num_layers: int, overrides: dict[str, Any]) -> ModelConfig:
    """GBW models of the paper: d 1536, bands 60K / 100K / rest, tables tied, projections not."""
    base = ModelConfig(
        vocab_size=vocab_size,
        embed_dim=1536,
        ffn_dim=ffn_dim,
        num_layers=num_layers,
        num_heads=16,
        dropout=0.1,
        attention_dropout=0.1,
        max_positions=512,
        adaptive_input_cutoffs=(60_000, 160_000),
        adaptive_softmax_cutoffs=(60_000, 160_000),
        tie_adaptive_weights=True,
        tie_adaptive_proj=False,
    )
    return base.replace(**overrides)


def gbw_large(vocab_size: int = 793_475, **overrides: Any) -> ModelConfig:
    """The paper's GBW "large" model: 12 layers, FFN 4096 (0.46B parameters, see docs/model.md)."""
    return _gbw(vocab_size, 4096, 12, overrides)


def gbw_huge(vocab_size: int = 793_475, **overrides: Any) -> ModelConfig:
    """The released ``adaptive_lm_gbw_huge``: 24 layers, FFN 8192, 1026M parameters (docs/model.md)."""
    return _gbw(vocab_size, 8192, 24, overrides)


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "tiny": tiny,
    "wiki103": wiki103,
    "gbw_large": gbw_large,
    "gbw_huge": gbw_huge,
}


def get_preset(name: str, vocab_size: int | None = None, **overrides: Any) -> ModelConfig:
    """The named preset, at ``vocab_size`` when given (else the preset's own dictionary size)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    args = {} if vocab_size is None else {"vocab_size": vocab_size}
    return PRESETS[name](**args, **overrides)

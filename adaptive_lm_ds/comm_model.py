"""The minimum communication of one update, per rank, for a model and a layout (counted analytically).

What a rank must send, and nothing more (``N = b * s`` tokens per micro batch, ``n_i`` of them with
targets in output band ``i``, ``h`` the model width, ``e`` bytes per element; payloads are counted as
:mod:`adaptive_lm_ds.comm_ledger` counts them):

* **TP** (Megatron): per transformer block 2 all-reduces of ``[N, h]`` forward (``out_proj``, ``fc2``)
  and 2 backward (the inputs of ``q/k/v`` together and of ``fc1``). The vocabulary-parallel adaptive
  input: one all-reduce of the partial embeddings ``[N, h]`` forward, and backward one all-reduce of
  each replicated input projection's gradient ``[h, d_i]``. The vocabulary-parallel adaptive softmax,
  per band with tokens: forward an all-reduced max ``[n_i]`` and sums ``[2, n_i]`` (the head's over all
  ``N``), backward one all-reduce of its input's gradient (``[N, h]`` at the head, ``[n_i, d_i]`` at a tail).
* **PP**: per micro batch per stage boundary, the activations ``[b, s, h]`` with the targets (and the
  segment ids when packed) forward, their gradient backward; once per update the gradient of the tied
  tables between the first and the last stage. With TP, DeepSpeed sends each TP rank's ``1/tp`` slice
  and all-gathers it over TP on arrival (activations forward, gradients backward); it also frees the
  sending stage's output and all-gathers it again before backward: that one is counted as an *excess*
  term (memory bought with communication), the only one in this model.
* **DP**: the gradients of the rank's ``P`` parameters once per update: an all-reduce without ZeRO; a
  reduce-scatter then an all-gather of the updated parameters at ZeRO-1; at ZeRO-2 the reduce-scatter
  at every micro batch (the gradients are kept partitioned); at ZeRO-3 also an all-gather of the
  parameters before each micro batch's forward and, when they do not stay gathered
  (``P > stage3_max_live_parameters``), again before its backward.

Scalars (token counts, norms, overflow flags, the pipeline's loss) are left out by design.

Wire bytes per rank use the bandwidth-optimal (ring) algorithms on a group of ``n``: all-reduce
``2 (n-1)/n S``, all-gather and reduce-scatter ``(n-1)/n S`` (``S`` the full tensor), reduce ``(n-1)/n S``,
broadcast ``S``, send ``S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.memory import PRECISION_BYTES, stage_parameter_counts
from adaptive_lm_ds.model import pipeline_stage_layers

INT64 = 8
WIRE_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "reduce": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "send": lambda n: 1.0,
}


@dataclass(frozen=True)
class Term:
    axis: str  # tp, pp, dp
    op: str  # all_reduce, all_gather, reduce_scatter, send
    what: str  # what is sent, in words
    calls: float
    bytes: float  # payload (comm_ledger's convention), all calls together
    excess: bool = False  # beyond the minimum: a transfer DeepSpeed chooses to make (documented where made)


@dataclass(frozen=True)
class CommSetting:
    """The layout and the DeepSpeed settings that decide the communication (from a ``DeepSpeedPlan``)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero_stage: int = 0
    precision: str = "fp32"
    micro_batch: int = 1  # sequences
    seq_len: int = 512
    gradient_accumulation: int = 1
    packed: bool = False
    zero3_max_live_parameters: int = 1_000_000_000
    pipe_partitioned: bool = True  # DeepSpeed's pipeline: activations split over TP on the pipeline link

    def group_size(self, axis: str) -> int:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp}[axis]


def wire_bytes(term: Term, setting: CommSetting) -> float:
    n = 2 if term.axis == "pp" else setting.group_size(term.axis)  # a pipeline transfer has two ends
    return WIRE_FACTOR[term.op](n) * term.bytes if n > 1 else 0.0


def _tp_terms(cfg: ModelConfig, s: CommSetting, stage: int, band_tokens: Sequence[Sequence[float]]) -> list[Term]:
    e, h = PRECISION_BYTES[s.precision], cfg.embed_dim
    blocks = len(pipeline_stage_layers(cfg.num_layers, s.pp)[stage])
    gas, n_tok = len(band_tokens), s.micro_batch * s.seq_len
    terms = [Term("tp", "all_reduce", "blocks: out_proj, fc2 (fwd); q/k/v, fc1 inputs (bwd)", 4 * blocks * gas,
                  4 * blocks * gas * n_tok * h * e)]  # fmt: skip
    if stage == 0:
        terms.append(Term("tp", "all_reduce", "adaptive input: partial embeddings (fwd)", gas, gas * n_tok * h * e))
        if cfg.adaptive_input:
            projections = sum(h * b.dim for b in cfg.input_bands())
            terms.append(Term("tp", "all_reduce", "adaptive input: projection gradients (bwd)",
                              gas * len(cfg.input_bands()), gas * projections * e))  # fmt: skip
    if stage == s.pp - 1:
        bands = cfg.output_bands()
        for i, band in enumerate(bands):
            per_band = [tokens[i] for tokens in band_tokens] if i else [n_tok] * gas
            busy = sum(1 for n in per_band if n > 0)
            name = "head" if i == 0 else f"tail {i}"
            terms.append(
                Term("tp", "all_reduce", f"softmax {name}: max and sums (fwd)", 2 * busy, 3 * sum(per_band) * 4)
            )  # fmt: skip  (fp32 statistics)
            width = h if i == 0 else band.dim
            terms.append(Term("tp", "all_reduce", f"softmax {name}: input gradient (bwd)", busy,
                              sum(per_band) * width * e))  # fmt: skip
    return terms


def _tied_elements(cfg: ModelConfig, tp: int) -> int:
    """Elements per TP rank of the tensors the pipeline's two ends share (tables sharded, projections whole)."""
    if not cfg.ties_tables:
        return 0
    bands = cfg.input_bands()
    tables = sum(-(-b.size // tp) * b.dim for b in bands)
    projections = sum(cfg.embed_dim * b.dim for b in bands[1:]) if cfg.tie_adaptive_proj else 0
    return tables + projections


def _pp_terms(cfg: ModelConfig, s: CommSetting, stage: int, gas: int) -> list[Term]:
    """Pipeline transfers; with TP > 1 and DeepSpeed's ``pipe_partitioned``/``grad_partitioned`` (its default)
    each TP rank sends its ``1/tp`` slice of the activation and the receiver all-gathers it over TP, which
    moves bytes off the (slower) pipeline link."""
    e, h = PRECISION_BYTES[s.precision], cfg.embed_dim
    n_tok = s.micro_batch * s.seq_len
    activation = n_tok * h * e
    split = s.tp if s.tp > 1 and s.pipe_partitioned else 1
    terms = []
    if stage < s.pp - 1:
        riders = (2 if s.packed else 1) * n_tok * INT64  # targets (and segment ids) travel with the activations
        terms.append(Term("pp", "send", "activations + targets to the next stage (fwd)", gas,
                          gas * (activation // split + riders)))  # fmt: skip
        if split > 1:
            terms.append(Term("tp", "all_gather", "activation gradient slices (bwd)", gas, gas * activation))
            terms.append(Term("tp", "all_gather", "stage output re-gathered before backward (DeepSpeed frees it)",
                              gas, gas * activation, excess=True))  # fmt: skip
    if stage > 0:
        terms.append(Term("pp", "send", "activation gradients to the previous stage (bwd)", gas,
                          gas * activation // split))  # fmt: skip
        if split > 1:
            terms.append(Term("tp", "all_gather", "activation slices (fwd)", gas, gas * activation))
    if stage in (0, s.pp - 1) and _tied_elements(cfg, s.tp):
        tensors = 2 * len(cfg.input_bands()) - 1 if cfg.tie_adaptive_proj else len(cfg.input_bands())
        terms.append(Term("pp", "all_reduce", "tied tables' gradients (first <-> last stage)", tensors,
                          _tied_elements(cfg, s.tp) * e))  # fmt: skip
    return terms


def _dp_terms(cfg: ModelConfig, s: CommSetting, stage: int, gas: int) -> list[Term]:
    e = PRECISION_BYTES[s.precision]
    params = stage_parameter_counts(cfg, s.tp, s.pp)[stage]
    grads = params * e
    if s.zero_stage == 0:
        return [Term("dp", "all_reduce", "gradients", 1, grads)]
    reductions = gas if s.zero_stage >= 2 else 1
    terms = [Term("dp", "reduce_scatter", "gradients", reductions, reductions * grads)]
    if s.zero_stage < 3:
        return terms + [Term("dp", "all_gather", "updated parameters", 1, params * e)]
    gathers = gas * (1 if params <= s.zero3_max_live_parameters else 2)
    return terms + [Term("dp", "all_gather", "parameters before forward (and backward)", gathers, gathers * params * e)]


def update_terms(cfg: ModelConfig, s: CommSetting, stage: int, band_tokens: Sequence[Sequence[float]]) -> list[Term]:
    """The transfers one rank of pipeline stage ``stage`` makes in one update: the minimum, and the documented
    excess terms (``Term.excess``); ``band_tokens``: for each of its micro batches, the targets per output
    band (:func:`expected_band_tokens` when unknown)."""
    gas = len(band_tokens)
    terms = _tp_terms(cfg, s, stage, band_tokens) if s.tp > 1 else []
    terms += _pp_terms(cfg, s, stage, gas) if s.pp > 1 else []
    terms += _dp_terms(cfg, s, stage, gas) if s.dp > 1 else []
    return terms


def expected_band_tokens(cfg: ModelConfig, s: CommSetting, fractions: Sequence[float]) -> list[list[float]]:
    """Targets per output band of each micro batch when a fraction ``fractions[i]`` of tokens is in band ``i``."""
    n_tok = s.micro_batch * s.seq_len
    return [[f * n_tok for f in fractions] for _ in range(s.gradient_accumulation)]


def update_wire_bytes(terms: Sequence[Term], s: CommSetting) -> dict[str, float]:
    """Wire bytes per rank by axis."""
    out: dict[str, float] = {}
    for t in terms:
        out[t.axis] = out.get(t.axis, 0.0) + wire_bytes(t, s)
    return out

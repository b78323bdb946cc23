"""``LanguageModel``: fairseq's hub interface (``TransformerLanguageModel.from_pretrained``) for this project.

    lm = LanguageModel.from_pretrained("adaptive_lm_wiki103.v2", "model.pt", tokenizer="moses")
    lm.sample("Barack Obama", beam=5)                     # fairseq's beam search, raw text in and out
    lm.score("The game was released in 2004.")["positional_scores"]   # natural-log p of each token
    lm.sample("the game was", sampling=True, sampling_topk=10, temperature=0.8, seed=1)
    lm = LanguageModel.load("model_dir")                  # or a training checkpoint, or a fairseq .pt

:meth:`from_pretrained` reads a fairseq release folder as it is (``model.pt`` + ``dict.txt``), with
fairseq's arguments: ``data_name_or_path`` starting with ``.`` is relative to the folder, the dictionary
is that data folder's ``dict.txt``, ``tokenizer="moses"`` runs sacremoses as fairseq does
(inference/text.py; default ``None``: whitespace-tokenised text, as fairseq when the checkpoint names no
tokenizer). :meth:`score` follows fairseq's ``hub.score``: each sentence becomes ``[</s>] + words`` and
every word is scored (fairseq does not score a final ``</s>``; ``append_eos=True`` adds it, for
sentence-level probabilities). :meth:`sample` returns what fairseq's ``hub.sample`` returns: the prompt
followed by its continuation, detokenised. Under tensor parallelism every rank of the TP group calls the
same methods with the same arguments and gets the same answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from adaptive_lm_ds import parallel
from adaptive_lm_ds.data import DataError, Dictionary
from adaptive_lm_ds.inference.generator import Hypothesis, generate
from adaptive_lm_ds.inference.loading import build_model, load_model_source
from adaptive_lm_ds.inference.search import GenerationConfig, GenerationError, Specials
from adaptive_lm_ds.inference.text import Moses, MosesOptions, TextPipelineError, build_tokenizer, check_bpe
from adaptive_lm_ds.model.lm import AdaptiveLM

DICT_FILE = "dict.txt"


def _find_dictionary(path: Path, found: Dictionary | None, given: str | os.PathLike | None) -> Dictionary:
    if given is not None:
        return Dictionary.load(given)
    if found is not None:
        return found
    beside = (path if path.is_dir() else path.parent) / DICT_FILE
    if beside.is_file():
        return Dictionary.load(beside)
    raise DataError(f"{path} comes without a dictionary and there is no {beside}; pass dictionary=PATH/dict.txt")


class LanguageModel:
    """A loaded :class:`AdaptiveLM` (this rank's TP shard) with its dictionary; see the module docstring."""

    def __init__(self, model: AdaptiveLM, dictionary: Dictionary, tokenizer: Moses | None = None):
        if len(dictionary) != model.cfg.vocab_size:
            raise DataError(f"the dictionary has {len(dictionary)} types but the model {model.cfg.vocab_size}")
        self.model = model.eval()
        self.dictionary = dictionary
        self.tokenizer = tokenizer
        self.specials = Specials(pad=dictionary.pad(), eos=dictionary.eos(), unk=dictionary.unk())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        dictionary: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        tokenizer: str | None = None,
        moses: MosesOptions | None = None,
    ) -> LanguageModel:
        """From a consolidated folder, a training checkpoint (any layout) or a fairseq ``.pt``.

        The dictionary is the model's own (consolidated folder, checkpoint), else ``dictionary``, else the
        ``dict.txt`` beside a ``.pt`` (as fairseq's hub finds it). The model is built for the current
        tensor-parallel layout (:func:`adaptive_lm_ds.parallel.initialize_parallel`); without one, a
        single-process layout is set up here. ``device``: default the accelerator when there is one.
        ``tokenizer``: ``"moses"`` or ``None`` (inference/text.py).
        """
        path = Path(path)
        text = build_tokenizer(tokenizer, moses or MosesOptions())
        cfg, state, found = load_model_source(path)
        vocab = _find_dictionary(path, found, dictionary)
        try:
            parallel.current()
        except parallel.ParallelNotInitialized:
            parallel.initialize_parallel(parallel.ParallelDims())
        return cls(build_model(cfg, state, device=device), vocab, text)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        checkpoint_file: str = "model.pt",
        data_name_or_path: str = ".",
        tokenizer: str | None = None,
        bpe: str | None = None,
        device: str | torch.device | None = None,
        **moses_options,
    ) -> LanguageModel:
        """fairseq's ``TransformerLanguageModel.from_pretrained`` on a local folder (see the module docstring).

        ``checkpoint_file`` is inside ``model_name_or_path`` (a fairseq ``.pt``, or a consolidated folder or
        training checkpoint of this project); ``moses_options`` are fairseq's ``source_lang``,
        ``target_lang``, ``moses_no_dash_splits``, ``moses_no_escape``.
        """
        check_bpe(bpe)
        unknown = set(moses_options) - set(MosesOptions.__dataclass_fields__)
        if unknown:
            raise TextPipelineError(
                f"from_pretrained got {', '.join(sorted(unknown))}: not implemented here; "
                f"the options taken are {', '.join(MosesOptions.__dataclass_fields__)}"
            )
        folder = Path(model_name_or_path)
        if os.pathsep in checkpoint_file:
            raise GenerationError(f"checkpoint_file={checkpoint_file!r}: ensembles are not implemented; name one file")
        data = folder / data_name_or_path if data_name_or_path.startswith(".") else Path(data_name_or_path)
        if not (data / DICT_FILE).is_file():
            raise DataError(f"{data / DICT_FILE} does not exist; give data_name_or_path= the folder with dict.txt")
        return cls.load(folder / checkpoint_file, data / DICT_FILE, device, tokenizer, MosesOptions(**moses_options))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ text
    def encode(self, sentence: str) -> list[int]:
        """Word ids of a sentence, tokenised first (``tokenizer``), unknown words -> ``<unk>``; no ``</s>``."""
        if self.tokenizer is not None:
            sentence = self.tokenizer.encode(sentence)
        return self.dictionary.encode_line(sentence, append_eos=False).tolist()

    def decode(self, tokens) -> str:
        """fairseq's hub ``decode``: ``Dictionary.string`` (``<s>``, ``</s>`` left out), then detokenised."""
        skip = (self.specials.eos, self.dictionary.bos())
        text = " ".join(self.dictionary[int(t)] for t in tokens if int(t) not in skip)
        return self.tokenizer.decode(text) if self.tokenizer is not None else text

    def _check_length(self, length: int, what: str) -> None:
        limit = self.model.cfg.max_positions
        if length > limit:
            raise GenerationError(f"{what} needs {length} positions but the model has {limit}; shorten it")

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(
        self,
        sentences: str | list[str],
        append_eos: bool = False,
        batch_size: int = 32,
        replace_newline_with_eos: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Per sentence ``{"tokens", "positional_scores", "score"}`` (fairseq's ``hub.score``).

        ``positional_scores[i]`` is the fp32 natural-log probability of ``tokens[i]`` given ``</s>`` and
        the tokens before it; ``score`` their mean. A single string gives a single dict.
        ``replace_newline_with_eos``: each line of a sentence is followed by ``</s>`` (fairseq's option;
        the final one is not scored, as fairseq).
        """
        if isinstance(sentences, str):
            return self.score([sentences], append_eos, batch_size, replace_newline_with_eos)[0]
        targets = [
            self._score_ids(s, replace_newline_with_eos) + ([self.specials.eos] if append_eos else [])
            for s in sentences
        ]
        for ids in targets:
            self._check_length(len(ids) + (0 if append_eos else 1), f"sentence {self.decode(ids)[:40]!r}")
        out = []
        for group in _chunks(targets, batch_size):
            width = max(max(len(t) for t in group), 1)
            pad = self.specials.pad
            inputs = torch.full((len(group), width), pad, dtype=torch.long)
            target = torch.full((len(group), width), pad, dtype=torch.long)
            for row, ids in enumerate(group):
                seq = torch.as_tensor([self.specials.eos] + ids, dtype=torch.long)
                inputs[row, : len(ids)] = seq[: len(ids)]
                target[row, : len(ids)] = seq[1:]
            lp = self.model.target_log_probs(inputs.to(self.device), target.to(self.device)).float().cpu()
            for row, ids in enumerate(group):
                scores = lp[row, : len(ids)]
                mean = float(scores.mean()) if len(ids) else float("nan")
                out.append(
                    {"tokens": torch.as_tensor(ids, dtype=torch.long), "positional_scores": scores, "score": mean}
                )
        return out

    def _score_ids(self, sentence: str, replace_newline_with_eos: bool) -> list[int]:
        if not replace_newline_with_eos:
            return self.encode(sentence)
        ids = [i for line in sentence.splitlines() for i in [*self.encode(line), self.specials.eos]]
        return ids[:-1] if ids else ids  # fairseq strips the final </s> from the scored target

    # ------------------------------------------------------------------ generation
    def generate(
        self, prefixes: list[str], batch_size: int = 16, config: GenerationConfig | None = None, **options
    ) -> list[Hypothesis]:
        """A :class:`Hypothesis` per prompt; ``options`` are :class:`GenerationConfig` fields."""
        cfg = replace(config or GenerationConfig(), **options).validate()
        prompts = [self.encode(p) for p in prefixes]
        for ids in prompts:
            self._check_length(len(ids) + 1, f"prompt {self.decode(ids)[:40]!r}")
        out: list[Hypothesis] = []
        for i, group in enumerate(_chunks(prompts, batch_size)):
            seed = None if cfg.seed is None else cfg.seed + i  # each batch its own stream
            out += generate(self.model, group, replace(cfg, seed=seed), self.specials)
        return out

    def sample(self, prefix: str | list[str], beam: int | None = None, **options) -> str | list[str]:
        """fairseq's ``hub.sample``: the prompt and its continuation as text (``options``: see :meth:`generate`).

        ``beam=1`` (greedy) or ``beam=N`` (fairseq's beam search: ``lenpen``, ``no_repeat_ngram_size``,
        ``unnormalized``), ``sampling`` (``sampling_topk``, ``sampling_topp``, ``temperature``; with
        ``beam=N``, N draws per step), ``max_len_a``, ``max_len_b``, ``min_len``, ``unkpen``, ``seed``
        (reproducible sampling), ``use_cache``.
        """
        if isinstance(prefix, str):
            return self.sample([prefix], beam, **options)[0]
        if beam is not None:  # else the config's (default 1, as fairseq's hub)
            options["beam"] = beam
        return [self.decode(h.tokens) for h in self.generate(prefix, **options)]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]

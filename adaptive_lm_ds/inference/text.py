"""Raw text <-> the model's words: fairseq's ``tokenizer=`` and ``bpe=`` hub options.

``tokenizer="moses"`` is fairseq's ``MosesTokenizer`` (fairseq/data/encoders/moses_tokenizer.py) on
sacremoses: ``MosesTokenizer(source_lang).tokenize(text, aggressive_dash_splits=not moses_no_dash_splits,
return_str=True, escape=not moses_no_escape)`` to encode, ``MosesDetokenizer(target_lang).detokenize(
text.split())`` to decode; languages default to ``en``. So ``"well-known"`` becomes ``well @-@ known``
(WikiText's spelling) and ``"`` becomes ``&quot;`` (fairseq escapes by default). ``tokenizer=None`` leaves
text as it is (already tokenised, words separated by whitespace). No BPE is implemented: the adaptive-input
models are word-level.
"""

from __future__ import annotations

from dataclasses import dataclass

from adaptive_lm_ds.errors import UserError


class TextPipelineError(UserError, ValueError):
    """A tokenizer or BPE this project does not implement; the message says what is."""


@dataclass(frozen=True)
class MosesOptions:
    """fairseq's ``MosesTokenizerConfig`` fields and defaults."""

    source_lang: str = "en"
    target_lang: str = "en"
    moses_no_dash_splits: bool = False
    moses_no_escape: bool = False


class Moses:
    """fairseq's ``moses`` tokenizer: ``encode`` raw text to space-separated tokens, ``decode`` back."""

    def __init__(self, options: MosesOptions):
        try:
            from sacremoses import MosesDetokenizer, MosesTokenizer
        except ImportError:
            raise TextPipelineError("tokenizer='moses' needs sacremoses: pip install sacremoses==0.2.0") from None
        self.options = options
        self.tok = MosesTokenizer(options.source_lang)
        self.detok = MosesDetokenizer(options.target_lang)

    def encode(self, text: str) -> str:
        return self.tok.tokenize(
            text,
            aggressive_dash_splits=not self.options.moses_no_dash_splits,
            return_str=True,
            escape=not self.options.moses_no_escape,
        )

    def decode(self, text: str) -> str:
        return self.detok.detokenize(text.split())


def build_tokenizer(name: str | None, options: MosesOptions) -> Moses | None:
    if name is None:
        return None
    if name == "moses":
        return Moses(options)
    raise TextPipelineError(
        f"tokenizer={name!r} is not implemented; use tokenizer='moses' or None (pre-tokenised text)"
    )


def check_bpe(name: str | None) -> None:
    if name is not None:
        raise TextPipelineError(
            f"bpe={name!r} is not implemented: the adaptive-input models are word-level; use bpe=None"
        )

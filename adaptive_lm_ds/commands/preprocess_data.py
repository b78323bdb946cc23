"""Binarize word-level LM text into a fairseq-style data-bin (dict.txt + {split}.bin/.idx).

Takes ``fairseq-preprocess``'s language-model command line verbatim and writes the same files, byte for
byte (``dict.txt``, ``{split}.bin``, ``{split}.idx`` in the default mmap layout):

    adaptive-lm-preprocess --only-source --trainpref wiki.train.tokens --validpref wiki.valid.tokens \\
        --testpref wiki.test.tokens --destdir data-bin/wikitext-103 --workers 20

``--validpref``/``--testpref`` take comma-separated files (valid, valid1, ...), as fairseq does;
``--srcdict`` reuses a dictionary (a released model's ``dict.txt``), ``--dict-only`` writes only it.
``--only-source`` and ``--task language_modeling`` are what this program always does; translation flags
(``--source-lang``, ``--joined-dictionary`` ...) stop it in one line. Each split also gets
``{split}.dict.json``, the fingerprint of the dictionary its ids came from, which training, eval and
conversion check their dict.txt against. See docs/data.md for WikiText-103 and GBW recipes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaptive_lm_ds import cli
from adaptive_lm_ds.commands.fairseq_compat import accept_without_effect, one_line_errors, refuse
from adaptive_lm_ds.data.dictionary import Dictionary
from adaptive_lm_ds.data.errors import DataError
from adaptive_lm_ds.data.indexed import LAYOUTS
from adaptive_lm_ds.data.preprocess import CHUNK_BYTES, binarize_file, build_dictionary, has_words

TRANSLATION = "this program binarizes language-model text only (fairseq's --only-source); drop the flag"
UNSUPPORTED = {
    "--source-lang": TRANSLATION,
    "-s": TRANSLATION,
    "--target-lang": TRANSLATION,
    "-t": TRANSLATION,
    "--tgtdict": TRANSLATION,
    "--joined-dictionary": TRANSLATION,
    "--thresholdtgt": TRANSLATION,
    "--nwordstgt": TRANSLATION,
    "--alignfile": TRANSLATION,
    "--align-suffix": TRANSLATION,
    "--user-dir": "this program has no plug-ins; drop the flag",
}
TAKEN_WITHOUT_EFFECT = (
    ("--only-source", "--cpu"),
    ("--seed", "--log-format", "--log-interval", "--tokenizer", "--bpe"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = one_line_errors(cli.parser(__doc__, prog="adaptive-lm-preprocess"), "see adaptive-lm-preprocess --help")
    p.add_argument("--task", default="language_modeling", choices=("language_modeling",))
    p.add_argument("--trainpref", help="training text (builds the dictionary unless --srcdict)")
    p.add_argument("--validpref", help="validation text(s), comma-separated")
    p.add_argument("--testpref", help="test text(s), comma-separated")
    p.add_argument("--destdir", default="data-bin", help="output folder (created; fairseq's default data-bin)")
    p.add_argument("--srcdict", help="reuse this dict.txt instead of building one")
    p.add_argument("--dict-only", action="store_true", help="write dict.txt only, binarize nothing")
    p.add_argument("--thresholdsrc", type=int, default=0, help="keep words occurring at least N times")
    p.add_argument("--nwordssrc", type=int, default=-1, help="keep at most N entries (specials included)")
    p.add_argument("--padding-factor", type=int, default=8, help="pad the vocabulary to a multiple of N")
    p.add_argument("--workers", type=int, default=1, help="processes (output is identical for any number)")
    p.add_argument(
        "--dataset-impl", choices=(*LAYOUTS, "mmap"), default="fairseq", help="index layout (mmap = fairseq)"
    )
    p.add_argument("--replace-invalid-utf8", action="store_true", help="replace invalid UTF-8 by U+FFFD and count it")
    p.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES, help="bytes of text per work item")
    p.add_argument("--no-progress", "--no-progress-bar", action="store_true", help="no progress bar")
    accept_without_effect(p, *TAKEN_WITHOUT_EFFECT)
    refuse(p, UNSUPPORTED)
    args = p.parse_args(argv)
    if args.workers < 1 or args.chunk_bytes < 1:
        p.error("--workers and --chunk-bytes must be >= 1")
    if not args.trainpref and not args.srcdict:
        p.error("give --trainpref (to build the dictionary) or --srcdict")
    return args


def splits(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(output name, text file) pairs: train, valid, valid1, ..., test, test1, ..."""
    out = [("train", args.trainpref)] if args.trainpref else []
    for name, prefs in (("valid", args.validpref), ("test", args.testpref)):
        for k, path in enumerate(prefs.split(",") if prefs else []):
            out.append((name if k == 0 else f"{name}{k}", path))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = "fairseq" if args.dataset_impl == "mmap" else args.dataset_impl
    todo = [] if args.dict_only else splits(args)
    for _, path in todo:
        if not Path(path).is_file():
            raise DataError(f"input file {path} does not exist; check --trainpref/--validpref/--testpref")
    if args.trainpref and not has_words(args.trainpref):
        raise DataError(f"training text {args.trainpref} has no words (empty or only whitespace); check --trainpref")
    destdir = Path(args.destdir)
    destdir.mkdir(parents=True, exist_ok=True)
    if args.srcdict:
        dictionary = Dictionary.load(args.srcdict)
    else:
        dictionary = build_dictionary(
            [args.trainpref],
            workers=args.workers,
            threshold=args.thresholdsrc,
            nwords=args.nwordssrc,
            padding_factor=args.padding_factor,
            replace_invalid=args.replace_invalid_utf8,
            chunk_bytes=args.chunk_bytes,
        )
    dictionary.save(destdir / "dict.txt")
    print(f"dictionary: {len(dictionary)} types -> {destdir / 'dict.txt'}", file=sys.stderr)
    for name, path in todo:
        summary = binarize_file(
            path,
            dictionary,
            str(destdir / name),
            layout=layout,
            workers=args.workers,
            replace_invalid=args.replace_invalid_utf8,
            chunk_bytes=args.chunk_bytes,
            progress=not args.no_progress,
        )
        print(summary, file=sys.stderr)

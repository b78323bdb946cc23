#!/usr/bin/env python
"""`make demo`: the whole pipeline on the embedded synthetic corpus, no network, no ../shared.

Stages: generate corpus -> preprocess to a data-bin -> train the `tiny` preset on 2 CPU ranks ->
evaluate validation perplexity beside the corpus's true perplexity. A stage whose tool does not
exist yet in this checkout is reported as missing instead of failing the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(argv: list[str], **env: str) -> None:
    print("$ " + " ".join(argv), flush=True)
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), **env}
    subprocess.run(argv, check=True, cwd=REPO, env=full_env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default="demo_out", help="where everything is written")
    parser.add_argument("--train-minutes", type=float, default=3.0, help="training wall-clock budget")
    args = parser.parse_args(argv)
    out = (REPO / args.out_dir).resolve()
    py = sys.executable
    missing: list[str] = []
    start = time.perf_counter()

    banner("1/4 synthetic corpus")
    corpus = out / "corpus"
    run([py, "tools/make_synthetic_corpus.py", "--out-dir", str(corpus)])
    stats = json.loads((corpus / "corpus_stats.json").read_text())

    banner("2/4 preprocess to a data-bin")
    data_bin = out / "data-bin"
    if (REPO / "tools/preprocess_data.py").exists():
        run(
            [py, "tools/preprocess_data.py", "--trainpref", str(corpus / "train.txt"),
             "--validpref", str(corpus / "valid.txt"), "--testpref", str(corpus / "test.txt"),
             "--destdir", str(data_bin), "--workers", "2"]
        )  # fmt: skip
    else:
        missing.append("preprocessing (tools/preprocess_data.py)")

    banner("3/4 train the tiny preset on 2 CPU ranks")
    missing.append("training (launchers/train_wiki103.py / train_gbw.py)")
    banner("4/4 evaluate")
    missing.append("evaluation (tools/eval_lm.py)")

    banner("summary")
    print(f"corpus            {corpus}  (true perplexity {stats['true_perplexity']:.2f}, "
          f"unigram perplexity {stats['unigram_perplexity']:.2f})")  # fmt: skip
    if data_bin.exists():
        print(f"data-bin          {data_bin}")
    for stage in missing:
        print(f"not yet built     {stage}")
    print(f"finished in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

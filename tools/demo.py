#!/usr/bin/env python
"""`make demo`: the whole pipeline on the embedded synthetic corpus, no network, no ../shared.

Stages: generate the corpus -> preprocess it to a data-bin -> train the `tiny` preset on 2 CPU
ranks under the DeepSpeed launcher (ZeRO-1 data parallel, tensorboard, checkpoints) -> export the
checkpoint to a consolidated model -> evaluate validation perplexity beside the corpus's true
perplexity -> sample a few continuations of test-set prompts from the trained model. Each stage is
the command a user would type; they are printed as they run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def program(name: str) -> str:
    """The installed program ``name`` beside this interpreter (``make venv`` registers them in ``.venv/bin``)."""
    return str(Path(sys.executable).parent / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--out-dir", default="demo_out", help="where everything is written")
    parser.add_argument("--train-minutes", type=float, default=3.0, help="training wall-clock budget")
    parser.add_argument("--master-port", type=int, default=29533, help="rendezvous port of the 2 training ranks")
    args = parser.parse_args(argv)
    out = (REPO / args.out_dir).resolve()
    py = sys.executable
    start = time.perf_counter()

    banner("1/5 synthetic corpus")
    corpus = out / "corpus"
    run([program("adaptive-lm-synthetic-corpus"), "--out-dir", str(corpus)])
    stats = json.loads((corpus / "corpus_stats.json").read_text())

    banner("2/5 preprocess to a data-bin")
    data_bin = out / "data-bin"
    run(
        [program("adaptive-lm-preprocess"), "--only-source", "--trainpref", str(corpus / "train.txt"),
         "--validpref", str(corpus / "valid.txt"), "--testpref", str(corpus / "test.txt"),
         "--destdir", str(data_bin), "--workers", "2"]
    )  # fmt: skip

    banner("3/5 train the tiny preset on 2 CPU ranks (DeepSpeed ZeRO-1, data parallel)")
    save_dir, tb_dir = out / "checkpoints", out / "tensorboard"
    shutil.rmtree(save_dir, ignore_errors=True)  # a fresh run each time (rerunning would resume)
    deepspeed = str(Path(py).parent / "deepspeed")
    run(
        [deepspeed, "--num_gpus", "2", "--master_port", str(args.master_port), "launchers/train_wiki103.py",
         "--data", str(data_bin), "--preset", "tiny", "--deepspeed_config", "ds_configs/zero1.json",
         "--tokens-per-sample", "128", "--max-tokens", "2048", "--update-freq", "1",
         "--optimizer", "adam", "--lr", "0.002", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100",
         "--clip-norm", "1.0", "--max-update", "100000", "--stop-time-hours", str(args.train_minutes / 60),
         "--log-interval", "50", "--validate-interval-updates", "250", "--max-valid-steps", "25",
         "--save-dir", str(save_dir), "--save-interval-updates", "500", "--keep-last-n", "2",
         "--tensorboard-logdir", str(tb_dir)],
        OMP_NUM_THREADS="1",
    )  # fmt: skip

    banner("4/5 export the checkpoint and evaluate validation perplexity")
    model_dir = out / "model"
    run([program("adaptive-lm-export"), "--checkpoint", str(save_dir), "--output", str(model_dir)])
    result_json = out / "valid_eval.json"
    run([program("adaptive-lm-eval"), "--path", str(model_dir), "--data", str(data_bin), "--gen-subset", "valid",
         "--tokens-per-sample", "128", "--context-window", "64", "--json", str(result_json)])  # fmt: skip
    result = json.loads(result_json.read_text())

    banner("summary")
    minutes = f"{args.train_minutes:g} min"
    print(f"validation perplexity {result['perplexity']:10.2f}  (tiny model, {minutes} on 2 CPU ranks)")
    print(f"true perplexity       {stats['true_perplexity']:10.2f}  (the corpus's entropy rate: the best possible)")
    print(f"unigram perplexity    {stats['unigram_perplexity']:10.2f}  (the best model that ignores context)")
    print()
    print(f"corpus          {corpus}")
    print(f"data-bin        {data_bin}")
    print(f"checkpoints     {save_dir}   (rerun the training command to resume from the latest)")
    print(f"model           {model_dir}   (consolidated: model.safetensors + config.json + dict.txt)")
    print(f"tensorboard     {tb_dir}")
    print()
    print("look at them with:")
    print(f"  {program('tensorboard')} --logdir {tb_dir}")
    print(f"  {program('adaptive-lm-eval')} --path {model_dir} --data {data_bin} --gen-subset test "
          "--tokens-per-sample 128")  # fmt: skip
    print(f"  {program('adaptive-lm-convert')} --input {model_dir} --to-fairseq --output {out / 'fairseq.pt'}")
    print(f"  {program('adaptive-lm-generate')} --path {model_dir} --prefix 'WORDS ...' --sampling --sampling-topk 10")

    banner("5/5 sample continuations from the trained model (prompt: the first words of test lines)")
    prompts = out / "prompts.txt"
    lines = [line.split() for line in (corpus / "test.txt").read_text().splitlines() if len(line.split()) >= 8]
    prompts.write_text("".join(" ".join(words[:4]) + "\n" for words in lines[:4]))
    run([program("adaptive-lm-generate"), "--path", str(model_dir), "--input", str(prompts), "--max-len-b", "24",
         "--min-len", "12", "--sampling", "--sampling-topk", "10", "--seed", "1"])  # fmt: skip
    print(f"finished in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

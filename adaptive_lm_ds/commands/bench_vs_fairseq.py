"""Training speed against the real fairseq: one fairseq command line, ``fairseq-train --cpu`` and ours.

    adaptive-lm-bench-vs-fairseq [--rounds 3] [--max-update 40] [--log-interval 10] [--threads 2] [--json FILE]
    adaptive-lm-bench-vs-fairseq --rounds 3
    adaptive-lm-bench-vs-fairseq --flop-fraction     # our update against the matmul rate, by part

The command line (:func:`fairseq_command_line`) trains a 4-layer d 256 adaptive-input / adaptive-softmax
``transformer_lm_wiki103`` on WikiText-2 ``valid.txt`` binarised with fixture A's dictionary (13,784
types, cutoffs 1000,5000), 2 x 512 tokens per micro batch x update-freq 2 = 2048 tokens per update,
NAG, --clip-norm 0.1, cosine, dropout 0.1, --criterion adaptive_loss. The oracle's ``fairseq-train``
runs it with ``--cpu``; ``adaptive-lm-train-wiki103`` runs the same flags (DS_ACCELERATOR=cpu instead
of ``--cpu``, which it refuses). One process each, ``--threads`` torch threads, one after the other,
the order alternating per round. A run's speed is its steady-state words (target tokens) per second:
all the tokens of the log intervals after the first, over their time (the first holds the warm-up).

Needs the oracle (``--oracle``, else ``$FAIRSEQ_ORACLE``, else ``.fairseq-oracle`` in the checkout) and
``../shared`` (``--shared``); where either is absent it prints one ``skipped:`` line and exits 0.
``--flop-fraction`` needs only ``../shared``: commands/flop_fraction.py.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adaptive_lm_ds import cli, logs
from adaptive_lm_ds.data.dictionary import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
VALID_LINES = 200  # the validation split: the first lines of WikiText-2 test.txt (validated once, at the end)
FAIRSEQ_WPS = re.compile(r"\| train_inner \|.*\bwps=([0-9.e+]+)")
OURS_WPS = re.compile(r"^epoch \d+ \| update .*\bwps=([0-9.e+]+)")


def fairseq_command_line(data_bin: Path, max_update: int, log_interval: int) -> list[str]:
    """fairseq-train's flags (after the program name, without ``--cpu``)."""
    cutoffs = "1000,5000"
    return [
        str(data_bin), "--task", "language_modeling", "--arch", "transformer_lm_wiki103",
        "--decoder-layers", "4", "--decoder-embed-dim", "256", "--decoder-input-dim", "256",
        "--decoder-output-dim", "256", "--decoder-ffn-embed-dim", "1024", "--decoder-attention-heads", "4",
        "--adaptive-input", "--adaptive-input-factor", "4", "--adaptive-input-cutoff", cutoffs,
        "--adaptive-softmax-cutoff", cutoffs, "--adaptive-softmax-factor", "4", "--tie-adaptive-weights",
        "--tie-adaptive-proj", "--dropout", "0.1", "--attention-dropout", "0.1", "--activation-dropout", "0.1",
        "--adaptive-softmax-dropout", "0.1", "--criterion", "adaptive_loss", "--tokens-per-sample", "512",
        "--sample-break-mode", "none", "--max-tokens", "1024", "--update-freq", "2", "--optimizer", "nag",
        "--lr", "1.0", "--momentum", "0.99", "--clip-norm", "0.1", "--lr-scheduler", "cosine",
        "--warmup-updates", "100", "--warmup-init-lr", "1e-7", "--lr-period-updates", "270000", "--t-mult", "2",
        "--lr-shrink", "0.75", "--min-lr", "1e-4", "--max-update", str(max_update), "--seed", "1",
        "--ddp-backend", "legacy_ddp", "--no-save", "--log-format", "simple", "--log-interval", str(log_interval),
    ]  # fmt: skip


def steady_wps(rates: list[float]) -> float:
    """Tokens over time of the intervals after the first (equal tokens each: the harmonic mean of their wps)."""
    steady = rates[1:]
    if not steady:
        raise RuntimeError("fewer than two log intervals: raise --max-update or lower --log-interval")
    return len(steady) / sum(1.0 / r for r in steady)


def _run(command: list[str], env: dict, pattern: re.Pattern, timeout: float) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} exited {proc.returncode}:\n{output[-3000:]}")
    return interval_rates(output, pattern), wall


def interval_rates(output: str, pattern: re.Pattern) -> list[float]:
    """The wps of every training log interval in a program's output: ``pattern`` is tried on each whole line
    (fairseq's names its ``train_inner`` logger) and on its message alone (ours: ``epoch ... | update ...``)."""
    return [
        float(m.group(1))
        for line in output.splitlines()
        if (m := pattern.search(line) or pattern.search(logs.message(line)))
    ]


def _env(threads: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DS_ACCELERATOR")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **extra)
    return env


def prepare_data(oracle: Path, shared: Path, work: Path) -> Path:
    """fairseq-preprocess (the oracle) of WikiText-2 valid.txt (train) and test.txt's first lines (valid)."""
    data_bin = work / "data-bin"
    if (data_bin / "train.bin").exists():
        return data_bin
    lines = (shared / "data" / "wikitext-2" / "test.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (work / "valid.txt").write_text("".join(lines[:VALID_LINES]), encoding="utf-8")
    subprocess.run(
        [str(oracle / "bin" / "fairseq-preprocess"), "--only-source",
         "--srcdict", str(shared / "fixtures" / "fairseq-wiki103-tiny" / "dict.txt"),
         "--trainpref", str(shared / "data" / "wikitext-2" / "valid.txt"), "--validpref", str(work / "valid.txt"),
         "--destdir", str(data_bin), "--workers", "1"],
        env=_env(1), check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return data_bin


def machine() -> dict:
    """What a benchmark record names: CPU model, load average now, commit of the checkout."""
    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""
        )
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"cpu": model, "cores": os.cpu_count(), "load_average": os.getloadavg(), "commit": commit.stdout.strip()}


def _missing(oracle: Path | None, shared: Path) -> str | None:
    if oracle is not None and not (oracle / "bin" / "fairseq-train").exists():
        return f"the fairseq oracle is absent at {oracle} (build it with ../shared/oracles/fairseq/setup.sh DIR)"
    for needed in (shared / "data" / "wikitext-2" / "valid.txt", shared / "fixtures" / "fairseq-wiki103-tiny"):
        if not needed.exists():
            return f"{needed} is absent: this benchmark needs the ../shared data and fixtures"
    return None


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="alternating fairseq/ours pairs (default 3)")
    p.add_argument("--max-update", type=int, default=40)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each process (default 2)")
    default_oracle = os.environ.get("FAIRSEQ_ORACLE", str(REPO / ".fairseq-oracle"))
    p.add_argument("--oracle", default=default_oracle, help=f"the fairseq venv (default {default_oracle})")
    p.add_argument("--shared", default=str(REPO.parent / "shared"), help="data and fixtures (default ../shared)")
    p.add_argument("--work-dir", help="keep the binarised data here (default: a temp folder, removed afterwards)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per training run")
    p.add_argument("--json", help="write the raw numbers here")
    p.add_argument("--flop-fraction", action="store_true", help="time our update's parts against the matmul rate")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per part (--flop-fraction)")
    args = p.parse_args(argv)
    oracle, shared = Path(args.oracle), Path(args.shared)
    missing = _missing(None if args.flop_fraction else oracle, shared)
    if missing:
        print(f"skipped: {missing}")
        return 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_vs_fairseq_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.flop_fraction:
            return _flop_fraction(args, shared, work)
        return _bench(args, oracle, prepare_data(oracle, shared, work))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def _flop_fraction(args, shared: Path, work: Path) -> int:
    from adaptive_lm_ds.commands.flop_fraction import flop_fraction, prepare_data_without_oracle

    data_bin = prepare_data_without_oracle(shared, work, VALID_LINES)
    print(f"| {' '.join(f'{k} {v}' for k, v in machine().items())}", flush=True)
    record = flop_fraction(fairseq_command_line(data_bin, args.max_update, args.log_interval), args.threads,
                           args.repeats)  # fmt: skip
    if args.json:
        atomic_write_json(args.json, {"machine": machine(), **record})
    return 0


def _bench(args, oracle: Path, data_bin: Path) -> int:
    flags = fairseq_command_line(data_bin, args.max_update, args.log_interval)
    runs = {
        "fairseq-train": ([str(oracle / "bin" / "fairseq-train"), *flags, "--cpu"], _env(args.threads), FAIRSEQ_WPS),
        "adaptive-lm-train-wiki103": (
            [sys.executable, "-m", "adaptive_lm_ds", "adaptive-lm-train-wiki103", *flags],
            _env(args.threads, DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO)),
            OURS_WPS,
        ),
    }
    record = {"machine": machine(), "command": flags, "rounds": []}
    print(f"| {record['machine']['cpu']}, {record['machine']['cores']} cores, commit {record['machine']['commit']}, "
          f"load average {' '.join(f'{x:.2f}' for x in record['machine']['load_average'])}", flush=True)  # fmt: skip
    for k in range(args.rounds):
        order = list(runs) if k % 2 == 0 else list(reversed(runs))
        result = {}
        for name in order:
            command, env, pattern = runs[name]
            rates, wall = _run(command, env, pattern, args.timeout)
            result[name] = {"wps": steady_wps(rates), "interval_wps": rates, "wall_s": wall}
        ratio = result["adaptive-lm-train-wiki103"]["wps"] / result["fairseq-train"]["wps"]
        result.update(ratio=ratio, load_average=os.getloadavg())
        record["rounds"].append(result)
        print(f"round {k + 1}: fairseq-train {result['fairseq-train']['wps']:,.0f} wps, adaptive-lm-train-wiki103 "
              f"{result['adaptive-lm-train-wiki103']['wps']:,.0f} wps, ratio {ratio:.2f}x "
              f"(load {result['load_average'][0]:.2f})", flush=True)  # fmt: skip
    ratios = [r["ratio"] for r in record["rounds"]]
    record["median_ratio"] = statistics.median(ratios)
    fs = [r["fairseq-train"]["wps"] for r in record["rounds"]]
    ours = [r["adaptive-lm-train-wiki103"]["wps"] for r in record["rounds"]]
    print(f"summary: fairseq-train median {statistics.median(fs):,.0f} wps, adaptive-lm-train-wiki103 median "
          f"{statistics.median(ours):,.0f} wps; ratio median {record['median_ratio']:.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}) over {len(ratios)} rounds")  # fmt: skip
    if args.json:
        atomic_write_json(args.json, record)
    return 0

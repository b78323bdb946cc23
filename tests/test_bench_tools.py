"""Every benchmark runs from its one command and writes the numbers its targets name (tiny sizes, CPU).

These are not timing tests: they keep the benchmark commands (and the GPU script, which only a GPU
runs for real) from rotting, and check the reported numbers against each other.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from adaptive_lm_ds.data.blocks import BREAK_MODES

from .oracle import REPO

TINY_TRAIN = "--vocab 3000 --d 32 --layers 1 --batch 2 --seq 32"


def _run(*argv, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def gpu_script_on_cpu(tmp_path_factory):
    """tools/bench_gpu.sh as the device runs it, with tiny shapes on the CPU and no wheels to install."""
    out = tmp_path_factory.mktemp("bench-gpu-out")
    env = {
        "OUT": str(out),
        "PYTHON": sys.executable,
        "BENCH_DEVICE": "cpu",
        "BENCH_WHEELS": str(tmp_path_factory.mktemp("no-wheels")),
        "BENCH_SOFTMAX_ARGS": "--d 16 --tokens 16 --repeats 1 --warmup 0",
        "BENCH_TRAIN_ARGS": f"{TINY_TRAIN} --steps 1 --warmup 0 --peak-tflops 1",
        "BENCH_TIMEOUTS": "400 400 400",
    }
    _run("bash", "tools/bench_gpu.sh", env=env, timeout=1200)
    return out


@pytest.mark.slow
def test_gpu_script_writes_the_layer_ratios(gpu_script_on_cpu):
    result = json.loads((gpu_script_on_cpu / "adaptive_softmax.json").read_text())
    assert result["speedup_vs_full_softmax"] > 0 and result["speedup_vs_torch_adaptive"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name, compiled", [("train_eager", False), ("train_compiled", True)])
def test_gpu_script_writes_training_throughput_and_mfu(gpu_script_on_cpu, name, compiled):
    result = json.loads((gpu_script_on_cpu / f"{name}.json").read_text())
    assert result["compile"] is compiled
    ratio = result["adaptive_tokens_per_s"] / result["full_tokens_per_s"]
    assert result["speedup_adaptive_vs_full"] == pytest.approx(ratio)
    # MFU = achieved model FLOP/s over the peak given (--peak-tflops 1)
    assert result["mfu"] == pytest.approx(result["adaptive_tokens_per_s"] * result["model_flops_per_token"] / 1e12)
    assert "train_compiled FAILED" not in (gpu_script_on_cpu / "log.txt").read_text()


def test_gpu_script_reports_a_failed_measurement_and_exits_non_zero(tmp_path):
    # every measurement's command fails at once (`false` as the interpreter): the script's bookkeeping is under test
    env = {"OUT": str(tmp_path), "PYTHON": "false", "BENCH_WHEELS": str(tmp_path / "no-wheels")}
    result = subprocess.run(["bash", "tools/bench_gpu.sh"], cwd=REPO, env={**os.environ, **env}, capture_output=True)
    assert result.returncode != 0
    log = (tmp_path / "log.txt").read_text()
    assert all(f"== {name} FAILED" in log for name in ("adaptive_softmax", "train_eager", "train_compiled"))


@pytest.mark.slow
def test_train_bench_measures_the_tp2_communication_share(tmp_path):
    out = tmp_path / "train.json"
    _run(sys.executable, "tools/bench_train.py", *TINY_TRAIN.split(), "--steps", "2", "--warmup", "1", "--json", out)
    result = json.loads(out.read_text())
    assert result["tp2"]["ranks"][0]["collectives_per_step"] > 0
    assert 0 < result["tp2_comm_fraction"] < 1
    assert result["tp2_tokens_per_s"] == pytest.approx(result["tokens_per_step"] / result["tp2"]["median_step_s"])


def test_data_bench_writes_per_worker_rates_and_index_costs(tmp_path):
    out, tokens, sentences, block = tmp_path / "data.json", 200_000, 8_000, 512
    _run(
        sys.executable, "tools/bench_data.py", "--text-tokens", "50000", "--index-tokens", str(tokens),
        "--index-sentences", str(sentences), "--tokens-per-sample", str(block), "--json", out,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["tokens_per_s_per_worker"]) == {"1", "2"}
    assert all(rate > 0 for rate in result["tokens_per_s_per_worker"].values())
    assert set(result["index"]) == set(BREAK_MODES)
    assert result["index"]["none"]["blocks"] == math.ceil(tokens / block)  # fixed-size blocks over the stream
    assert result["index"]["eos"]["blocks"] == sentences  # one block per sentence
    assert all(entry["peak_rss_gib"] > 0 and entry["seconds"] > 0 for entry in result["index"].values())


def test_memory_plan_json_totals_are_the_sum_of_their_parts(tmp_path):
    out = tmp_path / "plan.json"
    _run(sys.executable, "tools/memory_plan.py", "--preset", "gbw_huge", "--search", "1,8", "--json", out)
    result = json.loads(out.read_text())
    assert set(result["search"]) == {"1", "8"}
    for row in [result["plan"], *result["search"].values()]:
        parts = sum(row[k] for k in ("runtime", "params", "grads", "optimizer", "activations", "transient"))
        assert row["total"] == pytest.approx(parts)


def test_fairseq_bench_skips_in_one_line_without_the_oracle(tmp_path):
    result = _run(sys.executable, "tools/bench_vs_fairseq.py", "--oracle", str(tmp_path / "absent"), "--rounds", "1")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skipped: the fairseq oracle is absent"), result.stdout


def test_fairseq_bench_steady_wps_drops_the_first_interval_and_weighs_by_time():
    from adaptive_lm_ds.commands.bench_vs_fairseq import steady_wps

    # intervals of equal tokens at 1000 and 3000 wps take 3:1 time: tokens / time = 2 / (1/1000 + 1/3000)
    assert steady_wps([50.0, 1000.0, 3000.0]) == pytest.approx(1500.0)


def test_fairseq_bench_reads_the_wps_of_our_trainers_log_lines(capsys):
    import logging

    from adaptive_lm_ds import logs
    from adaptive_lm_ds.commands.bench_vs_fairseq import OURS_WPS, interval_rates
    from adaptive_lm_ds.metrics_log import TrainLogger

    handler = logging.StreamHandler()  # the trainer's own line format (logs.FORMAT) on stderr
    handler.setFormatter(logging.Formatter(logs.FORMAT, logs.DATE_FORMAT))
    logger = logging.getLogger("adaptive_lm_ds.test_bench_wps")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    ticks = iter(range(100))
    train_log = TrainLogger(log_interval=2, max_update=4, logger=logger, clock=lambda: float(next(ticks)))
    try:
        for update in range(1, 5):
            train_log.update(update, loss_sum_nats=100.0, ntokens=1000, lr=0.1, gnorm=1.0)
    finally:
        logger.removeHandler(handler)
    rates = interval_rates(capsys.readouterr().err, OURS_WPS)
    assert len(rates) == 2 and all(rate > 0 for rate in rates)


def test_fairseq_bench_reads_the_wps_of_fairseq_trains_log_lines():
    from adaptive_lm_ds.commands.bench_vs_fairseq import FAIRSEQ_WPS, interval_rates

    line = (  # printed by the oracle's fairseq-train --cpu (log_format simple), 2026-12-06
        "2026-12-06 01:36:35 | INFO | train_inner | epoch 001:     20 / 106 loss=14.49, ppl=23011.7, "
        "wps=3326.5, ups=1.62, wpb=2048, bsz=4, num_updates=20, lr=0.2, gnorm=12.277, clip=100, train_wall=6, wall=14"
    )
    assert interval_rates(line + "\n" + line.replace("3326.5", "3376"), FAIRSEQ_WPS) == [3326.5, 3376.0]

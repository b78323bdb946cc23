"""adaptive-lm-plot-curves: the validation curve and the speed of a run, read from either program's log lines."""

import logging
import math

import pytest

from adaptive_lm_ds import logs
from adaptive_lm_ds.commands.plot_curves import draw, read_run_log, valid_points
from adaptive_lm_ds.metrics_log import TrainLogger
from tests.test_errors import _ends_in_one_line

# Printed by the oracle's fairseq-train --cpu --log-format simple --validate-interval-updates 100, 2026-12-06
FAIRSEQ_LINES = """\
2026-12-06 02:30:35 | INFO | train_inner | epoch 001:     20 / 425 loss=15.359, ppl=42017, wps=767.9, ups=1.5, \
wpb=512, bsz=2, num_updates=20, lr=0.2, gnorm=11.407, clip=100, train_wall=14, wall=15
2026-12-06 02:30:37 | INFO | train_inner | epoch 001:     40 / 425 loss=12.845, ppl=7357, wps=3649, ups=7.13, \
wpb=512, bsz=2, num_updates=40, lr=0.4, gnorm=6.338, clip=100, train_wall=3, wall=18
2026-12-06 02:30:50 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-12-06 02:30:50 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 10.677 | ppl 1637.11 | wps 16900.2 \
| wpb 510.8 | bsz 2 | num_updates 100
2026-12-06 02:31:15 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 9.628 | ppl 791.27 | wps 18295 \
| wpb 510.8 | bsz 2 | num_updates 200
"""


def _our_log(log_format: str, capsys) -> str:
    """Our trainer's console lines (logs.FORMAT): 4 updates of 500 tokens logged every 2, validations at 2 and 4."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(logs.FORMAT, logs.DATE_FORMAT))
    logger = logging.getLogger(f"adaptive_lm_ds.test_plot_curves_{log_format}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    now = [0.0]  # updates 1-2 take 1 s each, updates 3-4 take 2 s each: 1000 tokens in 2 s, then in 4 s
    train_log = TrainLogger(log_interval=2, log_format=log_format, logger=logger, clock=lambda: now[0])
    try:
        for update in range(1, 5):
            now[0] += 1.0 if update <= 2 else 2.0
            train_log.update(update, loss_sum_nats=500.0, ntokens=500, lr=0.1, gnorm=1.0)
            if update % 2 == 0:  # 2 nats per token: ppl e**2
                train_log.log_valid(update, loss_sum_nats=2.0 * 500 * update, ntokens=500 * update)
    finally:
        logger.removeHandler(handler)
    return capsys.readouterr().err


def test_fairseq_train_validation_lines_give_update_and_ppl():
    assert valid_points(FAIRSEQ_LINES) == [(100, 1637.11), (200, 791.27)]


def test_fairseq_train_interval_lines_give_the_speed_after_the_first_interval():
    run = read_run_log("fairseq-train", FAIRSEQ_LINES)
    assert run.interval_wps == [767.9, 3649.0]
    assert run.tokens_per_s == pytest.approx(3649.0)


@pytest.mark.parametrize("log_format", ["simple", "json"])
def test_our_trainers_lines_give_update_ppl_and_speed(log_format, capsys):
    run = read_run_log("ours", _our_log(log_format, capsys))
    assert [u for u, _ in run.valid] == [2, 4]
    ppl = math.exp(2.0)  # the validation loss above; simple lines round it to 4 significant digits
    assert all(p == pytest.approx(ppl, rel=1e-3) for _, p in run.valid)
    assert run.interval_wps == pytest.approx([1000 / 2, 1000 / 4])


def test_a_repeated_validation_keeps_its_last_line_in_update_order():
    later = FAIRSEQ_LINES.splitlines()[3].replace("1637.11", "1500.5")
    assert valid_points(FAIRSEQ_LINES + later) == [(100, 1500.5), (200, 791.27)]


def test_draw_writes_the_curve_and_the_speed_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="drawing needs matplotlib (pip install -e '.[dev]')")
    runs = [read_run_log("fairseq-train", FAIRSEQ_LINES), read_run_log("ours", _our_log("simple", capsys))]
    paths = draw(runs, tmp_path, "c")
    assert [p.name for p in paths] == ["c_valid_ppl.png", "c_tokens_per_s.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_tokens_per_s.png", "c_valid_ppl.png"]  # no temp left


def test_a_log_without_validation_lines_is_one_line_and_exit_2(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text(FAIRSEQ_LINES.split("2026-12-06 02:30:50")[0])
    line = _ends_in_one_line("adaptive-lm-plot-curves", ["--log", f"fs={log}", "--out-dir", str(tmp_path)], capsys)
    assert line.endswith(f"{log} has no validation lines of fairseq-train or adaptive-lm-train (--log-format simple)")

"""TrainLogger: interval averaging, the JSON/simple lines, ETA, and tensorboard event files read back."""

import datetime
import io
import json
import logging
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adaptive_lm_ds import logs
from adaptive_lm_ds.metrics_log import LogConfigError, TrainLogger


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# Two updates per interval: (loss_sum_nats, ntokens, lr, gnorm, loss_scale)
UPDATES = [(700.0, 100, 1e-3, 0.5, 128.0), (2100.0, 300, 2e-3, 1.5, 64.0)]


def _logger(**kwargs):
    clock = FakeClock()
    stream = io.StringIO()
    lines = logging.getLogger(f"adaptive_lm_ds.train.test{id(stream)}")  # a logger of its own: only its lines
    lines.propagate = False
    lines.setLevel(logging.INFO)
    lines.addHandler(logging.StreamHandler(stream))
    logger = TrainLogger(log_interval=2, max_update=10, logger=lines, clock=clock, **kwargs)
    return logger, clock, stream


def _feed(logger, clock, first_update=1, seconds_per_update=0.5):
    record = None
    for offset, (loss_sum, ntokens, lr, gnorm, scale) in enumerate(UPDATES):
        clock.now += seconds_per_update
        record = logger.update(first_update + offset, loss_sum, ntokens, lr, gnorm, loss_scale=scale, mfu=0.25)
    return record


def test_interval_metrics_are_token_weighted_base2():
    logger, clock, _ = _logger()
    record = _feed(logger, clock)
    expected_loss = (700.0 + 2100.0) / (100 + 300) / math.log(2)  # not the mean of per-update losses
    assert record["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert record["ppl"] == pytest.approx(2**expected_loss, rel=1e-12)
    assert record["lr"] == 2e-3  # the latest lr
    assert record["gnorm"] == pytest.approx(1.0)
    assert record["loss_scale"] == pytest.approx(96.0)
    assert record["wps"] == pytest.approx(400 / 1.0)  # 400 tokens in the 1 s interval
    assert record["eta_s"] == pytest.approx(8 * 0.5)  # 8 updates left at 2 updates/s


def test_nothing_is_emitted_between_intervals():
    logger, clock, stream = _logger()
    assert logger.update(1, 1.0, 1, 1e-3, 0.1) is None
    assert stream.getvalue() == ""


def test_json_line_has_fairseq_keys():
    logger, clock, stream = _logger(log_format="json")
    _feed(logger, clock)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert {"update", "loss", "ppl", "lr", "gnorm", "wps"} <= record.keys()
    assert record["update"] == 2
    assert record["ppl"] == pytest.approx(2 ** record["loss"], rel=1e-12)


def test_simple_line_is_readable_with_eta():
    logger, clock, stream = _logger(log_format="simple")
    _feed(logger, clock)
    line = stream.getvalue().strip()
    assert line.startswith("epoch 001 | update 2 / 10 | loss=")
    for key in ("ppl=", "lr=0.002", "gnorm=1,", "wps=400"):
        assert key in line
    assert line.endswith("ETA 0:00:04")


def test_non_zero_rank_is_silent(tmp_path):
    logger, clock, stream = _logger(rank=1, tensorboard_logdir=str(tmp_path / "tb"))
    _feed(logger, clock)
    logger.close()
    assert stream.getvalue() == ""
    assert not (tmp_path / "tb").exists()


def test_tensorboard_events_hold_the_written_scalars(tmp_path):
    logdir = tmp_path / "tb"
    logger, clock, _ = _logger(tensorboard_logdir=str(logdir))
    record = _feed(logger, clock)
    valid = logger.log_valid(2, loss_sum_nats=690.0, ntokens=200)
    logger.write_scalars("train", {"memory_allocated_gb": 1.5, "step_time": 0.5}, 2)
    logger.close()

    events = EventAccumulator(str(logdir))
    events.Reload()
    written = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    expected = {f"train/{k}": record[k] for k in ("loss", "ppl", "lr", "gnorm", "wps", "loss_scale", "mfu")}
    expected.update({"valid/loss": valid["loss"], "valid/ppl": valid["ppl"]})
    expected.update({"train/memory_allocated_gb": 1.5, "train/step_time": 0.5})
    for tag, value in expected.items():
        assert tag in written, f"{tag} missing from {sorted(written)}"
        (event,) = written[tag]
        assert event.step == 2
        assert event.value == pytest.approx(value, rel=1e-6)  # event files store float32


def test_unknown_log_format_is_rejected():
    with pytest.raises(LogConfigError, match="--log-format 'tqdm'"):
        TrainLogger(log_format="tqdm")


@pytest.fixture
def root_logging():
    """Put the root logger back as it was (the test empties it, as a program starts)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_every_line_carries_fairseqs_timestamp_level_and_logger(root_logging):
    stream = io.StringIO()
    logging.getLogger().handlers[:] = []  # as a program starts (pytest's capture handlers are back after)
    logs.configure(stream)
    before = datetime.datetime.now().replace(microsecond=0)
    logger, clock, _ = _logger()
    logger.logger = logging.getLogger("adaptive_lm_ds.train")  # the programs' logger, through the one config
    _feed(logger, clock)
    after = datetime.datetime.now()
    (line,) = stream.getvalue().splitlines()
    stamp, level, name, message = line.split(" | ", 3)
    assert before <= datetime.datetime.strptime(stamp, logs.DATE_FORMAT) <= after
    assert (level, name) == ("INFO", "adaptive_lm_ds.train") and message.startswith("epoch 001 | update 2 / 10 |")
    assert logs.message(line) == message

"""Learning curves from training logs: validation perplexity against updates, and tokens/s per run.

    adaptive-lm-plot-curves --log fairseq-train=fairseq.log --log "ours TP1=tp1.log" \\
        --log "ours TP2xPP2=tp2pp2.log" --out-dir docs --prefix curves

Each ``--log NAME=FILE`` is the console output of one run, of ``fairseq-train --log-format simple`` or of
``adaptive-lm-train`` (``--log-format simple`` or ``json``); the program that wrote a line is told from the
line itself, so one log may come from either. From each log it reads the validation perplexity at every
validation (``valid_points``) and the tokens per second of every training log interval
(``interval_rates``; a run's speed is their steady-state mean, :func:`steady_wps`, the first interval
holding the warm-up). It writes ``PREFIX_valid_ppl.png`` (one curve per log) and ``PREFIX_tokens_per_s.png``
(one bar per log) into ``--out-dir`` and prints a table of the numbers it drew.

Drawing needs matplotlib, a development dependency (``pip install -e '.[dev]'``); parsing does not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from adaptive_lm_ds import cli, logs
from adaptive_lm_ds.commands.bench_vs_fairseq import FAIRSEQ_WPS, OURS_WPS, interval_rates, steady_wps
from adaptive_lm_ds.errors import UserError

# fairseq-train's validation line (logger "valid"): "... | valid | epoch 001 | valid on 'valid' subset | loss 9.628
# | ppl 791.27 | ... | num_updates 200"
FAIRSEQ_VALID = re.compile(r"\| valid \| epoch \d+ \| valid on '[^']+' subset \| (?P<fields>.*)$")
# ours (metrics_log.TrainLogger.log_valid), simple format: "valid | epoch 001 | update 200 | loss=9.6, ppl=791.3"
OURS_VALID = re.compile(r"^valid \| epoch \d+ \| update (?P<update>\d+) \| (?P<fields>.*)$")


@dataclass
class RunLog:
    """What one run's log says: validation ``(update, ppl)`` points in update order, interval tokens/s."""

    name: str
    valid: list[tuple[int, float]] = field(default_factory=list)
    interval_wps: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return steady_wps(self.interval_wps)


def _valid_point(line: str) -> tuple[int, float] | None:
    """``(update, ppl)`` of one validation line of either program, else None."""
    if m := FAIRSEQ_VALID.search(line):
        fields = dict(part.split(" ", 1) for part in m.group("fields").split(" | "))
        return int(fields["num_updates"]), float(fields["ppl"])
    text = logs.message(line)
    if m := OURS_VALID.match(text):
        fields = dict(part.split("=", 1) for part in m.group("fields").split(", "))
        return int(m.group("update")), float(fields["ppl"])
    if text.startswith("{") and '"valid_on"' in text:  # ours, --log-format json
        record = json.loads(text)
        return int(record["update"]), float(record["ppl"])
    return None


def _json_wps(output: str) -> list[float]:
    """The wps of our ``--log-format json`` training lines (validation records carry no wps)."""
    rates = []
    for line in output.splitlines():
        text = logs.message(line)
        if text.startswith("{") and '"wps"' in text and '"valid_on"' not in text:
            wps = json.loads(text)["wps"]
            if wps is not None:
                rates.append(float(wps))
    return rates


def valid_points(output: str) -> list[tuple[int, float]]:
    """Every validation of a log as ``(update, ppl)``, by update; a repeated update keeps its last line."""
    points = dict(point for line in output.splitlines() if (point := _valid_point(line)))
    return sorted(points.items())


def read_run_log(name: str, output: str) -> RunLog:
    """A run's curve and interval speeds from its console output (either program, module docstring)."""
    rates = interval_rates(output, FAIRSEQ_WPS) or interval_rates(output, OURS_WPS) or _json_wps(output)
    return RunLog(name, valid_points(output), rates)


def _parse_log_flag(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--log {value!r}: expected NAME=FILE, e.g. --log fairseq-train=fairseq.log")
    return name, Path(path)


def _load(value: str) -> RunLog:
    name, path = _parse_log_flag(value)
    try:
        output = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"--log {name}={path}: cannot read it ({err.strerror})") from None
    run = read_run_log(name, output)
    if not run.valid:
        raise UserError(f"{path} has no validation lines of fairseq-train or adaptive-lm-train (--log-format simple)")
    if len(run.interval_wps) < 2:
        raise UserError(f"{path} has fewer than two training log intervals: lower --log-interval in that run")
    return run


def draw(runs: list[RunLog], out_dir: Path, prefix: str) -> list[Path]:
    """The two PNGs (module docstring); each written under a temporary name, then renamed into place."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("drawing needs matplotlib (a development dependency): pip install -e '.[dev]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        updates, ppl = zip(*run.valid)
        ax.plot(updates, ppl, marker="o", markersize=3, label=run.name)
    ax.set(xlabel="updates", ylabel="validation perplexity", yscale="log", title="Validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    curve = _save(fig, out_dir / f"{prefix}_valid_ppl.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    speeds = [run.tokens_per_s for run in runs]
    bars = ax.bar([run.name for run in runs], speeds)
    ax.bar_label(bars, labels=[f"{s:,.0f}" for s in speeds])
    ax.set(ylabel="tokens/s (steady state)", title="Training speed")
    speed = _save(fig, out_dir / f"{prefix}_tokens_per_s.png")
    plt.close("all")
    return [curve, speed]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
    return path


def table(runs: list[RunLog]) -> str:
    """A Markdown table of what was drawn: per run the first and last validation, the steady tokens/s."""
    rows = ["| run | first valid (update: ppl) | last valid (update: ppl) | tokens/s |", "|---|---|---|---|"]
    for run in runs:
        (u0, p0), (u1, p1) = run.valid[0], run.valid[-1]
        rows.append(f"| {run.name} | {u0}: {p0:.2f} | {u1}: {p1:.2f} | {run.tokens_per_s:,.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(description=__doc__)
    p.add_argument("--log", action="append", required=True, metavar="NAME=FILE", help="one run's log (repeat)")
    p.add_argument("--out-dir", default="docs", help="where the PNGs go (default docs)")
    p.add_argument("--prefix", default="curves", help="file name prefix (default curves)")
    args = p.parse_args(argv)
    runs = [_load(value) for value in args.log]
    paths = draw(runs, Path(args.out_dir), args.prefix)
    print(table(runs))
    print("wrote " + ", ".join(map(str, paths)))
    return 0

"""The command-line programs: their names, their one start-up, and the argparse set-up they share.

Every program is a ``main(argv=None)`` in ``adaptive_lm_ds/commands/``; :data:`PROGRAMS` names them.
They run as ``[project.scripts]`` entry points (``adaptive-lm-eval ...``, the functions at the end of this
module), as ``python -m adaptive_lm_ds PROGRAM ...`` (how ranks of a program are launched), or through
the checkout's ``tools/*.py`` and ``launchers/*.py`` shims (``python tools/eval_lm.py``, ``deepspeed
launchers/train_gbw.py``). All three go through :func:`run`, which does the start-up before the
program's module is imported; importing the library itself changes nothing global:

* megatron-core announces on import that the optional Transformer Engine / Apex kernels are absent;
  this project does not use them, so the notice is filtered (it would print on every rank of every run);
* DeepSpeed warns ``Setting accelerator to CPU`` when it imports on a machine without a GPU and without
  ``DS_ACCELERATOR``: on every ``--help`` and every program, most of which never use an accelerator.
  The warning is dropped (:data:`DEEPSPEED_QUIET`, a filter on DeepSpeed's logger, which DeepSpeed
  keeps when it configures it); ``DS_ACCELERATOR`` still chooses, and the CPU is still what it picks;
* one logging configuration, fairseq's line format with a timestamp (:mod:`adaptive_lm_ds.logs`);
* DeepSpeed's JIT-built ops go to this venv, never the user-wide ``~/.cache/torch_extensions``
  (:func:`adaptive_lm_ds.ds_runtime.configure_environment`), for this process and the ranks it launches.

Parsers:

* ``allow_abbrev=False``: argparse's prefix matching silently turned fairseq's ``--save-interval 1``
  (epochs) into ``--save-interval-updates 1``; only exact flags are accepted.
* ``--local_rank`` / ``--local-rank`` accepted and hidden: ``deepspeed`` passes ``--local_rank=N`` to
  every rank, ``torchrun`` sets ``LOCAL_RANK`` instead; the value is not used (the environment is).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from dataclasses import field
from typing import Any

from adaptive_lm_ds.errors import UserError

# entry point name -> "module:function" under adaptive_lm_ds (pyproject's [project.scripts] lists the
# same names, pointing at the functions at the end of this module; tests/test_entry_points.py keeps them equal)
PROGRAMS = {
    "adaptive-lm-train": "commands.train:main",
    "adaptive-lm-train-wiki103": "commands.train:wiki103",
    "adaptive-lm-train-gbw": "commands.train:gbw",
    "adaptive-lm-eval": "commands.eval_lm:main",
    "adaptive-lm-generate": "commands.generate:main",
    "adaptive-lm-preprocess": "commands.preprocess_data:main",
    "adaptive-lm-convert": "commands.convert_fairseq_ckpt:main",
    "adaptive-lm-write-layout": "formats.layout_checkpoint:main",
    "adaptive-lm-export": "commands.export_checkpoint:main",
    "adaptive-lm-memory-plan": "commands.memory_plan:main",
    "adaptive-lm-step-plan": "commands.step_plan:main",
    "adaptive-lm-model-summary": "commands.model_summary:main",
    "adaptive-lm-synthetic-corpus": "commands.make_synthetic_corpus:main",
    "adaptive-lm-bench-train": "commands.bench_train:main",
    "adaptive-lm-bench-data": "commands.bench_data:main",
    "adaptive-lm-bench-generate": "commands.bench_generate:main",
    "adaptive-lm-bench-softmax": "commands.bench_adaptive_softmax:main",
    "adaptive-lm-bench-projection": "commands.bench_projection:main",
    "adaptive-lm-bench-vs-fairseq": "commands.bench_vs_fairseq:main",
    "adaptive-lm-plot-curves": "commands.plot_curves:main",
    "adaptive-lm-build-ops": "ds_runtime:main",
}
USER_ERROR_EXIT = 2  # argparse's: a bad flag and a bad input file end the same way
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C
_running: str | None = None  # the program :func:`run` started: its parsers are named after it
QUIET = (
    ".*Transformer Engine and Apex are not installed.*",
    ".*imports from `dynamic_context.py` will be removed.*",
)


DEEPSPEED_QUIET = ("Setting accelerator to CPU",)  # message prefixes dropped from the "DeepSpeed" logger


class _DeepSpeedQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DEEPSPEED_QUIET)


def start_up() -> None:
    """What every program does first (module docstring): filter megatron's import notices and DeepSpeed's
    accelerator notice, keep DeepSpeed's built ops in the venv."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message)
    deepspeed_logger = logging.getLogger("DeepSpeed")  # deepspeed/utils/logging.py's name, before its import
    if not any(isinstance(f, _DeepSpeedQuiet) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_DeepSpeedQuiet())
    from adaptive_lm_ds import ds_runtime, logs

    logs.configure()
    ds_runtime.configure_environment()


def run(program: str, argv: list[str] | None = None) -> int:
    """:func:`start_up`, then the program's ``main(argv)``; returns its exit code (``None`` counts as 0).

    The one error boundary of every program: a :class:`~adaptive_lm_ds.errors.UserError` raised anywhere
    in it ends the program with one line ``PROGRAM: error: MESSAGE`` on stderr (argparse's own format, so
    a bad flag and a bad file read alike) and exit code :data:`USER_ERROR_EXIT`, no traceback. On several
    ranks (``RANK`` set by the launcher) see :func:`refuse`: an error every rank agrees on is printed once,
    one raised on a rank alone by that rank; the programs that init a process group shut it down on the way out.
    """
    name = program if program in PROGRAMS else f"adaptive-lm-{program}"  # the short name also does
    if name not in PROGRAMS:
        return refuse("adaptive_lm_ds", f"unknown program {program!r}; choose one of: {', '.join(PROGRAMS)}")
    global _running
    start_up()
    module, function = PROGRAMS[name].split(":")
    main = getattr(importlib.import_module(f"adaptive_lm_ds.{module}"), function)
    outer, _running = _running, name
    try:
        return main(argv) or 0
    except UserError as err:
        return refuse(name, str(err), same_on_every_rank=err.same_on_every_rank)
    except KeyboardInterrupt:  # Ctrl-C outside training's update loop (which saves and stops on its own)
        return refuse(name, "interrupted (Ctrl-C) before it finished", INTERRUPTED_EXIT)
    finally:
        _running = outer


def refuse(program: str, message: str, exit_code: int = USER_ERROR_EXIT, same_on_every_rank: bool = True) -> int:
    """Print ``PROGRAM: error: MESSAGE`` and return ``exit_code``.

    Rank 0 prints it. A non-zero rank prints it too, as ``PROGRAM: error: [rank N] MESSAGE``, unless
    ``same_on_every_rank`` (the unknown program name and Ctrl-C reach every rank alike; a
    :class:`~adaptive_lm_ds.errors.UserError` says so itself): an error raised on rank 1 alone (its
    shard, a file unreadable there) would otherwise end the job with exit code 2 and no line at all,
    and an agreed one would be printed once per rank.
    """
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    elif not same_on_every_rank:
        print(f"{program}: error: [rank {rank}] {message}", file=sys.stderr, flush=True)
    return exit_code


def parser(description: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """``argparse.ArgumentParser`` without abbreviations (``RawDescriptionHelpFormatter`` by default)."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    if _running is not None:  # usage and errors name the installed program, not the shim that started it
        kwargs.setdefault("prog", _running)
    return argparse.ArgumentParser(description=description, allow_abbrev=False, **kwargs)


def rank_parser(description: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """:func:`parser` for a program that may run on several ranks: takes either launcher's ``--local_rank``."""
    p = parser(description, **kwargs)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def flag(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field that is one ``--flag``: its default, its ``--help`` text and argparse extras (choices,
    type), read by the parser builders (training/config.py) so flags map onto fields one to one."""
    return field(default=default, metadata={"help": help, **kw})


MODEL_SOURCE_HELP = (
    "a consolidated model folder, a training checkpoint (a --save-dir or one of its tags, any layout) or a fairseq .pt"
)


def add_model_source(parser: argparse.ArgumentParser, required: bool = True, help: str = MODEL_SOURCE_HELP) -> None:
    """``--path``: the model a program loads (``inference.loading.load_model_source`` takes any of them)."""
    parser.add_argument("--path", required=required, help=help)


def add_layout_arguments(
    parser: argparse.ArgumentParser, pipeline: bool = True, description: str = "the ranks' layout, as in training"
) -> argparse._ArgumentGroup:
    """The layout flags, named and defaulted as training's (``--tensor-model-parallel-size``, and
    ``--pipeline-model-parallel-size`` unless ``pipeline=False``), in one help group."""
    group = parser.add_argument_group("layout", description)
    group.add_argument("--tensor-model-parallel-size", type=int, default=1, help="tensor-parallel ranks per model")
    if pipeline:
        group.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="pipeline stages per model")
    return group


def add_progress_bar_flag(parser: argparse.ArgumentParser) -> None:
    """fairseq's ``--no-progress-bar``; :func:`shows_progress` reads it."""
    parser.add_argument(
        "--no-progress-bar", action="store_true", help="no progress bar on stderr (none when it is not a terminal)"
    )


def shows_progress(args: argparse.Namespace, lead: bool = True) -> bool:
    """A progress bar on stderr: only where someone watches it (a terminal), on the lead rank, unless
    ``--no-progress-bar``; logs and pipes get none."""
    return lead and not args.no_progress_bar and sys.stderr.isatty()


def _program(name: str):
    def entry() -> int:
        return run(name, sys.argv[1:])

    entry.__doc__ = f"The ``{name}`` command: adaptive_lm_ds.{PROGRAMS[name]}."
    return entry


# [project.scripts] targets, one per program.
train = _program("adaptive-lm-train")
train_wiki103 = _program("adaptive-lm-train-wiki103")
train_gbw = _program("adaptive-lm-train-gbw")
eval_lm = _program("adaptive-lm-eval")
generate = _program("adaptive-lm-generate")
preprocess = _program("adaptive-lm-preprocess")
convert = _program("adaptive-lm-convert")
write_layout = _program("adaptive-lm-write-layout")
export = _program("adaptive-lm-export")
memory_plan = _program("adaptive-lm-memory-plan")
step_plan = _program("adaptive-lm-step-plan")
model_summary = _program("adaptive-lm-model-summary")
synthetic_corpus = _program("adaptive-lm-synthetic-corpus")
bench_train = _program("adaptive-lm-bench-train")
bench_data = _program("adaptive-lm-bench-data")
bench_generate = _program("adaptive-lm-bench-generate")
bench_softmax = _program("adaptive-lm-bench-softmax")
bench_projection = _program("adaptive-lm-bench-projection")
bench_vs_fairseq = _program("adaptive-lm-bench-vs-fairseq")
plot_curves = _program("adaptive-lm-plot-curves")
build_ops = _program("adaptive-lm-build-ops")

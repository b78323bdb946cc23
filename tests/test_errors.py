"""User errors share one base class, and every program's end at one boundary (cli.run): one line
``PROGRAM: error: MESSAGE``, exit code 2, no traceback."""

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import adaptive_lm_ds
from adaptive_lm_ds import cli
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.testing.distributed import rank_env
from tests.oracle import REPO

ROOT = Path(adaptive_lm_ds.__file__).parent

# Errors that are not the user's to fix: a wrong call or a failing test harness shows its traceback.
NOT_USER_ERRORS = {"ParallelNotInitialized", "RankFailure", "RankTimeout"}


def _package_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(adaptive_lm_ds.__path__, "adaptive_lm_ds."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_class_of_the_package_is_a_user_error_or_named_as_not_one():
    errors = _package_exceptions()
    assert len(errors) > 10  # the walk found the package's error classes
    stray = sorted(path for path, cls in errors.items() if cls.__name__ not in NOT_USER_ERRORS | {"UserError"}
                   and not issubclass(cls, UserError))  # fmt: skip
    assert stray == []


def test_error_class_names_are_unique():
    names = [cls.__name__ for cls in _package_exceptions().values()]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def _ends_in_one_line(program: str, argv: list[str], capsys) -> str:
    """``cli.run(program, argv)`` must return 2 with one stderr line ``PROGRAM: error: ...``; that line."""
    assert cli.run(program, argv) == cli.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err[-2000:]
    return lines[0]


@pytest.mark.parametrize("program", sorted(cli.PROGRAMS))
def test_every_programs_user_error_ends_at_the_one_boundary(program, monkeypatch, capsys):
    module, function = cli.PROGRAMS[program].split(":")

    def fails(argv):
        raise UserError("the input is bad; pass a good one")

    monkeypatch.setattr(importlib.import_module(f"adaptive_lm_ds.{module}"), function, fails)
    line = _ends_in_one_line(program, [], capsys)
    assert line == f"{program}: error: the input is bad; pass a good one"


def test_ctrl_c_outside_training_is_one_line_and_exit_code_130(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("adaptive_lm_ds.commands.eval_lm"), "main", interrupted)
    assert cli.run("adaptive-lm-eval", []) == cli.INTERRUPTED_EXIT == 128 + 2  # SIGINT
    assert capsys.readouterr().err == "adaptive-lm-eval: error: interrupted (Ctrl-C) before it finished\n"


def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    """Real command lines that each program must refuse (a missing file, an impossible layout or setting)."""
    missing = str(tmp / "missing")
    return {
        "adaptive-lm-train": ["--preset", "tiny"],  # no --data
        "adaptive-lm-eval": ["--path", missing, "--data", str(tmp)],
        "adaptive-lm-generate": ["--path", missing, "--input", missing],
        "adaptive-lm-preprocess": ["--trainpref", missing, "--destdir", str(tmp / "bin")],
        "adaptive-lm-convert": ["--input", missing, "--output", str(tmp / "out")],
        "adaptive-lm-export": ["--checkpoint", missing, "--output", str(tmp / "out")],
        "adaptive-lm-memory-plan": ["--preset", "tiny", "--vocab-size", "400", "--tensor-model-parallel-size", "3"],
        "adaptive-lm-model-summary": ["--preset", "tiny", "--vocab-size", "400", "--tensor-model-parallel-size", "3"],
        "adaptive-lm-step-plan": ["--preset", "tiny", "--vocab-size", "400", "--device", "custom"],
    }


@pytest.mark.parametrize("program", sorted(_bad_inputs(Path("."))))
def test_a_real_bad_input_is_one_line_and_exit_code_2(program, tmp_path, capsys):
    _ends_in_one_line(program, _bad_inputs(tmp_path)[program], capsys)


def test_no_program_catches_user_errors_itself():
    """The boundary is cli.run alone: the programs raise, they do not print or exit on a UserError."""
    sources = [*(ROOT / "commands").glob("*.py"), ROOT / "training" / "entry.py", ROOT / "ds_runtime.py"]
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sources
        for line in path.read_text().splitlines()
        if "except UserError" in line or 'SystemExit(f"error' in line or 'SystemExit("error' in line
    ]
    assert offenders == []


def test_the_command_line_ends_in_one_line_without_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "adaptive_lm_ds", "adaptive-lm-eval", "--path", str(tmp_path / "missing"),
         "--data", str(tmp_path)],
        cwd=REPO, env=rank_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("adaptive-lm-eval: error: ") and "missing" in line

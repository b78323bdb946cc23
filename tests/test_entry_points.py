"""The programs: one table names them (cli.PROGRAMS), pyproject registers the same names, the checkout's
shims run them, recipes are data behind --recipe, and importing the library changes nothing global."""

import ast
import importlib
import subprocess
import sys

import pytest
import tomllib

from adaptive_lm_ds import cli
from adaptive_lm_ds.testing.distributed import rank_env
from adaptive_lm_ds.training.config import config_from_args, parse_args
from adaptive_lm_ds.training.recipes import RECIPES
from tests.oracle import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
SHIMS = sorted([*(REPO / "tools").glob("*.py"), *(REPO / "launchers").glob("*.py")])


def _shim_entry(path) -> str | None:
    """The ``cli.NAME`` a shim calls (None for a script that is not a shim)."""
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
    names = [
        c.func.attr for c in calls if isinstance(c.func, ast.Attribute) and getattr(c.func.value, "id", "") == "cli"
    ]
    return names[0] if names else None


def test_pyproject_registers_every_program_and_only_those():
    assert set(SCRIPTS) == set(cli.PROGRAMS)


@pytest.mark.parametrize("name", sorted(cli.PROGRAMS))
def test_each_entry_point_runs_its_own_program(name, monkeypatch):
    module, attr = SCRIPTS[name].split(":")
    entry = getattr(importlib.import_module(module), attr)
    monkeypatch.setattr(cli, "run", lambda program, argv: program)
    assert entry() == name
    target, function = cli.PROGRAMS[name].split(":")
    assert callable(getattr(importlib.import_module(f"adaptive_lm_ds.{target}"), function))


def test_tools_and_launchers_are_shims_over_the_entry_points():
    shims = {path.relative_to(REPO).as_posix(): _shim_entry(path) for path in SHIMS}
    registered = {target.split(":")[1] for target in SCRIPTS.values()}
    assert shims.pop("tools/demo.py") is None  # `make demo` drives the checkout's own commands
    assert all(entry in registered for entry in shims.values()), shims
    for path in SHIMS:
        assert "sys.path" not in path.read_text(), path


def test_a_recipe_program_starts_from_its_recipe_and_flags_still_win():
    gbw = config_from_args(parse_args(["--data", "d"], recipe="gbw"))
    assert gbw.run.preset == "gbw_huge" and gbw.data.sample_break_mode == "packed"
    cfg = config_from_args(parse_args(["--data", "d", "--recipe", "wiki103", "--update-freq", "1"]))
    assert cfg.run.preset == "wiki103" and cfg.data.tokens_per_sample == 3072 and cfg.data.update_freq == 1
    plain = config_from_args(parse_args(["--data", "d"]))
    assert plain.run.preset != "wiki103" and plain.data.tokens_per_sample != 3072


def test_every_recipe_value_reaches_the_config():
    for name, recipe in RECIPES.items():
        cfg = config_from_args(parse_args(["--data", "d", "--recipe", name]))
        fields = {k: v for section in vars(cfg).values() for k, v in vars(section).items()}
        assert {k: fields[k] for k in recipe.defaults} == recipe.defaults, name


def test_recipe_choices_are_the_tables_keys(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--recipe", "nope"])
    assert f"choose from {', '.join(map(repr, RECIPES))}" in capsys.readouterr().err


def _python(code: str) -> str:
    env = {k: v for k, v in rank_env().items() if k != "TORCH_EXTENSIONS_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_importing_the_library_sets_no_environment_and_no_warning_filter():
    imports = "import adaptive_lm_ds.training.trainer, adaptive_lm_ds.inference, adaptive_lm_ds.commands.eval_lm"
    got = _python(
        f"import os, warnings; {imports}; "
        "print('TORCH_EXTENSIONS_DIR' in os.environ, any('Transformer Engine' in str(f[1]) for f in warnings.filters))"
    )
    assert got == "False False"


def test_a_program_starts_with_the_ops_in_the_venv_and_megatrons_notices_quiet():
    out = subprocess.run(
        [sys.executable, "tools/model_summary.py", "--preset", "tiny", "--vocab-size", "400"],
        cwd=REPO, env=rank_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Transformer Engine" not in out.stderr
    got = _python("from adaptive_lm_ds import cli, ds_runtime; import os; cli.start_up(); "
                  "print(os.environ['TORCH_EXTENSIONS_DIR'] == str(ds_runtime.extensions_dir()))")  # fmt: skip
    assert got == "True"


def test_help_of_every_program_prints_its_usage_and_no_deepspeed_notice():
    """On a machine without a GPU and without DS_ACCELERATOR, DeepSpeed warns "Setting accelerator to CPU"
    on import; no program's ``--help`` (the first program to import DeepSpeed included) shows it."""
    code = (
        "import contextlib, io, sys\nfrom adaptive_lm_ds import cli\n"
        "for name in cli.PROGRAMS:\n"
        "    with contextlib.suppress(SystemExit):\n"
        "        cli.run(name, ['--help'])\n"
    )
    env = {k: v for k, v in rank_env().items() if k != "DS_ACCELERATOR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(f"usage: {name} " in out.stdout for name in cli.PROGRAMS)
    assert "Setting accelerator" not in out.stdout + out.stderr and "WARNING" not in out.stdout + out.stderr
    assert out.stderr == ""


def test_the_layout_and_model_source_flags_are_declared_once():
    """Every program takes them from cli.add_layout_arguments / cli.add_model_source (training's own come from
    its config fields), so their names, defaults and help never drift apart."""
    flags = ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--path")
    declared = [
        path.relative_to(REPO).as_posix()
        for path in (REPO / "adaptive_lm_ds").rglob("*.py")
        for line in path.read_text().splitlines()
        if "add_argument(" in line and any(f'"{flag}"' in line for flag in flags)
    ]
    assert declared == ["adaptive_lm_ds/cli.py"] * len(flags)

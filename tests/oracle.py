"""The real fairseq, built from ../shared/oracles/fairseq, as a test oracle.

`.ci/run` builds it into `.fairseq-oracle/` (git-ignored) when ../shared has the kit;
`FAIRSEQ_ORACLE` points elsewhere. Tests that need it take the `fairseq_oracle` fixture, which
skips with the reason where it is absent (a user's machine without ../shared).

Shared oracle inputs (session-scoped, made once): `oracle_data_bin`, fairseq-preprocess's own
binarisation of small WikiText-2 slices with fixture A's dictionary, and `oracle_python_script`, the
path of a script under tests/oracle_scripts/ to run with the oracle's interpreter.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTIVE_LM_SHARED", REPO.parent / "shared"))
FIXTURE_A = SHARED / "fixtures" / "fairseq-wiki103-tiny"
SCRIPTS = Path(__file__).resolve().parent / "oracle_scripts"
ORACLE_DIR = Path(os.environ.get("FAIRSEQ_ORACLE", REPO / ".fairseq-oracle"))


@dataclass(frozen=True)
class FairseqOracle:
    """Runs fairseq's console scripts and its interpreter from the oracle's venv, one CPU thread."""

    root: Path

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def run(self, script: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        """Run `fairseq-train`/`fairseq-eval-lm`/... or `python`; return stdout+stderr, fail loudly."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DS_ACCELERATOR")}
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.run(
            [str(self.bin(script)), *map(str, args)],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise AssertionError(f"fairseq oracle {script} failed (exit {proc.returncode}):\n{output[-4000:]}")
        return output


def find_oracle() -> FairseqOracle | None:
    return FairseqOracle(ORACLE_DIR) if (ORACLE_DIR / "bin" / "fairseq-train").exists() else None


@pytest.fixture(scope="session")
def fairseq_oracle() -> FairseqOracle:
    oracle = find_oracle()
    if oracle is None:
        pytest.skip(
            f"the fairseq oracle is absent at {ORACLE_DIR}: build it with "
            "../shared/oracles/fairseq/setup.sh .fairseq-oracle (CI does when ../shared has the kit)"
        )
    return oracle


def shared_or_skip(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the ../shared fixtures that CI provides")
    return path


# (split, source file under shared/data/wikitext-2, first line, line count): ~8-20k tokens each
ORACLE_SPLITS = (("train", "valid.txt", 0, 400), ("valid", "test.txt", 0, 120), ("test", "test.txt", 120, 240))


@pytest.fixture(scope="session")
def oracle_data_bin(fairseq_oracle, tmp_path_factory) -> Path:
    """fairseq-preprocess (the oracle) of WikiText-2 slices with fixture A's dict: train/valid/test."""
    text_dir = shared_or_skip(SHARED / "data" / "wikitext-2")
    fixture = shared_or_skip(FIXTURE_A)
    root = tmp_path_factory.mktemp("oracle-data")
    prefixes = {}
    for split, source, first, count in ORACLE_SPLITS:
        lines = (text_dir / source).read_text(encoding="utf-8").splitlines(keepends=True)[first : first + count]
        (root / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
        prefixes[split] = root / f"{split}.txt"  # fairseq reads PREF itself when no language is given
    fairseq_oracle.run(
        "fairseq-preprocess", "--only-source", "--srcdict", fixture / "dict.txt",
        "--trainpref", prefixes["train"], "--validpref", prefixes["valid"], "--testpref", prefixes["test"],
        "--destdir", root / "data-bin", "--workers", "1",
    )  # fmt: skip
    return root / "data-bin"


def tool_main(name: str):
    """``main`` of the program behind ``tools/NAME.py`` (``adaptive_lm_ds/commands/NAME.py``)."""
    import importlib

    return importlib.import_module(f"adaptive_lm_ds.commands.{name}").main


def fairseq_arch_flags(cfg) -> list[str]:
    """fairseq-train model flags that build ``cfg`` (a tied adaptive ModelConfig) from transformer_lm_wiki103."""
    cut = ",".join(map(str, cfg.adaptive_softmax_cutoffs))
    return [
        "--arch", "transformer_lm_wiki103", "--decoder-layers", cfg.num_layers, "--decoder-embed-dim", cfg.embed_dim,
        "--decoder-input-dim", cfg.embed_dim, "--decoder-output-dim", cfg.embed_dim,
        "--decoder-ffn-embed-dim", cfg.ffn_dim, "--decoder-attention-heads", cfg.num_heads,
        "--adaptive-input-cutoff", cut, "--adaptive-softmax-cutoff", cut,
        "--adaptive-input-factor", cfg.adaptive_input_factor, "--adaptive-softmax-factor", cfg.adaptive_softmax_factor,
    ]  # fmt: skip

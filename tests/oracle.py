"""The real fairseq, built from ../shared/oracles/fairseq, as a test oracle.

`.ci/run` builds it into `.fairseq-oracle/` (git-ignored) when ../shared has the kit;
`FAIRSEQ_ORACLE` points elsewhere. Tests that need it take the `fairseq_oracle` fixture, which
skips with the reason where it is absent (a user's machine without ../shared).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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

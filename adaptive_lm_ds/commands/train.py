"""``adaptive-lm-train [--recipe wiki103|gbw]`` and the recipe programs ``adaptive-lm-train-wiki103`` /
``adaptive-lm-train-gbw`` (training/recipes.py holds the recipes; training/entry.py trains)."""

from __future__ import annotations

from adaptive_lm_ds.training import entry


def main(argv: list[str] | None = None) -> int:
    return entry.main(argv)


def wiki103(argv: list[str] | None = None) -> int:
    return entry.main(argv, recipe="wiki103")


def gbw(argv: list[str] | None = None) -> int:
    return entry.main(argv, recipe="gbw")

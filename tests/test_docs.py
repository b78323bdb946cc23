"""The documentation names only things that exist: files and headings it links to, programs, DeepSpeed JSONs."""

import re

import pytest

from adaptive_lm_ds import cli
from tests.oracle import REPO

DOCS = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text_outside_code_blocks(path) -> str:
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path) -> set[str]:
    headings = re.findall(r"^#+ (.*)$", _text_outside_code_blocks(path), flags=re.M)
    return {_anchor(h) for h in headings}


def test_anchor_is_githubs():
    assert _anchor("Training criteria: `--criterion adaptive_loss` and `--criterion nll`") == (
        "training-criteria---criterion-adaptive_loss-and---criterion-nll"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_a_file_and_its_heading(doc):
    for target in LINK.findall(_text_outside_code_blocks(doc)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name}: {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{doc.name}: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_program_named_is_installed(doc):
    named = set(re.findall(r"\badaptive-lm-[a-z0-9]+(?:-[a-z0-9]+)*", doc.read_text(encoding="utf-8")))
    assert named - {"adaptive-lm-ds"} <= set(cli.PROGRAMS)


def test_docs_name_programs_not_the_checkouts_shims():
    shims = {p.stem for p in (REPO / "tools").glob("*.py")} - {"demo"}
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.startswith("$ "):  # a program's output quoted as it printed it
                continue
            assert not [s for s in re.findall(r"tools/(\w+)\.py", line) if s in shims], f"{doc.name}: {line}"


def test_every_deepspeed_json_named_exists():
    sources = [*DOCS, *(REPO / "adaptive_lm_ds").rglob("*.py")]
    named = {m for path in sources for m in re.findall(r"ds_configs/(\w+\.json)", path.read_text(encoding="utf-8"))}
    assert named and {name for name in named if not (REPO / "ds_configs" / name).exists()} == set()

"""Small real training runs for the tests: a data-bin, initial weights, and a rank-side train function.

Test scaffolding, not product: the ranks of :func:`adaptive_lm_ds.testing.run_on_ranks` import these
functions as ``tests.training_runs`` (the harness puts the repository root on their PYTHONPATH).
Every layout test trains from the *same* consolidated weights (``--init-from``) on the same data,
so a layout's losses can be compared number for number with a single-process run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from adaptive_lm_ds.synthetic_corpus import CorpusSpec, generate_corpus


def make_data_bin(dest: str | Path, vocab_size: int = 400, train_tokens: int = 30_000, seed: int = 7) -> Path:
    """Synthetic corpus -> fairseq data-bin (dict.txt, train/valid/test .bin/.idx) in ``dest``."""
    from adaptive_lm_ds.data.preprocess import binarize_file, build_dictionary

    dest = Path(dest)
    text = dest / "text"
    spec = CorpusSpec(
        vocab_size=vocab_size, num_classes=8, favourites_per_class=40, train_tokens=train_tokens,
        valid_tokens=3_000, test_tokens=3_000, seed=seed,
    )  # fmt: skip
    generate_corpus(text, spec)
    dictionary = build_dictionary([str(text / "train.txt")])
    dictionary.save(dest / "dict.txt")
    for split in ("train", "valid", "test"):
        binarize_file(str(text / f"{split}.txt"), dictionary, str(dest / split), progress=False)
    return dest


def save_initial_weights(data_bin: str, out_dir: str, preset: str = "tiny", seed: int = 3, **overrides) -> str:
    """Rank-side (world of one): build the one-piece model for ``data_bin``'s vocabulary and save it."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.data import Dictionary
    from adaptive_lm_ds.formats.consolidated import save_consolidated
    from adaptive_lm_ds.model.lm import AdaptiveLM

    dictionary = Dictionary.load(Path(data_bin) / "dict.txt")
    cfg = get_preset(preset, vocab_size=len(dictionary), **overrides)
    with parallel.single_process(seed):
        model = AdaptiveLM(cfg)
        save_consolidated(out_dir, cfg, dict(model.named_parameters()), dictionary)
    return out_dir


def train_on_rank(argv: list[str], report_tied: bool = False, poison_updates: tuple[int, ...] = ()) -> dict:
    """Rank-side: run the trainer with launcher flags ``argv``; return its per-update history.

    ``history``: one dict per applied update (:class:`~adaptive_lm_ds.training.trainer.UpdateRecord`'s
    fields), recorded through the trainer's ``on_update`` hook, the one its logger listens on.

    ``report_tied``: also return this rank's tied tensors (pipeline ends) by local name.
    ``poison_updates``: attempts (1-based, counting skipped ones) whose loss is made NaN, to test
    the skip-and-abort path (one-piece model only).
    """
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.training.config import build_parser, config_from_args
    from adaptive_lm_ds.training.engine import plain_parameters
    from adaptive_lm_ds.training.trainer import Trainer

    trainer = Trainer(config_from_args(build_parser("test").parse_args(argv)))
    history: list[dict] = []
    trainer.on_update.append(lambda record: history.append(dataclasses.asdict(record)))
    if poison_updates:
        _poison(trainer, set(poison_updates))
    error = None
    try:
        summary = trainer.run()
    except Exception as e:  # noqa: BLE001 - reported to the test, which decides
        summary, error = None, f"{type(e).__name__}: {e}"
    out = {
        "history": history, "summary": summary, "layout": trainer.ctx.layout, "error": error,
        "skipped_overflow": trainer.skipped_overflow,
    }  # fmt: skip
    module = trainer.engine.module
    out["blocks"] = sorted({int(n.split(".")[1]) for n in plain_parameters(module) if n.startswith("layers.")})
    if report_tied and hasattr(module, "tied_modules"):
        from adaptive_lm_ds.training.pipeline import TIED_KEY

        tied = module.tied_modules[TIED_KEY] if TIED_KEY in module.tied_modules else None
        out["tied"] = {n: p.detach().clone() for n, p in tied.named_parameters() if ".bands." in n} if tied else {}
    parallel.destroy_parallel()
    return out


def train_runs_on_rank(argvs: list[list[str]], report_tied: bool = False) -> list[dict]:
    """Rank-side: :func:`train_on_rank` for each ``argv`` in turn, in this one process group (one launch)."""
    return [train_on_rank(argv, report_tied) for argv in argvs]


def _poison(trainer, attempts: set[int]) -> None:
    """Make the loss NaN on the given update attempts (the model's forward is wrapped)."""
    module = trainer.engine.module
    forward = module.forward
    counter = {"attempt": 0}
    train_step = trainer.stepper.train_step

    def counted_step(batches):
        counter["attempt"] += 1
        return train_step(batches)

    def poisoned(*args, **kwargs):
        loss, n = forward(*args, **kwargs)
        return (loss * float("nan"), n) if module.training and counter["attempt"] in attempts else (loss, n)

    trainer.stepper.train_step = counted_step
    module.forward = poisoned


def per_token_losses(result: dict) -> torch.Tensor:
    return torch.tensor([h["loss_sum"] / h["ntokens"] for h in result["history"]], dtype=torch.float64)


def grad_norms(result: dict) -> torch.Tensor:
    """The logged pre-clip global gradient norm of each update."""
    return torch.tensor([h["gnorm"] for h in result["history"]], dtype=torch.float64)

"""Convert a fairseq ``transformer_lm`` checkpoint to our consolidated model folder, or back.

    adaptive-lm-convert --input model.pt [--dict dict.txt] --output DIR [--verify]
    adaptive-lm-convert --to-fairseq --input DIR --output model.pt [--verify]
    adaptive-lm-convert --to-fairseq --input SAVE_DIR_OR_TAG --output checkpoint_last.pt [--verify]

The architecture comes from the checkpoint (its ``cfg``/``args`` and tensor shapes), never a preset.
The fairseq file is read with ``torch.load(weights_only=True)`` and an explicit allowlist. Training
starts from the consolidated folder in any layout (``--init-from DIR``); with
``--tensor-model-parallel-size``/``--pipeline-model-parallel-size`` the tool also writes
``DIR/deepspeed/checkpoint_0``, a DeepSpeed checkpoint of that layout that training resumes from
(``--init-from DIR --save-dir DIR/deepspeed``).

Outputs never destroy data: an existing output folder is replaced only when it is empty or a previous
output of this tool, an existing ``.pt`` not at all (``--force`` for either), and never when it holds
an input. ``--to-fairseq`` writes the model's dictionary only where ``--save-dict`` says.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from adaptive_lm_ds import cli
from adaptive_lm_ds.checkpoint.reader import is_training_checkpoint, open_checkpoint
from adaptive_lm_ds.config import ModelConfig
from adaptive_lm_ds.data import Dictionary
from adaptive_lm_ds.data.fingerprint import check_data_bin_dictionary
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.formats.consolidated import (
    check_model_output,
    load_consolidated,
    save_consolidated,
)
from adaptive_lm_ds.interop import (
    load_fairseq_checkpoint,
    save_fairseq_checkpoint,
)
from adaptive_lm_ds.interop.fairseq_cfg import fairseq_archs
from adaptive_lm_ds.interop.fairseq_training_state import (
    fairseq_iterator_state,
    read_fairseq_training_state,
    write_fairseq_training_checkpoint,
)
from adaptive_lm_ds.launch import run_program_on_ranks
from adaptive_lm_ds.outputs import check_output_file

WRITER = "convert_fairseq_ckpt"
LAYOUT_DIR = "deepspeed"  # OUTPUT/deepspeed: the training checkpoint for a TP x PP layout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(description=__doc__)
    p.add_argument(
        "--input",
        required=True,
        help="fairseq .pt (or, with --to-fairseq, a consolidated folder or a training checkpoint: save dir or tag)",
    )
    p.add_argument("--output", required=True, help="consolidated folder (or, with --to-fairseq, a .pt file)")
    p.add_argument("--dict", help="fairseq dict.txt to store with the model (default: dict.txt beside --input)")
    p.add_argument("--to-fairseq", action="store_true", help="convert a consolidated folder to a fairseq checkpoint")
    p.add_argument("--save-dict", help="with --to-fairseq: also write the model's dict.txt to this file")
    p.add_argument("--force", action="store_true", help="replace an existing output that this tool did not write")
    p.add_argument(
        "--arch",
        choices=fairseq_archs(),
        help="with --to-fairseq: the fairseq arch to record in cfg.model._name "
        "(default: transformer_lm_wiki103 for tied adaptive models, else transformer_lm)",
    )
    cli.add_layout_arguments(
        p, description="also write OUTPUT/deepspeed: a training checkpoint for this TP x PP layout"
    )
    p.add_argument(
        "--master-port", type=int, help="rendezvous port of the ranks writing the layout (default: a free one)"
    )
    p.add_argument("--verify", action="store_true", help="reload the output and check it (and run the model once)")
    return p.parse_args(argv)


def _dict_path(args: argparse.Namespace) -> Path:
    return Path(args.dict) if args.dict else Path(args.input).parent / "dict.txt"


def _dictionary(args: argparse.Namespace, vocab_size: int) -> Dictionary | None:
    path = _dict_path(args)
    if not path.is_file():
        if args.dict:
            raise UserError(f"--dict {path} does not exist")
        return None
    dictionary = Dictionary.load(path)
    check_data_bin_dictionary(path, dictionary)  # a data-bin's dict.txt: the one its splits were made with
    if len(dictionary) != vocab_size:
        raise UserError(
            f"{path} has {len(dictionary)} types (with the 4 specials) but the model has {vocab_size}; "
            "pass the dict.txt the model was trained with"
        )
    return dictionary


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise UserError(f"verification failed: {what} does not reload with identical tensors")


def _check_model_runs(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> float:
    """Build the model at TP = 1, load ``state`` and check one forward pass normalises; max |logsumexp|."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.inference.loading import build_model

    with parallel.single_process(), torch.no_grad():
        model = build_model(cfg, state)
        device = next(model.parameters()).device
        tokens = torch.randint(
            4, cfg.vocab_size, (1, min(16, cfg.max_positions)), generator=torch.Generator().manual_seed(0)
        ).to(device)
        table = model.gather_log_probs(model.log_probs(tokens))
        error = float(torch.logsumexp(table.double(), -1).abs().max())
    if not error < 1e-4:
        raise UserError(f"verification failed: log-probs do not normalise (max |logsumexp| {error:.2e})")
    return error


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = args.tensor_model_parallel_size * args.pipeline_model_parallel_size > 1
    if layout and args.to_fairseq:
        raise UserError("--to-fairseq writes one fairseq file; drop the TP/PP sizes")
    if args.save_dict and not args.to_fairseq:
        raise UserError("--save-dict goes with --to-fairseq (the consolidated folder holds its dict.txt)")
    if args.to_fairseq:
        for out in (args.output, args.save_dict):
            if out:
                check_output_file(out, force=args.force, inputs=[args.input])
        if is_training_checkpoint(args.input):
            return training_checkpoint_to_fairseq(args)
        cfg, state, dictionary = load_consolidated(args.input)
        if args.save_dict and dictionary is None:
            raise UserError(f"{args.input} holds no dict.txt, so --save-dict has nothing to write")
        data = str(Path(args.save_dict).parent) if args.save_dict else ""  # cfg.task.data: dict.txt's folder
        save_fairseq_checkpoint(args.output, cfg, state, data=data, arch=args.arch)
        if args.save_dict:
            dictionary.save(args.save_dict)
        if args.verify:
            _same(state, load_fairseq_checkpoint(args.output)[1], args.output)
    else:
        policy = dict(writer=WRITER, force=args.force, inputs=[args.input, _dict_path(args)])
        check_model_output(args.output, own_entries=(LAYOUT_DIR,), **policy)
        cfg, state = load_fairseq_checkpoint(args.input)
        dictionary = _dictionary(args, cfg.vocab_size)
        extra = {"converted_from": str(args.input)}
        save_consolidated(args.output, cfg, state, dictionary, extra, own_entries=(LAYOUT_DIR,), **policy)
        if args.verify:
            _same(state, load_consolidated(args.output)[1], args.output)
            error = _check_model_runs(cfg, state)
            print(f"verified: reloads identically; max |logsumexp| of a forward pass {error:.1e}")
    params = sum(t.numel() for t in state.values())
    print(f"wrote {args.output}: {params:,} parameters, V={cfg.vocab_size}, {cfg.num_layers} layers, d={cfg.embed_dim}")
    if layout:
        write_deepspeed_layout(args)


def training_checkpoint_to_fairseq(args: argparse.Namespace) -> None:
    """A training checkpoint of any layout as a fairseq checkpoint that ``fairseq-train --restore-file``
    continues: weights, optimizer state (its hyper-parameters from the run's config), ``num_updates``, data
    position. With ``--verify`` the file is read back and compared tensor for tensor."""
    from adaptive_lm_ds.formats.state_adapter import read_training_state

    tag_dir, record = open_checkpoint(args.input)
    if record.optimizer_fresh or record.run_config is None:
        raise UserError(f"{tag_dir} holds no optimizer history (a converted model); convert its weights instead")
    cfg, state = record.model_config(), read_training_state(tag_dir)
    iterator = fairseq_iterator_state(record.data)
    dictionary = Dictionary.load(tag_dir / "dict.txt") if (tag_dir / "dict.txt").is_file() else None
    if args.save_dict and dictionary is None:
        raise UserError(f"{tag_dir} holds no dict.txt, so --save-dict has nothing to write")
    data = str(Path(args.save_dict).parent) if args.save_dict else ""
    write_fairseq_training_checkpoint(args.output, cfg, state, optimizer_settings=record.run_config["optim"],
                                      iterator=iterator, data=data, arch=args.arch)  # fmt: skip
    if args.save_dict:
        dictionary.save(args.save_dict)
    if args.verify:
        _, again = read_fairseq_training_state(args.output)
        for key, tensors in (("weights", state.weights), *state.moments.items()):
            theirs = again.weights if key == "weights" else again.moments[key]
            _same({n: torch.as_tensor(t).float() for n, t in tensors.items()}, dict(theirs), f"{args.output} ({key})")
    print(f"wrote {args.output}: {tag_dir} at update {state.num_updates}, {state.optimizer} state, fairseq epoch "
          f"{iterator['epoch']} after {iterator['iterations_in_epoch']} batches per rank")  # fmt: skip


def write_deepspeed_layout(args: argparse.Namespace) -> None:
    """``OUTPUT/deepspeed/checkpoint_0``: the converted model as a training checkpoint for the TP x PP layout."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    save_dir = Path(args.output) / LAYOUT_DIR
    layout_args = ["--consolidated", args.output, "--save-dir", save_dir, "--tensor-model-parallel-size", tp,
                   "--pipeline-model-parallel-size", pp]  # fmt: skip
    if run_program_on_ranks("adaptive-lm-write-layout", layout_args, tp * pp, args.master_port) != 0:
        raise UserError(f"writing the TP{tp} x PP{pp} DeepSpeed checkpoint failed (see above)")
    print(f"training resumes from it with: --init-from {args.output} --save-dir {save_dir} "
          f"--tensor-model-parallel-size {tp} --pipeline-model-parallel-size {pp}")  # fmt: skip

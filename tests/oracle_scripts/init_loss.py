"""Run with the fairseq oracle's python: fairseq's freshly initialised ``transformer_lm`` loss on a batch.

    python init_loss.py REQUEST.json OUT.json

REQUEST: ``{"model": cfg["model"] (fairseq names), "vocab_size": V, "seeds": [...], "tokens": [[...]],
"targets": [[...]]}``. For each seed fairseq builds the model exactly as ``fairseq-train`` does
(``torch.manual_seed(seed)`` then ``TransformerLanguageModel.build_model``) over a synthetic
dictionary of V symbols (4 specials + ``w4 .. w{V-1}``), and scores ``targets`` after ``tokens`` in
eval mode (no dropout). OUT: ``{"nll": [mean negative log-likelihood in nats per seed],
"std": {parameter name: std} of the first seed}``.
"""

import json
import sys
from argparse import Namespace

import torch
from fairseq.data import Dictionary
from fairseq.models.transformer_lm import TransformerLanguageModel

request = json.load(open(sys.argv[1]))
dictionary = Dictionary()
for i in range(len(dictionary), request["vocab_size"]):
    dictionary.add_symbol(f"w{i}")
assert len(dictionary) == request["vocab_size"]
task = Namespace(source_dictionary=dictionary, target_dictionary=dictionary)
tokens, targets = torch.tensor(request["tokens"]), torch.tensor(request["targets"])
out = {"nll": [], "std": {}}
for index, seed in enumerate(request["seeds"]):
    torch.manual_seed(seed)
    model = TransformerLanguageModel.build_model(Namespace(**request["model"]), task).eval()
    with torch.no_grad():
        net_output = model(tokens)
        lprobs = model.get_normalized_probs(net_output, log_probs=True, sample={"target": targets})
        out["nll"].append(-lprobs.gather(-1, targets.unsqueeze(-1)).mean().item())
    if index == 0:
        out["std"] = {name: p.float().std().item() for name, p in model.named_parameters() if p.numel() > 1}
    del model, net_output, lprobs
json.dump(out, open(sys.argv[2], "w"))

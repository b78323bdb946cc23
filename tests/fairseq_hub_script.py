"""Run by the fairseq oracle's own Python (tests/oracle.py), not by pytest: fairseq's hub on a model folder.

    python fairseq_hub_script.py MODEL_DIR CHECKPOINT REQUESTS.json OUT.json

REQUESTS: {"score": [sentences], "sample": [{"prefix": str, **hub.sample kwargs}]}. OUT: per sentence its
tokens and positional_scores (``hub.score``); per sample request the text (``hub.sample``) and the
tokens/positional_scores of fairseq's hypothesis (``hub.generate``).
"""

import json
import sys

import torch
from fairseq.models.transformer_lm import TransformerLanguageModel

model_dir, checkpoint, requests_path, out_path = sys.argv[1:5]
requests = json.load(open(requests_path))
lm = TransformerLanguageModel.from_pretrained(model_dir, checkpoint, ".").eval()
out = {"score": [], "sample": []}
with torch.no_grad():
    for sentence in requests["score"]:
        r = lm.score(sentence)
        out["score"].append({"tokens": r["tokens"].tolist(), "positional_scores": r["positional_scores"].tolist()})
    for req in requests["sample"]:
        kwargs = {k: v for k, v in req.items() if k != "prefix"}
        hypo = lm.generate(lm.encode(req["prefix"]), beam=1, **kwargs)[0]
        text = lm.sample(req["prefix"], beam=1, **kwargs)
        out["sample"].append(
            {"text": text, "tokens": hypo["tokens"].tolist(), "positional_scores": hypo["positional_scores"].tolist()}
        )
json.dump(out, open(out_path, "w"))

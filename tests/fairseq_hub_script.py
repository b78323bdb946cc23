"""Run by the fairseq oracle's own Python (tests/oracle.py), not by pytest: fairseq's hub on a model folder.

    python fairseq_hub_script.py MODEL_DIR CHECKPOINT REQUESTS.json OUT.json

REQUESTS: {"tokenizer": None or "moses", "score": [sentences], "sample": [{"prefix": str, "beam": N,
**hub.sample kwargs}], "batch": [{"prompts": [str], "beam": N, **kwargs}]} (beam default 1).
OUT: per sentence its tokens and positional_scores (``hub.score``); per sample request the text
(``hub.sample``), the tokens/positional_scores of fairseq's best hypothesis (``hub.generate``) and every
hypothesis' tokens and score, best first; per batch request the texts of ``hub.sample(prompts)``
(fairseq decodes them as one batch).
"""

import json
import sys

import torch
from fairseq.models.transformer_lm import TransformerLanguageModel

model_dir, checkpoint, requests_path, out_path = sys.argv[1:5]
requests = json.load(open(requests_path))
lm = TransformerLanguageModel.from_pretrained(model_dir, checkpoint, ".", tokenizer=requests.get("tokenizer")).eval()
out = {"score": [], "sample": [], "batch": []}
with torch.no_grad():
    for sentence in requests["score"]:
        r = lm.score(sentence)
        out["score"].append({"tokens": r["tokens"].tolist(), "positional_scores": r["positional_scores"].tolist()})
    for req in requests["sample"]:
        kwargs = {k: v for k, v in req.items() if k not in ("prefix", "beam")}
        beam = req.get("beam", 1)
        hypos = lm.generate(lm.encode(req["prefix"]), beam=beam, **kwargs)
        text = lm.sample(req["prefix"], beam=beam, **kwargs)
        best = hypos[0]
        out["sample"].append(
            {
                "text": text,
                "tokens": best["tokens"].tolist(),
                "positional_scores": best["positional_scores"].tolist(),
                "hypos": [{"tokens": h["tokens"].tolist(), "score": float(h["score"])} for h in hypos],
            }
        )
    for req in requests.get("batch", []):
        kwargs = {k: v for k, v in req.items() if k not in ("prompts", "beam")}
        out["batch"].append(lm.sample(req["prompts"], beam=req.get("beam", 1), **kwargs))
json.dump(out, open(out_path, "w"))

"""Run with the fairseq oracle's python: fairseq-eval-lm's own ``main`` once per argument list, results as JSON.

    python eval_lm_json.py OUT.json RUNS.json      # RUNS.json: {"name": [fairseq-eval-lm args...], ...}

The same path as the console script (``options.get_eval_lm_parser`` -> ``convert_namespace_to_omegaconf``
-> ``fairseq_cli.eval_lm.main``), in one interpreter so that fairseq starts once; ``main`` returns the
loss (base 2) and perplexity at full precision, which the console line rounds to 4 and 2 decimals.
"""

import json
import sys

from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli.eval_lm import main

out_path, runs_path = sys.argv[1:3]
results = {}
for name, argv in json.loads(open(runs_path).read()).items():
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), argv)
    result = main(convert_namespace_to_omegaconf(args))
    results[name] = {"loss_base2": float(result["loss"]), "perplexity": float(result["perplexity"])}
with open(out_path, "w") as f:
    json.dump(results, f, indent=1)

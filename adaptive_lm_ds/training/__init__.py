"""Training: optimisers, fairseq LR schedules, metrics logging (engine setup lives in sibling modules).

Kept import-light on purpose: import the submodule you need, e.g.
``from adaptive_lm_ds.training.optim import NAG``.
"""

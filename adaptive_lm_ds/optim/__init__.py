"""Optimisation maths: fairseq's optimisers (NAG, Adam) and LR schedules, stepped once per update.

Import-light: ``from adaptive_lm_ds.optim.optimizers import NAG``.
"""

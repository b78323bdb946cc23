"""The training run: config, DeepSpeed engine and pipeline, start-up checks, signals, the update loop.

Optimisation maths lives in :mod:`adaptive_lm_ds.optim`, the training log in
:mod:`adaptive_lm_ds.metrics_log`, checkpoint formats in :mod:`adaptive_lm_ds.formats` and
:mod:`adaptive_lm_ds.checkpoint`. Kept import-light: import the submodule you need.
"""

"""Model and checkpoint formats and conversions between them.

``consolidated``: the one-piece model folder (``model.safetensors`` + ``config.json``);
``export``: a training checkpoint of any layout -> consolidated folder;
``layout_checkpoint``: consolidated folder -> training checkpoint at a layout;
``state_adapter``: the one adapter between one-piece weights and optimizer state and any layout
(``state_reader``, ``state_writer``); ``training_state``: the layout-free state. fairseq's ``.pt`` lives in
:mod:`adaptive_lm_ds.interop`; the training checkpoint record in :mod:`adaptive_lm_ds.checkpoint`.
"""

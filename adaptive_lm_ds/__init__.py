"""adaptive-lm-ds: adaptive-input transformer LMs (Baevski & Auli 2019) on DeepSpeed + megatron-core.

Importing the package changes nothing global (no warning filters, no environment variables): the programs
do their start-up themselves (:func:`adaptive_lm_ds.cli.start_up`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from adaptive_lm_ds import LanguageModel`` without importing torch for every submodule user."""
    if name == "LanguageModel":
        from adaptive_lm_ds.inference import LanguageModel

        return LanguageModel
    raise AttributeError(f"module 'adaptive_lm_ds' has no attribute {name!r}")

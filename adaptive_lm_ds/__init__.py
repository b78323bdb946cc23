"""adaptive-lm-ds: adaptive-input transformer LMs (Baevski & Auli 2019) on DeepSpeed + megatron-core."""

import warnings

__version__ = "0.1.0"

# megatron-core announces on import that the optional Transformer Engine / Apex kernels are absent;
# this project does not use them, so the notice is noise on every command.
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
warnings.filterwarnings("ignore", message=".*imports from `dynamic_context.py` will be removed.*")

# DeepSpeed's JIT-built ops go to this venv, never the user-wide ~/.cache/torch_extensions (ds_runtime.py).
from adaptive_lm_ds.ds_runtime import configure_environment  # noqa: E402

configure_environment()


def __getattr__(name: str):
    """``from adaptive_lm_ds import LanguageModel`` without importing torch for every submodule user."""
    if name == "LanguageModel":
        from adaptive_lm_ds.inference import LanguageModel

        return LanguageModel
    raise AttributeError(f"module 'adaptive_lm_ds' has no attribute {name!r}")

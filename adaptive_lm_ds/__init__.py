"""adaptive-lm-ds: adaptive-input transformer LMs (Baevski & Auli 2019) on DeepSpeed + megatron-core."""

__version__ = "0.1.0"

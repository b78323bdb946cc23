"""Tools run where DeepSpeed's accelerator says: one place picks the device and the backend.

Reference: ``deepspeed.accelerator.get_accelerator()`` (``DS_ACCELERATOR``, else its detection).
On a CPU machine that is the CPU and gloo; on a GPU, ``cuda:LOCAL_RANK`` and nccl (not run here).
"""

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from adaptive_lm_ds import parallel
from adaptive_lm_ds.config import tiny
from adaptive_lm_ds.formats.state_adapter import load_weights
from adaptive_lm_ds.model import AdaptiveLM


def test_device_and_backend_are_the_accelerators():
    expected = "cpu" if get_accelerator().device_name() == "cpu" else get_accelerator().device_name(0)
    assert parallel.accelerator_device() == torch.device(expected)
    assert parallel.accelerator_backend() == get_accelerator().communication_backend_name()


def test_single_process_group_uses_the_accelerators_backend():
    with parallel.single_process(seed=0):
        assert dist.get_backend() == parallel.accelerator_backend()


def test_eval_tool_puts_the_model_on_the_accelerator():
    from adaptive_lm_ds.inference.loading import build_model

    cfg = tiny(200)
    with parallel.single_process(seed=0):
        state = {name: p.detach().clone() for name, p in AdaptiveLM(cfg).named_parameters()}
        model = build_model(cfg, state, pp=1)
        assert {p.device for p in model.parameters()} == {parallel.accelerator_device()}
        reference = AdaptiveLM(cfg).eval()
        load_weights(reference, state)
        tokens = torch.tensor([[5, 6, 7, 8]])
        device = parallel.accelerator_device()
        got = model.target_log_probs(tokens.to(device), (tokens + 1).to(device))
        torch.testing.assert_close(got.cpu(), reference.target_log_probs(tokens, tokens + 1))

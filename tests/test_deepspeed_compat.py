"""Every adaptation of DeepSpeed's private API is checked at start-up and observably in effect.

The start-up check (``deepspeed_compat.check_supported``) must fire, with one line naming the supported
version, when the installed DeepSpeed is another version or lacks any attribute we patch; and on a real
engine built by ``build_engine`` each adaptation must change what DeepSpeed does: the fp32 engine reports
the reference pre-clip norm and never runs its own clipping, the checkpoint engine reading the files is
ours, the backward pass does no all-reduce at one rank, and a pipeline stage keeps only its tied tensors
out of the norm. (The shm buffer names are checked against DeepSpeed's source here, and their removal by
tests/test_ds_runtime.py.)
"""

import pytest
import torch

from adaptive_lm_ds import deepspeed_compat
from adaptive_lm_ds.testing import run_on_ranks

CLIP = 0.1  # active: the tiny model's gradient norm is ~5-20


@pytest.fixture
def fresh_check():
    deepspeed_compat._check_supported_once.cache_clear()
    yield
    deepspeed_compat._check_supported_once.cache_clear()


def test_the_installed_deepspeed_passes_the_start_up_check(fresh_check):
    deepspeed_compat.check_supported()


def test_another_deepspeed_version_is_refused_naming_the_supported_one():
    with pytest.raises(deepspeed_compat.DeepSpeedCompatError) as err:
        deepspeed_compat.check_version("0.18.0")
    assert f"deepspeed=={deepspeed_compat.SUPPORTED_VERSION}" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_local_build_of_the_supported_release_passes():
    deepspeed_compat.check_version(f"{deepspeed_compat.SUPPORTED_VERSION}+a1b2c3d")


def _patched_classes():
    import deepspeed
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    return [
        *((deepspeed.DeepSpeedEngine, n) for n in deepspeed_compat.ENGINE_METHODS),
        *((PipelineModule, n) for n in deepspeed_compat.PIPELINE_METHODS),
        *((TorchCheckpointEngine, n) for n in deepspeed_compat.CHECKPOINT_ENGINE_METHODS),
        *((DeepSpeedZeroOptimizer, n) for n in deepspeed_compat.FRAGMENT_OPTIMIZER_METHODS),
        *((BF16_Optimizer, n) for n in deepspeed_compat.FRAGMENT_OPTIMIZER_METHODS),
        *((DeepSpeedZeroOptimizer_Stage3, n) for n in deepspeed_compat.ZERO3_OPTIMIZER_METHODS),
    ]


PATCHED_CLASS_NAMES = (
    deepspeed_compat.ENGINE_METHODS + deepspeed_compat.PIPELINE_METHODS + deepspeed_compat.CHECKPOINT_ENGINE_METHODS
    + 2 * deepspeed_compat.FRAGMENT_OPTIMIZER_METHODS + deepspeed_compat.ZERO3_OPTIMIZER_METHODS
)  # fmt: skip


@pytest.mark.parametrize("index", range(len(PATCHED_CLASS_NAMES)))
def test_a_missing_patched_method_stops_the_start_up_naming_it(index, fresh_check, monkeypatch):
    owner, name = _patched_classes()[index]
    monkeypatch.delattr(owner, name)
    with pytest.raises(deepspeed_compat.DeepSpeedCompatError, match=f"{owner.__name__}.{name}") as err:
        deepspeed_compat.check_supported()
    assert deepspeed_compat.SUPPORTED_VERSION in str(err.value)


def test_another_shm_buffer_name_stops_the_start_up(fresh_check, monkeypatch):
    monkeypatch.setattr(deepspeed_compat, "SHM_PREFIX", "deepspeed_shm_buffer")
    with pytest.raises(deepspeed_compat.DeepSpeedCompatError, match="shm buffers"):
        deepspeed_compat.check_supported()


@pytest.mark.parametrize("name", deepspeed_compat.ENGINE_ATTRIBUTES)
def test_an_engine_without_a_patched_attribute_is_refused(name):
    class Engine:  # what a DeepSpeed that renamed the attribute would build
        pass

    engine = Engine()
    for other in deepspeed_compat.ENGINE_ATTRIBUTES:
        if other != name:
            setattr(engine, other, None)
    with pytest.raises(deepspeed_compat.DeepSpeedCompatError, match=f"Engine.{name}"):
        deepspeed_compat.check_engine(engine)


@pytest.mark.parametrize("name", deepspeed_compat.FRAGMENT_OPTIMIZER_ATTRIBUTES)
def test_a_zero_optimizer_without_a_fragment_attribute_is_refused(name):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    class Engine:  # a real engine's attributes, over a ZeRO optimizer whose __init__ no longer sets ``name``
        optimizer = object.__new__(DeepSpeedZeroOptimizer)

    engine = Engine()
    for attribute in deepspeed_compat.ENGINE_ATTRIBUTES:
        setattr(engine, attribute, None)
    with pytest.raises(deepspeed_compat.DeepSpeedCompatError, match=f"DeepSpeedZeroOptimizer.{name}") as err:
        deepspeed_compat.check_engine(engine)
    assert deepspeed_compat.SUPPORTED_VERSION in str(err.value)


def _real_engine_observations(clip: float) -> dict:
    """Rank-side (world of one): one update of the tiny model through ``build_engine`` (plain fp32 engine)
    beside the same update by hand (torch's clip_grad_norm_, the same optimizer); what DeepSpeed did."""
    import deepspeed.runtime.engine as ds_engine

    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.checkpoint.safe_files import SafeCheckpointEngine
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.model.lm import AdaptiveLM
    from adaptive_lm_ds.optim.config import OptimConfig
    from adaptive_lm_ds.optim.optimizers import build_optimizer
    from adaptive_lm_ds.training.ds_config import DeepSpeedPlan, complete_ds_config
    from adaptive_lm_ds.training.engine_build import build_engine

    parallel.init_process_group(world_of_one=True)
    parallel.initialize_parallel(parallel.ParallelDims(), seed=5)
    try:
        cfg = get_preset("tiny", vocab_size=150)
        model, reference = AdaptiveLM(cfg), AdaptiveLM(cfg)
        reference.load_state_dict(model.state_dict())
        optim = OptimConfig(optimizer="nag", lr=0.5, momentum=0.99)
        plan = DeepSpeedPlan.resolve(complete_ds_config({}, micro=3, gas=1, dp_size=1, pp_size=1, clip_norm=clip))
        built = build_engine(model, optim, plan, packed=False)
        engine = built.engine
        calls = {"ds_clip": 0, "allreduce": 0, "safe_load": 0}
        ds_clip = ds_engine.clip_grad_norm_

        def counted_clip(*args, **kwargs):
            calls["ds_clip"] += 1
            return ds_clip(*args, **kwargs)

        ds_engine.clip_grad_norm_ = counted_clip
        allreduce = engine.allreduce_gradients
        engine.allreduce_gradients = lambda *a, **k: (calls.__setitem__("allreduce", calls["allreduce"] + 1),
                                                      allreduce(*a, **k))  # fmt: skip
        tokens = torch.randint(4, 150, (3, 17), generator=torch.Generator().manual_seed(0))
        batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "ntokens": tokens[:, 1:].numel()}
        result = built.stepper.train_step([batch])
        ds_engine.clip_grad_norm_ = ds_clip

        plain = build_optimizer(optim, reference.parameters())
        loss, n = reference(tokens[:, :-1], tokens[:, 1:])
        (loss / n).backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip if clip > 0 else float("inf"))
        plain.step()
        max_diff = max(float((a - b).abs().max()) for a, b in zip(engine.module.parameters(), reference.parameters()))

        import tempfile

        original_load = SafeCheckpointEngine.load

        def counted_load(self, *args, **kwargs):
            calls["safe_load"] += 1
            return original_load(self, *args, **kwargs)

        SafeCheckpointEngine.load = counted_load
        with tempfile.TemporaryDirectory() as folder:
            engine.save_checkpoint(folder, tag="t")
            engine.load_checkpoint(folder, tag="t")
        SafeCheckpointEngine.load = original_load
        return {"patched": deepspeed_compat.patched(engine), "calls": calls, "gnorm": result.gnorm,
                "reference_norm": float(norm), "max_param_diff": max_diff}  # fmt: skip
    finally:
        parallel.shutdown()


@pytest.fixture(scope="module", params=[CLIP, 0.0], ids=["clip", "no-clip"])
def real_engine(request):
    return run_on_ranks(_real_engine_observations, nprocs=1, timeout=300, clip=request.param)[0]


def test_every_engine_adaptation_is_installed_on_a_real_engine(real_engine):
    assert real_engine["patched"] == {"fp32_grad_norm": True, "checkpoint_engine": True,
                                      "backward_allreduce_skipped": True}  # fmt: skip


def test_the_fp32_engine_reports_the_pre_clip_norm_and_clips_once_with_it(real_engine):
    """Reference: torch's clip_grad_norm_ on an identical model and batch (returns the pre-clip norm)."""
    assert real_engine["gnorm"] == pytest.approx(real_engine["reference_norm"], rel=1e-6)
    assert real_engine["calls"]["ds_clip"] == 0  # DeepSpeed's own clipping never ran
    assert real_engine["max_param_diff"] < 1e-6


def test_no_backward_allreduce_at_one_rank(real_engine):
    assert real_engine["calls"]["allreduce"] == 0


def test_deepspeed_reads_checkpoint_files_through_our_engine(real_engine):
    assert real_engine["calls"]["safe_load"] >= 1


def _pipeline_flags() -> dict:
    """Rank-side (PP2, tied tables): which of this stage's parameters are out of the norm, and its children."""
    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.training.pipeline import build_pipeline_module

    dims = parallel.initialize_parallel(parallel.ParallelDims(pp=2), seed=3)
    try:
        module = build_pipeline_module(get_preset("tiny", vocab_size=150), dims)
        replicated = sorted(n for n, p in module.named_parameters() if deepspeed_compat.is_pipe_replicated(p))
        return {"stage": dims.pp_rank, "replicated": replicated, "children": [n for n, _ in module.named_children()]}
    finally:
        parallel.destroy_parallel()


def test_a_pipeline_stage_keeps_only_the_tied_copies_out_of_the_norm():
    """Reference: the tied tensors are the output's band tables and tail projections (tiny: 3 + 2), which
    the first stage owns; DeepSpeed alone would flag every output parameter on the last stage."""
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.layers.adaptive_input import BandWeights

    cfg = get_preset("tiny", vocab_size=150)
    tied = sorted("output." + attr for attr in BandWeights.tied_weight_attrs(cfg, "bands"))
    first, last = sorted(run_on_ranks(_pipeline_flags, nprocs=2, timeout=300), key=lambda r: r["stage"])
    assert first["replicated"] == []
    assert last["replicated"] == tied and len(tied) == 5
    assert "tied_modules" not in first["children"] + last["children"]  # the stage's own names only

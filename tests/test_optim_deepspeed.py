"""fairseq's NAG, cosine schedule and gradient clipping (--clip-norm) plugged into DeepSpeed update the
weights exactly as the same optimizer, schedule and torch's clip_grad_norm_ driven by hand."""

import pytest
import torch

from adaptive_lm_ds.testing import run_on_ranks

CLIP = 0.1  # the recipes' --clip-norm: active here (the gradient norm is ~20)


def _deepspeed_vs_plain(zero_stage: int):
    import deepspeed

    from adaptive_lm_ds import parallel
    from adaptive_lm_ds.config import get_preset
    from adaptive_lm_ds.model.lm import AdaptiveLM
    from adaptive_lm_ds.optim.lr_schedules import CosineSchedule, UpdateLRScheduler
    from adaptive_lm_ds.optim.optimizers import NAG

    dims = parallel.initialize_parallel(parallel.ParallelDims(), seed=11)
    try:
        cfg = get_preset("tiny", vocab_size=150)
        model, reference = AdaptiveLM(cfg), AdaptiveLM(cfg)
        reference.load_state_dict(model.state_dict())
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        schedule = CosineSchedule(lr=0.05, warmup_updates=2, warmup_init_lr=1e-3, min_lr=1e-3, max_update=6)
        batches = [torch.randint(4, 150, (3, 17), generator=torch.Generator().manual_seed(i)) for i in range(4)]

        optimizer = NAG(model.parameters(), lr=0.05, momentum=0.99, weight_decay=0.01)
        config = {"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
                  "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
                  "gradient_clipping": CLIP}  # fmt: skip
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=UpdateLRScheduler(optimizer, schedule), config=config,
            mpu=dims.deepspeed_mpu, dist_init_required=False,
        )  # fmt: skip
        for tokens in batches:
            loss, n = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss / n)
            engine.step()

        plain_opt = NAG(reference.parameters(), lr=0.05, momentum=0.99, weight_decay=0.01)
        plain_sched = UpdateLRScheduler(plain_opt, schedule)
        for tokens in batches:
            plain_opt.zero_grad()
            loss, n = reference(tokens[:, :-1], tokens[:, 1:])
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
            plain_opt.step()
            plain_sched.step()
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=zero_stage == 3):
            trained = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        lrs = (engine.lr_scheduler.get_last_lr()[0], plain_sched.get_last_lr()[0], schedule.lr_at(len(batches)))
        return initial, trained, {n: p.detach() for n, p in reference.named_parameters()}, lrs
    finally:
        parallel.destroy_parallel()


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 3])
def test_nag_and_schedule_inside_deepspeed_equal_the_plain_loop(zero_stage):
    ((initial, trained, reference, lrs),) = run_on_ranks(_deepspeed_vs_plain, nprocs=1, zero_stage=zero_stage)
    lr_deepspeed, lr_plain, lr_expected = lrs
    assert lr_deepspeed == lr_plain == lr_expected  # the schedule advanced once per applied update
    assert trained.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    changed = [n for n in reference if not torch.equal(reference[n], initial[n])]
    assert len(changed) >= len(reference) - 2  # training moved (almost) every tensor; padding rows aside

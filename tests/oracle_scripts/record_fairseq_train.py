"""Run with the fairseq oracle's python: fairseq-train, recording what each update measured.

    python record_fairseq_train.py OUT.pt fairseq-train-args...

Runs fairseq-train's own ``main`` (``fairseq_cli.train.cli_main`` path) with three wrappers on its
``Trainer`` / criterion, which change nothing they wrap:

* ``Trainer.train_step(samples)``: the lr the optimizer holds when the step starts;
* ``criterion.forward`` (training only): each micro batch's summed loss (nats) and sample size;
* ``Trainer.clip_grad_norm``: the gradient norm fairseq computes (before clipping), as logged.

OUT.pt: ``{"updates": [{"lr", "loss_sum", "sample_size", "gnorm"}, ...]}``, loadable with
``torch.load(weights_only=True)``.
"""

import sys

import torch
from fairseq import trainer as fairseq_trainer
from fairseq_cli import train

out_path = sys.argv[1]
sys.argv = ["fairseq-train", *sys.argv[2:]]
updates = []
Trainer = fairseq_trainer.Trainer
original_step, original_clip = Trainer.train_step, Trainer.clip_grad_norm


def train_step(self, samples, raise_oom=False):
    if not getattr(self, "_recording", False):
        self._recording = True
        forward = self.criterion.forward

        def recorded_forward(model, sample, reduce=True):
            loss, sample_size, logging_output = forward(model, sample, reduce=reduce)
            if model.training and updates:
                updates[-1]["loss_sum"] += float(loss.detach().double())
                updates[-1]["sample_size"] += int(sample_size)
            return loss, sample_size, logging_output

        self.criterion.forward = recorded_forward
    updates.append({"lr": float(self.get_lr()), "loss_sum": 0.0, "sample_size": 0})
    return original_step(self, samples, raise_oom)


def clip_grad_norm(self, clip_norm):
    norm = original_clip(self, clip_norm)
    updates[-1]["gnorm"] = float(norm)
    return norm


Trainer.train_step, Trainer.clip_grad_norm = train_step, clip_grad_norm
train.cli_main()
torch.save({"updates": updates}, out_path)

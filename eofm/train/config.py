"""Config pieces shared by every pretraining config (`configs/pretrain/*.py`)."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def training(
    c: ml_collections.ConfigDict,
    *,
    base_lr: float,
    batch_size: int = 32,
    total_steps: int = 300,
    warmup_steps: int = 20,
    b2: float = 0.95,
) -> None:
    """Adds optimisation, mesh, checkpointing and logging fields to `c`.

    lr = base_lr * batch_size / 256 (the MAE scaling rule), x4 because the default runs are short.
    The mesh is a preset (dp, fsdp, fsdp_tp) with optional explicit axis sizes (-1 = the rest).
    `peak_flops` 0 measures a large float32 matmul at start for MFU.
    """
    c.seed = 0
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.warmup_steps = warmup_steps
    c.lr = base_lr * batch_size / 256 * 4
    c.weight_decay = 0.05
    c.b1, c.b2 = 0.9, b2
    c.grad_clip_norm = 0.0
    c.grad_accum_steps = 1
    c.peak_flops = 0.0
    c.init_from = ""  # workdir of another run whose newest parameters start this one
    c.mesh = ml_collections.ConfigDict(
        dict(preset="dp", data=placeholder(int), fsdp=placeholder(int), tensor=placeholder(int))
    )
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3, keep_period=0))
    c.log_every = 10

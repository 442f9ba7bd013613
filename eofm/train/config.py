"""Config pieces shared by the pretraining configs (`configs/pretrain/*.py`) and the training
block of the finetuning configs."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from eofm import parallel


def training(
    c: ml_collections.ConfigDict,
    *,
    lr: float,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
    b2: float = 0.95,
    log_every: int = 10,
    checkpoint_every: int = 100,
) -> None:
    """Adds the fields of `eofm.train.loop.train` to `c` (all but `seed`): optimisation, mesh,
    checkpointing and logging.

    The mesh is a preset (dp, fsdp, fsdp_tp) with optional explicit axis sizes (-1 = the rest) and
    the logical-axis sharding rules (`eofm.parallel.DEFAULT_RULES`).
    `peak_flops` 0 measures a large float32 matmul at start for MFU.
    `allow_resume_changes`: comma-separated keys (e.g. "batch_size,data.image_size"; "data" covers
    every data key) that may differ from the checkpoint's config on resume; by default a change of
    a key that changes the run's numbers (`eofm.train.loop.RESUME_KEYS`) is refused. Steps,
    optimisation, mesh, checkpointing and logging fields may always change.
    """
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.warmup_steps = warmup_steps
    c.lr = lr
    c.weight_decay = 0.05
    c.b1, c.b2 = 0.9, b2
    c.grad_clip_norm = 0.0
    c.grad_accum_steps = 1
    c.peak_flops = 0.0
    c.mesh = ml_collections.ConfigDict(
        dict(
            preset="dp",
            data=placeholder(int),
            fsdp=placeholder(int),
            tensor=placeholder(int),
            rules=parallel.default_rules_config(),  # (logical axis, mesh axes) pairs
        )
    )
    c.checkpoint = ml_collections.ConfigDict(
        dict(every_steps=checkpoint_every, keep=3, keep_period=0)
    )
    c.log_every = log_every
    c.allow_resume_changes = ""


def pretraining(c: ml_collections.ConfigDict, *, base_lr: float, batch_size: int = 32) -> None:
    """`training` fields of a pretraining run: 300 steps (20 warmup), lr = base_lr * batch_size /
    256 (the MAE scaling rule) x4 because the default runs are short, seed 0, and `init_from`: the
    workdir of another run whose newest weights start this one (shapes adapted by the family's
    `adapt_param`)."""
    c.seed = 0
    lr = base_lr * batch_size / 256 * 4
    training(c, lr=lr, batch_size=batch_size, total_steps=300, warmup_steps=20)
    c.init_from = ""


def data(
    *,
    normalization: str,
    image_size: int,
    crop_scale: tuple[float, float],
    source: str = "bigearthnet_s1s2",
    sensors: tuple[str, ...] = ("s2", "s1"),
    source_args: dict | None = None,
    bands: dict | None = None,
) -> ml_collections.ConfigDict:
    """Data fields: by default the BigEarthNet v2 S1+S2 pairs embedded in eofm.

    `num_workers` -1 decodes in `eofm.data.pipeline.auto_num_workers` worker processes (1 on a
    2-CPU machine, 0 on one CPU); `device_prefetch` batches wait on the devices while a step runs
    (`eofm.train.loop`). Neither changes the batches, so a resume may change both.
    """
    return ml_collections.ConfigDict(
        dict(
            source=source,  # eofm.data.datasets.make_source name
            source_args=source_args or {},  # keyword arguments of the source
            sensors=sensors,  # image keys fed to the model, in order
            bands=bands or {},  # optional {key: band names} selection (and order)
            normalization=normalization,  # eofm.data.normalize method, statistics from prepare
            prepared_dir="",  # ArrayRecord cache; "" = WORKDIR/data
            image_size=image_size,
            crop_scale=crop_scale,
            num_workers=-1,  # grain worker processes; -1 = sized to the CPUs, 0 = in-process
            device_prefetch=2,  # batches put on the devices ahead of the step, by a thread
        )
    )

"""Shared fields of the evaluation configs (configs/finetune/*.py fill in the data)."""

from __future__ import annotations

import ml_collections

from eofm.train import config as train_config


def robustness(corruptions: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """REOBench-style sweep: corruption names (("all",) = the twelve) x severities; () = off."""
    return ml_collections.ConfigDict(dict(corruptions=corruptions, severities=(1, 2, 3, 4, 5)))


def fit(
    steps: int, lr: float, batch_size: int, *, finetune: bool = False
) -> ml_collections.ConfigDict:
    """Head training with the shared loop (`eofm.eval.fit`): its optimisation, mesh, checkpoint
    and logging fields (`eofm.train.config.training`, AdamW b2 0.999, a checkpoint at the end)
    with the warmup given as `warmup_fraction` of `total_steps`, plus `finetune` (train the
    encoder too) and its layer-wise lr decay `llrd`."""
    c = ml_collections.ConfigDict()
    train_config.training(
        c,
        lr=lr,
        batch_size=batch_size,
        total_steps=steps,
        warmup_steps=0,
        b2=0.999,
        log_every=25,
        checkpoint_every=steps,
    )
    del c.warmup_steps
    c.warmup_fraction = 0.1
    c.finetune = finetune
    c.llrd = 0.75
    return c


def _common(task: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    # A pretraining WORKDIR, random:CONFIG[:ARGS] or (classification) baseline:image_stats.
    c.encoder = "random:configs/pretrain/smarties.py:tiny"
    c.seed = 0
    c.batch_size = 32  # inference batch
    c.robustness = robustness()
    return c


def classification(method: str = "knn") -> ml_collections.ConfigDict:
    """`method`: knn, linear or finetune (a head on pooled features; fit.finetune=True trains the
    encoder with LLRD)."""
    c = _common("classification")
    c.method = method
    c.data = ml_collections.ConfigDict(
        dict(
            source="",
            source_args={},
            key="",
            normalization="",  # "" = the encoder's pretraining method
            train_root="",  # "" = source_args' root
            test_root="",  # "" = the test examples come from the train root
            train_splits=(),  # with test_split: the source's own splits; () = all examples
            test_split="",  # "" and no test_root: seeded (stratified) split, test_fraction in test
        )
    )
    c.test_fraction = 1 / 3
    c.knn = ml_collections.ConfigDict(dict(k=20, metric="cosine", temperature=0.07))
    c.linear = ml_collections.ConfigDict(dict(val_fraction=0.25, steps=200))
    c.fit = fit(steps=200, lr=1e-3, batch_size=16)
    return c


def dense(task: str) -> ml_collections.ConfigDict:
    """`segmentation` or `change_detection`: a head on tapped encoder blocks.

    Split: data.train_split / test_split (the source's `split=`) and data.train_root / test_root
    (its `root=`) build the train and test scenes separately ("" = unused); else data.train_ids /
    test_ids (whole scenes of one build) or test_region. fit.class_weights: "inverse_frequency"
    of the training pixels, "none" or K floats."""
    c = _common(task)
    c.data = ml_collections.ConfigDict(
        dict(
            source="",
            source_args={},
            inputs=(),
            normalization="",
            train_ids=(),
            test_ids=(),
            train_split="",
            test_split="",
            train_root="",
            test_root="",
        )
    )
    c.head = ml_collections.ConfigDict(
        dict(kind="upernet", channels=128, taps=(), fusion="diff")  # taps () = encoder default
    )
    c.fit = fit(steps=300, lr=1e-3, batch_size=8)
    c.fit.class_weights = ml_collections.FieldReference("inverse_frequency", field_type=object)
    c.window_stride = 0.5  # sliding-window stride, as a fraction of the window
    c.test_region = ()  # (top, left, height, width) fractions held out inside the train scenes
    c.num_overlays = 4
    return c

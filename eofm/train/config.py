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


# name: (embed_dim, depth, heads, decoder_dim, decoder_depth, decoder_heads, image_size)
MAE_VIT_VARIANTS = {
    "tiny": (192, 6, 3, 128, 2, 4, 96),
    "base": (768, 12, 12, 512, 8, 16, 224),
    "large": (1024, 24, 16, 512, 8, 16, 224),
}


def mae_vit(variant: str) -> tuple[ml_collections.ConfigDict, int]:
    """Model fields of a ViT masked autoencoder (MAE, SMARTIES): patch 16, mask 75 %, norm-pix
    loss; `tiny` for CPU, `base` / `large` as the MAE paper. Returns (model, image size)."""
    if variant not in MAE_VIT_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(MAE_VIT_VARIANTS)}")
    dim, depth, heads, dec_dim, dec_depth, dec_heads, size = MAE_VIT_VARIANTS[variant]
    model = ml_collections.ConfigDict(
        dict(
            patch_size=16,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            decoder_dim=dec_dim,
            decoder_depth=dec_depth,
            decoder_heads=dec_heads,
            mask_ratio=0.75,
            norm_pix_loss=True,
            dtype="float32",
        )
    )
    return model, size


def data(
    *,
    normalization: str,
    image_size: int,
    crop_scale: tuple[float, float],
    sensors: tuple[str, ...] = ("s2", "s1"),
    source_args: dict | None = None,
    bands: dict | None = None,
) -> ml_collections.ConfigDict:
    """Data fields: by default the BigEarthNet v2 S1+S2 pairs embedded in eofm."""
    return ml_collections.ConfigDict(
        dict(
            source="bigearthnet_s1s2",  # eofm.data.datasets.make_source name
            source_args=source_args or {},  # keyword arguments of the source
            sensors=sensors,  # image keys fed to the model, in order
            bands=bands or {},  # optional {key: band names} selection (and order)
            normalization=normalization,  # eofm.data.normalize method, statistics from prepare
            prepared_dir="",  # ArrayRecord cache; "" = WORKDIR/data
            image_size=image_size,
            crop_scale=crop_scale,
            num_workers=0,
        )
    )

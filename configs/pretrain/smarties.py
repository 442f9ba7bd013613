r"""SMARTIES: spectrum-aware multi-sensor masked autoencoder (Sumbul et al., ICCV 2025).

  python pretrain/main.py --config=configs/pretrain/smarties.py:tiny --workdir=workdirs/smarties \
      [--config.data.sensors='("s2",)'  # single-sensor pretraining]

Variants (the MAE's ViT sizes): `tiny` (ViT 192 wide, 6 blocks, 96 px; CPU), `base` (ViT-B/16) and
`large` (ViT-L/16), both with the 512-wide, 8-block decoder and 17 per-range heads, at 224 px.
Default data: the embedded BigEarthNet v2 pairs, S2 L2A (12 bands) + S1 (VV, VH) as the two
co-registered views, each clipped to its dataset p1/p99 and rescaled to [0, 1] (SMARTIES' first
normalisation step), mixed 50/50 token-wise with the complementary second view, one 75 % mask
shared by both (`--config.model.official_mixup_bug=True` reproduces the official code's M2).
Optimiser as published: AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4 x batch / 256 (x4 here for short
runs), warmup then cosine.

Memory and compile time of the larger variants: `--config.model.dtype=bfloat16` (float32
master weights; norms, softmax and the loss stay float32), `--config.model.remat=full` (or
dots) and `--config.model.scan_blocks=True` (each block stack one scanned block).

Expected (tiny, 2 CPU cores, batch 32): about 0.55 s per step (300 steps in about 3 minutes); the
loss starts near 1.67, is about 1.45 after 20 steps and about 1.1 after 100.
"""

import ml_collections

from eofm import config_args
from eofm.models import family, smarties
from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, variant="tiny")
    c = ml_collections.ConfigDict()
    c.model_name = "smarties"
    c.variant = args.variant
    c.model = family.config_fields(smarties, args.variant)
    # data.sensors: one sensor, or a co-registered pair of views.
    c.data = train_config.data(
        normalization="percentile_clip",
        image_size=96 if args.variant == "tiny" else 224,
        crop_scale=(0.25, 1.0),
    )
    train_config.pretraining(c, base_lr=1.5e-4)
    return c

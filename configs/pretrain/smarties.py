r"""SMARTIES: spectrum-aware multi-sensor masked autoencoder (Sumbul et al., ICCV 2025).

  python pretrain/main.py --config=configs/pretrain/smarties.py:tiny --workdir=workdirs/smarties \
      [--config.data.sensors='("s2",)'  # single-sensor pretraining]

Variants: `tiny` (ViT 192 wide, 6 blocks, 96 px; CPU), `base` (ViT-B/16) and `large` (ViT-L/16), both
with the 512-wide, 8-block decoder and 17 per-range heads, at 224 px. Default data: the embedded
BigEarthNet v2 pairs, S2 L2A (12 bands) + S1 (VV, VH) as the two co-registered views, each clipped
to its dataset p1/p99 and rescaled to [0, 1] (SMARTIES' first normalisation step), mixed 50/50
token-wise with the complementary second view, one 75 % mask shared by both.
Optimiser as published: AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4 x batch / 256 (x4 here for short
runs), warmup then cosine.
"""

import ml_collections

from eofm.train import config as train_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = "smarties"
    c.variant = arg
    c.model, size = train_config.mae_vit(arg)
    c.smarties = ml_collections.ConfigDict(
        dict(
            mixup_ratio=0.5,
            official_mixup_bug=False,  # True: M2 = unmixed second view, as the official code
            blend="nearer",  # unseen bands: "nearer" (paper intent) or "official"
        )
    )
    # data.sensors: one sensor, or a co-registered pair of views.
    c.data = train_config.data(
        normalization="percentile_clip", image_size=size, crop_scale=(0.25, 1.0)
    )
    train_config.training(c, base_lr=1.5e-4)
    return c

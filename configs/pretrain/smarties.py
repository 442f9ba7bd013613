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

VARIANTS = {
    # name: (embed_dim, depth, heads, decoder_dim, decoder_depth, decoder_heads, image_size)
    "tiny": (192, 6, 3, 128, 2, 4, 96),
    "base": (768, 12, 12, 512, 8, 16, 224),
    "large": (1024, 24, 16, 512, 8, 16, 224),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; expected one of {sorted(VARIANTS)}")
    dim, depth, heads, dec_dim, dec_depth, dec_heads, size = VARIANTS[arg]
    c = ml_collections.ConfigDict()
    c.model_name = "smarties"
    c.variant = arg
    c.model = ml_collections.ConfigDict(
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
    c.smarties = ml_collections.ConfigDict(
        dict(
            mixup_ratio=0.5,
            official_mixup_bug=False,  # True: M2 = unmixed second view, as the official code
            blend="nearer",  # unseen bands: "nearer" (paper intent) or "official"
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            source="bigearthnet_s1s2",
            source_args={},
            sensors=("s2", "s1"),  # one sensor, or a co-registered pair of views
            normalization="percentile_clip",
            prepared_dir="",
            image_size=size,
            crop_scale=(0.25, 1.0),
            num_workers=0,
        )
    )

    train_config.training(c, base_lr=1.5e-4)
    return c

r"""Plain ViT masked autoencoder (He et al. 2022): the baseline every family extends.

  python pretrain/main.py --config=configs/pretrain/mae.py:tiny --workdir=workdirs/mae_tiny \
      --config.total_steps=300

Variants: `tiny` (ViT 192 wide, 6 blocks, 96 px: a CPU step takes well under a second), `base`
(ViT-B/16, 224 px) and `large` (ViT-L/16, 224 px) with the MAE paper's 512-wide, 8-block decoder.
Default data: the BigEarthNet v2 S1+S2 pairs embedded in eofm (12 S2 L2A bands z-scored + VV/VH
z-scored, stacked into 14 channels). On 2 CPU cores, `tiny` for 300 steps takes a few minutes and
its loss (norm-pix MSE on masked patches) falls from about 1.0.
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
    c.model_name = "mae"
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

    c.data = ml_collections.ConfigDict(
        dict(
            source="bigearthnet_s1s2",  # eofm.data.datasets.make_source name
            source_args={},  # keyword arguments of the source
            sensors=("s2", "s1"),  # sensors stacked (channels) into the model input
            normalization="zscore",  # eofm.data.normalize method, statistics from prepare
            prepared_dir="",  # ArrayRecord cache; "" = WORKDIR/data
            image_size=size,
            crop_scale=(0.5, 1.0),
            num_workers=0,
        )
    )

    train_config.training(c, base_lr=1.5e-4)
    return c
